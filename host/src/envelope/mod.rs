//! The envelope: one JSON object per message, the same in every language and
//! on every transport; [`codec`] maps it to and from bus messages.

pub mod codec;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::error::{BusError, ErrorCode};

/// Envelope format version this host speaks.
pub const ENVELOPE_VERSION: u32 = 1;

/// Envelope header names. The correlation id and trace context are also
/// mirrored into transport headers ([`codec`]), so that tools show them
/// without parsing the body; the budget travels in the envelope only.
pub mod header {
    pub const CORRELATION_ID: &str = "cbs-correlation-id";
    pub const TRACEPARENT: &str = "traceparent";
    /// Time left for the whole flow, in milliseconds, when the message was
    /// sent: a callee never works past its caller's deadline.
    pub const BUDGET_MS: &str = "cbs-budget-ms";
}

/// One message. `payload` is kept as raw JSON text: the host validates it
/// against the contract and hands the text to the cell without re-encoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub v: u32,
    pub id: String,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    pub payload: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BusError>,
}

/// A new time-sortable message id (UUIDv7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

impl Envelope {
    /// The first message of a flow: a fresh id that is also the correlation id.
    pub fn new(subject: impl Into<String>, payload: Box<RawValue>) -> Self {
        let id = new_id();
        Self {
            v: ENVELOPE_VERSION,
            correlation_id: id.clone(),
            id,
            causation_id: None,
            subject: subject.into(),
            schema: None,
            headers: BTreeMap::new(),
            payload,
            error: None,
        }
    }

    /// A message caused by this one: same flow, new id.
    pub fn child(&self, subject: impl Into<String>, payload: Box<RawValue>) -> Self {
        let mut headers = BTreeMap::new();
        if let Some(tp) = self.headers.get(header::TRACEPARENT) {
            headers.insert(header::TRACEPARENT.to_owned(), tp.clone());
        }
        Self {
            v: ENVELOPE_VERSION,
            id: new_id(),
            correlation_id: self.correlation_id.clone(),
            causation_id: Some(self.id.clone()),
            subject: subject.into(),
            schema: None,
            headers,
            payload,
            error: None,
        }
    }

    /// The successful reply to this message.
    pub fn reply(&self, schema: Option<String>, payload: Box<RawValue>) -> Self {
        let mut reply = self.child(self.subject.clone(), payload);
        reply.schema = schema;
        reply
    }

    /// The failure reply to this message.
    pub fn error_reply(&self, error: BusError) -> Self {
        let mut reply = self.child(self.subject.clone(), null());
        reply.error = Some(error);
        reply
    }

    /// A failure reply to a message that could not be read at all; keeps the
    /// correlation id when the transport carried one.
    pub fn orphan_error(subject: &str, correlation_id: Option<&str>, error: BusError) -> Self {
        let mut reply = Self::new(subject, null());
        if let Some(cid) = correlation_id {
            reply.correlation_id = cid.to_owned();
        }
        reply.error = Some(error);
        reply
    }

    /// Parses and checks an envelope from the wire.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, BusError> {
        let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
            BusError::new(
                ErrorCode::InvalidInput,
                format!(
                    "not a CBS envelope ({e}); send a JSON object with v, id, \
                     correlation_id, subject and payload"
                ),
            )
        })?;
        env.check_text()?;
        if env.v != ENVELOPE_VERSION {
            return Err(BusError::new(
                ErrorCode::InvalidInput,
                format!(
                    "envelope version {} is not supported; this host speaks version {ENVELOPE_VERSION}",
                    env.v
                ),
            ));
        }
        Ok(env)
    }

    /// Ids and headers are single-line text: they travel in transport
    /// headers too, where a CR or LF would forge or break the header block.
    fn check_text(&self) -> Result<(), BusError> {
        let fields = [
            ("id", Some(self.id.as_str())),
            ("correlation_id", Some(self.correlation_id.as_str())),
            ("causation_id", self.causation_id.as_deref()),
        ];
        let headers = self.headers.iter().flat_map(|(k, v)| {
            [
                ("header name", Some(k.as_str())),
                ("header value", Some(v.as_str())),
            ]
        });
        for (field, text) in fields.into_iter().chain(headers) {
            let Some(c) = text.and_then(|t| t.chars().find(|c| c.is_control())) else {
                continue;
            };
            return Err(BusError::new(
                ErrorCode::InvalidInput,
                format!(
                    "envelope {field} contains the control character {c:?}; ids and headers are single-line text"
                ),
            ));
        }
        Ok(())
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    /// The reply's outcome: its payload, or the error it carries.
    pub fn into_result(self) -> Result<Box<RawValue>, BusError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn round_trips_and_keeps_payload_text() {
        let env = Envelope::new("cbs.logic.greet", raw(r#"{"name":"Ada"}"#));
        let back = Envelope::from_slice(&env.to_vec()).unwrap();
        assert_eq!(back.id, env.id);
        assert_eq!(back.correlation_id, env.id);
        assert_eq!(back.payload.get(), r#"{"name":"Ada"}"#);
    }

    #[test]
    fn child_keeps_flow_and_trace() {
        let mut parent = Envelope::new("cbs.a", raw("{}"));
        parent
            .headers
            .insert(header::TRACEPARENT.into(), "00-abc-def-01".into());
        let child = parent.child("cbs.b", raw("1"));
        assert_eq!(child.correlation_id, parent.correlation_id);
        assert_eq!(child.causation_id.as_deref(), Some(parent.id.as_str()));
        assert_ne!(child.id, parent.id);
        assert_eq!(child.headers[header::TRACEPARENT], "00-abc-def-01");
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_id();
        let b = new_id();
        assert!(a < b, "{a} should sort before {b}");
    }

    #[test]
    fn control_characters_in_ids_and_headers_are_invalid_input() {
        let env = |cid: &str, header: &str| {
            serde_json::json!({"v": 1, "id": "a", "correlation_id": cid, "subject": "cbs.x",
                "headers": {"traceparent": header}, "payload": 1})
            .to_string()
        };
        for bad in [
            env("a\r\nEvil: 1", "ok"),
            env("a", "00-x\n"),
            env("a\u{0}", "ok"),
        ] {
            let err = Envelope::from_slice(bad.as_bytes()).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidInput, "{bad}");
            assert!(err.message.contains("control character"), "{err}");
        }
        assert!(Envelope::from_slice(env("a", "00-x").as_bytes()).is_ok());
    }

    #[test]
    fn malformed_and_wrong_version_are_invalid_input() {
        for bad in [
            &b"not json"[..],
            br#"{"v":1}"#,
            br#"{"v":2,"id":"x","correlation_id":"x","subject":"s","payload":1}"#,
        ] {
            let err = Envelope::from_slice(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidInput, "{err}");
        }
        let err = Envelope::from_slice(br#"{"v":1}"#).unwrap_err();
        assert!(err.message.contains("missing field"), "{}", err.message);
    }
}
