//! A host: the body serving cells, with what a running `cbs-host` adds
//! around it — `/metrics`, the HTTP routes of its cells, its console, and following the
//! lattice's desired state. [`HostBuilder`] makes one the same way for the
//! command line, the tests and the benches; [`Host::shutdown`] drains it.

mod builder;
mod lattice;
mod routes;
mod sagas;
mod scratch;
pub mod shadow;
pub mod trial;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use self::builder::{default_id, HostBuilder};
pub use self::lattice::{labels, Lattice};
use crate::body::Body;

/// A running host.
pub struct Host {
    id: String,
    body: Arc<Body>,
    metrics: Option<SocketAddr>,
    routes: Option<routes::Routes>,
    console: Option<crate::console::Console>,
    following: Option<lattice::Following>,
    /// Answers questions about its recent hops (`cbs flows`).
    flows: crate::flows::Answering,
    /// Runs sagas, when it does.
    sagas: Option<tokio::task::JoinHandle<()>>,
}

impl Host {
    /// Starts configuring a host.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// This host's id: its NATS connection name, its name to peers.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The cells it serves and the bus they are served on.
    pub fn body(&self) -> &Arc<Body> {
        &self.body
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Where the cells' HTTP routes are served, if they are.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.routes.as_ref().map(routes::Routes::addr)
    }

    /// Where the console is served, if it is.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().map(crate::console::Console::addr)
    }

    /// Drains the host: the console stops, no more answers about its
    /// flows, no new HTTP requests, no more placing or following the
    /// desired state (withdrawing this host's status), then no new
    /// messages while the in-flight ones finish (up to `grace`). Returns
    /// whether every in-flight message finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        if let Some(console) = self.console {
            console.stop().await;
        }
        self.flows.stop().await;
        if let Some(routes) = self.routes {
            routes.stop().await;
        }
        if let Some(following) = self.following {
            following.stop().await;
        }
        if let Some(sagas) = self.sagas {
            sagas.abort();
        }
        self.body.shutdown(grace).await
    }
}
