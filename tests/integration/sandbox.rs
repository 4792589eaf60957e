//! WASI deny-by-default, proven by a cell that tries: a file, an
//! environment variable, a socket and the clocks. Without grants in
//! `cell.toml` each is denied (or, for clocks, coarsened to whole
//! milliseconds); with grants, exactly what is granted works.

use std::net::TcpListener;

use cbs_host::manifest::FileGrant;
use cbs_tests::{CellToml, TestHost};
use serde_json::{json, Value};

const CELL: &str = "test.sandboxed";

async fn try_(host: &TestHost, payload: Value) -> Value {
    let reply = host.call(CELL, payload.clone()).await;
    reply.unwrap_or_else(|e| panic!("{payload}: {e}"))["value"].clone()
}

fn denied(value: &Value) -> bool {
    value.get("denied").is_some()
}

/// A folder with `hello.txt`, and a listening socket the cell may try.
struct World {
    dir: tempfile::TempDir,
    listener: TcpListener,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), "hi from the host").unwrap();
        Self {
            dir,
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn addr(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_without_grants_reaches_no_file_variable_or_socket_and_coarse_clocks() {
    let world = World::new();
    let cell = CellToml::faulty(CELL).write();
    let host = TestHost::local(&[cell.path().to_path_buf()]).await;
    let file = world.dir.path().join("hello.txt");
    for path in [
        file.display().to_string(),
        "/etc/hostname".into(),
        "hello.txt".into(),
    ] {
        let read = try_(&host, json!({"action": "read_file", "path": path})).await;
        assert!(denied(&read), "read {path}: {read}");
    }
    // The host's own environment has HOME and PATH; the cell sees neither.
    assert!(std::env::var("PATH").is_ok());
    for name in ["PATH", "HOME", "CBS_NATS_PASSWORD"] {
        let value = try_(&host, json!({"action": "env", "name": name})).await;
        assert_eq!(value, Value::Null, "{name}");
    }
    let connect = try_(&host, json!({"action": "connect", "addr": world.addr()})).await;
    // Refused by the host's policy (WASI `access`), not unsupported.
    let why = connect["denied"].as_str().unwrap_or_default();
    assert!(why.contains("Permission denied"), "connect: {connect}");
    let clocks = try_(&host, json!({"action": "clocks"})).await;
    for key in ["wall_subsec_ns", "monotonic_steps_ns"] {
        for reading in clocks[key].as_array().unwrap() {
            assert_eq!(reading.as_u64().unwrap() % 1_000_000, 0, "{key}: {clocks}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_gets_exactly_what_its_manifest_grants() {
    let world = World::new();
    let writable = tempfile::tempdir().unwrap();
    let cell = CellToml::faulty(CELL)
        .capabilities(|c| {
            c.files = vec![
                FileGrant {
                    host: world.dir.path().to_path_buf(),
                    guest: "/data".into(),
                    write: false,
                },
                FileGrant {
                    host: writable.path().to_path_buf(),
                    guest: "/scratch".into(),
                    write: true,
                },
            ];
            c.env.insert("GREETING".into(), "hello".into());
            c.precise_clocks = true;
        })
        .write();
    let host = TestHost::local(&[cell.path().to_path_buf()]).await;
    let read = try_(
        &host,
        json!({"action": "read_file", "path": "/data/hello.txt"}),
    )
    .await;
    assert_eq!(read, "hi from the host");
    let write = try_(
        &host,
        json!({"action": "write_file", "path": "/data/new.txt"}),
    )
    .await;
    assert!(denied(&write), "a read-only grant: {write}");
    assert!(!world.dir.path().join("new.txt").exists());
    let write = try_(
        &host,
        json!({"action": "write_file", "path": "/scratch/new.txt"}),
    )
    .await;
    assert_eq!(write, true);
    assert_eq!(
        std::fs::read_to_string(writable.path().join("new.txt")).unwrap(),
        "x"
    );
    // Outside the grants, nothing: not the granted folder's parent either.
    let escape = try_(
        &host,
        json!({"action": "read_file", "path": "/data/../etc/hostname"}),
    )
    .await;
    assert!(denied(&escape), "{escape}");

    assert_eq!(
        try_(&host, json!({"action": "env", "name": "GREETING"})).await,
        "hello"
    );
    assert_eq!(
        try_(&host, json!({"action": "env", "name": "HOME"})).await,
        Value::Null
    );
    // Sockets are never granted.
    let connect = try_(&host, json!({"action": "connect", "addr": world.addr()})).await;
    assert!(denied(&connect), "connect: {connect}");
    // Precise clocks: ten wall readings all on a millisecond would be a
    // one-in-10^60 coincidence.
    let clocks = try_(&host, json!({"action": "clocks"})).await;
    let wall = clocks["wall_subsec_ns"].as_array().unwrap();
    assert!(
        wall.iter().any(|n| n.as_u64().unwrap() % 1_000_000 != 0),
        "{clocks}"
    );
}

#[tokio::test]
async fn a_grant_of_a_missing_folder_fails_the_load_clearly() {
    let cell = CellToml::faulty(CELL)
        .capabilities(|c| {
            c.files = vec![FileGrant {
                host: "no-such-folder".into(),
                guest: "/data".into(),
                write: false,
            }]
        })
        .write();
    let body = cbs_host::body::Body::new(
        std::sync::Arc::new(cbs_host::bus::local::LocalBus::new()),
        cbs_tests::runtime(None),
    );
    let err = format!("{:#}", body.load(cell.path()).await.err().unwrap());
    assert!(err.contains("no-such-folder is not a folder"), "{err}");
}
