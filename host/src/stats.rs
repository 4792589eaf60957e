//! Counters per cell, owned here: the body counts, and discovery
//! (`$SRV.STATS` data) and `/metrics` read them through [`CellStats`]'s
//! accessors. Neither reader depends on the body for them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{EnumCount, ErrorCode};

/// How long the window lasts whose mean wait [`CellStats::mean_wait_us`]
/// reports: one heartbeat period, so each heartbeat sees the waits since
/// about the last one.
pub const WAIT_WINDOW: Duration = Duration::from_millis(500);

/// One cell's load on one host: what this host's heartbeat tells the
/// placer (autoscaling) and its load reports tell the other hosts serving
/// the cell (routing). [`crate::body::LoadedCell::load`] fills it; a peer's
/// load report carries `latency_us` and `room` only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellLoad {
    /// Messages running or queued now.
    #[serde(default)]
    pub in_flight: u32,
    /// Messages it runs at once (`[limits] concurrency`).
    #[serde(default)]
    pub concurrency: u32,
    /// Messages it could start now without queueing.
    #[serde(default)]
    pub room: u32,
    /// `capacity` replies so far (a counter).
    #[serde(default)]
    pub refused: u64,
    /// Mean wait for a running slot over the last [`WAIT_WINDOW`], µs.
    #[serde(default)]
    pub queue_wait_us: u64,
    /// Recent handling latency (moving average), µs; 0 before the first
    /// message.
    #[serde(default)]
    pub latency_us: u64,
}

/// Messages and failure replies of one cell version.
#[derive(Debug, Default)]
pub struct CellStats {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Errors by code, indexed by [`ErrorCode::index`].
    by_code: [AtomicU64; ErrorCode::COUNT],
    /// Messages left in the durable consumer, as of the last pull.
    durable_lag: AtomicU64,
    /// Durable messages delivered more than once.
    redelivered: AtomicU64,
    /// Durable messages sent to the dead-letter stream.
    dead_lettered: AtomicU64,
    /// Of those, letters kept without the message (too large).
    dead_lettered_without_body: AtomicU64,
    /// Dead letters that could not be stored (each retried).
    dead_letter_failures: AtomicU64,
    /// Recent handling latency, microseconds: a moving average.
    recent_us: AtomicU64,
    /// Requests sent to another host serving the cell.
    forwarded: AtomicU64,
    /// Waits for a running slot in the current window: their sum in
    /// microseconds, and how many.
    waited_us: AtomicU64,
    waits: AtomicU64,
    /// When the current window started, and the last window's mean wait.
    wait_window: Mutex<(Option<Instant>, u64)>,
}

/// A durable cell's consumer, as this host saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DurableCounts {
    pub lag: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// Dead letters kept without the message, which stays in the cell's
    /// stream (it did not fit the dead-letter stream).
    #[serde(default)]
    pub dead_lettered_without_body: u64,
    /// Writes of a dead letter that failed (retried until one succeeds).
    #[serde(default)]
    pub dead_letter_failures: u64,
}

impl CellStats {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self, code: ErrorCode) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.by_code[code.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// One durable delivery: its count (from 1) and the messages pending
    /// behind it in the consumer.
    pub(crate) fn durable_delivery(&self, delivered: u64, pending: u64) {
        self.durable_lag.store(pending, Ordering::Relaxed);
        if delivered > 1 {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One message handled here in `elapsed`: moves the recent latency an
    /// eighth of the way towards it (racing updates may lose one; it is an
    /// estimate).
    pub(crate) fn handled_in(&self, elapsed: std::time::Duration) {
        let sample = (elapsed.as_micros() as u64).max(1);
        let old = self.recent_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.recent_us.store(new, Ordering::Relaxed);
    }

    /// Recent handling latency in microseconds; 0 before the first message.
    pub fn recent_latency_us(&self) -> u64 {
        self.recent_us.load(Ordering::Relaxed)
    }

    /// A message waited `wait` for a running slot.
    pub(crate) fn waited(&self, wait: std::time::Duration) {
        self.waited_us
            .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
        self.waits.fetch_add(1, Ordering::Relaxed);
    }

    /// The mean wait for a running slot of the messages of the last
    /// window, microseconds (0 without messages). Reading does not reset
    /// it, so any number of readers see the same figure; a window closes
    /// on the first read [`WAIT_WINDOW`] after it opened.
    pub fn mean_wait_us(&self) -> u64 {
        self.mean_wait_us_at(Instant::now())
    }

    fn mean_wait_us_at(&self, now: Instant) -> u64 {
        let mut window = self.wait_window.lock().unwrap_or_else(|e| e.into_inner());
        let (opened, mean) = &mut *window;
        if opened.is_none_or(|at| now.saturating_duration_since(at) >= WAIT_WINDOW) {
            let waits = self.waits.swap(0, Ordering::Relaxed);
            let sum = self.waited_us.swap(0, Ordering::Relaxed);
            *mean = sum.checked_div(waits).unwrap_or(0);
            *opened = Some(now);
        }
        *mean
    }

    pub(crate) fn forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests sent to another host serving the cell (routing around
    /// capacity or slowness).
    pub fn forwarded_count(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// A dead letter was stored; `whole`: with its message.
    pub(crate) fn dead_lettered(&self, whole: bool) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if !whole {
            self.dead_lettered_without_body
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dead_letter_failed(&self) {
        self.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn durable(&self) -> DurableCounts {
        DurableCounts {
            lag: self.durable_lag.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            dead_lettered_without_body: self.dead_lettered_without_body.load(Ordering::Relaxed),
            dead_letter_failures: self.dead_letter_failures.load(Ordering::Relaxed),
        }
    }

    /// Messages handled, from the bus or from cells of this host.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Failure replies.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Non-zero error counts, by code.
    pub fn errors_by_code(&self) -> impl Iterator<Item = (ErrorCode, u64)> + '_ {
        ErrorCode::all()
            .map(|c| (c, self.by_code[c.index()].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
    }

    /// `{"requests", "errors", "errors_by_code": {code: n}, "forwarded",
    /// "recent_latency_us"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let by_code: serde_json::Map<String, serde_json::Value> = self
            .errors_by_code()
            .map(|(c, n)| (c.as_str().to_owned(), n.into()))
            .collect();
        serde_json::json!({
            "requests": self.requests(),
            "errors": self.errors(),
            "errors_by_code": by_code,
            "forwarded": self.forwarded_count(),
            "recent_latency_us": self.recent_latency_us(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_by_code() {
        let stats = CellStats::default();
        stats.request();
        stats.request();
        stats.error(ErrorCode::Timeout);
        stats.error(ErrorCode::Internal);
        stats.error(ErrorCode::Timeout);
        assert_eq!(stats.requests(), 2);
        assert_eq!(stats.errors(), 3);
        let by: Vec<_> = stats.errors_by_code().collect();
        assert_eq!(by, [(ErrorCode::Timeout, 2), (ErrorCode::Internal, 1)]);
        assert_eq!(stats.to_json()["errors_by_code"]["timeout"], 2);
    }

    #[test]
    fn the_mean_wait_covers_one_window_and_reading_it_resets_nothing() {
        let stats = CellStats::default();
        let start = Instant::now();
        assert_eq!(stats.mean_wait_us_at(start), 0);
        stats.waited(Duration::from_millis(10));
        stats.waited(Duration::from_millis(30));
        assert_eq!(stats.mean_wait_us_at(start), 0, "the window is still open");
        let closed = start + WAIT_WINDOW;
        assert_eq!(stats.mean_wait_us_at(closed), 20_000);
        assert_eq!(stats.mean_wait_us_at(closed), 20_000, "a second reader");
        let next = closed + WAIT_WINDOW;
        assert_eq!(
            stats.mean_wait_us_at(next),
            0,
            "no waits in the next window"
        );
    }

    #[test]
    fn recent_latency_follows_the_messages() {
        let stats = CellStats::default();
        assert_eq!(stats.recent_latency_us(), 0);
        stats.handled_in(std::time::Duration::from_micros(800));
        assert_eq!(stats.recent_latency_us(), 800);
        for _ in 0..60 {
            stats.handled_in(std::time::Duration::from_millis(20));
        }
        let recent = stats.recent_latency_us();
        assert!((19_000..=20_000).contains(&recent), "{recent}");
    }
}
