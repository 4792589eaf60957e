//! How much a cell may write to the host's log: a token bucket per cell,
//! for wasm stdout/stderr and process stderr alike. A cell that prints in
//! a loop would otherwise fill the disk and drown every other cell's lines;
//! past its budget its lines are counted, not logged, and the count is
//! logged once lines flow again.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Lines per second a cell may log, on average.
const RATE: f64 = 100.0;
/// Lines a cell may log at once after a quiet spell.
const BURST: f64 = 1_000.0;

pub struct LogBudget {
    cell: Arc<str>,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl LogBudget {
    pub fn new(cell: &str) -> Arc<Self> {
        Arc::new(Self {
            cell: cell.into(),
            state: Mutex::new(State {
                tokens: BURST,
                refilled: Instant::now(),
                dropped: 0,
            }),
        })
    }

    /// Whether one more line may be logged now. The first line let through
    /// after some were dropped is preceded by a warning with their count.
    pub fn admit(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(s.refilled).as_secs_f64() * RATE;
        s.tokens = (s.tokens + earned).min(BURST);
        s.refilled = now;
        if s.tokens < 1.0 {
            s.dropped += 1;
            return false;
        }
        s.tokens -= 1.0;
        if s.dropped > 0 {
            tracing::warn!(cell = %self.cell, dropped = s.dropped, "dropped log lines of this cell: more than {RATE} lines/s (burst {BURST})");
            s.dropped = 0;
        }
        true
    }

    /// Lines dropped since the last warning.
    pub fn dropped(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_not_logged() {
        let budget = LogBudget::new("a.b");
        let admitted = (0..5_000).filter(|_| budget.admit()).count();
        // The burst, and what the rate refilled while the loop ran.
        assert!((1_000..1_100).contains(&admitted), "{admitted}");
        assert_eq!(budget.dropped(), 5_000 - admitted as u64);
    }
}
