//! Hostile input from the bus: whatever bytes and headers a NATS client
//! sends, the host answers with a typed error and keeps serving. Each case
//! here once took a host down or hung its caller.

use std::time::Duration;

use bytes::Bytes;
use cbs_host::bus::{BodyBus, Message};
use cbs_host::envelope::{Envelope, ErrorCode};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::HostProcess;
use cbs_tests::{call_json, faulty, greet, CellToml};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A host serving the greeting and the faulty test cell over `server`.
fn host(server: &NatsServer) -> HostProcess {
    HostProcess::serve(&server.url(), "host-sec", &[greet(), faulty()], &[])
}

/// Sends `envelope` (any JSON) to logic.greet as raw bytes; the reply.
async fn send_raw(bus: &dyn BodyBus, envelope: Value) -> Envelope {
    let message = Message::new("cbs.logic.greet", Bytes::from(envelope.to_string()));
    let reply = bus
        .request(message, TIMEOUT)
        .await
        .expect("a reply, not a timeout");
    Envelope::from_slice(&reply.payload).expect("the reply is an envelope")
}

async fn assert_still_serving(bus: &dyn BodyBus) {
    let reply = call_json(bus, "logic.greet", json!({"name": "Ada"}), TIMEOUT).await;
    assert_eq!(reply.unwrap()["greeting"], "Hello, Ada!");
}

/// Regression: a CR/LF in an id reached async-nats' header constructor,
/// which panicked in the reply task; the caller waited out its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_break_in_the_correlation_id_is_invalid_input() {
    let server = NatsServer::start();
    let _host = host(&server);
    let bus = server.bus().await;
    let reply = send_raw(
        &bus,
        json!({"v": 1, "id": "a", "correlation_id": "a\r\nEvil: 1",
               "subject": "cbs.logic.greet", "payload": {"name": "Ada"}}),
    )
    .await;
    let error = reply.error.expect("an error reply");
    assert_eq!(error.code, ErrorCode::InvalidInput, "{error:?}");
    assert!(error.message.contains("correlation_id"), "{error:?}");
    assert_still_serving(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_break_in_the_traceparent_is_invalid_input() {
    let server = NatsServer::start();
    let _host = host(&server);
    let bus = server.bus().await;
    let reply = send_raw(
        &bus,
        json!({"v": 1, "id": "a", "correlation_id": "a", "subject": "cbs.logic.greet",
               "headers": {"traceparent": "00-x\nEvil: 1"}, "payload": {"name": "Ada"}}),
    )
    .await;
    assert_eq!(reply.error.unwrap().code, ErrorCode::InvalidInput);
    assert_still_serving(&bus).await;
}

/// A cell's own error message may hold any text: it arrives whole in the
/// reply envelope, and the NATS error header carries it on one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_break_in_a_cells_error_message_reaches_the_caller() {
    let server = NatsServer::start();
    let _host = host(&server);
    let bus = server.bus().await;
    let envelope = cbs_tests::envelope_to(
        "test.faulty",
        &json!({"action": "fail", "message": "bad\rEvil: 1\nsecond line"}),
    );
    let raw = bus
        .client()
        .request_with_headers(
            "cbs.test.faulty",
            async_nats::HeaderMap::new(),
            Bytes::from(envelope.to_vec()),
        )
        .await
        .expect("a reply, not a timeout");
    let header = raw
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error"))
        .map(|v| v.to_string())
        .expect("the micro-service error header");
    assert_eq!(header, "invalid_input: bad Evil: 1");
    let error = Envelope::from_slice(&raw.payload).unwrap().error.unwrap();
    assert_eq!(error.message, "bad\rEvil: 1\nsecond line");
    assert_still_serving(&bus).await;
}

/// A manifest asking for more memory than the host grants is refused at
/// load, naming the flag; it was silently accepted.
#[test]
fn memory_above_the_hosts_limit_is_refused_at_load() {
    let dir = CellToml::faulty("test.greedy")
        .limits(|l| l.memory_mb = Some(512))
        .write();
    let out = cbs_tests::process::cbs_host(
        &[
            "load",
            "--max-memory-mb",
            "256",
            dir.path().to_str().unwrap(),
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("memory_mb = 512"), "{stderr}");
    assert!(stderr.contains("--max-memory-mb"), "{stderr}");
}

/// Numbers that sized an allocation or wrapped a sum (concurrency =
/// u32::MAX aborted the host) are refused at load with their name.
#[test]
fn a_huge_concurrency_is_refused_at_load() {
    let dir = CellToml::faulty("test.huge")
        .limits(|l| {
            l.concurrency = u32::MAX;
            l.queue = 1;
        })
        .write();
    let out = cbs_tests::process::cbs_host(&["load", dir.path().to_str().unwrap()], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[limits] concurrency"), "{stderr}");
}

/// Regression: every `CBS_*` variable of the host, NATS credentials
/// included, was passed to sidecar and Python worker processes.
#[test]
fn a_sidecar_gets_none_of_the_hosts_secrets() {
    let reference = cbs_tests::repo().join("tests/sidecars/reference");
    let out = std::process::Command::new(cbs_tests::bin("cbs-host"))
        .args(["run", "--log-level", "info", "--start", "test.reference"])
        .args(["--input", r#"{"action": "env"}"#])
        .arg(&reference)
        .env("CBS_CACHE_DIR", cbs_tests::shared_cache())
        .env("CBS_NATS_USER", "cbs")
        .env("CBS_NATS_PASSWORD", "s3cret-password")
        .env("CBS_NATS_TOKEN", "s3cret-token")
        .env("CBS_NATS_NKEY", "SUs3cret-nkey")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let reply = log
        .lines()
        .find(|l| l.contains("flow finished"))
        .unwrap_or_else(|| panic!("no reply in\n{log}"));
    assert!(
        reply.contains("CBS_CELL_ID"),
        "the reply shows the environment: {reply}"
    );
    for secret in ["s3cret", "CBS_NATS"] {
        assert!(
            !reply.contains(secret),
            "{secret} reached the sidecar: {reply}"
        );
    }
}

/// Regression (confused deputy): a host published its reply to whatever
/// subject a request named, with its own credentials; a client allowed to
/// publish only to `cbs.>` purged the deploy bucket through a host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_subject_outside_the_inbox_is_refused() {
    use futures_util::StreamExt;
    let server = NatsServer::start();
    let host = host(&server);
    let bus = server.bus().await;
    let client = bus.client();
    let target = "$KV.cbs-desired.victim";
    let mut watch = client.subscribe(target).await.unwrap();
    let envelope = cbs_tests::envelope_to("logic.greet", &json!({"name": "Ada"}));
    client
        .publish_with_reply("cbs.logic.greet", target, Bytes::from(envelope.to_vec()))
        .await
        .unwrap();
    client.flush().await.unwrap();
    host.wait_for_log("refused to reply", TIMEOUT);
    assert_still_serving(&bus).await;
    client.flush().await.unwrap();
    let published = tokio::time::timeout(Duration::ZERO, watch.next()).await;
    assert!(published.is_err(), "the host published to {target}");
}

/// The reference sidecar (timeout_ms = 2000) next to logic.greet, in process.
async fn sidecar_host() -> cbs_tests::TestHost {
    cbs_tests::TestHost::local(&[greet(), cbs_tests::repo().join("tests/sidecars/reference")]).await
}

async fn sidecar_pid(host: &cbs_tests::TestHost) -> u64 {
    host.call("test.reference", json!({"action": "pid"}))
        .await
        .unwrap()["pid"]
        .as_u64()
        .unwrap()
}

/// A request carrying `budget_ms` to the reference sidecar.
async fn with_budget(host: &cbs_tests::TestHost, payload: Value, budget_ms: u64) -> Envelope {
    let mut envelope = cbs_tests::envelope_to("test.reference", &payload);
    envelope.headers.insert(
        cbs_host::envelope::header::BUDGET_MS.to_owned(),
        budget_ms.to_string(),
    );
    cbs_host::call::request(host.bus().as_ref(), &envelope, TIMEOUT)
        .await
        .unwrap()
}

/// Regression: a caller's budget of 0 made the host kill the sidecar
/// process (and fail every other caller's messages on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_budget_fails_that_message_and_spares_the_process() {
    let host = sidecar_host().await;
    let pid = sidecar_pid(&host).await;
    let reply = with_budget(&host, json!({"action": "echo", "value": 1}), 0).await;
    assert_eq!(reply.error.unwrap().code, ErrorCode::Timeout);
    assert_eq!(
        sidecar_pid(&host).await,
        pid,
        "the process was not restarted"
    );
}

/// A caller's short budget abandons its message; the process is killed only
/// when it overruns the cell's own limit (2 s) with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_budget_abandons_the_message_the_cells_limit_kills_the_process() {
    let host = sidecar_host().await;
    let pid = sidecar_pid(&host).await;
    let reply = with_budget(&host, json!({"action": "hang"}), 100).await;
    let error = reply.error.unwrap();
    assert_eq!(error.code, ErrorCode::Timeout);
    assert!(error.message.contains("abandoned"), "{error:?}");
    assert_eq!(
        sidecar_pid(&host).await,
        pid,
        "alive after the caller gave up"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(reply) = host.call("test.reference", json!({"action": "pid"})).await {
            if reply["pid"].as_u64() != Some(pid) {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stuck process was never replaced"
        );
        tokio::time::sleep(cbs_tests::POLL).await;
    }
}

/// Regression: with its NATS server gone, a host ignored SIGTERM for good
/// (seen still running 20 minutes later). Every step of the drain is now
/// bounded by --drain-timeout-ms; a drain that could not finish exits 1.
#[test]
fn a_host_whose_nats_is_gone_still_stops_within_the_drain_timeout() {
    let mut server = NatsServer::start();
    let mut host = HostProcess::serve(
        &server.url(),
        "host-orphan",
        &[greet()],
        &["--drain-timeout-ms", "1000"],
    );
    server.stop();
    host.wait_for_log("disconnected from NATS", TIMEOUT);
    host.terminate();
    let status = host.wait_exit(Duration::from_secs(10));
    assert!(status.code().is_some(), "exited, not killed: {status:?}");
}

/// A second signal ends a drain at once (exit 130), whatever it waits for.
#[test]
fn a_second_signal_exits_at_once() {
    let mut server = NatsServer::start();
    let mut host = HostProcess::serve(
        &server.url(),
        "host-impatient",
        &[greet()],
        &["--drain-timeout-ms", "600000"],
    );
    server.stop();
    host.wait_for_log("disconnected from NATS", TIMEOUT);
    host.terminate();
    host.wait_for_log("draining", TIMEOUT);
    host.terminate();
    let status = host.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", host.log());
}

/// A hand-made, unsigned bundle of a sidecar cell whose command touches
/// `marker` and then runs the reference sidecar.
fn process_bundle(tmp: &std::path::Path, marker: &std::path::Path) -> std::path::PathBuf {
    let reference = cbs_tests::repo().join("tests/sidecars/reference/reference.py");
    let dir = tmp.join("evil");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "touch {}; exec python3 {}",
        marker.display(),
        reference.display()
    );
    std::fs::write(
        dir.join("cell.toml"),
        format!(
            "id = \"test.evil\"\nversion = \"0.1.0\"\nruntime = \"sidecar\"\n\
             [sidecar]\ncommand = [\"sh\", \"-c\", {script:?}]\n"
        ),
    )
    .unwrap();
    let spec = cbs_host::manifest::CellSpec::from_dir(&dir).unwrap();
    let bundle = cbs_host::bundle::Bundle::pack(&spec).unwrap();
    let path = tmp.join("evil.cbs");
    std::fs::write(&path, bundle.to_bytes().unwrap()).unwrap();
    path
}

/// Regression: a `--watch` host started any command an unsigned bundle
/// named (runtime = "sidecar"): whoever could deploy ran code on every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_bundle_needs_the_hosts_opt_in() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("ran");
    let bundle = process_bundle(tmp.path(), &marker);
    let server = NatsServer::start();
    let host = HostProcess::serve(&server.url(), "host-strict", &[], &["--watch"]);
    assert!(
        host.log().contains("--watch without --trust"),
        "{}",
        host.log()
    );
    let out =
        cbs_tests::process::cbs(&["deploy", bundle.to_str().unwrap(), "--nats", &server.url()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--allow-process-bundles"), "{stderr}");
    assert!(!marker.exists(), "the bundle's command ran");
}

/// With the opt-in the same bundle is served: the flag is what decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_opts_in_runs_process_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("ran");
    let bundle = process_bundle(tmp.path(), &marker);
    let server = NatsServer::start();
    let _host = HostProcess::serve(
        &server.url(),
        "host-open",
        &[],
        &["--watch", "--allow-process-bundles"],
    );
    let out =
        cbs_tests::process::cbs(&["deploy", bundle.to_str().unwrap(), "--nats", &server.url()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(marker.exists(), "the sidecar started");
}

/// A copy of the reference sidecar's folder with `[sidecar]` lines replaced.
fn reference_variant(sidecar: &str) -> tempfile::TempDir {
    let src = cbs_tests::repo().join("tests/sidecars/reference");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    for file in ["schemas/input.json", "schemas/output.json"] {
        std::fs::copy(src.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(
        dir.path().join("cell.toml"),
        format!(
            "id = \"test.reference\"\nversion = \"0.1.0\"\nruntime = \"sidecar\"\n\
             [sidecar]\n{sidecar}\n\
             [input]\nid = \"test.reference/action@1\"\nschema = \"schemas/input.json\"\n\
             [output]\nid = \"test.reference/reply@1\"\nschema = \"schemas/output.json\"\n\
             [limits]\ntimeout_ms = 2000\n"
        ),
    )
    .unwrap();
    dir
}

fn reference_py() -> String {
    cbs_tests::repo()
        .join("tests/sidecars/reference/reference.py")
        .display()
        .to_string()
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.split_whitespace().nth(2) == Some("Z"))
}

/// A reference sidecar started by a shell that first forks a sleeping
/// grandchild and writes "<its group> <the grandchild>" to `record`.
fn forking_sidecar(record: &std::path::Path) -> tempfile::TempDir {
    let script = format!(
        "sleep 300 & echo $$ $! > {}.tmp && mv {0}.tmp {0}; exec python3 {}",
        record.display(),
        reference_py()
    );
    reference_variant(&format!("command = [\"sh\", \"-c\", {script:?}]"))
}

/// The group the forking sidecar wrote last, its grandchild checked to
/// be running in it.
async fn forked(record: &std::path::Path) -> u32 {
    let (group, grandchild) =
        cbs_tests::eventually(TIMEOUT, "the sidecar to record its grandchild", || async {
            let text = std::fs::read_to_string(record).map_err(|e| e.to_string())?;
            let mut ids = text.split_whitespace().map(|n| n.parse::<u32>().ok());
            match (ids.next().flatten(), ids.next().flatten()) {
                (Some(group), Some(grandchild)) => Ok((group, grandchild)),
                _ => Err(format!("the record holds {text:?}")),
            }
        })
        .await;
    assert!(
        group_members(group).contains(&grandchild),
        "the grandchild {grandchild} runs in the sidecar's group {group}"
    );
    group
}

/// Live processes (not zombies) of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid pgrp ...: comm may hold spaces.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?;
        let pgrp: u32 = fields.nth(1)?.parse().ok()?;
        (pgrp == pgid && state != "Z").then_some(pid)
    })
    .collect()
}

async fn wait_group_gone(pgid: u32) {
    let what = format!("no process of group {pgid} to be left");
    cbs_tests::wait_until(TIMEOUT, &what, || group_members(pgid).is_empty()).await;
}

/// Regression: a grandchild forked by a sidecar outlived the sidecar's end
/// (and the host's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_sidecar_forks_ends_with_its_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("forked");
    let dir = forking_sidecar(&record);
    let host = cbs_tests::TestHost::local(&[dir.path().to_path_buf()]).await;
    let group = forked(&record).await;
    assert!(host.body().shutdown(TIMEOUT).await);
    wait_group_gone(group).await;
}

/// Regression (#34 a): a sidecar killed for overrunning its timeout left
/// what it forked running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_sidecar_forks_ends_when_it_overruns_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("forked");
    let dir = forking_sidecar(&record);
    let host = cbs_tests::TestHost::local(&[dir.path().to_path_buf()]).await;
    let group = forked(&record).await;
    let err = host
        .call("test.reference", json!({"action": "sleep", "ms": 4000}))
        .await
        .expect_err("the sidecar overruns its 2000 ms");
    assert_eq!(err.code, ErrorCode::Timeout, "{err:?}");
    wait_group_gone(group).await;
}

/// Regression (#34): a sidecar that crashed and was restarted left what it
/// forked running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_sidecar_forks_ends_when_it_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("forked");
    let dir = forking_sidecar(&record);
    let host = cbs_tests::TestHost::local(&[dir.path().to_path_buf()]).await;
    let group = forked(&record).await;
    let _ = host
        .call("test.reference", json!({"action": "crash"}))
        .await;
    wait_group_gone(group).await;
}

/// Regression (#34 b): the old version of a hot-swapped sidecar left what
/// it forked running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_sidecar_forks_ends_when_it_is_swapped_away() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("forked");
    let dir = forking_sidecar(&record);
    let host = cbs_tests::TestHost::local(&[dir.path().to_path_buf()]).await;
    let group = forked(&record).await;
    let next = host.body().load(dir.path()).await.unwrap();
    let old = host
        .body()
        .replace(next)
        .await
        .unwrap()
        .expect("an old version");
    assert!(cbs_host::body::retire(old, TIMEOUT).await);
    wait_group_gone(group).await;
    let new_group = forked(&record).await;
    assert_ne!(
        new_group, group,
        "the new version runs in a group of its own"
    );
    assert!(
        !group_members(new_group).is_empty(),
        "the new version still runs"
    );
}

/// A `cbs-host` serving the forking sidecar: the host, the cell folder and
/// where the sidecar records its group.
fn host_with_forking_sidecar(
    tmp: &std::path::Path,
) -> (HostProcess, tempfile::TempDir, std::path::PathBuf) {
    let record = tmp.join("forked");
    let dir = forking_sidecar(&record);
    let host = HostProcess::local(&[dir.path().to_path_buf()], &["--drain-timeout-ms", "2000"]);
    (host, dir, record)
}

/// Regression (#34 c): a host stopped by SIGTERM left what its sidecar
/// forked running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_sidecar_forks_ends_when_its_host_gets_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut host, _dir, record) = host_with_forking_sidecar(tmp.path());
    let group = forked(&record).await;
    host.terminate();
    host.wait_exit(TIMEOUT);
    wait_group_gone(group).await;
}

/// Regression (#34 d): a SIGKILLed host, which runs no code of its own
/// after the signal, left its sidecar's group running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_sidecar_forks_ends_when_its_host_gets_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut host, _dir, record) = host_with_forking_sidecar(tmp.path());
    let group = forked(&record).await;
    host.kill();
    wait_group_gone(group).await;
}

/// Regression: when the second process of a cell failed to start, the
/// first kept running (and restarting) for a cell that never loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_fails_to_start_leaves_no_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (counter, events) = (tmp.path().join("starts"), tmp.path().join("events"));
    // The second start speaks only protocol 2, which the host refuses.
    let dir = reference_variant(&format!(
        "command = [\"python3\", {:?}]\nprocesses = 2\nenv = {{ REF_NEWER_AT = {:?}, REF_EVENTS = {:?} }}",
        reference_py(),
        counter.display().to_string(),
        events.display().to_string()
    ));
    let host = cbs_tests::TestHost::idle(Some(cbs_tests::shared_cache())).await;
    let err = format!(
        "{:#}",
        host.body()
            .load(dir.path())
            .await
            .err()
            .expect("the load fails")
    );
    assert!(err.contains("protocol"), "{err}");
    let log = std::fs::read_to_string(&events).unwrap();
    let first: u32 = log
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("start ")
        .parse()
        .unwrap();
    cbs_tests::wait_until(TIMEOUT, "the first process to end", || gone(first)).await;
}

/// Regression: one invalid UTF-8 byte on stderr stopped the host's reader
/// and closed the pipe, so the sidecar's next write failed (EPIPE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_on_stderr_does_not_close_the_pipe() {
    let host = sidecar_host().await;
    let pid = sidecar_pid(&host).await;
    for hex in ["ff fe 0a", "6f6b0a"] {
        let reply = host
            .call(
                "test.reference",
                json!({"action": "stderr", "hex": hex.replace(' ', "")}),
            )
            .await;
        assert_eq!(reply.unwrap()["written"], 3, "writing {hex} to stderr");
    }
    // Give the reader time to take both lines: another round trip.
    assert_eq!(sidecar_pid(&host).await, pid);
    let reply = host
        .call(
            "test.reference",
            json!({"action": "stderr", "hex": "6f6b0a"}),
        )
        .await;
    assert_eq!(reply.unwrap()["written"], 3, "stderr still open");
}

/// Regression: a reply over NATS max_payload was dropped with a log line
/// and the caller waited out its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_big_for_the_bus_is_a_typed_error() {
    let server = NatsServer::start();
    let _host = host(&server);
    let bus = server.bus().await;
    let max = bus.client().server_info().max_payload;
    let error = call_json(
        &bus,
        "test.faulty",
        json!({"action": "big", "bytes": max + 1}),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::CellFailed, "{error:?}");
    assert!(error.message.contains("max_payload"), "{error:?}");
    assert_still_serving(&bus).await;
}

/// The most memory this process has held so far (VmHWM), in MiB.
/// The peak resident memory (VmHWM) of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        >> 10
}

/// Regression: a sidecar writing 256 MiB to stderr without a line break
/// grew the host by 513 MiB (the whole "line" was buffered). Measured on
/// the `cbs-host` process that serves the sidecar, not on this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_stderr_line_does_not_grow_the_host() {
    let server = NatsServer::start();
    let host = HostProcess::serve(
        &server.url(),
        "host-flood",
        &[cbs_tests::cell_toml::reference_dir()],
        &[],
    );
    let bus = server.bus().await;
    let flood = |mb: u64| json!({"action": "stderr_flood", "mb": mb});
    // A small flood first: the host's one-time costs (the sidecar's
    // start, the first log lines) are in the baseline.
    call_json(&bus, "test.reference", flood(1), TIMEOUT)
        .await
        .unwrap();
    let before = peak_rss_mib(host.pid());
    let reply = call_json(&bus, "test.reference", flood(64), TIMEOUT).await;
    assert_eq!(reply.unwrap()["written"], 1);
    // The pipe holds 64 KiB: the host has read nearly all of it by now.
    let grown = peak_rss_mib(host.pid()).saturating_sub(before);
    assert!(grown < 32, "the host's peak memory grew by {grown} MiB");
}

/// Regression: on shutdown (and undeploy) the messages already delivered to
/// a cell's subscription but not yet taken were dropped unanswered. A
/// current-thread runtime makes it exact: the dispatcher has not run when
/// the messages arrive and the shutdown begins.
#[tokio::test]
async fn a_stopping_host_answers_what_was_already_delivered() {
    let host = cbs_tests::TestHost::local(&[greet()]).await;
    let bus = host.bus().clone();
    let mut replies = bus.subscribe("_INBOX.drain.>", None).await.unwrap();
    for i in 0..50 {
        let envelope = cbs_tests::envelope_to("logic.greet", &json!({"name": "Ada"}));
        let mut message = cbs_host::envelope::codec::to_message(&envelope);
        message.reply = Some(format!("_INBOX.drain.{i}"));
        bus.publish(message).await.unwrap();
    }
    assert!(host.body().shutdown(TIMEOUT).await, "drained in time");
    let mut answered = 0;
    while let Ok(Some(reply)) = tokio::time::timeout(Duration::ZERO, replies.next()).await {
        let reply = Envelope::from_slice(&reply.payload).unwrap();
        assert!(reply.error.is_none(), "{:?}", reply.error);
        answered += 1;
    }
    assert_eq!(answered, 50, "every delivered message got its reply");
}

/// A process that writes its stderr in a loop gets its log budget (a burst
/// of 1000 lines, then 100 a second), not the host's disk: the rest are
/// counted, and each count is logged once its lines flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_floods_the_log_is_held_to_its_budget() {
    let server = NatsServer::start();
    let host = HostProcess::serve(
        &server.url(),
        "host-log",
        &[cbs_tests::cell_toml::reference_dir()],
        &[],
    );
    let bus = server.bus().await;
    let lines = |n: u64| json!({"action": "log_lines", "n": n});
    let started = std::time::Instant::now();
    call_json(&bus, "test.reference", lines(5_000), TIMEOUT)
        .await
        .unwrap();
    // Every line of the flood is either logged or in a "dropped" count;
    // the last count is logged when lines flow again (a poll's own line
    // may be dropped too).
    let deadline = started + Duration::from_secs(20);
    let mut polls = 0;
    let (logged, dropped) = loop {
        let log = host.log();
        let logged = log.lines().filter(|l| l.contains("of 5000")).count() as u64;
        let dropped: u64 = log
            .lines()
            .filter(|l| l.contains("dropped log lines"))
            .filter_map(|l| {
                l.split("dropped=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        if logged + dropped >= 5_000 {
            break (logged, dropped);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{logged} logged, {dropped} dropped"
        );
        call_json(&bus, "test.reference", lines(1), TIMEOUT)
            .await
            .unwrap();
        polls += 1;
        tokio::time::sleep(cbs_tests::POLL).await;
    };
    assert!(logged + dropped <= 5_000 + polls, "{logged} + {dropped}");
    let refilled = (started.elapsed().as_secs_f64() * 100.0) as u64;
    assert!(
        (1_000..=1_000 + refilled + 10).contains(&logged),
        "{logged} lines logged in {:?}",
        started.elapsed()
    );
}
