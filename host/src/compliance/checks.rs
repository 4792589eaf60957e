//! Each compliance check: a function of the facts read, named by a stable
//! id, passing or failing with one line per thing that breaks it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::facts::{Facts, Served};
use super::{Check, Options};
use crate::bundle::{PublicKey, Trust};
use crate::manifest::RuntimeKind;
use crate::policy::check::{short, violations, Candidate};
use crate::policy::quota::{usage, Deployed};
use crate::policy::{Policy, SignedPolicy};
use crate::unix_time::now_ms;

const DAY_MS: u64 = 24 * 3600 * 1000;

/// Every check, in the report's order.
pub fn all(facts: &Facts, options: &Options) -> Vec<Check> {
    let policy = policy_of(facts, options);
    vec![
        policy_signed(&policy),
        hosts_policy(facts, &policy),
        hosts_trust(facts),
        hosts_tls(facts),
        releases_signed(facts, options),
        releases_current(facts),
        releases_age(facts, options),
        cells_contracts(facts),
        cells_limits(facts),
        cells_policy(facts, &policy),
        tenants_quota(facts, &policy),
        audit_stream(facts, options),
        dead_letters(facts, options),
    ]
}

/// The lattice policy as the report judges it: valid and trusted, or why not.
type Judged = Result<(SignedPolicy, Policy), String>;

fn policy_of(facts: &Facts, options: &Options) -> Judged {
    let signed = match &facts.policy {
        None => return Err("the lattice has no policy: `cbs policy set FILE --key KEY`".into()),
        Some(Err(e)) => return Err(format!("the stored policy is unreadable: {e}")),
        Some(Ok(signed)) => signed.clone(),
    };
    let checked = match options.trust.is_empty() {
        true => signed.verify_signature(),
        false => signed.verify(&options.trust),
    };
    match checked {
        Ok(policy) => Ok((signed, policy)),
        Err(e) => Err(format!(
            "{e:#}: hosts that trust only policy keys ignore it"
        )),
    }
}

fn check(id: &'static str, title: &'static str, findings: Vec<String>) -> Check {
    Check {
        id,
        title,
        passed: findings.is_empty(),
        findings,
    }
}

fn policy_signed(policy: &Judged) -> Check {
    let findings = policy.as_ref().err().cloned().into_iter().collect();
    check(
        "policy.signed",
        "The lattice has a policy signed by a trusted key",
        findings,
    )
}

fn hosts_policy(facts: &Facts, policy: &Judged) -> Check {
    let findings = match policy {
        Ok((signed, _)) => {
            let digest = signed.digest();
            facts
                .hosts
                .iter()
                .filter(|h| h.policy.as_ref().is_none_or(|p| p.digest != digest))
                .map(|h| {
                    let held = h.policy.as_ref().map_or("no policy".to_owned(), |p| format!("policy v{}", p.version));
                    format!(
                        "host {} enforces {held}, not the lattice's v{} (does it trust {}? cbs-host run --policy-key)",
                        h.id,
                        signed.version,
                        short(&signed.signer)
                    )
                })
                .collect()
        }
        Err(_) => facts
            .hosts
            .iter()
            .filter(|h| h.policy.is_none())
            .map(|h| format!("host {} enforces no policy", h.id))
            .collect(),
    };
    check(
        "hosts.policy",
        "Every live host enforces the lattice's policy",
        findings,
    )
}

fn hosts_trust(facts: &Facts) -> Check {
    let mut findings: Vec<String> = facts
        .hosts
        .iter()
        .filter(|h| h.trust.is_empty())
        .map(|h| format!("host {} runs any deployer's bundle (no --trust)", h.id))
        .collect();
    let lists: BTreeMap<BTreeSet<&String>, Vec<&str>> = facts
        .hosts
        .iter()
        .filter(|h| !h.trust.is_empty())
        .fold(BTreeMap::new(), |mut lists, h| {
            lists
                .entry(h.trust.iter().collect())
                .or_default()
                .push(&h.id);
            lists
        });
    if lists.len() > 1 {
        for (keys, hosts) in &lists {
            let keys: Vec<String> = keys.iter().map(|k| short(k)).collect();
            findings.push(format!(
                "hosts {} trust {}: the trust lists differ",
                hosts.join(", "),
                keys.join(", ")
            ));
        }
    }
    check(
        "hosts.trust",
        "Every live host runs only signed bundles, trusting the same keys",
        findings,
    )
}

fn hosts_tls(facts: &Facts) -> Check {
    let findings = facts
        .hosts
        .iter()
        .filter(|h| !h.nats_tls)
        .map(|h| format!("host {} connects to NATS without TLS", h.id))
        .collect();
    check("hosts.tls", "Every live host talks TLS to NATS", findings)
}

/// Releases with a readable bundle.
fn readable(
    facts: &Facts,
) -> impl Iterator<Item = (&Served, &crate::bundle::Bundle, &crate::manifest::Manifest)> {
    facts
        .releases
        .iter()
        .filter_map(|s| s.bundle.as_ref().ok().map(|(b, m)| (s, b, m)))
}

fn name(s: &Served) -> String {
    match s.role {
        "current" => format!("{} {}", s.cell, s.release.version),
        role => format!("{} {} ({role})", s.cell, s.release.version),
    }
}

fn releases_signed(facts: &Facts, options: &Options) -> Check {
    let mut findings: Vec<String> = facts
        .releases
        .iter()
        .filter_map(|s| {
            s.bundle
                .as_ref()
                .err()
                .map(|e| format!("{}: bundle unreadable: {e}", name(s)))
        })
        .collect();
    for (served, bundle, _) in readable(facts) {
        let Some(signer) = bundle.signer() else {
            findings.push(format!("{} is not signed", name(served)));
            continue;
        };
        let trust = match options.trust.is_empty() {
            true => Trust::new(PublicKey::from_hex(signer).into_iter().collect()),
            false => options.trust.clone(),
        };
        if let Err(e) = bundle.verify(&trust) {
            findings.push(format!("{}: {e:#}", name(served)));
        }
    }
    check(
        "releases.signed",
        "Every release is signed (by a trusted key, with --trust)",
        findings,
    )
}

fn releases_current(facts: &Facts) -> Check {
    let mut findings = Vec::new();
    for served in facts.releases.iter().filter(|s| s.role == "current") {
        for status in &served.statuses {
            let serving = status.serving.as_deref().unwrap_or("nothing");
            let stale = serving != served.release.version;
            let failed = status.release == served.release.id && status.error.is_some();
            if stale || failed {
                let why = status
                    .error
                    .as_deref()
                    .map_or(String::new(), |e| format!(": {e}"));
                findings.push(format!(
                    "host {} serves {serving} of {}, desired {}{why}",
                    status.host, served.cell, served.release.version
                ));
            }
        }
    }
    check(
        "releases.current",
        "Every host serves the desired release of its cells",
        findings,
    )
}

fn releases_age(facts: &Facts, options: &Options) -> Check {
    let now = now_ms();
    let limit = options.stale_days.saturating_mul(DAY_MS);
    let findings = facts
        .releases
        .iter()
        .filter(|s| now.saturating_sub(s.release.deployed_at_ms) > limit)
        .map(|s| {
            let age = Duration::from_millis(now.saturating_sub(s.release.deployed_at_ms));
            format!(
                "{} was deployed {} days ago (rebuild it with current dependencies)",
                name(s),
                age.as_secs() / 86_400
            )
        })
        .collect();
    check(
        "releases.age",
        "No release is older than the stale limit (--stale-days)",
        findings,
    )
}

fn cells_contracts(facts: &Facts) -> Check {
    let findings = readable(facts)
        .filter(|(_, _, m)| m.input.is_none() || m.output.is_none())
        .map(|(s, _, _)| format!("{} has no input or no output schema", name(s)))
        .collect();
    check(
        "cells.contracts",
        "Every cell has an input and an output contract",
        findings,
    )
}

fn cells_limits(facts: &Facts) -> Check {
    let mut findings = Vec::new();
    for (served, _, m) in readable(facts) {
        if m.limits.memory_mb.is_none() {
            findings.push(format!(
                "{} sets no [limits] memory_mb (runs on the default)",
                name(served)
            ));
        }
        if m.runtime != RuntimeKind::Wasm && m.limits.cpu_seconds.is_none() {
            findings.push(format!(
                "{} is a process cell without [limits] cpu_seconds",
                name(served)
            ));
        }
    }
    check(
        "cells.limits",
        "Every cell states its memory (and a process cell its CPU) limit",
        findings,
    )
}

fn cells_policy(facts: &Facts, policy: &Judged) -> Check {
    let Ok((_, policy)) = policy else {
        return check(
            "cells.policy",
            "Every release meets the lattice's policy",
            Vec::new(),
        );
    };
    let mut findings = Vec::new();
    for (served, bundle, manifest) in readable(facts) {
        let release = &served.release;
        let candidate = Candidate {
            bundle,
            manifest,
            replicas: release.most_replicas(),
            domain: release.domain.as_ref().map(|d| d.name.as_str()),
            origin: release.origin.as_deref(),
            // Quotas are the tenants check's.
            usage: &[],
        };
        let broken = violations(policy, &candidate);
        if broken.is_empty() {
            continue;
        }
        let list: Vec<String> = broken.iter().map(ToString::to_string).collect();
        let waived = release.waiver.as_ref().is_some_and(|w| {
            w.check(policy, &served.cell, &bundle.digest(), bundle.signer())
                .is_ok()
        });
        let how = if waived {
            "passed only by a --force signature"
        } else {
            "breaks"
        };
        findings.push(format!(
            "{} {how} policy v{}: {}",
            name(served),
            policy.version,
            list.join("; ")
        ));
    }
    check(
        "cells.policy",
        "Every release meets the lattice's policy",
        findings,
    )
}

fn tenants_quota(facts: &Facts, policy: &Judged) -> Check {
    let findings = match policy {
        Ok((_, policy)) => {
            let deployed: Vec<Deployed> = facts
                .releases
                .iter()
                .filter(|s| s.role == "current")
                .map(|s| Deployed {
                    cell: s.cell.clone(),
                    replicas: s.release.most_replicas(),
                    memory_mb: s
                        .release
                        .memory_mb
                        .unwrap_or(crate::manifest::WASM_MEMORY_MB),
                })
                .collect();
            usage(policy, &deployed)
                .iter()
                .flat_map(|u| u.over())
                .collect()
        }
        Err(_) => Vec::new(),
    };
    check(
        "tenants.quota",
        "No tenant is over its quota of cells, replicas and memory",
        findings,
    )
}

fn audit_stream(facts: &Facts, options: &Options) -> Check {
    let mut findings = Vec::new();
    match &facts.audit {
        Err(e) => findings.push(format!("no audit trail: {e}")),
        Ok(config) => {
            if !config.deny_delete || !config.deny_purge {
                findings.push(format!("{}: messages can be deleted or purged (deny_delete and deny_purge must be set)", config.name));
            }
            let kept = config.max_age;
            let wanted = Duration::from_millis(options.audit_days.saturating_mul(DAY_MS));
            if !kept.is_zero() && kept < wanted {
                findings.push(format!(
                    "{} keeps events {} days, less than {} (--audit-days)",
                    config.name,
                    kept.as_secs() / 86_400,
                    options.audit_days
                ));
            }
            if config.max_messages > 0 || config.max_bytes > 0 {
                findings.push(format!(
                    "{}: a message or byte limit drops the oldest events",
                    config.name
                ));
            }
        }
    }
    check(
        "audit.stream",
        "The audit trail cannot be edited and is kept long enough",
        findings,
    )
}

fn dead_letters(facts: &Facts, options: &Options) -> Check {
    let limit = options.dead_letter_days.saturating_mul(DAY_MS);
    let findings = facts
        .dead_letters
        .as_ref()
        .filter(|d| d.messages > 0 && now_ms().saturating_sub(d.oldest_ms) > limit)
        .map(|d| {
            format!(
                "{} dead letter(s) kept, the oldest {} days old: `cbs dlq ls`, then replay or drop them",
                d.messages,
                now_ms().saturating_sub(d.oldest_ms) / DAY_MS
            )
        })
        .into_iter()
        .collect();
    check(
        "dead_letters.age",
        "No dead letter is older than the limit (--dead-letter-days)",
        findings,
    )
}
