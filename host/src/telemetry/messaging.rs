//! Spans of the OpenTelemetry messaging conventions, one per hop, named
//! `<operation> <subject>`: `process` (consumer: a cell handles a
//! message), `send` (client: a request, one span per attempt) and
//! `publish` (producer: an event). Each carries `messaging.system`,
//! `messaging.operation.type` and `messaging.destination.name`; [`Hop`]
//! adds the message's id and flow and the cells involved where the caller
//! knows them.

use tracing::field::{display, Empty};
use tracing::Span;

use crate::envelope::Envelope;

/// What a hop does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Process,
    Send,
    Publish,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Send => "send",
            Self::Publish => "publish",
        }
    }
}

/// The `messaging.system` of spans on a bus of this kind.
fn system(bus_kind: &str) -> &'static str {
    match bus_kind {
        "nats" => "nats",
        _ => "cbs_in_process",
    }
}

/// A messaging span being built; [`Hop::span`] is the span.
pub struct Hop(Span);

impl Hop {
    /// A debug span of `operation` to `subject` on a bus of `bus_kind`.
    pub fn new(operation: Operation, bus_kind: &str, subject: &str) -> Self {
        // Span names and field names are static: one declaration per
        // operation, every field a hop may carry declared empty.
        macro_rules! hop {
            ($name:literal, $kind:literal) => {
                tracing::debug_span!(
                    $name,
                    otel.name = %format!("{} {subject}", operation.as_str()),
                    otel.kind = $kind,
                    messaging.system = system(bus_kind),
                    messaging.operation.type = operation.as_str(),
                    messaging.destination.name = %subject,
                    messaging.message.id = Empty,
                    messaging.message.conversation_id = Empty,
                    cell = Empty,
                    target = Empty,
                    cbs.cell = Empty,
                    correlation_id = Empty,
                    message_id = Empty,
                )
            };
        }
        Self(match operation {
            Operation::Process => hop!("cell", "consumer"),
            Operation::Send => hop!("send", "client"),
            Operation::Publish => hop!("publish", "producer"),
        })
    }

    /// The message's id and its flow (`messaging.message.id`, and the
    /// correlation id as `messaging.message.conversation_id`).
    pub fn message(self, message: &Envelope) -> Self {
        self.0.record("messaging.message.id", display(&message.id));
        self.0.record(
            "messaging.message.conversation_id",
            display(&message.correlation_id),
        );
        self
    }

    /// `correlation_id` and `message_id` as plain fields too, so that every
    /// log line inside the hop names them.
    pub fn logged(self, message: &Envelope) -> Self {
        self.0
            .record("correlation_id", display(&message.correlation_id));
        self.0.record("message_id", display(&message.id));
        self
    }

    /// The cell whose hop it is (`cell`).
    pub fn cell(self, id: &str) -> Self {
        self.0.record("cell", display(id));
        self
    }

    /// The cell a cell calls (`target`).
    pub fn target(self, id: &str) -> Self {
        self.0.record("target", display(id));
        self
    }

    /// The cell an edge request goes to (`cbs.cell`, as on the HTTP
    /// server span).
    pub fn to_cell(self, id: &str) -> Self {
        self.0.record("cbs.cell", display(id));
        self
    }

    pub fn span(self) -> Span {
        self.0
    }
}
