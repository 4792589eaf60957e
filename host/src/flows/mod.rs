//! Recent flows without a trace collector. Each host keeps the hops it
//! handled last — one message through one cell: ids, cell, host, timing,
//! outcome and error message, never the payload — in a ring bounded in
//! count and bytes, and its latest failed hops in a smaller list of their
//! own, so that a run of successes does not push them out. Every host
//! answers a [`Query`] on [`SUBJECT`] (no queue group: each host answers
//! for itself), and [`query`] gathers the answers: what `cbs flows` shows.
//!
//! [`ring`] keeps a host's hops and answers from them, [`answering`] takes
//! the questions on the bus, [`ask`] asks every host and gathers.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bus::{is_inbox, BodyBus, Headers, Message, Subscription, INBOX_PREFIX};
use crate::envelope::Envelope;
use crate::error::{BusError, ErrorCode};

mod answering;
mod ask;
mod ring;
#[cfg(test)]
mod tests;

pub use self::answering::Answering;
pub use self::ask::query;
use self::ring::{cut, Kept};
pub use self::ring::{Flows, Recorder};

/// Where every host takes questions about its recent hops (`cbs-…`: the
/// host's own, out of cells' reach).
pub const SUBJECT: &str = "cbs-flows.query";

/// The hops a host keeps: the newest, at most this many…
pub const MAX_HOPS: usize = 10_000;
/// …and at most this many bytes ([`Hop`]'s own size plus its ids and
/// error message; cell, version and host are shared by every hop).
pub const MAX_BYTES: usize = 4 << 20;
/// The failed hops a host keeps besides, at most this many…
pub const MAX_FAILED: usize = 1_000;
/// …and at most this many bytes.
pub const MAX_FAILED_BYTES: usize = 1 << 20;
/// An error message is kept up to this many bytes, cut at a character
/// boundary and marked with `…`.
pub const MAX_ERROR_BYTES: usize = 512;
/// Correlation and message ids are kept up to this many bytes (an HTTP
/// caller's correlation id is at most 128); a query's correlation id is cut
/// the same way, so a longer id still finds its hops.
pub const MAX_ID_BYTES: usize = 128;
/// The most hops one host puts in an answer, whatever the query asks.
pub const MAX_ANSWER_HOPS: usize = 1_000;
/// The most bytes of one host's answer (NATS's default `max_payload` is
/// 1 MiB): past it the oldest matching hops are left out, and the answer
/// says so (`truncated`).
pub const MAX_ANSWER_BYTES: usize = 512 << 10;
/// The most answers [`query`] takes per question: anyone allowed to
/// publish to the inbox may answer.
pub const MAX_REPLIES: usize = 4_096;

/// One message handled by one cell on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub correlation_id: String,
    pub message_id: String,
    #[serde(with = "shared_text")]
    pub cell: Arc<str>,
    /// The cell's version that handled it.
    #[serde(with = "shared_text")]
    pub version: Arc<str>,
    /// The host's id.
    #[serde(with = "shared_text")]
    pub host: Arc<str>,
    /// When the message arrived, in milliseconds since the Unix epoch, by
    /// the host's clock.
    pub started_ms: u64,
    /// From arrival to reply, in microseconds (waiting for a free slot
    /// included).
    pub duration_us: u64,
    pub outcome: Outcome,
    /// The error's message, up to [`MAX_ERROR_BYTES`]. It is what the caller
    /// got: a contract violation names the offending value, a cell's own
    /// error says what the cell wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Hop {
    pub fn failed(&self) -> bool {
        self.outcome != Outcome::Ok
    }

    /// What the hop holds in memory, for the rings' byte bounds.
    fn size(&self) -> usize {
        std::mem::size_of::<Kept>()
            + self.correlation_id.capacity()
            + self.message_id.capacity()
            + self.error.as_ref().map_or(0, String::capacity)
    }
}

/// Text every hop of a cell shares, as a JSON string.
mod shared_text {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(text: &Arc<str>, to: S) -> Result<S::Ok, S::Error> {
        to.serialize_str(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(from).map(Arc::from)
    }
}

/// How a hop ended: `ok`, or the code of its error (`contract_violation`…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Outcome {
    Ok,
    Failed(ErrorCode),
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed(code) => code.as_str(),
        }
    }
}

impl From<Outcome> for &'static str {
    fn from(outcome: Outcome) -> Self {
        outcome.as_str()
    }
}

impl TryFrom<String> for Outcome {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        if name == "ok" {
            return Ok(Self::Ok);
        }
        ErrorCode::parse(&name)
            .map(Self::Failed)
            .ok_or_else(|| format!("{name:?} is neither \"ok\" nor an error code"))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to find: every field narrows; none at all takes the latest hops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Only this flow's hops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Only failed hops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    /// Only this cell's hops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    /// The newest this many (at most, and by default, [`MAX_ANSWER_HOPS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Query {
    /// The hops of one flow.
    pub fn flow(correlation_id: impl Into<String>) -> Self {
        Self {
            correlation_id: Some(correlation_id.into()),
            ..Self::default()
        }
    }

    /// The latest failed hops.
    pub fn failed() -> Self {
        Self {
            failed: true,
            ..Self::default()
        }
    }

    /// How many hops an answer holds at most.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(MAX_ANSWER_HOPS).min(MAX_ANSWER_HOPS)
    }

    pub fn matches(&self, hop: &Hop) -> bool {
        (!self.failed || hop.failed())
            && self
                .correlation_id
                .as_deref()
                .is_none_or(|id| hop.correlation_id == cut(id, MAX_ID_BYTES))
            && self.cell.as_deref().is_none_or(|cell| *hop.cell == *cell)
    }
}

/// One host's answer: its matching hops in the order they ended, or why
/// it refused the question.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub host: String,
    #[serde(default)]
    pub hops: Vec<Hop>,
    /// Whether older matching hops were left out to keep the answer within
    /// [`MAX_ANSWER_BYTES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BusError>,
}
