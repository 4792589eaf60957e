//! The cell's own key-value state, through the standard `wasi:keyvalue`
//! interface: granted by `[capabilities.state]` in `cell.toml`, private to
//! the cell (the host picks the bucket), kept across messages, instances
//! and restarts.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::wasi::keyvalue::{atomics, store};
use crate::{CellError, ErrorCode};

/// The cell's bucket. Get one with [`crate::Context::state`].
pub struct State {
    bucket: store::Bucket,
}

impl State {
    pub(crate) fn open() -> Result<Self, CellError> {
        let bucket = store::open("default").map_err(from_wit)?;
        Ok(Self { bucket })
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CellError> {
        self.bucket.get(key).map_err(from_wit)
    }

    /// Sets `key` to `value`. Fails with `invalid_input` past
    /// `max_value_bytes` and `capacity` past the cell's `max_bytes`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), CellError> {
        self.bucket.set(key, value).map_err(from_wit)
    }

    /// The JSON value at `key`, if any.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CellError> {
        let Some(bytes) = self.get(key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CellError::internal(format!("state key {key:?} is not the JSON expected: {e}"))
        })
    }

    /// Sets `key` to `value` as JSON.
    pub fn set_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), CellError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| CellError::internal(format!("cannot serialize state value: {e}")))?;
        self.set(key, &bytes)
    }

    /// Deletes `key` (nothing when absent).
    pub fn delete(&self, key: &str) -> Result<(), CellError> {
        self.bucket.delete(key).map_err(from_wit)
    }

    pub fn exists(&self, key: &str) -> Result<bool, CellError> {
        self.bucket.exists(key).map_err(from_wit)
    }

    /// Every key, in order, page by page underneath.
    pub fn keys(&self) -> Result<Vec<String>, CellError> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.bucket.list_keys(cursor).map_err(from_wit)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Adds `delta` to the decimal counter at `key` (0 when absent) and
    /// returns the sum, atomically.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, CellError> {
        atomics::increment(&self.bucket, key, delta).map_err(from_wit)
    }
}

/// `wasi:keyvalue` error → typed error. The host writes other failures as
/// `"<code>: <message>"` with a `BusError` code.
fn from_wit(e: store::Error) -> CellError {
    match e {
        store::Error::NoSuchStore => CellError::new(ErrorCode::NotFound, "no such state store"),
        store::Error::AccessDenied => CellError::new(
            ErrorCode::ContractViolation,
            "this cell has no state: add [capabilities.state] to its cell.toml",
        ),
        store::Error::Other(text) => {
            let (code, message) = text.split_once(": ").unwrap_or(("internal", &text));
            CellError::new(parse_code(code), message)
        }
    }
}

fn parse_code(code: &str) -> ErrorCode {
    match code {
        "invalid_input" => ErrorCode::InvalidInput,
        "contract_violation" => ErrorCode::ContractViolation,
        "not_found" => ErrorCode::NotFound,
        "timeout" => ErrorCode::Timeout,
        "unavailable" => ErrorCode::Unavailable,
        "circuit_open" => ErrorCode::CircuitOpen,
        "capacity" => ErrorCode::Capacity,
        "cell_failed" => ErrorCode::CellFailed,
        _ => ErrorCode::Internal,
    }
}
