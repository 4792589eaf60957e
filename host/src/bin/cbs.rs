//! `cbs`: the CBS command line for people and scripts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::bus::nats::NatsBus;
use cbs_host::bus::BodyBus;
use cbs_host::cli::NatsArgs;
use cbs_host::discovery;
use cbs_host::envelope::{Envelope, ErrorCode};
use cbs_host::loadgen;
use cbs_host::manifest::{check_cell_id, subject_of};
use cbs_host::outbound::to_message;
use clap::{Args, Parser, Subcommand};
use serde_json::value::RawValue;

/// Talk to a CBS deployment over NATS: call cells, list hosts and cells,
/// load-test a cell.
#[derive(Parser)]
#[command(name = "cbs", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
