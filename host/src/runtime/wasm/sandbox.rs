//! One store's state: the WASI context built from the cell's grants (deny by
//! default), its memory limit, and the host side of the `bus` and `log`
//! imports of the cell world.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::clocks::{CoarseMonotonic, CoarseWall};
use crate::runtime::log_budget::LogBudget;

use super::bindings::cbs::cell::{bus, log, types};
use crate::envelope::{BusError, ErrorCode};
use crate::manifest::Manifest;
use crate::outbound::{Flow, Outbound};

/// Per-store state of one cell instance.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) memory: MemoryLimit,
    pub(super) outbound: Arc<Outbound>,
    /// The message being handled (none between messages).
    pub(super) flow: Option<Flow>,
    /// When the current call must end; read by the epoch callback.
    pub(super) deadline: Instant,
    /// Last lines the guest wrote to stderr (panic messages), when stdio is
    /// not inherited.
    pub(super) stderr: GuestOutput,
}

impl Sandbox {
    /// A new sandbox for one instance: WASI with nothing the manifest does
    /// not grant (no sockets; only granted folders and variables; coarse
    /// clocks). File grants must already be absolute (see `body::load`).
    pub fn new(
        manifest: &Manifest,
        outbound: Arc<Outbound>,
        log: Arc<LogBudget>,
    ) -> wasmtime::Result<Self> {
        let cell: Arc<str> = manifest.id.as_str().into();
        let stderr = GuestOutput::new(cell.clone(), "stderr", log.clone());
        let grants = &manifest.capabilities;
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if manifest.capabilities.stdio {
            wasi.inherit_stdin().inherit_stdout().inherit_stderr();
        } else {
            wasi.stdout(GuestOutput::new(cell, "stdout", log))
                .stderr(stderr.clone());
        }
        for grant in &grants.files {
            let perms = if grant.write {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            if let Err(e) = wasi.preopened_dir(&grant.host, &grant.guest, perms) {
                wasmtime::bail!("cannot open {} for the cell: {e}", grant.host.display());
            }
        }
        for (name, value) in &grants.env {
            wasi.env(name, value);
        }
        if !grants.precise_clocks {
            wasi.wall_clock(CoarseWall)
                .monotonic_clock(CoarseMonotonic::new());
        }
        Ok(Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            memory: MemoryLimit::new((manifest.memory_mb() as usize) << 20),
            outbound,
            flow: None,
            deadline: Instant::now(),
            stderr,
        })
    }

    fn correlation_id(&self) -> &str {
        self.flow
            .as_ref()
            .map_or("", |f| f.parent.correlation_id.as_str())
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for Sandbox {}

impl bus::Host for Sandbox {
    async fn request(
        &mut self,
        cell_id: String,
        payload: String,
        timeout_ms: u32,
    ) -> Result<String, types::CellError> {
        let flow = self.flow.as_ref().ok_or_else(outside_a_message)?;
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.into()));
        // `Outbound` makes the client span of each attempt.
        self.outbound
            .request(flow, &cell_id, payload, timeout)
            .await
            .map_err(to_wit)
    }

    async fn publish(&mut self, subject: String, payload: String) -> Result<(), types::CellError> {
        let flow = self.flow.as_ref().ok_or_else(outside_a_message)?;
        self.outbound
            .publish(flow, &subject, payload)
            .await
            .map_err(to_wit)
    }
}

impl log::Host for Sandbox {
    async fn log(&mut self, level: log::Level, message: String) {
        let cell = self.outbound.cell_id();
        let correlation_id = self.correlation_id();
        match level {
            log::Level::Trace => tracing::trace!(cell, correlation_id, "{message}"),
            log::Level::Debug => tracing::debug!(cell, correlation_id, "{message}"),
            log::Level::Info => tracing::info!(cell, correlation_id, "{message}"),
            log::Level::Warn => tracing::warn!(cell, correlation_id, "{message}"),
            log::Level::Error => tracing::error!(cell, correlation_id, "{message}"),
        }
    }
}

fn outside_a_message() -> types::CellError {
    to_wit(BusError::new(
        ErrorCode::ContractViolation,
        "bus calls are only allowed while handling a message",
    ))
}

/// Host error → WIT error.
pub fn to_wit(e: BusError) -> types::CellError {
    use types::ErrorCode as W;
    let code = match e.code {
        ErrorCode::InvalidInput => W::InvalidInput,
        ErrorCode::ContractViolation => W::ContractViolation,
        ErrorCode::NotFound => W::NotFound,
        ErrorCode::Timeout => W::Timeout,
        ErrorCode::Unavailable => W::Unavailable,
        ErrorCode::CircuitOpen => W::CircuitOpen,
        ErrorCode::Capacity => W::Capacity,
        ErrorCode::CellFailed => W::CellFailed,
        ErrorCode::Internal => W::Internal,
    };
    types::CellError {
        code,
        message: e.message,
        details: e.details.map(|d| d.to_string()),
    }
}

/// WIT error → host error.
pub fn from_wit(e: types::CellError) -> BusError {
    use types::ErrorCode as W;
    let code = match e.code {
        W::InvalidInput => ErrorCode::InvalidInput,
        W::ContractViolation => ErrorCode::ContractViolation,
        W::NotFound => ErrorCode::NotFound,
        W::Timeout => ErrorCode::Timeout,
        W::Unavailable => ErrorCode::Unavailable,
        W::CircuitOpen => ErrorCode::CircuitOpen,
        W::Capacity => ErrorCode::Capacity,
        W::CellFailed => ErrorCode::CellFailed,
        W::Internal => ErrorCode::Internal,
    };
    let details = e
        .details
        .map(|d| serde_json::from_str(&d).unwrap_or(serde_json::Value::String(d)));
    BusError {
        code,
        message: e.message,
        details,
    }
}

/// Caps linear memory and remembers whether the cap was hit, so a trap can
/// be reported as "memory limit" rather than a generic failure.
pub struct MemoryLimit {
    max_bytes: usize,
    pub(super) hit: bool,
}

impl MemoryLimit {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            hit: false,
        }
    }

    pub fn max_mb(&self) -> usize {
        self.max_bytes >> 20
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            wasmtime::bail!(
                "memory limit of {} MiB reached (wanted {} MiB)",
                self.max_mb(),
                desired >> 20
            );
        }
        Ok(true)
    }

    /// Tables are bounded as in the pooling allocator, whichever allocator
    /// runs: a guest growing a table in a loop would otherwise take host
    /// memory without limit.
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= super::engine::TABLE_ELEMENTS)
    }
}

/// Guest stdout/stderr when stdio is not granted: each line goes to the
/// host log, tagged with the cell, and the last few are kept for error
/// reports.
#[derive(Clone)]
pub struct GuestOutput {
    cell: Arc<str>,
    stream: &'static str,
    log: Arc<LogBudget>,
    state: Arc<Mutex<OutputState>>,
}

#[derive(Default)]
struct OutputState {
    partial: Vec<u8>,
    last: VecDeque<String>,
}

const KEPT_LINES: usize = 4;
const MAX_LINE: usize = 4096;

impl GuestOutput {
    fn new(cell: Arc<str>, stream: &'static str, log: Arc<LogBudget>) -> Self {
        Self {
            cell,
            stream,
            log,
            state: Arc::default(),
        }
    }

    /// The last lines written (without Rust's "note: run with
    /// RUST_BACKTRACE" hint), then forgotten.
    pub fn take_tail(&self) -> Vec<String> {
        let mut state = self.state.lock().unwrap();
        let partial = std::mem::take(&mut state.partial);
        if !partial.is_empty() {
            state
                .last
                .push_back(String::from_utf8_lossy(&partial).into_owned());
        }
        state
            .last
            .drain(..)
            .filter(|l| !l.starts_with("note: run with"))
            .collect()
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap();
        for &b in bytes {
            if b != b'\n' && state.partial.len() < MAX_LINE {
                state.partial.push(b);
                continue;
            }
            let line = String::from_utf8_lossy(&state.partial).into_owned();
            state.partial.clear();
            if b != b'\n' {
                state.partial.push(b);
            }
            if self.log.admit() {
                tracing::info!(cell = %self.cell, stream = self.stream, "{line}");
            }
            if state.last.len() == KEPT_LINES {
                state.last.pop_front();
            }
            state.last.push_back(line);
        }
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_grow_only_to_the_pooling_bound() {
        let mut limit = MemoryLimit::new(1 << 20);
        let bound = super::super::engine::TABLE_ELEMENTS;
        assert!(limit.table_growing(0, bound, None).unwrap());
        assert!(!limit.table_growing(0, bound + 1, None).unwrap());
    }

    #[test]
    fn guest_output_past_the_cells_log_budget_is_counted_not_logged() {
        let budget = LogBudget::new("a.b");
        let out = GuestOutput::new("a.b".into(), "stdout", budget.clone());
        out.write_bytes("a line\n".repeat(5_000).as_bytes());
        assert!(budget.dropped() >= 3_800, "{} dropped", budget.dropped());
        // The last lines are kept for error reports all the same.
        assert_eq!(out.take_tail(), vec!["a line"; KEPT_LINES]);
    }
}
