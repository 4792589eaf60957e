//! Configuring a host: every part has a default, each backend is opened
//! once, and [`HostBuilder::start`] brings the parts up in the order a
//! host needs them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use super::lattice::{Following, Lattice};
use super::routes::Routes;
use super::Host;
use crate::body::{Body, Parts, Sources};
use crate::bus::local::LocalBus;
use crate::bus::BodyBus;
use crate::chaos::ChaosSpec;
use crate::console::Console;
use crate::flows::Answering;
use crate::http::HttpConfig;
use crate::runtime::wasm::{EngineOptions, WasmRuntime};

/// What a host is made of. Defaults: the in-process bus, a wasm runtime
/// with default limits and no component cache, unsigned bundles accepted
/// (no trust list), data in [`crate::dirs::data`], calls between its own
/// cells kept in process, no routing around itself, and nothing served
/// but the cells.
pub struct HostBuilder {
    id: Option<String>,
    bus: Option<Arc<dyn BodyBus>>,
    cell_bus: Option<Arc<dyn BodyBus>>,
    runtime: Option<Arc<WasmRuntime>>,
    sources: Sources,
    data_dir: Option<PathBuf>,
    routing: bool,
    chaos: HashMap<String, ChaosSpec>,
    local_calls: bool,
    metrics: Option<SocketAddr>,
    http: Option<(SocketAddr, HttpConfig)>,
    console: Option<(SocketAddr, crate::console::Options)>,
    lattice: Option<Lattice>,
    cells: Vec<PathBuf>,
    /// Cells' domains, kept at their boundaries from the start.
    domains: Vec<(String, crate::boundary::Membership)>,
    /// The sagas of the domains served in process.
    sagas: crate::saga::worker::Specs,
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self {
            id: None,
            bus: None,
            cell_bus: None,
            runtime: None,
            sources: Sources::default(),
            data_dir: None,
            routing: false,
            chaos: HashMap::new(),
            local_calls: true,
            metrics: None,
            http: None,
            console: None,
            lattice: None,
            cells: Vec::new(),
            domains: Vec::new(),
            sagas: Default::default(),
        }
    }
}

impl HostBuilder {
    /// The host's id [default: `<hostname>-<pid>`, see [`default_id`]].
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The bus cells are served on [default: in process].
    pub fn bus(mut self, bus: Arc<dyn BodyBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Sends what cells call and publish on `bus`, a connection with a
    /// cell's rights only, so the server enforces what a cell may reach
    /// [default: the host's bus].
    pub fn cell_bus(mut self, bus: Arc<dyn BodyBus>) -> Self {
        self.cell_bus = Some(bus);
        self
    }

    /// The wasm engine, its pool and its component cache.
    pub fn runtime(mut self, runtime: Arc<WasmRuntime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Which keys bundles must be signed by, whether they may start
    /// processes, and where they unpack.
    pub fn sources(mut self, sources: Sources) -> Self {
        self.sources = sources;
        self
    }

    /// Where cells keep their state and durable streams on the in-process
    /// bus (on NATS they are in JetStream), and where a host following the
    /// lattice records what it installed.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Routes requests around this host when it is full or far slower
    /// than the other hosts serving a cell (ADR 0015; needs NATS).
    pub fn routing(mut self, on: bool) -> Self {
        self.routing = on;
        self
    }

    /// Fault injection by cell id, over the cells' own `[chaos]`.
    pub fn chaos(mut self, chaos: HashMap<String, ChaosSpec>) -> Self {
        self.chaos = chaos;
        self
    }

    /// Whether calls between cells of this host stay in process (`true`)
    /// or always go through the bus.
    pub fn local_calls(mut self, on: bool) -> Self {
        self.local_calls = on;
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr`.
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics = Some(addr);
        self
    }

    /// Serves the cells' HTTP routes (`[[http]]`) on `addr`.
    pub fn http(mut self, addr: SocketAddr, config: HttpConfig) -> Self {
        self.http = Some((addr, config));
        self
    }

    /// Serves the console of this host on `addr` (read-only).
    pub fn console(mut self, addr: SocketAddr, options: crate::console::Options) -> Self {
        self.console = Some((addr, options));
        self
    }

    /// Follows the lattice's desired state: places replicas and serves
    /// what is placed here.
    pub fn lattice(mut self, lattice: Lattice) -> Self {
        self.lattice = Some(lattice);
        self
    }

    /// A cell to serve from the start: a folder, a bundle or a component.
    pub fn cell(mut self, path: impl Into<PathBuf>) -> Self {
        self.cells.push(path.into());
        self
    }

    /// Cells to serve from the start.
    pub fn cells<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.cells.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Serves the cells of a domain spec (bundles or folders, relative to
    /// `base`) and keeps calls within its boundary: outside cells reach
    /// only its exports, its cells only the other domains' cells it uses.
    pub fn domain(
        mut self,
        spec: &crate::domain::spec::Spec,
        base: &std::path::Path,
    ) -> anyhow::Result<Self> {
        for member in &spec.cells {
            let path = match (&member.bundle, &member.folder) {
                (Some(file), _) => base.join(file),
                (None, Some(folder)) => base.join(folder),
                (None, None) => anyhow::bail!(
                    "domain {}: a cell without `bundle` or `folder`",
                    spec.domain
                ),
            };
            let id = if path.is_dir() {
                crate::manifest::CellSpec::from_dir(&path)?.manifest.id
            } else {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                crate::bundle::Bundle::from_bytes(&bytes)
                    .with_context(|| format!("in {}", path.display()))?
                    .manifest
                    .cell
            };
            self.domains.push((id.clone(), spec.membership(&id)));
            self.cells.push(path);
        }
        for saga in &spec.sagas {
            self.sagas.add(&spec.domain, saga.clone());
        }
        Ok(self)
    }

    /// Brings the host up: answering `cbs-flows.query` and `/metrics` first
    /// (so a slow start shows), then the cells, the lattice, the HTTP
    /// routes and the console; then it reports ready.
    pub async fn start(self) -> anyhow::Result<Host> {
        let id = self.id.unwrap_or_else(default_id);
        let data_dir = self.data_dir.unwrap_or_else(crate::dirs::data);
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => Arc::new(WasmRuntime::new(&EngineOptions::default(), None)?),
        };
        let body = Arc::new(Body::new(Parts {
            bus: self.bus.unwrap_or_else(|| Arc::new(LocalBus::new())),
            cell_bus: self.cell_bus,
            wasm: runtime,
            sources: self.sources,
            data_dir: data_dir.clone(),
            host_id: id.clone(),
            routing: self.routing.then(|| id.clone()),
            chaos: self.chaos,
            local_calls: self.local_calls,
        }));
        for (cell, membership) in self.domains {
            body.boundaries().set(&cell, Some(membership));
        }
        if let Some(lattice) = &self.lattice {
            prime_boundaries(&body, &lattice.client).await?;
        }
        let flows = Answering::start(body.bus().clone(), body.flows().clone()).await?;
        let metrics = match self.metrics {
            Some(addr) => Some(serve_metrics(addr, &body).await?),
            None => None,
        };
        start_cells(&body, &self.cells).await?;
        let sagas = match (&self.lattice, self.sagas.is_empty()) {
            (Some(lattice), _) if lattice.sagas => {
                let domains = crate::domain::state::Domains::open(&lattice.client).await?;
                Some(super::sagas::run(&body, Arc::new(domains)).await?)
            }
            (_, false) => Some(super::sagas::run(&body, Arc::new(self.sagas)).await?),
            _ => None,
        };
        let following = match self.lattice {
            Some(lattice) => Some(Following::start(&body, &id, &data_dir, lattice).await?),
            None => None,
        };
        let routes = match self.http {
            Some((addr, config)) => Some(Routes::start(addr, config, &body).await?),
            None => None,
        };
        let console = match self.console {
            Some((addr, options)) => {
                let source = Arc::new(crate::console::source::Local::new(&id, &body));
                Some(Console::start(addr, source, options).await?)
            }
            None => None,
        };
        body.set_ready();
        Ok(Host {
            id,
            body,
            metrics,
            routes,
            console,
            following,
            flows,
            sagas,
        })
    }
}

/// Loads and serves `cells` a few at a time: loading is compiling or
/// mapping code, instantiating and calling `describe()`, and the steps of
/// one cell leave cores idle that another's can use.
async fn start_cells(body: &Arc<Body>, cells: &[PathBuf]) -> anyhow::Result<()> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let at_once = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    futures_util::stream::iter(cells.iter().cloned())
        .map(|path| {
            let body = body.clone();
            async move { body.start(&path).await }
        })
        .buffer_unordered(at_once)
        .try_for_each(|_| async { Ok(()) })
        .await
}

async fn serve_metrics(addr: SocketAddr, body: &Arc<Body>) -> anyhow::Result<SocketAddr> {
    let bound = crate::metrics::serve(addr, body.clone() as _)
        .await
        .with_context(|| format!("cannot listen for /metrics on {addr}"))?;
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz on http://{bound}");
    Ok(bound)
}

/// `<hostname>-<pid>`: unique per host process, readable in tools.
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Every deployed cell's domain, known before any cell serves or saga
/// runs: the watcher learns them too, but only as it replays the desired
/// state, and until then a call across a boundary would go through.
async fn prime_boundaries(body: &Body, client: &async_nats::Client) -> anyhow::Result<()> {
    let store = crate::deploy::Store::open(client).await?;
    let all = store
        .all_desired()
        .await
        .context("cannot read the desired state for the domains' boundaries")?;
    for desired in all {
        if let Some(membership) = desired.current.domain {
            body.boundaries().set(&desired.cell, Some(membership));
        }
    }
    Ok(())
}
