//! Cells as supervised processes speaking the sidecar protocol
//! (docs/sidecar-protocol.md) over stdin/stdout: Dart cells, and any
//! language without a component toolchain.

pub mod frame;
pub mod protocol;

mod conn;
mod group;
mod pool;
mod supervisor;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use tokio::task::JoinHandle;

use self::pool::Pool;
pub use self::pool::ProcessScale;
use self::supervisor::Launch;
use super::{CellInfo, CellRunner, Deadline, Reply};
use crate::envelope::{BusError, Envelope};
use crate::manifest::{CellSpec, Manifest, SidecarSpec};
use crate::outbound::Outbound;

impl ProcessScale {
    /// The `[scale]` of a process cell whose processes each take
    /// `per_process` messages at once; `None` for a fixed count.
    pub fn of(manifest: &Manifest, per_process: u32) -> Option<Self> {
        let (min, max) = manifest.process_bounds()?;
        Some(Self {
            min,
            max,
            per_process: per_process.max(1),
            idle: Duration::from_millis(manifest.scale.idle_ms),
        })
    }
}

/// A sidecar cell: `[sidecar] processes` supervised processes, or between
/// `[scale] min` and `max` of them.
pub struct SidecarCell {
    id: String,
    kind: &'static str,
    info: CellInfo,
    pool: Arc<Pool>,
    next: AtomicUsize,
    reaper: JoinHandle<()>,
}

impl SidecarCell {
    /// Starts every process and completes its handshake: a sidecar that
    /// cannot start fails the load with the reason.
    pub async fn start(spec: &CellSpec, outbound: Arc<Outbound>) -> anyhow::Result<Self> {
        let sidecar = spec.manifest.sidecar.as_ref().with_context(|| {
            format!(
                "cell {} has runtime \"sidecar\" but no [sidecar] table",
                spec.manifest.id
            )
        })?;
        // A sidecar takes many messages at once: the cell's concurrency,
        // shared by as many processes as it may run.
        let m = &spec.manifest;
        let max = m.process_bounds().map_or(sidecar.processes, |(_, max)| max);
        let scale = ProcessScale::of(m, m.limits.concurrency.div_ceil(max.max(1)));
        Self::start_with(spec, sidecar, scale, outbound, "sidecar").await
    }

    /// Starts the processes `sidecar` describes — `[scale] min` of them
    /// when `scale` is set — for runtimes that run processes of their own
    /// making, such as the native Python pool; `kind` names them in
    /// messages.
    pub async fn start_with(
        spec: &CellSpec,
        sidecar: &SidecarSpec,
        scale: Option<ProcessScale>,
        outbound: Arc<Outbound>,
        kind: &'static str,
    ) -> anyhow::Result<Self> {
        let manifest = Arc::new(spec.manifest.clone());
        let launch = Arc::new(Launch::new(
            &spec.dir,
            manifest.clone(),
            sidecar,
            outbound,
            kind,
        )?);
        let pool = Pool::new(launch.clone(), scale);
        let mut info = None;
        for _ in 0..scale.map_or(sidecar.processes, |s| s.min) {
            let (conn, process, described) = match launch.start().await {
                Ok(started) => started,
                Err(e) => {
                    // The cell does not load: stop the processes it started.
                    pool.abort();
                    return Err(e);
                }
            };
            info.get_or_insert(CellInfo {
                id: described.id,
                version: described.version,
                input_schema: described.input_schema,
                output_schema: described.output_schema,
            });
            pool.add(conn, process);
        }
        let info = info.context("a process cell starts at least one process")?;
        Ok(Self {
            id: manifest.id.clone(),
            kind,
            info,
            reaper: tokio::spawn(pool.clone().reap()),
            pool,
            next: AtomicUsize::new(0),
        })
    }

    /// Processes running now.
    pub fn live_processes(&self) -> usize {
        self.pool
            .slots()
            .iter()
            .filter(|s| s.conn().is_some())
            .count()
    }

    /// Supervisors still running: each restarts its process when it dies,
    /// until the cell shuts down or scales it away.
    pub fn supervising(&self) -> usize {
        self.pool.supervising()
    }

    /// Process ids of the live processes.
    pub fn pids(&self) -> Vec<u32> {
        self.pool
            .slots()
            .iter()
            .filter_map(|s| s.conn().map(|c| c.pid))
            .collect()
    }

    fn unavailable(&self) -> BusError {
        let last = self.pool.slots().iter().find_map(|s| s.last_failure());
        let mut message = format!(
            "{} {} has no running process; it is being restarted",
            self.kind, self.id
        );
        if let Some(why) = last {
            message.push_str(&format!(" (last start failed: {why})"));
        }
        BusError::unavailable(message)
    }
}

#[async_trait]
impl CellRunner for SidecarCell {
    async fn handle(&self, envelope: Arc<Envelope>, deadline: Deadline) -> Result<Reply, BusError> {
        let picked = self.pool.pick(self.next.fetch_add(1, Ordering::Relaxed));
        let Some((_assigned, conn)) = picked else {
            return Err(self.unavailable());
        };
        conn.handle(envelope, deadline).await
    }

    fn info(&self) -> &CellInfo {
        &self.info
    }

    fn instances(&self) -> usize {
        self.live_processes()
    }

    async fn shutdown(&self, grace: Duration) {
        self.reaper.abort();
        for slot in self.pool.slots() {
            slot.close(grace).await;
        }
    }
}

impl Drop for SidecarCell {
    fn drop(&mut self) {
        self.reaper.abort();
        // Dropping a supervisor drops its child, which kills the process.
        self.pool.abort();
    }
}
