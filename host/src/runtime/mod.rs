//! Runtimes run cells: `wasm` (components in wasmtime), `process`
//! (supervised sidecar processes) and `python` (the native CPython pool,
//! built on `process`); all behind one trait.

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

/// A loaded cell, ready to handle messages.
#[async_trait]
pub trait CellRunner: Send + Sync {
    /// Runs the cell on one message; never past `deadline`.
    async fn handle(&self, envelope: Arc<Envelope>, deadline: Instant) -> Result<Reply, BusError>;

    /// What the cell reported at load.
    fn info(&self) -> &CellInfo;

    /// Warm instances (wasm) or live processes (process runtimes).
    fn instances(&self) -> usize {
        0
    }

    /// Stops the cell's runtime resources (processes), after the body has
    /// drained its messages.
    async fn shutdown(&self, _grace: Duration) {}
}
