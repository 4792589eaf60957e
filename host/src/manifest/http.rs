//! `[[http]]`: a method and a path template through which HTTP clients
//! reach a cell. Owned here, below `http` (which serves the routes and
//! re-exports these types from `http::route`), so that reading a manifest
//! needs nothing of the server.

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
}
