//! Micro-benchmarks of the per-message hot path: envelope codec, schema
//! validation, a wasm call on a warm (`pooled`) and a new (`fresh`)
//! instance, and a request/reply round trip on the in-process bus.
//! Needs the cell components: `make cells` (make bench does it).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cbs_host::bus::local::LocalBus;
use cbs_host::bus::{BodyBus, Message};
use cbs_host::envelope::Envelope;
use cbs_host::host::Host;
use cbs_host::runtime::Deadline;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::value::RawValue;

fn envelope() -> Envelope {
    Envelope::new(
        "cbs.logic.greet",
        RawValue::from_string(r#"{"name":"Ada Lovelace"}"#.into()).unwrap(),
    )
}

fn codec(c: &mut Criterion) {
    let env = envelope();
    let bytes = env.to_vec();
    c.bench_function("envelope/parse", |b| {
        b.iter(|| Envelope::from_slice(&bytes).unwrap())
    });
    c.bench_function("envelope/serialize", |b| b.iter(|| env.to_vec()));
}

fn greet_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cells/logic.greet")
}

fn cells(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let host = rt
        .block_on(Host::builder().data_dir(data.path()).start())
        .unwrap();
    let body = host.body();
    let pooled = rt
        .block_on(body.load(&greet_dir()))
        .expect("run `make cells` first");
    let payload = r#"{"name":"Ada Lovelace"}"#;
    c.bench_function("contract/check_input", |b| {
        b.iter(|| pooled.contract.check_input(payload).unwrap())
    });

    let fresh_dir = tempfile::tempdir().unwrap();
    let greet = greet_dir();
    let manifest = std::fs::read_to_string(greet.join("cell.toml"))
        .unwrap()
        .replace("policy = \"pooled\"", "policy = \"fresh\"")
        .replace(
            "\"logic_greet.wasm\"",
            &format!("{:?}", greet.join("logic_greet.wasm")),
        )
        .replace("\"schemas/", &format!("\"{}/schemas/", greet.display()));
    std::fs::write(fresh_dir.path().join("cell.toml"), manifest).unwrap();
    let fresh = rt.block_on(body.load(fresh_dir.path())).unwrap();

    let env = Arc::new(envelope());
    let deadline = || Deadline::of_cell(Instant::now() + Duration::from_secs(5));
    // A failed call would time the error path: each must succeed.
    c.bench_function("wasm/call pooled", |b| {
        b.to_async(&rt).iter(|| async {
            let reply = pooled.runner.handle(env.clone(), deadline()).await;
            reply.expect("the pooled call succeeds")
        })
    });
    c.bench_function("wasm/instantiate+call fresh", |b| {
        b.to_async(&rt).iter(|| async {
            let reply = fresh.runner.handle(env.clone(), deadline()).await;
            reply.expect("the fresh call succeeds")
        })
    });
}

fn local_bus(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bus = Arc::new(LocalBus::new());
    rt.block_on(async {
        let mut sub = bus.subscribe("bench.echo", Some("q")).await.unwrap();
        let responder = bus.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                responder
                    .reply(m.reply.as_deref().unwrap(), Vec::new(), m.payload)
                    .await
                    .unwrap();
            }
        });
    });
    let payload = Bytes::from(envelope().to_vec());
    c.bench_function("local bus/request-reply", |b| {
        b.to_async(&rt).iter(|| async {
            let message = Message::new("bench.echo", payload.clone());
            let reply = bus.request(message, Duration::from_secs(5)).await;
            reply.expect("the echo answers")
        })
    });
}

/// What the call policy layer adds to each call between cells: the
/// breaker's admit + record, and the budget header on the child envelope.
fn policy(c: &mut Criterion) {
    use cbs_host::envelope::header;
    use cbs_host::resilience::{Breaker, BreakerPolicy};
    let breaker = Breaker::new(BreakerPolicy::default());
    c.bench_function("policy/breaker admit+record", |b| {
        b.iter(|| {
            breaker.admit("logic.greet").unwrap();
            breaker.record(true);
        })
    });
    let parent = envelope();
    let payload = RawValue::from_string(r#"{"name":"Ada"}"#.into()).unwrap();
    c.bench_function("policy/child envelope (no policy)", |b| {
        b.iter(|| parent.child("cbs.logic.greet", payload.clone()))
    });
    c.bench_function("policy/child envelope + budget header", |b| {
        b.iter(|| {
            let mut child = parent.child("cbs.logic.greet", payload.clone());
            child
                .headers
                .insert(header::BUDGET_MS.to_owned(), 4_999.to_string());
            child
        })
    });
}

criterion_group!(benches, codec, cells, local_bus, policy);
criterion_main!(benches);
