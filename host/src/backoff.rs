//! Exponential backoff with jitter: one schedule for retries between cells,
//! NATS reconnects and process restarts.

use std::time::Duration;

use crate::random;

/// `first` doubling per attempt up to `max`, each delay scaled by a random
/// factor in `1 ± jitter`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Share of the delay that is random, `0.0..=1.0`.
    pub jitter: f64,
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based), with jitter drawn
    /// from `seed`.
    pub fn delay(&self, attempt: u32, seed: u64) -> Duration {
        let doubled = self.first.saturating_mul(1 << attempt.min(16));
        let base = doubled.min(self.max).as_secs_f64();
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * random::unit(seed);
        Duration::from_secs_f64(base * factor)
    }

    /// The delay before attempt `attempt`, with fresh jitter.
    pub fn next(&self, attempt: u32) -> Duration {
        self.delay(attempt, random::fresh_seed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_jitter() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: 0.25,
        };
        for seed in 0..200 {
            let d0 = b.delay(0, seed).as_millis();
            let d2 = b.delay(2, seed).as_millis();
            let d30 = b.delay(30, seed).as_millis();
            assert!((75..=125).contains(&d0), "{d0}");
            assert!((300..=500).contains(&d2), "{d2}");
            assert!((3_750..=6_250).contains(&d30), "{d30}");
        }
    }

    #[test]
    fn without_jitter_it_is_exact() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: 0.0,
        };
        assert_eq!(b.delay(3, 1), Duration::from_millis(800));
        assert_eq!(b.delay(9, 1), Duration::from_secs(5));
    }
}
