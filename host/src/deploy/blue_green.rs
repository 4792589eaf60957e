//! A blue-green rollout (`cbs deploy --strategy blue-green`): the new
//! release is loaded beside the current one on every host serving the
//! cell, taking no traffic; its contract tests and its consumers'
//! expectations run against it there, on its trial subject
//! (`cbs.~p.<cell>`); then every host switches all traffic to it at once
//! and keeps the version before warm, so `cbs rollback` within the warm
//! window is a switch back with no load (ADR 0025).

use std::time::Duration;

use anyhow::bail;

use super::canary::{note, serving};
use super::rollout::{self, Consent};
use super::{Release, Store};
use crate::bundle::Bundle;
use crate::bus::BodyBus;
use crate::contract::cases;
use crate::contract::expectations::{self, Broken};
use crate::contract::testing::{Outcome, Target};

/// How long the version before stays warm, and the contract tests' seed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub warm: Duration,
    pub seed: u64,
    /// How long one test call may take.
    pub timeout: Duration,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            warm: Duration::from_secs(600),
            seed: 1,
            timeout: expectations::TIMEOUT,
        }
    }
}

/// How a blue-green rollout ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Every host switched; `tests` cases and expectations passed (or
    /// were forced past: `forced` of them failed).
    Switched { tests: usize, forced: usize },
    /// Refused before the switch: no traffic reached it.
    Refused { reason: String },
}

/// Runs a blue-green rollout of `bundle` for its deployed cell, saying
/// each stage to `progress`. The contract gate comes first, as for a
/// deploy; the consumers' expectations run against the release as the
/// hosts serve it.
pub async fn run(
    bus: &dyn BodyBus,
    store: &Store,
    bundle: &Bundle,
    bytes: &[u8],
    plan: &Plan,
    consent: Consent<'_>,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<(Release, End)> {
    let cell = bundle.manifest.cell.clone();
    let force = consent.force;
    // Expectations are checked on the hosts below, not in this process.
    let gates = Consent {
        trial: None,
        ..consent
    };
    let (current, release, notes) =
        rollout::stage_beside(store, bundle, bytes, gates, "blue-green release").await?;
    for note in notes {
        progress(&format!("warning: {note}"));
    }
    progress(&format!(
        "{cell} {}: loading beside {} on every host, taking no traffic",
        release.version, current.current.version
    ));
    rollout::set_canary(store, &cell, release.clone(), 0).await?;
    if let Err(reason) = serving(store, &cell, &release).await {
        return refuse(store, &cell, release, reason, &mut progress).await;
    }
    let (failed, tests) = match trial(bus, store, bundle, plan, &mut progress).await {
        Ok(t) => t,
        Err(e) => {
            let reason = format!("cannot test it: {e:#}");
            return refuse(store, &cell, release, reason, &mut progress).await;
        }
    };
    if !failed.is_empty() && !force {
        let reason = format!(
            "{} of {tests} trial(s) failed on the hosts, first: {} (--force switches anyway)",
            failed.len(),
            failed[0]
        );
        return refuse(store, &cell, release, reason, &mut progress).await;
    }
    for f in &failed {
        progress(&format!("warning: failed, switched by --force: {f}"));
    }
    let switched = switch(store, &cell, &release, plan.warm).await?;
    if let Err(reason) = serving(store, &cell, &switched).await {
        // Some host did not confirm: the desired state says the new
        // release, so the hosts that did serve it; say which did not.
        bail!("{cell} {}: switched, but {reason}", release.version);
    }
    note(
        store,
        &cell,
        &switched,
        "switched",
        crate::body::SHARE_ALL,
        None,
    )
    .await?;
    if let Some(warning) = rollout::remember_expectations(store, &bundle.cell_manifest()?).await {
        progress(&format!("warning: {warning}"));
    }
    progress(&format!(
        "{cell} {} takes all traffic; {} stays warm for {} s (`cbs rollback {cell}` switches back)",
        release.version,
        current.current.version,
        plan.warm.as_secs()
    ));
    let forced = failed.len();
    Ok((switched, End::Switched { tests, forced }))
}

/// Drops the release on trial and notes why.
async fn refuse(
    store: &Store,
    cell: &str,
    release: Release,
    reason: String,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<(Release, End)> {
    rollout::end_canary(store, cell, false).await?;
    note(store, cell, &release, "refused", 0, Some(&reason)).await?;
    progress(&format!("{cell} {} refused: {reason}", release.version));
    Ok((release, End::Refused { reason }))
}

/// The release's generated contract tests and its deployed consumers'
/// expectations, sent to it on the hosts' trial subject: what failed, and
/// how many ran.
async fn trial(
    bus: &dyn BodyBus,
    store: &Store,
    bundle: &Bundle,
    plan: &Plan,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<(Vec<String>, usize)> {
    let cell = &bundle.manifest.cell;
    let target = Target {
        bus,
        cell,
        timeout: plan.timeout,
        trial: true,
    };
    let (input, output) = bundle.schemas()?;
    let mut failed = Vec::new();
    let mut ran = 0;
    if let Some(input) = &input {
        let generated = cases::generate(input, plan.seed)?;
        progress(&format!(
            "{cell}: {} generated contract test(s) (seed {})",
            generated.len(),
            plan.seed
        ));
        let outcomes = target.run(generated, output.as_ref()).await;
        ran += outcomes.len();
        failed.extend(outcomes.iter().filter(|o| !o.passed).map(case_failure));
    }
    let consumers = match store.all_expectations().await {
        Ok(all) => all,
        Err(e) => {
            progress(&format!(
                "warning: consumers' expectations not checked: {e:#}"
            ));
            Vec::new()
        }
    };
    for consumer in consumers.iter().filter(|c| &c.consumer != cell) {
        let Some(list) = consumer.expects.get(cell) else {
            continue;
        };
        progress(&format!(
            "{cell}: {} example(s) {} expects",
            list.len(),
            consumer.consumer
        ));
        ran += list.len();
        let broken: Vec<Broken> = expectations::check(&target, &consumer.consumer, list).await;
        failed.extend(broken.iter().map(ToString::to_string));
    }
    Ok((failed, ran))
}

fn case_failure(outcome: &Outcome) -> String {
    format!(
        "{} case {} ({}): {}",
        outcome.kind, outcome.label, outcome.input, outcome.detail
    )
}

/// The release on trial becomes current at once, its predecessor kept
/// warm for `warm` on each host. A new id, so each host's report of the
/// switch is told apart from its report of the trial.
async fn switch(
    store: &Store,
    cell: &str,
    release: &Release,
    warm: Duration,
) -> anyhow::Result<Release> {
    let Some(mut desired) = store.desired(cell).await? else {
        bail!("cell {cell} was undeployed during the rollout");
    };
    if desired
        .canary
        .take()
        .is_none_or(|c| c.release.id != release.id)
    {
        bail!("the release on trial of {cell} was dropped or replaced during the rollout");
    }
    let switched = Release {
        id: crate::envelope::new_id(),
        warm_ms: Some(u64::try_from(warm.as_millis()).unwrap_or(u64::MAX)),
        ..release.clone()
    };
    let desired = super::Desired::advance(Some(desired), cell, switched.clone());
    store.set_desired(&desired).await?;
    Ok(switched)
}
