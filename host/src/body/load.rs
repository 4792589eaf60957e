//! Loading cells: from a folder (`cell.toml`), a bundle (`.cbs`, verified
//! against the trust list) or a bare component (`.wasm`), into a
//! [`LoadedCell`] ready to serve.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::sync::Semaphore;

use super::cell::LoadedCell;
use crate::bundle::{self, Bundle, Trust};
use crate::bus::BodyBus;
use crate::chaos::{Chaos, ChaosSpec};
use crate::contract::Contract;
use crate::durable::DurableLog;
use crate::flows::Flows;
use crate::manifest::{CellSpec, Manifest, RuntimeKind, PROBE_ID};
use crate::metrics::{CellLabel, LatencyFamily};
use crate::outbound::{LocalCalls, Outbound};
use crate::retention::{self, Lease};
use crate::runtime::process::SidecarCell;
use crate::runtime::python::venv::Venv;
use crate::runtime::python::venvs::VenvCache;
use crate::runtime::python::PythonCell;
use crate::runtime::wasm::WasmRuntime;
use crate::runtime::CellRunner;
use crate::state::{CellState, StateBackend};
use crate::stats::CellStats;

/// Where cells come from: trust for bundles, and where they unpack.
#[derive(Clone)]
pub struct Sources {
    /// Public keys bundles must be signed by; empty accepts unsigned cells.
    pub trust: Trust,
    /// Verified bundles unpack here, one folder per digest.
    pub unpack_dir: PathBuf,
    /// What the unpacked bundles may take; past it, the least recently
    /// used that no loaded cell runs from are removed ([`retention`]).
    pub unpack_max_bytes: u64,
    /// Whether bundles may start native processes (sidecar and Python-pool
    /// cells). Off by default: a bundle from the bus would otherwise run
    /// any command on the host.
    pub process_bundles: bool,
    /// Venvs built from bundled Python cells' locks.
    pub venvs: Arc<VenvCache>,
}

impl Sources {
    /// Bundles unpack in `<dir>/bundles`, venvs are built in
    /// `<dir>/python-venvs`.
    pub fn in_dir(dir: &Path, trust: Trust, process_bundles: bool) -> Self {
        Self {
            trust,
            unpack_dir: dir.join("bundles"),
            unpack_max_bytes: DEFAULT_UNPACK_MAX_BYTES,
            process_bundles,
            venvs: Arc::new(VenvCache::new(dir.join("python-venvs"))),
        }
    }
}

/// What the unpacked bundles of a host may take on disk unless told
/// (`cbs-host --bundle-cache-max-mb`).
pub const DEFAULT_UNPACK_MAX_BYTES: u64 = 2 << 30;

/// Where a cell folder came from: a bundle's Python cell gets the venv of
/// its lock, a folder's its own `[python] venv`; a bundle's folder is held
/// while the cell lives.
#[derive(Debug)]
enum Origin {
    Folder,
    Bundle(Lease),
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            trust: Trust::default(),
            unpack_dir: Bundle::default_unpack_dir(),
            unpack_max_bytes: DEFAULT_UNPACK_MAX_BYTES,
            process_bundles: false,
            venvs: Arc::new(VenvCache::new(VenvCache::default_dir())),
        }
    }
}

/// Everything a cell needs from its host at load.
pub(super) struct Loader {
    pub bus: Arc<dyn BodyBus>,
    /// Where cells' own calls and publishes go: a connection with a cell's
    /// rights only (`--cell-nats-*`); `None` sends them on `bus`.
    pub cell_bus: Option<Arc<dyn BodyBus>>,
    pub wasm: Arc<WasmRuntime>,
    pub sources: Sources,
    /// Chaos settings by cell id, over those of `cell.toml`.
    pub chaos: HashMap<String, ChaosSpec>,
    /// In-process calls to this host's cells; `None` sends every call
    /// through the bus.
    pub local: Option<Arc<dyn LocalCalls>>,
    pub latency: LatencyFamily,
    /// Where cells granted state keep it.
    pub state: Arc<dyn StateBackend>,
    /// Where durable publishes are stored.
    pub durable: Arc<dyn DurableLog>,
    /// Where every cell records its hops.
    pub flows: Arc<Flows>,
    /// The domains' boundaries every cell's calls keep within.
    pub boundaries: Arc<crate::boundary::Boundaries>,
    /// Tenants' request rates on this host.
    pub tenants: Arc<crate::quota::Tenants>,
}

impl Loader {
    fn cell_bus(&self) -> Arc<dyn BodyBus> {
        self.cell_bus.clone().unwrap_or_else(|| self.bus.clone())
    }

    /// Loads a cell folder (manifest, schemas, component) without serving it.
    pub async fn load(&self, dir: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        self.load_from(dir, Origin::Folder).await
    }

    async fn load_from(&self, dir: &Path, origin: Origin) -> anyhow::Result<Arc<LoadedCell>> {
        let spec = CellSpec::from_dir(dir)?;
        let manifest = Arc::new(with_grants_resolved(&spec)?);
        let contract = Contract::load(&spec)?;
        let state = CellState::for_cell(&manifest, &self.state);
        let outbound = Arc::new(
            Outbound::new(self.cell_bus(), manifest.clone(), self.local.clone())
                .with_state(state)
                .with_durable(self.durable.clone())
                .with_boundaries(self.boundaries.clone()),
        );
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
                let venv = match origin {
                    Origin::Folder => None,
                    Origin::Bundle(_) => Some(self.locked_venv(&spec).await?),
                };
                let cell = PythonCell::start(&spec, outbound.clone(), venv)
                    .await
                    .with_context(|| format!("cannot load cell {}", manifest.id))?;
                (Arc::new(cell), None)
            }
        };
        let limits = &manifest.limits;
        Ok(Arc::new(LoadedCell {
            admitted: Arc::new(Semaphore::new((limits.concurrency + limits.queue) as usize)),
            running: Semaphore::new(limits.concurrency as usize),
            pulled: Arc::new(Semaphore::new(limits.concurrency as usize)),
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
            flows: self.flows.recorder(&manifest.id, &manifest.version),
            tenants: self.tenants.clone(),
            outbound,
            spec,
            manifest,
            contract,
            runner,
            cache,
            stats: CellStats::default(),
            _folder: match origin {
                Origin::Bundle(lease) => Some(lease),
                Origin::Folder => None,
            },
        }))
    }

    /// Loads a cell folder, a bundle (`.cbs`) or a bare component (`.wasm`).
    /// With a trust list, only bundles signed by a trusted key load.
    pub async fn load_path(&self, path: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        let is = |ext: &str| path.extension().is_some_and(|e| e == ext) && path.is_file();
        if is(bundle::EXTENSION) {
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
        let manifest = bundle.cell_manifest()?;
        if manifest.runtime != RuntimeKind::Wasm && !self.sources.process_bundles {
            bail!(
                "cell {} runs a native process (runtime = \"{}\"), and this host runs only \
                 wasm cells from bundles: start it with --allow-process-bundles to run process \
                 cells from bundles (with --trust, only signed ones)",
                manifest.id,
                manifest.runtime
            );
        }
        bundle.check_platform()?;
        let (spec, lease) = self.unpack(bundle)?;
        let cell = self.load_from(&spec.dir, Origin::Bundle(lease)).await?;
        self.trim_unpacked(&spec.dir).await;
        Ok(cell)
    }

    /// Unpacks `bundle` and holds its folder; unpacks it again when another
    /// host process on the machine removed it in between.
    fn unpack(&self, bundle: &Bundle) -> anyhow::Result<(CellSpec, Lease)> {
        let root = &self.sources.unpack_dir;
        for _ in 0..3 {
            let spec = bundle.unpack(root)?;
            if let Some(lease) = retention::take(&spec.dir, crate::manifest::FILE_NAME) {
                return Ok((spec, lease));
            }
        }
        bail!(
            "the unpacked bundle of {} was removed each time it was unpacked: is something else cleaning {}?",
            bundle.manifest.cell,
            root.display()
        )
    }

    /// Brings the unpacked bundles within their bound, keeping `loaded`.
    async fn trim_unpacked(&self, loaded: &Path) {
        let root = self.sources.unpack_dir.clone();
        let (loaded, max) = (loaded.to_path_buf(), self.sources.unpack_max_bytes);
        let trimming = tokio::task::spawn_blocking(move || {
            retention::evict(&root, crate::manifest::FILE_NAME, max, &loaded)
        });
        if let Err(e) = trimming.await {
            tracing::warn!(error = %e, "the unpacked bundles could not be trimmed");
        }
    }

    /// The venv of a bundled Python cell's lock (built once per host).
    async fn locked_venv(&self, spec: &CellSpec) -> anyhow::Result<Venv> {
        let m = &spec.manifest;
        let lock = m
            .python
            .as_ref()
            .and_then(|p| p.requirements.as_ref())
            .map(|r| spec.resolve(r));
        self.sources
            .venvs
            .ensure(&m.id, lock.as_deref())
            .await
            .with_context(|| format!("cannot prepare the Python venv of cell {}", m.id))
    }

    /// A bare component: its `describe()` names it; default limits, and no
    /// schemas to check (a component gives only their ids).
    async fn load_component(&self, path: &Path) -> anyhow::Result<Arc<LoadedCell>> {
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let probe = Manifest::bare(PROBE_ID, "0.0.0", &path);
        let dir = self.sources.unpack_dir.join(format!(
            "wasm-{}",
            bundle::sha256_hex(path.as_os_str().as_encoded_bytes())
        ));
        std::fs::create_dir_all(&dir)?;
        probe.write(&dir)?;
        let info = self.load(&dir).await?.info().clone();
        tracing::info!(cell = %info.id, version = %info.version, component = %path.display(), "bare component: id and version from its describe(), default limits, payloads unchecked");
        Manifest::bare(&info.id, &info.version, &path)
            .write(&dir)
            .with_context(|| format!("{} describes itself as {:?}", path.display(), info.id))?;
        self.load(&dir).await
    }
}

/// The manifest with its file grants made absolute (relative to the cell
/// folder) and checked to be folders. Grants are for wasm cells: a process
/// already sees the machine, and gets variables through `[sidecar] env`.
fn with_grants_resolved(spec: &CellSpec) -> anyhow::Result<Manifest> {
    let mut manifest = spec.manifest.clone();
    let grants = &mut manifest.capabilities;
    if manifest.runtime != RuntimeKind::Wasm && (!grants.files.is_empty() || !grants.env.is_empty())
    {
        bail!(
            "cell {}: [capabilities] files and env are for wasm cells; a {} cell sees the \
             machine's files and takes variables from [sidecar] env",
            manifest.id,
            manifest.runtime
        );
    }
    for grant in &mut grants.files {
        grant.host = spec.resolve(&grant.host);
        if !grant.host.is_dir() {
            bail!(
                "cell {}: [[capabilities.files]] host = {} is not a folder",
                manifest.id,
                grant.host.display()
            );
        }
    }
    Ok(manifest)
}
