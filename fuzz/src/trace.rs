//! W3C `traceparent`: at the HTTP edge (`http::trace`) and in envelope
//! headers (the OpenTelemetry propagator `telemetry::link_parent` uses).

use std::collections::HashMap;

use cbs_host::envelope::header::TRACEPARENT;
use cbs_host::http::trace;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// A `traceparent` value: never a panic; one the edge accepts continues
/// its trace (same trace id and flags) in a child the edge accepts again;
/// one it refuses starts a new, valid trace; one the propagator accepts
/// re-renders to one it reads back with the same ids and flags.
pub fn traceparent(data: &[u8]) {
    if let Ok(value) = std::str::from_utf8(data) {
        edge(value);
        propagator(value);
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, value);
        let incoming = trace::incoming(&headers);
        if let Some(kept) = incoming.get(TRACEPARENT) {
            assert!(trace::parse(kept).is_some(), "kept a malformed {kept:?}");
        }
    }
}

fn edge(value: &str) {
    let child = trace::child_of(Some(value));
    let reparsed = trace::parse(&child);
    assert!(reparsed.is_some(), "{child:?} from {value:?} is malformed");
    if let Some(parsed) = trace::parse(value) {
        assert_eq!(
            reparsed,
            Some(parsed),
            "{child:?} left the trace of {value:?}"
        );
        assert_ne!(child.trim(), value.trim(), "the child kept its parent's id");
    }
}

fn propagator(value: &str) {
    let propagator = TraceContextPropagator::new();
    let headers = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
    let cx = propagator.extract(&headers);
    let span = cx.span();
    let parent = span.span_context();
    if !parent.is_valid() {
        return;
    }
    let mut rendered = HashMap::new();
    propagator.inject_context(&cx, &mut rendered);
    let again = propagator.extract(&rendered);
    let again = again.span();
    let again = again.span_context();
    assert_eq!(
        (again.trace_id(), again.span_id(), again.trace_flags()),
        (parent.trace_id(), parent.span_id(), parent.trace_flags()),
        "{value:?} re-rendered as {rendered:?}"
    );
}
