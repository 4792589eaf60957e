//! Routing around trouble, on a real nats-server: two hosts serve one cell
//! in its queue group. A host that is far slower than its peer (chaos
//! latency), or full (its concurrency taken), sends requests to the peer
//! instead of queueing them or answering `capacity`; a forged load report
//! naming a host that does not exist costs no request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cbs_host::bus::{BodyBus, Message};
use cbs_host::chaos::ChaosSpec;
use cbs_host::routing::{direct_subject, load_subject};
use cbs_tests::cell_toml::CellToml;
use cbs_tests::nats::NatsServer;
use cbs_tests::{call_json, wait_until, TestHost};
use futures_util::future::join_all;
use serde_json::{json, Value};

const CELL: &str = "test.route";

/// Sends `n` requests of `payload`, `in_flight` at a time; the results.
async fn requests(
    bus: &dyn BodyBus,
    n: usize,
    in_flight: usize,
    payload: Value,
) -> Vec<Result<Value, cbs_host::envelope::BusError>> {
    let mut results = Vec::with_capacity(n);
    for _ in 0..n.div_ceil(in_flight) {
        let batch =
            (0..in_flight).map(|_| call_json(bus, CELL, payload.clone(), Duration::from_secs(10)));
        results.extend(join_all(batch).await);
    }
    results.truncate(n);
    results
}

async fn host(server: &NatsServer, id: &str, cell: &tempfile::TempDir) -> TestHost {
    let bus: Arc<dyn BodyBus> = Arc::new(server.bus().await);
    TestHost::routed(bus, id, &[cell.path().to_path_buf()]).await
}

/// Waits until `host` has a fresh report from `peer` for the cell.
async fn knows(host: &TestHost, peer: &str) {
    wait_until(Duration::from_secs(10), "a peer's load report", || {
        host.body()
            .routing_peers(CELL)
            .iter()
            .any(|(h, _)| h == peer)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_host_sends_requests_to_its_faster_peer() {
    let server = NatsServer::start();
    let fast_cell = CellToml::faulty(CELL).write();
    let slow_cell = CellToml::faulty(CELL)
        .chaos(ChaosSpec {
            latency_ms: 150,
            ..Default::default()
        })
        .write();
    let fast = host(&server, "fast", &fast_cell).await;
    let slow = host(&server, "slow", &slow_cell).await;
    knows(&slow, "fast").await;
    let client = server.bus().await;

    let results = requests(&client, 400, 8, json!({"action": "echo", "value": 1})).await;
    assert!(results.iter().all(|r| r.is_ok()), "every request answered");

    let (slow_stats, fast_stats) = (&slow.cell(CELL).stats, &fast.cell(CELL).stats);
    let (kept, forwarded) = (slow_stats.requests(), slow_stats.forwarded_count());
    // The queue group gave the slow host about half; once it had measured
    // itself it kept only a probe now and then.
    assert!(forwarded >= 100, "forwarded {forwarded}, kept {kept}");
    assert!(kept * 4 < forwarded, "forwarded {forwarded}, kept {kept}");
    assert_eq!(
        fast_stats.forwarded_count(),
        0,
        "the fast host keeps its requests"
    );
    assert_eq!(
        fast_stats.requests() + kept,
        400,
        "each request handled once"
    );
    let metrics = cbs_host::metrics::render(slow.body().as_ref());
    let line = format!("cbs_cell_forwarded_total{{cell=\"{CELL}\"}} {forwarded}");
    assert!(metrics.contains(&line), "{line} in\n{metrics}");

    // A request on a host's own subject is handled there, slow or not.
    let before = slow_stats.requests();
    let envelope = cbs_tests::envelope_to(CELL, &json!({"action": "echo", "value": 2}));
    let direct = direct_subject("slow", CELL);
    let reply = client
        .request(
            Message::new(direct, Bytes::from(envelope.to_vec())),
            Duration::from_secs(5),
        )
        .await
        .expect("the direct subject answers");
    assert!(cbs_host::envelope::Envelope::from_slice(&reply.payload)
        .unwrap()
        .error
        .is_none());
    assert_eq!(slow_stats.requests(), before + 1);
    assert_eq!(slow_stats.forwarded_count(), forwarded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_sends_requests_to_a_peer_with_room() {
    let server = NatsServer::start();
    let small_cell = CellToml::faulty(CELL)
        .limits(|l| {
            l.concurrency = 1;
            l.queue = 0;
        })
        .write();
    let big_cell = CellToml::faulty(CELL)
        .limits(|l| l.concurrency = 32)
        .write();
    let small = host(&server, "small", &small_cell).await;
    let _big = host(&server, "big", &big_cell).await;
    knows(&small, "big").await;
    let client = server.bus().await;

    // 20 at once: the queue group gives the small host about ten, of which
    // it can run one; without routing the rest would be `capacity`.
    let results = requests(&client, 20, 20, json!({"action": "sleep", "ms": 300})).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let stats = &small.cell(CELL).stats;
    assert!(stats.forwarded_count() >= 1, "the small host forwarded");
    assert!(stats.requests() <= 1 + stats.forwarded_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_load_report_loses_no_request() {
    let server = NatsServer::start();
    let cell = CellToml::faulty(CELL)
        .chaos(ChaosSpec {
            latency_ms: 20,
            ..Default::default()
        })
        .write();
    let only = host(&server, "only", &cell).await;
    let forger = server.bus().await;
    // A "host" that answers nothing, claiming to be fast with room.
    let forge = || async {
        let report = br#"{"host":"ghost","latency_us":1,"room":1000}"#;
        let message = Message::new(load_subject(CELL), Bytes::from_static(report));
        forger.publish(message).await.unwrap();
        forger.flush().await.unwrap();
    };
    forge().await;
    knows(&only, "ghost").await;
    let client = server.bus().await;

    let mut answered = 0;
    for _ in 0..20 {
        forge().await;
        let result = call_json(
            &client,
            CELL,
            json!({"action": "echo", "value": 3}),
            Duration::from_secs(5),
        )
        .await;
        answered += usize::from(result.is_ok());
    }
    assert_eq!(answered, 20, "every request answered");
    let stats = &only.cell(CELL).stats;
    // The host believed the report and tried the ghost, then handled the
    // requests itself.
    assert!(stats.forwarded_count() >= 1, "tried the forged peer");
    assert_eq!(stats.requests(), 20);
}
