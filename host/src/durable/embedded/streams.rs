//! The streams' semantics on the tables of the embedded store: a stream
//! takes subjects and deduplicates by message id; a publish is pending for
//! every consumer whose filter takes it; a take hands out what is due (by
//! retry time and ack deadline) and counts the lag; a settlement acks,
//! retries later, keeps or terminates, and drops a message once no
//! consumer holds it (work queue and interest retention); dead letters are
//! a stream of their own.

use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::store::{matches, Store, CONSUMERS, DEDUP, LAST_SEQ, META, PAYLOADS, PENDING, STREAMS};
use crate::bus::subject::Pattern;
use crate::durable::log::Keep;
use crate::durable::{
    dlq_subject, ConsumerSpec, DeadLetter, Published, Settle, StreamSpec, DLQ_STREAM,
};
use crate::unix_time::now_ms;

/// The delivery count of a message given up but kept (a dead letter
/// points at it): above any `max_deliver`, so never delivered again.
const KEPT: u64 = u64::MAX;

impl Store {
    /// Records `stream` and its `consumer` when new: a new stream may not
    /// take another's subjects; a new consumer takes what the stream holds
    /// unless `only_new`.
    pub(super) fn open_consumer(
        &self,
        tx: &WriteTransaction,
        stream: &StreamSpec,
        consumer: &ConsumerSpec,
    ) -> anyhow::Result<()> {
        let known = tx.open_table(STREAMS)?.get(stream.name.as_str())?.is_some();
        if !known {
            refuse_overlap(tx, stream)?;
            tx.open_table(STREAMS)?.insert(
                stream.name.as_str(),
                serde_json::to_string(stream)?.as_str(),
            )?;
            let mut subjects = self.subjects.write().unwrap_or_else(|e| e.into_inner());
            subjects.extend(stream.subjects.iter().cloned());
        }
        let key = (stream.name.as_str(), consumer.name.as_str());
        let mut consumers = tx.open_table(CONSUMERS)?;
        if consumers.get(key)?.is_none() {
            consumers.insert(key, serde_json::to_string(consumer)?.as_str())?;
            drop(consumers);
            if !consumer.only_new {
                backfill(tx, &stream.name, consumer)?;
            }
        }
        Ok(())
    }

    /// Stores a dead letter on `subject` in the dead-letter stream, made on
    /// first use.
    pub(super) fn dead_letter(
        tx: &WriteTransaction,
        subject: &str,
        id: &str,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        let dlq = dlq_stream();
        let mut streams = tx.open_table(STREAMS)?;
        if streams.get(DLQ_STREAM)?.is_none() {
            streams.insert(DLQ_STREAM, serde_json::to_string(&dlq)?.as_str())?;
        }
        drop(streams);
        Self::append(tx, &dlq, (subject, id, bytes), false).map(drop)
    }

    /// The dead letters on `subject`, with their sequences.
    pub(super) fn dead_letters(&self, subject: &str) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
        let tx = self.db.begin_read()?;
        let (meta, payloads) = match (tx.open_table(META), tx.open_table(PAYLOADS)) {
            (Ok(m), Ok(p)) => (m, p),
            _ => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for entry in meta.range((DLQ_STREAM, 0)..)? {
            let (key, value) = entry?;
            let (stream, seq) = key.value();
            if stream != DLQ_STREAM {
                break;
            }
            if value.value().0 != subject {
                continue;
            }
            if let Some(bytes) = payloads.get((DLQ_STREAM, seq))? {
                out.push((seq, serde_json::from_slice(bytes.value())?));
            }
        }
        Ok(out)
    }

    /// Publishes dead letter `seq` of `cell` again on its original
    /// subject, and drops it.
    pub(super) fn replay_dead_letter(
        tx: &WriteTransaction,
        cell: &str,
        seq: u64,
        sweep: bool,
    ) -> anyhow::Result<DeadLetter> {
        let subject = dlq_subject(cell);
        let missing = || anyhow::anyhow!("no dead letter {seq} of {cell}: see `cbs dlq ls {cell}`");
        let kept = tx
            .open_table(META)?
            .get((DLQ_STREAM, seq))?
            .map(|v| v.value().0 == subject);
        if kept != Some(true) {
            return Err(missing());
        }
        let bytes = tx
            .open_table(PAYLOADS)?
            .get((DLQ_STREAM, seq))?
            .map(|v| v.value().to_vec())
            .ok_or_else(missing)?;
        let letter: DeadLetter = serde_json::from_slice(&bytes)?;
        let Some((msg_id, message)) = letter.replayed(seq)? else {
            anyhow::bail!("dead letter {seq} kept no message to replay");
        };
        let Some(stream) = Self::stream_taking(tx, &letter.subject)? else {
            anyhow::bail!(
                "no durable stream takes {} now: serve {cell} first, then replay",
                letter.subject
            );
        };
        Self::append(tx, &stream, (&letter.subject, &msg_id, &message), sweep)?;
        Self::drop_message(tx, DLQ_STREAM, seq)?;
        Ok(letter)
    }

    pub(super) fn stream_taking(
        tx: &WriteTransaction,
        subject: &str,
    ) -> anyhow::Result<Option<StreamSpec>> {
        let streams = tx.open_table(STREAMS)?;
        for entry in streams.iter()? {
            let (_, spec) = entry?;
            let spec: StreamSpec = serde_json::from_str(spec.value())?;
            if spec.subjects.iter().any(|p| matches(p, subject)) {
                return Ok(Some(spec));
            }
        }
        Ok(None)
    }

    fn consumers_of(tx: &WriteTransaction, stream: &str) -> anyhow::Result<Vec<ConsumerSpec>> {
        let consumers = tx.open_table(CONSUMERS)?;
        let mut out = Vec::new();
        for entry in consumers.range((stream, "")..)? {
            let (key, spec) = entry?;
            if key.value().0 != stream {
                break;
            }
            out.push(serde_json::from_str(spec.value())?);
        }
        Ok(out)
    }

    /// Stores a message in `stream` (once per id within the dedup window)
    /// and makes it pending for every consumer whose filter takes it.
    pub(super) fn append(
        tx: &WriteTransaction,
        stream: &StreamSpec,
        (subject, msg_id, payload): (&str, &str, &[u8]),
        sweep: bool,
    ) -> anyhow::Result<Published> {
        let now = now_ms();
        let window = stream.dedup_window.as_millis() as u64;
        let name = stream.name.as_str();
        let seen = tx
            .open_table(DEDUP)?
            .get((name, msg_id))?
            .map(|v| v.value());
        if let Some((seq, at)) = seen {
            if now.saturating_sub(at) < window {
                return Ok(Published {
                    seq,
                    duplicate: true,
                });
            }
        }
        let seq = {
            let mut last = tx.open_table(LAST_SEQ)?;
            let seq = last.get(name)?.map_or(0, |v| v.value()) + 1;
            last.insert(name, seq)?;
            seq
        };
        tx.open_table(DEDUP)?.insert((name, msg_id), (seq, now))?;
        let takers: Vec<ConsumerSpec> = Self::consumers_of(tx, name)?
            .into_iter()
            .filter(|c| c.filter.as_deref().is_none_or(|f| matches(f, subject)))
            .collect();
        // An interest stream keeps nothing nobody takes.
        if stream.retention == Keep::Interest && takers.is_empty() {
            return Ok(Published {
                seq,
                duplicate: false,
            });
        }
        tx.open_table(PAYLOADS)?.insert((name, seq), payload)?;
        tx.open_table(META)?.insert((name, seq), (subject, now))?;
        let mut pending = tx.open_table(PENDING)?;
        for consumer in &takers {
            pending.insert((name, consumer.name.as_str(), seq), (0, 0))?;
        }
        drop(pending);
        if sweep {
            Self::sweep(tx, stream, now)?;
        }
        Ok(Published {
            seq,
            duplicate: false,
        })
    }

    /// Forgets dedup ids past the window, and messages past `max_age`.
    fn sweep(tx: &WriteTransaction, stream: &StreamSpec, now: u64) -> anyhow::Result<()> {
        let name = stream.name.as_str();
        let window = stream.dedup_window.as_millis() as u64;
        let mut dedup = tx.open_table(DEDUP)?;
        let old: Vec<String> = dedup
            .range((name, "")..)?
            .map_while(|e| e.ok())
            .take_while(|(k, _)| k.value().0 == name)
            .filter(|(_, v)| now.saturating_sub(v.value().1) >= window)
            .map(|(k, _)| k.value().1.to_owned())
            .collect();
        for id in &old {
            dedup.remove((name, id.as_str()))?;
        }
        if stream.max_age.is_zero() {
            return Ok(());
        }
        let max_age = stream.max_age.as_millis() as u64;
        let expired: Vec<u64> = tx
            .open_table(META)?
            .range((name, 0)..)?
            .map_while(|e| e.ok())
            .take_while(|(k, v)| k.value().0 == name && now.saturating_sub(v.value().1) >= max_age)
            .map(|(k, _)| k.value().1)
            .collect();
        for seq in expired {
            for consumer in Self::consumers_of(tx, name)? {
                tx.open_table(PENDING)?
                    .remove((name, consumer.name.as_str(), seq))?;
            }
            Self::drop_message(tx, name, seq)?;
        }
        Ok(())
    }

    fn drop_message(tx: &WriteTransaction, stream: &str, seq: u64) -> anyhow::Result<()> {
        tx.open_table(PAYLOADS)?.remove((stream, seq))?;
        tx.open_table(META)?.remove((stream, seq))?;
        Ok(())
    }

    /// Up to `max` deliveries that are due now, and when the next one will
    /// be due (a retry time or an ack deadline), if any.
    pub(super) fn take(
        &self,
        tx: &WriteTransaction,
        stream: &str,
        consumer: &ConsumerSpec,
        max: usize,
    ) -> anyhow::Result<(Vec<Taken>, Option<Duration>)> {
        let (now, wall) = (Instant::now(), now_ms());
        let name = consumer.name.as_str();
        let key = (stream.to_owned(), name.to_owned());
        let lately = self.counted_lately(&key, now);
        let mut due = Vec::new();
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        let mut waiting = 0u64;
        let mut stopped = false;
        {
            let pending = tx.open_table(PENDING)?;
            let in_flight = self.in_flight();
            let held = in_flight.get(&key);
            for entry in pending.range((stream, name, 0)..)? {
                let (key, value) = entry?;
                let (s, c, seq) = key.value();
                if s != stream || c != name {
                    break;
                }
                let (delivered, not_before) = value.value();
                if delivered >= u64::from(consumer.max_deliver) {
                    continue; // as JetStream: held until settled, never sent again
                }
                if let Some(deadline) = held.and_then(|h| h.get(&seq)) {
                    if *deadline > now {
                        soonest(*deadline - now);
                        continue;
                    }
                }
                if not_before > wall {
                    soonest(Duration::from_millis(not_before - wall));
                    continue;
                }
                if due.len() < max {
                    due.push((seq, delivered + 1));
                } else if lately {
                    // The batch is full and the lag was counted lately:
                    // the rest of the backlog need not be read again.
                    stopped = true;
                    break;
                } else {
                    waiting += 1;
                }
            }
        }
        let waiting = {
            let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
            match counted.get_mut(&key).filter(|_| stopped) {
                // Counted lately: less what this take hands out (what was
                // published since is counted by the next full count).
                Some((_, last)) => {
                    *last = last.saturating_sub(due.len() as u64);
                    *last
                }
                None => {
                    counted.insert(key.clone(), (now, waiting));
                    waiting
                }
            }
        };
        let mut taken = Vec::with_capacity(due.len());
        let mut pending = tx.open_table(PENDING)?;
        let payloads = tx.open_table(PAYLOADS)?;
        let meta = tx.open_table(META)?;
        let mut in_flight = self.in_flight();
        let held = in_flight.entry(key).or_default();
        for (i, (seq, delivered)) in due.iter().copied().enumerate() {
            let (Some(payload), Some(info)) =
                (payloads.get((stream, seq))?, meta.get((stream, seq))?)
            else {
                pending.remove((stream, name, seq))?; // its message is gone
                continue;
            };
            pending.insert((stream, name, seq), (delivered, 0))?;
            held.insert(seq, now + consumer.ack_wait);
            taken.push(Taken {
                seq,
                delivered,
                pending: waiting + (due.len() - i - 1) as u64,
                subject: info.value().0.to_owned(),
                payload: Bytes::copy_from_slice(payload.value()),
            });
        }
        Ok((taken, next))
    }

    pub(super) fn settle(
        &self,
        tx: &WriteTransaction,
        (stream, consumer, seq): (&str, &str, u64),
        how: Settle,
    ) -> anyhow::Result<()> {
        if let Some(held) = self
            .in_flight()
            .get_mut(&(stream.to_owned(), consumer.to_owned()))
        {
            held.remove(&seq);
        }
        let mut pending = tx.open_table(PENDING)?;
        match how {
            Settle::Retry(delay) => {
                let delivered = pending.get((stream, consumer, seq))?.map(|v| v.value().0);
                if let Some(delivered) = delivered {
                    let at = now_ms() + delay.as_millis() as u64;
                    pending.insert((stream, consumer, seq), (delivered, at))?;
                }
                return Ok(());
            }
            Settle::Keep { .. } => {
                // Stored, and pending as if past max_deliver: never taken.
                if pending.get((stream, consumer, seq))?.is_some() {
                    pending.insert((stream, consumer, seq), (KEPT, 0))?;
                }
                return Ok(());
            }
            Settle::Ack | Settle::Term => {}
        }
        pending.remove((stream, consumer, seq))?;
        drop(pending);
        let spec: Option<StreamSpec> = match tx.open_table(STREAMS)?.get(stream)? {
            Some(v) => Some(serde_json::from_str(v.value())?),
            None => None,
        };
        if spec.is_some_and(|s| s.retention == Keep::Limits) {
            return Ok(());
        }
        // Work queue and interest: gone once every consumer settled it.
        let pending = tx.open_table(PENDING)?;
        for other in Self::consumers_of(tx, stream)? {
            if pending.get((stream, other.name.as_str(), seq))?.is_some() {
                return Ok(());
            }
        }
        drop(pending);
        Self::drop_message(tx, stream, seq)
    }
}

/// A delivery a take hands out.
pub(super) struct Taken {
    pub(super) seq: u64,
    pub(super) delivered: u64,
    pub(super) pending: u64,
    pub(super) subject: String,
    pub(super) payload: Bytes,
}

fn dlq_stream() -> StreamSpec {
    StreamSpec {
        name: DLQ_STREAM.to_owned(),
        subjects: vec!["cbs-dlq.>".to_owned()],
        retention: Keep::Limits,
        dedup_window: Duration::from_secs(120),
        max_age: Duration::ZERO,
    }
}

/// As JetStream: a new stream may not take a subject another one takes.
fn refuse_overlap(tx: &WriteTransaction, new: &StreamSpec) -> anyhow::Result<()> {
    let streams = tx.open_table(STREAMS)?;
    for entry in streams.iter()? {
        let existing: StreamSpec = serde_json::from_str(entry?.1.value())?;
        for a in &new.subjects {
            for b in &existing.subjects {
                let (pa, pb) = (Pattern::parse(a)?, Pattern::parse(b)?);
                if pa.overlaps(&pb) {
                    anyhow::bail!(
                        "stream {} would take {a}, which stream {} takes ({b}): subjects of streams may not overlap",
                        new.name,
                        existing.name
                    );
                }
            }
        }
    }
    Ok(())
}

/// A new consumer that takes what the stream holds: every stored message
/// its filter takes becomes pending.
fn backfill(tx: &WriteTransaction, stream: &str, consumer: &ConsumerSpec) -> anyhow::Result<()> {
    let seqs: Vec<u64> = tx
        .open_table(META)?
        .range((stream, 0)..)?
        .map_while(|e| e.ok())
        .take_while(|(k, _)| k.value().0 == stream)
        .filter(|(_, v)| {
            consumer
                .filter
                .as_deref()
                .is_none_or(|f| matches(f, v.value().0))
        })
        .map(|(k, _)| k.value().1)
        .collect();
    let mut pending = tx.open_table(PENDING)?;
    for seq in seqs {
        pending.insert((stream, consumer.name.as_str(), seq), (0, 0))?;
    }
    Ok(())
}
