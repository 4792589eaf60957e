//! `cbs-host run`: serve cells until a signal, or run one flow and exit.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::audit::Action;
use cbs_host::body::Body;
use cbs_host::bus::local::LocalBus;
use cbs_host::bus::nats::NatsBus;
use cbs_host::bus::BodyBus;
use cbs_host::chaos::ChaosSpec;
use cbs_host::deploy::placement::HostInfo;
use cbs_host::deploy::placer::Placer;
use cbs_host::deploy::{watcher::Watcher, Store};
use cbs_host::discovery;
use cbs_host::envelope::Envelope;
use cbs_host::http::Gateway;
use cbs_host::platform;
use clap::Args;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;

use super::audit;
use crate::args::{default_host_id, serve_http, CellNatsArgs, EngineArgs, HttpArgs, NatsArgs};

/// Serve cells: each answers on `cbs.<cell-id>` until Ctrl-C, or, with
/// --start, until the flow it starts has finished.
///
/// Example: `echo Ada | cbs-host run --start io.prompt_name cells/*`
#[derive(Args)]
pub struct RunArgs {
    /// Cells: folders (with a cell.toml), bundles (.cbs, from `cbs build`)
    /// or bare components (.wasm).
    #[arg(required_unless_present = "watch", value_name = "CELL")]
    cells: Vec<PathBuf>,
    /// Follow deployments: serve the cells `cbs deploy` put in the NATS
    /// cluster's desired state, and swap them as it changes (needs --nats
    /// and JetStream).
    #[arg(long, requires = "url")]
    watch: bool,
    /// A label of this host, for placing replicas (`cbs deploy --label`,
    /// `--spread`), e.g. region=eu; repeatable. With --watch. Every host
    /// also has `platform=<os>-<arch>` (e.g. linux-x86_64), which replicas
    /// of bundles with native code are placed by.
    #[arg(long, value_name = "K=V", value_parser = super::deploy::parse_label, requires = "watch")]
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
        self.host_id.clone().unwrap_or_else(default_host_id)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let host_id = args.host_id();
    let (bus, client) = connect(&args, &host_id).await?;
    let mut body = body(&args, bus.clone(), &host_id)?;
    if let Some(cells) = connect_cells(&args, &host_id).await? {
        body.set_cell_bus(cells);
    }
    let body = Arc::new(body);
    if let Some(addr) = args.metrics {
        let bound = cbs_host::metrics::serve(addr, body.clone() as _)
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
            record_trust(&args, &host_id, &client, &body).await;
            let labels = host_labels(&args.label);
            let me = HostInfo {
                id: host_id.clone(),
                labels: labels.clone(),
                memory_mb: args.capacity_memory_mb,
                at_ms: 0,
                load: Default::default(),
            };
            let placer = Placer::new(Store::open(&client).await?, me).with_load(cell_load(&body));
            let data_dir = args
                .data_dir
                .clone()
                .unwrap_or_else(cbs_host::state::default_data_dir);
            let record = cbs_host::deploy::served::Record::open(&data_dir)?;
            let watcher = Arc::new(Watcher::new(
                body.clone(),
                store,
                host_id.clone(),
                labels,
                grace,
                record,
            ));
            let placing = tokio::spawn(placer.run());
            let watching = tokio::spawn(watcher.clone().run());
            Some((watcher, watching, placing))
        }
        _ => None,
    };
    let http = match args.http {
        Some(addr) => Some(serve_routes(addr, &args, &host_id, &body).await?),
        None => None,
    };
    body.set_ready();
    let Some(start) = &args.start else {
        tracing::info!(host = %host_id, cells = args.cells.len(), bus = bus.kind(), "ready; Ctrl-C or SIGTERM drains and stops");
        let signal = shutdown_signal().await?;
        tracing::info!(
            signal,
            "draining: no new messages, finishing in-flight ones (a second signal exits at once)"
        );
        let drain = async {
            if let Some((stop, server, routing)) = http {
                routing.abort();
                stop.notify_one();
                let _ = server.await;
            }
            if let Some((watcher, watching, placing)) = watcher {
                placing.abort();
                watching.abort();
                watcher.clear().await;
            }
            body.shutdown(grace).await
        };
        // Every step is bounded: with the bus gone, withdrawing reports and
        // flushing replies would otherwise wait for it forever.
        return tokio::select! {
            drained = tokio::time::timeout(grace, drain) => Ok(drain_outcome(drained.unwrap_or(false), grace)),
            second = shutdown_signal() => {
                tracing::warn!(signal = second?, "second signal: exiting without draining");
                Ok(ExitCode::from(130))
            }
        };
    };
    flow(&body, start, &args).await
}

/// Serves the HTTP routes of the cells this host runs (following loads,
/// swaps and removals): the stop signal, the server's task and the task
/// following the routes.
async fn serve_routes(
    addr: std::net::SocketAddr,
    args: &RunArgs,
    host_id: &str,
    body: &Arc<Body>,
) -> anyhow::Result<(Arc<tokio::sync::Notify>, JoinHandle<()>, JoinHandle<()>)> {
    let config = args.http_options.config(&format!("CBS host {host_id}"))?;
    let gateway = Gateway::new(body.bus().clone(), config);
    let routes = |body: &Body| body.cells().iter().flat_map(|c| c.http_targets()).collect();
    gateway.set_routes(routes(body));
    let (following, weak) = (gateway.clone(), Arc::downgrade(body));
    let routing = tokio::spawn(async move {
        while let Some(body) = weak.upgrade() {
            following.set_routes(routes(&body));
            drop(body);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let stop = Arc::new(tokio::sync::Notify::new());
    let (_, server) = serve_http(addr, gateway, stop.clone()).await?;
    Ok((stop, server, routing))
}

/// Each served cell's load, for the heartbeat (request cells autoscale on
/// it): messages in flight, concurrency, `capacity` replies so far.
fn cell_load(body: &Arc<Body>) -> cbs_host::deploy::placer::LoadFn {
    let body = Arc::downgrade(body);
    Arc::new(move || {
        let Some(body) = body.upgrade() else {
            return Default::default();
        };
        body.cells()
            .iter()
            .map(|cell| {
                let refused = cell
                    .stats
                    .errors_by_code()
                    .find(|(code, _)| *code == cbs_host::envelope::ErrorCode::Capacity)
                    .map_or(0, |(_, n)| n);
                let load = cbs_host::deploy::placement::CellLoad {
                    in_flight: cell.in_flight() as u32,
                    concurrency: cell.manifest.limits.concurrency,
                    refused,
                    queue_wait_us: cell.stats.take_mean_wait_us(),
                };
                (cell.manifest.id.clone(), load)
            })
            .collect()
    })
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
        let labels = serde_json::to_string(&host_labels(&args.label))?;
        nats = nats
            .with_metadata("watch", "true")
            .with_metadata(discovery::LABELS, &labels);
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

fn body(args: &RunArgs, bus: Arc<dyn BodyBus>, host_id: &str) -> anyhow::Result<Body> {
    let on_nats = bus.kind() == "nats";
    let mut body = Body::new(bus, args.engine.runtime()?);
    if on_nats && !args.no_reroute {
        body.set_routing(host_id);
    }
    body.set_sources(
        args.engine
            .sources(&args.trust, args.allow_process_bundles)?,
    );
    body.set_local_calls(!args.calls_via_bus);
    if let Some(dir) = &args.data_dir {
        body.set_data_dir(dir);
    }
    if let Some(path) = &args.chaos {
        body.set_chaos(read_chaos(path)?);
    }
    Ok(body)
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
async fn flow(body: &Body, start: &str, args: &RunArgs) -> anyhow::Result<ExitCode> {
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

/// Waits for SIGINT or SIGTERM; returns its name.
pub(crate) async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").context("cannot listen for SIGINT"),
        _ = term.recv() => Ok("SIGTERM"),
    }
}

/// Puts what this watching host will run in the audit trail: its trust
/// list (or that it has none) and whether bundles may start processes.
async fn record_trust(args: &RunArgs, host_id: &str, client: &async_nats::Client, body: &Body) {
    let keys = body.trust().keys_hex();
    let trusts = if keys.is_empty() {
        "no --trust: runs any deployer's bundle".to_owned()
    } else {
        format!("trusts {}", keys.join(", "))
    };
    let processes = if args.allow_process_bundles {
        "process bundles allowed"
    } else {
        "wasm bundles only"
    };
    let change = audit::Change {
        action: Action::Trust,
        cell: "*",
        version: None,
        digest: None,
        key: None,
        proof: None,
        from: None,
        detail: format!("host {host_id}: {trusts}; {processes}"),
    };
    audit::record(&args.nats, client, change).await;
}

/// `--label`s, and `platform=<this machine's>` unless one is given.
fn host_labels(given: &[(String, String)]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<_, _> = given.iter().cloned().collect();
    labels
        .entry(platform::LABEL.to_owned())
        .or_insert_with(platform::current);
    labels
}
