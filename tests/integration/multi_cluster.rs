//! Hosts on different nats-servers serving one cell: a three-server
//! cluster that loses a server under load, a supercluster (two clusters
//! joined by gateways) and a hub with a leaf node. Requests go to a host
//! near the caller first and to a far one when the near one is gone; a
//! deploy reaches hosts in both clusters. Real servers from generated
//! configuration files (`cbs_tests::topology`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cbs_host::bus::nats::NatsBus;
use cbs_host::bus::BodyBus;
use cbs_tests::bundles::greet_bundle;
use cbs_tests::nats::connect;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::topology::{self, urls};
use cbs_tests::{call_json, eventually, greet};
use serde_json::json;

const CELL: &str = "logic.greet";

fn serve(url: &str, id: &str) -> HostProcess {
    HostProcess::serve(url, id, &[greet()], &[])
}

async fn greet_once(bus: &dyn BodyBus) -> bool {
    call_json(bus, CELL, json!({"name": "Ada"}), Duration::from_secs(2))
        .await
        .is_ok_and(|v| v["greeting"] == "Hello, Ada!")
}

/// Calls until one succeeds (servers still meeting each other).
async fn until_served(bus: &dyn BodyBus) {
    eventually(Duration::from_secs(30), "an answer", || async {
        match greet_once(bus).await {
            true => Ok(()),
            false => Err(format!("{CELL} does not answer")),
        }
    })
    .await;
}

/// Requests each host handled, from discovery (`cbs ps`).
async fn handled(bus: &NatsBus) -> BTreeMap<String, u64> {
    let hosts = cbs_host::discovery::list(
        bus.client(),
        Duration::from_millis(300),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    hosts
        .into_iter()
        .map(|h| {
            let n = h
                .cells
                .iter()
                .filter(|c| c.id == CELL)
                .map(|c| c.requests)
                .sum();
            (h.host, n)
        })
        .collect()
}

/// `n` calls; all must succeed.
async fn calls(bus: &dyn BodyBus, n: usize) {
    for _ in 0..n {
        assert!(greet_once(bus).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_server_of_a_three_server_cluster_costs_almost_nothing() {
    let mut servers = topology::cluster("c", 3, false);
    let all = urls(&servers.iter().collect::<Vec<_>>());
    let _h1 = serve(&all, "h1");
    let _h2 = serve(&all, "h2");
    let client = Arc::new(connect(&all).await);
    until_served(client.as_ref()).await;
    // The server the caller is on goes down in the middle of the load.
    let port = client.client().server_info().port;
    let victim = servers
        .iter()
        .position(|s| s.port == port)
        .expect("connected to one of them");

    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, ok, failed) =
                (client.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let counter = if greet_once(client.as_ref()).await {
                        &ok
                    } else {
                        &failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Kill after 500 answers; stop once 2000 more came after the kill.
    let answered = |n: u64| {
        let ok = ok.clone();
        move || {
            let got = ok.load(Ordering::Relaxed);
            let done = got >= n;
            async move { done.then_some(()).ok_or(format!("{got} answered")) }
        }
    };
    eventually(Duration::from_secs(30), "load", answered(500)).await;
    servers[victim].stop();
    let at_kill = ok.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(60),
        "load after the kill",
        answered(at_kill + 2_000),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "server {} killed under load: {ok} requests answered, {failed} failed",
        servers[victim].name
    );
    assert!(
        failed * 100 < ok + failed,
        "{failed} of {} failed",
        ok + failed
    );
    // Reconnected: nothing fails any more.
    calls(client.as_ref(), 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supercluster_serves_from_the_callers_cluster_and_fails_over() {
    let (east, west) = topology::supercluster(1, false);
    let (e, w) = (&east[0], &west[0]);
    let mut near = serve(&e.url(), "east-host");
    let _far = serve(&w.url(), "west-host");
    let caller = connect(&e.url()).await;
    until_served(&caller).await;
    // Both hosts are known everywhere (discovery crosses the gateways).
    eventually(
        Duration::from_secs(20),
        "the west host seen from east",
        || async {
            let seen = handled(&caller).await;
            match seen.len() {
                2 => Ok(()),
                _ => Err(format!("{seen:?}")),
            }
        },
    )
    .await;
    let before = handled(&caller).await;
    calls(&caller, 20).await;
    let after = handled(&caller).await;
    assert_eq!(
        after["east-host"] - before["east-host"],
        20,
        "{before:?} → {after:?}"
    );
    assert_eq!(
        after["west-host"], before["west-host"],
        "nothing crossed the gateway"
    );

    near.kill();
    until_served(&caller).await;
    calls(&caller, 20).await;
    let far_after = handled(&caller).await;
    assert!(
        far_after["west-host"] >= before["west-host"] + 20,
        "{far_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_reaches_watching_hosts_in_both_clusters() {
    let (east, west) = topology::supercluster(2, true);
    let (e, w) = (&east[0], &west[0]);
    let watch = ["--watch", "--drain-timeout-ms", "2000"];
    wait_for_jetstream(&e.url()).await;
    let _east_host = HostProcess::serve(&e.url(), "east-host", &[], &watch);
    let _west_host = HostProcess::serve(&w.url(), "west-host", &[], &watch);
    let dir = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(dir.path());
    let out = cbs(&["deploy", bundle.to_str().unwrap(), "--nats", &e.url()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("serving on 2 host(s)"), "{stdout}");
    let west_caller = connect(&w.url()).await;
    until_served(&west_caller).await;
}

/// JetStream of a supercluster elects its meta leader after the servers
/// meet; hosts need it to open the deploy buckets, so wait until they open.
async fn wait_for_jetstream(url: &str) {
    let client = async_nats::connect(url).await.unwrap();
    eventually(Duration::from_secs(30), "JetStream", || async {
        let opened = cbs_host::deploy::Store::open(&client).await;
        opened.map(drop).map_err(|e| format!("{e:#}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_node_host_serves_its_side_first_and_the_hub_fails_over() {
    let (hub, leaf) = topology::hub_and_leaf();
    // NATS's locality alone: with rerouting, a leaf host whose first
    // (cold) request was slow under load sent most calls to the hub.
    let no_reroute = ["--no-reroute"];
    let mut leaf_host = HostProcess::serve(&leaf.url(), "leaf-host", &[greet()], &no_reroute);
    let _hub_host = HostProcess::serve(&hub.url(), "hub-host", &[greet()], &no_reroute);
    let leaf_caller = connect(&leaf.url()).await;
    let hub_caller = connect(&hub.url()).await;
    until_served(&leaf_caller).await;
    until_served(&hub_caller).await;
    let before = handled(&hub_caller).await;
    calls(&leaf_caller, 20).await;
    let after = handled(&hub_caller).await;
    assert_eq!(
        after["leaf-host"] - before["leaf-host"],
        20,
        "{before:?} → {after:?}"
    );

    leaf_host.kill();
    // The leaf side has no host now: its calls cross to the hub.
    until_served(&leaf_caller).await;
    calls(&leaf_caller, 20).await;
}
