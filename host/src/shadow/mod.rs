//! Shadow replay (`cbs record`, `cbs replay --shadow`; ADR 0026): hosts
//! serving a cell keep, while a recording is desired, each request with its
//! reply and the replies of the calls the cell made for it ([`tape`]), as
//! [`Record`]s in a JetStream stream with limits; a candidate release then
//! answers the same requests in a host of its own, its calls answered from
//! the recording, and each reply is compared with the recorded one, fields
//! the output schema marks `"x-cbs-volatile": true` left out
//! ([`compare`]; the replay is [`crate::host::shadow`], a host of its own).

pub mod compare;
pub mod stream;
pub mod tape;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::BusError;

/// The most bytes one record may take; a larger one is not kept (NATS's
/// default `max_payload` is 1 MiB).
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// The most calls kept for one request.
pub const MAX_CALLS: usize = 64;

/// A recording in the desired state of a cell: the hosts serving it keep
/// its requests until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    pub id: String,
    pub until_ms: u64,
}

/// One request the cell handled, with what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The recording it belongs to.
    pub recording: String,
    pub host: String,
    pub version: String,
    pub at_ms: u64,
    pub request: Value,
    pub reply: Answer,
    /// The calls the cell made for it, in order.
    #[serde(default)]
    pub calls: Vec<Call>,
}

/// A call the cell made, and the reply it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub cell: String,
    pub request: Value,
    pub reply: Answer,
}

/// A reply: a payload, or a typed error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Ok(Value),
    Error(BusError),
}

impl Answer {
    pub fn of(result: Result<Value, BusError>) -> Self {
        match result {
            Ok(v) => Self::Ok(v),
            Err(e) => Self::Error(e),
        }
    }
}

/// The subject a cell's records are published on.
pub fn subject(cell: &str) -> String {
    format!("cbs-record.{cell}")
}

/// The stream that keeps a cell's records.
pub fn stream(cell: &str) -> String {
    format!("CBS_RECORD_{}", crate::subjects::stream_token(cell))
}
