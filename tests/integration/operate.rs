//! Operating a host: Prometheus metrics, health and readiness.

use std::time::{Duration, Instant};

use cbs_host::bus::BodyBus;
use cbs_host::envelope::Envelope;
use cbs_host::outbound::to_message;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{http_get, HostProcess};
use cbs_tests::{greet, repo, temp_cell, POLL};
use serde_json::json;
use serde_json::value::RawValue;

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

async fn send(bus: &dyn BodyBus, cell: &str, payload: serde_json::Value) -> Envelope {
    let envelope = Envelope::new(
        format!("cbs.{cell}"),
        RawValue::from_string(payload.to_string()).unwrap(),
    );
    let reply = bus
        .request(to_message(&envelope), Duration::from_secs(5))
        .await
        .unwrap();
    Envelope::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness() {
    let server = NatsServer::start();
    // A sidecar that takes 1.5 s to start keeps the host "not ready" meanwhile.
    let reference = repo().join("tests/sidecars/reference");
    let slow = temp_cell(&format!(
        "id = \"test.slow_start\"\nversion = \"0.1.0\"\nruntime = \"sidecar\"\n\
         [sidecar]\ncommand = [\"python3\", {:?}]\nenv = {{ REF_SLOW_START_MS = \"1500\" }}\n",
        reference.join("reference.py").display().to_string()
    ));
    let caller = temp_cell(
        "id = \"test.caller\"\nversion = \"0.1.0\"\ncomponent = \"{faulty}/test_faulty.wasm\"\n\
         [capabilities]\ncalls = [\"test.flaky\"]\n[policy.\"test.flaky\".breaker]\nfailures = 2\ncooldown_ms = 60000\n",
    );
    let flaky = temp_cell(
        "id = \"test.flaky\"\nversion = \"0.1.0\"\ncomponent = \"{faulty}/test_faulty.wasm\"\n",
    );
    let cells = [
        greet(),
        caller.path().into(),
        flaky.path().into(),
        slow.path().into(),
    ];
    let host = HostProcess::spawn(
        &server.url(),
        "host-ops",
        &cells,
        &["--metrics", "127.0.0.1:0"],
    );
    host.wait_for_log("serving /metrics", Duration::from_secs(30));
    let log = host.log();
    let addr = log
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "not ready while the sidecar starts: {body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(&addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", host.log());
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(http_get(&addr, "/nope").0, 404);

    let client = server.bus().await;
    for name in ["Ada", "Grace", "Edsger"] {
        assert!(send(&client, "logic.greet", json!({"name": name}))
            .await
            .error
            .is_none());
    }
    assert!(send(&client, "logic.greet", json!({"name": 1}))
        .await
        .error
        .is_some());
    let panic = json!({"action": "call", "cell": "test.flaky", "payload": {"action": "panic"}});
    for _ in 0..2 {
        send(&client, "test.caller", panic.clone()).await;
    }

    let m = scrape(&addr);
    let greet = [("cell", "logic.greet")];
    assert_eq!(sample(&m, "cbs_cell_requests_total", &greet), Some(4.0));
    assert_eq!(
        sample(
            &m,
            "cbs_cell_errors_total",
            &[("cell", "logic.greet"), ("code", "contract_violation")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "cbs_cell_latency_seconds", &greet),
        Some(4.0),
        "histogram count"
    );
    assert_eq!(sample(&m, "cbs_cell_in_flight", &greet), Some(0.0));
    assert!(sample(&m, "cbs_cell_instances", &greet).unwrap() >= 1.0);
    assert_eq!(
        sample(&m, "cbs_cell_instances", &[("cell", "test.slow_start")]),
        Some(1.0),
        "one live process"
    );
    let breaker = [("cell", "test.caller"), ("target", "test.flaky")];
    assert_eq!(
        sample(&m, "cbs_breaker_state", &breaker),
        Some(2.0),
        "open after 2 failures"
    );
    assert_eq!(sample(&m, "cbs_bus_reconnects_total", &[]), Some(0.0));

    // Counters move as requests flow.
    send(&client, "logic.greet", json!({"name": "Barbara"})).await;
    assert_eq!(
        sample(&scrape(&addr), "cbs_cell_requests_total", &greet),
        Some(5.0)
    );
}
