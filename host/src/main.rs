//! `cbs-host`: the CBS host command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::body::{Body, LoadedCell, Sources};
use cbs_host::bundle::{Bundle, PublicKey, Trust};
use cbs_host::bus::local::LocalBus;
use cbs_host::bus::nats::NatsBus;
use cbs_host::bus::BodyBus;
use cbs_host::cli::{default_host_id, NatsArgs};
use cbs_host::deploy::{watcher::Watcher, Store};
use cbs_host::envelope::Envelope;
use cbs_host::runtime::wasm::{ComponentCache, EngineOptions, WasmRuntime};
use cbs_host::telemetry::{self, LogFormat};
use clap::{Args, Parser, Subcommand};
use serde_json::value::RawValue;

// The native Python pool's worker embeds CPython: compiled into this binary
// only, so the library and the tests do not link libpython.
#[cfg(feature = "python")]
#[path = "runtime/python/worker.rs"]
mod python_worker;

/// Runs CBS cells — WebAssembly components with JSON Schema contracts — and
/// bridges their envelopes to a bus (in process unless told otherwise).
#[derive(Parser)]
#[command(name = "cbs-host", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        default_value_t,
        global = true,
        env = "CBS_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing
    /// directives such as `cbs_host=debug`. RUST_LOG overrides it.
    #[arg(long, default_value = "info", global = true, env = "CBS_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve cells: each answers on `cbs.<cell-id>` until Ctrl-C, or, with
    /// --start, until the flow it starts has finished.
    ///
    /// Example: `echo Ada | cbs-host run --start io.prompt_name cells/*`
    Run(Box<RunArgs>),
    /// Load one cell, check it, and print what it exports and needs, without
    /// serving it.
    ///
    /// Example: `cbs-host load cells/logic.greet`
    Load(LoadArgs),
    /// One worker process of the native Python pool (started by the host).
    #[cfg(feature = "python")]
    #[command(name = "python-worker", hide = true)]
    PythonWorker(python_worker::WorkerArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Cells: folders (with a cell.toml), bundles (.cbs, from `cbs build`)
    /// or bare components (.wasm).
    #[arg(required_unless_present = "watch", value_name = "CELL")]
    cells: Vec<PathBuf>,
    /// Follow deployments: serve the cells `cbs deploy` put in the NATS
    /// cluster's desired state, and swap them as it changes (needs --nats
    /// and JetStream).
    #[arg(long, requires = "url")]
    watch: bool,
    /// Only run bundles signed by this key (a .pub file from `cbs keygen`,
    /// or its hex); repeatable. Folders and bare components are refused.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    /// Send one message to this cell once all cells are served, print the
    /// outcome, and exit (0 on success).
    #[arg(long, value_name = "CELL_ID")]
    start: Option<String>,
    /// Payload (JSON) of the --start message.
    #[arg(long, default_value = "{}", value_name = "JSON", requires = "start")]
    input: String,
    /// How long to wait for the --start flow, in milliseconds.
    #[arg(long, default_value_t = 60_000, value_name = "MS", requires = "start")]
    timeout_ms: u64,
    /// On SIGINT/SIGTERM, how long in-flight messages may take to finish.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    drain_timeout_ms: u64,
    /// This host's id: NATS connection name and service metadata
    /// [default: <hostname>-<pid>].
    #[arg(long, env = "CBS_HOST_ID")]
    host_id: Option<String>,
    /// Send every call between cells over the bus, even when the callee is
    /// served by this host (by default such calls stay in process).
    #[arg(long)]
    calls_via_bus: bool,
    /// Export trace spans over OTLP/HTTP (JSON) to this base URL, e.g.
    /// http://127.0.0.1:4318 [default: $OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long, value_name = "URL")]
    otlp: Option<String>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address
    /// (e.g. 127.0.0.1:9090; port 0 picks a free one, logged at start).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Fault injection for resilience testing: a TOML file of
    /// `["<cell-id>"]` tables with latency_ms, error_rate, drop_rate, seed.
    #[arg(long, value_name = "FILE")]
    chaos: Option<PathBuf>,
    /// Serve over NATS instead of the in-process bus.
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct LoadArgs {
    /// A cell folder (with a cell.toml), a bundle (.cbs) or a bare
    /// component (.wasm, loaded with default limits and its describe()).
    #[arg(value_name = "CELL")]
    cell: PathBuf,
    /// Refuse bundles not signed by this key (repeatable), as `run` does.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct EngineArgs {
    /// Folder of precompiled components [default: $CBS_CACHE_DIR, else
    /// ~/.cache/cbs/components].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every component at load; write no cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Cell instances alive at once across all cells (sizes the pool).
    #[arg(long, default_value_t = EngineOptions::default().max_instances)]
    max_instances: u32,
    /// Largest memory a cell may be granted, in MiB.
    #[arg(long, default_value_t = EngineOptions::default().max_memory_mb)]
    max_memory_mb: u32,
}

impl EngineArgs {
    /// Where verified bundles unpack: next to the component cache.
    fn sources(&self, trust: &[String]) -> anyhow::Result<Sources> {
        let keys = trust
            .iter()
            .map(|t| PublicKey::parse_arg(t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let unpack_dir = match (&self.cache_dir, self.no_cache) {
            (Some(dir), _) => dir.join("bundles"),
            (None, true) => {
                std::env::temp_dir().join(format!("cbs-bundles-{}", std::process::id()))
            }
            (None, false) => Bundle::default_unpack_dir(),
        };
        Ok(Sources {
            trust: Trust::new(keys),
            unpack_dir,
        })
    }

    fn runtime(&self) -> anyhow::Result<Arc<WasmRuntime>> {
        let options = EngineOptions {
            max_instances: self.max_instances,
            max_memory_mb: self.max_memory_mb,
        };
        let cache = if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(ComponentCache::default_dir)
        };
        Ok(Arc::new(WasmRuntime::new(&options, cache)?))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let otlp = match cli.command {
        Command::Run(ref args) => args.otlp.clone(),
        Command::Load(_) => None,
        // A worker logs nothing itself: its stderr is the host's log.
        #[cfg(feature = "python")]
        Command::PythonWorker(args) => return python_worker::run(args),
    };
    let telemetry = match telemetry::init_with_otlp(cli.log_format, &cli.log_level, otlp) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Load(args) => load(args).await,
            #[cfg(feature = "python")]
            Command::PythonWorker(_) => unreachable!("handled before the async runtime"),
        }
    });
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let host_id = args.host_id.clone().unwrap_or_else(default_host_id);
    let mut client = None;
    let bus: Arc<dyn BodyBus> = match args.nats.options(&host_id) {
        Some(options) => {
            let mut nats = NatsBus::connect(&options).await?;
            if args.watch {
                nats = nats.with_metadata("watch", "true");
                nats.register().await?;
            }
            client = Some(nats.client().clone());
            Arc::new(nats)
        }
        None => Arc::new(LocalBus::new()),
    };
    let mut body = Body::new(bus.clone(), args.engine.runtime()?);
    body.set_sources(args.engine.sources(&args.trust)?);
    body.set_local_calls(!args.calls_via_bus);
    if let Some(path) = &args.chaos {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --chaos {}", path.display()))?;
        let chaos: std::collections::HashMap<String, cbs_host::chaos::ChaosSpec> =
            toml::from_str(&text).with_context(|| format!("in --chaos {}", path.display()))?;
        for (cell, spec) in &chaos {
            spec.validate()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("chaos for {cell}"))?;
            tracing::warn!(cell, ?spec, "chaos: injecting faults");
        }
        body.set_chaos(chaos);
    }
    let body = Arc::new(body);
    if let Some(addr) = args.metrics {
        let bound = cbs_host::metrics::serve(addr, body.clone())
            .await
            .with_context(|| format!("cannot listen on --metrics {addr}"))?;
        tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz on http://{bound}");
    }
    for dir in &args.cells {
        body.start(dir).await?;
    }
    let grace = Duration::from_millis(args.drain_timeout_ms);
    let watcher = match (args.watch, client) {
        (true, Some(client)) => {
            let store = Store::open(&client).await?;
            let watcher = Arc::new(Watcher::new(body.clone(), store, host_id.clone(), grace));
            Some((watcher.clone(), tokio::spawn(watcher.run())))
        }
        _ => None,
    };
    body.set_ready();
    let Some(start) = args.start else {
        tracing::info!(host = %host_id, cells = args.cells.len(), bus = bus.kind(), "ready; Ctrl-C or SIGTERM drains and stops");
        let signal = shutdown_signal().await?;
        tracing::info!(
            signal,
            "draining: no new messages, finishing in-flight ones"
        );
        if let Some((watcher, task)) = watcher {
            task.abort();
            watcher.clear().await;
        }
        if body.shutdown(grace).await {
            tracing::info!("drained; bye");
            return Ok(ExitCode::SUCCESS);
        }
        tracing::warn!(
            grace_ms = args.drain_timeout_ms,
            "in-flight messages did not finish in time"
        );
        return Ok(ExitCode::FAILURE);
    };
    let input = RawValue::from_string(args.input).context("--input is not JSON")?;
    let reply = body
        .start_flow(&start, input, Duration::from_millis(args.timeout_ms))
        .await;
    match reply.and_then(Envelope::into_result) {
        Ok(payload) => {
            tracing::info!(cell = %start, reply = %payload.get(), "flow finished");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {} failed with {}: {}", start, e.code, e.message);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Waits for SIGINT or SIGTERM; returns its name.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").context("cannot listen for SIGINT"),
        _ = term.recv() => Ok("SIGTERM"),
    }
}

async fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let mut body = Body::new(Arc::new(LocalBus::new()), args.engine.runtime()?);
    body.set_sources(args.engine.sources(&args.trust)?);
    let cell = body.load_path(&args.cell).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&describe_json(&cell))?);
    } else {
        print!("{}", describe_text(&cell));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_json(cell: &LoadedCell) -> serde_json::Value {
    let m = &cell.manifest;
    serde_json::json!({
        "id": m.id,
        "version": m.version,
        "runtime": m.runtime,
        "subject": m.subject(),
        "component": m.component.as_ref().map(|c| cell.spec.resolve(c)),
        "cache": cell.cache,
        "describe": cell.info(),
        "input": m.input,
        "output": m.output,
        "capabilities": m.capabilities,
        "limits": m.limits,
        "instances": m.instances,
    })
}

fn describe_text(cell: &LoadedCell) -> String {
    let m = &cell.manifest;
    let info = cell.info();
    let schema = |s: &Option<cbs_host::manifest::SchemaRef>| {
        s.as_ref().map_or_else(
            || "none (payloads are not checked)".to_owned(),
            |s| format!("{}  ({})", s.id, s.schema.display()),
        )
    };
    let list = |l: &[String]| {
        if l.is_empty() {
            "none".to_owned()
        } else {
            l.join(", ")
        }
    };
    let cache = cell.cache.map_or("-".into(), lower);
    let subject = m.subject();
    let component = m
        .component
        .as_ref()
        .map_or("-".into(), |c| cell.spec.resolve(c).display().to_string());
    let python = m.python.as_ref().map_or(String::new(), |py| {
        let pool = match m.runtime {
            cbs_host::manifest::RuntimeKind::Python => format!(
                "; {} workers × {} at once; venv {}",
                py.workers,
                py.max_concurrency,
                py.venv.display()
            ),
            _ => String::new(),
        };
        format!(
            "python        {}.{} in {}{pool}\n",
            py.module,
            py.handler,
            py.path.display()
        )
    });
    format!(
        "cell          {} {} (runtime {})\n\
         component     {component} [{cache}]\n\
         {python}\
         describe()    {} {}\n\
         input         {}\n\
         output        {}\n\
         serves        {subject} (queue group {subject})\n\
         instances     {}, retired after {} messages or any trap\n\
         limits        memory {} MiB, timeout {} ms, concurrency {}, queue {}\n\
         capabilities  stdio: {}; calls: {}; publish: {}\n",
        m.id,
        m.version,
        lower(m.runtime),
        info.id,
        info.version,
        schema(&m.input),
        schema(&m.output),
        lower(m.instances.policy),
        m.instances.max_messages,
        m.limits.memory_mb,
        m.limits.timeout_ms,
        m.limits.concurrency,
        m.limits.queue,
        if m.capabilities.stdio { "yes" } else { "no" },
        list(&m.capabilities.calls),
        list(&m.capabilities.publish),
    )
}

/// An enum's serde name (`wasm`, `pooled`, `hit`).
fn lower(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
