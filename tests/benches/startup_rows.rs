//! Start-up rows. Ten distinct components (`make bench-cells`) to ready:
//! cold with the default tiered compiler and with `--compiler optimized`
//! (each run in a fresh cache folder), and warm; `STARTUP_RUNS` runs each.
//! And density (#33 item 5): one host with 1,000 distinct cells — the ten
//! variants, each copied 100 times with a custom section of its own, so
//! every copy has its own digest and its own compiled code — to ready with
//! a warm cache, its idle RSS, and a burst of 10,000 concurrent requests
//! over NATS spread over all of them: each must be answered or refused
//! with `capacity`, the host must live on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cbs_host::error::ErrorCode;
use cbs_tests::nats::NatsServer;
use cbs_tests::{bin, greet};
use serde::Serialize;
use serde_json::json;

use super::{median, range};

/// Runs of each start-up row.
pub const STARTUP_RUNS: usize = 5;
/// Cells of the density rows.
pub const DENSITY_CELLS: usize = 1_000;
/// Requests of the density burst, all in flight at once.
pub const BURST: usize = 10_000;

/// A start-up figure over several runs, in milliseconds.
#[derive(Serialize, Clone)]
pub struct Runs {
    pub median: f64,
    pub range: [f64; 2],
    pub runs: Vec<f64>,
}

impl Runs {
    fn of(runs: Vec<f64>) -> Self {
        Self {
            median: median(&runs),
            range: range(&runs),
            runs,
        }
    }

    pub fn show(&self, unit: &str) -> String {
        format!(
            "{:.0} {unit} (median of {}; {:.0}–{:.0})",
            self.median,
            self.runs.len(),
            self.range[0],
            self.range[1]
        )
    }
}

#[derive(Serialize)]
pub struct Startup {
    pub cold_tiered_ms: Runs,
    pub cold_optimized_ms: Runs,
    pub warm_ms: Runs,
    pub rss_1_cell_kib: u64,
    pub rss_10_cells_kib: u64,
}

/// A started `cbs-host run` (its log drained) and its time to ready.
pub struct Started {
    pub child: Child,
    pub ready: Duration,
}

impl Started {
    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    pub fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Starts `cbs-host run` on `cells` with `extra` flags and waits for ready
/// (up to `limit`); its log is drained afterwards.
pub fn start(cells: &[PathBuf], cache: &Path, extra: &[&str], limit: Duration) -> Started {
    let started = Instant::now();
    let mut child = Command::new(bin("cbs-host"))
        .args(["run", "--log-level", "info"])
        .args(extra)
        .args(cells)
        .env("CBS_CACHE_DIR", cache)
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = loop {
        let line = lines.next().expect("host exited before ready").unwrap();
        if line.contains("ready;") {
            break started.elapsed();
        }
        assert!(started.elapsed() < limit, "host not ready within {limit:?}");
    };
    std::thread::spawn(move || lines.for_each(drop));
    Started { child, ready }
}

/// Starts a host on `cells` in `cache` and stops it: (ready, RSS KiB).
pub fn start_host(cells: &[PathBuf], cache: &Path, compiler: &str) -> (Duration, u64) {
    let host = start(
        cells,
        cache,
        &["--compiler", compiler],
        Duration::from_secs(120),
    );
    let out = (host.ready, host.rss_kib());
    host.stop();
    out
}

/// Ten distinct components to ready, cold (both compilers) and warm.
pub fn ten_components(ten: &[PathBuf], root: &Path) -> Startup {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (mut tiered, mut optimized, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    let filled = root.join("startup-warm");
    for run in 0..STARTUP_RUNS {
        eprintln!(" start-up run {} of {STARTUP_RUNS}", run + 1);
        let fresh = root.join(format!("startup-tiered-{run}"));
        tiered.push(ms(start_host(ten, &fresh, "tiered").0));
        let fresh = root.join(format!("startup-optimized-{run}"));
        optimized.push(ms(start_host(ten, &fresh, "optimized").0));
        if run == 0 {
            // Filled by Cranelift at load: what the tiered host's
            // background thread leaves in the cache.
            start_host(ten, &filled, "optimized");
        }
        warm.push(ms(start_host(ten, &filled, "tiered").0));
    }
    let (_, rss10) = start_host(ten, &filled, "tiered");
    let (_, rss1) = start_host(&ten[..1], &filled, "tiered");
    Startup {
        cold_tiered_ms: Runs::of(tiered),
        cold_optimized_ms: Runs::of(optimized),
        warm_ms: Runs::of(warm),
        rss_1_cell_kib: rss1,
        rss_10_cells_kib: rss10,
    }
}

#[derive(Serialize)]
pub struct Density {
    pub cells: usize,
    pub distinct_components: usize,
    /// Filling the cache: every component compiled by Cranelift at load.
    pub cold_optimized_ms: f64,
    pub warm_ms: Runs,
    pub idle_rss_mib: Runs,
    pub burst: Burst,
}

#[derive(Serialize, Default)]
pub struct Burst {
    pub requests: usize,
    pub answered: usize,
    pub capacity: usize,
    /// Replies other than an answer or `capacity`: each a failure.
    pub other: usize,
    pub other_examples: Vec<String>,
    /// A `capacity` refusal with the engine's own words: a failure.
    pub engine_errors: usize,
    pub ms: f64,
    pub host_alive_after: bool,
}

/// `variant` with a custom section naming `copy`: another component to
/// the cache (its digest), the same code.
fn distinct_copy(variant: &[u8], copy: usize) -> Vec<u8> {
    let name = b"cbs-density";
    let data = format!("{copy}");
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(data.as_bytes());
    let mut out = variant.to_vec();
    out.push(0); // custom section
    out.push(u8::try_from(section.len()).expect("a short section"));
    out.extend_from_slice(&section);
    out
}

/// The 1,000 cell folders (`density.c0000` …).
fn density_cells(root: &Path) -> (Vec<PathBuf>, usize) {
    let variants: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            let path = super::variant_wasm(i);
            std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}: run `make bench-cells`", path.display()))
        })
        .collect();
    let greet = greet();
    let mut digests = std::collections::HashSet::new();
    let cells = (0..DENSITY_CELLS)
        .map(|i| {
            let dir = root.join(format!("density/c{i:04}"));
            std::fs::create_dir_all(&dir).unwrap();
            let wasm = distinct_copy(&variants[i % 10], i);
            digests.insert(cbs_host::bundle::sha256_hex(&wasm));
            std::fs::write(dir.join("cell.wasm"), wasm).unwrap();
            let manifest = format!(
                "id = \"density.c{i:04}\"\nversion = \"0.1.0\"\ncomponent = \"cell.wasm\"\n\
                 [input]\nid = \"logic.greet/request@1\"\nschema = \"{g}/schemas/input.json\"\n\
                 [output]\nid = \"logic.greet/reply@1\"\nschema = \"{g}/schemas/output.json\"\n",
                g = greet.display()
            );
            std::fs::write(dir.join("cell.toml"), manifest).unwrap();
            dir
        })
        .collect();
    (cells, digests.len())
}

/// One host with 1,000 distinct cells.
pub async fn density(root: &Path) -> Density {
    let (cells, distinct) = density_cells(root);
    assert_eq!(
        distinct, DENSITY_CELLS,
        "every density cell is its own component"
    );
    let cache = root.join("density-cache");
    eprintln!(" filling the cache: {DENSITY_CELLS} components compiled by Cranelift (minutes)");
    let fill = start(
        &cells,
        &cache,
        &["--compiler", "optimized"],
        Duration::from_secs(1800),
    );
    let cold_optimized_ms = fill.ready.as_secs_f64() * 1e3;
    fill.stop();
    let (mut warm, mut rss) = (Vec::new(), Vec::new());
    for run in 0..3 {
        eprintln!(" density warm start {} of 3", run + 1);
        let host = start(&cells, &cache, &[], Duration::from_secs(120));
        warm.push(host.ready.as_secs_f64() * 1e3);
        rss.push(host.rss_kib() as f64 / 1024.0);
        host.stop();
    }
    eprintln!(" density burst: {BURST} requests at once over NATS");
    let burst = burst(&cells, &cache).await;
    Density {
        cells: cells.len(),
        distinct_components: distinct,
        cold_optimized_ms,
        warm_ms: Runs::of(warm),
        idle_rss_mib: Runs::of(rss),
        burst,
    }
}

/// 10,000 requests at once to a host of 1,000 cells on a nats-server.
async fn burst(cells: &[PathBuf], cache: &Path) -> Burst {
    let server = NatsServer::start();
    let url = server.url();
    let mut host = start(cells, cache, &["--nats", &url], Duration::from_secs(120));
    let bus = std::sync::Arc::new(server.bus().await);
    let started = Instant::now();
    let requests = (0..BURST).map(|i| {
        let bus = bus.clone();
        async move {
            let cell = format!("density.c{:04}", i % DENSITY_CELLS);
            let envelope = cbs_tests::envelope_to(&cell, &json!({"name": "Ada"}));
            cbs_host::call::request(bus.as_ref(), &envelope, Duration::from_secs(120))
                .await
                .and_then(|reply| reply.into_result().map(|_| ()))
        }
    });
    let outcomes = futures_util::future::join_all(requests).await;
    let mut tally = Burst {
        requests: BURST,
        ms: started.elapsed().as_secs_f64() * 1e3,
        ..Burst::default()
    };
    for outcome in outcomes {
        match outcome {
            Ok(()) => tally.answered += 1,
            Err(e) if e.code == ErrorCode::Capacity => {
                tally.capacity += 1;
                if e.message.contains("maximum concurrent") {
                    tally.engine_errors += 1;
                }
            }
            Err(e) => {
                tally.other += 1;
                if tally.other_examples.len() < 5 {
                    tally.other_examples.push(e.to_string());
                }
            }
        }
    }
    tally.host_alive_after = host.child.try_wait().unwrap().is_none();
    host.stop();
    tally
}
