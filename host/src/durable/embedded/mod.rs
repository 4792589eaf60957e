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

//!
//! Here the `DurableLog`, `Consumer` and `Settler` of the store; the redb
//! file and its transactions are `store`, what the operations do to its
//! tables `streams`.

mod store;
mod streams;

pub use store::FLUSH_AFTER;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::log::Settler;
use super::{
    dlq_subject, Consumer, ConsumerSpec, DeadLetter, Deliveries, Delivery, DurableLog, Lettered,
    Published, Settle, StreamSpec,
};
use crate::envelope::{BusError, Envelope};
use store::Store;
use streams::Taken;

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
                store.open_consumer(tx, &stream, &consumer)?;
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
        let sweep = store.sweep_due();
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
            BusError::unavailable(
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
            .write(move |_, tx| Store::dead_letter(tx, &subject, &id, &bytes))
            .await?;
        Ok(Lettered::Whole)
    }

    async fn dead_letters(&self, cell: &str) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
        let store = self.store().await?.clone();
        let subject = dlq_subject(cell);
        tokio::task::spawn_blocking(move || store.dead_letters(&subject)).await?
    }

    /// In one transaction: the message back in the stream that takes its
    /// subject, and the letter gone.
    async fn replay(&self, cell: &str, seq: u64) -> anyhow::Result<DeadLetter> {
        let store = self.store().await?.clone();
        let sweep = store.sweep_due();
        let cell = cell.to_owned();
        let letter = store
            .write(move |_, tx| Store::replay_dead_letter(tx, &cell, seq, sweep))
            .await?;
        store.changed.notify_waiters();
        Ok(letter)
    }

    fn reaches_core_subscribers(&self) -> bool {
        false
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::unavailable(format!("the durable store cannot be reached: {e:#}"))
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
