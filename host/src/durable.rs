//! Durable cells (`[durable]` in `cell.toml`): fed by a JetStream stream
//! through one durable pull consumer that every host serving the cell
//! shares, so each message is handled by one host and none is lost when a
//! host dies (an unacknowledged message is delivered again).
//!
//! A message is acknowledged only after the cell succeeded (its output
//! passed the contract). A retryable failure is negatively acknowledged
//! with the next delay of `backoff_ms`; `invalid_input` and
//! `contract_violation` are final. A final failure, or a retryable one on
//! the `max_deliver`-th delivery, goes to the dead-letter stream
//! `CBS_DLQ` (subject `cbs-dlq.<cell>`) with the error, and is then
//! removed from the cell's stream. Senders publish envelopes with
//! [`publish`]: the envelope id is the `Nats-Msg-Id`, so a publish retried
//! within the dedup window is stored once.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};

use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::manifest::{DurableSpec, Manifest, Retention};

/// The durable pull consumer of a cell.
pub type DurableConsumer = jetstream::consumer::Consumer<pull::Config>;

/// The dead-letter stream, shared by every durable cell.
pub const DLQ_STREAM: &str = "CBS_DLQ";

/// `cbs-dlq.<cell>`: where a cell's dead letters go.
pub fn dlq_subject(cell: &str) -> String {
    format!("cbs-dlq.{cell}")
}

/// The durable consumer every host serving `cell` shares.
pub fn consumer_name(cell: &str) -> String {
    format!("cbs-{}", cell.replace('.', "_"))
}

/// A message that could not be processed, as kept in [`DLQ_STREAM`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub cell: String,
    /// The subject it was published to (where a replay sends it).
    pub subject: String,
    pub stream: String,
    pub stream_seq: u64,
    /// Deliveries it had, the last one included.
    pub delivered: u64,
    /// The message as it was stored: an envelope, or whatever was sent.
    pub message: serde_json::Value,
    /// Why the last delivery failed.
    pub error: BusError,
}

/// What to do with a delivered message after the cell ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ack,
    /// Deliver again after this delay.
    Retry(Duration),
    /// Give up: to the dead-letter stream.
    DeadLetter,
}

/// The verdict for a delivery (`delivered` counts from 1) that ended with
/// `error` (`None`: success).
pub fn verdict(spec: &DurableSpec, error: Option<&BusError>, delivered: u64) -> Verdict {
    let Some(error) = error else {
        return Verdict::Ack;
    };
    let last = delivered >= u64::from(spec.max_deliver);
    if last
        || matches!(
            error.code,
            ErrorCode::InvalidInput | ErrorCode::ContractViolation
        )
    {
        return Verdict::DeadLetter;
    }
    let step = (delivered.saturating_sub(1) as usize).min(spec.backoff_ms.len().saturating_sub(1));
    let delay = spec.backoff_ms.get(step).copied().unwrap_or(0);
    Verdict::Retry(Duration::from_millis(delay))
}

/// Publishes `envelope` to a durable subject and waits until JetStream
/// stored it (or found it a duplicate within the dedup window).
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    envelope: &Envelope,
) -> Result<jetstream::publish::PublishAck, BusError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", envelope.id.as_str());
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, envelope.to_vec().into())
        .await
        .map_err(|e| unavailable(subject, e))?;
    ack.await.map_err(|e| match e.kind() {
        PublishErrorKind::StreamNotFound => BusError::new(
            ErrorCode::Unavailable,
            format!(
                "no JetStream stream takes {subject}, so it cannot be stored: \
                 deploy a cell that subscribes to it durably, or create a stream for it"
            ),
        ),
        _ => unavailable(subject, e),
    })
}

fn unavailable(subject: &str, e: impl std::fmt::Display) -> BusError {
    BusError::new(
        ErrorCode::Unavailable,
        format!("{subject} could not be stored in JetStream: {e}"),
    )
}

/// Creates (or finds) the cell's stream, the dead-letter stream and the
/// shared durable consumer.
pub async fn ensure(
    js: &jetstream::Context,
    manifest: &Manifest,
    spec: &DurableSpec,
) -> anyhow::Result<DurableConsumer> {
    let name = spec.stream_name(&manifest.id);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: spec.subjects_of(&manifest.id),
            retention: match spec.retention {
                Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
                Retention::Limits => stream::RetentionPolicy::Limits,
            },
            max_age: Duration::from_millis(spec.max_age_ms),
            duplicate_window: Duration::from_millis(spec.dedup_window_ms),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot open the stream {name} of cell {}: {e}", manifest.id)
        })?;
    dlq(js).await?;
    let durable = consumer_name(&manifest.id);
    stream
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                max_deliver: i64::from(spec.max_deliver),
                ack_wait: Duration::from_millis(spec.ack_wait_ms),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the consumer {durable} on {name}: {e}"))
}

/// Publishes a dead letter and waits until it is stored.
pub async fn store_dead_letter(js: &jetstream::Context, letter: &DeadLetter) -> anyhow::Result<()> {
    tracing::warn!(cell = %letter.cell, seq = letter.stream_seq, delivered = letter.delivered, code = %letter.error.code, "durable message dead-lettered");
    let ack = js
        .publish(
            dlq_subject(&letter.cell),
            serde_json::to_vec(letter)?.into(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ack.await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Creates the dead-letter stream when missing.
pub(crate) async fn ensure_dlq(js: &jetstream::Context) -> anyhow::Result<()> {
    dlq(js).await.map(drop)
}

/// The dead-letter stream, created when missing.
async fn dlq(js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: DLQ_STREAM.to_owned(),
        subjects: vec!["cbs-dlq.>".to_owned()],
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot open the dead-letter stream {DLQ_STREAM}: {e}"))
}

/// At most this many dead letters are looked at per listing.
const MAX_SCAN: u64 = 100_000;

/// The dead letters of `cell`, oldest first, with their sequence in
/// [`DLQ_STREAM`].
pub async fn dead_letters(
    js: &jetstream::Context,
    cell: &str,
) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
    let mut stream = dlq(js).await?;
    let state = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .state
        .clone();
    let subject = dlq_subject(cell);
    let first = state
        .first_sequence
        .max(state.last_sequence.saturating_sub(MAX_SCAN));
    let mut out = Vec::new();
    for seq in first..=state.last_sequence {
        // Replayed letters are deleted: gaps are expected.
        let Ok(raw) = stream.get_raw_message(seq).await else {
            continue;
        };
        if raw.subject.as_str() != subject {
            continue;
        }
        match serde_json::from_slice(&raw.payload) {
            Ok(letter) => out.push((seq, letter)),
            Err(e) => tracing::warn!(seq, error = %e, "ignoring an invalid dead letter"),
        }
    }
    Ok(out)
}

/// Publishes dead letter `seq` of `cell` again to the subject it came from
/// and removes it from [`DLQ_STREAM`]. The replay's `Nats-Msg-Id` is new
/// (`<id>.replay.<seq>`), so the dedup window of the first publish does
/// not swallow it, while a replay retried is stored once.
pub async fn replay(js: &jetstream::Context, cell: &str, seq: u64) -> anyhow::Result<DeadLetter> {
    let stream = dlq(js).await?;
    let raw = stream
        .get_raw_message(seq)
        .await
        .map_err(|e| anyhow::anyhow!("no dead letter {seq} ({e}): see `cbs dlq ls {cell}`"))?;
    if raw.subject.as_str() != dlq_subject(cell) {
        anyhow::bail!("dead letter {seq} is not one of cell {cell}'s: see `cbs dlq ls {cell}`");
    }
    let letter: DeadLetter = serde_json::from_slice(&raw.payload)?;
    let bytes = match &letter.message {
        serde_json::Value::String(text) => text.clone().into_bytes(),
        other => serde_json::to_vec(other)?,
    };
    let id = letter.message["id"].as_str().unwrap_or("message");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{id}.replay.{seq}").as_str());
    let ack = js
        .publish_with_headers(letter.subject.clone(), headers, bytes.into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot replay to {}: {e}", letter.subject))?;
    ack.await
        .map_err(|e| anyhow::anyhow!("cannot replay to {}: {e}", letter.subject))?;
    stream
        .delete_message(seq)
        .await
        .map_err(|e| anyhow::anyhow!("replayed, but cannot remove dead letter {seq}: {e}"))?;
    Ok(letter)
}

/// Where `cbs replay` starts in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    Sequence(u64),
    /// The first message stored at or after this time.
    Time(time::OffsetDateTime),
}

/// What a replay of a stream range did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Messages published again.
    pub published: u64,
    /// The stream range they came from.
    pub first: Option<u64>,
    pub last: Option<u64>,
}

/// Publishes the messages of `stream` from `from` to `to` (default: the
/// last one stored when the replay starts, so what it publishes is never
/// read again), at most `limit`, to the subjects they were stored under:
/// the cell's consumer delivers them once more. Each gets a fresh
/// `Nats-Msg-Id` (`<id>.replay.<seq>.<run>`), so the dedup window does
/// not swallow it. Work-queue streams hold only what is not yet
/// acknowledged; `retention = "limits"` keeps processed messages too.
pub async fn replay_range(
    js: &jetstream::Context,
    stream: &str,
    from: ReplayFrom,
    to: Option<u64>,
    limit: u64,
    mut progress: impl FnMut(&Replayed),
) -> anyhow::Result<Replayed> {
    let mut handle = js
        .get_stream(stream)
        .await
        .map_err(|e| anyhow::anyhow!("no stream {stream}: {e}"))?;
    let state = handle
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .state
        .clone();
    let end = to.map_or(state.last_sequence, |t| t.min(state.last_sequence));
    let start = match from {
        ReplayFrom::Sequence(seq) => seq.max(state.first_sequence),
        ReplayFrom::Time(at) => first_at_or_after(&handle, state.first_sequence, end, at).await,
    };
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut done = Replayed::default();
    for seq in start..=end {
        if done.published >= limit {
            break;
        }
        // Acknowledged (work queue), expired or deleted: gaps are expected.
        let Ok(message) = handle.get_raw_message(seq).await else {
            continue;
        };
        let mut headers = message.headers.clone();
        let id = headers
            .get("Nats-Msg-Id")
            .map_or_else(|| format!("{stream}.{seq}"), |v| v.to_string());
        headers.insert("Nats-Msg-Id", format!("{id}.replay.{seq}.{run}").as_str());
        let ack = js
            .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot publish message {seq} again: {e}"))?;
        ack.await
            .map_err(|e| anyhow::anyhow!("cannot publish message {seq} again: {e}"))?;
        done.published += 1;
        done.first.get_or_insert(seq);
        done.last = Some(seq);
        progress(&done);
    }
    Ok(done)
}

/// The first sequence in `low..=high` stored at or after `at` (messages are
/// in time order); `high + 1` when none is.
async fn first_at_or_after(
    stream: &stream::Stream,
    mut low: u64,
    high: u64,
    at: time::OffsetDateTime,
) -> u64 {
    let mut end = high.saturating_add(1);
    while low < end {
        let mid = low + (end - low) / 2;
        // A gap: the next stored message decides (or none: all before).
        let mut probe = mid;
        let time = loop {
            if probe >= end {
                break None;
            }
            match stream.get_raw_message(probe).await {
                Ok(m) => break Some(m.time),
                Err(_) => probe += 1,
            }
        };
        match time {
            Some(t) if t >= at => end = mid,
            Some(_) => low = probe + 1,
            None => end = mid,
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: ErrorCode) -> BusError {
        BusError::new(code, "x")
    }

    #[test]
    fn retryable_failures_back_off_then_dead_letter_at_max_deliver() {
        let spec = DurableSpec {
            max_deliver: 4,
            backoff_ms: vec![10, 100],
            ..DurableSpec::default()
        };
        let failed = error(ErrorCode::CellFailed);
        assert_eq!(verdict(&spec, None, 1), Verdict::Ack);
        assert_eq!(
            verdict(&spec, Some(&failed), 1),
            Verdict::Retry(Duration::from_millis(10))
        );
        assert_eq!(
            verdict(&spec, Some(&failed), 2),
            Verdict::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            verdict(&spec, Some(&failed), 3),
            Verdict::Retry(Duration::from_millis(100))
        );
        assert_eq!(verdict(&spec, Some(&failed), 4), Verdict::DeadLetter);
    }

    #[test]
    fn bad_input_and_broken_contracts_are_final() {
        let spec = DurableSpec::default();
        for code in [ErrorCode::InvalidInput, ErrorCode::ContractViolation] {
            assert_eq!(
                verdict(&spec, Some(&error(code)), 1),
                Verdict::DeadLetter,
                "{code}"
            );
        }
        for code in [
            ErrorCode::Timeout,
            ErrorCode::Unavailable,
            ErrorCode::Capacity,
        ] {
            assert!(
                matches!(verdict(&spec, Some(&error(code)), 1), Verdict::Retry(_)),
                "{code}"
            );
        }
    }
}
