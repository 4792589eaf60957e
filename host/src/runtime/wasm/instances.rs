//! Instances across a host's cells. The engine's pool holds
//! `--max-instances` of them (and as many core instances, memories, tables
//! and stacks as its limits derive); a host of many cells fills it with
//! their warm instances alone. When it is full, the least recently used
//! idle instance of any cell gives way; when none is idle, a new instance
//! waits for one to be freed until its message's deadline, and then the
//! message is refused with a typed `capacity` error ([`AtLimit`]), never
//! the engine's own.

use std::sync::{Mutex, Weak};
use std::time::Instant;

use tokio::sync::Notify;
use wasmtime::PoolConcurrencyLimitError;

/// A cell's pool, as far as other cells borrow from it.
pub trait Idle: Send + Sync {
    /// When its least recently used idle instance was last used.
    fn oldest_idle(&self) -> Option<Instant>;
    /// Drops that instance; false when none is idle.
    fn drop_oldest_idle(&self) -> bool;
}

/// The pools of a host's wasm cells, and a signal when an instance frees.
#[derive(Default)]
pub struct Instances {
    pools: Mutex<Vec<Weak<dyn Idle>>>,
    freed: Notify,
}

/// No instance could be made before the deadline: the engine's pool was
/// full and every instance in it busy. Holds the engine's error text.
#[derive(Debug)]
pub struct AtLimit(pub String);

impl std::fmt::Display for AtLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The engine's words (which of its pools is full) are for the log:
        // a caller can act only on "full, retry".
        f.write_str("this host is at its instance limit and every instance is busy")
    }
}

impl std::error::Error for AtLimit {}

/// Whether `error` is the engine's pool being full.
pub fn is_pool_full(error: &wasmtime::Error) -> Option<String> {
    error
        .downcast_ref::<PoolConcurrencyLimitError>()
        .map(ToString::to_string)
}

impl Instances {
    /// Lists `pool` for [`reclaim`](Self::reclaim); forgets dropped pools.
    pub fn register(&self, pool: Weak<dyn Idle>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// An instance was dropped or went idle: one waiter tries again.
    pub fn freed(&self) {
        self.freed.notify_one();
    }

    /// Drops the least recently used idle instance of any cell but
    /// `asking` (a pool making instances while it has idle ones, as when it
    /// warms up to its `min`, must not take its own); false when none is
    /// idle.
    pub fn reclaim(&self, asking: &dyn Idle) -> bool {
        let asking = asking as *const dyn Idle as *const ();
        let oldest = {
            let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools
                .iter()
                .filter(|p| p.as_ptr() as *const () != asking)
                .filter_map(Weak::upgrade)
                .filter_map(|p| Some((p.oldest_idle()?, p)))
                .min_by_key(|(used, _)| *used)
                .map(|(_, pool)| pool)
        };
        oldest.is_some_and(|pool| pool.drop_oldest_idle())
    }

    /// Waits until an instance is freed or `deadline`; false at the
    /// deadline.
    pub async fn wait_for_one(&self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline.into(), self.freed.notified())
            .await
            .is_ok()
    }
}
