//! An HTTP server on its own task: bound to an address, stopped on
//! request with the requests in progress let finish. The gateway's routes
//! (`cbs-host run --http`, `cbs gateway`) and the console run on it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::listen::{self, Limits};
use super::Gateway;

/// A running HTTP server.
pub struct Serving {
    addr: SocketAddr,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Serving {
    /// Binds `addr` (port 0 picks one) and serves `gateway` there.
    pub async fn start(addr: SocketAddr, gateway: Arc<Gateway>) -> anyhow::Result<Self> {
        let limits = gateway.limits();
        let serving = Self::app(addr, super::server::app(gateway), limits, "HTTP").await?;
        let bound = serving.addr;
        tracing::info!(addr = %bound, "serving HTTP on http://{bound} (OpenAPI at /openapi.json)");
        Ok(serving)
    }

    /// Binds `addr` (port 0 picks one) and serves `app` there within
    /// `limits`; `what` names the server in errors.
    pub async fn app(
        addr: SocketAddr,
        app: axum::Router,
        limits: Limits,
        what: &'static str,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for {what} on {addr}"))?;
        let bound = listener.local_addr()?;
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let stopping = async move { stopped.notified().await };
            if let Err(e) = listen::serve(app, listener, limits, stopping).await {
                tracing::error!(error = %e, "the {what} server stopped");
            }
        });
        Ok(Self {
            addr: bound,
            stop,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the requests in progress.
    pub async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}
