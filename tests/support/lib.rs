//! Shared helpers for CBS's integration and end-to-end tests: where the
//! repository's cells and binaries are, a host with real components on a
//! real bus, and waiting on conditions with deadlines (never fixed sleeps).

pub mod axe;
pub mod browser;
pub mod bundles;
pub mod cell_toml;
pub mod curl;
pub mod domains;
pub mod jwt;
pub mod nats;
pub mod nats_auth;
pub mod oidc;
pub mod process;
pub mod process_bundles;
pub mod raw_http;
pub mod registry;
pub mod skips;
pub mod topology;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cbs_host::body::{Body, LoadedCell};
use cbs_host::bus::local::LocalBus;
use cbs_host::bus::{BodyBus, Message};
use cbs_host::envelope::{BusError, Envelope};
use cbs_host::host::{Host, HostBuilder};
use cbs_host::runtime::wasm::{EngineOptions, WasmRuntime};
use serde_json::value::RawValue;
use serde_json::Value;

pub use cell_toml::CellToml;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A cell folder of the repository, checked to have its component built.
pub fn cell(rel: &str) -> PathBuf {
    let dir = repo().join(rel);
    let spec = cbs_host::manifest::CellSpec::from_dir(&dir).expect("cell.toml");
    let wasm = spec.component_path().unwrap();
    assert!(
        wasm.is_file(),
        "{} is missing: run `make cells` first (make test does)",
        wasm.display()
    );
    dir
}

/// The demo cells.
pub fn greet() -> PathBuf {
    cell("cells/logic.greet")
}
pub fn faulty() -> PathBuf {
    cell("tests/cells/faulty")
}
pub fn faulty_fresh() -> PathBuf {
    cell("tests/cells/faulty-fresh")
}

/// A binary of the workspace, built next to the test executables.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p cbs-cli` first (make test does)",
        path.display()
    );
    path
}

/// A component cache shared by the tests of one target dir, so components
/// compile once per run.
pub fn shared_cache() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("cbs-test-cache")
}

/// A wasm runtime with a small pool.
pub fn runtime(cache: Option<PathBuf>) -> Arc<WasmRuntime> {
    let options = EngineOptions {
        max_instances: 200,
        ..EngineOptions::default()
    };
    Arc::new(WasmRuntime::new(&options, cache).expect("wasm runtime"))
}

/// A host on `bus` with the tests' runtime (small pool, shared component
/// cache) and its data in a temporary folder, kept for the process's life
/// so no test writes to the user's data folder.
pub fn builder(bus: Arc<dyn BodyBus>) -> HostBuilder {
    Host::builder()
        .bus(bus)
        .runtime(runtime(Some(shared_cache())))
        .data_dir(scratch_data_dir())
}

/// A data folder of its own per call, under `<target>/cbs-test-data/<test
/// binary>/`, which each test process empties first: test binaries run one
/// at a time, so what a run leaves is bounded by one binary's folders.
pub fn scratch_data_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let root = ROOT.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_owned();
        let root = shared_cache().with_file_name("cbs-test-data").join(name);
        let _ = std::fs::remove_dir_all(&root);
        root
    });
    let dir = root.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    std::fs::create_dir_all(&dir).expect("a test data folder");
    dir
}

/// A host with some cells served on a bus, built as `cbs-host run`
/// builds one.
pub struct TestHost {
    pub host: Host,
}

impl TestHost {
    /// Serves `cells` on a new in-process bus.
    pub async fn local(cells: &[PathBuf]) -> Self {
        Self::on(Arc::new(LocalBus::new()), cells).await
    }

    pub async fn on(bus: Arc<dyn BodyBus>, cells: &[PathBuf]) -> Self {
        Self::with_data(bus, None, cells).await
    }

    /// A host on a new in-process bus serving nothing, its runtime's
    /// component cache in `cache` (`None`: none): for tests of loading.
    pub async fn idle(cache: Option<PathBuf>) -> Self {
        let builder = builder(Arc::new(LocalBus::new())).runtime(runtime(cache));
        Self::start(builder, &[]).await
    }

    /// Serves `cells` on `bus`, every call between cells sent through the
    /// bus even to a cell of this host (`cbs-host run --calls-via-bus`).
    pub async fn via_bus(bus: Arc<dyn BodyBus>, cells: &[PathBuf]) -> Self {
        Self::start(builder(bus).local_calls(false), cells).await
    }

    /// Serves `cells` on `bus` as host `host_id`, routing requests around
    /// it when it is full or slow (as `cbs-host run` does on NATS).
    pub async fn routed(bus: Arc<dyn BodyBus>, host_id: &str, cells: &[PathBuf]) -> Self {
        Self::start(builder(bus).id(host_id).routing(true), cells).await
    }

    /// Serves `cells` on `bus`; cells granted state on the in-process bus
    /// keep it in `data_dir` (else in a folder of their own).
    pub async fn with_data(
        bus: Arc<dyn BodyBus>,
        data_dir: Option<&Path>,
        cells: &[PathBuf],
    ) -> Self {
        let builder = builder(bus);
        let builder = match data_dir {
            Some(dir) => builder.data_dir(dir),
            None => builder,
        };
        Self::start(builder, cells).await
    }

    /// Starts the host `builder` describes, serving `cells`.
    pub async fn start(builder: HostBuilder, cells: &[PathBuf]) -> Self {
        // Warnings (restarts, retired instances) show up with a failing test.
        cbs_host::telemetry::init(cbs_host::telemetry::LogFormat::Text, "warn");
        let host = builder.start().await.expect("the host starts");
        for dir in cells {
            host.body()
                .start(dir)
                .await
                .unwrap_or_else(|e| panic!("cannot start {}: {e:#}", dir.display()));
        }
        Self { host }
    }

    pub fn body(&self) -> &Arc<Body> {
        self.host.body()
    }

    pub fn bus(&self) -> &Arc<dyn BodyBus> {
        self.body().bus()
    }

    pub fn cell(&self, id: &str) -> Arc<LoadedCell> {
        self.body().cell(id).expect("cell served")
    }

    /// Requests a cell; returns the whole reply envelope.
    pub async fn envelope(&self, cell_id: &str, payload: Value) -> Envelope {
        request_envelope(self.bus().as_ref(), cell_id, payload).await
    }

    /// Requests a cell; returns its reply payload or typed error.
    pub async fn call(&self, cell_id: &str, payload: Value) -> Result<Value, BusError> {
        self.envelope(cell_id, payload)
            .await
            .into_result()
            .map(|p| serde_json::from_str(p.get()).unwrap())
    }
}

/// The first envelope of a flow to `cell_id`.
pub fn envelope_to(cell_id: &str, payload: &Value) -> Envelope {
    let payload = RawValue::from_string(payload.to_string()).unwrap();
    Envelope::new(format!("cbs.{cell_id}"), payload)
}

/// One request through any bus, as an edge client sends it: the reply
/// payload as JSON, or the typed error of the reply or of the bus.
pub async fn call_json(
    bus: &dyn BodyBus,
    cell_id: &str,
    payload: Value,
    timeout: Duration,
) -> Result<Value, BusError> {
    let reply = cbs_host::call::call(bus, &envelope_to(cell_id, &payload), timeout).await?;
    Ok(serde_json::from_str(reply.get()).expect("a reply payload is JSON"))
}

/// One request through any bus; the whole reply envelope, checked to keep
/// the flow's correlation id.
pub async fn request_envelope(bus: &dyn BodyBus, cell_id: &str, payload: Value) -> Envelope {
    let envelope = envelope_to(cell_id, &payload);
    let reply = cbs_host::call::request(bus, &envelope, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("request to {cell_id}: {e}"));
    assert_eq!(
        reply.correlation_id, envelope.correlation_id,
        "reply keeps the flow"
    );
    reply
}

/// Raw bytes to a subject, for malformed-input tests.
pub async fn request_raw(bus: &dyn BodyBus, subject: &str, payload: &'static [u8]) -> Envelope {
    let reply = bus
        .request(
            Message::new(subject, Bytes::from_static(payload)),
            Duration::from_secs(10),
        )
        .await
        .expect("a reply");
    Envelope::from_slice(&reply.payload).expect("reply is an envelope")
}

/// How often waits re-check their condition.
pub const POLL: Duration = Duration::from_millis(5);

/// Waits until `check` is done (`Ok`), polling every [`POLL`], or panics
/// after `timeout` with `what` and the last state it saw (`Err`): for
/// conditions that need a bus or a server to look at.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(state) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}: {state}"
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Keeps `in_flight` requests of `payload` going to `cell_id` until the
/// cell runs `want` instances (warm instances or processes), checking in
/// every round that it never runs more; every request must succeed.
pub async fn load_until_instances(
    host: &TestHost,
    cell_id: &str,
    payload: Value,
    in_flight: usize,
    want: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let calls = (0..in_flight).map(|_| host.call(cell_id, payload.clone()));
        for result in futures_util::future::join_all(calls).await {
            result.unwrap_or_else(|e| panic!("a request under load failed: {e}"));
        }
        let now = host.cell(cell_id).runner.instances();
        assert!(
            now <= want,
            "{cell_id} runs {now} instances, more than {want}"
        );
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{cell_id} stayed at {now} instances under load, not {want}"
        );
    }
}

/// Checks that `condition` holds throughout `duration`, sampling every
/// [`POLL`]: for a state that must not change (a floor kept).
pub async fn holds_for(duration: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        assert!(condition(), "{what} stopped holding");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `condition` holds, polling, or panics after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A temporary cell folder whose `cell.toml` is exactly `text`: only for
/// manifests that exist to be broken, which test the parser on text.
/// Every other test cell is built with [`CellToml`].
pub fn literal_cell(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(cbs_host::manifest::FILE_NAME), text).unwrap();
    dir
}

/// `cells/logic.shout` built with `make dart-cells`, where `dart` exists.
pub fn dart_shout() -> Option<PathBuf> {
    if std::process::Command::new("dart")
        .arg("--version")
        .output()
        .is_err()
    {
        skips::skipped(
            "the Dart cell's hop of the polyglot flow",
            "dart is not on PATH",
        );
        return None;
    }
    let make = std::process::Command::new("make")
        .args(["--no-print-directory", "dart-cells"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        make.status.success(),
        "make dart-cells: {}",
        String::from_utf8_lossy(&make.stderr)
    );
    Some(repo().join("cells/logic.shout"))
}
