//! The host's one wasmtime `Engine`: component model, epoch interruption,
//! and the pooling allocator with every limit derived from one number.

use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    Strategy,
};

/// Epoch tick: deadline resolution, and how often a running guest yields to
/// the scheduler so that a busy cell cannot starve the others.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Elements per wasm table, in the pooling allocator and the store limiter
/// alike: far above what the components here use.
pub const TABLE_ELEMENTS: usize = 100_000;

/// Upper bounds the engine is built for.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Cell instances alive at once, across all cells (warm and in use).
    pub max_instances: u32,
    /// Largest linear memory any cell may be granted, in MiB.
    pub max_memory_mb: u32,
    /// Largest the component cache grows, in MiB: past it, the least
    /// recently used entries go.
    pub cache_max_mb: u64,
    /// How a component missing from the cache is compiled at load.
    pub compiler: Compiler,
}

/// How a component missing from the cache is compiled (ADR 34).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    strum::EnumString,
    strum::Display,
    strum::VariantNames,
)]
#[strum(serialize_all = "snake_case")]
pub enum Compiler {
    /// Winch (a single-pass compiler, ~10× faster to compile) at load, so the
    /// cell serves at once; Cranelift in the background, whose code
    /// replaces Winch's when ready and is what the cache keeps.
    #[default]
    Tiered,
    /// Cranelift at load: slower to start, fastest code from the first
    /// message (and what `cbs build` uses to fill the cache).
    Optimized,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_instances: 1_000,
            max_memory_mb: 256,
            cache_max_mb: 2048,
            compiler: Compiler::default(),
        }
    }
}

/// How instance memory is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots, reused: instantiation in microseconds.
    Pooling,
    /// mmap per instance; used only when the pool cannot be reserved (e.g.
    /// a tight `ulimit -v`).
    OnDemand,
}

/// Builds the engine: the pooling allocator with resident slots reset by
/// PAGEMAP_SCAN where the kernel has it (Linux ≥ 6.7); else plain pooling;
/// else (with a warning) on-demand allocation, when the pool's reservation
/// fails on this machine.
pub fn new_engine(options: &EngineOptions) -> anyhow::Result<(Engine, Allocator)> {
    let pooled = |resident: bool| {
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(
            options, resident,
        )));
        Engine::new(&config)
    };
    let error = match pooled(true) {
        Ok(engine) => return Ok((engine, Allocator::Pooling)),
        Err(e) => e,
    };
    tracing::debug!(error = %error, "no PAGEMAP_SCAN here: pooled slots are reset without it");
    match pooled(false) {
        Ok(engine) => Ok((engine, Allocator::Pooling)),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "the pooling allocator is not available here; instances will be allocated on demand (slower)"
            );
            let engine = Engine::new(&base_config())
                .map_err(anyhow::Error::from)
                .context("cannot create the wasm engine")?;
            Ok((engine, Allocator::OnDemand))
        }
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config
}

/// The baseline engine of [`Compiler::Tiered`]: Winch, with instances
/// allocated on demand (they live only until the optimized code is ready,
/// so they do not get a second reserved pool). `None` where Winch cannot
/// run (it supports x86-64 fully; elsewhere every load uses Cranelift).
pub fn new_baseline_engine() -> Option<Engine> {
    let mut config = base_config();
    config.strategy(Strategy::Winch);
    // Winch leaves the trampolines between the host and the component to
    // Cranelift: compiled unoptimized, like the rest of this tier.
    config.cranelift_opt_level(OptLevel::None);
    match Engine::new(&config) {
        Ok(engine) => Some(engine),
        Err(e) => {
            tracing::debug!(error = %e, "no baseline compiler here: components compile with Cranelift at load");
            None
        }
    }
}

/// All pool limits derived from `max_instances`. A component of a Rust cell
/// has a few core instances (3 core modules), one memory and two tables; a
/// Python component (componentize-py 0.25, measured) instantiates 14 core
/// modules, one memory of 211 pages (13 MiB) at start and two tables, the
/// larger with 5,674 elements. The per-component caps admit both; the
/// totals bound the whole host (an average of 8 core instances per
/// component: a host of only Python instances fits ~570 of them per 1,000).
///
/// `resident`: a slot's first pages stay mapped when it is freed and
/// PAGEMAP_SCAN resets only the pages the instance wrote, instead of
/// `madvise` dropping them all: a fresh instantiate + call of `logic.greet`
/// went from 45 µs to 16 µs (criterion `wasm/instantiate+call fresh`;
/// docs/performance.md has the sizes tried). Without PAGEMAP_SCAN the same
/// sizes make it slower (58 µs: the kept bytes are cleared in full), so
/// they come only with it (`Enabled::Yes` fails the engine where it is
/// missing and [`new_engine`] falls back).
fn pooling(options: &EngineOptions, resident: bool) -> PoolingAllocationConfig {
    let n = options.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n * 8)
        .total_memories(n * 2)
        .total_tables(n * 4)
        .total_stacks(n)
        .max_core_instances_per_component(64)
        .max_memories_per_component(4)
        .max_tables_per_component(64)
        .table_elements(TABLE_ELEMENTS)
        .max_memory_size((options.max_memory_mb as usize) << 20)
        // Keep a few warm slots resident so reuse avoids page faults.
        .max_unused_warm_slots(n.min(100));
    if resident {
        pool.linear_memory_keep_resident(RESIDENT_MEMORY)
            .table_keep_resident(RESIDENT_TABLE)
            .async_stack_keep_resident(RESIDENT_STACK)
            .pagemap_scan(Enabled::Yes);
    }
    pool
}

/// Bytes of a freed slot's linear memory, tables and async stack kept
/// mapped (and reset by PAGEMAP_SCAN): measured best of 64 KiB – 4 MiB.
const RESIDENT_MEMORY: usize = 256 << 10;
const RESIDENT_TABLE: usize = 64 << 10;
const RESIDENT_STACK: usize = 64 << 10;

/// An engine like the host's that compiles on one thread: the background
/// compiles of [`Compiler::Tiered`] leave the other cores to the host. Its
/// code loads into the host's engine (same compatibility hash, checked by
/// the caller).
pub fn new_compiling_engine() -> Option<Engine> {
    let mut config = base_config();
    config.parallel_compilation(false);
    Engine::new(&config).ok()
}

/// Advances the engines' epochs every [`EPOCH_TICK`] until they are all
/// dropped: one thread for the optimized and the baseline engine.
pub fn start_epoch_ticker(engines: &[&Engine]) {
    let weak: Vec<_> = engines.iter().map(|e| e.weak()).collect();
    std::thread::Builder::new()
        .name("cbs-epoch".into())
        .spawn(move || loop {
            let mut alive = false;
            for engine in weak.iter().filter_map(|w| w.upgrade()) {
                engine.increment_epoch();
                alive = true;
            }
            if !alive {
                return;
            }
            std::thread::sleep(EPOCH_TICK);
        })
        .expect("cannot start the epoch thread");
}
