//! Durable cells on a real nats-server with JetStream: messages published
//! to a `[durable]` cell's stream are handled and acknowledged; a publish
//! retried with the same envelope id is stored once; a final error, a
//! message that is not an envelope, and a retryable failure past
//! `max_deliver` go to the dead-letter stream with their error.

use std::time::Duration;

use async_nats::jetstream;
use cbs_host::durable::{self, DeadLetter};
use cbs_host::envelope::ErrorCode;
use cbs_host::manifest::DurableSpec;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::HostProcess;
use cbs_tests::{envelope_to, eventually, CellToml};
use serde_json::{json, Value};

const CELL: &str = "test.durable";
const SUBJECT: &str = "cbs-durable.test.durable";
const STREAM: &str = "CBS_DURABLE_TEST_DURABLE";

struct Setup {
    server: NatsServer,
    _cell: tempfile::TempDir,
    host: HostProcess,
    js: jetstream::Context,
}

async fn setup() -> Setup {
    setup_on(NatsServer::start()).await
}

/// [`setup`] on a server of its own.
async fn setup_on(server: NatsServer) -> Setup {
    let cell = CellToml::faulty(CELL)
        .durable(DurableSpec {
            max_deliver: 3,
            backoff_ms: vec![50],
            ack_wait_ms: 5_000,
            ..DurableSpec::default()
        })
        .write();
    let host = HostProcess::serve(
        &server.url(),
        "durable-host",
        &[cell.path().to_path_buf()],
        &["--metrics", "127.0.0.1:0"],
    );
    let client = async_nats::connect(server.url()).await.unwrap();
    Setup {
        js: jetstream::new(client),
        server,
        _cell: cell,
        host,
    }
}

async fn publish(js: &jetstream::Context, payload: Value) -> jetstream::publish::PublishAck {
    durable::publish(js, SUBJECT, &envelope_to(CELL, &payload))
        .await
        .unwrap()
}

/// Waits until the cell's stream is empty: every message acknowledged
/// (work-queue retention) or terminated.
async fn drained(js: &jetstream::Context) {
    eventually(Duration::from_secs(20), "the stream to drain", || async {
        let mut stream = js.get_stream(STREAM).await.unwrap();
        match stream.info().await.unwrap().state.messages {
            0 => Ok(()),
            n => Err(format!("{n} messages still in the stream")),
        }
    })
    .await;
}

/// The shared consumer, as the server reports it.
async fn consumer(js: &jetstream::Context) -> jetstream::consumer::Info {
    js.get_stream(STREAM)
        .await
        .unwrap()
        .consumer_info(durable::consumer_name(CELL))
        .await
        .unwrap()
}

/// The cell's dead letters so far (the library's own reader).
async fn dead_letters(js: &jetstream::Context) -> Vec<DeadLetter> {
    durable::dead_letters(js, CELL)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, letter)| letter)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_messages_are_handled_and_acknowledged() {
    let s = setup().await;
    for _ in 0..50 {
        publish(&s.js, json!({"action": "count"})).await;
    }
    drained(&s.js).await;
    let consumer_info = consumer(&s.js).await;
    assert_eq!(consumer_info.num_ack_pending, 0);
    assert_eq!(consumer_info.delivered.stream_sequence, 50);
    assert!(dead_letters(&s.js).await.is_empty());
    drop(s.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_with_the_same_envelope_id_is_stored_once() {
    let s = setup().await;
    let envelope = envelope_to(CELL, &json!({"action": "count"}));
    let first = durable::publish(&s.js, SUBJECT, &envelope).await.unwrap();
    let again = durable::publish(&s.js, SUBJECT, &envelope).await.unwrap();
    assert!(!first.duplicate && again.duplicate, "{first:?} {again:?}");
    assert_eq!(first.sequence, again.sequence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_errors_and_exhausted_retries_go_to_the_dead_letter_stream() {
    let s = setup().await;
    publish(&s.js, json!({"action": "fail", "message": "no such order"})).await;
    publish(&s.js, json!({"action": "panic"})).await;
    let raw =
        s.js.publish(SUBJECT, "not an envelope".into())
            .await
            .unwrap();
    raw.await.unwrap();
    drained(&s.js).await;

    let letters = dead_letters(&s.js).await;
    let by_code = |code: ErrorCode| {
        letters
            .iter()
            .find(|l| l.error.code == code)
            .unwrap_or_else(|| panic!("no {code} letter in {letters:#?}"))
    };
    let failed = by_code(ErrorCode::CellFailed);
    assert_eq!(failed.delivered, 3, "retried up to max_deliver");
    assert_eq!(failed.message["payload"]["action"], "panic");
    let invalid: Vec<&DeadLetter> = letters
        .iter()
        .filter(|l| l.error.code == ErrorCode::InvalidInput)
        .collect();
    assert_eq!(invalid.len(), 2, "{letters:#?}");
    assert!(invalid.iter().all(|l| l.delivered == 1), "final at once");
    assert!(invalid.iter().any(|l| l.message == "not an envelope"));
    assert!(invalid.iter().any(|l| l.error.message == "no such order"));
    assert_eq!(letters.len(), 3);

    // What the host counted, as `cbs ps` shows it: the panicking message
    // came twice more, three went to the dead-letter stream, none waits.
    let out = cbs_tests::process::cbs(&["ps", "--json", "--nats", &s.server.url()]);
    let hosts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cell = hosts[0]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == CELL)
        .unwrap()
        .clone();
    assert_eq!(
        cell["durable"],
        json!({"lag": 0, "redelivered": 2, "dead_lettered": 3,
            "dead_lettered_without_body": 0, "dead_letter_failures": 0}),
        "{cell}"
    );
    // And as /metrics shows it.
    let addr = s.host.metrics_addr();
    let (status, metrics) = cbs_tests::process::http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "cbs_durable_dead_lettered_total{cell=\"test.durable\"} 3",
        "cbs_durable_redelivered_total{cell=\"test.durable\"} 2",
        "cbs_durable_lag{cell=\"test.durable\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

/// The server's `max_payload` in [`a_dead_letter_too_large_for_the_dlq_keeps_its_message_in_the_stream`].
const MAX_PAYLOAD: usize = 8192;

/// A message whose dead letter would exceed the server's `max_payload`
/// still ends in the dead-letter stream: the letter is kept without it,
/// pointing at the original, which stays in the cell's stream (delivered
/// no more) until `cbs dlq replay` publishes it again from there. Two
/// ways to get there: an envelope just under the limit that fails every
/// delivery, and a body of quotes, which the letter's JSON escapes to
/// twice its size (final at once: not an envelope).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_the_dlq_keeps_its_message_in_the_stream() {
    let server = NatsServer::with_jetstream_config(&format!("max_payload: {MAX_PAYLOAD}"));
    let s = setup_on(server).await;
    let url = s.server.url();
    // An envelope that fits with room for its headers, not with a letter's fields.
    let mut envelope = envelope_to(CELL, &json!({"action": "panic", "pad": ""}));
    let pad = "x".repeat(MAX_PAYLOAD - 150 - envelope.to_vec().len());
    envelope = envelope_to(CELL, &json!({"action": "panic", "pad": pad}));
    assert!(envelope.to_vec().len() < MAX_PAYLOAD - 100);
    let big = durable::publish(&s.js, SUBJECT, &envelope).await.unwrap();
    let quotes = "\"".repeat(MAX_PAYLOAD / 2 + 100);
    let raw = s.js.publish(SUBJECT, quotes.into()).await.unwrap();
    let escaped = raw.await.unwrap();

    let letters = eventually(Duration::from_secs(30), "two dead letters", || async {
        let letters = durable::dead_letters(&s.js, CELL).await.unwrap();
        match letters.len() {
            2 => Ok(letters),
            n => Err(format!("{n} dead letters: {letters:?}")),
        }
    })
    .await;
    let pointing = |seq: u64| {
        letters
            .iter()
            .map(|(_, l)| l)
            .find(|l| l.stream_seq == seq)
            .unwrap_or_else(|| panic!("no letter for seq {seq}: {letters:?}"))
    };
    let (failed, invalid) = (pointing(big.sequence), pointing(escaped.sequence));
    assert_eq!(failed.error.code, ErrorCode::CellFailed);
    assert_eq!(failed.delivered, 3, "given up at max_deliver");
    assert_eq!(invalid.error.code, ErrorCode::InvalidInput);
    for letter in [failed, invalid] {
        assert!(letter.body_in_original, "{letter:?}");
        assert_eq!(letter.message, Value::Null);
        assert_eq!(
            (letter.stream.as_str(), letter.subject.as_str()),
            (STREAM, SUBJECT)
        );
    }
    // The originals stay where the letters point.
    let stream = s.js.get_stream(STREAM).await.unwrap();
    for seq in [big.sequence, escaped.sequence] {
        stream.get_raw_message(seq).await.unwrap();
    }
    let ls = cbs_ok(&url, &["dlq", "ls", CELL]);
    for seq in [big.sequence, escaped.sequence] {
        let marker = format!("(too large: body in {STREAM} seq {seq})");
        assert!(ls.contains(&marker), "{marker} not in\n{ls}");
    }
    let (status, metrics) = cbs_tests::process::http_get(&s.host.metrics_addr(), "/metrics");
    assert_eq!(status, 200);
    let line = "cbs_durable_dead_lettered_without_body_total{cell=\"test.durable\"} 2";
    assert!(metrics.contains(line), "{line} not in\n{metrics}");

    // A replay publishes the originals again from the stream (they fail
    // again: two new letters, pointing at the copies) and removes them.
    let replayed = cbs_ok(&url, &["dlq", "replay", CELL, "--all"]);
    assert_eq!(replayed.matches("replayed").count(), 2, "{replayed}");
    for seq in [big.sequence, escaped.sequence] {
        assert!(stream.get_raw_message(seq).await.is_err(), "{seq} removed");
    }
    let again = eventually(
        Duration::from_secs(30),
        "the copies dead-lettered",
        || async {
            let letters = durable::dead_letters(&s.js, CELL).await.unwrap();
            let seqs: Vec<u64> = letters.iter().map(|(_, l)| l.stream_seq).collect();
            match seqs.iter().all(|seq| *seq > escaped.sequence) && seqs.len() == 2 {
                true => Ok(seqs),
                false => Err(format!("letters point at {seqs:?}")),
            }
        },
    )
    .await;
    assert_eq!(again.len(), 2);
}

/// Two hosts share the consumer; one is killed (SIGKILL) while it holds
/// messages: they are delivered again, to the other, and every message is
/// acknowledged in the end — none lost, none dead-lettered. The server's
/// count of deliveries and the survivor's count of redeliveries agree on
/// how many the dead host took with it: at least one (else the kill proved
/// nothing), at most what it could hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_by_a_killed_host_are_handled_by_the_other() {
    // Each host pulls only what it can run (no queue), and handles each
    // message well within ack_wait: a redelivery comes only from the kill.
    const CONCURRENCY: u32 = 4;
    let server = NatsServer::start();
    let cell = CellToml::faulty(CELL)
        .durable(DurableSpec {
            ack_wait_ms: 1_000,
            ..DurableSpec::default()
        })
        .limits(|l| {
            l.concurrency = CONCURRENCY;
            l.queue = 0;
        })
        .write();
    let cells = [cell.path().to_path_buf()];
    let metrics = ["--metrics", "127.0.0.1:0"];
    let mut doomed = HostProcess::serve(&server.url(), "doomed", &cells, &metrics);
    let survivor = HostProcess::serve(&server.url(), "survivor", &cells, &metrics);
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    const SENT: u64 = 100;
    for _ in 0..SENT {
        publish(&js, json!({"action": "sleep", "ms": 200})).await;
    }

    // Kill one host while it holds messages (each sleeps 200 ms; it logs
    // "sleeping" as it starts one).
    doomed.wait_for_log("sleeping", Duration::from_secs(20));
    doomed.kill();
    drained(&js).await;
    let info = consumer(&js).await;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(
        info.delivered.stream_sequence, SENT,
        "every message was delivered"
    );
    assert!(dead_letters(&js).await.is_empty(), "nothing dead-lettered");

    // Every delivery, a redelivery too, takes a consumer sequence.
    let by_server = info.delivered.consumer_sequence - SENT;
    let metric = "cbs_durable_redelivered_total";
    let by_survivor =
        cbs_tests::process::cell_metric(&survivor.metrics_addr(), metric, CELL) as u64;
    eprintln!("redelivered after the kill: {by_server}");
    assert_eq!(
        by_survivor, by_server,
        "every redelivery went to the survivor, none came before the kill"
    );
    assert!(
        (1..=u64::from(CONCURRENCY)).contains(&by_server),
        "{by_server} redelivered: the dead host held between 1 and {CONCURRENCY}"
    );
}

/// `cbs dlq`: a message the deployed version refuses lands in the
/// dead-letter stream; after a fixed version is deployed, `cbs dlq replay`
/// sends it again and it is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_after_a_fix_is_processed() {
    let server = NatsServer::start();
    let url = server.url();
    let schemas = tempfile::tempdir().unwrap();
    let strict = schemas.path().join("only-count.json");
    std::fs::write(
        &strict,
        r#"{"type": "object", "properties": {"action": {"const": "count"}}}"#,
    )
    .unwrap();
    let spec = DurableSpec::default();
    let broken = CellToml::faulty(CELL)
        .durable(spec.clone())
        .input("test.durable/action@1", &strict)
        .write();
    let mut host = HostProcess::serve(&url, "v1", &[broken.path().to_path_buf()], &[]);
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    publish(&js, json!({"action": "echo", "value": 7})).await;
    drained(&js).await;

    let cbs = |args: &[&str]| cbs_ok(&url, args);
    let listed: Value = serde_json::from_str(&cbs(&["dlq", "ls", CELL, "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["letter"]["error"]["code"], "contract_violation");
    let seq = listed[0]["seq"].as_u64().unwrap().to_string();
    let shown: Value = serde_json::from_str(&cbs(&["dlq", "show", CELL, &seq])).unwrap();
    assert_eq!(shown["message"]["payload"]["value"], 7);

    // The fix: the same cell without the over-strict schema.
    host.kill();
    let fixed = CellToml::faulty(CELL).durable(spec).write();
    let _host = HostProcess::serve(&url, "v2", &[fixed.path().to_path_buf()], &[]);
    assert!(cbs(&["dlq", "replay", CELL, "--all"]).contains(&format!("replayed {seq}")));
    drained(&js).await;
    let left: Value = serde_json::from_str(&cbs(&["dlq", "ls", CELL, "--json"])).unwrap();
    assert_eq!(
        left,
        json!([]),
        "the replayed letter is gone and none is new"
    );
}

/// `cbs-host load` shows what a durable cell will use: stream, subjects,
/// consumer, settings and where its dead letters go.
#[test]
fn load_shows_the_durable_settings() {
    let cell = CellToml::faulty(CELL)
        .durable(DurableSpec::default())
        .write();
    let dir = cell.path().to_str().unwrap();
    let out = cbs_tests::process::cbs_host(&["load", dir], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "durable       stream CBS_DURABLE_TEST_DURABLE on cbs-durable.test.durable \
             (consumer cbs-test_durable); max_deliver 5"
        ) && text.contains("dead letters to cbs-dlq.test.durable"),
        "{text}"
    );
    let out = cbs_tests::process::cbs_host(&["load", "--json", dir], "");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["durable"]["backoff_ms"], json!([100, 1000, 5000]));
    assert_eq!(json["durable"]["consumer"], "cbs-test_durable");
}

/// nats-server restarts (same store, stopped with SIGTERM: a SIGKILL can
/// lose messages JetStream had not yet written out) while a durable cell
/// works through its stream: the host resumes pulling without a restart of
/// its own, and every message is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_loses_nothing_and_the_host_resumes() {
    let mut s = setup().await;
    const SENT: u64 = 200;
    for _ in 0..SENT {
        publish(&s.js, json!({"action": "sleep", "ms": 100})).await;
    }
    s.host.wait_for_log("sleeping", Duration::from_secs(20));
    s.server.restart_gracefully();
    // A new client: the old one may still be reconnecting.
    let js = jetstream::new(async_nats::connect(s.server.url()).await.unwrap());
    drained(&js).await;
    let info = consumer(&js).await;
    assert_eq!(
        info.delivered.stream_sequence, SENT,
        "every message was delivered"
    );
    assert_eq!(info.num_ack_pending, 0);
    assert!(dead_letters(&js).await.is_empty());
    assert!(
        s.host.log().contains("reconnected to NATS"),
        "{}",
        s.host.log()
    );
}

/// `cbs replay`: a stream that keeps processed messages (`retention =
/// "limits"`) re-drives a range, from a sequence or from a time, into the
/// cell, which handles exactly those messages once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbs_replay_re_drives_a_stream_range_into_the_cell() {
    use cbs_host::manifest::{Retention, StateGrant};
    let server = NatsServer::start();
    let url = server.url();
    let cell = CellToml::faulty(CELL)
        .durable(DurableSpec {
            retention: Retention::Limits,
            ..DurableSpec::default()
        })
        .capabilities(|c| c.state = Some(StateGrant::default()))
        .write();
    let _host = HostProcess::serve(&url, "replay", &[cell.path().to_path_buf()], &[]);
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut ids = Vec::new();
    for _ in 0..6 {
        let envelope = envelope_to(CELL, &json!({"action": "record"}));
        durable::publish(&js, SUBJECT, &envelope).await.unwrap();
        ids.push(envelope.id);
    }
    wait_handled(&js, &ids, &[1; 6]).await;

    let cbs = |args: &[&str]| cbs_ok(&url, args);
    // From the time the fourth message was stored: the last three again.
    let stream = js.get_stream(STREAM).await.unwrap();
    let fourth = stream.get_raw_message(4).await.unwrap().time;
    let from = fourth
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let said = cbs(&["replay", CELL, "--from", &from]);
    assert!(
        said.contains("replayed 3 messages of CBS_DURABLE_TEST_DURABLE (sequences 4 to 6)"),
        "{said}"
    );
    wait_handled(&js, &ids, &[1, 1, 1, 2, 2, 2]).await;
    // A sequence range: only the second (the replays above are 7 to 9).
    assert!(cbs(&["replay", CELL, "--from", "2", "--to", "2"]).contains("replayed 1 message of"));
    wait_handled(&js, &ids, &[1, 2, 1, 2, 2, 2]).await;
    assert!(cbs(&["replay", CELL, "--from", "1000"]).contains("nothing to replay"));
    let out = cbs_tests::process::cbs(&["replay", CELL, "--from", "yesterday"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither a sequence nor an RFC 3339 time")
    );
}

/// `cbs ARGS --nats URL`, which must succeed; its stdout.
fn cbs_ok(url: &str, args: &[&str]) -> String {
    let out = cbs_tests::process::cbs(&[args, &["--nats", url]].concat());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Times the sink state of CELL counted each of `ids`.
async fn handled_times(js: &jetstream::Context, ids: &[String]) -> Vec<u64> {
    use cbs_host::state::jetstream::{bucket_name, encode_key};
    // The bucket is made on the cell's first state operation.
    let Ok(bucket) = js.get_key_value(bucket_name(CELL)).await else {
        return vec![0; ids.len()];
    };
    let mut out = Vec::new();
    for id in ids {
        let value = bucket.get(encode_key(id)).await.unwrap();
        out.push(value.map_or(0, |v| {
            std::str::from_utf8(&v).unwrap().parse::<u64>().unwrap()
        }));
    }
    out
}

async fn wait_handled(js: &jetstream::Context, ids: &[String], want: &[u64]) {
    eventually(Duration::from_secs(20), "the sink's counts", || async {
        let got = handled_times(js, ids).await;
        if got == want {
            Ok(())
        } else {
            Err(format!("handled {got:?}, want {want:?}"))
        }
    })
    .await;
}

/// `cbs publish --durable`: stored once per envelope id; a subject no
/// stream takes is an error that says so, not a silent loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbs_publish_stores_once_per_id_and_refuses_what_nothing_stores() {
    let s = setup().await;
    let url = s.server.url();
    let payload = r#"{"action": "count"}"#;
    let first = cbs_ok(
        &url,
        &["publish", SUBJECT, payload, "--durable", "--id", "order-7"],
    );
    assert!(first.contains("stored order-7 as sequence"), "{first}");
    let again = cbs_ok(
        &url,
        &["publish", SUBJECT, payload, "--durable", "--id", "order-7"],
    );
    assert!(again.contains("order-7 was stored before"), "{again}");
    drained(&s.js).await;
    assert_eq!(
        consumer(&s.js).await.delivered.stream_sequence,
        1,
        "handled once"
    );
    let out = cbs_tests::process::cbs(&["publish", "nowhere.x", "{}", "--durable", "--nats", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unavailable: no JetStream stream takes nowhere.x"),
        "{err}"
    );
}

/// `cbs-host load` also shows a cell's subscriptions and state limits.
#[test]
fn load_shows_subscriptions_and_state() {
    use cbs_host::events::{Delivery, Subscribe};
    use cbs_host::manifest::StateGrant;
    let cell = CellToml::faulty(CELL)
        .subscribe(Subscribe {
            subject: "orders.created".into(),
            delivery: Delivery::Queue,
            durable: true,
            stream: None,
        })
        .capabilities(|c| c.state = Some(StateGrant::default()))
        .write();
    let out = cbs_tests::process::cbs_host(&["load", cell.path().to_str().unwrap()], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("subscribes    orders.created (durable, stream CBS_EVENTS_ORDERS_CREATED_"),
        "{text}"
    );
    assert!(
        text.contains(
            "state         own key-value bucket: values up to 65536 bytes, 16777216 bytes in all"
        ),
        "{text}"
    );
}
