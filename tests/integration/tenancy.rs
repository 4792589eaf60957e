//! Tenants are NATS accounts (docs/security.md): a tenant's hosts, cells
//! and callers connect as users of its account, and the server keeps
//! accounts apart. A tenant offers a cell to another by a service export
//! and import; nothing else crosses. Real nats-server, real hosts.

use std::time::Duration;

use cbs_host::bus::nats::{NatsBus, NatsOptions};
use cbs_host::bus::{BodyBus, Message};
use cbs_host::envelope::ErrorCode;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::HostProcess;
use cbs_tests::{call_json, faulty, greet};
use serde_json::json;

/// Tenant A runs `logic.greet` and `test.faulty` and exports only the
/// first; B imports it; C has neither.
const ACCOUNTS: &str = r#"
accounts {
  A: {
    users: [ {user: a-host, password: a}, {user: a-client, password: a} ]
    exports: [ {service: "cbs.logic.greet"} ]
  }
  B: {
    users: [ {user: b-client, password: b} ]
    imports: [ {service: {account: A, subject: "cbs.logic.greet"}} ]
  }
  C: {
    users: [ {user: c-client, password: c} ]
  }
}
"#;

async fn client(server: &NatsServer, user: &str, password: &str) -> NatsBus {
    NatsBus::connect(&NatsOptions {
        urls: server.url(),
        name: user.into(),
        user: Some(user.into()),
        password: Some(password.into()),
        ..NatsOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{user} connects: {e}"))
}

fn tenant_a_host(server: &NatsServer) -> HostProcess {
    HostProcess::serve(
        &server.url(),
        "a-host",
        &[greet(), faulty()],
        &["--nats-user", "a-host", "--nats-password", "a"],
    )
}

async fn call(bus: &NatsBus, cell: &str) -> Result<serde_json::Value, ErrorCode> {
    let payload = match cell {
        "logic.greet" => json!({"name": "Ada"}),
        _ => json!({"action": "count"}),
    };
    call_json(bus, cell, payload, Duration::from_secs(5))
        .await
        .map_err(|e| e.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_is_reachable_in_its_own_account_and_where_it_is_exported_only() {
    let server = NatsServer::with_config(ACCOUNTS);
    let _host = tenant_a_host(&server);
    let a = client(&server, "a-client", "a").await;
    let b = client(&server, "b-client", "b").await;
    let c = client(&server, "c-client", "c").await;

    let own = call(&a, "logic.greet")
        .await
        .expect("A calls its own greet");
    assert_eq!(own["greeting"], "Hello, Ada!");
    let own = call(&a, "test.faulty")
        .await
        .expect("A calls its own faulty");
    assert_eq!(own["count"], 1, "A's test.faulty counted A's call: {own}");
    let greeting = call(&b, "logic.greet").await.expect("B imports A's greet");
    assert_eq!(greeting["greeting"], "Hello, Ada!");
    assert_eq!(
        call(&b, "test.faulty").await.unwrap_err(),
        ErrorCode::NotFound,
        "B cannot reach what A did not export"
    );
    assert_eq!(
        call(&c, "logic.greet").await.unwrap_err(),
        ErrorCode::NotFound,
        "C imported nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_sees_none_of_a_tenants_traffic() {
    let server = NatsServer::with_config(ACCOUNTS);
    let _host = tenant_a_host(&server);
    let a = client(&server, "a-client", "a").await;
    let c = client(&server, "c-client", "c").await;
    // C listens to everything its account can see.
    let mut everything = c.subscribe(">", None).await.unwrap();
    c.flush().await.unwrap();
    for _ in 0..3 {
        call(&a, "logic.greet").await.expect("A's flow runs");
    }
    // A marker C sends itself comes after anything that reached C before it.
    c.publish(Message::new("c.marker", "end")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), everything.next())
        .await
        .expect("C's own marker arrives")
        .unwrap();
    assert_eq!(
        first.subject, "c.marker",
        "C saw A's traffic: {}",
        first.subject
    );
}

/// Buckets live in their account too: tenant A's desired state (written
/// the way `cbs deploy` writes it) is not in tenant C's bucket of the same
/// name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_cannot_read_a_tenants_buckets() {
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "jetstream {{ store_dir: {:?} }}\n{}",
        store.path(),
        ACCOUNTS
            .replace("exports:", "jetstream: enabled\n    exports:")
            .replace(
                "users: [ {user: c-client",
                "jetstream: enabled\n    users: [ {user: c-client"
            )
    );
    let server = NatsServer::with_config(&config);
    let a = client(&server, "a-client", "a").await;
    let deploys = cbs_host::deploy::Store::open(a.client()).await.unwrap();
    let release = cbs_host::deploy::Release {
        id: "r1".into(),
        version: "1.0.0".into(),
        digest: "sha256:00".into(),
        object: "o".into(),
        ..Default::default()
    };
    let desired = cbs_host::deploy::Desired::advance(None, "logic.greet", release);
    deploys.set_desired(&desired).await.unwrap();
    assert!(
        deploys.desired("logic.greet").await.unwrap().is_some(),
        "A reads its own"
    );

    // C has JetStream of its own: the same bucket name is C's own bucket,
    // and A's entry is not in it.
    let c = client(&server, "c-client", "c").await;
    let own = cbs_host::deploy::Store::open(c.client()).await.unwrap();
    assert!(
        own.desired("logic.greet").await.unwrap().is_none(),
        "C reads A's desired state"
    );
    assert!(own.all_desired().await.unwrap().is_empty());
}
