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
//! removed from the cell's stream. A letter too large for the dead-letter
//! stream is kept without the message, which then stays in the cell's
//! stream (delivered no more) for `cbs dlq replay` to fetch: a message is
//! settled only once its letter is stored. Senders publish envelopes with
//! [`publish`]: the envelope id is the `Nats-Msg-Id`, so a publish retried
//! within the dedup window is stored once.

pub mod embedded;
pub mod jetstream;
mod log;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::BodyBus;

use crate::envelope::{BusError, ErrorCode};
use crate::manifest::DurableSpec;

pub use self::jetstream::{
    dead_letters, publish, replay, replay_range, JetStreamLog, ReplayFrom, Replayed,
};
pub use self::log::{
    Consumer, ConsumerSpec, Deliveries, Delivery, DurableLog, Keep, Lettered, Published, Settle,
    StreamSpec,
};

/// JetStream on a bus that has it (NATS), else the embedded store in
/// `data_dir` (opened on first use).
pub fn default_log(bus: &dyn BodyBus, data_dir: &Path) -> Arc<dyn DurableLog> {
    match bus.jetstream() {
        Some(js) => Arc::new(JetStreamLog::new(js)),
        None => Arc::new(embedded::EmbeddedLog::new(data_dir)),
    }
}

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
    /// The message as it was stored: an envelope, or whatever was sent;
    /// `null` when [`DeadLetter::body_in_original`].
    pub message: serde_json::Value,
    /// Why the last delivery failed.
    pub error: BusError,
    /// The letter with its message did not fit the dead-letter stream
    /// (the server's `max_payload`): the message stays in `stream` at
    /// `stream_seq`, delivered no more, where `cbs dlq replay` finds it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_in_original: bool,
}

impl DeadLetter {
    /// This letter without its message, pointing at the original instead.
    pub fn without_body(&self) -> Self {
        Self {
            message: serde_json::Value::Null,
            body_in_original: true,
            ..self.clone()
        }
    }

    /// The id a store deduplicates this letter by: one per delivery that
    /// gave up, so a write retried after a lost acknowledgement is kept
    /// once.
    pub fn id(&self) -> String {
        format!("{}.{}.{}", self.stream, self.stream_seq, self.delivered)
    }

    /// The message a replay of dead letter `seq` publishes again, with the
    /// id it is deduplicated by (one per letter, so a replay retried is
    /// stored once); `None` when the letter kept no message (it stayed in
    /// its stream).
    pub fn replayed(&self, seq: u64) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        if self.body_in_original {
            return Ok(None);
        }
        let id = self.message["id"].as_str().unwrap_or("message");
        let bytes = match &self.message {
            serde_json::Value::String(text) => text.clone().into_bytes(),
            other => serde_json::to_vec(other)?,
        };
        Ok(Some((format!("{id}.replay.{seq}"), bytes)))
    }
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
