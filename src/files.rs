//! Files and directories the relay creates, in one place: none readable by
//! others whatever the umask, temporary files created exclusively, and an
//! append target whose last line is repaired only when the relay could have
//! torn it.
//!
//! * Directories are created `0750`, output files `0640`, checkpoints and
//!   other state `0600` (the umask can only take more away).
//! * [`replace`] writes a temporary file created with `O_CREAT|O_EXCL` under a
//!   random name in the target's directory (so a planted symlink is never
//!   followed), fsyncs it, renames it over the target and fsyncs the directory.
//! * [`open_append`] cuts a final line without its `\n` only if it is a
//!   prefix of a record this relay writes ([`TornTail`]); anything else is
//!   kept, and writing starts on a new line.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// The mode of directories the relay creates.
pub const DIR_MODE: u32 = 0o750;
/// The mode of output files (records, dead letters).
pub const OUTPUT_MODE: u32 = 0o640;
/// The mode of state files (checkpoints).
pub const STATE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with [`DIR_MODE`].
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Atomically replaces `path` with `bytes` (mode `mode`): an exclusive
/// temporary file beside it, fsynced, renamed over it, the directory fsynced.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = directory_of(path);
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// The directory `path` is in: `.` for a bare file name.
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// What a line torn by the relay itself can look like: it starts with
/// `prefix` (empty: anything) and is at most `max_bytes` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    pub prefix: &'static [u8],
    pub max_bytes: u64,
}

/// What [`open_append`] found at the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Empty, or ending with `\n`.
    Clean,
    /// A torn record of this many bytes was cut.
    Cut(u64),
    /// This many bytes after the last `\n` are not the relay's: kept, and a
    /// `\n` written after them.
    Kept(u64),
}

/// Opens `path` for appending, creating it ([`OUTPUT_MODE`]) and its
/// directory if needed, and repairs its end as [`Tail`] says.
pub fn open_append(path: &Path, torn: TornTail) -> io::Result<(File, Tail)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(OUTPUT_MODE)
        .open(path)?;
    let tail = repair_tail(&mut file, torn)?;
    Ok((file, tail))
}

/// The bytes after the file's last `\n` (the whole file if it has none):
/// cut if the relay could have written them, else kept and ended with `\n`.
fn repair_tail(file: &mut File, torn: TornTail) -> io::Result<Tail> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Tail::Clean);
    }
    let mut block = vec![0u8; 64 << 10];
    let mut end = len;
    let mut tail_start = 0;
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        debug_assert!(start < end, "the scan back moves toward the start");
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if end == len && chunk.last() == Some(&b'\n') {
            return Ok(Tail::Clean);
        }
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            tail_start = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    let tail_len = len - tail_start;
    if tail_len > torn.max_bytes {
        return keep(file, tail_len);
    }
    let mut head = vec![0u8; torn.prefix.len().min(tail_len as usize)];
    file.seek(SeekFrom::Start(tail_start))?;
    file.read_exact(&mut head)?;
    // A torn record is a prefix of a whole one: its start matches as much of
    // the record prefix as it holds.
    if torn.prefix.starts_with(&head) {
        file.set_len(tail_start)?;
        return Ok(Tail::Cut(tail_len));
    }
    keep(file, tail_len)
}

fn keep(file: &mut File, kept: u64) -> io::Result<Tail> {
    file.write_all(b"\n")?;
    Ok(Tail::Kept(kept))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const JSON: TornTail = TornTail {
        prefix: b"{\"stream\":",
        max_bytes: 1000,
    };

    fn reopen(path: &Path, torn: TornTail) -> (String, Tail) {
        let (file, tail) = open_append(path, torn).unwrap();
        drop(file);
        (std::fs::read_to_string(path).unwrap(), tail)
    }

    #[test]
    fn a_torn_record_is_cut_and_whole_lines_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "{\"stream\":1}\n{\"stream\":2}\n{\"str").unwrap();
        let whole = "{\"stream\":1}\n{\"stream\":2}\n";
        assert_eq!(reopen(&path, JSON), (whole.to_owned(), Tail::Cut(5)));
        assert_eq!(reopen(&path, JSON), (whole.to_owned(), Tail::Clean));
        // A file of one torn record.
        std::fs::write(&path, "{\"stream\":\"a\",\"id").unwrap();
        assert_eq!(reopen(&path, JSON), (String::new(), Tail::Cut(17)));
    }

    #[test]
    fn a_torn_record_as_long_as_the_longest_is_cut_and_one_byte_more_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let torn = TornTail {
            prefix: b"{\"stream\":",
            max_bytes: 20,
        };
        let longest = "{\"stream\":\"abcdefghi"; // 20 bytes
        assert_eq!(longest.len(), 20);
        std::fs::write(&path, format!("{{}}\n{longest}")).unwrap();
        assert_eq!(reopen(&path, torn), ("{}\n".to_owned(), Tail::Cut(20)));
        let too_long = format!("{longest}j");
        std::fs::write(&path, format!("{{}}\n{too_long}")).unwrap();
        assert_eq!(
            reopen(&path, torn),
            (format!("{{}}\n{too_long}\n"), Tail::Kept(21))
        );
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        assert_eq!(directory_of(Path::new("cp.json")), Path::new("."));
        assert_eq!(directory_of(Path::new("state/cp.json")), Path::new("state"));
        assert_eq!(directory_of(Path::new("/var/cp.json")), Path::new("/var"));
    }

    #[test]
    fn bytes_the_relay_did_not_write_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        // Someone else's file without a final newline: 4 MB of text.
        let foreign = "x".repeat(4_000_000);
        std::fs::write(&path, &foreign).unwrap();
        let (text, tail) = reopen(&path, JSON);
        assert_eq!(tail, Tail::Kept(4_000_000));
        assert_eq!(text, format!("{foreign}\n"));
        // A record-like tail longer than any record is not ours either.
        let long = format!("ok\n{{\"stream\":{}", "y".repeat(2000));
        std::fs::write(&path, &long).unwrap();
        assert_eq!(reopen(&path, JSON), (format!("{long}\n"), Tail::Kept(2010)));
        // Short, but not a record.
        std::fs::write(&path, "ok\nhello").unwrap();
        assert_eq!(
            reopen(&path, JSON),
            ("ok\nhello\n".to_owned(), Tail::Kept(5))
        );
    }

    #[test]
    fn created_files_and_directories_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        // The umask of this process may be anything; the modes must not
        // exceed ours.
        let nested = dir.path().join("a/b");
        let path = nested.join("out.jsonl");
        drop(open_append(&path, JSON).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path) & !OUTPUT_MODE, 0, "{:o}", mode(&path));
        assert_eq!(mode(&nested) & !DIR_MODE, 0, "{:o}", mode(&nested));
        assert_eq!(mode(&dir.path().join("a")) & 0o007, 0);
        let state = dir.path().join("state.json");
        replace(&state, b"{}", STATE_MODE).unwrap();
        assert_eq!(mode(&state), STATE_MODE & mode(&state));
        assert_eq!(mode(&state) & 0o077, 0, "{:o}", mode(&state));
    }

    #[test]
    fn replace_never_follows_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // Every name the old writer used, and a few guesses, planted.
        for name in [".cp.json.tmp", ".cp.json.x.tmp", "cp.json.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        let target = dir.path().join("cp.json");
        replace(&target, b"new", STATE_MODE).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        // No temporary file left behind: the victim, 3 links, the target.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 5);
    }
}
