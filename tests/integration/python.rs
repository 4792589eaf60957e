//! Python cells, both runtimes: one source (`tests/cells/py-faulty`) built
//! into a component by componentize-py and served in the native pool by
//! `cbs-host python-worker` processes embedding CPython. Real components,
//! real processes, real venvs (made by `make python-cells`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbs_host::envelope::{BusError, ErrorCode};
use cbs_host::manifest::CellSpec;
use cbs_host::runtime::python::venv::Venv;
use cbs_host::runtime::wasm::{CacheOutcome, Tier};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs_host, HostProcess};
use cbs_tests::{eventually, greet, load_until_instances, repo, CellToml, TestHost, POLL};
use serde_json::{json, Value};

const NATIVE: &str = "test.py_faulty";
const WASM: &str = "test.py_faulty_wasm";

/// A native Python cell folder, checked to have its venv.
fn native_cell(rel: &str) -> PathBuf {
    let dir = repo().join(rel);
    let spec = CellSpec::from_dir(&dir).unwrap();
    let venv = dir.join(&spec.manifest.python.as_ref().unwrap().venv);
    assert!(
        venv.join("pyvenv.cfg").is_file(),
        "{} is missing: run `make python-cells` first (make test does)",
        venv.display()
    );
    dir
}

fn py_native() -> PathBuf {
    native_cell("tests/cells/py-faulty")
}

fn py_wasm() -> PathBuf {
    cbs_tests::cell("tests/cells/py-faulty-wasm")
}

async fn host() -> TestHost {
    TestHost::local(&[greet(), py_native(), py_wasm()]).await
}

async fn act(host: &TestHost, cell: &str, payload: Value) -> Result<Value, BusError> {
    host.call(cell, payload).await
}

/// Calls `logic.greet` (a wasm cell of the same host) in a loop until
/// stopped; every call must succeed, within a second.
struct Watchdog {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    fn start(host: &Arc<TestHost>) -> Self {
        let (stop, answered) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let task = tokio::spawn({
            let (host, stop, answered) = (host.clone(), stop.clone(), answered.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let reply = host.call("logic.greet", json!({"name": "Ada"})).await;
                    assert_eq!(reply.unwrap()["greeting"], "Hello, Ada!");
                    let took = started.elapsed();
                    assert!(took < Duration::from_secs(1), "logic.greet took {took:?}");
                    answered.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(POLL).await;
                }
            }
        });
        Self {
            stop,
            answered,
            task,
        }
    }

    /// Stops; panics if a call failed or none was answered.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the wasm cell kept answering");
        let n = self.answered.load(Ordering::Relaxed);
        assert!(n > 0, "the wasm cell was never asked");
        n
    }
}

/// The native pool serves again (both workers answer).
async fn assert_restarted(host: &TestHost) {
    for _ in 0..4 {
        let reply = act(host, NATIVE, json!({"action": "shout", "text": "back"})).await;
        assert_eq!(reply.unwrap()["text"], "BACK!");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_gives_the_same_replies_in_both_runtimes() {
    let host = host().await;
    let cases = [
        json!({"action": "shout", "text": "hi"}),
        json!({"action": "stats", "values": [1, 2, 3.5]}),
        json!({"action": "call", "cell": "logic.greet", "payload": {"name": "Py"}}),
        // The callee's contract applies, and its typed error passes through.
        json!({"action": "call", "cell": "logic.greet", "payload": {"name": 3}}),
        json!({"action": "fail", "message": "no such thing"}),
        json!({"action": "stats", "values": []}),
        json!({"action": "bad_output"}),
        json!({"action": "nope"}),
    ];
    for payload in cases {
        let native = act(&host, NATIVE, payload.clone()).await;
        let wasm = act(&host, WASM, payload.clone()).await;
        let outcome = |r: Result<Value, BusError>| match r {
            Ok(v) => Ok(v),
            Err(e) => Err((e.code, e.details)),
        };
        assert_eq!(outcome(native), outcome(wasm), "for {payload}");
    }
    let reply = act(&host, NATIVE, json!({"action": "shout", "text": "hi"})).await;
    assert_eq!(reply.unwrap(), json!({"text": "HI!"}));
    let err = act(&host, WASM, json!({"action": "fail", "message": "m"}))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (ErrorCode::InvalidInput, "m")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_publishes_carry_the_flow_in_both_runtimes() {
    let host = host().await;
    for cell in [NATIVE, WASM] {
        let mut events = host.bus().subscribe("events.>", None).await.unwrap();
        let payload =
            json!({"action": "publish", "subject": "events.py", "payload": {"from": cell}});
        let envelope = host.envelope(cell, payload).await;
        assert!(envelope.error.is_none(), "{cell}: {:?}", envelope.error);
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap();
        let event = cbs_host::envelope::Envelope::from_slice(&event.payload).unwrap();
        assert_eq!(event.correlation_id, envelope.correlation_id, "{cell}");
        // Not granted: refused by the host, typed.
        let payload = json!({"action": "call", "cell": "io.print_greeting", "payload": {}});
        let err = act(&host, cell, payload).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ContractViolation, "{cell}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_typed_errors_in_both_runtimes_and_wasm_cells_keep_answering() {
    let host = Arc::new(host().await);
    let watchdog = Watchdog::start(&host);
    for cell in [NATIVE, WASM] {
        // Schema violation: the cell never runs.
        let err = act(&host, cell, json!({"text": "no action"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ContractViolation, "{cell}: {err}");
        assert!(err.message.contains("action"), "{cell}: {err}");

        // An exception: typed, without the traceback.
        let err = act(
            &host,
            cell,
            json!({"action": "raise", "message": "bad luck"}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::CellFailed, "{cell}: {err}");
        assert!(
            err.message.contains("ValueError: bad luck"),
            "{cell}: {err}"
        );
        assert!(!err.message.contains("Traceback"), "{cell}: {err}");

        // A handler that never returns: the deadline stops it.
        let started = Instant::now();
        let err = act(&host, cell, json!({"action": "hang"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Timeout, "{cell}: {err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{cell}");

        // And the cell serves the next message.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match act(&host, cell, json!({"action": "shout", "text": "ok"})).await {
                Ok(v) => break assert_eq!(v["text"], "OK!"),
                Err(e) => assert!(
                    e.code == ErrorCode::Unavailable && Instant::now() < deadline,
                    "{cell} after a timeout: {e}"
                ),
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let answered = watchdog.finish().await;
    eprintln!("logic.greet answered {answered} times meanwhile");
}

/// Python writes NaN and Infinity, which are not JSON. A finite input whose
/// sum overflows gives a typed error in both runtimes, not a frame the host
/// must end the native worker for, and the cell answers the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_an_infinite_number_is_a_contract_violation_in_both_runtimes() {
    let host = host().await;
    for cell in [NATIVE, WASM] {
        let overflow = json!({"action": "stats", "values": [1e308, 1e308]});
        let err = act(&host, cell, overflow).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ContractViolation, "{cell}: {err}");
        assert!(err.message.contains("NaN or infinite"), "{cell}: {err}");
        let reply = act(&host, cell, json!({"action": "shout", "text": "on"})).await;
        assert_eq!(reply.unwrap()["text"], "ON!", "{cell}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_worker_is_killed_and_replaced() {
    let host = host().await;
    let hung = act(&host, NATIVE, json!({"action": "hang"}));
    // While one worker spins, the other keeps serving.
    let (hung, other) = tokio::join!(hung, async {
        act(
            &host,
            NATIVE,
            json!({"action": "shout", "text": "meanwhile"}),
        )
        .await
    });
    assert_eq!(other.unwrap()["text"], "MEANWHILE!");
    let err = hung.unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    assert!(err.message.contains("killed"), "{err}");
    // Ended before the reply was sent; replaced with backoff.
    let cell = host.cell(NATIVE);
    assert_eq!(cell.runner.instances(), 1, "the stuck worker is gone");
    wait_for_workers(&host, 2).await;
    assert_restarted(&host).await;
}

/// Closed-loop calls to `logic.greet` (a wasm cell of the same host)
/// completed by one caller in `window`; every call must succeed, within a
/// second.
async fn greet_calls_in(host: &TestHost, window: Duration) -> u64 {
    let end = Instant::now() + window;
    let mut completed = 0;
    while Instant::now() < end {
        let started = Instant::now();
        let reply = host.call("logic.greet", json!({"name": "Ada"})).await;
        assert_eq!(reply.unwrap()["greeting"], "Hello, Ada!");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "logic.greet took {took:?}");
        completed += 1;
    }
    completed
}

/// Both native workers spin and twenty more messages wait for them; the
/// wasm cell of the same host is measured the same way with the pool idle
/// and saturated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_does_not_slow_wasm_cells() {
    const WINDOW: Duration = Duration::from_millis(500);
    const FLOOD: usize = 22;
    let host = Arc::new(host().await);
    greet_calls_in(&host, Duration::from_millis(100)).await; // warm up
    let idle = greet_calls_in(&host, WINDOW).await;

    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { act(&host, NATIVE, json!({"action": "hang"})).await })
        })
        .collect();
    let native = host.cell(NATIVE);
    cbs_tests::wait_until(Duration::from_secs(5), "the flood to be admitted", || {
        native.in_flight() == FLOOD
    })
    .await;
    let saturated = greet_calls_in(&host, WINDOW).await;
    // The flood's deadline (2 s) is well past the window: still saturated.
    assert!(
        flood.iter().all(|task| !task.is_finished()),
        "the flood ended before the window did"
    );
    eprintln!("logic.greet calls in {WINDOW:?}: {idle} with the pool idle, {saturated} saturated");
    // Two spinning workers compete with the host's threads for two cores:
    // a fair OS scheduler leaves the wasm cell about half the CPU it had
    // with the pool idle, so about 0.5× the calls. 0.2× leaves room for a
    // loaded machine's noise, while a wasm cell held up by the pool (its
    // threads, admission or queue) completes next to nothing and fails.
    assert!(
        saturated as f64 >= 0.2 * idle as f64,
        "logic.greet completed {saturated} calls with the pool saturated, \
         under 0.2× the {idle} with it idle"
    );

    // The flood ends typed: `timeout`; `cell_failed` for one queued on a
    // killed worker; `unavailable` for one that found both workers
    // restarting. Meanwhile the wasm cell keeps answering.
    let watchdog = Watchdog::start(&host);
    for task in flood {
        let err = task.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err.code,
                ErrorCode::Timeout | ErrorCode::CellFailed | ErrorCode::Unavailable
            ),
            "{err}"
        );
    }
    wait_for_workers(&host, 2).await;
    assert_restarted(&host).await;
    watchdog.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfaulting_worker_fails_its_message_and_is_restarted() {
    let host = Arc::new(host().await);
    let watchdog = Watchdog::start(&host);
    let err = act(&host, NATIVE, json!({"action": "segfault"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CellFailed, "{err}");
    assert!(err.message.contains("killed by signal 11"), "{err}");
    // "python worker test.py_faulty (pid N) was killed by signal 11 ..."
    let pid: u32 = err
        .message
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {err}"));
    assert!(!Path::new(&format!("/proc/{pid}/cmdline")).exists() || is_zombie(pid));
    wait_for_workers(&host, 2).await;
    assert_restarted(&host).await;
    watchdog.finish().await;
}

/// A process that has exited but was not reaped yet.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

async fn wait_for_workers(host: &TestHost, n: usize) {
    let cell = host.cell(NATIVE);
    cbs_tests::wait_until(Duration::from_secs(10), "the workers to be up", || {
        cell.runner.instances() == n
    })
    .await;
}

#[tokio::test]
async fn the_worker_runs_the_cells_venv_and_numpy_imports_from_it() {
    let stats = native_cell("cells/logic.stats");
    let host = TestHost::local(&[py_native(), stats.clone()]).await;
    // numpy is installed only in logic.stats's venv, and imports there.
    let reply = host
        .call("logic.stats", json!({"numbers": [2, 4, 4, 4, 5, 5, 7, 9]}))
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({"count": 8, "mean": 5.0, "median": 4.5, "std": 2.0, "min": 2.0, "max": 9.0})
    );
    let err = host
        .call("logic.stats", json!({"numbers": []}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ContractViolation);

    // The interpreter is the venv's: its prefix, its base version, and
    // none of another cell's packages.
    let dir = py_native();
    let venv = Venv::open(&dir.join(".venv")).unwrap();
    let reply = act(&host, NATIVE, json!({"action": "where"}))
        .await
        .unwrap();
    let value = &reply["value"];
    assert_eq!(
        Path::new(value["prefix"].as_str().unwrap()),
        venv.dir.canonicalize().unwrap()
    );
    assert_eq!(value["version"], venv.version.as_str());
    assert_eq!(value["numpy"], Value::Null, "numpy is not in this venv");
}

#[tokio::test]
async fn the_pool_is_sized_from_cell_toml() {
    let host = TestHost::local(&[py_native()]).await;
    let cell = host.cell(NATIVE);
    assert_eq!(cell.runner.instances(), 2, "[python] workers = 2");
    assert_eq!(cell.info().id, NATIVE);
    assert_eq!(cell.info().version, "0.1.0");
    // A class handler is made once per worker: its count goes up.
    let handled = |v: Value| v["value"]["handled"].as_u64().unwrap();
    let first = handled(
        act(&host, NATIVE, json!({"action": "where"}))
            .await
            .unwrap(),
    );
    let mut later = first;
    for _ in 0..4 {
        later = later.max(handled(
            act(&host, NATIVE, json!({"action": "where"}))
                .await
                .unwrap(),
        ));
    }
    assert!(later > first, "the handler instance lives across messages");
    // What discovery and the console show of the pool: both workers live,
    // none busy now.
    let pool = cell.workers().pool.expect("a native cell reports its pool");
    assert_eq!((pool.live, pool.max, pool.messages), (2, 2, 0));
}

/// An `async def` handler runs many messages at once on one worker's
/// event loop (`max_concurrency` of them), and awaits calls through the
/// host and its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_handler_runs_many_messages_at_once_on_one_worker() {
    const ASYNC: &str = "test.py_async";
    let host = TestHost::local(&[greet(), native_cell("tests/cells/py-async")]).await;
    assert_eq!(host.cell(ASYNC).runner.instances(), 1, "one worker");
    // Each waits until all eight are in flight: only concurrency answers.
    let gathered = (0..8).map(|_| act(&host, ASYNC, json!({"action": "gather", "n": 8})));
    for result in futures_util::future::join_all(gathered).await {
        assert_eq!(result.unwrap()["value"], 8);
    }
    let greeting = act(&host, ASYNC, json!({"action": "greet", "name": "Ada"})).await;
    assert_eq!(greeting.unwrap()["value"], "Hello, Ada!");
    let first = act(&host, ASYNC, json!({"action": "count"})).await.unwrap();
    let second = act(&host, ASYNC, json!({"action": "count"})).await.unwrap();
    assert_eq!(
        second["value"].as_i64(),
        first["value"].as_i64().map(|n| n + 1)
    );
}

/// An `async def` handler cannot be a component (no event loop): the
/// build fails and says what to do.
#[test]
fn building_an_async_handler_as_a_component_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("tests/cells/py-async/asynccell.py"),
        dir.path().join("asynccell.py"),
    )
    .unwrap();
    let toml =
        "id = \"test.async_wasm\"\nversion = \"0.1.0\"\nruntime = \"wasm\"\nlang = \"python\"\n\
                component = \"async_wasm.wasm\"\n[python]\nmodule = \"asynccell\"\n";
    std::fs::write(dir.path().join("cell.toml"), toml).unwrap();
    let out = std::process::Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("scripts/build-python-cell"))
        .arg(dir.path())
        .output()
        .expect("the project venv runs the build script");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("runs only in the native pool"), "{said}");
    assert!(!dir.path().join("async_wasm.wasm").exists());
}

/// `[scale]` sizes the worker pool by load: while every worker is busy
/// another starts, up to `max`; idle ones retire, down to `min`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_pool_scales_with_load_between_min_and_max() {
    let dir = CellToml::from_dir(&py_native())
        .workers(1)
        .scale(cbs_host::manifest::Scale {
            min: Some(1),
            max: Some(2),
            // Longer than a round of the load below (a worker started
            // mid-round gets messages from the next round on).
            idle_ms: 2_000,
        })
        .write();
    let host = TestHost::local(&[dir.path().to_path_buf()]).await;
    let cell = host.cell(NATIVE);
    assert_eq!(cell.runner.instances(), 1, "starts with min");
    load_until_instances(&host, NATIVE, json!({"action": "sleep", "ms": 200}), 4, 2).await;
    eventually(Duration::from_secs(10), "idle workers retired", || async {
        match cell.runner.instances() {
            1 => Ok(()),
            n => Err(format!("{n} workers")),
        }
    })
    .await;
    let reply = act(&host, NATIVE, json!({"action": "shout", "text": "hi"})).await;
    assert_eq!(reply.unwrap()["text"], "HI!");
}

#[tokio::test]
async fn a_native_cell_without_its_venv_fails_the_load_clearly() {
    let dir = CellToml::python("x.y", "m").write();
    let host = TestHost::idle(None).await;
    let err = format!("{:#}", host.body().load(dir.path()).await.err().unwrap());
    assert!(err.contains("no Python venv"), "{err}");
    assert!(err.contains("make python-cells"), "{err}");
}

#[tokio::test]
async fn a_native_cell_that_cannot_import_fails_the_load_with_pythons_reason() {
    let dir = CellToml::python("x.y", "no_such_module")
        .venv(py_native().join(".venv"))
        .write();
    let host = TestHost::idle(None).await;
    let err = format!("{:#}", host.body().load(dir.path()).await.err().unwrap());
    assert!(
        err.contains("python worker x.y failed its handshake"),
        "{err}"
    );
    assert!(err.contains("ModuleNotFoundError"), "{err}");
    assert!(err.contains("no_such_module"), "{err}");
}

/// `[limits] memory_mb` holds in both runtimes: a Python handler that
/// allocates past it gets `MemoryError` (the worker process's data is
/// capped; the component's linear memory is), the message fails with
/// `cell_failed`, and the cell serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_handler_cannot_allocate_past_its_memory_limit() {
    let native = CellToml::from_dir(&py_native())
        .limits(|l| l.memory_mb = Some(400))
        .write();
    let host = TestHost::local(&[greet(), native.path().to_path_buf(), py_wasm()]).await;
    // The component's limit is its cell.toml's: memory_mb = 128.
    for (cell, over) in [(NATIVE, 800), (WASM, 256)] {
        let small = act(&host, cell, json!({"action": "allocate", "mb": 8})).await;
        assert_eq!(small.unwrap()["value"], 8, "{cell}: 8 MiB fit");
        let err = act(&host, cell, json!({"action": "allocate", "mb": over}))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::CellFailed, "{cell}: {err}");
        let again = act(&host, cell, json!({"action": "allocate", "mb": 8})).await;
        assert_eq!(again.unwrap()["value"], 8, "{cell} serves on");
    }
}

/// componentize-py's output compiles with Winch (served at once) and with
/// Cranelift in the background, whose code the next host loads from the
/// cache.
#[tokio::test]
async fn the_python_component_serves_baseline_code_then_loads_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let cold = TestHost::idle(Some(cache.path().to_path_buf())).await;
    let cell = match cold.body().start(&py_wasm()).await {
        Ok(cell) => cell,
        Err(e) => panic!("the Python component does not load: {e:#}"),
    };
    assert_eq!(cell.cache, Some(CacheOutcome::Baseline));
    let reply = act(&cold, WASM, json!({"action": "where"})).await.unwrap();
    assert_eq!(reply["value"]["handled"], 1, "served by Winch's code");
    eventually(Duration::from_secs(300), "the optimized code", || async {
        match cell.runner.tier() {
            Some(Tier::Optimized) => Ok(()),
            other => Err(format!("tier {other:?}")),
        }
    })
    .await;
    let warm = TestHost::idle(Some(cache.path().to_path_buf())).await;
    let cell = warm.body().load(&py_wasm()).await.unwrap();
    assert_eq!(cell.cache, Some(CacheOutcome::Hit));
}

/// Pooled is the Python component's default: one message after another
/// finds the same warm instance (its handler object counts them).
#[tokio::test]
async fn the_python_component_reuses_its_warm_instance() {
    let host = TestHost::local(&[py_wasm()]).await;
    let mut handled = Vec::new();
    for _ in 0..3 {
        let reply = act(&host, WASM, json!({"action": "where"})).await.unwrap();
        handled.push(reply["value"]["handled"].as_u64().unwrap());
    }
    assert_eq!(handled, [1, 2, 3], "one instance handled all three");
}

/// End to end: `cbs-host` over NATS runs its own binary as the workers; an
/// exception's traceback is in the host log, never in the reply.
#[test]
fn tracebacks_go_to_the_host_log_not_the_reply() {
    let server = NatsServer::start();
    let host = HostProcess::serve(&server.url(), "py", &[py_native()], &[]);
    let out = cbs_tests::process::cbs(&[
        "call",
        NATIVE,
        r#"{"action":"raise","message":"secret detail"}"#,
        "--nats",
        &server.url(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let reply = format!("{stdout}{stderr}");
    assert!(reply.contains("cell_failed"), "{reply}");
    assert!(!reply.contains("Traceback"), "{reply}");
    host.wait_for_log("Traceback (most recent call last)", Duration::from_secs(10));
    assert!(host.log().contains("ValueError: secret detail"));
}

/// `make run-polyglot`, as the Makefile runs it: Rust (`io.polyglot`) →
/// Python component (`logic.describe`) → Python with numpy in the native
/// pool (`logic.stats`) → back in Rust → a sidecar process
/// (`text.headline`) → Rust, which prints the headline. (That it is one
/// trace is checked in `tracing.rs`.)
#[test]
fn the_polyglot_flow_of_make_run_polyglot_prints_the_numbers_described() {
    let dart = cbs_tests::dart_shout();
    let cells = [
        cbs_tests::cell("cells/io.polyglot"),
        cbs_tests::cell("cells/logic.describe"),
        native_cell("cells/logic.stats"),
        repo().join("cells/text.headline"),
    ]
    .into_iter()
    .chain(dart.clone())
    .map(|c| c.display().to_string())
    .collect::<Vec<_>>();
    let mut args = vec![
        "run",
        "--log-format",
        "json",
        "--log-level",
        "info",
        "--start",
        "io.polyglot",
        "--input",
        r#"{"numbers": [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]}"#,
    ];
    args.extend(cells.iter().map(String::as_str));
    let out = cbs_host(&args, "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    let headline =
        "11 numbers from 1 to 9: mean 4, median 4, standard deviation 2.256 (headline by a sidecar process)";
    // Through the Dart cell where it runs: shouted.
    let expected = match dart {
        Some(_) => format!("{}!\n", headline.to_uppercase()),
        None => format!("{headline}\n"),
    };
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{stderr}");

    // The flow's reply, from the log: numpy's figures.
    let reply: Value = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["message"] == "flow finished")
        .and_then(|event| serde_json::from_str(event["reply"].as_str()?).ok())
        .unwrap_or_else(|| panic!("no \"flow finished\" with a JSON reply in\n{stderr}"));
    let stats = &reply["stats"];
    assert_eq!(stats["count"], 11, "{reply}");
    for (field, expected) in [("mean", 4.0), ("median", 4.0), ("min", 1.0), ("max", 9.0)] {
        assert_eq!(stats[field].as_f64(), Some(expected), "{field}: {reply}");
    }
    let std = stats["std"].as_f64().unwrap();
    assert!(
        (std - (56.0_f64 / 11.0).sqrt()).abs() < 1e-9,
        "std: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cells_keep_state_in_both_runtimes() {
    let data = tempfile::tempdir().unwrap();
    let bus = Arc::new(cbs_host::bus::local::LocalBus::new());
    let host = TestHost::with_data(bus, Some(data.path()), &[py_native(), py_wasm()]).await;
    for cell in [NATIVE, WASM] {
        let set = json!({"action": "state_set", "key": "name", "value": cell});
        act(&host, cell, set)
            .await
            .unwrap_or_else(|e| panic!("{cell}: {e}"));
        let got = act(&host, cell, json!({"action": "state_get", "key": "name"})).await;
        assert_eq!(got.unwrap()["value"], cell, "{cell} reads its own value");
        for expected in [1, 2] {
            let n = act(&host, cell, json!({"action": "state_incr", "key": "n"})).await;
            assert_eq!(n.unwrap()["value"], expected, "{cell}");
        }
        // Over max_value_bytes (1024 in cell.toml): a typed error, raised
        // in the handler as InvalidInput and answered as such.
        let big = json!({"action": "state_set", "key": "big", "value": "x".repeat(1_025)});
        let err = act(&host, cell, big).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput, "{cell}: {err}");
        assert!(err.message.contains("max_value_bytes"), "{cell}: {err}");
    }
}
