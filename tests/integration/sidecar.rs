//! The sidecar protocol, host side, against the Python reference sidecar
//! (`tests/sidecars/reference`): real processes, real pipes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbs_host::envelope::{BusError, Envelope, ErrorCode};
use cbs_host::manifest::{RuntimeKind, Scale};
use cbs_host::runtime::CellRunner;
use cbs_tests::cell_toml::reference_dir;
use cbs_tests::{eventually, greet, load_until_instances, CellToml, TestHost, POLL};
use serde_json::{json, Value};

fn reference() -> PathBuf {
    reference_dir()
}

/// The reference cell, written elsewhere with one more `[sidecar] env` entry.
fn reference_with_env(key: &str, value: &str) -> tempfile::TempDir {
    CellToml::reference().env(key, value).write()
}

async fn host() -> TestHost {
    TestHost::local(&[greet(), reference()]).await
}

async fn act(host: &TestHost, payload: Value) -> Result<Value, BusError> {
    host.call("test.reference", payload).await
}

async fn pid(host: &TestHost) -> u64 {
    act(host, json!({"action": "pid"})).await.unwrap()["pid"]
        .as_u64()
        .unwrap()
}

/// Other cells are unaffected, and the sidecar serves again.
async fn assert_recovered(host: &TestHost, old_pid: u64) {
    let reply = host
        .call("logic.greet", json!({"name": "Ada"}))
        .await
        .unwrap();
    assert_eq!(reply["greeting"], "Hello, Ada!");
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_pid = loop {
        match act(host, json!({"action": "pid"})).await {
            Ok(v) => break v["pid"].as_u64().unwrap(),
            // While restarting: nothing runs (unavailable), or a message
            // landed on the process in the instant it died (cell_failed).
            Err(e) => {
                assert!(
                    matches!(e.code, ErrorCode::Unavailable | ErrorCode::CellFailed),
                    "while restarting: {e}"
                );
                assert!(
                    Instant::now() < deadline,
                    "the sidecar never came back: {e}"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    };
    assert_ne!(new_pid, old_pid, "a new process serves");
    assert_eq!(
        act(host, json!({"text": "again"})).await.unwrap()["text"],
        "AGAIN!"
    );
}

#[tokio::test]
async fn handshake_then_request_reply() {
    let host = host().await;
    let cell = host.cell("test.reference");
    assert_eq!(cell.info().id, "test.reference");
    assert_eq!(cell.info().version, "0.1.0");
    let reply = host.envelope("test.reference", json!({"text": "hi"})).await;
    let payload: Value = serde_json::from_str(reply.payload.get()).unwrap();
    assert_eq!(payload, json!({"text": "HI!"}));
    assert_eq!(reply.schema.as_deref(), Some("test.reference/reply@1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_messages_in_flight_at_once() {
    let host = Arc::new(host().await);
    // Each message waits until 100 are in flight in the sidecar at the same
    // time: this only completes if the host does not serialize them.
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { act(&host, json!({"action": "gather", "n": 100})).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap()["value"], 100);
    }
}

#[tokio::test]
async fn the_sidecar_calls_a_wasm_cell_through_the_host() {
    let host = host().await;
    let request = json!({"action": "call", "cell": "logic.greet", "payload": {"name": "Dart"}});
    let reply = act(&host, request).await.unwrap();
    assert_eq!(reply["value"], json!({"greeting": "Hello, Dart!"}));
    // The callee's contract applies, and its error comes back typed.
    let request = json!({"action": "call", "cell": "logic.greet", "payload": {"name": 3}});
    let err = act(&host, request).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ContractViolation, "{err}");
}

#[tokio::test]
async fn the_sidecar_publishes_with_the_flows_correlation_id() {
    let host = host().await;
    let mut events = host.bus().subscribe("events.>", None).await.unwrap();
    let envelope = host
        .envelope(
            "test.reference",
            json!({"action": "publish", "subject": "events.shouted", "payload": {"x": 1}}),
        )
        .await;
    assert!(envelope.error.is_none(), "{:?}", envelope.error);
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    let event = Envelope::from_slice(&event.payload).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(event.payload.get()).unwrap(),
        json!({"x": 1})
    );
    assert_eq!(event.correlation_id, envelope.correlation_id);
}

#[tokio::test]
async fn calls_and_publishes_outside_the_grants_are_refused() {
    let host = TestHost::local(&[
        greet(),
        reference(),
        cbs_tests::cell("cells/io.print_greeting"),
    ])
    .await;
    let request =
        json!({"action": "call", "cell": "io.print_greeting", "payload": {"greeting": "x"}});
    let err = act(&host, request).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ContractViolation);
    assert!(
        err.message.contains("may not call io.print_greeting"),
        "{err}"
    );
    let request = json!({"action": "publish", "subject": "cbs.logic.greet", "payload": {}});
    let err = act(&host, request).await.unwrap_err();
    assert!(
        err.message.contains("may not publish to cbs.logic.greet"),
        "{err}"
    );
}

#[tokio::test]
async fn a_typed_error_from_the_sidecar_passes_through() {
    let host = host().await;
    let err = act(&host, json!({"action": "fail", "message": "no such text"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);
    assert_eq!(err.message, "no such text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_message_fails_it_and_the_process_is_restarted() {
    let host = host().await;
    let before = pid(&host).await;
    let err = act(&host, json!({"action": "crash"})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::CellFailed, "{err}");
    assert!(err.message.contains("exited with status 3"), "{err}");
    assert_recovered(&host, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_sidecar_hits_the_deadline_and_is_replaced() {
    let host = host().await;
    let before = pid(&host).await;
    let err = act(&host, json!({"action": "hang"})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    assert!(err.message.contains("killed"), "{err}");
    assert_recovered(&host, before).await;
}

/// `[limits] memory_mb` caps a process's data: past it the process cannot
/// allocate (the reference exits, as a process out of memory should), the
/// message fails with a typed error, a new process serves, and the host
/// and its other cells never feel it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_allocates_past_its_memory_limit_fails_alone() {
    let dir = CellToml::reference()
        .limits(|l| l.memory_mb = Some(100))
        .write();
    let host = TestHost::local(&[greet(), dir.path().to_path_buf()]).await;
    let within = act(&host, json!({"action": "allocate", "mb": 20}))
        .await
        .unwrap();
    assert_eq!(within["value"], 20, "20 MiB fit in 100");
    let before = pid(&host).await;
    let err = act(&host, json!({"action": "allocate", "mb": 200}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CellFailed, "{err}");
    assert!(err.message.contains("exited with status 70"), "{err}");
    assert_recovered(&host, before).await;
}

/// `[limits] cpu_seconds` ends a process that used its CPU time (SIGXCPU):
/// the message fails with a typed error naming the limit, a new process
/// serves, and the other cells never feel it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_past_its_cpu_seconds_is_ended_and_replaced() {
    let dir = CellToml::reference()
        .limits(|l| {
            l.cpu_seconds = Some(1);
            l.timeout_ms = 30_000;
        })
        .write();
    let host = TestHost::local(&[greet(), dir.path().to_path_buf()]).await;
    let before = pid(&host).await;
    let err = act(&host, json!({"action": "spin", "seconds": 5}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CellFailed, "{err}");
    assert!(err.message.contains("used up its CPU time"), "{err}");
    assert_recovered(&host, before).await;
}

/// Without a limit in `cell.toml`, a process gets the default (1 GiB), not
/// the 100 MiB above: the same allocation succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_without_a_memory_limit_gets_the_default() {
    let host = host().await;
    let reply = act(&host, json!({"action": "allocate", "mb": 200}))
        .await
        .unwrap();
    assert_eq!(reply["value"], 200);
    let err = act(&host, json!({"action": "allocate", "mb": 2048}))
        .await
        .unwrap_err();
    assert!(err.message.contains("exited with status 70"), "{err}");
}

/// The sidecar answers `action` with a frame the host cannot take: the
/// message fails with `cell_failed` saying `why`, and a new process serves.
async fn a_bad_frame_ends_the_process(action: &str, why: &str) {
    let host = host().await;
    let before = pid(&host).await;
    let err = act(&host, json!({ "action": action })).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::CellFailed, "{err}");
    assert!(err.message.contains(why), "{err}");
    assert_recovered(&host, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_is_not_json_ends_the_process() {
    a_bad_frame_ends_the_process("garbage", "malformed frame").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_ends_the_process() {
    a_bad_frame_ends_the_process("oversize", "oversize frame").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_negotiated_and_a_newer_only_sidecar_is_refused() {
    // A sidecar speaking 1..2 settles on 1 with this host.
    let both = reference_with_env("REF_PROTOCOL", "1-2");
    let host = TestHost::local(&[both.path().to_path_buf()]).await;
    assert_eq!(
        act(&host, json!({"text": "v"})).await.unwrap()["text"],
        "V!"
    );

    // A restart that comes back speaking only 2 is refused, typed, until a
    // later restart speaks 1 again.
    let counter = tempfile::tempdir().unwrap();
    let newer = reference_with_env(
        "REF_NEWER_AT",
        &counter.path().join("starts").display().to_string(),
    );
    let host = TestHost::local(&[greet(), newer.path().to_path_buf()]).await;
    let before = pid(&host).await;
    act(&host, json!({"action": "crash"})).await.unwrap_err();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = None;
    while refused.is_none() {
        match act(&host, json!({"action": "pid"})).await {
            Err(e) if e.message.contains("speaks protocol 2") => refused = Some(e),
            _ => assert!(
                Instant::now() < deadline,
                "the newer process was never reported"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(refused.unwrap().code, ErrorCode::Unavailable);
    assert_recovered(&host, before).await;
}

#[tokio::test]
async fn a_sidecar_that_cannot_start_fails_the_load_clearly() {
    let dir = CellToml::sidecar("x.y", &["./no-such-program"]).write();
    let host = TestHost::idle(None).await;
    let body = host.body();
    let err = format!("{:#}", body.load(dir.path()).await.err().unwrap());
    assert!(err.contains("cannot start sidecar x.y"), "{err}");

    let dir = CellToml::new("x.y").runtime(RuntimeKind::Sidecar).write();
    let err = format!("{:#}", body.load(dir.path()).await.err().unwrap());
    assert!(err.contains("needs a [sidecar] table"), "{err}");
}

/// Shutdown sends the process its `shutdown` frame, the process exits, and
/// the supervisor ends instead of starting another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_asks_the_sidecar_to_exit_and_it_is_not_restarted() {
    let events = tempfile::NamedTempFile::new().unwrap();
    let dir = reference_with_env("REF_EVENTS", &events.path().display().to_string());
    let cell = sidecar(dir.path()).await;
    let pid = cell.pids()[0];
    cell.shutdown(Duration::from_secs(5)).await;
    cbs_tests::wait_until(Duration::from_secs(5), "the supervisor to stop", || {
        cell.supervising() == 0
    })
    .await;
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "{pid} still runs"
    );
    assert_eq!(cell.live_processes(), 0);
    let log = std::fs::read_to_string(events.path()).unwrap();
    assert_eq!(
        log,
        format!("start {pid}\nshutdown {pid}\n"),
        "one process, asked to stop"
    );
}

/// The reference sidecar started as a bare runner, outside a body.
async fn sidecar(dir: &std::path::Path) -> cbs_host::runtime::process::SidecarCell {
    let spec = cbs_host::manifest::CellSpec::from_dir(dir).unwrap();
    let manifest = Arc::new(spec.manifest.clone());
    let bus = Arc::new(cbs_host::bus::local::LocalBus::new());
    let outbound = Arc::new(cbs_host::outbound::Outbound::new(bus, manifest, None));
    cbs_host::runtime::process::SidecarCell::start(&spec, outbound)
        .await
        .unwrap()
}

/// Regression: the first process is servable as soon as the cell is
/// started, before any supervisor task has run (a current-thread runtime
/// runs none until this test yields).
#[tokio::test]
async fn a_started_sidecar_is_servable_at_once() {
    let cell = sidecar(&reference()).await;
    assert_eq!(cell.live_processes(), 1);
}

/// `[scale]` sizes a sidecar's processes by load: while every process is
/// busy another starts, up to `max`; idle ones retire, down to `min`; the
/// count is the cell's instances (`cbs ps`, `/metrics`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_processes_scale_with_load_between_min_and_max() {
    let dir = CellToml::reference()
        .limits(|l| l.concurrency = 3)
        .scale(Scale {
            min: Some(1),
            max: Some(3),
            idle_ms: 300,
        })
        .write();
    let host = TestHost::local(&[dir.path().to_path_buf()]).await;
    let cell = host.cell("test.reference");
    assert_eq!(cell.runner.instances(), 1, "starts with min");
    // One message per process at once (concurrency 3 over at most 3).
    load_until_instances(
        &host,
        "test.reference",
        json!({"action": "sleep", "ms": 200}),
        3,
        3,
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "idle processes retired",
        || async {
            match cell.runner.instances() {
                1 => Ok(()),
                n => Err(format!("{n} processes")),
            }
        },
    )
    .await;
    let reply = act(&host, json!({"action": "echo", "value": 7}))
        .await
        .unwrap();
    assert_eq!(reply["value"], 7, "the process kept serves");
}

/// A call with a `null` payload is refused for that call only: the
/// sidecar gets an `invalid_input` response and its process serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_payload_call_is_refused_without_ending_the_process() {
    let host = host().await;
    let before = pid(&host).await;
    let call = json!({"action": "call", "cell": "logic.greet", "payload": null});
    let err = act(&host, call).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput, "{err}");
    assert!(err.message.contains("needs a payload"), "{err}");
    assert_eq!(pid(&host).await, before, "the same process serves on");
}
