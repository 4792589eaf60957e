//! The deployment buckets on JetStream ([`Store`]): bundles by digest,
//! desired states, status reports, heartbeats, placements, the placer's
//! lease and the releases hosts served.

use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, kv, object_store};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::{downgrade, placement, Desired, Release, Status};
use super::{BUNDLES, DESIRED, EXPECTS, HOSTS, PLACEMENT, PLACER, SERVED, STATUS};
use crate::bundle::Bundle;
use crate::bus::kv::{self as bucket, values, Limits};

/// A deployed cell's expectations of the cells it calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expectations {
    pub consumer: String,
    /// The version of the consumer that declared them.
    pub version: String,
    pub expects: std::collections::BTreeMap<String, Vec<crate::manifest::expects::Expectation>>,
}

/// The buckets, created on first use; clones share the connection.
#[derive(Clone)]
pub struct Store {
    /// JetStream itself, for the consumer lag autoscaling reads.
    pub(crate) js: jetstream::Context,
    desired: kv::Store,
    status: kv::Store,
    pub(crate) hosts: kv::Store,
    pub(crate) placement: kv::Store,
    pub(crate) placer: kv::Store,
    served: kv::Store,
    bundles: object_store::ObjectStore,
    /// The largest bundle fetched ([`crate::bundle::MAX_BYTES`]).
    max_bundle_bytes: u64,
}

impl Store {
    /// Opens (creating when missing) the buckets. Needs JetStream on the
    /// server (`nats-server -js`).
    pub async fn open(client: &async_nats::Client) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        let desired = bucket::open(&js, DESIRED, Limits::history(5)).await?;
        let status = bucket::open(&js, STATUS, Limits::history(1)).await?;
        let hosts =
            bucket::open(&js, HOSTS, Limits::history(1).max_age(HOST_HEARTBEAT_KEPT)).await?;
        let placement = bucket::open(&js, PLACEMENT, Limits::history(1)).await?;
        let placer = bucket::open(&js, PLACER, Limits::history(1)).await?;
        let served = bucket::open(&js, SERVED, Limits::history(1)).await?;
        let bundles = open_objects(&js).await?;
        Ok(Self {
            js,
            desired,
            status,
            hosts,
            placement,
            placer,
            served,
            bundles,
            max_bundle_bytes: crate::bundle::MAX_BYTES,
        })
    }

    /// Fetches no bundle larger than `bytes` (at most the default).
    pub fn with_max_bundle_bytes(mut self, bytes: u64) -> Self {
        self.max_bundle_bytes = bytes.min(crate::bundle::MAX_BYTES);
        self
    }

    /// Stores a bundle file and returns its object name: the sha256 of the
    /// file itself, so a signed and an unsigned copy of one bundle (same
    /// digest) are two objects, and each is stored once.
    pub async fn put_bundle(&self, bundle: &Bundle, bytes: &[u8]) -> anyhow::Result<String> {
        let name = format!("sha256-{}", crate::bundle::sha256_hex(bytes));
        if self.bundles.info(&name).await.is_ok() {
            return Ok(name);
        }
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            description: Some(format!(
                "{} {}",
                bundle.manifest.cell, bundle.manifest.version
            )),
            ..Default::default()
        };
        self.bundles
            .put(meta, &mut &bytes[..])
            .await
            .map_err(|e| anyhow::anyhow!("cannot store the bundle in {BUNDLES}: {e}"))?;
        Ok(name)
    }

    /// Fetches a release's bundle and checks it is the one the release names.
    pub async fn get_bundle(&self, release: &Release) -> anyhow::Result<Bundle> {
        let mut object =
            self.bundles.get(&release.object).await.map_err(|e| {
                anyhow::anyhow!("cannot fetch {} from {BUNDLES}: {e}", release.object)
            })?;
        // The bucket is outside input: read no more than a bundle may hold,
        // whatever size the object claims or has.
        let limit = self.max_bundle_bytes;
        if object.info().size as u64 > limit {
            bail!(
                "{} in {BUNDLES} is {} bytes, more than the {limit} a bundle may be",
                release.object,
                object.info().size,
            );
        }
        let mut bytes = Vec::new();
        (&mut object)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("cannot read {} from {BUNDLES}", release.object))?;
        if bytes.len() as u64 > limit {
            bail!(
                "{} in {BUNDLES} holds more than the {limit} bytes a bundle may be",
                release.object
            );
        }
        let bundle = Bundle::from_bytes(&bytes)?;
        if bundle.digest() != release.digest {
            bail!(
                "the bundle fetched has digest {} but the release names {}",
                bundle.digest(),
                release.digest
            );
        }
        Ok(bundle)
    }

    pub async fn desired(&self, cell: &str) -> anyhow::Result<Option<Desired>> {
        let value = self
            .desired
            .get(cell)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {DESIRED}/{cell}: {e}"))?;
        value
            .map(|v| {
                serde_json::from_slice(&v).with_context(|| format!("{DESIRED}/{cell} is not valid"))
            })
            .transpose()
    }

    pub async fn set_desired(&self, desired: &Desired) -> anyhow::Result<()> {
        self.desired
            .put(&desired.cell, serde_json::to_vec(desired)?.into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot write {DESIRED}/{}: {e}", desired.cell))?;
        Ok(())
    }

    pub async fn remove_desired(&self, cell: &str) -> anyhow::Result<()> {
        self.desired
            .delete(cell)
            .await
            .map_err(|e| anyhow::anyhow!("cannot delete {DESIRED}/{cell}: {e}"))
    }

    /// Every cell's desired state.
    pub async fn all_desired(&self) -> anyhow::Result<Vec<Desired>> {
        values(&self.desired).await
    }

    /// The desired state as it changes: current values first, then every
    /// put and delete.
    pub async fn watch_desired(&self) -> anyhow::Result<kv::Watch> {
        self.desired
            .watch_with_history(">")
            .await
            .map_err(|e| anyhow::anyhow!("cannot watch {DESIRED}: {e}"))
    }

    /// The release hosts last installed of `cell`, as the lattice
    /// remembers it (an invalid value counts as none).
    pub async fn served(&self, cell: &str) -> anyhow::Result<Option<downgrade::Served>> {
        let value = self
            .served
            .get(cell)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {SERVED}/{cell}: {e}"))?;
        Ok(value.and_then(|v| match serde_json::from_slice(&v) {
            Ok(served) => Some(served),
            Err(e) => {
                tracing::warn!(%cell, error = %e, "ignoring an invalid entry of {SERVED}");
                None
            }
        }))
    }

    /// Records in the lattice that `cell` was installed at `served`.
    pub async fn record_served(
        &self,
        cell: &str,
        served: &downgrade::Served,
    ) -> anyhow::Result<()> {
        self.served
            .put(cell, serde_json::to_vec(served)?.into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot write {SERVED}/{cell}: {e}"))?;
        Ok(())
    }

    /// Records what deployed cell `consumer` expects of the cells it
    /// calls (none: forgets it).
    pub async fn set_expectations(&self, expectations: &Expectations) -> anyhow::Result<()> {
        let key = expectations.consumer.as_str();
        let failed =
            |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot write {EXPECTS}/{key}: {e}");
        let bucket = self.expects().await?;
        if expectations.expects.is_empty() {
            bucket.delete(key).await.map_err(|e| failed(&e))
        } else {
            let value = serde_json::to_vec(expectations)?;
            bucket
                .put(key, value.into())
                .await
                .map(drop)
                .map_err(|e| failed(&e))
        }
    }

    /// What every deployed cell expects of the cells it calls.
    pub async fn all_expectations(&self) -> anyhow::Result<Vec<Expectations>> {
        values(&self.expects().await?).await
    }

    /// The expectations bucket, opened when a deployer needs it: hosts
    /// never touch it, so their NATS users need no right to it.
    async fn expects(&self) -> anyhow::Result<kv::Store> {
        bucket::open(&self.js, EXPECTS, Limits::history(1)).await
    }

    pub async fn report(&self, status: &Status) -> anyhow::Result<()> {
        self.status
            .put(
                status_key(&status.cell, &status.host),
                serde_json::to_vec(status)?.into(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot write to {STATUS}: {e}"))?;
        Ok(())
    }

    pub async fn clear_status(&self, cell: &str, host: &str) -> anyhow::Result<()> {
        self.status
            .delete(status_key(cell, host))
            .await
            .map_err(|e| anyhow::anyhow!("cannot delete from {STATUS}: {e}"))
    }

    pub async fn statuses(&self) -> anyhow::Result<Vec<Status>> {
        values(&self.status).await
    }

    /// The watching hosts' latest heartbeats (kept a minute after the
    /// last), of at most [`placement::MAX_HOSTS`] hosts; one that is not a
    /// heartbeat is skipped.
    ///
    /// The keys come from the stream's subject counts, not from a key
    /// listing: `kv::Store::keys` can wait forever on a bucket whose
    /// values age out while it reads, as heartbeats do.
    pub async fn heartbeats(&self) -> anyhow::Result<Vec<placement::HostInfo>> {
        use futures_util::TryStreamExt;
        let prefix = format!("$KV.{HOSTS}.");
        let stream = self
            .js
            .get_stream(format!("KV_{HOSTS}"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot open {HOSTS}: {e}"))?;
        let mut subjects = stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot list {HOSTS}: {e}"))?;
        let mut keys = Vec::new();
        while let Some((subject, _)) = subjects
            .try_next()
            .await
            .map_err(|e| anyhow::anyhow!("cannot list {HOSTS}: {e}"))?
        {
            if keys.len() >= placement::MAX_HOSTS {
                break;
            }
            if let Some(key) = subject.strip_prefix(&prefix) {
                keys.push(key.to_owned());
            }
        }
        let mut out = Vec::new();
        for key in keys {
            let value = self.hosts.get(&key).await;
            let value = value.map_err(|e| anyhow::anyhow!("cannot read {HOSTS}/{key}: {e}"))?;
            match value.map(|v| placement::HostInfo::from_heartbeat(&v)) {
                Some(Ok(info)) => out.push(info),
                Some(Err(e)) => tracing::warn!(%key, error = %e, "ignoring an invalid heartbeat"),
                None => {}
            }
        }
        Ok(out)
    }

    /// The placement of every cell deployed with replicas.
    pub async fn placements(&self) -> anyhow::Result<Vec<placement::Placement>> {
        values(&self.placement).await
    }

    pub async fn placement(&self, cell: &str) -> anyhow::Result<Option<placement::Placement>> {
        let value = self
            .placement
            .get(cell)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {PLACEMENT}/{cell}: {e}"))?;
        Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Placements as they change (current ones first).
    pub async fn watch_placement(&self) -> anyhow::Result<kv::Watch> {
        self.placement
            .watch_with_history(">")
            .await
            .map_err(|e| anyhow::anyhow!("cannot watch {PLACEMENT}: {e}"))
    }

    /// Status reports as they come (current ones first). Creating the
    /// watch's consumer is retried a few times: in a cluster still electing
    /// its JetStream leaders it can time out once and succeed the next time.
    pub async fn watch_status(&self) -> anyhow::Result<kv::Watch> {
        const ATTEMPTS: u32 = 3;
        let backoff = crate::backoff::Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(1),
            jitter: 0.2,
        };
        let mut attempt = 0;
        loop {
            match self.status.watch_with_history(">").await {
                Ok(watch) => return Ok(watch),
                Err(e) if attempt + 1 >= ATTEMPTS => {
                    bail!("cannot watch {STATUS} ({ATTEMPTS} attempts): {e}")
                }
                Err(e) => tracing::debug!(error = %e, "cannot watch {STATUS} yet; retrying"),
            }
            tokio::time::sleep(backoff.next(attempt)).await;
            attempt += 1;
        }
    }
}

async fn open_objects(js: &jetstream::Context) -> anyhow::Result<object_store::ObjectStore> {
    if let Ok(store) = js.get_object_store(BUNDLES).await {
        return Ok(store);
    }
    let config = object_store::Config {
        bucket: BUNDLES.to_owned(),
        ..Default::default()
    };
    match js.create_object_store(config).await {
        Ok(store) => Ok(store),
        // Another client created it first.
        Err(e) => js.get_object_store(BUNDLES).await.map_err(|_| {
            anyhow::anyhow!(
                "cannot open the JetStream object store {BUNDLES}: {e}; is JetStream enabled on the server (`nats-server -js`)?"
            )
        }),
    }
}

/// `<cell>/<host>`, the host id reduced to the characters keys allow.
pub fn status_key(cell: &str, host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{cell}/{host}")
}

/// Heartbeats older than this leave the `cbs-hosts` bucket (the placer
/// decides liveness sooner, by its own clock: see [`placer`]).
pub(crate) const HOST_HEARTBEAT_KEPT: Duration = Duration::from_secs(60);
