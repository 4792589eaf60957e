//! What `cbs apply` would change: each cell of the spec against its desired
//! state (added, upgraded with its contract verdict, rescaled, unchanged),
//! and each cell the domain had that the spec no longer names (removed
//! with `--prune`, else kept).

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Serialize;

use super::spec::{Member, Spec};
use super::state::{Domain, Domains};
use crate::bundle::Bundle;
use crate::contract::diff::ContractDiff;
use crate::deploy::rollout::{self, Scale, Targets};
use crate::deploy::{Release, Store};

/// A cell of the spec, its bundle read (or built) by the caller.
pub struct Resolved {
    pub member: Member,
    pub bundle: Bundle,
    pub bytes: Vec<u8>,
}

/// What applying does to one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Add,
    Upgrade,
    /// Same bundle, other replicas, labels, spread or autoscaling.
    Scale,
    Unchanged,
    /// No longer in the spec: undeployed (`--prune`).
    Remove,
    /// No longer in the spec, left running (no `--prune`).
    Keep,
}

/// One cell's change.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub cell: String,
    pub action: Action,
    /// The version it goes to (none when removed or kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The version desired now, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The contract against the desired release (added and upgraded cells).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractDiff>,
    /// Its entry in the resolved cells.
    #[serde(skip)]
    pub source: Option<usize>,
    /// Where its replicas go.
    #[serde(skip)]
    pub scale: Option<Scale>,
}

/// The whole change a spec makes.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub domain: String,
    pub version: Option<String>,
    pub steps: Vec<Step>,
    /// The exports or uses differ from the domain's now.
    pub boundary_changed: bool,
    /// The domain is new to the lattice.
    pub new_domain: bool,
}

impl Plan {
    /// Nothing to change: applying again would do nothing.
    pub fn is_noop(&self) -> bool {
        !self.new_domain
            && !self.boundary_changed
            && self
                .steps
                .iter()
                .all(|s| matches!(s.action, Action::Unchanged | Action::Keep))
    }

    /// Counts per action, as `2 to add, 1 to upgrade, ...`.
    pub fn summary(&self) -> String {
        let count = |a: Action| self.steps.iter().filter(|s| s.action == a).count();
        let parts: Vec<String> = [
            (Action::Add, "to add"),
            (Action::Upgrade, "to upgrade"),
            (Action::Scale, "to rescale"),
            (Action::Remove, "to remove"),
            (Action::Unchanged, "unchanged"),
            (Action::Keep, "kept (not in the spec; --prune removes)"),
        ]
        .into_iter()
        .filter(|(a, _)| count(*a) > 0)
        .map(|(a, what)| format!("{} {what}", count(a)))
        .collect();
        parts.join(", ")
    }
}

/// Plans `spec` (its cells `resolved`, in the spec's order) against the
/// lattice; `prune` removes the domain's cells the spec no longer names.
pub async fn plan(
    store: &Store,
    domains: &Domains,
    spec: &Spec,
    resolved: &[Resolved],
    prune: bool,
) -> anyhow::Result<Plan> {
    let name = &spec.domain;
    let now = domains.get(name).await?;
    let mut steps = Vec::new();
    let mut named = BTreeMap::new();
    for (i, r) in resolved.iter().enumerate() {
        let cell = r.bundle.manifest.cell.clone();
        check_member(&r.member, &r.bundle)?;
        if named.insert(cell.clone(), i).is_some() {
            bail!("domain {name}: cell {cell} is listed twice");
        }
        let desired = store.desired(&cell).await?;
        let scale = scale_of(&r.member, &r.bundle, spec);
        let step = match desired {
            None => Step {
                action: Action::Add,
                from: None,
                contract: Some(rollout::preview(store, &r.bundle).await?.contract),
                ..step(&cell, r, i, scale)
            },
            Some(d) => {
                let owner = d.current.domain.as_ref().map(|m| &m.name);
                if let Some(other) = owner.filter(|o| *o != name) {
                    bail!("cell {cell} belongs to domain {other}: remove it from the spec of {other} and apply that with --prune before {name} takes it");
                }
                let from = Some(d.current.version.clone());
                if d.current.digest != r.bundle.digest() {
                    Step {
                        action: Action::Upgrade,
                        from,
                        contract: Some(rollout::preview(store, &r.bundle).await?.contract),
                        ..step(&cell, r, i, scale)
                    }
                } else {
                    let same = placed_alike(&d.current, &scale);
                    Step {
                        action: if same {
                            Action::Unchanged
                        } else {
                            Action::Scale
                        },
                        from,
                        ..step(&cell, r, i, scale)
                    }
                }
            }
        };
        steps.push(step);
    }
    check_sagas(spec, &named)?;
    check_uses(store, spec).await?;
    if let Some(domain) = &now {
        for (cell, release) in &domain.current.cells {
            if named.contains_key(cell) {
                continue;
            }
            steps.push(Step {
                cell: cell.clone(),
                action: if prune { Action::Remove } else { Action::Keep },
                version: None,
                from: Some(release.version.clone()),
                contract: None,
                source: None,
                scale: None,
            });
        }
    }
    Ok(Plan {
        domain: name.clone(),
        version: spec.version.clone(),
        boundary_changed: now
            .as_ref()
            .is_some_and(|d| !same_boundary(d, spec) || d.current.version != spec.version),
        new_domain: now.is_none(),
        steps,
    })
}

/// A saga calls only the domain's cells and those it uses: it runs as the
/// domain, inside its boundary.
fn check_sagas(spec: &Spec, named: &BTreeMap<String, usize>) -> anyhow::Result<()> {
    let used = |cell: &str| spec.uses.iter().any(|u| u.cells.iter().any(|c| c == cell));
    for saga in &spec.sagas {
        if let Some(cell) = saga.cells().find(|c| !named.contains_key(*c) && !used(c)) {
            bail!(
                "domain {}: saga {} calls {cell}, which is neither a cell of the domain nor under `uses`",
                spec.domain,
                saga.name
            );
        }
    }
    Ok(())
}

/// A cell listed under `uses` is exported by its domain (when deployed):
/// `uses` names another domain's API, never its inside.
async fn check_uses(store: &Store, spec: &Spec) -> anyhow::Result<()> {
    for used in &spec.uses {
        for cell in &used.cells {
            let membership = store.desired(cell).await?.and_then(|d| d.current.domain);
            match membership {
                Some(m) if m.name != used.domain => {
                    bail!(
                    "domain {}: `uses` names {cell} under domain {}, but it belongs to domain {}",
                    spec.domain, used.domain, m.name
                )
                }
                Some(m) if !m.exported => bail!(
                    "domain {}: `uses` names {cell}, which domain {} does not export",
                    spec.domain,
                    used.domain
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

fn step(cell: &str, r: &Resolved, i: usize, scale: Scale) -> Step {
    Step {
        cell: cell.to_owned(),
        action: Action::Unchanged,
        version: Some(r.bundle.manifest.version.clone()),
        from: None,
        contract: None,
        source: Some(i),
        scale: Some(scale),
    }
}

/// The bundle is the cell and version the spec says, when it says one.
fn check_member(member: &Member, bundle: &Bundle) -> anyhow::Result<()> {
    let m = &bundle.manifest;
    if let Some(id) = member.id.as_ref().filter(|id| **id != m.cell) {
        bail!("the spec says cell {id}, but its bundle is cell {}", m.cell);
    }
    if let Some(v) = member.version.as_ref().filter(|v| **v != m.version) {
        bail!(
            "the spec says {} {v}, but its bundle is version {}",
            m.cell,
            m.version
        );
    }
    Ok(())
}

/// Where a member's replicas go, as `cbs deploy` would place them, and
/// its domain's terms.
pub fn scale_of(member: &Member, bundle: &Bundle, spec: &Spec) -> Scale {
    let cell = &bundle.manifest.cell;
    Scale {
        replicas: member.replicas,
        constraints: rollout::placement_labels(bundle, member.labels.clone()),
        spread: member.spread.clone(),
        autoscale: member.scale.as_ref().map(|s| Targets {
            min_replicas: s.min,
            max_replicas: s.max,
            lag: s.target_lag,
            wait_ms: s.target_wait_ms,
            scale_down_after_ms: s.scale_down_after_ms,
        }),
        domain: Some(spec.membership(cell)),
    }
}

/// Whether `release` is placed as `scale` places it, in the same domain.
fn placed_alike(release: &Release, scale: &Scale) -> bool {
    let kept = rollout::scale_of(release);
    let replicas = match &scale.autoscale {
        Some(a) => Some(a.min_replicas),
        None => scale.replicas,
    };
    let replicas_now = match &kept.autoscale {
        Some(a) => Some(a.min_replicas),
        None => kept.replicas,
    };
    replicas == replicas_now
        && kept.constraints == scale.constraints
        && kept.spread == scale.spread
        && kept.autoscale == scale.autoscale
        && kept.domain == scale.domain
}

fn same_boundary(domain: &Domain, spec: &Spec) -> bool {
    let now = &domain.current;
    now.exports == spec.exports && now.uses == spec.uses && now.trust_inside == spec.trust_inside
}
