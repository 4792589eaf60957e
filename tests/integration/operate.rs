//! Operating a host: Prometheus metrics, health and readiness, each served
//! by a real `cbs-host` process on a real nats-server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cbs_host::bus::BodyBus;
use cbs_host::envelope::Envelope;
use cbs_tests::cell_toml::reference_dir;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{http_get, HostProcess};
use cbs_tests::{call_json, envelope_to, greet, wait_until, CellToml, POLL};
use serde_json::json;

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
    cbs_host::call::request(bus, &envelope_to(cell, &payload), Duration::from_secs(5))
        .await
        .unwrap()
}

/// A `cbs-host` serving `cells` with `--metrics 127.0.0.1:0`, and the
/// address it bound (from its log), as soon as it listens: its cells may
/// still be starting.
fn metrics_host(server: &NatsServer, host_id: &str, cells: &[PathBuf]) -> (HostProcess, String) {
    let host = HostProcess::spawn(&server.url(), host_id, cells, &["--metrics", "127.0.0.1:0"]);
    let addr = host.metrics_addr();
    (host, addr)
}

/// As [`metrics_host`], once every cell is served.
fn ready_metrics_host(
    server: &NatsServer,
    host_id: &str,
    cells: &[PathBuf],
) -> (HostProcess, String) {
    let (host, addr) = metrics_host(server, host_id, cells);
    host.wait_for_log("ready;", Duration::from_secs(30));
    (host, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_at_once_and_readyz_waits_for_a_slow_starting_sidecar() {
    let server = NatsServer::start();
    // A sidecar that takes 1.5 s to start keeps the host "not ready" meanwhile.
    let script = reference_dir().join("reference.py").display().to_string();
    let slow = CellToml::sidecar("test.slow_start", &["python3", &script])
        .env("REF_SLOW_START_MS", "1500")
        .write();
    let (host, addr) = metrics_host(&server, "host-health", &[slow.path().into()]);

    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "not ready while the sidecar starts: {body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(&addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", host.log());
        tokio::time::sleep(POLL).await;
    }
}

#[test]
fn the_metrics_listener_answers_404_on_other_paths() {
    let server = NatsServer::start();
    let (_host, addr) = metrics_host(&server, "host-404", &[greet()]);
    assert_eq!(http_get(&addr, "/nope").0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_error_and_latency_metrics_count_every_request() {
    let server = NatsServer::start();
    let (_host, addr) = ready_metrics_host(&server, "host-counters", &[greet()]);
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

    // Counters move as requests flow.
    send(&client, "logic.greet", json!({"name": "Barbara"})).await;
    assert_eq!(
        sample(&scrape(&addr), "cbs_cell_requests_total", &greet),
        Some(5.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instances_gauge_counts_warm_instances_and_live_processes() {
    let server = NatsServer::start();
    let (_host, addr) = ready_metrics_host(&server, "host-instances", &[greet(), reference_dir()]);
    let client = server.bus().await;
    assert!(send(&client, "logic.greet", json!({"name": "Ada"}))
        .await
        .error
        .is_none());

    let m = scrape(&addr);
    assert!(sample(&m, "cbs_cell_instances", &[("cell", "logic.greet")]).unwrap() >= 1.0);
    assert_eq!(
        sample(&m, "cbs_cell_instances", &[("cell", "test.reference")]),
        Some(1.0),
        "one live process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_state_gauge_shows_an_open_circuit() {
    let server = NatsServer::start();
    let caller = CellToml::faulty("test.caller")
        .calls(&["test.flaky"])
        .policy("test.flaky", |p| {
            p.breaker.failures = 2;
            p.breaker.cooldown_ms = 60_000;
        })
        .write();
    let flaky = CellToml::faulty("test.flaky").write();
    let cells = [caller.path().into(), flaky.path().into()];
    let (_host, addr) = ready_metrics_host(&server, "host-breaker", &cells);
    let client = server.bus().await;
    let panic = json!({"action": "call", "cell": "test.flaky", "payload": {"action": "panic"}});
    for _ in 0..2 {
        send(&client, "test.caller", panic.clone()).await;
    }

    let breaker = [("cell", "test.caller"), ("target", "test.flaky")];
    assert_eq!(
        sample(&scrape(&addr), "cbs_breaker_state", &breaker),
        Some(2.0),
        "open after 2 failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_reconnects_count_a_nats_server_restart() {
    let mut server = NatsServer::start();
    let (host, addr) = ready_metrics_host(&server, "host-reconnects", &[greet()]);
    let reconnects = |addr: &str| sample(&scrape(addr), "cbs_bus_reconnects_total", &[]);
    assert_eq!(reconnects(&addr), Some(0.0));

    server.restart();
    // Serving again means the host reconnected.
    let client = server.bus().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while send_ok(&client).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the host never served again:\n{}",
            host.log()
        );
        tokio::time::sleep(POLL).await;
    }
    wait_until(
        Duration::from_secs(10),
        "the reconnect to be counted",
        || reconnects(&addr) >= Some(1.0),
    )
    .await;
}

/// One greeting over the bus, `Err` while nothing answers it.
async fn send_ok(bus: &dyn BodyBus) -> Result<(), cbs_host::envelope::BusError> {
    call_json(
        bus,
        "logic.greet",
        json!({"name": "Ada"}),
        Duration::from_secs(2),
    )
    .await?;
    Ok(())
}
