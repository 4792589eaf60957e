//! `cbs bench`: a closed-loop load test of one cell.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cbs_host::bus::BodyBus;
use cbs_host::manifest::check_cell_id;
use cbs_host::subjects::subject_of;
use clap::Args;
use serde_json::value::RawValue;

use crate::args::NatsArgs;
use crate::loadgen::{self, Load, Progress};

/// Load-test a cell: requests/s, latency percentiles and errors.
///
/// Runs closed-loop workers (each sends a request, waits for the reply,
/// sends the next) for --duration seconds after a warm-up, showing progress
/// on stderr. Example: `cbs bench logic.greet --payload req.json -c 64`
#[derive(Args)]
pub struct BenchArgs {
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

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let payload = match &args.payload {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => "{}".to_owned(),
    };
    RawValue::from_string(payload.clone()).with_context(|| "the payload is not JSON")?;
    let bus: Arc<dyn BodyBus> = Arc::new(args.nats.connect_client().await?);
    let load = Load {
        subject: subject_of(&args.cell_id),
        payload,
        concurrency: args.concurrency,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        timeout: Duration::from_millis(args.timeout_ms),
        raw: false,
    };
    let progress = Arc::new(Progress::default());
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
async fn show_progress(progress: Arc<Progress>, warmup: Duration, duration: Duration) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
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
