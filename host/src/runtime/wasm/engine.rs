//! The host's one wasmtime `Engine`: component model, epoch interruption,
//! and the pooling allocator with every limit derived from one number.

use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

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
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_instances: 1_000,
            max_memory_mb: 256,
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

/// Builds the engine; falls back to on-demand allocation (with a warning)
/// when the pooling allocator's reservation fails on this machine.
pub fn new_engine(options: &EngineOptions) -> anyhow::Result<(Engine, Allocator)> {
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(options)));
    match Engine::new(&config) {
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

/// All pool limits derived from `max_instances`. A component of a Rust cell
/// has a few core instances (3 core modules), one memory and two tables; a
/// Python component (componentize-py 0.25, measured) instantiates 14 core
/// modules, one memory of 211 pages (13 MiB) at start and two tables, the
/// larger with 5,674 elements. The per-component caps admit both; the
/// totals bound the whole host (an average of 8 core instances per
/// component: a host of only Python instances fits ~570 of them per 1,000).
fn pooling(options: &EngineOptions) -> PoolingAllocationConfig {
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
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("cbs-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("cannot start the epoch thread");
}
