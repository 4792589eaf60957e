//! Events on a real nats-server: `[[subscribe]]` cells get what other
//! cells publish. Between cells an event fans out (each subscribing cell
//! gets it once); within a cell served by two hosts a queue subscription
//! takes it once in total and a fan-out subscription once per host. Events
//! carry the flow's correlation id and trace context. Durable
//! subscriptions keep events for a cell whose hosts are all down, and a
//! durable publish fails with a typed error when nothing can store it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use cbs_host::envelope::{header, ErrorCode};
use cbs_host::events::{Delivery, Subscribe};
use cbs_host::manifest::StateGrant;
use cbs_host::state::jetstream::{bucket_name, decode_key};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::HostProcess;
use cbs_tests::{envelope_to, eventually, CellToml, TestHost};
use futures_util::TryStreamExt;
use serde_json::{json, Value};

const PUBLISHER: &str = "ev.publisher";
const EVENT: &str = "orders.created";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn subscriber(id: &str, subscription: Subscribe) -> tempfile::TempDir {
    CellToml::faulty(id)
        .subscribe(subscription)
        .capabilities(|c| c.state = Some(StateGrant::default()))
        .limits(|l| l.timeout_ms = 5_000)
        .write()
}

fn on(subject: &str, delivery: Delivery, durable: bool) -> Subscribe {
    Subscribe {
        subject: subject.to_owned(),
        delivery,
        durable,
        stream: None,
    }
}

fn publisher() -> tempfile::TempDir {
    CellToml::faulty(PUBLISHER)
        .capabilities(|c| {
            c.publish = vec!["orders.>".into()];
            c.publish_durable = vec!["billing.>".into(), "nowhere.>".into()];
        })
        .limits(|l| l.timeout_ms = 5_000)
        .write()
}

/// Asks the publisher cell to publish one event; returns the flow's
/// correlation id.
async fn publish(host: &TestHost, subject: &str) -> Result<String, cbs_host::envelope::BusError> {
    let mut request = envelope_to(
        PUBLISHER,
        &json!({"action": "publish", "subject": subject, "payload": {"action": "record_event"}}),
    );
    request
        .headers
        .insert(header::TRACEPARENT.to_owned(), TRACEPARENT.to_owned());
    let reply =
        cbs_host::call::request(host.bus().as_ref(), &request, Duration::from_secs(10)).await?;
    reply.into_result()?;
    Ok(request.correlation_id)
}

/// A subscriber cell's state: times handled by event id, and the context
/// each event carried.
async fn seen(
    js: &jetstream::Context,
    cell: &str,
) -> (HashMap<String, u64>, HashMap<String, Value>) {
    let (mut times, mut context) = (HashMap::new(), HashMap::new());
    let Ok(bucket) = js.get_key_value(bucket_name(cell)).await else {
        return (times, context);
    };
    let keys: Vec<String> = bucket.keys().await.unwrap().try_collect().await.unwrap();
    for key in keys {
        let Some(value) = bucket.get(&key).await.unwrap() else {
            continue;
        };
        let key = decode_key(&key).unwrap();
        match key.strip_prefix("ctx/") {
            Some(id) => {
                context.insert(id.to_owned(), serde_json::from_slice(&value).unwrap());
            }
            None => {
                times.insert(key, std::str::from_utf8(&value).unwrap().parse().unwrap());
            }
        }
    }
    (times, context)
}

/// Waits until `cell` handled `events` distinct events, `each` times each.
async fn wait_for(
    js: &jetstream::Context,
    cell: &str,
    events: usize,
    each: u64,
) -> HashMap<String, Value> {
    let what = format!("{cell} to handle {events} events × {each}");
    eventually(Duration::from_secs(20), &what, || async {
        let (times, context) = seen(js, cell).await;
        assert!(
            times.values().all(|&n| n <= each),
            "{cell} handled an event more than {each} times: {times:?}"
        );
        if times.len() == events && times.values().all(|&n| n == each) {
            Ok(context)
        } else {
            Err(format!("{cell} saw {times:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fan_out_to_cells_and_queue_within_a_cell() {
    let server = NatsServer::start();
    let cells = [
        (
            "ev.audit",
            subscriber("ev.audit", on(EVENT, Delivery::Queue, false)),
        ),
        (
            "ev.mail",
            subscriber("ev.mail", on("orders.*", Delivery::Queue, false)),
        ),
        (
            "ev.worker",
            subscriber("ev.worker", on(EVENT, Delivery::Queue, false)),
        ),
        (
            "ev.every",
            subscriber("ev.every", on("orders.>", Delivery::Fanout, false)),
        ),
    ];
    let publisher = publisher();
    let mut first: Vec<_> = cells.iter().map(|(_, d)| d.path().to_path_buf()).collect();
    first.push(publisher.path().to_path_buf());
    let second: Vec<_> = cells[2..]
        .iter()
        .map(|(_, d)| d.path().to_path_buf())
        .collect();
    let one = TestHost::on(Arc::new(server.bus().await), &first).await;
    let _two = TestHost::on(Arc::new(server.bus().await), &second).await;
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());

    const EVENTS: usize = 20;
    let mut flows = Vec::new();
    for _ in 0..EVENTS {
        flows.push(publish(&one, EVENT).await.unwrap());
    }
    // Two cells with queue subscriptions on one host, one on two hosts:
    // each once. The fan-out cell runs on two hosts: twice.
    for (cell, each) in [
        ("ev.audit", 1),
        ("ev.mail", 1),
        ("ev.worker", 1),
        ("ev.every", 2),
    ] {
        let context = wait_for(&js, cell, EVENTS, each).await;
        for seen in context.values() {
            assert!(
                flows.iter().any(|f| seen["correlation_id"] == f.as_str()),
                "{seen}"
            );
            assert_eq!(seen["traceparent"], TRACEPARENT, "{cell}: {seen}");
        }
    }
    // Nothing more comes later: a marker event, once it is everywhere,
    // came after the rest.
    publish(&one, EVENT).await.unwrap();
    for (cell, each) in [
        ("ev.audit", 1),
        ("ev.mail", 1),
        ("ev.worker", 1),
        ("ev.every", 2),
    ] {
        wait_for(&js, cell, EVENTS + 1, each).await;
    }
    // The publisher itself subscribes to nothing and was called 21 times.
    assert!(seen(&js, PUBLISHER).await.0.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_events_wait_for_a_cell_whose_hosts_are_down() {
    let server = NatsServer::start();
    let ledger = subscriber("ev.ledger", on("billing.>", Delivery::Queue, true));
    let publisher = publisher();
    let bus = Arc::new(server.bus().await);
    let front = TestHost::on(bus, &[publisher.path().to_path_buf()]).await;
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());

    // Loading the cell once creates its stream and consumer; then its only
    // host dies.
    let mut host = HostProcess::serve(
        &server.url(),
        "ledger-1",
        &[ledger.path().to_path_buf()],
        &[],
    );
    host.kill();
    for _ in 0..3 {
        publish(&front, "billing.invoiced").await.unwrap();
    }
    let _again = HostProcess::serve(
        &server.url(),
        "ledger-2",
        &[ledger.path().to_path_buf()],
        &[],
    );
    wait_for(&js, "ev.ledger", 3, 1).await;

    // A durable publish that no stream takes is a typed error, not a
    // silent loss.
    let err = publish(&front, "nowhere.at_all").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert!(
        err.message
            .contains("no JetStream stream takes nowhere.at_all"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_on_the_in_process_bus() {
    let data = tempfile::tempdir().unwrap();
    let audit = subscriber("ev.audit", on(EVENT, Delivery::Queue, false));
    // In process a durable subscription is served by the embedded store.
    let ledger = subscriber("ev.ledger", on("orders.>", Delivery::Queue, true));
    let publisher = publisher();
    let cells = [audit.path(), ledger.path(), publisher.path()].map(|p| p.to_path_buf());
    let bus = Arc::new(cbs_host::bus::local::LocalBus::new());
    let host = TestHost::with_data(bus, Some(data.path()), &cells).await;
    let flow = publish(&host, EVENT).await.unwrap();
    for cell in ["ev.audit", "ev.ledger"] {
        let keys = eventually(Duration::from_secs(10), "the event in state", || async {
            let keys = host
                .call(cell, json!({"action": "state_keys"}))
                .await
                .unwrap()["value"]
                .clone();
            if keys.as_array().is_some_and(|k| k.len() == 2) {
                Ok(keys)
            } else {
                Err(format!("{cell} has {keys}"))
            }
        })
        .await;
        let id = keys
            .as_array()
            .unwrap()
            .iter()
            .find_map(|k| k.as_str().filter(|k| !k.starts_with("ctx/")))
            .unwrap();
        let got = host
            .call(
                cell,
                json!({"action": "state_get", "key": format!("ctx/{id}")}),
            )
            .await
            .unwrap();
        let seen: Value = serde_json::from_str(got["value"].as_str().unwrap()).unwrap();
        assert_eq!(seen["correlation_id"], flow.as_str(), "{cell}");
    }
}
