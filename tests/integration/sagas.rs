//! Sagas: a failed step runs the compensations of the completed ones in
//! reverse; a host killed between steps leaves the saga to another host,
//! which finishes it without calling again a step journaled complete;
//! 1,000 concurrent sagas all finish; a step that timed out is
//! compensated too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cbs_host::bus::local::LocalBus;
use cbs_host::domain::spec::Spec;
use cbs_host::saga::journal::{Instance, Journal, State};
use cbs_host::saga::worker::{self, Start};
use cbs_tests::bundles::faulty_bundle;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::{eventually, CellToml, TestHost};
use serde_json::json;

/// A saga of three steps over test components that count each message
/// id they handle (`record`); compensations get the saga's input.
const SAGA: &str = "\
sagas:
  - name: place
    timeout_ms: 20000
    steps:
      - name: reserve
        call: orders.reserve
        compensate: orders.release
        compensate_with: input
      - name: charge
        call: orders.charge
        compensate: orders.refund
        compensate_with: input
      - name: ship
        call: orders.ship
";

const CELLS: [&str; 5] = [
    "orders.reserve",
    "orders.charge",
    "orders.ship",
    "orders.release",
    "orders.refund",
];

/// The test component as `id`, counting what it handles in its state,
/// with `chaos` (TOML) when given.
fn folder(dir: &Path, id: &str, chaos: &str) {
    let cell = dir.join(id);
    std::fs::create_dir_all(&cell).unwrap();
    CellToml::faulty(id)
        .capabilities(|c| c.state = Some(Default::default()))
        .write_to(&cell);
    if !chaos.is_empty() {
        let toml = cell.join("cell.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(&toml, format!("{text}\n{chaos}")).unwrap();
    }
}

fn spec_of(cells: &str) -> Spec {
    Spec::parse(&format!("domain: orders\ncells:\n{cells}{SAGA}")).unwrap()
}

/// An in-process host serving the domain's cells (ship failing with
/// `ship_chaos`) and running its saga.
async fn in_process(dir: &Path, ship_chaos: &str) -> TestHost {
    let mut cells = String::new();
    for id in CELLS {
        folder(dir, id, if id == "orders.ship" { ship_chaos } else { "" });
        cells.push_str(&format!("  - folder: {id}\n"));
    }
    let builder = cbs_tests::builder(Arc::new(LocalBus::new()))
        .domain(&spec_of(&cells), dir)
        .unwrap();
    TestHost::start(builder, &[]).await
}

async fn ended(journal: &Journal, id: &str, within: Duration) -> Instance {
    eventually(within, "the saga ends", || async {
        match journal.get(id).await.map_err(|e| e.to_string())? {
            Some(i) if i.state.is_final() || i.state == State::Stuck => Ok(i),
            Some(i) => Err(format!("{:?}: {:?}", i.state, i.events)),
            None => Err("not journaled yet".into()),
        }
    })
    .await
}

/// What happened to a saga, without the details (`ship failed`).
fn event_names(saga: &Instance) -> Vec<&str> {
    saga.events
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default())
        .collect()
}

fn start_of(id: &str) -> Start {
    Start {
        id: id.to_owned(),
        domain: "orders".into(),
        saga: "place".into(),
        input: json!({"action": "record"}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_third_step_runs_the_two_compensations_in_reverse() {
    let tmp = tempfile::tempdir().unwrap();
    let host = in_process(tmp.path(), "[chaos]\nerror_rate = 1.0\n").await;
    let journal = Journal::open(host.body().state_backend().as_ref())
        .await
        .unwrap();
    let id = cbs_host::envelope::new_id();
    worker::start(host.body().durable().as_ref(), &start_of(&id))
        .await
        .unwrap();
    let saga = ended(&journal, &id, Duration::from_secs(30)).await;
    assert_eq!(saga.state, State::Compensated, "{saga:?}");
    assert_eq!(
        event_names(&saga),
        [
            "reserve done",
            "charge done",
            "ship failed",
            "charge compensated",
            "reserve compensated",
            "compensated"
        ]
    );
    assert!(saga.events[2].contains("unavailable"), "{:?}", saga.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sagas_all_finish() {
    const N: usize = 1_000;
    let tmp = tempfile::tempdir().unwrap();
    let host = in_process(tmp.path(), "").await;
    let journal = Journal::open(host.body().state_backend().as_ref())
        .await
        .unwrap();
    let ids: Vec<String> = (0..N).map(|_| cbs_host::envelope::new_id()).collect();
    let log = host.body().durable().clone();
    let starts = ids.iter().map(|id| {
        let log = log.clone();
        let start = start_of(id);
        async move { worker::start(log.as_ref(), &start).await.unwrap() }
    });
    futures_util::future::join_all(starts).await;
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(300), "every saga completes", || async {
        let all = journal.list(N + 1).await.map_err(|e| e.to_string())?;
        let done = all.iter().filter(|i| i.state == State::Completed).count();
        match done {
            N => Ok(()),
            n => Err(format!("{n} of {N} completed")),
        }
    })
    .await;
    eprintln!("{N} sagas of 3 steps in {:?}", started.elapsed());
    for id in &ids {
        let saga = journal.get(id).await.unwrap().expect("journaled");
        assert_eq!(saga.state, State::Completed, "{saga:?}");
    }
}

/// `cbs saga start orders place` without waiting: the instance id.
fn start_on_nats(url: &str) -> String {
    let input = r#"{"action":"record"}"#;
    let args = [
        "saga",
        "start",
        "orders",
        "place",
        input,
        "--wait-ms",
        "0",
        "--nats",
        url,
    ];
    let out = cbs(&args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How often cell `cell` handled message `id`, from its state on NATS.
async fn handled(js: &async_nats::jetstream::Context, cell: &str, id: &str) -> u64 {
    use cbs_host::state::jetstream::{bucket_name, encode_key};
    let Ok(bucket) = js.get_key_value(bucket_name(cell)).await else {
        return 0;
    };
    let value = bucket.get(encode_key(id)).await.unwrap();
    value.map_or(0, |v| std::str::from_utf8(&v).unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_between_steps_leaves_the_saga_to_another() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cells = String::new();
    for id in CELLS {
        let chaos = if id == "orders.charge" {
            "[chaos]\nlatency_ms = 3000\n"
        } else {
            ""
        };
        let tables =
            format!("[capabilities.state]\nmax_value_bytes = 65536\nmax_bytes = 16777216\n{chaos}");
        let bundle = faulty_bundle(&dir.join(id), id, "0.1.0", &tables);
        cells.push_str(&format!("  - bundle: {}\n", bundle.display()));
    }
    let spec = dir.join("orders.yaml");
    std::fs::write(&spec, format!("domain: orders\ncells:\n{cells}{SAGA}")).unwrap();
    let server = NatsServer::start();
    let url = server.url();
    // A serves the cells and runs sagas; B serves the cells only.
    let mut a = HostProcess::serve(&url, "saga-a", &[], &["--watch", "--sagas"]);
    let _b = HostProcess::serve(&url, "saga-b", &[], &["--watch"]);
    let out = cbs(&["apply", spec.to_str().unwrap(), "--nats", &url]);
    assert!(out.status.success(), "{out:?}");
    let id = start_on_nats(&url);

    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let journal = Journal::open(&cbs_host::state::jetstream::JetStreamState::new(js.clone()))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "step 1 done, step 2 running",
        || async {
            let i = journal.get(&id).await.map_err(|e| e.to_string())?;
            let steps = i.map(|i| (i.steps[0].state, i.steps[1].state));
            use cbs_host::saga::journal::StepState::{Done, Running};
            match steps {
                Some((Done, Running)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    a.kill();
    // Another host that runs sagas takes the instance on.
    let _c = HostProcess::serve(&url, "saga-c", &[], &["--watch", "--sagas"]);
    let saga = ended(&journal, &id, Duration::from_secs(60)).await;
    assert_eq!(saga.state, State::Completed, "{saga:?}");
    assert_eq!(
        saga.steps[0].attempts, 1,
        "step 1 was journaled complete: not called again"
    );
    assert_eq!(
        handled(&js, "orders.reserve", &format!("{id}.reserve")).await,
        1
    );
    assert_eq!(handled(&js, "orders.ship", &format!("{id}.ship")).await, 1);
    let show = cbs(&["saga", "show", &id, "--nats", &url]);
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(show.contains("Completed"), "{show}");
}

/// The test component as `orders.ship` version `version` with input schema
/// `schema`, counting what it handles; packed in `dir`.
fn ship_release(dir: &Path, version: &str, schema: serde_json::Value) -> std::path::PathBuf {
    let tables = "[input]\nid = \"orders.ship/request@1\"\nschema = \"schemas/input.json\"\n\
                  [capabilities.state]\nmax_value_bytes = 65536\nmax_bytes = 16777216\n";
    let cell = cbs_tests::bundles::faulty_as(dir, "orders.ship", tables);
    let version = format!("version = \"{version}\"");
    cbs_tests::bundles::edit(&cell.join("cell.toml"), "version = \"0.1.0\"", &version);
    std::fs::create_dir_all(cell.join("schemas")).unwrap();
    std::fs::write(cell.join("schemas/input.json"), schema.to_string()).unwrap();
    cbs_tests::bundles::pack(&cell)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_breaking_a_step_of_in_flight_sagas_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cells = String::new();
    for id in CELLS.iter().filter(|c| **c != "orders.ship") {
        let chaos = if *id == "orders.charge" {
            "[chaos]\nlatency_ms = 4000\n"
        } else {
            ""
        };
        let tables =
            format!("[capabilities.state]\nmax_value_bytes = 65536\nmax_bytes = 16777216\n{chaos}");
        let bundle = faulty_bundle(&dir.join(id), id, "0.1.0", &tables);
        cells.push_str(&format!("  - bundle: {}\n", bundle.display()));
    }
    let v1 = ship_release(&dir.join("v1"), "1.0.0", json!({"type": "object"}));
    // A new major that needs a field the saga's input lacks.
    let v2 = ship_release(
        &dir.join("v2"),
        "2.0.0",
        json!({"type": "object", "required": ["action", "sku"]}),
    );
    cells.push_str(&format!("  - bundle: {}\n", v1.display()));
    let spec = dir.join("orders.yaml");
    std::fs::write(&spec, format!("domain: orders\ncells:\n{cells}{SAGA}")).unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let _a = HostProcess::serve(&url, "gate-a", &[], &["--watch", "--sagas"]);
    let out = cbs(&["apply", spec.to_str().unwrap(), "--nats", &url]);
    assert!(out.status.success(), "{out:?}");
    let id = start_on_nats(&url);

    let deploy = || cbs(&["deploy", v2.to_str().unwrap(), "--nats", &url]);
    let refused = deploy();
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success(),
        "refused while the saga is in flight"
    );
    assert!(
        err.contains("breaks the contract 1 in-flight saga instance(s) still call")
            && err.contains(&id),
        "{err}"
    );
    // Once the saga ended on the contract it started on, the new major goes.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let journal = Journal::open(&cbs_host::state::jetstream::JetStreamState::new(js))
        .await
        .unwrap();
    let saga = ended(&journal, &id, Duration::from_secs(60)).await;
    assert_eq!(saga.state, State::Completed, "{saga:?}");
    let out = deploy();
    assert!(out.status.success(), "{out:?}");
}

/// A step that timed out may have run all the same: it is compensated
/// too, first, with the saga's input (it journaled no output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_timed_out_is_compensated_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cells = String::new();
    for id in CELLS.into_iter().chain(["orders.unship"]) {
        // Ship's reply never comes: its caller times out.
        let chaos = if id == "orders.ship" {
            "[chaos]\ndrop_rate = 1.0\n"
        } else {
            ""
        };
        folder(dir, id, chaos);
        cells.push_str(&format!("  - folder: {id}\n"));
    }
    let saga = SAGA
        .replace("timeout_ms: 20000", "timeout_ms: 500")
        .replace(
            "        call: orders.ship\n",
            "        call: orders.ship\n        compensate: orders.unship\n        compensate_with: output\n",
        );
    let spec = Spec::parse(&format!("domain: orders\ncells:\n{cells}{saga}")).unwrap();
    let builder = cbs_tests::builder(Arc::new(LocalBus::new()))
        .domain(&spec, dir)
        .unwrap();
    let host = TestHost::start(builder, &[]).await;
    let journal = Journal::open(host.body().state_backend().as_ref())
        .await
        .unwrap();
    let id = cbs_host::envelope::new_id();
    worker::start(host.body().durable().as_ref(), &start_of(&id))
        .await
        .unwrap();
    let saga = ended(&journal, &id, Duration::from_secs(30)).await;
    assert_eq!(saga.state, State::Compensated, "{saga:?}");
    assert_eq!(
        event_names(&saga),
        [
            "reserve done",
            "charge done",
            "ship failed",
            "ship compensated",
            "charge compensated",
            "reserve compensated",
            "compensated"
        ]
    );
    assert!(saga.events[2].contains("timeout"), "{:?}", saga.events);
    // "ship compensated": unship answered, which it does only to the
    // saga's input (`{"action":"record"}`); the missing output (null)
    // would have failed it and left the saga stuck.
    assert_eq!(saga.steps[2].output, None, "{saga:?}");
}
