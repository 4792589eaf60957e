//! Runtimes run cells: `wasm` (components in wasmtime), `process`
//! (supervised sidecar processes) and `python` (the native CPython pool,
//! built on `process`); all behind one trait.

pub mod last_lines;
pub mod log_budget;
pub mod process;
pub mod python;
pub mod wasm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use crate::envelope::{BusError, Envelope};

/// A cell's successful reply, before the body checks and wraps it.
#[derive(Debug)]
pub struct Reply {
    /// JSON text.
    pub payload: String,
    pub schema: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// What a cell says about itself (`describe()`).
#[derive(Debug, Clone, Serialize)]
pub struct CellInfo {
    pub id: String,
    pub version: String,
    pub input_schema: Option<String>,
    pub output_schema: Option<String>,
}

/// When one message must be done.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// The caller stops waiting: its remaining budget or the cell's limit,
    /// whichever ends first.
    pub reply_by: Instant,
    /// The cell's own limit (`timeout_ms` from arrival). A process still
    /// busy with the message then is stuck and is killed; a caller's
    /// shorter budget only abandons the message.
    pub cell_limit: Instant,
}

impl Deadline {
    /// The cell's own limit, and no caller budget shorter than it.
    pub fn of_cell(limit: Instant) -> Self {
        Self {
            reply_by: limit,
            cell_limit: limit,
        }
    }
}

/// A loaded cell, ready to handle messages.
#[async_trait]
pub trait CellRunner: Send + Sync {
    /// Runs the cell on one message; never past `deadline.reply_by`.
    async fn handle(&self, envelope: Arc<Envelope>, deadline: Deadline) -> Result<Reply, BusError>;

    /// What the cell reported at load.
    fn info(&self) -> &CellInfo;

    /// Warm instances (wasm) or live processes (process runtimes).
    fn instances(&self) -> usize {
        0
    }

    /// The compiler of the code a wasm cell runs (ADR 34).
    fn tier(&self) -> Option<wasm::Tier> {
        None
    }

    /// The worker processes of a pooled runtime (native Python), if any.
    fn pool(&self) -> Option<crate::stats::Pool> {
        None
    }

    /// Stops the cell's runtime resources (processes), after the body has
    /// drained its messages.
    async fn shutdown(&self, _grace: Duration) {}
}
