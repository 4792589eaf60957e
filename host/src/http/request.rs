//! An HTTP request to a cell's payload: the JSON body (an object, or none),
//! with the path and query parameters set as fields of it. A parameter
//! whose property the input schema types as integer, number or boolean is
//! converted from its text; the host's contract check does the rest.

use serde_json::{Map, Value};

use super::route::Target;
use crate::envelope::{BusError, ErrorCode};

/// The most query parameters one request may carry.
pub const MAX_QUERY_PARAMS: usize = 64;

/// The payload for `target` from a request's parameters and body.
pub fn payload(
    target: &Target,
    path_params: Vec<(String, String)>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Value, BusError> {
    let mut fields = body_fields(target, body, path_params.is_empty() && query.is_none())?;
    let Some(object) = fields.as_object_mut() else {
        // A body that is not an object, with no parameters to add.
        return Ok(fields);
    };
    let query = query_params(query.unwrap_or_default())?;
    for (name, text) in query.into_iter().chain(path_params) {
        let value = typed(target, &name, text);
        object.insert(name, value);
    }
    Ok(fields)
}

/// The body as JSON: `{}` when empty; any JSON value when no parameter
/// must be added to it, else an object.
fn body_fields(target: &Target, body: &[u8], bare: bool) -> Result<Value, BusError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    if !target.route.method.has_body() {
        return Err(invalid(format!(
            "{} requests to {} take no body; send parameters in the path or query",
            target.route.method.as_str(),
            target.route.path
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the request body is not JSON: {e}")))?;
    if !bare && !value.is_object() {
        return Err(invalid(
            "the request body must be a JSON object: the path and query parameters are added to it",
        ));
    }
    Ok(value)
}

/// The query's parameters, decoded: at most [`MAX_QUERY_PARAMS`], none
/// twice.
#[doc(hidden)] // pub for the fuzz target
pub fn query_params(query: &str) -> Result<Vec<(String, String)>, BusError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if params.iter().any(|(n, _)| *n == name) {
            return Err(invalid(format!("query parameter {name:?} is given twice")));
        }
        if params.len() == MAX_QUERY_PARAMS {
            return Err(invalid(format!(
                "more than {MAX_QUERY_PARAMS} query parameters"
            )));
        }
        params.push((name.into_owned(), value.into_owned()));
    }
    Ok(params)
}

/// `text` as the type the input schema gives property `name`; as text
/// when it has none or does not parse (the contract check then says why).
fn typed(target: &Target, name: &str, text: String) -> Value {
    let kind = target
        .input
        .as_ref()
        .and_then(|s| s.pointer(&format!("/properties/{name}/type")))
        .and_then(Value::as_str);
    let parsed = match kind {
        Some("integer") => text.parse::<i64>().ok().map(Value::from),
        Some("number") => text
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Value::from),
        Some("boolean") => text.parse::<bool>().ok().map(Value::from),
        _ => None,
    };
    parsed.unwrap_or(Value::String(text))
}

fn invalid(message: impl Into<String>) -> BusError {
    BusError::new(ErrorCode::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::http::route::{Auth, HttpRoute, Method};

    fn target(method: Method, path: &str) -> Target {
        Target {
            cell: "orders.get".into(),
            version: "1.0.0".into(),
            route: HttpRoute {
                method,
                path: path.into(),
                auth: Auth::None,
                summary: None,
            },
            input: Some(json!({"type": "object", "properties": {
                "id": {"type": "integer"}, "full": {"type": "boolean"}, "name": {"type": "string"}
            }})),
            output: None,
            timeout_ms: 1_000,
        }
    }

    #[test]
    fn parameters_become_typed_fields() {
        let t = target(Method::Get, "/orders/{id}");
        let params = vec![("id".to_owned(), "42".to_owned())];
        let p = payload(&t, params, Some("full=true&name=a%20b"), b"").unwrap();
        assert_eq!(p, json!({"id": 42, "full": true, "name": "a b"}));
        // Not a number: left as text for the contract to refuse.
        let p = payload(&t, vec![("id".into(), "x".into())], None, b"").unwrap();
        assert_eq!(p, json!({"id": "x"}));
    }

    #[test]
    fn a_body_and_parameters_merge() {
        let t = target(Method::Post, "/orders/{id}");
        let params = vec![("id".to_owned(), "7".to_owned())];
        let p = payload(&t, params, None, br#"{"name": "Ada", "id": 1}"#).unwrap();
        assert_eq!(p, json!({"name": "Ada", "id": 7}));
        let bare = target(Method::Post, "/greet");
        assert_eq!(
            payload(&bare, vec![], None, b"[1, 2]").unwrap(),
            json!([1, 2])
        );
        assert_eq!(payload(&bare, vec![], None, b"").unwrap(), json!({}));
    }

    #[test]
    fn bad_requests_are_invalid_input() {
        let t = target(Method::Post, "/orders/{id}");
        let id = || vec![("id".to_owned(), "7".to_owned())];
        for (params, query, body) in [
            (id(), None, &b"{not json"[..]),
            (id(), None, b"[1]"),
            (id(), Some("a=1&a=2"), b""),
        ] {
            let err = payload(&t, params, query, body).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidInput, "{err}");
        }
        let get = target(Method::Get, "/orders/{id}");
        assert!(
            payload(&get, id(), None, b"{}").is_err(),
            "GET takes no body"
        );
        let many: String = (0..100).map(|i| format!("p{i}=1&")).collect();
        assert!(payload(&get, id(), Some(&many), b"").is_err());
    }
}
