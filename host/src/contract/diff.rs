//! A contract's diff between two releases, as people read it: every place
//! in the input and output schemas that was added, removed or changed, with
//! the verdict of the compatibility check ([`super::compat`]) beside it.
//! The diff is structural (schema documents, not what they accept); which
//! of its lines break callers is the compatibility check's to say.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::compat::{self, Direction};

/// The most lines a diff lists; the rest are counted.
pub const MAX_LINES: usize = 100;
/// The longest value quoted in a line, in characters.
const MAX_QUOTED: usize = 80;

/// What a contract change means for a release within its major version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The cell's first release: nothing to compare with.
    First,
    /// The same schemas.
    Unchanged,
    /// Changed, and every old caller still fits.
    Compatible,
    /// Breaking, in a new major version: allowed.
    NewMajor,
    /// Breaking within the deployed major version: refused unless forced.
    Breaking,
}

/// The schemas' differences and what they mean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractDiff {
    pub verdict: Verdict,
    /// `input + /properties/nickname: {"type":"string"}`, one per change.
    #[serde(default)]
    pub changes: Vec<String>,
    /// The breaking changes, as the compatibility check words them.
    #[serde(default)]
    pub breaks: Vec<String>,
    /// Changes beyond [`MAX_LINES`], not listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One side of a contract: the input and output schemas (`None`: none
/// declared, which accepts anything).
pub type Schemas = (Option<Value>, Option<Value>);

impl ContractDiff {
    /// The diff from `old` (the deployed release, at `old_version`) to
    /// `new` (at `new_version`); `old: None` for a first release.
    pub fn between(old: Option<(&Schemas, &str)>, new: (&Schemas, &str)) -> Self {
        let Some((old, old_version)) = old else {
            return Self::of(Verdict::First, Lines::default(), Vec::new());
        };
        let (new, new_version) = new;
        let absent = Value::Bool(true);
        let mut changes = Lines::default();
        let mut breaks = Vec::new();
        for (direction, name, old, new) in [
            (Direction::Input, "input", &old.0, &new.0),
            (Direction::Output, "output", &old.1, &new.1),
        ] {
            let (old, new) = (
                old.as_ref().unwrap_or(&absent),
                new.as_ref().unwrap_or(&absent),
            );
            walk(name, "", old, new, &mut changes);
            breaks.extend(
                compat::check(old, new, direction)
                    .into_iter()
                    .take(MAX_LINES)
                    .map(|b| format!("{name:<6} {b}")),
            );
        }
        let verdict = match (changes.kept.is_empty(), breaks.is_empty()) {
            (true, true) => Verdict::Unchanged,
            (_, true) => Verdict::Compatible,
            _ if compat_line(old_version) == compat_line(new_version) => Verdict::Breaking,
            _ => Verdict::NewMajor,
        };
        Self::of(verdict, changes, breaks)
    }

    fn of(verdict: Verdict, changes: Lines, breaks: Vec<String>) -> Self {
        Self {
            verdict,
            changes: changes.kept,
            breaks,
            more: changes.more,
        }
    }

    /// Whether the contract gate lets the release out (`force`: the
    /// deployer accepts a break within the major version).
    pub fn allows(&self, force: bool) -> bool {
        force || self.verdict != Verdict::Breaking
    }
}

/// Versions that must stay compatible share this: the major number, or
/// `0.<minor>` before 1.0 (semver).
pub fn compat_line(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), _) => major.to_owned(),
        _ => version.to_owned(),
    }
}

/// Diff lines: the first [`MAX_LINES`] kept, the rest counted.
#[derive(Default)]
struct Lines {
    kept: Vec<String>,
    more: usize,
}

impl Lines {
    fn push(&mut self, line: impl FnOnce() -> String) {
        if self.kept.len() < MAX_LINES {
            self.kept.push(line());
        } else {
            self.more += 1;
        }
    }
}

/// Lists where `new` differs from `old` under `pointer`, objects key by key.
fn walk(side: &str, pointer: &str, old: &Value, new: &Value, out: &mut Lines) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            for (key, old_value) in old {
                let at = || format!("{pointer}/{}", escape(key));
                match new.get(key) {
                    Some(new_value) => walk(side, &at(), old_value, new_value, out),
                    None => out.push(|| format!("{side} - {}: {}", at(), quote(old_value))),
                }
            }
            for (key, new_value) in new.iter().filter(|(k, _)| !old.contains_key(*k)) {
                out.push(|| format!("{side} + {pointer}/{}: {}", escape(key), quote(new_value)));
            }
        }
        _ if old != new => {
            let at = if pointer.is_empty() { "/" } else { pointer };
            out.push(|| format!("{side} ~ {at}: {} → {}", quote(old), quote(new)));
        }
        _ => {}
    }
}

/// A JSON pointer token (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn quote(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schemas(input: Value) -> Schemas {
        (Some(input), None)
    }

    fn person(extra: Value) -> Value {
        let mut schema = json!({
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": 50}}
        });
        if let (Some(props), Value::Object(extra)) = (schema["properties"].as_object_mut(), extra) {
            props.extend(extra);
        }
        schema
    }

    #[test]
    fn a_new_optional_field_is_a_compatible_change_listed_by_pointer() {
        let old = schemas(person(json!({})));
        let new = schemas(person(json!({"nickname": {"type": "string"}})));
        let diff = ContractDiff::between(Some((&old, "1.0.0")), (&new, "1.1.0"));
        assert_eq!(diff.verdict, Verdict::Compatible);
        assert_eq!(
            diff.changes,
            ["input + /properties/nickname: {\"type\":\"string\"}"]
        );
        assert!(diff.breaks.is_empty());
        assert!(diff.allows(false));
    }

    #[test]
    fn a_narrowed_input_breaks_within_the_major_and_is_allowed_at_the_next() {
        let old = schemas(person(json!({})));
        let mut narrower = person(json!({}));
        narrower["properties"]["name"]["maxLength"] = json!(10);
        let new = schemas(narrower);
        let diff = ContractDiff::between(Some((&old, "1.0.0")), (&new, "1.1.0"));
        assert_eq!(diff.verdict, Verdict::Breaking);
        assert_eq!(
            diff.changes,
            ["input ~ /properties/name/maxLength: 50 → 10"]
        );
        assert_eq!(diff.breaks.len(), 1, "{:?}", diff.breaks);
        assert!(!diff.allows(false) && diff.allows(true));
        let major = ContractDiff::between(Some((&old, "1.0.0")), (&new, "2.0.0"));
        assert_eq!(major.verdict, Verdict::NewMajor);
        assert!(major.allows(false));
    }

    #[test]
    fn the_same_schemas_are_unchanged_and_a_first_release_has_nothing_to_compare() {
        let old = schemas(person(json!({})));
        let same = ContractDiff::between(Some((&old, "1.0.0")), (&old, "1.0.1"));
        assert_eq!(same.verdict, Verdict::Unchanged);
        assert_eq!(
            ContractDiff::between(None, (&old, "1.0.0")).verdict,
            Verdict::First
        );
    }

    #[test]
    fn a_huge_schema_change_is_listed_up_to_the_bound() {
        let props: serde_json::Map<String, Value> = (0..5_000)
            .map(|i| (format!("f{i}"), json!({"type": "string"})))
            .collect();
        let old = schemas(json!({"type": "object", "properties": {}}));
        let new = schemas(json!({"type": "object", "properties": props}));
        let diff = ContractDiff::between(Some((&old, "1.0.0")), (&new, "1.1.0"));
        assert_eq!(diff.changes.len(), MAX_LINES);
        assert_eq!(diff.more, 5_000 - MAX_LINES);
    }

    /// From 1.0 on the major number alone is the line; before 1.0 the
    /// minor counts as the major (semver).
    #[test]
    fn the_compatibility_line_is_the_major_or_the_minor_before_1_0() {
        assert_eq!(compat_line("1.0.0"), compat_line("1.4.2"));
        assert_eq!(compat_line("1.9.3"), compat_line("1.10.0"));
        assert_ne!(compat_line("1.9.3"), compat_line("2.0.0"));
        assert_ne!(compat_line("2.0.0"), compat_line("10.0.0"));
        assert_eq!(compat_line("0.1.0"), compat_line("0.1.7"));
        assert_ne!(compat_line("0.1.7"), compat_line("0.2.0"));
        assert_ne!(compat_line("0.9.0"), compat_line("1.0.0"));
    }
}
