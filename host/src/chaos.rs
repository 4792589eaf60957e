//! Fault injection for resilience testing: added latency, injected errors
//! and dropped replies, per cell, seeded so that a run can be repeated. Off
//! unless `[chaos]` is in `cell.toml` or `cbs-host run --chaos FILE` names
//! the cell.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::random::Seeded;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosSpec {
    /// Added before every message.
    pub latency_ms: u64,
    /// Share of messages answered with an injected `unavailable` (0..=1).
    pub error_rate: f64,
    /// Share of messages whose reply is dropped: the caller times out.
    pub drop_rate: f64,
    /// Same seed, same sequence of faults.
    pub seed: u64,
}

/// What happens to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Error,
    Drop,
}

/// A cell's fault injector.
pub struct Chaos {
    spec: ChaosSpec,
    draws: Seeded,
}

impl Chaos {
    pub fn new(spec: ChaosSpec) -> Self {
        Self {
            draws: Seeded::new(spec.seed),
            spec,
        }
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.spec.latency_ms)
    }

    /// The next fault of the seeded sequence.
    pub fn draw(&self) -> Fault {
        let x = self.draws.next_unit();
        if x < self.spec.error_rate {
            Fault::Error
        } else if x < self.spec.error_rate + self.spec.drop_rate {
            Fault::Drop
        } else {
            Fault::Pass
        }
    }
}

impl ChaosSpec {
    pub fn validate(&self) -> Result<(), String> {
        let rate = |r: f64| (0.0..=1.0).contains(&r);
        if !rate(self.error_rate) || !rate(self.drop_rate) || self.error_rate + self.drop_rate > 1.0
        {
            return Err(
                "[chaos] error_rate and drop_rate must be within 0..1 and add up to at most 1"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_rates_are_repeatable_and_close_to_the_spec() {
        let spec = ChaosSpec {
            error_rate: 0.3,
            drop_rate: 0.1,
            seed: 7,
            ..ChaosSpec::default()
        };
        let draw = |c: &Chaos| (0..10_000).map(|_| c.draw()).collect::<Vec<_>>();
        let a = draw(&Chaos::new(spec.clone()));
        assert_eq!(a, draw(&Chaos::new(spec.clone())), "same seed, same faults");
        let errors = a.iter().filter(|f| **f == Fault::Error).count();
        let drops = a.iter().filter(|f| **f == Fault::Drop).count();
        assert!((2_800..3_200).contains(&errors), "{errors}");
        assert!((800..1_200).contains(&drops), "{drops}");
        let other = draw(&Chaos::new(ChaosSpec { seed: 8, ..spec }));
        assert_ne!(a, other);
    }

    #[test]
    fn rates_are_checked() {
        assert!(ChaosSpec {
            error_rate: 0.7,
            drop_rate: 0.5,
            ..ChaosSpec::default()
        }
        .validate()
        .is_err());
        assert!(ChaosSpec {
            error_rate: 0.3,
            ..ChaosSpec::default()
        }
        .validate()
        .is_ok());
    }
}
