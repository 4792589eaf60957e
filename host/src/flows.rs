//! Recent flows without a trace collector. Each host keeps the hops it
//! handled last — one message through one cell: ids, cell, host, timing,
//! outcome and error message, never the payload — in a ring bounded in
//! count and bytes, and its latest failed hops in a smaller list of their
//! own, so that a run of successes does not push them out. Every host
//! answers a [`Query`] on [`SUBJECT`] (no queue group: each host answers
//! for itself), and [`query`] gathers the answers: what `cbs flows` shows.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bus::{is_inbox, BodyBus, Headers, Message, Subscription, INBOX_PREFIX};
use crate::envelope::Envelope;
use crate::error::{BusError, ErrorCode};

/// Where every host takes questions about its recent hops (`cbs-…`: the
/// host's own, out of cells' reach).
pub const SUBJECT: &str = "cbs-flows.query";

/// The hops a host keeps: the newest, at most this many…
pub const MAX_HOPS: usize = 10_000;
/// …and at most this many bytes ([`Hop`]'s own size plus its ids and
/// error message; cell, version and host are shared by every hop).
pub const MAX_BYTES: usize = 4 << 20;
/// The failed hops a host keeps besides, at most this many…
pub const MAX_FAILED: usize = 1_000;
/// …and at most this many bytes.
pub const MAX_FAILED_BYTES: usize = 1 << 20;
/// An error message is kept up to this many bytes, cut at a character
/// boundary and marked with `…`.
pub const MAX_ERROR_BYTES: usize = 512;
/// Correlation and message ids are kept up to this many bytes (an HTTP
/// caller's correlation id is at most 128); a query's correlation id is cut
/// the same way, so a longer id still finds its hops.
pub const MAX_ID_BYTES: usize = 128;
/// The most hops one host puts in an answer, whatever the query asks.
pub const MAX_ANSWER_HOPS: usize = 1_000;
/// The most bytes of one host's answer (NATS's default `max_payload` is
/// 1 MiB): past it the oldest matching hops are left out, and the answer
/// says so (`truncated`).
pub const MAX_ANSWER_BYTES: usize = 512 << 10;
/// The most answers [`query`] takes per question: anyone allowed to
/// publish to the inbox may answer.
pub const MAX_REPLIES: usize = 4_096;

/// One message handled by one cell on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub correlation_id: String,
    pub message_id: String,
    #[serde(with = "shared_text")]
    pub cell: Arc<str>,
    /// The cell's version that handled it.
    #[serde(with = "shared_text")]
    pub version: Arc<str>,
    /// The host's id.
    #[serde(with = "shared_text")]
    pub host: Arc<str>,
    /// When the message arrived, in milliseconds since the Unix epoch, by
    /// the host's clock.
    pub started_ms: u64,
    /// From arrival to reply, in microseconds (waiting for a free slot
    /// included).
    pub duration_us: u64,
    pub outcome: Outcome,
    /// The error's message, up to [`MAX_ERROR_BYTES`]. It is what the caller
    /// got: a contract violation names the offending value, a cell's own
    /// error says what the cell wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Hop {
    pub fn failed(&self) -> bool {
        self.outcome != Outcome::Ok
    }

    /// What the hop holds in memory, for the rings' byte bounds.
    fn size(&self) -> usize {
        std::mem::size_of::<Kept>()
            + self.correlation_id.capacity()
            + self.message_id.capacity()
            + self.error.as_ref().map_or(0, String::capacity)
    }
}

/// Text every hop of a cell shares, as a JSON string.
mod shared_text {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(text: &Arc<str>, to: S) -> Result<S::Ok, S::Error> {
        to.serialize_str(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(from).map(Arc::from)
    }
}

/// How a hop ended: `ok`, or the code of its error (`contract_violation`…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Outcome {
    Ok,
    Failed(ErrorCode),
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed(code) => code.as_str(),
        }
    }
}

impl From<Outcome> for &'static str {
    fn from(outcome: Outcome) -> Self {
        outcome.as_str()
    }
}

impl TryFrom<String> for Outcome {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        if name == "ok" {
            return Ok(Self::Ok);
        }
        ErrorCode::parse(&name)
            .map(Self::Failed)
            .ok_or_else(|| format!("{name:?} is neither \"ok\" nor an error code"))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to find: every field narrows; none at all takes the latest hops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Only this flow's hops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Only failed hops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    /// Only this cell's hops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    /// The newest this many (at most, and by default, [`MAX_ANSWER_HOPS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Query {
    /// The hops of one flow.
    pub fn flow(correlation_id: impl Into<String>) -> Self {
        Self {
            correlation_id: Some(correlation_id.into()),
            ..Self::default()
        }
    }

    /// The latest failed hops.
    pub fn failed() -> Self {
        Self {
            failed: true,
            ..Self::default()
        }
    }

    /// How many hops an answer holds at most.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(MAX_ANSWER_HOPS).min(MAX_ANSWER_HOPS)
    }

    pub fn matches(&self, hop: &Hop) -> bool {
        (!self.failed || hop.failed())
            && self
                .correlation_id
                .as_deref()
                .is_none_or(|id| hop.correlation_id == cut(id, MAX_ID_BYTES))
            && self.cell.as_deref().is_none_or(|cell| *hop.cell == *cell)
    }
}

/// One host's answer: its matching hops in the order they ended, or why
/// it refused the question.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub host: String,
    #[serde(default)]
    pub hops: Vec<Hop>,
    /// Whether older matching hops were left out to keep the answer within
    /// [`MAX_ANSWER_BYTES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BusError>,
}

/// A hop in a ring, with the order it was recorded in.
struct Kept {
    seq: u64,
    hop: Hop,
}

/// The newest hops, within a count and a byte bound.
struct Ring {
    hops: VecDeque<Kept>,
    bytes: usize,
    max_hops: usize,
    max_bytes: usize,
}

impl Ring {
    fn new(max_hops: usize, max_bytes: usize) -> Self {
        Self {
            hops: VecDeque::new(),
            bytes: 0,
            max_hops,
            max_bytes,
        }
    }

    /// Adds `hop`, dropping the oldest to stay within both bounds.
    fn push(&mut self, seq: u64, hop: Hop) {
        let size = hop.size();
        while !self.hops.is_empty()
            && (self.hops.len() >= self.max_hops || self.bytes + size > self.max_bytes)
        {
            if let Some(old) = self.hops.pop_front() {
                self.bytes -= old.hop.size();
            }
        }
        if size <= self.max_bytes {
            self.bytes += size;
            self.hops.push_back(Kept { seq, hop });
        }
    }
}

struct Rings {
    next: u64,
    all: Ring,
    failed: Ring,
}

/// A host's recent hops.
pub struct Flows {
    host: Arc<str>,
    rings: Mutex<Rings>,
}

impl Flows {
    pub fn new(host: &str) -> Self {
        Self::bounded(host, (MAX_HOPS, MAX_BYTES), (MAX_FAILED, MAX_FAILED_BYTES))
    }

    /// With other bounds (count, bytes) for all hops and failed ones.
    fn bounded(host: &str, all: (usize, usize), failed: (usize, usize)) -> Self {
        Self {
            host: host.into(),
            rings: Mutex::new(Rings {
                next: 0,
                all: Ring::new(all.0, all.1),
                failed: Ring::new(failed.0, failed.1),
            }),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// What a cell version records its hops with.
    pub fn recorder(self: &Arc<Self>, cell: &str, version: &str) -> Recorder {
        Recorder {
            flows: self.clone(),
            cell: cell.into(),
            version: version.into(),
        }
    }

    fn rings(&self) -> MutexGuard<'_, Rings> {
        // Nothing panics while holding it; a poisoned ring is still sound.
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `hop`: one short lock (a failed hop is copied before it).
    pub fn record(&self, hop: Hop) {
        let failed = hop.failed().then(|| hop.clone());
        let mut rings = self.rings();
        let seq = rings.next;
        rings.next += 1;
        if let Some(failed) = failed {
            rings.failed.push(seq, failed);
        }
        rings.all.push(seq, hop);
    }

    /// How many hops it keeps now: all of them, and the failed ones.
    pub fn counts(&self) -> (usize, usize) {
        let rings = self.rings();
        (rings.all.hops.len(), rings.failed.hops.len())
    }

    /// The newest hops that match, up to the query's limit, in the order
    /// they were recorded (as each ended), from both lists: the ring holds every hop since its oldest, the
    /// failed list may hold older failures, and the ring older failures
    /// than the failed list's oldest.
    pub fn select(&self, query: &Query) -> Vec<Hop> {
        let rings = self.rings();
        let (all, failed) = (&rings.all.hops, &rings.failed.hops);
        let oldest = |hops: &VecDeque<Kept>| hops.front().map_or(u64::MAX, |k| k.seq);
        let mut found = if query.failed {
            let older = all.iter().rev().filter(|k| k.seq < oldest(failed));
            matching(failed.iter().rev().chain(older), query)
        } else {
            let older = failed.iter().rev().filter(|k| k.seq < oldest(all));
            matching(all.iter().rev().chain(older), query)
        };
        drop(rings);
        found.reverse();
        found
    }

    /// The answer to `question` (a [`Query`] as JSON; empty asks for the
    /// latest hops), as JSON within `max_bytes`.
    pub fn answer(&self, question: &[u8], max_bytes: usize) -> Vec<u8> {
        let answer = match parse(question) {
            Ok(query) => self.fit(self.select(&query), max_bytes),
            Err(error) => Answer {
                host: self.host.to_string(),
                hops: Vec::new(),
                truncated: false,
                error: Some(error),
            },
        };
        serde_json::to_vec(&answer).expect("an answer always serializes")
    }

    /// The newest of `hops` (oldest first) that fit in `max_bytes` with the
    /// rest of the answer.
    fn fit(&self, mut hops: Vec<Hop>, max_bytes: usize) -> Answer {
        // The answer around the hops: host, field names, brackets.
        let host = serde_json::to_string(&*self.host).expect("text serializes");
        let mut used = host.len() + 64;
        let mut kept = 0;
        for hop in hops.iter().rev() {
            used += json_len(hop) + 1;
            if used > max_bytes {
                break;
            }
            kept += 1;
        }
        let truncated = kept < hops.len();
        let hops = hops.split_off(hops.len() - kept);
        Answer {
            host: self.host.to_string(),
            hops,
            truncated,
            error: None,
        }
    }
}

/// The first `query.limit()` of `newest_first` that match, copied.
fn matching<'a>(newest_first: impl Iterator<Item = &'a Kept>, query: &Query) -> Vec<Hop> {
    newest_first
        .map(|k| &k.hop)
        .filter(|hop| query.matches(hop))
        .take(query.limit())
        .cloned()
        .collect()
}

fn parse(question: &[u8]) -> Result<Query, BusError> {
    if question.trim_ascii().is_empty() {
        return Ok(Query::default());
    }
    serde_json::from_slice(question).map_err(|e| {
        BusError::new(
            ErrorCode::InvalidInput,
            format!(
                "not a flows query ({e}); send a JSON object with any of correlation_id \
                 (text), failed (true or false), cell (text) and limit (a count)"
            ),
        )
    })
}

/// The length of `hop` as JSON, without writing it anywhere.
fn json_len(hop: &Hop) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, hop).expect("a hop always serializes");
    count.0
}

/// The longest start of `text` within `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `message` within [`MAX_ERROR_BYTES`], ending in `…` when cut.
fn bounded_error(message: &str) -> String {
    if message.len() <= MAX_ERROR_BYTES {
        return message.to_owned();
    }
    let mut kept = cut(message, MAX_ERROR_BYTES - '…'.len_utf8()).to_owned();
    kept.push('…');
    kept
}

/// What one cell version records its hops with: its host's [`Flows`], and
/// the names every hop of it shares.
pub struct Recorder {
    flows: Arc<Flows>,
    cell: Arc<str>,
    version: Arc<str>,
}

impl Recorder {
    /// Records the hop of `envelope`, which took `elapsed` from its arrival
    /// and failed with `error`, if it did. Copies the ids and the error
    /// message (bounded), never the payload.
    pub fn record(&self, envelope: &Envelope, elapsed: Duration, error: Option<&BusError>) {
        let started_ms = SystemTime::now()
            .checked_sub(elapsed)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        self.flows.record(Hop {
            correlation_id: cut(&envelope.correlation_id, MAX_ID_BYTES).to_owned(),
            message_id: cut(&envelope.id, MAX_ID_BYTES).to_owned(),
            cell: self.cell.clone(),
            version: self.version.clone(),
            host: self.flows.host.clone(),
            started_ms,
            duration_us: elapsed.as_micros().try_into().unwrap_or(u64::MAX),
            outcome: error.map_or(Outcome::Ok, |e| Outcome::Failed(e.code)),
            error: error.map(|e| bounded_error(&e.message)),
        });
    }
}

/// A host answering questions about its hops on [`SUBJECT`], on a task of
/// its own; stops when dropped.
pub struct Answering {
    task: tokio::task::JoinHandle<()>,
}

impl Answering {
    /// Subscribes to [`SUBJECT`] on `bus` and answers from `flows`.
    pub async fn start(bus: Arc<dyn BodyBus>, flows: Arc<Flows>) -> Result<Self, BusError> {
        let questions = bus.subscribe(SUBJECT, None).await?;
        Ok(Self {
            task: tokio::spawn(answer_each(bus, flows, questions)),
        })
    }

    /// Stops answering: once it returns, the host no longer subscribes.
    pub async fn stop(mut self) {
        self.task.abort();
        // Ends at once (aborted), dropping the subscription.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer_each(bus: Arc<dyn BodyBus>, flows: Arc<Flows>, mut questions: Subscription) {
    // Headroom under the bus's own bound for the protocol's framing.
    let max_bytes = bus
        .max_payload()
        .map_or(MAX_ANSWER_BYTES, |max| max.saturating_sub(1024))
        .min(MAX_ANSWER_BYTES);
    while let Some(question) = questions.next().await {
        // Only inboxes get answers: the host answers with its own rights.
        let Some(to) = question.reply.as_deref().filter(|to| is_inbox(to)) else {
            tracing::debug!("a flows query without an inbox to answer to");
            continue;
        };
        let answer = flows.answer(&question.payload, max_bytes);
        if let Err(e) = bus.reply(to, Headers::new(), answer.into()).await {
            tracing::warn!(error = %e, "cannot answer a flows query");
        }
    }
}

/// Asks every host on `bus` and gathers their matching hops until `quiet`
/// passes without an answer (or `limit` in all, or [`MAX_REPLIES`]
/// answers): the newest `query.limit()` of them, sorted by start (a hop
/// before the hops it called, which start in the same millisecond or
/// later and end sooner). Fails when the bus does, or when every host that
/// answered refused the query.
pub async fn query(
    bus: &dyn BodyBus,
    query: &Query,
    quiet: Duration,
    limit: Duration,
) -> Result<Vec<Hop>, BusError> {
    let inbox = format!("{INBOX_PREFIX}flows.{}", crate::envelope::new_id());
    let mut answers = bus.subscribe(&inbox, None).await?;
    let mut question = Message::new(
        SUBJECT,
        serde_json::to_vec(query).expect("a query serializes"),
    );
    question.reply = Some(inbox);
    bus.publish(question).await?;
    bus.flush().await?;
    let end = Instant::now() + limit;
    let mut gathered = Gathered::new(query);
    for _ in 0..MAX_REPLIES {
        let wait = quiet.min(end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, answers.next()).await {
            Ok(Some(answer)) => gathered.take(&answer.payload),
            _ => return gathered.finish(),
        }
    }
    tracing::warn!("more than {MAX_REPLIES} hosts answered; the rest are left out");
    gathered.finish()
}

/// Answers gathered so far: at most twice the hops wanted are held.
struct Gathered<'q> {
    query: &'q Query,
    hops: Vec<Hop>,
    answered: usize,
    refused: Option<BusError>,
}

impl<'q> Gathered<'q> {
    fn new(query: &'q Query) -> Self {
        Self {
            query,
            hops: Vec::new(),
            answered: 0,
            refused: None,
        }
    }

    fn take(&mut self, payload: &[u8]) {
        let answer: Answer = match serde_json::from_slice(payload) {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed flows answer");
                return;
            }
        };
        if let Some(error) = answer.error {
            tracing::warn!(host = %answer.host, %error, "a host refused the flows query");
            self.refused.get_or_insert(error);
            return;
        }
        self.answered += 1;
        if answer.truncated {
            tracing::warn!(host = %answer.host, "a host left out older hops to keep its answer within {MAX_ANSWER_BYTES} bytes");
        }
        // An answer is outside input: only what was asked for is kept.
        let query = self.query;
        self.hops
            .extend(answer.hops.into_iter().filter(|hop| query.matches(hop)));
        if self.hops.len() > 2 * query.limit() {
            self.keep_newest();
        }
    }

    fn keep_newest(&mut self) {
        self.hops.sort_by(|a, b| {
            (a.started_ms, Reverse(a.duration_us), &a.host, &a.message_id).cmp(&(
                b.started_ms,
                Reverse(b.duration_us),
                &b.host,
                &b.message_id,
            ))
        });
        let extra = self.hops.len().saturating_sub(self.query.limit());
        self.hops.drain(..extra);
    }

    fn finish(mut self) -> Result<Vec<Hop>, BusError> {
        if let (0, Some(error)) = (self.answered, self.refused.take()) {
            return Err(error);
        }
        self.keep_newest();
        Ok(self.hops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn envelope(correlation_id: &str) -> Envelope {
        let payload = RawValue::from_string(r#"{"secret":"hunter2"}"#.to_owned()).unwrap();
        let mut envelope = Envelope::new("cbs.logic.greet", payload);
        envelope.correlation_id = correlation_id.to_owned();
        envelope
    }

    fn record(recorder: &Recorder, flow: &str, error: Option<&BusError>) {
        recorder.record(&envelope(flow), Duration::from_micros(250), error);
    }

    fn failure(message: &str) -> BusError {
        BusError::new(ErrorCode::ContractViolation, message)
    }

    #[test]
    fn a_hop_holds_ids_cell_host_timing_and_outcome_never_the_payload() {
        let flows = Arc::new(Flows::new("host-a"));
        let greet = flows.recorder("logic.greet", "1.2.0");
        record(&greet, "flow-1", Some(&failure("name is not a string")));
        let hops = flows.select(&Query::flow("flow-1"));
        assert_eq!(hops.len(), 1);
        let hop = &hops[0];
        assert_eq!(
            (&*hop.cell, &*hop.version, &*hop.host),
            ("logic.greet", "1.2.0", "host-a")
        );
        assert_eq!(hop.outcome, Outcome::Failed(ErrorCode::ContractViolation));
        assert_eq!(hop.error.as_deref(), Some("name is not a string"));
        assert_eq!(hop.duration_us, 250);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(hop.started_ms <= now_ms && hop.started_ms + 60_000 > now_ms);
        let json = serde_json::to_string(hop).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains(r#""outcome":"contract_violation""#), "{json}");
        assert_eq!(serde_json::from_str::<Hop>(&json).unwrap(), *hop);
    }

    #[test]
    fn outcomes_are_ok_or_an_error_code_by_name() {
        for outcome in [Outcome::Ok, Outcome::Failed(ErrorCode::Timeout)] {
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, format!("\"{outcome}\""));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), outcome);
        }
        assert!(serde_json::from_str::<Outcome>("\"exploded\"").is_err());
    }

    #[test]
    fn the_ring_keeps_the_newest_hops_up_to_its_count() {
        let flows = Arc::new(Flows::new("h"));
        let cell = flows.recorder("a.b", "1");
        for i in 0..=MAX_HOPS {
            record(&cell, &i.to_string(), None);
        }
        assert_eq!(flows.counts(), (MAX_HOPS, 0));
        assert!(
            flows.select(&Query::flow("0")).is_empty(),
            "the oldest went"
        );
        assert_eq!(flows.select(&Query::flow("1")).len(), 1);
        assert_eq!(flows.select(&Query::flow(MAX_HOPS.to_string())).len(), 1);
    }

    #[test]
    fn the_ring_keeps_within_its_bytes_with_the_largest_hops() {
        let flows = Arc::new(Flows::new("h"));
        let cell = flows.recorder("a.b", "1");
        let long_error = failure(&"e".repeat(4 * MAX_ERROR_BYTES));
        let long_id = "i".repeat(4 * MAX_ID_BYTES);
        for _ in 0..MAX_HOPS {
            cell.record(&envelope(&long_id), Duration::ZERO, Some(&long_error));
        }
        let rings = flows.rings();
        for (ring, max_hops, max_bytes) in [
            (&rings.all, MAX_HOPS, MAX_BYTES),
            (&rings.failed, MAX_FAILED, MAX_FAILED_BYTES),
        ] {
            let bytes: usize = ring.hops.iter().map(|k| k.hop.size()).sum();
            assert_eq!(bytes, ring.bytes, "counted as kept");
            assert!(bytes <= max_bytes && ring.hops.len() <= max_hops);
        }
        // The largest hops fill the ring's bytes before its count.
        let hop = &rings.all.hops[0].hop;
        assert!(rings.all.hops.len() < MAX_HOPS);
        assert!(rings.all.bytes + hop.size() > MAX_BYTES);
        assert_eq!(hop.correlation_id.len(), MAX_ID_BYTES);
        assert!(hop.error.as_ref().unwrap().len() <= MAX_ERROR_BYTES);
    }

    #[test]
    fn a_small_ring_drops_by_count_and_by_bytes() {
        let flows = Flows::bounded("h", (3, 10_000), (1, 10_000));
        let flows = Arc::new(flows);
        let cell = flows.recorder("a.b", "1");
        for i in 0..5 {
            record(&cell, &i.to_string(), None);
        }
        let ids = |q: &Query| -> Vec<String> {
            flows
                .select(q)
                .into_iter()
                .map(|h| h.correlation_id)
                .collect()
        };
        assert_eq!(ids(&Query::default()), ["2", "3", "4"]);
        let one = std::mem::size_of::<Kept>() + 1 + 36;
        let flows = Arc::new(Flows::bounded("h", (100, 2 * one), (1, one)));
        let cell = flows.recorder("a.b", "1");
        for i in 0..5 {
            record(&cell, &i.to_string(), None);
        }
        assert_eq!(flows.counts(), (2, 0), "two hops of {one} bytes fit");
    }

    #[test]
    fn failures_outlive_a_run_of_successes_within_their_own_bound() {
        let flows = Arc::new(Flows::new("h"));
        let cell = flows.recorder("a.b", "1");
        for i in 0..MAX_FAILED + 5 {
            record(&cell, &format!("bad-{i}"), Some(&failure("no")));
        }
        for i in 0..2 * MAX_HOPS {
            record(&cell, &format!("ok-{i}"), None);
        }
        assert_eq!(flows.counts(), (MAX_HOPS, MAX_FAILED));
        let failed = flows.select(&Query::failed());
        assert_eq!(failed.len(), MAX_FAILED);
        assert_eq!(failed[0].correlation_id, "bad-5", "oldest kept first");
        assert_eq!(
            failed[MAX_FAILED - 1].correlation_id,
            format!("bad-{}", MAX_FAILED + 4)
        );
        assert!(flows.select(&Query::flow("bad-4")).is_empty());
        assert_eq!(flows.select(&Query::flow("bad-5")).len(), 1);
    }

    #[test]
    fn failed_hops_older_than_the_failed_list_are_still_found_in_the_ring() {
        let flows = Arc::new(Flows::bounded("h", (100, 1 << 20), (2, 1 << 20)));
        let cell = flows.recorder("a.b", "1");
        for i in 0..5 {
            record(&cell, &format!("bad-{i}"), Some(&failure("no")));
            record(&cell, &format!("ok-{i}"), None);
        }
        let ids: Vec<String> = flows
            .select(&Query::failed())
            .into_iter()
            .map(|h| h.correlation_id)
            .collect();
        assert_eq!(ids, ["bad-0", "bad-1", "bad-2", "bad-3", "bad-4"]);
        let newest = Query {
            limit: Some(2),
            ..Query::failed()
        };
        let ids: Vec<String> = flows
            .select(&newest)
            .into_iter()
            .map(|h| h.correlation_id)
            .collect();
        assert_eq!(ids, ["bad-3", "bad-4"]);
    }

    #[test]
    fn error_messages_are_cut_at_a_character_boundary() {
        let flows = Arc::new(Flows::new("h"));
        let cell = flows.recorder("a.b", "1");
        let message = "é".repeat(MAX_ERROR_BYTES);
        record(&cell, "f", Some(&failure(&message)));
        let error = flows.select(&Query::flow("f"))[0].error.clone().unwrap();
        assert!(error.len() <= MAX_ERROR_BYTES, "{}", error.len());
        assert!(error.ends_with('…'));
        assert!(error.trim_end_matches('…').chars().all(|c| c == 'é'));
        assert_eq!(bounded_error("short"), "short");
    }

    #[test]
    fn a_long_correlation_id_finds_its_hops_though_kept_cut() {
        let flows = Arc::new(Flows::new("h"));
        let cell = flows.recorder("a.b", "1");
        let id = format!("{}ü-tail", "x".repeat(MAX_ID_BYTES - 1));
        record(&cell, &id, None);
        let hops = flows.select(&Query::flow(id.clone()));
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].correlation_id, "x".repeat(MAX_ID_BYTES - 1));
    }

    #[test]
    fn queries_narrow_by_cell_and_failure() {
        let flows = Arc::new(Flows::new("h"));
        let (a, b) = (flows.recorder("a.a", "1"), flows.recorder("b.b", "1"));
        record(&a, "f", None);
        record(&b, "f", Some(&failure("no")));
        record(&a, "g", Some(&failure("no")));
        let cells = |q: Query| -> Vec<String> {
            flows
                .select(&q)
                .iter()
                .map(|h| format!("{}:{}", h.cell, h.correlation_id))
                .collect()
        };
        assert_eq!(cells(Query::flow("f")), ["a.a:f", "b.b:f"]);
        let failed_a = Query {
            cell: Some("a.a".into()),
            ..Query::failed()
        };
        assert_eq!(cells(failed_a), ["a.a:g"]);
        assert_eq!(cells(Query::default()).len(), 3);
    }

    fn answer(flows: &Flows, question: &[u8], max_bytes: usize) -> Answer {
        serde_json::from_slice(&flows.answer(question, max_bytes)).unwrap()
    }

    #[test]
    fn a_malformed_question_gets_invalid_input() {
        let flows = Flows::new("h");
        for question in [
            &b"\xff\xfe garbage"[..],
            b"[1,2]",
            br#"{"limit":-1}"#,
            br#"{"limit":1e300}"#,
            br#"{"correlation_id":7}"#,
            br#"{"payload":true}"#,
        ] {
            let answer = answer(&flows, question, MAX_ANSWER_BYTES);
            let error = answer.error.expect("an error");
            assert_eq!(error.code, ErrorCode::InvalidInput, "{error}");
            assert!(answer.hops.is_empty());
            assert_eq!(answer.host, "h");
        }
        assert!(answer(&flows, b" ", MAX_ANSWER_BYTES).error.is_none());
    }

    #[test]
    fn an_answer_keeps_within_its_hop_and_byte_bounds() {
        let flows = Arc::new(Flows::new("h"));
        let cell = flows.recorder("a.b", "1");
        let long = failure(&"e".repeat(MAX_ERROR_BYTES));
        for i in 0..MAX_HOPS {
            record(&cell, &i.to_string(), Some(&long));
        }
        let huge = format!(r#"{{"limit":{}}}"#, u64::MAX);
        let bytes = flows.answer(huge.as_bytes(), MAX_ANSWER_BYTES);
        assert!(bytes.len() <= MAX_ANSWER_BYTES, "{}", bytes.len());
        let long_hops: Answer = serde_json::from_slice(&bytes).unwrap();
        assert!(long_hops.truncated);
        assert!(!long_hops.hops.is_empty() && long_hops.hops.len() < MAX_ANSWER_HOPS);
        let newest = long_hops.hops.last().unwrap();
        assert_eq!(
            newest.correlation_id,
            (MAX_HOPS - 1).to_string(),
            "newest kept"
        );
        // Small hops: the count bound holds first.
        let flows = Arc::new(Flows::new("h"));
        let cell = flows.recorder("a.b", "1");
        for i in 0..MAX_HOPS {
            record(&cell, &i.to_string(), None);
        }
        let short_hops = answer(&flows, huge.as_bytes(), MAX_ANSWER_BYTES);
        assert_eq!(short_hops.hops.len(), MAX_ANSWER_HOPS);
        assert!(!short_hops.truncated);
    }

    #[test]
    fn gathering_keeps_what_was_asked_and_the_newest() {
        let hop = |host: &str, flow: &str, started_ms, duration_us| Hop {
            correlation_id: flow.into(),
            message_id: format!("{host}-{started_ms}"),
            cell: "a.b".into(),
            version: "1".into(),
            host: host.into(),
            started_ms,
            duration_us,
            outcome: Outcome::Ok,
            error: None,
        };
        let reply = |host: &str, hops: Vec<Hop>| {
            serde_json::to_vec(&Answer {
                host: host.into(),
                hops,
                truncated: false,
                error: None,
            })
            .unwrap()
        };
        let query = Query {
            limit: Some(3),
            ..Query::flow("f")
        };
        let mut gathered = Gathered::new(&query);
        gathered.take(&reply(
            "b",
            vec![hop("b", "f", 10, 5), hop("b", "other", 11, 1)],
        ));
        gathered.take(b"not json");
        gathered.take(&reply(
            "a",
            vec![hop("a", "f", 10, 50), hop("a", "f", 9, 1)],
        ));
        gathered.take(&reply("c", vec![hop("c", "f", 12, 1)]));
        let hops = gathered.finish().unwrap();
        let order: Vec<&str> = hops.iter().map(|h| h.message_id.as_str()).collect();
        // The caller (longer) before its callee in the same millisecond;
        // the oldest (a-9) left out by the limit; b's other flow dropped.
        assert_eq!(order, ["a-10", "b-10", "c-12"]);

        let mut refused = Gathered::new(&query);
        let error = serde_json::json!({"host": "a", "error": failure("no")}).to_string();
        refused.take(error.as_bytes());
        assert_eq!(
            refused.finish().unwrap_err().code,
            ErrorCode::ContractViolation
        );
    }
}
