//! Instances of one cell, under its instance policy.
//!
//! - `pooled`: warm instances are reused. An instance is retired after
//!   `max_messages` messages, and at once after any trap, limit hit or
//!   deadline, so no state survives a failure.
//! - `fresh`: every message gets a new instance, dropped afterwards; no
//!   message can see another's state.
//!
//! `[scale]` sizes the warm pool: at least `min` instances are kept (made
//! at load; 0 scales to zero and the first message makes one), at most
//! `max`, and one idle for `idle_ms` is retired down to `min`.
//!
//! A component compiled at load by the baseline compiler is served from
//! that [`Code`] until its optimized code is ready; [`InstancePool::upgrade`]
//! then switches: warm baseline instances are dropped, running ones finish
//! their message and are dropped at check-in, new ones are optimized.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store, UpdateDeadline};

use super::bindings::{Cell, CellPre};
use super::instances::{is_pool_full, AtLimit, Idle, Instances};
use super::sandbox::Sandbox;
use crate::manifest::{Manifest, Policy};
use crate::outbound::Outbound;
use crate::runtime::log_budget::LogBudget;

/// Which compiler made the code a cell runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Winch, at load (while Cranelift compiles in the background).
    Baseline,
    /// Cranelift.
    Optimized,
}

/// Compiled code of a cell's component, ready to instantiate.
#[derive(Clone)]
pub struct Code {
    pub engine: Engine,
    pub pre: CellPre<Sandbox>,
    pub tier: Tier,
}

/// A live instance with its store.
pub struct Instance {
    pub store: Store<Sandbox>,
    pub cell: Cell,
    handled: u64,
    tier: Tier,
    _live: Live,
}

/// Counts an instance among the pool's live ones while it exists, and
/// tells the host's other cells when it is gone.
struct Live(Arc<AtomicUsize>, Arc<Instances>);

impl Live {
    fn new(count: &Arc<AtomicUsize>, instances: &Arc<Instances>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone(), instances.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.freed();
    }
}

impl Instance {
    /// Counts one handled message (for retirement after `max_messages`).
    pub fn count_message(&mut self) {
        self.handled += 1;
    }
}

pub struct InstancePool {
    /// What new instances are made from.
    code: Mutex<Code>,
    /// Whether `code` is optimized: read at every check-in without the lock.
    optimized: AtomicBool,
    manifest: Arc<Manifest>,
    outbound: Arc<Outbound>,
    /// The cell's share of the host log, across its instances.
    log: Arc<LogBudget>,
    /// Idle instances, oldest first, with when each was last used.
    idle: Mutex<Vec<(Instance, Instant)>>,
    /// Warm instances kept at most, and at least (`[scale]`).
    keep: usize,
    min: usize,
    /// An instance idle this long is retired (down to `min`).
    idle_for: Duration,
    /// Instances alive: idle and running.
    live: Arc<AtomicUsize>,
    /// Every cell's instances on this host.
    instances: Arc<Instances>,
}

impl InstancePool {
    pub fn new(
        code: Code,
        manifest: Arc<Manifest>,
        outbound: Arc<Outbound>,
        instances: Arc<Instances>,
    ) -> Self {
        let keep = manifest.max_warm() as usize;
        let min = manifest.min_warm() as usize;
        let idle_for = Duration::from_millis(manifest.scale.idle_ms);
        Self {
            optimized: AtomicBool::new(code.tier == Tier::Optimized),
            code: Mutex::new(code),
            log: LogBudget::new(&manifest.id),
            manifest,
            outbound,
            idle: Mutex::new(Vec::with_capacity(keep)),
            keep,
            min,
            idle_for,
            live: Arc::default(),
            instances,
        }
    }

    /// The compiler of the code new instances are made from.
    pub fn tier(&self) -> Tier {
        if self.optimized.load(Ordering::Acquire) {
            Tier::Optimized
        } else {
            Tier::Baseline
        }
    }

    /// Makes new instances from `code` (the optimized code of a component
    /// that was served from baseline code): warm instances of the old code
    /// are dropped now, running ones at check-in.
    pub fn upgrade(&self, code: Code) {
        let optimized = code.tier == Tier::Optimized;
        *self.code.lock().unwrap_or_else(|e| e.into_inner()) = code;
        self.optimized.store(optimized, Ordering::Release);
        let stale = std::mem::take(&mut *self.idle_list());
        drop(stale);
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<(Instance, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes instances until `min` are warm (at load).
    pub async fn prewarm(&self) -> wasmtime::Result<()> {
        while self.manifest.instances.policy == Policy::Pooled && self.idle() < self.min {
            let instance = self
                .instantiate(Instant::now() + Duration::from_secs(30))
                .await?;
            self.idle_list().push((instance, Instant::now()));
        }
        Ok(())
    }

    /// Retires instances idle for `idle_ms`, oldest first, down to `min`.
    pub fn reap(&self) {
        let mut idle = self.idle_list();
        let expired = idle
            .iter()
            .take_while(|(_, used)| used.elapsed() >= self.idle_for)
            .count()
            .min(idle.len().saturating_sub(self.min));
        idle.drain(..expired);
    }

    /// Reaps `pool` now and then until it is dropped.
    pub fn spawn_reaper(pool: &Arc<Self>) {
        let every = (pool.idle_for / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
        let pool: Weak<Self> = Arc::downgrade(pool);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match pool.upgrade() {
                    Some(pool) => pool.reap(),
                    None => return,
                }
            }
        });
    }

    /// Instances alive: warm and idle, or running a message.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// An instance for one message: warm when pooled and available.
    pub async fn checkout(&self, deadline: Instant) -> wasmtime::Result<Instance> {
        if self.manifest.instances.policy == Policy::Pooled {
            let warm = self.idle_list().pop();
            if let Some((mut instance, _)) = warm {
                instance.store.data_mut().deadline = deadline;
                return Ok(instance);
            }
        }
        self.instantiate(deadline).await
    }

    /// Returns a healthy instance after a call. Instances that trapped
    /// must be dropped instead, never returned. Only messages count towards
    /// `max_messages` (see [`Instance::count_message`]), not `describe()`.
    pub fn checkin(&self, mut instance: Instance) {
        let sandbox = instance.store.data_mut();
        sandbox.flow = None;
        if self.manifest.instances.policy == Policy::Fresh
            || instance.handled >= self.manifest.instances.max_messages
        {
            return;
        }
        // The tier is read under the idle lock, which `upgrade` takes after
        // switching: an old instance is either refused here or dropped there.
        let mut idle = self.idle_list();
        if idle.len() < self.keep && instance.tier == self.tier() {
            idle.push((instance, Instant::now()));
            drop(idle);
            // Idle, it can give way to another cell's new instance.
            self.instances.freed();
        }
    }

    /// Warm instances currently idle.
    pub fn idle(&self) -> usize {
        self.idle_list().len()
    }

    /// A new instance; when the engine's pool is full, one of another
    /// cell's idle instances gives way, or one freed before `deadline`.
    async fn instantiate(&self, deadline: Instant) -> wasmtime::Result<Instance> {
        loop {
            let error = match self.try_instantiate(deadline).await {
                Ok(instance) => return Ok(instance),
                Err(e) => e,
            };
            let Some(limit) = is_pool_full(&error) else {
                return Err(error);
            };
            if !self.instances.reclaim(self) && !self.instances.wait_for_one(deadline).await {
                return Err(wasmtime::Error::new(AtLimit(limit)));
            }
        }
    }

    async fn try_instantiate(&self, deadline: Instant) -> wasmtime::Result<Instance> {
        let mut sandbox = Sandbox::new(&self.manifest, self.outbound.clone(), self.log.clone())?;
        sandbox.deadline = deadline;
        let code = self.code.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut store = Store::new(&code.engine, sandbox);
        store.limiter(|s| &mut s.memory);
        // Every epoch tick a running guest either yields to the scheduler
        // (so it cannot starve other cells) or, past its deadline, traps.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let cell = code.pre.instantiate_async(&mut store).await?;
        Ok(Instance {
            store,
            cell,
            handled: 0,
            tier: code.tier,
            _live: Live::new(&self.live, &self.instances),
        })
    }
}

/// Another cell's new instance may take this pool's idle ones.
impl Idle for InstancePool {
    fn oldest_idle(&self) -> Option<Instant> {
        self.idle_list().first().map(|(_, used)| *used)
    }

    fn drop_oldest_idle(&self) -> bool {
        let mut idle = self.idle_list();
        if idle.is_empty() {
            return false;
        }
        let oldest = idle.remove(0);
        drop(idle);
        drop(oldest);
        true
    }
}
