//! A body's idle timeout: when nothing has arrived for `idle_timeout`.
//!
//! The timer is moved only when it fires, not on every read: each read just
//! notes the time. And its deadlines fall on a coarse grid shared by every
//! stream of the process ([`grid`]): at 10,000 idle streams each timer would
//! otherwise fire at its own millisecond, one thread wake-up apiece (about
//! 220 a second with a 45 s `idle_timeout`), while on the grid all the timers
//! due in the same step fire in one wake-up. The price is precision: silence
//! is noticed up to one step (1/32 of `idle_timeout`, at most about a
//! second) late.

use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The longest step of the deadline grid, in milliseconds.
const MAX_STEP_MS: u64 = 1024;

/// When a body has been silent for `idle_timeout`.
pub struct IdleTimer {
    idle_timeout: Duration,
    step_ms: u64,
    last_traffic: Instant,
}

/// What a fired idle timer means.
#[derive(Debug, PartialEq, Eq)]
pub enum Silence {
    /// Bytes came since it was set: it is set again, `idle_timeout` after them.
    Rearmed,
    /// Nothing for `idle_timeout`.
    Over,
}

impl IdleTimer {
    pub fn new(idle_timeout: Duration) -> IdleTimer {
        IdleTimer {
            idle_timeout,
            step_ms: grid(idle_timeout),
            last_traffic: Instant::now(),
        }
    }

    /// The timer for a body whose wait starts now.
    pub fn sleep(&self) -> Sleep {
        tokio::time::sleep_until(self.deadline())
    }

    /// A wait for the next bytes begins now.
    pub fn start_waiting(&mut self) {
        self.last_traffic = Instant::now();
    }

    /// The timer `sleep` fired: sets it for `idle_timeout` after the last
    /// traffic if that is still to come.
    pub fn rearm(&self, sleep: Pin<&mut Sleep>) -> Silence {
        if self.last_traffic + self.idle_timeout > Instant::now() {
            sleep.reset(self.deadline());
            Silence::Rearmed
        } else {
            Silence::Over
        }
    }

    /// `idle_timeout` after the last traffic, rounded up to the grid.
    fn deadline(&self) -> Instant {
        on_grid(self.last_traffic + self.idle_timeout, self.step_ms)
    }
}

/// The grid step for `idle_timeout`: the largest power of two milliseconds
/// no more than 1/32 of it, between 1 ms and [`MAX_STEP_MS`]. Powers of two
/// from one origin nest, so streams with different timeouts share wake-ups
/// too.
fn grid(idle_timeout: Duration) -> u64 {
    let most = (idle_timeout.as_millis() / 32).clamp(1, u128::from(MAX_STEP_MS)) as u64;
    1 << most.ilog2()
}

/// `at` rounded up to a multiple of `step_ms` counted from the process's
/// grid origin.
fn on_grid(at: Instant, step_ms: u64) -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let step_ns = step_ms * 1_000_000;
    let since = at.saturating_duration_since(origin).as_nanos() as u64;
    let rounded = origin + Duration::from_nanos(since.div_ceil(step_ns) * step_ns);
    debug_assert!(rounded >= at && rounded - at < Duration::from_millis(step_ms));
    rounded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_step_is_a_power_of_two_within_a_thirty_second_of_the_timeout() {
        assert_eq!(grid(Duration::from_secs(45)), 1024);
        assert_eq!(grid(Duration::from_secs(3600)), 1024);
        assert_eq!(grid(Duration::from_secs(1)), 16);
        assert_eq!(grid(Duration::from_millis(64)), 2);
        assert_eq!(grid(Duration::from_millis(10)), 1);
        for ms in [1, 31, 32, 33, 100, 999, 1_000, 15_000, 45_000, 90_000] {
            let step = grid(Duration::from_millis(ms));
            assert!(step.is_power_of_two(), "{ms} ms: {step}");
            assert!(step == 1 || step * 32 <= ms, "{ms} ms: {step}");
            assert!(step == MAX_STEP_MS || step * 64 > ms, "{ms} ms: {step}");
        }
    }

    #[tokio::test]
    async fn deadlines_are_never_early_and_at_most_one_step_late_and_shared() {
        let start = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for offset_ms in 0..2_000u64 {
            let at = start
                + Duration::from_millis(offset_ms)
                + Duration::from_micros(offset_ms % 7 * 100);
            let rounded = on_grid(at, 1024);
            assert!(rounded >= at, "{offset_ms}");
            assert!(rounded - at <= Duration::from_millis(1024), "{offset_ms}");
            seen.insert(rounded);
            // A finer grid's point of the same origin.
            let fine = on_grid(at, 16);
            assert!(fine >= at && fine <= rounded, "{offset_ms}");
        }
        // 2,000 deadlines spread over 2 s fall on at most 3 grid points.
        assert!(seen.len() <= 3, "{} distinct deadlines", seen.len());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_over_only_after_a_whole_idle_timeout_without_traffic() {
        let idle_timeout = Duration::from_secs(32);
        let mut timer = IdleTimer::new(idle_timeout);
        let sleep = timer.sleep();
        tokio::pin!(sleep);
        let started = Instant::now();
        // Traffic at 20 s: the timer fires near 32 s and is set again.
        tokio::time::sleep(Duration::from_secs(20)).await;
        timer.start_waiting();
        (&mut sleep).await;
        let fired = Instant::now() - started;
        assert!(
            fired >= idle_timeout && fired <= idle_timeout + Duration::from_secs(1),
            "{fired:?}"
        );
        assert_eq!(timer.rearm(sleep.as_mut()), Silence::Rearmed);
        // Nothing more: over once 32 s have passed since the traffic.
        (&mut sleep).await;
        let over = Instant::now() - started;
        assert!(over >= Duration::from_secs(52), "{over:?}");
        assert!(over <= Duration::from_secs(53), "{over:?}");
        assert_eq!(timer.rearm(sleep.as_mut()), Silence::Over);
    }
}
