//! `cbs backup` and `cbs restore` between real nats-servers: a lattice with
//! a deployed cell, its state, a policy, the audit trail and a dead letter,
//! restored onto a fresh server, serves the same cell with the same state;
//! a damaged backup is refused naming the damaged part; a restore never
//! pours into a server that holds the streams already.

use std::time::Duration;

use cbs_host::audit::{Action, Audit, Filter};
use cbs_host::bus::BodyBus;
use cbs_tests::bundles::faulty_bundle;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs_said as run, HostProcess};
use cbs_tests::{call_json, eventually};
use serde_json::{json, Value};

const CELL: &str = "bk.tally";

async fn state(bus: &dyn BodyBus, payload: Value) -> Result<Value, String> {
    call_json(bus, CELL, payload, Duration::from_secs(5))
        .await
        .map(|reply| reply["value"].clone())
        .map_err(|e| e.to_string())
}

async fn messages(server: &NatsServer, stream: &str) -> u64 {
    let bus = server.bus().await;
    let js = async_nats::jetstream::new(bus.client().clone());
    let mut stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_onto_a_fresh_server_serves_the_same_cells_with_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lattice.cbsbackup");
    let file = file.to_str().unwrap();
    let mut old = NatsServer::start();
    let old_url = old.url();
    let host = HostProcess::serve(&old_url, "host-old", &[], &["--watch"]);
    let bundle = faulty_bundle(tmp.path(), CELL, "0.1.0", "[capabilities.state]\n");
    let (ok, out) = run(&["deploy", bundle.to_str().unwrap(), "--nats", &old_url]);
    assert!(ok, "{out}");
    let bus = old.bus().await;
    state(
        &bus,
        json!({"action": "state_set", "key": "visits", "value": "41"}),
    )
    .await
    .unwrap();
    old.dead_letter(CELL).await;

    let (ok, out) = run(&["backup", file, "--streams", "--nats", &old_url]);
    assert!(ok, "{out}");
    assert!(
        out.contains("OBJ_cbs-bundles") && out.contains("CBS_DLQ"),
        "{out}"
    );
    assert!(
        !out.contains("KV_cbs-hosts"),
        "live heartbeats are not copied: {out}"
    );
    drop(host);
    old.stop();

    let fresh = NatsServer::start();
    let url = fresh.url();
    let (ok, out) = run(&["restore", file, "--nats", &url]);
    assert!(ok, "{out}");
    assert!(
        out.contains("every part intact") && out.contains("restored"),
        "{out}"
    );
    let _host = HostProcess::serve(&url, "host-new", &[], &["--watch"]);
    let bus = fresh.bus().await;
    let kept = eventually(Duration::from_secs(30), "the restored cell", || {
        state(&bus, json!({"action": "state_get", "key": "visits"}))
    })
    .await;
    assert_eq!(kept, json!("41"), "the state came back");
    assert_eq!(
        messages(&fresh, "CBS_DLQ").await,
        1,
        "the dead letter came back"
    );
    let audit = Audit::open(bus.client()).await.unwrap();
    let deploys = audit
        .list(&Filter {
            action: Some(Action::Deploy),
            cell: Some(CELL.into()),
        })
        .await
        .unwrap();
    assert_eq!(deploys.len(), 1, "the audit trail came back");

    // Again onto the same server: refused, nothing doubled.
    let (ok, out) = run(&["restore", file, "--nats", &url]);
    assert!(!ok && out.contains("already holds stream"), "{out}");
    assert_eq!(messages(&fresh, "CBS_DLQ").await, 1);
}

#[test]
fn a_damaged_backup_is_refused_naming_the_damaged_part() {
    let tmp = tempfile::tempdir().unwrap();
    let server = NatsServer::start();
    let file = tmp.path().join("b.cbsbackup");
    let file = file.to_str().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = server.bus().await;
        let js = async_nats::jetstream::new(bus.client().clone());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "CBS_AUDIT".into(),
            subjects: vec!["cbs-audit.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..20 {
            js.publish("cbs-audit.deploy.x", format!("event {i:04}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    let (ok, out) = run(&["backup", file, "--nats", &server.url()]);
    assert!(ok, "{out}");
    assert!(run(&["restore", file, "--check"]).0);
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(10)
        .position(|w| w == b"event 0013")
        .expect("the audit event in the file");
    bytes[at + 6] = b'9';
    std::fs::write(file, &bytes).unwrap();
    let (ok, out) = run(&["restore", file, "--nats", &server.url()]);
    assert!(!ok);
    assert!(out.contains("streams/CBS_AUDIT.msgs is damaged"), "{out}");
    let cut = tmp.path().join("cut.cbsbackup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, out) = run(&["restore", cut.to_str().unwrap(), "--check"]);
    assert!(!ok && out.contains("damaged"), "{out}");
}

/// The stream `name` of a backup: its part from the manifest, and its
/// messages' file.
fn part_of(file: &str, name: &str) -> (serde_json::Value, Vec<u8>) {
    let mut archive = tar::Archive::new(std::fs::File::open(file).unwrap());
    let (mut manifest, mut messages) = (None, None);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if path == "MANIFEST.json" {
            manifest = Some(serde_json::from_slice::<Value>(&bytes).unwrap());
        } else if path == format!("streams/{name}.msgs") {
            messages = Some(bytes);
        }
    }
    let parts = manifest.unwrap()["parts"].as_array().unwrap().clone();
    let part = parts.into_iter().find(|p| p["name"] == name).unwrap();
    (part, messages.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backup_or_restore_goes_on_from_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    let old = NatsServer::start();
    for _ in 0..3 {
        old.dead_letter(CELL).await;
    }
    let (ok, out) = run(&["backup", &path("first"), "--streams", "--nats", &old.url()]);
    assert!(ok, "{out}");

    // A backup stopped after it had copied CBS_DLQ: the stream's part is
    // in FILE.parts/, and a run again takes it as it was.
    let (part, copied) = part_of(&path("first"), "CBS_DLQ");
    let parts = tmp.path().join("second.parts");
    std::fs::create_dir_all(&parts).unwrap();
    std::fs::write(parts.join("CBS_DLQ.json"), part.to_string()).unwrap();
    std::fs::write(parts.join("CBS_DLQ.msgs"), &copied).unwrap();
    old.dead_letter(CELL).await;
    let (ok, out) = run(&["backup", &path("second"), "--streams", "--nats", &old.url()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("CBS_DLQ: 3 message(s), copied by an earlier run"),
        "{out}"
    );
    assert!(
        !parts.exists(),
        "the parts are removed once the file is written"
    );

    // A restore stopped after one dead letter: it goes on with the others.
    let fresh = NatsServer::start();
    let url = fresh.url();
    fresh.dead_letter(CELL).await;
    std::fs::write(path("second.restored"), r#"{"CBS_DLQ": 1}"#).unwrap();
    let (ok, out) = run(&["restore", &path("second"), "--nats", &url]);
    assert!(ok, "{out}");
    assert!(out.contains("CBS_DLQ: 3 of 3 message(s) restored"), "{out}");
    assert_eq!(
        messages(&fresh, "CBS_DLQ").await,
        3,
        "none twice, none lost"
    );
    assert!(!std::path::Path::new(&path("second.restored")).exists());
}
