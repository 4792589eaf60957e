//! The table of routes a server matches requests against. The routes
//! themselves (`[[http]]` in `cell.toml`: method, path template, auth) are
//! the manifest's (`manifest::http`), re-exported here.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::manifest::http::{Auth, HttpRoute, Method, RESERVED};

/// What a route leads to: the cell and its contract, for the request
/// mapping and the OpenAPI document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub cell: String,
    pub version: String,
    pub route: HttpRoute,
    /// The input and output JSON Schemas, when the cell declares them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Deadline of one request: the cell's `[limits] timeout_ms`.
    pub timeout_ms: u64,
}

/// The routes a server answers, matched by method and path.
pub struct Routes {
    by_method: BTreeMap<Method, matchit::Router<Arc<Target>>>,
    targets: Vec<Arc<Target>>,
}

/// One request's route: its target and the path parameters' values.
pub struct Matched {
    pub target: Arc<Target>,
    pub params: Vec<(String, String)>,
}

impl Routes {
    /// The table of `targets`; when two claim the same method and path,
    /// the first by cell id wins and the other is returned as a conflict.
    pub fn new(mut targets: Vec<Target>) -> (Self, Vec<String>) {
        targets.sort_by(|a, b| (&a.cell, &a.route.path).cmp(&(&b.cell, &b.route.path)));
        let mut by_method: BTreeMap<Method, matchit::Router<Arc<Target>>> = BTreeMap::new();
        let (mut kept, mut conflicts) = (Vec::new(), Vec::new());
        for target in targets {
            let target = Arc::new(target);
            let router = by_method.entry(target.route.method).or_default();
            match router.insert(target.route.path.clone(), target.clone()) {
                Ok(()) => kept.push(target),
                Err(e) => conflicts.push(format!(
                    "{} {} of cell {}: {e}",
                    target.route.method.as_str(),
                    target.route.path,
                    target.cell
                )),
            }
        }
        let routes = Self {
            by_method,
            targets: kept,
        };
        (routes, conflicts)
    }

    /// The route of `method` and `path`, with its parameters (decoded).
    pub fn find(&self, method: Method, path: &str) -> Option<Matched> {
        let found = self.by_method.get(&method)?.at(path).ok()?;
        let params = found
            .params
            .iter()
            .map(|(k, v)| {
                let value = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                (k.to_owned(), value.into_owned())
            })
            .collect();
        Some(Matched {
            target: found.value.clone(),
            params,
        })
    }

    /// Whether any method has a route at `path` (405 rather than 404).
    pub fn methods_at(&self, path: &str) -> Vec<Method> {
        self.by_method
            .iter()
            .filter(|(_, router)| router.at(path).is_ok())
            .map(|(m, _)| *m)
            .collect()
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> HttpRoute {
        HttpRoute {
            method,
            path: path.to_owned(),
            auth: Auth::None,
            summary: None,
        }
    }

    fn target(cell: &str, method: Method, path: &str) -> Target {
        Target {
            cell: cell.to_owned(),
            version: "1.0.0".into(),
            route: route(method, path),
            input: None,
            output: None,
            timeout_ms: 1_000,
        }
    }

    #[test]
    fn requests_match_by_method_and_path() {
        let (routes, conflicts) = Routes::new(vec![
            target("logic.greet", Method::Post, "/greet"),
            target("orders.get", Method::Get, "/orders/{id}"),
        ]);
        assert!(conflicts.is_empty());
        let m = routes.find(Method::Get, "/orders/a%20b").unwrap();
        assert_eq!(m.target.cell, "orders.get");
        assert_eq!(m.params, [("id".to_owned(), "a b".to_owned())]);
        assert!(routes.find(Method::Get, "/greet").is_none());
        assert_eq!(routes.methods_at("/greet"), [Method::Post]);
        assert!(routes.find(Method::Get, "/orders/1/x").is_none());
    }

    #[test]
    fn the_first_cell_keeps_a_contested_route() {
        let (routes, conflicts) = Routes::new(vec![
            target("b.cell", Method::Post, "/x"),
            target("a.cell", Method::Post, "/x"),
        ]);
        assert_eq!(
            routes.find(Method::Post, "/x").unwrap().target.cell,
            "a.cell"
        );
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert!(conflicts[0].contains("b.cell"));
    }
}
