//! Hosts on different nats-servers serving one cell: a three-server
//! cluster that loses a server under load, a supercluster (two clusters
//! joined by gateways) and a hub with a leaf node. Requests go to a host
//! near the caller first and to a far one when the near one is gone; a
//! deploy reaches hosts in both clusters. Real servers from generated
//! configuration files (`cbs_tests::topology`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbs_host::bus::nats::{NatsBus, NatsOptions};
use cbs_host::bus::BodyBus;
use cbs_tests::bundles::prebuilt_greet;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::topology::{self, urls};
use cbs_tests::{call_json, greet};
use serde_json::json;

const CELL: &str = "logic.greet";

async fn connect(urls: &str) -> NatsBus {
    NatsBus::connect(&NatsOptions {
        urls: urls.to_owned(),
        name: "cbs-test".into(),
        ..NatsOptions::default()
    })
    .await
    .expect("connect")
}

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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !greet_once(bus).await {
        assert!(Instant::now() < deadline, "{CELL} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    servers[victim].stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while handled(&caller).await.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the west host is not seen from east"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let cell = dir.path().join("greet");
    prebuilt_greet(&cell);
    let bundle = dir.path().join("greet.cbs");
    let out = cbs(&[
        "build",
        cell.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = cbs_host::deploy::Store::open(&client).await {
        assert!(Instant::now() < deadline, "JetStream never came up: {e:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_node_host_serves_its_side_first_and_the_hub_fails_over() {
    let (hub, leaf) = topology::hub_and_leaf();
    let mut leaf_host = serve(&leaf.url(), "leaf-host");
    let _hub_host = serve(&hub.url(), "hub-host");
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
