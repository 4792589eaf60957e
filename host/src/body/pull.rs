//! Durable dispatch: pulls a `[durable]` cell's messages from its shared
//! JetStream consumer, no more at a time than the cell can run, and
//! acknowledges each by the verdict of [`crate::durable`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::cell::{LoadedCell, Slot};
use crate::durable::{store_dead_letter, verdict, DeadLetter, DurableConsumer, Verdict};
use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::manifest::DurableSpec;

/// Pulls messages for the cell in `slot` until `stop`: no more at a time
/// than the cell can admit, each handled in a task of its own.
pub async fn consume(
    js: jetstream::Context,
    consumer: DurableConsumer,
    slot: Slot,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let cell = slot.read().unwrap_or_else(|e| e.into_inner()).clone();
        let first = tokio::select! {
            permit = cell.admit() => permit,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        // One permit in hand; pull as many more as the cell can run now.
        let room = 1 + cell.admission_room();
        let batch = consumer
            .fetch()
            .max_messages(room)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut messages = match batch {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(cell = %cell.manifest.id, error = %e, "cannot pull from the durable consumer; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut permit = Some(first);
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "durable pull ended");
                    break;
                }
            };
            let held = match permit.take() {
                Some(p) => p,
                // Unacknowledged, it is delivered again after ack_wait.
                None => match cell.admit().await {
                    Some(p) => p,
                    None => break,
                },
            };
            let (js, cell) = (js.clone(), cell.clone());
            tokio::spawn(async move {
                handle(&js, &cell, message).await;
                drop(held);
            });
        }
    }
}

async fn handle(js: &jetstream::Context, cell: &LoadedCell, message: jetstream::Message) {
    // A hot swap to a version without [durable] still settles what was pulled.
    let fallback;
    let spec = match &cell.manifest.durable {
        Some(spec) => spec,
        None => {
            fallback = DurableSpec::default();
            &fallback
        }
    };
    let (delivered, pending) = message
        .info()
        .map_or((1, 0), |i| (i.delivered.max(1) as u64, i.pending));
    cell.stats.durable_delivery(delivered, pending);
    let outcome = match Envelope::from_slice(&message.payload) {
        Ok(envelope) => cell.process(Arc::new(envelope), Instant::now()).await.error,
        Err(error) => Some(error),
    };
    let verdict = verdict(spec, outcome.as_ref(), delivered);
    let acked = match &verdict {
        Verdict::Ack => message.ack().await,
        Verdict::Retry(delay) => message.ack_with(AckKind::Nak(Some(*delay))).await,
        Verdict::DeadLetter => match dead_letter(js, cell, &message, delivered, outcome).await {
            Ok(()) => {
                cell.stats.dead_lettered();
                message.ack_with(AckKind::Term).await
            }
            Err(e) => {
                tracing::warn!(cell = %cell.manifest.id, error = %e, "cannot store a dead letter; it will be delivered again");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
            }
        },
    };
    if let Err(e) = acked {
        tracing::warn!(cell = %cell.manifest.id, error = %e, ?verdict, "cannot acknowledge a durable message; it will be delivered again");
    }
}

async fn dead_letter(
    js: &jetstream::Context,
    cell: &LoadedCell,
    message: &jetstream::Message,
    delivered: u64,
    error: Option<BusError>,
) -> anyhow::Result<()> {
    let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let letter = DeadLetter {
        cell: cell.manifest.id.clone(),
        subject: message.subject.to_string(),
        stream: info.stream.to_owned(),
        stream_seq: info.stream_sequence,
        delivered,
        message: serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())
        }),
        error: error.unwrap_or_else(|| BusError::new(ErrorCode::Internal, "no error recorded")),
    };
    store_dead_letter(js, &letter).await
}
