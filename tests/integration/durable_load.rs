//! Durable cells under load, with faults: 10,000 messages flow through two
//! hosts into a sink cell that counts, in its key-value state, how many
//! times it handled each envelope id. A host is SIGKILLed (or the
//! nats-server restarted) mid-way; afterwards every id is in the sink's
//! state (nothing lost), and the only extra handlings are redeliveries of
//! what the dead host held.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use cbs_host::durable;
use cbs_host::manifest::{DurableSpec, StateGrant};
use cbs_host::state::jetstream::{bucket_name, decode_key};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cell_metric, HostProcess};
use cbs_tests::{envelope_to, eventually, CellToml};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;

const SINK: &str = "test.sink";
const SUBJECT: &str = "cbs-durable.test.sink";
const STREAM: &str = "CBS_DURABLE_TEST_SINK";
const SENT: usize = 10_000;
/// Messages one host admits at once: at most this many are redelivered
/// when it dies (it pulls no more than it can admit).
const CONCURRENCY: u32 = 16;
const QUEUE: u32 = 16;

fn sink() -> tempfile::TempDir {
    CellToml::faulty(SINK)
        .durable(DurableSpec {
            ack_wait_ms: 2_000,
            max_deliver: 20,
            ..DurableSpec::default()
        })
        .capabilities(|c| {
            c.state = Some(StateGrant {
                max_value_bytes: 64,
                max_bytes: 64 << 20,
            })
        })
        .limits(|l| {
            l.concurrency = CONCURRENCY;
            l.queue = QUEUE;
            l.timeout_ms = 10_000;
        })
        .write()
}

/// Publishes `SENT` sink messages, 64 at a time; returns their envelope ids.
async fn publish_all(js: &jetstream::Context) -> Vec<String> {
    let envelopes: Vec<_> = (0..SENT)
        .map(|_| envelope_to(SINK, &json!({"action": "record"})))
        .collect();
    let ids = envelopes.iter().map(|e| e.id.clone()).collect();
    futures_util::stream::iter(envelopes)
        .map(|e| async move { durable::publish(js, SUBJECT, &e).await.map(drop) })
        .buffer_unordered(64)
        .try_collect::<()>()
        .await
        .unwrap();
    ids
}

/// Messages still in the sink's work-queue stream (unacknowledged).
async fn left(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn wait_until_left_at_most(js: &jetstream::Context, most: u64, timeout: Duration) {
    eventually(timeout, "the sink to work through its stream", || async {
        let n = left(js).await;
        if n <= most {
            Ok(())
        } else {
            Err(format!("{n} messages still in the stream"))
        }
    })
    .await;
}

/// The sink's state: times handled, by envelope id.
async fn sink_state(js: &jetstream::Context) -> HashMap<String, u64> {
    let bucket: kv::Store = js.get_key_value(bucket_name(SINK)).await.unwrap();
    let keys: Vec<String> = bucket.keys().await.unwrap().try_collect().await.unwrap();
    futures_util::stream::iter(keys)
        .map(|key| {
            let bucket = bucket.clone();
            async move {
                let value = bucket
                    .get(&key)
                    .await
                    .unwrap()
                    .expect("a listed key has a value");
                let times: u64 = std::str::from_utf8(&value).unwrap().parse().unwrap();
                (decode_key(&key).unwrap(), times)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

struct Figures {
    sent: usize,
    processed: u64,
    duplicates: u64,
    lost: usize,
}

async fn figures(js: &jetstream::Context, ids: &[String]) -> Figures {
    let state = sink_state(js).await;
    let lost = ids.iter().filter(|id| !state.contains_key(*id)).count();
    let processed: u64 = state.values().sum();
    assert_eq!(
        state.len(),
        SENT,
        "the sink's state has one key per id, no others"
    );
    Figures {
        sent: ids.len(),
        processed,
        duplicates: processed - state.len() as u64,
        lost,
    }
}

/// The sink's shared consumer, as the server reports it.
async fn consumer(js: &jetstream::Context) -> jetstream::consumer::Info {
    let stream = js.get_stream(STREAM).await.unwrap();
    stream
        .consumer_info(durable::consumer_name(SINK))
        .await
        .unwrap()
}

/// A host is killed mid-load. Its unacknowledged messages are delivered
/// again, all to the survivor: the server's count of redeliveries and the
/// survivor's agree, at least one (the dead host held messages, else the
/// kill proved nothing) and at most what the dead host could hold; a
/// message handled twice is one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_survive_a_killed_host_and_the_sink_state_is_exact() {
    let server = NatsServer::start();
    let cell = sink();
    let cells = [cell.path().to_path_buf()];
    let metrics = ["--metrics", "127.0.0.1:0"];
    let mut doomed = HostProcess::serve(&server.url(), "doomed", &cells, &metrics);
    let survivor = HostProcess::serve(&server.url(), "survivor", &cells, &metrics);
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let started = Instant::now();
    let ids = publish_all(&js).await;
    // Kill one host once a fifth of the load is through: it holds messages.
    wait_until_left_at_most(&js, (SENT as u64) * 4 / 5, Duration::from_secs(120)).await;
    let handled_by_doomed = cell_metric(&doomed.metrics_addr(), "cbs_cell_requests_total", SINK);
    doomed.kill();
    wait_until_left_at_most(&js, 0, Duration::from_secs(300)).await;
    let f = figures(&js, &ids).await;
    // Every delivery, a redelivery too, takes a consumer sequence.
    let by_server = consumer(&js).await.delivered.consumer_sequence - SENT as u64;
    let metric = "cbs_durable_redelivered_total";
    let by_survivor = cell_metric(&survivor.metrics_addr(), metric, SINK) as u64;
    eprintln!(
        "host kill: sent {}, processed {}, redelivered {by_server}, handled again {}, lost {} ({:?})",
        f.sent,
        f.processed,
        f.duplicates,
        f.lost,
        started.elapsed()
    );
    assert!(
        handled_by_doomed > 0.0,
        "the doomed host handled messages before the kill"
    );
    assert_eq!(f.lost, 0, "every message was processed");
    assert_eq!(
        by_survivor, by_server,
        "every redelivery went to the survivor, none came before the kill"
    );
    let most = u64::from(CONCURRENCY + QUEUE);
    assert!(
        (1..=most).contains(&by_server),
        "{by_server} redelivered: the dead host held between 1 and {most}"
    );
    assert!(
        f.duplicates <= by_server,
        "{} handled twice, but only {by_server} delivered twice",
        f.duplicates
    );
    let no_dead_letters = durable::dead_letters(&js, SINK).await.unwrap();
    assert!(no_dead_letters.is_empty(), "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_survive_a_server_restart_and_the_hosts_resume() {
    let mut server = NatsServer::start();
    let cell = sink();
    let cells = [cell.path().to_path_buf()];
    let one = HostProcess::serve(&server.url(), "one", &cells, &[]);
    let two = HostProcess::serve(&server.url(), "two", &cells, &[]);
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let ids = publish_all(&js).await;
    wait_until_left_at_most(&js, (SENT as u64) * 4 / 5, Duration::from_secs(120)).await;
    server.restart_gracefully();
    // A new client: the old one may still be reconnecting.
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    wait_until_left_at_most(&js, 0, Duration::from_secs(300)).await;
    let f = figures(&js, &ids).await;
    eprintln!(
        "server restart: sent {}, processed {}, handled again {}, lost {}",
        f.sent, f.processed, f.duplicates, f.lost
    );
    assert_eq!(f.lost, 0, "every message was processed");
    for host in [&one, &two] {
        assert!(host.log().contains("reconnected to NATS"), "{}", host.log());
    }
}
