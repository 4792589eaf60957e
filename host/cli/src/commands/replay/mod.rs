//! `cbs replay`: re-drive a range of a durable cell's stream into the
//! cell, or (`--shadow`) replay a recording against a candidate release.

mod shadow;

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
/// Or, with --shadow BUNDLE: send the requests `cbs record` kept to that
/// candidate release, served in this process where no live traffic
/// reaches it, its calls to other cells answered from the recording (none
/// is sent to a live cell), and report each reply as equal to the recorded
/// one, different (with where and both values) or an error; fields the
/// output schema marks `"x-cbs-volatile": true` are not compared. Exits 1
/// when any differs or fails.
///
/// Examples: `cbs replay orders.place --from 2026-11-23T09:00:00Z`,
/// `cbs replay --shadow upper-2.cbs`
#[derive(Args)]
pub struct ReplayArgs {
    /// The durable cell's id.
    #[arg(required_unless_present = "shadow")]
    cell_id: Option<String>,
    /// Where to start: a stream sequence (e.g. 1200) or an RFC 3339 time
    /// (e.g. 2026-11-23T09:00:00Z).
    #[arg(long, value_name = "SEQ|TIME", value_parser = parse_from, required_unless_present = "shadow")]
    from: Option<ReplayFrom>,
    /// Replay the recording of the bundle's cell (`cbs record`) against
    /// this candidate bundle instead.
    #[arg(long, value_name = "BUNDLE", conflicts_with_all = ["cell_id", "from", "to", "stream"])]
    shadow: Option<std::path::PathBuf>,
    /// With --shadow: print each request's result as JSON, one a line,
    /// then the summary.
    #[arg(long, requires = "shadow")]
    json: bool,
    /// With --shadow: how long the candidate may take per request, in ms.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    timeout_ms: u64,
    /// The last sequence to replay [default: the last one stored now].
    #[arg(long, value_name = "SEQ")]
    to: Option<u64>,
    /// Publish (or, with --shadow, replay) at most this many messages.
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
    if let Some(bundle) = &args.shadow {
        let timeout = std::time::Duration::from_millis(args.timeout_ms);
        return shadow::run(bundle, args.limit, timeout, args.json, &args.nats).await;
    }
    let (Some(cell_id), Some(from)) = (&args.cell_id, args.from) else {
        anyhow::bail!("give a durable cell's id and --from, or --shadow BUNDLE");
    };
    check_cell_id(cell_id)?;
    let stream = args
        .stream
        .clone()
        .unwrap_or_else(|| DurableSpec::default().stream_name(cell_id));
    let bus = args.nats.connect_client().await?;
    let js = async_nats::jetstream::new(bus.client().clone());
    let progress = |done: &durable::Replayed| {
        if done.published.is_multiple_of(1_000) {
            eprintln!("replayed {} messages…", done.published);
        }
    };
    let done = durable::replay_range(&js, &stream, from, args.to, args.limit, progress)
        .await
        .with_context(|| format!("cannot replay stream {stream} of cell {cell_id}"))?;
    match (done.first, done.last) {
        (Some(first), Some(last)) => println!(
            "replayed {} message{} of {stream} (sequences {first} to {last}) into {}",
            done.published,
            if done.published == 1 { "" } else { "s" },
            cell_id
        ),
        _ => println!("nothing to replay in {stream} from there"),
    }
    Ok(ExitCode::SUCCESS)
}
