//! A gateway served on its own task: bound to an address, stopped on
//! request with the requests in progress let finish.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::Gateway;

/// An HTTP server running a gateway.
pub struct Serving {
    addr: SocketAddr,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Serving {
    /// Binds `addr` (port 0 picks one) and serves `gateway` there.
    pub async fn start(addr: SocketAddr, gateway: Arc<Gateway>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
        let bound = listener.local_addr()?;
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) =
                super::serve(gateway, listener, async move { stopped.notified().await }).await
            {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
        tracing::info!(addr = %bound, "serving HTTP on http://{bound} (OpenAPI at /openapi.json)");
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
