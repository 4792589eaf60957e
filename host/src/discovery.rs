//! Who serves what: hosts and their cells, from the NATS micro protocol
//! (`$SRV.INFO.cbs` and `$SRV.STATS.cbs`), as `cbs ps` shows them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::service::endpoint::{Info as EndpointInfo, Stats as EndpointStats};
use async_nats::service::{Info, Stats};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::bus::nats::{unavailable, SERVICE_NAME};
use crate::envelope::BusError;

/// One host and what it serves.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// The host id (connection name), from the service metadata.
    pub host: String,
    /// The micro service instance id.
    pub service_id: String,
    pub version: String,
    /// Whether the host follows deployments (`cbs-host run --watch`).
    pub watching: bool,
    /// Its labels (`cbs-host run --label`; a watching host's platform).
    pub labels: BTreeMap<String, String>,
    pub cells: Vec<CellView>,
    /// What a watching host accepts from deployments.
    pub policy: Policy,
}

/// What a watching host accepts from deployments, as it announces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The keys a bundle must be signed by (`--trust`), hex; none: it
    /// runs unsigned bundles.
    pub trusted_keys: Vec<String>,
    /// Whether bundles may start processes (`--allow-process-bundles`).
    pub process_bundles: bool,
}

/// The service metadata key of a watching host's [`Policy`] (JSON).
pub const POLICY: &str = "policy";

/// The most trusted keys read from a host's policy.
const MAX_TRUSTED_KEYS: usize = 64;

impl Policy {
    /// A host's policy from its service metadata; the default (nothing
    /// announced) when absent or malformed.
    fn of(info: &Info) -> Self {
        let mut policy: Self = info
            .metadata
            .get(POLICY)
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        policy.trusted_keys.truncate(MAX_TRUSTED_KEYS);
        policy
            .trusted_keys
            .retain(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()));
        policy
    }
}

/// One cell on one host.
#[derive(Debug, Clone, Serialize)]
pub struct CellView {
    pub id: String,
    pub version: String,
    pub subject: String,
    /// Messages the cell handled, from the bus or from cells of its host.
    pub requests: u64,
    /// Of those, the ones that came over the bus (the endpoint's own count).
    pub bus_requests: u64,
    pub errors: u64,
    /// Failure replies by `BusError` code (known codes only).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Recent handling latency (a moving average) on that host, µs.
    pub latency_us: u64,
    pub average_processing_us: u64,
    pub input_schema: Option<String>,
    pub output_schema: Option<String>,
    /// Warm wasm instances, or live processes, on that host.
    #[serde(default)]
    pub instances: u64,
    /// A durable cell's consumer, as that host saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable: Option<crate::stats::DurableCounts>,
    /// Its HTTP routes with their contracts (what gateways serve); empty
    /// once the host stopped serving it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<crate::http::Target>,
}

/// Asks every CBS host on the bus, gathering replies until `quiet` passes
/// without a new one (or `limit` in all).
pub async fn list(
    client: &async_nats::Client,
    quiet: Duration,
    limit: Duration,
) -> Result<Vec<HostView>, BusError> {
    let infos: Vec<Info> = gather(client, "INFO", quiet, limit).await?;
    let stats: Vec<Stats> = gather(client, "STATS", quiet, limit).await?;
    let mut hosts: Vec<HostView> = infos
        .into_iter()
        .map(|info| {
            let cells = info
                .endpoints
                .iter()
                .filter_map(|endpoint| {
                    let counts = stats
                        .iter()
                        .filter(|s| s.id == info.id)
                        .flat_map(|s| &s.endpoints)
                        .find(|e| e.subject == endpoint.subject);
                    (!withdrawn(counts)).then(|| cell_view(endpoint, counts))
                })
                .collect();
            HostView {
                host: info
                    .metadata
                    .get("host")
                    .cloned()
                    .unwrap_or_else(|| info.id.clone()),
                watching: is_watching(&info),
                labels: labels_of(&info),
                policy: Policy::of(&info),
                service_id: info.id,
                version: info.version,
                cells,
            }
        })
        .collect();
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(hosts)
}

/// The service metadata key of a host's labels (a JSON object).
pub const LABELS: &str = "labels";

/// A host answering `$SRV.INFO`, as deployments see it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub host: String,
    /// Whether it follows deployments (`--watch`).
    pub watching: bool,
    /// Its `--label`s and platform (none if it announced none, or
    /// something that is not a JSON object of strings).
    pub labels: BTreeMap<String, String>,
}

/// The hosts answering `$SRV.INFO`: one round of replies, no stats.
pub async fn hosts(
    client: &async_nats::Client,
    quiet: Duration,
    limit: Duration,
) -> Result<Vec<Peer>, BusError> {
    let infos: Vec<Info> = gather(client, "INFO", quiet, limit).await?;
    Ok(infos
        .into_iter()
        .map(|info| Peer {
            watching: is_watching(&info),
            labels: labels_of(&info),
            host: info.metadata.get("host").cloned().unwrap_or(info.id),
        })
        .collect())
}

/// A host's labels from its service metadata (none when malformed: the
/// reply is another host's).
fn labels_of(info: &Info) -> BTreeMap<String, String> {
    info.metadata
        .get(LABELS)
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default()
}

/// Whether the host stopped serving an endpoint it once added: the micro
/// service keeps listing it (async-nats cannot remove an endpoint), but a
/// CBS host's stats of it are empty once the cell is gone. Without stats
/// for it (that reply was missed) it is kept.
fn withdrawn(counts: Option<&EndpointStats>) -> bool {
    counts.is_some_and(|c| c.data.as_ref().is_none_or(serde_json::Value::is_null))
}

/// Whether a host follows deployments (`cbs-host run --watch`).
fn is_watching(info: &Info) -> bool {
    info.metadata.get("watch").is_some_and(|w| w == "true")
}

fn cell_view(endpoint: &EndpointInfo, counts: Option<&EndpointStats>) -> CellView {
    let meta = &endpoint.metadata;
    // CBS's own counters (in `data`) count every failure reply; the micro
    // protocol's `num_errors` counts only empty-bodied error replies.
    let data = counts.and_then(|c| c.data.clone()).unwrap_or_default();
    let id = meta
        .get("cell")
        .cloned()
        .unwrap_or_else(|| endpoint.subject.trim_start_matches("cbs.").to_owned());
    CellView {
        http: routes(&id, &data["http"]),
        id,
        // The version serving now (stats follow hot swaps; metadata is
        // fixed when the endpoint is added).
        version: data["version"]
            .as_str()
            .or(meta.get("version").map(String::as_str))
            .unwrap_or_default()
            .to_owned(),
        subject: endpoint.subject.clone(),
        requests: data["requests"]
            .as_u64()
            .unwrap_or(counts.map_or(0, |c| c.requests as u64)),
        bus_requests: counts.map_or(0, |c| c.requests as u64),
        errors: data["errors"].as_u64().unwrap_or(0),
        errors_by_code: errors_by_code(&data["errors_by_code"]),
        latency_us: data["recent_latency_us"].as_u64().unwrap_or(0),
        average_processing_us: counts.map_or(0, |c| c.average_processing_time.as_micros() as u64),
        input_schema: meta.get("input_schema").cloned(),
        output_schema: meta.get("output_schema").cloned(),
        instances: data["instances"].as_u64().unwrap_or(0),
        // Another host's reply: tolerated when malformed, as the rest.
        durable: serde_json::from_value(data["durable"].clone()).ok(),
    }
}

/// A host's error counts by code: only the codes CBS has, with counts.
fn errors_by_code(data: &serde_json::Value) -> BTreeMap<String, u64> {
    crate::error::ErrorCode::all()
        .filter_map(|code| {
            let n = data.get(code.as_str())?.as_u64()?;
            Some((code.as_str().to_owned(), n))
        })
        .collect()
}

/// The routes a host reports for cell `id`: only valid ones, and only to
/// that cell (a host speaks for the cells it serves).
fn routes(id: &str, data: &serde_json::Value) -> Vec<crate::http::Target> {
    let Ok(targets) = serde_json::from_value::<Vec<crate::http::Target>>(data.clone()) else {
        return Vec::new();
    };
    targets
        .into_iter()
        .filter(|t| t.cell == id && t.route.validate().is_ok())
        .take(crate::manifest::bounds::HTTP_ROUTES)
        .collect()
}

/// The most replies taken per question: any client may answer on
/// `$SRV`, and every reply is kept until the answer is complete.
pub const MAX_REPLIES: usize = 4096;

async fn gather<T: for<'de> Deserialize<'de>>(
    client: &async_nats::Client,
    verb: &str,
    quiet: Duration,
    limit: Duration,
) -> Result<Vec<T>, BusError> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.map_err(unavailable)?;
    client
        .publish_with_reply(format!("$SRV.{verb}.{SERVICE_NAME}"), inbox, "".into())
        .await
        .map_err(unavailable)?;
    client.flush().await.map_err(unavailable)?;
    let end = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < MAX_REPLIES {
        let wait = quiet.min(end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, replies.next()).await {
            Ok(Some(message)) => match serde_json::from_slice(&message.payload) {
                Ok(item) => out.push(item),
                Err(e) => tracing::warn!(verb, error = %e, "ignoring a malformed $SRV reply"),
            },
            _ => return Ok(out),
        }
    }
    tracing::warn!(
        verb,
        "more than {MAX_REPLIES} hosts answered; the rest are left out"
    );
    Ok(out)
}
