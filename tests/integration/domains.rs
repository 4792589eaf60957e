//! Domains on a real nats-server with two watching hosts: `cbs apply`
//! plans exactly the changes and applies them, twice is a no-op, an export
//! applies as a no-op, `--prune` removes a dropped cell, and `cbs rollback
//! --domain` brings every cell's previous version back. Boundaries hold
//! in process (by the host) and on NATS (by the server, each domain its
//! own account).

use std::path::Path;
use std::time::Duration;

use cbs_host::bus::nats::{NatsBus, NatsOptions};
use cbs_host::envelope::ErrorCode;
use cbs_tests::bundles::{faulty_bundle, greet_bundle, releases, UPPER};
use cbs_tests::call_json;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use serde_json::{json, Value};

const SINK: &str = "orders.sink";

/// `cbs ARGS --nats URL`: (success, stdout, stderr).
fn run(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = cbs(&[args, &["--nats", url]].concat());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("cbs {args:?}:\n{stdout}{stderr}");
    (out.status.success(), stdout, stderr)
}

/// The plan of `spec`, as `cbs apply --dry-run --json` prints it.
fn plan(url: &str, spec: &Path, prune: bool) -> Value {
    let mut args = vec!["apply", spec.to_str().unwrap(), "--dry-run", "--json"];
    if prune {
        args.push("--prune");
    }
    let (ok, out, _) = run(url, &args);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

/// Each cell's action in a plan, in order.
fn actions(plan: &Value) -> Vec<(String, String)> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["cell"].as_str().unwrap().to_owned(),
                s["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn desired_version(store: &cbs_host::deploy::Store, cell: &str) -> Option<String> {
    store
        .desired(cell)
        .await
        .unwrap()
        .map(|d| d.current.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_plans_the_changes_is_idempotent_exports_prunes_and_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (v1, v2) = (&releases().v1, &releases().v2);
    let greet = greet_bundle(&dir.join("greet"));
    let sink = faulty_bundle(&dir.join("sink"), SINK, "0.1.0", "");
    let spec = |name: &str, upper: &Path, with_sink: bool| {
        let mut cells = format!(
            "  - bundle: {}\n  - bundle: {}\n    id: logic.greet\n",
            upper.display(),
            greet.display()
        );
        if with_sink {
            cells.push_str(&format!("  - bundle: {}\n", sink.display()));
        }
        let text =
            format!("domain: orders\nversion: 1.0.0\ncells:\n{cells}exports: [logic.greet]\n");
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let first = spec("first.yaml", v1, true);
    let second = spec("second.yaml", v2, false);
    let server = NatsServer::start();
    let url = server.url();
    let watch = ["--watch"];
    let _hosts = [
        HostProcess::serve(&url, "dom-a", &[], &watch),
        HostProcess::serve(&url, "dom-b", &[], &watch),
    ];
    let bus = server.bus().await;
    let store = cbs_host::deploy::Store::open(bus.client()).await.unwrap();

    // A new domain: every cell added, nothing applied by the dry run.
    let planned = plan(&url, &first, false);
    assert_eq!(planned["new_domain"], true);
    assert_eq!(
        actions(&planned),
        pairs(&[(UPPER, "add"), ("logic.greet", "add"), (SINK, "add")])
    );
    assert_eq!(
        desired_version(&store, UPPER).await,
        None,
        "a dry run changes nothing"
    );
    let (ok, out, err) = run(&url, &["apply", first.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("domain orders revision 1: 3 cell(s) applied"),
        "{out}"
    );
    let reply = call_json(&bus, UPPER, json!({"text": "hi"}), Duration::from_secs(10)).await;
    assert_eq!(reply.unwrap()["text"], "HI");

    // The same spec again: nothing to change.
    let planned = plan(&url, &first, false);
    assert_eq!(
        actions(&planned),
        pairs(&[
            (UPPER, "unchanged"),
            ("logic.greet", "unchanged"),
            (SINK, "unchanged")
        ])
    );
    let (ok, _, err) = run(&url, &["apply", first.to_str().unwrap()]);
    assert!(ok && err.contains("nothing to change"), "{err}");

    // Another domain cannot take a cell of this one.
    let billing = dir.join("billing.yaml");
    std::fs::write(
        &billing,
        format!("domain: billing\ncells:\n  - bundle: {}\n", v1.display()),
    )
    .unwrap();
    let (ok, _, err) = run(&url, &["apply", billing.to_str().unwrap()]);
    assert!(!ok && err.contains("belongs to domain orders"), "{err}");

    // A saga may call only the domain's cells and those it uses.
    let outside = dir.join("outside.yaml");
    let text = std::fs::read_to_string(&first).unwrap()
        + "sagas:\n  - name: pay\n    steps:\n      - name: charge\n        call: billing.charge\n";
    std::fs::write(&outside, text).unwrap();
    let (ok, _, err) = run(&url, &["apply", outside.to_str().unwrap()]);
    assert!(
        !ok && err.contains(
            "saga pay calls billing.charge, which is neither a cell of the domain nor under `uses`"
        ),
        "{err}"
    );

    // Upgraded, and the sink dropped: kept without --prune, removed with.
    let planned = plan(&url, &second, false);
    assert_eq!(
        actions(&planned),
        pairs(&[
            (UPPER, "upgrade"),
            ("logic.greet", "unchanged"),
            (SINK, "keep")
        ])
    );
    assert_eq!(
        planned["steps"][0]["contract"]["verdict"], "unchanged",
        "{planned}"
    );
    let (ok, _, err) = run(&url, &["apply", second.to_str().unwrap(), "--prune"]);
    assert!(ok, "{err}");
    assert_eq!(
        desired_version(&store, UPPER).await.as_deref(),
        Some("0.2.0")
    );
    assert_eq!(desired_version(&store, SINK).await, None, "pruned");

    // What runs, exported, applies as a no-op.
    let exported = dir.join("exported");
    let (ok, out, _) = run(
        &url,
        &[
            "export",
            "--domain",
            "orders",
            "-o",
            exported.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("2 cells"), "{out}");
    let again = plan(&url, &exported.join("domain.yaml"), true);
    assert_eq!(
        actions(&again),
        pairs(&[("logic.greet", "unchanged"), (UPPER, "unchanged")])
    );
    assert_eq!(again["boundary_changed"], false);

    // Back as one unit: text.upper 0.1.0 and the sink again.
    let (ok, out, err) = run(&url, &["rollback", "--domain", "orders"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("domain orders back to revision 1 (3 cells), as revision 3"),
        "{out}"
    );
    assert_eq!(
        desired_version(&store, UPPER).await.as_deref(),
        Some("0.1.0")
    );
    assert_eq!(
        desired_version(&store, SINK).await.as_deref(),
        Some("0.1.0")
    );
    let reply = call_json(&bus, UPPER, json!({"text": "hi"}), Duration::from_secs(10)).await;
    assert_eq!(reply.unwrap()["text"], "HI");

    // Each change is in the audit trail, with the domain's revision.
    let (ok, out, _) = run(&url, &["audit", "--cell", UPPER]);
    assert!(ok, "{out}");
    for said in [
        "cbs apply: domain orders revision 1",
        "cbs apply: domain orders revision 2",
        "cbs rollback --domain orders: revision 3",
    ] {
        assert!(out.contains(said), "{said}: {out}");
    }
}

/// `{"action": "call"}` of the test component: `caller` asks `callee`
/// to echo; the reply, or the error the caller got.
async fn call_through(
    bus: &dyn cbs_host::bus::BodyBus,
    caller: &str,
    callee: &str,
) -> Result<Value, cbs_host::envelope::BusError> {
    let payload =
        json!({"action": "call", "cell": callee, "payload": {"action": "echo", "value": 1}});
    call_json(bus, caller, payload, Duration::from_secs(10)).await
}

/// Checks the boundary as seen from `bus`: outside reaches the export
/// only, inside calls freely.
async fn assert_boundary(bus: &dyn cbs_host::bus::BodyBus, by: &str) {
    let refused = call_through(bus, "edge.caller", "orders.private")
        .await
        .expect_err("a non-exported cell is refused to an outside caller");
    assert_eq!(
        refused.code,
        cbs_host::envelope::ErrorCode::ContractViolation,
        "{refused}"
    );
    assert!(
        refused.message.contains("domain orders does not export it"),
        "{by}: {refused}"
    );
    let reached = call_through(bus, "edge.caller", "orders.public").await;
    assert_eq!(
        reached.unwrap()["value"]["value"],
        1,
        "{by}: the export is reached"
    );
    let inside = call_through(bus, "orders.public", "orders.private").await;
    assert_eq!(
        inside.unwrap()["value"]["value"],
        1,
        "{by}: inside, calls are free"
    );
}

/// The test component as `id`, calling `calls`, in `dir/<id>`.
fn caller_cell(dir: &Path, id: &str, calls: &[&str]) -> std::path::PathBuf {
    let cell = dir.join(id);
    std::fs::create_dir_all(&cell).unwrap();
    cbs_tests::CellToml::faulty(id).calls(calls).write_to(&cell);
    cell
}

const BOUNDARY_SPEC: &str = "domain: orders\ncells:\n  - folder: orders.public\n  - folder: orders.private\nexports: [orders.public]\n";

/// In process, the host keeps a domain's boundary: an outside cell
/// reaches only the export, the domain's cells call each other freely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_an_outside_caller_reaches_only_the_exported_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    caller_cell(dir, "orders.public", &["orders.private"]);
    caller_cell(dir, "orders.private", &[]);
    let edge = caller_cell(dir, "edge.caller", &["orders.private", "orders.public"]);
    let spec = cbs_host::domain::spec::Spec::parse(BOUNDARY_SPEC).unwrap();
    let builder = cbs_tests::builder(std::sync::Arc::new(cbs_host::bus::local::LocalBus::new()))
        .domain(&spec, dir)
        .unwrap();
    let host = cbs_tests::TestHost::start(builder, &[edge]).await;
    assert_boundary(host.body().bus().as_ref(), "in process").await;
}

/// On NATS, each caller's host keeps the boundary from the desired state:
/// a cell deployed outside the applied domain reaches only its export; and
/// a gateway of the domain serves (and documents) its exported routes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_an_outside_caller_reaches_only_the_exported_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bundle = |id: &str, calls: &[&str]| {
        let route = id.rsplit('.').next().unwrap();
        let tables = format!(
            "[capabilities]\ncalls = {calls:?}\n[[http]]\nmethod = \"POST\"\npath = \"/{route}\"\n"
        );
        faulty_bundle(&dir.join(format!("b-{id}")), id, "0.1.0", &tables)
    };
    let (public, private) = (
        bundle("orders.public", &["orders.private"]),
        bundle("orders.private", &[]),
    );
    let edge = bundle("edge.caller", &["orders.private", "orders.public"]);
    let spec = dir.join("orders.yaml");
    std::fs::write(
        &spec,
        format!(
            "domain: orders\ncells:\n  - bundle: {}\n  - bundle: {}\nexports: [orders.public]\n",
            public.display(),
            private.display()
        ),
    )
    .unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let _hosts = [
        HostProcess::serve(&url, "edge-a", &[], &["--watch"]),
        HostProcess::serve(&url, "edge-b", &[], &["--watch"]),
    ];
    let (ok, _, err) = run(&url, &["apply", spec.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&url, &["deploy", edge.to_str().unwrap()]);
    assert!(ok, "{err}");
    let bus = server.bus().await;
    assert_boundary(&bus, "on NATS").await;

    // Regression: a host joining the lattice knew the domains only as its
    // watcher replayed the desired state, so its first calls went across
    // boundaries. It knows them before it serves anything now.
    let own = server.bus().await;
    let client = own.client().clone();
    let joining = cbs_tests::builder(std::sync::Arc::new(own)).lattice(cbs_host::host::Lattice {
        client,
        labels: Default::default(),
        capacity_memory_mb: None,
        grace: Duration::from_secs(1),
        writer: None,
        sagas: false,
        policy_keys: Default::default(),
    });
    let joined = cbs_tests::TestHost::start(joining, &[]).await;
    let known = joined.body().boundaries().membership("orders.private");
    assert_eq!(
        known.map(|m| (m.name, m.exported)),
        Some(("orders".to_owned(), false)),
        "the domains are known once the host has started"
    );

    let paths = |domain: Option<&str>| {
        let mut args = vec!["gateway", "--print-openapi"];
        args.extend(domain.map(|d| ["--domain", d]).into_iter().flatten());
        let (ok, out, err) = run(&url, &args);
        assert!(ok, "{err}");
        let doc: Value = serde_json::from_str(&out).unwrap();
        let paths: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
        (paths, doc["info"]["title"].clone())
    };
    let (all, _) = paths(None);
    assert_eq!(
        all,
        ["/caller", "/private", "/public"],
        "the lattice's gateway"
    );
    let (exported, title) = paths(Some("orders"));
    assert_eq!(
        exported,
        ["/public"],
        "the domain's gateway: its exports only"
    );
    assert_eq!(title, "CBS domain orders");
}

/// An nkey user's seed, as `cbs accounts` wrote it.
fn seed(dir: &Path, account: &str, role: &str) -> String {
    let file = dir.join(account).join(format!("{role}.nk"));
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_owned()
}

/// A client of the NATS user `account`/`role`.
async fn user(server: &NatsServer, nats: &Path, account: &str, role: &str) -> NatsBus {
    NatsBus::connect(&NatsOptions {
        urls: server.url(),
        name: format!("{account}-{role}"),
        nkey_seed: Some(seed(nats, account, role)),
        ..NatsOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{account}-{role} connects: {e}"))
}

/// On NATS the server holds the boundary too: with the accounts `cbs
/// accounts` writes, each domain runs in its own account (hosts and
/// deployers as its users, with their roles' permissions, sagas too), and a caller
/// outside the domain — in the public account or another domain — reaches
/// its exported cell only; the rest has no responders, by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_the_server_keeps_each_domain_in_its_own_account() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bundle = |id: &str, calls: &[&str]| {
        let calls = format!("[capabilities]\ncalls = {calls:?}\n");
        faulty_bundle(&dir.join(format!("b-{id}")), id, "0.1.0", &calls)
    };
    let orders = dir.join("orders.yaml");
    std::fs::write(
        &orders,
        format!(
            "domain: orders\ncells:\n  - bundle: {}\n  - bundle: {}\nexports: [orders.public]\n{}",
            bundle("orders.public", &["orders.private"]).display(),
            bundle("orders.private", &[]).display(),
            "sagas:\n  - name: echo\n    steps:\n      - name: first\n        call: orders.private\n"
        ),
    )
    .unwrap();
    let shop = dir.join("shop.yaml");
    std::fs::write(
        &shop,
        format!(
            "domain: shop\ncells:\n  - bundle: {}\nuses:\n  - domain: orders\n    cells: [orders.public]\n",
            bundle("shop.front", &["orders.public", "orders.private"]).display()
        ),
    )
    .unwrap();
    let nats = dir.join("nats");
    let out = cbs(&[
        "accounts",
        orders.to_str().unwrap(),
        shop.to_str().unwrap(),
        "-o",
        nats.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let accounts = std::fs::read_to_string(nats.join("accounts.conf")).unwrap();
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::with_config(&format!(
        "jetstream {{ store_dir: {:?} }}\n{accounts}",
        store.path()
    ));
    let url = server.url();
    // Orders has a saga, so its host runs sagas (and its user may).
    let host = |domain: &str, flags: &[&str]| {
        let seed = seed(&nats, domain, "host");
        let args = [flags, &["--nats-nkey", &seed]].concat();
        HostProcess::serve(&url, &format!("{domain}-host"), &[], &args)
    };
    let hosts = [
        host("orders", &["--watch", "--sagas"]),
        host("shop", &["--watch"]),
    ];
    for (domain, spec) in [("orders", &orders), ("shop", &shop)] {
        let deployer = seed(&nats, domain, "deployer");
        let (ok, out, err) = run(
            &url,
            &["apply", spec.to_str().unwrap(), "--nats-nkey", &deployer],
        );
        assert!(ok && out.contains("applied"), "{domain}: {out}{err}");
    }
    // The deployer starts a saga, the domain's host runs it.
    let deployer = seed(&nats, "orders", "deployer");
    let (ok, out, err) = run(
        &url,
        &[
            "saga",
            "start",
            "orders",
            "echo",
            r#"{"action":"echo","value":1}"#,
            "--nats-nkey",
            &deployer,
        ],
    );
    assert!(ok, "the saga runs in the domain's account: {out}{err}");

    let echo = json!({"action": "echo", "value": 1});
    let public = user(&server, &nats, "public", "caller").await;
    let reached = call_json(
        &public,
        "orders.public",
        echo.clone(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(reached.unwrap()["value"], 1, "the export is reached");
    for hidden in ["orders.private", "shop.front"] {
        let refused = call_json(&public, hidden, echo.clone(), Duration::from_secs(10))
            .await
            .expect_err("what no domain exports is out of reach");
        assert_eq!(refused.code, ErrorCode::NotFound, "{hidden}: {refused}");
        assert!(
            refused
                .message
                .contains("only where its account exports it"),
            "the refusal says where to look: {refused}"
        );
    }

    let inside = user(&server, &nats, "orders", "caller").await;
    let reached = call_through(&inside, "orders.public", "orders.private").await;
    assert_eq!(
        reached.unwrap()["value"]["value"],
        1,
        "inside, calls are free"
    );

    let shop_caller = user(&server, &nats, "shop", "caller").await;
    let used = call_through(&shop_caller, "shop.front", "orders.public").await;
    assert_eq!(
        used.unwrap()["value"]["value"],
        1,
        "shop reaches what it uses"
    );
    let refused = call_through(&shop_caller, "shop.front", "orders.private")
        .await
        .expect_err("shop's host finds no way to orders.private");
    assert_eq!(refused.code, ErrorCode::NotFound, "{refused}");
    let refused = call_json(
        &shop_caller,
        "orders.private",
        echo,
        Duration::from_secs(10),
    )
    .await
    .expect_err("nor does shop's caller");
    assert_eq!(refused.code, ErrorCode::NotFound, "{refused}");

    for host in &hosts {
        assert!(
            !host.log().contains("Permissions Violation"),
            "a host's job was refused: {}",
            host.log()
        );
    }
}

/// `trust_inside` (ADR 0029): a call between two cells of a domain that
/// trusts its cells' calls, on one host, skips the callee's contract; the
/// same call from another domain, from a bus client, or inside a domain
/// that does not trust is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusting_domain_skips_the_contract_inside_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Each `back` takes only an integer `value`.
    let schema = dir.join("integer.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","required":["value"],"properties":{"value":{"type":"integer"}}}"#,
    )
    .unwrap();
    let bus = std::sync::Arc::new(cbs_host::bus::local::LocalBus::new());
    let builder =
        cbs_tests::domains::three(dir, bus, |toml, _| toml.input("test/integer@1", &schema));
    let host = cbs_tests::TestHost::start(builder, &[]).await;
    let bus = host.body().bus().clone();
    let text = |caller: &str, callee: &str| {
        let bus = bus.clone();
        let payload = json!({"action": "call", "cell": callee, "payload": {"action": "echo", "value": "text"}});
        let caller = caller.to_owned();
        async move { call_json(bus.as_ref(), &caller, payload, Duration::from_secs(10)).await }
    };
    let inside = text("orders.front", "orders.back").await;
    assert_eq!(
        inside.expect("inside a trusting domain the callee's contract is not checked")["value"]
            ["value"],
        "text"
    );
    for (caller, callee, why) in [
        ("shop.front", "orders.back", "across domains"),
        (
            "billing.front",
            "billing.back",
            "inside a domain that checks",
        ),
    ] {
        let refused = text(caller, callee).await.expect_err(why);
        assert_eq!(
            refused.code,
            ErrorCode::ContractViolation,
            "{why}: {refused}"
        );
        assert!(
            refused.message.contains("test/integer@1"),
            "{why}: {refused}"
        );
    }
    let direct = call_json(
        bus.as_ref(),
        "orders.back",
        json!({"action": "echo", "value": "text"}),
        Duration::from_secs(10),
    )
    .await
    .expect_err("from the bus");
    assert_eq!(direct.code, ErrorCode::ContractViolation, "{direct}");
}
