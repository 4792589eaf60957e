//! Typed cell failures, mirroring the host's `BusError` codes.

use crate::bindings::cbs::cell::types as wit;

pub use wit::ErrorCode;

/// A typed failure returned by a handler or by a call to another cell.
#[derive(Debug, Clone)]
pub struct CellError {
    pub code: ErrorCode,
    pub message: String,
    /// Extra machine-readable context (JSON).
    pub details: Option<serde_json::Value>,
}

impl CellError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// The input is well-formed but cannot be processed.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// A dependency of the cell is not available right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// A bug or an unexpected state inside the cell.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn into_wit(self) -> wit::CellError {
        wit::CellError {
            code: self.code,
            message: self.message,
            details: self.details.map(|d| d.to_string()),
        }
    }

    pub(crate) fn from_wit(e: wit::CellError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            details: e.details.and_then(|d| serde_json::from_str(&d).ok()),
        }
    }
}

impl std::fmt::Display for CellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for CellError {}
