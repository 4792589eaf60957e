//! `cbs`: the CBS command line for people and scripts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::bus::nats::NatsBus;
use cbs_host::bus::BodyBus;
use cbs_host::cli::NatsArgs;
use cbs_host::discovery;
use cbs_host::envelope::{Envelope, ErrorCode};
use cbs_host::manifest::{check_cell_id, subject_of};
use cbs_host::outbound::to_message;
use clap::{Args, Parser, Subcommand};
use serde_json::value::RawValue;

/// Talk to a CBS deployment over NATS: call cells, list hosts and cells.
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
