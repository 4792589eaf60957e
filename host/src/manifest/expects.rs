//! `[[expects."<callee>"]]`: what a cell relies on from a cell it calls —
//! example requests, and the fields of the reply it reads. The callee's
//! new versions are checked against them before they take traffic
//! (`cbs deploy`, `cbs contract test`).

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::bounds::within;

/// Expectations per callee, and callees per cell.
pub const PER_CALLEE: usize = 32;
pub const CALLEES: usize = 32;
/// Fields one expectation reads.
pub const READS: usize = 64;
/// The longest example request, as JSON.
pub const EXAMPLE_BYTES: usize = 64 << 10;

/// One example request and the reply fields its caller reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// What the example stands for, in reports [default: its position].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The request sent (a TOML table, sent as JSON).
    pub example: serde_json::Value,
    /// JSON pointers into the reply (e.g. `/greeting`): each must be in
    /// the reply, not null.
    #[serde(default)]
    pub reads: Vec<String>,
}

impl Expectation {
    /// How reports name it: its name, or `example N` (from 1).
    pub fn title(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("example {}", index + 1))
    }
}

/// Each callee is one the cell may call; counts, pointers and examples
/// within their bounds.
pub fn validate(
    expects: &std::collections::BTreeMap<String, Vec<Expectation>>,
    may_call: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    within("[expects] callees", expects.len() as u64, CALLEES as u64)?;
    for (callee, list) in expects {
        if !may_call(callee) {
            bail!("[[expects.\"{callee}\"]] is for a cell this one may not call: add it to `calls` under [capabilities]");
        }
        let what = format!("[[expects.\"{callee}\"]] entries");
        within(&what, list.len() as u64, PER_CALLEE as u64)?;
        for e in list {
            within(
                "`reads` of an expectation",
                e.reads.len() as u64,
                READS as u64,
            )?;
            if let Some(bad) = e.reads.iter().find(|p| !is_pointer(p)) {
                bail!("[[expects.\"{callee}\"]] reads {bad:?}: give a JSON pointer such as \"/greeting\"");
            }
            let size = serde_json::to_vec(&e.example).map_or(usize::MAX, |v| v.len());
            within(
                "an expectation's example, in bytes",
                size as u64,
                EXAMPLE_BYTES as u64,
            )?;
        }
    }
    Ok(())
}

/// A JSON pointer (RFC 6901): empty, or `/`-separated tokens, short.
fn is_pointer(p: &str) -> bool {
    p.len() <= 256 && (p.is_empty() || p.starts_with('/'))
}
