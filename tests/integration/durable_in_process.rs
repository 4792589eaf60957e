//! Durable cells on the in-process bus, served from the embedded store in
//! the host's data folder: handled and acknowledged, deduplicated by
//! envelope id, a final failure dead-lettered with its error, messages
//! stored while no host runs are handled by the next one, and a host
//! process SIGKILLed while it holds messages loses none: the next one on
//! the same data folder handles what the dead one had not acknowledged.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cbs_host::bus::local::LocalBus;
use cbs_host::durable::embedded::EmbeddedLog;
use cbs_host::durable::{Consumer, ConsumerSpec, DurableLog, Keep, Settle, StreamSpec};
use cbs_host::envelope::{Envelope, ErrorCode};
use cbs_host::manifest::{DurableSpec, StateGrant};
use cbs_tests::process::{cell_metric, cell_metrics, HostProcess};
use cbs_tests::{envelope_to, eventually, CellToml, TestHost};
use futures_util::StreamExt;
use serde_json::{json, Value};

const CELL: &str = "test.durable";
const SUBJECT: &str = "cbs-durable.test.durable";

fn cell() -> tempfile::TempDir {
    CellToml::faulty(CELL)
        .durable(DurableSpec {
            max_deliver: 2,
            backoff_ms: vec![10],
            ..DurableSpec::default()
        })
        .capabilities(|c| c.state = Some(StateGrant::default()))
        .write()
}

async fn host(data: &Path, cell: &tempfile::TempDir) -> TestHost {
    let bus = Arc::new(LocalBus::new());
    TestHost::with_data(bus, Some(data), &[cell.path().to_path_buf()]).await
}

async fn publish(log: &dyn DurableLog, envelope: &Envelope) -> bool {
    let stored = log
        .publish(SUBJECT, &envelope.id, envelope.to_vec().into())
        .await;
    !stored.unwrap().duplicate
}

/// Times the sink handled `id` (its state), waiting up to 10 s for `want`.
async fn wait_handled(host: &TestHost, id: &str, want: u64) {
    eventually(Duration::from_secs(10), "the sink's count", || async {
        let got = host
            .call(CELL, json!({"action": "state_get", "key": id}))
            .await
            .unwrap();
        let times = got["value"]
            .as_str()
            .map_or(0, |v| v.parse::<u64>().unwrap());
        assert!(times <= want, "{id} handled {times} times, want {want}");
        if times == want {
            Ok(())
        } else {
            Err(format!("{id} handled {times} times, want {want}"))
        }
    })
    .await;
}

fn record() -> Envelope {
    envelope_to(CELL, &json!({"action": "record"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_cell_in_process_acks_dedups_and_dead_letters() {
    let data = tempfile::tempdir().unwrap();
    let cell = cell();
    let host = host(data.path(), &cell).await;
    let log = host.body().durable().clone();
    assert_eq!(log.kind(), "embedded");

    let once = record();
    assert!(publish(&*log, &once).await);
    assert!(
        !publish(&*log, &once).await,
        "the same envelope id is stored once"
    );
    let others: Vec<Envelope> = (0..5).map(|_| record()).collect();
    for e in &others {
        assert!(publish(&*log, e).await);
    }
    for e in others.iter().chain([&once]) {
        wait_handled(&host, &e.id, 1).await;
    }

    let poison = envelope_to(CELL, &json!({"action": "fail", "message": "never"}));
    publish(&*log, &poison).await;
    let letters = eventually(Duration::from_secs(10), "a dead letter", || async {
        let letters = log.dead_letters(CELL).await.unwrap();
        if letters.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(letters)
        }
    })
    .await;
    let (_, letter) = &letters[0];
    assert_eq!(letter.error.code, ErrorCode::InvalidInput, "final at once");
    assert_eq!((letter.delivered, letter.subject.as_str()), (1, SUBJECT));
    assert_eq!(letter.message["id"], Value::from(poison.id.as_str()));
    // The cell kept serving the rest.
    let after = record();
    publish(&*log, &after).await;
    wait_handled(&host, &after.id, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stored_while_no_host_runs_are_handled_by_the_next() {
    let data = tempfile::tempdir().unwrap();
    let cell = cell();
    {
        // The first run makes the stream and consumer, then stops.
        let host = host(data.path(), &cell).await;
        assert!(host.body().shutdown(Duration::from_secs(5)).await);
    }
    let stored: Vec<Envelope> = (0..3).map(|_| record()).collect();
    {
        let log = EmbeddedLog::new(data.path());
        for e in &stored {
            assert!(publish(&log, e).await);
        }
    }
    let host = host(data.path(), &cell).await;
    for e in &stored {
        wait_handled(&host, &e.id, 1).await;
    }
}

/// Consumer `c` of the work-queue stream `S`, which takes `s.x`.
async fn consumer_c(log: &EmbeddedLog) -> Box<dyn Consumer> {
    let stream = StreamSpec {
        name: "S".to_owned(),
        subjects: vec!["s.x".to_owned()],
        retention: Keep::WorkQueue,
        dedup_window: Duration::from_secs(60),
        max_age: Duration::ZERO,
    };
    let consumer = ConsumerSpec {
        name: "c".to_owned(),
        filter: None,
        only_new: false,
        max_deliver: 5,
        ack_wait: Duration::from_secs(30),
    };
    log.open(&stream, &consumer).await.unwrap()
}

/// Up to `max` of the deliveries `log` has for its consumer `c` of stream
/// `S` now: their payloads, acknowledged as they come.
async fn drain(log: &EmbeddedLog, max: usize) -> std::collections::BTreeSet<String> {
    let consumer = consumer_c(log).await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < max {
        let want = (max - got.len()).min(64);
        let mut batch = consumer
            .fetch(want, Duration::from_millis(100))
            .await
            .unwrap();
        let mut any = false;
        while let Some(delivery) = batch.next().await {
            let delivery = delivery.unwrap();
            got.insert(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.settle(Settle::Ack).await.unwrap();
            any = true;
        }
        if !any {
            break;
        }
    }
    got
}

/// What a host killed now would leave: a copy of its store file, opened.
fn crash_copy(data: &Path) -> (tempfile::TempDir, EmbeddedLog) {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(data.join("durable.redb"), copy.path().join("durable.redb")).unwrap();
    let log = EmbeddedLog::new(copy.path());
    (copy, log)
}

/// Acknowledgements are committed without waiting for the disk and flushed
/// together: a crash right after them loses no message (the ones it did
/// not record come again), and within the flush interval the file has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_reach_the_disk_within_the_flush_interval() {
    let data = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(data.path());
    let all: std::collections::BTreeSet<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert!(drain(&log, usize::MAX).await.is_empty(), "a new stream");
    for id in &all {
        log.publish("s.x", id, id.clone().into_bytes().into())
            .await
            .unwrap();
    }
    let handled = drain(&log, 10).await;
    let unhandled: std::collections::BTreeSet<String> = all.difference(&handled).cloned().collect();
    assert_eq!(unhandled.len(), 10);

    let (_copy, crashed) = crash_copy(data.path());
    let after_crash = drain(&crashed, usize::MAX).await;
    assert!(
        unhandled.is_subset(&after_crash) && after_crash.is_subset(&all),
        "every message not acknowledged comes again: {after_crash:?}"
    );
    drop(crashed);

    eventually(
        Duration::from_secs(5),
        "the acknowledgements on disk",
        || async {
            let (_copy, crashed) = crash_copy(data.path());
            let left = drain(&crashed, usize::MAX).await;
            if left == unhandled {
                Ok(())
            } else {
                Err(format!("{} messages would come again", left.len()))
            }
        },
    )
    .await;
}

/// Each delivery says how many messages wait after it: exactly after a full
/// count, and still as the backlog drains between counts (a take then reads
/// only as far as its batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_report_what_still_waits_as_the_backlog_drains() {
    let data = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(data.path());
    let consumer = consumer_c(&log).await;
    for i in 0..100 {
        let id = format!("m{i}");
        log.publish("s.x", &id, id.clone().into_bytes().into())
            .await
            .unwrap();
    }
    let mut reported = Vec::new();
    for _ in 0..3 {
        let batch: Vec<_> = consumer
            .fetch(10, Duration::from_secs(1))
            .await
            .unwrap()
            .collect()
            .await;
        let batch: Vec<_> = batch.into_iter().map(Result::unwrap).collect();
        assert_eq!(batch.len(), 10);
        reported.push(batch.iter().map(|d| d.pending).collect::<Vec<_>>());
    }
    let want = |after: u64| (0..10).rev().map(|i| after + i).collect::<Vec<_>>();
    assert_eq!(reported, [want(90), want(80), want(70)]);
}

const SINK: &str = "test.sink";
const SINK_SUBJECT: &str = "cbs-durable.test.sink";
/// The sink runs one message at a time, and holds no more pulled messages
/// than that (its queue is for requests): at the first host's chaos
/// latency of 100 ms, the message it holds when killed was taken well
/// past the store's flush interval.
const SINK_CONCURRENCY: u32 = 1;
const SINK_QUEUE: u32 = 7;

/// The sink: durable, counting in its state how many times it handled
/// each envelope id (`record`).
fn sink() -> tempfile::TempDir {
    CellToml::faulty(SINK)
        .durable(DurableSpec {
            // Longer than the test: only a restart delivers a message again.
            ack_wait_ms: 120_000,
            ..DurableSpec::default()
        })
        .capabilities(|c| c.state = Some(StateGrant::default()))
        .limits(|l| {
            l.concurrency = SINK_CONCURRENCY;
            l.queue = SINK_QUEUE;
            l.timeout_ms = 10_000;
        })
        .write()
}

/// The way in from outside the process: `POST /feed` with a `publish`
/// action stores one envelope for the sink (durably: the answer comes once
/// it is on disk).
fn feeder() -> tempfile::TempDir {
    use cbs_host::http::route::{Auth, HttpRoute, Method};
    CellToml::faulty("test.feed")
        .capabilities(|c| c.publish_durable = vec![SINK_SUBJECT.to_owned()])
        .http(HttpRoute {
            method: Method::Post,
            path: "/feed".to_owned(),
            auth: Auth::None,
            summary: None,
        })
        .write()
}

/// `count` POSTs of `body` to `url` over one curl (one connection); the
/// statuses.
fn post_times(url: &str, body: &str, count: usize) -> Vec<String> {
    let mut command = std::process::Command::new("curl");
    command.args(["-sS", "--max-time", "60", "-w", "%{http_code}\n"]);
    command.args(["-H", "Content-Type: application/json", "-d", body]);
    for _ in 0..count {
        command.args(["-o", "/dev/null", url]);
    }
    let out = command.output().expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What a dead host left in the store of `data` for the sink, read from a
/// copy (the next host finds the same): each waiting message's envelope id
/// and the deliveries it had.
async fn left_for_the_sink(data: &Path, sink: &Path) -> Vec<(String, u64)> {
    let manifest = cbs_host::manifest::CellSpec::from_dir(sink)
        .unwrap()
        .manifest;
    let spec = manifest.durable.clone().unwrap();
    let (_copy, log) = crash_copy(data);
    let consumer = log
        .open(
            &StreamSpec::of_cell(&manifest, &spec),
            &ConsumerSpec::of_cell(&manifest, &spec),
        )
        .await
        .unwrap();
    let mut left = Vec::new();
    loop {
        let batch: Vec<_> = consumer
            .fetch(64, Duration::from_millis(100))
            .await
            .unwrap()
            .collect()
            .await;
        if batch.is_empty() {
            return left;
        }
        for delivery in batch {
            let delivery = delivery.unwrap();
            let envelope = Envelope::from_slice(&delivery.payload).unwrap();
            // This take is one more delivery than the dead host made.
            left.push((envelope.id, delivery.delivered - 1));
        }
    }
}

/// The sink's state in `data`: times handled, by envelope id.
async fn sink_state(data: &Path) -> std::collections::HashMap<String, u64> {
    use cbs_host::state::embedded::EmbeddedState;
    use cbs_host::state::StateBackend;
    let bucket = EmbeddedState::new(data)
        .open(SINK, StateGrant::default())
        .await
        .unwrap();
    let mut state = std::collections::HashMap::new();
    let mut cursor = Some(0);
    while let Some(at) = cursor {
        let (keys, next) = bucket.keys(at).await.unwrap();
        for key in keys {
            let value = bucket.get(&key).await.unwrap().unwrap();
            let times = String::from_utf8(value).unwrap().parse().unwrap();
            state.insert(key, times);
        }
        cursor = next;
    }
    state
}

/// `cbs-host run --data-dir DIR` (in process, the embedded store) is
/// SIGKILLed while its durable sink holds messages, then started again on
/// the same folder: every message stored is handled at least once; only
/// those the store had not recorded as acknowledged come again, and the
/// new host counts as redelivered exactly those the store says the dead
/// host took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_process_loses_no_stored_message() {
    const SENT: usize = 60;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let (sink, feeder) = (sink(), feeder());
    let cells = [sink.path().to_path_buf(), feeder.path().to_path_buf()];
    // The first life is slowed, so the sink holds messages when it dies.
    let chaos = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(chaos.path(), format!("[\"{SINK}\"]\nlatency_ms = 100\n")).unwrap();
    let metrics = ["--metrics", "127.0.0.1:0"];
    let first_args = [
        &["--data-dir", data_dir, "--http", "127.0.0.1:0"][..],
        &metrics,
        &["--chaos", chaos.path().to_str().unwrap()],
    ]
    .concat();
    let mut first = HostProcess::local(&cells, &first_args);
    let feed = format!("http://{}/feed", first.http_addr());
    let body =
        json!({"action": "publish", "subject": SINK_SUBJECT, "payload": {"action": "record"}});
    let statuses = post_times(&feed, &body.to_string(), SENT);
    assert_eq!(statuses, vec!["200"; SENT], "every message stored");

    // Kill it once it finished some and holds one more (admitted, counted
    // as a request, not finished: in flight; a durable cell holds no more
    // pulled messages than it runs at once, here one).
    let addr = first.metrics_addr();
    eventually(Duration::from_secs(30), "the sink at work", || async {
        let m = cell_metrics(&addr, SINK);
        let in_flight = m["cbs_cell_in_flight"];
        let finished = m["cbs_cell_requests_total"] - in_flight;
        match finished >= 5.0 && in_flight >= 1.0 {
            true => Ok(()),
            false => Err(format!("{finished} finished, {in_flight} in flight")),
        }
    })
    .await;
    first.kill();

    let left = left_for_the_sink(data.path(), sink.path()).await;
    let waiting: BTreeSet<&str> = left.iter().map(|(id, _)| id.as_str()).collect();
    let held = left.iter().filter(|(_, taken)| *taken > 0).count();
    eprintln!(
        "killed: {} of {SENT} messages unacknowledged on disk, {held} of them taken",
        left.len()
    );
    assert!(
        held >= 1,
        "the store records no message the dead host took ({} waiting)",
        left.len()
    );
    assert!(left.len() < SENT, "the dead host acknowledged some");

    // The next life, on the same folder, without chaos.
    let mut second =
        HostProcess::local(&cells, &[&["--data-dir", data_dir][..], &metrics].concat());
    let addr = second.metrics_addr();
    let sample = |name| cell_metric(&addr, name, SINK);
    eventually(Duration::from_secs(30), "the waiting messages", || async {
        match sample("cbs_cell_requests_total") {
            n if n >= left.len() as f64 => Ok(()),
            n => Err(format!("handled {n} of {}", left.len())),
        }
    })
    .await;
    assert_eq!(sample("cbs_cell_requests_total"), left.len() as f64);
    assert_eq!(
        sample("cbs_durable_redelivered_total"),
        held as f64,
        "redelivered: the messages the dead host took, no other"
    );
    second.terminate();
    assert!(second.wait_exit(Duration::from_secs(15)).success());

    let state = sink_state(data.path()).await;
    assert_eq!(state.len(), SENT, "every message handled: {state:?}");
    for id in &waiting {
        assert!(state.contains_key(*id), "{id} waited and was handled");
    }
    for (id, times) in &state {
        match times {
            1 => {}
            2 => assert!(
                waiting.contains(id.as_str()),
                "{id} handled again though acknowledged on disk"
            ),
            n => panic!("{id} handled {n} times"),
        }
    }
}

/// A durable cell pulls no more than it runs at once: one running, room to
/// queue eight, and five messages slower in all than the ack wait are each
/// delivered once — none again while it waited its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_messages_are_not_delivered_again_while_they_wait_to_run() {
    const SLOW: &str = "test.slow";
    let cell = CellToml::faulty(SLOW)
        .durable(DurableSpec {
            ack_wait_ms: 500,
            max_deliver: 5,
            ..DurableSpec::default()
        })
        .limits(|l| {
            l.concurrency = 1;
            l.queue = 8;
        })
        .write();
    let data = tempfile::tempdir().unwrap();
    let host = host(data.path(), &cell).await;
    let log = host.body().durable().clone();
    for _ in 0..5 {
        let slow = envelope_to(SLOW, &json!({"action": "sleep", "ms": 300}));
        log.publish("cbs-durable.test.slow", &slow.id, slow.to_vec().into())
            .await
            .unwrap();
    }
    let served = host.cell(SLOW);
    // Counted as they start; done when none is left running or queued.
    eventually(Duration::from_secs(20), "five messages handled", || async {
        match (served.stats.requests(), served.in_flight()) {
            (n, 0) if n >= 5 => Ok(()),
            (n, held) => Err(format!("{n} started, {held} held")),
        }
    })
    .await;
    let durable = served.stats.durable();
    assert_eq!(durable.redelivered, 0, "{durable:?}");
    assert_eq!(served.stats.requests(), 5, "each handled once");
}
