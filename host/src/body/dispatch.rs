//! Admission and dispatch: takes messages off a cell's subscription, admits
//! each within the cell's concurrency and queue limits — or sends it to a
//! peer when this host is full or slow ([`super::forward`]) — or answers
//! `capacity` at once, and sends every reply.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::cell::LoadedCell;
use super::forward::{self, Forwarded};
use super::split::Slot;
use crate::bus::{is_inbox, BodyBus, Headers, Message, Subscription, INBOX_PREFIX};
use crate::envelope::codec::{from_message, transport_headers};
use crate::envelope::{header, BusError, Envelope, ErrorCode};
use crate::routing::{CellRoutes, Router};

/// How a subscription's requests may leave this host. Without one (events,
/// and this host's own direct subject) every message is handled here.
#[derive(Clone)]
pub(super) struct Reroute {
    pub router: Arc<Router>,
    pub routes: Arc<CellRoutes>,
}

/// Which version of a cell a subscription's messages go to.
#[derive(Clone, Copy)]
pub(super) enum Pick {
    /// The stable one, or the canary at its share.
    Split,
    /// The canary alone (its trial subject); without one, `unavailable`.
    Canary,
}

/// Runs until the subscription closes, or until `stop`: then it
/// unsubscribes and still takes the messages already delivered, so none is
/// dropped unanswered. The slot is read once per message, so a hot swap
/// takes effect from the next message on.
pub(super) async fn dispatch(
    bus: Arc<dyn BodyBus>,
    slot: Slot,
    mut subscription: Subscription,
    stop: Arc<Notify>,
    pick: Pick,
    reroute: Option<Reroute>,
) {
    let mut stopping = false;
    loop {
        let message = tokio::select! {
            message = subscription.next() => message,
            () = stop.notified(), if !stopping => {
                stopping = true;
                subscription.unsubscribe().await;
                continue;
            }
        };
        let Some(message) = message else { break };
        let cell = match pick {
            Pick::Split => Some(slot.read().unwrap().next()),
            Pick::Canary => slot.read().unwrap().canary().map(|(c, _)| c.clone()),
        };
        let Some(cell) = cell else {
            no_trial(&*bus, &message).await;
            continue;
        };
        admit(&bus, cell, message, reroute.as_ref()).await;
    }
    tracing::debug!(cell = %slot.read().unwrap().stable().manifest.id, "subscription closed");
}

/// Sends a request to a faster peer while this host is slow for the cell;
/// else admits it here.
async fn admit(
    bus: &Arc<dyn BodyBus>,
    cell: Arc<LoadedCell>,
    message: Message,
    reroute: Option<&Reroute>,
) {
    // Only requests leave: a message without a reply subject is an event.
    let reroute = reroute.filter(|_| message.reply.is_some());
    if let Some(r) = reroute {
        if let Some(peer) = r.router.around_slowness(&r.routes) {
            if let Some(relay) = r.router.relay_slot() {
                return forward_to(bus, cell, message, peer, relay);
            }
        }
    }
    admit_here(bus, cell, message, reroute).await;
}

/// Runs `message` in a task of its own; when the cell is at its limits,
/// sends it to a peer with room, or answers `capacity` at once.
async fn admit_here(
    bus: &Arc<dyn BodyBus>,
    cell: Arc<LoadedCell>,
    message: Message,
    reroute: Option<&Reroute>,
) {
    if message.reply.is_some() {
        if let Err(limited) = cell.tenants.take(&cell.manifest.id) {
            return reply_error(&**bus, &cell, &message, over_rate(&limited)).await;
        }
    }
    let Some(permit) = cell.try_admit() else {
        if let Some(r) = reroute {
            if let Some(peer) = r.router.around_capacity(&r.routes) {
                if let Some(relay) = r.router.relay_slot() {
                    return forward_to(bus, cell, message, peer, relay);
                }
            }
        }
        let error = BusError::new(
            ErrorCode::Capacity,
            format!(
                "cell {} is at its limit of {} running and {} queued messages; retry later",
                cell.manifest.id, cell.manifest.limits.concurrency, cell.manifest.limits.queue
            ),
        );
        return reply_error(&**bus, &cell, &message, error).await;
    };
    let bus = bus.clone();
    tokio::spawn(async move {
        handle_message(&*bus, &cell, message).await;
        drop(permit);
    });
}

/// `capacity` for a tenant over its rate, with when to retry.
fn over_rate(limited: &crate::quota::Limited) -> BusError {
    let retry_after_ms = u64::try_from(limited.retry_after.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    BusError::new(
        ErrorCode::Capacity,
        format!(
            "tenant {} is over its rate of {} requests per second on this host; retry in {retry_after_ms} ms",
            limited.tenant, limited.rate
        ),
    )
    .with_details(serde_json::json!({"tenant": limited.tenant, "retry_after_ms": retry_after_ms}))
}

/// Sends `message` to `peer` in a task of its own and answers with what
/// came of it; `relay` is its slot among the host's forwarded requests.
/// This host stays the one answering: a request the peer could not take is
/// handled here after all (or answered `capacity`).
fn forward_to(
    bus: &Arc<dyn BodyBus>,
    cell: Arc<LoadedCell>,
    message: Message,
    peer: String,
    relay: OwnedSemaphorePermit,
) {
    let bus = bus.clone();
    tokio::spawn(async move {
        let _relay = relay;
        match forward::ask(&*bus, &cell, &message, &peer).await {
            Forwarded::Reply(reply) => {
                relay_reply(&*bus, &message, reply.headers, reply.payload).await;
            }
            Forwarded::HandleHere => admit_here(&bus, cell, message, None).await,
            Forwarded::Failed(error) => reply_error(&*bus, &cell, &message, error).await,
        }
    });
}

async fn handle_message(bus: &dyn BodyBus, cell: &LoadedCell, message: Message) {
    let arrived = Instant::now();
    let reply = match from_message(&message) {
        Ok(envelope) => cell.process(Arc::new(envelope), arrived).await,
        Err(error) => {
            cell.stats.request();
            return reply_error(bus, cell, &message, error).await;
        }
    };
    send_reply(bus, &message, &reply).await;
}

/// Answers a message on a trial subject after the trial ended.
async fn no_trial(bus: &dyn BodyBus, message: &Message) {
    let error = BusError::unavailable(format!(
        "{}: no version is on trial here now",
        message.subject
    ));
    let reply = Envelope::orphan_error(
        &message.subject,
        message.header(header::CORRELATION_ID),
        error,
    );
    send_reply(bus, message, &reply).await;
}

async fn reply_error(bus: &dyn BodyBus, cell: &LoadedCell, message: &Message, error: BusError) {
    cell.stats.error(error.code);
    tracing::debug!(cell = %cell.manifest.id, code = %error.code, error = %error.message, "rejected");
    let reply = Envelope::orphan_error(
        &message.subject,
        message.header(header::CORRELATION_ID),
        error,
    );
    send_reply(bus, message, &reply).await;
}

/// Where a reply to `message` may go: its reply subject if that is a
/// requester's inbox. The host publishes replies with its own credentials,
/// so never to another subject the message chose (a `$JS.API` or `$KV`
/// subject would act on the host's behalf).
fn reply_to(message: &Message) -> Option<&str> {
    let to = message.reply.as_deref()?;
    if !is_inbox(to) {
        tracing::warn!(subject = %message.subject, reply_to = %to.escape_debug(), "refused to reply outside the inbox prefix {INBOX_PREFIX}");
        return None;
    }
    Some(to)
}

/// Passes on a reply as it came (a peer's, to a forwarded request).
async fn relay_reply(bus: &dyn BodyBus, message: &Message, headers: Headers, payload: Bytes) {
    let Some(to) = reply_to(message) else {
        return;
    };
    if let Err(e) = bus.reply(to, headers, payload).await {
        tracing::warn!(error = %e, "cannot relay a reply");
    }
}

async fn send_reply(bus: &dyn BodyBus, message: &Message, reply: &Envelope) {
    let Some(to) = reply_to(message) else {
        return;
    };
    let mut bytes = reply.to_vec();
    let mut headers = transport_headers(reply);
    // A reply the bus cannot carry would be dropped and the caller left
    // waiting: it gets a typed error instead.
    let fits = |max: usize| {
        let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        bytes.len() + header_bytes + 16 <= max
    };
    if let Some(max) = bus.max_payload().filter(|max| !fits(*max)) {
        let error = BusError::new(
            ErrorCode::CellFailed,
            format!(
                "the reply is {} bytes, more than the bus carries ({max} bytes, NATS max_payload)",
                bytes.len()
            ),
        );
        let too_big = Envelope::orphan_error(&message.subject, Some(&reply.correlation_id), error);
        (bytes, headers) = (too_big.to_vec(), transport_headers(&too_big));
    }
    if let Err(e) = bus.reply(to, headers, bytes.into()).await {
        tracing::warn!(error = %e, "cannot send a reply");
    }
}
