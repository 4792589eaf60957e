//! Domain boundaries, enforced by the calling cell's host: a cell outside a
//! domain may call only the cells the domain exports, a cell inside calls
//! the domain's other cells freely, and a cell of one domain calls another
//! domain's exported cell only if its domain lists it under `uses`. A
//! refused call is a `contract_violation` naming the domain and the export
//! or use that is missing. What each cell belongs to comes from the desired
//! state (each release's `domain`, for watching hosts) or from a spec
//! served in process (`cbs-host run --domain`, `domain::spec::Spec::membership`).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::envelope::{BusError, ErrorCode};

/// A cell's place in a domain: its domain and the domain's terms for it
/// (each release of the cell carries it: `deploy::Release::domain`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The domain's name.
    pub name: String,
    /// Cells outside the domain may call it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exported: bool,
    /// The cells of other domains the domain's cells may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<String>,
    /// Calls between the domain's cells on one host skip the callee's
    /// contract checks (the spec's `trust_inside`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trusted: bool,
}

/// The most cells whose membership a host keeps.
pub const MAX_CELLS: usize = 100_000;

/// Which domain each cell belongs to, with the domain's terms for it.
#[derive(Default)]
pub struct Boundaries {
    cells: RwLock<HashMap<String, Membership>>,
}

impl Boundaries {
    /// Records `cell`'s membership (`None`: in no domain).
    pub fn set(&self, cell: &str, membership: Option<Membership>) {
        let mut cells = self.cells.write().unwrap_or_else(PoisonError::into_inner);
        match membership {
            Some(m) if cells.len() < MAX_CELLS || cells.contains_key(cell) => {
                cells.insert(cell.to_owned(), m);
            }
            Some(_) => tracing::warn!(%cell, "too many cells to keep their domains; left out"),
            None => drop(cells.remove(cell)),
        }
    }

    /// `cell`'s membership, if it is in a domain.
    pub fn membership(&self, cell: &str) -> Option<Membership> {
        let cells = self.cells.read().unwrap_or_else(PoisonError::into_inner);
        cells.get(cell).cloned()
    }

    /// Whether `caller` may call `callee` (why not, as the caller gets it),
    /// and whether the call stays inside one domain that trusts its own
    /// cells' calls (`trust_inside`): one look for both, on every call.
    pub fn check(&self, caller: &str, callee: &str) -> Result<bool, BusError> {
        let cells = self.cells.read().unwrap_or_else(PoisonError::into_inner);
        let Some(target) = cells.get(callee) else {
            return Ok(false);
        };
        let mine = cells.get(caller);
        if let Some(m) = mine.filter(|m| m.name == target.name) {
            return Ok(m.trusted && target.trusted);
        }
        let from = match mine {
            Some(m) => format!("cell {caller} (of domain {})", m.name),
            None => format!("cell {caller} (outside any domain)"),
        };
        verdict(&from, mine, callee, target).map(|()| false)
    }

    /// Whether a saga of `domain` may call `callee`: as the domain's cells
    /// may.
    pub fn check_saga(&self, domain: &str, callee: &str) -> Result<(), BusError> {
        let cells = self.cells.read().unwrap_or_else(PoisonError::into_inner);
        let Some(target) = cells.get(callee) else {
            return Ok(());
        };
        let mine = cells.values().find(|m| m.name == domain);
        verdict(&format!("a saga of domain {domain}"), mine, callee, target)
    }
}

/// A call from `from` (of membership `mine`) to `callee` (of `target`).
fn verdict(
    from: &str,
    mine: Option<&Membership>,
    callee: &str,
    target: &Membership,
) -> Result<(), BusError> {
    if mine.is_some_and(|m| m.name == target.name) {
        return Ok(());
    }
    let refuse = |why: String| Err(BusError::new(ErrorCode::ContractViolation, why));
    if !target.exported {
        return refuse(format!(
            "{from} may not call {callee}: domain {} does not export it (add it to `exports` in {}'s spec, or call an exported cell)",
            target.name, target.name
        ));
    }
    if let Some(mine) = mine.filter(|m| !m.uses.iter().any(|u| u == callee)) {
        return refuse(format!(
            "{from} may not call {callee} of domain {}: {}'s spec does not list it under `uses` (add `- domain: {}` with `cells: [{callee}]`)",
            target.name, mine.name, target.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, exported: bool, uses: &[&str]) -> Option<Membership> {
        Some(Membership {
            name: name.into(),
            exported,
            uses: uses.iter().map(|u| u.to_string()).collect(),
            trusted: false,
        })
    }

    #[test]
    fn outside_callers_reach_exports_only_and_domains_only_what_they_use() {
        let b = Boundaries::default();
        b.set("orders.place", member("orders", true, &["billing.charge"]));
        b.set(
            "orders.ledger",
            member("orders", false, &["billing.charge"]),
        );
        b.set("billing.charge", member("billing", true, &[]));
        b.set("billing.refund", member("billing", true, &[]));
        b.set("billing.keys", member("billing", false, &[]));
        // Inside: free.
        assert!(b.check("orders.place", "orders.ledger").is_ok());
        // Outside any domain: exports only.
        assert!(b.check("edge.web", "orders.place").is_ok());
        let e = b.check("edge.web", "orders.ledger").unwrap_err();
        assert_eq!(e.code, ErrorCode::ContractViolation);
        assert!(
            e.message.contains("domain orders does not export it"),
            "{e}"
        );
        // Across domains: exported and used.
        assert!(b.check("orders.ledger", "billing.charge").is_ok());
        let e = b.check("orders.place", "billing.refund").unwrap_err();
        assert!(e.message.contains("does not list it under `uses`"), "{e}");
        let e = b.check("orders.place", "billing.keys").unwrap_err();
        assert!(
            e.message.contains("domain billing does not export it"),
            "{e}"
        );
        // A cell in no domain is open to all; leaving a domain opens it.
        assert!(b.check("orders.place", "edge.web").is_ok());
        // A saga runs as its domain.
        assert!(b.check_saga("orders", "orders.ledger").is_ok());
        assert!(b.check_saga("orders", "billing.charge").is_ok());
        let e = b.check_saga("orders", "billing.keys").unwrap_err();
        assert!(
            e.message
                .contains("a saga of domain orders may not call billing.keys"),
            "{e}"
        );
        b.set("orders.ledger", None);
        assert!(b.check("edge.web", "orders.ledger").is_ok());
    }

    #[test]
    fn only_calls_inside_a_trusting_domain_are_trusted() {
        let b = Boundaries::default();
        let trusting = |exported| {
            let mut m = member("orders", exported, &[]);
            if let Some(m) = m.as_mut() {
                m.trusted = true;
            }
            m
        };
        b.set("orders.front", trusting(true));
        b.set("orders.back", trusting(true));
        b.set("billing.front", member("billing", false, &["orders.back"]));
        b.set("billing.back", member("billing", false, &[]));
        assert_eq!(b.check("orders.front", "orders.back"), Ok(true));
        assert_eq!(b.check("billing.front", "orders.back"), Ok(false));
        assert_eq!(b.check("edge.web", "orders.back"), Ok(false));
        assert_eq!(b.check("billing.front", "billing.back"), Ok(false));
    }
}
