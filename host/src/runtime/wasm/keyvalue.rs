//! The host side of `wasi:keyvalue` for wasm cells: the cell's own bucket
//! (`crate::state`), opened as `"default"`. Any other identifier is
//! `no-such-store`, and a cell without `[capabilities.state]` gets
//! `access-denied`: the bucket is the host's choice, never the guest's.
//!
//! Other failures are `other("<code>: <message>")` with a `BusError` code
//! (`invalid_input`, `capacity`, `unavailable`, `timeout`), which the SDKs
//! turn back into typed errors.

use std::future::Future;
use std::time::Instant;

use wasmtime::component::Resource;

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::sandbox::Sandbox;
use crate::envelope::{BusError, ErrorCode};
use crate::state::CellState;

/// The identifier of a cell's bucket (`""` is taken as the same).
pub const DEFAULT_BUCKET: &str = "default";
/// Keys per batch call.
const MAX_BATCH: usize = 1_000;

/// Every handle a cell opens is its one bucket, so handles carry no data
/// (representation 0) and nothing is kept per handle.
const BUCKET_REP: u32 = 0;

impl Sandbox {
    fn state(&self) -> Result<&CellState, store::Error> {
        self.outbound
            .state()
            .map_err(|_| store::Error::AccessDenied)
    }
}

/// Runs a state operation within the current message's deadline: a store
/// that does not answer cannot hold the instance past it.
async fn within<T>(
    deadline: Instant,
    op: impl Future<Output = Result<T, BusError>>,
) -> Result<T, store::Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, op).await {
        Ok(result) => result.map_err(to_wit),
        Err(_) => Err(to_wit(BusError::new(
            ErrorCode::Timeout,
            "the message's deadline passed during a state operation",
        ))),
    }
}

fn to_wit(e: BusError) -> store::Error {
    store::Error::Other(format!("{}: {}", e.code, e.message))
}

fn too_many(n: usize) -> store::Error {
    to_wit(BusError::new(
        ErrorCode::InvalidInput,
        format!("a batch of {n} keys is over the {MAX_BATCH} a call may carry"),
    ))
}

impl store::Host for Sandbox {
    async fn open(&mut self, identifier: String) -> Result<Resource<store::Bucket>, store::Error> {
        if identifier != DEFAULT_BUCKET && !identifier.is_empty() {
            return Err(store::Error::NoSuchStore);
        }
        self.outbound
            .state()
            .map_err(|_| store::Error::AccessDenied)?;
        Ok(Resource::new_own(BUCKET_REP))
    }
}

impl store::HostBucket for Sandbox {
    async fn get(
        &mut self,
        _: Resource<store::Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        within(self.deadline, self.state()?.get(&key)).await
    }

    async fn set(
        &mut self,
        _: Resource<store::Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        within(self.deadline, self.state()?.set(&key, value)).await
    }

    async fn delete(
        &mut self,
        _: Resource<store::Bucket>,
        key: String,
    ) -> Result<(), store::Error> {
        within(self.deadline, self.state()?.delete(&key)).await
    }

    async fn exists(
        &mut self,
        _: Resource<store::Bucket>,
        key: String,
    ) -> Result<bool, store::Error> {
        within(self.deadline, self.state()?.exists(&key)).await
    }

    async fn list_keys(
        &mut self,
        _: Resource<store::Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, store::Error> {
        let (keys, cursor) = within(self.deadline, self.state()?.keys(cursor)).await?;
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, _: Resource<store::Bucket>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl atomics::Host for Sandbox {
    async fn increment(
        &mut self,
        _: Resource<store::Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, store::Error> {
        within(self.deadline, self.state()?.increment(&key, delta)).await
    }
}

impl batch::Host for Sandbox {
    async fn get_many(
        &mut self,
        _: Resource<store::Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        if keys.len() > MAX_BATCH {
            return Err(too_many(keys.len()));
        }
        let s = self.state()?;
        within(self.deadline, async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                let value = s.get(&key).await?;
                found.push(value.map(|v| (key, v)));
            }
            Ok(found)
        })
        .await
    }

    async fn set_many(
        &mut self,
        _: Resource<store::Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), store::Error> {
        if key_values.len() > MAX_BATCH {
            return Err(too_many(key_values.len()));
        }
        let s = self.state()?;
        within(self.deadline, async move {
            for (key, value) in key_values {
                s.set(&key, value).await?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_many(
        &mut self,
        _: Resource<store::Bucket>,
        keys: Vec<String>,
    ) -> Result<(), store::Error> {
        if keys.len() > MAX_BATCH {
            return Err(too_many(keys.len()));
        }
        let s = self.state()?;
        within(self.deadline, async move {
            for key in &keys {
                s.delete(key).await?;
            }
            Ok(())
        })
        .await
    }
}
