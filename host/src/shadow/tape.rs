//! The host's side of a recording: while one is on for a cell, each
//! request the cell handles is kept with its reply and the replies of the
//! calls it made for it, and published as a [`Record`] on
//! `cbs-record.<cell>` (where `cbs record` made a stream with limits).
//! Bounded: at most [`MAX_CALLS`] calls per request, [`MAX_PENDING`]
//! requests in flight, [`MAX_RECORD_BYTES`] per record; what does not fit
//! is counted, not kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use super::{Answer, Call, Record, Recording, MAX_CALLS, MAX_RECORD_BYTES};
use crate::bus::{BodyBus, Message};
use crate::envelope::{BusError, Envelope};
use crate::unix_time::now_ms;

/// Requests being handled whose calls are kept at once.
pub const MAX_PENDING: usize = 4_096;

/// A recording of one cell on this host.
pub struct Tape {
    recording: Recording,
    bus: Arc<dyn BodyBus>,
    subject: String,
    host: String,
    version: String,
    /// Calls made so far and their bytes, by the id of the request they
    /// were made for.
    pending: Mutex<HashMap<String, (Vec<Call>, usize)>>,
    /// Records not kept (too large, too many at once, or not published).
    pub dropped: AtomicU64,
}

impl Tape {
    pub fn new(
        recording: Recording,
        bus: Arc<dyn BodyBus>,
        cell: &str,
        host: &str,
        version: &str,
    ) -> Self {
        Self {
            recording,
            bus,
            subject: super::subject(cell),
            host: host.to_owned(),
            version: version.to_owned(),
            pending: Mutex::default(),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn recording(&self) -> &Recording {
        &self.recording
    }

    /// Whether it still records (its end is in the desired state too, but
    /// a host that missed that update stops on time anyway).
    pub fn on(&self) -> bool {
        now_ms() < self.recording.until_ms
    }

    /// Keeps a call the cell made for request `parent` and its reply.
    pub fn call(&self, parent: &str, cell: &str, request: &str, reply: &Result<String, BusError>) {
        if !self.on() {
            return;
        }
        let bytes = request.len() + reply.as_ref().map_or(0, String::len);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING && !pending.contains_key(parent) {
            return;
        }
        let (calls, kept) = pending.entry(parent.to_owned()).or_default();
        // Past what a record may hold, more calls would only be dropped
        // with it: neither parsed nor kept.
        if calls.len() >= MAX_CALLS || *kept + bytes > MAX_RECORD_BYTES {
            return;
        }
        *kept += bytes;
        calls.push(Call {
            cell: cell.to_owned(),
            request: json(request),
            reply: Answer::of(reply.as_ref().map(|r| json(r)).map_err(Clone::clone)),
        });
    }

    /// Publishes the record of a handled request: its payload, `reply`,
    /// and the calls kept for it.
    pub async fn finish(&self, request: &Envelope, reply: &Envelope) {
        let calls = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&request.id)
            .map(|(calls, _)| calls)
            .unwrap_or_default();
        if !self.on() {
            return;
        }
        let answer = match &reply.error {
            Some(e) => Answer::Error(e.clone()),
            None => Answer::Ok(json(reply.payload.get())),
        };
        let record = Record {
            recording: self.recording.id.clone(),
            host: self.host.clone(),
            version: self.version.clone(),
            at_ms: now_ms(),
            request: json(request.payload.get()),
            reply: answer,
            calls,
        };
        let bytes = match serde_json::to_vec(&record) {
            Ok(b) if b.len() <= MAX_RECORD_BYTES => b,
            _ => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if let Err(e) = self.bus.publish(Message::new(&self.subject, bytes)).await {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(subject = %self.subject, error = %e, "cannot publish a record");
        }
    }
}

/// A payload as JSON (it was checked as JSON already; anything else is
/// kept as its text).
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::local::LocalBus;
    use serde_json::value::RawValue;

    fn envelope(text: &str) -> Envelope {
        Envelope::new("cbs.c", RawValue::from_string(text.to_owned()).unwrap())
    }

    #[tokio::test]
    async fn a_record_keeps_its_calls_up_to_the_bound_and_in_flight_requests_are_bounded() {
        let bus = Arc::new(LocalBus::new());
        let mut records = bus
            .subscribe(&super::super::subject("c"), None)
            .await
            .unwrap();
        let recording = Recording {
            id: "r".into(),
            until_ms: u64::MAX,
        };
        let tape = Tape::new(recording, bus.clone(), "c", "h", "1.0.0");
        let request = envelope("{\"a\":1}");
        for i in 0..MAX_CALLS + 10 {
            tape.call(
                &request.id,
                "callee",
                &format!("{{\"i\":{i}}}"),
                &Ok("2".into()),
            );
        }
        // Other requests' calls beyond the bound of requests in flight
        // are not kept.
        for i in 0..MAX_PENDING + 10 {
            tape.call(&format!("other-{i}"), "callee", "1", &Ok("1".into()));
        }
        assert_eq!(tape.pending.lock().unwrap().len(), MAX_PENDING);
        let reply = request.reply(None, RawValue::from_string("{\"b\":2}".into()).unwrap());
        tape.finish(&request, &reply).await;
        let message = records.next().await.unwrap();
        let record: Record = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(record.request, serde_json::json!({"a": 1}));
        assert_eq!(record.reply, Answer::Ok(serde_json::json!({"b": 2})));
        assert_eq!(record.calls.len(), MAX_CALLS);
        assert_eq!(record.calls[3].request, serde_json::json!({"i": 3}));
    }

    #[tokio::test]
    async fn a_record_past_the_byte_bound_is_counted_not_kept() {
        let bus = Arc::new(LocalBus::new());
        let recording = Recording {
            id: "r".into(),
            until_ms: u64::MAX,
        };
        let tape = Tape::new(recording, bus, "c", "h", "1.0.0");
        let big = format!("\"{}\"", "x".repeat(MAX_RECORD_BYTES));
        let request = envelope(&big);
        let reply = request.reply(None, RawValue::from_string("1".into()).unwrap());
        tape.finish(&request, &reply).await;
        assert_eq!(tape.dropped.load(Ordering::Relaxed), 1);
    }
}
