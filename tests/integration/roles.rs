//! The permission set of each role in docs/security.md, as NATS users of
//! one real server with JetStream (the sets `cbs_host::roles` makes, which
//! `cbs accounts` writes): each role does its job with its own
//! credentials, and the server refuses it one thing outside that job.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use cbs_host::bus::BodyBus;
use cbs_tests::bundles::{releases, UPPER};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use tokio::sync::mpsc;

/// The roles of docs/security.md as `cbs_host::roles` has them (what `cbs
/// accounts` writes), each a password user of one server.
fn config(store: &std::path::Path) -> String {
    use cbs_host::roles;
    let users = [
        ("host", roles::host(&[], false)),
        ("deployer", roles::deployer(&[UPPER.to_owned()])),
        ("caller", roles::caller()),
        ("observer", roles::observer()),
    ]
    .map(|(user, set)| {
        format!(
            "    {{ user: {user}, password: {}, permissions: {} }}\n",
            &user[..1],
            set.to_conf("    ")
        )
    })
    .concat();
    format!("jetstream {{ store_dir: {store:?} }}\nauthorization {{\n  users = [\n{users}  ]\n}}\n")
}

fn login(user: &str) -> Vec<String> {
    let password = &user[..1];
    ["--nats-user", user, "--nats-password", password]
        .map(String::from)
        .to_vec()
}

fn run(args: &[&str], user: &str, url: &str) -> (bool, String) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(login(user));
    all.extend(["--nats".to_owned(), url.to_owned()]);
    let out = cbs(&all.iter().map(String::as_str).collect::<Vec<_>>());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A raw client of `user` and the permission violations the server sends it.
async fn client(url: &str, user: &str) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .user_and_password(user.into(), user[..1].into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    (client, rx)
}

async fn assert_violation(rx: &mut mpsc::UnboundedReceiver<String>, what: &str) {
    let error = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("the server allowed: {what}"))
        .unwrap();
    assert!(
        error.to_lowercase().contains("permissions violation"),
        "{what}: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_role_does_its_job_and_is_refused_outside_it() {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::with_config(&config(store.path()));
    let url = server.url();
    let releases = releases();

    // host: serves and follows the desired state.
    let host_login = login("host");
    let host_args: Vec<&str> = ["--watch"]
        .into_iter()
        .chain(host_login.iter().map(String::as_str))
        .collect();
    let watching = HostProcess::serve(&url, "role-host", &[], &host_args);
    // deployer: deploys, and the host serves what it deployed.
    let (ok, out) = run(&["deploy", releases.v1.to_str().unwrap()], "deployer", &url);
    assert!(ok, "deployer deploys: {out}");
    assert!(out.contains("serving on 1 host(s)"), "{out}");
    // caller: calls the deployed cell.
    let (ok, out) = run(&["call", UPPER, r#"{"text":"hi"}"#], "caller", &url);
    assert!(ok && out.contains("HI"), "caller calls: {out}");
    // observer: sees hosts and cells, and the hops they handled.
    let (ok, out) = run(&["ps", "--json"], "observer", &url);
    assert!(ok && out.contains("role-host"), "observer lists: {out}");
    let (ok, out) = run(&["flows", "--json"], "observer", &url);
    assert!(
        ok && out.contains("role-host"),
        "observer sees flows: {out}"
    );

    // ... and nothing more.
    let (host, mut refused) = client(&url, "host").await;
    host.publish("$KV.cbs-desired.text.upper", "{}".into())
        .await
        .unwrap();
    assert_violation(&mut refused, "a host writing the desired state").await;

    let (deployer, mut refused) = client(&url, "deployer").await;
    let _stolen = deployer.subscribe("cbs.text.upper").await.unwrap();
    assert_violation(&mut refused, "a deployer taking a cell's requests").await;

    // Regression (#26, 8): with `$JS.API.>` a deployer or a host could
    // delete the audit stream.
    for who in ["deployer", "host"] {
        let (nats, mut refused) = client(&url, who).await;
        for call in ["DELETE", "PURGE", "UPDATE", "MSG.DELETE"] {
            let subject = format!("$JS.API.STREAM.{call}.{}", cbs_host::audit::STREAM);
            nats.publish(subject, "{}".into()).await.unwrap();
            assert_violation(
                &mut refused,
                &format!("a {who} calling {call} on the audit stream"),
            )
            .await;
        }
    }
    let stream = async_nats::jetstream::new(client(&url, "host").await.0)
        .get_stream(cbs_host::audit::STREAM)
        .await;
    assert!(stream.is_ok(), "the audit stream is still there");
    // Nothing the host did in its job was refused.
    assert!(
        !watching.log().contains("Permissions Violation"),
        "{}",
        watching.log()
    );

    let (caller, mut refused) = client(&url, "caller").await;
    caller
        .publish("$JS.API.STREAM.PURGE.CBS_AUDIT", "".into())
        .await
        .unwrap();
    assert_violation(&mut refused, "a caller using the JetStream API").await;
    caller
        .publish(
            "cbs.~l.text.upper",
            r#"{"host":"x","latency_us":1,"room":9}"#.into(),
        )
        .await
        .unwrap();
    assert_violation(&mut refused, "a caller forging a host's load report").await;

    let (observer, mut refused) = client(&url, "observer").await;
    observer
        .publish("cbs.text.upper", "{}".into())
        .await
        .unwrap();
    assert_violation(&mut refused, "an observer calling a cell").await;
}

/// A host whose cells call and publish as their own NATS user, which
/// denies one event subject the cell's grant (`events.>`) allows.
fn cell_traffic_config() -> &'static str {
    r#"
authorization {
  users = [
    { user: host, password: h, permissions: {
        publish: [">"], subscribe: [">"], allow_responses: true } }
    { user: cells, password: c, permissions: {
        publish: { allow: ["cbs.>", "events.>"],
                   deny: ["events.secret.>", "cbs.~l.>", "cbs.~h.>", "$JS.>", "$KV.>", "$O.>", "$SYS.>"] }
        subscribe: ["_INBOX.>"] } }
    { user: watcher, password: w, permissions: {
        publish: ["cbs.>"], subscribe: ["events.>", "_INBOX.>"] } }
  ]
}
"#
}

/// Regression (#26, 1): cells published with the host's credentials, so
/// the server could not hold them to less than the host may do. With
/// `--cell-nats-user` their publishes go out as that user, and the
/// server refuses what its permissions deny.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cells_publish_as_their_own_user_and_the_server_holds_them_to_it() {
    let server = NatsServer::with_config(cell_traffic_config());
    let url = server.url();
    let mut args = login("host");
    args.extend(["--cell-nats-user", "cells", "--cell-nats-password", "c"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reference = cbs_tests::repo().join("tests/sidecars/reference");
    let host = HostProcess::serve(&url, "cells-host", &[reference], &args);
    assert!(host
        .log()
        .contains("cells call and publish as their own NATS user"));

    let watcher = cbs_host::bus::nats::NatsBus::connect(&cbs_host::bus::nats::NatsOptions {
        urls: url.clone(),
        name: "watcher".into(),
        user: Some("watcher".into()),
        password: Some("w".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut events = watcher.subscribe("events.>", None).await.unwrap();
    watcher.flush().await.unwrap();
    for subject in ["events.secret.leak", "events.ok"] {
        let publish =
            serde_json::json!({"action": "publish", "subject": subject, "payload": {"x": 1}});
        let reply =
            cbs_tests::call_json(&watcher, "test.reference", publish, Duration::from_secs(10))
                .await;
        assert!(reply.is_ok(), "{subject}: {reply:?}");
    }
    // One connection's messages arrive in order: had the denied one gone
    // out, it would come first.
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the allowed event arrives")
        .unwrap();
    assert_eq!(first.subject, "events.ok");
}
