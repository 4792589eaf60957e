//! `cbs replay`: re-drive a range of a durable cell's stream into the cell.

use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::durable::{self, ReplayFrom};
use cbs_host::manifest::{check_cell_id, DurableSpec};
use clap::Args;
use time::format_description::well_known::Rfc3339;

use crate::args::NatsArgs;

/// Publish a range of a durable cell's stream again, so the cell handles
/// those messages once more (after a fix, or to rebuild its state). Each is
/// published under its own subject with a fresh Nats-Msg-Id; the cell's
/// shared consumer delivers it to one host.
///
/// A stream with `retention = "limits"` in `[durable]` keeps processed
/// messages; a work queue (the default) keeps only those not yet
/// acknowledged.
///
/// Example: `cbs replay orders.place --from 2026-11-23T09:00:00Z`
#[derive(Args)]
pub struct ReplayArgs {
    /// The durable cell's id.
    cell_id: String,
    /// Where to start: a stream sequence (e.g. 1200) or an RFC 3339 time
    /// (e.g. 2026-11-23T09:00:00Z).
    #[arg(long, value_name = "SEQ|TIME", value_parser = parse_from)]
    from: ReplayFrom,
    /// The last sequence to replay [default: the last one stored now].
    #[arg(long, value_name = "SEQ")]
    to: Option<u64>,
    /// Publish at most this many messages.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    limit: u64,
    /// The cell's stream, when `[durable] stream` names one
    /// [default: CBS_DURABLE_<ID>].
    #[arg(long, value_name = "NAME")]
    stream: Option<String>,
    #[command(flatten)]
    nats: NatsArgs,
}

fn parse_from(text: &str) -> Result<ReplayFrom, String> {
    if let Ok(seq) = text.parse::<u64>() {
        return Ok(ReplayFrom::Sequence(seq));
    }
    time::OffsetDateTime::parse(text, &Rfc3339)
        .map(ReplayFrom::Time)
        .map_err(|e| format!("{text:?} is neither a sequence nor an RFC 3339 time ({e}); e.g. 1200 or 2026-11-23T09:00:00Z"))
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let stream = args
        .stream
        .clone()
        .unwrap_or_else(|| DurableSpec::default().stream_name(&args.cell_id));
    let bus = args.nats.connect_client().await?;
    let js = async_nats::jetstream::new(bus.client().clone());
    let progress = |done: &durable::Replayed| {
        if done.published.is_multiple_of(1_000) {
            eprintln!("replayed {} messages…", done.published);
        }
    };
    let done = durable::replay_range(&js, &stream, args.from, args.to, args.limit, progress)
        .await
        .with_context(|| format!("cannot replay stream {stream} of cell {}", args.cell_id))?;
    match (done.first, done.last) {
        (Some(first), Some(last)) => println!(
            "replayed {} message{} of {stream} (sequences {first} to {last}) into {}",
            done.published,
            if done.published == 1 { "" } else { "s" },
            args.cell_id
        ),
        _ => println!("nothing to replay in {stream} from there"),
    }
    Ok(ExitCode::SUCCESS)
}
