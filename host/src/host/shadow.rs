//! A candidate release answering recorded requests: served by a host of
//! its own in this process, on a bus nothing else reaches, so no live cell
//! gets its calls; each call it makes is answered from the recording (the
//! first not yet used with the same cell and request), and each reply is
//! compared with the recorded one ([`crate::shadow::compare`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::scratch::Scratch;
use crate::bundle::Bundle;
use crate::bus::{BodyBus, Subscription};
use crate::envelope::codec::{from_message, transport_headers};
use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::shadow::compare::{self, Difference};
use crate::shadow::{Answer, Call, Record};
use crate::subjects::subject_of;

/// How one recorded request came out.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// Its sequence in the recording's stream.
    pub seq: u64,
    /// `equal`, `different` or `error`.
    pub verdict: &'static str,
    pub request: Value,
    /// Where the replies differ (volatile fields left out).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<Difference>,
    /// Calls the candidate made that the recording has no reply for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unrecorded: Vec<Call>,
    /// The candidate's error, when it failed where the recording did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<BusError>,
}

/// The counts of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub replayed: usize,
    pub equal: usize,
    pub different: usize,
    pub errors: usize,
}

impl Summary {
    pub fn of(results: &[Replayed]) -> Self {
        let count = |v: &str| results.iter().filter(|r| r.verdict == v).count();
        Self {
            replayed: results.len(),
            equal: count("equal"),
            different: count("different"),
            errors: count("error"),
        }
    }
}

/// The calls of the record being replayed: each answered once.
#[derive(Default)]
struct Script {
    calls: Vec<(Call, bool)>,
    unrecorded: Vec<Call>,
}

type Shared = Arc<Mutex<Script>>;

/// Replays `records` (with their stream sequences) against `bundle`, one
/// at a time, each call allowed `timeout`; `progress` after each.
pub async fn run(
    bundle: &Bundle,
    records: &[(u64, Record)],
    timeout: Duration,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Vec<Replayed>> {
    let scratch = Scratch::start("shadow").await?;
    let host = &scratch.host;
    let outcome = async {
        let cell = host.body().load_bundle(bundle).await?;
        let output = cell.contract.output.as_ref().map(|s| s.value().clone());
        // The cells it may call (the host refuses any other call), not
        // those the records name: a record is read from outside.
        let callees: BTreeSet<String> = cell
            .manifest
            .capabilities
            .calls
            .iter()
            .map(|c| c.cell.clone())
            .collect();
        host.body().serve(cell).await?;
        let bus = host.body().bus().clone();
        let script = Shared::default();
        let mut answering = Vec::new();
        for callee in &callees {
            let subscription = bus.subscribe(&subject_of(callee), None).await?;
            answering.push(tokio::spawn(answer(
                bus.clone(),
                subscription,
                script.clone(),
            )));
        }
        bus.flush().await?;
        let mut results = Vec::with_capacity(records.len());
        for (seq, record) in records {
            let result = once(
                &*bus,
                &bundle.manifest.cell,
                *seq,
                record,
                &script,
                timeout,
                output.as_ref(),
            )
            .await;
            results.push(result);
            progress(results.len());
        }
        for task in answering {
            task.abort();
        }
        anyhow::Ok(results)
    }
    .await;
    scratch.end().await;
    outcome
}

/// One recorded request sent to the candidate, its reply compared.
async fn once(
    bus: &dyn BodyBus,
    cell: &str,
    seq: u64,
    record: &Record,
    script: &Shared,
    timeout: Duration,
    output: Option<&Value>,
) -> Replayed {
    *script.lock().unwrap_or_else(PoisonError::into_inner) = Script {
        calls: record.calls.iter().map(|c| (c.clone(), false)).collect(),
        unrecorded: Vec::new(),
    };
    let answer = match RawValue::from_string(record.request.to_string()) {
        Ok(payload) => {
            let envelope = Envelope::new(subject_of(cell), payload);
            let reply = crate::call::call(bus, &envelope, timeout).await;
            Answer::of(reply.and_then(|raw| {
                serde_json::from_str(raw.get()).map_err(|e| {
                    BusError::new(
                        ErrorCode::ContractViolation,
                        format!("the reply is not JSON: {e}"),
                    )
                })
            }))
        }
        Err(e) => Answer::Error(BusError::internal(format!(
            "the recorded request is not JSON: {e}"
        ))),
    };
    let unrecorded = std::mem::take(
        &mut script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unrecorded,
    );
    let differences = compare::answers(&record.reply, &answer, output);
    let error = match (&record.reply, answer) {
        (Answer::Ok(_), Answer::Error(e)) => Some(e),
        (Answer::Error(r), Answer::Error(e)) if r.code != e.code => Some(e),
        _ => None,
    };
    let verdict = match (&error, differences.is_empty() && unrecorded.is_empty()) {
        (Some(_), _) => "error",
        (None, true) => "equal",
        (None, false) => "different",
    };
    Replayed {
        seq,
        verdict,
        request: record.request.clone(),
        differences,
        unrecorded,
        error,
    }
}

/// Answers the candidate's calls to one callee from the recording.
async fn answer(bus: Arc<dyn BodyBus>, mut subscription: Subscription, script: Shared) {
    while let Some(message) = subscription.next().await {
        let Some(to) = message.reply.clone() else {
            continue;
        };
        let Ok(request) = from_message(&message) else {
            continue;
        };
        let cell = message
            .subject
            .strip_prefix("cbs.")
            .unwrap_or(&message.subject)
            .to_owned();
        let payload: Value = serde_json::from_str(request.payload.get()).unwrap_or(Value::Null);
        let recorded = take(&script, &cell, &payload);
        let reply = match recorded {
            Some(Answer::Ok(value)) => match RawValue::from_string(value.to_string()) {
                Ok(raw) => request.reply(None, raw),
                Err(e) => request.error_reply(BusError::internal(e.to_string())),
            },
            Some(Answer::Error(e)) => request.error_reply(e),
            None => request.error_reply(BusError::unavailable(format!(
                "replay: the recording has no reply of {cell} to this request"
            ))),
        };
        let sent = bus
            .reply(&to, transport_headers(&reply), reply.to_vec().into())
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "cannot answer a replayed call");
        }
    }
}

/// The first unused recorded reply of `cell` to `request`; an unrecorded
/// call is kept for the report.
fn take(script: &Shared, cell: &str, request: &Value) -> Option<Answer> {
    let mut script = script.lock().unwrap_or_else(PoisonError::into_inner);
    let found = script
        .calls
        .iter_mut()
        .find(|(c, used)| !used && c.cell == cell && &c.request == request);
    if let Some((call, used)) = found {
        *used = true;
        return Some(call.reply.clone());
    }
    let missing = Call {
        cell: cell.to_owned(),
        request: request.clone(),
        reply: Answer::Error(BusError::unavailable("not in the recording")),
    };
    script.unrecorded.push(missing);
    None
}
