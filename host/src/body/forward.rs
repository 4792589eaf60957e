//! Forwarding: asks a peer's direct subject for the cell to handle a
//! request this host should not (full, or far slower than its peers). The
//! request goes as it came (bytes and headers: the envelope, its trace
//! context and budget); what comes back is the peer's reply, or word to
//! handle it here.
//!
//! This host stays the one answering ([`super::dispatch`] does), so nothing
//! is lost when the peer is gone or full in the meantime: it then handles
//! the request itself, or answers `capacity` as it would have.

use std::time::Duration;

use async_nats::service::NATS_SERVICE_ERROR;

use super::cell::LoadedCell;
use crate::bus::{BodyBus, Message};
use crate::envelope::codec::from_message;
use crate::envelope::{BusError, ErrorCode};
use crate::routing::direct_subject;

/// How much longer than the request's own deadline this host waits for
/// the peer's reply (the peer answers `timeout` itself at the deadline).
const REPLY_SLACK: Duration = Duration::from_millis(100);

/// What came of asking a peer.
pub(super) enum Forwarded {
    /// The peer's reply, to relay as it came.
    Reply(Message),
    /// Not sent on (not an envelope), or the peer filled up since its
    /// report or is gone: handle it here after all, never forward again.
    HandleHere,
    /// The request failed on the way: answer with this.
    Failed(BusError),
}

/// Sends `message` to `peer`'s direct subject for the cell and waits for
/// its reply until the request's deadline (plus slack).
pub(super) async fn ask(
    bus: &dyn BodyBus,
    cell: &LoadedCell,
    message: &Message,
    peer: &str,
) -> Forwarded {
    // Not an envelope: answered here (`invalid_input`), not sent on.
    let Ok(envelope) = from_message(message) else {
        return Forwarded::HandleHere;
    };
    // The request's deadline as the peer will count it, plus slack.
    let wait = cell.time_allowed(&envelope) + REPLY_SLACK;
    cell.stats.forwarded();
    let out = Message {
        subject: direct_subject(peer, &cell.manifest.id),
        reply: None,
        headers: message.headers.clone(),
        payload: message.payload.clone(),
    };
    match bus.request(out, wait).await {
        Ok(reply) if !refused(&reply) => Forwarded::Reply(reply),
        Ok(_) => Forwarded::HandleHere,
        Err(e) if e.code == ErrorCode::NotFound => {
            tracing::debug!(%peer, cell = %cell.manifest.id, "peer gone; handling here");
            Forwarded::HandleHere
        }
        Err(e) => Forwarded::Failed(e),
    }
}

/// Whether the peer refused the request for lack of room.
fn refused(reply: &Message) -> bool {
    reply
        .header(NATS_SERVICE_ERROR)
        .is_some_and(|e| e.starts_with(ErrorCode::Capacity.as_str()))
}
