//! Policies for calls between cells: a timeout, retries with exponential
//! backoff and jitter for calls marked idempotent, and a circuit breaker per
//! target (closed → open after N consecutive failures or a failure ratio in
//! a window → half-open probe after a cool-down → closed on success).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::error::{BusError, ErrorCode};

/// `[policy."<target-cell-id>"]` in `cell.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallPolicy {
    /// Per attempt; never past the caller's own deadline.
    pub timeout_ms: u64,
    /// Only idempotent calls are retried.
    pub idempotent: bool,
    /// Extra attempts after the first (idempotent calls only).
    pub retries: u32,
    /// Delay before the first retry; doubles each time, ±50% jitter.
    pub backoff_ms: u64,
    pub breaker: BreakerPolicy,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            idempotent: false,
            retries: 2,
            backoff_ms: 20,
            breaker: BreakerPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// Failure ratio over the last `window` calls that opens it (with at
    /// least `window` calls seen).
    pub ratio: f64,
    pub window: u32,
    /// How long it stays open before one probe is let through.
    pub cooldown_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures: 5,
            ratio: 0.5,
            window: 20,
            cooldown_ms: 5_000,
        }
    }
}

impl CallPolicy {
    /// Delay before retry number `attempt` (0-based), with jitter from `seed`.
    pub fn backoff(&self, attempt: u32, seed: u64) -> Duration {
        let first = Duration::from_millis(self.backoff_ms);
        Backoff {
            first,
            max: first.saturating_mul(1 << 10),
            jitter: 0.5,
        }
        .delay(attempt, seed)
    }
}

/// Failures that say something about the target's health.
pub fn is_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Timeout
            | ErrorCode::Unavailable
            | ErrorCode::CellFailed
            | ErrorCode::Capacity
            | ErrorCode::Internal
    )
}

/// Failures worth another attempt (for idempotent calls).
pub fn is_retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Timeout | ErrorCode::Unavailable | ErrorCode::CellFailed | ErrorCode::Capacity
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`, as its JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// A breaker as discovery and the console show it: its state now, and
/// how many times it opened since its cell version started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerReport {
    pub state: BreakerState,
    /// Transitions to open: from closed (too many failures) and from
    /// half-open (a failed probe).
    pub opened: u64,
}

/// One target's circuit breaker.
pub struct Breaker {
    policy: BreakerPolicy,
    inner: Mutex<Inner>,
}

struct Inner {
    state: BreakerState,
    /// Transitions to open so far.
    opened: u64,
    consecutive: u32,
    recent: VecDeque<bool>,
    opened_at: Instant,
    probing: bool,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                opened: 0,
                consecutive: 0,
                recent: VecDeque::new(),
                opened_at: Instant::now(),
                probing: false,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().unwrap().state
    }

    /// Its state and how many times it opened.
    pub fn report(&self) -> BreakerReport {
        let s = self.inner.lock().unwrap();
        BreakerReport {
            state: s.state,
            opened: s.opened,
        }
    }

    /// May a call go out now? An open breaker answers `circuit_open` at
    /// once; after the cool-down it lets one probe through (half-open).
    pub fn admit(&self, target: &str) -> Result<(), BusError> {
        let mut s = self.inner.lock().unwrap();
        let cooldown = Duration::from_millis(self.policy.cooldown_ms);
        if s.state == BreakerState::Open && s.opened_at.elapsed() >= cooldown {
            s.state = BreakerState::HalfOpen;
            s.probing = false;
        }
        match s.state {
            BreakerState::Closed => Ok(()),
            BreakerState::HalfOpen if !s.probing => {
                s.probing = true;
                Ok(())
            }
            _ => {
                let wait = cooldown.saturating_sub(s.opened_at.elapsed());
                Err(BusError::new(
                    ErrorCode::CircuitOpen,
                    format!(
                        "the circuit to {target} is open after repeated failures; next probe in {} ms",
                        wait.as_millis()
                    ),
                ))
            }
        }
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, success: bool) {
        let mut s = self.inner.lock().unwrap();
        let p = &self.policy;
        if s.state == BreakerState::HalfOpen {
            s.probing = false;
            if success {
                s.state = BreakerState::Closed;
                s.consecutive = 0;
                s.recent.clear();
            } else {
                s.open();
            }
            return;
        }
        s.consecutive = if success { 0 } else { s.consecutive + 1 };
        s.recent.push_back(success);
        if s.recent.len() > p.window as usize {
            s.recent.pop_front();
        }
        let failed = s.recent.iter().filter(|ok| !**ok).count() as f64;
        let ratio_hit =
            s.recent.len() >= p.window as usize && failed / s.recent.len() as f64 >= p.ratio;
        if s.state == BreakerState::Closed && (s.consecutive >= p.failures || ratio_hit) {
            s.open();
        }
    }
}

impl Inner {
    fn open(&mut self) {
        self.state = BreakerState::Open;
        self.opened_at = Instant::now();
        self.opened += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cooldown_ms: u64) -> Breaker {
        Breaker::new(BreakerPolicy {
            failures: 3,
            ratio: 0.5,
            window: 10,
            cooldown_ms,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let b = breaker(60_000);
        for _ in 0..3 {
            b.admit("t").unwrap();
            b.record(false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        let err = b.admit("t").unwrap_err();
        assert_eq!(err.code, ErrorCode::CircuitOpen);
        assert!(err.message.contains("circuit to t is open"), "{err}");
    }

    #[test]
    fn opens_on_failure_ratio_in_the_window() {
        let b = breaker(60_000);
        for i in 0..10 {
            b.admit("t").unwrap();
            b.record(i % 2 == 0); // never 3 in a row, but half fail
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_probe_closes_on_success_and_reopens_on_failure() {
        let b = breaker(0);
        for _ in 0..3 {
            b.record(false);
        }
        // Cool-down 0: the next admit is the one probe.
        b.admit("t").unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.admit("t").unwrap_err().code,
            ErrorCode::CircuitOpen,
            "one probe at a time"
        );
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        b.admit("t").unwrap();
        b.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn counts_each_transition_to_open_a_failed_probe_included() {
        let b = breaker(0);
        assert_eq!(b.report().opened, 0);
        for _ in 0..3 {
            b.record(false);
        }
        assert_eq!(
            b.report(),
            BreakerReport {
                state: BreakerState::Open,
                opened: 1
            }
        );
        b.record(false);
        assert_eq!(b.report().opened, 1, "already open: no new opening");
        b.admit("t").unwrap();
        b.record(false);
        assert_eq!(b.report().opened, 2, "the failed probe opened it again");
        b.admit("t").unwrap();
        b.record(true);
        assert_eq!(b.report().state, BreakerState::Closed);
        assert_eq!(b.report().opened, 2);
        let json = serde_json::to_value(b.report()).unwrap();
        assert_eq!(json, serde_json::json!({"state": "closed", "opened": 2}));
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let p = CallPolicy::default();
        for seed in 0..100 {
            let d0 = p.backoff(0, seed).as_millis();
            let d3 = p.backoff(3, seed).as_millis();
            assert!((10..30).contains(&d0), "{d0}");
            assert!((80..240).contains(&d3), "{d3}");
        }
    }
}
