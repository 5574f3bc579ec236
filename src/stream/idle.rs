//! A body's idle timeout: when nothing has arrived for `idle_timeout`.
//!
//! One timer per body, pushed back at every read. Pushing a deadline later
//! costs one compare-and-swap on the timer (tokio re-files it in its wheel
//! only when the old deadline comes), and the stream's task is woken only
//! when the body really fell silent. Moving the timer only when it fired (each
//! read noting the time) woke every idle stream once per `idle_timeout` for
//! nothing: at 10,000 streams with 15 s heartbeats and a 45 s timeout, pushing
//! it back used 0.8x and 0.94x the CPU, in two runs of both builds side by
//! side. (Putting the deadlines of all streams on a shared coarse
//! grid, so that timers due together fire in one wake-up, was measured at
//! 10,000 idle streams and cost more CPU, not less: 2.93% and 2.03% of a core
//! against 2.40% and 1.47% without it, in alternating runs.)

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// When a body has been silent for `idle_timeout`.
pub struct IdleTimer {
    idle_timeout: Duration,
}

impl IdleTimer {
    pub fn new(idle_timeout: Duration) -> IdleTimer {
        IdleTimer { idle_timeout }
    }

    /// The timer for a body whose wait starts now.
    pub fn sleep(&self) -> Sleep {
        tokio::time::sleep_until(Instant::now() + self.idle_timeout)
    }

    /// A wait for the next bytes begins now: `sleep` fires `idle_timeout`
    /// from now unless this is called again before.
    pub fn start_waiting(&self, sleep: Pin<&mut Sleep>) {
        sleep.reset(Instant::now() + self.idle_timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_timer_fires_only_after_a_whole_idle_timeout_without_traffic() {
        let idle_timeout = Duration::from_secs(32);
        let timer = IdleTimer::new(idle_timeout);
        let sleep = timer.sleep();
        tokio::pin!(sleep);
        let started = Instant::now();
        // Traffic at 20 s: silent from then on, it fires at 52 s, not 32 s.
        tokio::time::sleep(Duration::from_secs(20)).await;
        timer.start_waiting(sleep.as_mut());
        (&mut sleep).await;
        let fired = Instant::now() - started;
        assert!(
            fired >= Duration::from_secs(52) && fired < Duration::from_millis(52_010),
            "{fired:?}"
        );
        // Waiting again after it fired sets it again.
        timer.start_waiting(sleep.as_mut());
        (&mut sleep).await;
        let again = Instant::now() - started;
        assert!(
            again >= Duration::from_secs(84) && again < Duration::from_millis(84_010),
            "{again:?}"
        );
    }
}
