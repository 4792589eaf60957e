//! Saga rows: a saga of three steps, each a call of `logic.greet`, next to
//! the same three calls made one after another by a client without a saga,
//! on NATS (starts on the `CBS_SAGAS` stream, the journal in JetStream) and
//! in process (the embedded store). One saga at a time (each waited for by
//! reading its journal entry every 0.5 ms), and a burst of `BURST` started
//! at once (timed from each start's publish to its journal's last write).
//! A row's rate is steps (calls) per second; its latencies are per step:
//! a saga's or a unit of three calls' time divided by three.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbs_host::bus::local::LocalBus;
use cbs_host::bus::BodyBus;
use cbs_host::domain::spec::Spec;
use cbs_host::saga::journal::{Journal, State};
use cbs_host::saga::worker::{self, Start};
use cbs_tests::nats::NatsServer;
use cbs_tests::{eventually, greet, TestHost};

use super::{Row, PAYLOAD};

const STEPS: usize = 3;
/// Sagas (or units of three calls) run one at a time.
const ONE_BY_ONE: usize = 100;
/// Sagas (or units) started at once.
pub const BURST: usize = 500;

fn spec() -> Spec {
    let steps: String = (0..STEPS)
        .map(|i| format!("      - name: s{i}\n        call: logic.greet\n"))
        .collect();
    Spec::parse(&format!(
        "domain: bench\ncells:\n  - folder: {}\nsagas:\n  - name: three\n    steps:\n{steps}",
        greet().display()
    ))
    .unwrap()
}

fn start() -> Start {
    Start {
        id: cbs_host::envelope::new_id(),
        domain: "bench".into(),
        saga: "three".into(),
        input: serde_json::from_str(PAYLOAD).unwrap(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Per-step latencies (µs) at the median and the 99th percentile.
fn quantiles(mut unit_us: Vec<f64>) -> (f64, f64) {
    unit_us.sort_by(f64::total_cmp);
    let at = |q: f64| unit_us[((unit_us.len() - 1) as f64 * q) as usize] / STEPS as f64;
    (at(0.5), at(0.99))
}

fn row(name: &str, concurrency: usize, steps_per_s: f64, units_us: Vec<f64>, errors: u64) -> Row {
    let (p50_us, p99_us) = quantiles(units_us);
    eprintln!(
        "  {name:<28} c={concurrency:<3} {steps_per_s:>9.0} steps/s  p50 {p50_us:>9.1} µs/step  errors {errors}"
    );
    Row {
        name: name.to_owned(),
        bus: "saga",
        concurrency,
        rps: steps_per_s,
        p50_us,
        p99_us,
        errors,
        ratio_to_raw: 1.0,
        runs: 1,
        rps_range: [steps_per_s; 2],
        rps_runs: vec![steps_per_s],
        ratio_range: [1.0; 2],
    }
}

/// How saga `id` ended, its journal read every 0.5 ms (the row times it
/// from outside, so the reads are as tight as the journal allows) until a
/// deadline.
async fn ended(journal: &Journal, id: &str) -> State {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_micros(500));
    loop {
        tick.tick().await;
        match journal.get(id).await.unwrap() {
            Some(i) if i.state.is_final() || i.state == State::Stuck => return i.state,
            _ => assert!(
                Instant::now() < deadline,
                "saga {id} did not end within 30 s"
            ),
        }
    }
}

/// Sagas one at a time: each started, then its journal entry read until
/// it ends.
async fn sagas_one_by_one(host: &TestHost, journal: &Journal, name: &str) -> Row {
    let log = host.body().durable().clone();
    let mut units = Vec::with_capacity(ONE_BY_ONE);
    let mut errors = 0;
    let began = Instant::now();
    for _ in 0..ONE_BY_ONE {
        let start = start();
        let t0 = Instant::now();
        worker::start(log.as_ref(), &start).await.unwrap();
        let state = ended(journal, &start.id).await;
        units.push(t0.elapsed().as_secs_f64() * 1e6);
        errors += u64::from(state != State::Completed);
    }
    let rate = (ONE_BY_ONE * STEPS) as f64 / began.elapsed().as_secs_f64();
    row(name, 1, rate, units, errors)
}

/// `BURST` sagas started at once; each timed from its start's publish to
/// its journal's last write (ms, the journal's resolution).
async fn sagas_burst(host: &TestHost, journal: &Journal, name: &str) -> Row {
    let log = host.body().durable().clone();
    let starts: Vec<Start> = (0..BURST).map(|_| start()).collect();
    let first = now_ms();
    let published = futures_util::future::join_all(starts.iter().map(|s| {
        let log = log.clone();
        async move {
            let at = now_ms();
            worker::start(log.as_ref(), s).await.unwrap();
            (s.id.clone(), at)
        }
    }))
    .await;
    let ids: HashSet<&str> = starts.iter().map(|s| s.id.as_str()).collect();
    // Timed by the journal's own writes: how often it is read changes nothing.
    let ended = eventually(
        Duration::from_secs(300),
        "every saga of the burst ends",
        || async {
            let all = journal.list(10_000).await.map_err(|e| e.to_string())?;
            let ended: Vec<_> = all
                .into_iter()
                .filter(|i| ids.contains(i.id.as_str()))
                .filter(|i| i.state.is_final() || i.state == State::Stuck)
                .collect();
            match ended.len() {
                BURST => Ok(ended),
                n => Err(format!("{n} of {BURST} ended")),
            }
        },
    )
    .await;
    let last = ended.iter().map(|i| i.updated_ms).max().unwrap_or(first);
    let units: Vec<f64> = ended
        .iter()
        .filter_map(|i| {
            let (_, at) = published.iter().find(|(id, _)| *id == i.id)?;
            Some(i.updated_ms.saturating_sub(*at) as f64 * 1e3)
        })
        .collect();
    let errors = (BURST - ended.len()) as u64
        + ended.iter().filter(|i| i.state != State::Completed).count() as u64;
    let rate = (ended.len() * STEPS) as f64 / ((last - first).max(1) as f64 / 1e3);
    row(name, BURST, rate, units, errors)
}

/// Three calls of `logic.greet` one after another: the saga's work
/// without the saga.
async fn unit(bus: &Arc<dyn BodyBus>) -> Result<f64, ()> {
    let t0 = Instant::now();
    for _ in 0..STEPS {
        let payload = serde_json::from_str(PAYLOAD).unwrap();
        cbs_tests::call_json(
            bus.as_ref(),
            "logic.greet",
            payload,
            Duration::from_secs(10),
        )
        .await
        .map_err(|_| ())?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6)
}

async fn calls(bus: &Arc<dyn BodyBus>, name: &str, units: usize, at_once: usize) -> Row {
    let began = Instant::now();
    let results = futures_util::future::join_all((0..at_once).map(|_| async {
        let mut out = Vec::with_capacity(units / at_once);
        for _ in 0..units / at_once {
            out.push(unit(bus).await);
        }
        out
    }))
    .await;
    let elapsed = began.elapsed().as_secs_f64();
    let all: Vec<Result<f64, ()>> = results.into_iter().flatten().collect();
    let errors = all.iter().filter(|r| r.is_err()).count() as u64;
    let units_us: Vec<f64> = all.into_iter().flatten().collect();
    let rate = (units_us.len() * STEPS) as f64 / elapsed;
    row(name, at_once, rate, units_us, errors)
}

/// The four rows of one bus; each saga row's ratio is its rate against the
/// plain calls' at the same concurrency.
async fn rows_on(bus: Arc<dyn BodyBus>, label: &str) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let builder = cbs_tests::builder(bus.clone())
        .domain(&spec(), dir.path())
        .unwrap();
    let host = TestHost::start(builder, &[]).await;
    let journal = Journal::open(host.body().state_backend().as_ref())
        .await
        .unwrap();
    // Warm: the cell's instances, the stream's consumer, the journal.
    let _ = sagas_one_by_one(&host, &journal, "warm-up").await;
    let plain1 = calls(&bus, &format!("{label}: 3 plain calls"), ONE_BY_ONE, 1).await;
    let saga1 = sagas_one_by_one(&host, &journal, &format!("{label}: saga of 3 steps")).await;
    let plain_burst = calls(&bus, &format!("{label}: 3 plain calls"), BURST, BURST).await;
    let saga_burst = sagas_burst(&host, &journal, &format!("{label}: saga of 3 steps")).await;
    let ratio = |saga: Row, plain: &Row| {
        let ratio = saga.rps / plain.rps;
        Row {
            ratio_to_raw: ratio,
            ratio_range: [ratio; 2],
            ..saga
        }
    };
    vec![
        ratio(saga1, &plain1),
        plain1,
        ratio(saga_burst, &plain_burst),
        plain_burst,
    ]
}

/// The saga rows on a nats-server of their own and in process.
pub async fn saga_rows() -> Vec<Row> {
    let server = NatsServer::start();
    let nats: Arc<dyn BodyBus> = Arc::new(server.bus().await);
    let mut rows = rows_on(nats, "nats").await;
    rows.extend(rows_on(Arc::new(LocalBus::new()), "in process").await);
    rows
}
