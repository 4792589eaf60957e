//! Deployments over NATS JetStream (docs/adr/0008-bundles-and-deploy.md):
//!
//! - bucket `cbs-bundles` (object store): bundles, named by digest;
//! - bucket `cbs-desired` (key-value): cell id → the release every host
//!   should serve, with the releases before it (for `cbs rollback`);
//! - bucket `cbs-status` (key-value): `<cell>/<host>` → what that host
//!   serves, or why it could not load the desired release.
//!
//! - bucket `cbs-hosts` (key-value): each watching host's heartbeat (labels,
//!   memory it offers);
//! - bucket `cbs-placement` (key-value): cell → the hosts that serve it,
//!   for cells deployed with `--replicas` ([`placer`], [`placement`]);
//! - bucket `cbs-placer` (key-value): the lease of the one host that
//!   places;
//! - bucket `cbs-served` (key-value): cell → the release hosts last
//!   installed of it, kept past undeploy for downgrade protection
//!   ([`served`]).
//!
//! `cbs deploy` (the rollout in `host/cli`) writes the first two and waits
//! on the third; hosts run with `--watch` follow the second and the
//! placement ([`watcher`]), write the third, and take turns placing.

pub mod downgrade;
pub mod placement;
pub mod placer;
pub mod served;
pub mod watcher;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, kv, object_store};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::bundle::{Bundle, KeyPair};
use crate::bus::kv::{self as bucket, Limits};
use downgrade::RollbackGrant;

pub const BUNDLES: &str = "cbs-bundles";
pub const DESIRED: &str = "cbs-desired";
pub const STATUS: &str = "cbs-status";
/// Watching hosts' heartbeats: host → [`placement::HostInfo`].
pub const HOSTS: &str = "cbs-hosts";
/// Cell → [`placement::Placement`], written by the placer.
pub const PLACEMENT: &str = "cbs-placement";
/// The placer's lease: which host places, renewed while it lives.
pub const PLACER: &str = "cbs-placer";
/// Cell → the release hosts last installed ([`downgrade::Served`]).
pub const SERVED: &str = "cbs-served";
/// Releases kept per cell for rollback.
const HISTORY: usize = 10;

/// One version of a cell, as deployed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Release {
    /// Unique per deploy or rollback (UUIDv7): status reports name it, so
    /// a report about an earlier attempt is never taken for this one.
    pub id: String,
    pub version: String,
    /// `sha256:<hex>` of the bundle manifest.
    pub digest: String,
    /// Object name in `cbs-bundles`.
    pub object: String,
    /// How many hosts serve it (placed by [`placer`]); none: every
    /// watching host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Host labels a replica's host must have (`cbs deploy --label k=v`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constraints: BTreeMap<String, String>,
    /// Spread replicas over the values of this host label (`--spread`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
    /// Memory one replica takes on its host, in MiB (the cell's
    /// `memory_mb`), counted against hosts' `--capacity-memory-mb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Replicas between a floor and a ceiling, from the load ([`placer`]);
    /// `replicas` is then the count to start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// The signing key, when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub deployed_at_ms: u64,
    /// The deployer's signed consent to go back to this release from the
    /// one before (`cbs rollback --sign`); hosts with `--trust` need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackGrant>,
}

impl Release {
    /// Whether a host with `labels` may serve it: it has every label the
    /// release asks for (`--label`, and the platform of native code). This
    /// holds for replicas and for a release every watching host serves.
    pub fn admits(&self, labels: &BTreeMap<String, String>) -> bool {
        self.constraints
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// The labels it asks for, as `k=v, k=v`.
    pub fn constraint_list(&self) -> String {
        let asked: Vec<String> = self
            .constraints
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        asked.join(", ")
    }
}

/// `cbs deploy --min-replicas --max-replicas`: the placer sets the replica
/// count from the load: a durable cell's consumer lag (messages waiting or
/// held), or for a request cell its hosts' `capacity` replies and how busy
/// they are (from their heartbeats).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Autoscale {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Messages waiting per replica the placer aims at (durable cells).
    pub target_lag: u64,
    /// A durable cell's stream and shared consumer, whose lag drives the
    /// count; none for a request cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// How long the load must allow fewer replicas before one is removed.
    pub scale_down_after_ms: u64,
    /// The mean wait for a running slot above which a request cell gains a
    /// replica (milliseconds).
    #[serde(default = "default_target_wait_ms")]
    pub target_wait_ms: u64,
}

fn default_target_wait_ms() -> u64 {
    50
}

/// A request cell's load over its placed hosts, from their heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestLoad {
    /// Some host answered `capacity` since the last look.
    pub refused: bool,
    /// Messages running or queued over what the hosts run at once.
    pub busy: f64,
    /// The longest mean wait for a running slot a host reported (ms).
    pub wait_ms: f64,
}

impl Autoscale {
    /// Replicas for `lag` messages waiting: enough for the target lag
    /// each, within the floor and the ceiling.
    pub fn wanted(&self, lag: u64) -> u32 {
        let target = self.target_lag.max(1);
        let needed = u32::try_from(lag.div_ceil(target)).unwrap_or(u32::MAX);
        self.bound(needed)
    }

    /// Replicas for a request cell now served by `now` replicas: one more
    /// when hosts answered `capacity` since the last look, are more than
    /// 3/4 busy, or made messages wait longer than `target_wait_ms` for a
    /// running slot; one fewer when under 1/4 busy and waits are short.
    pub fn wanted_for_load(&self, now: u32, load: RequestLoad) -> u32 {
        let target = self.target_wait_ms as f64;
        let next = if load.refused || load.busy > 0.75 || load.wait_ms > target {
            now.saturating_add(1)
        } else if load.busy < 0.25 && load.wait_ms <= target / 4.0 {
            now.saturating_sub(1)
        } else {
            now
        };
        self.bound(next)
    }

    fn bound(&self, n: u32) -> u32 {
        n.clamp(self.min_replicas, self.max_replicas.max(self.min_replicas))
    }
}

/// The desired state of one cell: the current release and earlier ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Desired {
    pub cell: String,
    pub current: Release,
    /// Most recent first.
    #[serde(default)]
    pub history: Vec<Release>,
}

impl Desired {
    /// `release` becomes current; the current one goes first in history.
    pub fn advance(previous: Option<Desired>, cell: &str, release: Release) -> Self {
        let history = previous
            .map(|p| {
                std::iter::once(p.current)
                    .chain(p.history)
                    .take(HISTORY)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            cell: cell.to_owned(),
            current: release,
            history,
        }
    }

    /// The previous release becomes current again, with a grant signed by
    /// `key` when given (hosts with `--trust` need one).
    pub fn rolled_back(self, key: Option<&KeyPair>) -> anyhow::Result<Self> {
        let mut history = self.history.into_iter();
        let Some(previous) = history.next() else {
            bail!(
                "cell {} has no earlier release to roll back to (only {} was deployed)",
                self.cell,
                self.current.version
            );
        };
        let rollback = key.map(|key| {
            RollbackGrant::sign(key, &self.cell, &self.current.digest, &previous.digest)
        });
        Ok(Self {
            current: Release {
                id: uuid::Uuid::now_v7().to_string(),
                deployed_at_ms: now_ms(),
                rollback,
                ..previous
            },
            cell: self.cell,
            history: history.collect(),
        })
    }
}

/// What one host reports about one cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub host: String,
    pub cell: String,
    pub state: State,
    /// [`Release::id`] of the release this report is about.
    pub release: String,
    /// The release this report is about (the one served, or the one that
    /// failed to load).
    pub version: String,
    pub digest: String,
    /// Why the release could not be loaded (state `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The release still served after a failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Serving,
    Failed,
}

/// The three buckets, created on first use.
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

async fn values<T: for<'de> Deserialize<'de>>(store: &kv::Store) -> anyhow::Result<Vec<T>> {
    let mut keys = store
        .keys()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list keys: {e}"))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| anyhow::anyhow!("cannot list keys: {e}"))?;
        if let Some(value) = store
            .get(&key)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {key}: {e}"))?
        {
            match serde_json::from_slice(&value) {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!(key, error = %e, "ignoring an invalid entry"),
            }
        }
    }
    Ok(out)
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

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Heartbeats older than this leave the `cbs-hosts` bucket (the placer
/// decides liveness sooner, by its own clock: see [`placer`]).
pub(crate) const HOST_HEARTBEAT_KEPT: Duration = Duration::from_secs(60);

/// How long `cbs deploy` waits for hosts by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
