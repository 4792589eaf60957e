//! Host overhead, measured in one run on one machine:
//!
//! - on the in-process bus: `logic.greet` as a wasm cell (`pooled`, `fresh`)
//!   and the Python reference sidecar (echo) next to a native Rust handler
//!   on the same bus;
//! - over a real nats-server: a raw async-nats echo responder (the physical
//!   floor), a native Rust greeter, and `logic.greet` served by a host.
//!
//! Every request is a full envelope (~200 B) sent by the same client code.
//! Run with `make bench` (release build). Figures are per machine: compare
//! the ratios, not the absolutes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cbs_host::bus::local::LocalBus;
use cbs_host::bus::{BodyBus, Message};
use cbs_host::envelope::Envelope;
use cbs_host::outbound;
use cbs_tests::nats::NatsServer;
use cbs_tests::{greet, TestHost};
use futures_util::StreamExt;
use serde_json::value::RawValue;

const WARMUP: Duration = Duration::from_millis(300);
const RUN: Duration = Duration::from_secs(2);

struct Row {
    name: String,
    concurrency: usize,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn request(subject: &str) -> Message {
    let payload = RawValue::from_string(r#"{"name":"Ada Lovelace"}"#.to_owned()).unwrap();
    outbound::to_message(&Envelope::new(subject, payload))
}

/// Drives `concurrency` closed loops of requests for [`RUN`].
async fn drive(bus: Arc<dyn BodyBus>, subject: &str, concurrency: usize) -> (f64, Vec<Duration>) {
    let run = |until: Instant| {
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (bus, subject) = (bus.clone(), subject.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let reply = bus
                        .request(request(&subject), Duration::from_secs(5))
                        .await
                        .unwrap();
                    let env = Envelope::from_slice(&reply.payload).unwrap();
                    assert!(env.error.is_none(), "{:?}", env.error);
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        tasks
    };
    for t in run(Instant::now() + WARMUP) {
        t.await.unwrap();
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in run(start + RUN) {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    (all.len() as f64 / secs, all)
}

fn row(name: &str, concurrency: usize, (rps, mut lat): (f64, Vec<Duration>)) -> Row {
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    Row {
        name: name.to_owned(),
        concurrency,
        rps,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

/// The same work as `logic.greet`, written directly against the bus.
async fn native_greeter(bus: Arc<dyn BodyBus>) {
    let mut sub = bus
        .subscribe("bench.native", Some("bench.native"))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let bus = bus.clone();
            tokio::spawn(async move {
                let env = Envelope::from_slice(&msg.payload).unwrap();
                let input: serde_json::Value = serde_json::from_str(env.payload.get()).unwrap();
                let greeting = serde_json::json!({"greeting": format!("Hello, {}!", input["name"].as_str().unwrap())});
                let reply = env.reply(None, RawValue::from_string(greeting.to_string()).unwrap());
                bus.reply(
                    msg.reply.as_deref().unwrap(),
                    outbound::transport_headers(&reply),
                    reply.to_vec().into(),
                )
                .await
                .unwrap();
            });
        }
    });
}

fn fresh_greet() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let greet = greet();
    let manifest = std::fs::read_to_string(greet.join("cell.toml"))
        .unwrap()
        .replace("id = \"logic.greet\"", "id = \"logic.greet_fresh\"")
        .replace("policy = \"pooled\"", "policy = \"fresh\"")
        .replace(
            "\"logic_greet.wasm\"",
            &format!("{:?}", greet.join("logic_greet.wasm")),
        )
        .replace("\"schemas/", &format!("\"{}/schemas/", greet.display()));
    std::fs::write(dir.path().join("cell.toml"), manifest).unwrap();
    dir
}

/// Echoes every request's bytes back: what NATS itself costs.
async fn raw_echo(client: async_nats::Client) {
    let mut sub = client
        .queue_subscribe("bench.echo", "bench.echo".into())
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                client.publish(reply, msg.payload).await.unwrap();
            }
        }
    });
}

/// Runs every (name, subject) at 1 and 64 in flight; the first case of
/// each concurrency is the floor the others' ratios are against.
async fn measure(bus: Arc<dyn BodyBus>, cases: &[(&str, &str)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for concurrency in [1, 64] {
        for (name, subject) in cases {
            rows.push(row(
                name,
                concurrency,
                drive(bus.clone(), subject, concurrency).await,
            ));
        }
    }
    rows
}

fn print(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "{:<22} {:>4} {:>10} {:>9} {:>9} {:>8}",
        "name", "conc", "req/s", "p50 µs", "p99 µs", "ratio"
    );
    for r in rows {
        let floor = rows
            .iter()
            .find(|f| f.concurrency == r.concurrency)
            .unwrap();
        println!(
            "{:<22} {:>4} {:>10.0} {:>9.1} {:>9.1} {:>8.2}",
            r.name,
            r.concurrency,
            r.rps,
            r.p50_us,
            r.p99_us,
            r.rps / floor.rps
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let fresh = fresh_greet();
    let cells = [
        greet(),
        fresh.path().to_path_buf(),
        cbs_tests::repo().join("tests/sidecars/reference"),
    ];

    let local: Arc<dyn BodyBus> = Arc::new(LocalBus::new());
    let _local_host = TestHost::on(local.clone(), &cells).await;
    native_greeter(local.clone()).await;
    let rows = measure(
        local,
        &[
            ("rust-native", "bench.native"),
            ("greet-wasm-pooled", "cbs.logic.greet"),
            ("greet-wasm-fresh", "cbs.logic.greet_fresh"),
            ("sidecar (python ref)", "cbs.test.reference"),
        ],
    )
    .await;
    print(
        "in-process bus (ratio to a native Rust handler on the same bus)",
        &rows,
    );

    let server = NatsServer::start();
    let served: Arc<dyn BodyBus> = Arc::new(server.bus().await);
    let _nats_host = TestHost::on(served.clone(), &cells[..2]).await;
    native_greeter(served.clone()).await;
    raw_echo(server.bus().await.client().clone()).await;
    let client: Arc<dyn BodyBus> = Arc::new(server.bus().await);
    let rows = measure(
        client,
        &[
            ("raw-nats", "bench.echo"),
            ("rust-native", "bench.native"),
            ("greet-wasm-pooled", "cbs.logic.greet"),
            ("greet-wasm-fresh", "cbs.logic.greet_fresh"),
        ],
    )
    .await;
    print("nats-server on loopback (ratio to raw NATS)", &rows);
}
