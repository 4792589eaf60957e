//! How a host reaches NATS: the connection options (servers, auth, TLS),
//! who they connect as (for the audit trail), and the `async-nats`
//! options built from them: reconnects forever with backoff, each change
//! logged, and connect errors turned into advice.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};

use crate::backoff::Backoff;
use crate::error::{BusError, ErrorCode};

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

/// Connects, failing fast with a message that says what to fix; once
/// connected, the client reconnects forever with backoff, logging each
/// change and counting connections in `reconnects`.
pub(super) async fn connect(
    options: &NatsOptions,
    reconnects: Arc<AtomicU64>,
) -> Result<async_nats::Client, BusError> {
    let addrs = parse_urls(&options.urls)?;
    let connect = connect_options(options, reconnects).await?;
    connect.connect(addrs).await.map_err(|e| {
        BusError::unavailable(format!(
            "cannot connect to NATS at {}: {}",
            options.urls,
            explain(&e.to_string())
        ))
    })
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
