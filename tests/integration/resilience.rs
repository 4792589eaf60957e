//! Calls between cells under policy: circuit breakers, deadlines that travel
//! with the flow, retries only for idempotent calls, and seeded chaos (in
//! `cell.toml`, and from `cbs-host run --chaos FILE`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cbs_host::bus::local::LocalBus;
use cbs_host::chaos::ChaosSpec;
use cbs_host::envelope::{header, Envelope, ErrorCode};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs_host, HostProcess};
use cbs_tests::{call_json, faulty, greet, wait_until, CellToml, TestHost};
use serde_json::value::RawValue;
use serde_json::{json, Value};

fn call_through(target: &str, payload: Value) -> Value {
    json!({"action": "call", "cell": target, "payload": payload})
}

fn requests(host: &TestHost, id: &str) -> u64 {
    host.cell(id).stats.requests()
}

#[tokio::test]
async fn a_failing_target_opens_the_breaker_which_probes_and_closes() {
    let caller = CellToml::faulty("test.caller")
        .calls(&["test.flaky"])
        .policy("test.flaky", |p| {
            p.breaker.failures = 3;
            p.breaker.cooldown_ms = 300;
        })
        .write();
    let flaky = CellToml::faulty("test.flaky").write();
    let host = TestHost::local(&[caller.path().to_path_buf(), flaky.path().to_path_buf()]).await;
    let panic = call_through("test.flaky", json!({"action": "panic"}));
    for _ in 0..3 {
        let err = host.call("test.caller", panic.clone()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::CellFailed, "{err}");
    }
    // Open: fails at once, without reaching the target.
    let echo = call_through("test.flaky", json!({"action": "echo", "value": 1}));
    let err = host.call("test.caller", echo.clone()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::CircuitOpen, "{err}");
    assert!(
        err.message.contains("circuit to test.flaky is open"),
        "{err}"
    );
    assert_eq!(
        requests(&host, "test.flaky"),
        3,
        "the open breaker kept the call away"
    );

    // After the cool-down one probe goes through; its success closes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match host.call("test.caller", echo.clone()).await {
            Ok(_) => break,
            Err(e) => assert!(
                e.code == ErrorCode::CircuitOpen && Instant::now() < deadline,
                "{e}"
            ),
        }
        tokio::time::sleep(cbs_tests::POLL).await;
    }
    assert_eq!(requests(&host, "test.flaky"), 4);
    // Closed again: one failure is a plain failure, not an open circuit.
    let err = host.call("test.caller", panic).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::CellFailed, "{err}");
}

/// edge → test.d1 → test.d2 → test.d3 (sleeps 2 s), with a 50 ms budget.
async fn deadline_case(calls_via_bus: bool) {
    let hop = |id: &str, next: &[&str]| {
        CellToml::faulty(id)
            .calls(next)
            .limits(|l| l.timeout_ms = 5000)
            .write()
    };
    let d1 = hop("test.d1", &["test.d2"]);
    let d2 = hop("test.d2", &["test.d3"]);
    let d3 = hop("test.d3", &[]);
    let builder = cbs_tests::builder(Arc::new(LocalBus::new())).local_calls(!calls_via_bus);
    let dirs = [&d1, &d2, &d3].map(|d| d.path().to_path_buf());
    let host = TestHost::start(builder, &dirs).await;
    let body = host.body();
    let payload = call_through(
        "test.d2",
        call_through("test.d3", json!({"action": "sleep", "ms": 2000})),
    );
    let mut envelope = Envelope::new(
        "cbs.test.d1",
        RawValue::from_string(payload.to_string()).unwrap(),
    );
    envelope
        .headers
        .insert(header::BUDGET_MS.into(), "50".into());
    let started = Instant::now();
    let reply = cbs_host::call::request(body.bus().as_ref(), &envelope, Duration::from_secs(10))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let err = reply.error.expect("a timeout");
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    // About 50 ms, certainly not the hops' own 5 s limits or the 2 s sleep.
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    // Hop 3's work was cancelled, not left running for the rest of its 2 s.
    let d3 = body.cell("test.d3").unwrap();
    wait_until(Duration::from_millis(500), "hop 3 to stop", || {
        d3.in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_travels_with_the_flow_and_cancels_the_last_hop() {
    deadline_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_travels_over_the_bus_too() {
    deadline_case(true).await;
}

#[tokio::test]
async fn only_idempotent_calls_are_retried_with_backoff_and_a_bound() {
    let retrying = CellToml::faulty("test.retrying")
        .calls(&["test.down"])
        .policy("test.down", |p| {
            p.idempotent = true;
            p.retries = 3;
            p.backoff_ms = 20;
        })
        .write();
    let plain = CellToml::faulty("test.plain")
        .calls(&["test.down"])
        .policy("test.down", |p| p.retries = 3)
        .write();
    let down = CellToml::faulty("test.down")
        .chaos(ChaosSpec {
            error_rate: 1.0,
            seed: 1,
            ..ChaosSpec::default()
        })
        .write();
    let host = TestHost::local(&[
        retrying.path().into(),
        plain.path().into(),
        down.path().into(),
    ])
    .await;
    let echo = call_through("test.down", json!({"action": "echo", "value": 1}));

    let started = Instant::now();
    let err = host.call("test.retrying", echo.clone()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert!(err.message.contains("chaos"), "{err}");
    assert_eq!(
        requests(&host, "test.down"),
        4,
        "one attempt and exactly 3 retries"
    );
    // Backoff 20 ms doubling, jitter ≥ 0.5×: at least 10 + 20 + 40 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(70),
        "{:?}",
        started.elapsed()
    );

    let err = host.call("test.plain", echo).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert_eq!(
        requests(&host, "test.down"),
        5,
        "a call not marked idempotent is not retried"
    );
}

#[tokio::test]
async fn with_30_percent_injected_errors_and_retries_99_percent_succeed() {
    let caller = CellToml::faulty("test.edge")
        .calls(&["logic.greet"])
        .policy("logic.greet", |p| {
            p.idempotent = true;
            p.retries = 4;
            p.backoff_ms = 0;
            p.breaker.failures = 50;
            p.breaker.ratio = 0.95;
        })
        .write();
    let chaos_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        chaos_file.path(),
        "[\"logic.greet\"]\nerror_rate = 0.3\nseed = 42\n",
    )
    .unwrap();
    let chaos: std::collections::HashMap<String, cbs_host::chaos::ChaosSpec> =
        toml::from_str(&std::fs::read_to_string(chaos_file.path()).unwrap()).unwrap();
    let builder = cbs_tests::builder(Arc::new(LocalBus::new())).chaos(chaos);
    let host = TestHost::start(builder, &[greet(), caller.path().to_path_buf()]).await;
    let request = call_through("logic.greet", json!({"name": "Ada"}));
    let mut ok = 0;
    for _ in 0..1000 {
        if host.call("test.edge", request.clone()).await.is_ok() {
            ok += 1;
        }
    }
    let greet_errors = host.cell("logic.greet").stats.to_json()["errors_by_code"]["unavailable"]
        .as_u64()
        .unwrap();
    assert!(
        greet_errors > 250,
        "chaos injected about 30% errors: {greet_errors}"
    );
    assert!(ok >= 990, "only {ok} of 1000 succeeded");
}

#[tokio::test]
async fn policies_and_chaos_are_checked_at_load() {
    let host = TestHost::idle(None).await;
    let body = host.body();
    let dir = CellToml::faulty("test.bad")
        .policy("logic.greet", |p| p.retries = 1)
        .write();
    let err = format!("{:#}", body.load(dir.path()).await.err().unwrap());
    assert!(err.contains("may not call"), "{err}");
    let dir = CellToml::faulty("test.bad")
        .chaos(ChaosSpec {
            error_rate: 1.5,
            ..ChaosSpec::default()
        })
        .write();
    let err = format!("{:#}", body.load(dir.path()).await.err().unwrap());
    assert!(err.contains("error_rate"), "{err}");
}

/// A `--chaos FILE` for `cbs-host run`.
fn chaos_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbs_host_run_chaos_file_fails_every_message_of_the_cell_it_names() {
    let chaos = chaos_file("[\"logic.greet\"]\nerror_rate = 1.0\nseed = 7\n");
    let server = NatsServer::start();
    let chaos_arg = chaos.path().to_str().unwrap();
    let host = HostProcess::serve(
        &server.url(),
        "host-chaos",
        &[greet(), faulty()],
        &["--chaos", chaos_arg],
    );
    let client = server.bus().await;
    let timeout = Duration::from_secs(5);
    for _ in 0..20 {
        let err = call_json(&client, "logic.greet", json!({"name": "Ada"}), timeout)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
        assert!(
            err.message.contains("chaos: injected failure"),
            "{err}\n{}",
            host.log()
        );
    }
    // A cell the file does not name is untouched.
    let echo = call_json(
        &client,
        "test.faulty",
        json!({"action": "echo", "value": 1}),
        timeout,
    )
    .await
    .unwrap();
    assert_eq!(echo["value"], 1);
}

#[test]
fn cbs_host_run_refuses_a_chaos_file_with_a_rate_above_1_naming_the_cell_and_rule() {
    let chaos = chaos_file("[\"logic.greet\"]\nerror_rate = 1.5\n");
    let greet = greet().display().to_string();
    let args = [
        "run",
        "--chaos",
        chaos.path().to_str().unwrap(),
        "--start",
        "logic.greet",
        "--input",
        r#"{"name":"Ada"}"#,
        &greet,
    ];
    let out = cbs_host(&args, "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chaos for logic.greet"), "{stderr}");
    assert!(stderr.contains("error_rate"), "{stderr}");
}
