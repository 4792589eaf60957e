//! The frames of the sidecar protocol (docs/sidecar-protocol.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::{BusError, Envelope, ErrorCode};

/// Protocol versions this host speaks.
pub const PROTOCOL_MIN: u32 = 1;
pub const PROTOCOL_MAX: u32 = 1;

/// Host → sidecar.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToSidecar<'a> {
    Hello {
        protocol: Versions,
        max_frame_bytes: usize,
        cell: CellRef<'a>,
        /// The least severe level the host logs: a process may drop `log`
        /// frames below it instead of sending them.
        log_level: &'static str,
    },
    Handle {
        id: u64,
        deadline_ms: u64,
        envelope: &'a Envelope,
    },
    Response {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a BusError>,
    },
    Ping {
        id: u64,
    },
    Shutdown {
        grace_ms: u64,
    },
}

#[derive(Serialize)]
pub struct Versions {
    pub min: u32,
    pub max: u32,
}

#[derive(Serialize)]
pub struct CellRef<'a> {
    pub id: &'a str,
    pub version: &'a str,
}

/// Sidecar → host. Unknown types are ignored.
pub enum FromSidecar {
    Describe {
        protocol: u32,
        cell: Described,
    },
    Reply {
        id: u64,
        payload: Option<Box<RawValue>>,
        schema: Option<String>,
        headers: BTreeMap<String, String>,
        error: Option<WireError>,
    },
    Request {
        id: u64,
        parent: u64,
        cell: String,
        payload: Box<RawValue>,
        timeout_ms: Option<u64>,
    },
    Publish {
        id: u64,
        parent: u64,
        subject: String,
        payload: Box<RawValue>,
    },
    /// An operation on the cell's key-value state.
    State {
        id: u64,
        parent: u64,
        op: StateOp,
    },
    Pong {
        id: u64,
    },
    /// A call frame the host answers with an error, for that call only (a
    /// `request` or `publish` without a payload, or with `null`).
    Refused {
        id: u64,
        message: String,
    },
    Log {
        level: String,
        message: String,
        parent: Option<u64>,
    },
    Unknown,
}

/// Every field any inbound frame has. serde's tagged enums buffer their
/// content, which `RawValue` payloads cannot be read from, so frames are
/// read flat and then sorted by `type`.
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    parent: Option<u64>,
    #[serde(default)]
    protocol: Option<u32>,
    #[serde(default)]
    cell: Option<Box<RawValue>>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    error: Option<WireError>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    key: Option<String>,
    /// A state value, base64.
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    delta: Option<u64>,
    #[serde(default)]
    cursor: Option<u64>,
}

/// The fields of a `state` frame.
struct StateFields {
    op: Option<String>,
    key: Option<String>,
    value: Option<String>,
    delta: Option<u64>,
    cursor: Option<u64>,
}

/// A `state` frame's operation (docs/sidecar-protocol.md, section 5).
#[derive(Debug, PartialEq, Eq)]
pub enum StateOp {
    Get {
        key: String,
    },
    Set {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    Exists {
        key: String,
    },
    Keys {
        cursor: Option<u64>,
    },
    Increment {
        key: String,
        delta: u64,
    },
    /// An op this host does not know: answered with `invalid_input`, so a
    /// newer SDK fails one call, not its process.
    Unknown(String),
}

impl StateOp {
    fn parse(w: StateFields) -> Result<Self, String> {
        let op = w.op.ok_or("a `state` frame without `op`")?;
        let missing = format!("a `state` `{op}` frame without `key`");
        let key = || w.key.clone().ok_or(missing.clone());
        Ok(match op.as_str() {
            "get" => Self::Get { key: key()? },
            "delete" => Self::Delete { key: key()? },
            "exists" => Self::Exists { key: key()? },
            "keys" => Self::Keys { cursor: w.cursor },
            "increment" => Self::Increment {
                key: key()?,
                delta: w.delta.unwrap_or(1),
            },
            "set" => {
                let key = key()?;
                let value = w.value.ok_or("a `state` `set` frame without `value`")?;
                let value = data_encoding::BASE64
                    .decode(value.as_bytes())
                    .map_err(|e| format!("a `state` `set` value is not base64: {e}"))?;
                Self::Set { key, value }
            }
            _ => Self::Unknown(op),
        })
    }
}

impl FromSidecar {
    /// Parses one frame body.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let w: Wire = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let need = |field: &str| format!("a `{}` frame without `{field}`", w.kind);
        let id = || w.id.ok_or_else(|| need("id"));
        Ok(match w.kind.as_str() {
            "describe" => {
                let cell = w.cell.as_ref().ok_or_else(|| need("cell"))?;
                Self::Describe {
                    protocol: w.protocol.ok_or_else(|| need("protocol"))?,
                    cell: serde_json::from_str(cell.get())
                        .map_err(|e| format!("bad `cell`: {e}"))?,
                }
            }
            "reply" => Self::Reply {
                id: id()?,
                payload: w.payload,
                schema: w.schema,
                headers: w.headers,
                error: w.error,
            },
            "request" | "publish" if w.payload.is_none() => Self::Refused {
                id: id()?,
                message: format!(
                    "a `{}` frame needs a payload: JSON null (or none) is not one",
                    w.kind
                ),
            },
            "request" => Self::Request {
                id: id()?,
                parent: w.parent.ok_or_else(|| need("parent"))?,
                cell: serde_json::from_str(w.cell.as_ref().ok_or_else(|| need("cell"))?.get())
                    .map_err(|e| format!("bad `cell`: {e}"))?,
                payload: w.payload.ok_or_else(|| need("payload"))?,
                timeout_ms: w.timeout_ms,
            },
            "publish" => Self::Publish {
                id: id()?,
                parent: w.parent.ok_or_else(|| need("parent"))?,
                subject: w.subject.ok_or_else(|| need("subject"))?,
                payload: w.payload.ok_or_else(|| need("payload"))?,
            },
            "state" => Self::State {
                id: id()?,
                parent: w.parent.ok_or_else(|| need("parent"))?,
                op: StateOp::parse(StateFields {
                    op: w.op,
                    key: w.key,
                    value: w.value,
                    delta: w.delta,
                    cursor: w.cursor,
                })?,
            },
            "pong" => Self::Pong { id: id()? },
            "log" => Self::Log {
                level: w.level.unwrap_or_default(),
                message: w.message.ok_or_else(|| need("message"))?,
                parent: w.parent,
            },
            _ => Self::Unknown,
        })
    }
}

#[derive(Deserialize)]
pub struct Described {
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub input_schema: Option<String>,
    #[serde(default)]
    pub output_schema: Option<String>,
}

/// An error as a sidecar sends it: an unknown code becomes `internal`.
#[derive(Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

impl From<WireError> for BusError {
    fn from(e: WireError) -> Self {
        let code = ErrorCode::parse(&e.code).unwrap_or(ErrorCode::Internal);
        BusError {
            code,
            message: e.message,
            details: e.details,
        }
    }
}

pub fn encode(frame: &ToSidecar<'_>) -> Vec<u8> {
    serde_json::to_vec(frame).expect("frames always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_frames_parse_and_keep_payload_text() {
        let reply =
            FromSidecar::parse(br#"{"type":"reply","id":3,"payload":{"a":[1, 2]}}"#).unwrap();
        assert!(
            matches!(reply, FromSidecar::Reply { id: 3, payload: Some(ref p), .. } if p.get() == r#"{"a":[1, 2]}"#)
        );
        let request = FromSidecar::parse(
            br#"{"type":"request","id":1,"parent":2,"cell":"logic.greet","payload":{}}"#,
        )
        .unwrap();
        assert!(
            matches!(request, FromSidecar::Request { ref cell, parent: 2, .. } if cell == "logic.greet")
        );
        assert!(matches!(
            FromSidecar::parse(br#"{"type":"future-thing","x":1}"#).unwrap(),
            FromSidecar::Unknown
        ));
        let err = FromSidecar::parse(br#"{"type":"reply"}"#).err().unwrap();
        assert!(err.contains("without `id`"), "{err}");
        assert!(FromSidecar::parse(b"[1]").is_err());
    }

    #[test]
    fn state_frames_parse_and_refuse_what_is_missing() {
        let set = FromSidecar::parse(
            br#"{"type":"state","id":1,"parent":2,"op":"set","key":"k","value":"aGk="}"#,
        )
        .unwrap();
        assert!(matches!(
            set,
            FromSidecar::State { op: StateOp::Set { ref key, ref value }, .. } if key == "k" && value == b"hi"
        ));
        let unknown = br#"{"type":"state","id":1,"parent":2,"op":"drop_all"}"#;
        assert!(matches!(
            FromSidecar::parse(unknown).unwrap(),
            FromSidecar::State { op: StateOp::Unknown(ref op), .. } if op == "drop_all"
        ));
        for bad in [
            &br#"{"type":"state","id":1,"parent":2,"op":"get"}"#[..],
            br#"{"type":"state","id":1,"parent":2,"op":"set","key":"k","value":"!"}"#,
            br#"{"type":"state","id":1,"op":"keys"}"#,
        ] {
            assert!(
                FromSidecar::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unknown_error_codes_become_internal() {
        let e: BusError = WireError {
            code: "weird".into(),
            message: "m".into(),
            details: None,
        }
        .into();
        assert_eq!(e.code, ErrorCode::Internal);
    }
}
