//! Placement on a real nats-server with JetStream: `cbs deploy --replicas
//! N` is served by exactly N of the watching hosts, chosen by the placer
//! (one host at a time holds its lease); when one of them is SIGKILLed its
//! replica moves to another host, and when the placer itself dies another
//! host takes the lease. Labels restrict where replicas go, and a replica
//! no host can take is reported with the reason, by `cbs deploy` and
//! `cbs ls`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cbs_host::deploy::{State, Store, PLACER};
use cbs_tests::bundles::prebuilt_greet;
use cbs_tests::call_json;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use serde_json::json;

const CELL: &str = "logic.greet";

/// A bundle of `logic.greet` (the prebuilt component, no compile).
fn greet_bundle(dir: &tempfile::TempDir) -> PathBuf {
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
    bundle
}

fn watching(url: &str, id: &str, extra: &[&str]) -> HostProcess {
    let args = [&["--watch", "--drain-timeout-ms", "2000"], extra].concat();
    HostProcess::serve(url, id, &[], &args)
}

/// Runs `cbs` against the server: (success, stdout, stderr).
fn run(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = cbs(&[args, &["--nats", url]].concat());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Hosts whose latest report says they serve the cell, minus `dead` (a
/// killed host cannot withdraw its report).
async fn serving(store: &Store, dead: &BTreeSet<String>) -> BTreeSet<String> {
    store
        .statuses()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.cell == CELL && s.state == State::Serving && !dead.contains(&s.host))
        .map(|s| s.host)
        .collect()
}

/// Waits until `want` hosts (none in `dead`) serve the cell; returns them
/// and how long it took.
async fn wait_serving(
    store: &Store,
    dead: &BTreeSet<String>,
    want: usize,
) -> (BTreeSet<String>, Duration) {
    let started = Instant::now();
    loop {
        let hosts = serving(store, dead).await;
        if hosts.len() == want {
            return (hosts, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serving on {hosts:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lease_holder(store_client: &async_nats::Client) -> String {
    let js = async_nats::jetstream::new(store_client.clone());
    let lease = js.get_key_value(PLACER).await.unwrap();
    let value = lease
        .get("lease")
        .await
        .unwrap()
        .expect("a placer holds the lease");
    String::from_utf8(value.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_placed_on_that_many_hosts_and_moved_when_one_dies() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(&dir);
    let mut hosts: Vec<(String, HostProcess)> = ["a", "b", "c"]
        .iter()
        .map(|id| (id.to_string(), watching(&url, id, &[])))
        .collect();
    let (ok, stdout, stderr) = run(
        &url,
        &["deploy", bundle.to_str().unwrap(), "--replicas", "2"],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("serving on 2 host(s)"), "{stdout}");

    let client = async_nats::connect(&url).await.unwrap();
    let store = Store::open(&client).await.unwrap();
    let none = BTreeSet::new();
    let (placed, _) = wait_serving(&store, &none, 2).await;
    let spare = hosts
        .iter()
        .map(|(id, _)| id.clone())
        .find(|id| !placed.contains(id))
        .unwrap();
    let spare_log = &hosts.iter().find(|(id, _)| *id == spare).unwrap().1;
    assert!(
        !spare_log.log().contains("deployed: serving"),
        "the third host never loaded it"
    );

    // SIGKILL one of the two: its replica goes to the spare host.
    let victim = placed.iter().next().unwrap().clone();
    hosts
        .iter_mut()
        .find(|(id, _)| *id == victim)
        .unwrap()
        .1
        .kill();
    let dead = BTreeSet::from([victim.clone()]);
    let (now, took) = wait_serving(&store, &dead, 2).await;
    eprintln!(
        "re-placed {victim}'s replica on {spare} in {} ms",
        took.as_millis()
    );
    assert!(now.contains(&spare), "{now:?}");
    let bus = server.bus().await;
    let reply = call_json(&bus, CELL, json!({"name": "Ada"}), Duration::from_secs(5)).await;
    assert_eq!(reply.unwrap()["greeting"], "Hello, Ada!");

    let (_, listing, _) = run(&url, &["ls"]);
    assert!(listing.contains("2/2 placed"), "{listing}");
    // The placer withdraws the dead host's report: `cbs ls` shows what runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .statuses()
        .await
        .unwrap()
        .iter()
        .any(|s| s.host == victim)
    {
        assert!(Instant::now() < deadline, "{victim}'s report stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_host_takes_the_lease_when_the_placer_dies() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(&dir);
    let mut hosts: Vec<(String, HostProcess)> = ["a", "b"]
        .iter()
        .map(|id| (id.to_string(), watching(&url, id, &[])))
        .collect();
    let client = async_nats::connect(&url).await.unwrap();
    let store = Store::open(&client).await.unwrap();
    let (ok, stdout, stderr) = run(
        &url,
        &["deploy", bundle.to_str().unwrap(), "--replicas", "1"],
    );
    assert!(ok, "{stdout}{stderr}");
    let placer = lease_holder(&client).await;
    let other = if placer == "a" { "b" } else { "a" }.to_owned();
    hosts
        .iter_mut()
        .find(|(id, _)| *id == placer)
        .unwrap()
        .1
        .kill();
    // The survivor takes the lease, and the one replica ends up on it.
    let dead = BTreeSet::from([placer.clone()]);
    let (serving, _) = wait_serving(&store, &dead, 1).await;
    assert_eq!(serving, BTreeSet::from([other.clone()]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder(&client).await != other {
        assert!(
            Instant::now() < deadline,
            "the lease never moved to {other}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_decide_where_replicas_go_and_a_shortfall_says_why() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(&dir);
    let _eu = watching(&url, "eu-1", &["--label", "region=eu"]);
    let _us = watching(
        &url,
        "us-1",
        &["--label", "region=us", "--capacity-memory-mb", "512"],
    );
    let client = async_nats::connect(&url).await.unwrap();
    let store = Store::open(&client).await.unwrap();
    let b = bundle.to_str().unwrap();

    let (ok, stdout, stderr) = run(
        &url,
        &["deploy", b, "--replicas", "1", "--label", "region=us"],
    );
    assert!(ok, "{stdout}{stderr}");
    let (on, _) = wait_serving(&store, &BTreeSet::new(), 1).await;
    assert_eq!(on, BTreeSet::from(["us-1".to_owned()]));

    let (ok, _, stderr) = run(
        &url,
        &["deploy", b, "--replicas", "1", "--label", "region=ap"],
    );
    assert!(!ok, "no host has region=ap");
    assert!(
        stderr.contains("no host can take a replica") && stderr.contains("region=ap"),
        "{stderr}"
    );
    let (_, listing, _) = run(&url, &["ls"]);
    assert!(
        listing.contains("0/1 placed") && listing.contains("0 live hosts have region=ap"),
        "{listing}"
    );
    // Placed nowhere: us-1 stops serving it.
    wait_serving(&store, &BTreeSet::new(), 0).await;

    // Fewer matching hosts than replicas: served where it can be, and said.
    let (ok, stdout, stderr) = run(
        &url,
        &["deploy", b, "--replicas", "2", "--label", "region=eu"],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stderr.contains("warning: 1 of 2 replicas placed"),
        "{stderr}"
    );
    let (on, _) = wait_serving(&store, &BTreeSet::new(), 1).await;
    assert_eq!(on, BTreeSet::from(["eu-1".to_owned()]));
}

/// A durable cell deployed with `--min-replicas 1 --max-replicas 3`: a
/// backlog on its consumer scales it to three hosts, and once drained it
/// goes back to one, a replica at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_cells_consumer_lag_scales_its_replicas_up_and_down() {
    const SCALED: &str = "test.scaled";
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let cell = dir.path().join("scaled");
    std::fs::create_dir_all(&cell).unwrap();
    std::fs::copy(
        cbs_tests::faulty().join("test_faulty.wasm"),
        cell.join("test_faulty.wasm"),
    )
    .unwrap();
    std::fs::write(
        cell.join("cell.toml"),
        format!(
            "id = \"{SCALED}\"\nversion = \"0.1.0\"\ncomponent = \"test_faulty.wasm\"\n\
             [limits]\nconcurrency = 2\nqueue = 0\ntimeout_ms = 5000\n[durable]\n"
        ),
    )
    .unwrap();
    let bundle = dir.path().join("scaled.cbs");
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
    let _hosts: Vec<HostProcess> = ["a", "b", "c"]
        .iter()
        .map(|id| watching(&url, id, &[]))
        .collect();
    let b = bundle.to_str().unwrap();
    let autoscale = [
        "--min-replicas",
        "1",
        "--max-replicas",
        "3",
        "--target-lag",
        "5",
        "--scale-down-after-ms",
        "1000",
    ];
    let (ok, stdout, stderr) = run(&url, &[&["deploy", b][..], &autoscale].concat());
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("serving on 1 host(s)"), "{stdout}");

    let client = async_nats::connect(&url).await.unwrap();
    let store = Store::open(&client).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    for _ in 0..60 {
        let envelope = cbs_tests::envelope_to(SCALED, &json!({"action": "sleep", "ms": 100}));
        cbs_host::durable::publish(&js, "cbs-durable.test.scaled", &envelope)
            .await
            .unwrap();
    }
    let placed = |want: u32| {
        let store = &store;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let p = store.placement(SCALED).await.unwrap();
                if p.as_ref()
                    .is_some_and(|p| p.replicas == want && p.hosts.len() == want as usize)
                {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "placement {p:?}, want {want} replicas"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    placed(3).await;
    placed(1).await;
    // Replicas removed while messages were held lose none of them.
    let mut stream = js.get_stream("CBS_DURABLE_TEST_SCALED").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream.info().await.unwrap().state.messages > 0 {
        assert!(Instant::now() < deadline, "messages left in the stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request cell deployed with `--min-replicas 1 --max-replicas 3`: while
/// its one host answers `capacity` the placer adds replicas up to three;
/// when the load is gone it goes back to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cells_capacity_replies_scale_its_replicas_up_and_down() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const BUSY: &str = "test.busy";
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let cell = dir.path().join("busy");
    std::fs::create_dir_all(&cell).unwrap();
    std::fs::copy(
        cbs_tests::faulty().join("test_faulty.wasm"),
        cell.join("test_faulty.wasm"),
    )
    .unwrap();
    std::fs::write(
        cell.join("cell.toml"),
        format!(
            "id = \"{BUSY}\"\nversion = \"0.1.0\"\ncomponent = \"test_faulty.wasm\"\n\
             [limits]\nconcurrency = 1\nqueue = 0\ntimeout_ms = 5000\n"
        ),
    )
    .unwrap();
    let bundle = dir.path().join("busy.cbs");
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
    let _hosts: Vec<HostProcess> = ["a", "b", "c"]
        .iter()
        .map(|id| watching(&url, id, &[]))
        .collect();
    let autoscale = [
        "--min-replicas",
        "1",
        "--max-replicas",
        "3",
        "--scale-down-after-ms",
        "1000",
    ];
    let (ok, stdout, stderr) = run(
        &url,
        &[&["deploy", bundle.to_str().unwrap()][..], &autoscale].concat(),
    );
    assert!(ok, "{stdout}{stderr}");

    let client = async_nats::connect(&url).await.unwrap();
    let store = Store::open(&client).await.unwrap();
    let bus = Arc::new(server.bus().await);
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (bus, stop) = (bus.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let payload = json!({"action": "sleep", "ms": 50});
                    let _ = call_json(bus.as_ref(), BUSY, payload, Duration::from_secs(5)).await;
                }
            })
        })
        .collect();
    let placed = |want: u32| {
        let store = &store;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let p = store.placement(BUSY).await.unwrap();
                if p.as_ref()
                    .is_some_and(|p| p.replicas == want && p.hosts.len() == want as usize)
                {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "placement {p:?}, want {want} replicas"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    placed(3).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    placed(1).await;
}
