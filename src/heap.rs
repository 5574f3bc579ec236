//! How the process's heap returns memory to the kernel (glibc's malloc).
//!
//! Every chunk a stream reads becomes a [`crate::record::Records`] of tens to
//! hundreds of KiB, freed once its sinks have written it, and every file-sink
//! batch is encoded into a buffer of about half a MiB. With glibc's defaults
//! the heap gives its free top back to the kernel as soon as 128 KiB of it is
//! free, and a block over 128 KiB gets an `mmap` of its own that is unmapped
//! when freed. So the same few MiB went back and forth: each 4 KiB page was
//! faulted in and zeroed again. Relaying the large benchmark corpus (328 MB)
//! took about 40,000 page faults, a fifth of the run's time; with the
//! thresholds below it takes about 2,300.
//!
//! The cost is at most [`TRIM_THRESHOLD`] of free memory kept per malloc
//! arena (about one per thread that allocates) where the kernel would have it
//! back sooner.

/// Free memory at the top of a heap is given back only beyond this.
pub const TRIM_THRESHOLD: usize = 4 << 20;

/// Blocks from this size up are mapped on their own (huge events), so that
/// one huge event's memory goes back to the kernel when it is freed.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Applies the thresholds, unless the operator set malloc's own through
/// `GLIBC_TUNABLES` (theirs win). Returns whether they were applied. Call it
/// first thing in `main`.
pub fn tune() -> bool {
    let operator_tuned = std::env::var_os("GLIBC_TUNABLES")
        .is_some_and(|tunables| tunables.to_string_lossy().contains("glibc.malloc."));
    !operator_tuned && set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> bool {
    // SAFETY: mallopt only changes malloc's parameters; it is safe to call at
    // any time, from any thread, and reports an invalid value by returning 0.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// glibc accepts both values (it refuses an mmap threshold over 32 MiB on
    /// 64-bit machines, for one).
    #[test]
    fn glibc_accepts_the_thresholds() {
        assert!(super::set_thresholds());
    }
}
