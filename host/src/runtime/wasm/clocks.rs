//! Coarse clocks for cells: wall and monotonic time in whole milliseconds,
//! unless `[capabilities] precise_clocks` grants full resolution. A cell
//! that can time events to the nanosecond can time another cell's work on
//! the same core; a millisecond is plenty for timeouts and timestamps.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

const TICK: Duration = Duration::from_millis(1);

/// The wall clock, truncated to the millisecond.
pub struct CoarseWall;

impl HostWallClock for CoarseWall {
    fn resolution(&self) -> Duration {
        TICK
    }

    fn now(&self) -> Duration {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        truncate(since_epoch)
    }
}

/// A monotonic clock from the instance's start, truncated to the
/// millisecond.
pub struct CoarseMonotonic(Instant);

impl CoarseMonotonic {
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for CoarseMonotonic {
    fn default() -> Self {
        Self::new()
    }
}

impl HostMonotonicClock for CoarseMonotonic {
    fn resolution(&self) -> u64 {
        TICK.as_nanos() as u64
    }

    fn now(&self) -> u64 {
        truncate(self.0.elapsed()).as_nanos() as u64
    }
}

fn truncate(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_move_in_whole_milliseconds() {
        let start = CoarseMonotonic::new();
        for _ in 0..100 {
            assert_eq!(CoarseWall.now().subsec_nanos() % 1_000_000, 0);
            assert_eq!(start.now() % 1_000_000, 0);
        }
        std::thread::sleep(Duration::from_millis(3));
        assert!(start.now() >= 2_000_000, "it moves");
    }
}
