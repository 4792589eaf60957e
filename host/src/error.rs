//! `BusError`: the closed set of failures a caller can see, each with a
//! message a person can act on.

use std::fmt;

use serde::{Deserialize, Serialize};
/// `ErrorCode::COUNT`: how many codes the closed set has.
pub use strum::EnumCount;

/// The closed set of failure codes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumIter,
    strum::EnumCount,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    /// The message itself is malformed or unreadable.
    InvalidInput,
    /// A payload breaks its JSON Schema, or a cell broke its manifest.
    ContractViolation,
    /// Nothing serves the addressed subject.
    NotFound,
    /// No reply within the deadline.
    Timeout,
    /// The bus or a dependency is down.
    Unavailable,
    /// The target's circuit breaker is open.
    CircuitOpen,
    /// The target is at its concurrency and queue limits.
    Capacity,
    /// The cell trapped, panicked, crashed or hit a resource limit.
    CellFailed,
    /// A bug in the host.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub fn all() -> impl Iterator<Item = ErrorCode> {
        <Self as strum::IntoEnumIterator>::iter()
    }

    /// The code's position in declaration order, below [`ErrorCode::COUNT`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The HTTP-like status of the NATS micro-service error convention.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidInput => 400,
            Self::NotFound => 404,
            Self::ContractViolation => 422,
            Self::Capacity => 429,
            Self::CellFailed | Self::Internal => 500,
            Self::Unavailable | Self::CircuitOpen => 503,
            Self::Timeout => 504,
        }
    }

    /// The wire name, e.g. `invalid_input`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The code of a wire name; `None` for a name outside the closed set.
    pub fn parse(name: &str) -> Option<Self> {
        name.parse().ok()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure a caller can see: a code from the closed set, a message a
/// person can act on, and optional machine-readable details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BusError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl BusError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The bus or a dependency is down: worth retrying later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_serialize_as_documented() {
        let names: Vec<&str> = ErrorCode::all().map(ErrorCode::as_str).collect();
        assert_eq!(names.len(), ErrorCode::COUNT);
        for code in ErrorCode::all() {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(ErrorCode::all().nth(code.index()), Some(code));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }
}
