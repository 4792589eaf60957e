//! An HTTP request's path and query against a table of routes.

use cbs_host::http::request::{payload, query_params, MAX_QUERY_PARAMS};
use cbs_host::http::route::{Auth, HttpRoute, Method, Routes, Target};
use serde_json::json;

/// The routes always served; the input may add templates.
const ROUTES: &[(Method, &str)] = &[
    (Method::Get, "/orders/{id}"),
    (Method::Delete, "/orders/{id}"),
    (Method::Get, "/orders/{id}/items/{item}"),
    (Method::Post, "/greet"),
    (Method::Get, "/v1.2/~x"),
    (Method::Get, "/a/{x}/b/{y_2}"),
];
/// The most templates taken from one input.
const MAX_EXTRA: usize = 8;

/// `METHOD path?query` on the first line, route templates (GET) on the
/// next ones. Never a panic; a match names exactly its template's
/// parameters and is among the methods at that path; a query accepted has
/// at most 64 parameters, none twice, and every parameter is a field of
/// the payload.
pub fn http_request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let request = lines.next().unwrap_or_default();
    let extra = lines.take(MAX_EXTRA).map(|path| (Method::Get, path));
    let targets: Vec<Target> = ROUTES
        .iter()
        .map(|(m, p)| (*m, *p))
        .chain(extra)
        .enumerate()
        .filter_map(|(i, (method, path))| target(i, method, path))
        .collect();
    let (routes, _conflicts) = Routes::new(targets);
    let (method, rest) = match request.split_once(' ') {
        Some((m, rest)) => (Method::parse(m).unwrap_or(Method::Get), rest),
        None => (Method::Get, request),
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let accepted = query.map(query_params);
    if let Some(Ok(params)) = &accepted {
        assert!(
            params.len() <= MAX_QUERY_PARAMS,
            "{} parameters",
            params.len()
        );
        for (i, (name, _)) in params.iter().enumerate() {
            assert!(params[..i].iter().all(|(n, _)| n != name), "{name:?} twice");
        }
    }
    let Some(matched) = routes.find(method, path) else {
        return;
    };
    assert!(routes.methods_at(path).contains(&method));
    let names: Vec<String> = matched.params.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, matched.target.route.params(), "{path:?}");
    let result = payload(&matched.target, matched.params.clone(), query, b"");
    let query_names = match &accepted {
        Some(Err(_)) => return assert!(result.is_err(), "{query:?} refused, then taken"),
        Some(Ok(params)) => params.iter().map(|(n, _)| n.clone()).collect(),
        None => Vec::new(),
    };
    let fields = result.expect("a query accepted and no body: a payload");
    for name in query_names.iter().chain(&names) {
        assert!(fields.get(name).is_some(), "{name:?} missing from {fields}");
    }
}

/// The route of template `path`, when it is a valid one.
fn target(i: usize, method: Method, path: &str) -> Option<Target> {
    let route = HttpRoute {
        method,
        path: path.to_owned(),
        auth: Auth::None,
        summary: None,
    };
    route.validate().ok()?;
    Some(Target {
        cell: format!("fuzz.route{i}"),
        version: "1.0.0".to_owned(),
        route,
        input: Some(json!({"type": "object", "properties": {
            "id": {"type": "integer"}, "item": {"type": "number"}, "full": {"type": "boolean"}
        }})),
        output: None,
        timeout_ms: 1_000,
    })
}
