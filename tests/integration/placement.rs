//! Placement on a real nats-server with JetStream: `cbs deploy --replicas
//! N` is served by exactly N of the watching hosts, chosen by the placer
//! (one host at a time holds its lease); when one of them is SIGKILLed its
//! replica moves to another host, and when the placer itself dies another
//! host takes the lease. Labels (and a bundle's platform) restrict where
//! replicas go, and a replica no host can take is reported with the reason,
//! by `cbs deploy` and `cbs ls`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cbs_host::bundle::Bundle;
use cbs_host::deploy::placer::DEAD_AFTER;
use cbs_host::deploy::{State, Store, PLACER};
use cbs_host::manifest::CellSpec;
use cbs_tests::bundles::{build_bundle, faulty_as, greet_bundle};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::process_bundles::{bundled_sidecar, SIDECAR};
use cbs_tests::{call_json, eventually};
use serde_json::json;

const CELL: &str = "logic.greet";

/// A bundle of the test component as cell `id`, with `limits` (TOML) and
/// maybe a `[durable]` table.
fn faulty_bundle(dir: &tempfile::TempDir, id: &str, tables: &str) -> PathBuf {
    let cell = faulty_as(dir.path(), id, tables);
    build_bundle(&cell, &dir.path().join(format!("{id}.cbs")))
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

/// Waits until `want` hosts (none in `dead`) serve the cell; returns them.
async fn wait_serving(store: &Store, dead: &BTreeSet<String>, want: usize) -> BTreeSet<String> {
    eventually(Duration::from_secs(30), "hosts to serve", || async {
        let hosts = serving(store, dead).await;
        if hosts.len() == want {
            Ok(hosts)
        } else {
            Err(format!("serving on {hosts:?}, want {want}"))
        }
    })
    .await
}

/// How soon after a host dies its replica must serve elsewhere. The
/// placer sees the host dead [`DEAD_AFTER`] (2.5 s) after its last beat,
/// which came up to `placer::HEARTBEAT_EVERY` (0.5 s) before the kill; if
/// the dead host held the lease, it lapses after
/// `placer::LEASE_LAPSES_AFTER` (2.5 s), counted at the same time; then a
/// placer tick (0.5 s) writes the placement. Even one after the other
/// that is 6 s, which 3 × DEAD_AFTER covers; 5 s more are for the new
/// host to load the component (from the shared cache) and report it, on a
/// busy machine running a debug build.
const REPLACED_WITHIN: Duration = Duration::from_millis(3 * DEAD_AFTER.as_millis() as u64 + 5_000);

/// Asserts a replica served elsewhere within [`REPLACED_WITHIN`] of `killed`.
fn assert_replaced_in_time(killed: Instant) {
    let took = killed.elapsed();
    eprintln!("re-placed in {} ms", took.as_millis());
    assert!(
        took <= REPLACED_WITHIN,
        "re-placed in {took:?}, more than {REPLACED_WITHIN:?} (3 x DEAD_AFTER + 5 s)"
    );
}

/// Packs a cell folder into `<folder>.cbs`.
fn pack(cell: PathBuf) -> PathBuf {
    let bundle = Bundle::pack(&CellSpec::from_dir(&cell).unwrap()).unwrap();
    let path = cell.with_extension("cbs");
    std::fs::write(&path, bundle.to_bytes().unwrap()).unwrap();
    path
}

/// Waits until `cell` is placed on `want` hosts.
async fn wait_placed(store: &Store, cell: &str, want: u32) {
    eventually(Duration::from_secs(30), "the placement", || async {
        let p = store.placement(cell).await.unwrap();
        match p {
            Some(p) if p.replicas == want && p.hosts.len() == want as usize => Ok(()),
            other => Err(format!("placement {other:?}, want {want} replicas")),
        }
    })
    .await;
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
    let bundle = greet_bundle(dir.path());
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
    let placed = wait_serving(&store, &none, 2).await;
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
    let killed = Instant::now();
    hosts
        .iter_mut()
        .find(|(id, _)| *id == victim)
        .unwrap()
        .1
        .kill();
    let dead = BTreeSet::from([victim.clone()]);
    let now = wait_serving(&store, &dead, 2).await;
    assert_replaced_in_time(killed);
    assert!(now.contains(&spare), "{now:?}");
    let bus = server.bus().await;
    let reply = call_json(&bus, CELL, json!({"name": "Ada"}), Duration::from_secs(5)).await;
    assert_eq!(reply.unwrap()["greeting"], "Hello, Ada!");

    let (_, listing, _) = run(&url, &["ls"]);
    assert!(listing.contains("2/2 placed"), "{listing}");
    // The placer withdraws the dead host's report: `cbs ls` shows what runs.
    eventually(
        Duration::from_secs(30),
        "the dead host's report to go",
        || async {
            let statuses = store.statuses().await.unwrap();
            match statuses.iter().any(|s| s.host == victim) {
                true => Err(format!("{victim}'s report stays")),
                false => Ok(()),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_host_takes_the_lease_when_the_placer_dies() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(dir.path());
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
    let killed = Instant::now();
    hosts
        .iter_mut()
        .find(|(id, _)| *id == placer)
        .unwrap()
        .1
        .kill();
    // The survivor takes the lease, and the one replica ends up on it.
    let dead = BTreeSet::from([placer.clone()]);
    let serving = wait_serving(&store, &dead, 1).await;
    assert_replaced_in_time(killed);
    assert_eq!(serving, BTreeSet::from([other.clone()]));
    eventually(Duration::from_secs(30), "the lease to move", || async {
        let holder = lease_holder(&client).await;
        if holder == other {
            Ok(())
        } else {
            Err(format!("held by {holder}, not {other}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_decide_where_replicas_go_and_a_shortfall_says_why() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(dir.path());
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
    let on = wait_serving(&store, &BTreeSet::new(), 1).await;
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
    let on = wait_serving(&store, &BTreeSet::new(), 1).await;
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
    let bundle = faulty_bundle(
        &dir,
        SCALED,
        "[limits]\nconcurrency = 2\nqueue = 0\ntimeout_ms = 5000\n[durable]\n",
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
    wait_placed(&store, SCALED, 3).await;
    wait_placed(&store, SCALED, 1).await;
    // Replicas removed while messages were held lose none of them.
    eventually(Duration::from_secs(60), "the stream to drain", || async {
        let mut stream = js.get_stream("CBS_DURABLE_TEST_SCALED").await.unwrap();
        match stream.info().await.unwrap().state.messages {
            0 => Ok(()),
            n => Err(format!("{n} messages left")),
        }
    })
    .await;
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
    let bundle = faulty_bundle(
        &dir,
        BUSY,
        "[limits]\nconcurrency = 1\nqueue = 0\ntimeout_ms = 5000\n",
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
    wait_placed(&store, BUSY, 3).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    wait_placed(&store, BUSY, 1).await;
}

/// A host's heartbeat carries each cell's mean wait for a running slot
/// since the last beat: what request-cell autoscaling compares with
/// `--target-wait-ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_report_how_long_messages_waited_to_run() {
    use cbs_host::deploy::placement::HostInfo;
    const QUEUED: &str = "test.queued";
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bundle = faulty_bundle(&dir, QUEUED, "[limits]\nconcurrency = 1\nqueue = 64\n");
    let _host = watching(&url, "a", &[]);
    let (ok, stdout, stderr) = run(&url, &["deploy", bundle.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let client = async_nats::connect(&url).await.unwrap();
    let hosts = async_nats::jetstream::new(client.clone())
        .get_key_value(cbs_host::deploy::HOSTS)
        .await
        .unwrap();
    let bus = server.bus().await;
    eventually(
        Duration::from_secs(20),
        "a heartbeat with a queue wait",
        || async {
            // Four at once on one running slot: three wait.
            let calls = (0..4).map(|_| {
                let payload = json!({"action": "sleep", "ms": 100});
                call_json(&bus, QUEUED, payload, Duration::from_secs(5))
            });
            for result in futures_util::future::join_all(calls).await {
                result.map_err(|e| e.to_string())?;
            }
            let entry = hosts.get("a").await.unwrap().ok_or("no heartbeat yet")?;
            let info: HostInfo = serde_json::from_slice(&entry).unwrap();
            let wait = info.load.get(QUEUED).map_or(0, |l| l.queue_wait_us);
            if wait >= 50_000 {
                Ok(())
            } else {
                Err(format!("queue wait {wait} µs"))
            }
        },
    )
    .await;
}

/// Every host carries `platform=<os>-<arch>`; a release of native code is
/// placed only on hosts of its platform, and one for a platform no host has
/// is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_native_code_go_only_to_hosts_of_its_platform() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let _host = watching(&url, "native-1", &["--allow-process-bundles"]);
    let elsewhere = pack(bundled_sidecar(dir.path(), 1, Some("plan9-mips")));
    let here = pack(bundled_sidecar(dir.path(), 2, None));

    let (ok, _, stderr) = run(
        &url,
        &["deploy", elsewhere.to_str().unwrap(), "--replicas", "1"],
    );
    assert!(!ok, "no host is plan9-mips");
    assert!(
        stderr.contains("no host can take a replica") && stderr.contains("platform=plan9-mips"),
        "{stderr}"
    );

    let (ok, stdout, stderr) = run(&url, &["deploy", here.to_str().unwrap(), "--replicas", "1"]);
    assert!(ok, "{stdout}{stderr}");
    let bus = server.bus().await;
    let reply = call_json(
        &bus,
        SIDECAR,
        json!({"action": "env"}),
        Duration::from_secs(10),
    );
    assert_eq!(reply.await.unwrap()["env"]["RELEASE"], "2");
}

/// Native code deployed to every watching host (no `--replicas`) is loaded
/// only by the hosts of its platform: the others leave it alone and the
/// rollout does not wait for them; one for a platform no host has is
/// refused with the reason, not failed on every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_code_for_every_host_runs_only_on_hosts_of_its_platform() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let _native = watching(&url, "native-1", &["--allow-process-bundles"]);
    let other = ["--allow-process-bundles", "--label", "platform=plan9-mips"];
    let _other = watching(&url, "other-1", &other);
    let nowhere = pack(bundled_sidecar(dir.path(), 1, Some("plan9-amd64")));
    let here = pack(bundled_sidecar(dir.path(), 2, None));

    let (ok, stdout, stderr) = run(&url, &["deploy", nowhere.to_str().unwrap()]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("no host can take a replica: no watching host has platform=plan9-amd64"),
        "{stderr}"
    );

    let (ok, stdout, stderr) = run(&url, &["deploy", here.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("serving on 1 host(s)"), "{stdout}");
    let client = async_nats::connect(&url).await.unwrap();
    let reports: Vec<(String, String)> = Store::open(&client)
        .await
        .unwrap()
        .statuses()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.cell == SIDECAR)
        .map(|s| (s.host, s.version))
        .collect();
    assert_eq!(reports, [("native-1".to_owned(), "0.2.0".to_owned())]);
}

/// Only the lease holder follows the heartbeats, so each beat is delivered
/// once, not to every host: on six idle watching hosts the messages about
/// `cbs-hosts` keys stay near 2 per beat (its write and the holder's copy),
/// where every host following them made it 7 (the write and six copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_follows_the_heartbeats() {
    use cbs_host::deploy::placer::HEARTBEAT_EVERY;
    use futures_util::StreamExt;
    const HOSTS: usize = 6;
    let server = NatsServer::start();
    let url = server.url();
    let _hosts: Vec<HostProcess> = (0..HOSTS)
        .map(|i| watching(&url, &format!("h{i}"), &[]))
        .collect();
    let client = async_nats::connect(&url).await.unwrap();
    let lease = async_nats::jetstream::new(client.clone())
        .get_key_value(PLACER)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "a lease holder", || async {
        match lease.get("lease").await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut all = client.subscribe(">").await.unwrap();
    client.flush().await.unwrap();
    let window = Duration::from_secs(4);
    let until = tokio::time::Instant::now() + window;
    let mut about_beats = 0usize;
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, all.next()).await {
        if msg.subject.starts_with("$KV.cbs-hosts.") {
            about_beats += 1;
        }
    }
    let beats = HOSTS as f64 * window.as_secs_f64() / HEARTBEAT_EVERY.as_secs_f64();
    let per_beat = about_beats as f64 / beats;
    eprintln!("{about_beats} messages about {beats} heartbeats: {per_beat:.2} each");
    assert!(
        per_beat >= 1.0,
        "the beats are seen: {per_beat:.2} messages each"
    );
    assert!(
        per_beat <= 3.0,
        "each beat reached more than the holder: {per_beat:.2} messages each"
    );
}
