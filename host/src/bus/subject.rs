//! NATS subject syntax: dot-separated tokens; in subscriptions `*` matches
//! one token and `>` (last) matches one or more.

use crate::error::{BusError, ErrorCode};

/// A parsed subscription subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    tokens: Vec<String>,
    literal: bool,
}

impl Pattern {
    pub fn parse(subject: &str) -> Result<Self, BusError> {
        check(subject, true)?;
        let tokens: Vec<String> = subject.split('.').map(str::to_owned).collect();
        let literal = !tokens.iter().any(|t| t == "*" || t == ">");
        Ok(Self { tokens, literal })
    }

    /// True when the pattern has no wildcard (an exact subject).
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    pub fn matches(&self, subject: &str) -> bool {
        let mut parts = subject.split('.');
        for (i, token) in self.tokens.iter().enumerate() {
            match token.as_str() {
                ">" => return i < self.tokens.len() && parts.next().is_some(),
                "*" => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                t => {
                    if parts.next() != Some(t) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether every subject this pattern matches, `outer` matches too
    /// (a grant that stays inside what a policy allows).
    pub fn within(&self, outer: &Pattern) -> bool {
        let (inner, outer) = (&self.tokens, &outer.tokens);
        for (i, o) in outer.iter().enumerate() {
            match (o.as_str(), inner.get(i).map(String::as_str)) {
                (">", Some(_)) => return true,
                (_, None) | (_, Some(">")) => return false,
                ("*", Some(_)) => continue,
                (o, Some(t)) if o == t => continue,
                _ => return false,
            }
        }
        inner.len() == outer.len()
    }

    /// Whether some subject matches both patterns (NATS refuses streams
    /// whose subjects overlap; so does the embedded store).
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let (a, b) = (&self.tokens, &other.tokens);
        for i in 0..a.len().max(b.len()) {
            match (a.get(i).map(String::as_str), b.get(i).map(String::as_str)) {
                (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                (Some(x), Some(y)) if x == "*" || y == "*" || x == y => continue,
                _ => return false,
            }
        }
        true
    }
}

/// Checks a subject: non-empty tokens, no white space, wildcards only where
/// allowed (`>` only last).
pub fn check(subject: &str, wildcards: bool) -> Result<(), BusError> {
    let bad = |why: &str| {
        Err(BusError::new(
            ErrorCode::InvalidInput,
            format!("invalid subject {subject:?}: {why}"),
        ))
    };
    if subject.is_empty() {
        return bad("it is empty");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return bad("it has an empty token");
        }
        if t.chars().any(char::is_whitespace) {
            return bad("it contains white space");
        }
        let wild = *t == "*" || *t == ">";
        if wild && !wildcards {
            return bad("wildcards are only allowed in subscriptions");
        }
        if *t == ">" && i + 1 != tokens.len() {
            return bad("'>' must be the last token");
        }
        if !wild && (t.contains('*') || t.contains('>')) {
            return bad("wildcards must be whole tokens");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_holds_only_when_every_match_is_inside() {
        let w = |inner: &str, outer: &str| {
            Pattern::parse(inner)
                .unwrap()
                .within(&Pattern::parse(outer).unwrap())
        };
        assert!(w("events.greeted", "events.>"));
        assert!(w("events.*.done", "events.>"));
        assert!(w("events.>", "events.>"));
        assert!(w("events.a", "events.*"));
        assert!(w("events.*", "events.*"));
        assert!(w("events.a", "events.a"));
        assert!(!w("events", "events.>"));
        assert!(!w("events.>", "events.*"));
        assert!(!w("events.*", "events.a"));
        assert!(!w("other.a", "events.>"));
        assert!(!w("events.a.b", "events.*"));
        assert!(!w(">", "events.>"));
    }

    fn m(p: &str, s: &str) -> bool {
        Pattern::parse(p).unwrap().matches(s)
    }

    #[test]
    fn overlapping_patterns() {
        let o = |a: &str, b: &str| {
            Pattern::parse(a)
                .unwrap()
                .overlaps(&Pattern::parse(b).unwrap())
        };
        for (a, b) in [
            ("a.>", "a.b"),
            ("a.*", "a.b"),
            ("a.*.c", "a.b.*"),
            ("a.b", "a.b"),
            ("a.>", "a.*.c"),
        ] {
            assert!(o(a, b) && o(b, a), "{a} {b}");
        }
        for (a, b) in [
            ("a.b", "a.c"),
            ("a.*", "a.b.c"),
            ("a.>", "a"),
            ("a.b", "b.>"),
        ] {
            assert!(!o(a, b) && !o(b, a), "{a} {b}");
        }
    }

    #[test]
    fn matching() {
        assert!(m("cbs.logic.greet", "cbs.logic.greet"));
        assert!(!m("cbs.logic.greet", "cbs.logic"));
        assert!(!m("cbs.logic", "cbs.logic.greet"));
        assert!(m("cbs.*.greet", "cbs.logic.greet"));
        assert!(!m("cbs.*", "cbs.logic.greet"));
        assert!(m("cbs.>", "cbs.logic.greet"));
        assert!(m("cbs.>", "cbs.a"));
        assert!(!m("cbs.>", "cbs"));
        assert!(m(">", "anything.at.all"));
        assert!(m("*.*", "a.b"));
    }

    #[test]
    fn invalid_subjects() {
        for s in ["", "a..b", "a.>.b", "a b", "a.b*", ".a", "a."] {
            assert!(Pattern::parse(s).is_err(), "{s:?} should be rejected");
        }
        assert!(check("a.*", false).is_err());
        assert!(check("a.b", false).is_ok());
    }
}
