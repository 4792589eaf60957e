//! The redb file of the embedded durable store: its tables, and write
//! transactions that are on disk at once or by the next group flush
//! ([`FLUSH_AFTER`]). What the operations do to the tables is `streams`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::Notify;

use crate::bus::subject::Pattern;
use crate::durable::StreamSpec;

/// Stream name → its spec (JSON).
pub(super) const STREAMS: TableDefinition<&str, &str> = TableDefinition::new("streams");
/// Stream name → last sequence given.
pub(super) const LAST_SEQ: TableDefinition<&str, u64> = TableDefinition::new("last_seq");
/// (stream, seq) → payload.
pub(super) const PAYLOADS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("payloads");
/// (stream, seq) → (subject, stored at, ms since the epoch).
pub(super) const META: TableDefinition<(&str, u64), (&str, u64)> = TableDefinition::new("meta");
/// (stream, message id) → (seq, stored at).
pub(super) const DEDUP: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("dedup");
/// (stream, consumer) → its spec (JSON).
pub(super) const CONSUMERS: TableDefinition<(&str, &str), &str> = TableDefinition::new("consumers");
/// (stream, consumer, seq) → (deliveries so far, not before, ms since the
/// epoch): what the consumer has yet to settle.
pub(super) const PENDING: TableDefinition<(&str, &str, u64), (u64, u64)> =
    TableDefinition::new("pending");

/// Dedup ids are swept every this many publishes.
const SWEEP_EVERY: u64 = 256;

/// Deliveries not yet settled, by (stream, consumer): seq → ack deadline.
pub(super) type InFlight = HashMap<(String, String), HashMap<u64, Instant>>;

/// A consumer's waiting messages are counted in full at most this often
/// (the lag its deliveries report); between counts, a take reads only as
/// far as its batch, not the whole backlog.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// Takes and settlements reach the disk at most this long after they
/// were committed.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

pub(super) struct Store {
    pub(super) db: Database,
    /// Wakes fetches when a message comes or a delivery is settled.
    pub(super) changed: Notify,
    /// Deliveries not yet settled: (stream, consumer) → seq → ack deadline.
    in_flight: Mutex<InFlight>,
    /// Each consumer's last full count of its waiting messages, and when:
    /// between counts, a take stops once its batch is full.
    pub(super) counted: Mutex<HashMap<(String, String), (Instant, u64)>>,
    publishes: std::sync::atomic::AtomicU64,
    /// Whether a flush is scheduled for commits not yet on disk.
    flush_due: std::sync::atomic::AtomicBool,
    /// Subjects the streams take, so core publishes elsewhere skip the file.
    pub(super) subjects: std::sync::RwLock<Vec<String>>,
}

impl Store {
    pub(super) fn open(path: &Path) -> anyhow::Result<Arc<Self>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let db = Database::create(path).with_context(|| {
            format!(
                "cannot open the durable store {} (is another host using this data folder? give each --data-dir)",
                path.display()
            )
        })?;
        let subjects = Self::all_subjects(&db)?;
        Ok(Arc::new(Self {
            db,
            changed: Notify::new(),
            in_flight: Mutex::default(),
            counted: Mutex::default(),
            publishes: Default::default(),
            flush_due: Default::default(),
            subjects: std::sync::RwLock::new(subjects),
        }))
    }

    fn all_subjects(db: &Database) -> anyhow::Result<Vec<String>> {
        let tx = db.begin_read()?;
        let Ok(streams) = tx.open_table(STREAMS) else {
            return Ok(Vec::new());
        };
        let mut subjects = Vec::new();
        for entry in streams.iter()? {
            let spec: StreamSpec = serde_json::from_str(entry?.1.value())?;
            subjects.extend(spec.subjects);
        }
        Ok(subjects)
    }

    /// Whether a stream takes `subject`.
    pub(super) fn takes(&self, subject: &str) -> bool {
        let subjects = self.subjects.read().unwrap_or_else(|e| e.into_inner());
        subjects.iter().any(|p| matches(p, subject))
    }

    pub(super) fn in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a consumer counted its waiting messages in full within
    /// [`COUNT_EVERY`].
    pub(super) fn counted_lately(&self, key: &(String, String), now: Instant) -> bool {
        let counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        counted
            .get(key)
            .is_some_and(|(at, _)| now.duration_since(*at) < COUNT_EVERY)
    }

    /// Runs `op` in one write transaction on a blocking thread; it is on
    /// disk when this returns.
    pub(super) async fn write<T, F>(self: &Arc<Self>, op: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Self, &WriteTransaction) -> anyhow::Result<T> + Send + 'static,
    {
        self.write_with(Durability::Immediate, op).await
    }

    /// As [`Store::write`], but on disk only by the next flush, at most
    /// [`FLUSH_AFTER`] later: for what a crash may lose because it is
    /// redone (takes and settlements: those messages come again).
    pub(super) async fn write_soon<T, F>(self: &Arc<Self>, op: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Self, &WriteTransaction) -> anyhow::Result<T> + Send + 'static,
    {
        let out = self.write_with(Durability::None, op).await?;
        self.schedule_flush();
        Ok(out)
    }

    async fn write_with<T, F>(self: &Arc<Self>, durability: Durability, op: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Self, &WriteTransaction) -> anyhow::Result<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut tx = store.db.begin_write()?;
            tx.set_durability(durability)?;
            let out = op(&store, &tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await?
    }

    /// One durable (empty) commit [`FLUSH_AFTER`] from now puts every
    /// commit before it on disk; one is scheduled at a time.
    fn schedule_flush(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.flush_due.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(FLUSH_AFTER).await;
            let Some(store) = store.upgrade() else {
                return; // closing the file persisted everything
            };
            store.flush_due.store(false, Ordering::Release);
            if let Err(e) = store.write(|_, _| Ok(())).await {
                tracing::warn!(error = %e, "cannot flush the durable store; acknowledgements since the last flush are redone after a crash");
            }
        });
    }

    /// Whether this publish also sweeps expired dedup ids and messages
    /// (one in [`SWEEP_EVERY`]).
    pub(super) fn sweep_due(&self) -> bool {
        self.publishes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
    }
}

pub(super) fn matches(pattern: &str, subject: &str) -> bool {
    Pattern::parse(pattern).is_ok_and(|p| p.matches(subject))
}
