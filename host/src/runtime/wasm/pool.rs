//! Instances of one cell, under its instance policy.
//!
//! - `pooled`: warm instances are reused. An instance is retired after
//!   `max_messages` messages, and at once after any trap, limit hit or
//!   deadline, so no state survives a failure.
//! - `fresh`: every message gets a new instance, dropped afterwards; no
//!   message can see another's state.

use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    idle: Mutex<Vec<Instance>>,
    /// Warm instances kept: one per concurrent message at most.
    keep: usize,
}

impl InstancePool {
    pub fn new(
        engine: Engine,
        pre: CellPre<Sandbox>,
        manifest: Arc<Manifest>,
        outbound: Arc<Outbound>,
    ) -> Self {
        let keep = manifest.limits.concurrency as usize;
        Self {
            engine,
            pre,
            log: LogBudget::new(&manifest.id),
            manifest,
            outbound,
            idle: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// An instance for one message: warm when pooled and available.
    pub async fn checkout(&self, deadline: Instant) -> wasmtime::Result<Instance> {
        if self.manifest.instances.policy == Policy::Pooled {
            if let Some(mut instance) = self.idle.lock().unwrap().pop() {
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
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < self.keep {
            idle.push(instance);
        }
    }

    /// Warm instances currently idle.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
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
        })
    }
}
