//! Cell state on NATS: a JetStream key-value bucket per cell, named by the
//! host from the cell id (`CBS_STATE_<id>_<hash>`), with one value per key
//! and the grant's limits set on the bucket's stream, so the server
//! enforces them across every host serving the cell.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

use super::{Bucket, StateBackend, KEYS_PAGE};
use crate::bus::kv::{self as bucket, Limits};
use crate::envelope::BusError;
use crate::manifest::StateGrant;

/// Attempts of an increment against concurrent writers.
const INCREMENT_ATTEMPTS: usize = 32;

pub struct JetStreamState {
    js: jetstream::Context,
}

impl JetStreamState {
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }
}

/// The bucket of `cell_id`: readable, and distinct for distinct ids (the
/// hash tells apart ids that differ only in `.` against `_`).
pub fn bucket_name(cell_id: &str) -> String {
    let readable: String = cell_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = Sha256::digest(cell_id.as_bytes());
    format!("CBS_STATE_{readable}_{}", hex::encode(&hash[..4]))
}

#[async_trait]
impl StateBackend for JetStreamState {
    async fn open(&self, cell_id: &str, grant: StateGrant) -> Result<Arc<dyn Bucket>, BusError> {
        let limits = Limits {
            history: 1,
            max_bytes: i64::try_from(grant.max_bytes).ok(),
            // The stream limits whole messages: the value plus the key in
            // the subject, and headers.
            max_value_bytes: i32::try_from(u64::from(grant.max_value_bytes) + 4096).ok(),
            max_age: None,
        };
        let store = bucket::open(&self.js, &bucket_name(cell_id), limits)
            .await
            .map_err(|e| super::unavailable(cell_id, format!("{e:#}")))?;
        Ok(Arc::new(JetStreamBucket {
            cell_id: cell_id.to_owned(),
            grant,
            store,
        }))
    }

    fn kind(&self) -> &'static str {
        "jetstream"
    }
}

struct JetStreamBucket {
    cell_id: String,
    grant: StateGrant,
    store: kv::Store,
}

impl JetStreamBucket {
    /// A failed write: `capacity` when the bucket is full, else `unavailable`.
    fn write_error(&self, e: impl std::fmt::Display) -> BusError {
        let text = e.to_string();
        if text.contains("maximum bytes") || text.contains("resource limits exceeded") {
            super::full(&self.cell_id, self.grant)
        } else {
            super::unavailable(&self.cell_id, text)
        }
    }
}

#[async_trait]
impl Bucket for JetStreamBucket {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BusError> {
        let value = self
            .store
            .get(encode_key(key))
            .await
            .map_err(|e| super::unavailable(&self.cell_id, e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), BusError> {
        self.store
            .put(encode_key(key), value.into())
            .await
            .map(drop)
            .map_err(|e| self.write_error(e))
    }

    async fn delete(&self, key: &str) -> Result<(), BusError> {
        // Purge, not delete: with one value per key both leave a marker, and
        // a purge marker is the smaller.
        self.store
            .purge(encode_key(key))
            .await
            .map_err(|e| self.write_error(e))
    }

    async fn keys(&self, cursor: u64) -> Result<(Vec<String>, Option<u64>), BusError> {
        let fail = |e: &dyn std::fmt::Display| super::unavailable(&self.cell_id, e);
        let mut keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|e| fail(&e))?
            .try_filter_map(|k| async move { Ok(decode_key(&k)) })
            .try_collect()
            .await
            .map_err(|e| fail(&e))?;
        keys.sort_unstable();
        let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
        let page: Vec<String> = keys.iter().skip(skip).take(KEYS_PAGE).cloned().collect();
        let next =
            (skip.saturating_add(page.len()) < keys.len()).then(|| cursor + page.len() as u64);
        Ok((page, next))
    }

    async fn increment(&self, key: &str, delta: u64) -> Result<u64, BusError> {
        let subject_key = encode_key(key);
        for _ in 0..INCREMENT_ATTEMPTS {
            let entry = self
                .store
                .entry(subject_key.clone())
                .await
                .map_err(|e| super::unavailable(&self.cell_id, e))?;
            let live = entry.filter(|e| e.operation == kv::Operation::Put);
            let now = super::parse_counter(key, live.as_ref().map(|e| &e.value[..]))?;
            let sum = super::add(key, now, delta)?;
            let value = sum.to_string().into_bytes().into();
            // Compare-and-set on the revision read: a concurrent writer
            // makes it fail, and the loop reads again.
            let written = match &live {
                Some(e) => (self
                    .store
                    .update(subject_key.clone(), value, e.revision)
                    .await)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => (self.store.create(subject_key.clone(), value).await)
                    .map(drop)
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(()) => return Ok(sum),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(self.write_error(e)),
            }
        }
        Err(super::unavailable(
            &self.cell_id,
            format!("key {key:?} changed under {INCREMENT_ATTEMPTS} increments in a row"),
        ))
    }
}

/// Whether a failed compare-and-set lost to another writer.
fn is_conflict(text: &str) -> bool {
    text.contains("wrong last sequence")
        || text.contains("already exists")
        || text.contains("key exists")
}

/// NATS key-value keys allow only `[-/_=.A-Za-z0-9]`, and no leading or
/// trailing `.`: every other byte, `.` and `=` become `=XX` (hex), so any
/// key round-trips and readable keys stay readable.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'/' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The key [`encode_key`] made `encoded` from; `None` for a key not made
/// by it.
pub fn decode_key(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_nats_alphabet() {
        for key in ["plain", "user:42", "a.b", ".x.", "=", "ä ö/ü", "0193-abc"] {
            let encoded = encode_key(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=".contains(&b)),
                "{encoded}"
            );
            assert_eq!(decode_key(&encoded).as_deref(), Some(key));
        }
        assert_eq!(decode_key("=Z"), None);
    }

    #[test]
    fn bucket_names_differ_for_ids_that_look_alike() {
        assert_ne!(bucket_name("a.b"), bucket_name("a_b"));
        assert!(bucket_name("logic.greet").starts_with("CBS_STATE_logic_greet_"));
    }
}
