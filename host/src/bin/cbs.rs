//! `cbs`: the CBS command line for people and scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::bundle::{Bundle, KeyPair};
use cbs_host::bus::nats::NatsBus;
use cbs_host::bus::BodyBus;
use cbs_host::cli::NatsArgs;
use cbs_host::contract::compat::{self, Direction};
use cbs_host::deploy::rollout::{self, Outcome};
use cbs_host::deploy::Store;
use cbs_host::discovery;
use cbs_host::envelope::{Envelope, ErrorCode};
use cbs_host::loadgen;
use cbs_host::manifest::{check_cell_id, subject_of};
use cbs_host::outbound::to_message;
use cbs_host::runtime::wasm::{ComponentCache, EngineOptions, WasmRuntime};
use cbs_host::scaffold;
use clap::{Args, Parser, Subcommand};
use serde_json::value::RawValue;

/// Make, build, deploy and operate CBS cells: scaffold and bundle cells,
/// deploy them to a NATS cluster, call them, list and load-test them.
#[derive(Parser)]
#[command(name = "cbs", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a cell folder that builds and tests unchanged.
    ///
    /// Example: `cbs new text.upper && cd text.upper && cargo test && cbs build .`
    New(NewArgs),
    /// Compile a cell, check it against wit/ and its schemas, and write a
    /// bundle (.cbs): cell.toml, component and schemas with sha256 digests.
    ///
    /// Example: `cbs build cells/logic.greet -o greet.cbs --sign cbs.key`
    Build(BuildArgs),
    /// Create an ed25519 key pair for signing bundles: KEY (secret, mode
    /// 0600) and KEY.pub (give it to hosts with `--trust`).
    Keygen(KeygenArgs),
    /// Deploy a bundle to every host of a NATS cluster that runs with
    /// --watch, and wait until they serve it.
    ///
    /// The bundle goes into the JetStream object store `cbs-bundles`, the
    /// desired release into the key-value bucket `cbs-desired`. Exits 1 if
    /// a host cannot load it (the previous release then stays desired) or
    /// if the new contract breaks the deployed one within a major version.
    Deploy(DeployArgs),
    /// Make the previous release of a cell the desired one again.
    Rollback(RollbackArgs),
    /// Stop serving a deployed cell on every watching host.
    Undeploy(UndeployArgs),
    /// Deployed cells: the desired release and what each host serves.
    Ls(LsArgs),
    /// Contract tools.
    #[command(subcommand)]
    Contract(ContractCommand),
    /// Send one request to a cell and print its reply payload (JSON).
    ///
    /// On failure prints the typed error (code and message) on stderr and
    /// exits 1. Example: `cbs call logic.greet '{"name":"Ada"}' --nats nats://127.0.0.1:4222`
    Call(CallArgs),
    /// List the hosts on the bus and the cells each serves, with counts.
    Ps(PsArgs),
    /// Load-test a cell: requests/s, latency percentiles and errors.
    ///
    /// Runs closed-loop workers (each sends a request, waits for the reply,
    /// sends the next) for --duration seconds after a warm-up, showing
    /// progress on stderr. Example: `cbs bench logic.greet --payload req.json -c 64`
    Bench(BenchArgs),
}

#[derive(Args)]
struct NewArgs {
    /// The cell id, dotted lowercase, e.g. text.upper.
    cell_id: String,
    #[arg(long, value_enum, default_value = "rust")]
    lang: scaffold::Lang,
    /// Folder to create [default: ./<cell-id>].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The Rust guest SDK (guest-sdk/rust of the CBS sources) [default: the
    /// one of the tree cbs was built from].
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

#[derive(Args)]
struct BuildArgs {
    /// The cell folder (with cell.toml).
    #[arg(default_value = ".")]
    cell_dir: PathBuf,
    /// Bundle to write [default: ./<cell-id>-<version>.cbs].
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Sign the bundle with this key (from `cbs keygen`).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// Folder of precompiled components [default: $CBS_CACHE_DIR, else
    /// ~/.cache/cbs/components].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Args)]
struct KeygenArgs {
    /// Where to write the secret key; the public key goes to <KEY>.pub.
    #[arg(default_value = "cbs.key")]
    key: PathBuf,
}

#[derive(Args)]
struct DeployArgs {
    /// The bundle (.cbs) to deploy.
    bundle: PathBuf,
    /// How many hosts should serve it (recorded as a hint; every watching
    /// host serves it).
    #[arg(long)]
    replicas: Option<u32>,
    /// Deploy even if the contract breaks the deployed one.
    #[arg(long)]
    force: bool,
    /// How long to wait for the hosts, in ms.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    wait_ms: u64,
    /// Record the desired release and return without waiting.
    #[arg(long, conflicts_with = "wait_ms")]
    no_wait: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
struct RollbackArgs {
    cell_id: String,
    /// How long to wait for the hosts, in ms.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    wait_ms: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
struct UndeployArgs {
    cell_id: String,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
struct LsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Subcommand)]
enum ContractCommand {
    /// Does NEW keep the promises of OLD? Lists each breaking change by JSON
    /// pointer; exits 1 if there is one.
    ///
    /// Schema files (.json) are compared as input schemas (the new one must
    /// accept all the old one did) unless --output is given (the new one
    /// must allow nothing the old one forbade). Cell folders or bundles are
    /// compared on both.
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    old: PathBuf,
    new: PathBuf,
    /// Compare two schema files as output schemas.
    #[arg(long)]
    output: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// The cell id, e.g. logic.greet.
    cell_id: String,
    /// A file with the request payload (JSON) [default: {}].
    #[arg(long, value_name = "FILE")]
    payload: Option<std::path::PathBuf>,
    /// Requests in flight at once.
    #[arg(short, long, default_value_t = 16)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(short, long, default_value_t = 10.0, value_name = "SECONDS")]
    duration: f64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    warmup: f64,
    /// Timeout of each request, in milliseconds.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    timeout_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
struct CallArgs {
    /// The cell id, e.g. logic.greet.
    cell_id: String,
    /// The request payload (JSON).
    #[arg(default_value = "{}")]
    payload: String,
    /// How long to wait for the reply, in milliseconds.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    timeout_ms: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
struct PsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Stop gathering replies after this long without a new one, in ms.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    wait_ms: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Call(args) => call(args).await,
            Command::Ps(args) => ps(args).await,
            Command::Bench(args) => bench(args).await,
            Command::New(args) => new(args),
            Command::Build(args) => build(args).await,
            Command::Keygen(args) => keygen(args),
            Command::Deploy(args) => deploy(args).await,
            Command::Rollback(args) => rollback(args).await,
            Command::Undeploy(args) => undeploy(args).await,
            Command::Ls(args) => ls(args).await,
            Command::Contract(ContractCommand::Check(args)) => contract_check(args),
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

async fn connect(nats: &NatsArgs) -> anyhow::Result<NatsBus> {
    let mut nats = nats.clone();
    nats.url
        .get_or_insert_with(|| "nats://127.0.0.1:4222".to_owned());
    let options = nats
        .options(&format!("cbs-cli-{}", std::process::id()))
        .expect("a URL is set");
    Ok(NatsBus::connect(&options).await?)
}

async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let payload = RawValue::from_string(args.payload).context("the payload is not JSON")?;
    let bus = connect(&args.nats).await?;
    let envelope = Envelope::new(subject_of(&args.cell_id), payload);
    let timeout = Duration::from_millis(args.timeout_ms);
    let outcome = match bus.request(to_message(&envelope), timeout).await {
        Ok(reply) => Envelope::from_slice(&reply.payload).and_then(Envelope::into_result),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(payload) => {
            println!("{}", payload.get());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.code == ErrorCode::NotFound && e.message.contains(&envelope.subject) => {
            eprintln!(
                "error: not_found: nothing serves cell {}: no host on this bus has it loaded (see `cbs ps`)",
                args.cell_id
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("error: {}: {}", e.code, e.message);
            if let Some(details) = e.details {
                eprintln!("details: {details}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn ps(args: PsArgs) -> anyhow::Result<ExitCode> {
    let bus = connect(&args.nats).await?;
    let quiet = Duration::from_millis(args.wait_ms);
    let hosts = discovery::list(bus.client(), quiet, quiet * 10).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hosts)?);
        return Ok(ExitCode::SUCCESS);
    }
    if hosts.is_empty() {
        println!("no CBS hosts on this bus");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<24} {:<9} {:>10} {:>8} {:>9}",
        "HOST", "CELL", "VERSION", "REQUESTS", "ERRORS", "AVG µs"
    );
    for host in &hosts {
        if host.cells.is_empty() {
            println!("{:<28} {:<24}", host.host, "(no cells)");
        }
        for cell in &host.cells {
            println!(
                "{:<28} {:<24} {:<9} {:>10} {:>8} {:>9}",
                host.host,
                cell.id,
                cell.version,
                cell.requests,
                cell.errors,
                cell.average_processing_us
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let payload = match &args.payload {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => "{}".to_owned(),
    };
    RawValue::from_string(payload.clone()).with_context(|| "the payload is not JSON")?;
    let bus: std::sync::Arc<dyn BodyBus> = std::sync::Arc::new(connect(&args.nats).await?);
    let load = loadgen::Load {
        subject: subject_of(&args.cell_id),
        payload,
        concurrency: args.concurrency,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        timeout: Duration::from_millis(args.timeout_ms),
        raw: false,
    };
    let progress = std::sync::Arc::new(loadgen::Progress::default());
    let ticker = tokio::spawn(show_progress(progress.clone(), load.warmup, load.duration));
    let report = loadgen::run(bus, &load, progress).await;
    ticker.abort();
    // The last progress line: totals, whatever the ticks showed.
    let clear = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        "\r\x1b[2K"
    } else {
        ""
    };
    eprintln!(
        "{clear}done: {} requests in {:.1} s, {:.0} req/s, {} errors",
        report.requests, report.seconds, report.rps, report.errors
    );
    if args.json {
        let json = serde_json::json!({
            "cell": args.cell_id,
            "concurrency": args.concurrency,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("cell         {} ({})", args.cell_id, load.subject);
        println!(
            "load         {} in flight, {:.1} s measured",
            args.concurrency, report.seconds
        );
        println!("requests     {} ({:.0} req/s)", report.requests, report.rps);
        println!("errors       {} {:?}", report.errors, report.errors_by_code);
        println!(
            "latency µs   p50 {:.0}   p90 {:.0}   p99 {:.0}   p99.9 {:.0}",
            report.p50_us, report.p90_us, report.p99_us, report.p999_us
        );
    }
    Ok(if report.errors == 0 && report.requests > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A progress line on stderr while the load runs.
async fn show_progress(
    progress: std::sync::Arc<loadgen::Progress>,
    warmup: Duration,
    duration: Duration,
) {
    use std::io::{IsTerminal, Write};
    use std::sync::atomic::Ordering;
    let tty = std::io::stderr().is_terminal();
    let start = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(if tty { 250 } else { 1_000 }));
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        let line = if elapsed < warmup {
            format!(
                "warming up {:.1}/{:.1} s",
                elapsed.as_secs_f64(),
                warmup.as_secs_f64()
            )
        } else {
            let measured = (elapsed - warmup).as_secs_f64().max(1e-3);
            let done = progress.done.load(Ordering::Relaxed);
            format!(
                "{:.1}/{:.1} s  {done} requests  {:.0} req/s  {} errors",
                measured,
                duration.as_secs_f64(),
                done as f64 / measured,
                progress.errors.load(Ordering::Relaxed)
            )
        };
        let mut err = std::io::stderr();
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.cell_id));
    let files = scaffold::new_cell(&args.cell_id, args.lang, &dir, args.sdk.as_deref())?;
    println!("created cell {} in {}:", args.cell_id, dir.display());
    for file in files {
        println!("  {}", file.display());
    }
    println!(
        "next:\n  cd {}\n  cargo test            # the handler's unit tests\n  cbs build .           # component + bundle\n  cbs-host run --start {} --input '{{\"text\":\"hi\"}}' .",
        dir.display(),
        args.cell_id
    );
    Ok(ExitCode::SUCCESS)
}

async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let cache = args.cache_dir.or_else(ComponentCache::default_dir);
    let runtime = std::sync::Arc::new(WasmRuntime::new(&EngineOptions::default(), cache)?);
    let built = cbs_host::build::build(
        &args.cell_dir,
        args.output.as_deref(),
        args.sign.as_deref(),
        runtime,
    )
    .await?;
    let m = &built.bundle.manifest;
    println!(
        "built {} ({} {}, {} files, {} KiB)\ndigest {}{}",
        built.path.display(),
        m.cell,
        m.version,
        m.files.len(),
        built.size.div_ceil(1024),
        built.bundle.digest(),
        built
            .bundle
            .signer()
            .map_or_else(|| "\nunsigned".to_owned(), |k| format!("\nsigned by {k}"))
    );
    Ok(ExitCode::SUCCESS)
}

fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let pair = KeyPair::generate()?;
    pair.write(&args.key)?;
    println!(
        "secret key {} (keep it private)\npublic key {}.pub: {}\nsign with `cbs build --sign {}`; hosts accept with `cbs-host run --trust {}.pub`",
        args.key.display(),
        args.key.display(),
        pair.public().to_hex(),
        args.key.display(),
        args.key.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn open_store(nats: &NatsArgs) -> anyhow::Result<(NatsBus, Store)> {
    let bus = connect(nats).await?;
    let store = Store::open(bus.client()).await?;
    Ok((bus, store))
}

async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let bundle =
        Bundle::from_bytes(&bytes).with_context(|| format!("in {}", args.bundle.display()))?;
    let (bus, store) = open_store(&args.nats).await?;
    let wait = (!args.no_wait).then(|| Duration::from_millis(args.wait_ms));
    eprintln!(
        "deploying {} {} ({})",
        bundle.manifest.cell,
        bundle.manifest.version,
        bundle.digest()
    );
    let outcome = rollout::deploy(
        bus.client(),
        &store,
        &bundle,
        &bytes,
        args.replicas,
        args.force,
        wait,
    )
    .await?;
    Ok(report(
        &bundle.manifest.cell,
        &bundle.manifest.version,
        outcome,
    ))
}

async fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let (bus, store) = open_store(&args.nats).await?;
    let wait = Some(Duration::from_millis(args.wait_ms));
    let (release, outcome) = rollout::rollback(bus.client(), &store, &args.cell_id, wait).await?;
    eprintln!("rolling {} back to {}", args.cell_id, release.version);
    Ok(report(&args.cell_id, &release.version, outcome))
}

/// Prints how a rollout went; the exit code says it.
fn report(cell: &str, version: &str, outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Serving { hosts: 0, .. } => {
            println!("{cell} {version} is the desired release; no host is watching now (hosts started with `cbs-host run --watch` will serve it)");
            ExitCode::SUCCESS
        }
        Outcome::Serving { hosts, elapsed } => {
            println!(
                "{cell} {version} serving on {hosts} host(s) after {} ms",
                elapsed.as_millis()
            );
            ExitCode::SUCCESS
        }
        Outcome::Failed(failures) => {
            eprintln!(
                "error: {cell} {version} failed to load; the desired state is back to what it was before the deploy:"
            );
            for f in failures {
                eprintln!(
                    "  {}: {} (still serving: {})",
                    f.host,
                    f.error.unwrap_or_default(),
                    f.serving.as_deref().unwrap_or("nothing")
                );
            }
            ExitCode::FAILURE
        }
        Outcome::TimedOut { missing } => {
            eprintln!(
                "error: {cell} {version} is desired, but these hosts did not report in time: {} (see `cbs ls`)",
                missing.join(", ")
            );
            ExitCode::FAILURE
        }
    }
}

async fn undeploy(args: UndeployArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let (_bus, store) = open_store(&args.nats).await?;
    if store.desired(&args.cell_id).await?.is_none() {
        eprintln!(
            "error: cell {} is not deployed (see `cbs ls`)",
            args.cell_id
        );
        return Ok(ExitCode::FAILURE);
    }
    store.remove_desired(&args.cell_id).await?;
    println!(
        "{} undeployed: watching hosts stop serving it",
        args.cell_id
    );
    Ok(ExitCode::SUCCESS)
}

async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let (bus, store) = open_store(&args.nats).await?;
    let listing = rollout::list(bus.client(), &store).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(ExitCode::SUCCESS);
    }
    if listing.is_empty() {
        println!("nothing deployed (deploy with `cbs deploy BUNDLE`)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<10} {:<28} {:<10} {:<8} NOTE",
        "CELL", "DESIRED", "HOST", "RUNNING", "STATE"
    );
    for cell in &listing {
        let desired = cell.desired.as_deref().unwrap_or("(none)");
        if cell.hosts.is_empty() {
            println!(
                "{:<24} {:<10} {:<28}",
                cell.cell, desired, "(no host reports)"
            );
        }
        for h in &cell.hosts {
            let running = h.serving.as_deref().unwrap_or("-");
            let state = if h.in_sync { "ok" } else { "behind" };
            let mut note = h.error.clone().unwrap_or_default();
            if !h.online {
                note = format!("offline {note}");
            }
            println!(
                "{:<24} {:<10} {:<28} {:<10} {:<8} {note}",
                cell.cell, desired, h.host, running, state
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn contract_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let is_schema = |p: &PathBuf| p.extension().is_some_and(|e| e == "json") && p.is_file();
    let breaks: Vec<(Direction, compat::Break)> = if is_schema(&args.old) && is_schema(&args.new) {
        let read = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
        };
        let direction = if args.output {
            Direction::Output
        } else {
            Direction::Input
        };
        compat::check(&read(&args.old)?, &read(&args.new)?, direction)
            .into_iter()
            .map(|b| (direction, b))
            .collect()
    } else {
        rollout::contract_breaks(&bundle_of(&args.old)?, &bundle_of(&args.new)?)?
    };
    if breaks.is_empty() {
        println!(
            "compatible: {} keeps the contract of {}",
            args.new.display(),
            args.old.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} breaking change(s):", breaks.len());
    for (direction, b) in &breaks {
        println!("  {} {b}", rollout::direction_name(*direction));
    }
    Ok(ExitCode::FAILURE)
}

/// A bundle file, or a cell folder packed in memory.
fn bundle_of(path: &std::path::Path) -> anyhow::Result<Bundle> {
    if path.is_dir() {
        Bundle::pack_contract(&cbs_host::manifest::CellSpec::from_dir(path)?)
    } else {
        Bundle::read(path)
    }
}
