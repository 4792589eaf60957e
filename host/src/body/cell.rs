//! A loaded cell: manifest, contract and runner, with its admission limits
//! and counters. One value per served version; a hot swap makes a new one.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::chaos::Chaos;
use crate::contract::Contract;
use crate::envelope::{header, Envelope};
use crate::manifest::{CellSpec, Manifest};
use crate::outbound::Outbound;
use crate::resilience::BreakerReport;
use crate::runtime::wasm::CacheOutcome;
use crate::runtime::{CellInfo, CellRunner};
use crate::stats::{CellLoad, CellStats, Workers};

pub struct LoadedCell {
    pub spec: CellSpec,
    pub manifest: Arc<Manifest>,
    pub contract: Contract,
    pub runner: Arc<dyn CellRunner>,
    /// Where the compiled component came from (wasm cells).
    pub cache: Option<CacheOutcome>,
    pub stats: CellStats,
    /// Messages admitted (running + queued): `concurrency + queue`.
    pub(super) admitted: Arc<Semaphore>,
    /// Messages running: `concurrency`.
    pub(super) running: Semaphore,
    /// Durable messages pulled and not finished: `concurrency`. A pulled
    /// message that waited in the queue could outlive its ack wait and be
    /// delivered again while still held, so pulls stop at what can run.
    pub(super) pulled: Arc<Semaphore>,
    /// Fault injection, when configured.
    pub(super) chaos: Option<Chaos>,
    /// The cell's calls out (policies and breakers).
    pub(super) outbound: Arc<Outbound>,
    pub(super) latency: Histogram,
    /// Records each message handled, for `cbs flows`.
    pub(super) flows: crate::flows::Recorder,
    /// Tenants' request rates on this host.
    pub(super) tenants: Arc<crate::quota::Tenants>,
    /// The unpacked bundle it runs from, kept on disk while it lives.
    pub(super) _folder: Option<crate::retention::Lease>,
}

impl LoadedCell {
    pub fn info(&self) -> &CellInfo {
        self.runner.info()
    }

    /// How long a message may take here: the cell's `timeout_ms`, or the
    /// caller's remaining budget (`Cbs-Budget-Ms`) when shorter.
    pub fn time_allowed(&self, envelope: &Envelope) -> Duration {
        let limit = Duration::from_millis(self.manifest.limits.timeout_ms);
        envelope
            .headers
            .get(header::BUDGET_MS)
            .and_then(|b| b.parse().ok())
            .map_or(limit, |b| Duration::from_millis(b).min(limit))
    }

    /// Whether a recording of its requests is on (`cbs record`).
    pub fn recording(&self) -> bool {
        self.outbound.tape().is_some()
    }

    /// The cell's HTTP routes (`[[http]]`), each with its contract.
    pub fn http_targets(&self) -> Vec<crate::http::Target> {
        let m = &self.manifest;
        let schema = |s: &Option<crate::contract::Schema>| s.as_ref().map(|s| s.value().clone());
        m.http
            .iter()
            .map(|route| crate::http::Target {
                cell: m.id.clone(),
                version: m.version.clone(),
                route: route.clone(),
                input: schema(&self.contract.input),
                output: schema(&self.contract.output),
                timeout_ms: m.limits.timeout_ms,
            })
            .collect()
    }

    /// The breaker of each call target: its state and openings.
    pub fn breakers(&self) -> Vec<(String, BreakerReport)> {
        self.outbound.breakers()
    }

    /// Its load on this host now, for heartbeats and load reports.
    pub fn load(&self) -> CellLoad {
        let refused = self
            .stats
            .errors_by_code()
            .find(|(code, _)| *code == crate::error::ErrorCode::Capacity)
            .map_or(0, |(_, n)| n);
        CellLoad {
            in_flight: self.in_flight() as u32,
            concurrency: self.manifest.limits.concurrency,
            room: self.admission_room() as u32,
            refused,
            queue_wait_us: self.stats.mean_wait_us(),
            latency_us: self.stats.recent_latency_us(),
        }
    }

    /// Its running slots and how many are busy, the messages in flight,
    /// and a pooled runtime's workers.
    pub fn workers(&self) -> Workers {
        let concurrency = self.manifest.limits.concurrency;
        let free = self.running.available_permits() as u32;
        Workers {
            concurrency,
            busy: concurrency.saturating_sub(free),
            in_flight: self.in_flight() as u32,
            pool: self.runner.pool(),
        }
    }

    /// Messages admitted and not finished (running or queued).
    pub fn in_flight(&self) -> usize {
        self.admission_limit() as usize - self.admitted.available_permits()
    }

    /// How many messages may be admitted at once: running plus queued.
    fn admission_limit(&self) -> u32 {
        let limits = &self.manifest.limits;
        limits.concurrency + limits.queue
    }

    /// Waits until the cell can admit one more message (durable pulls);
    /// `None` only if admission was closed.
    pub async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.admitted.clone().acquire_owned().await.ok()
    }

    /// Waits until the cell holds fewer pulled durable messages than it
    /// runs at once; `None` only if closed.
    pub(super) async fn pull_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.pulled.clone().acquire_owned().await.ok()
    }

    /// How many more durable messages may be pulled now without waiting.
    pub(super) fn pull_room(&self) -> usize {
        self.pulled.available_permits()
    }

    /// How many more messages could run now, without waiting.
    pub fn admission_room(&self) -> usize {
        let free = self.admitted.available_permits();
        free.min(self.manifest.limits.concurrency as usize)
    }

    /// Admits one message, or `None` when the cell is at its limits.
    pub(super) fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.admitted.clone().try_acquire_owned().ok()
    }

    /// Waits until nothing is running or queued, up to `grace`; returns
    /// whether that happened in time.
    pub(super) async fn drained(&self, grace: Duration) -> bool {
        // Every permit back means nothing is running or queued.
        tokio::time::timeout(grace, self.admitted.acquire_many(self.admission_limit()))
            .await
            .is_ok()
    }
}

/// Lets a replaced or removed version finish its admitted messages (up to
/// `grace`), then stops its runtime. Returns whether all finished in time.
pub async fn retire(cell: Arc<LoadedCell>, grace: Duration) -> bool {
    let finished = cell.drained(grace).await;
    cell.runner.shutdown(grace).await;
    finished
}
