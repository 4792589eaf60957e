//! `BusError` ↔ the WIT `cell-error`: the same closed set of codes on both
//! sides of the component boundary.

use super::bindings::cbs::cell::types;
use crate::envelope::{BusError, ErrorCode};

/// Host error → WIT error.
pub fn to_wit(e: BusError) -> types::CellError {
    use types::ErrorCode as W;
    let code = match e.code {
        ErrorCode::InvalidInput => W::InvalidInput,
        ErrorCode::ContractViolation => W::ContractViolation,
        ErrorCode::NotFound => W::NotFound,
        ErrorCode::Timeout => W::Timeout,
        ErrorCode::Unavailable => W::Unavailable,
        ErrorCode::CircuitOpen => W::CircuitOpen,
        ErrorCode::Capacity => W::Capacity,
        ErrorCode::CellFailed => W::CellFailed,
        ErrorCode::Internal => W::Internal,
    };
    types::CellError {
        code,
        message: e.message,
        details: e.details.map(|d| d.to_string()),
    }
}

/// WIT error → host error.
pub fn from_wit(e: types::CellError) -> BusError {
    use types::ErrorCode as W;
    let code = match e.code {
        W::InvalidInput => ErrorCode::InvalidInput,
        W::ContractViolation => ErrorCode::ContractViolation,
        W::NotFound => ErrorCode::NotFound,
        W::Timeout => ErrorCode::Timeout,
        W::Unavailable => ErrorCode::Unavailable,
        W::CircuitOpen => ErrorCode::CircuitOpen,
        W::Capacity => ErrorCode::Capacity,
        W::CellFailed => ErrorCode::CellFailed,
        W::Internal => ErrorCode::Internal,
    };
    let details = e
        .details
        .map(|d| serde_json::from_str(&d).unwrap_or(serde_json::Value::String(d)));
    BusError {
        code,
        message: e.message,
        details,
    }
}
