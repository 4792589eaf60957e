//! Cell state: a key-value bucket per cell, granted by
//! `[capabilities.state]` and reached through `wasi:keyvalue` (wasm) or the
//! `state` frame (sidecar and Python workers).
//!
//! The host picks the bucket from the cell's id; a cell never names it, so
//! no cell can reach another's. Backends: a JetStream key-value bucket per
//! cell on NATS ([`jetstream`]), a redb file per cell in the host's data
//! folder in process ([`embedded`]). Both give the same errors:
//! `invalid_input` for a bad key or a value over `max_value_bytes`,
//! `capacity` when the cell's state would pass `max_bytes`, `unavailable`
//! when the store cannot be reached.

pub mod embedded;
pub mod jetstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::bus::BodyBus;
use crate::envelope::{BusError, ErrorCode};
use crate::manifest::{Manifest, StateGrant};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Keys per `keys` page.
pub const KEYS_PAGE: usize = 500;

/// JetStream buckets on a bus that has it (NATS), else files under
/// `data_dir`.
pub fn default_backend(bus: &dyn BodyBus, data_dir: &Path) -> Arc<dyn StateBackend> {
    match bus.jetstream() {
        Some(js) => Arc::new(jetstream::JetStreamState::new(js)),
        None => Arc::new(embedded::EmbeddedState::new(data_dir)),
    }
}

/// The host's data folder unless `--data-dir` says otherwise:
/// `$CBS_DATA_DIR`, else `$XDG_DATA_HOME/cbs`, else `~/.local/share/cbs`.
pub fn default_data_dir() -> PathBuf {
    crate::dirs::data()
}

/// Where cells' buckets live.
#[async_trait]
pub trait StateBackend: Send + Sync {
    /// Opens (creating it if needed) the bucket of `cell_id`.
    async fn open(&self, cell_id: &str, grant: StateGrant) -> Result<Arc<dyn Bucket>, BusError>;

    /// Short name for logs: `jetstream` or `embedded`.
    fn kind(&self) -> &'static str;
}

/// One cell's bucket. Keys are checked by [`CellState`] before they get
/// here; values are within `max_value_bytes`.
#[async_trait]
pub trait Bucket: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BusError>;
    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), BusError>;
    async fn delete(&self, key: &str) -> Result<(), BusError>;
    /// Keys in order, from position `cursor`, and the cursor of the next
    /// page (none after the last).
    async fn keys(&self, cursor: u64) -> Result<(Vec<String>, Option<u64>), BusError>;
    /// Adds `delta` to the decimal number at `key` (0 when absent) and
    /// returns the sum; atomic against other writers.
    async fn increment(&self, key: &str, delta: u64) -> Result<u64, BusError>;
}

/// One cell's state as its runtimes reach it: the grant's limits, checked
/// keys, and the bucket opened on first use (a store that is down at load
/// does not stop the cell from loading).
pub struct CellState {
    cell_id: String,
    grant: StateGrant,
    backend: Arc<dyn StateBackend>,
    bucket: OnceCell<Arc<dyn Bucket>>,
}

impl CellState {
    /// The state of `manifest`'s cell, when its manifest grants one.
    pub fn for_cell(manifest: &Manifest, backend: &Arc<dyn StateBackend>) -> Option<Arc<Self>> {
        let grant = manifest.capabilities.state?;
        Some(Arc::new(Self {
            cell_id: manifest.id.clone(),
            grant,
            backend: backend.clone(),
            bucket: OnceCell::new(),
        }))
    }

    pub fn grant(&self) -> StateGrant {
        self.grant
    }

    async fn bucket(&self) -> Result<&Arc<dyn Bucket>, BusError> {
        self.bucket
            .get_or_try_init(|| self.backend.open(&self.cell_id, self.grant))
            .await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BusError> {
        check_key(key)?;
        self.bucket().await?.get(key).await
    }

    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), BusError> {
        check_key(key)?;
        if value.len() as u64 > u64::from(self.grant.max_value_bytes) {
            return Err(BusError::new(
                ErrorCode::InvalidInput,
                format!(
                    "a value of {} bytes is over this cell's max_value_bytes ({}) in [capabilities.state]",
                    value.len(),
                    self.grant.max_value_bytes
                ),
            ));
        }
        self.bucket().await?.set(key, value).await
    }

    pub async fn delete(&self, key: &str) -> Result<(), BusError> {
        check_key(key)?;
        self.bucket().await?.delete(key).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, BusError> {
        Ok(self.get(key).await?.is_some())
    }

    pub async fn keys(&self, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), BusError> {
        self.bucket().await?.keys(cursor.unwrap_or(0)).await
    }

    pub async fn increment(&self, key: &str, delta: u64) -> Result<u64, BusError> {
        check_key(key)?;
        self.bucket().await?.increment(key, delta).await
    }
}

/// Keys are non-empty UTF-8 of at most [`MAX_KEY_BYTES`] without control
/// characters: the same rule on every backend.
pub fn check_key(key: &str) -> Result<(), BusError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(BusError::new(
            ErrorCode::InvalidInput,
            format!(
                "state key {:?} is not allowed: use 1 to {MAX_KEY_BYTES} bytes without control characters",
                truncate(key)
            ),
        ));
    }
    Ok(())
}

fn truncate(key: &str) -> &str {
    let mut end = key.len().min(64);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// The value an increment finds: absent is 0, else a decimal number.
pub(crate) fn parse_counter(key: &str, value: Option<&[u8]>) -> Result<u64, BusError> {
    let Some(bytes) = value else { return Ok(0) };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            BusError::new(
                ErrorCode::InvalidInput,
                format!(
                    "state key {:?} does not hold a decimal number to increment",
                    truncate(key)
                ),
            )
        })
}

pub(crate) fn add(key: &str, now: u64, delta: u64) -> Result<u64, BusError> {
    now.checked_add(delta).ok_or_else(|| {
        BusError::new(
            ErrorCode::InvalidInput,
            format!("incrementing state key {:?} would pass 2^64", truncate(key)),
        )
    })
}

/// The error for a cell whose state would pass `max_bytes`.
pub(crate) fn full(cell_id: &str, grant: StateGrant) -> BusError {
    BusError::new(
        ErrorCode::Capacity,
        format!(
            "the state of cell {cell_id} is full: max_bytes = {} in [capabilities.state]; delete keys or raise it",
            grant.max_bytes
        ),
    )
}

pub(crate) fn unavailable(cell_id: &str, what: impl std::fmt::Display) -> BusError {
    BusError::unavailable(format!(
        "the state store of cell {cell_id} cannot be reached: {what}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_and_printable() {
        assert!(check_key("user:42/ä").is_ok());
        for bad in ["", "a\nb", &"k".repeat(MAX_KEY_BYTES + 1)] {
            assert_eq!(check_key(bad).unwrap_err().code, ErrorCode::InvalidInput);
        }
    }

    #[test]
    fn counters_are_decimal_and_do_not_wrap() {
        assert_eq!(parse_counter("k", None).unwrap(), 0);
        assert_eq!(parse_counter("k", Some(b"41")).unwrap(), 41);
        assert!(parse_counter("k", Some(b"x")).is_err());
        assert!(add("k", u64::MAX, 1).is_err());
    }
}
