//! The client side of deployments, as `cbs deploy`, `cbs rollback`,
//! `cbs undeploy` and the console's actions take them. A rollout is
//! health-confirmed: a deploy waits until every host that should serve the
//! new release reports it serving; if any host fails to load it, the
//! desired state goes back to the release before, with each host's reason.
//! The contract gate comes first: a release whose contract breaks the
//! deployed one within its major version is refused unless forced.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::kv::Operation;
use futures_util::StreamExt;

use super::downgrade::RollbackGrant;
use super::placement::Placement;
use super::{status_key, Autoscale, Desired, Expectations, Release, State, Status, Store};
use crate::bundle::{Bundle, KeyPair};
use crate::contract::diff::{ContractDiff, Verdict};
use crate::contract::expectations::Broken;
use crate::durable::{ConsumerSpec, StreamSpec};
use crate::unix_time::now_ms;

/// How a rollout ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every host that should serves the release (none: no host watches).
    Serving {
        hosts: Vec<String>,
        elapsed: Duration,
        /// Of them, those that switched to a version kept warm (no load).
        warm: usize,
    },
    /// At least one host could not load it; the desired state was restored.
    Failed {
        failed: Vec<Status>,
        /// The hosts that had loaded it.
        serving: Vec<String>,
    },
    /// Some hosts did not report in time.
    TimedOut { missing: Vec<String> },
    /// No host could take a replica (the placer's reason).
    Unplaced(String),
}

/// How one host took a rollout.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostOutcome {
    pub host: String,
    /// `serving`, `failed` or `no_report`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    /// `serving`, `failed`, `timed_out` or `unplaced`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Serving { .. } => "serving",
            Self::Failed { .. } => "failed",
            Self::TimedOut { .. } => "timed_out",
            Self::Unplaced(_) => "unplaced",
        }
    }

    /// One line on how it ended, for the audit trail.
    pub fn summary(&self) -> String {
        match self {
            Self::Serving { hosts, .. } => format!("serving on {} host(s)", hosts.len()),
            Self::Failed { failed, .. } => {
                let hosts: Vec<&str> = failed.iter().map(|f| f.host.as_str()).collect();
                format!("failed on {}; reverted", hosts.join(", "))
            }
            Self::TimedOut { missing } => format!("not confirmed by {}", missing.join(", ")),
            Self::Unplaced(why) => format!("not placed: {why}"),
        }
    }

    /// Each host's part in it.
    pub fn hosts(&self) -> Vec<HostOutcome> {
        let host = |host: &str, outcome, error: Option<String>| HostOutcome {
            host: host.to_owned(),
            outcome,
            error,
        };
        match self {
            Self::Serving { hosts, .. } => hosts.iter().map(|h| host(h, "serving", None)).collect(),
            Self::Failed { failed, serving } => serving
                .iter()
                .map(|h| host(h, "serving", None))
                .chain(
                    failed
                        .iter()
                        .map(|f| host(&f.host, "failed", f.error.clone())),
                )
                .collect(),
            Self::TimedOut { missing } => {
                missing.iter().map(|h| host(h, "no_report", None)).collect()
            }
            Self::Unplaced(_) => Vec::new(),
        }
    }
}

/// Where a release's replicas may go (`cbs deploy --replicas --label
/// --spread`), and the domain it belongs to: what a new release of a
/// deployed cell keeps of the one before ([`scale_of`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scale {
    /// None: every watching host.
    pub replicas: Option<u32>,
    pub constraints: BTreeMap<String, String>,
    pub spread: Option<String>,
    pub autoscale: Option<Targets>,
    /// Its domain and the domain's terms for it (`cbs apply`).
    pub domain: Option<crate::boundary::Membership>,
}

/// The labels a bundle's replicas need: `labels`, and for native code its
/// platform, so that it goes only to hosts that can run it.
pub fn placement_labels(
    bundle: &Bundle,
    mut labels: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let platform = bundle.manifest.platform.as_ref();
    if let Some(platform) = platform.filter(|p| *p != crate::platform::ANY) {
        labels
            .entry(crate::platform::LABEL.to_owned())
            .or_insert_with(|| platform.clone());
    }
    labels
}

/// `cbs deploy --min-replicas --max-replicas --target-lag --target-wait-ms
/// --scale-down-after-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Default)]
pub struct Consent<'a> {
    /// Deploy even if the contract breaks the deployed one, or a deployed
    /// consumer's expectation.
    pub force: bool,
    /// A signed step back from what hosts last installed (`--sign-rollback`).
    pub rollback: Option<RollbackGrant>,
    /// Where a new release meets its consumers' expectations before it
    /// goes out (none: they are not checked).
    pub trial: Option<&'a dyn Trial>,
    /// A second key's signature for `force` (`--force-key`): while a
    /// lattice policy holds, `force` needs it, and it lets the release
    /// past the policy too.
    pub waiver: Option<crate::policy::Waiver>,
    /// The registry the bundle was pulled from, if any (the policy's
    /// `[registries]`).
    pub origin: Option<String>,
}

/// Serves a bundle where no traffic reaches it and checks consumers'
/// expectations against it (`host::trial`).
#[async_trait::async_trait]
pub trait Trial: Send + Sync {
    async fn expectations(
        &self,
        bundle: &Bundle,
        consumers: &[Expectations],
    ) -> anyhow::Result<Vec<Broken>>;
}

/// A rollout's release, how it ended, what its contract changed, and what
/// the deployer should know (warnings).
#[derive(Debug)]
pub struct Rolled {
    pub release: Release,
    pub outcome: Outcome,
    /// The contract against the release before (a deploy only).
    pub contract: Option<ContractDiff>,
    pub notes: Vec<String>,
}

/// What a deploy of a bundle would meet, before it goes out.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Preview {
    pub cell: String,
    pub version: String,
    pub digest: String,
    pub signer: Option<String>,
    /// The desired version now, if the cell is deployed.
    pub deployed: Option<String>,
    pub contract: ContractDiff,
}

/// The contract gate's verdict on `bundle` against its cell's desired
/// release, without deploying anything.
pub async fn preview(store: &Store, bundle: &Bundle) -> anyhow::Result<Preview> {
    let manifest = bundle.cell_manifest()?;
    let previous = store.desired(&manifest.id).await?;
    Ok(Preview {
        contract: contract_of(store, previous.as_ref(), bundle).await?,
        deployed: previous.map(|p| p.current.version),
        digest: bundle.digest(),
        signer: bundle.signer().map(str::to_owned),
        version: manifest.version,
        cell: manifest.id,
    })
}

/// Publishes `bundle` as the desired release of its cell and waits for the
/// watching hosts (up to `wait`; `None` does not wait). Refused, before
/// anything is written, when the contract breaks the deployed one within
/// its major version and `consent` does not force it.
pub async fn deploy(
    client: &async_nats::Client,
    store: &Store,
    bundle: &Bundle,
    bytes: &[u8],
    scale: Scale,
    consent: Consent<'_>,
    wait: Option<Duration>,
) -> anyhow::Result<Rolled> {
    let rollback = consent.rollback.clone();
    let manifest = bundle.cell_manifest()?;
    let cell = manifest.id.clone();
    let previous = store.desired(&cell).await?;
    let (contract, mut notes) = checked(store, bundle, previous.as_ref(), &scale, &consent).await?;
    let mut release = stage(store, bundle, bytes, scale).await?;
    release.rollback = rollback;
    release.waiver = consent.waiver.clone();
    release.origin = consent.origin.clone();
    let mut desired = Desired::advance(previous.clone(), &cell, release.clone());
    if let Some(previous) = &previous {
        notes.extend(keep_needed_major(store, &mut desired, &previous.current).await?);
    }
    let outcome = set_and_confirm(client, store, desired, previous, wait, &mut notes).await?;
    if matches!(outcome, Outcome::Serving { .. }) {
        notes.extend(remember_expectations(store, &manifest).await);
    }
    Ok(Rolled {
        release,
        outcome,
        contract: Some(contract),
        notes,
    })
}

/// Keeps what a release now serving relies on from its callees, for their
/// deploys; a warning when it cannot.
pub async fn remember_expectations(
    store: &Store,
    manifest: &crate::manifest::Manifest,
) -> Option<String> {
    let recorded = store
        .set_expectations(&Expectations {
            consumer: manifest.id.clone(),
            version: manifest.version.clone(),
            expects: manifest.expects.clone(),
        })
        .await;
    recorded
        .err()
        .map(|e| format!("{e:#}: its callees' deploys will not check what it expects"))
}

/// Puts `bundle` in the lattice's object store and makes its release,
/// placed by `scale`; nothing is desired yet.
pub async fn stage(
    store: &Store,
    bundle: &Bundle,
    bytes: &[u8],
    scale: Scale,
) -> anyhow::Result<Release> {
    let manifest = bundle.cell_manifest()?;
    let autoscale = scale
        .autoscale
        .map(|targets| autoscale_of(&manifest, targets))
        .transpose()?;
    let object = store.put_bundle(bundle, bytes).await?;
    Ok(Release {
        id: crate::envelope::new_id(),
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
        rollback: None,
        warm_ms: None,
        domain: scale.domain,
        calls: manifest.capabilities.calls.clone(),
        origin: None,
        waiver: None,
    })
}

/// Keeps `replaced` serving its major beside the new current release
/// when a deployed caller's range admits it and not the new one
/// (`crate::majors`); what it kept, as a note.
async fn keep_needed_major(
    store: &Store,
    desired: &mut Desired,
    replaced: &Release,
) -> anyhow::Result<Option<String>> {
    let (cell, new) = (desired.cell.clone(), desired.current.version.clone());
    if crate::majors::of_version(&replaced.version) == crate::majors::of_version(&new) {
        return Ok(None);
    }
    let lattice = super::deps::Lattice::read(store).await?;
    let needing: Vec<String> = lattice
        .dependents(&cell)
        .into_iter()
        .filter(|(_, call)| {
            call.range.is_some() && call.admits(&replaced.version) && !call.admits(&new)
        })
        .map(|(caller, call)| format!("{caller} ({call})"))
        .collect();
    if needing.is_empty() {
        return Ok(None);
    }
    desired.keep_beside(replaced.clone());
    Ok(Some(format!(
        "{cell} {} keeps serving beside {new}: deployed callers need it: {}",
        replaced.version,
        needing.join(", ")
    )))
}

/// A release to serve beside the deployed one (a canary, a blue-green
/// release): the cell's desired state, the gates passed (their warnings)
/// and the bundle staged. `strategy` names it in the error for a cell not
/// deployed yet.
pub async fn stage_beside(
    store: &Store,
    bundle: &Bundle,
    bytes: &[u8],
    consent: Consent<'_>,
    strategy: &str,
) -> anyhow::Result<(Desired, Release, Vec<String>)> {
    let cell = &bundle.manifest.cell;
    let Some(current) = store.desired(cell).await? else {
        bail!("{cell} is not deployed: deploy it first, then a {strategy} of a new version");
    };
    let scale = scale_of(&current.current);
    let (waiver, origin) = (consent.waiver.clone(), consent.origin.clone());
    let notes = checked(store, bundle, Some(&current), &scale, &consent)
        .await?
        .1;
    let mut release = stage(store, bundle, bytes, scale).await?;
    release.waiver = waiver;
    release.origin = origin;
    Ok((current, release, notes))
}

/// Makes `release` the canary of its deployed cell at `share` of every
/// 10,000 messages (or moves its share): every host serving the cell
/// serves it next to the current release.
pub async fn set_canary(
    store: &Store,
    cell: &str,
    release: Release,
    share: u32,
) -> anyhow::Result<()> {
    let Some(mut desired) = store.desired(cell).await? else {
        bail!("cell {cell} is not deployed: deploy it before a canary of it");
    };
    desired.canary = Some(super::Canary {
        release,
        share: share.min(crate::body::SHARE_ALL),
    });
    store.set_desired(&desired).await
}

/// Ends the canary of `cell`: promoted (its release becomes current, the
/// hosts keep serving it without a reload) or dropped.
pub async fn end_canary(store: &Store, cell: &str, promote: bool) -> anyhow::Result<()> {
    let Some(mut desired) = store.desired(cell).await? else {
        bail!("cell {cell} is not deployed");
    };
    let Some(canary) = desired.canary.take() else {
        bail!("cell {cell} has no canary");
    };
    let desired = if promote {
        Desired::advance(Some(desired), cell, canary.release)
    } else {
        desired
    };
    store.set_desired(&desired).await
}

/// The scale a new release of a deployed cell keeps when none is given
/// (the console's deploy): the current release's replicas, labels, spread
/// and autoscaling.
pub fn scale_of(release: &Release) -> Scale {
    Scale {
        replicas: release.replicas,
        constraints: release.constraints.clone(),
        spread: release.spread.clone(),
        autoscale: release.autoscale.as_ref().map(|a| Targets {
            min_replicas: a.min_replicas,
            max_replicas: a.max_replicas,
            lag: a.target_lag,
            wait_ms: a.target_wait_ms,
            scale_down_after_ms: a.scale_down_after_ms,
        }),
        domain: release.domain.clone(),
    }
}

/// Autoscaling follows a durable cell's consumer lag, or a request cell's
/// hosts' `capacity` replies, busyness and queue wait.
fn autoscale_of(
    manifest: &crate::manifest::Manifest,
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

/// Makes the previous release of `cell` current again, and waits as deploy
/// does. `key` signs the step back, for hosts that require signed releases.
pub async fn rollback(
    client: &async_nats::Client,
    store: &Store,
    cell: &str,
    key: Option<&KeyPair>,
    wait: Option<Duration>,
) -> anyhow::Result<Rolled> {
    let Some(current) = store.desired(cell).await? else {
        bail!("cell {cell} is not deployed (see `cbs ls`)");
    };
    let desired = current.clone().rolled_back(key)?;
    let release = desired.current.clone();
    let mut notes = Vec::new();
    let outcome = set_and_confirm(client, store, desired, Some(current), wait, &mut notes).await?;
    Ok(Rolled {
        release,
        outcome,
        contract: None,
        notes,
    })
}

/// Makes `release` (one `cell` had before, its bundle still stored) the
/// desired release again, as a new release (signed by `key` for hosts
/// with `--trust` when it goes back from what is desired), and waits as
/// deploy does.
pub async fn restore(
    client: &async_nats::Client,
    store: &Store,
    cell: &str,
    release: &Release,
    key: Option<&KeyPair>,
    wait: Option<Duration>,
) -> anyhow::Result<Outcome> {
    let previous = store.desired(cell).await?;
    let rollback =
        match (key, &previous) {
            (Some(key), Some(p)) if p.current.digest != release.digest => Some(
                RollbackGrant::sign(key, cell, &p.current.digest, &release.digest),
            ),
            _ => None,
        };
    let again = Release {
        id: crate::envelope::new_id(),
        deployed_at_ms: now_ms(),
        rollback,
        warm_ms: None,
        ..release.clone()
    };
    let desired = Desired::advance(previous.clone(), cell, again);
    let mut notes = Vec::new();
    set_and_confirm(client, store, desired, previous, wait, &mut notes).await
}

/// How an undeploy ended on each host that served the cell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stopped {
    /// The release no longer desired.
    #[serde(skip)]
    pub release: Release,
    /// Hosts that withdrew their report: they stopped serving it.
    pub stopped: Vec<String>,
    /// Hosts that had not within the wait.
    pub pending: Vec<String>,
}

/// Stops `cell` on every host: removes its desired release and waits (up
/// to `wait`) for each host that reported serving it to withdraw its
/// report, which a host does once it has drained and removed the cell.
/// `None` when the cell is not deployed.
pub async fn undeploy(
    store: &Store,
    cell: &str,
    wait: Duration,
) -> anyhow::Result<Option<Stopped>> {
    let Some(desired) = store.desired(cell).await? else {
        return Ok(None);
    };
    let serving: BTreeSet<String> = store
        .statuses()
        .await?
        .into_iter()
        .filter(|s| s.cell == cell)
        .map(|s| s.host)
        .collect();
    let mut watch = store.watch_status().await?;
    store.remove_desired(cell).await?;
    let forgotten = store
        .set_expectations(&Expectations {
            consumer: cell.to_owned(),
            version: desired.current.version.clone(),
            expects: Default::default(),
        })
        .await;
    if let Err(e) = forgotten {
        tracing::warn!(%cell, error = %e, "its expectations stay recorded");
    }
    let mut stopped = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + wait;
    while stopped.len() < serving.len() {
        let entry = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(entry))) => entry,
            Ok(Some(Err(e))) => bail!("lost the status watch: {e}"),
            Ok(None) | Err(_) => break,
        };
        let withdrawn = matches!(entry.operation, Operation::Delete | Operation::Purge);
        if let Some(host) = serving.iter().find(|h| status_key(cell, h) == entry.key) {
            if withdrawn {
                stopped.insert(host.clone());
            } else {
                stopped.remove(host);
            }
        }
    }
    let pending = serving.difference(&stopped).cloned().collect();
    Ok(Some(Stopped {
        release: desired.current,
        stopped: stopped.into_iter().collect(),
        pending,
    }))
}

/// The gates a release passes before it goes out, in order: the lattice
/// policy, its contract against the deployed one, then its deployed
/// consumers' expectations; with the contract diff and the warnings of
/// those it passed only by force or a new major.
async fn checked(
    store: &Store,
    bundle: &Bundle,
    previous: Option<&Desired>,
    scale: &Scale,
    consent: &Consent<'_>,
) -> anyhow::Result<(ContractDiff, Vec<String>)> {
    let manifest = bundle.cell_manifest()?;
    let policies = crate::policy::store::PolicyStore::open_js(&store.js).await?;
    let usage = deployed(&store.all_desired().await?);
    let candidate = crate::policy::Candidate {
        bundle,
        manifest: &manifest,
        replicas: scale.autoscale.map(|a| a.max_replicas).or(scale.replicas),
        domain: scale.domain.as_ref().map(|d| d.name.as_str()),
        origin: consent.origin.as_deref(),
        usage: &usage,
    };
    let waiver = consent.waiver.as_ref();
    let mut notes = super::policy_gate::check(&policies, &candidate, consent.force, waiver).await?;
    let contract = contract_of(store, previous, bundle).await?;
    notes.extend(gate(&contract, bundle, previous, consent.force)?);
    notes.extend(sagas_gate(store, &contract, &manifest, consent.force).await?);
    if let Some(trial) = consent.trial {
        notes.extend(consumers_gate(store, trial, bundle, &manifest, consent.force).await?);
    }
    Ok((contract, notes))
}

/// Each deployed cell's current release, as tenants' quotas count it.
pub fn deployed(desired: &[Desired]) -> Vec<crate::policy::quota::Deployed> {
    desired
        .iter()
        .map(|d| crate::policy::quota::Deployed {
            cell: d.cell.clone(),
            replicas: d.current.most_replicas(),
            memory_mb: d
                .current
                .memory_mb
                .unwrap_or(crate::manifest::WASM_MEMORY_MB),
        })
        .collect()
}

/// Refuses a release that breaks what a deployed consumer expects of its
/// cell unless forced (then a warning); a bundle the trial cannot serve
/// here (a process bundle) is a warning, not a refusal.
async fn consumers_gate(
    store: &Store,
    trial: &dyn Trial,
    bundle: &Bundle,
    manifest: &crate::manifest::Manifest,
    force: bool,
) -> anyhow::Result<Vec<String>> {
    let cell = &manifest.id;
    let recorded = match store.all_expectations().await {
        Ok(recorded) => recorded,
        Err(e) => return Ok(vec![format!("consumers' expectations not checked: {e:#}")]),
    };
    let consumers: Vec<Expectations> = recorded
        .into_iter()
        .filter(|c| &c.consumer != cell && c.expects.contains_key(cell))
        .collect();
    if consumers.is_empty() {
        return Ok(Vec::new());
    }
    if manifest.runtime != crate::manifest::RuntimeKind::Wasm {
        return Ok(vec![format!(
            "the expectations of {} were not checked: a process bundle is not run on the deployer's machine",
            names(&consumers)
        )]);
    }
    let broken = trial.expectations(bundle, &consumers).await?;
    if broken.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<String> = broken.iter().map(|b| format!("  {b}")).collect();
    let what = format!(
        "{} {} breaks what its consumers expect:\n{}",
        cell,
        manifest.version,
        list.join("\n")
    );
    if !force {
        bail!("{what}\nkeep the fields they read (or agree a change with them), or pass --force");
    }
    Ok(vec![format!("{what} (--force)")])
}

fn names(consumers: &[Expectations]) -> String {
    let names: Vec<&str> = consumers.iter().map(|c| c.consumer.as_str()).collect();
    names.join(", ")
}

/// The contract of `bundle` against the desired release before it.
async fn contract_of(
    store: &Store,
    previous: Option<&Desired>,
    bundle: &Bundle,
) -> anyhow::Result<ContractDiff> {
    let new = bundle.schemas()?;
    let new = (&new, bundle.manifest.version.as_str());
    let Some(previous) = previous else {
        return Ok(ContractDiff::between(None, new));
    };
    let old = store
        .get_bundle(&previous.current)
        .await
        .context("cannot fetch the deployed bundle to compare contracts")?
        .schemas()?;
    Ok(ContractDiff::between(
        Some((&old, previous.current.version.as_str())),
        new,
    ))
}

/// Refuses a breaking contract change within one major version unless
/// forced; a forced or new-major break is a warning.
fn gate(
    contract: &ContractDiff,
    bundle: &Bundle,
    previous: Option<&Desired>,
    force: bool,
) -> anyhow::Result<Vec<String>> {
    let breaking = matches!(contract.verdict, Verdict::Breaking | Verdict::NewMajor);
    if !breaking {
        return Ok(Vec::new());
    }
    let new_version = &bundle.manifest.version;
    let old_version = previous.map_or("", |p| p.current.version.as_str());
    let list = contract
        .breaks
        .iter()
        .map(|b| format!("  {b}"))
        .collect::<Vec<_>>()
        .join("\n");
    if !contract.allows(force) {
        bail!(
            "{} {new_version} breaks the contract of the deployed {old_version}:\n{list}\n\
             bump the major version for a breaking change, or pass --force",
            bundle.manifest.cell,
        );
    }
    let why = if contract.verdict == Verdict::Breaking {
        "--force"
    } else {
        "new major version"
    };
    Ok(vec![format!(
        "{} {new_version} breaks the contract of {old_version} ({why}):\n{list}",
        bundle.manifest.cell
    )])
}

/// Refuses a contract break of a cell that in-flight saga instances still
/// call (a step not done, or the compensation of one done), unless forced:
/// they started on the contract deployed now.
async fn sagas_gate(
    store: &Store,
    contract: &ContractDiff,
    manifest: &crate::manifest::Manifest,
    force: bool,
) -> anyhow::Result<Vec<String>> {
    if !matches!(contract.verdict, Verdict::Breaking | Verdict::NewMajor) {
        return Ok(Vec::new());
    }
    let cell = &manifest.id;
    let in_flight = match in_flight_sagas(store, cell).await {
        Ok(n) => n,
        Err(e) => return Ok(vec![format!("in-flight sagas not checked: {e:#}")]),
    };
    if in_flight.is_empty() {
        return Ok(Vec::new());
    }
    let what = format!(
        "{cell} {} breaks the contract {} in-flight saga instance(s) still call ({}): they started on the one deployed now",
        manifest.version,
        in_flight.len(),
        in_flight.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    );
    if !force {
        bail!("{what}\nwait for them to end (cbs saga ls), or pass --force to break them");
    }
    Ok(vec![format!("{what} (--force)")])
}

/// The in-flight saga instances that still call `cell`, by id.
async fn in_flight_sagas(store: &Store, cell: &str) -> anyhow::Result<Vec<String>> {
    use crate::saga::journal::{Journal, State, StepState};
    let bucket = crate::state::jetstream::bucket_name(crate::saga::journal::BUCKET);
    if store.js.get_key_value(&bucket).await.is_err() {
        return Ok(Vec::new());
    }
    let journal = Journal::open(&crate::state::jetstream::JetStreamState::new(
        store.js.clone(),
    ))
    .await?;
    let mut ids = Vec::new();
    for i in journal.list(crate::saga::journal::MAX_LISTED).await? {
        if !matches!(i.state, State::Running | State::Compensating | State::Stuck) {
            continue;
        }
        let calls = i.saga.steps.iter().zip(&i.steps).any(|(step, record)| {
            let ahead = record.state != StepState::Done && record.state != StepState::Compensated;
            let undo = record.state == StepState::Done;
            (ahead && step.call == cell) || (undo && step.compensate.as_deref() == Some(cell))
        });
        if calls {
            ids.push(i.id);
        }
    }
    Ok(ids)
}

async fn set_and_confirm(
    client: &async_nats::Client,
    store: &Store,
    desired: Desired,
    previous: Option<Desired>,
    wait: Option<Duration>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Outcome> {
    let watching = watching_hosts(client).await?;
    let mut hosts: BTreeSet<String> = watching.keys().cloned().collect();
    let started = Instant::now();
    store.set_desired(&desired).await?;
    let Some(wait) = wait else {
        return Ok(Outcome::Serving {
            hosts: Vec::new(),
            elapsed: started.elapsed(),
            warm: 0,
        });
    };
    if desired.current.replicas.is_some() && !hosts.is_empty() {
        let placement = placed(store, &desired.cell, &desired.current.id, wait).await?;
        if placement.hosts.is_empty() {
            return Ok(Outcome::Unplaced(placement.unplaced.unwrap_or_default()));
        }
        if let Some(why) = placement.unplaced {
            notes.push(why);
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
    if let Outcome::Failed { .. } = &outcome {
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
    let hosts = crate::discovery::hosts(client, quiet, quiet * 8).await?;
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
    let (failed, serving): (Vec<Status>, Vec<Status>) = reports
        .into_values()
        .partition(|s| s.state == State::Failed);
    let warm = serving.iter().filter(|s| s.warm).count();
    let serving = serving.into_iter().map(|s| s.host).collect();
    Ok(if failed.is_empty() {
        Outcome::Serving {
            hosts: serving,
            elapsed: started.elapsed(),
            warm,
        }
    } else {
        Outcome::Failed { failed, serving }
    })
}

/// One line on how an undeploy ended, for the audit trail and people.
pub fn stopped_summary(stopped: &Stopped) -> String {
    let mut parts = Vec::new();
    if !stopped.stopped.is_empty() {
        parts.push(format!("stopped on {}", stopped.stopped.join(", ")));
    }
    if !stopped.pending.is_empty() {
        parts.push(format!("not confirmed by {}", stopped.pending.join(", ")));
    }
    if parts.is_empty() {
        parts.push("no host was serving it".to_owned());
    }
    parts.join("; ")
}
