//! Cells as WebAssembly components in wasmtime.
//!
//! One engine per host; components compiled once and cached on disk;
//! an `InstancePre` per cell, so each instantiation only allocates and links.

mod cache;
mod clocks;
mod engine;
mod guest_output;
mod imports;
mod instances;
mod keyvalue;
mod memory_limit;
mod pool;
mod sandbox;
mod tiering;
mod wit_error;

pub use cache::{CacheOutcome, ComponentCache};
pub use engine::{Allocator, Compiler, EngineOptions, EPOCH_TICK};
pub use pool::Tier;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Trap};

use self::bindings::cbs::cell::types as wit;
use self::cache::Lookup;
use self::instances::{AtLimit, Instances};
use self::pool::{Code, Instance, InstancePool};
use self::sandbox::Sandbox;
use self::tiering::Tiering;
use super::last_lines::quoted;
use super::{CellInfo, CellRunner, Deadline, Reply};
use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::manifest::{Manifest, Policy};
use crate::outbound::{Flow, Outbound};

/// Host bindings of the `cbs:cell` world (`wit/`).
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "cell",
        imports: { default: async },
        exports: { default: async },
    });
}

/// The wasm runtime of a host: engine, linker and component cache; with
/// [`Compiler::Tiered`], the baseline tier.
pub struct WasmRuntime {
    engine: Engine,
    /// The most memory a cell may be granted, in MiB.
    max_memory_mb: u32,
    linker: Arc<Linker<Sandbox>>,
    cache: Arc<ComponentCache>,
    allocator: Allocator,
    tiering: Option<Tiering>,
    /// Every cell's instances, sharing the engine's pool.
    instances: Arc<Instances>,
}

/// The cell world's imports (WASI p2 and `cbs:cell`) for `engine`.
fn cell_linker(engine: &Engine) -> anyhow::Result<Linker<Sandbox>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bindings::Cell::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

impl WasmRuntime {
    pub fn new(options: &EngineOptions, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let (engine, allocator) = engine::new_engine(options)?;
        let linker = Arc::new(cell_linker(&engine)?);
        let cache = Arc::new(ComponentCache::new(
            &engine,
            cache_dir,
            options.cache_max_mb.saturating_mul(1 << 20),
        ));
        let tiering = match options.compiler {
            Compiler::Tiered => tiering(&engine, &linker, &cache)?,
            Compiler::Optimized => None,
        };
        let mut engines = vec![&engine];
        engines.extend(tiering.as_ref().map(Tiering::engine));
        engine::start_epoch_ticker(&engines);
        Ok(Self {
            engine,
            max_memory_mb: options.max_memory_mb,
            linker,
            cache,
            allocator,
            tiering,
            instances: Arc::default(),
        })
    }

    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// Compiles (or loads from cache) the component at `path`, checks that it
    /// implements the cell world, and calls its `describe()` once.
    pub async fn load(
        &self,
        manifest: Arc<Manifest>,
        path: &Path,
        outbound: Arc<Outbound>,
    ) -> anyhow::Result<WasmCell> {
        if manifest.memory_mb() > self.max_memory_mb {
            bail!(
                "cell {} asks for memory_mb = {} and this host grants at most {} MiB \
                 (cbs-host --max-memory-mb)",
                manifest.id,
                manifest.memory_mb(),
                self.max_memory_mb
            );
        }
        if !path.is_file() {
            bail!(
                "cannot read component {} of cell {}: run `make build` (or build the cell) first",
                path.display(),
                manifest.id
            );
        }
        let (pool, cache) = self
            .pool(path, &manifest, outbound)
            .with_context(|| format!("cannot load {}", path.display()))?;
        let info = describe(&pool, &manifest)
            .await
            .with_context(|| format!("describe() of {} failed", path.display()))?;
        pool.prewarm().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot make the [scale] min warm instances of {}: {e:#} \
                 (lower [scale] min in its cell.toml, or raise cbs-host --max-instances)",
                manifest.id
            )
        })?;
        InstancePool::spawn_reaper(&pool);
        Ok(WasmCell {
            manifest,
            pool,
            info,
            cache,
        })
    }
}

impl WasmRuntime {
    /// The instances of the component at `path`: from its cached optimized
    /// code; else, when tiered, from Winch's code until Cranelift's is
    /// ready; else from Cranelift's, compiled now.
    fn pool(
        &self,
        path: &Path,
        manifest: &Arc<Manifest>,
        outbound: Arc<Outbound>,
    ) -> anyhow::Result<(Arc<InstancePool>, CacheOutcome)> {
        let make = |code| {
            let instances = self.instances.clone();
            let pool = Arc::new(InstancePool::new(
                code,
                manifest.clone(),
                outbound.clone(),
                instances,
            ));
            self.instances.register(Arc::downgrade(&pool) as _);
            pool
        };
        let check = |bytes: &[u8]| check_component_header(bytes, path);
        let (component, outcome) = match self.cache.lookup_file(&self.engine, path, check)? {
            Lookup::Hit(component) => (component, CacheOutcome::Hit),
            Lookup::Miss(source) => {
                if let Some(tiering) = &self.tiering {
                    if let Some(pool) = tiering.pool(&manifest.id, path, &source, make)? {
                        return Ok((pool, CacheOutcome::Baseline));
                    }
                }
                let component = self.cache.compile_file(&self.engine, path, &source)?;
                (component, CacheOutcome::Compiled)
            }
        };
        let code = link(
            &self.engine,
            &self.linker,
            &component,
            Tier::Optimized,
            path,
        )?;
        Ok((make(code), outcome))
    }
}

/// The baseline tier, where Winch runs; `None` elsewhere.
fn tiering(
    engine: &Engine,
    linker: &Arc<Linker<Sandbox>>,
    cache: &Arc<ComponentCache>,
) -> anyhow::Result<Option<Tiering>> {
    let Some(winch) = engine::new_baseline_engine() else {
        return Ok(None);
    };
    let compiler = engine::new_compiling_engine()
        .filter(|c| cache::engine_key(c) == cache::engine_key(engine))
        .unwrap_or_else(|| {
            tracing::debug!("background compiles use the host's engine (all cores)");
            engine.clone()
        });
    let tiering = Tiering::start(
        winch.clone(),
        cell_linker(&winch)?,
        compiler,
        engine.clone(),
        linker.clone(),
        cache.clone(),
    )?;
    Ok(Some(tiering))
}

/// `component` linked to the cell world.
pub(super) fn link(
    engine: &Engine,
    linker: &Linker<Sandbox>,
    component: &wasmtime::component::Component,
    tier: Tier,
    path: &Path,
) -> anyhow::Result<Code> {
    let pre = linker
        .instantiate_pre(component)
        .and_then(bindings::CellPre::new)
        .map_err(|e| {
            anyhow::anyhow!(
                "{} does not implement the cbs:cell world of wit/cell.wit: {e:#}",
                path.display()
            )
        })?;
    Ok(Code {
        engine: engine.clone(),
        pre,
        tier,
    })
}

fn check_component_header(bytes: &[u8], path: &Path) -> anyhow::Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("{} is not WebAssembly (no \\0asm header)", path.display());
    }
    match &bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => bail!(
            "{} is a core WebAssembly module, not a component: build the cell with \
             `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)",
            path.display()
        ),
        v => bail!(
            "{} has an unknown WebAssembly version {v:02x?}",
            path.display()
        ),
    }
}

/// The least time `describe()` gets at load, instantiation included. It is
/// the host's own probe, not a message: on a busy machine (other components
/// compiling on every core) instantiating a big component can take longer
/// than a cell's message `timeout_ms`, and a load must not fail for that.
const DESCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn describe(pool: &InstancePool, manifest: &Manifest) -> anyhow::Result<CellInfo> {
    let budget = std::time::Duration::from_millis(manifest.limits.timeout_ms).max(DESCRIBE_TIMEOUT);
    let deadline = Instant::now() + budget;
    let mut instance = pool.checkout(deadline).await?;
    let info = instance.cell.call_describe(&mut instance.store).await?;
    pool.checkin(instance);
    if info.id != manifest.id && manifest.id != crate::manifest::PROBE_ID {
        tracing::warn!(manifest = %manifest.id, component = %info.id, "the component describes itself with another id; cell.toml wins");
    }
    Ok(CellInfo {
        id: info.id,
        version: info.version,
        input_schema: info.input_schema,
        output_schema: info.output_schema,
    })
}

/// When a host at its instance limit asks callers to try again.
const RETRY_AT_LIMIT_MS: u64 = 100;

/// A loaded wasm cell.
pub struct WasmCell {
    manifest: Arc<Manifest>,
    pool: Arc<InstancePool>,
    info: CellInfo,
    cache: CacheOutcome,
}

impl WasmCell {
    /// Whether the compiled component came from the on-disk cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// The compiler of the code new instances run.
    pub fn tier(&self) -> Tier {
        self.pool.tier()
    }

    pub fn policy(&self) -> Policy {
        self.manifest.instances.policy
    }

    /// Warm instances waiting for messages.
    pub fn idle_instances(&self) -> usize {
        self.pool.idle()
    }

    async fn call(
        &self,
        instance: &mut Instance,
        envelope: &Envelope,
    ) -> wasmtime::Result<Result<wit::Outgoing, wit::CellError>> {
        let msg = wit::Envelope {
            v: envelope.v,
            id: envelope.id.clone(),
            correlation_id: envelope.correlation_id.clone(),
            causation_id: envelope.causation_id.clone(),
            subject: envelope.subject.clone(),
            schema: envelope.schema.clone(),
            headers: envelope
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            payload: envelope.payload.get().to_owned(),
        };
        instance.cell.call_handle(&mut instance.store, &msg).await
    }

    /// Describes a trap in words a cell author can act on.
    fn trap_error(&self, instance: &Instance, error: &wasmtime::Error) -> BusError {
        let id = &self.manifest.id;
        let sandbox = instance.store.data();
        if sandbox.memory.hit {
            return BusError::new(
                ErrorCode::CellFailed,
                format!(
                    "cell {id} exceeded its memory limit of {} MiB (raise [limits] memory_mb in cell.toml)",
                    sandbox.memory.max_mb()
                ),
            );
        }
        if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            return self.deadline_error();
        }
        let trap = error
            .downcast_ref::<Trap>()
            .map_or_else(|| error.to_string(), |t| t.to_string());
        let stderr = sandbox.stderr.take_tail();
        let message = format!("cell {id} trapped: {trap}{}", quoted(&stderr));
        BusError::new(ErrorCode::CellFailed, message)
    }

    /// A message that got no instance: `capacity`, typed for retrying when
    /// the host is at its instance limit.
    fn instantiate_error(&self, error: &wasmtime::Error) -> BusError {
        let id = &self.manifest.id;
        match error.downcast_ref::<AtLimit>() {
            Some(at_limit) => {
                tracing::debug!(cell = %id, engine = %at_limit.0, "no instance before the deadline");
                BusError::new(
                ErrorCode::Capacity,
                format!("cell {id}: {at_limit}; retry in {RETRY_AT_LIMIT_MS} ms, or raise cbs-host --max-instances"),
            )
            .with_details(serde_json::json!({"retry_after_ms": RETRY_AT_LIMIT_MS}))
            }
            None => BusError::new(
                ErrorCode::Capacity,
                format!("cannot instantiate cell {id}: {error:#}"),
            ),
        }
    }

    fn deadline_error(&self) -> BusError {
        BusError::new(
            ErrorCode::Timeout,
            format!(
                "cell {} ran past its deadline ({} ms, [limits] timeout_ms) and was stopped",
                self.manifest.id, self.manifest.limits.timeout_ms
            ),
        )
    }
}

#[async_trait]
impl CellRunner for WasmCell {
    async fn handle(&self, envelope: Arc<Envelope>, deadline: Deadline) -> Result<Reply, BusError> {
        let deadline = deadline.reply_by;
        let mut instance = self
            .pool
            .checkout(deadline)
            .await
            .map_err(|e| self.instantiate_error(&e))?;
        let sandbox = instance.store.data_mut();
        sandbox.stderr.take_tail();
        sandbox.flow = Some(Flow {
            parent: envelope.clone(),
            deadline,
        });
        // Epoch interruption stops a spinning guest; this timeout also stops
        // one blocked in a host call (e.g. reading stdin).
        let remaining = deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::time::timeout(remaining, self.call(&mut instance, &envelope)).await;
        match outcome {
            Ok(Ok(result)) => {
                instance.count_message();
                self.pool.checkin(instance);
                match result {
                    Ok(out) => Ok(Reply {
                        payload: out.payload,
                        schema: out.schema,
                        headers: out.headers,
                    }),
                    Err(e) => Err(wit_error::from_wit(e)),
                }
            }
            Ok(Err(trap)) => {
                let error = self.trap_error(&instance, &trap);
                tracing::warn!(cell = %self.manifest.id, correlation_id = %envelope.correlation_id, error = ?trap, "instance retired after a trap");
                Err(error)
            }
            Err(_elapsed) => Err(self.deadline_error()),
        }
    }

    fn info(&self) -> &CellInfo {
        &self.info
    }

    fn tier(&self) -> Option<Tier> {
        Some(self.pool.tier())
    }

    fn instances(&self) -> usize {
        self.pool.live()
    }
}
