//! `cbs deploy` to hosts that follow a real nats-server with JetStream:
//! hot swap under load, rollback, health-confirmed rollout, the contract
//! gate, late hosts and undeploy; native Python and sidecar cells deployed
//! and swapped from their bundles.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cbs_host::bundle::Bundle;
use cbs_host::bus::BodyBus;
use cbs_host::envelope::{BusError, ErrorCode};
use cbs_tests::bundles::{breaking_release, pack, releases, variant, UPPER};
use cbs_tests::call_json;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::process_bundles::{
    bundled_sidecar, locked_python_cell, offline_pip, LOCKED, SIDECAR,
};
use serde_json::{json, Value};

const WATCH: &[&str] = &["--watch", "--drain-timeout-ms", "5000"];

/// `text.upper` on "hi": `HI` from v1, `HI!` from v2.
async fn upper(bus: &dyn BodyBus) -> Result<String, BusError> {
    let value = call_json(bus, UPPER, json!({"text": "hi"}), Duration::from_secs(5)).await?;
    Ok(value["text"].as_str().unwrap().to_owned())
}

fn run_cbs(args: &[&str]) -> (bool, String, String) {
    let out = cbs(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Each reply, with when its request was sent.
type Log = Arc<Mutex<Vec<(Instant, Result<String, BusError>)>>>;

/// Closed-loop load from `workers` tasks until `stop`.
fn load(
    bus: Arc<dyn BodyBus>,
    workers: usize,
    stop: Arc<AtomicBool>,
    log: Log,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|_| {
            let (bus, stop, log) = (bus.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let reply = upper(bus.as_ref()).await;
                    log.lock().unwrap().push((sent, reply));
                }
            })
        })
        .collect()
}

async fn wait_for_replies(log: &Log, after: Instant, text: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent, r)| *sent > after && r.as_deref().ok() == Some(text))
            .count();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} replies {text:?}"
        );
        tokio::time::sleep(cbs_tests::POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_and_rollback_under_load_lose_nothing() {
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let a = HostProcess::serve(&url, "host-a", &[], WATCH);
    let b = HostProcess::serve(&url, "host-b", &[], WATCH);

    let (ok, out, err) = run_cbs(&["deploy", releases.v1.to_str().unwrap(), "--nats", &url]);
    assert!(ok, "deploy v1: {out}{err}");
    assert!(out.contains("serving on 2 host(s)"), "{out}");

    let bus: Arc<dyn BodyBus> = Arc::new(server.bus().await);
    let (stop, log): (Arc<AtomicBool>, Log) = Default::default();
    let workers = load(bus.clone(), 8, stop.clone(), log.clone());
    let start = Instant::now();
    wait_for_replies(&log, start, "HI", 200).await;

    let (ok, out, err) = run_cbs(&["deploy", releases.v2.to_str().unwrap(), "--nats", &url]);
    assert!(ok, "deploy v2: {out}{err}");
    let deployed = Instant::now();
    wait_for_replies(&log, deployed, "HI!", 200).await;

    let rolling_back = Instant::now();
    let (ok, out, err) = run_cbs(&["rollback", UPPER, "--nats", &url]);
    assert!(ok, "rollback: {out}{err}");
    assert!(err.contains("back to 0.1.0"), "{err}");
    let rolled_back = Instant::now();
    wait_for_replies(&log, rolled_back, "HI", 200).await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let log = log.lock().unwrap();
    let failures: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        log.len(),
        failures[0].1
    );
    // Once deploy (or rollback) returned, every host served the new
    // release: no request sent after that got the old one.
    let stale_after = |from: Instant, to: Instant, old: &str| {
        log.iter()
            .filter(|(sent, r)| *sent > from && *sent < to && r.as_deref().ok() == Some(old))
            .count()
    };
    assert_eq!(
        stale_after(deployed, rolling_back, "HI"),
        0,
        "v1 replies after v2 was deployed"
    );
    assert_eq!(
        stale_after(rolled_back, Instant::now(), "HI!"),
        0,
        "v2 replies after the rollback"
    );
    let swapped =
        a.log().matches("deployed: serving").count() + b.log().matches("deployed: serving").count();
    assert_eq!(swapped, 6, "each host loaded v1, v2, v1");

    let (ok, out, _) = run_cbs(&["ls", "--json", "--nats", &url]);
    assert!(ok);
    let listing: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listing[0]["cell"], UPPER);
    assert_eq!(listing[0]["desired"], "0.1.0");
    let hosts = listing[0]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    assert!(
        hosts
            .iter()
            .all(|h| h["in_sync"] == true && h["serving"] == "0.1.0"),
        "{hosts:?}"
    );
}

/// A release whose component does not compile: same cell, same contract.
fn broken_release(tmp: &Path) -> PathBuf {
    // A component header, then garbage: it fails to compile on the host.
    let garbage: &[u8] = b"\0asm\x0d\x00\x01\x00garbage";
    pack(&variant(tmp, "broken", "0.2.1", Some(garbage)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_release_keeps_the_old_one_serving() {
    let releases = releases();
    let tmp = tempfile::tempdir().unwrap();
    let broken = broken_release(tmp.path());
    let server = NatsServer::start();
    let url = server.url();
    let _a = HostProcess::serve(&url, "host-a", &[], WATCH);
    let (ok, out, err) = run_cbs(&["deploy", releases.v1.to_str().unwrap(), "--nats", &url]);
    assert!(ok, "{out}{err}");

    let (ok, out, err) = run_cbs(&["deploy", broken.to_str().unwrap(), "--nats", &url]);
    assert!(!ok, "deploying a broken bundle must fail: {out}{err}");
    assert!(err.contains("0.2.1 failed to load"), "{err}");
    assert!(err.contains("host-a: cannot load cell text.upper"), "{err}");
    assert!(err.contains("still serving: 0.1.0"), "{err}");

    let bus = server.bus().await;
    assert_eq!(upper(&bus).await.unwrap(), "HI", "v1 still serves");
    let (_, out, _) = run_cbs(&["ls", "--json", "--nats", &url]);
    let listing: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listing[0]["desired"], "0.1.0",
        "the desired state went back: {listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_breaking_contract_within_a_major_needs_force() {
    let releases = releases();
    let tmp = tempfile::tempdir().unwrap();
    let path = breaking_release(tmp.path(), "0.1.1");
    let server = NatsServer::start();
    let url = server.url();
    let (ok, _, err) = run_cbs(&["deploy", releases.v1.to_str().unwrap(), "--nats", &url]);
    assert!(ok, "{err}");
    let (ok, _, err) = run_cbs(&["deploy", path.to_str().unwrap(), "--nats", &url]);
    assert!(!ok);
    assert!(err.contains("breaks the contract"), "{err}");
    assert!(
        err.contains("input  /lang") && err.contains("(required)"),
        "{err}"
    );
    let (ok, _, err) = run_cbs(&["deploy", path.to_str().unwrap(), "--nats", &url, "--force"]);
    assert!(ok, "--force deploys: {err}");
}

/// The same breaking change under a new major version (before 1.0 the minor
/// counts as the major: 0.2 after 0.1) is a deliberate break: it deploys
/// without --force.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_breaking_contract_passes_with_a_new_major() {
    let releases = releases();
    let tmp = tempfile::tempdir().unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let (ok, _, err) = run_cbs(&["deploy", releases.v1.to_str().unwrap(), "--nats", &url]);
    assert!(ok, "{err}");
    let minor = breaking_release(tmp.path(), "0.2.0");
    let (ok, out, err) = run_cbs(&["deploy", minor.to_str().unwrap(), "--nats", &url]);
    assert!(ok, "0.2.0 is a new major before 1.0: {out}{err}");
    let listing: Value =
        serde_json::from_str(&run_cbs(&["ls", "--json", "--nats", &url]).1).unwrap();
    assert_eq!(listing[0]["desired"], "0.2.0", "{listing}");
}

/// `cbs deploy BUNDLE --nats URL`, which must succeed; its stdout.
fn deploy(url: &str, bundle: &Path) -> String {
    let (ok, out, err) = run_cbs(&["deploy", bundle.to_str().unwrap(), "--nats", url]);
    assert!(ok, "deploy {}: {out}{err}", bundle.display());
    out
}

/// `cbs ls --json`.
fn listing(url: &str) -> Value {
    let (ok, out, err) = run_cbs(&["ls", "--json", "--nats", url]);
    assert!(ok, "cbs ls: {err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_host_picks_up_the_desired_cells() {
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let out = deploy(&url, &releases.v2);
    assert!(out.contains("no host is watching"), "{out}");

    let late = HostProcess::serve(&url, "late", &[], WATCH);
    late.wait_for_log("deployed: serving", Duration::from_secs(30));
    let bus = server.bus().await;
    assert_eq!(upper(&bus).await.unwrap(), "HI!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undeploy_removes_the_cell_from_watching_hosts() {
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let host = HostProcess::serve(&url, "host-u", &[], WATCH);
    deploy(&url, &releases.v2);
    let bus = server.bus().await;
    assert_eq!(upper(&bus).await.unwrap(), "HI!");
    // Served, it is contract-tested by its id: the contract is the
    // deployed release's, the calls go to the lattice.
    let (ok, out, err) = run_cbs(&["contract", "test", UPPER, "--nats", &url]);
    assert!(ok && out.contains(" 0 failed"), "{out}{err}");

    let (ok, _, err) = run_cbs(&["undeploy", UPPER, "--nats", &url]);
    assert!(ok, "{err}");
    host.wait_for_log("removed", Duration::from_secs(10));
    let err = upper(&bus).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    let (_, out, _) = run_cbs(&["ls", "--nats", &url]);
    assert!(out.contains("nothing deployed"), "{out}");
    // Discovery no longer lists it on the host, though the micro service
    // keeps the endpoint it once added.
    let (ok, out, err) = run_cbs(&["ps", "--json", "--nats", &url]);
    assert!(ok, "{err}");
    let hosts: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hosts[0]["host"], "host-u", "{hosts}");
    assert_eq!(hosts[0]["cells"], json!([]), "{hosts}");
}

/// A deployed consumer reads `/length` of text.upper's replies: a release
/// that renames that field is refused before it takes traffic, naming the
/// consumer, its example and the field, and the old release keeps
/// serving; `cbs contract test` runs the same expectation; `--force` lets
/// the release out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_expectation_blocks_a_deploy_that_renames_a_field_it_reads() {
    let releases = releases();
    let renamed = cbs_tests::bundles::renamed();
    let server = NatsServer::start();
    let url = server.url();
    let _host = HostProcess::serve(&url, "host-x", &[], WATCH);
    deploy(&url, &releases.v2);
    let tmp = tempfile::tempdir().unwrap();
    let consumer = tmp.path().join("app.consumer");
    std::fs::create_dir_all(&consumer).unwrap();
    std::fs::copy(
        cbs_tests::faulty().join("test_faulty.wasm"),
        consumer.join("test_faulty.wasm"),
    )
    .unwrap();
    let manifest = r#"id = "app.consumer"
version = "0.1.0"
component = "test_faulty.wasm"

[capabilities]
calls = ["text.upper"]

[[expects."text.upper"]]
name = "upper-cases"
example = { text = "hi" }
reads = ["/text", "/length"]
"#;
    std::fs::write(consumer.join("cell.toml"), manifest).unwrap();
    deploy(&url, &pack(&consumer));
    let (ok, out, err) = run_cbs(&["contract", "test", UPPER, "--nats", &url, "-v"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("ok   expects app.consumer expects text.upper"),
        "{out}"
    );

    let (ok, out, err) = run_cbs(&["deploy", renamed.to_str().unwrap(), "--nats", &url]);
    assert!(!ok, "the renamed field must block the deploy: {out}{err}");
    assert!(
        err.contains("app.consumer (upper-cases) reads /length: not in the reply"),
        "{err}"
    );
    let bus = server.bus().await;
    assert_eq!(upper(&bus).await.unwrap(), "HI!", "0.2.0 still serves");
    let (ok, _, err) = run_cbs(&[
        "deploy",
        renamed.to_str().unwrap(),
        "--nats",
        &url,
        "--force",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("breaks what its consumers expect"), "{err}");
}

/// A host stopped by SIGTERM withdraws its status report: `cbs ls` no
/// longer lists it for the cell (a host that just vanished would stay
/// listed, as offline).
#[test]
fn a_host_withdraws_its_status_reports_when_it_stops() {
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let mut host = HostProcess::serve(&url, "leaving", &[], WATCH);
    deploy(&url, &releases.v1);
    let hosts = |listing: &Value| listing[0]["hosts"].as_array().unwrap().clone();
    let before = listing(&url);
    assert_eq!(before[0]["cell"], UPPER, "{before}");
    let reported = hosts(&before);
    assert_eq!(reported.len(), 1, "{before}");
    assert_eq!(reported[0]["host"], "leaving");
    assert_eq!(reported[0]["serving"], "0.1.0");

    host.terminate();
    let status = host.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}\n{}", host.log());
    let after = listing(&url);
    assert_eq!(after[0]["desired"], "0.1.0", "still desired: {after}");
    assert_eq!(hosts(&after), Vec::<Value>::new(), "{after}");
}

/// A scratch folder with a key pair, and a watching host that only runs
/// bundles signed by its key.
fn strict_host(url: &str) -> (tempfile::TempDir, HostProcess) {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    assert!(cbs(&["keygen", key.to_str().unwrap()]).status.success());
    let host = trusting(url, tmp.path(), &[]);
    (tmp, host)
}

/// A watching host that only runs bundles signed by the key in `dir`.
fn trusting(url: &str, dir: &Path, extra: &[&str]) -> HostProcess {
    let trust = format!("{}.pub", dir.join("key").display());
    let args = [&["--watch", "--trust", trust.as_str()][..], extra].concat();
    HostProcess::serve(url, "strict", &[], &args)
}

#[test]
fn a_host_that_requires_signatures_refuses_an_unsigned_release() {
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let _strict = strict_host(&url);
    let (ok, _, err) = run_cbs(&["deploy", releases.v1.to_str().unwrap(), "--nats", &url]);
    assert!(
        !ok,
        "an unsigned release must not deploy to a host that requires signatures"
    );
    assert!(
        err.contains("strict:") && err.contains("is not signed"),
        "{err}"
    );
}

/// A copy of `bundle` signed with the key in `dir` (see [`strict_host`]).
fn signed(dir: &Path, bundle: &Path) -> PathBuf {
    let mut read = Bundle::read(bundle).unwrap();
    read.sign(&cbs_host::bundle::KeyPair::read(&dir.join("key")).unwrap());
    let out = dir.join(format!(
        "signed-{}",
        bundle.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&out, read.to_bytes().unwrap()).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_requires_signatures_serves_a_release_signed_with_its_key() {
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let (tmp, _strict) = strict_host(&url);
    deploy(&url, &signed(tmp.path(), &releases.v1));
    assert_eq!(upper(&server.bus().await).await.unwrap(), "HI");
}

/// Anyone who can write the desired state could otherwise point hosts back
/// at an older signed release: an unsigned rollback is exactly that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_requires_signatures_goes_back_only_with_a_signed_rollback() {
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let (tmp, _strict) = strict_host(&url);
    deploy(&url, &signed(tmp.path(), &releases.v1));
    deploy(&url, &signed(tmp.path(), &releases.v2));
    let bus = server.bus().await;
    assert_eq!(upper(&bus).await.unwrap(), "HI!");

    let (ok, _, err) = run_cbs(&["rollback", UPPER, "--nats", &url, "--wait-ms", "20000"]);
    assert!(!ok, "an unsigned rollback must be refused");
    assert!(
        err.contains("strict:")
            && err.contains("refusing to move cell text.upper from 0.2.0 back to 0.1.0"),
        "{err}"
    );
    assert_eq!(upper(&bus).await.unwrap(), "HI!", "0.2.0 keeps serving");

    // A rollback signed by a key the host does not trust does no better.
    let stranger = tmp.path().join("stranger");
    assert!(cbs(&["keygen", stranger.to_str().unwrap()])
        .status
        .success());
    let (ok, _, err) = run_cbs(&[
        "rollback",
        UPPER,
        "--sign",
        stranger.to_str().unwrap(),
        "--nats",
        &url,
        "--wait-ms",
        "20000",
    ]);
    assert!(!ok, "a rollback signed by an untrusted key must be refused");
    assert!(err.contains("not one this host trusts"), "{err}");
    assert_eq!(upper(&bus).await.unwrap(), "HI!", "0.2.0 keeps serving");

    let key = tmp.path().join("key");
    let (ok, out, err) = run_cbs(&[
        "rollback",
        UPPER,
        "--sign",
        key.to_str().unwrap(),
        "--nats",
        &url,
    ]);
    assert!(ok, "a signed rollback: {out}{err}");
    assert_eq!(upper(&bus).await.unwrap(), "HI", "0.1.0 serves again");
}

/// `cbs deploy` of 0.1.0 signed, to a strict host that served 0.2.0:
/// refused (the refusal of any step back) unless `--sign-rollback` signs it.
fn deploy_back(url: &str, v1: &Path, sign: Option<&Path>) -> Result<(), String> {
    let mut args = vec!["deploy", v1.to_str().unwrap(), "--nats", url];
    args.extend(["--wait-ms", "20000"]);
    if let Some(key) = sign {
        args.extend(["--sign-rollback", key.to_str().unwrap()]);
    }
    let (ok, out, err) = run_cbs(&args);
    if ok {
        return Ok(());
    }
    assert!(
        err.contains("strict:")
            && err.contains("refusing to move cell text.upper from 0.2.0 back to 0.1.0"),
        "not the rollback refusal: {out}{err}"
    );
    Err(err)
}

/// Undeploying does not make a host forget what it served: 0.1.0 deployed
/// after 0.2.0 was served and undeployed is a step back like any other,
/// refused (the host serves nothing) unless a trusted key signs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_requires_signatures_goes_back_after_an_undeploy_only_with_a_signed_rollback() {
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let (tmp, strict) = strict_host(&url);
    let (v1, v2) = (
        signed(tmp.path(), &releases.v1),
        signed(tmp.path(), &releases.v2),
    );
    deploy(&url, &v2);
    let bus = server.bus().await;
    assert_eq!(upper(&bus).await.unwrap(), "HI!");
    let (ok, _, err) = run_cbs(&["undeploy", UPPER, "--nats", &url]);
    assert!(ok, "{err}");
    strict.wait_for_log("removed", Duration::from_secs(10));

    assert!(
        deploy_back(&url, &v1, None).is_err(),
        "0.1.0 without a grant"
    );
    let err = upper(&bus).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "serving nothing: {err:?}");

    let key = tmp.path().join("key");
    deploy_back(&url, &v1, Some(&key)).expect("0.1.0 with a signed rollback");
    assert_eq!(upper(&bus).await.unwrap(), "HI");
}

/// What a host served is kept in its data folder: restarted with the same
/// `--data-dir` on another nats-server (a lattice that never saw 0.2.0),
/// it still refuses to go back to 0.1.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_host_with_the_same_data_dir_refuses_an_older_release_than_it_served() {
    let releases = releases();
    let (tmp, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = tmp.path().join("key");
    assert!(cbs(&["keygen", key.to_str().unwrap()]).status.success());
    let (v1, v2) = (
        signed(tmp.path(), &releases.v1),
        signed(tmp.path(), &releases.v2),
    );
    let data_dir = ["--data-dir", data.path().to_str().unwrap()];
    {
        let server = NatsServer::start();
        let mut host = trusting(&server.url(), tmp.path(), &data_dir);
        deploy(&server.url(), &v2);
        host.terminate();
        assert!(host.wait_exit(Duration::from_secs(15)).success());
    }
    let server = NatsServer::start();
    let _host = trusting(&server.url(), tmp.path(), &data_dir);
    assert!(deploy_back(&server.url(), &v1, None).is_err());
    let err = upper(&server.bus().await).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "serving nothing: {err:?}");
}

/// The lattice's record of what was served (`cbs-served`), lowered by
/// whoever can write it, does not lower the host's own: 0.1.0 is still
/// refused after 0.2.0 was served and undeployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lowered_lattice_record_does_not_let_a_host_go_back() {
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let (tmp, strict) = strict_host(&url);
    let (v1, v2) = (
        signed(tmp.path(), &releases.v1),
        signed(tmp.path(), &releases.v2),
    );
    deploy(&url, &v2);
    let (ok, _, err) = run_cbs(&["undeploy", UPPER, "--nats", &url]);
    assert!(ok, "{err}");
    strict.wait_for_log("removed", Duration::from_secs(10));

    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let record = json!({"version": "0.1.0", "digest": Bundle::read(&v1).unwrap().digest()});
    js.get_key_value(cbs_host::deploy::SERVED)
        .await
        .unwrap()
        .put(UPPER, serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    assert!(
        deploy_back(&url, &v1, None).is_err(),
        "0.1.0 without a grant"
    );
}

/// Every change to the desired state is in the audit trail, with who made
/// it; `cbs audit` filters it; the trail cannot be purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploys_rollbacks_undeploys_and_host_trust_are_audited() {
    let releases = releases();
    let server = NatsServer::with_args(&["--user", "deployer", "--pass", "pw"]);
    let url = server.url();
    let auth = ["--nats-user", "deployer", "--nats-password", "pw"];
    let with_auth = |args: &[&str]| -> Vec<String> {
        let tail = ["--nats", url.as_str()];
        args.iter()
            .chain(&auth)
            .chain(&tail)
            .map(|s| s.to_string())
            .collect()
    };
    let host = HostProcess::serve(&url, "audited", &[], &[WATCH, &auth[..]].concat());
    for step in [
        vec!["deploy", releases.v1.to_str().unwrap()],
        vec!["deploy", releases.v2.to_str().unwrap()],
        vec!["rollback", UPPER],
        vec!["undeploy", UPPER],
    ] {
        let args = with_auth(&step);
        let (ok, out, err) = run_cbs(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{step:?}: {out}{err}");
    }
    let audit = |filter: &[&str]| -> Vec<Value> {
        let args = with_auth(&[&["audit", "--json"], filter].concat());
        let (ok, out, err) = run_cbs(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "cbs audit: {err}");
        serde_json::from_str(&out).unwrap()
    };
    let events = audit(&[]);
    let steps: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            (s("action"), s("cell"), s("version"))
        })
        .collect();
    let step = |a: &str, c: &str, v: &str| (a.to_owned(), c.to_owned(), v.to_owned());
    assert_eq!(
        steps,
        [
            step("trust", "*", ""),
            step("deploy", UPPER, "0.1.0"),
            step("deploy", UPPER, "0.2.0"),
            step("rollback", UPPER, "0.1.0"),
            step("undeploy", UPPER, "0.1.0"),
        ],
        "{events:#?}"
    );
    for e in &events {
        assert_eq!(e["user"], "user deployer", "{e}");
        assert!(e["client"].as_str().unwrap().contains("@127.0.0.1"), "{e}");
    }
    assert!(events[0]["detail"]
        .as_str()
        .unwrap()
        .contains("host audited: no --trust"));
    assert!(events[1]["detail"]
        .as_str()
        .unwrap()
        .contains("serving on 1 host(s)"));
    let v1 = Bundle::read(&releases.v1).unwrap().digest();
    assert_eq!(events[1]["digest"], v1.as_str());
    // Each deploy carries its contract against the release before it.
    assert_eq!(events[1]["contract"]["verdict"], "first", "{}", events[1]);
    assert_eq!(
        events[2]["contract"]["verdict"], "unchanged",
        "{}",
        events[2]
    );
    assert!(events[4]["detail"]
        .as_str()
        .unwrap()
        .contains("stopped on audited"));

    let deploys = audit(&["--action", "deploy", "--cell", UPPER]);
    assert_eq!(deploys.len(), 2, "{deploys:#?}");

    // Append-only: the stream refuses a purge.
    let client = async_nats::ConnectOptions::new()
        .user_and_password("deployer".into(), "pw".into())
        .connect(&url)
        .await
        .unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream(cbs_host::audit::STREAM)
        .await
        .unwrap();
    assert!(stream.purge().await.is_err(), "the audit trail was purged");
    drop(host);
}

/// The bundles bucket is outside input: an object larger than a bundle may
/// be is refused from its size, before it is read into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_object_over_the_size_limit_is_refused_before_it_is_read() {
    let releases = releases();
    let server = NatsServer::start();
    let bus = server.bus().await;
    let bytes = std::fs::read(&releases.v1).unwrap();
    let bundle = Bundle::from_bytes(&bytes).unwrap();
    let store = cbs_host::deploy::Store::open(bus.client()).await.unwrap();
    let object = store.put_bundle(&bundle, &bytes).await.unwrap();
    let release = cbs_host::deploy::Release {
        id: "r1".into(),
        version: "0.1.0".into(),
        digest: bundle.digest(),
        object,
        ..Default::default()
    };
    store.get_bundle(&release).await.expect("within the limit");
    let small = store.with_max_bundle_bytes(bytes.len() as u64 - 1);
    let err = format!("{:#}", small.get_bundle(&release).await.unwrap_err());
    assert!(
        err.contains(&format!(
            "is {} bytes, more than the {}",
            bytes.len(),
            bytes.len() - 1
        )),
        "{err}"
    );
}

/// A watching host that runs process cells from bundles, with its own
/// cache (so its venvs are its own) and offline pip.
fn process_host(url: &str, cache: &Path) -> HostProcess {
    let cache = cache.to_str().unwrap();
    let flags = [WATCH, &["--allow-process-bundles", "--cache-dir", cache]].concat();
    HostProcess::serve_with_env(url, "process-host", &flags, offline_pip())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bundled_python_cell_deploys_and_hot_swaps_on_the_venv_of_its_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let host = process_host(&url, &tmp.path().join("cache"));
    let bus = server.bus().await;
    let shout =
        || async { call_json(&bus, LOCKED, json!({"word": "hi"}), Duration::from_secs(10)).await };

    deploy(&url, &pack(&locked_python_cell(tmp.path(), "0.1.0")));
    assert_eq!(
        shout().await.unwrap(),
        json!({"shout": "HI!", "version": "0.1.0"})
    );
    deploy(&url, &pack(&locked_python_cell(tmp.path(), "0.2.0")));
    assert_eq!(
        shout().await.unwrap(),
        json!({"shout": "HI!", "version": "0.2.0"})
    );

    assert_eq!(
        host.log().matches("deployed: serving").count(),
        2,
        "{}",
        host.log()
    );
    assert_eq!(
        host.log().matches("building the Python venv").count(),
        1,
        "both versions share one lock, so one venv: {}",
        host.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bundled_sidecar_deploys_and_hot_swaps() {
    let tmp = tempfile::tempdir().unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let host = process_host(&url, &tmp.path().join("cache"));
    let bus = server.bus().await;
    let release = || async {
        let reply = call_json(
            &bus,
            SIDECAR,
            json!({"action": "env"}),
            Duration::from_secs(10),
        );
        reply.await.unwrap()["env"]["RELEASE"].clone()
    };

    deploy(&url, &pack(&bundled_sidecar(tmp.path(), 1, None)));
    assert_eq!(release().await, "1");
    deploy(&url, &pack(&bundled_sidecar(tmp.path(), 2, None)));
    assert_eq!(release().await, "2");
    assert_eq!(
        host.log().matches("deployed: serving").count(),
        2,
        "{}",
        host.log()
    );
}

/// Regression (#26, 8): a deploy event a deployer made up (another
/// client, a trusted key's id, a back-dated time) was listed by `cbs audit`
/// like a genuine one. A deployer signing with its NATS nkey and a release
/// signed by a trusted key verify; the forgery is flagged and `cbs audit`
/// exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cbs_audit_verifies_signed_events_and_flags_a_forged_one() {
    let releases = releases();
    let deployer = nkeys::KeyPair::new_user();
    let seed = deployer.seed().unwrap();
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::with_config(&format!(
        "jetstream {{ store_dir: {:?} }}\nauthorization {{ users = [ {{ nkey: {} }} ] }}\n",
        store.path(),
        deployer.public_key()
    ));
    let url = server.url();
    let login = ["--nats-nkey", seed.as_str(), "--nats", url.as_str()];
    let (tmp, _host) = {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("key");
        assert!(cbs(&["keygen", key.to_str().unwrap()]).status.success());
        let trust = format!("{}.pub", key.display());
        let args = ["--watch", "--trust", &trust, "--nats-nkey", &seed];
        (tmp, HostProcess::serve(&url, "audited", &[], &args))
    };
    let v1 = signed(tmp.path(), &releases.v1);
    let (ok, out, err) = run_cbs(&[&["deploy", v1.to_str().unwrap()][..], &login].concat());
    assert!(ok && !err.contains("audit"), "{out}{err}");

    let trust = format!("{}.pub", tmp.path().join("key").display());
    let audit = |extra: &[&str]| {
        let (ok, out, err) = run_cbs(&[&["audit", "--json"][..], extra, &login].concat());
        (ok, serde_json::from_str::<Vec<Value>>(&out).unwrap(), err)
    };
    let (ok, events, err) = audit(&["--trust", &trust]);
    assert!(ok, "{err}");
    let checks: Vec<&str> = events
        .iter()
        .map(|e| e["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        ["verified", "verified"],
        "trust and deploy: {events:#?}"
    );

    // The forgery: the genuine deploy with another client, back-dated a day.
    let mut forged = events[1].clone();
    let map = forged.as_object_mut().unwrap();
    for field in ["stored_at_ms", "check", "problems"] {
        map.remove(field);
    }
    map.insert("client".into(), "4242@10.66.66.66".into());
    let day_ago = map["at_ms"].as_u64().unwrap() - 86_400_000;
    map.insert("at_ms".into(), day_ago.into());
    let client = async_nats::ConnectOptions::with_nkey(seed.clone())
        .connect(&url)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = format!("cbs-audit.deploy.{UPPER}");
    js.publish(subject, forged.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();

    let (ok, events, err) = audit(&[]);
    assert!(!ok, "cbs audit must fail on a forged event");
    assert!(err.contains("1 audit event(s) do not verify"), "{err}");
    assert_eq!(events[2]["check"], "bad", "{events:#?}");
    let problems = events[2]["problems"].to_string();
    assert!(
        problems.contains("before the server stored it"),
        "{problems}"
    );
    assert!(problems.contains("writer signature"), "{problems}");
}
