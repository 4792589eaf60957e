//! `cbs record`: keep a deployed cell's live requests, with their replies
//! and the replies of the calls it made, for `cbs replay --shadow`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cbs_host::deploy::Store;
use cbs_host::manifest::check_cell_id;
use cbs_host::shadow::{self, stream, Recording};
use cbs_host::unix_time::now_ms;
use clap::Args;

use crate::args::NatsArgs;

/// Record a deployed cell's requests: every watching host serving it keeps
/// each request with its reply and the replies of the calls the cell made
/// for it, in the JetStream stream CBS_RECORD_<CELL> (kept 7 days; an
/// earlier recording of the cell is replaced). Stops after --for, or when
/// --max-count records or --max-bytes are kept; a new release of the cell
/// ends it too. Replay it against a candidate with `cbs replay --shadow`.
///
/// Example: `cbs record text.upper --for 10m`
#[derive(Args)]
pub struct RecordArgs {
    /// The deployed cell's id.
    cell_id: String,
    /// How long to record, e.g. 10m or 30s.
    #[arg(long = "for", value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The most records kept.
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    max_count: i64,
    /// The most bytes kept.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES", value_parser = clap::value_parser!(i64).range(1..=(64_i64 << 30)))]
    max_bytes: i64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let cell = &args.cell_id;
    check_cell_id(cell)?;
    let (bus, store) = args.nats.open_store().await?;
    if store.desired(cell).await?.is_none() {
        anyhow::bail!(
            "{cell} is not deployed: only cells served by watching hosts (cbs deploy) are recorded"
        );
    }
    let js = async_nats::jetstream::new(bus.client().clone());
    let limits = stream::Limits {
        max_count: args.max_count,
        max_bytes: args.max_bytes,
    };
    stream::create(&js, cell, limits).await?;
    let recording = Recording {
        id: cbs_host::envelope::new_id(),
        until_ms: now_ms()
            .saturating_add(u64::try_from(args.duration.as_millis()).unwrap_or(u64::MAX)),
    };
    set(&store, cell, Some(recording.clone())).await?;
    eprintln!(
        "recording {cell} for {} s (at most {} records, {} bytes) into {}",
        args.duration.as_secs(),
        args.max_count,
        args.max_bytes,
        shadow::stream(cell)
    );
    let kept = wait(&js, cell, &args, &recording).await;
    // The hosts stop at `until_ms` by themselves; this ends it now.
    let ended = end(&store, cell, &recording).await;
    let (count, bytes) = kept?;
    ended?;
    println!(
        "recorded {count} request(s) of {cell} ({bytes} bytes) in {}; replay them with `cbs replay --shadow BUNDLE`",
        shadow::stream(cell)
    );
    Ok(ExitCode::SUCCESS)
}

/// Waits until the time is up or the stream is full, saying how many
/// records are kept as they come.
async fn wait(
    js: &async_nats::jetstream::Context,
    cell: &str,
    args: &RecordArgs,
    recording: &Recording,
) -> anyhow::Result<(u64, u64)> {
    let started = Instant::now();
    let mut said = 0;
    loop {
        let (count, bytes) = stream::size(js, cell).await?;
        let full = count >= args.max_count as u64 || bytes >= args.max_bytes as u64;
        if full || now_ms() >= recording.until_ms {
            return Ok((count, bytes));
        }
        if count != said && started.elapsed() >= Duration::from_secs(1) {
            eprintln!("{count} request(s) recorded…");
            said = count;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn set(store: &Store, cell: &str, recording: Option<Recording>) -> anyhow::Result<()> {
    let Some(mut desired) = store.desired(cell).await? else {
        anyhow::bail!("{cell} was undeployed");
    };
    desired.recording = recording;
    store.set_desired(&desired).await
}

/// Ends the recording, unless a deploy or another recording replaced it.
async fn end(store: &Store, cell: &str, recording: &Recording) -> anyhow::Result<()> {
    let ours = store
        .desired(cell)
        .await?
        .is_some_and(|d| d.recording.as_ref() == Some(recording));
    if ours {
        set(store, cell, None).await?;
    }
    Ok(())
}
