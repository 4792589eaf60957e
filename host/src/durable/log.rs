//! What a durable store must do, whichever it is (JetStream, or the
//! embedded file store of the in-process bus): streams that take subjects
//! and deduplicate by message id, durable consumers shared by every host
//! of a cell, deliveries settled by ack, retry after a delay, or term, and
//! dead letters.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{consumer_name, DeadLetter};
use crate::envelope::{BusError, Envelope};
use crate::events::Subscribe;
use crate::manifest::{DurableSpec, Manifest, Retention};

/// A stream: the subjects it takes and what it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: Keep,
    /// A message published again with the same id within this window is
    /// stored once.
    pub dedup_window: Duration,
    /// Messages older than this go (zero: no age limit).
    pub max_age: Duration,
}

/// What a stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Keep {
    /// Until acknowledged (one consumer).
    WorkQueue,
    /// Until every consumer acknowledged it; nothing when none exists.
    Interest,
    /// Everything, up to `max_age`.
    Limits,
}

impl StreamSpec {
    /// The work-queue (or `limits`) stream of a `[durable]` cell.
    pub fn of_cell(manifest: &Manifest, spec: &DurableSpec) -> Self {
        Self {
            name: spec.stream_name(&manifest.id),
            subjects: spec.subjects_of(&manifest.id),
            retention: match spec.retention {
                Retention::WorkQueue => Keep::WorkQueue,
                Retention::Limits => Keep::Limits,
            },
            dedup_window: Duration::from_millis(spec.dedup_window_ms),
            max_age: Duration::from_millis(spec.max_age_ms),
        }
    }

    /// The stream of a durable subscription, when it has to be made: it
    /// takes the subscription's subject and keeps an event until every
    /// subscribing cell took it.
    pub fn of_subscription(subscription: &Subscribe) -> Self {
        Self {
            name: subscription.stream_name(),
            subjects: vec![subscription.subject.clone()],
            retention: Keep::Interest,
            dedup_window: Duration::from_secs(120),
            max_age: Duration::ZERO,
        }
    }
}

/// A durable consumer: shared by every host that opens it by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerSpec {
    pub name: String,
    /// Only messages on subjects matching this (wildcards allowed).
    pub filter: Option<String>,
    /// Only messages stored after the consumer was made (else all the
    /// stream holds).
    pub only_new: bool,
    /// Deliveries of one message at most.
    pub max_deliver: u32,
    /// How long a delivery may stay unsettled before it is delivered again.
    pub ack_wait: Duration,
}

impl ConsumerSpec {
    /// The consumer of a `[durable]` cell's own stream.
    pub fn of_cell(manifest: &Manifest, spec: &DurableSpec) -> Self {
        Self {
            name: consumer_name(&manifest.id),
            filter: None,
            only_new: false,
            max_deliver: spec.max_deliver,
            ack_wait: Duration::from_millis(spec.ack_wait_ms),
        }
    }

    /// The consumer of a cell on a durable subscription; retries follow
    /// the cell's `[durable]` settings, or their defaults.
    pub fn of_subscription(manifest: &Manifest, subscription: &Subscribe) -> Self {
        let spec = manifest.durable.clone().unwrap_or_default();
        Self {
            name: subscription.consumer_name(&manifest.id),
            filter: Some(subscription.subject.clone()),
            only_new: true,
            max_deliver: spec.max_deliver,
            ack_wait: Duration::from_millis(spec.ack_wait_ms),
        }
    }
}

/// A store of durable streams.
#[async_trait]
pub trait DurableLog: Send + Sync {
    /// Makes the stream unless one of that name exists (an existing one is
    /// used as it is), then opens (or makes) the durable consumer.
    async fn open(
        &self,
        stream: &StreamSpec,
        consumer: &ConsumerSpec,
    ) -> anyhow::Result<Box<dyn Consumer>>;

    /// Stores `payload` in the stream that takes `subject`, once per
    /// `msg_id` within the stream's dedup window. `unavailable` when no
    /// stream takes the subject or the store cannot be reached.
    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<Published, BusError>;

    /// A plain (core) publish just went out on `subject`: stores it too
    /// when a stream takes that subject, as a JetStream server does by
    /// itself (the default does nothing).
    async fn capture(&self, _subject: &str, _envelope: &Envelope) -> Result<(), BusError> {
        Ok(())
    }

    /// Keeps a dead letter (for `cbs dlq`), on `cbs-dlq.<cell>`, and says
    /// whether it holds the message; an error when nothing was stored.
    async fn dead_letter(&self, letter: &DeadLetter) -> anyhow::Result<Lettered>;

    /// The dead letters of `cell`, oldest first, with their sequence.
    async fn dead_letters(&self, cell: &str) -> anyhow::Result<Vec<(u64, DeadLetter)>>;

    /// Publishes dead letter `seq` of `cell` again on the subject it was
    /// first published to, then removes it (`cbs dlq replay`).
    async fn replay(&self, cell: &str, seq: u64) -> anyhow::Result<DeadLetter>;

    /// Whether [`DurableLog::publish`] also reaches core subscribers of
    /// the subject (JetStream: the publish is a NATS message), so the
    /// caller need not publish it on the bus as well.
    fn reaches_core_subscribers(&self) -> bool;

    /// Short name for logs: `jetstream` or `embedded`.
    fn kind(&self) -> &'static str;
}

/// How a dead letter was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lettered {
    /// With the message: the original may go.
    Whole,
    /// Without it (too large for the dead-letter stream): the original
    /// must stay where the letter points ([`Settle::Keep`]).
    WithoutBody,
}

/// A stored publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// Already stored within the dedup window: this publish added nothing.
    pub duplicate: bool,
}

/// One host's handle on a durable consumer.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Up to `max` deliveries, yielded as they come; the stream ends after
    /// `max`, or when `wait` passed (earlier when nothing is there).
    async fn fetch(&self, max: usize, wait: Duration) -> anyhow::Result<Deliveries>;
}

/// Deliveries of one fetch.
pub type Deliveries = BoxStream<'static, anyhow::Result<Delivery>>;

/// How a delivery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done: never delivered again.
    Ack,
    /// Deliver again after this delay.
    Retry(Duration),
    /// Give up: never delivered again (after a dead letter is kept).
    Term,
    /// Give up but keep the message stored, delivered no more: a dead
    /// letter without the message points at it. `last`: this was the
    /// consumer's last delivery (`max_deliver`) anyway.
    Keep { last: bool },
}

/// One delivery of a stored message.
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    pub stream: String,
    pub stream_seq: u64,
    /// Deliveries of this message so far, this one included.
    pub delivered: u64,
    /// Messages left for the consumer after this one.
    pub pending: u64,
    settler: Box<dyn Settler>,
}

impl Delivery {
    pub fn new(
        subject: String,
        payload: Bytes,
        (stream, stream_seq): (String, u64),
        (delivered, pending): (u64, u64),
        settler: Box<dyn Settler>,
    ) -> Self {
        Self {
            subject,
            payload,
            stream,
            stream_seq,
            delivered,
            pending,
            settler,
        }
    }

    pub async fn settle(self, how: Settle) -> anyhow::Result<()> {
        self.settler.settle(how).await
    }

    /// Still working on it: not to be delivered again for another
    /// `ack_wait`.
    pub async fn in_progress(&self) -> anyhow::Result<()> {
        self.settler.in_progress().await
    }
}

/// The store's side of settling one delivery.
#[async_trait]
pub trait Settler: Send + Sync {
    async fn settle(self: Box<Self>, how: Settle) -> anyhow::Result<()>;

    /// Holds the delivery for another `ack_wait`.
    async fn in_progress(&self) -> anyhow::Result<()>;
}
