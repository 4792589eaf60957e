//! The body: loads cells, serves each on `cbs.<cell-id>` (queue group of the
//! same name), checks every payload against the cell's contract, and turns
//! every failure into a typed reply while the other cells keep serving.
//!
//! [`load`] makes a [`LoadedCell`] from a folder, bundle or component;
//! [`registry`] holds the served cells and swaps versions; [`dispatch`]
//! admits messages within each cell's limits; [`pipeline`] takes one message
//! through contract, cell and contract; [`forward`] sends requests to peers
//! when this host is full or slow. Counters live in [`crate::stats`].

mod cell;
mod dispatch;
mod forward;
mod load;
mod pipeline;
mod pull;
mod registry;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

pub use self::cell::{retire, LoadedCell};
use self::load::Loader;
pub use self::load::{Sources, DEFAULT_UNPACK_MAX_BYTES};
pub use self::registry::Directory;
use self::registry::Registry;
use crate::bundle::{Bundle, Trust};
use crate::bus::BodyBus;
use crate::chaos::ChaosSpec;
use crate::envelope::{BusError, Envelope};
use crate::metrics::{self, CellSnapshot, LatencyFamily};
use crate::runtime::wasm::WasmRuntime;

/// The host's cells and the bus they are served on.
pub struct Body {
    loader: Loader,
    registry: Registry,
    ready: AtomicBool,
}

impl Body {
    pub fn new(bus: Arc<dyn BodyBus>, wasm: Arc<WasmRuntime>) -> Self {
        let data_dir = crate::state::default_data_dir();
        let durable = crate::durable::default_log(bus.as_ref(), &data_dir);
        let registry = Registry::new(bus.clone(), durable.clone());
        let state = crate::state::default_backend(bus.as_ref(), &data_dir);
        let loader = Loader {
            bus,
            cell_bus: None,
            wasm,
            sources: Sources::default(),
            chaos: HashMap::new(),
            local: Some(registry.directory()),
            latency: metrics::latency_family(),
            state,
            durable,
        };
        Self {
            loader,
            registry,
            ready: AtomicBool::new(false),
        }
    }

    /// Which keys bundles must be signed by, and where bundles unpack.
    pub fn set_sources(&mut self, sources: Sources) {
        self.loader.sources = sources;
    }

    /// Sends what cells call and publish over the bus on `bus` (a
    /// connection with a cell's rights only, so the server enforces what a
    /// cell may reach) instead of the host's own connection. Applies to
    /// cells loaded after.
    pub fn set_cell_bus(&mut self, bus: Arc<dyn BodyBus>) {
        self.loader.cell_bus = Some(bus);
    }

    /// Where cells keep their state and durable streams (applies to cells
    /// loaded after): JetStream on NATS, files in `data_dir` in process.
    pub fn set_data_dir(&mut self, data_dir: &Path) {
        let bus = self.bus().clone();
        self.loader.state = crate::state::default_backend(bus.as_ref(), data_dir);
        let durable = crate::durable::default_log(bus.as_ref(), data_dir);
        self.loader.durable = durable.clone();
        self.registry.durable = durable;
    }

    /// Where durable cells and events are stored.
    pub fn durable(&self) -> &Arc<dyn crate::durable::DurableLog> {
        &self.registry.durable
    }

    /// Routes requests around this host when it is full or far slower than
    /// the other hosts serving a cell (ADR 0015). `host_id` names this host
    /// to its peers. Applies to cells served after.
    pub fn set_routing(&mut self, host_id: &str) {
        self.registry.route(crate::routing::Router::new(host_id));
    }

    /// The other hosts serving `cell_id` that this host would route to,
    /// with their last reported load (empty without routing).
    pub fn routing_peers(&self, cell_id: &str) -> Vec<(String, crate::routing::load::CellLoad)> {
        self.registry
            .router()
            .map(|r| r.peers(cell_id))
            .unwrap_or_default()
    }

    /// Fault injection by cell id (`cbs-host run --chaos FILE`); applies to
    /// cells loaded after, over their `[chaos]`.
    pub fn set_chaos(&mut self, chaos: HashMap<String, ChaosSpec>) {
        self.loader.chaos = chaos;
    }

    /// Whether calls between cells of this host stay in process (the
    /// default) or always go through the bus. Applies to cells loaded after.
    pub fn set_local_calls(&mut self, on: bool) {
        self.loader.local = on.then(|| self.registry.directory() as _);
    }

    /// The keys bundles must be signed by; empty accepts unsigned ones.
    pub fn trust(&self) -> &Trust {
        &self.loader.sources.trust
    }

    pub fn bus(&self) -> &Arc<dyn BodyBus> {
        &self.loader.bus
    }

    /// Loads a cell folder (manifest, schemas, component) without serving it.
    pub async fn load(&self, dir: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        self.loader.load(dir).await
    }

    /// Loads a cell folder, a bundle (`.cbs`) or a bare component (`.wasm`).
    /// With a trust list, only bundles signed by a trusted key load.
    pub async fn load_path(&self, path: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        self.loader.load_path(path).await
    }

    /// Verifies a bundle against the trust list, unpacks and loads it.
    pub async fn load_bundle(&self, bundle: &Bundle) -> anyhow::Result<Arc<LoadedCell>> {
        self.loader.load_bundle(bundle).await
    }

    /// Loads a cell (folder, bundle or component) and serves it.
    pub async fn start(&self, path: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        let cell = self.load_path(path).await?;
        self.serve(cell.clone()).await?;
        Ok(cell)
    }

    /// Subscribes a loaded cell on its subject and queue group.
    pub async fn serve(&self, cell: Arc<LoadedCell>) -> anyhow::Result<()> {
        self.registry.serve(cell).await
    }

    /// Serves `cell` in place of the version served now (if any): new
    /// messages go to `cell` from this instant, and the old version is
    /// returned so the caller can let its in-flight messages finish
    /// ([`retire`]).
    pub async fn replace(&self, cell: Arc<LoadedCell>) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        self.registry.replace(cell).await
    }

    /// Stops serving a cell: no new messages; the in-flight ones finish
    /// (up to `grace`).
    pub async fn remove(&self, id: &str, grace: Duration) -> bool {
        self.registry.remove(id, grace).await
    }

    /// Marks every cell loaded: `/readyz` answers ready while the bus is up.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.bus().is_connected()
    }

    pub fn cell(&self, id: &str) -> Option<Arc<LoadedCell>> {
        self.registry.get(id)
    }

    pub fn cells(&self) -> Vec<Arc<LoadedCell>> {
        self.registry.list()
    }

    /// Sends the first message of a flow to `cell_id` and waits for its reply.
    pub async fn start_flow(
        &self,
        cell_id: &str,
        payload: Box<RawValue>,
        timeout: Duration,
    ) -> Result<Envelope, BusError> {
        let envelope = Envelope::new(crate::subjects::subject_of(cell_id), payload);
        crate::call::request(self.bus().as_ref(), &envelope, timeout).await
    }

    /// Graceful stop: takes no new messages, lets the admitted ones finish
    /// (up to `grace`), and flushes their replies. Returns whether every
    /// in-flight message finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let cells = self.registry.stop_all(grace).await;
        let all_done = async {
            for cell in &cells {
                cell.drained(grace).await;
            }
        };
        let finished = tokio::time::timeout(grace, all_done).await.is_ok();
        for cell in &cells {
            cell.runner.shutdown(grace).await;
        }
        if let Err(e) = self.bus().flush().await {
            tracing::warn!(error = %e, "cannot flush the last replies");
        }
        finished
    }
}

impl metrics::Source for Body {
    fn snapshots(&self) -> Vec<CellSnapshot> {
        self.registry
            .list()
            .iter()
            .map(|cell| CellSnapshot {
                cell: cell.manifest.id.clone(),
                requests: cell.stats.requests(),
                errors_by_code: cell.stats.errors_by_code().collect(),
                in_flight: cell.in_flight(),
                instances: cell.runner.instances(),
                breakers: cell.breakers(),
                durable: cell.manifest.durable.as_ref().map(|_| cell.stats.durable()),
                forwarded: cell.stats.forwarded_count(),
            })
            .collect()
    }

    fn latency(&self) -> &LatencyFamily {
        &self.loader.latency
    }

    fn reconnects(&self) -> u64 {
        self.bus().reconnects()
    }

    fn is_ready(&self) -> bool {
        Body::is_ready(self)
    }
}
