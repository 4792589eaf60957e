//! The host side of the `bus` and `log` imports of the cell world: calls
//! and publishes go through the cell's `Outbound` (grants, policy, spans),
//! log lines to the host log tagged with the cell and correlation id.

use std::time::Duration;

use super::bindings::cbs::cell::{bus, log, types};
use super::sandbox::Sandbox;
use super::wit_error::to_wit;
use crate::envelope::{BusError, ErrorCode};
use crate::telemetry;

impl types::Host for Sandbox {}

impl bus::Host for Sandbox {
    async fn request(
        &mut self,
        cell_id: String,
        payload: String,
        timeout_ms: u32,
    ) -> Result<String, types::CellError> {
        let flow = self.flow.as_ref().ok_or_else(outside_a_message)?;
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.into()));
        // `Outbound` makes the client span of each attempt.
        self.outbound
            .request(flow, &cell_id, payload, timeout)
            .await
            .map_err(to_wit)
    }

    async fn publish(&mut self, subject: String, payload: String) -> Result<(), types::CellError> {
        let flow = self.flow.as_ref().ok_or_else(outside_a_message)?;
        self.outbound
            .publish(flow, &subject, payload)
            .await
            .map_err(to_wit)
    }
}

impl log::Host for Sandbox {
    async fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => tracing::Level::TRACE,
            log::Level::Debug => tracing::Level::DEBUG,
            log::Level::Info => tracing::Level::INFO,
            log::Level::Warn => tracing::Level::WARN,
            log::Level::Error => tracing::Level::ERROR,
        };
        let cell = self.outbound.cell_id();
        telemetry::level::cell_line(level, cell, self.correlation_id(), &message);
    }
}

fn outside_a_message() -> types::CellError {
    to_wit(BusError::new(
        ErrorCode::ContractViolation,
        "bus calls are only allowed while handling a message",
    ))
}
