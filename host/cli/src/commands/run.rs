//! `cbs-host run`: serve cells until a signal, or run one flow and exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::bundle::PublicKey;
use cbs_host::bus::local::LocalBus;
use cbs_host::bus::nats::NatsBus;
use cbs_host::bus::BodyBus;
use cbs_host::chaos::ChaosSpec;
use cbs_host::discovery;
use cbs_host::envelope::Envelope;
use cbs_host::host::{self, Host, HostBuilder, Lattice};
use clap::Args;
use serde_json::value::RawValue;

use crate::args::{parse_label, CellNatsArgs, EngineArgs, HttpArgs, NatsArgs};
use crate::signals::shutdown_signal;

/// Serve cells: each answers on `cbs.<cell-id>` until Ctrl-C, or, with
/// --start, until the flow it starts has finished.
///
/// Example: `echo Ada | cbs-host run --start io.prompt_name cells/*`
#[derive(Args)]
pub struct RunArgs {
    /// Cells: folders (with a cell.toml), bundles (.cbs, from `cbs build`)
    /// or bare components (.wasm).
    #[arg(required_unless_present_any = ["watch", "domain"], value_name = "CELL")]
    cells: Vec<PathBuf>,
    /// Serve a domain's cells from its spec (domain.yaml: bundles or
    /// folders) and keep calls within its boundary: cells outside it reach
    /// only its exports; repeatable.
    #[arg(long, value_name = "SPEC")]
    domain: Vec<PathBuf>,
    /// Follow deployments: serve the cells `cbs deploy` put in the NATS
    /// cluster's desired state, and swap them as it changes (needs --nats
    /// and JetStream).
    #[arg(long, requires = "url")]
    watch: bool,
    /// Run the domains' sagas (`cbs saga start`): take starts from the
    /// stream CBS_SAGAS and drive them, journaled (with --watch).
    #[arg(long, requires = "watch")]
    sagas: bool,
    /// A label of this host, for placing replicas (`cbs deploy --label`,
    /// `--spread`), e.g. region=eu; repeatable. With --watch. Every host
    /// also has `platform=<os>-<arch>` (e.g. linux-x86_64), which replicas
    /// of bundles with native code are placed by.
    #[arg(long, value_name = "K=V", value_parser = parse_label, requires = "watch")]
    label: Vec<(String, String)>,
    /// Memory this host offers to placed replicas, in MiB: the placer
    /// never puts more than that (by each release's memory_mb) here
    /// [default: unbounded]. With --watch.
    #[arg(long, value_name = "MIB", requires = "watch")]
    capacity_memory_mb: Option<u64>,
    /// Only run bundles signed by this key (a .pub file from `cbs keygen`,
    /// or its hex); repeatable. Folders and bare components are refused.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    /// Enforce the lattice policy (`cbs policy set`) only when signed by
    /// this key (a .pub file or its hex); repeatable [default: the --trust
    /// keys]. A host that trusts no key enforces no policy, and `cbs
    /// compliance` reports it. With --watch.
    #[arg(long, value_name = "PUBKEY", requires = "watch")]
    policy_key: Vec<String>,
    /// Let bundles start native processes (runtime = "sidecar" or "python"):
    /// such a cell runs any command it names on this host. Off by default;
    /// with --trust, only bundles signed by a trusted key.
    #[arg(long)]
    allow_process_bundles: bool,
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
    /// Do not route requests around this host: by default, on NATS, a
    /// request this host cannot admit, or receives while far slower than
    /// the other hosts serving the cell, goes to one of them instead.
    #[arg(long)]
    no_reroute: bool,
    /// Export trace spans over OTLP/HTTP (JSON) to this base URL, e.g.
    /// http://127.0.0.1:4318 [default: $OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address
    /// (e.g. 127.0.0.1:9090; port 0 picks a free one, logged at start).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Serve the HTTP routes (`[[http]]`) of the cells this host runs on
    /// this address, e.g. 127.0.0.1:8080 (port 0 picks one, logged);
    /// OpenAPI at /openapi.json.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    http_options: HttpArgs,
    /// Serve the console of this host on this address, e.g.
    /// 127.0.0.1:8090 (port 0 picks one, logged): its cells live in a
    /// browser, read-only. For a whole lattice use `cbs console`.
    #[arg(long, value_name = "ADDR")]
    console: Option<std::net::SocketAddr>,
    /// How far back the console's advice looks, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS", requires = "console")]
    console_advice_window_secs: u64,
    /// Fault injection for resilience testing: a TOML file of
    /// `["<cell-id>"]` tables with latency_ms, error_rate, drop_rate, seed.
    #[arg(long, value_name = "FILE")]
    chaos: Option<PathBuf>,
    /// Where cells granted `[capabilities.state]` keep it on the in-process
    /// bus (on NATS it is in JetStream), and where a --watch host records
    /// the release it last installed of each cell (served.json: with
    /// --trust, going back from it needs a signed rollback, also after an
    /// undeploy or a restart) [default: $CBS_DATA_DIR, else
    /// $XDG_DATA_HOME/cbs, else ~/.local/share/cbs].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve over NATS instead of the in-process bus.
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    cell_nats: CellNatsArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

impl RunArgs {
    /// `--host-id`, else `<hostname>-<pid>`.
    pub fn host_id(&self) -> String {
        self.host_id.clone().unwrap_or_else(host::default_id)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let host_id = args.host_id();
    let (bus, client) = connect(&args, &host_id).await?;
    let grace = Duration::from_millis(args.drain_timeout_ms);
    let mut builder = builder(&args, bus, &host_id)?;
    if let Some(cells) = connect_cells(&args, &host_id).await? {
        builder = builder.cell_bus(cells);
    }
    if let (true, Some(client)) = (args.watch, client) {
        builder = builder.lattice(Lattice {
            client,
            labels: host::labels(args.label.iter().cloned()),
            capacity_memory_mb: args.capacity_memory_mb,
            grace,
            writer: args.nats.options(""),
            sagas: args.sagas,
            policy_keys: crate::args::trust_of(&args.policy_key)?,
        });
    }
    if let Some(addr) = args.http {
        let config = args
            .http_options
            .config(&format!("CBS host {host_id}"))
            .await?;
        builder = builder.http(addr, config);
    }
    let host = builder.start().await?;
    let Some(start) = &args.start else {
        return serve_until_signal(host, args.cells.len(), grace).await;
    };
    flow(host.body(), start, &args).await
}

/// The builder `cbs-host run`'s flags describe.
fn builder(args: &RunArgs, bus: Arc<dyn BodyBus>, host_id: &str) -> anyhow::Result<HostBuilder> {
    let on_nats = bus.kind() == "nats";
    let mut builder = Host::builder()
        .id(host_id)
        .bus(bus)
        .runtime(args.engine.runtime()?)
        .sources(
            args.engine
                .sources(&args.trust, args.allow_process_bundles)?,
        )
        .routing(on_nats && !args.no_reroute)
        .local_calls(!args.calls_via_bus)
        .cells(&args.cells);
    for path in &args.domain {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let spec = cbs_host::domain::spec::Spec::parse(&text)
            .with_context(|| format!("in {}", path.display()))?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        builder = builder.domain(&spec, base)?;
    }
    if let Some(dir) = &args.data_dir {
        builder = builder.data_dir(dir);
    }
    if let Some(path) = &args.chaos {
        builder = builder.chaos(read_chaos(path)?);
    }
    if let Some(addr) = args.metrics {
        builder = builder.metrics(addr);
    }
    if let Some(addr) = args.console {
        let options = cbs_host::console::Options {
            advice_window: Duration::from_secs(args.console_advice_window_secs.max(1)),
            actions: None,
        };
        builder = builder.console(addr, options);
    }
    Ok(builder)
}

/// Serves until SIGINT or SIGTERM, then drains; a second signal exits at
/// once.
async fn serve_until_signal(host: Host, cells: usize, grace: Duration) -> anyhow::Result<ExitCode> {
    let bus = host.body().bus().kind();
    tracing::info!(host = %host.id(), cells, bus, "ready; Ctrl-C or SIGTERM drains and stops");
    let signal = shutdown_signal().await?;
    tracing::info!(
        signal,
        "draining: no new messages, finishing in-flight ones (a second signal exits at once)"
    );
    // Every step is bounded: with the bus gone, withdrawing reports and
    // flushing replies would otherwise wait for it forever.
    tokio::select! {
        drained = tokio::time::timeout(grace, host.shutdown(grace)) => Ok(drain_outcome(drained.unwrap_or(false), grace)),
        second = shutdown_signal() => {
            tracing::warn!(signal = second?, "second signal: exiting without draining");
            Ok(ExitCode::from(130))
        }
    }
}

/// Exit 0 when every in-flight message finished within the drain timeout.
fn drain_outcome(drained: bool, grace: Duration) -> ExitCode {
    if drained {
        tracing::info!("drained; bye");
        return ExitCode::SUCCESS;
    }
    tracing::warn!(
        grace_ms = grace.as_millis() as u64,
        "the drain did not finish in time (messages still in flight, or the bus unreachable)"
    );
    ExitCode::FAILURE
}

/// The bus: NATS when a URL is given (announcing `watch` when following
/// deployments), else in process. Also the NATS client, for the watcher.
async fn connect(
    args: &RunArgs,
    host_id: &str,
) -> anyhow::Result<(Arc<dyn BodyBus>, Option<async_nats::Client>)> {
    let Some(options) = args.nats.options(host_id) else {
        return Ok((Arc::new(LocalBus::new()), None));
    };
    let mut nats = NatsBus::connect(&options).await?;
    if args.watch && args.trust.is_empty() {
        tracing::warn!(
            "--watch without --trust: this host runs every bundle that anyone allowed to \
             write the cbs-desired bucket deploys, unsigned; give it --trust KEY.pub"
        );
    }
    if args.watch {
        // Deploys read the labels to know which hosts serve a release
        // that asks for some (native code: its platform).
        let labels = serde_json::to_string(&host::labels(args.label.iter().cloned()))?;
        let policy = discovery::Policy {
            trusted_keys: args
                .trust
                .iter()
                .map(|arg| PublicKey::parse_arg(arg).map(|k| k.to_hex()))
                .collect::<anyhow::Result<_>>()?,
            process_bundles: args.allow_process_bundles,
        };
        nats = nats
            .with_metadata("watch", "true")
            .with_metadata(discovery::LABELS, &labels)
            .with_metadata(discovery::POLICY, &serde_json::to_string(&policy)?);
        nats.register().await?;
    }
    let client = nats.client().clone();
    Ok((Arc::new(nats), Some(client)))
}

/// The connection for cell traffic (`--cell-nats-*`), if one is given.
async fn connect_cells(args: &RunArgs, host_id: &str) -> anyhow::Result<Option<Arc<dyn BodyBus>>> {
    if !args.cell_nats.is_set() {
        return Ok(None);
    }
    let Some(options) = args
        .nats
        .options(host_id)
        .and_then(|host| args.cell_nats.options(&host))
    else {
        anyhow::bail!(
            "--cell-nats-* names a NATS user for cell traffic, but no --nats server is given: \
             add --nats URL, or drop --cell-nats-* to run on the in-process bus"
        );
    };
    let bus = NatsBus::connect(&options)
        .await
        .context("cannot connect the cell traffic's NATS identity (--cell-nats-*)")?;
    tracing::info!(identity = %options.identity(), "cells call and publish as their own NATS user");
    Ok(Some(Arc::new(bus)))
}

/// `--chaos FILE`: `["<cell-id>"]` tables of fault settings.
fn read_chaos(path: &Path) -> anyhow::Result<HashMap<String, ChaosSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --chaos {}", path.display()))?;
    let chaos: HashMap<String, ChaosSpec> =
        toml::from_str(&text).with_context(|| format!("in --chaos {}", path.display()))?;
    for (cell, spec) in &chaos {
        spec.validate()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("chaos for {cell}"))?;
        tracing::warn!(cell, ?spec, "chaos: injecting faults");
    }
    Ok(chaos)
}

/// `--start`: one message to `start`, the outcome, the exit code.
async fn flow(
    body: &cbs_host::body::Body,
    start: &str,
    args: &RunArgs,
) -> anyhow::Result<ExitCode> {
    let input = RawValue::from_string(args.input.clone()).context("--input is not JSON")?;
    let reply = body
        .start_flow(start, input, Duration::from_millis(args.timeout_ms))
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
