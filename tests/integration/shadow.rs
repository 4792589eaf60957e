//! Shadow replay on a real nats-server and a watching host: `cbs record`
//! keeps a cell's live requests, replies and the replies of the calls it
//! made; `cbs replay --shadow` runs them against a candidate that takes no
//! live traffic, and reports exactly the one reply the candidate changed,
//! its calls answered from the recording and never sent to the live cell.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cbs_host::bus::BodyBus;
use cbs_tests::bin;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::{call_json, eventually};
use serde_json::{json, Value};

const CELL: &str = "test.shadow";
const CALLEE: &str = cbs_tests::bundles::UPPER;

/// The test component as `test.shadow` version `version`, calling
/// text.upper, with `MODE` = `mode` in its environment and an output
/// schema whose `count` (per instance, so never the same twice) is
/// volatile; packed as a bundle in `dir`.
fn shadow_release(dir: &Path, version: &str, mode: &str) -> PathBuf {
    let tables = format!(
        "[output]\nid = \"test.shadow/reply@1\"\nschema = \"schemas/output.json\"\n\
         [capabilities]\ncalls = [\"{CALLEE}\"]\n[capabilities.env]\nMODE = \"{mode}\"\n"
    );
    let cell = cbs_tests::bundles::faulty_as(dir, CELL, &tables);
    let version = format!("version = \"{version}\"");
    cbs_tests::bundles::edit(&cell.join("cell.toml"), "version = \"0.1.0\"", &version);
    std::fs::create_dir_all(cell.join("schemas")).unwrap();
    let schema = json!({
        "type": "object",
        "required": ["ok"],
        "properties": {
            "ok": {"type": "boolean"},
            "count": {"type": "integer", "x-cbs-volatile": true},
            "value": {}
        }
    });
    std::fs::write(cell.join("schemas/output.json"), schema.to_string()).unwrap();
    cbs_tests::bundles::pack(&cell)
}

/// How many requests the live hosts counted for `cell`.
async fn live_requests(client: &async_nats::Client, cell: &str) -> u64 {
    let hosts =
        cbs_host::discovery::list(client, Duration::from_millis(150), Duration::from_secs(2))
            .await
            .unwrap();
    hosts
        .iter()
        .flat_map(|h| h.cells.iter().filter(|c| c.id == cell))
        .map(|c| c.requests)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_replay_reports_the_one_changed_reply_and_sends_no_call_to_live_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let live = shadow_release(&tmp.path().join("live"), "0.1.0", "a");
    let candidate = shadow_release(&tmp.path().join("candidate"), "0.1.1", "b");
    let server = NatsServer::start();
    let url = server.url();
    let _host = HostProcess::serve(&url, "shadow-a", &[], &["--watch"]);
    for bundle in [cbs_tests::bundles::releases().v1.as_path(), live.as_path()] {
        let out = cbs(&["deploy", bundle.to_str().unwrap(), "--nats", &url]);
        assert!(out.status.success(), "{out:?}");
    }
    let bus = server.bus().await;
    let ask = |payload: Value| {
        let bus = &bus;
        async move {
            call_json(bus, CELL, payload, Duration::from_secs(10))
                .await
                .expect("the live cell answers")
        }
    };
    // Before the recording, so the live count is ahead of the replay's.
    for _ in 0..3 {
        ask(json!({"action": "echo", "value": 0})).await;
    }

    let record = std::process::Command::new(bin("cbs"))
        .args([
            "record",
            CELL,
            "--for",
            "60s",
            "--max-count",
            "6",
            "--nats",
            &url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = bus.client().clone();
    eventually(Duration::from_secs(20), "the host records", || {
        let client = client.clone();
        async move {
            let hosts = cbs_host::discovery::list(
                &client,
                Duration::from_millis(150),
                Duration::from_secs(2),
            )
            .await
            .map_err(|e| e.to_string())?;
            let on = hosts
                .iter()
                .flat_map(|h| &h.cells)
                .any(|c| c.id == CELL && c.recording.is_some());
            on.then_some(())
                .ok_or_else(|| "not recording yet".to_owned())
        }
    })
    .await;
    // Anyone allowed to publish there can add to a recording: a record
    // that does not parse is skipped, never a failure of the replay.
    let forged = cbs_host::bus::Message::new(cbs_host::shadow::subject(CELL), &b"not a record"[..]);
    bus.publish(forged).await.unwrap();
    let asked = [
        json!({"action": "echo", "value": 1}),
        json!({"action": "env", "name": "MODE"}),
        json!({"action": "call", "cell": CALLEE, "payload": {"text": "hi"}}),
        json!({"action": "count"}),
        json!({"action": "echo", "value": "x"}),
    ];
    for payload in &asked {
        ask(payload.clone()).await;
    }
    let recorded = record.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&recorded.stdout).into_owned();
    assert!(recorded.status.success(), "{recorded:?}");
    assert!(
        said.contains("recorded 6 request(s) of test.shadow"),
        "{said}"
    );

    let callee_before = live_requests(&client, CALLEE).await;
    let replay = |bundle: &Path, json: bool| {
        let mut args = vec![
            "replay",
            "--shadow",
            bundle.to_str().unwrap(),
            "--nats",
            &url,
        ];
        if json {
            args.push("--json");
        }
        let out = cbs(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{text}{err}");
        assert!(
            err.contains("1 record(s) that do not parse were skipped"),
            "{err}"
        );
        (out.status.success(), text)
    };
    // The release recorded answers as recorded (the volatile count aside).
    let (same, text) = replay(&live, false);
    assert!(
        same && text.contains("5 replayed: 5 equal, 0 different, 0 error(s)"),
        "{text}"
    );

    let (same, text) = replay(&candidate, true);
    assert!(!same, "a changed reply fails the replay");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (results, summary) = lines.split_at(lines.len() - 1);
    assert_eq!(
        summary[0],
        json!({"replayed": 5, "equal": 4, "different": 1, "errors": 0})
    );
    let different: Vec<&Value> = results
        .iter()
        .filter(|r| r["verdict"] == "different")
        .collect();
    assert_eq!(different.len(), 1, "{results:?}");
    assert_eq!(
        different[0]["request"],
        json!({"action": "env", "name": "MODE"})
    );
    assert_eq!(
        different[0]["differences"],
        json!([{"path": "/value", "recorded": "a", "candidate": "b"}])
    );
    let call = results
        .iter()
        .find(|r| r["request"]["action"] == "call")
        .unwrap();
    assert_eq!(
        call["verdict"], "equal",
        "answered from the recording: {call}"
    );
    assert_eq!(
        live_requests(&client, CALLEE).await,
        callee_before,
        "no recorded call went to the live callee"
    );
}
