//! A host that runs sagas (`cbs-host run --sagas`, or a spec with sagas
//! served in process): the saga worker on the host's bus, durable store
//! and state store.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;

use crate::body::Body;
use crate::saga::journal::Journal;
use crate::saga::worker::{Catalog, Worker};

/// Opens the saga stream and journal (so a start stored from now on is
/// taken), then takes saga starts in a task of its own.
pub(super) async fn run(
    body: &Arc<Body>,
    catalog: Arc<dyn Catalog>,
) -> anyhow::Result<JoinHandle<()>> {
    let journal = Journal::open(body.state_backend().as_ref())
        .await
        .context("cannot open the saga journal")?;
    let consumer = crate::saga::worker::open(body.durable().as_ref())
        .await
        .context("cannot open the saga stream")?;
    let worker = Arc::new(Worker {
        log: body.durable().clone(),
        bus: body.bus().clone(),
        journal,
        catalog,
        boundaries: body.boundaries().clone(),
    });
    tracing::info!("running sagas");
    Ok(tokio::spawn(worker.run(consumer)))
}
