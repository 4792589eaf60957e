//! The one source of randomness for timing decisions: retry and reconnect
//! jitter, and seeded fault injection. Not for secrets (keys come from the
//! OS through `getrandom`).

use std::sync::atomic::{AtomicU64, Ordering};

/// A well-mixed 64-bit value from `x` (splitmix64).
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed that differs per call, per process and per host: jitter that
/// keeps many hosts out of lockstep.
pub fn fresh_seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    splitmix(now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32) ^ splitmix(n))
}

/// A value in `0.0..1.0` from `seed`.
pub fn unit(seed: u64) -> f64 {
    (splitmix(seed) >> 11) as f64 / (1u64 << 53) as f64
}

/// A repeatable sequence of values in `0.0..1.0`: the same seed gives the
/// same sequence. Lock-free; safe to draw from many tasks at once.
pub struct Seeded {
    seed: u64,
    drawn: AtomicU64,
}

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            drawn: AtomicU64::new(0),
        }
    }

    /// The next value of the sequence.
    pub fn next_unit(&self) -> f64 {
        let n = self.drawn.fetch_add(1, Ordering::Relaxed);
        unit(self.seed ^ splitmix(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_repeat_and_stay_in_range() {
        let draw = |seed| {
            let s = Seeded::new(seed);
            (0..1_000).map(|_| s.next_unit()).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((0.45..0.55).contains(&mean), "{mean}");
    }

    #[test]
    fn fresh_seeds_differ() {
        assert_ne!(fresh_seed(), fresh_seed());
    }
}
