//! Dependencies between deployed cells: each release records the cells it
//! calls with their version ranges (`calls = ["logic.greet@^1"]`), so the
//! lattice's desired state alone answers what a deploy needs, what an
//! undeploy breaks, and the tree `cbs deps` prints.

use std::collections::{BTreeMap, BTreeSet};

use super::{Desired, Store};
use crate::manifest::Call;

/// The deployed cells: each current release's version and calls.
#[derive(Debug, Default)]
pub struct Lattice {
    cells: BTreeMap<String, Deployed>,
}

#[derive(Debug, Clone)]
struct Deployed {
    /// The current release's version first, then the majors kept beside.
    versions: Vec<String>,
    calls: Vec<Call>,
}

/// A call the lattice cannot answer: nothing of the cell is deployed, or
/// a version outside the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub call: Call,
    pub deployed: Option<String>,
}

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.deployed {
            None => write!(f, "{} (not deployed)", self.call),
            Some(v) => write!(f, "{} ({v} is deployed)", self.call),
        }
    }
}

/// One cell of a dependency tree.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Node {
    pub cell: String,
    /// The deployed version; none when nothing of it is deployed.
    pub version: Option<String>,
    /// The range its caller asked for (none at the root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// Whether the deployed version is in that range.
    pub compatible: bool,
    /// Already shown higher up this branch (a cycle): not expanded again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cycle: bool,
    pub calls: Vec<Node>,
}

impl Lattice {
    /// The lattice as its desired state says.
    pub async fn read(store: &Store) -> anyhow::Result<Self> {
        Ok(Self::of(&store.all_desired().await?))
    }

    pub fn of(desired: &[Desired]) -> Self {
        let cells = desired
            .iter()
            .map(|d| {
                let versions = std::iter::once(&d.current)
                    .chain(&d.beside)
                    .map(|r| r.version.clone())
                    .collect();
                let deployed = Deployed {
                    versions,
                    calls: d.current.calls.clone(),
                };
                (d.cell.clone(), deployed)
            })
            .collect();
        Self { cells }
    }

    /// The deployed (current) version of `cell`.
    pub fn version(&self, cell: &str) -> Option<&str> {
        self.cells
            .get(cell)
            .and_then(|d| d.versions.first())
            .map(String::as_str)
    }

    /// The version of `cell` a call reaches: the current one if it admits
    /// it, else a major kept beside that does.
    fn reached(&self, call: &Call) -> Option<&str> {
        let d = self.cells.get(&call.cell)?;
        d.versions
            .iter()
            .find(|v| call.admits(v))
            .map(String::as_str)
    }

    /// Deployed callers with a range that deploying `version` of `cell`
    /// leaves unanswered: neither it nor a version of another major still
    /// served admits them (the release it replaces is kept beside when a
    /// caller needs it: `rollout`).
    pub fn would_break(&self, cell: &str, version: &str) -> Vec<(String, Call)> {
        let lane = crate::majors::of_version(version);
        let after: Vec<&String> = self.cells.get(cell).map_or(Vec::new(), |d| {
            d.versions
                .iter()
                .filter(|v| lane.is_none() || crate::majors::of_version(v) != lane)
                .collect()
        });
        self.dependents(cell)
            .into_iter()
            .filter(|(_, call)| {
                call.range.is_some()
                    && !call.admits(version)
                    && !after.iter().any(|v| call.admits(v))
            })
            .collect()
    }

    /// Deployed callers that need major `lane` of `cell`: their range
    /// admits it and no other version served.
    pub fn needing_major(&self, cell: &str, lane: &str) -> Vec<(String, Call)> {
        let others: Vec<&String> = self.cells.get(cell).map_or(Vec::new(), |d| {
            d.versions
                .iter()
                .filter(|v| crate::majors::of_version(v).as_deref() != Some(lane))
                .collect()
        });
        self.dependents(cell)
            .into_iter()
            .filter(|(_, call)| call.range.is_some() && !others.iter().any(|v| call.admits(v)))
            .collect()
    }

    /// The calls of `calls` the lattice does not answer in a version they
    /// work with.
    pub fn unmet(&self, calls: &[Call]) -> Vec<Unmet> {
        calls
            .iter()
            .filter(|call| self.reached(call).is_none())
            .map(|call| Unmet {
                call: call.clone(),
                deployed: self.version(&call.cell).map(str::to_owned),
            })
            .collect()
    }

    /// The deployed cells that call `cell` (other than itself), with the
    /// grant each holds.
    pub fn dependents(&self, cell: &str) -> Vec<(String, Call)> {
        self.cells
            .iter()
            .filter(|(caller, _)| caller.as_str() != cell)
            .filter_map(|(caller, d)| {
                let call = d.calls.iter().find(|c| c.cell == cell)?;
                Some((caller.clone(), call.clone()))
            })
            .collect()
    }

    /// `cell` and what it calls, recursively.
    pub fn tree(&self, cell: &str) -> Node {
        self.node(cell, None, &mut BTreeSet::new())
    }

    fn node(&self, cell: &str, via: Option<&Call>, path: &mut BTreeSet<String>) -> Node {
        let deployed = self.cells.get(cell);
        let reached = via.and_then(|call| self.reached(call));
        let compatible = via.is_none() || reached.is_some();
        let version = reached.or_else(|| self.version(cell)).map(str::to_owned);
        let cycle = !path.insert(cell.to_owned());
        let calls = match deployed {
            Some(d) if !cycle => d
                .calls
                .iter()
                .map(|call| self.node(&call.cell, Some(call), path))
                .collect(),
            _ => Vec::new(),
        };
        if !cycle {
            path.remove(cell);
        }
        Node {
            cell: cell.to_owned(),
            version,
            range: via.and_then(|c| c.range.as_ref()).map(ToString::to_string),
            compatible,
            cycle,
            calls,
        }
    }
}

impl Node {
    /// The tree as indented lines: `cell version (range) ...`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out, 0);
        out
    }

    fn render_into(&self, out: &mut String, depth: usize) {
        let indent = "  ".repeat(depth);
        let version = self.version.as_deref().unwrap_or("not deployed");
        let range = self
            .range
            .as_ref()
            .map_or(String::new(), |r| format!(" (wants {r})"));
        let mark = match (self.compatible, self.cycle) {
            (false, _) => "  ✗ not compatible",
            (true, true) => "  (cycle)",
            _ => "",
        };
        out.push_str(&format!("{indent}{} {version}{range}{mark}\n", self.cell));
        for call in &self.calls {
            call.render_into(out, depth + 1);
        }
    }

    /// Whether every call down the tree is answered in a compatible version.
    pub fn satisfied(&self) -> bool {
        self.compatible && self.calls.iter().all(Node::satisfied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lattice(cells: &[(&str, &str, &[&str])]) -> Lattice {
        Lattice {
            cells: cells
                .iter()
                .map(|(id, v, calls)| {
                    let calls = calls.iter().map(|c| Call::parse(c).unwrap()).collect();
                    (
                        id.to_string(),
                        Deployed {
                            versions: v.split(',').map(str::to_owned).collect(),
                            calls,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_major_kept_beside_answers_the_callers_that_need_it() {
        let l = lattice(&[
            ("logic.greet", "2.0.0,1.4.0", &[]),
            ("app.old", "1.0.0", &["logic.greet@^1"]),
            ("app.new", "1.0.0", &["logic.greet@^2"]),
        ]);
        assert!(l
            .unmet(&[Call::parse("logic.greet@^1").unwrap()])
            .is_empty());
        assert!(l
            .tree("app.old")
            .render()
            .contains("logic.greet 1.4.0 (wants ^1)"));
        assert!(l
            .tree("app.new")
            .render()
            .contains("logic.greet 2.0.0 (wants ^2)"));
        let needing: Vec<String> = l
            .needing_major("logic.greet", "1")
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(needing, ["app.old"]);
        assert_eq!(l.needing_major("logic.greet", "2").len(), 1);
    }

    #[test]
    fn unmet_calls_name_what_is_deployed() {
        let l = lattice(&[("logic.greet", "1.2.0", &[]), ("io.print", "0.1.0", &[])]);
        let calls: Vec<Call> = ["logic.greet@^1", "io.print@^2", "io.absent", "io.print"]
            .iter()
            .map(|c| Call::parse(c).unwrap())
            .collect();
        let unmet: Vec<String> = l.unmet(&calls).iter().map(ToString::to_string).collect();
        assert_eq!(
            unmet,
            [
                "io.print@^2 (0.1.0 is deployed)",
                "io.absent (not deployed)"
            ]
        );
    }

    #[test]
    fn trees_resolve_versions_mark_mismatches_and_stop_at_cycles() {
        let l = lattice(&[
            ("app.front", "1.0.0", &["logic.greet@^1", "io.print@^2"]),
            ("logic.greet", "1.3.0", &["app.front"]),
            ("io.print", "1.0.0", &[]),
        ]);
        let tree = l.tree("app.front");
        assert!(!tree.satisfied());
        assert_eq!(
            tree.render(),
            "app.front 1.0.0\n  logic.greet 1.3.0 (wants ^1)\n    app.front 1.0.0  (cycle)\n  io.print 1.0.0 (wants ^2)  ✗ not compatible\n"
        );
        assert_eq!(
            l.dependents("logic.greet"),
            [(
                "app.front".to_owned(),
                Call::parse("logic.greet@^1").unwrap()
            )]
        );
    }
}
