//! Contract compatibility: does a new schema keep the promises of the old?
//!
//! A new **input** schema must accept everything the old one accepted, and a
//! new **output** schema must allow nothing the old one forbade. Both reduce
//! to one question — where does schema `narrow` accept less than schema
//! `wide`? — asked with the sides swapped. The check is structural over the
//! keywords cells use (type, enum, const, required, properties,
//! additionalProperties, items, numeric and length bounds); any other
//! keyword that changed is reported as breaking, since it cannot be proved
//! safe. By convention a new *optional* property is compatible.

use serde::Serialize;
use serde_json::{Map, Value};

/// Which schema of a cell's contract is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The new schema must accept at least what the old one did.
    Input,
    /// The new schema must allow at most what the old one did.
    Output,
}

/// One breaking change: where (JSON pointer into the payload), which
/// keyword, and what changed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Break {
    pub pointer: String,
    pub keyword: String,
    pub message: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{pointer}: {} ({})", self.message, self.keyword)
    }
}

/// The breaking changes from `old` to `new`, empty when compatible.
pub fn check(old: &Value, new: &Value, direction: Direction) -> Vec<Break> {
    let mut walk = Walk {
        breaks: Vec::new(),
        labels: match direction {
            Direction::Input => ("old", "new"),
            Direction::Output => ("new", "old"),
        },
    };
    match direction {
        Direction::Input => walk.compare(old, new, ""),
        Direction::Output => walk.compare(new, old, ""),
    }
    walk.breaks
}

/// Keywords that only annotate: changing them changes nothing accepted.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Keywords this module reasons about.
const HANDLED: &[&str] = &[
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
];

struct Walk {
    breaks: Vec<Break>,
    /// Names of the (wide, narrow) sides, for messages.
    labels: (&'static str, &'static str),
}

impl Walk {
    fn push(&mut self, pointer: &str, keyword: &str, message: String) {
        self.breaks.push(Break {
            pointer: pointer.to_owned(),
            keyword: keyword.to_owned(),
            message,
        });
    }

    /// Records where `narrow` accepts less than `wide`.
    fn compare(&mut self, wide: &Value, narrow: &Value, ptr: &str) {
        let (w, n) = self.labels;
        let empty = Map::new();
        let (wide, narrow) = match (wide, narrow) {
            (_, Value::Bool(true)) | (Value::Bool(false), _) => return,
            (_, Value::Bool(false)) => {
                return self.push(ptr, "false", format!("the {n} schema accepts nothing here"))
            }
            (Value::Bool(true), Value::Object(n)) => (&empty, n),
            (Value::Object(w), Value::Object(n)) => (w, n),
            _ => return self.push(ptr, "schema", "a schema is not an object".to_owned()),
        };
        self.types(wide, narrow, ptr);
        self.values(wide, narrow, ptr);
        self.bounds(wide, narrow, ptr);
        self.object(wide, narrow, ptr);
        if let Some(items) = narrow.get("items") {
            let wide_items = wide.get("items").unwrap_or(&Value::Bool(true));
            self.compare(wide_items, items, &format!("{ptr}/*"));
        }
        for (key, value) in narrow {
            let known = HANDLED.contains(&key.as_str()) || ANNOTATIONS.contains(&key.as_str());
            if !known && wide.get(key) != Some(value) {
                self.push(
                    ptr,
                    key,
                    format!("`{key}` differs in the {n} schema from the {w} one, and CBS cannot prove that safe"),
                );
            }
        }
    }

    fn types(&mut self, wide: &Map<String, Value>, narrow: &Map<String, Value>, ptr: &str) {
        let (w, n) = self.labels;
        let Some(narrow_types) = narrow.get("type").map(type_set) else {
            return;
        };
        let wide_types = wide.get("type").map(type_set).unwrap_or_else(|| {
            ["null", "boolean", "object", "array", "number", "string"]
                .map(str::to_owned)
                .to_vec()
        });
        let lost: Vec<&String> = wide_types
            .iter()
            .filter(|t| {
                // `number` still accepts every `integer`.
                let covered = narrow_types.contains(t)
                    || (t.as_str() == "integer" && narrow_types.iter().any(|n| n == "number"));
                !covered
            })
            .collect();
        if !lost.is_empty() {
            self.push(
                ptr,
                "type",
                format!(
                    "type narrowed: the {w} schema allows {} but the {n} one only {}",
                    wide_types.join(" | "),
                    narrow_types.join(" | ")
                ),
            );
        }
    }

    fn values(&mut self, wide: &Map<String, Value>, narrow: &Map<String, Value>, ptr: &str) {
        let (w, n) = self.labels;
        let allowed = |s: &Map<String, Value>| -> Option<Vec<Value>> {
            s.get("const")
                .map(|c| vec![c.clone()])
                .or_else(|| s.get("enum").and_then(Value::as_array).cloned())
        };
        let Some(narrow_values) = allowed(narrow) else {
            return;
        };
        let keyword = if narrow.contains_key("const") {
            "const"
        } else {
            "enum"
        };
        match allowed(wide) {
            None => self.push(
                ptr,
                keyword,
                format!(
                    "the {n} schema allows only {narrow_values:?}; the {w} one allowed any value"
                ),
            ),
            Some(wide_values) => {
                for value in wide_values.iter().filter(|v| !narrow_values.contains(v)) {
                    self.push(
                        ptr,
                        keyword,
                        format!(
                            "value {value} is allowed by the {w} schema but not by the {n} one"
                        ),
                    );
                }
            }
        }
    }

    fn bounds(&mut self, wide: &Map<String, Value>, narrow: &Map<String, Value>, ptr: &str) {
        let (w, n) = self.labels;
        // (keyword, true when a larger value is narrower)
        const BOUNDS: &[(&str, bool)] = &[
            ("minimum", true),
            ("exclusiveMinimum", true),
            ("minLength", true),
            ("minItems", true),
            ("maximum", false),
            ("exclusiveMaximum", false),
            ("maxLength", false),
            ("maxItems", false),
        ];
        for &(keyword, larger_is_narrower) in BOUNDS {
            let Some(nv) = narrow.get(keyword).and_then(Value::as_f64) else {
                continue;
            };
            let narrower = match wide.get(keyword).and_then(Value::as_f64) {
                None => true,
                Some(wv) if larger_is_narrower => nv > wv,
                Some(wv) => nv < wv,
            };
            if narrower {
                let was = wide
                    .get(keyword)
                    .map_or_else(|| "none".to_owned(), Value::to_string);
                self.push(
                    ptr,
                    keyword,
                    format!("`{keyword}` is {nv} in the {n} schema, {was} in the {w} one"),
                );
            }
        }
    }

    fn object(&mut self, wide: &Map<String, Value>, narrow: &Map<String, Value>, ptr: &str) {
        let (w, n) = self.labels;
        let required = |s: &Map<String, Value>| super::required_properties(s.get("required"));
        let wide_required = required(wide);
        for name in required(narrow) {
            if !wide_required.contains(&name) {
                self.push(
                    &format!("{ptr}/{}", escape(&name)),
                    "required",
                    format!("`{name}` is required by the {n} schema but not by the {w} one"),
                );
            }
        }
        let empty = Map::new();
        let props = |s: &'_ Map<String, Value>| -> Map<String, Value> {
            s.get("properties")
                .and_then(Value::as_object)
                .unwrap_or(&empty)
                .clone()
        };
        let (wide_props, narrow_props) = (props(wide), props(narrow));
        let narrow_extra = narrow
            .get("additionalProperties")
            .unwrap_or(&Value::Bool(true));
        for (name, wide_schema) in &wide_props {
            let at = format!("{ptr}/{}", escape(name));
            match narrow_props.get(name) {
                Some(narrow_schema) => self.compare(wide_schema, narrow_schema, &at),
                None if *narrow_extra == Value::Bool(false) => self.push(
                    &at,
                    "properties",
                    format!("`{name}` is allowed by the {w} schema but the {n} one forbids it (additionalProperties: false)"),
                ),
                None => self.compare(wide_schema, narrow_extra, &at),
            }
        }
        let wide_extra = wide
            .get("additionalProperties")
            .unwrap_or(&Value::Bool(true));
        if wide_extra != narrow_extra {
            self.compare(wide_extra, narrow_extra, &format!("{ptr}/*"));
        }
    }
}

fn type_set(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// A property name as a JSON pointer token.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn person() -> Value {
        json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "age": {"type": ["integer", "string"]},
                "mood": {"enum": ["happy", "sad", "calm"]}
            }
        })
    }

    fn with(f: impl FnOnce(&mut Value)) -> Value {
        let mut v = person();
        f(&mut v);
        v
    }

    #[test]
    fn identical_and_annotations_are_compatible() {
        assert!(check(&person(), &person(), Direction::Input).is_empty());
        let described = with(|v| v["description"] = json!("a person"));
        assert!(check(&person(), &described, Direction::Input).is_empty());
    }

    #[test]
    fn added_optional_field_is_compatible() {
        let new = with(|v| v["properties"]["email"] = json!({"type": "string"}));
        assert_eq!(check(&person(), &new, Direction::Input), vec![]);
    }

    #[test]
    fn new_required_field_is_named() {
        let new = with(|v| {
            v["properties"]["email"] = json!({"type": "string"});
            v["required"] = json!(["name", "email"]);
        });
        let breaks = check(&person(), &new, Direction::Input);
        assert_eq!(breaks.len(), 1, "{breaks:?}");
        assert_eq!(breaks[0].pointer, "/email");
        assert_eq!(breaks[0].keyword, "required");
    }

    #[test]
    fn narrowed_type_is_named() {
        let new = with(|v| v["properties"]["age"]["type"] = json!("integer"));
        let breaks = check(&person(), &new, Direction::Input);
        assert_eq!(breaks.len(), 1, "{breaks:?}");
        assert_eq!(
            (breaks[0].pointer.as_str(), breaks[0].keyword.as_str()),
            ("/age", "type")
        );
        // integer → number widens.
        let wider = with(|v| v["properties"]["age"]["type"] = json!(["number", "string"]));
        assert!(check(&person(), &wider, Direction::Input).is_empty());
    }

    #[test]
    fn removed_enum_value_is_named() {
        let new = with(|v| v["properties"]["mood"]["enum"] = json!(["happy", "calm"]));
        let breaks = check(&person(), &new, Direction::Input);
        assert_eq!(breaks.len(), 1, "{breaks:?}");
        assert_eq!(breaks[0].pointer, "/mood");
        assert!(breaks[0].message.contains("\"sad\""), "{}", breaks[0]);
    }

    #[test]
    fn output_direction_is_reversed() {
        // An output that adds an enum value may produce what old readers forbid...
        let new =
            with(|v| v["properties"]["mood"]["enum"] = json!(["happy", "sad", "calm", "angry"]));
        let breaks = check(&person(), &new, Direction::Output);
        assert_eq!(breaks.len(), 1, "{breaks:?}");
        assert!(breaks[0].message.contains("angry"), "{}", breaks[0]);
        // ...while it is fine for an input.
        assert!(check(&person(), &new, Direction::Input).is_empty());
        // An output that makes a field always present is fine.
        let stricter = with(|v| v["required"] = json!(["name", "age"]));
        assert!(check(&person(), &stricter, Direction::Output).is_empty());
    }

    #[test]
    fn bounds_and_closed_objects() {
        let new = with(|v| {
            v["properties"]["name"]["maxLength"] = json!(10);
            v["additionalProperties"] = json!(false);
        });
        let breaks = check(&person(), &new, Direction::Input);
        let keywords: Vec<&str> = breaks.iter().map(|b| b.keyword.as_str()).collect();
        assert!(keywords.contains(&"maxLength"), "{breaks:?}");
        assert!(keywords.contains(&"false"), "{breaks:?}");
    }

    #[test]
    fn unknown_keywords_are_breaking_when_changed() {
        let new = with(|v| v["properties"]["name"]["pattern"] = json!("^[A-Z]"));
        let breaks = check(&person(), &new, Direction::Input);
        assert_eq!(breaks[0].keyword, "pattern");
    }
}
