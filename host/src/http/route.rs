//! `[[http]]` in `cell.toml`: a method and a path template through which
//! HTTP clients reach a cell, and the table of routes a server matches
//! requests against.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Paths the server answers itself; no cell may take them.
pub const RESERVED: [&str; 3] = ["/openapi.json", "/healthz", "/readyz"];
/// The longest path template, and the most parameters in one.
const MAX_PATH: usize = 256;
const MAX_PARAMS: usize = 16;

/// `[[http]]`: one route to a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// GET, POST, PUT, PATCH or DELETE.
    pub method: Method,
    /// A path template: `/orders/{id}`. Path and query parameters become
    /// fields of the payload; so does a JSON object body.
    pub path: String,
    /// Whether callers must present a bearer token (a static token or a
    /// JWT) the server accepts (`--http-token-file`, `--http-jwks`).
    #[serde(default)]
    pub auth: Auth,
    /// Documentation for the OpenAPI operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }

    /// Whether requests of this method carry a body.
    pub fn has_body(self) -> bool {
        matches!(self, Self::Post | Self::Put | Self::Patch)
    }

    pub fn parse(method: &str) -> Option<Self> {
        [Self::Get, Self::Post, Self::Put, Self::Patch, Self::Delete]
            .into_iter()
            .find(|m| m.as_str() == method)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    #[default]
    None,
    Bearer,
}

impl HttpRoute {
    /// Whether the path template is well-formed and not reserved.
    pub fn validate(&self) -> anyhow::Result<()> {
        params(&self.path)?;
        if RESERVED.contains(&self.path.as_str()) {
            bail!("[[http]] path {}: the server answers it itself", self.path);
        }
        Ok(())
    }

    /// The names of the path's parameters, in order.
    pub fn params(&self) -> Vec<String> {
        params(&self.path).unwrap_or_default()
    }
}

/// The parameters of a path template, checked: `/`-separated segments,
/// each a literal of unreserved characters or one `{name}`.
fn params(path: &str) -> anyhow::Result<Vec<String>> {
    if !path.starts_with('/') || path.len() > MAX_PATH {
        bail!("[[http]] path {path:?}: it starts with / and has at most {MAX_PATH} characters");
    }
    let mut names = Vec::new();
    for segment in path[1..].split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok || names.iter().any(|n| n == name) {
                bail!("[[http]] path {path:?}: parameter {{{name}}} must be a distinct snake_case name");
            }
            names.push(name.to_owned());
        } else if segment.is_empty() && path != "/" {
            bail!("[[http]] path {path:?}: an empty segment");
        } else if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        {
            bail!("[[http]] path {path:?}: segment {segment:?} may hold only letters, digits and - . _ ~");
        }
    }
    if names.len() > MAX_PARAMS {
        bail!("[[http]] path {path:?}: at most {MAX_PARAMS} parameters");
    }
    Ok(names)
}

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
    fn path_templates_are_checked() {
        for ok in ["/greet", "/orders/{id}", "/a/{x}/b/{y_2}", "/v1.2/~x"] {
            assert!(route(Method::Get, ok).validate().is_ok(), "{ok}");
        }
        for bad in [
            "greet",
            "/orders/{Id}",
            "/a/{x}/{x}",
            "/a//b",
            "/a/{x",
            "/a b",
            "/a/*rest",
            "/openapi.json",
            &format!("/{}", "x".repeat(300)),
        ] {
            assert!(route(Method::Get, bad).validate().is_err(), "{bad}");
        }
        assert_eq!(route(Method::Get, "/a/{x}/b/{y}").params(), ["x", "y"]);
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
