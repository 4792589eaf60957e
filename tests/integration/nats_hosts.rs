//! Many `cbs-host` processes serving as one over a real nats-server.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbs_host::bus::nats::{NatsBus, NatsOptions};
use cbs_host::bus::BodyBus;
use cbs_host::discovery;
use cbs_host::envelope::codec::to_message;
use cbs_host::envelope::{BusError, Envelope, ErrorCode};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, cbs_host, greet_flow_via, HostProcess};
use cbs_tests::{cell, faulty, greet, CellToml, TestHost, POLL};
use serde_json::value::RawValue;
use serde_json::{json, Value};

async fn call(
    bus: &dyn BodyBus,
    cell_id: &str,
    payload: Value,
    timeout: Duration,
) -> Result<Value, BusError> {
    cbs_tests::call_json(bus, cell_id, payload, timeout).await
}

async fn greet_ok(bus: &dyn BodyBus) -> Result<(), BusError> {
    let reply = call(
        bus,
        "logic.greet",
        json!({"name": "Ada"}),
        Duration::from_secs(2),
    )
    .await?;
    assert_eq!(reply["greeting"], "Hello, Ada!");
    Ok(())
}

/// Requests that reached one cell over the bus, per host, from `$SRV.STATS`.
async fn served_by_host(bus: &NatsBus, cell_id: &str) -> Vec<(String, u64)> {
    let hosts = discovery::list(
        bus.client(),
        Duration::from_millis(300),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    hosts
        .into_iter()
        .filter_map(|h| {
            let n = h.cells.iter().find(|c| c.id == cell_id)?.bus_requests;
            Some((h.host, n))
        })
        .collect()
}

/// Host A serves logic.greet and test.faulty, host B only logic.greet: when
/// test.faulty has no responders, the server has dropped host A.
fn two_hosts(url: &str) -> (HostProcess, HostProcess) {
    let a = HostProcess::serve(url, "host-a", &[greet(), faulty()], &[]);
    let b = HostProcess::serve(url, "host-b", &[greet()], &[]);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_share_the_load() {
    let server = NatsServer::start();
    let _hosts = two_hosts(&server.url());
    let bus = Arc::new(server.bus().await);

    // 1,000 requests, 16 in flight: all answered, both hosts served a share.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..1000 / 16 + 1 {
                greet_ok(bus.as_ref()).await.unwrap();
                ok += 1;
            }
            ok
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert!(answered >= 1000);
    let shares = served_by_host(&bus, "logic.greet").await;
    assert_eq!(shares.len(), 2, "{shares:?}");
    assert!(
        shares.iter().all(|(_, n)| *n > 0),
        "both hosts served a share: {shares:?}"
    );
    assert_eq!(
        shares.iter().map(|(_, n)| n).sum::<u64>() as usize,
        answered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_under_load_fails_only_in_flight_requests_and_the_other_host_takes_over() {
    let server = NatsServer::start();
    let (mut a, _b) = two_hosts(&server.url());
    let bus = Arc::new(server.bus().await);

    // Under load, kill host A.
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (bus, done, stop) = (bus.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    outcomes.push((started, greet_ok(bus.as_ref()).await));
                    done.fetch_add(1, Ordering::Relaxed);
                }
                outcomes
            })
        })
        .collect();
    cbs_tests::wait_until(Duration::from_secs(10), "load to build up", || {
        done.load(Ordering::Relaxed) >= 200
    })
    .await;
    a.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call(
            bus.as_ref(),
            "test.faulty",
            json!({"action": "count"}),
            Duration::from_millis(500),
        )
        .await
        {
            Err(e) if e.code == ErrorCode::NotFound => break,
            _ => assert!(Instant::now() < deadline, "the server never dropped host A"),
        }
        tokio::time::sleep(POLL).await;
    }
    let dropped = Instant::now();
    // In-flight requests may have failed, but only with a typed error, and
    // only those in flight: each worker has one request at a time, so at
    // most one failure per worker, and none started after the server
    // dropped host A (host B answers those).
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for task in load {
        let failures: Vec<_> = task
            .await
            .unwrap()
            .into_iter()
            .filter_map(|(started, outcome)| Some((started, outcome.err()?)))
            .collect();
        assert!(
            failures.len() <= 1,
            "one worker failed {}: {failures:?}",
            failures.len()
        );
        for (started, e) in failures {
            assert!(
                matches!(e.code, ErrorCode::Timeout | ErrorCode::Unavailable),
                "{e}"
            );
            assert!(started < dropped, "failed after host A was gone: {e}");
            failed += 1;
        }
    }
    assert!(failed <= 8, "{failed} failures, more than the 8 in flight");
    // Every request after the kill succeeds.
    for _ in 0..300 {
        greet_ok(bus.as_ref())
            .await
            .expect("host B serves everything after the kill");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reconnects_after_nats_restarts() {
    let mut server = NatsServer::start();
    let host = HostProcess::serve(&server.url(), "host-r", &[greet()], &[]);
    let bus = server.bus().await;
    greet_ok(&bus).await.unwrap();

    let restarted = Instant::now();
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while greet_ok(&bus).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the host never served again:\n{}",
            host.log()
        );
        tokio::time::sleep(POLL).await;
    }
    let interruption = restarted.elapsed();
    eprintln!(
        "serving interrupted for {} ms by a nats-server restart",
        interruption.as_millis()
    );
    host.wait_for_log("reconnected to NATS", Duration::from_secs(5));
    assert!(
        host.log().contains("disconnected from NATS"),
        "{}",
        host.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greeting_chain_runs_across_a_cluster_of_two_servers() {
    let (a, b) = NatsServer::clustered();
    let _greeter = HostProcess::serve(&b.url(), "host-on-b", &[greet()], &[]);
    // Wait until server a knows, through its route, that b serves logic.greet.
    let bus_a = a.bus().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while greet_ok(&bus_a).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "logic.greet never became reachable through server a"
        );
        tokio::time::sleep(POLL).await;
    }
    let prompt = cell("cells/io.prompt_name").display().to_string();
    let print = cell("cells/io.print_greeting").display().to_string();
    let args = [
        "run",
        "--nats",
        &a.url(),
        "--start",
        "io.prompt_name",
        &prompt,
        &print,
    ];
    let out = cbs_host(&args, "Ada\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, Ada!\n");
}

/// `cbs call CELL PAYLOAD --nats URL`: (exit code, stdout, stderr).
fn cbs_call(url: &str, cell_id: &str, payload: &str) -> (Option<i32>, String, String) {
    let out = cbs(&["call", cell_id, payload, "--nats", url]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cbs_call_prints_the_reply_payload() {
    let server = NatsServer::start();
    let _host = HostProcess::serve(&server.url(), "host-call", &[greet()], &[]);
    let (code, stdout, stderr) = cbs_call(&server.url(), "logic.greet", r#"{"name":"Ada"}"#);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), r#"{"greeting":"Hello, Ada!"}"#);
}

#[test]
fn cbs_call_exits_1_with_the_contract_violation() {
    let server = NatsServer::start();
    let _host = HostProcess::serve(&server.url(), "host-call", &[greet()], &[]);
    let (code, _, stderr) = cbs_call(&server.url(), "logic.greet", r#"{"name":5}"#);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("contract_violation") && stderr.contains("/name"),
        "{stderr}"
    );
}

#[test]
fn cbs_call_names_a_missing_cell() {
    let server = NatsServer::start();
    let _host = HostProcess::serve(&server.url(), "host-call", &[greet()], &[]);
    let (code, _, stderr) = cbs_call(&server.url(), "logic.missing", "{}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("nothing serves cell logic.missing"),
        "{stderr}"
    );
}

/// Two hosts for `cbs ps`: host-ps-a serves logic.greet, host-ps-b
/// logic.greet and test.faulty.
fn ps_hosts(url: &str) -> [HostProcess; 2] {
    [
        HostProcess::serve(url, "host-ps-a", &[greet()], &[]),
        HostProcess::serve(url, "host-ps-b", &[greet(), faulty()], &[]),
    ]
}

#[test]
fn cbs_ps_lists_hosts_cells_and_versions() {
    let server = NatsServer::start();
    let url = server.url();
    let _hosts = ps_hosts(&url);
    let out = cbs(&["ps", "--nats", &url]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "host-ps-a",
        "host-ps-b",
        "logic.greet",
        "test.faulty",
        "0.1.0",
    ] {
        assert!(
            table.contains(expected),
            "{expected:?} missing from\n{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbs_ps_json_shows_schemas_and_counts_requests() {
    let server = NatsServer::start();
    let url = server.url();
    let _hosts = ps_hosts(&url);
    // Two requests: one answered, one refused by the contract.
    let client = server.bus().await;
    greet_ok(&client).await.unwrap();
    let refused = call(
        &client,
        "logic.greet",
        json!({"name": 5}),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(refused.unwrap_err().code, ErrorCode::ContractViolation);

    let out = cbs(&["ps", "--json", "--nats", &url]);
    let hosts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hosts = hosts.as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    let b = hosts.iter().find(|h| h["host"] == "host-ps-b").unwrap();
    let greet = b["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "logic.greet")
        .unwrap();
    assert_eq!(greet["input_schema"], "logic.greet/request@1");
    // A pooled cell keeps one warm instance ([scale] min) when idle.
    assert!(greet["instances"].as_u64().unwrap() >= 1, "{greet}");
    let requests: u64 = hosts
        .iter()
        .flat_map(|h| h["cells"].as_array().unwrap())
        .filter(|c| c["id"] == "logic.greet")
        .map(|c| c["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 2, "the two requests above were counted");
}

/// Anyone may answer on `$SRV`: a flood of replies to one discovery
/// question is cut at `discovery::MAX_REPLIES`, and the answer still comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_discovery_replies_is_cut_at_the_bound() {
    use futures_util::StreamExt as _;
    let server = NatsServer::start();
    let flooder = server.bus().await.client().clone();
    let mut questions = flooder.subscribe("$SRV.INFO.cbs").await.unwrap();
    flooder.flush().await.unwrap();
    let flood = discovery::MAX_REPLIES + 100;
    let answering = tokio::spawn(async move {
        let question = questions.next().await.expect("a discovery question");
        let reply = question.reply.expect("a reply subject");
        for i in 0..flood {
            let info = json!({
                "type": "io.nats.micro.v1.info_response", "name": "cbs",
                "id": format!("forged-{i}"), "description": "", "version": "1.0.0",
                "metadata": {}, "endpoints": [],
            });
            let payload = serde_json::to_vec(&info).unwrap();
            flooder
                .publish(reply.clone(), payload.into())
                .await
                .unwrap();
        }
        flooder.flush().await.unwrap();
    });
    let asker = server.bus().await;
    let hosts = discovery::list(
        asker.client(),
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    answering.await.unwrap();
    assert_eq!(hosts.len(), discovery::MAX_REPLIES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_messages_and_exits_zero() {
    let server = NatsServer::start();
    let slow = CellToml::faulty("test.slow")
        .limits(|l| {
            l.timeout_ms = 10_000;
            l.concurrency = 8;
        })
        .write();
    let mut host = HostProcess::serve(
        &server.url(),
        "host-drain",
        &[slow.path().to_path_buf()],
        &[],
    );
    let bus = Arc::new(server.bus().await);
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                call(
                    bus.as_ref(),
                    "test.slow",
                    json!({"action": "sleep", "ms": 700}),
                    Duration::from_secs(10),
                )
                .await
            })
        })
        .collect();
    host.wait_for_count("sleeping", 4, Duration::from_secs(10));
    host.terminate();
    for request in in_flight {
        let reply = request
            .await
            .unwrap()
            .expect("an in-flight request completes during the drain");
        assert_eq!(reply["value"], 700);
    }
    let status = host.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}\n{}", host.log());
    assert!(host.log().contains("drained"), "{}", host.log());
}

#[test]
fn user_and_password_auth_lets_the_right_password_in_and_refuses_others_fast() {
    let server = NatsServer::with_args(&["--user", "cbs", "--pass", "s3cret"]);
    let ok = greet_flow_via(
        &server.url(),
        &["--nats-user", "cbs", "--nats-password", "s3cret"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let started = Instant::now();
    let bad = greet_flow_via(
        &server.url(),
        &["--nats-user", "cbs", "--nats-password", "wrong"],
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails fast, not after retries"
    );
    let none = greet_flow_via(&server.url(), &[]);
    assert_eq!(none.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_lets_the_right_token_in_and_refuses_others_clearly() {
    let server = NatsServer::with_args(&["--auth", "t0ken"]);
    let ok = greet_flow_via(&server.url(), &["--nats-token", "t0ken"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = greet_flow_via(&server.url(), &["--nats-token", "nope"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused the credentials"), "{stderr}");

    // A client library user gets the same clear error.
    let err = NatsBus::connect(&NatsOptions {
        urls: server.url(),
        name: "t".into(),
        token: Some("nope".into()),
        ..NatsOptions::default()
    })
    .await
    .err()
    .unwrap();
    assert_eq!(err.code, ErrorCode::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_nats_gets_the_same_typed_replies() {
    let server = NatsServer::start();
    let host = cbs_tests::TestHost::on(Arc::new(server.bus().await), &[greet()]).await;
    let client = server.bus().await;
    let reply = cbs_tests::request_raw(&client, "cbs.logic.greet", b"{not json").await;
    let err = reply.error.expect("an error reply");
    assert_eq!(err.code, ErrorCode::InvalidInput, "{err}");
    let err = call(
        &client,
        "logic.greet",
        json!({"name": 1}),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ContractViolation);
    assert!(err.message.contains("/name"), "{err}");
    greet_ok(&client).await.unwrap();
    // Failures are also visible to generic NATS tools through the micro headers.
    let envelope = Envelope::new(
        "cbs.logic.greet",
        RawValue::from_string(r#"{"name":1}"#.into()).unwrap(),
    );
    let raw = client
        .request(to_message(&envelope), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(raw.header("Nats-Service-Error-Code"), Some("422"));
    assert_eq!(
        host.cell("logic.greet").stats.to_json()["errors_by_code"]["contract_violation"],
        2
    );
}

/// test.faulty calls logic.greet on the same host, in process or (with
/// `via_bus`) over NATS.
async fn call_within_one_host(via_bus: bool) {
    let server = NatsServer::start();
    let builder = cbs_tests::builder(Arc::new(server.bus().await)).local_calls(!via_bus);
    let host = TestHost::start(builder, &[greet(), faulty()]).await;
    let body = host.body();
    let client = server.bus().await;
    let request = json!({"action": "call", "cell": "logic.greet", "payload": {"name": "Ada"}});
    let reply = call(&client, "test.faulty", request, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply["value"]["greeting"], "Hello, Ada!");
    // CBS counts the call either way; the NATS endpoint only sees it
    // when it went over the bus.
    let greet_cell = body.cell("logic.greet").unwrap();
    assert_eq!(greet_cell.stats.to_json()["requests"], 1);
    let over_nats = served_by_host(&server.bus().await, "logic.greet").await;
    assert_eq!(
        over_nats,
        vec![("cbs-test".to_owned(), u64::from(via_bus))],
        "via_bus = {via_bus}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_cells_of_one_host_stay_in_process() {
    call_within_one_host(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_calls_via_bus_calls_between_cells_of_one_host_go_over_nats() {
    call_within_one_host(true).await;
}

/// `cbs bench logic.greet` with `payload` at concurrency `c` for `secs`
/// seconds, JSON report.
fn bench(url: &str, payload: &str, c: &str, secs: &str, warmup: &str) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), payload).unwrap();
    cbs(&[
        "bench",
        "logic.greet",
        "--payload",
        file.path().to_str().unwrap(),
        "-c",
        c,
        "-d",
        secs,
        "--warmup",
        warmup,
        "--json",
        "--nats",
        url,
    ])
}

#[test]
fn cbs_bench_reports_throughput_and_latency() {
    let server = NatsServer::start();
    let url = server.url();
    let _host = HostProcess::serve(&url, "host-bench", &[greet()], &[]);
    let out = bench(&url, r#"{"name":"Ada"}"#, "4", "0.5", "0.1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["concurrency"], 4);
    let r = &report["report"];
    assert!(r["requests"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(r["errors"], 0);
    assert!(r["p50_us"].as_f64().unwrap() > 0.0 && r["p50_us"].as_f64() <= r["p99_us"].as_f64());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("req/s"),
        "progress is shown"
    );
}

#[test]
fn cbs_bench_with_a_payload_breaking_the_contract_counts_the_errors_and_exits_1() {
    let server = NatsServer::start();
    let url = server.url();
    let _host = HostProcess::serve(&url, "host-bench", &[greet()], &[]);
    // Every request fails, typed.
    let out = bench(&url, r#"{"name":5}"#, "2", "0.3", "0");
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["report"]["errors_by_code"]["contract_violation"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );
}
