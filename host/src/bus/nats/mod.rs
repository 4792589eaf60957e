//! The NATS bus: many hosts on many machines serve as one.
//!
//! Cells are served as endpoints of one NATS "micro" service per host (name
//! `cbs`), so `$SRV.PING|INFO|STATS` — and any NATS tool that speaks them —
//! list hosts, cells, versions and counts. Requests to a subject nobody
//! serves fail at once with `not_found` (NATS "no responders"). How a host
//! connects is [`options`].

mod options;

pub use options::NatsOptions;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::service::{self, ServiceExt};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::{
    no_responders, request_timeout, subject, BodyBus, Endpoint, Headers, Message, Source,
    Subscription,
};
use crate::error::BusError;

/// Name of the micro service every host registers.
pub const SERVICE_NAME: &str = "cbs";

/// The service metadata key of when the host started (connected to NATS),
/// ms since the Unix epoch.
pub const STARTED_MS: &str = "started_ms";

/// The key, in each served endpoint's `$SRV.STATS` data, of what the host
/// says about itself now ([`HostFacts`]): the same on every endpoint of a
/// host, so a reader takes it from any.
pub const HOST_FACTS: &str = "host";

/// A host's facts of the moment, in its stats replies.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostFacts {
    /// The NATS server it is connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_server: Option<ConnectedServer>,
    /// Its machine's 1-minute load average, where readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_avg_1m: Option<f64>,
}

/// The NATS server a host is connected to, from the server's own `INFO`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectedServer {
    pub name: String,
    pub id: String,
    pub version: String,
}

impl HostFacts {
    /// The facts of the host on `client`, now.
    fn now(client: &async_nats::Client) -> Self {
        let info = client.server_info();
        let connected = !info.server_id.is_empty();
        Self {
            nats_server: connected.then_some(ConnectedServer {
                name: info.server_name,
                id: info.server_id,
                version: info.version,
            }),
            load_avg_1m: crate::machine::load_average_1m(),
        }
    }
}

/// The [`BodyBus`] on a NATS connection.
pub struct NatsBus {
    client: async_nats::Client,
    host_id: String,
    /// Added to the micro service's metadata (next to `host`).
    metadata: HashMap<String, String>,
    service: OnceCell<service::Service>,
    /// Requests of served endpoints awaiting their reply, by reply subject:
    /// replying through the request keeps the micro service's stats right.
    pending: Arc<Mutex<HashMap<String, service::Request>>>,
    /// Extra stats per endpoint name (CBS's own error counts by code).
    extra_stats: Arc<Mutex<HashMap<String, StatsFn>>>,
    reconnects: Arc<AtomicU64>,
    /// When it connected, ms since the Unix epoch (the service's
    /// [`STARTED_MS`]).
    started_ms: u64,
}

/// Produces the `data` of an endpoint's `$SRV.STATS` entry.
pub type StatsFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl NatsBus {
    /// Connects, failing fast with a message that says what to fix; once
    /// connected, reconnects forever with backoff, logging each change.
    pub async fn connect(options: &NatsOptions) -> Result<Self, BusError> {
        let reconnects = Arc::new(AtomicU64::new(0));
        let client = options::connect(options, reconnects.clone()).await?;
        Ok(Self {
            client,
            host_id: options.name.clone(),
            metadata: HashMap::new(),
            service: OnceCell::new(),
            pending: Arc::default(),
            extra_stats: Arc::default(),
            reconnects,
            started_ms: crate::unix_time::now_ms(),
        })
    }

    /// Adds `key = value` to the service metadata hosts announce; set it
    /// before the first cell is served (or [`NatsBus::register`]).
    pub fn with_metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Registers the host's micro service now, so discovery lists the host
    /// even before it serves a cell.
    pub async fn register(&self) -> Result<(), BusError> {
        self.service().await.map(|_| ())
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Times the connection was re-established after a loss.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Stops taking requests and flushes what was published.
    pub async fn drain(&self) -> Result<(), BusError> {
        self.client.drain().await.map_err(unavailable)
    }

    async fn service(&self) -> Result<&service::Service, BusError> {
        self.service
            .get_or_try_init(|| async {
                let extra = self.extra_stats.clone();
                let client = self.client.clone();
                let mut metadata = self.metadata.clone();
                metadata.insert("host".to_owned(), self.host_id.clone());
                metadata.insert(STARTED_MS.to_owned(), self.started_ms.to_string());
                self.client
                    .service_builder()
                    .description("CBS host: cells served as endpoints")
                    .metadata(metadata)
                    .stats_handler(move |name, _| {
                        let f = extra.lock().unwrap().get(&name).cloned();
                        let mut data = f.map_or(serde_json::Value::Null, |f| f());
                        // A withdrawn endpoint's data stays null.
                        if let Some(fields) = data.as_object_mut() {
                            let facts = HostFacts::now(&client);
                            fields.insert(HOST_FACTS.to_owned(), serde_json::json!(facts));
                        }
                        data
                    })
                    .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
                    .await
                    .map_err(|e| {
                        BusError::unavailable(format!("cannot register the NATS service: {e}"))
                    })
            })
            .await
    }
}

/// A NATS operation that failed: the bus is down (or going).
pub(crate) fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::unavailable(format!("NATS: {e}"))
}

/// NATS headers from ours. A name or value NATS cannot carry (a CR or LF
/// would split the header block) is left out with a warning: async-nats
/// panics on them, and they can come from outside (a cell's error message).
fn to_header_map(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        match (k.parse::<HeaderName>(), v.parse::<HeaderValue>()) {
            (Ok(name), Ok(value)) => map.insert(name, value),
            _ => tracing::warn!(header = %k.escape_debug(), "left out a header NATS cannot carry"),
        }
    }
    map
}

fn from_nats(message: async_nats::Message) -> Message {
    let headers = message
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Message {
        subject: message.subject.to_string(),
        reply: message.reply.map(|r| r.to_string()),
        headers,
        payload: message.payload,
    }
}

/// A plain NATS subscription.
struct Subscribed(async_nats::Subscriber);

impl futures_util::Stream for Subscribed {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Message>> {
        self.0.poll_next_unpin(cx).map(|m| m.map(from_nats))
    }
}

#[async_trait]
impl Source for Subscribed {
    async fn unsubscribe(&mut self) {
        // Drain, not unsubscribe: the stream still yields what this client
        // received. (async-nats 0.51 ends the subscription on its next poll,
        // without waiting for the server: messages still on the wire are
        // dropped.)
        if let Err(e) = self.0.drain().await {
            tracing::debug!(error = %e, "cannot unsubscribe");
        }
    }
}

/// A served endpoint's requests. Each request with an inbox to reply to is
/// kept until its reply (replying through it keeps the micro stats right).
struct Served {
    requests: service::endpoint::Endpoint,
    pending: Arc<Mutex<HashMap<String, service::Request>>>,
}

impl futures_util::Stream for Served {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Message>> {
        self.requests.poll_next_unpin(cx).map(|request| {
            let request = request?;
            let message = from_nats(request.message.clone());
            // Only inboxes get replies (see body's dispatch): keep nothing
            // for a reply that will never be sent.
            if let Some(reply) = message.reply.as_ref().filter(|r| super::is_inbox(r)) {
                self.pending.lock().unwrap().insert(reply.clone(), request);
            }
            Some(message)
        })
    }
}

#[async_trait]
impl Source for Served {
    async fn unsubscribe(&mut self) {
        // async-nats 0.51 offers no drain for a service endpoint: `stop`
        // closes the stream at once, so requests still on the wire to this
        // host at that instant are lost (their callers time out). Those
        // already received are yielded.
        if let Err(e) = self.requests.stop().await {
            tracing::debug!(error = %e, "cannot stop an endpoint");
        }
    }
}

#[async_trait]
impl BodyBus for NatsBus {
    async fn publish(&self, message: Message) -> Result<(), BusError> {
        subject::check(&message.subject, false)?;
        let headers = to_header_map(&message.headers);
        let result = match message.reply {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(
                        message.subject,
                        reply,
                        headers,
                        message.payload,
                    )
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(message.subject, headers, message.payload)
                    .await
            }
        };
        result.map_err(unavailable)
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Message, BusError> {
        subject::check(&message.subject, false)?;
        let request = async_nats::Request::new()
            .payload(message.payload)
            .headers(to_header_map(&message.headers))
            .timeout(Some(timeout));
        match self
            .client
            .send_request(message.subject.clone(), request)
            .await
        {
            Ok(reply) => Ok(from_nats(reply)),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    let mut e = no_responders(&message.subject);
                    // Accounts are invisible to a client: say where to look.
                    e.message.push_str(
                        " in this NATS account (a cell of another domain or tenant is reached \
                         only where its account exports it and this one imports it: `cbs accounts`)",
                    );
                    e
                }
                async_nats::RequestErrorKind::TimedOut => {
                    request_timeout(&message.subject, timeout)
                }
                _ => unavailable(e),
            }),
        }
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        super::subject::Pattern::parse(subject)?;
        let subscriber = match queue_group {
            Some(q) => {
                self.client
                    .queue_subscribe(subject.to_owned(), q.to_owned())
                    .await
            }
            None => self.client.subscribe(subject.to_owned()).await,
        }
        .map_err(unavailable)?;
        Ok(Subscription::new(Subscribed(subscriber)))
    }

    async fn serve(&self, endpoint: Endpoint) -> Result<Subscription, BusError> {
        let service = self.service().await?;
        let name = endpoint.subject.replace('.', "-");
        self.extra_stats
            .lock()
            .unwrap()
            .insert(name.clone(), endpoint.stats);
        let requests = service
            .endpoint_builder()
            .name(&name)
            .metadata(endpoint.metadata)
            .queue_group(&endpoint.subject)
            .add(&endpoint.subject)
            .await
            .map_err(unavailable)?;
        Ok(Subscription::new(Served {
            requests,
            pending: self.pending.clone(),
        }))
    }

    async fn reply(&self, to: &str, headers: Headers, payload: Bytes) -> Result<(), BusError> {
        let request = self.pending.lock().unwrap().remove(to);
        match request {
            Some(request) => request
                .respond_with_headers(Ok(payload), to_header_map(&headers))
                .await
                .map_err(unavailable),
            None => {
                self.publish(Message::new(to, payload).with_headers(headers))
                    .await
            }
        }
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(unavailable)
    }

    fn reconnects(&self) -> u64 {
        NatsBus::reconnects(self)
    }

    fn jetstream(&self) -> Option<async_nats::jetstream::Context> {
        Some(async_nats::jetstream::new(self.client.clone()))
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.client.server_info().max_payload)
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}
