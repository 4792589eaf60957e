//! The body bus: how cells and hosts exchange envelopes.
//!
//! [`BodyBus`] has NATS semantics — subjects with `*` and `>` wildcards,
//! queue groups, request/reply with "no responders" — and carries the same
//! bytes and headers NATS would. [`local::LocalBus`] is the in-process
//! implementation used when no NATS URL is given; both pass one conformance
//! suite (`tests/integration/bus_conformance.rs`).

pub(crate) mod kv;
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

use crate::error::{BusError, ErrorCode};

/// Where requesters wait for replies: NATS clients' default inbox prefix.
pub const INBOX_PREFIX: &str = "_INBOX.";
/// The reply subjects a NATS server makes for a request that crossed
/// accounts through a service import (a tenant calling another's cell).
pub const IMPORT_REPLY_PREFIX: &str = "_R_.";

/// Whether `subject` is a request's inbox (the only place a host replies):
/// a client's `_INBOX.…`, or the `_R_.…` the server maps back to the
/// importing account. Never a `$`-subject or any other.
pub fn is_inbox(subject: &str) -> bool {
    [INBOX_PREFIX, IMPORT_REPLY_PREFIX]
        .iter()
        .any(|p| subject.len() > p.len() && subject.starts_with(p))
        && subject::check(subject, false).is_ok()
}

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

/// Where a subscription's messages come from.
#[async_trait]
pub trait Source: Stream<Item = Message> + Send + Unpin {
    /// Stops new messages at the bus; the ones already delivered are still
    /// yielded, then the stream ends.
    async fn unsubscribe(&mut self);
}

/// A stream of messages for one subscription; dropping it unsubscribes (and
/// drops what was delivered but not taken: [`Subscription::unsubscribe`]
/// first to drain).
pub struct Subscription {
    inner: Box<dyn Source>,
}

impl Subscription {
    pub fn new(source: impl Source + 'static) -> Self {
        Self {
            inner: Box::new(source),
        }
    }

    /// The next message, or `None` once the subscription ended.
    pub async fn next(&mut self) -> Option<Message> {
        futures_util::StreamExt::next(self).await
    }

    /// Stops new messages; [`Subscription::next`] then yields those already
    /// delivered and ends.
    pub async fn unsubscribe(&mut self) {
        self.inner.unsubscribe().await;
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        Pin::new(&mut *self.inner).poll_next(cx)
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

    /// The largest message the bus carries, in bytes (NATS `max_payload`);
    /// `None` in process.
    fn max_payload(&self) -> Option<usize> {
        None
    }

    /// JetStream, for durable cells; `None` on a bus without it (in
    /// process).
    fn jetstream(&self) -> Option<async_nats::jetstream::Context> {
        None
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

/// Shared wording of the two request failures every bus reports.
/// Nothing subscribes to `subject` (NATS "no responders").
pub fn no_responders(subject: &str) -> BusError {
    BusError::new(
        ErrorCode::NotFound,
        format!("nothing serves {subject}: no cell or host is subscribed to it"),
    )
}

/// No reply from `subject` within `timeout`.
pub fn request_timeout(subject: &str, timeout: Duration) -> BusError {
    BusError::new(
        ErrorCode::Timeout,
        format!("no reply from {subject} within {} ms", timeout.as_millis()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inboxes_take_replies() {
        for ok in ["_INBOX.abc", "_INBOX.abc.def", "_R_.Kx9.pQ2"] {
            assert!(is_inbox(ok), "{ok}");
        }
        for refused in [
            "$KV.cbs-desired.x",
            "$JS.API.STREAM.PURGE.KV_cbs-desired",
            "cbs.logic.greet",
            "_INBOX.",
            "_R_.",
            "_R_.>",
            "_INBOX.a b",
            "_INBOX.*",
            "x._INBOX.a",
        ] {
            assert!(!is_inbox(refused), "{refused}");
        }
    }
}
