//! What hosts tell each other: load reports on `cbs.~l.<cell>` (routing)
//! and heartbeats in `cbs-hosts` (placement).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use cbs_host::bus::Message;
use cbs_host::deploy::placement::{self, HostInfo, Placement, DEFAULT_MEMORY_MB};
use cbs_host::deploy::{Autoscale, Desired, Release};
use cbs_host::routing::load::{self, MAX_PEERS};
use cbs_host::routing::{direct_subject, is_host_token, load_subject, Router};
use cbs_host::stats::CellLoad;

const CELL: &str = "logic.greet";

/// Load reports, one a line, to a host named `me` that is slow and full:
/// never a panic; at most 256 peers, each named by one subject token (not
/// `me`), and where a request is sent is such a peer's direct subject.
pub fn load_report(data: &[u8]) {
    let router = Router::new("me");
    let routes = router.cell(CELL);
    let mine = CellLoad {
        latency_us: 50_000,
        room: 0,
        ..CellLoad::default()
    };
    for line in data.split(|b| *b == b'\n') {
        let message = Message::new(load_subject(CELL), Bytes::copy_from_slice(line));
        load::take(&routes, router.me(), &message, mine);
    }
    let peers = router.peers(CELL);
    assert!(peers.len() <= MAX_PEERS, "{} peers", peers.len());
    for (host, _) in &peers {
        assert!(is_host_token(host) && host != "me", "peer {host:?}");
    }
    // The first request while slow is a probe kept here; the next may go.
    let _ = router.around_slowness(&routes);
    let picks = [
        router.around_capacity(&routes),
        router.around_slowness(&routes),
    ];
    for host in picks.into_iter().flatten() {
        assert!(peers.iter().any(|(p, _)| *p == host), "{host:?} is no peer");
        let subject = direct_subject(&host, CELL);
        let tokens: Vec<&str> = subject.split('.').collect();
        assert_eq!(tokens.len(), 3 + CELL.split('.').count(), "{subject:?}");
        assert!(tokens
            .iter()
            .all(|t| !t.is_empty() && *t != "*" && *t != ">"));
    }
}

/// Heartbeats, one a line, as the placer takes them: never a panic; every
/// replica on a distinct live host with the labels and memory it needs,
/// a shortfall said, placing again moves nothing, and the load a request
/// cell's heartbeats report keeps its replica count within its bounds.
pub fn heartbeat(data: &[u8]) {
    let live: Vec<HostInfo> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| HostInfo::from_heartbeat(line).ok())
        .collect();
    let desired = desired();
    let placed = placement::place(&desired, &live, &BTreeMap::new());
    check(&desired, &live, &placed);
    let again = placement::place(&desired, &live, &placed);
    assert_eq!(again, placed, "placing again moved replicas");
    autoscale(&desired, &live, &placed);
}

/// Three cells: spread over zones in region eu with 500 MiB each, three
/// anywhere, and an autoscaled request cell now on three.
fn desired() -> Vec<Desired> {
    let release = |replicas| Release {
        id: "r".to_owned(),
        version: "1.0.0".to_owned(),
        replicas: Some(replicas),
        ..Default::default()
    };
    let mut spread = release(2);
    spread
        .constraints
        .insert("region".to_owned(), "eu".to_owned());
    spread.spread = Some("zone".to_owned());
    spread.memory_mb = Some(500);
    let mut auto = release(3);
    auto.autoscale = Some(Autoscale {
        min_replicas: 1,
        max_replicas: 5,
        scale_down_after_ms: 1_000,
        target_wait_ms: 50,
        ..Default::default()
    });
    vec![
        Desired::advance(None, "a.spread", spread),
        Desired::advance(None, "b.any", release(3)),
        Desired::advance(None, "c.auto", auto),
    ]
}

fn check(desired: &[Desired], live: &[HostInfo], placed: &BTreeMap<String, Placement>) {
    // The placer's view: one host per id, the last heartbeat of it.
    let hosts: BTreeMap<&str, &HostInfo> = live.iter().map(|h| (h.id.as_str(), h)).collect();
    let mut booked: BTreeMap<&str, u64> = BTreeMap::new();
    for d in desired {
        let p = &placed[&d.cell];
        let want = d.current.replicas.unwrap_or(0) as usize;
        assert!(p.hosts.len() <= want, "{p:?}");
        assert_eq!(p.unplaced.is_some(), p.hosts.len() < want, "{p:?}");
        let distinct: BTreeSet<&String> = p.hosts.iter().collect();
        assert_eq!(distinct.len(), p.hosts.len(), "a host twice: {p:?}");
        for host in &p.hosts {
            let info = hosts.get(host.as_str()).expect("placed on a live host");
            assert!(d.current.admits(&info.labels), "{host:?} lacks labels");
            let need = d.current.memory_mb.map_or(DEFAULT_MEMORY_MB, u64::from);
            *booked.entry(host.as_str()).or_default() += need;
        }
    }
    for (host, mb) in booked {
        if let Some(cap) = hosts[host].memory_mb {
            assert!(mb <= cap, "{host:?} over-committed: {mb} of {cap} MiB");
        }
    }
}

/// The request cell's load from its hosts' heartbeats, as the placer
/// reads it, keeps its count within 1..=5.
fn autoscale(desired: &[Desired], live: &[HostInfo], placed: &BTreeMap<String, Placement>) {
    let hosts: BTreeMap<&str, &HostInfo> = live.iter().map(|h| (h.id.as_str(), h)).collect();
    for d in desired {
        let Some(scale) = &d.current.autoscale else {
            continue;
        };
        let loads: Vec<_> = placed[&d.cell]
            .hosts
            .iter()
            .filter_map(|h| hosts.get(h.as_str())?.load.get(&d.cell).copied())
            .collect();
        for before in [None, Some(0), Some(u64::MAX)] {
            let (load, _) = placement::request_load(&loads, before);
            for now in [0, 1, 3, 5, u32::MAX] {
                let next = scale.wanted_for_load(now, load);
                assert!((1..=5).contains(&next), "{next} replicas from {load:?}");
            }
        }
    }
}
