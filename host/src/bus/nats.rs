//! The NATS bus: many hosts on many machines serve as one.
//!
//! Cells are served as endpoints of one NATS "micro" service per host (name
//! `cbs`), so `$SRV.PING|INFO|STATS` — and any NATS tool that speaks them —
//! list hosts, cells, versions and counts. Requests to a subject nobody
//! serves fail at once with `not_found` (NATS "no responders").

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::service::{self, ServiceExt};
use async_nats::{ConnectOptions, HeaderMap, ServerAddr};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::{
    no_responders, request_timeout, subject, BodyBus, Endpoint, Headers, Message, Source,
    Subscription,
};
use crate::backoff::Backoff;
use crate::error::{BusError, ErrorCode};

/// Name of the micro service every host registers.
pub const SERVICE_NAME: &str = "cbs";

/// How to reach and authenticate to NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// One or more server URLs, comma-separated.
    pub urls: String,
    /// Connection name, shown by `nats server report connections`; the host id.
    pub name: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// An nkey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// A `.creds` file (user JWT + nkey seed).
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse a connection without TLS.
    pub tls_required: bool,
}

impl NatsOptions {
    /// Who these options connect as, for the audit trail: the user name,
    /// the nkey's or the `.creds` JWT's public key (with its name), a
    /// token (never its value), or `anonymous`.
    pub fn identity(&self) -> String {
        if let Some(user) = &self.user {
            return format!("user {user}");
        }
        if let Some(seed) = &self.nkey_seed {
            return match nkeys::KeyPair::from_seed(seed) {
                Ok(key) => format!("nkey {}", key.public_key()),
                Err(_) => "nkey (invalid seed)".to_owned(),
            };
        }
        if let Some(creds) = &self.creds {
            return match creds_identity(creds) {
                Some(who) => format!("jwt {who}"),
                None => format!("creds {}", creds.display()),
            };
        }
        if self.token.is_some() {
            return "token".to_owned();
        }
        "anonymous".to_owned()
    }
}

impl NatsOptions {
    /// The nkey seed this connection authenticates with (`--nats-nkey`, or
    /// the seed in the `.creds` file): what the writer signs audit events
    /// with. `None` for password, token and anonymous users.
    pub fn user_seed(&self) -> Option<String> {
        if let Some(seed) = &self.nkey_seed {
            return Some(seed.clone());
        }
        let text = std::fs::read_to_string(self.creds.as_ref()?).ok()?;
        let seed = text
            .lines()
            .skip_while(|l| !l.contains("BEGIN USER NKEY SEED"))
            .nth(1)?
            .trim();
        Some(seed.to_owned()).filter(|s| s.starts_with("SU"))
    }
}

/// `name (public key)` of the user JWT in a `.creds` file.
fn creds_identity(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let jwt = text
        .lines()
        .skip_while(|l| !l.contains("BEGIN NATS USER JWT"))
        .nth(1)?;
    let claims = jwt.trim().split('.').nth(1)?;
    let claims = data_encoding::BASE64URL_NOPAD
        .decode(claims.trim_end_matches('=').as_bytes())
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    let sub = claims["sub"].as_str()?;
    Some(match claims["name"].as_str() {
        Some(name) => format!("{name} ({sub})"),
        None => sub.to_owned(),
    })
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
}

/// Produces the `data` of an endpoint's `$SRV.STATS` entry.
pub type StatsFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl NatsBus {
    /// Connects, failing fast with a message that says what to fix; once
    /// connected, reconnects forever with backoff, logging each change.
    pub async fn connect(options: &NatsOptions) -> Result<Self, BusError> {
        let addrs = parse_urls(&options.urls)?;
        let reconnects = Arc::new(AtomicU64::new(0));
        let connect = connect_options(options, reconnects.clone()).await?;
        let client = connect.connect(addrs).await.map_err(|e| {
            BusError::new(
                ErrorCode::Unavailable,
                format!(
                    "cannot connect to NATS at {}: {}",
                    options.urls,
                    explain(&e.to_string())
                ),
            )
        })?;
        Ok(Self {
            client,
            host_id: options.name.clone(),
            metadata: HashMap::new(),
            service: OnceCell::new(),
            pending: Arc::default(),
            extra_stats: Arc::default(),
            reconnects,
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
                let mut metadata = self.metadata.clone();
                metadata.insert("host".to_owned(), self.host_id.clone());
                self.client
                    .service_builder()
                    .description("CBS host: cells served as endpoints")
                    .metadata(metadata)
                    .stats_handler(move |name, _| {
                        let f = extra.lock().unwrap().get(&name).cloned();
                        f.map_or(serde_json::Value::Null, |f| f())
                    })
                    .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
                    .await
                    .map_err(|e| {
                        BusError::new(
                            ErrorCode::Unavailable,
                            format!("cannot register the NATS service: {e}"),
                        )
                    })
            })
            .await
    }
}

async fn connect_options(
    options: &NatsOptions,
    reconnects: Arc<AtomicU64>,
) -> Result<ConnectOptions, BusError> {
    let mut connect = ConnectOptions::new()
        .name(&options.name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(backoff)
        .event_callback(move |event| {
            let reconnects = reconnects.clone();
            async move { log_event(event, &reconnects) }
        });
    if let (Some(user), Some(password)) = (&options.user, &options.password) {
        connect = connect.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if let Some(seed) = &options.nkey_seed {
        connect = connect.nkey(seed.clone());
    }
    if let Some(creds) = &options.creds {
        connect = connect.credentials_file(creds).await.map_err(|e| {
            BusError::new(
                ErrorCode::InvalidInput,
                format!("cannot read NATS credentials {}: {e}", creds.display()),
            )
        })?;
    }
    if let Some(ca) = &options.tls_ca {
        connect = connect.add_root_certificates(ca.clone());
    }
    match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => {
            connect = connect.add_client_certificate(cert.clone(), key.clone())
        }
        (None, None) => {}
        _ => {
            return Err(BusError::new(
                ErrorCode::InvalidInput,
                "a TLS client certificate needs both --nats-tls-cert and --nats-tls-key",
            ))
        }
    }
    Ok(connect.require_tls(options.tls_required))
}

/// Exponential backoff from 100 ms to 5 s, with jitter so that many hosts
/// do not reconnect in lockstep.
const RECONNECT: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
    jitter: 0.25,
};

fn backoff(attempts: usize) -> Duration {
    RECONNECT.next(u32::try_from(attempts).unwrap_or(u32::MAX))
}

/// `connections` counts every (re)connection; the first is not a reconnect.
fn log_event(event: async_nats::Event, connections: &AtomicU64) {
    match event {
        async_nats::Event::Connected => {
            if connections.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::info!("connected to NATS");
            } else {
                tracing::info!("reconnected to NATS");
            }
        }
        async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
        async_nats::Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
        other => tracing::warn!(event = %other, "NATS"),
    }
}

fn parse_urls(urls: &str) -> Result<Vec<ServerAddr>, BusError> {
    let addrs: Result<Vec<ServerAddr>, _> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>().map_err(|e| (u.to_owned(), e)))
        .collect();
    match addrs {
        Ok(a) if !a.is_empty() => Ok(a),
        Ok(_) => Err(BusError::new(ErrorCode::InvalidInput, "no NATS URL given")),
        Err((url, e)) => Err(BusError::new(
            ErrorCode::InvalidInput,
            format!("invalid NATS URL {url:?}: {e} (expected e.g. nats://127.0.0.1:4222)"),
        )),
    }
}

/// Turns NATS's terse connect errors into advice.
fn explain(error: &str) -> String {
    let lower = error.to_lowercase();
    if lower.contains("authorization") || lower.contains("authentication") {
        format!("{error}: the server refused the credentials; check --nats-user/--nats-password, --nats-token, --nats-nkey or --nats-creds")
    } else if lower.contains("badcertificate") || lower.contains("certificaterequired") {
        format!("{error}: the server refused our TLS client certificate (mutual TLS); pass --nats-tls-cert and --nats-tls-key, signed by a CA the server trusts")
    } else if lower.contains("invalid peer certificate") || lower.contains("unknownissuer") {
        format!("{error}: the server's TLS certificate is not from a CA this host trusts; pass that CA with --nats-tls-ca")
    } else if lower.contains("refused") || lower.contains("timed out") {
        format!("{error}: is nats-server running and reachable at that address?")
    } else {
        error.to_owned()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::new(ErrorCode::Unavailable, format!("NATS: {e}"))
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
                async_nats::RequestErrorKind::NoResponders => no_responders(&message.subject),
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
