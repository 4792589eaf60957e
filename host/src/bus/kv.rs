//! Opening JetStream key-value buckets.
//!
//! The bucket's stream is made here, with the settings `async-nats` uses
//! for buckets, because its `create_key_value` first reads the account
//! info, which it cannot parse from nats-server 2.9 (no `reserved_memory`
//! field).

use async_nats::jetstream::{self, kv, stream};

/// Limits of a bucket; `None` leaves the server's default.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Values kept per key.
    pub history: i64,
    /// All the bucket's messages together, in bytes.
    pub max_bytes: Option<i64>,
    /// The largest message, in bytes.
    pub max_value_bytes: Option<i32>,
    /// Values older than this go (none: kept).
    pub max_age: Option<std::time::Duration>,
}

impl Limits {
    pub fn history(history: i64) -> Self {
        Self {
            history,
            max_bytes: None,
            max_value_bytes: None,
            max_age: None,
        }
    }

    pub fn max_age(mut self, age: std::time::Duration) -> Self {
        self.max_age = Some(age);
        self
    }
}

/// Opens bucket `bucket`, creating its stream when missing.
pub async fn open(
    js: &jetstream::Context,
    bucket: &str,
    limits: Limits,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: limits.history,
        max_bytes: limits.max_bytes.unwrap_or(-1),
        max_message_size: limits.max_value_bytes.unwrap_or(-1),
        max_age: limits.max_age.unwrap_or_default(),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    let created = js.create_stream(config).await;
    // Whoever created it (this client or another), it must open now.
    js.get_key_value(bucket).await.map_err(|e| {
        let cause = created.err().map_or_else(|| e.to_string(), |c| c.to_string());
        anyhow::anyhow!(
            "cannot open the JetStream key-value bucket {bucket}: {cause}; is JetStream enabled on the server (`nats-server -js`)?"
        )
    })
}

/// The value of `key` in `bucket` (named `name` in errors), as JSON.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    bucket: &kv::Store,
    name: &str,
    key: &str,
) -> anyhow::Result<Option<T>> {
    let value = bucket
        .get(key)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {name}/{key}: {e}"))?;
    value
        .map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| anyhow::anyhow!("{name}/{key} is not valid: {e}"))
        })
        .transpose()
}

/// Writes `value` as JSON under `key` in `bucket` (named `name` in errors).
pub async fn put_json<T: serde::Serialize>(
    bucket: &kv::Store,
    name: &str,
    key: &str,
    value: &T,
) -> anyhow::Result<()> {
    bucket
        .put(key, serde_json::to_vec(value)?.into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot write {name}/{key}: {e}"))?;
    Ok(())
}

/// Every value of a bucket as JSON; an invalid one is skipped with a
/// warning.
pub async fn values<T: serde::de::DeserializeOwned>(bucket: &kv::Store) -> anyhow::Result<Vec<T>> {
    use futures_util::StreamExt;
    let mut keys = bucket
        .keys()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list keys: {e}"))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| anyhow::anyhow!("cannot list keys: {e}"))?;
        let value = bucket
            .get(&key)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {key}: {e}"))?;
        if let Some(value) = value {
            match serde_json::from_slice(&value) {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!(key, error = %e, "ignoring an invalid entry"),
            }
        }
    }
    Ok(out)
}
