//! Where replicas go: the placer's decision, as a pure function of the
//! desired state, the live hosts (their labels and declared memory) and
//! the placement so far.
//!
//! A cell deployed with `--replicas N` is placed on N live watching hosts
//! that have every label the release asks for (`--label k=v`) and the
//! memory its replicas need left (a host's `--capacity-memory-mb`, never
//! over-committed). Replicas already placed stay where they are while
//! their host lives and still qualifies, so a re-placement moves only what
//! it must; new ones go first to the value of the `--spread` label with
//! the fewest replicas of the cell, then to the host with the fewest
//! replicas of any cell, then by host id. When fewer than N hosts qualify,
//! the placement says why. A cell deployed without `--replicas` runs on
//! every watching host with the labels it asks for (native code: its
//! platform) and has no placement.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Desired, RequestLoad};
use crate::stats::CellLoad;

/// Memory a replica is counted for when its release does not say
/// (the default `memory_mb` of a wasm cell).
pub const DEFAULT_MEMORY_MB: u64 = 64;

/// The most labels, and cells with a load, one heartbeat may carry: the
/// bucket is outside input, and every watching host keeps the last
/// heartbeat of each host in memory.
pub const MAX_HEARTBEAT_LABELS: usize = 64;
pub const MAX_HEARTBEAT_CELLS: usize = 4096;
/// The most hosts whose heartbeats are read or remembered at once.
pub const MAX_HOSTS: usize = 4096;

/// A watching host as its heartbeat describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub id: String,
    /// `cbs-host run --label k=v`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--capacity-memory-mb`: what replicas placed here may use in all;
    /// none means unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// When the heartbeat was written, ms since the Unix epoch.
    pub at_ms: u64,
    /// How loaded each cell served here is, for autoscaling request cells.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub load: BTreeMap<String, CellLoad>,
    /// The lattice policy this host holds and enforces, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::enforcer::Mark>,
    /// The keys it runs bundles from (`--trust`, hex); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust: Vec<String>,
    /// Whether its NATS connection is TLS.
    #[serde(default)]
    pub nats_tls: bool,
}

impl HostInfo {
    /// A heartbeat as stored in `cbs-hosts`, or why it is not one (not
    /// JSON of this shape, or past [`MAX_HEARTBEAT_LABELS`] or
    /// [`MAX_HEARTBEAT_CELLS`]).
    pub fn from_heartbeat(value: &[u8]) -> anyhow::Result<Self> {
        let info: Self = serde_json::from_slice(value)?;
        if info.labels.len() > MAX_HEARTBEAT_LABELS {
            anyhow::bail!(
                "{} labels, more than {MAX_HEARTBEAT_LABELS}",
                info.labels.len()
            );
        }
        if info.trust.len() > MAX_HEARTBEAT_LABELS {
            anyhow::bail!(
                "{} trusted keys, more than {MAX_HEARTBEAT_LABELS}",
                info.trust.len()
            );
        }
        if info.load.len() > MAX_HEARTBEAT_CELLS {
            anyhow::bail!(
                "the load of {} cells, more than {MAX_HEARTBEAT_CELLS}",
                info.load.len()
            );
        }
        Ok(info)
    }
}

/// A request cell's load from its hosts' latest heartbeats: whether they
/// answered `capacity` since the last look (their counters' total went up
/// from `refused_before`), how busy they are (running or queued over what
/// they run at once) and the longest wait; with the counters' total, for
/// the next look.
pub fn request_load(loads: &[CellLoad], refused_before: Option<u64>) -> (RequestLoad, u64) {
    // Counters from heartbeats: their total may not fit (saturated).
    let refused = loads
        .iter()
        .fold(0u64, |sum, l| sum.saturating_add(l.refused));
    let capacity: u64 = loads.iter().map(|l| u64::from(l.concurrency)).sum();
    let running: u64 = loads.iter().map(|l| u64::from(l.in_flight)).sum();
    let busy = if capacity == 0 {
        0.0
    } else {
        running as f64 / capacity as f64
    };
    let wait_us = loads.iter().map(|l| l.queue_wait_us).max().unwrap_or(0);
    let load = RequestLoad {
        refused: refused_before.is_some_and(|b| refused > b),
        busy,
        wait_ms: wait_us as f64 / 1e3,
    };
    (load, refused)
}

/// Where one cell's replicas are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub cell: String,
    /// The release it was made for ([`super::Release::id`]).
    #[serde(default)]
    pub release: String,
    /// Replicas wanted.
    pub replicas: u32,
    /// Hosts that serve it, at most `replicas`.
    pub hosts: Vec<String>,
    /// Why fewer than `replicas` hosts were found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced: Option<String>,
}

/// The placement of every cell deployed with replicas, given the `live`
/// hosts and the placement so far (`current`).
pub fn place(
    desired: &[Desired],
    live: &[HostInfo],
    current: &BTreeMap<String, Placement>,
) -> BTreeMap<String, Placement> {
    let hosts: BTreeMap<&str, &HostInfo> = live.iter().map(|h| (h.id.as_str(), h)).collect();
    let mut cells: Vec<&Desired> = desired
        .iter()
        .filter(|d| d.current.replicas.is_some())
        .collect();
    cells.sort_by(|a, b| a.cell.cmp(&b.cell));
    let mut book = Book::default();
    // Replicas that stay are booked first, for every cell, so a new
    // replica of one cell never takes the room of a kept one of another.
    let mut kept: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for d in &cells {
        let want = d.current.replicas.unwrap_or(0) as usize;
        let need = need_mb(d);
        let stay = current
            .get(&d.cell)
            .map(|p| p.hosts.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|h| hosts.get(h.as_str()).is_some_and(|info| qualifies(info, d)))
            .filter(|h| book.fits(hosts[h.as_str()], need))
            .take(want)
            .collect::<Vec<_>>();
        for h in &stay {
            book.take(h, need);
        }
        kept.insert(&d.cell, stay);
    }
    let mut out = BTreeMap::new();
    for d in cells {
        let placement = fill(
            d,
            kept.remove(d.cell.as_str()).unwrap_or_default(),
            &hosts,
            &mut book,
        );
        out.insert(d.cell.clone(), placement);
    }
    out
}

/// Adds replicas to `chosen` until the release's count, or says why not.
fn fill(
    d: &Desired,
    mut chosen: Vec<String>,
    hosts: &BTreeMap<&str, &HostInfo>,
    book: &mut Book,
) -> Placement {
    let want = d.current.replicas.unwrap_or(0) as usize;
    let need = need_mb(d);
    let matching: Vec<&HostInfo> = hosts
        .values()
        .copied()
        .filter(|h| qualifies(h, d))
        .collect();
    while chosen.len() < want {
        let taken: BTreeSet<&str> = chosen.iter().map(String::as_str).collect();
        let next = matching
            .iter()
            .filter(|h| !taken.contains(h.id.as_str()) && book.fits(h, need))
            .min_by_key(|h| {
                let spread = spread_count(d, h, &chosen, hosts);
                (spread, book.replicas(&h.id), h.id.clone())
            });
        match next {
            Some(h) => {
                book.take(&h.id, need);
                chosen.push(h.id.clone());
            }
            None => break,
        }
    }
    let unplaced = (chosen.len() < want).then(|| why(d, want, &chosen, &matching, hosts.len()));
    Placement {
        cell: d.cell.clone(),
        release: d.current.id.clone(),
        replicas: want as u32,
        hosts: chosen,
        unplaced,
    }
}

fn why(d: &Desired, want: usize, chosen: &[String], matching: &[&HostInfo], live: usize) -> String {
    let placed = format!("{} of {want} replicas placed", chosen.len());
    if live == 0 {
        return format!("{placed}: no watching host is live");
    }
    if matching.len() < want {
        return if d.current.constraints.is_empty() {
            format!("{placed}: only {} watching hosts are live", matching.len())
        } else {
            format!(
                "{placed}: {} live hosts have {} (of {live} live)",
                matching.len(),
                d.current.constraint_list()
            )
        };
    }
    format!(
        "{placed}: no other matching host has {} MiB of memory left (--capacity-memory-mb)",
        need_mb(d)
    )
}

/// Has every label the release asks for.
fn qualifies(host: &HostInfo, d: &Desired) -> bool {
    d.current.admits(&host.labels)
}

fn need_mb(d: &Desired) -> u64 {
    d.current.memory_mb.map_or(DEFAULT_MEMORY_MB, u64::from)
}

/// Replicas of this cell already on hosts with `host`'s value of the
/// spread label (0 without a spread label).
fn spread_count(
    d: &Desired,
    host: &HostInfo,
    chosen: &[String],
    hosts: &BTreeMap<&str, &HostInfo>,
) -> usize {
    let Some(key) = &d.current.spread else {
        return 0;
    };
    let value = host.labels.get(key);
    chosen
        .iter()
        .filter(|c| hosts.get(c.as_str()).and_then(|h| h.labels.get(key)) == value)
        .count()
}

/// Memory and replicas booked per host while placing.
#[derive(Default)]
struct Book {
    memory: BTreeMap<String, u64>,
    replicas: BTreeMap<String, usize>,
}

impl Book {
    fn fits(&self, host: &HostInfo, need: u64) -> bool {
        host.memory_mb
            .is_none_or(|cap| self.memory.get(&host.id).copied().unwrap_or(0) + need <= cap)
    }

    fn take(&mut self, host: &str, need: u64) {
        *self.memory.entry(host.to_owned()).or_default() += need;
        *self.replicas.entry(host.to_owned()).or_default() += 1;
    }

    fn replicas(&self, host: &str) -> usize {
        self.replicas.get(host).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::Release;

    fn host(id: &str, labels: &[(&str, &str)], memory_mb: Option<u64>) -> HostInfo {
        HostInfo {
            id: id.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            memory_mb,
            ..Default::default()
        }
    }

    fn cell(id: &str, replicas: u32, set: impl FnOnce(&mut Release)) -> Desired {
        let mut release = Release {
            id: "r".into(),
            version: "0.1.0".into(),
            digest: "d".into(),
            object: "o".into(),
            replicas: Some(replicas),
            ..Default::default()
        };
        set(&mut release);
        Desired::advance(None, id, release)
    }

    #[test]
    fn replicas_go_to_distinct_hosts_and_stay_put() {
        let hosts = [
            host("a", &[], None),
            host("b", &[], None),
            host("c", &[], None),
        ];
        let desired = [cell("x.y", 2, |_| {})];
        let first = place(&desired, &hosts, &BTreeMap::new());
        let x = &first["x.y"];
        assert_eq!((x.hosts.len(), &x.unplaced), (2, &None));
        // One host dies: its replica moves, the other stays.
        let survivor = x.hosts[0].clone();
        let gone = x.hosts[1].clone();
        let live: Vec<HostInfo> = hosts.iter().filter(|h| h.id != gone).cloned().collect();
        let second = place(&desired, &live, &first);
        assert_eq!(second["x.y"].hosts.len(), 2);
        assert_eq!(second["x.y"].hosts[0], survivor);
        assert!(!second["x.y"].hosts.contains(&gone));
    }

    #[test]
    fn labels_capacity_and_spread_decide_and_shortfalls_say_why() {
        let hosts = [
            host("eu-1", &[("region", "eu"), ("zone", "a")], Some(100)),
            host("eu-2", &[("region", "eu"), ("zone", "a")], Some(1000)),
            host("eu-3", &[("region", "eu"), ("zone", "b")], Some(1000)),
            host("us-1", &[("region", "us")], None),
        ];
        let eu = |r: &mut Release| {
            r.constraints.insert("region".into(), "eu".into());
        };
        let desired = [
            cell("a.spread", 2, |r| {
                eu(r);
                r.spread = Some("zone".into());
                r.memory_mb = Some(500);
            }),
            cell("b.nowhere", 1, |r| {
                r.constraints.insert("region".into(), "ap".into());
            }),
            cell("c.big", 2, |r| {
                eu(r);
                r.memory_mb = Some(600);
            }),
        ];
        let p = place(&desired, &hosts, &BTreeMap::new());
        let mut spread = p["a.spread"].hosts.clone();
        spread.sort();
        assert_eq!(
            spread,
            ["eu-2", "eu-3"],
            "one per zone, never eu-1 (100 MiB)"
        );
        let nowhere = p["b.nowhere"].unplaced.as_deref().unwrap();
        assert!(
            nowhere.contains("0 of 1") && nowhere.contains("region=ap"),
            "{nowhere}"
        );
        // eu-2 and eu-3 each have 500 MiB left: no room for 600.
        let big = &p["c.big"];
        assert!(big.hosts.is_empty(), "{big:?}");
        assert!(
            big.unplaced.as_deref().unwrap().contains("600 MiB"),
            "{big:?}"
        );
        let none = place(&desired, &[], &BTreeMap::new());
        assert!(none["a.spread"]
            .unplaced
            .as_deref()
            .unwrap()
            .contains("no watching host is live"));
    }

    #[test]
    fn heartbeats_past_the_label_or_cell_bound_are_refused() {
        let beat = |labels: usize, cells: usize| {
            let labels: BTreeMap<String, String> =
                (0..labels).map(|i| (format!("k{i}"), "v".into())).collect();
            let load: BTreeMap<String, CellLoad> = (0..cells)
                .map(|i| (format!("c{i}"), CellLoad::default()))
                .collect();
            serde_json::to_vec(&serde_json::json!({
                "id": "h", "at_ms": 1, "labels": labels, "load": load,
            }))
            .unwrap()
        };
        let ok = HostInfo::from_heartbeat(&beat(MAX_HEARTBEAT_LABELS, MAX_HEARTBEAT_CELLS));
        assert!(ok.is_ok(), "{ok:?}");
        let err = HostInfo::from_heartbeat(&beat(MAX_HEARTBEAT_LABELS + 1, 0)).unwrap_err();
        assert!(err.to_string().contains("labels"), "{err}");
        let err = HostInfo::from_heartbeat(&beat(0, MAX_HEARTBEAT_CELLS + 1)).unwrap_err();
        assert!(err.to_string().contains("cells"), "{err}");
        let keys: Vec<String> = (0..=MAX_HEARTBEAT_LABELS)
            .map(|i| format!("{i:064x}"))
            .collect();
        let many_keys = serde_json::json!({"id": "h", "at_ms": 1, "trust": keys});
        let err = HostInfo::from_heartbeat(&serde_json::to_vec(&many_keys).unwrap()).unwrap_err();
        assert!(err.to_string().contains("trusted keys"), "{err}");
    }

    #[test]
    fn refused_counters_near_u64_max_in_heartbeats_saturate_not_overflow() {
        let huge = CellLoad {
            refused: u64::MAX - 1,
            concurrency: u32::MAX,
            in_flight: u32::MAX,
            queue_wait_us: u64::MAX,
            ..CellLoad::default()
        };
        let (load, refused) = request_load(&[huge, huge], Some(7));
        assert_eq!(refused, u64::MAX);
        assert!(load.refused);
        let (again, _) = request_load(&[huge, huge], Some(refused));
        assert!(!again.refused, "a saturated total did not go up");
    }

    #[test]
    fn autoscaling_asks_for_the_lag_over_the_target_within_bounds() {
        let scale = crate::deploy::Autoscale {
            min_replicas: 1,
            max_replicas: 4,
            target_lag: 10,
            ..Default::default()
        };
        let wanted: Vec<u32> = [0, 10, 11, 35, 1_000_000]
            .iter()
            .map(|&lag| scale.wanted(lag))
            .collect();
        assert_eq!(wanted, [1, 1, 2, 4, 4]);
        // Request cells: one step at a time, within the bounds.
        let load = |refused, busy, wait_ms| crate::deploy::RequestLoad {
            refused,
            busy,
            wait_ms,
        };
        let scale = crate::deploy::Autoscale {
            target_wait_ms: 50,
            ..scale
        };
        assert_eq!(
            scale.wanted_for_load(2, load(true, 0.1, 0.0)),
            3,
            "refused: up"
        );
        assert_eq!(
            scale.wanted_for_load(2, load(false, 0.9, 0.0)),
            3,
            "busy: up"
        );
        assert_eq!(
            scale.wanted_for_load(2, load(false, 0.5, 80.0)),
            3,
            "waiting: up"
        );
        assert_eq!(scale.wanted_for_load(2, load(false, 0.5, 10.0)), 2);
        assert_eq!(
            scale.wanted_for_load(2, load(false, 0.1, 0.0)),
            1,
            "idle: down"
        );
        assert_eq!(
            scale.wanted_for_load(2, load(false, 0.1, 20.0)),
            2,
            "still waits: stay"
        );
        assert_eq!(
            scale.wanted_for_load(4, load(true, 1.0, 0.0)),
            4,
            "at the ceiling"
        );
        assert_eq!(
            scale.wanted_for_load(1, load(false, 0.0, 0.0)),
            1,
            "at the floor"
        );
    }
}
