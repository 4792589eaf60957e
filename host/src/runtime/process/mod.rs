//! Cells as supervised processes speaking the sidecar protocol
//! (docs/sidecar-protocol.md) over stdin/stdout: Dart cells, and any
//! language without a component toolchain.

pub mod frame;
pub mod protocol;

mod conn;
mod supervisor;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use tokio::task::JoinHandle;

use self::supervisor::{supervise, Launch, Slot};
use super::{CellInfo, CellRunner, Deadline, Reply};
use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::manifest::{CellSpec, SidecarSpec};
use crate::outbound::Outbound;

/// A sidecar cell: `[sidecar] processes` supervised processes.
pub struct SidecarCell {
    id: String,
    kind: &'static str,
    info: CellInfo,
    slots: Vec<Arc<Slot>>,
    next: AtomicUsize,
    supervisors: Vec<JoinHandle<()>>,
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
        Self::start_with(spec, sidecar, outbound, "sidecar").await
    }

    /// Starts the processes `sidecar` describes (for runtimes that run
    /// processes of their own making, such as the native Python pool);
    /// `kind` names them in messages.
    pub async fn start_with(
        spec: &CellSpec,
        sidecar: &SidecarSpec,
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
        let (mut slots, mut supervisors, mut info) =
            (Vec::new(), Vec::<JoinHandle<()>>::new(), None);
        for _ in 0..sidecar.processes {
            let (conn, child, described) = match launch.start().await {
                Ok(started) => started,
                Err(e) => {
                    // The cell does not load: stop the processes it started.
                    for task in &supervisors {
                        task.abort();
                    }
                    return Err(e);
                }
            };
            info.get_or_insert(CellInfo {
                id: described.id,
                version: described.version,
                input_schema: described.input_schema,
                output_schema: described.output_schema,
            });
            let slot = Arc::new(Slot::new(launch.clone(), conn.clone()));
            supervisors.push(tokio::spawn(supervise(slot.clone(), conn, child)));
            slots.push(slot);
        }
        Ok(Self {
            id: manifest.id.clone(),
            kind,
            info: info.expect("processes >= 1"),
            slots,
            next: AtomicUsize::new(0),
            supervisors,
        })
    }

    /// Processes running now.
    pub fn live_processes(&self) -> usize {
        self.slots.iter().filter(|s| s.conn().is_some()).count()
    }

    /// Supervisors still running: each restarts its process when it dies,
    /// until the cell shuts down.
    pub fn supervising(&self) -> usize {
        self.supervisors.iter().filter(|t| !t.is_finished()).count()
    }

    /// Process ids of the live processes.
    pub fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.conn().map(|c| c.pid))
            .collect()
    }

    fn unavailable(&self) -> BusError {
        let last = self.slots.iter().find_map(|s| s.last_failure());
        let mut message = format!(
            "{} {} has no running process; it is being restarted",
            self.kind, self.id
        );
        if let Some(why) = last {
            message.push_str(&format!(" (last start failed: {why})"));
        }
        BusError::new(ErrorCode::Unavailable, message)
    }
}

#[async_trait]
impl CellRunner for SidecarCell {
    async fn handle(&self, envelope: Arc<Envelope>, deadline: Deadline) -> Result<Reply, BusError> {
        // Round-robin over live processes, preferring the least busy of two.
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = (0..n)
            .filter_map(|k| self.slots[(start + k) % n].conn())
            .take(2)
            .min_by_key(|c| c.in_flight());
        match conn {
            Some(conn) => conn.handle(envelope, deadline).await,
            None => Err(self.unavailable()),
        }
    }

    fn info(&self) -> &CellInfo {
        &self.info
    }

    fn instances(&self) -> usize {
        self.live_processes()
    }

    async fn shutdown(&self, grace: Duration) {
        for slot in &self.slots {
            slot.close(grace).await;
        }
    }
}

impl Drop for SidecarCell {
    fn drop(&mut self) {
        // Dropping a supervisor drops its child, which kills the process.
        for task in &self.supervisors {
            task.abort();
        }
    }
}
