//! Durable cells on NATS JetStream: streams, the shared pull consumers,
//! the dead-letter stream `CBS_DLQ`, publishing with the envelope id as
//! `Nats-Msg-Id`, and replays (`cbs dlq replay`, `cbs replay`).

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::log::{Keep, Settler};
use super::{
    dlq_subject, Consumer, ConsumerSpec, DeadLetter, Deliveries, Delivery, DurableLog, Lettered,
    Published, Settle, StreamSpec, DLQ_STREAM,
};
use crate::envelope::{BusError, Envelope};

/// Publishes `envelope` to a durable subject and waits until JetStream
/// stored it (or found it a duplicate within the dedup window).
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    envelope: &Envelope,
) -> Result<jetstream::publish::PublishAck, BusError> {
    publish_bytes(js, subject, &envelope.id, envelope.to_vec().into()).await
}

async fn publish_bytes(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Bytes,
) -> Result<jetstream::publish::PublishAck, BusError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, payload)
        .await
        .map_err(|e| unavailable(subject, e))?;
    ack.await.map_err(|e| match e.kind() {
        PublishErrorKind::StreamNotFound => BusError::unavailable(format!(
            "no JetStream stream takes {subject}, so it cannot be stored: \
                 deploy a cell that subscribes to it durably, or create a stream for it"
        )),
        _ => unavailable(subject, e),
    })
}

fn unavailable(subject: &str, e: impl std::fmt::Display) -> BusError {
    BusError::unavailable(format!("{subject} could not be stored in JetStream: {e}"))
}

/// Durable streams on JetStream.
pub struct JetStreamLog {
    js: jetstream::Context,
}

impl JetStreamLog {
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }
}

#[async_trait]
impl DurableLog for JetStreamLog {
    async fn open(
        &self,
        spec: &StreamSpec,
        consumer: &ConsumerSpec,
    ) -> anyhow::Result<Box<dyn Consumer>> {
        let name = &spec.name;
        let stream = match self.js.get_stream(name).await {
            Ok(stream) => stream,
            Err(_) => match self.js.get_or_create_stream(stream_config(spec)).await {
                Ok(stream) => stream,
                // Another host of the cell created it at the same time: the
                // server may refuse the second create as overlapping the
                // first one's subjects. The stream is there now.
                Err(e) => self.js.get_stream(name).await.map_err(|_| {
                    anyhow::anyhow!(
                        "cannot create the stream {name} for {}: {e} (another stream may already \
                     take these subjects: name that one in cell.toml)",
                        spec.subjects.join(", ")
                    )
                })?,
            },
        };
        dlq(&self.js).await?;
        let durable = &consumer.name;
        let consumer = stream
            .get_or_create_consumer(durable, consumer_config(consumer))
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the consumer {durable} on {name}: {e}"))?;
        Ok(Box::new(JetStreamConsumer(consumer)))
    }

    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<Published, BusError> {
        let ack = publish_bytes(&self.js, subject, msg_id, payload).await?;
        Ok(Published {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> anyhow::Result<Lettered> {
        // Rare: making sure the stream exists costs one lookup.
        dlq(&self.js).await?;
        let whole = serde_json::to_vec(letter)?;
        if fits(&self.js, &letter.id(), whole.len()) {
            match store_dead_letter(&self.js, letter, whole).await {
                Ok(()) => return Ok(Lettered::Whole),
                Err(LetterError::TooLarge(e)) => {
                    tracing::warn!(cell = %letter.cell, error = %e, "a dead letter is too large for {DLQ_STREAM}; keeping it without the message")
                }
                Err(LetterError::Failed(e)) => return Err(e),
            }
        }
        let bare = letter.without_body();
        match store_dead_letter(&self.js, &bare, serde_json::to_vec(&bare)?).await {
            Ok(()) => Ok(Lettered::WithoutBody),
            Err(LetterError::TooLarge(e) | LetterError::Failed(e)) => Err(e),
        }
    }

    async fn dead_letters(&self, cell: &str) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
        dead_letters(&self.js, cell).await
    }

    async fn replay(&self, cell: &str, seq: u64) -> anyhow::Result<DeadLetter> {
        replay(&self.js, cell, seq).await
    }

    fn reaches_core_subscribers(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "jetstream"
    }
}

fn stream_config(spec: &StreamSpec) -> stream::Config {
    stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        retention: match spec.retention {
            Keep::WorkQueue => stream::RetentionPolicy::WorkQueue,
            Keep::Interest => stream::RetentionPolicy::Interest,
            Keep::Limits => stream::RetentionPolicy::Limits,
        },
        max_age: spec.max_age,
        duplicate_window: spec.dedup_window,
        ..Default::default()
    }
}

fn consumer_config(spec: &ConsumerSpec) -> pull::Config {
    pull::Config {
        durable_name: Some(spec.name.clone()),
        filter_subject: spec.filter.clone().unwrap_or_default(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: if spec.only_new {
            DeliverPolicy::New
        } else {
            DeliverPolicy::All
        },
        max_deliver: i64::from(spec.max_deliver),
        ack_wait: spec.ack_wait,
        ..Default::default()
    }
}

/// One host's handle on a JetStream pull consumer.
struct JetStreamConsumer(jetstream::consumer::Consumer<pull::Config>);

#[async_trait]
impl Consumer for JetStreamConsumer {
    async fn fetch(&self, max: usize, wait: Duration) -> anyhow::Result<Deliveries> {
        let messages = self
            .0
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let deliveries = messages.map(|message| {
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let position = (info.stream.to_owned(), info.stream_sequence);
            let counts = (info.delivered.max(1) as u64, info.pending);
            let subject = message.subject.to_string();
            let payload = message.payload.clone();
            let settler = Box::new(JetStreamSettler(message));
            Ok(Delivery::new(subject, payload, position, counts, settler))
        });
        Ok(Box::pin(deliveries))
    }
}

struct JetStreamSettler(jetstream::Message);

#[async_trait]
impl Settler for JetStreamSettler {
    async fn settle(self: Box<Self>, how: Settle) -> anyhow::Result<()> {
        let kind = match how {
            Settle::Ack => AckKind::Ack,
            Settle::Retry(delay) => AckKind::Nak(Some(delay)),
            Settle::Term => AckKind::Term,
            // Past max_deliver the server delivers it no more by itself;
            // an early give-up is put off for good. Term would remove it
            // from a work-queue or interest stream.
            Settle::Keep { last: true } => return Ok(()),
            Settle::Keep { last: false } => AckKind::Nak(Some(KEPT_FOR)),
        };
        self.0
            .ack_with(kind)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn in_progress(&self) -> anyhow::Result<()> {
        self.0
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// The delay of a kept message given up before its last delivery: it is
/// delivered no more in practice (it leaves by `cbs dlq replay`).
const KEPT_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Whether a message of `payload` bytes with a `Nats-Msg-Id` of `id`
/// fits the connection's `max_payload` (which counts headers too).
fn fits(js: &jetstream::Context, id: &str, payload: usize) -> bool {
    // "NATS/1.0\r\n" + "Nats-Msg-Id: <id>\r\n" + "\r\n", rounded up.
    let headers = 32 + id.len();
    payload.saturating_add(headers) <= js.client().max_payload()
}

/// Why a dead letter was not stored.
enum LetterError {
    /// The server (or the client, by the server's `max_payload`) refused
    /// its size.
    TooLarge(anyhow::Error),
    Failed(anyhow::Error),
}

/// Publishes a dead letter (`bytes`) and waits until JetStream stored it;
/// its id makes a retried write count once.
async fn store_dead_letter(
    js: &jetstream::Context,
    letter: &DeadLetter,
    bytes: Vec<u8>,
) -> Result<(), LetterError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", letter.id().as_str());
    let subject = dlq_subject(&letter.cell);
    let sent = js
        .publish_with_headers(subject, headers, bytes.into())
        .await
        .map_err(letter_error)?;
    sent.await.map_err(letter_error)?;
    Ok(())
}

fn letter_error(e: async_nats::jetstream::context::PublishError) -> LetterError {
    let too_large = e.kind() == PublishErrorKind::MaxPayloadExceeded
        || std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|j| {
                j.error_code() == async_nats::jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
            });
    let e = anyhow::anyhow!("cannot store a dead letter in {DLQ_STREAM}: {e}");
    if too_large {
        LetterError::TooLarge(e)
    } else {
        LetterError::Failed(e)
    }
}

/// The dead-letter stream, created when missing.
async fn dlq(js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: DLQ_STREAM.to_owned(),
        subjects: vec!["cbs-dlq.>".to_owned()],
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot open the dead-letter stream {DLQ_STREAM}: {e}"))
}

/// At most this many dead letters are looked at per listing.
const MAX_SCAN: u64 = 100_000;

/// The dead letters of `cell`, oldest first, with their sequence in
/// [`DLQ_STREAM`].
pub async fn dead_letters(
    js: &jetstream::Context,
    cell: &str,
) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
    let mut stream = dlq(js).await?;
    let state = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .state
        .clone();
    let subject = dlq_subject(cell);
    let first = state
        .first_sequence
        .max(state.last_sequence.saturating_sub(MAX_SCAN));
    let mut out = Vec::new();
    for seq in first..=state.last_sequence {
        // Replayed letters are deleted: gaps are expected.
        let Ok(raw) = stream.get_raw_message(seq).await else {
            continue;
        };
        if raw.subject.as_str() != subject {
            continue;
        }
        match serde_json::from_slice(&raw.payload) {
            Ok(letter) => out.push((seq, letter)),
            Err(e) => tracing::warn!(seq, error = %e, "ignoring an invalid dead letter"),
        }
    }
    Ok(out)
}

/// Publishes dead letter `seq` of `cell` again to the subject it came from
/// and removes it from [`DLQ_STREAM`]. The replay's `Nats-Msg-Id` is new
/// (`<id>.replay.<seq>`), so the dedup window of the first publish does
/// not swallow it, while a replay retried is stored once. A letter kept
/// without its message replays the original from the cell's stream, then
/// removes it there (unless the stream keeps history: `limits`).
pub async fn replay(js: &jetstream::Context, cell: &str, seq: u64) -> anyhow::Result<DeadLetter> {
    let stream = dlq(js).await?;
    let raw = stream
        .get_raw_message(seq)
        .await
        .map_err(|e| anyhow::anyhow!("no dead letter {seq} ({e}): see `cbs dlq ls {cell}`"))?;
    if raw.subject.as_str() != dlq_subject(cell) {
        anyhow::bail!("dead letter {seq} is not one of cell {cell}'s: see `cbs dlq ls {cell}`");
    }
    let letter: DeadLetter = serde_json::from_slice(&raw.payload)?;
    let (msg_id, bytes) = match letter.replayed(seq)? {
        Some((msg_id, bytes)) => (msg_id, Bytes::from(bytes)),
        None => {
            let (id, bytes) = original(js, &letter, seq).await?;
            (format!("{id}.replay.{seq}"), bytes)
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    let ack = js
        .publish_with_headers(letter.subject.clone(), headers, bytes)
        .await
        .map_err(|e| anyhow::anyhow!("cannot replay to {}: {e}", letter.subject))?;
    ack.await
        .map_err(|e| anyhow::anyhow!("cannot replay to {}: {e}", letter.subject))?;
    if letter.body_in_original {
        remove_original(js, &letter).await?;
    }
    stream
        .delete_message(seq)
        .await
        .map_err(|e| anyhow::anyhow!("replayed, but cannot remove dead letter {seq}: {e}"))?;
    Ok(letter)
}

/// The message a letter kept without it points at (its id and bytes), from
/// the cell's stream, or why it is not there.
async fn original(
    js: &jetstream::Context,
    letter: &DeadLetter,
    seq: u64,
) -> anyhow::Result<(String, Bytes)> {
    let (name, at) = (&letter.stream, letter.stream_seq);
    let cannot = |why: String| {
        anyhow::anyhow!(
            "dead letter {seq} does not hold its message (it was too large for {DLQ_STREAM}); \
             {why}, so it cannot be replayed"
        )
    };
    let stream = js
        .get_stream(name)
        .await
        .map_err(|e| cannot(format!("its stream {name} cannot be read ({e})")))?;
    let raw = stream.get_raw_message(at).await.map_err(|e| {
        cannot(format!(
            "message {at} is no longer in stream {name} (removed, expired or purged: {e})"
        ))
    })?;
    if raw.subject.as_str() != letter.subject {
        return Err(cannot(format!(
            "message {at} of stream {name} is on {}, not on {} as the letter says",
            raw.subject, letter.subject
        )));
    }
    let id = raw
        .headers
        .get("Nats-Msg-Id")
        .map_or_else(|| format!("{name}.{at}"), |v| v.to_string());
    Ok((id, raw.payload))
}

/// Removes a replayed original from its stream, where it was kept for its
/// letter, unless the stream keeps what was processed anyway (`limits`).
async fn remove_original(js: &jetstream::Context, letter: &DeadLetter) -> anyhow::Result<()> {
    let (name, at) = (&letter.stream, letter.stream_seq);
    let removed = async {
        let mut stream = js.get_stream(name).await?;
        if stream.info().await?.config.retention == stream::RetentionPolicy::Limits {
            return Ok(());
        }
        stream.delete_message(at).await?;
        Ok::<_, async_nats::Error>(())
    };
    removed.await.map_err(|e| {
        anyhow::anyhow!("replayed, but cannot remove message {at} from stream {name}: {e}")
    })
}

/// Where `cbs replay` starts in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    Sequence(u64),
    /// The first message stored at or after this time.
    Time(time::OffsetDateTime),
}

/// What a replay of a stream range did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Messages published again.
    pub published: u64,
    /// The stream range they came from.
    pub first: Option<u64>,
    pub last: Option<u64>,
}

/// Publishes the messages of `stream` from `from` to `to` (default: the
/// last one stored when the replay starts, so what it publishes is never
/// read again), at most `limit`, to the subjects they were stored under:
/// the cell's consumer delivers them once more. Each gets a fresh
/// `Nats-Msg-Id` (`<id>.replay.<seq>.<run>`), so the dedup window does
/// not swallow it. Work-queue streams hold only what is not yet
/// acknowledged; `retention = "limits"` keeps processed messages too.
pub async fn replay_range(
    js: &jetstream::Context,
    stream: &str,
    from: ReplayFrom,
    to: Option<u64>,
    limit: u64,
    mut progress: impl FnMut(&Replayed),
) -> anyhow::Result<Replayed> {
    let mut handle = js
        .get_stream(stream)
        .await
        .map_err(|e| anyhow::anyhow!("no stream {stream}: {e}"))?;
    let state = handle
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .state
        .clone();
    let end = to.map_or(state.last_sequence, |t| t.min(state.last_sequence));
    let start = match from {
        ReplayFrom::Sequence(seq) => seq.max(state.first_sequence),
        ReplayFrom::Time(at) => first_at_or_after(&handle, state.first_sequence, end, at).await,
    };
    let run = crate::unix_time::now_ms();
    let mut done = Replayed::default();
    for seq in start..=end {
        if done.published >= limit {
            break;
        }
        // Acknowledged (work queue), expired or deleted: gaps are expected.
        let Ok(message) = handle.get_raw_message(seq).await else {
            continue;
        };
        let mut headers = message.headers.clone();
        let id = headers
            .get("Nats-Msg-Id")
            .map_or_else(|| format!("{stream}.{seq}"), |v| v.to_string());
        headers.insert("Nats-Msg-Id", format!("{id}.replay.{seq}.{run}").as_str());
        let ack = js
            .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot publish message {seq} again: {e}"))?;
        ack.await
            .map_err(|e| anyhow::anyhow!("cannot publish message {seq} again: {e}"))?;
        done.published += 1;
        done.first.get_or_insert(seq);
        done.last = Some(seq);
        progress(&done);
    }
    Ok(done)
}

/// The first sequence in `low..=high` stored at or after `at` (messages are
/// in time order); `high + 1` when none is.
async fn first_at_or_after(
    stream: &stream::Stream,
    mut low: u64,
    high: u64,
    at: time::OffsetDateTime,
) -> u64 {
    let mut end = high.saturating_add(1);
    while low < end {
        let mid = low + (end - low) / 2;
        // A gap: the next stored message decides (or none: all before).
        let mut probe = mid;
        let time = loop {
            if probe >= end {
                break None;
            }
            match stream.get_raw_message(probe).await {
                Ok(m) => break Some(m.time),
                Err(_) => probe += 1,
            }
        };
        match time {
            Some(t) if t >= at => end = mid,
            Some(_) => low = probe + 1,
            None => end = mid,
        }
    }
    low
}
