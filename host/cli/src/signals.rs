//! The signals a long-running command stops on.

use anyhow::Context as _;

/// Waits for SIGINT or SIGTERM; returns its name.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").context("cannot listen for SIGINT"),
        _ = term.recv() => Ok("SIGTERM"),
    }
}
