//! Where recordings are kept: one JetStream stream per cell
//! (`CBS_RECORD_<CELL>` on `cbs-record.<cell>`), with limits on count,
//! bytes and age, that keeps the first records and refuses the rest
//! (discard new) — a recording ends when it is full.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};

use super::{Record, MAX_RECORD_BYTES};

/// How long a recording is kept for replays.
pub const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// A recording's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_count: i64,
    pub max_bytes: i64,
}

/// Makes a new, empty recording stream for `cell` (an earlier one is
/// replaced).
pub async fn create(js: &jetstream::Context, cell: &str, limits: Limits) -> anyhow::Result<()> {
    let name = super::stream(cell);
    if js.get_stream(&name).await.is_ok() {
        js.delete_stream(&name)
            .await
            .with_context(|| format!("cannot replace the earlier recording {name}"))?;
    }
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![super::subject(cell)],
        max_messages: limits.max_count,
        max_bytes: limits.max_bytes,
        max_message_size: MAX_RECORD_BYTES as i32,
        discard: stream::DiscardPolicy::New,
        max_age: KEEP,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create the recording stream {name}"))?;
    Ok(())
}

/// How many records and bytes `cell`'s recording holds.
pub async fn size(js: &jetstream::Context, cell: &str) -> anyhow::Result<(u64, u64)> {
    let (_, state) = open(js, cell).await?;
    Ok((state.messages, state.bytes))
}

/// `cell`'s recording stream and its state now.
async fn open(
    js: &jetstream::Context,
    cell: &str,
) -> anyhow::Result<(jetstream::stream::Stream, stream::State)> {
    let name = super::stream(cell);
    let mut stream = js.get_stream(&name).await.with_context(|| {
        format!("no recording of {cell} ({name}): make one with `cbs record {cell}`")
    })?;
    let state = stream
        .info()
        .await
        .with_context(|| format!("cannot read {name}"))?
        .state
        .clone();
    Ok((stream, state))
}

/// Up to `limit` records of `cell`'s recording, with their sequences;
/// records that do not parse are skipped (and counted).
pub async fn read(
    js: &jetstream::Context,
    cell: &str,
    limit: u64,
) -> anyhow::Result<(Vec<(u64, Record)>, usize)> {
    let (stream, state) = open(js, cell).await?;
    let mut records = Vec::new();
    let mut invalid = 0;
    if state.messages == 0 {
        return Ok((records, invalid));
    }
    let last = state
        .last_sequence
        .min(state.first_sequence.saturating_add(limit.saturating_sub(1)));
    for seq in state.first_sequence..=last {
        let raw = match stream.get_raw_message(seq).await {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(seq, error = %e, "cannot read a record");
                continue;
            }
        };
        match serde_json::from_slice::<Record>(&raw.payload) {
            Ok(record) => records.push((seq, record)),
            Err(e) => {
                invalid += 1;
                tracing::warn!(seq, error = %e, "ignoring an invalid record");
            }
        }
    }
    Ok((records, invalid))
}
