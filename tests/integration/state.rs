//! Cell state through `wasi:keyvalue`, on both buses: a JetStream bucket
//! per cell on a real nats-server, a redb file per cell in process. Each
//! cell reaches only its own bucket, whatever store name it guesses;
//! limits answer typed errors; state outlives the host.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use cbs_host::bus::local::LocalBus;
use cbs_host::bus::BodyBus;
use cbs_host::envelope::{BusError, ErrorCode};
use cbs_host::manifest::StateGrant;
use cbs_host::state::jetstream::{bucket_name, encode_key};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cell_metric, HostProcess};
use cbs_tests::{call_json, CellToml, TestHost};
use serde_json::{json, Value};

const A: &str = "state.a";
const B: &str = "state.b";
const NO_GRANT: &str = "state.none";

fn cell(id: &str, grant: Option<StateGrant>) -> tempfile::TempDir {
    CellToml::faulty(id)
        .capabilities(|c| c.state = grant)
        .limits(|l| l.timeout_ms = 5_000)
        .write()
}

/// The three cells: two granted state, one not.
struct Cells {
    a: tempfile::TempDir,
    b: tempfile::TempDir,
    none: tempfile::TempDir,
}

impl Cells {
    fn new(grant: StateGrant) -> Self {
        Self {
            a: cell(A, Some(grant)),
            b: cell(B, Some(grant)),
            none: cell(NO_GRANT, None),
        }
    }

    fn paths(&self) -> Vec<std::path::PathBuf> {
        [&self.a, &self.b, &self.none]
            .iter()
            .map(|d| d.path().to_path_buf())
            .collect()
    }
}

async fn act(bus: &dyn BodyBus, cell: &str, payload: Value) -> Result<Value, BusError> {
    call_json(bus, cell, payload, Duration::from_secs(10))
        .await
        .map(|reply| reply["value"].clone())
}

async fn set(bus: &dyn BodyBus, cell: &str, key: &str, value: &str) -> Result<Value, BusError> {
    act(
        bus,
        cell,
        json!({"action": "state_set", "key": key, "value": value}),
    )
    .await
}

async fn get(bus: &dyn BodyBus, cell: &str, key: &str) -> Value {
    act(bus, cell, json!({"action": "state_get", "key": key}))
        .await
        .unwrap_or_else(|e| panic!("get {key} from {cell}: {e}"))
}

async fn open(bus: &dyn BodyBus, cell: &str, store: &str, key: &str) -> Value {
    act(
        bus,
        cell,
        json!({"action": "state_open", "store": store, "key": key}),
    )
    .await
    .unwrap()
}

/// A and B each see only their own keys; B cannot open A's bucket by any
/// name; a cell without the grant has no state at all.
async fn check_isolation(bus: &dyn BodyBus) {
    set(bus, A, "secret", "a's").await.unwrap();
    set(bus, B, "mine", "b's").await.unwrap();
    assert_eq!(get(bus, A, "secret").await, "a's");
    assert_eq!(get(bus, B, "secret").await, Value::Null);
    assert_eq!(get(bus, A, "mine").await, Value::Null);
    assert_eq!(open(bus, B, "default", "mine").await, "b's");
    assert_eq!(open(bus, B, "", "mine").await, "b's");
    for guess in [
        A,
        &bucket_name(A),
        &format!("KV_{}", bucket_name(A)),
        "state/a",
        "../state.a",
    ] {
        let opened = open(bus, B, guess, "secret").await;
        assert_eq!(opened["denied"], "Error::NoSuchStore", "{guess}: {opened}");
    }
    let denied = open(bus, NO_GRANT, "default", "secret").await;
    assert_eq!(denied["denied"], "Error::AccessDenied", "{denied}");
    let err = set(bus, NO_GRANT, "k", "v").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ContractViolation, "{err}");
    assert!(err.message.contains("[capabilities.state]"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cell_reaches_only_its_own_state_in_process() {
    let data = tempfile::tempdir().unwrap();
    let cells = Cells::new(StateGrant::default());
    let host = local(data.path(), &cells).await;
    check_isolation(host.bus().as_ref()).await;
    // One file per cell, named by the host.
    for id in [A, B] {
        assert!(
            data.path().join(format!("state/{id}.redb")).is_file(),
            "{id}"
        );
    }
    assert!(!data.path().join(format!("state/{NO_GRANT}.redb")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cell_reaches_only_its_own_jetstream_bucket() {
    let server = NatsServer::start();
    let cells = Cells::new(StateGrant::default());
    let host = TestHost::on(Arc::new(server.bus().await), &cells.paths()).await;
    check_isolation(host.bus().as_ref()).await;
    // What the cells wrote is in their own buckets, under encoded keys.
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let a = js.get_key_value(bucket_name(A)).await.unwrap();
    let b = js.get_key_value(bucket_name(B)).await.unwrap();
    assert_eq!(
        a.get(encode_key("secret")).await.unwrap().as_deref(),
        Some(&b"a's"[..])
    );
    assert_eq!(b.get(encode_key("secret")).await.unwrap(), None);
    assert!(js.get_key_value(bucket_name(NO_GRANT)).await.is_err());
}

async fn local(data: &Path, cells: &Cells) -> TestHost {
    TestHost::with_data(Arc::new(LocalBus::new()), Some(data), &cells.paths()).await
}

/// A value over `max_value_bytes` and a bad key are `invalid_input`; past
/// `max_bytes` writes are `capacity` while reads go on, and deleting makes
/// room again.
async fn check_limits(bus: &dyn BodyBus) {
    let big = "x".repeat(1_001);
    let err = set(bus, A, "big", &big).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput, "{err}");
    assert!(err.message.contains("max_value_bytes"), "{err}");
    for key in ["", "a\nb", &"k".repeat(300)] {
        let err = set(bus, A, key, "v").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput, "{key:?}: {err}");
    }
    let value = "v".repeat(900);
    let mut stored = Vec::new();
    let full = loop {
        let key = format!("fill-{}", stored.len());
        match set(bus, A, &key, &value).await {
            Ok(_) => stored.push(key),
            Err(e) => break e,
        }
        assert!(
            stored.len() * 900 <= 10_000,
            "{} values of 900 bytes stored under max_bytes = 10000",
            stored.len()
        );
    };
    assert_eq!(full.code, ErrorCode::Capacity, "{full}");
    assert!(full.message.contains("max_bytes"), "{full}");
    assert!(
        stored.len() >= 5,
        "only {} values stored before capacity",
        stored.len()
    );
    assert_eq!(get(bus, A, &stored[0]).await, value.as_str());
    for key in &stored[..2] {
        act(bus, A, json!({"action": "state_delete", "key": key}))
            .await
            .unwrap();
    }
    assert_eq!(get(bus, A, &stored[0]).await, Value::Null);
    set(bus, A, "after", &value).await.unwrap();
    // B's state is its own, and empty: A's being full does not touch it.
    set(bus, B, "fine", &value).await.unwrap();
}

fn small() -> StateGrant {
    StateGrant {
        max_value_bytes: 1_000,
        max_bytes: 10_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_limits_give_typed_errors_in_process() {
    let data = tempfile::tempdir().unwrap();
    let cells = Cells::new(small());
    let host = local(data.path(), &cells).await;
    check_limits(host.bus().as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_limits_give_typed_errors_on_jetstream() {
    let server = NatsServer::start();
    let cells = Cells::new(small());
    let host = TestHost::on(Arc::new(server.bus().await), &cells.paths()).await;
    check_limits(host.bus().as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_of_the_in_process_host() {
    let data = tempfile::tempdir().unwrap();
    let cells = Cells::new(StateGrant::default());
    {
        let host = local(data.path(), &cells).await;
        set(host.bus().as_ref(), A, "kept", "across restarts")
            .await
            .unwrap();
        assert!(host.body().shutdown(Duration::from_secs(5)).await);
    }
    let host = local(data.path(), &cells).await;
    assert_eq!(get(host.bus().as_ref(), A, "kept").await, "across restarts");
}

/// The write is handled by the first host, the read by the second, after
/// the first was SIGKILLed: the state lives in JetStream, not in a host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_killed_host_on_nats() {
    let server = NatsServer::start();
    let cells = Cells::new(StateGrant::default());
    let bus = server.bus().await;
    let metrics = ["--metrics", "127.0.0.1:0"];
    let handled =
        |host: &HostProcess| cell_metric(&host.metrics_addr(), "cbs_cell_requests_total", A);
    let mut first = HostProcess::serve(&server.url(), "state-1", &cells.paths(), &metrics);
    set(&bus, A, "kept", "across hosts").await.unwrap();
    assert_eq!(handled(&first), 1.0, "the first host handled the write");
    first.kill();
    let second = HostProcess::serve(&server.url(), "state-2", &cells.paths(), &metrics);
    assert_eq!(get(&bus, A, "kept").await, "across hosts");
    assert_eq!(handled(&second), 1.0, "the second host handled the read");
}
