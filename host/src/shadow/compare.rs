//! A candidate's reply against the recorded one: fields the output schema
//! marks `"x-cbs-volatile": true` (a timestamp, an id made per call) are
//! left out of both, then every place where they differ is listed by JSON
//! pointer with both values.

use serde::Serialize;
use serde_json::{Map, Value};

use super::Answer;

/// The keyword that marks a field as different on every call.
pub const VOLATILE: &str = "x-cbs-volatile";
/// The most differences listed for one reply.
pub const MAX_DIFFERENCES: usize = 100;
/// How deep `$ref`s and nested schemas are followed.
const MAX_DEPTH: usize = 64;

/// One place where the replies differ (`None`: absent on that side).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Value>,
}

/// Where two answers differ, volatile fields left out: payloads field by
/// field, errors by code (their messages may name hosts or timings).
pub fn answers(recorded: &Answer, candidate: &Answer, output: Option<&Value>) -> Vec<Difference> {
    match (recorded, candidate) {
        (Answer::Ok(a), Answer::Ok(b)) => {
            let (mut a, mut b) = (a.clone(), b.clone());
            if let Some(schema) = output {
                strip(&mut a, schema, schema, 0);
                strip(&mut b, schema, schema, 0);
            }
            let mut out = Vec::new();
            diff(&a, &b, &mut String::new(), &mut out);
            out
        }
        (Answer::Error(a), Answer::Error(b)) if a.code == b.code => Vec::new(),
        (a, b) => vec![Difference {
            path: String::new(),
            recorded: Some(shown(a)),
            candidate: Some(shown(b)),
        }],
    }
}

fn shown(answer: &Answer) -> Value {
    serde_json::to_value(answer).unwrap_or(Value::Null)
}

/// Removes from `value` what `schema` marks volatile (set to null inside
/// arrays, so that indexes stay). Follows `properties`,
/// `additionalProperties`, `items`, `prefixItems`, `allOf`/`anyOf`/`oneOf`
/// and local `$ref`s.
pub fn strip(value: &mut Value, schema: &Value, root: &Value, depth: usize) {
    let Some(schema) = schema.as_object() else {
        return;
    };
    if depth > MAX_DEPTH {
        return;
    }
    if let Some(target) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| local(root, r))
    {
        strip(value, target, root, depth + 1);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            strip(value, branch, root, depth + 1);
        }
    }
    match value {
        Value::Object(fields) => strip_fields(fields, schema, root, depth),
        Value::Array(items) => {
            let prefix = schema.get("prefixItems").and_then(Value::as_array);
            for (i, item) in items.iter_mut().enumerate() {
                let sub = prefix
                    .and_then(|p| p.get(i))
                    .or_else(|| schema.get("items"));
                if let Some(sub) = sub {
                    if is_volatile(sub) {
                        *item = Value::Null;
                    } else {
                        strip(item, sub, root, depth + 1);
                    }
                }
            }
        }
        _ => {}
    }
}

fn strip_fields(
    fields: &mut Map<String, Value>,
    schema: &Map<String, Value>,
    root: &Value,
    depth: usize,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let others = schema.get("additionalProperties");
    let names: Vec<String> = fields.keys().cloned().collect();
    for name in names {
        let Some(sub) = properties.and_then(|p| p.get(&name)).or(others) else {
            continue;
        };
        if is_volatile(sub) {
            fields.remove(&name);
        } else if let Some(field) = fields.get_mut(&name) {
            strip(field, sub, root, depth + 1);
        }
    }
}

fn is_volatile(schema: &Value) -> bool {
    schema.get(VOLATILE) == Some(&Value::Bool(true))
}

/// A `#/...` reference within the schema.
fn local<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    root.pointer(reference.strip_prefix('#')?)
}

/// Every place where `a` and `b` differ, at most [`MAX_DIFFERENCES`].
fn diff(a: &Value, b: &Value, path: &mut String, out: &mut Vec<Difference>) {
    if a == b || out.len() >= MAX_DIFFERENCES {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&key.replace('~', "~0").replace('/', "~1"));
                match (x.get(key), y.get(key)) {
                    (Some(a), Some(b)) => diff(a, b, path, out),
                    (a, b) => push(out, path, a, b),
                }
                path.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                match (x.get(i), y.get(i)) {
                    (Some(a), Some(b)) => diff(a, b, path, out),
                    (a, b) => push(out, path, a, b),
                }
                path.truncate(len);
            }
        }
        _ => push(out, path, Some(a), Some(b)),
    }
}

fn push(out: &mut Vec<Difference>, path: &str, a: Option<&Value>, b: Option<&Value>) {
    if out.len() < MAX_DIFFERENCES {
        out.push(Difference {
            path: path.to_owned(),
            recorded: a.cloned(),
            candidate: b.cloned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BusError, ErrorCode};
    use serde_json::json;

    fn ok(v: Value) -> Answer {
        Answer::Ok(v)
    }

    #[test]
    fn volatile_fields_are_left_out_at_any_depth_and_through_refs() {
        let schema = json!({
            "type": "object",
            "properties": {
                "at": {"type": "string", "x-cbs-volatile": true},
                "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
                "text": {"type": "string"}
            },
            "$defs": {"item": {"properties": {"id": {"x-cbs-volatile": true}, "n": {}}}}
        });
        let a = ok(json!({"at": "1", "items": [{"id": 1, "n": 1}], "text": "a"}));
        let b = ok(json!({"at": "2", "items": [{"id": 2, "n": 1}], "text": "a"}));
        assert!(answers(&a, &b, Some(&schema)).is_empty());
        let c = ok(json!({"at": "2", "items": [{"id": 2, "n": 2}], "text": "b"}));
        let found = answers(&a, &c, Some(&schema));
        let paths: Vec<&str> = found.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/items/0/n", "/text"]);
        assert_eq!(found[1].recorded, Some(json!("a")));
        assert_eq!(found[1].candidate, Some(json!("b")));
        // Without the schema, the volatile fields count.
        assert_eq!(answers(&a, &b, None).len(), 2);
    }

    #[test]
    fn missing_fields_and_errors_are_differences_and_error_codes_compare() {
        let found = answers(&ok(json!({"a": 1})), &ok(json!({"b": 1})), None);
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].recorded.clone(), found[0].candidate.clone()),
            (Some(json!(1)), None)
        );
        let timeout = |m: &str| Answer::Error(BusError::new(ErrorCode::Timeout, m));
        assert!(answers(&timeout("a"), &timeout("b"), None).is_empty());
        assert_eq!(answers(&timeout("a"), &ok(json!(1)), None).len(), 1);
    }

    #[test]
    fn a_deep_self_reference_or_a_huge_difference_stays_bounded() {
        let schema = json!({"$ref": "#"});
        let mut v = json!({"a": 1});
        strip(&mut v, &schema, &schema, 0);
        let a: Vec<u32> = (0..1000).collect();
        let b: Vec<u32> = (1..1001).collect();
        let found = answers(&ok(json!(a)), &ok(json!(b)), None);
        assert_eq!(found.len(), MAX_DIFFERENCES);
    }
}
