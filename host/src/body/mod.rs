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
mod split;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

pub use self::cell::{retire, LoadedCell};
use self::load::Loader;
pub use self::load::{Sources, DEFAULT_UNPACK_MAX_BYTES};
pub use self::registry::Directory;
use self::registry::Registry;
pub use self::split::ALL as SHARE_ALL;
use crate::bundle::{Bundle, Trust};
use crate::bus::BodyBus;
use crate::chaos::ChaosSpec;
use crate::envelope::{BusError, Envelope};
use crate::flows::Flows;
use crate::metrics::{self, CellSnapshot, LatencyFamily};
use crate::runtime::wasm::WasmRuntime;

/// The host's cells and the bus they are served on.
pub struct Body {
    loader: Loader,
    registry: Registry,
    ready: AtomicBool,
    /// This host's id, in the records it keeps.
    host_id: String,
}

/// What a body is made of, gathered by [`crate::host::HostBuilder`]; each
/// backend is opened once, here.
pub(crate) struct Parts {
    pub bus: Arc<dyn BodyBus>,
    /// Where cells' own calls and publishes go; `None`: on `bus`.
    pub cell_bus: Option<Arc<dyn BodyBus>>,
    pub wasm: Arc<WasmRuntime>,
    pub sources: Sources,
    /// Cells' state and durable streams on the in-process bus.
    pub data_dir: PathBuf,
    /// This host's id, on each hop it records.
    pub host_id: String,
    /// This host's id when it routes requests around itself (ADR 0015).
    pub routing: Option<String>,
    /// Fault injection by cell id, over the cells' own `[chaos]`.
    pub chaos: HashMap<String, ChaosSpec>,
    /// Whether calls between cells of this host stay in process.
    pub local_calls: bool,
}

impl Body {
    pub(crate) fn new(parts: Parts) -> Self {
        let bus = parts.bus;
        let durable = crate::durable::default_log(bus.as_ref(), &parts.data_dir);
        let mut registry = Registry::new(bus.clone(), durable.clone());
        if let Some(host_id) = &parts.routing {
            registry.route(crate::routing::Router::new(host_id));
        }
        let local = parts.local_calls.then(|| registry.directory() as _);
        let loader = Loader {
            state: crate::state::default_backend(bus.as_ref(), &parts.data_dir),
            bus,
            cell_bus: parts.cell_bus,
            wasm: parts.wasm,
            sources: parts.sources,
            chaos: parts.chaos,
            local,
            latency: metrics::latency_family(),
            durable,
            flows: Arc::new(Flows::new(&parts.host_id)),
            boundaries: Arc::default(),
            tenants: Arc::default(),
        };
        Self {
            loader,
            registry,
            ready: AtomicBool::new(false),
            host_id: parts.host_id,
        }
    }

    /// Tenants' request rates on this host (set from the lattice policy).
    pub fn tenants(&self) -> &Arc<crate::quota::Tenants> {
        &self.loader.tenants
    }

    /// Where durable cells and events are stored.
    pub fn durable(&self) -> &Arc<dyn crate::durable::DurableLog> {
        &self.registry.durable
    }

    /// Where cells' state is kept (and the saga journal).
    pub fn state_backend(&self) -> &Arc<dyn crate::state::StateBackend> {
        &self.loader.state
    }

    /// Which domain each cell belongs to: the boundaries this host keeps
    /// its cells' calls within.
    pub fn boundaries(&self) -> &Arc<crate::boundary::Boundaries> {
        &self.loader.boundaries
    }

    /// The hops this host handled last (what it answers on
    /// `cbs-flows.query`).
    pub fn flows(&self) -> &Arc<Flows> {
        &self.loader.flows
    }

    /// The other hosts serving `cell_id` that this host would route to,
    /// with their last reported load (empty without routing).
    pub fn routing_peers(&self, cell_id: &str) -> Vec<(String, crate::stats::CellLoad)> {
        self.registry
            .router()
            .map(|r| r.peers(cell_id))
            .unwrap_or_default()
    }

    /// The keys bundles must be signed by; empty accepts unsigned ones.
    pub fn trust(&self) -> &Trust {
        &self.loader.sources.trust
    }

    /// Whether bundles may start native processes (sidecar and Python).
    pub fn allows_process_bundles(&self) -> bool {
        self.loader.sources.process_bundles
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

    /// As [`Body::replace`], and the version replaced, when of another
    /// major, keeps serving that major beside `cell` (`crate::majors`).
    pub async fn replace_keeping(
        &self,
        cell: Arc<LoadedCell>,
    ) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        self.registry.replace_keeping(cell).await
    }

    /// Serves `cell` beside the current version of its cell, on its
    /// major's subject; returns the version of that major it replaced.
    pub async fn serve_beside(
        &self,
        cell: Arc<LoadedCell>,
    ) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        self.registry.serve_beside(cell).await
    }

    /// Stops serving major `lane` beside cell `id`.
    pub async fn remove_beside(&self, id: &str, lane: &str, grace: Duration) -> bool {
        self.registry.remove_beside(id, lane, grace).await
    }

    /// The versions of cell `id` served beside its current one, by major.
    pub fn beside(&self, id: &str) -> BTreeMap<String, Arc<LoadedCell>> {
        self.registry.beside(id)
    }

    /// Serves `canary`, a loaded version of a cell served here, next to
    /// the stable one: it takes `share` of every 10,000 of the cell's
    /// messages (requests, events and durable deliveries, message by
    /// message), the stable one the rest. A canary it
    /// replaces finishes its messages (up to `grace`).
    pub async fn split(
        &self,
        canary: Arc<LoadedCell>,
        share: u32,
        grace: Duration,
    ) -> anyhow::Result<()> {
        if let Some(replaced) = self.registry.split(canary, share).await? {
            retire(replaced, grace).await;
        }
        Ok(())
    }

    /// Moves the canary of cell `id` to `share` of every 10,000 messages.
    pub fn set_share(&self, id: &str, share: u32) -> anyhow::Result<()> {
        self.registry.set_share(id, share)
    }

    /// Ends the canary of cell `id`: it becomes the stable version
    /// (`promote`) or goes; the version no longer served finishes its
    /// messages (up to `grace`).
    pub async fn end_canary(&self, id: &str, promote: bool, grace: Duration) -> anyhow::Result<()> {
        if let Some(ended) = self.registry.end_canary(id, promote)? {
            retire(ended, grace).await;
        }
        Ok(())
    }

    /// Blue-green: the canary of cell `id` takes every message at once;
    /// the version before stays loaded and warm, taking nothing, until
    /// [`Body::drop_standby`] with the same `generation`. A standby it
    /// replaces finishes its messages (up to `grace`).
    pub async fn switch(&self, id: &str, generation: u64, grace: Duration) -> anyhow::Result<()> {
        if let Some(replaced) = self.registry.switch(id, generation)? {
            retire(replaced, grace).await;
        }
        Ok(())
    }

    /// Switches cell `id` back to the version kept warm: no load, so it
    /// takes the next message. False when none is warm.
    pub fn swap_standby(&self, id: &str) -> anyhow::Result<bool> {
        self.registry.swap_standby(id)
    }

    /// The version of cell `id` kept warm after a switch, if any.
    pub fn standby(&self, id: &str) -> Option<Arc<LoadedCell>> {
        self.registry.standby(id)
    }

    /// Ends the warm window `generation` of cell `id`.
    pub async fn drop_standby(&self, id: &str, generation: u64, grace: Duration) {
        if let Some(dropped) = self.registry.drop_standby(id, generation) {
            tracing::info!(cell = %id, version = %dropped.manifest.version, "warm window over");
            retire(dropped, grace).await;
        }
    }

    /// Starts (`Some`) or ends a recording of cell `id`'s requests on its
    /// stable version ([`crate::shadow::tape`]); false when it is not
    /// served here. The same recording already on is left as it is.
    pub fn record(&self, id: &str, recording: Option<&crate::shadow::Recording>) -> bool {
        let Some(cell) = self.cell(id) else {
            return false;
        };
        let on = cell.outbound.tape();
        if on.as_ref().map(|t| t.recording()) == recording {
            return true;
        }
        let tape = recording.map(|r| {
            let bus = self.bus().clone();
            let tape = crate::shadow::tape::Tape::new(
                r.clone(),
                bus,
                id,
                &self.host_id,
                &cell.manifest.version,
            );
            Arc::new(tape)
        });
        cell.outbound.set_tape(tape);
        true
    }

    /// The versions of cell `id` served here: the stable one, then a
    /// canary, then one kept warm.
    pub fn versions(&self, id: &str) -> Vec<Arc<LoadedCell>> {
        self.registry.versions(id)
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

    /// Each served cell's load now, by cell id (the heartbeat's).
    pub fn loads(&self) -> BTreeMap<String, crate::stats::CellLoad> {
        self.cells()
            .iter()
            .map(|cell| (cell.manifest.id.clone(), cell.load()))
            .collect()
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
                breakers: cell
                    .breakers()
                    .into_iter()
                    .map(|(target, b)| (target, b.state))
                    .collect(),
                durable: cell.manifest.durable.as_ref().map(|_| cell.stats.durable()),
                forwarded: cell.stats.forwarded_count(),
                versions: self
                    .registry
                    .roles(&cell.manifest.id)
                    .into_iter()
                    .map(|(version, role, share)| metrics::VersionSnapshot {
                        version: version.manifest.version.clone(),
                        role,
                        share,
                        requests: version.stats.requests(),
                        errors: version.stats.errors(),
                    })
                    .collect(),
                recording: cell.outbound.tape().is_some(),
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
