//! The body: loads cells, serves each on `cbs.<cell-id>` (queue group of the
//! same name), checks every payload against the cell's contract, and turns
//! every failure into a typed reply while the other cells keep serving.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::bundle::{Bundle, Trust};
use crate::bus::{BodyBus, Endpoint, Message};
use crate::chaos::{Chaos, ChaosSpec, Fault};
use crate::contract::Contract;
use crate::envelope::{header, BusError, Envelope, ErrorCode};
use crate::manifest::{CellSpec, Manifest, RuntimeKind};
use crate::metrics::{self, CellLabel, LatencyFamily};
use crate::outbound::{self, LocalCalls, Outbound};
use crate::runtime::process::SidecarCell;
use crate::runtime::python::PythonCell;
use crate::runtime::wasm::{CacheOutcome, WasmRuntime};
use crate::runtime::{CellInfo, CellRunner};

/// A loaded cell: manifest, contract and runner, with its admission limits.
pub struct LoadedCell {
    pub spec: CellSpec,
    pub manifest: Arc<Manifest>,
    pub contract: Contract,
    pub runner: Arc<dyn CellRunner>,
    /// Where the compiled component came from (wasm cells).
    pub cache: Option<CacheOutcome>,
    /// Messages admitted (running + queued): `concurrency + queue`.
    admitted: Arc<Semaphore>,
    /// Messages running: `concurrency`.
    running: Semaphore,
    /// Fault injection, when configured.
    chaos: Option<Chaos>,
    /// The cell's calls out (policies and breakers).
    outbound: Arc<Outbound>,
    latency: Histogram,
    pub stats: CellStats,
}

/// Counters per cell.
#[derive(Debug, Default)]
pub struct CellStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Errors by code, in `ErrorCode::ALL` order.
    by_code: [AtomicU64; 9],
}

impl CellStats {
    fn error(&self, code: ErrorCode) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let i = ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0);
        self.by_code[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Non-zero error counts, by code.
    pub fn errors_by_code(&self) -> impl Iterator<Item = (ErrorCode, u64)> + '_ {
        ErrorCode::ALL
            .into_iter()
            .zip(&self.by_code)
            .map(|(c, n)| (c, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
    }

    /// `{"requests", "errors", "errors_by_code": {code: n}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let by_code: serde_json::Map<String, serde_json::Value> = self
            .errors_by_code()
            .map(|(c, n)| (c.as_str().to_owned(), n.into()))
            .collect();
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "errors_by_code": by_code,
        })
    }
}

impl LoadedCell {
    pub fn info(&self) -> &CellInfo {
        self.runner.info()
    }

    /// The breaker state of each call target.
    pub fn breakers(&self) -> Vec<(String, crate::resilience::BreakerState)> {
        self.outbound.breakers()
    }

    /// Messages admitted and not finished (running or queued).
    pub fn in_flight(&self) -> usize {
        let total = (self.manifest.limits.concurrency + self.manifest.limits.queue) as usize;
        total - self.admitted.available_permits()
    }

    /// One message through the cell: input contract, cell, output contract,
    /// within the cell's deadline; always a reply envelope (success or
    /// typed error). Counted, and traced in a span with the correlation id.
    pub async fn process(&self, envelope: Arc<Envelope>, arrived: Instant) -> Envelope {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!(
            "cell",
            cell = %self.manifest.id,
            correlation_id = %envelope.correlation_id,
            message_id = %envelope.id,
        );
        crate::telemetry::link_parent(&span, &envelope.headers);
        async {
            let outcome = run(self, envelope.clone(), arrived).await;
            let elapsed = arrived.elapsed();
            self.latency.observe(elapsed.as_secs_f64());
            let elapsed_us = elapsed.as_micros() as u64;
            match outcome {
                Ok(reply) => {
                    tracing::debug!(elapsed_us, "handled");
                    reply
                }
                Err(error) => {
                    self.stats.error(error.code);
                    tracing::debug!(elapsed_us, code = %error.code, error = %error.message, "failed");
                    envelope.error_reply(error)
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The cells this host serves, for in-process calls between them. Weak
/// references: cells hold their outbound, which holds this directory.
#[derive(Default)]
pub struct Directory {
    cells: RwLock<HashMap<String, Weak<LoadedCell>>>,
}

#[async_trait]
impl LocalCalls for Directory {
    async fn call(&self, cell_id: &str, envelope: &Envelope) -> Option<Envelope> {
        let cell = self.cells.read().unwrap().get(cell_id)?.upgrade()?;
        // A cell at its limits is left to the bus: another host may have room.
        let _admitted = cell.admitted.clone().try_acquire_owned().ok()?;
        Some(
            cell.process(Arc::new(envelope.clone()), Instant::now())
                .await,
        )
    }
}

/// The host's cells and the bus they are served on.
pub struct Body {
    bus: Arc<dyn BodyBus>,
    wasm: Arc<WasmRuntime>,
    cells: RwLock<BTreeMap<String, Served>>,
    directory: Arc<Directory>,
    local_calls: bool,
    latency: LatencyFamily,
    ready: AtomicBool,
    /// Chaos settings by cell id, over those of `cell.toml`.
    chaos: HashMap<String, ChaosSpec>,
    sources: Sources,
}

/// Where cells come from: trust for bundles, and where they unpack.
#[derive(Clone)]
pub struct Sources {
    /// Public keys bundles must be signed by; empty accepts unsigned cells.
    pub trust: Trust,
    /// Verified bundles unpack here, one folder per digest.
    pub unpack_dir: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            trust: Trust::default(),
            unpack_dir: Bundle::default_unpack_dir(),
        }
    }
}

/// A cell being served, with the task that takes its messages. The slot
/// holds the version that takes new messages; a hot swap replaces it while
/// the subscription stays, so no message falls between two versions.
struct Served {
    slot: Slot,
    dispatcher: JoinHandle<()>,
}

type Slot = Arc<RwLock<Arc<LoadedCell>>>;

impl Body {
    pub fn new(bus: Arc<dyn BodyBus>, wasm: Arc<WasmRuntime>) -> Self {
        Self {
            bus,
            wasm,
            cells: RwLock::default(),
            directory: Arc::default(),
            local_calls: true,
            latency: metrics::latency_family(),
            ready: AtomicBool::new(false),
            chaos: HashMap::new(),
            sources: Sources::default(),
        }
    }

    /// Which keys bundles must be signed by, and where bundles unpack.
    pub fn set_sources(&mut self, sources: Sources) {
        self.sources = sources;
    }

    /// Fault injection by cell id (`cbs-host run --chaos FILE`); applies to
    /// cells loaded after, over their `[chaos]`.
    pub fn set_chaos(&mut self, chaos: HashMap<String, ChaosSpec>) {
        self.chaos = chaos;
    }

    /// Whether calls between cells of this host stay in process (the
    /// default) or always go through the bus. Applies to cells loaded after.
    pub fn set_local_calls(&mut self, on: bool) {
        self.local_calls = on;
    }

    pub fn bus(&self) -> &Arc<dyn BodyBus> {
        &self.bus
    }

    /// Loads a cell folder (manifest, schemas, component) without serving it.
    pub async fn load(&self, dir: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        let spec = CellSpec::from_dir(dir)?;
        let manifest = Arc::new(spec.manifest.clone());
        let contract = Contract::load(&spec)?;
        let local: Option<Arc<dyn LocalCalls>> =
            self.local_calls.then(|| self.directory.clone() as _);
        let outbound = Arc::new(Outbound::new(self.bus.clone(), manifest.clone(), local));
        let (runner, cache): (Arc<dyn CellRunner>, _) = match manifest.runtime {
            RuntimeKind::Wasm => {
                let cell = self
                    .wasm
                    .load(manifest.clone(), &spec.component_path()?, outbound.clone())
                    .await
                    .with_context(|| format!("cannot load cell {}", manifest.id))?;
                let cache = cell.cache_outcome();
                (Arc::new(cell), Some(cache))
            }
            RuntimeKind::Sidecar => {
                let cell = SidecarCell::start(&spec, outbound.clone())
                    .await
                    .with_context(|| format!("cannot load cell {}", manifest.id))?;
                (Arc::new(cell), None)
            }
            RuntimeKind::Python => {
                let cell = PythonCell::start(&spec, outbound.clone())
                    .await
                    .with_context(|| format!("cannot load cell {}", manifest.id))?;
                (Arc::new(cell), None)
            }
        };
        let limits = &manifest.limits;
        Ok(Arc::new(LoadedCell {
            admitted: Arc::new(Semaphore::new((limits.concurrency + limits.queue) as usize)),
            running: Semaphore::new(limits.concurrency as usize),
            chaos: self
                .chaos
                .get(&manifest.id)
                .or(manifest.chaos.as_ref())
                .cloned()
                .map(Chaos::new),
            latency: self
                .latency
                .get_or_create(&CellLabel {
                    cell: manifest.id.clone(),
                })
                .clone(),
            outbound: outbound.clone(),
            spec,
            manifest,
            contract,
            runner,
            cache,
            stats: CellStats::default(),
        }))
    }

    /// Loads a cell folder, a bundle (`.cbs`) or a bare component (`.wasm`).
    /// With a trust list, only bundles signed by a trusted key load.
    pub async fn load_path(&self, path: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        let is = |ext: &str| path.extension().is_some_and(|e| e == ext) && path.is_file();
        if is(crate::bundle::EXTENSION) {
            let bundle = Bundle::read(path)?;
            return self.load_bundle(&bundle).await;
        }
        if !self.sources.trust.is_empty() {
            bail!(
                "{} is not a bundle, and this host only runs bundles signed by a --trust key: \
                 build one with `cbs build --sign KEY {}`",
                path.display(),
                path.display()
            );
        }
        if is("wasm") {
            return self.load_component(path).await;
        }
        self.load(path).await
    }

    /// Verifies a bundle against the trust list, unpacks and loads it.
    pub async fn load_bundle(&self, bundle: &Bundle) -> anyhow::Result<Arc<LoadedCell>> {
        bundle.verify(&self.sources.trust)?;
        bundle.cell_manifest()?;
        let spec = bundle.unpack(&self.sources.unpack_dir)?;
        self.load(&spec.dir).await
    }

    /// A bare component: its `describe()` names it; default limits, and no
    /// schemas to check (a component gives only their ids).
    async fn load_component(&self, path: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let probe = crate::manifest::Manifest::bare(crate::manifest::PROBE_ID, "0.0.0", &path);
        let dir = self.sources.unpack_dir.join(format!(
            "wasm-{}",
            crate::bundle::sha256_hex(path.as_os_str().as_encoded_bytes())
        ));
        std::fs::create_dir_all(&dir)?;
        probe.write(&dir)?;
        let info = self.load(&dir).await?.info().clone();
        tracing::info!(cell = %info.id, version = %info.version, component = %path.display(), "bare component: id and version from its describe(), default limits, payloads unchecked");
        crate::manifest::Manifest::bare(&info.id, &info.version, &path)
            .write(&dir)
            .with_context(|| format!("{} describes itself as {:?}", path.display(), info.id))?;
        self.load(&dir).await
    }

    /// Loads a cell (folder, bundle or component) and serves it.
    pub async fn start(&self, path: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        let cell = self.load_path(path).await?;
        self.serve(cell.clone()).await?;
        Ok(cell)
    }

    /// Serves `cell` in place of the version served now (if any): new
    /// messages go to `cell` from this instant, and the old version is
    /// returned so the caller can let its in-flight messages finish
    /// ([`Body::retire`]).
    pub async fn replace(&self, cell: Arc<LoadedCell>) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        let id = cell.manifest.id.clone();
        let slot = self.cells.read().unwrap().get(&id).map(|s| s.slot.clone());
        let Some(slot) = slot else {
            self.serve(cell).await?;
            return Ok(None);
        };
        let old = std::mem::replace(&mut *slot.write().unwrap(), cell.clone());
        self.directory
            .cells
            .write()
            .unwrap()
            .insert(id.clone(), Arc::downgrade(&cell));
        tracing::info!(cell = %id, from = %old.manifest.version, to = %cell.manifest.version, "swapped");
        Ok(Some(old))
    }

    /// Stops serving a cell: no new messages; the in-flight ones finish
    /// (up to `grace`).
    pub async fn remove(&self, id: &str, grace: Duration) -> bool {
        self.directory.cells.write().unwrap().remove(id);
        let Some(served) = self.cells.write().unwrap().remove(id) else {
            return true;
        };
        served.dispatcher.abort();
        let cell = served.slot.read().unwrap().clone();
        tracing::info!(cell = %id, "removed");
        retire(cell, grace).await
    }

    /// Subscribes a loaded cell on its subject and queue group.
    pub async fn serve(&self, cell: Arc<LoadedCell>) -> anyhow::Result<()> {
        let id = cell.manifest.id.clone();
        if self.cells.read().unwrap().contains_key(&id) {
            bail!("cell {id} is already served by this host");
        }
        let subject = cell.manifest.subject();
        let slot: Slot = Arc::new(RwLock::new(cell.clone()));
        let subscription = self
            .bus
            .serve(endpoint(&cell, &slot))
            .await
            .with_context(|| format!("cannot serve cell {id} on {subject}"))?;
        self.bus.flush().await?;
        let dispatcher = tokio::spawn(dispatch(self.bus.clone(), slot.clone(), subscription));
        tracing::info!(cell = %id, %subject, "serving");
        self.directory
            .cells
            .write()
            .unwrap()
            .insert(id.clone(), Arc::downgrade(&cell));
        self.cells
            .write()
            .unwrap()
            .insert(id, Served { slot, dispatcher });
        Ok(())
    }

    /// Per-cell latency histograms, for `/metrics`.
    pub fn latency(&self) -> &LatencyFamily {
        &self.latency
    }

    /// Marks every cell loaded: `/readyz` answers ready while the bus is up.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.bus.is_connected()
    }

    pub fn cell(&self, id: &str) -> Option<Arc<LoadedCell>> {
        self.cells
            .read()
            .unwrap()
            .get(id)
            .map(|s| s.slot.read().unwrap().clone())
    }

    pub fn cells(&self) -> Vec<Arc<LoadedCell>> {
        self.cells
            .read()
            .unwrap()
            .values()
            .map(|s| s.slot.read().unwrap().clone())
            .collect()
    }

    /// Sends the first message of a flow to `cell_id` and waits for its reply.
    pub async fn start_flow(
        &self,
        cell_id: &str,
        payload: Box<RawValue>,
        timeout: Duration,
    ) -> Result<Envelope, BusError> {
        let envelope = Envelope::new(crate::manifest::subject_of(cell_id), payload);
        let reply = self
            .bus
            .request(outbound::to_message(&envelope), timeout)
            .await?;
        Envelope::from_slice(&reply.payload)
    }
}

impl Body {
    /// Graceful stop: takes no new messages, lets the admitted ones finish
    /// (up to `grace`), and flushes their replies. Returns whether every
    /// in-flight message finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.directory.cells.write().unwrap().clear();
        let cells: Vec<Arc<LoadedCell>> = {
            let served = self.cells.read().unwrap();
            for s in served.values() {
                s.dispatcher.abort();
            }
            served
                .values()
                .map(|s| s.slot.read().unwrap().clone())
                .collect()
        };
        let all_done = async {
            for cell in &cells {
                let total = cell.manifest.limits.concurrency + cell.manifest.limits.queue;
                // Every permit back means nothing is running or queued.
                let _ = cell.admitted.acquire_many(total).await;
            }
        };
        let finished = tokio::time::timeout(grace, all_done).await.is_ok();
        for cell in &cells {
            cell.runner.shutdown(grace).await;
        }
        if let Err(e) = self.bus.flush().await {
            tracing::warn!(error = %e, "cannot flush the last replies");
        }
        finished
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        for served in self.cells.get_mut().unwrap().values() {
            served.dispatcher.abort();
        }
    }
}

/// Lets a replaced or removed version finish its admitted messages (up to
/// `grace`), then stops its runtime. Returns whether all finished in time.
pub async fn retire(cell: Arc<LoadedCell>, grace: Duration) -> bool {
    let total = cell.manifest.limits.concurrency + cell.manifest.limits.queue;
    // Every permit back means nothing is running or queued.
    let finished = tokio::time::timeout(grace, cell.admitted.acquire_many(total))
        .await
        .is_ok();
    cell.runner.shutdown(grace).await;
    finished
}

/// How the bus presents a cell to discovery tools. The stats follow the
/// slot, so they describe whichever version serves now.
fn endpoint(cell: &Arc<LoadedCell>, slot: &Slot) -> Endpoint {
    let m = &cell.manifest;
    let mut metadata = HashMap::from([
        ("cell".to_owned(), m.id.clone()),
        ("version".to_owned(), m.version.clone()),
        (
            "runtime".to_owned(),
            format!("{:?}", m.runtime).to_lowercase(),
        ),
    ]);
    for (key, schema) in [("input_schema", &m.input), ("output_schema", &m.output)] {
        if let Some(s) = schema {
            metadata.insert(key.to_owned(), s.id.clone());
        }
    }
    let stats_of = Arc::downgrade(slot);
    Endpoint {
        subject: m.subject(),
        metadata,
        stats: Arc::new(move || {
            stats_of.upgrade().map_or(serde_json::Value::Null, |slot| {
                let cell = slot.read().unwrap().clone();
                let mut stats = cell.stats.to_json();
                stats["version"] = cell.manifest.version.clone().into();
                stats
            })
        }),
    }
}

/// Takes messages off a cell's subscription and admits them, or answers
/// `capacity` at once when the cell's queue is full.
async fn dispatch(bus: Arc<dyn BodyBus>, slot: Slot, mut subscription: crate::bus::Subscription) {
    while let Some(message) = subscription.next().await {
        let cell = slot.read().unwrap().clone();
        match cell.admitted.clone().try_acquire_owned() {
            Ok(permit) => {
                let (bus, cell) = (bus.clone(), cell.clone());
                tokio::spawn(async move {
                    handle_message(&*bus, &cell, message).await;
                    drop(permit);
                });
            }
            Err(_) => {
                let error = BusError::new(
                    ErrorCode::Capacity,
                    format!(
                        "cell {} is at its limit of {} running and {} queued messages; retry later",
                        cell.manifest.id,
                        cell.manifest.limits.concurrency,
                        cell.manifest.limits.queue
                    ),
                );
                reply_error(&*bus, &cell, &message, error).await;
            }
        }
    }
    tracing::debug!(cell = %slot.read().unwrap().manifest.id, "subscription closed");
}

async fn handle_message(bus: &dyn BodyBus, cell: &LoadedCell, message: Message) {
    let arrived = Instant::now();
    let reply = match Envelope::from_slice(&message.payload) {
        Ok(envelope) => cell.process(Arc::new(envelope), arrived).await,
        Err(error) => {
            cell.stats.requests.fetch_add(1, Ordering::Relaxed);
            return reply_error(bus, cell, &message, error).await;
        }
    };
    send_reply(bus, &message, &reply).await;
}

/// Input contract → cell → output contract, within the cell's deadline.
async fn run(
    cell: &LoadedCell,
    envelope: Arc<Envelope>,
    arrived: Instant,
) -> Result<Envelope, BusError> {
    // The cell's own limit, or the caller's remaining budget if shorter.
    let limit = Duration::from_millis(cell.manifest.limits.timeout_ms);
    let budget = envelope
        .headers
        .get(header::BUDGET_MS)
        .and_then(|b| b.parse().ok())
        .map(Duration::from_millis);
    let deadline = arrived + budget.map_or(limit, |b| b.min(limit));
    let _running = cell
        .running
        .acquire()
        .await
        .map_err(|_| BusError::internal("cell is shutting down"))?;
    // Each step is a span of its own under the hop's `cell` span.
    tracing::debug_span!("contract.input")
        .in_scope(|| cell.contract.check_input(envelope.payload.get()))?;
    if let Some(chaos) = &cell.chaos {
        inject(chaos, &cell.manifest.id, deadline).await?;
    }
    let reply = cell
        .runner
        .handle(envelope.clone(), deadline)
        .instrument(tracing::debug_span!("run"))
        .await?;
    tracing::debug_span!("contract.output")
        .in_scope(|| cell.contract.check_output(&reply.payload))?;
    let payload = RawValue::from_string(reply.payload).map_err(|e| {
        BusError::new(
            ErrorCode::ContractViolation,
            format!("cell {} replied with invalid JSON: {e}", cell.manifest.id),
        )
    })?;
    let schema = reply
        .schema
        .or_else(|| cell.manifest.output.as_ref().map(|o| o.id.clone()));
    let mut out = envelope.reply(schema, payload);
    out.headers.extend(reply.headers);
    Ok(out)
}

/// Applies the next seeded fault: latency, an injected error, or a reply
/// that never comes (the caller times out).
async fn inject(chaos: &Chaos, cell_id: &str, deadline: Instant) -> Result<(), BusError> {
    let latency = chaos.latency();
    if !latency.is_zero() {
        tokio::time::sleep_until((Instant::now() + latency).min(deadline).into()).await;
    }
    match chaos.draw() {
        Fault::Pass => Ok(()),
        Fault::Error => Err(BusError::new(
            ErrorCode::Unavailable,
            format!("chaos: injected failure in cell {cell_id}"),
        )),
        Fault::Drop => {
            tokio::time::sleep_until(deadline.into()).await;
            Err(BusError::new(
                ErrorCode::Timeout,
                format!("chaos: cell {cell_id} dropped the reply"),
            ))
        }
    }
}

async fn reply_error(bus: &dyn BodyBus, cell: &LoadedCell, message: &Message, error: BusError) {
    cell.stats.error(error.code);
    tracing::debug!(cell = %cell.manifest.id, code = %error.code, error = %error.message, "rejected");
    let reply = Envelope::orphan_error(
        &message.subject,
        message.header(header::CORRELATION_ID),
        error,
    );
    send_reply(bus, message, &reply).await;
}

async fn send_reply(bus: &dyn BodyBus, message: &Message, reply: &Envelope) {
    let Some(to) = &message.reply else {
        return;
    };
    if let Err(e) = bus
        .reply(
            to,
            outbound::transport_headers(reply),
            reply.to_vec().into(),
        )
        .await
    {
        tracing::warn!(error = %e, "cannot send a reply");
    }
}
