//! What the console's views show, as JSON: the same types whether they
//! come from a lattice over NATS or from one host in process.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bus::nats::ConnectedServer;
use crate::resilience::BreakerReport;
use crate::stats::{DurableCounts, LatencyCounts, Workers};

/// The lattice view: its hosts and what each serves, and each cell's
/// desired release against what serves it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lattice {
    /// When the view was taken, ms since the Unix epoch.
    pub at_ms: u64,
    /// `nats` (a lattice) or `in-process` (one host).
    pub source: &'static str,
    pub hosts: Vec<Host>,
    pub cells: Vec<Cell>,
}

/// One host and the cells it serves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Host {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// Whether it follows the desired state (`cbs-host run --watch`).
    pub watching: bool,
    /// When it started, ms since the Unix epoch (its uptime is `at_ms`
    /// minus this), where known.
    pub started_ms: Option<u64>,
    /// The NATS server it is connected to (none in process).
    pub nats_server: Option<ConnectedServer>,
    /// Its machine's 1-minute load average, where readable.
    pub load_avg_1m: Option<f64>,
    pub cells: Vec<Served>,
}

/// One cell on one host, with its counters so far (rates are the
/// difference of two views).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Served {
    pub cell: String,
    pub version: String,
    pub requests: u64,
    pub errors: u64,
    /// Failure replies by `BusError` code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Recent handling latency (a moving average), µs.
    pub latency_us: u64,
    /// Warm wasm instances, or live processes.
    pub instances: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable: Option<DurableCounts>,
    /// Its running slots, busy ones, messages in flight and a pool's
    /// workers, where the host reports them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,
    /// Each call target's breaker: its state and how often it opened.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub breakers: BTreeMap<String, BreakerReport>,
    /// A canary serving next to this version: its share and counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<crate::discovery::CanaryCounts>,
    /// The version kept warm after a blue-green switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm: Option<String>,
    /// A recording of its requests is on (`cbs record`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recording: bool,
}

/// One cell across the lattice.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cell {
    pub id: String,
    /// The desired release's version, when the cell is deployed.
    pub desired: Option<String>,
    /// Replicas wanted (`None`: every watching host, or not deployed).
    pub replicas: Option<u32>,
    /// The hosts serving it, with the version each serves.
    pub serving: Vec<Replica>,
    /// Why some wanted replicas have no host.
    pub unplaced: Option<String>,
    /// Whether what serves differs from what is desired: another
    /// version somewhere, or fewer replicas than wanted.
    pub drift: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Replica {
    pub host: String,
    pub version: String,
}

/// The cell view: one cell on every host serving it, and its contract.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CellDetail {
    pub at_ms: u64,
    pub id: String,
    pub desired: Option<String>,
    pub hosts: Vec<HostServing>,
    /// The input and output schemas: the documents where the source has
    /// them (in process, or a cell with HTTP routes), else their ids.
    pub input: Option<serde_json::Value>,
    pub output: Option<serde_json::Value>,
    /// The desired release and those before it, newest first (a lattice
    /// only): what a rollback goes back to is the second.
    pub history: Vec<VersionRow>,
    /// Its rollout now (a canary, a blue-green release on trial) or how
    /// the last one ended, as `cbs ls` says it.
    pub rollout: Option<String>,
}

/// One release of a cell, as its desired state keeps it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionRow {
    pub version: String,
    pub digest: String,
    /// The key that signed the bundle, hex.
    pub signer: Option<String>,
    pub deployed_at_ms: u64,
    /// Replicas wanted (`None`: every watching host).
    pub replicas: Option<u32>,
    /// Whether it is the desired release now.
    pub current: bool,
}

/// One host's copy of the cell.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostServing {
    pub host: String,
    #[serde(flatten)]
    pub served: Served,
    /// Messages per latency bucket since its version started: the page
    /// takes percentiles from the difference of two views.
    pub latency: Option<LatencyCounts>,
}

/// One cell's dead letters (the newest last), each with its sequence.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetters {
    pub at_ms: u64,
    pub cell: String,
    pub letters: Vec<Letter>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub seq: u64,
    #[serde(flatten)]
    pub letter: crate::durable::DeadLetter,
}

/// Recent flows: the latest failed hops on every host, or one flow's
/// hops in order (its timeline).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Flows {
    pub at_ms: u64,
    /// The flow asked for; `None`: the latest failures.
    pub correlation_id: Option<String>,
    pub hops: Vec<crate::flows::Hop>,
}

/// The deploy history: the audit trail's events, newest first, and what
/// each host accepts from deployments.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Releases {
    pub at_ms: u64,
    pub events: Vec<Release>,
    pub hosts: Vec<HostPolicy>,
}

/// One host's policy for deployments.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostPolicy {
    pub host: String,
    /// Whether it follows deployments at all; a host that does not serves
    /// only what it was started with.
    pub watching: bool,
    #[serde(flatten)]
    pub policy: crate::discovery::Policy,
}

/// One audited change and what of it is proven.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// When the server stored it.
    pub stored_ms: u64,
    #[serde(flatten)]
    pub event: crate::audit::Event,
    /// `verified`, `claimed` or `bad` (see `audit::proof`).
    pub check: &'static str,
    /// Why a `bad` event is bad.
    pub problems: Vec<String>,
}

impl Lattice {
    /// Each cell's rows, from what the hosts serve and, on a lattice, the
    /// desired state (`desired`: cell → version and replicas wanted).
    pub(super) fn cells_from(
        hosts: &[Host],
        desired: BTreeMap<String, (String, Option<u32>, Option<String>)>,
    ) -> Vec<Cell> {
        let mut cells: BTreeMap<String, Cell> = BTreeMap::new();
        for (id, (version, replicas, unplaced)) in desired {
            let cell = cells.entry(id.clone()).or_default();
            cell.id = id;
            cell.desired = Some(version);
            cell.replicas = replicas;
            cell.unplaced = unplaced;
        }
        for host in hosts {
            for served in &host.cells {
                let cell = cells.entry(served.cell.clone()).or_default();
                cell.id.clone_from(&served.cell);
                cell.serving.push(Replica {
                    host: host.id.clone(),
                    version: served.version.clone(),
                });
            }
        }
        let mut cells: Vec<Cell> = cells.into_values().collect();
        for cell in &mut cells {
            cell.drift = drifts(cell);
        }
        cells
    }
}

fn drifts(cell: &Cell) -> bool {
    let Some(desired) = &cell.desired else {
        return false;
    };
    let other_version = cell.serving.iter().any(|r| &r.version != desired);
    let short = cell
        .replicas
        .is_some_and(|wanted| (cell.serving.len() as u64) < u64::from(wanted));
    other_version || short || cell.serving.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, cells: &[(&str, &str)]) -> Host {
        Host {
            id: id.into(),
            cells: cells
                .iter()
                .map(|(cell, version)| Served {
                    cell: (*cell).into(),
                    version: (*version).into(),
                    ..Served::default()
                })
                .collect(),
            ..Host::default()
        }
    }

    #[test]
    fn drift_is_another_version_or_too_few_replicas() {
        let hosts = [
            host("a", &[("x", "1.0.0"), ("y", "2.0.0")]),
            host("b", &[("x", "0.9.0"), ("y", "2.0.0")]),
        ];
        let desired = BTreeMap::from([
            ("x".to_owned(), ("1.0.0".to_owned(), None, None)),
            (
                "y".to_owned(),
                ("2.0.0".to_owned(), Some(3), Some("no room".into())),
            ),
            ("z".to_owned(), ("1.0.0".to_owned(), Some(1), None)),
        ]);
        let cells = Lattice::cells_from(&hosts, desired);
        let drift: Vec<(&str, bool)> = cells.iter().map(|c| (c.id.as_str(), c.drift)).collect();
        assert_eq!(drift, [("x", true), ("y", true), ("z", true)]);
        assert_eq!(cells[1].unplaced.as_deref(), Some("no room"));
        let in_step = Lattice::cells_from(
            &hosts[..1],
            BTreeMap::from([("x".to_owned(), ("1.0.0".to_owned(), Some(1), None))]),
        );
        assert!(!in_step[0].drift, "{in_step:?}");
        let undeployed = Lattice::cells_from(&hosts, BTreeMap::new());
        assert!(undeployed.iter().all(|c| !c.drift && c.desired.is_none()));
    }
}
