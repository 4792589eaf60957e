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

/// Upper bounds of the latency histogram's buckets, µs: a 1-2-5 series
/// from 10 µs to 50 s. A message that took `t` counts in the first bucket
/// whose bound is at least `t`; one past every bound, in one more bucket.
pub const LATENCY_BOUNDS_US: [u64; 21] = [
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
    500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000,
];
const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// The most buckets taken from a peer's histogram.
pub const MAX_LATENCY_BUCKETS: usize = 64;

/// A latency histogram as discovery carries it: messages per bucket since
/// the cell version started (counters: the latency over a period is the
/// difference of two readings), and the buckets' upper bounds, µs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyCounts {
    /// Strictly increasing; at most [`MAX_LATENCY_BUCKETS`].
    pub bounds_us: Vec<u64>,
    /// One per bound, then the messages past the last bound.
    pub counts: Vec<u64>,
}

impl LatencyCounts {
    /// Itself if it is a histogram this host can read (a peer's reply may
    /// be anything): bounds strictly increasing and not too many, one
    /// count per bound and one more.
    pub fn checked(self) -> Option<Self> {
        let increasing = self.bounds_us.windows(2).all(|w| w[0] < w[1]);
        let fits = !self.bounds_us.is_empty() && self.bounds_us.len() <= MAX_LATENCY_BUCKETS;
        (increasing && fits && self.counts.len() == self.bounds_us.len() + 1).then_some(self)
    }

    /// The messages counted since `before` (an earlier reading of the same
    /// buckets; none when they differ).
    pub fn since(&self, before: &Self) -> Option<Self> {
        self.zip(before, |now, then| now.saturating_sub(then))
    }

    /// The upper bound of the bucket holding quantile `q` (0..1) of the
    /// messages counted, µs: at most this much (`u64::MAX` past the last
    /// bound); `None` with nothing counted.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(self.bounds_us.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }

    /// Both readings' counts added bucket by bucket (same buckets only).
    pub fn plus(&self, other: &Self) -> Option<Self> {
        self.zip(other, |a, b| a + b)
    }

    /// Each bucket's count and `other`'s, combined (same buckets only).
    fn zip(&self, other: &Self, f: impl Fn(u64, u64) -> u64) -> Option<Self> {
        if other.bounds_us != self.bounds_us || other.counts.len() != self.counts.len() {
            return None;
        }
        let counts = self
            .counts
            .iter()
            .zip(&other.counts)
            .map(|(a, b)| f(*a, *b))
            .collect();
        Some(Self {
            bounds_us: self.bounds_us.clone(),
            counts,
        })
    }
}

/// What a cell's messages occupy on one host now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workers {
    /// Running slots: messages it runs at once (`[limits] concurrency`).
    pub concurrency: u32,
    /// Of those, the ones running now.
    pub busy: u32,
    /// Messages admitted and not finished (running and queued).
    pub in_flight: u32,
    /// The worker processes of a native Python cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
}

/// A native Python cell's worker processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Workers running now.
    pub live: u32,
    /// The most it may run (`[python] workers`, or `[scale] max`).
    pub max: u32,
    /// Messages sent to the workers and not answered yet.
    pub messages: u32,
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
    /// Messages handled per latency bucket ([`LATENCY_BOUNDS_US`]).
    latency_buckets: [AtomicU64; LATENCY_BUCKETS],
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

    /// One message handled here in `elapsed`: counts it in its latency
    /// bucket, and moves the recent latency an eighth of the way towards
    /// it (racing updates may lose one; it is an estimate).
    pub(crate) fn handled_in(&self, elapsed: std::time::Duration) {
        let sample = (elapsed.as_micros() as u64).max(1);
        let bucket = LATENCY_BOUNDS_US.partition_point(|bound| *bound < sample);
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
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

    /// Messages handled per latency bucket since this version started.
    pub fn latency_counts(&self) -> LatencyCounts {
        LatencyCounts {
            bounds_us: LATENCY_BOUNDS_US.to_vec(),
            counts: self
                .latency_buckets
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
        }
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
    /// "recent_latency_us", "latency": {"bounds_us", "counts"}}`.
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
            "latency": self.latency_counts(),
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

    #[test]
    fn each_message_counts_in_the_first_bucket_that_holds_its_latency() {
        let stats = CellStats::default();
        for us in [
            1,
            10,
            11,
            800,
            1_000,
            49_999_999,
            50_000_000,
            50_000_001,
            u64::MAX / 2,
        ] {
            stats.handled_in(Duration::from_micros(us));
        }
        let latency = stats.latency_counts();
        assert_eq!(latency.bounds_us, LATENCY_BOUNDS_US);
        let at = |bound: u64| {
            let i = LATENCY_BOUNDS_US.iter().position(|b| *b == bound).unwrap();
            latency.counts[i]
        };
        assert_eq!(at(10), 2, "1 µs and 10 µs: up to the first bound");
        assert_eq!(at(20), 1);
        assert_eq!(at(1_000), 2, "800 µs and 1 ms");
        assert_eq!(at(50_000_000), 2);
        assert_eq!(latency.counts[LATENCY_BOUNDS_US.len()], 2, "past 50 s");
        assert_eq!(latency.counts.iter().sum::<u64>(), 9);
        assert_eq!(latency.clone().checked(), Some(latency.clone()));
        assert_eq!(stats.to_json()["latency"]["counts"][0], 2);
    }

    #[test]
    fn a_histogram_from_a_peer_is_read_only_when_well_formed() {
        let of =
            |bounds_us: Vec<u64>, counts: Vec<u64>| LatencyCounts { bounds_us, counts }.checked();
        assert!(of(vec![1, 2], vec![0, 0, 0]).is_some());
        assert!(of(vec![1, 2], vec![0, 0]).is_none(), "a count short");
        assert!(of(vec![2, 2], vec![0, 0, 0]).is_none(), "not increasing");
        assert!(of(vec![], vec![0]).is_none(), "no bound");
        let many: Vec<u64> = (1..=MAX_LATENCY_BUCKETS as u64 + 1).collect();
        let counts = vec![0; many.len() + 1];
        assert!(of(many, counts).is_none(), "too many buckets");
    }
}
