//! The body bus: how cells and hosts exchange envelopes.
//!
//! [`BodyBus`] has NATS semantics — subjects with `*` and `>` wildcards,
//! queue groups, request/reply with "no responders" — and carries the same
//! bytes and headers NATS would. [`local::LocalBus`] is the in-process
//! implementation used when no NATS URL is given; both pass one conformance
//! suite (`host/tests/bus_conformance.rs`).

pub mod local;
pub mod nats;
pub mod subject;

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::envelope::BusError;

/// Transport headers (NATS headers on the wire). Few and small: a vector.
pub type Headers = Vec<(String, String)>;

/// One message on the bus.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    /// Where a reply goes, for requests.
    pub reply: Option<String>,
    pub headers: Headers,
    pub payload: Bytes,
}

impl Message {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            reply: None,
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A stream of messages for one subscription; dropping it unsubscribes.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Message> + Send>>,
}

impl Subscription {
    pub fn new(stream: impl Stream<Item = Message> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }

    /// The next message, or `None` once the bus closed the subscription.
    pub async fn next(&mut self) -> Option<Message> {
        futures_util::StreamExt::next(self).await
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A cell as the bus serves it: on `subject`, in the queue group of the
/// same name, described by `metadata` (id, version, schema ids) to
/// discovery tools, with `stats` adding CBS's own counters.
pub struct Endpoint {
    pub subject: String,
    pub metadata: HashMap<String, String>,
    pub stats: nats::StatsFn,
}

/// The bus every runtime and host talks through.
#[async_trait]
pub trait BodyBus: Send + Sync + 'static {
    /// Fire-and-forget. Succeeds with no subscriber, as NATS does.
    async fn publish(&self, message: Message) -> Result<(), BusError>;

    /// Sends `message` and waits for one reply. Fails at once with
    /// `not_found` when nothing subscribes to the subject ("no responders"),
    /// and with `timeout` when no reply comes in time.
    async fn request(&self, message: Message, timeout: Duration) -> Result<Message, BusError>;

    /// Subscribes to a subject (wildcards allowed). Within one queue group
    /// each message goes to exactly one member.
    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError>;

    /// Serves a cell's endpoint: a queue subscription on its subject (NATS
    /// also registers it for discovery). Reply with [`BodyBus::reply`].
    async fn serve(&self, endpoint: Endpoint) -> Result<Subscription, BusError> {
        self.subscribe(&endpoint.subject, Some(&endpoint.subject))
            .await
    }

    /// Publishes a reply to `to`; the default is a plain publish.
    async fn reply(&self, to: &str, headers: Headers, payload: Bytes) -> Result<(), BusError> {
        self.publish(Message::new(to, payload).with_headers(headers))
            .await
    }

    /// Waits until everything published so far has reached the server (a
    /// no-op in process).
    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Times the connection was re-established (0 in process).
    fn reconnects(&self) -> u64 {
        0
    }

    /// Whether the bus can carry messages now.
    fn is_connected(&self) -> bool {
        true
    }

    /// Short name for logs: `local` or `nats`.
    fn kind(&self) -> &'static str;
}
