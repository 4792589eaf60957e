//! WASI deny-by-default, proven by a cell that tries: a file, an
//! environment variable, a socket and the clocks. Without grants in
//! `cell.toml` each is denied (or, for clocks, coarsened to whole
//! milliseconds); with grants, exactly what is granted works.

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use cbs_host::manifest::FileGrant;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::HostProcess;
use cbs_tests::{call_json, CellToml, TestHost};
use serde_json::{json, Value};

const CELL: &str = "test.sandboxed";
const TIMEOUT: Duration = Duration::from_secs(5);

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
async fn a_cell_without_grants_reaches_no_file_or_socket_and_gets_coarse_clocks() {
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

/// Variables set in the host's own environment (two distinctive ones, one
/// named like a secret, and PATH and HOME) are not the cell's to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_without_grants_sees_none_of_the_hosts_variables() {
    let server = NatsServer::start();
    let cell = CellToml::faulty(CELL).write();
    let path = cell.path().display().to_string();
    let env = [
        ("CBS_SANDBOX_PROBE", Some("visible-to-the-host-only")),
        ("DATABASE_PASSWORD", Some("not-for-cells")),
    ];
    let _host = HostProcess::serve_with_env(&server.url(), "host-env", &[&path], &env);
    let bus = server.bus().await;
    for name in ["CBS_SANDBOX_PROBE", "DATABASE_PASSWORD", "PATH", "HOME"] {
        let reply = call_json(&bus, CELL, json!({"action": "env", "name": name}), TIMEOUT).await;
        assert_eq!(reply.unwrap()["value"], Value::Null, "{name}");
    }
}

/// UDP and name lookups are refused by the host's policy: the datagram
/// never reaches a loopback socket, and `localhost` does not resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_cannot_send_udp_or_look_up_names() {
    let target = UdpSocket::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let cell = CellToml::faulty(CELL).write();
    let host = TestHost::local(&[cell.path().to_path_buf()]).await;
    let addr = target.local_addr().unwrap().to_string();
    let udp = try_(&host, json!({"action": "udp", "addr": addr})).await;
    let why = udp["denied"].as_str().unwrap_or_default();
    assert!(why.contains("Permission denied"), "udp: {udp}");
    let mut buf = [0u8; 8];
    assert!(target.recv_from(&mut buf).is_err(), "a datagram arrived");
    let lookup = try_(&host, json!({"action": "lookup", "name": "localhost"})).await;
    // wasi-libc reports the host's refusal as EAI_FAIL.
    assert!(denied(&lookup), "lookup: {lookup}");
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
    let host = cbs_tests::TestHost::idle(None).await;
    let err = format!("{:#}", host.body().load(cell.path()).await.err().unwrap());
    assert!(err.contains("no-such-folder is not a folder"), "{err}");
}
