//! The conformance suite every durable store must pass: the embedded store
//! of the in-process bus (a redb file in a temporary folder) and JetStream
//! on a real nats-server run the same cases. Absence ("never delivered
//! again") is checked with a marker published after: once the marker
//! arrives, anything due before it would have come first.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbs_host::durable::embedded::EmbeddedLog;
use cbs_host::durable::{
    Consumer, ConsumerSpec, DeadLetter, Delivery, DurableLog, JetStreamLog, Keep, Settle,
    StreamSpec,
};
use cbs_host::envelope::{BusError, ErrorCode};
use futures_util::StreamExt;

fn stream(name: &str, subject: &str, retention: Keep) -> StreamSpec {
    StreamSpec {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        retention,
        dedup_window: Duration::from_secs(60),
        max_age: Duration::ZERO,
    }
}

fn consumer(name: &str) -> ConsumerSpec {
    ConsumerSpec {
        name: name.to_owned(),
        filter: None,
        only_new: false,
        max_deliver: 5,
        ack_wait: Duration::from_secs(30),
    }
}

/// The next delivery within `wait`, if any.
async fn next(consumer: &dyn Consumer, wait: Duration) -> Option<Delivery> {
    let mut batch = consumer.fetch(1, wait).await.unwrap();
    batch.next().await.map(|d| d.unwrap())
}

async fn must_next(consumer: &dyn Consumer) -> Delivery {
    next(consumer, Duration::from_secs(10))
        .await
        .expect("a delivery within 10 s")
}

async fn publish(log: &dyn DurableLog, subject: &str, id: &str) {
    let stored = log
        .publish(subject, id, id.as_bytes().to_vec().into())
        .await;
    assert!(!stored.unwrap().duplicate, "{id} is new");
}

/// Publishes a marker and takes deliveries until it comes; returns the
/// payloads that came before it.
async fn until_marker(log: &dyn DurableLog, consumer: &dyn Consumer, subject: &str) -> Vec<String> {
    publish(log, subject, "marker").await;
    let mut before = Vec::new();
    loop {
        let d = must_next(consumer).await;
        let text = String::from_utf8(d.payload.to_vec()).unwrap();
        d.settle(Settle::Ack).await.unwrap();
        if text == "marker" {
            return before;
        }
        before.push(text);
    }
}

pub async fn publishes_with_one_id_are_stored_once(log: Arc<dyn DurableLog>) {
    let c = log
        .open(&stream("DEDUP", "dedup.>", Keep::WorkQueue), &consumer("c"))
        .await
        .unwrap();
    let first = log.publish("dedup.a", "id-1", "one".into()).await.unwrap();
    assert!(!first.duplicate);
    for _ in 0..2 {
        let again = log.publish("dedup.a", "id-1", "one".into()).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.seq, first.seq);
    }
    publish(&*log, "dedup.a", "id-2").await;
    let d = must_next(&*c).await;
    assert_eq!(&d.payload[..], b"one");
    assert_eq!(d.delivered, 1);
    d.settle(Settle::Ack).await.unwrap();
    assert_eq!(until_marker(&*log, &*c, "dedup.a").await, ["id-2"]);
}

pub async fn each_message_goes_to_one_of_the_hosts_sharing_a_consumer(log: Arc<dyn DurableLog>) {
    let spec = (
        stream("SHARED", "shared.>", Keep::WorkQueue),
        consumer("workers"),
    );
    let hosts = [
        log.open(&spec.0, &spec.1).await.unwrap(),
        log.open(&spec.0, &spec.1).await.unwrap(),
    ];
    const SENT: usize = 60;
    for i in 0..SENT {
        publish(&*log, "shared.job", &format!("job-{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut by_host = [0usize; 2];
    while seen.len() < SENT {
        assert!(
            Instant::now() < deadline,
            "only {} of {SENT} delivered",
            seen.len()
        );
        for (i, host) in hosts.iter().enumerate() {
            let mut batch = host.fetch(7, Duration::from_millis(100)).await.unwrap();
            while let Some(d) = batch.next().await {
                let d = d.unwrap();
                seen.push(String::from_utf8(d.payload.to_vec()).unwrap());
                by_host[i] += 1;
                d.settle(Settle::Ack).await.unwrap();
            }
        }
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), SENT, "no message twice: {seen:?}");
    assert!(
        by_host.iter().all(|&n| n > 0),
        "both hosts took work: {by_host:?}"
    );
}

pub async fn a_retry_comes_back_after_its_delay_with_its_count(log: Arc<dyn DurableLog>) {
    let c = log
        .open(&stream("RETRY", "retry.>", Keep::WorkQueue), &consumer("c"))
        .await
        .unwrap();
    publish(&*log, "retry.x", "x").await;
    let first = must_next(&*c).await;
    assert_eq!(first.delivered, 1);
    let retried_at = Instant::now();
    first
        .settle(Settle::Retry(Duration::from_millis(300)))
        .await
        .unwrap();
    let second = must_next(&*c).await;
    assert!(
        retried_at.elapsed() >= Duration::from_millis(250),
        "came back after {:?}",
        retried_at.elapsed()
    );
    assert_eq!((&second.payload[..], second.delivered), (&b"x"[..], 2));
    second.settle(Settle::Ack).await.unwrap();
    assert!(
        until_marker(&*log, &*c, "retry.x").await.is_empty(),
        "acknowledged: gone"
    );
}

pub async fn an_unsettled_delivery_comes_back_after_ack_wait(log: Arc<dyn DurableLog>) {
    let spec = ConsumerSpec {
        ack_wait: Duration::from_millis(500),
        ..consumer("c")
    };
    let c = log
        .open(&stream("WAIT", "wait.>", Keep::WorkQueue), &spec)
        .await
        .unwrap();
    publish(&*log, "wait.x", "x").await;
    let first = must_next(&*c).await;
    let seq = first.stream_seq;
    drop(first); // a host that died holding it
    let again = must_next(&*c).await;
    assert_eq!((again.stream_seq, again.delivered), (seq, 2));
    again.settle(Settle::Ack).await.unwrap();
}

pub async fn term_and_max_deliver_end_a_message(log: Arc<dyn DurableLog>) {
    let spec = ConsumerSpec {
        max_deliver: 2,
        ..consumer("c")
    };
    let c = log
        .open(&stream("ENDS", "ends.>", Keep::WorkQueue), &spec)
        .await
        .unwrap();
    publish(&*log, "ends.x", "termed").await;
    publish(&*log, "ends.x", "tired").await;
    must_next(&*c).await.settle(Settle::Term).await.unwrap();
    for delivered in 1..=2 {
        let d = must_next(&*c).await;
        assert_eq!((&d.payload[..], d.delivered), (&b"tired"[..], delivered));
        d.settle(Settle::Retry(Duration::ZERO)).await.unwrap();
    }
    assert!(
        until_marker(&*log, &*c, "ends.x").await.is_empty(),
        "neither comes back"
    );
}

pub async fn an_interest_stream_gives_each_consumer_every_event(log: Arc<dyn DurableLog>) {
    let events = stream("EVENTS", "ev.>", Keep::Interest);
    let only = |name: &str| ConsumerSpec {
        filter: Some("ev.>".to_owned()),
        only_new: true,
        ..consumer(name)
    };
    let a = log.open(&events, &only("a")).await.unwrap();
    let b = log.open(&events, &only("b")).await.unwrap();
    for id in ["e1", "e2", "e3"] {
        publish(&*log, "ev.created", id).await;
    }
    for c in [&a, &b] {
        for want in ["e1", "e2", "e3"] {
            let d = must_next(&**c).await;
            assert_eq!(&d.payload[..], want.as_bytes());
            d.settle(Settle::Ack).await.unwrap();
        }
    }
    // A consumer made now takes only what comes after it.
    let late = log.open(&events, &only("late")).await.unwrap();
    publish(&*log, "ev.created", "e4").await;
    assert_eq!(&must_next(&*late).await.payload[..], b"e4");
}

pub async fn a_subject_no_stream_takes_is_unavailable(log: Arc<dyn DurableLog>) {
    let err: BusError = log
        .publish("nobody.here", "id", "x".into())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert!(
        err.message.contains("no") && err.message.contains("stream"),
        "{err}"
    );
}

pub async fn dead_letters_are_kept_per_cell(log: Arc<dyn DurableLog>) {
    let letter = |cell: &str, seq: u64| DeadLetter {
        cell: cell.to_owned(),
        subject: format!("cbs-durable.{cell}"),
        stream: "S".to_owned(),
        stream_seq: seq,
        delivered: 3,
        message: serde_json::json!({"id": format!("m{seq}")}),
        error: BusError::new(ErrorCode::CellFailed, "boom"),
        body_in_original: false,
    };
    for (cell, seq) in [("a.b", 1), ("c.d", 2), ("a.b", 3)] {
        log.dead_letter(&letter(cell, seq)).await.unwrap();
    }
    let kept = log.dead_letters("a.b").await.unwrap();
    let seqs: Vec<u64> = kept.iter().map(|(_, l)| l.stream_seq).collect();
    assert_eq!(seqs, [1, 3]);
    assert_eq!(kept[0].1.error.code, ErrorCode::CellFailed);
    assert!(kept[0].0 < kept[1].0, "oldest first");
}

pub async fn streams_may_not_take_the_same_subjects(log: Arc<dyn DurableLog>) {
    log.open(
        &stream("FIRST", "overlap.>", Keep::WorkQueue),
        &consumer("c"),
    )
    .await
    .unwrap();
    let second = log
        .open(
            &stream("SECOND", "overlap.x", Keep::WorkQueue),
            &consumer("c"),
        )
        .await;
    assert!(second.is_err(), "a second stream on overlap.x");
    // The first one still takes its subjects.
    publish(&*log, "overlap.x", "x").await;
}

/// A message given up but kept (its dead letter, too large to hold it,
/// points at it) is not delivered again, retry delay or not.
pub async fn a_kept_message_is_delivered_no_more(log: Arc<dyn DurableLog>) {
    let c = log
        .open(&stream("KEPT", "kept.>", Keep::WorkQueue), &consumer("c"))
        .await
        .unwrap();
    publish(&*log, "kept.a", "kept").await;
    let d = must_next(&*c).await;
    assert_eq!(d.delivered, 1);
    d.in_progress().await.unwrap();
    d.settle(Settle::Keep { last: false }).await.unwrap();
    assert_eq!(
        until_marker(&*log, &*c, "kept.a").await,
        Vec::<String>::new()
    );
}

/// A replayed dead letter is published again on its subject, delivered
/// like any message, and gone from the dead letters; another cell's
/// letter, or one already replayed, is refused.
pub async fn a_replayed_dead_letter_is_delivered_again_and_gone(log: Arc<dyn DurableLog>) {
    let c = log
        .open(
            &stream("REPLAY", "cbs-durable.r.x", Keep::WorkQueue),
            &consumer("c"),
        )
        .await
        .unwrap();
    let letter = DeadLetter {
        cell: "r.x".to_owned(),
        subject: "cbs-durable.r.x".to_owned(),
        stream: "REPLAY".to_owned(),
        stream_seq: 1,
        delivered: 5,
        message: serde_json::json!({"id": "m1", "payload": {"n": 1}}),
        error: BusError::new(ErrorCode::CellFailed, "boom"),
        body_in_original: false,
    };
    log.dead_letter(&letter).await.unwrap();
    let kept = log.dead_letters("r.x").await.unwrap();
    let seq = kept[0].0;
    assert!(
        log.replay("other.cell", seq).await.is_err(),
        "not its letter"
    );
    let replayed = log.replay("r.x", seq).await.unwrap();
    assert_eq!(replayed.message["id"], "m1");
    let d = must_next(&*c).await;
    let body: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
    assert_eq!(body, letter.message);
    assert_eq!(d.delivered, 1, "a new message, counted afresh");
    d.settle(Settle::Ack).await.unwrap();
    assert!(log.dead_letters("r.x").await.unwrap().is_empty());
    assert!(log.replay("r.x", seq).await.is_err(), "replayed once");
}

/// One `#[tokio::test]` per case for a store factory.
macro_rules! durable_suite {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;
            durable_suite!(@case $make; publishes_with_one_id_are_stored_once,
                each_message_goes_to_one_of_the_hosts_sharing_a_consumer,
                a_retry_comes_back_after_its_delay_with_its_count,
                an_unsettled_delivery_comes_back_after_ack_wait,
                term_and_max_deliver_end_a_message,
                an_interest_stream_gives_each_consumer_every_event,
                a_subject_no_stream_takes_is_unavailable, dead_letters_are_kept_per_cell,
                streams_may_not_take_the_same_subjects, a_kept_message_is_delivered_no_more,
                a_replayed_dead_letter_is_delivered_again_and_gone);
        }
    };
    (@case $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                // The guard (a folder, a nats-server) lives as long as the case.
                let (_guard, log): (_, Arc<dyn DurableLog>) = $make;
                super::$case(log).await;
            }
        )*
    };
}

durable_suite!(embedded, {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::new(dir.path()));
    (dir, log)
});
durable_suite!(jetstream, {
    let server = cbs_tests::nats::NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let log = Arc::new(JetStreamLog::new(async_nats::jetstream::new(client)));
    (server, log)
});
