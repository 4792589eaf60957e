//! What a deployment says: a cell's releases ([`Release`], with its
//! replicas, constraints and [`Autoscale`] bounds), its desired state
//! ([`Desired`]: the current release and the ones before, for rollback),
//! and what each host reports of it ([`Status`]).

use std::collections::BTreeMap;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::downgrade::RollbackGrant;
use crate::bundle::KeyPair;
use crate::unix_time::now_ms;

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
    /// How many hosts serve it (placed by [`super::placer`]); none: every
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
    /// Replicas between a floor and a ceiling, from the load ([`super::placer`]);
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
    /// Blue-green: hosts switch to this release from its canary at once
    /// and keep the version before warm for this long (milliseconds, at
    /// most [`MAX_WARM_MS`]), so a rollback meanwhile needs no load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_ms: Option<u64>,
    /// The cells it calls, with the versions it works with (its
    /// `calls`): what `cbs deps` and `cbs undeploy` read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<crate::manifest::Call>,
    /// The domain the cell belongs to (`cbs apply`), if any, and its terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<crate::boundary::Membership>,
    /// The registry it was pulled from (`HOST[:PORT]`), as the deployer
    /// says; none: a bundle file. Read by the policy's `[registries]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// A second key's signature letting it past the policy (`cbs deploy
    /// --force --force-key`); hosts check it against the policy they hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiver: Option<crate::policy::Waiver>,
}

/// The longest a host keeps a version warm after a switch: a warm version
/// holds its memory.
pub const MAX_WARM_MS: u64 = 24 * 3600 * 1000;

impl Release {
    /// The most replicas it may have: its autoscaling ceiling, else its
    /// count; none when every watching host serves it.
    pub fn most_replicas(&self) -> Option<u32> {
        self.autoscale
            .as_ref()
            .map(|a| a.max_replicas)
            .or(self.replicas)
    }

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

/// The desired state of one cell: the current release and earlier ones,
/// and a canary release taking a share of its messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Desired {
    pub cell: String,
    pub current: Release,
    /// Most recent first.
    #[serde(default)]
    pub history: Vec<Release>,
    /// Older majors kept serving beside the current release, one per major,
    /// for deployed callers whose range needs them (`crate::majors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub beside: Vec<Release>,
    /// During a canary: the new release, served next to the current one by
    /// every host that serves the cell (`body::split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// How the last canary of the cell went (`cbs ls` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_canary: Option<CanaryNote>,
    /// A recording of the cell's requests (`cbs record`), while on; a new
    /// release ends it (its replies would be another version's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<crate::shadow::Recording>,
}

/// A canary's state or end, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryNote {
    pub version: String,
    /// `running`, `promoted` or `reverted`.
    pub state: String,
    /// Its share when it ended or now, of every 10,000 messages.
    pub share: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at_ms: u64,
}

/// A release taking a share of a cell's messages next to the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub release: Release,
    /// Of every 10,000 messages, at most 10,000.
    pub share: u32,
}

impl Desired {
    /// `release` becomes current; the current one goes first in history.
    pub fn advance(previous: Option<Desired>, cell: &str, release: Release) -> Self {
        let beside = previous
            .as_ref()
            .map(|p| p.beside.clone())
            .unwrap_or_default();
        let history = previous
            .map(|p| {
                std::iter::once(p.current)
                    .chain(p.history)
                    .take(HISTORY)
                    .collect()
            })
            .unwrap_or_default();
        let mut next = Self {
            cell: cell.to_owned(),
            current: release,
            history,
            beside,
            canary: None,
            last_canary: None,
            recording: None,
        };
        next.drop_current_major();
        next
    }

    /// Keeps `release` (the one replaced) serving its major beside the
    /// current one: in place of what was kept of that major.
    pub fn keep_beside(&mut self, release: Release) {
        let lane = crate::majors::of_version(&release.version);
        if lane.is_none() || lane == crate::majors::of_version(&self.current.version) {
            return;
        }
        self.beside
            .retain(|r| crate::majors::of_version(&r.version) != lane);
        self.beside.push(release);
    }

    /// Stops keeping major `lane` beside; the release kept, if any.
    pub fn drop_beside(&mut self, lane: &str) -> Option<Release> {
        let at = self
            .beside
            .iter()
            .position(|r| crate::majors::of_version(&r.version).as_deref() == Some(lane))?;
        Some(self.beside.remove(at))
    }

    /// The current release serves its own major: nothing kept beside it
    /// does.
    fn drop_current_major(&mut self) {
        let lane = crate::majors::of_version(&self.current.version);
        self.beside
            .retain(|r| lane.is_none() || crate::majors::of_version(&r.version) != lane);
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
        let mut back = Self {
            current: Release {
                id: uuid::Uuid::now_v7().to_string(),
                deployed_at_ms: now_ms(),
                rollback,
                ..previous
            },
            cell: self.cell,
            history: history.collect(),
            beside: self.beside,
            canary: None,
            last_canary: None,
            recording: None,
        };
        back.drop_current_major();
        Ok(back)
    }
}

impl Desired {
    /// The cell's rollout now (`canary 0.2.0 at 25 %`, `blue-green 0.2.0
    /// on trial, taking no traffic`), or how its last one ended (`canary
    /// 0.2.0 reverted at 10 %: ...`, `blue-green 0.2.0 switched`), as
    /// `cbs ls` and the console show it.
    pub fn rollout_note(&self) -> Option<String> {
        if let Some(c) = &self.canary {
            return Some(match c.share {
                0 => format!(
                    "blue-green {} on trial, taking no traffic",
                    c.release.version
                ),
                share => format!("canary {} at {} %", c.release.version, share / 100),
            });
        }
        let last = self.last_canary.as_ref()?;
        let why = last
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        if matches!(last.state.as_str(), "switched" | "refused") {
            return Some(format!("blue-green {} {}{why}", last.version, last.state));
        }
        Some(format!(
            "canary {} {} at {} %{why}",
            last.version,
            last.state,
            last.share / 100
        ))
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
    /// Served by switching to a version the host kept warm (no load).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Serving,
    Failed,
}
