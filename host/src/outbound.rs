//! Calls from a cell to other cells. They go through the host, which checks
//! the caller's grants, keeps the flow's correlation and trace context, and
//! never waits past the caller's own deadline. A callee served by the same
//! host is called in process when it has room (local first); otherwise the
//! call goes over the bus to whichever host serves it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::bus::local::request_timeout;
use crate::bus::{BodyBus, Headers, Message};
use crate::envelope::{header, BusError, Envelope, ErrorCode};
use crate::manifest::{subject_of, Manifest};

/// Timeout of a call when the cell names none.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Cells served by this host, reachable without the bus.
#[async_trait]
pub trait LocalCalls: Send + Sync {
    /// Runs `envelope` on `cell_id` in process and returns its reply, when
    /// that cell is served here and has room; `None` sends it over the bus.
    async fn call(&self, cell_id: &str, envelope: &Envelope) -> Option<Envelope>;
}

/// One cell's way out to the bus.
pub struct Outbound {
    bus: Arc<dyn BodyBus>,
    manifest: Arc<Manifest>,
    local: Option<Arc<dyn LocalCalls>>,
}

/// The message a cell is handling, as outbound calls need it.
#[derive(Debug, Clone)]
pub struct Flow {
    pub parent: Arc<Envelope>,
    pub deadline: Instant,
}

impl Outbound {
    /// With `local`, calls to cells of this host skip the bus (no round
    /// trip, no re-encoding); without it every call goes through the bus.
    pub fn new(
        bus: Arc<dyn BodyBus>,
        manifest: Arc<Manifest>,
        local: Option<Arc<dyn LocalCalls>>,
    ) -> Self {
        Self {
            bus,
            manifest,
            local,
        }
    }

    pub fn cell_id(&self) -> &str {
        &self.manifest.id
    }

    /// Request/reply to another cell; returns the reply payload (JSON text).
    pub async fn request(
        &self,
        flow: &Flow,
        cell_id: &str,
        payload: String,
        timeout: Option<Duration>,
    ) -> Result<String, BusError> {
        if !self.manifest.may_call(cell_id) {
            return Err(BusError::new(
                ErrorCode::ContractViolation,
                format!(
                    "cell {} may not call {cell_id}: add it to `calls` under [capabilities] in its cell.toml",
                    self.manifest.id
                ),
            ));
        }
        let remaining = flow.deadline.saturating_duration_since(Instant::now());
        let timeout = timeout.unwrap_or(DEFAULT_CALL_TIMEOUT).min(remaining);
        if timeout.is_zero() {
            return Err(BusError::new(
                ErrorCode::Timeout,
                format!("no time left to call {cell_id}: the message's deadline has passed"),
            ));
        }
        let child = flow
            .parent
            .child(subject_of(cell_id), raw_json(payload, "request payload")?);
        let local = match &self.local {
            Some(local) => tokio::time::timeout(timeout, local.call(cell_id, &child))
                .await
                .map_err(|_| request_timeout(&child.subject, timeout))?,
            None => None,
        };
        let reply = match local {
            Some(reply) => reply,
            None => {
                let reply = self.bus.request(to_message(&child), timeout).await?;
                Envelope::from_slice(&reply.payload)?
            }
        };
        reply
            .into_result()
            .map(|p| String::from(Box::<str>::from(p)))
    }

    /// Fire-and-forget publish to a granted subject.
    pub async fn publish(
        &self,
        flow: &Flow,
        subject: &str,
        payload: String,
    ) -> Result<(), BusError> {
        if !self.manifest.may_publish(subject) {
            return Err(BusError::new(
                ErrorCode::ContractViolation,
                format!(
                    "cell {} may not publish to {subject}: add it to `publish` under [capabilities] in its cell.toml",
                    self.manifest.id
                ),
            ));
        }
        let child = flow
            .parent
            .child(subject, raw_json(payload, "published payload")?);
        self.bus.publish(to_message(&child)).await
    }
}

/// Envelope → bus message, mirroring correlation and trace ids into headers.
pub fn to_message(envelope: &Envelope) -> Message {
    Message::new(envelope.subject.clone(), Bytes::from(envelope.to_vec()))
        .with_headers(transport_headers(envelope))
}

/// Failure replies also carry the NATS micro-service error headers, so
/// generic NATS tools see them as errors without parsing the envelope.
pub fn transport_headers(envelope: &Envelope) -> Headers {
    let mut headers = vec![(
        header::CORRELATION_ID.to_owned(),
        envelope.correlation_id.clone(),
    )];
    if let Some(tp) = envelope.headers.get(header::TRACEPARENT) {
        headers.push((header::TRACEPARENT.to_owned(), tp.clone()));
    }
    if let Some(error) = &envelope.error {
        headers.push((
            header::SERVICE_ERROR.to_owned(),
            format!("{}: {}", error.code, first_line(&error.message)),
        ));
        headers.push((
            header::SERVICE_ERROR_CODE.to_owned(),
            error.code.status().to_string(),
        ));
    }
    headers
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn raw_json(text: String, what: &str) -> Result<Box<RawValue>, BusError> {
    RawValue::from_string(text)
        .map_err(|e| BusError::new(ErrorCode::InvalidInput, format!("{what} is not JSON: {e}")))
}
