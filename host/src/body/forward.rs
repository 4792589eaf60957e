//! Forwarding: sends a request this host should not handle (full, or far
//! slower than its peers) to a peer's direct subject for the cell and
//! relays the peer's reply. The request goes as it came (bytes and
//! headers: the envelope, its trace context and budget).
//!
//! This host stays the one answering, so nothing is lost when the peer is
//! gone or full in the meantime: it then handles the request itself, or
//! answers `capacity` as it would have.

use std::sync::Arc;
use std::time::Duration;

use async_nats::service::NATS_SERVICE_ERROR;
use tokio::sync::OwnedSemaphorePermit;

use super::cell::LoadedCell;
use super::dispatch::{admit_here, relay_reply, reply_error};
use crate::bus::{BodyBus, Message};
use crate::envelope::codec::from_message;
use crate::envelope::ErrorCode;
use crate::routing::direct_subject;

/// How much longer than the request's own deadline this host waits for
/// the peer's reply (the peer answers `timeout` itself at the deadline).
const REPLY_SLACK: Duration = Duration::from_millis(100);

/// Forwards `message` to `peer` in a task of its own; `relay` is its slot
/// among the host's forwarded requests.
pub(super) fn spawn(
    bus: Arc<dyn BodyBus>,
    cell: Arc<LoadedCell>,
    message: Message,
    peer: String,
    relay: OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        // Not an envelope: answered here (`invalid_input`), not sent on.
        let Ok(envelope) = from_message(&message) else {
            return admit_here(&bus, cell, message, None).await;
        };
        // The request's deadline as the peer will count it, plus slack.
        let wait = cell.time_allowed(&envelope) + REPLY_SLACK;
        cell.stats.forwarded();
        let _relay = relay;
        let subject = direct_subject(&peer, &cell.manifest.id);
        let out = Message {
            subject,
            reply: None,
            headers: message.headers.clone(),
            payload: message.payload.clone(),
        };
        match bus.request(out, wait).await {
            Ok(reply) if !refused(&reply) => {
                relay_reply(&*bus, &message, reply.headers, reply.payload).await;
            }
            // The peer filled up since its report, or is gone: handle it
            // here after all (or answer `capacity`), never forward again.
            Ok(_) => admit_here(&bus, cell, message, None).await,
            Err(e) if e.code == ErrorCode::NotFound => {
                tracing::debug!(%peer, cell = %cell.manifest.id, "peer gone; handling here");
                admit_here(&bus, cell, message, None).await;
            }
            Err(e) => reply_error(&*bus, &cell, &message, e).await,
        }
    });
}

/// Whether the peer refused the request for lack of room.
fn refused(reply: &Message) -> bool {
    reply
        .header(NATS_SERVICE_ERROR)
        .is_some_and(|e| e.starts_with(ErrorCode::Capacity.as_str()))
}
