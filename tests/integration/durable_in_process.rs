//! Durable cells on the in-process bus, served from the embedded store in
//! the host's data folder: handled and acknowledged, deduplicated by
//! envelope id, a final failure dead-lettered with its error, and messages
//! stored while no host runs are handled by the next one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cbs_host::bus::local::LocalBus;
use cbs_host::durable::embedded::EmbeddedLog;
use cbs_host::durable::{Consumer, ConsumerSpec, DurableLog, Keep, Settle, StreamSpec};
use cbs_host::envelope::{Envelope, ErrorCode};
use cbs_host::manifest::{DurableSpec, StateGrant};
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
