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
use crate::manifest::{CellSpec, Manifest, RuntimeKind, PROBE_ID};
use crate::metrics::{CellLabel, LatencyFamily};
use crate::outbound::{LocalCalls, Outbound};
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
            process_bundles,
            venvs: Arc::new(VenvCache::new(dir.join("python-venvs"))),
        }
    }
}

/// Where a cell folder came from: a bundle's Python cell gets the venv of
/// its lock, a folder's its own `[python] venv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Folder,
    Bundle,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            trust: Trust::default(),
            unpack_dir: Bundle::default_unpack_dir(),
            process_bundles: false,
            venvs: Arc::new(VenvCache::new(VenvCache::default_dir())),
        }
    }
}

/// Everything a cell needs from its host at load.
pub(super) struct Loader {
    pub bus: Arc<dyn BodyBus>,
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
}

impl Loader {
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
            Outbound::new(self.bus.clone(), manifest.clone(), self.local.clone())
                .with_state(state)
                .with_durable(self.durable.clone()),
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
                    Origin::Bundle => Some(self.locked_venv(&spec).await?),
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
            outbound,
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
        let spec = bundle.unpack(&self.sources.unpack_dir)?;
        self.load_from(&spec.dir, Origin::Bundle).await
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
