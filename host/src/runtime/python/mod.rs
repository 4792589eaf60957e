//! The native Python pool: `runtime = "python"` cells run in worker
//! processes that embed CPython through pyo3, for cells that need CPython
//! itself (numpy, C extensions).
//!
//! A worker is the `cbs-host` binary in its hidden `python-worker` mode
//! (`host/cli/src/python_worker.rs`: in the command-line crate, so this
//! library and its tests do not link libpython). It runs the cell's venv's interpreter and
//! packages and speaks the process protocol (docs/sidecar-protocol.md) on
//! its stdin/stdout, so the pool reuses `runtime::process` whole: the
//! supervisor restarts a crashed worker with backoff and fails its
//! in-flight messages with `cell_failed`, and a worker that misses a
//! deadline is killed and replaced. The Python side of the protocol is the
//! SDK's `cbs_cell.worker`. See docs/adr/0009-native-python-pool.md.

pub mod lock;
pub mod sdk;
pub mod venv;
pub mod venvs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use tokio::sync::Semaphore;

use self::venv::Venv;
use super::process::{ProcessScale, SidecarCell};
use super::{CellInfo, CellRunner, Deadline, Reply};
use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::manifest::{CellSpec, PythonSpec, SidecarSpec};
use crate::outbound::Outbound;

/// The hidden subcommand of `cbs-host` that runs one worker.
pub const WORKER_COMMAND: &str = "python-worker";
/// Messages sent ahead to a worker per handler thread, so that it never
/// waits for the host between messages (and reads and answers them in
/// batches). A message queued behind a stuck one fails with it.
pub const READ_AHEAD: u32 = 32;

/// A native Python cell: `[python] workers` processes, each handling up to
/// `max_concurrency` messages at once.
pub struct PythonCell {
    workers: SidecarCell,
    /// Messages on the workers: `workers × max_concurrency × READ_AHEAD`.
    /// More wait here, in the host, where their deadline still applies,
    /// rather than in a worker's pipe.
    slots: Semaphore,
    /// What `slots` holds when free.
    slot_count: u32,
    /// The most workers it may run.
    max_workers: u32,
    id: String,
    /// Held for the cell's life: a venv built from a bundle's lock stays
    /// on disk while it runs ([`crate::retention`]).
    _venv: Venv,
}

impl PythonCell {
    /// Checks the venv and starts every worker (each completes its
    /// handshake, so a cell that cannot import fails the load). The venv
    /// is `venv` (built from a bundle's lock), else the cell folder's
    /// `[python] venv`.
    pub async fn start(
        spec: &CellSpec,
        outbound: Arc<Outbound>,
        venv: Option<Venv>,
    ) -> anyhow::Result<Self> {
        let m = &spec.manifest;
        let python = m.python.as_ref().with_context(|| {
            format!("cell {} has runtime \"python\" but no [python] table", m.id)
        })?;
        let venv = match venv {
            Some(venv) => venv,
            None => Venv::open(&spec.resolve(&python.venv))?,
        };
        let command = worker_command(&worker_binary()?, spec, python, &venv);
        let sidecar = SidecarSpec {
            command,
            processes: python.workers,
            max_frame_kb: 1024,
            env: Default::default(),
        };
        let scale = ProcessScale::of(m, python.max_concurrency);
        let max_workers = scale.map_or(python.workers, |s| s.max);
        let workers =
            SidecarCell::start_with(spec, &sidecar, scale, outbound, "python worker").await?;
        // Within bounds: manifest::bounds keeps the product far below u32::MAX.
        let slot_count = max_workers * python.max_concurrency * READ_AHEAD;
        Ok(Self {
            workers,
            slots: Semaphore::new(slot_count as usize),
            slot_count,
            max_workers,
            id: m.id.clone(),
            _venv: venv,
        })
    }
}

/// argv of one worker.
fn worker_command(bin: &Path, spec: &CellSpec, python: &PythonSpec, venv: &Venv) -> Vec<String> {
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p).display().to_string();
    vec![
        bin.display().to_string(),
        WORKER_COMMAND.to_owned(),
        "--venv".to_owned(),
        abs(venv.dir.clone()),
        "--path".to_owned(),
        abs(spec.resolve(&python.path)),
        "--module".to_owned(),
        python.module.clone(),
        "--handler".to_owned(),
        python.handler.clone(),
        "--threads".to_owned(),
        python.max_concurrency.to_string(),
    ]
}

/// The `cbs-host` binary that runs workers: `$CBS_HOST_BIN`, else this
/// process when it is `cbs-host`, else a `cbs-host` next to this
/// executable or one folder up (where cargo puts it for test executables).
pub fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CBS_HOST_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    if exe.file_name().is_some_and(|n| n == "cbs-host") {
        return Ok(exe);
    }
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("cbs-host"));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the cbs-host binary that runs Python workers: set CBS_HOST_BIN (or `cargo build -p cbs-cli`)"
    )
}

#[async_trait]
impl CellRunner for PythonCell {
    async fn handle(&self, envelope: Arc<Envelope>, deadline: Deadline) -> Result<Reply, BusError> {
        // A free slot is taken at once; only a full pool arms a timer.
        let slot = match self.slots.try_acquire() {
            Ok(permit) => Ok(Ok(permit)),
            Err(_) => tokio::time::timeout_at(deadline.reply_by.into(), self.slots.acquire()).await,
        };
        let Ok(Ok(_slot)) = slot else {
            return Err(BusError::new(
                ErrorCode::Timeout,
                format!(
                    "every python worker of cell {} stayed busy until this message's deadline",
                    self.id
                ),
            ));
        };
        self.workers.handle(envelope, deadline).await
    }

    fn info(&self) -> &CellInfo {
        self.workers.info()
    }

    fn instances(&self) -> usize {
        self.workers.instances()
    }

    fn pool(&self) -> Option<crate::stats::Pool> {
        let free = self.slots.available_permits() as u32;
        Some(crate::stats::Pool {
            live: self.workers.live_processes() as u32,
            max: self.max_workers,
            messages: self.slot_count.saturating_sub(free),
        })
    }

    async fn shutdown(&self, grace: Duration) {
        self.workers.shutdown(grace).await;
    }
}
