//! Applying a plan: each cell added, upgraded or rescaled through the same
//! rollout as `cbs deploy` (contract gate, consumers' expectations, hosts'
//! confirmations) and removed as `cbs undeploy` does; then the domain's
//! new revision. A domain goes back as one unit to its revision before
//! (`cbs rollback --domain`), and its spec is written back from what runs
//! (`cbs export --domain`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::plan::{Action, Plan, Resolved};
use super::spec::{Member, Scale, Spec};
use super::state::{Domain, Domains, Revision};
use crate::bundle::KeyPair;
use crate::deploy::rollout::{self, Consent, Outcome};
use crate::deploy::{Release, Store};
use crate::unix_time::now_ms;

/// The lattice a domain is applied to.
pub struct Lattice<'a> {
    pub client: &'a async_nats::Client,
    pub store: &'a Store,
    pub domains: &'a Domains,
    /// How long each cell's hosts may take to confirm.
    pub wait: Duration,
}

/// Applies `plan` (of `spec`, its cells `resolved`), saying each step to
/// `progress`; stops at the first cell that does not converge (those
/// before it stay applied, the domain's revision is not written).
pub async fn apply(
    lattice: &Lattice<'_>,
    spec: &Spec,
    plan: &Plan,
    resolved: &[Resolved],
    consent: impl Fn() -> Consent<'static>,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Revision> {
    let total = plan.steps.len();
    for (n, step) in plan.steps.iter().enumerate() {
        let at = format!("[{}/{total}] {}", n + 1, step.cell);
        match (step.action, step.source, &step.scale) {
            (Action::Add | Action::Upgrade | Action::Scale, Some(i), Some(scale)) => {
                let r = &resolved[i];
                progress(
                    &format!("{at}: {:?} {} …", step.action, r.bundle.manifest.version)
                        .to_lowercase(),
                );
                let rolled = rollout::deploy(
                    lattice.client,
                    lattice.store,
                    &r.bundle,
                    &r.bytes,
                    scale.clone(),
                    consent(),
                    Some(lattice.wait),
                )
                .await
                .with_context(|| at.clone())?;
                for note in &rolled.notes {
                    progress(&format!("{at}: warning: {note}"));
                }
                converged(&at, &rolled.outcome)?;
                progress(&format!("{at}: {}", rolled.outcome.summary()));
            }
            (Action::Remove, _, _) => {
                progress(&format!("{at}: removing …"));
                let stopped = rollout::undeploy(lattice.store, &step.cell, lattice.wait).await?;
                if let Some(stopped) = stopped {
                    progress(&format!("{at}: {}", rollout::stopped_summary(&stopped)));
                }
            }
            (Action::Unchanged, _, _) => progress(&format!("{at}: unchanged")),
            (Action::Keep, _, _) => {
                progress(&format!("{at}: kept (not in the spec; --prune removes it)"))
            }
            _ => bail!("{at}: a step without its bundle (a bug in the plan)"),
        }
    }
    let mut cells = BTreeMap::new();
    for step in plan.steps.iter().filter(|s| s.action != Action::Remove) {
        if let Some(d) = lattice.store.desired(&step.cell).await? {
            cells.insert(step.cell.clone(), d.current);
        }
    }
    let revision = Revision {
        revision: 0,
        version: spec.version.clone(),
        applied_at_ms: now_ms(),
        cells,
        exports: spec.exports.clone(),
        uses: spec.uses.clone(),
        trust_inside: spec.trust_inside,
        sagas: spec.sagas.clone(),
    };
    let now = lattice.domains.get(&spec.domain).await?;
    let domain = Domain::advance(now, &spec.domain, revision);
    lattice.domains.put(&domain).await?;
    Ok(domain.current)
}

fn converged(at: &str, outcome: &Outcome) -> anyhow::Result<()> {
    match outcome {
        Outcome::Serving { .. } => Ok(()),
        other => bail!(
            "{at}: {}; the cells before it stay applied (see `cbs ls`)",
            other.summary()
        ),
    }
}

/// What a domain rollback did.
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// The domain's new revision (the content of the one before).
    pub revision: Revision,
    /// The revision it went back to.
    pub to: u64,
    /// The cells taken back to another release.
    pub restored: Vec<String>,
    /// The cells undeployed (added after the revision gone back to).
    pub removed: Vec<String>,
}

/// Takes domain `name` back to its revision before: each cell to the
/// release it had then (signed by `key` for hosts with `--trust`), cells
/// added since removed; the revision before becomes current again.
pub async fn rollback(
    lattice: &Lattice<'_>,
    name: &str,
    key: Option<&KeyPair>,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<RolledBack> {
    let Some(domain) = lattice.domains.get(name).await? else {
        bail!("no domain {name} (see `cbs ls`): apply its spec first");
    };
    let Some(before) = domain.history.first().cloned() else {
        bail!(
            "domain {name} has no revision before {} to go back to",
            domain.current.revision
        );
    };
    let (mut restored, mut removed) = (Vec::new(), Vec::new());
    for (cell, release) in &before.cells {
        let now = lattice.store.desired(cell).await?;
        // The same bytes placed the same way, on the same domain terms.
        let same = |d: &crate::deploy::Desired| {
            d.current.digest == release.digest
                && rollout::scale_of(&d.current) == rollout::scale_of(release)
        };
        if now.as_ref().is_some_and(same) {
            progress(&format!("{cell}: {} unchanged", release.version));
            continue;
        }
        progress(&format!("{cell}: back to {} …", release.version));
        let outcome = rollout::restore(
            lattice.client,
            lattice.store,
            cell,
            release,
            key,
            Some(lattice.wait),
        )
        .await?;
        converged(cell, &outcome)?;
        progress(&format!("{cell}: {}", outcome.summary()));
        restored.push(cell.clone());
    }
    for cell in domain
        .current
        .cells
        .keys()
        .filter(|c| !before.cells.contains_key(*c))
    {
        progress(&format!(
            "{cell}: not in revision {}, removing …",
            before.revision
        ));
        rollout::undeploy(lattice.store, cell, lattice.wait).await?;
        removed.push(cell.clone());
    }
    let to = before.revision;
    let again = Revision {
        applied_at_ms: now_ms(),
        ..before
    };
    let back = Domain::advance(Some(domain), name, again);
    lattice.domains.put(&back).await?;
    Ok(RolledBack {
        revision: back.current,
        to,
        restored,
        removed,
    })
}

/// The spec of what domain `name` runs now, its bundles written to
/// `dir/bundles/`; applying it changes nothing.
pub async fn export(
    store: &Store,
    domains: &Domains,
    name: &str,
    dir: &Path,
) -> anyhow::Result<Spec> {
    let Some(domain) = domains.get(name).await? else {
        bail!("no domain {name} (see `cbs ls`)");
    };
    let bundles = dir.join("bundles");
    std::fs::create_dir_all(&bundles)
        .with_context(|| format!("cannot create {}", bundles.display()))?;
    let mut cells = Vec::new();
    for (cell, release) in &domain.current.cells {
        // What runs now: a rollout since the apply shows here too.
        let release = match store.desired(cell).await? {
            Some(d) => d.current,
            None => release.clone(),
        };
        let bundle = store.get_bundle(&release).await?;
        let file = format!("{cell}-{}.cbs", release.version);
        std::fs::write(bundles.join(&file), bundle.to_bytes()?)
            .with_context(|| format!("cannot write {file}"))?;
        cells.push(member_of(cell, &release, Path::new("bundles").join(file)));
    }
    Ok(Spec {
        domain: name.to_owned(),
        version: domain.current.version.clone(),
        cells,
        exports: domain.current.exports.clone(),
        uses: domain.current.uses.clone(),
        trust_inside: domain.current.trust_inside,
        sagas: domain.current.sagas.clone(),
    })
}

/// A spec entry that places `release` as it is placed now.
fn member_of(cell: &str, release: &Release, bundle: std::path::PathBuf) -> Member {
    let scale = rollout::scale_of(release);
    let mut labels = scale.constraints;
    // The platform label is added again from the bundle on apply.
    labels.remove(crate::platform::LABEL);
    Member {
        id: Some(cell.to_owned()),
        bundle: Some(bundle),
        folder: None,
        reference: None,
        version: Some(release.version.clone()),
        replicas: if scale.autoscale.is_some() {
            None
        } else {
            scale.replicas
        },
        labels,
        spread: scale.spread,
        scale: scale.autoscale.map(|t| Scale {
            min: t.min_replicas,
            max: t.max_replicas,
            target_lag: t.lag,
            target_wait_ms: t.wait_ms,
            scale_down_after_ms: t.scale_down_after_ms,
        }),
    }
}
