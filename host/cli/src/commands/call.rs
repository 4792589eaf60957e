//! `cbs call`: one request to a cell, its reply payload on stdout.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::envelope::{Envelope, ErrorCode};
use cbs_host::manifest::check_cell_id;
use cbs_host::subjects::subject_of;
use clap::Args;
use serde_json::value::RawValue;

use crate::args::NatsArgs;

/// Send one request to a cell and print its reply payload (JSON).
///
/// On failure prints the typed error (code and message) on stderr and exits
/// 1. Example: `cbs call logic.greet '{"name":"Ada"}' --nats nats://127.0.0.1:4222`
#[derive(Args)]
pub struct CallArgs {
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

pub async fn run(args: CallArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let payload = RawValue::from_string(args.payload).context("the payload is not JSON")?;
    let bus = args.nats.connect_client().await?;
    let envelope = Envelope::new(subject_of(&args.cell_id), payload);
    let timeout = Duration::from_millis(args.timeout_ms);
    match cbs_host::call::call(&bus, &envelope, timeout).await {
        Ok(payload) => {
            println!("{}", payload.get());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.code == ErrorCode::NotFound && e.message.contains(&envelope.subject) => {
            eprintln!(
                "error: not_found: nothing serves cell {}: no host on this bus has it loaded (see `cbs ps`), \
                 or it is in another NATS account (a domain's) that does not export it to yours",
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
