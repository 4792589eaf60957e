//! A domain's spec (`domain.yaml`): its name and version, its cells (each a
//! bundle file or a cell folder to build, with replicas, labels, spread and
//! autoscaling), the cells it exports (its public API) and the cells of
//! other domains it uses. Read as hostile input: bounded in bytes, depth,
//! aliases and counts, unknown fields refused, every name checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::manifest::check_cell_id;

/// The most bytes a spec may have.
pub const MAX_BYTES: usize = 1 << 20;
/// The most cells a domain may have.
pub const MAX_CELLS: usize = 256;
/// The most entries a list or map of a spec may have (labels, uses…).
const MAX_ENTRIES: usize = 256;

/// A domain: a group of cells with one owner and one boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "CBS domain spec (domain.yaml)")]
pub struct Spec {
    /// The domain's name: lower-case letters, digits, `_` and `-`, starting
    /// with a letter (at most 64 characters).
    pub domain: String,
    /// The domain's own version (semver); what it says is its owner's
    /// choice, `cbs export` keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its cells.
    pub cells: Vec<Member>,
    /// The ids of the cells other domains may call (its public API).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<String>,
    /// The exported cells of other domains its cells call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<Use>,
    /// Calls between the domain's cells served by one host skip the
    /// callee's contract checks (input and output): the domain's owner
    /// deployed caller and callee together. Calls from outside the domain,
    /// and every call that crosses the bus or another host, are checked as
    /// always (ADR 0029) [default: false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_inside: bool,
    /// Its sagas: ordered steps across its cells (and those it uses), each
    /// with a compensation, run durably by the hosts (`cbs saga start`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sagas: Vec<crate::saga::def::Saga>,
}

/// One cell of a domain: where it comes from and how it is placed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its id; when given, the bundle must be that cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A bundle file (`cbs build` output), relative to the spec's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
    /// A cell folder, built into a bundle on apply (as `cbs build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
    /// A cell in an OCI registry, `HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]`,
    /// pulled and verified on apply (as `cbs deploy REF`).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Its version; when given, the bundle must be that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// How many watching hosts serve it [default: every one].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Host labels a replica's host must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Spread the replicas over the values of this host label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
    /// Autoscaling between two replica counts (instead of `replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
}

/// Autoscaling bounds, as `cbs deploy --min-replicas --max-replicas`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub min: u32,
    pub max: u32,
    /// Messages waiting per replica aimed at (durable cells).
    #[serde(default = "default_target_lag")]
    pub target_lag: u64,
    /// The mean wait for a running slot, in ms, above which a request cell
    /// gains a replica.
    #[serde(default = "default_target_wait_ms")]
    pub target_wait_ms: u64,
    /// How long the load must allow fewer replicas before one goes, in ms.
    #[serde(default = "default_scale_down_after_ms")]
    pub scale_down_after_ms: u64,
}

fn default_target_lag() -> u64 {
    100
}

fn default_target_wait_ms() -> u64 {
    50
}

fn default_scale_down_after_ms() -> u64 {
    30_000
}

/// The exported cells of another domain this one calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Use {
    pub domain: String,
    pub cells: Vec<String>,
}

impl Spec {
    /// Reads and checks a spec (YAML; JSON is YAML too).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.len() > MAX_BYTES {
            bail!("the spec is {} bytes, more than {MAX_BYTES}", text.len());
        }
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_depth: 32,
                max_nodes: 100_000,
            },
        };
        let spec: Self = serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("the spec is not a domain spec")?;
        spec.check()?;
        Ok(spec)
    }

    /// The spec as YAML.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        serde_saphyr::to_string(self).map_err(|e| anyhow::anyhow!("cannot write the spec: {e}"))
    }

    /// The JSON Schema of a spec, for editors (`docs/schemas/domain.schema.json`).
    pub fn schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Spec)).unwrap_or_default()
    }

    /// The terms of the domain for its cell `cell`: exported or not, and
    /// the cells of other domains it may call.
    pub fn membership(&self, cell: &str) -> crate::boundary::Membership {
        crate::boundary::Membership {
            name: self.domain.clone(),
            exported: self.exports.iter().any(|e| e == cell),
            trusted: self.trust_inside,
            uses: self
                .uses
                .iter()
                .flat_map(|u| u.cells.iter().cloned())
                .collect(),
        }
    }

    /// Every name well-formed, every count bounded, each cell from one
    /// source, exports among the cells.
    pub fn check(&self) -> anyhow::Result<()> {
        check_name(&self.domain)?;
        if self.cells.is_empty() || self.cells.len() > MAX_CELLS {
            bail!(
                "domain {}: {} cells; a domain has 1 to {MAX_CELLS}",
                self.domain,
                self.cells.len()
            );
        }
        for (i, member) in self.cells.iter().enumerate() {
            member
                .check()
                .with_context(|| format!("domain {}: cells[{i}]", self.domain))?;
        }
        let ids: Vec<&str> = self.cells.iter().filter_map(|m| m.id.as_deref()).collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        if unique.len() != ids.len() {
            bail!("domain {}: a cell id is listed twice", self.domain);
        }
        bounded("exports", self.exports.len())?;
        bounded("uses", self.uses.len())?;
        for id in &self.exports {
            check_cell_id(id)?;
        }
        bounded("sagas", self.sagas.len())?;
        let mut sagas = BTreeSet::new();
        for saga in &self.sagas {
            saga.check()
                .with_context(|| format!("domain {}", self.domain))?;
            if !sagas.insert(&saga.name) {
                bail!(
                    "domain {}: saga {} is declared twice",
                    self.domain,
                    saga.name
                );
            }
        }
        for used in &self.uses {
            check_name(&used.domain)?;
            bounded("uses[].cells", used.cells.len())?;
            for id in &used.cells {
                check_cell_id(id)?;
            }
        }
        Ok(())
    }
}

impl Member {
    fn check(&self) -> anyhow::Result<()> {
        let sources = [
            self.bundle.is_some(),
            self.folder.is_some(),
            self.reference.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            bail!("give one of `bundle` (a .cbs file), `folder` (a cell folder) and `ref` (a registry reference)");
        }
        if let Some(reference) = &self.reference {
            crate::registry::Reference::parse(reference)?;
        }
        if let Some(id) = &self.id {
            check_cell_id(id)?;
        }
        bounded("labels", self.labels.len())?;
        if self.scale.is_some() && self.replicas.is_some() {
            bail!("give `replicas` or `scale`, not both");
        }
        if let Some(s) = &self.scale {
            if s.min > s.max {
                bail!("scale: min {} is above max {}", s.min, s.max);
            }
        }
        if (!self.labels.is_empty() || self.spread.is_some())
            && self.replicas.is_none()
            && self.scale.is_none()
        {
            bail!("`labels` and `spread` place replicas: give `replicas` (or `scale`)");
        }
        Ok(())
    }
}

fn bounded(what: &str, n: usize) -> anyhow::Result<()> {
    if n > MAX_ENTRIES {
        bail!("{what}: {n} entries, more than {MAX_ENTRIES}");
    }
    Ok(())
}

pub use crate::manifest::check_name;

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: &str = "\
domain: orders
version: 1.0.0
cells:
  - bundle: bundles/place.cbs
    id: orders.place
    replicas: 2
    labels: {zone: a}
  - folder: cells/orders.ship
exports: [orders.place]
uses:
  - domain: billing
    cells: [billing.charge]
";

    #[test]
    fn a_spec_reads_and_writes_back_the_same() {
        let spec = Spec::parse(ORDERS).unwrap();
        assert_eq!(spec.cells[0].replicas, Some(2));
        assert_eq!(spec.uses[0].cells, ["billing.charge"]);
        let again = Spec::parse(&spec.to_yaml().unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn hostile_or_wrong_specs_are_refused_with_the_reason() {
        let cases = [
            ("domain: Orders\ncells: [{bundle: a.cbs}]", "is not a name"),
            ("domain: orders\ncells: []", "a domain has 1 to"),
            (
                "domain: orders\ncells: [{bundle: a.cbs, folder: b}]",
                "give one of",
            ),
            ("domain: orders\ncells: [{ref: a.cbs}]", "names no registry"),
            (
                "domain: orders\ncells: [{folder: a, ref: 'localhost:5000/x:1'}]",
                "give one of",
            ),
            ("domain: orders\ncells: [{}]", "give one of"),
            (
                "domain: orders\ncells: [{bundle: a.cbs}]\nsteps: []",
                "unknown field",
            ),
            (
                "domain: orders\ncells: [{bundle: a.cbs, id: 'x y'}]",
                "cell id",
            ),
            (
                "domain: orders\ncells: [{bundle: a.cbs, labels: {a: b}}]",
                "place replicas",
            ),
            (
                "domain: orders\ncells: [{bundle: a.cbs, id: a.b}, {bundle: b.cbs, id: a.b}]",
                "listed twice",
            ),
        ];
        for (text, why) in cases {
            let err = format!("{:#}", Spec::parse(text).unwrap_err());
            assert!(err.contains(why), "{text}: {err}");
        }
        // An alias bomb and a deep nest stop at the budget.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            bomb.push_str(&format!(
                "{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                (b'a' + i) as char,
                (b'a' + i) as char,
                p = (b'a' + i - 1) as char
            ));
        }
        assert!(Spec::parse(&bomb).is_err());
        let deep = format!("domain: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(Spec::parse(&deep).is_err());
        assert!(Spec::parse(&"#".repeat(MAX_BYTES + 1)).is_err());
    }

    #[test]
    fn the_published_schema_is_the_specs() {
        let published: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/schemas/domain.schema.json")).unwrap();
        assert_eq!(
            published,
            Spec::schema(),
            "regenerate docs/schemas/domain.schema.json: cargo run -p cbs-cli --bin cbs -- apply --print-schema"
        );
    }
}
