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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store, UpdateDeadline};

use super::bindings::{Cell, CellPre};
use super::sandbox::Sandbox;
use crate::manifest::{Manifest, Policy};
use crate::outbound::Outbound;
use crate::runtime::log_budget::LogBudget;

/// A live instance with its store.
pub struct Instance {
    pub store: Store<Sandbox>,
    pub cell: Cell,
    handled: u64,
    _live: Live,
}

/// Counts an instance among the pool's live ones while it exists.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Instance {
    /// Counts one handled message (for retirement after `max_messages`).
    pub fn count_message(&mut self) {
        self.handled += 1;
    }
}

pub struct InstancePool {
    engine: Engine,
    pre: CellPre<Sandbox>,
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
}

impl InstancePool {
    pub fn new(
        engine: Engine,
        pre: CellPre<Sandbox>,
        manifest: Arc<Manifest>,
        outbound: Arc<Outbound>,
    ) -> Self {
        let keep = manifest.max_warm() as usize;
        let min = manifest.min_warm() as usize;
        let idle_for = Duration::from_millis(manifest.scale.idle_ms);
        Self {
            engine,
            pre,
            log: LogBudget::new(&manifest.id),
            manifest,
            outbound,
            idle: Mutex::new(Vec::with_capacity(keep)),
            keep,
            min,
            idle_for,
            live: Arc::default(),
        }
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
        let mut idle = self.idle_list();
        if idle.len() < self.keep {
            idle.push((instance, Instant::now()));
        }
    }

    /// Warm instances currently idle.
    pub fn idle(&self) -> usize {
        self.idle_list().len()
    }

    async fn instantiate(&self, deadline: Instant) -> wasmtime::Result<Instance> {
        let mut sandbox = Sandbox::new(&self.manifest, self.outbound.clone(), self.log.clone())?;
        sandbox.deadline = deadline;
        let mut store = Store::new(&self.engine, sandbox);
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
        let cell = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance {
            store,
            cell,
            handled: 0,
            _live: Live::new(&self.live),
        })
    }
}
