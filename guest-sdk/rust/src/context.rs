//! What a handler knows about the message it handles, and how it reaches
//! other cells and the host log.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::cbs::cell::{bus, log, types as wit};
use crate::CellError;

pub use log::Level;

/// The message being handled: ids, headers, and the cell's way out.
pub struct Context {
    envelope: wit::Envelope,
}

impl Context {
    pub(crate) fn from_envelope(envelope: wit::Envelope) -> Self {
        Self { envelope }
    }

    /// A context for unit tests of a handler, outside any host: ids are
    /// fixed, there are no headers, and `request`, `publish` and `log` must
    /// not be called (they exist only inside a host).
    pub fn for_test() -> Self {
        Self::from_envelope(wit::Envelope {
            v: 1,
            id: "test-message".to_owned(),
            correlation_id: "test-correlation".to_owned(),
            causation_id: None,
            subject: String::new(),
            schema: None,
            headers: Vec::new(),
            payload: "null".to_owned(),
        })
    }

    /// Shared by every message of this flow.
    pub fn correlation_id(&self) -> &str {
        &self.envelope.correlation_id
    }

    /// Id of the message being handled.
    pub fn message_id(&self) -> &str {
        &self.envelope.id
    }

    /// The cell's own key-value state (`[capabilities.state]` in
    /// `cell.toml`); `contract_violation` when not granted.
    pub fn state(&self) -> Result<crate::State, CellError> {
        crate::State::open()
    }

    /// A header of the incoming envelope (`traceparent`, tenant, ...).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.envelope
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Request/reply to another cell by id. The host allows only the cells
    /// listed in `[capabilities] calls` of `cell.toml`, and carries the
    /// correlation id and deadline along.
    pub fn request<I: Serialize, O: DeserializeOwned>(
        &self,
        cell_id: &str,
        input: &I,
    ) -> Result<O, CellError> {
        self.request_with_timeout(cell_id, input, 0)
    }

    /// As [`Context::request`], with a timeout in milliseconds (0: the host's
    /// default, never past this message's own deadline).
    pub fn request_with_timeout<I: Serialize, O: DeserializeOwned>(
        &self,
        cell_id: &str,
        input: &I,
        timeout_ms: u32,
    ) -> Result<O, CellError> {
        let payload = serde_json::to_string(input)
            .map_err(|e| CellError::internal(format!("request to {cell_id}: {e}")))?;
        let reply = bus::request(cell_id, &payload, timeout_ms).map_err(CellError::from_wit)?;
        serde_json::from_str(&reply).map_err(|e| {
            CellError::internal(format!(
                "reply of {cell_id} does not fit the expected type: {e}"
            ))
        })
    }

    /// Fire-and-forget publish to a subject listed in `[capabilities] publish`.
    pub fn publish<P: Serialize>(&self, subject: &str, payload: &P) -> Result<(), CellError> {
        let payload = serde_json::to_string(payload)
            .map_err(|e| CellError::internal(format!("publish to {subject}: {e}")))?;
        bus::publish(subject, &payload).map_err(CellError::from_wit)
    }

    /// Log into the host's log, tagged with this cell and correlation id.
    pub fn log(&self, level: Level, message: &str) {
        log::log(level, message);
    }

    pub fn info(&self, message: &str) {
        self.log(Level::Info, message);
    }

    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message);
    }
}
