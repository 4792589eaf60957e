//! The OpenAPI 3.1 document of a route table, generated from the cells'
//! contracts: one operation per route, the input and output JSON Schemas
//! embedded as they are (OpenAPI 3.1 schemas are JSON Schema 2020-12), and
//! every problem response a route can give.

use serde_json::{json, Map, Value};

use super::problem;
use super::route::{Auth, Routes, Target};
use crate::envelope::ErrorCode;

/// The document for `routes`, titled `title`.
pub fn document(routes: &Routes, title: &str) -> Value {
    let mut paths = Map::new();
    for target in routes.targets() {
        let path = paths
            .entry(target.route.path.clone())
            .or_insert_with(|| json!({}));
        let method = target.route.method.as_str().to_ascii_lowercase();
        path[method] = operation(target);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Cells served over HTTP by CBS. Each operation sends one envelope to its cell; failures are RFC 9457 problems.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Problem": problem::schema()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

fn operation(target: &Target) -> Value {
    let route = &target.route;
    let in_path = route.params();
    let mut parameters: Vec<Value> = in_path
        .iter()
        .map(|name| parameter(target, name, "path", true))
        .collect();
    if !route.method.has_body() {
        // Without a body, the other input properties come as query parameters.
        let required = required(target);
        for name in properties(target).filter(|n| !in_path.contains(n)) {
            let needed = required.contains(&name);
            parameters.push(parameter(target, &name, "query", needed));
        }
    }
    let mut op = json!({
        "operationId": operation_id(target),
        "summary": route.summary.clone().unwrap_or_else(|| format!("cell {} {}", target.cell, target.version)),
        "tags": [target.cell],
        "parameters": parameters,
        "responses": responses(target),
    });
    if route.method.has_body() {
        let schema = target.input.clone().unwrap_or_else(|| json!({}));
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema}},
        });
    }
    if route.auth == Auth::Bearer {
        op["security"] = json!([{"bearer": []}]);
    }
    op
}

/// `<cell>.<method>.<path>` in letters, digits and `_`: unique per route.
fn operation_id(target: &Target) -> String {
    let raw = format!(
        "{}_{}_{}",
        target.cell,
        target.route.method.as_str().to_ascii_lowercase(),
        target.route.path
    );
    raw.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn parameter(target: &Target, name: &str, place: &str, required: bool) -> Value {
    let schema = target
        .input
        .as_ref()
        .and_then(|s| s.pointer(&format!("/properties/{name}")))
        .cloned()
        .unwrap_or_else(|| json!({"type": "string"}));
    json!({"name": name, "in": place, "required": required, "schema": schema})
}

fn properties(target: &Target) -> impl Iterator<Item = String> + '_ {
    target
        .input
        .as_ref()
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.keys().cloned())
}

fn required(target: &Target) -> Vec<String> {
    let schema = target.input.as_ref();
    crate::contract::required_properties(schema.and_then(|s| s.get("required")))
}

fn responses(target: &Target) -> Value {
    let output = target.output.clone().unwrap_or_else(|| json!({}));
    let mut responses = json!({
        "200": {
            "description": format!("the reply of cell {}", target.cell),
            "content": {"application/json": {"schema": output}},
            "headers": {
                "X-Correlation-Id": {"schema": {"type": "string"}, "description": "the flow's correlation id"},
                "traceparent": {"schema": {"type": "string"}, "description": "W3C trace context of the flow"},
            },
        },
    });
    let mut add = |status: u16, description: &str| {
        responses[status.to_string()] = json!({
            "description": description,
            "content": {problem::CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        });
    };
    for code in ErrorCode::all() {
        add(
            problem::status_of(code),
            &format!("{} (and the other codes of this status)", code.as_str()),
        );
    }
    add(404, "no route, or nothing serves the cell (not_found)");
    add(405, "the path has no route for this method");
    add(413, "the request body is larger than the server accepts");
    add(415, "the request body is not JSON");
    if target.route.auth == Auth::Bearer {
        add(401, "no valid bearer token");
    }
    responses
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::route::{HttpRoute, Method};

    fn target(method: Method, path: &str, auth: Auth) -> Target {
        Target {
            cell: "orders.get".into(),
            version: "1.2.0".into(),
            route: HttpRoute {
                method,
                path: path.into(),
                auth,
                summary: None,
            },
            input: Some(json!({"type": "object", "required": ["id"], "properties": {
                "id": {"type": "integer"}, "full": {"type": "boolean"}
            }})),
            output: Some(json!({"type": "object"})),
            timeout_ms: 1_000,
        }
    }

    #[test]
    fn each_route_is_an_operation_with_its_contract() {
        let (routes, _) = Routes::new(vec![
            target(Method::Get, "/orders/{id}", Auth::Bearer),
            target(Method::Post, "/orders", Auth::None),
        ]);
        let doc = document(&routes, "t");
        assert_eq!(doc["openapi"], "3.1.0");
        let get = &doc["paths"]["/orders/{id}"]["get"];
        assert_eq!(
            get["parameters"][0],
            json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}})
        );
        assert_eq!(get["parameters"][1]["in"], "query");
        assert_eq!(get["parameters"][1]["required"], false);
        assert_eq!(get["security"], json!([{"bearer": []}]));
        for status in [
            "200", "400", "401", "404", "422", "429", "500", "503", "504",
        ] {
            assert!(get["responses"].get(status).is_some(), "{status}");
        }
        let post = &doc["paths"]["/orders"]["post"];
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["required"],
            json!(["id"])
        );
        assert!(post["responses"].get("401").is_none());
        assert_ne!(get["operationId"], post["operationId"]);
    }
}
