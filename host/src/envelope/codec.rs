//! Envelope ↔ bus message: the envelope's JSON is the message body, and
//! its correlation and trace ids are mirrored into transport headers so that
//! tools (`nats sub`) show them without parsing the body.

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use bytes::Bytes;

use super::{header, BusError, Envelope};
use crate::bus::{Headers, Message};

/// Envelope → bus message.
pub fn to_message(envelope: &Envelope) -> Message {
    Message::new(envelope.subject.clone(), Bytes::from(envelope.to_vec()))
        .with_headers(transport_headers(envelope))
}

/// Bus message → envelope; `invalid_input` when the body is not one.
pub fn from_message(message: &Message) -> Result<Envelope, BusError> {
    Envelope::from_slice(&message.payload)
}

/// The transport headers of an envelope. Failure replies also carry the
/// NATS micro-service error headers, so generic NATS tools see them as
/// errors without parsing the envelope.
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
            NATS_SERVICE_ERROR.to_owned(),
            format!("{}: {}", error.code, first_line(&error.message)),
        ));
        headers.push((
            NATS_SERVICE_ERROR_CODE.to_owned(),
            error.code.status().to_string(),
        ));
    }
    headers
}

/// The first line of `text`, with any other control character as a space:
/// a header value is one line.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
