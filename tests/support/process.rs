//! `cbs-host` processes for end-to-end tests: spawned as a user would,
//! their log captured, ready when they say so, killed or stopped on demand.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{bin, shared_cache, POLL};

pub struct HostProcess {
    child: Child,
    log: Arc<Mutex<String>>,
    /// Its own data folder (`CBS_DATA_DIR`), unless the test gave one:
    /// hosts of different tests must not share what they recorded.
    _data: Option<tempfile::TempDir>,
}

impl HostProcess {
    /// `cbs-host run --nats URL --host-id ID <extra> <cells>`, ready when it
    /// logs "ready".
    pub fn serve(url: &str, host_id: &str, cells: &[PathBuf], extra: &[&str]) -> Self {
        let host = Self::spawn(url, host_id, cells, extra);
        host.wait_for_log("ready;", Duration::from_secs(30));
        host
    }

    /// As [`HostProcess::serve`], without waiting for it to be ready.
    pub fn spawn(url: &str, host_id: &str, cells: &[PathBuf], extra: &[&str]) -> Self {
        let nats = ["--nats", url, "--host-id", host_id];
        Self::start(&[&nats[..], extra].concat(), cells, &[])
    }

    /// As [`HostProcess::serve`], with environment variables set (`Some`)
    /// or removed (`None`).
    pub fn serve_with_env(
        url: &str,
        host_id: &str,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Self {
        let nats = ["--nats", url, "--host-id", host_id];
        let host = Self::start(&[&nats[..], extra].concat(), &[], env);
        host.wait_for_log("ready;", Duration::from_secs(30));
        host
    }

    /// `cbs-host run` on the in-process bus, serving `cells`, ready.
    pub fn local(cells: &[PathBuf], extra: &[&str]) -> Self {
        let host = Self::start(extra, cells, &[]);
        host.wait_for_log("ready;", Duration::from_secs(30));
        host
    }

    /// The address `--http` listens on, from the log.
    pub fn http_addr(&self) -> String {
        self.logged_addr("serving HTTP on http://")
    }

    /// The address `--console` listens on, from the log.
    pub fn console_addr(&self) -> String {
        self.logged_addr("serving the console on http://")
    }

    /// The address logged right after `marker`.
    fn logged_addr(&self, marker: &str) -> String {
        self.wait_for_log(marker, Duration::from_secs(30));
        let log = self.log();
        let after = log.split(marker).nth(1).expect("the address");
        after.split_whitespace().next().unwrap().to_owned()
    }

    fn start(args: &[&str], cells: &[PathBuf], env: &[(&str, Option<&str>)]) -> Self {
        let mut command = Command::new(bin("cbs-host"));
        command
            .args(["run", "--log-level", "info"])
            .args(args)
            .args(cells)
            .env("CBS_CACHE_DIR", shared_cache())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        let data = (!env.iter().any(|(name, _)| *name == "CBS_DATA_DIR"))
            .then(|| tempfile::tempdir().expect("a data folder"));
        if let Some(dir) = &data {
            command.env("CBS_DATA_DIR", dir.path());
        }
        set_env(&mut command, env);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cbs-host runs");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            child,
            log,
            _data: data,
        }
    }

    /// The address of `--metrics 127.0.0.1:0`, from the host's log.
    pub fn metrics_addr(&self) -> String {
        self.wait_for_log("serving /metrics", Duration::from_secs(30));
        let log = self.log();
        let after = log.split("http://").nth(1).expect("the metrics address");
        after
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `text` (or the process exits).
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        self.wait_for_count(text, 1, timeout);
    }

    /// Waits until `text` appears `n` times in the log.
    pub fn wait_for_count(&self, text: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log().matches(text).count() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n}× {text:?} in the host log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the host dies at once, mid-message.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the host should drain and exit.
    pub fn terminate(&self) {
        sigterm(&self.child);
    }

    /// Waits for the process to exit (up to `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let log = self.log.clone();
        wait_child(&mut self.child, timeout, move || {
            log.lock().unwrap().clone()
        })
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The samples of cell `cell` (labelled only `cell`) in one scrape of the
/// `/metrics` a host serves at `addr` (`--metrics`): value by metric name.
pub fn cell_metrics(addr: &str, cell: &str) -> std::collections::HashMap<String, f64> {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    scrape
        .samples
        .into_iter()
        .filter(|s| s.labels.len() == 1 && s.labels.get("cell") == Some(cell))
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some((s.metric, v)),
            _ => None,
        })
        .collect()
}

/// One sample of [`cell_metrics`], which the host must have.
pub fn cell_metric(addr: &str, name: &str, cell: &str) -> f64 {
    let samples = cell_metrics(addr, cell);
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no {name} for {cell} in {samples:?}"))
}

/// `cbs-host run --nats URL --start logic.greet` with more flags (auth):
/// connects, runs one flow through NATS and exits.
pub fn greet_flow_via(url: &str, flags: &[&str]) -> Output {
    let greet = crate::greet().display().to_string();
    let start = [
        "run",
        "--nats",
        url,
        "--start",
        "logic.greet",
        "--input",
        r#"{"name":"Ada"}"#,
    ];
    cbs_host(&[&start[..], flags, &[greet.as_str()]].concat(), "")
}

/// Runs `cbs-host` to completion with `stdin` as its standard input, as a
/// user's shell would (shared component cache, no RUST_LOG).
pub fn cbs_host<S: AsRef<std::ffi::OsStr>>(args: &[S], stdin: &str) -> Output {
    cbs_host_with_env(args, stdin, &[])
}

/// As [`cbs_host`], with environment variables set (`Some`) or removed
/// (`None`).
pub fn cbs_host_with_env<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    stdin: &str,
    env: &[(&str, Option<&str>)],
) -> Output {
    use std::io::Write;
    let mut command = Command::new(bin("cbs-host"));
    command
        .args(args)
        .env("CBS_CACHE_DIR", shared_cache())
        .env_remove("RUST_LOG");
    set_env(&mut command, env);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cbs-host runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Sets (`Some`) or removes (`None`) environment variables of `command`.
pub fn set_env(command: &mut Command, env: &[(&str, Option<&str>)]) {
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
}

/// Runs the `cbs` CLI to completion.
pub fn cbs(args: &[&str]) -> Output {
    Command::new(bin("cbs"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("cbs runs")
}

/// Runs the `cbs` CLI: whether it succeeded, and its stdout then stderr.
pub fn cbs_said(args: &[&str]) -> (bool, String) {
    let out = cbs(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Spawns a server that logs `marker` followed by its address; returns
/// it and the address (killed with the test if the address never shows).
fn spawn_serving(mut command: Command, marker: &'static str) -> (Child, String) {
    let mut child = command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server runs");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split(marker).nth(1) {
                let addr = addr.split_whitespace().next().unwrap_or_default();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.to_owned());
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            panic!("the server did not log its address ({marker}) in 30 s");
        }
    }
}

/// `cbs console` on a free port, for the lattice at `url`; killed when
/// dropped.
pub struct Console {
    child: Child,
    base: String,
}

impl Console {
    pub fn start(url: &str) -> Self {
        Self::with(url, &[])
    }

    /// `cbs console` with `extra` flags.
    pub fn with(url: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(bin("cbs"));
        command.args(["--log-level", "info", "console", "--listen", "127.0.0.1:0"]);
        command.args(["--nats", url]).args(extra);
        let (child, addr) = spawn_serving(command, "serving the console on http://");
        Self {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// `http://ADDR`.
    pub fn base(&self) -> &str {
        &self.base
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cbs gateway` on a free port, following the lattice at `url` (every
/// 200 ms unless told otherwise); killed when dropped.
pub struct Gateway {
    child: Child,
    base: String,
}

impl Gateway {
    pub fn start(url: &str) -> Self {
        Self::refreshing(url, 200)
    }

    /// A gateway that asks the hosts for their routes every `refresh_ms`.
    pub fn refreshing(url: &str, refresh_ms: u64) -> Self {
        let refresh = refresh_ms.to_string();
        let mut command = Command::new(bin("cbs"));
        command
            .args(["--log-level", "info", "gateway", "--http", "127.0.0.1:0"])
            .args(["--refresh-ms", &refresh, "--nats", url]);
        let (child, addr) = spawn_serving(command, "serving HTTP on http://");
        Self {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// `http://ADDR`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// SIGTERM: the gateway drains, then exits.
    pub fn terminate(&self) {
        sigterm(&self.child);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_child(&mut self.child, timeout, String::new)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `child`.
fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for `child` to exit (up to `timeout`); `said` is shown if not.
fn wait_child(child: &mut Child, timeout: Duration, said: impl Fn() -> String) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {timeout:?}:\n{}",
            said()
        );
        std::thread::sleep(POLL);
    }
}
