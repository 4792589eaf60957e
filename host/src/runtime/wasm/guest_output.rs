//! Guest stdout and stderr when stdio is not granted: each line to the
//! host log (within the cell's log budget), the last few kept for the
//! error that reports a trap.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::runtime::last_lines::LastLines;
use crate::runtime::log_budget::LogBudget;

/// Guest stdout/stderr when stdio is not granted: each line goes to the
/// host log, tagged with the cell, and the last few are kept for error
/// reports.
#[derive(Clone)]
pub struct GuestOutput {
    cell: Arc<str>,
    stream: &'static str,
    log: Arc<LogBudget>,
    last: Arc<Mutex<LastLines>>,
}

const KEPT_LINES: usize = 4;
/// Longer lines are logged in pieces of this size.
const MAX_LINE: usize = 4096;

impl GuestOutput {
    pub(super) fn new(cell: Arc<str>, stream: &'static str, log: Arc<LogBudget>) -> Self {
        Self {
            cell,
            stream,
            log,
            last: Arc::new(Mutex::new(LastLines::new(KEPT_LINES, MAX_LINE))),
        }
    }

    /// The last lines written (without Rust's "note: run with
    /// RUST_BACKTRACE" hint), then forgotten.
    pub fn take_tail(&self) -> Vec<String> {
        let mut lines = self.last.lock().unwrap().take();
        lines.retain(|l| !l.starts_with("note: run with"));
        lines
    }

    fn write_bytes(&self, bytes: &[u8]) {
        self.last.lock().unwrap().write(bytes, |line| {
            if self.log.admit() {
                tracing::info!(cell = %self.cell, stream = self.stream, "{line}");
            }
        });
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
    fn guest_output_past_the_cells_log_budget_is_counted_not_logged() {
        let budget = LogBudget::new("a.b");
        let out = GuestOutput::new("a.b".into(), "stdout", budget.clone());
        out.write_bytes("a line\n".repeat(5_000).as_bytes());
        assert!(budget.dropped() >= 3_800, "{} dropped", budget.dropped());
        // The last lines are kept for error reports all the same.
        assert_eq!(out.take_tail(), vec!["a line"; KEPT_LINES]);
    }
}
