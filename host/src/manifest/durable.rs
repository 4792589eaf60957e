//! `[durable]`: a cell fed by a JetStream stream through one durable pull
//! consumer that every host serving it shares (each message handled once,
//! acknowledged only after the cell succeeded). The types are read by
//! `durable` (`StreamSpec`), which acts on them.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::bounds::{self, within};
use crate::subjects::{check_own_subject, check_stream_name, stream_token};

/// `[durable]` of `cell.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurableSpec {
    /// The stream; default `CBS_DURABLE_<ID>` (see [`DurableSpec::stream_name`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Subjects the stream takes; default `cbs-durable.<cell id>`.
    pub subjects: Vec<String>,
    /// Deliveries before a message goes to the dead-letter stream.
    pub max_deliver: u32,
    /// How long a host may hold a message before it is redelivered.
    pub ack_wait_ms: u64,
    /// Delay before each redelivery after a retryable failure; the last
    /// one repeats.
    pub backoff_ms: Vec<u64>,
    /// A message published again with the same envelope id within this
    /// window is stored once.
    pub dedup_window_ms: u64,
    /// What the stream keeps: see [`Retention`].
    pub retention: Retention,
    /// With `retention = "limits"`, how long messages are kept (0: no age
    /// limit).
    pub max_age_ms: u64,
}

/// What a durable cell's stream keeps. Fixed when the stream is created
/// (JetStream cannot change it later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Retention {
    /// A message is removed once acknowledged.
    #[default]
    WorkQueue,
    /// Messages stay, processed or not, up to `max_age_ms`: `cbs replay`
    /// can re-drive any range into the cell.
    Limits,
}

impl Default for DurableSpec {
    fn default() -> Self {
        Self {
            stream: None,
            subjects: Vec::new(),
            max_deliver: 5,
            ack_wait_ms: 30_000,
            backoff_ms: vec![100, 1_000, 5_000],
            dedup_window_ms: 120_000,
            retention: Retention::WorkQueue,
            max_age_ms: 0,
        }
    }
}

impl DurableSpec {
    /// The stream of cell `id`: the name given, or `CBS_DURABLE_<ID>`.
    pub fn stream_name(&self, id: &str) -> String {
        self.stream
            .clone()
            .unwrap_or_else(|| format!("CBS_DURABLE_{}", stream_token(id)))
    }

    /// The subjects of cell `id`'s stream.
    pub fn subjects_of(&self, id: &str) -> Vec<String> {
        if self.subjects.is_empty() {
            vec![format!("cbs-durable.{id}")]
        } else {
            self.subjects.clone()
        }
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if let Some(stream) = &self.stream {
            check_stream_name("[durable] stream", stream)?;
        }
        for subject in &self.subjects {
            check_own_subject("[durable] subjects", subject)?;
        }
        if self.max_deliver == 0 {
            bail!("[durable] max_deliver must be at least 1");
        }
        within(
            "[durable] max_deliver",
            self.max_deliver.into(),
            bounds::MAX_DELIVER,
        )?;
        within(
            "[durable] ack_wait_ms",
            self.ack_wait_ms,
            bounds::TIMEOUT_MS,
        )?;
        within(
            "[durable] backoff_ms entries",
            self.backoff_ms.len() as u64,
            16,
        )?;
        for delay in &self.backoff_ms {
            within("[durable] backoff_ms", *delay, bounds::TIMEOUT_MS)?;
        }
        within(
            "[durable] dedup_window_ms",
            self.dedup_window_ms,
            bounds::DEDUP_WINDOW_MS,
        )?;
        if self.max_age_ms > 0 && self.retention == Retention::WorkQueue {
            bail!("[durable] max_age_ms is for retention = \"limits\": a work queue keeps a message until it is acknowledged");
        }
        Ok(())
    }
}
