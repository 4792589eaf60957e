//! Durable streams of the in-process bus, in one redb file
//! (`<data>/durable.redb`), with JetStream's semantics where a single host
//! can have them: streams that take subjects and deduplicate by message id,
//! work-queue, interest and limits retention, durable consumers with
//! redelivery after `ack_wait`, retry delays, `max_deliver`, and dead
//! letters on `cbs-dlq.<cell>`.
//!
//! What is stored survives a restart: messages, dedup ids, each consumer's
//! pending messages with their delivery counts and retry times. What a host
//! held when it stopped is delivered again (its in-flight table is memory
//! only), as JetStream does after `ack_wait`.
//!
//! A publish (and a dead letter) is on disk when it returns. Takes and
//! settlements are committed without waiting for the disk and made durable
//! together at most [`FLUSH_AFTER`] later (group commit): one fsync per
//! message was most of what a durable cell cost. A host that dies loses at
//! most that window of acknowledgements and delivery counts, so those
//! messages are delivered again: at least once, never lost (ADR 13).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::{Notify, OnceCell};

use super::log::{Keep, Settler};
use super::{
    dlq_subject, Consumer, ConsumerSpec, DeadLetter, Deliveries, Delivery, DurableLog, Lettered,
    Published, Settle, StreamSpec, DLQ_STREAM,
};
use crate::bus::subject::Pattern;
use crate::envelope::{BusError, Envelope, ErrorCode};

/// Stream name → its spec (JSON).
const STREAMS: TableDefinition<&str, &str> = TableDefinition::new("streams");
/// Stream name → last sequence given.
const LAST_SEQ: TableDefinition<&str, u64> = TableDefinition::new("last_seq");
/// (stream, seq) → payload.
const PAYLOADS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("payloads");
/// (stream, seq) → (subject, stored at, ms since the epoch).
const META: TableDefinition<(&str, u64), (&str, u64)> = TableDefinition::new("meta");
/// (stream, message id) → (seq, stored at).
const DEDUP: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("dedup");
/// (stream, consumer) → its spec (JSON).
const CONSUMERS: TableDefinition<(&str, &str), &str> = TableDefinition::new("consumers");
/// (stream, consumer, seq) → (deliveries so far, not before, ms since the
/// epoch): what the consumer has yet to settle.
const PENDING: TableDefinition<(&str, &str, u64), (u64, u64)> = TableDefinition::new("pending");

/// The delivery count of a message given up but kept (a dead letter
/// points at it): above any `max_deliver`, so never delivered again.
const KEPT: u64 = u64::MAX;

/// Dedup ids are swept every this many publishes.
const SWEEP_EVERY: u64 = 256;

/// Deliveries not yet settled, by (stream, consumer): seq → ack deadline.
type InFlight = HashMap<(String, String), HashMap<u64, Instant>>;

/// A consumer's waiting messages are counted in full at most this often
/// (the lag its deliveries report); between counts, a take reads only as
/// far as its batch, not the whole backlog.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// Takes and settlements reach the disk at most this long after they
/// were committed.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// Durable streams in a data folder; the file is opened on first use.
pub struct EmbeddedLog {
    path: PathBuf,
    store: OnceCell<Arc<Store>>,
}

impl EmbeddedLog {
    /// Streams in `data_dir/durable.redb`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("durable.redb"),
            store: OnceCell::new(),
        }
    }

    async fn store(&self) -> anyhow::Result<&Arc<Store>> {
        self.store
            .get_or_try_init(|| async {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || Store::open(&path)).await?
            })
            .await
    }
}

struct Store {
    db: Database,
    /// Wakes fetches when a message comes or a delivery is settled.
    changed: Notify,
    /// Deliveries not yet settled: (stream, consumer) → seq → ack deadline.
    in_flight: Mutex<InFlight>,
    /// Each consumer's last full count of its waiting messages, and when:
    /// between counts, a take stops once its batch is full.
    counted: Mutex<HashMap<(String, String), (Instant, u64)>>,
    publishes: std::sync::atomic::AtomicU64,
    /// Whether a flush is scheduled for commits not yet on disk.
    flush_due: std::sync::atomic::AtomicBool,
    /// Subjects the streams take, so core publishes elsewhere skip the file.
    subjects: std::sync::RwLock<Vec<String>>,
}

impl Store {
    fn open(path: &Path) -> anyhow::Result<Arc<Self>> {
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
    fn takes(&self, subject: &str) -> bool {
        let subjects = self.subjects.read().unwrap_or_else(|e| e.into_inner());
        subjects.iter().any(|p| matches(p, subject))
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a consumer counted its waiting messages in full within
    /// [`COUNT_EVERY`].
    fn counted_lately(&self, key: &(String, String), now: Instant) -> bool {
        let counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        counted
            .get(key)
            .is_some_and(|(at, _)| now.duration_since(*at) < COUNT_EVERY)
    }

    /// Runs `op` in one write transaction on a blocking thread; it is on
    /// disk when this returns.
    async fn write<T, F>(self: &Arc<Self>, op: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Self, &WriteTransaction) -> anyhow::Result<T> + Send + 'static,
    {
        self.write_with(Durability::Immediate, op).await
    }

    /// As [`Store::write`], but on disk only by the next flush, at most
    /// [`FLUSH_AFTER`] later: for what a crash may lose because it is
    /// redone (takes and settlements: those messages come again).
    async fn write_soon<T, F>(self: &Arc<Self>, op: F) -> anyhow::Result<T>
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

    fn stream_taking(tx: &WriteTransaction, subject: &str) -> anyhow::Result<Option<StreamSpec>> {
        let streams = tx.open_table(STREAMS)?;
        for entry in streams.iter()? {
            let (_, spec) = entry?;
            let spec: StreamSpec = serde_json::from_str(spec.value())?;
            if spec.subjects.iter().any(|p| matches(p, subject)) {
                return Ok(Some(spec));
            }
        }
        Ok(None)
    }

    fn consumers_of(tx: &WriteTransaction, stream: &str) -> anyhow::Result<Vec<ConsumerSpec>> {
        let consumers = tx.open_table(CONSUMERS)?;
        let mut out = Vec::new();
        for entry in consumers.range((stream, "")..)? {
            let (key, spec) = entry?;
            if key.value().0 != stream {
                break;
            }
            out.push(serde_json::from_str(spec.value())?);
        }
        Ok(out)
    }

    /// Stores a message in `stream` (once per id within the dedup window)
    /// and makes it pending for every consumer whose filter takes it.
    fn append(
        tx: &WriteTransaction,
        stream: &StreamSpec,
        (subject, msg_id, payload): (&str, &str, &[u8]),
        sweep: bool,
    ) -> anyhow::Result<Published> {
        let now = now_ms();
        let window = stream.dedup_window.as_millis() as u64;
        let name = stream.name.as_str();
        let seen = tx
            .open_table(DEDUP)?
            .get((name, msg_id))?
            .map(|v| v.value());
        if let Some((seq, at)) = seen {
            if now.saturating_sub(at) < window {
                return Ok(Published {
                    seq,
                    duplicate: true,
                });
            }
        }
        let seq = {
            let mut last = tx.open_table(LAST_SEQ)?;
            let seq = last.get(name)?.map_or(0, |v| v.value()) + 1;
            last.insert(name, seq)?;
            seq
        };
        tx.open_table(DEDUP)?.insert((name, msg_id), (seq, now))?;
        let takers: Vec<ConsumerSpec> = Self::consumers_of(tx, name)?
            .into_iter()
            .filter(|c| c.filter.as_deref().is_none_or(|f| matches(f, subject)))
            .collect();
        // An interest stream keeps nothing nobody takes.
        if stream.retention == Keep::Interest && takers.is_empty() {
            return Ok(Published {
                seq,
                duplicate: false,
            });
        }
        tx.open_table(PAYLOADS)?.insert((name, seq), payload)?;
        tx.open_table(META)?.insert((name, seq), (subject, now))?;
        let mut pending = tx.open_table(PENDING)?;
        for consumer in &takers {
            pending.insert((name, consumer.name.as_str(), seq), (0, 0))?;
        }
        drop(pending);
        if sweep {
            Self::sweep(tx, stream, now)?;
        }
        Ok(Published {
            seq,
            duplicate: false,
        })
    }

    /// Forgets dedup ids past the window, and messages past `max_age`.
    fn sweep(tx: &WriteTransaction, stream: &StreamSpec, now: u64) -> anyhow::Result<()> {
        let name = stream.name.as_str();
        let window = stream.dedup_window.as_millis() as u64;
        let mut dedup = tx.open_table(DEDUP)?;
        let old: Vec<String> = dedup
            .range((name, "")..)?
            .map_while(|e| e.ok())
            .take_while(|(k, _)| k.value().0 == name)
            .filter(|(_, v)| now.saturating_sub(v.value().1) >= window)
            .map(|(k, _)| k.value().1.to_owned())
            .collect();
        for id in &old {
            dedup.remove((name, id.as_str()))?;
        }
        if stream.max_age.is_zero() {
            return Ok(());
        }
        let max_age = stream.max_age.as_millis() as u64;
        let expired: Vec<u64> = tx
            .open_table(META)?
            .range((name, 0)..)?
            .map_while(|e| e.ok())
            .take_while(|(k, v)| k.value().0 == name && now.saturating_sub(v.value().1) >= max_age)
            .map(|(k, _)| k.value().1)
            .collect();
        for seq in expired {
            for consumer in Self::consumers_of(tx, name)? {
                tx.open_table(PENDING)?
                    .remove((name, consumer.name.as_str(), seq))?;
            }
            Self::drop_message(tx, name, seq)?;
        }
        Ok(())
    }

    fn drop_message(tx: &WriteTransaction, stream: &str, seq: u64) -> anyhow::Result<()> {
        tx.open_table(PAYLOADS)?.remove((stream, seq))?;
        tx.open_table(META)?.remove((stream, seq))?;
        Ok(())
    }

    /// Up to `max` deliveries that are due now, and when the next one will
    /// be due (a retry time or an ack deadline), if any.
    fn take(
        &self,
        tx: &WriteTransaction,
        stream: &str,
        consumer: &ConsumerSpec,
        max: usize,
    ) -> anyhow::Result<(Vec<Taken>, Option<Duration>)> {
        let (now, wall) = (Instant::now(), now_ms());
        let name = consumer.name.as_str();
        let key = (stream.to_owned(), name.to_owned());
        let lately = self.counted_lately(&key, now);
        let mut due = Vec::new();
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        let mut waiting = 0u64;
        let mut stopped = false;
        {
            let pending = tx.open_table(PENDING)?;
            let in_flight = self.in_flight();
            let held = in_flight.get(&key);
            for entry in pending.range((stream, name, 0)..)? {
                let (key, value) = entry?;
                let (s, c, seq) = key.value();
                if s != stream || c != name {
                    break;
                }
                let (delivered, not_before) = value.value();
                if delivered >= u64::from(consumer.max_deliver) {
                    continue; // as JetStream: held until settled, never sent again
                }
                if let Some(deadline) = held.and_then(|h| h.get(&seq)) {
                    if *deadline > now {
                        soonest(*deadline - now);
                        continue;
                    }
                }
                if not_before > wall {
                    soonest(Duration::from_millis(not_before - wall));
                    continue;
                }
                if due.len() < max {
                    due.push((seq, delivered + 1));
                } else if lately {
                    // The batch is full and the lag was counted lately:
                    // the rest of the backlog need not be read again.
                    stopped = true;
                    break;
                } else {
                    waiting += 1;
                }
            }
        }
        let waiting = {
            let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
            match counted.get_mut(&key).filter(|_| stopped) {
                // Counted lately: less what this take hands out (what was
                // published since is counted by the next full count).
                Some((_, last)) => {
                    *last = last.saturating_sub(due.len() as u64);
                    *last
                }
                None => {
                    counted.insert(key.clone(), (now, waiting));
                    waiting
                }
            }
        };
        let mut taken = Vec::with_capacity(due.len());
        let mut pending = tx.open_table(PENDING)?;
        let payloads = tx.open_table(PAYLOADS)?;
        let meta = tx.open_table(META)?;
        let mut in_flight = self.in_flight();
        let held = in_flight.entry(key).or_default();
        for (i, (seq, delivered)) in due.iter().copied().enumerate() {
            let (Some(payload), Some(info)) =
                (payloads.get((stream, seq))?, meta.get((stream, seq))?)
            else {
                pending.remove((stream, name, seq))?; // its message is gone
                continue;
            };
            pending.insert((stream, name, seq), (delivered, 0))?;
            held.insert(seq, now + consumer.ack_wait);
            taken.push(Taken {
                seq,
                delivered,
                pending: waiting + (due.len() - i - 1) as u64,
                subject: info.value().0.to_owned(),
                payload: Bytes::copy_from_slice(payload.value()),
            });
        }
        Ok((taken, next))
    }

    fn settle(
        &self,
        tx: &WriteTransaction,
        (stream, consumer, seq): (&str, &str, u64),
        how: Settle,
    ) -> anyhow::Result<()> {
        if let Some(held) = self
            .in_flight()
            .get_mut(&(stream.to_owned(), consumer.to_owned()))
        {
            held.remove(&seq);
        }
        let mut pending = tx.open_table(PENDING)?;
        match how {
            Settle::Retry(delay) => {
                let delivered = pending.get((stream, consumer, seq))?.map(|v| v.value().0);
                if let Some(delivered) = delivered {
                    let at = now_ms() + delay.as_millis() as u64;
                    pending.insert((stream, consumer, seq), (delivered, at))?;
                }
                return Ok(());
            }
            Settle::Keep { .. } => {
                // Stored, and pending as if past max_deliver: never taken.
                if pending.get((stream, consumer, seq))?.is_some() {
                    pending.insert((stream, consumer, seq), (KEPT, 0))?;
                }
                return Ok(());
            }
            Settle::Ack | Settle::Term => {}
        }
        pending.remove((stream, consumer, seq))?;
        drop(pending);
        let spec: Option<StreamSpec> = match tx.open_table(STREAMS)?.get(stream)? {
            Some(v) => Some(serde_json::from_str(v.value())?),
            None => None,
        };
        if spec.is_some_and(|s| s.retention == Keep::Limits) {
            return Ok(());
        }
        // Work queue and interest: gone once every consumer settled it.
        let pending = tx.open_table(PENDING)?;
        for other in Self::consumers_of(tx, stream)? {
            if pending.get((stream, other.name.as_str(), seq))?.is_some() {
                return Ok(());
            }
        }
        drop(pending);
        Self::drop_message(tx, stream, seq)
    }
}

struct Taken {
    seq: u64,
    delivered: u64,
    pending: u64,
    subject: String,
    payload: Bytes,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn matches(pattern: &str, subject: &str) -> bool {
    Pattern::parse(pattern).is_ok_and(|p| p.matches(subject))
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::new(
        ErrorCode::Unavailable,
        format!("the durable store cannot be reached: {e:#}"),
    )
}

#[async_trait]
impl DurableLog for EmbeddedLog {
    async fn open(
        &self,
        stream: &StreamSpec,
        consumer: &ConsumerSpec,
    ) -> anyhow::Result<Box<dyn Consumer>> {
        let store = self.store().await?.clone();
        let (stream, consumer) = (stream.clone(), consumer.clone());
        let opened = stream.name.clone();
        let spec = store
            .write(move |store, tx| {
                let known = tx.open_table(STREAMS)?.get(stream.name.as_str())?.is_some();
                if !known {
                    refuse_overlap(tx, &stream)?;
                    tx.open_table(STREAMS)?.insert(
                        stream.name.as_str(),
                        serde_json::to_string(&stream)?.as_str(),
                    )?;
                    let mut subjects = store.subjects.write().unwrap_or_else(|e| e.into_inner());
                    subjects.extend(stream.subjects.iter().cloned());
                }
                let key = (stream.name.as_str(), consumer.name.as_str());
                let mut consumers = tx.open_table(CONSUMERS)?;
                if consumers.get(key)?.is_none() {
                    consumers.insert(key, serde_json::to_string(&consumer)?.as_str())?;
                    drop(consumers);
                    if !consumer.only_new {
                        backfill(tx, &stream.name, &consumer)?;
                    }
                }
                Ok(consumer)
            })
            .await?;
        Ok(Box::new(EmbeddedConsumer {
            store,
            stream: opened,
            spec,
        }))
    }

    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<Published, BusError> {
        let store = self.store().await.map_err(unavailable)?.clone();
        let sweep = store
            .publishes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY);
        let (subject, msg_id) = (subject.to_owned(), msg_id.to_owned());
        let published = store
            .write(move |_, tx| {
                let Some(stream) = Store::stream_taking(tx, &subject)? else {
                    return Ok(None);
                };
                Store::append(tx, &stream, (&subject, &msg_id, &payload), sweep).map(Some)
            })
            .await
            .map_err(unavailable)?;
        store.changed.notify_waiters();
        published.ok_or_else(|| {
            BusError::new(
                ErrorCode::Unavailable,
                "no durable stream takes this subject, so it cannot be stored: \
                 deploy a cell that subscribes to it durably, or serves it with [durable]",
            )
        })
    }

    async fn capture(&self, subject: &str, envelope: &Envelope) -> Result<(), BusError> {
        match self.store.get() {
            Some(store) if store.takes(subject) => {
                let bytes = envelope.to_vec().into();
                self.publish(subject, &envelope.id, bytes).await.map(drop)
            }
            _ => Ok(()),
        }
    }

    /// The file has no size limit: a letter is always kept whole.
    async fn dead_letter(&self, letter: &DeadLetter) -> anyhow::Result<Lettered> {
        let store = self.store().await?.clone();
        let bytes = serde_json::to_vec(letter)?;
        let subject = dlq_subject(&letter.cell);
        let id = letter.id();
        store
            .write(move |_, tx| {
                let dlq = dlq_stream();
                let mut streams = tx.open_table(STREAMS)?;
                if streams.get(DLQ_STREAM)?.is_none() {
                    streams.insert(DLQ_STREAM, serde_json::to_string(&dlq)?.as_str())?;
                }
                drop(streams);
                Store::append(tx, &dlq, (&subject, &id, &bytes), false).map(drop)
            })
            .await?;
        Ok(Lettered::Whole)
    }

    async fn dead_letters(&self, cell: &str) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
        let store = self.store().await?.clone();
        let subject = dlq_subject(cell);
        tokio::task::spawn_blocking(move || {
            let tx = store.db.begin_read()?;
            let (meta, payloads) = match (tx.open_table(META), tx.open_table(PAYLOADS)) {
                (Ok(m), Ok(p)) => (m, p),
                _ => return Ok(Vec::new()),
            };
            let mut out = Vec::new();
            for entry in meta.range((DLQ_STREAM, 0)..)? {
                let (key, value) = entry?;
                let (stream, seq) = key.value();
                if stream != DLQ_STREAM {
                    break;
                }
                if value.value().0 != subject {
                    continue;
                }
                if let Some(bytes) = payloads.get((DLQ_STREAM, seq))? {
                    out.push((seq, serde_json::from_slice(bytes.value())?));
                }
            }
            Ok(out)
        })
        .await?
    }

    fn reaches_core_subscribers(&self) -> bool {
        false
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

fn dlq_stream() -> StreamSpec {
    StreamSpec {
        name: DLQ_STREAM.to_owned(),
        subjects: vec!["cbs-dlq.>".to_owned()],
        retention: Keep::Limits,
        dedup_window: Duration::from_secs(120),
        max_age: Duration::ZERO,
    }
}

/// As JetStream: a new stream may not take a subject another one takes.
fn refuse_overlap(tx: &WriteTransaction, new: &StreamSpec) -> anyhow::Result<()> {
    let streams = tx.open_table(STREAMS)?;
    for entry in streams.iter()? {
        let existing: StreamSpec = serde_json::from_str(entry?.1.value())?;
        for a in &new.subjects {
            for b in &existing.subjects {
                let (pa, pb) = (Pattern::parse(a)?, Pattern::parse(b)?);
                if pa.overlaps(&pb) {
                    anyhow::bail!(
                        "stream {} would take {a}, which stream {} takes ({b}): subjects of streams may not overlap",
                        new.name,
                        existing.name
                    );
                }
            }
        }
    }
    Ok(())
}

/// A new consumer that takes what the stream holds: every stored message
/// its filter takes becomes pending.
fn backfill(tx: &WriteTransaction, stream: &str, consumer: &ConsumerSpec) -> anyhow::Result<()> {
    let seqs: Vec<u64> = tx
        .open_table(META)?
        .range((stream, 0)..)?
        .map_while(|e| e.ok())
        .take_while(|(k, _)| k.value().0 == stream)
        .filter(|(_, v)| {
            consumer
                .filter
                .as_deref()
                .is_none_or(|f| matches(f, v.value().0))
        })
        .map(|(k, _)| k.value().1)
        .collect();
    let mut pending = tx.open_table(PENDING)?;
    for seq in seqs {
        pending.insert((stream, consumer.name.as_str(), seq), (0, 0))?;
    }
    Ok(())
}

struct EmbeddedConsumer {
    store: Arc<Store>,
    stream: String,
    spec: ConsumerSpec,
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn fetch(&self, max: usize, wait: Duration) -> anyhow::Result<Deliveries> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before looking, so a publish in between wakes us.
            let changed = self.store.changed.notified();
            let (stream, spec) = (self.stream.clone(), self.spec.clone());
            let (taken, next) = self
                .store
                .write_soon(move |store, tx| store.take(tx, &stream, &spec, max))
                .await?;
            if !taken.is_empty() {
                return Ok(self.deliveries(taken));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Box::pin(futures_util::stream::empty()));
            }
            let nap = next.map_or(left, |n| n.min(left));
            let _ = tokio::time::timeout(nap, changed).await;
        }
    }
}

impl EmbeddedConsumer {
    fn deliveries(&self, taken: Vec<Taken>) -> Deliveries {
        let deliveries: Vec<anyhow::Result<Delivery>> = taken
            .into_iter()
            .map(|t| {
                let settler = Box::new(EmbeddedSettler {
                    store: self.store.clone(),
                    stream: self.stream.clone(),
                    consumer: self.spec.name.clone(),
                    seq: t.seq,
                    ack_wait: self.spec.ack_wait,
                });
                Ok(Delivery::new(
                    t.subject,
                    t.payload,
                    (self.stream.clone(), t.seq),
                    (t.delivered, t.pending),
                    settler,
                ))
            })
            .collect();
        Box::pin(futures_util::stream::iter(deliveries))
    }
}

struct EmbeddedSettler {
    store: Arc<Store>,
    stream: String,
    consumer: String,
    seq: u64,
    ack_wait: Duration,
}

#[async_trait]
impl Settler for EmbeddedSettler {
    async fn settle(self: Box<Self>, how: Settle) -> anyhow::Result<()> {
        let Self {
            store,
            stream,
            consumer,
            seq,
            ..
        } = *self;
        store
            .write_soon(move |store, tx| store.settle(tx, (&stream, &consumer, seq), how))
            .await?;
        store.changed.notify_waiters();
        Ok(())
    }

    async fn in_progress(&self) -> anyhow::Result<()> {
        let key = (self.stream.clone(), self.consumer.clone());
        let mut in_flight = self.store.in_flight();
        if let Some(deadline) = in_flight.get_mut(&key).and_then(|h| h.get_mut(&self.seq)) {
            *deadline = Instant::now() + self.ack_wait;
        }
        Ok(())
    }
}
