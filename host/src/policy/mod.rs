//! The lattice policy (docs/adr/0032-policy-as-code.md): rules a platform
//! team writes once (`policy.toml`), signs, and puts in the lattice's
//! key-value bucket `cbs-policy`, where every host reads the same one.
//!
//! `cbs deploy` checks a release against it before anything is written,
//! and every watching host checks it again before it serves: a host never
//! trusts the deployer's check ([`enforcer`]). A host adopts only a
//! policy signed by a key it trusts for policies, and never one older than
//! the one it holds.
//!
//! The document is [`Policy`]; what it says of a release is [`check`];
//! its signature, and the second signature that lets `--force` pass, are
//! [`signed`]; the bucket is [`store`].

pub mod check;
pub mod enforcer;
pub mod quota;
pub mod signed;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::bundle::PublicKey;
use crate::bus::subject::Pattern;
use crate::manifest::RuntimeKind;

pub use check::{Candidate, Finding};
pub use enforcer::Enforcer;
pub use signed::{SignedPolicy, Waiver};

/// The largest policy document, in bytes: it is read from the lattice.
pub const MAX_BYTES: usize = 64 * 1024;
/// The most entries of any list in a policy.
const MAX_ENTRIES: usize = 256;

/// A parsed `policy.toml`. Every rule is optional but `contracts`, which
/// is on unless turned off; a rule left out allows anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Rises with every change; a host never goes back to a lower one.
    pub version: u64,
    /// The runtimes cells may use; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtimes: Option<BTreeSet<RuntimeKind>>,
    /// Cells must have an input and an output schema.
    #[serde(default = "yes")]
    pub contracts: bool,
    /// Keys that must sign the cells a rule names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<SignerRule>,
    #[serde(default)]
    pub limits: LimitRules,
    #[serde(default)]
    pub capabilities: CapabilityRules,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registries: Option<RegistryRules>,
    #[serde(default)]
    pub force: ForceRules,
    /// `[tenants.<name>]`: each tenant's cells and its quota.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantRules>,
}

/// A tenant: the cells whose ids start with `cells`, and what they may
/// take together. Absent: unbounded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRules {
    /// Cell-id prefix, e.g. `shop.`.
    pub cells: String,
    /// Cells deployed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cells: Option<u32>,
    /// Replicas of all its cells together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    /// `memory_mb` × replicas of all its cells together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    /// Requests per second to its cells, on each host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Requests taken at once after a quiet spell [default: the rate].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

fn yes() -> bool {
    true
}

/// `[[signers]]`: the cells of a domain, or whose ids start with a
/// prefix, must be signed by one of `keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerRule {
    /// A cell-id prefix such as `billing.` (`""` names every cell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells: Option<String>,
    /// A domain's name (`cbs apply`): its member cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Hex ed25519 public keys, as `cbs keygen` writes them.
    pub keys: Vec<String>,
}

/// `[limits]`: the most a cell may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRules {
    /// `[limits] memory_mb` (a wasm instance, or a process's data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// `[limits] cpu_seconds` of a process cell; one without the limit is
    /// refused while this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// `[limits] concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Replicas of a deploy (`--replicas`, `--max-replicas`); one served
    /// by every watching host is refused while this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// `[capabilities]`: what cells may be granted. Absent: allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityRules {
    /// Host folders: `none`, `read` (read-only grants) or `write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileAccess>,
    /// Environment variables (`[capabilities.env]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<bool>,
    /// Full-resolution clocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precise_clocks: Option<bool>,
    /// The host's stdin, stdout and stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<bool>,
    /// Subjects (wildcards allowed) every publish grant must lie within.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// The most state a cell may keep (`[capabilities.state] max_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAccess {
    None,
    Read,
    Write,
}

impl FileAccess {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "no",
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// `[registries]`: where cells deployed by reference may come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryRules {
    /// Registry hosts (`HOST[:PORT]`).
    pub allowed: Vec<String>,
    /// Refuse bundles deployed from a file rather than a registry.
    #[serde(default)]
    pub required: bool,
}

/// `[force]`: who may let a release past a gate or this policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceRules {
    /// Keys whose signature (`cbs deploy --force --force-key KEY`), next
    /// to the bundle's own, lets a release pass; none: `--force` is
    /// refused while this policy holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
}

impl Policy {
    /// Parses and checks a `policy.toml`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.len() > MAX_BYTES {
            bail!("the policy is {} bytes, more than {MAX_BYTES}", text.len());
        }
        let policy: Self = toml::from_str(text).context("not a valid policy")?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.version == 0 {
            bail!("version must be 1 or more, and rise with every change");
        }
        for (i, rule) in self.signers.iter().enumerate() {
            if rule.cells.is_some() == rule.domain.is_some() {
                bail!(
                    "[[signers]] #{}: give exactly one of `cells` (a cell-id prefix) or `domain`",
                    i + 1
                );
            }
            if rule.keys.is_empty() {
                bail!("[[signers]] #{}: name at least one key", i + 1);
            }
            keys(&format!("[[signers]] #{}", i + 1), &rule.keys)?;
        }
        keys("[force] signers", &self.force.signers)?;
        bounded("[[signers]]", self.signers.len())?;
        if let Some(publish) = &self.capabilities.publish {
            bounded("[capabilities] publish", publish.len())?;
            for subject in publish {
                Pattern::parse(subject)
                    .map_err(|e| anyhow::anyhow!("[capabilities] publish {subject:?}: {e}"))?;
            }
        }
        if let Some(registries) = &self.registries {
            bounded("[registries] allowed", registries.allowed.len())?;
        }
        bounded("[tenants]", self.tenants.len())?;
        for (name, tenant) in &self.tenants {
            let fine = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !fine {
                bail!(
                    "[tenants.{name:?}]: a tenant's name is up to 64 letters, digits, '-' and '_'"
                );
            }
            if let Some(rate) = tenant.rate {
                if !(rate.is_finite() && rate > 0.0 && rate <= 1e6) {
                    bail!("[tenants.{name}] rate = {rate}: requests per second above 0, at most 1000000");
                }
            }
            if tenant.burst.is_some_and(|b| b == 0 || b > 1_000_000) {
                bail!("[tenants.{name}] burst: from 1 to 1000000");
            }
        }
        Ok(())
    }

    /// The tenant whose cells `cell` is of: the longest prefix that holds.
    pub fn tenant_of(&self, cell: &str) -> Option<(&String, &TenantRules)> {
        self.tenants
            .iter()
            .filter(|(_, t)| cell.starts_with(t.cells.as_str()))
            .max_by_key(|(_, t)| t.cells.len())
    }

    /// The tenants' request rates, for each host's buckets.
    pub fn rate_limits(&self) -> Vec<crate::quota::RateLimit> {
        self.tenants
            .iter()
            .filter_map(|(name, t)| {
                t.rate.map(|rate| crate::quota::RateLimit {
                    tenant: name.clone(),
                    prefix: t.cells.clone(),
                    rate,
                    burst: t.burst.map_or(rate.max(1.0), f64::from),
                })
            })
            .collect()
    }

    /// The publish patterns allowed, parsed (checked at parse).
    fn publish_patterns(&self) -> Option<Vec<Pattern>> {
        let publish = self.capabilities.publish.as_ref()?;
        Some(
            publish
                .iter()
                .filter_map(|p| Pattern::parse(p).ok())
                .collect(),
        )
    }
}

fn bounded(what: &str, len: usize) -> anyhow::Result<()> {
    if len > MAX_ENTRIES {
        bail!("{what}: {len} entries, more than {MAX_ENTRIES}");
    }
    Ok(())
}

fn keys(what: &str, keys: &[String]) -> anyhow::Result<()> {
    bounded(what, keys.len())?;
    for key in keys {
        PublicKey::from_hex(key).with_context(|| format!("{what}: {key:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_policy_parses_and_contracts_default_on() {
        let key = crate::bundle::KeyPair::generate()
            .unwrap()
            .public()
            .to_hex();
        let p = Policy::parse(&format!(
            r#"
version = 3
runtimes = ["wasm", "python"]
[[signers]]
cells = "billing."
keys = ["{key}"]
[[signers]]
domain = "shop"
keys = ["{key}"]
[limits]
memory_mb = 256
replicas = 5
[capabilities]
files = "read"
env = false
publish = ["events.>"]
state_max_bytes = 1048576
[registries]
allowed = ["registry.example.com:5000"]
required = true
[force]
signers = ["{key}"]
"#
        ))
        .unwrap();
        assert!(p.contracts);
        assert_eq!(p.limits.memory_mb, Some(256));
        assert_eq!(p.capabilities.files, Some(FileAccess::Read));
        assert_eq!(p.signers.len(), 2);
        assert!(
            !Policy::parse("version = 1\ncontracts = false")
                .unwrap()
                .contracts
        );
    }

    #[test]
    fn a_bad_policy_is_refused_with_the_rule_named() {
        for (text, says) in [
            ("version = 0", "version"),
            ("version = 1\nmystery = 1", "mystery"),
            ("version = 1\nruntimes = [\"java\"]", "java"),
            (
                "version = 1\n[[signers]]\ncells = \"a.\"\nkeys = [\"zz\"]",
                "[[signers]] #1",
            ),
            (
                "version = 1\n[[signers]]\ncells = \"a.\"\ndomain = \"d\"\nkeys = []",
                "exactly one",
            ),
            (
                "version = 1\n[capabilities]\npublish = [\"a..b\"]",
                "[capabilities] publish",
            ),
            (
                "version = 1\n[force]\nsigners = [\"00\"]",
                "[force] signers",
            ),
        ] {
            let err = format!("{:#}", Policy::parse(text).unwrap_err());
            assert!(err.contains(says), "{text}: {err}");
        }
        let huge = format!("version = 1\n#{}", "x".repeat(MAX_BYTES));
        assert!(format!("{:#}", Policy::parse(&huge).unwrap_err()).contains("more than"));
    }
}
