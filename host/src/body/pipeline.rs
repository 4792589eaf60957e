//! One message through a cell: input contract, fault injection, the cell,
//! output contract, within the deadline; every failure a typed reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tracing::Instrument;

use super::cell::LoadedCell;
use crate::chaos::{Chaos, Fault};
use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::runtime::Deadline;
use crate::telemetry::messaging::{Hop, Operation};

impl LoadedCell {
    /// Always a reply envelope (success or typed error). Counted, and traced
    /// in a span with the correlation id.
    pub async fn process(&self, envelope: Arc<Envelope>, arrived: Instant) -> Envelope {
        self.process_inside(envelope, arrived, false).await
    }

    /// [`LoadedCell::process`]; `trusted`, for a call from a cell of its own
    /// domain on this host when the domain trusts its cells' calls, skips
    /// the contract checks.
    pub async fn process_inside(
        &self,
        envelope: Arc<Envelope>,
        arrived: Instant,
        trusted: bool,
    ) -> Envelope {
        self.stats.request();
        // OpenTelemetry messaging conventions: one `process` span per message.
        let span = Hop::new(
            Operation::Process,
            self.outbound.bus_kind(),
            &envelope.subject,
        )
        .message(&envelope)
        .cell(&self.manifest.id)
        .logged(&envelope)
        .span();
        crate::telemetry::link_parent(&span, &envelope.headers);
        async {
            let outcome = run(self, envelope.clone(), arrived, !trusted).await;
            let elapsed = arrived.elapsed();
            self.flows.record(&envelope, elapsed, outcome.as_ref().err());
            self.latency.observe(elapsed.as_secs_f64());
            self.stats.handled_in(elapsed);
            let elapsed_us = elapsed.as_micros() as u64;
            let reply = match outcome {
                Ok(reply) => {
                    tracing::debug!(elapsed_us, "handled");
                    reply
                }
                Err(error) => {
                    self.stats.error(error.code);
                    tracing::debug!(elapsed_us, code = %error.code, error = %error.message, "failed");
                    envelope.error_reply(error)
                }
            };
            if let Some(tape) = self.outbound.tape() {
                tape.finish(&envelope, &reply).await;
            }
            reply
        }
        .instrument(span)
        .await
    }
}

/// The caller's range, input contract → cell → output contract (the
/// contracts when `checked`), within the cell's deadline.
async fn run(
    cell: &LoadedCell,
    envelope: Arc<Envelope>,
    arrived: Instant,
    checked: bool,
) -> Result<Envelope, BusError> {
    // A caller's declared range holds whatever the domain trusts: it is
    // about the reply's shape, not about who may call.
    crate::majors::check_request(&cell.manifest, envelope.schema.as_deref())?;
    let runner_deadline = Deadline {
        reply_by: arrived + cell.time_allowed(&envelope),
        cell_limit: arrived + Duration::from_millis(cell.manifest.limits.timeout_ms),
    };
    let deadline = runner_deadline.reply_by;
    // Waiting for a free slot counts against the deadline too.
    let asked = Instant::now();
    let _running = tokio::time::timeout_at(deadline.into(), cell.running.acquire())
        .await
        .map_err(|_| {
            BusError::new(
                ErrorCode::Timeout,
                format!(
                    "cell {} was busy with {} messages until this message's deadline",
                    cell.manifest.id, cell.manifest.limits.concurrency
                ),
            )
        })?
        .map_err(|_| BusError::internal("cell is shutting down"))?;
    cell.stats.waited(asked.elapsed());
    // Each step is a span of its own under the hop's `cell` span.
    if checked {
        tracing::debug_span!("contract.input")
            .in_scope(|| cell.contract.check_input(envelope.payload.get()))?;
    }
    if let Some(chaos) = &cell.chaos {
        inject(chaos, &cell.manifest.id, deadline).await?;
    }
    let reply = cell
        .runner
        .handle(envelope.clone(), runner_deadline)
        .instrument(tracing::debug_span!("cell.handle"))
        .await?;
    if checked {
        tracing::debug_span!("contract.output")
            .in_scope(|| cell.contract.check_output(&reply.payload))?;
    }
    let payload = RawValue::from_string(reply.payload).map_err(|e| {
        BusError::new(
            ErrorCode::ContractViolation,
            format!("cell {} replied with invalid JSON: {e}", cell.manifest.id),
        )
    })?;
    let schema = reply
        .schema
        .or_else(|| cell.manifest.output.as_ref().map(|o| o.id.clone()));
    let mut out = envelope.reply(schema, payload);
    out.headers.extend(reply.headers);
    Ok(out)
}

/// Applies the next seeded fault: latency, an injected error, or a reply
/// that never comes (the caller times out).
async fn inject(chaos: &Chaos, cell_id: &str, deadline: Instant) -> Result<(), BusError> {
    let latency = chaos.latency();
    if !latency.is_zero() {
        tokio::time::sleep_until((Instant::now() + latency).min(deadline).into()).await;
    }
    match chaos.draw() {
        Fault::Pass => Ok(()),
        Fault::Error => Err(BusError::unavailable(format!(
            "chaos: injected failure in cell {cell_id}"
        ))),
        Fault::Drop => {
            tokio::time::sleep_until(deadline.into()).await;
            Err(BusError::new(
                ErrorCode::Timeout,
                format!("chaos: cell {cell_id} dropped the reply"),
            ))
        }
    }
}
