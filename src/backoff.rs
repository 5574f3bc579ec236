//! Retry delays (stream reconnects, sink retries): exponential backoff with
//! full jitter, floored by what the
//! server asked for.
//!
//! After the n-th consecutive failed attempt the backoff delay is drawn
//! uniformly from `[initial, min(max, initial * 2^n)]`: random from the first
//! attempt on, so thousands of streams dropped at once do not reconnect in step.
//! The server's floor (its `retry:` field, or `Retry-After` on 429/503, both
//! clamped to `retry_max`) wins when it is larger; the delay then lies in
//! `[floor, floor * 1.1]`, again so that streams do not move in a herd. On the
//! first attempt after a reset the floor, when it is at least `initial`, is
//! the delay (with that jitter) even if the backoff draw was larger: after a
//! connection that delivered events, the server's `retry:` is what it says.
//! A connection that delivered events resets the count.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    retry_max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, retry_max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            retry_max,
            failures: 0,
        }
    }

    /// The connection was healthy: start over from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.failures
    }

    /// The delay before the next attempt. `server_floor` is the larger of the
    /// stream's `retry:` value and a `Retry-After`, if any.
    pub fn next_delay(&mut self, server_floor: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let mut rng = rand::rng();
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        let backoff = if ceiling > self.initial {
            rng.random_range(self.initial..=ceiling)
        } else {
            self.initial
        };
        let first_after_reset = self.failures == 1;
        match server_floor.map(|f| f.min(self.retry_max)) {
            Some(floor) if floor > backoff || (first_after_reset && floor >= self.initial) => {
                let spread = floor / 10;
                if spread.is_zero() {
                    floor
                } else {
                    floor.saturating_add(rng.random_range(Duration::ZERO..=spread))
                }
            }
            _ => backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_reset_the_servers_retry_is_the_delay_within_ten_percent() {
        let mut backoff = Backoff::new(ms(1000), ms(60_000), ms(3_600_000));
        for _ in 0..200 {
            backoff.reset();
            let delay = backoff.next_delay(Some(ms(1500)));
            assert!(delay >= ms(1500) && delay <= ms(1650), "{delay:?}");
        }
        // Below `initial` the backoff still rules.
        backoff.reset();
        let delay = backoff.next_delay(Some(ms(10)));
        assert!(delay >= ms(1000) && delay <= ms(2000), "{delay:?}");
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn grows_within_bounds_and_resets() {
        let mut b = Backoff::new(ms(100), ms(1000), ms(60_000));
        assert_eq!(b.attempt(), 0);
        for attempt in 1..=10u32 {
            let d = b.next_delay(None);
            assert_eq!(b.attempt(), attempt, "the log's attempt number");
            let ceiling = (100u64 << attempt).min(1000);
            assert!(d >= ms(100) && d <= ms(ceiling), "attempt {attempt}: {d:?}");
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay(None) <= ms(200));
    }

    #[test]
    fn server_retry_is_a_floor_and_is_clamped() {
        let mut b = Backoff::new(ms(10), ms(50), ms(5_000));
        let d = b.next_delay(Some(ms(2_000)));
        assert!(d >= ms(2_000) && d <= ms(2_200), "{d:?}");
        let d = b.next_delay(Some(Duration::from_secs(1_000_000)));
        assert!(d >= ms(5_000) && d <= ms(5_500), "{d:?}");
        b.reset();
        let d = b.next_delay(Some(ms(1)));
        assert!(
            d >= ms(10) && d <= ms(20),
            "a tiny retry does not beat backoff: {d:?}"
        );
    }

    #[test]
    fn delays_are_spread_not_synchronised() {
        let delays: std::collections::HashSet<Duration> = (0..100)
            .map(|_| Backoff::new(ms(1000), ms(60_000), ms(60_000)).next_delay(None))
            .collect();
        assert!(
            delays.len() > 50,
            "only {} distinct first delays",
            delays.len()
        );
    }
}
