//! Who serves what: hosts and their cells, from the NATS micro protocol
//! (`$SRV.INFO.cbs` and `$SRV.STATS.cbs`), as `cbs ps` shows them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::service::endpoint::{Info as EndpointInfo, Stats as EndpointStats};
use async_nats::service::{Info, Stats};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::bus::nats::{
    unavailable, ConnectedServer, HostFacts, HOST_FACTS, SERVICE_NAME, STARTED_MS,
};
use crate::envelope::BusError;
use crate::resilience::BreakerReport;
use crate::stats::{LatencyCounts, Workers};

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
    /// When it started, ms since the Unix epoch (hosts before this field:
    /// none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// The NATS server it is connected to, from its stats (a host serving
    /// no cell has no stats to carry it: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_server: Option<ConnectedServer>,
    /// Its machine's 1-minute load average, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_avg_1m: Option<f64>,
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
    /// Running slots, busy ones, messages in flight, a pool's workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,
    /// Messages per latency bucket since its version started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyCounts>,
    /// Its call targets' breakers, at most [`MAX_BREAKERS`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub breakers: BTreeMap<String, BreakerReport>,
    /// A durable cell's consumer, as that host saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable: Option<crate::stats::DurableCounts>,
    /// During a canary: the canary's own counters on that host (the
    /// fields above are the stable version's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryCounts>,
    /// After a blue-green switch: the version kept warm on that host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm: Option<String>,
    /// The recording on (`cbs record`), by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// Its domain on that host, if it is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainView>,
    /// Its HTTP routes with their contracts (what gateways serve); empty
    /// once the host stopped serving it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<crate::http::Target>,
}

/// A cell's place in a domain, as its host reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainView {
    pub name: String,
    /// Cells outside the domain may call it.
    #[serde(default)]
    pub exported: bool,
}

impl DomainView {
    /// From another host's reply: absent unless a valid domain name.
    fn of(data: &serde_json::Value) -> Option<Self> {
        let view: Self = serde_json::from_value(data.clone()).ok()?;
        crate::manifest::check_name(&view.name).ok()?;
        Some(view)
    }
}

/// A canary version's counters on one host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryCounts {
    pub version: String,
    /// Of every 10,000 messages.
    pub share: u32,
    pub requests: u64,
    pub errors: u64,
    pub latency: Option<LatencyCounts>,
}

impl CanaryCounts {
    /// A host's report of its canary (absent, or bounded like the rest).
    fn of(data: &serde_json::Value) -> Option<Self> {
        let canary = data.get("canary")?;
        let stats = &canary["stats"];
        Some(Self {
            version: canary["version"].as_str()?.chars().take(128).collect(),
            share: canary["share"].as_u64()?.min(10_000) as u32,
            requests: stats["requests"].as_u64().unwrap_or(0),
            errors: stats["errors"].as_u64().unwrap_or(0),
            latency: serde_json::from_value::<LatencyCounts>(stats["latency"].clone())
                .ok()
                .and_then(LatencyCounts::checked),
        })
    }
}

/// Asks every CBS host on the bus, gathering replies until `quiet` passes
/// without a new one (or `limit` in all).
pub async fn list(
    client: &async_nats::Client,
    quiet: Duration,
    limit: Duration,
) -> Result<Vec<HostView>, BusError> {
    // Both questions at once: each waits for `quiet` after its last reply.
    let (infos, stats) = tokio::join!(
        gather::<Info>(client, "INFO", quiet, limit),
        gather::<Stats>(client, "STATS", quiet, limit)
    );
    let (infos, stats) = (infos?, stats?);
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
            let facts = host_facts(
                stats
                    .iter()
                    .filter(|s| s.id == info.id)
                    .flat_map(|s| &s.endpoints),
            );
            HostView {
                host: info
                    .metadata
                    .get("host")
                    .cloned()
                    .unwrap_or_else(|| info.id.clone()),
                watching: is_watching(&info),
                labels: labels_of(&info),
                policy: Policy::of(&info),
                started_ms: info.metadata.get(STARTED_MS).and_then(|t| t.parse().ok()),
                nats_server: facts.nats_server,
                load_avg_1m: facts.load_avg_1m,
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

/// The most breakers taken per cell from a host's reply.
pub const MAX_BREAKERS: usize = 64;
/// The longest NATS server name, id or version taken from a reply.
const MAX_SERVER_FIELD: usize = 256;

/// What a host says about itself in the stats of its `endpoints`: from
/// the first that carries readable facts (none when it serves nothing).
fn host_facts<'a>(endpoints: impl Iterator<Item = &'a EndpointStats>) -> HostFacts {
    let facts = endpoints
        .filter_map(|e| e.data.as_ref()?.get(HOST_FACTS))
        .find_map(|f| serde_json::from_value::<HostFacts>(f.clone()).ok())
        .unwrap_or_default();
    HostFacts {
        nats_server: facts.nats_server.filter(|s| {
            [&s.name, &s.id, &s.version]
                .iter()
                .all(|f| f.len() <= MAX_SERVER_FIELD)
        }),
        load_avg_1m: facts.load_avg_1m.filter(|l| l.is_finite() && *l >= 0.0),
    }
}

/// A host's breakers of cell calls: targets that are cell ids, with a
/// readable state, the first [`MAX_BREAKERS`] by name.
fn breakers(data: &serde_json::Value) -> BTreeMap<String, BreakerReport> {
    let Some(all) = data.as_object() else {
        return BTreeMap::new();
    };
    all.iter()
        .filter(|(target, _)| crate::manifest::check_cell_id(target).is_ok())
        .filter_map(|(target, b)| Some((target.clone(), serde_json::from_value(b.clone()).ok()?)))
        .take(MAX_BREAKERS)
        .collect()
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
        workers: serde_json::from_value(data["workers"].clone()).ok(),
        latency: serde_json::from_value::<LatencyCounts>(data["latency"].clone())
            .ok()
            .and_then(LatencyCounts::checked),
        breakers: breakers(&data["breakers"]),
        // Another host's reply: tolerated when malformed, as the rest.
        durable: serde_json::from_value(data["durable"].clone()).ok(),
        canary: CanaryCounts::of(&data),
        warm: bounded(&data["warm"]),
        recording: bounded(&data["recording"]),
        domain: DomainView::of(&data["domain"]),
    }
}

/// A short text a peer reports (a version, a recording's id), cut at 128
/// characters; absent unless a string.
fn bounded(data: &serde_json::Value) -> Option<String> {
    data.as_str().map(|v| v.chars().take(128).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoint(data: serde_json::Value) -> EndpointStats {
        EndpointStats {
            subject: "cbs.test.caller".into(),
            data: Some(data),
            ..EndpointStats::default()
        }
    }

    fn info() -> EndpointInfo {
        EndpointInfo {
            subject: "cbs.test.caller".into(),
            ..EndpointInfo::default()
        }
    }

    #[test]
    fn a_cells_workers_latency_and_breakers_come_from_its_stats() {
        let data = json!({
            "requests": 7,
            "workers": {"concurrency": 8, "busy": 3, "in_flight": 5,
                        "pool": {"live": 2, "max": 4, "messages": 3}},
            "latency": {"bounds_us": [10, 100], "counts": [1, 5, 1]},
            "breakers": {
                "logic.greet": {"state": "open", "opened": 4},
                "not a cell": {"state": "open", "opened": 1},
                "logic.other": {"state": "jammed", "opened": 1},
            },
        });
        let cell = cell_view(&info(), Some(&endpoint(data)));
        let workers = cell.workers.expect("workers");
        assert_eq!(
            (workers.concurrency, workers.busy, workers.in_flight),
            (8, 3, 5)
        );
        assert_eq!(
            workers.pool.map(|p| (p.live, p.max, p.messages)),
            Some((2, 4, 3))
        );
        assert_eq!(cell.latency.expect("a histogram").counts, [1, 5, 1]);
        let opened: Vec<(&str, u64)> = cell
            .breakers
            .iter()
            .map(|(t, b)| (t.as_str(), b.opened))
            .collect();
        assert_eq!(
            opened,
            [("logic.greet", 4)],
            "only cell ids with a known state"
        );
        assert_eq!(
            cell.breakers["logic.greet"].state,
            crate::resilience::BreakerState::Open
        );
    }

    #[test]
    fn what_a_peer_sends_is_bounded_or_dropped() {
        let many: serde_json::Map<String, serde_json::Value> = (0..MAX_BREAKERS + 10)
            .map(|i| {
                (
                    format!("logic.t{i:03}"),
                    json!({"state": "closed", "opened": 0}),
                )
            })
            .collect();
        let bounds: Vec<u64> = (1..=200).collect();
        let data = json!({
            "latency": {"bounds_us": bounds, "counts": vec![0; 201]},
            "breakers": many,
            "workers": "busy",
        });
        let cell = cell_view(&info(), Some(&endpoint(data)));
        assert_eq!(cell.breakers.len(), MAX_BREAKERS);
        assert!(cell.latency.is_none(), "200 buckets is past the bound");
        assert!(cell.workers.is_none());
        // A cell from a host before these fields: none of them.
        let old = cell_view(&info(), Some(&endpoint(json!({"requests": 1}))));
        assert!(old.workers.is_none() && old.latency.is_none() && old.breakers.is_empty());
    }

    #[test]
    fn host_facts_come_from_any_endpoint_and_stay_bounded() {
        let facts = json!({"host": {
            "nats_server": {"name": "n1", "id": "NABC", "version": "2.10.0"},
            "load_avg_1m": 0.5,
        }});
        let withdrawn = EndpointStats::default();
        let read = host_facts([withdrawn.clone(), endpoint(facts)].iter());
        assert_eq!(read.load_avg_1m, Some(0.5));
        assert_eq!(read.nats_server.map(|s| s.name), Some("n1".to_owned()));
        let long = json!({"host": {
            "nats_server": {"name": "n".repeat(300), "id": "NABC", "version": "2.10.0"},
            "load_avg_1m": -1.0,
        }});
        let read = host_facts([endpoint(long)].iter());
        assert_eq!(read, HostFacts::default());
        assert_eq!(host_facts([withdrawn].iter()), HostFacts::default());
    }
}
