//! A process cell's slots and their supervisors. With `[scale]` the pool
//! grows by one process while every live one is busy (the next message
//! would queue in a process), up to `max`, and retires a process that has
//! been idle for `idle_ms`, down to `min`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::conn::Conn;
use super::supervisor::{supervise, Assigned, Launch, Process, Slot};

/// How a process cell's process count follows its load.
#[derive(Debug, Clone, Copy)]
pub struct ProcessScale {
    pub min: u32,
    pub max: u32,
    /// Messages one process takes at once before the next would queue.
    pub per_process: u32,
    /// A process idle this long is retired, down to `min`.
    pub idle: Duration,
}

pub(super) struct Pool {
    pub launch: Arc<Launch>,
    slots: RwLock<Vec<Arc<Slot>>>,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
    pub scale: Option<ProcessScale>,
    /// A process is being started to grow the pool.
    growing: AtomicBool,
}

impl Pool {
    pub fn new(launch: Arc<Launch>, scale: Option<ProcessScale>) -> Arc<Self> {
        Arc::new(Self {
            launch,
            slots: RwLock::default(),
            supervisors: Mutex::default(),
            scale,
            growing: AtomicBool::new(false),
        })
    }

    /// Serves `conn` in a new slot from now on, supervised.
    pub fn add(&self, conn: Arc<Conn>, process: Process) {
        let slot = Arc::new(Slot::new(self.launch.clone(), conn.clone()));
        let mut supervisors = self.supervisors.lock().unwrap();
        supervisors.retain(|t| !t.is_finished());
        supervisors.push(tokio::spawn(supervise(slot.clone(), conn, process)));
        self.slots.write().unwrap().push(slot);
    }

    /// Round-robin from `start` over live processes, preferring the less
    /// busy of two; the message is assigned to the one picked. With
    /// `[scale]`, a message that has to queue behind others in its process
    /// while every process is as busy grows the pool.
    pub fn pick(self: &Arc<Self>, start: usize) -> Option<(Assigned, Arc<Conn>)> {
        let (assigned, conn, queues) = {
            let slots = self.slots.read().unwrap();
            let n = slots.len();
            let live = || {
                (0..n).filter_map(|k| {
                    let slot = &slots[(start + k) % n];
                    slot.conn().map(|c| (slot, c))
                })
            };
            let (slot, conn) = live().take(2).min_by_key(|(s, _)| s.assigned())?;
            let assigned = slot.assign();
            let per_process = self.scale.map_or(usize::MAX, |s| s.per_process as usize);
            let queues =
                slot.assigned() > per_process && live().all(|(s, _)| s.assigned() >= per_process);
            (assigned, conn, queues)
        };
        if queues {
            self.grow();
        }
        Some((assigned, conn))
    }

    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.read().unwrap().clone()
    }

    /// Stops every supervisor, which kills its process.
    pub fn abort(&self) {
        for task in self.supervisors.lock().unwrap().iter() {
            task.abort();
        }
    }

    /// Supervisors still running.
    pub fn supervising(&self) -> usize {
        let supervisors = self.supervisors.lock().unwrap();
        supervisors.iter().filter(|t| !t.is_finished()).count()
    }

    /// Starts one more process when the pool is below `max` (one start at
    /// a time; the message that queued does not wait for it).
    fn grow(self: &Arc<Self>) {
        let Some(scale) = self.scale else { return };
        if self.slots.read().unwrap().len() >= scale.max as usize {
            return;
        }
        if self.growing.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            match pool.launch.start().await {
                Ok((conn, process, _)) => {
                    pool.add(conn, process);
                    let size = pool.slots.read().unwrap().len();
                    tracing::info!(cell = %pool.launch.manifest.id, size, "{} pool grew", pool.launch.kind);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot grow the {} pool", pool.launch.kind)
                }
            }
            pool.growing.store(false, Ordering::Release);
        });
    }

    /// Retires idle processes down to `min`, until the task is dropped.
    pub async fn reap(self: Arc<Self>) {
        let Some(scale) = self.scale else { return };
        let mut tick = tokio::time::interval(
            (scale.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        let grace = Duration::from_millis(self.launch.manifest.limits.timeout_ms);
        loop {
            tick.tick().await;
            let retired = {
                let mut slots = self.slots.write().unwrap();
                let mut retired = Vec::new();
                while slots.len() > scale.min as usize {
                    // The newest idle one first: the oldest have warm caches.
                    let Some(i) = slots.iter().rposition(|s| s.idle_for(scale.idle)) else {
                        break;
                    };
                    retired.push(slots.remove(i));
                }
                (retired, slots.len())
            };
            let (retired, size) = retired;
            if !retired.is_empty() {
                tracing::info!(cell = %self.launch.manifest.id, size, "{} pool shrank", self.launch.kind);
            }
            for slot in retired {
                slot.retire(grace);
            }
        }
    }
}
