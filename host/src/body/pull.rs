//! Durable dispatch: pulls a `[durable]` cell's (or durable subscription's)
//! messages from its shared consumer, no more at a time than the cell can
//! run, and settles each by the verdict of [`crate::durable`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::cell::LoadedCell;
use super::split::Slot;
use crate::backoff::Backoff;
use crate::durable::{
    verdict, Consumer, DeadLetter, Delivery, DurableLog, Lettered, Settle, Verdict,
};
use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::manifest::DurableSpec;

/// Pulls messages for the cell in `slot` until `stop`: no more held at a
/// time than the cell runs at once (and only what it can admit), each
/// handled in a task of its own.
pub async fn consume(
    log: Arc<dyn DurableLog>,
    consumer: Box<dyn Consumer>,
    slot: Slot,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        // Pulled at the stable version's pace; each message then goes to
        // the version the split gives it (`body::split`).
        let cell = slot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .stable()
            .clone();
        let first = tokio::select! {
            slot = cell.pull_slot() => slot,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        // One pull slot in hand; pull as many more as can run now.
        let room = 1 + cell.pull_room().min(cell.admission_room());
        let batch = consumer.fetch(room, Duration::from_secs(1)).await;
        let mut messages = match batch {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(cell = %cell.manifest.id, error = %e, "cannot pull from the durable consumer; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut first = Some(first);
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "durable pull ended");
                    break;
                }
            };
            // Unacknowledged, a message left here is delivered again
            // after ack_wait.
            let target = slot.read().unwrap_or_else(|e| e.into_inner()).next();
            // The pull slot in hand is the stable version's.
            let pulled = if Arc::ptr_eq(&target, &cell) {
                first.take()
            } else {
                None
            };
            let Some(held) = hold(&target, pulled).await else {
                break;
            };
            let log = log.clone();
            let cell = target;
            tokio::spawn(async move {
                handle(&*log, &cell, message).await;
                drop(held);
            });
        }
    }
}

/// What one pulled message holds while it is handled: its pull slot
/// (`slot`, or one waited for) and an admission, taken once the message
/// is here so that an idle pull holds no admission; `None` once the cell
/// is closed.
async fn hold(
    cell: &LoadedCell,
    slot: Option<OwnedSemaphorePermit>,
) -> Option<[OwnedSemaphorePermit; 2]> {
    let pulled = match slot {
        Some(slot) => slot,
        None => cell.pull_slot().await?,
    };
    let admitted = cell.admit().await?;
    Some([pulled, admitted])
}

async fn handle(log: &dyn DurableLog, cell: &LoadedCell, message: Delivery) {
    // A hot swap to a version without [durable] still settles what was pulled.
    let fallback;
    let spec = match &cell.manifest.durable {
        Some(spec) => spec,
        None => {
            fallback = DurableSpec::default();
            &fallback
        }
    };
    let delivered = message.delivered;
    cell.stats.durable_delivery(delivered, message.pending);
    let outcome = match Envelope::from_slice(&message.payload) {
        Ok(envelope) => cell.process(Arc::new(envelope), Instant::now()).await.error,
        Err(error) => Some(error),
    };
    let verdict = verdict(spec, outcome.as_ref(), delivered);
    let settle = match &verdict {
        Verdict::Ack => Settle::Ack,
        Verdict::Retry(delay) => Settle::Retry(*delay),
        Verdict::DeadLetter => {
            let letter = dead_letter(cell, &message, outcome);
            let kept = keep_letter(log, cell, &message, &letter, spec).await;
            let whole = kept == Lettered::Whole;
            tracing::warn!(cell = %cell.manifest.id, seq = message.stream_seq, delivered, whole, "durable message dead-lettered");
            cell.stats.dead_lettered(whole);
            match kept {
                Lettered::Whole => Settle::Term,
                // The letter points at the message: it must stay stored.
                Lettered::WithoutBody => Settle::Keep {
                    last: delivered >= u64::from(spec.max_deliver),
                },
            }
        }
    };
    if let Err(e) = message.settle(settle).await {
        tracing::warn!(cell = %cell.manifest.id, error = %e, ?verdict, "cannot settle a durable message; it will be delivered again");
    }
}

/// Stores `letter`, trying again until it is stored, and holds the
/// message meanwhile: settled before its letter exists, a message past
/// `max_deliver` would never be delivered again, and be lost.
async fn keep_letter(
    log: &dyn DurableLog,
    cell: &LoadedCell,
    message: &Delivery,
    letter: &DeadLetter,
    spec: &DurableSpec,
) -> Lettered {
    // Held by progress reports at least twice per ack_wait.
    let ack_wait = Duration::from_millis(spec.ack_wait_ms);
    let backoff = Backoff {
        first: Duration::from_millis(200).min(ack_wait / 2),
        max: Duration::from_secs(30).min(ack_wait / 2),
        jitter: 0.2,
    };
    let mut attempt = 0;
    loop {
        match log.dead_letter(letter).await {
            Ok(kept) => return kept,
            Err(e) => {
                cell.stats.dead_letter_failed();
                tracing::warn!(cell = %cell.manifest.id, seq = message.stream_seq, error = %e, "cannot store a dead letter; holding the message and trying again");
            }
        }
        if let Err(e) = message.in_progress().await {
            tracing::debug!(error = %e, "cannot extend a durable delivery");
        }
        tokio::time::sleep(backoff.next(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

fn dead_letter(cell: &LoadedCell, message: &Delivery, error: Option<BusError>) -> DeadLetter {
    DeadLetter {
        cell: cell.manifest.id.clone(),
        subject: message.subject.clone(),
        stream: message.stream.clone(),
        stream_seq: message.stream_seq,
        delivered: message.delivered,
        message: serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())
        }),
        error: error.unwrap_or_else(|| BusError::new(ErrorCode::Internal, "no error recorded")),
        body_in_original: false,
    }
}
