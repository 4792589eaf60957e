//! Two versions of a cell on one host, splitting its messages by share:
//! on the in-process bus and across hosts on a real nats-server, the
//! share measured over 10,000 requests is the one asked for (within ±2
//! points), a promoted canary takes every message, and a dropped one none.

use std::sync::Arc;
use std::time::Duration;

use cbs_host::bus::local::LocalBus;
use cbs_host::bus::BodyBus;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::{call_json, eventually, greet, CellToml, TestHost};
use serde_json::json;

const CELL: &str = "logic.greet";
const MESSAGES: usize = 10_000;
/// Requests in flight at once.
const AT_ONCE: usize = 32;
const GRACE: Duration = Duration::from_secs(5);

/// Serves version 0.2.0 of logic.greet next to 0.1.0 on `host`, taking
/// `share` of every 10,000 messages.
async fn canary(host: &TestHost, share: u32) -> tempfile::TempDir {
    let next = CellToml::from_dir(&greet()).version("0.2.0").write();
    let cell = host.body().load(next.path()).await.unwrap();
    host.body().split(cell, share, GRACE).await.unwrap();
    next
}

/// Sends `n` greetings over `bus`, `AT_ONCE` at a time; each must succeed.
async fn load(bus: &dyn BodyBus, n: usize) {
    let mut left = n;
    while left > 0 {
        let now = left.min(AT_ONCE);
        left -= now;
        let calls =
            (0..now).map(|_| call_json(bus, CELL, json!({"name": "Ada"}), Duration::from_secs(10)));
        for reply in futures_util::future::join_all(calls).await {
            reply.expect("every request is answered");
        }
    }
}

/// Requests each version of the cell handled on these hosts: (stable, canary).
fn handled(hosts: &[&TestHost]) -> (u64, u64) {
    let mut counts = (0, 0);
    for host in hosts {
        let versions = host.body().versions(CELL);
        counts.0 += versions[0].stats.requests();
        counts.1 += versions.get(1).map_or(0, |c| c.stats.requests());
    }
    counts
}

fn assert_share(counts: (u64, u64), share: u32) {
    let measured = counts.1 as f64 * 100.0 / (counts.0 + counts.1) as f64;
    let asked = f64::from(share) / 100.0;
    eprintln!(
        "canary share asked {asked:.1} %, measured {measured:.2} % of {} messages",
        counts.0 + counts.1
    );
    assert!(
        (measured - asked).abs() <= 2.0,
        "asked {asked} %, measured {measured} % ({counts:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_holds_over_ten_thousand_requests_in_process() {
    let host = TestHost::start(cbs_tests::builder(Arc::new(LocalBus::new())), &[greet()]).await;
    let _next = canary(&host, 1_000).await;
    load(host.body().bus().as_ref(), MESSAGES).await;
    assert_share(handled(&[&host]), 1_000);

    // Moved to 50 %: the next messages split half and half.
    host.body().set_share(CELL, 5_000).unwrap();
    let before = handled(&[&host]);
    load(host.body().bus().as_ref(), MESSAGES).await;
    let after = handled(&[&host]);
    assert_share((after.0 - before.0, after.1 - before.1), 5_000);
    // The metrics show the split and each version's own counters.
    let metrics = cbs_host::metrics::render(host.body().as_ref());
    let line = |role: &str, version: &str, name: &str| {
        let at = format!("cbs_{name}{{cell=\"{CELL}\",version=\"{version}\",role=\"{role}\"}} ");
        let found = metrics.lines().find_map(|l| l.strip_prefix(at.as_str()));
        found
            .unwrap_or_else(|| panic!("no {at} in:\n{metrics}"))
            .to_owned()
    };
    assert_eq!(line("stable", "0.1.0", "cell_version_share"), "5000");
    assert_eq!(line("canary", "0.2.0", "cell_version_share"), "5000");
    assert_eq!(
        line("canary", "0.2.0", "cell_version_requests_total"),
        handled(&[&host]).1.to_string()
    );

    // Promoted: the canary takes everything, and is the only version.
    host.body().end_canary(CELL, true, GRACE).await.unwrap();
    let versions = host.body().versions(CELL);
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].manifest.version, "0.2.0");
    let promoted = versions[0].stats.requests();
    load(host.body().bus().as_ref(), 320).await;
    assert_eq!(
        host.body().versions(CELL)[0].stats.requests(),
        promoted + 320
    );
}

/// A call from another cell of the same host, taken in process (no bus),
/// splits by the share as a request from the bus does: exactly a quarter
/// of 400 calls reach a 25 % canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_cells_of_one_host_split_by_the_share_too() {
    let caller = CellToml::faulty("test.caller").calls(&[CELL]).write();
    let host = TestHost::start(
        cbs_tests::builder(Arc::new(LocalBus::new())),
        &[greet(), caller.path().to_path_buf()],
    )
    .await;
    let _next = canary(&host, 2_500).await;
    let call = json!({"action": "call", "cell": CELL, "payload": {"name": "Ada"}});
    for _ in 0..400 {
        call_json(
            host.body().bus().as_ref(),
            "test.caller",
            call.clone(),
            Duration::from_secs(10),
        )
        .await
        .expect("the caller gets its reply");
    }
    assert_eq!(handled(&[&host]), (300, 100));
}

/// Events to a `[[subscribe]]` cell split by the share as requests do:
/// exactly a quarter of 400 events reach a 25 % canary, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_split_by_the_share_too() {
    const SINK: &str = "test.sink";
    let on = cbs_host::events::Subscribe {
        subject: "orders.placed".into(),
        delivery: Default::default(),
        durable: false,
        stream: None,
    };
    let stable = CellToml::faulty(SINK).subscribe(on.clone()).write();
    let host = TestHost::start(
        cbs_tests::builder(Arc::new(LocalBus::new())),
        &[stable.path().to_path_buf()],
    )
    .await;
    let next = CellToml::faulty(SINK)
        .subscribe(on)
        .version("0.2.0")
        .write();
    let cell = host.body().load(next.path()).await.unwrap();
    host.body().split(cell, 2_500, GRACE).await.unwrap();
    for _ in 0..400 {
        let mut event = cbs_tests::envelope_to(SINK, &json!({"action": "count"}));
        event.subject = "orders.placed".into();
        let message = cbs_host::envelope::codec::to_message(&event);
        host.body().bus().publish(message).await.unwrap();
    }
    let counts = || {
        let versions = host.body().versions(SINK);
        (versions[0].stats.requests(), versions[1].stats.requests())
    };
    eventually(Duration::from_secs(20), "every event handled", || async {
        match counts() {
            (a, b) if a + b == 400 => Ok(()),
            (a, b) => Err(format!("{} of 400", a + b)),
        }
    })
    .await;
    assert_eq!(counts(), (300, 100));
}

/// A durable cell's deliveries split by the share too, message by
/// message, on the embedded store: of 2,000 messages each is handled once,
/// a quarter by the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_deliveries_split_by_the_share_and_none_is_lost() {
    const DURABLE: &str = "test.durable";
    const N: usize = 2_000;
    let spec = cbs_host::manifest::DurableSpec::default();
    let stable = CellToml::faulty(DURABLE).durable(spec.clone()).write();
    let host = TestHost::start(
        cbs_tests::builder(Arc::new(LocalBus::new())),
        &[stable.path().to_path_buf()],
    )
    .await;
    let next = CellToml::faulty(DURABLE)
        .durable(spec)
        .version("0.2.0")
        .write();
    let cell = host.body().load(next.path()).await.unwrap();
    host.body().split(cell, 2_500, GRACE).await.unwrap();
    let log = host.body().durable().clone();
    for _ in 0..N {
        let message = cbs_tests::envelope_to(DURABLE, &json!({"action": "count"}));
        log.publish(
            "cbs-durable.test.durable",
            &message.id,
            message.to_vec().into(),
        )
        .await
        .unwrap();
    }
    let counts = || {
        let versions = host.body().versions(DURABLE);
        (versions[0].stats.requests(), versions[1].stats.requests())
    };
    eventually(Duration::from_secs(60), "every message handled", || async {
        let (a, b) = counts();
        match (a + b) as usize {
            N => Ok(()),
            n => Err(format!("{n} of {N}")),
        }
    })
    .await;
    assert_share(counts(), 2_500);
    // Message by message, as requests: exactly a quarter.
    assert_eq!(counts().1, (N / 4) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_holds_across_hosts_on_nats_and_a_dropped_canary_takes_nothing() {
    let server = NatsServer::start();
    let a = TestHost::start(cbs_tests::builder(Arc::new(server.bus().await)), &[greet()]).await;
    let b = TestHost::start(cbs_tests::builder(Arc::new(server.bus().await)), &[greet()]).await;
    let (_na, _nb) = (canary(&a, 2_500).await, canary(&b, 2_500).await);
    let client = server.bus().await;
    load(&client, MESSAGES).await;
    assert_share(handled(&[&a, &b]), 2_500);

    for host in [&a, &b] {
        host.body().end_canary(CELL, false, GRACE).await.unwrap();
        assert_eq!(host.body().versions(CELL).len(), 1, "the canary is gone");
        assert_eq!(host.body().versions(CELL)[0].manifest.version, "0.1.0");
    }
    let before = handled(&[&a, &b]).0;
    load(&client, 320).await;
    assert_eq!(
        handled(&[&a, &b]).0,
        before + 320,
        "the stable version takes all"
    );
}

/// A nats-server and two watching hosts serving text.upper 0.1.0.
fn two_hosts_serving_v1() -> (NatsServer, [HostProcess; 2]) {
    let server = NatsServer::start();
    let url = server.url();
    let watch = ["--watch", "--drain-timeout-ms", "5000"];
    let hosts = [
        HostProcess::serve(&url, "canary-a", &[], &watch),
        HostProcess::serve(&url, "canary-b", &[], &watch),
    ];
    let v1 = cbs_tests::bundles::releases().v1.to_str().unwrap();
    let out = cbs(&["deploy", v1, "--nats", &url]);
    assert!(out.status.success(), "{out:?}");
    (server, hosts)
}

/// A canary in the desired state is served by every watching host next to
/// the current release, at its share across the lattice; promoted, it
/// takes every message and is the release served, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_hosts_serve_a_desired_canary_at_its_share_and_promote_it() {
    use cbs_host::deploy::rollout;
    use cbs_tests::bundles::{releases, UPPER};
    let releases = releases();
    let (server, _hosts) = two_hosts_serving_v1();

    let client = server.bus().await;
    let store = cbs_host::deploy::Store::open(client.client())
        .await
        .unwrap();
    let bytes = std::fs::read(&releases.v2).unwrap();
    let bundle = cbs_host::bundle::Bundle::from_bytes(&bytes).unwrap();
    let release = rollout::stage(&store, &bundle, &bytes, Default::default())
        .await
        .unwrap();
    rollout::set_canary(&store, UPPER, release.clone(), 2_500)
        .await
        .unwrap();
    let serving = |release: String| {
        let store = &store;
        async move {
            let statuses = store.statuses().await.map_err(|e| e.to_string())?;
            let n = statuses
                .iter()
                .filter(|s| s.release == release && s.state == cbs_host::deploy::State::Serving)
                .count();
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{statuses:?}"))
            }
        }
    };
    eventually(
        Duration::from_secs(30),
        "both hosts serving the canary",
        || serving(release.id.clone()),
    )
    .await;

    let replies = upper_replies(&client, MESSAGES).await;
    let canary = replies.iter().filter(|r| *r == "HI!").count() as u64;
    assert_share((MESSAGES as u64 - canary, canary), 2_500);

    // The split shows where operators look: cbs ps, cbs ls, the console.
    let url = server.url();
    let ps = cbs(&["ps", "--nats", &url]);
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert_eq!(ps.matches("0.2.0 (canary, 25 %)").count(), 2, "{ps}");
    let ls = cbs(&["ls", "--nats", &url]);
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(ls.contains("canary 0.2.0 at 25 %"), "{ls}");
    let console = cbs_tests::process::Console::start(&url);
    let cell = cbs_tests::curl::curl(&[&format!("{}/api/cells/{UPPER}", console.base())]);
    let cell: serde_json::Value = serde_json::from_str(&cell.body).unwrap();
    let hosts = cell["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{cell}");
    for host in hosts {
        assert_eq!(host["canary"]["version"], "0.2.0", "{cell}");
        assert_eq!(host["canary"]["share"], 2_500, "{cell}");
    }

    rollout::end_canary(&store, UPPER, true).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the canary promoted on both hosts",
        || async {
            let replies = upper_replies(&client, 64).await;
            match replies.iter().all(|r| r == "HI!") {
                true => Ok(()),
                false => Err(format!("{replies:?}")),
            }
        },
    )
    .await;
    let desired = store.desired(UPPER).await.unwrap().unwrap();
    assert_eq!(desired.current.version, "0.2.0");
    assert!(desired.canary.is_none());
}

/// `n` replies of text.upper to "hi", `AT_ONCE` at a time.
async fn upper_replies(bus: &dyn BodyBus, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let now = left.min(AT_ONCE);
        left -= now;
        let calls = (0..now).map(|_| {
            call_json(
                bus,
                "text.upper",
                json!({"text": "hi"}),
                Duration::from_secs(10),
            )
        });
        for reply in futures_util::future::join_all(calls).await {
            let reply = reply.expect("every request is answered");
            out.push(reply["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

/// Requests sent until `stop`, each reply's text (or error code) kept.
fn steady_load(
    bus: cbs_host::bus::nats::NatsBus,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut replies = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let calls = (0..8).map(|_| {
                call_json(
                    &bus,
                    "text.upper",
                    json!({"text": "hi"}),
                    Duration::from_secs(10),
                )
            });
            for reply in futures_util::future::join_all(calls).await {
                replies.push(match reply {
                    Ok(v) => v["text"].as_str().unwrap_or_default().to_owned(),
                    Err(e) => e.code.to_string(),
                });
            }
        }
        replies
    })
}

/// A release of text.upper (v2's component) as `version`; `chaos` appended
/// to its cell.toml.
fn release_of(tmp: &std::path::Path, name: &str, version: &str, chaos: &str) -> std::path::PathBuf {
    let dir = cbs_tests::bundles::variant(tmp, name, version, None);
    let toml = dir.join("cell.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{text}\n{chaos}")).unwrap();
    cbs_tests::bundles::pack(&dir)
}

/// Under steady load on two watching hosts: a canary of a version that
/// fails a fifth of its requests reverts by itself at its first step, with
/// its reason in `cbs ls` and the audit trail; a good version is promoted
/// step by step and then serves everything. No request goes unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_reverts_by_itself_and_a_good_one_is_promoted() {
    let tmp = tempfile::tempdir().unwrap();
    let failing = release_of(
        tmp.path(),
        "failing",
        "0.2.0",
        "[chaos]\nerror_rate = 0.2\nseed = 7\n",
    );
    let good = release_of(tmp.path(), "good", "0.2.1", "");
    let (server, _hosts) = two_hosts_serving_v1();
    let url = server.url();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(server.bus().await, stop.clone());
    let canary = |bundle: &std::path::Path, interval: &str, more: &[&str]| {
        let mut args = vec![
            "deploy",
            bundle.to_str().unwrap(),
            "--nats",
            &url,
            "--canary",
            "10",
            "--steps",
            "50,100",
            "--interval",
            interval,
        ];
        args.extend(more);
        let started = std::time::Instant::now();
        let out = cbs(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{err}(in {:?})", started.elapsed());
        (out.status.success(), err)
    };

    let (ok, err) = canary(&failing, "3s", &[]);
    assert!(!ok, "a failing canary reverts: {err}");
    assert!(err.contains("reverted at 10 %: error ratio"), "{err}");
    let ls = cbs(&["ls", "--nats", &url]);
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        ls.contains("canary 0.2.0 reverted at 10 %: error ratio"),
        "{ls}"
    );
    // --max-errors does not wait for the interval's end.
    let (ok, err) = canary(&failing, "10m", &["--max-errors", "5"]);
    assert!(!ok && err.contains("past --max-errors 5"), "{err}");

    let (ok, err) = canary(&good, "3s", &[]);
    assert!(ok, "a good canary is promoted: {err}");
    assert!(
        err.contains("50 % of the messages") && err.contains("promoted"),
        "{err}"
    );
    let bus = server.bus().await;
    let after = upper_replies(&bus, 64).await;
    assert!(after.iter().all(|r| r == "HI!"), "{after:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let replies = load.await.unwrap();
    let unanswered: Vec<&String> = replies
        .iter()
        .filter(|r| !matches!(r.as_str(), "HI" | "HI!" | "unavailable"))
        .collect();
    assert!(
        unanswered.is_empty(),
        "every request answered (or refused by the chaos): {unanswered:?}"
    );
    let audit = cbs(&["audit", "--action", "canary", "--nats", &url]);
    let audit = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert!(
        audit.contains("reverted at 10 %") && audit.contains("promoted"),
        "{audit}"
    );
}

/// Blue-green under steady load on two watching hosts: a release whose
/// contract tests fail on the hosts (every request fails) is
/// refused without taking one request; a good one is tested there, then
/// takes all traffic at once; `cbs rollback` switches back to the version
/// every host kept warm, without a load. Not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_switches_and_switches_back_with_no_failed_request_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let failing = release_of(
        tmp.path(),
        "failing",
        "0.2.0",
        "[chaos]\nerror_rate = 1.0\n",
    );
    let good = release_of(tmp.path(), "good", "0.2.1", "");
    let (server, _hosts) = two_hosts_serving_v1();
    let url = server.url();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(server.bus().await, stop.clone());
    let blue_green = |bundle: &std::path::Path| {
        let args = [
            "deploy",
            bundle.to_str().unwrap(),
            "--nats",
            &url,
            "--strategy",
            "blue-green",
            "--warm",
            "5m",
        ];
        let out = cbs(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{err}");
        (out.status.success(), err)
    };

    let (ok, err) = blue_green(&failing);
    assert!(!ok, "a release failing its tests is refused: {err}");
    assert!(
        err.contains("refused") && err.contains("unavailable"),
        "{err}"
    );
    let ls = cbs(&["ls", "--nats", &url]);
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(ls.contains("blue-green 0.2.0 refused"), "{ls}");

    let (ok, err) = blue_green(&good);
    assert!(ok, "a good release switches: {err}");
    assert!(err.contains("generated contract test"), "{err}");
    let bus = server.bus().await;
    let after = upper_replies(&bus, 64).await;
    assert!(after.iter().all(|r| r == "HI!"), "all at once: {after:?}");
    let ps = cbs(&["ps", "--nats", &url]);
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert_eq!(ps.matches("0.1.0 (warm, no traffic)").count(), 2, "{ps}");
    // The console says the same: the rollout, and the warm version on
    // each host.
    let console = cbs_tests::process::Console::start(&url);
    let api = format!("{}/api/cells/{UPPER_ID}", console.base());
    let cell = cbs_tests::curl::curl(&[&api]).json();
    assert_eq!(cell["rollout"], "blue-green 0.2.1 switched", "{cell}");
    let warm: Vec<&serde_json::Value> = cell["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["warm"])
        .collect();
    assert_eq!(warm, [&json!("0.1.0"), &json!("0.1.0")], "{cell}");

    let started = std::time::Instant::now();
    let back = cbs(&["rollback", UPPER_ID, "--nats", &url]);
    let elapsed = started.elapsed();
    let said = String::from_utf8_lossy(&back.stdout).into_owned();
    eprintln!("rollback in {elapsed:?}: {said}");
    assert!(back.status.success(), "{back:?}");
    assert!(
        said.contains("serving on 2 host(s)")
            && said.contains("2 switched to the version kept warm"),
        "{said}"
    );
    let after = upper_replies(&bus, 64).await;
    assert!(after.iter().all(|r| r == "HI"), "switched back: {after:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let replies = load.await.unwrap();
    let failed: Vec<&String> = replies
        .iter()
        .filter(|r| !matches!(r.as_str(), "HI" | "HI!"))
        .collect();
    assert!(failed.is_empty(), "no request failed: {failed:?}");
    assert!(
        replies.iter().any(|r| r == "HI!"),
        "the load saw the switch"
    );
}

const UPPER_ID: &str = cbs_tests::bundles::UPPER;

/// The canary controller on a durable cell fed from a JetStream stream,
/// on two watching hosts: a version failing a fifth of its deliveries
/// reverts by itself at its first step; a good one is promoted. Every
/// message is handled and acknowledged: the stream drains and nothing is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_canary_reverts_or_is_promoted_and_loses_no_message() {
    use async_nats::jetstream;
    use cbs_host::durable;
    const WORK: &str = "test.work";
    let tmp = tempfile::tempdir().unwrap();
    let release = |name: &str, version: &str, error_rate: f64| {
        let tables = format!(
            "[durable]\nmax_deliver = 20\nbackoff_ms = [20]\nack_wait_ms = 5000\n\
             [chaos]\nerror_rate = {error_rate}\nseed = 7\n"
        );
        cbs_tests::bundles::faulty_bundle(&tmp.path().join(name), WORK, version, &tables)
    };
    let (v1, failing, good) = (
        release("v1", "0.1.0", 0.0),
        release("failing", "0.2.0", 0.2),
        release("good", "0.2.1", 0.0),
    );
    let server = NatsServer::start();
    let url = server.url();
    let watch = ["--watch", "--drain-timeout-ms", "5000"];
    let _hosts = [
        HostProcess::serve(&url, "work-a", &[], &watch),
        HostProcess::serve(&url, "work-b", &[], &watch),
    ];
    let out = cbs(&["deploy", v1.to_str().unwrap(), "--nats", &url]);
    assert!(out.status.success(), "{out:?}");
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feed = {
        let (js, stop) = (js.clone(), stop.clone());
        tokio::spawn(async move {
            let mut published = 0u64;
            // A steady rate: 20 messages per 50 ms tick.
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..20 {
                    let message = cbs_tests::envelope_to(WORK, &json!({"action": "count"}));
                    durable::publish(&js, "cbs-durable.test.work", &message)
                        .await
                        .unwrap();
                    published += 1;
                }
            }
            published
        })
    };
    let canary = |bundle: &std::path::Path| {
        let args = [
            "deploy",
            bundle.to_str().unwrap(),
            "--nats",
            &url,
            "--canary",
            "10",
            "--steps",
            "50,100",
            "--interval",
            "3s",
        ];
        let out = cbs(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{err}");
        (out.status.success(), err)
    };
    let (ok, err) = canary(&failing);
    assert!(
        !ok && err.contains("reverted at 10 %: error ratio"),
        "{err}"
    );
    let (ok, err) = canary(&good);
    assert!(ok && err.contains("promoted"), "{err}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = feed.await.unwrap();
    eventually(Duration::from_secs(60), "every message handled", || async {
        let mut stream = js.get_stream("CBS_DURABLE_TEST_WORK").await.unwrap();
        match stream.info().await.unwrap().state.messages {
            0 => Ok(()),
            n => Err(format!("{n} of {published} messages still in the stream")),
        }
    })
    .await;
    let dead = durable::dead_letters(&js, WORK).await.unwrap();
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    let ps = cbs(&["ps", "--json", "--nats", &url]);
    let ps: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let versions: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["cells"].as_array().unwrap())
        .filter(|c| c["id"] == WORK)
        .map(|c| c["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["0.2.1", "0.2.1"], "promoted on both hosts");
}
