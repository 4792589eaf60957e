//! The HTTP routes of the cells a host runs (`cbs-host run --http`),
//! following its loads, swaps and removals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::body::Body;
use crate::http::{Gateway, HttpConfig, Serving, Target};

/// How often the routes are read again from the served cells.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// A host's HTTP server and the task keeping its routes current.
pub(super) struct Routes {
    serving: Serving,
    following: JoinHandle<()>,
}

impl Routes {
    pub(super) async fn start(
        addr: SocketAddr,
        config: HttpConfig,
        body: &Arc<Body>,
    ) -> anyhow::Result<Self> {
        let gateway = Gateway::new(body.bus().clone(), config);
        gateway.set_routes(targets(body));
        let serving = Serving::start(addr, gateway.clone()).await?;
        let weak = Arc::downgrade(body);
        let follower = gateway.clone();
        let following = tokio::spawn(async move {
            while let Some(body) = weak.upgrade() {
                follower.set_routes(targets(&body));
                drop(body);
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        });
        Ok(Self { serving, following })
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.serving.addr()
    }

    /// Stops following and serving; requests in progress finish.
    pub(super) async fn stop(self) {
        self.following.abort();
        self.serving.stop().await;
    }
}

fn targets(body: &Body) -> Vec<Target> {
    body.cells().iter().flat_map(|c| c.http_targets()).collect()
}
