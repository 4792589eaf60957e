//! W3C trace context at the HTTP edge: a caller's `traceparent` is
//! continued when well-formed; otherwise the gateway starts the flow's
//! trace. (When spans are exported, the server span's own context is used
//! instead: see `server::envelope`.)

use std::collections::BTreeMap;

use axum::http::HeaderMap;

use crate::envelope::header::TRACEPARENT;

/// The caller's `traceparent`, as envelope headers, when well-formed.
pub fn incoming(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| parse(v).is_some())
        .map(|v| BTreeMap::from([(TRACEPARENT.to_owned(), v.to_owned())]))
        .unwrap_or_default()
}

/// A `traceparent` for this hop: the caller's trace with a new parent id,
/// or a new sampled trace.
pub fn child_of(parent: Option<&str>) -> String {
    let span_id = hex::encode(random::<8>());
    match parent.and_then(parse) {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span_id}-{flags}"),
        None => format!("00-{}-{span_id}-01", hex::encode(random::<16>())),
    }
}

/// (trace id, flags) of a version-00 `traceparent`; `None` when malformed
/// or all-zero.
#[doc(hidden)] // pub for the fuzz target
pub fn parse(value: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [version, trace_id, parent_id, flags] = parts[..] else {
        return None;
    };
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (version == "00"
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && nonzero(trace_id)
        && nonzero(parent_id))
    .then_some((trace_id, flags))
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::getrandom(&mut bytes).is_err() || bytes.iter().all(|b| *b == 0) {
        // Never all zero (an invalid id); the seeded source is enough here.
        let seed = crate::random::fresh_seed().to_le_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed[i % seed.len()] | 1;
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_callers_trace_is_continued() {
        let child = child_of(Some(CALLER));
        assert!(
            child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{child}"
        );
        assert!(child.ends_with("-01"));
        assert_ne!(child, CALLER);
        assert!(parse(&child).is_some());
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf9-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
            let new = child_of(Some(bad));
            assert!(parse(&new).is_some(), "{new}");
            assert!(!new.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        }
    }
}
