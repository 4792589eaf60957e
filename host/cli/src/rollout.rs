//! The client side of deployments: `cbs deploy`, `cbs rollback` and
//! `cbs undeploy`. A rollout is health-confirmed: `cbs deploy`
//! waits until every watching host reports the new release serving; if any
//! host fails to load it, the desired state goes back to the release
//! before, and the command fails with each host's reason.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::kv::Operation;
use futures_util::StreamExt;

use cbs_host::bundle::{Bundle, KeyPair};
use cbs_host::contract::compat::{self, Break, Direction};
use cbs_host::deploy::downgrade::RollbackGrant;
use cbs_host::deploy::placement::Placement;
use cbs_host::deploy::{Autoscale, Desired, Release, State, Status, Store};
use cbs_host::durable::{ConsumerSpec, StreamSpec};
use cbs_host::unix_time::now_ms;

/// How a rollout ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every watching host serves the release (possibly none watch).
    Serving { hosts: usize, elapsed: Duration },
    /// At least one host could not load it; the desired state was restored.
    Failed(Vec<Status>),
    /// Some hosts did not report in time.
    TimedOut { missing: Vec<String> },
    /// No host could take a replica (the placer's reason).
    Unplaced(String),
}

/// Where a release's replicas may go (`cbs deploy --replicas --label
/// --spread`).
#[derive(Debug, Clone, Default)]
pub struct Scale {
    /// None: every watching host.
    pub replicas: Option<u32>,
    pub constraints: BTreeMap<String, String>,
    pub spread: Option<String>,
    pub autoscale: Option<Targets>,
}

/// `cbs deploy --min-replicas --max-replicas --target-lag --target-wait-ms
/// --scale-down-after-ms`.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Messages waiting per replica (durable cells).
    pub lag: u64,
    /// Mean wait for a running slot (request cells).
    pub wait_ms: u64,
    pub scale_down_after_ms: u64,
}

/// What the deployer allows beyond a plain step forward.
#[derive(Debug, Default)]
pub struct Consent {
    /// Deploy even if the contract breaks the deployed one.
    pub force: bool,
    /// A signed step back from what hosts last installed (`--sign-rollback`).
    pub rollback: Option<RollbackGrant>,
}

/// Publishes `bundle` as the desired release of its cell and waits for the
/// watching hosts (up to `wait`; `None` does not wait).
pub async fn deploy(
    client: &async_nats::Client,
    store: &Store,
    bundle: &Bundle,
    bytes: &[u8],
    scale: Scale,
    consent: Consent,
    wait: Option<Duration>,
) -> anyhow::Result<Outcome> {
    let Consent { force, rollback } = consent;
    let manifest = bundle.cell_manifest()?;
    let cell = manifest.id.clone();
    let previous = store.desired(&cell).await?;
    if let Some(previous) = &previous {
        gate(store, previous, bundle, force).await?;
    }
    let autoscale = scale
        .autoscale
        .map(|targets| autoscale_of(&manifest, targets))
        .transpose()?;
    let object = store.put_bundle(bundle, bytes).await?;
    let release = Release {
        id: cbs_host::envelope::new_id(),
        version: manifest.version.clone(),
        digest: bundle.digest(),
        object,
        replicas: autoscale
            .as_ref()
            .map_or(scale.replicas, |a| Some(a.min_replicas)),
        autoscale,
        constraints: scale.constraints,
        spread: scale.spread,
        memory_mb: Some(manifest.memory_mb()),
        signer: bundle.signer().map(str::to_owned),
        deployed_at_ms: now_ms(),
        rollback,
    };
    let desired = Desired::advance(previous.clone(), &cell, release);
    set_and_confirm(client, store, desired, previous, wait).await
}

/// Makes the previous release of `cell` current again, and waits as deploy does.
/// Autoscaling follows a durable cell's consumer lag, or a request cell's
/// hosts' `capacity` replies, busyness and queue wait.
fn autoscale_of(
    manifest: &cbs_host::manifest::Manifest,
    targets: Targets,
) -> anyhow::Result<Autoscale> {
    let Targets {
        min_replicas,
        max_replicas,
        ..
    } = targets;
    if min_replicas > max_replicas || max_replicas == 0 {
        bail!("--min-replicas {min_replicas} must be at most --max-replicas {max_replicas}, which must be at least 1");
    }
    let (stream, consumer) = match &manifest.durable {
        Some(spec) => (
            Some(StreamSpec::of_cell(manifest, spec).name),
            Some(ConsumerSpec::of_cell(manifest, spec).name),
        ),
        None => (None, None),
    };
    Ok(Autoscale {
        min_replicas,
        max_replicas,
        target_lag: targets.lag,
        target_wait_ms: targets.wait_ms,
        stream,
        consumer,
        scale_down_after_ms: targets.scale_down_after_ms,
    })
}

pub async fn rollback(
    client: &async_nats::Client,
    store: &Store,
    cell: &str,
    key: Option<&KeyPair>,
    wait: Option<Duration>,
) -> anyhow::Result<(Release, Outcome)> {
    let Some(current) = store.desired(cell).await? else {
        bail!("cell {cell} is not deployed (see `cbs ls`)");
    };
    let desired = current.clone().rolled_back(key)?;
    let release = desired.current.clone();
    let outcome = set_and_confirm(client, store, desired, Some(current), wait).await?;
    Ok((release, outcome))
}

/// Refuses a breaking contract change within one major version.
async fn gate(
    store: &Store,
    previous: &Desired,
    bundle: &Bundle,
    force: bool,
) -> anyhow::Result<()> {
    let old = store
        .get_bundle(&previous.current)
        .await
        .context("cannot fetch the deployed bundle to compare contracts")?;
    let breaks = contract_breaks(&old, bundle)?;
    if breaks.is_empty() {
        return Ok(());
    }
    let new_version = &bundle.manifest.version;
    let old_version = &previous.current.version;
    let list: Vec<String> = breaks
        .iter()
        .map(|(d, b)| format!("  {} {b}", direction_name(*d)))
        .collect();
    let same_line = compat_line(old_version) == compat_line(new_version);
    if same_line && !force {
        bail!(
            "{} {new_version} breaks the contract of the deployed {old_version}:\n{}\n\
             bump the major version for a breaking change, or pass --force",
            bundle.manifest.cell,
            list.join("\n")
        );
    }
    eprintln!(
        "warning: {} {new_version} breaks the contract of {old_version} ({}):\n{}",
        bundle.manifest.cell,
        if same_line {
            "--force"
        } else {
            "new major version"
        },
        list.join("\n")
    );
    Ok(())
}

/// Breaking changes between two bundles' contracts, input and output.
pub fn contract_breaks(old: &Bundle, new: &Bundle) -> anyhow::Result<Vec<(Direction, Break)>> {
    let (old_in, old_out) = old.schemas()?;
    let (new_in, new_out) = new.schemas()?;
    let absent = serde_json::Value::Bool(true);
    let mut out = Vec::new();
    for (direction, old, new) in [
        (Direction::Input, old_in, new_in),
        (Direction::Output, old_out, new_out),
    ] {
        let (old, new) = (old.unwrap_or(absent.clone()), new.unwrap_or(absent.clone()));
        out.extend(
            compat::check(&old, &new, direction)
                .into_iter()
                .map(|b| (direction, b)),
        );
    }
    Ok(out)
}

pub fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Input => "input ",
        Direction::Output => "output",
    }
}

/// Versions that must stay compatible share this: the major number, or
/// `0.<minor>` before 1.0 (semver).
fn compat_line(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), _) => major.to_owned(),
        _ => version.to_owned(),
    }
}

async fn set_and_confirm(
    client: &async_nats::Client,
    store: &Store,
    desired: Desired,
    previous: Option<Desired>,
    wait: Option<Duration>,
) -> anyhow::Result<Outcome> {
    let watching = watching_hosts(client).await?;
    let mut hosts: BTreeSet<String> = watching.keys().cloned().collect();
    let started = Instant::now();
    store.set_desired(&desired).await?;
    let Some(wait) = wait else {
        return Ok(Outcome::Serving {
            hosts: 0,
            elapsed: started.elapsed(),
        });
    };
    if desired.current.replicas.is_some() && !hosts.is_empty() {
        let placement = placed(store, &desired.cell, &desired.current.id, wait).await?;
        if placement.hosts.is_empty() {
            return Ok(Outcome::Unplaced(placement.unplaced.unwrap_or_default()));
        }
        if let Some(why) = &placement.unplaced {
            eprintln!("warning: {why}");
        }
        hosts = placement.hosts.into_iter().collect();
    } else if !hosts.is_empty() {
        // Every watching host with the labels it asks for (the platform of
        // native code) serves it; the others leave it alone.
        hosts = watching
            .iter()
            .filter(|(_, labels)| desired.current.admits(labels))
            .map(|(host, _)| host.clone())
            .collect();
        if hosts.is_empty() {
            return Ok(Outcome::Unplaced(format!(
                "no watching host has {}; start one that has (`cbs-host run --watch` on that \
                 platform), or build the bundle on a machine like your hosts",
                desired.current.constraint_list()
            )));
        }
    }
    let outcome = confirm(store, &desired, &hosts, wait, started).await?;
    if let Outcome::Failed(_) = &outcome {
        // Health-confirmed: the fleet goes back to what it served.
        match previous {
            Some(previous) => store.set_desired(&previous).await?,
            None => store.remove_desired(&desired.cell).await?,
        }
    }
    Ok(outcome)
}

/// The placement the placer made for `release` of `cell`.
async fn placed(
    store: &Store,
    cell: &str,
    release: &str,
    wait: Duration,
) -> anyhow::Result<Placement> {
    let deadline = Instant::now() + wait.min(Duration::from_secs(15));
    loop {
        if let Some(p) = store.placement(cell).await? {
            if p.release == release {
                return Ok(p);
            }
        }
        if Instant::now() >= deadline {
            bail!("no placement of {cell} appeared: is a host running with --watch (it places replicas)?");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hosts that follow deployments (`cbs-host run --watch`), by host id,
/// with their labels.
pub async fn watching_hosts(
    client: &async_nats::Client,
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let quiet = Duration::from_millis(250);
    let hosts = cbs_host::discovery::hosts(client, quiet, quiet * 8).await?;
    Ok(hosts
        .into_iter()
        .filter(|peer| peer.watching)
        .map(|peer| (peer.host, peer.labels))
        .collect())
}

/// Waits until each of `hosts` reports on the desired release.
async fn confirm(
    store: &Store,
    desired: &Desired,
    hosts: &BTreeSet<String>,
    wait: Duration,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let release = &desired.current;
    let mut reports: BTreeMap<String, Status> = BTreeMap::new();
    let mut watch = store.watch_status().await?;
    let deadline = tokio::time::Instant::now() + wait;
    while reports.len() < hosts.len() {
        let entry = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(entry))) => entry,
            Ok(Some(Err(e))) => bail!("lost the status watch: {e}"),
            Ok(None) => bail!("the status watch ended"),
            Err(_) => {
                let missing = hosts
                    .iter()
                    .filter(|h| !reports.contains_key(*h))
                    .cloned()
                    .collect();
                return Ok(Outcome::TimedOut { missing });
            }
        };
        if entry.operation != Operation::Put {
            continue;
        }
        let Ok(status) = serde_json::from_slice::<Status>(&entry.value) else {
            continue;
        };
        if status.release == release.id && hosts.contains(&status.host) {
            reports.insert(status.host.clone(), status);
        }
    }
    let failed: Vec<Status> = reports
        .into_values()
        .filter(|s| s.state == State::Failed)
        .collect();
    Ok(if failed.is_empty() {
        Outcome::Serving {
            hosts: hosts.len(),
            elapsed: started.elapsed(),
        }
    } else {
        Outcome::Failed(failed)
    })
}

#[cfg(test)]
mod tests {
    use super::compat_line;

    /// From 1.0 on the major number alone is the line: a breaking change
    /// from 1.x needs --force within 1.x and passes at 2.0.
    #[test]
    fn from_1_0_a_break_needs_force_within_the_major_and_passes_at_the_next() {
        assert_eq!(compat_line("1.0.0"), compat_line("1.4.2"));
        assert_eq!(compat_line("1.9.3"), compat_line("1.10.0"));
        assert_ne!(compat_line("1.9.3"), compat_line("2.0.0"));
        assert_ne!(compat_line("2.0.0"), compat_line("10.0.0"));
    }

    /// Before 1.0 the minor counts as the major (semver): 0.2 after 0.1.
    #[test]
    fn before_1_0_a_break_needs_force_within_the_minor_and_passes_at_the_next() {
        assert_eq!(compat_line("0.1.0"), compat_line("0.1.7"));
        assert_ne!(compat_line("0.1.7"), compat_line("0.2.0"));
        assert_ne!(compat_line("0.9.0"), compat_line("1.0.0"));
    }
}
