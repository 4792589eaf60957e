//! The bucket `cbs-policy`: the lattice's signed policy under one key,
//! with the versions before it kept as the key's history.

use async_nats::jetstream::{self, kv};

use super::SignedPolicy;
use crate::bus::kv::{self as bucket, Limits};

pub const BUCKET: &str = "cbs-policy";
const KEY: &str = "current";
/// Versions kept for `cbs policy show --history`.
const HISTORY: i64 = 32;

/// The policy bucket, created on first use.
#[derive(Clone)]
pub struct PolicyStore {
    bucket: kv::Store,
}

/// The policy as stored, and the revision a change must replace.
pub struct Stored {
    pub policy: Result<SignedPolicy, String>,
    pub revision: u64,
}

impl PolicyStore {
    pub async fn open(client: &async_nats::Client) -> anyhow::Result<Self> {
        Self::open_js(&jetstream::new(client.clone())).await
    }

    pub async fn open_js(js: &jetstream::Context) -> anyhow::Result<Self> {
        let mut limits = Limits::history(HISTORY);
        limits.max_value_bytes = Some(i32::try_from(4 * super::MAX_BYTES).unwrap_or(i32::MAX));
        Ok(Self {
            bucket: bucket::open(js, BUCKET, limits).await?,
        })
    }

    /// The stored policy (or why the stored value is none), if any.
    pub async fn get(&self) -> anyhow::Result<Option<Stored>> {
        let entry = self
            .bucket
            .entry(KEY)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {BUCKET}/{KEY}: {e}"))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| Stored {
                policy: SignedPolicy::from_slice(&e.value).map_err(|e| format!("{e:#}")),
                revision: e.revision,
            }))
    }

    /// Replaces the policy stored at `revision` (none: no policy yet);
    /// refused when another change came first.
    pub async fn set(&self, policy: &SignedPolicy, revision: Option<u64>) -> anyhow::Result<u64> {
        let value = serde_json::to_vec(policy)?;
        let written = match revision {
            Some(revision) => self
                .bucket
                .update(KEY, value.into(), revision)
                .await
                .map_err(|e| e.to_string()),
            None => self
                .bucket
                .create(KEY, value.into())
                .await
                .map_err(|e| e.to_string()),
        };
        written.map_err(|e| {
            anyhow::anyhow!("cannot write {BUCKET}/{KEY}: {e} (did another `cbs policy set` come first? read it again with `cbs policy show`)")
        })
    }

    /// Every version still kept, oldest first; values that are not a
    /// stored policy are skipped.
    pub async fn history(&self) -> anyhow::Result<Vec<SignedPolicy>> {
        use futures_util::StreamExt;
        let mut entries = self
            .bucket
            .history(KEY)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {BUCKET}: {e}"))?;
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| anyhow::anyhow!("cannot read {BUCKET}: {e}"))?;
            if let Ok(policy) = SignedPolicy::from_slice(&entry.value) {
                out.push(policy);
            }
        }
        Ok(out)
    }

    /// Follows the policy: the stored one first, then each change.
    pub async fn watch(&self) -> anyhow::Result<kv::Watch> {
        self.bucket
            .watch_with_history(KEY)
            .await
            .map_err(|e| anyhow::anyhow!("cannot watch {BUCKET}: {e}"))
    }
}
