//! Driving one saga instance: each step called in order with the saga's
//! input, its outcome journaled before the next; on a failure (or a
//! cancel) the completed steps' compensations are called in reverse with
//! each step's output — and first the failed step's, when it may have run
//! all the same (it timed out), with the saga's input. Every call carries
//! the instance id as its correlation id and a message id stable per step,
//! so a step called again after a host died is recognisable to an
//! idempotent cell; and a W3C trace context whose trace id is derived from
//! the instance id, so every step, on whichever host drives it, is a span
//! of one trace (the saga's root span outlives any host and is never
//! exported; its steps are its children, `saga step` spans, and the
//! callees' spans theirs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

use serde_json::value::RawValue;
use serde_json::Value;

use super::def::With;
use super::journal::{Instance, Journal, State, StepState};
use crate::bus::BodyBus;
use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::subjects::subject_of;

pub struct Runner {
    pub bus: Arc<dyn BodyBus>,
    pub journal: Journal,
    /// The domains' boundaries: a saga calls as its domain's cells may.
    pub boundaries: Arc<crate::boundary::Boundaries>,
}

impl Runner {
    /// Runs `instance` until it ends (completed, compensated) or is stuck
    /// (a compensation failed); every change journaled first.
    pub async fn drive(&self, mut instance: Instance) -> Result<Instance, BusError> {
        loop {
            match instance.state {
                State::Running => self.forward(&mut instance).await?,
                State::Compensating => self.backward(&mut instance).await?,
                State::Completed | State::Compensated | State::Stuck => return Ok(instance),
            }
        }
    }

    /// The next step, or the end; a failure turns the saga back.
    async fn forward(&self, inst: &mut Instance) -> Result<(), BusError> {
        self.read_cancel(inst).await;
        if inst.cancel {
            inst.state = State::Compensating;
            inst.events.push("cancelled".into());
            return self.journal.put(inst).await;
        }
        let Some(i) = inst.steps.iter().position(|s| s.state != StepState::Done) else {
            inst.state = State::Completed;
            inst.events.push("completed".into());
            return self.journal.put(inst).await;
        };
        let step = inst.saga.steps[i].clone();
        inst.steps[i].state = StepState::Running;
        inst.steps[i].attempts += 1;
        self.journal.put(inst).await?;
        let id = format!("{}.{}", inst.id, step.name);
        let outcome = self.call(inst, &step.call, &inst.input.clone(), &id).await;
        let record = &mut inst.steps[i];
        match outcome {
            Ok(output) => {
                record.state = StepState::Done;
                record.output = Some(output);
                inst.events.push(format!("{} done", step.name));
            }
            Err(e) => {
                record.state = StepState::Failed;
                // No reply in time: the callee may still have done it.
                record.may_have_run = e.code == ErrorCode::Timeout;
                inst.events
                    .push(format!("{} failed: {}: {}", step.name, e.code, e.message));
                record.error = Some(e);
                inst.state = State::Compensating;
            }
        }
        self.read_cancel(inst).await;
        match self.journal.put(inst).await {
            // An output too large to journal: the step counts as failed
            // (its outcome cannot be kept), and the saga turns back.
            Err(e) if super::journal::is_final(&e) => {
                let record = &mut inst.steps[i];
                record.state = StepState::Failed;
                record.may_have_run = true;
                record.output = None;
                inst.events.push(format!(
                    "{} failed: its outcome cannot be journaled: {}",
                    step.name, e.message
                ));
                record.error = Some(e);
                inst.state = State::Compensating;
                self.journal.put(inst).await
            }
            other => other,
        }
    }

    /// A cancel asked meanwhile (`cbs saga cancel` writes it to the
    /// journal): taken over before the next write.
    async fn read_cancel(&self, inst: &mut Instance) {
        if let Ok(Some(stored)) = self.journal.get(&inst.id).await {
            inst.cancel |= stored.cancel;
        }
    }

    /// The compensations of the completed steps (and of a failed one that
    /// may have run), last first.
    async fn backward(&self, inst: &mut Instance) -> Result<(), BusError> {
        let done = (0..inst.steps.len())
            .rev()
            .find(|&i| inst.steps[i].to_undo());
        let Some(i) = done else {
            inst.state = State::Compensated;
            inst.events.push("compensated".into());
            return self.journal.put(inst).await;
        };
        let step = inst.saga.steps[i].clone();
        let Some(cell) = &step.compensate else {
            inst.steps[i].state = StepState::Compensated;
            inst.events
                .push(format!("{}: nothing to compensate", step.name));
            return self.journal.put(inst).await;
        };
        // A step that may have run left no output: its compensation gets
        // the saga's input.
        let request = match (step.compensate_with, inst.steps[i].output.clone()) {
            (With::Output, Some(output)) => output,
            _ => inst.input.clone(),
        };
        let id = format!("{}.{}.compensate", inst.id, step.name);
        match self.call(inst, cell, &request, &id).await {
            Ok(_) => {
                inst.steps[i].state = StepState::Compensated;
                inst.events.push(format!("{} compensated", step.name));
            }
            Err(e) => {
                inst.steps[i].state = StepState::CompensationFailed;
                inst.events.push(format!(
                    "{} compensation failed: {}: {}",
                    step.name, e.code, e.message
                ));
                inst.steps[i].error = Some(e);
                inst.state = State::Stuck;
            }
        }
        self.journal.put(inst).await
    }

    /// One call of the saga: its correlation id, a stable message id.
    async fn call(
        &self,
        inst: &Instance,
        cell: &str,
        input: &Value,
        id: &str,
    ) -> Result<Value, BusError> {
        self.boundaries.check_saga(&inst.domain, cell)?;
        let payload = RawValue::from_string(input.to_string())
            .map_err(|e| BusError::internal(format!("cannot encode a saga's input: {e}")))?;
        let mut envelope = Envelope::new(subject_of(cell), payload);
        envelope.id = id.to_owned();
        envelope.correlation_id = inst.id.clone();
        envelope.headers = root_context(&inst.id);
        let span = tracing::info_span!(
            "saga step",
            saga.name = %inst.saga.name,
            saga.instance = %inst.id,
            saga.step = %id,
            cell
        );
        crate::telemetry::link_parent(&span, &envelope.headers);
        let timeout = Duration::from_millis(inst.saga.timeout_ms);
        let reply = async {
            // The step's own span as the callee's parent, when exporting.
            crate::telemetry::inject_current(&mut envelope.headers);
            crate::call::call(self.bus.as_ref(), &envelope, timeout).await
        }
        .instrument(span)
        .await?;
        serde_json::from_str(reply.get()).map_err(|e| {
            BusError::new(
                ErrorCode::ContractViolation,
                format!("{cell} replied with invalid JSON: {e}"),
            )
        })
    }
}

/// The saga's root trace context: trace id and parent span id derived from
/// the instance id, the same on every host that drives it.
fn root_context(instance: &str) -> BTreeMap<String, String> {
    let digest = Sha256::digest(instance.as_bytes());
    let traceparent = format!(
        "00-{}-{}-01",
        hex::encode(&digest[..16]),
        hex::encode(&digest[16..24])
    );
    BTreeMap::from([(crate::envelope::header::TRACEPARENT.to_owned(), traceparent)])
}
