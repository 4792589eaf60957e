//! Test inputs generated from an input schema (`cbs contract test`):
//! valid ones that between them take every branch the schema offers (each
//! enum value, `oneOf`/`anyOf` branch, type, optional property present and
//! absent, bound at its edges), and invalid ones that each break one rule
//! next to a valid input, naming the JSON pointer a host must report.
//!
//! Seeded and repeatable. Every case is checked with the same validator the
//! hosts use before it is kept: a valid case validates, an invalid one fails
//! at the pointer it names; what the generator cannot make right (a pattern
//! that contradicts a length, overlapping `oneOf` branches) is dropped, not
//! sent with a wrong expectation.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng};
use serde_json::{json, Map, Value};

/// The most cases generated, valid and invalid each.
pub const MAX_CASES: usize = 500;
/// How deep the generator follows nested schemas (recursive `$ref`s end).
const MAX_DEPTH: usize = 12;
/// Rounds an option gets to make a valid value before it is given up.
const RETRIES: usize = 8;
/// The longest string or array made, whatever the schema asks.
const MAX_LENGTH: usize = 4_096;
/// The longest string or array made where the schema sets no maximum.
const OPEN_MAX: usize = 8;

/// One generated input and what a host must answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// What the case exercises, e.g. `/kind enum "b"` or `/name maxLength`.
    pub label: String,
    pub input: Value,
    pub expect: Expect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A reply that passes the output schema (or a typed error).
    Valid,
    /// `invalid_input` or `contract_violation` naming `pointer`.
    Invalid { pointer: String, keyword: String },
}

/// The valid and invalid cases of `schema`, from `seed`.
pub fn generate(schema: &Value, seed: u64) -> anyhow::Result<Vec<Case>> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| anyhow::anyhow!("the input schema does not compile: {e}"))?;
    let mut valid = valid_cases(schema, seed, &validator);
    let invalid = invalid_cases(schema, &valid, &validator);
    valid.extend(invalid);
    Ok(valid)
}

/// A choice the schema offers at one place: which option each case takes.
type Choices = BTreeMap<String, usize>;

fn valid_cases(schema: &Value, seed: u64, validator: &jsonschema::Validator) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seen = BTreeSet::new();
    // Each choice met, with its options and the way to it; each option
    // is then forced once, with the choices that lead to it.
    let mut points: BTreeMap<String, (Vec<String>, Choices)> = BTreeMap::new();
    let mut todo: Vec<(String, usize)> = Vec::new();
    let mut done: BTreeSet<(String, usize)> = BTreeSet::new();
    let mut attempts: BTreeMap<(String, usize), usize> = BTreeMap::new();
    let mut forced: Option<(String, usize)> = None;
    for round in 0..MAX_CASES * 4 {
        let mut choices = Choices::new();
        if let Some((at, i)) = &forced {
            choices.clone_from(&points[at].1);
            choices.insert(at.clone(), *i);
        }
        let mut maker = Maker {
            root: schema,
            rng: StdRng::seed_from_u64(seed ^ crate::random::splitmix(round as u64)),
            forced: choices,
            met: BTreeMap::new(),
            taken: Vec::new(),
        };
        let input = maker.make(schema, "", 0);
        for (at, met) in maker.met {
            if let std::collections::btree_map::Entry::Vacant(new) = points.entry(at.clone()) {
                todo.extend((0..met.0.len()).rev().map(|i| (at.clone(), i)));
                new.insert(met);
            }
        }
        let label = match &forced {
            Some((at, i)) => format!("{at} {}", points[at].0[*i]),
            None => "any".to_owned(),
        };
        let kept = validator.is_valid(&input) && seen.insert(input.to_string());
        if kept {
            cases.push(Case {
                label,
                input,
                expect: Expect::Valid,
            });
            done.extend(maker.taken);
        } else if let Some(option) = forced.take() {
            // The other choices, random, made it invalid (or a repeat):
            // the option gets a few more rounds before it is given up.
            let tries = attempts.entry(option.clone()).or_insert(0);
            *tries += 1;
            if *tries < RETRIES {
                todo.insert(0, option);
            }
        }
        forced = loop {
            match todo.pop() {
                Some(next) if done.contains(&next) => continue,
                other => break other,
            }
        };
        if forced.is_none() || cases.len() >= MAX_CASES {
            break;
        }
    }
    cases
}

/// Makes one value for a schema, recording each choice it meets.
struct Maker<'a> {
    root: &'a Value,
    rng: StdRng,
    forced: Choices,
    /// Every choice met: where, its options' names, and the choices
    /// taken before it (which lead to it again).
    met: BTreeMap<String, (Vec<String>, Choices)>,
    /// The options this value took.
    taken: Vec<(String, usize)>,
}

impl Maker<'_> {
    fn choose(&mut self, at: String, options: Vec<String>) -> usize {
        let n = options.len().max(1);
        let pick = match self.forced.get(&at) {
            Some(i) => *i % n,
            None => self.rng.random_range(0..n),
        };
        let context: Choices = self.taken.iter().cloned().collect();
        self.met.entry(at.clone()).or_insert((options, context));
        self.taken.push((at, pick));
        pick
    }

    fn make(&mut self, schema: &Value, at: &str, depth: usize) -> Value {
        let Value::Object(s) = schema else {
            return json!({}); // `true`, or a schema the generator reads as open
        };
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        if let Some(target) = s.get("$ref").and_then(Value::as_str) {
            return match resolve(self.root, target) {
                Some(resolved) => self.make(resolved, target.trim_start_matches('#'), depth + 1),
                None => Value::Null,
            };
        }
        if let Some(value) = s.get("const") {
            return value.clone();
        }
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            let names = values.iter().map(Value::to_string).collect();
            let i = self.choose(format!("{at}/enum"), names);
            return values.get(i).cloned().unwrap_or(Value::Null);
        }
        for keyword in ["oneOf", "anyOf"] {
            if let Some(branches) = s.get(keyword).and_then(Value::as_array) {
                let names = (1..=branches.len())
                    .map(|i| format!("branch {i}"))
                    .collect();
                let i = self.choose(format!("{at}/{keyword}"), names);
                let mut merged = s.clone();
                merged.remove(keyword);
                let branch = branches.get(i).cloned().unwrap_or(Value::Bool(true));
                let merged = merge(Value::Object(merged), &branch);
                return self.make(&merged, &format!("{at}/{keyword}/{i}"), depth + 1);
            }
        }
        if let Some(parts) = s.get("allOf").and_then(Value::as_array) {
            let mut merged = s.clone();
            merged.remove("allOf");
            let merged = parts.iter().fold(Value::Object(merged), merge);
            return self.make(&merged, at, depth + 1);
        }
        let kind = self.kind(s, at);
        match kind.as_str() {
            "object" => self.object(s, at, depth),
            "array" => self.array(s, at, depth),
            "string" => self.string(s, at),
            "integer" => self.number(s, at, true),
            "number" => self.number(s, at, false),
            "boolean" => Value::Bool(self.choose(format!("{at}/boolean"), bools()) == 1),
            _ => Value::Null,
        }
    }

    /// The type to make: the one named, one of several, or the one the
    /// keywords imply.
    fn kind(&mut self, s: &Map<String, Value>, at: &str) -> String {
        match s.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(types)) => {
                let names: Vec<String> = types
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect();
                let i = self.choose(format!("{at}/type"), names.clone());
                names.get(i).cloned().unwrap_or_default()
            }
            _ if s.contains_key("properties") || s.contains_key("required") => "object".into(),
            _ if s.contains_key("items") => "array".into(),
            _ if s.contains_key("minLength") || s.contains_key("pattern") => "string".into(),
            _ if s.contains_key("minimum") || s.contains_key("maximum") => "number".into(),
            _ => "object".into(),
        }
    }

    fn object(&mut self, s: &Map<String, Value>, at: &str, depth: usize) -> Value {
        let required: BTreeSet<String> = super::required_properties(s.get("required"))
            .into_iter()
            .collect();
        let mut out = Map::new();
        if let Some(Value::Object(props)) = s.get("properties") {
            for (name, prop) in props {
                let here = format!("{at}/properties/{}", escape(name));
                let present = required.contains(name)
                    || self.choose(format!("{here}?"), vec!["present".into(), "absent".into()])
                        == 0;
                if present {
                    out.insert(name.clone(), self.make(prop, &here, depth + 1));
                }
            }
        }
        for name in required {
            out.entry(name).or_insert_with(|| Value::String("x".into()));
        }
        Value::Object(out)
    }

    fn array(&mut self, s: &Map<String, Value>, at: &str, depth: usize) -> Value {
        let (min, max) = bounds(s, "minItems", "maxItems");
        let len = self.length(at, min, max);
        let items = s.get("items").cloned().unwrap_or(Value::Bool(true));
        let mut out: Vec<Value> = Vec::with_capacity(len);
        for _ in 0..len {
            out.push(self.make(&items, &format!("{at}/items"), depth + 1));
        }
        Value::Array(out)
    }

    fn string(&mut self, s: &Map<String, Value>, at: &str) -> Value {
        if let Some(format) = s.get("format").and_then(Value::as_str) {
            if let Some(text) = formatted(format) {
                return Value::String(text.into());
            }
        }
        if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
            // A schema's pattern matches anywhere; the generator makes
            // the match itself, so the anchors it cannot place go.
            let bare = pattern.strip_prefix('^').unwrap_or(pattern);
            let bare = bare.strip_suffix('$').unwrap_or(bare);
            if let Ok(regex) = rand_regex::Regex::compile(bare, OPEN_MAX as u32) {
                return Value::String(self.rng.sample(&regex));
            }
        }
        let (min, max) = bounds(s, "minLength", "maxLength");
        let len = self.length(at, min, max);
        let text: String = (0..len)
            .map(|_| char::from(b'a' + self.rng.random_range(0..26u8)))
            .collect();
        Value::String(text)
    }

    /// A length at the lower edge, the upper edge, or between; never past
    /// [`MAX_LENGTH`] (a schema asking for more gets a value the validator
    /// then drops).
    fn length(&mut self, at: &str, min: usize, max: Option<usize>) -> usize {
        let min = min.min(MAX_LENGTH);
        let max = max
            .unwrap_or(min.saturating_add(OPEN_MAX))
            .clamp(min, MAX_LENGTH);
        let edges = vec!["shortest".into(), "longest".into(), "between".into()];
        match self.choose(format!("{at}/length"), edges) {
            0 => min,
            1 => max.min(min.saturating_add(64)),
            _ => self.rng.random_range(min..=max.min(min.saturating_add(64))),
        }
    }

    fn number(&mut self, s: &Map<String, Value>, at: &str, integer: bool) -> Value {
        let f = |k: &str| s.get(k).and_then(Value::as_f64);
        let step = if integer { 1.0 } else { 0.5 };
        let low = f("minimum")
            .or(f("exclusiveMinimum").map(|m| m + step))
            .unwrap_or(-1000.0);
        let high = f("maximum")
            .or(f("exclusiveMaximum").map(|m| m - step))
            .unwrap_or(1000.0)
            .max(low);
        let edges = vec!["lowest".into(), "highest".into(), "between".into()];
        let mut value = match self.choose(format!("{at}/range"), edges) {
            0 => low,
            1 => high,
            // A range too wide to draw from (it overflows) gets its middle.
            _ if !(high - low).is_finite() => low / 2.0 + high / 2.0,
            _ => self.rng.random_range(low..=high),
        };
        if let Some(multiple) = f("multipleOf").filter(|m| *m > 0.0) {
            value = (value / multiple).ceil() * multiple;
        }
        if integer {
            json!(value.ceil() as i64)
        } else {
            json!(value)
        }
    }
}

fn bools() -> Vec<String> {
    vec!["false".into(), "true".into()]
}

fn bounds(s: &Map<String, Value>, min: &str, max: &str) -> (usize, Option<usize>) {
    let n = |k: &str| s.get(k).and_then(Value::as_u64).map(|v| v as usize);
    (n(min).unwrap_or(0), n(max))
}

/// A value in a well-known format.
fn formatted(format: &str) -> Option<&'static str> {
    Some(match format {
        "email" => "ada@example.com",
        "date-time" => "2026-01-02T03:04:05Z",
        "date" => "2026-01-02",
        "time" => "03:04:05Z",
        "uuid" => "0190b5a0-1c2d-7e3f-8a9b-0c1d2e3f4a5b",
        "uri" => "https://example.com/a",
        "hostname" => "example.com",
        "ipv4" => "192.0.2.1",
        "ipv6" => "2001:db8::1",
        _ => return None,
    })
}

/// `base` with the keywords of `part` added (object schemas only; a
/// conflict is left for the validator to catch).
fn merge(base: Value, part: &Value) -> Value {
    let (Value::Object(mut base), Value::Object(part)) = (base, part) else {
        return part.clone();
    };
    for (key, value) in part {
        match (base.get_mut(key), value) {
            (Some(Value::Object(mine)), Value::Object(theirs)) => {
                mine.extend(theirs.clone());
            }
            (Some(Value::Array(mine)), Value::Array(theirs)) if key == "required" => {
                mine.extend(theirs.iter().cloned());
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(base)
}

/// A `#/...` reference within the schema.
fn resolve<'a>(root: &'a Value, target: &str) -> Option<&'a Value> {
    root.pointer(target.strip_prefix('#')?)
}

/// A JSON pointer token (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Invalid cases: each valid case broken at one rule, kept when the
/// validator fails it at the pointer named.
fn invalid_cases(schema: &Value, valid: &[Case], validator: &jsonschema::Validator) -> Vec<Case> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for case in valid {
        let mut breaks = Vec::new();
        breakages(schema, schema, &case.input, "", 0, &mut breaks);
        for broken in breaks {
            if out.len() >= MAX_CASES {
                return out;
            }
            let input = broken.apply(&case.input);
            let named = validator
                .iter_errors(&input)
                .any(|e| e.instance_path().to_string() == broken.pointer);
            if !named || !seen.insert((broken.pointer.clone(), broken.keyword)) {
                continue;
            }
            out.push(Case {
                label: format!("{} {}", display(&broken.pointer), broken.keyword),
                input,
                expect: Expect::Invalid {
                    pointer: broken.pointer,
                    keyword: broken.keyword.to_owned(),
                },
            });
        }
    }
    out
}

/// `/` for the root pointer, else the pointer.
pub fn display(pointer: &str) -> &str {
    if pointer.is_empty() {
        "/"
    } else {
        pointer
    }
}

/// One rule broken: at `pointer` (an instance pointer), by `change`.
struct Breakage {
    pointer: String,
    keyword: &'static str,
    change: Change,
}

enum Change {
    /// The value at the pointer becomes this.
    Set(Value),
    /// The object at the pointer loses this property.
    Remove(String),
    /// The object at the pointer gains this property.
    Add(String),
}

impl Breakage {
    fn apply(&self, input: &Value) -> Value {
        let mut out = input.clone();
        let Some(target) = out.pointer_mut(&self.pointer) else {
            return out;
        };
        match (&self.change, target) {
            (Change::Set(value), target) => *target = value.clone(),
            (Change::Remove(name), Value::Object(map)) => drop(map.remove(name)),
            (Change::Add(name), Value::Object(map)) => drop(map.insert(name.clone(), json!(1))),
            _ => {}
        }
        out
    }
}

/// The rules `schema` sets on `value` at `pointer`, each broken once;
/// then those of the properties and items present.
fn breakages(
    root: &Value,
    schema: &Value,
    value: &Value,
    pointer: &str,
    depth: usize,
    out: &mut Vec<Breakage>,
) {
    let Value::Object(s) = schema else { return };
    if depth > MAX_DEPTH {
        return;
    }
    if let Some(target) = s.get("$ref").and_then(Value::as_str) {
        if let Some(resolved) = resolve(root, target) {
            breakages(root, resolved, value, pointer, depth + 1, out);
        }
        return;
    }
    let mut set = |keyword, v: Value| {
        out.push(Breakage {
            pointer: pointer.to_owned(),
            keyword,
            change: Change::Set(v),
        })
    };
    if let Some(kind) = s.get("type") {
        set("type", wrong_type(kind));
    }
    for keyword in ["enum", "const"] {
        if s.contains_key(keyword) {
            set(keyword, json!("cbs-not-allowed"));
        }
    }
    let f = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(min) = f("minimum") {
        set("minimum", json!(min - 1.0));
    }
    if let Some(max) = f("maximum") {
        set("maximum", json!(max + 1.0));
    }
    let n = |k: &str| s.get(k).and_then(Value::as_u64).map(|v| v as usize);
    if let Some(min) = n("minLength").filter(|m| (1..=4096).contains(m)) {
        set("minLength", json!("a".repeat(min - 1)));
    }
    if let Some(max) = n("maxLength").filter(|m| *m < 4096) {
        set("maxLength", json!("a".repeat(max + 1)));
    }
    if s.contains_key("pattern") {
        set("pattern", json!("\u{1}"));
    }
    if let Some(min) = n("minItems").filter(|m| (1..=4096).contains(m)) {
        set("minItems", Value::Array(vec![Value::Null; min - 1]));
    }
    match value {
        Value::Object(map) => {
            for name in super::required_properties(s.get("required")) {
                if map.contains_key(&name) {
                    out.push(Breakage {
                        pointer: pointer.to_owned(),
                        keyword: "required",
                        change: Change::Remove(name),
                    });
                }
            }
            if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                out.push(Breakage {
                    pointer: pointer.to_owned(),
                    keyword: "additionalProperties",
                    change: Change::Add("cbs-unexpected".into()),
                });
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (name, inner) in map {
                if let Some(prop) = props.and_then(|p| p.get(name)) {
                    let here = format!("{pointer}/{}", escape(name));
                    breakages(root, prop, inner, &here, depth + 1, out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = s.get("items") {
                for (i, inner) in items.iter().enumerate() {
                    breakages(root, item, inner, &format!("{pointer}/{i}"), depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// A value of a type `kind` does not allow.
fn wrong_type(kind: &Value) -> Value {
    let allowed: Vec<&str> = match kind {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let candidates = [
        ("null", Value::Null),
        ("boolean", json!(true)),
        ("string", json!("x")),
        ("integer", json!(1)),
        ("number", json!(1.5)),
        ("object", json!({})),
        ("array", json!([])),
    ];
    candidates
        .into_iter()
        .find(|(t, _)| {
            let covered = allowed.contains(t) || (*t == "integer" && allowed.contains(&"number"));
            !covered
        })
        .map_or(Value::Null, |(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["kind", "name"],
            "properties": {
                "kind": {"enum": ["a", "b", "c"]},
                "name": {"type": "string", "minLength": 1, "maxLength": 20},
                "count": {"type": "integer", "minimum": 0, "maximum": 9},
                "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "shape": {"oneOf": [
                    {"type": "object", "required": ["r"], "properties": {"r": {"type": "number"}}, "additionalProperties": false},
                    {"type": "object", "required": ["w", "h"], "properties": {"w": {"type": "number"}, "h": {"type": "number"}}, "additionalProperties": false}
                ]}
            }
        })
    }

    #[test]
    fn valid_cases_take_every_enum_value_branch_and_optional_field() {
        let cases = generate(&schema(), 7).unwrap();
        let valid: Vec<&Value> = cases
            .iter()
            .filter(|c| c.expect == Expect::Valid)
            .map(|c| &c.input)
            .collect();
        let validator = jsonschema::validator_for(&schema()).unwrap();
        assert!(valid.iter().all(|v| validator.is_valid(v)));
        for kind in ["a", "b", "c"] {
            assert!(valid.iter().any(|v| v["kind"] == kind), "kind {kind}");
        }
        assert!(
            valid.iter().any(|v| v["shape"].get("r").is_some()),
            "circle"
        );
        assert!(
            valid.iter().any(|v| v["shape"].get("w").is_some()),
            "rectangle"
        );
        assert!(
            valid.iter().any(|v| v.get("count").is_none()),
            "count absent"
        );
        assert!(valid.iter().any(|v| v["count"] == 0) && valid.iter().any(|v| v["count"] == 9));
        assert!(valid
            .iter()
            .any(|v| v["code"].as_str().is_some_and(|c| c.len() == 3)));
    }

    #[test]
    fn invalid_cases_break_one_rule_each_at_the_pointer_named() {
        let cases = generate(&schema(), 7).unwrap();
        let broken: BTreeSet<(String, String)> = cases
            .iter()
            .filter_map(|c| match &c.expect {
                Expect::Invalid { pointer, keyword } => Some((pointer.clone(), keyword.clone())),
                Expect::Valid => None,
            })
            .collect();
        for (pointer, keyword) in [
            ("", "required"),
            ("", "additionalProperties"),
            ("/kind", "enum"),
            ("/name", "maxLength"),
            ("/name", "minLength"),
            ("/name", "type"),
            ("/count", "maximum"),
            ("/count", "minimum"),
            ("/code", "pattern"),
        ] {
            assert!(
                broken.contains(&(pointer.to_owned(), keyword.to_owned())),
                "{pointer} {keyword} in {broken:?}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_cases_and_another_seed_others() {
        let a = generate(&schema(), 1).unwrap();
        assert_eq!(a, generate(&schema(), 1).unwrap());
        assert_ne!(a, generate(&schema(), 2).unwrap());
    }

    /// A schema is outside input: huge lengths and ranges make no huge
    /// value and no panic.
    #[test]
    fn huge_bounds_are_bounded_and_wide_ranges_do_not_panic() {
        let hostile = json!({
            "type": "object",
            "required": ["s", "a", "n"],
            "properties": {
                "s": {"type": "string", "minLength": 1_000_000_000u64},
                "a": {"type": "array", "minItems": 1_000_000_000u64},
                "n": {"type": "number", "minimum": -1e308, "maximum": 1e308}
            }
        });
        let cases = generate(&hostile, 5).unwrap();
        assert!(cases.iter().all(|c| c.input.to_string().len() < 1 << 20));
    }

    #[test]
    fn a_recursive_schema_ends() {
        let tree = json!({
            "$defs": {"node": {"type": "object", "required": ["kids"],
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
            "$ref": "#/$defs/node"
        });
        let cases = generate(&tree, 3).unwrap();
        assert!(!cases.is_empty());
    }
}
