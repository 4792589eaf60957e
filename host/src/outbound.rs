//! Calls from a cell to other cells. They go through the host, which checks
//! the caller's grants, keeps the flow's correlation and trace context, and
//! never waits past the caller's own deadline. A callee served by the same
//! host is called in process when it has room (local first); otherwise the
//! call goes over the bus to whichever host serves it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::value::RawValue;
use tracing::Instrument;

use crate::boundary::Boundaries;
use crate::bus::{request_timeout, BodyBus};
use crate::durable::DurableLog;
use crate::envelope::codec::to_message;
use crate::envelope::{header, BusError, Envelope, ErrorCode};
use crate::manifest::Manifest;
use crate::random::fresh_seed;
use crate::resilience::{is_failure, is_retryable, Breaker, BreakerReport, CallPolicy};
use crate::shadow::tape::Tape;
use crate::state::CellState;
use crate::subjects::subject_of;
use crate::telemetry::messaging::{Hop, Operation};

/// Cells served by this host, reachable without the bus.
#[async_trait]
pub trait LocalCalls: Send + Sync {
    /// Runs `envelope` on `cell_id` in process and returns its reply, when
    /// that cell is served here and has room; `None` sends it over the bus.
    /// `trusted`: the caller is of the callee's domain, which trusts its
    /// cells' calls, so the callee's contract is not checked.
    async fn call(&self, cell_id: &str, envelope: &Envelope, trusted: bool) -> Option<Envelope>;
}

/// One cell's way out to the bus.
pub struct Outbound {
    bus: Arc<dyn BodyBus>,
    manifest: Arc<Manifest>,
    local: Option<Arc<dyn LocalCalls>>,
    /// Policy and breaker per granted target.
    targets: HashMap<String, Target>,
    /// The cell's key-value state, when granted.
    state: Option<Arc<CellState>>,
    /// Where `publish_durable` subjects are stored.
    durable: Option<Arc<dyn DurableLog>>,
    /// A recording of the cell's requests and calls, while one is on.
    tape: std::sync::RwLock<Option<Arc<Tape>>>,
    /// The domains' boundaries its calls keep within.
    boundaries: Option<Arc<Boundaries>>,
}

struct Target {
    policy: CallPolicy,
    breaker: Breaker,
    /// Where its calls go: `cbs.<cell>`, or its major's subject when the
    /// grant's range names one (`crate::majors`).
    subject: String,
    /// The range, as the request's `schema`, when the grant has one.
    schema: Option<String>,
}

impl Target {
    fn of(call: &crate::manifest::Call, policy: CallPolicy) -> Self {
        let breaker = Breaker::new(policy.breaker.clone());
        let lane = call.range.as_ref().and_then(crate::majors::of_range);
        Self {
            policy,
            breaker,
            subject: match &lane {
                Some(lane) => crate::majors::subject(lane, &call.cell),
                None => subject_of(&call.cell),
            },
            schema: call
                .range
                .as_ref()
                .map(|r| crate::majors::request_schema(&call.cell, r)),
        }
    }
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
        let targets = manifest
            .capabilities
            .calls
            .iter()
            .map(|call| {
                let policy = manifest.policy.get(&call.cell).cloned().unwrap_or_default();
                (call.cell.clone(), Target::of(call, policy))
            })
            .collect();
        Self {
            bus,
            manifest,
            local,
            targets,
            state: None,
            durable: None,
            tape: std::sync::RwLock::default(),
            boundaries: None,
        }
    }

    /// Stores publishes to `publish_durable` subjects in `log`.
    pub fn with_durable(mut self, log: Arc<dyn DurableLog>) -> Self {
        self.durable = Some(log);
        self
    }

    /// The cell's domain, as the boundaries its calls keep within say.
    pub fn membership(&self) -> Option<crate::boundary::Membership> {
        self.boundaries.as_ref()?.membership(&self.manifest.id)
    }

    /// Keeps the cell's calls within the domains' `boundaries`.
    pub fn with_boundaries(mut self, boundaries: Arc<Boundaries>) -> Self {
        self.boundaries = Some(boundaries);
        self
    }

    /// Gives the cell its state (see [`CellState::for_cell`]).
    pub fn with_state(mut self, state: Option<Arc<CellState>>) -> Self {
        self.state = state;
        self
    }

    /// Starts (`Some`) or ends a recording of the cell's requests.
    pub fn set_tape(&self, tape: Option<Arc<Tape>>) {
        *self.tape.write().unwrap_or_else(PoisonError::into_inner) = tape;
    }

    /// The recording on now, if any.
    pub fn tape(&self) -> Option<Arc<Tape>> {
        let tape = self.tape.read().unwrap_or_else(PoisonError::into_inner);
        tape.as_ref().filter(|t| t.on()).cloned()
    }

    pub fn cell_id(&self) -> &str {
        &self.manifest.id
    }

    /// The cell's key-value state, or why it has none.
    pub fn state(&self) -> Result<&CellState, BusError> {
        self.state.as_deref().ok_or_else(|| {
            BusError::new(
                ErrorCode::ContractViolation,
                format!(
                    "cell {} has no state: add [capabilities.state] to its cell.toml",
                    self.manifest.id
                ),
            )
        })
    }

    /// Request/reply to another cell; returns the reply payload (JSON
    /// text). Applies the target's policy: its circuit breaker, a timeout per
    /// attempt (`timeout` overrides the policy's), and retries with backoff
    /// for idempotent calls — all within the caller's deadline.
    pub async fn request(
        &self,
        flow: &Flow,
        cell_id: &str,
        payload: String,
        timeout: Option<Duration>,
    ) -> Result<String, BusError> {
        let Some(tape) = self.tape() else {
            return self.attempts(flow, cell_id, payload, timeout).await;
        };
        let request = payload.clone();
        let reply = self.attempts(flow, cell_id, payload, timeout).await;
        tape.call(&flow.parent.id, cell_id, &request, &reply);
        reply
    }

    /// [`Outbound::request`], attempt after attempt.
    async fn attempts(
        &self,
        flow: &Flow,
        cell_id: &str,
        payload: String,
        timeout: Option<Duration>,
    ) -> Result<String, BusError> {
        let Some(target) = self.targets.get(cell_id) else {
            return Err(BusError::new(
                ErrorCode::ContractViolation,
                format!(
                    "cell {} may not call {cell_id}: add it to `calls` under [capabilities] in its cell.toml",
                    self.manifest.id
                ),
            ));
        };
        // Decided here, from this host's own view: nothing on the wire can
        // ask for a call to be trusted.
        let trusted = match &self.boundaries {
            Some(boundaries) => boundaries.check(&self.manifest.id, cell_id)?,
            None => false,
        };
        let mut payload = Some(raw_json(payload, "request payload")?);
        let per_attempt = timeout.unwrap_or(Duration::from_millis(target.policy.timeout_ms));
        let mut attempt = 0;
        loop {
            target.breaker.admit(cell_id)?;
            let remaining = flow.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(BusError::new(
                    ErrorCode::Timeout,
                    format!("no time left to call {cell_id}: the message's deadline has passed"),
                ));
            }
            // Keep a copy only while another attempt may follow.
            let may_retry = target.policy.idempotent && attempt < target.policy.retries;
            let body = if may_retry {
                payload.clone()
            } else {
                payload.take()
            };
            let body = body.expect("the payload is kept for every attempt");
            let result = self
                .once(
                    flow,
                    cell_id,
                    target,
                    body,
                    per_attempt.min(remaining),
                    trusted,
                )
                .await;
            target.breaker.record(
                result
                    .as_ref()
                    .map_or_else(|e| !is_failure(e.code), |_| true),
            );
            let error = match result {
                Ok(reply) => return Ok(reply),
                Err(e) => e,
            };
            let policy = &target.policy;
            if !(policy.idempotent && attempt < policy.retries && is_retryable(error.code)) {
                return Err(error);
            }
            let delay = policy.backoff(attempt, fresh_seed());
            if Instant::now() + delay >= flow.deadline {
                return Err(error);
            }
            tracing::debug!(target = cell_id, attempt, delay_ms = delay.as_millis() as u64, error = %error, "retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One attempt: in process when the target is served here, else over
    /// the bus. The child envelope carries the flow's remaining budget.
    /// `trusted`: see [`LocalCalls::call`].
    async fn once(
        &self,
        flow: &Flow,
        cell_id: &str,
        target: &Target,
        payload: Box<RawValue>,
        timeout: Duration,
        trusted: bool,
    ) -> Result<String, BusError> {
        let mut child = flow.parent.child(target.subject.clone(), payload);
        child.schema.clone_from(&target.schema);
        child.headers.insert(
            header::BUDGET_MS.to_owned(),
            timeout.as_millis().to_string(),
        );
        // A client span per attempt; the callee's `process` span is its child.
        let span = Hop::new(Operation::Send, self.bus.kind(), &child.subject)
            .message(&child)
            .cell(&self.manifest.id)
            .target(cell_id)
            .span();
        span.in_scope(|| crate::telemetry::inject_current(&mut child.headers));
        // In process, a cell's major is found under its major's subject.
        let local_key = match &target.schema {
            Some(_) if target.subject != subject_of(cell_id) => target.subject.as_str(),
            _ => cell_id,
        };
        self.deliver(local_key, child, timeout, trusted)
            .instrument(span)
            .await
    }

    async fn deliver(
        &self,
        local_key: &str,
        child: Envelope,
        timeout: Duration,
        trusted: bool,
    ) -> Result<String, BusError> {
        let local = match &self.local {
            Some(local) => tokio::time::timeout(timeout, local.call(local_key, &child, trusted))
                .await
                .map_err(|_| request_timeout(&child.subject, timeout))?,
            None => None,
        };
        let reply = match local {
            Some(reply) => reply,
            None => crate::call::request(&*self.bus, &child, timeout).await?,
        };
        reply
            .into_result()
            .map(|p| String::from(Box::<str>::from(p)))
    }

    /// The kind of this cell's bus (`nats`, `local`), as spans name it.
    pub fn bus_kind(&self) -> &'static str {
        self.bus.kind()
    }

    /// Each target's breaker: its state and how often it opened (metrics,
    /// discovery, the console).
    pub fn breakers(&self) -> Vec<(String, BreakerReport)> {
        self.targets
            .iter()
            .map(|(id, t)| (id.clone(), t.breaker.report()))
            .collect()
    }

    /// Publishes an event to a granted subject: a child envelope of the
    /// flow (correlation id, causation, trace context). Fire-and-forget,
    /// except on `publish_durable` subjects: then it returns once the event
    /// is stored (JetStream, or the embedded store in process), and fails
    /// with `unavailable` when no stream takes it.
    pub async fn publish(
        &self,
        flow: &Flow,
        subject: &str,
        payload: String,
    ) -> Result<(), BusError> {
        if crate::subjects::reserved(subject, self.manifest.publishes_durably(subject)) {
            return Err(BusError::new(
                ErrorCode::ContractViolation,
                format!(
                    "cell {} may not publish to {subject}: it belongs to NATS or the host, whatever the grants say",
                    self.manifest.id
                ),
            ));
        }
        if !self.manifest.may_publish(subject) {
            return Err(BusError::new(
                ErrorCode::ContractViolation,
                format!(
                    "cell {} may not publish to {subject}: add it to `publish` under [capabilities] in its cell.toml",
                    self.manifest.id
                ),
            ));
        }
        let mut child = flow
            .parent
            .child(subject, raw_json(payload, "published payload")?);
        let span = Hop::new(Operation::Publish, self.bus.kind(), subject)
            .message(&child)
            .cell(&self.manifest.id)
            .span();
        span.in_scope(|| crate::telemetry::inject_current(&mut child.headers));
        self.emit(subject, child).instrument(span).await
    }

    async fn emit(&self, subject: &str, child: Envelope) -> Result<(), BusError> {
        let durable = self.manifest.publishes_durably(subject);
        let log = self.durable.as_ref();
        if let Some(log) = log.filter(|_| durable) {
            log.publish(subject, &child.id, child.to_vec().into())
                .await?;
            if log.reaches_core_subscribers() {
                return Ok(());
            }
        }
        self.bus.publish(to_message(&child)).await?;
        // A store the bus does not feed (in process) takes a copy of what
        // its streams' subjects get, as a JetStream server does by itself.
        match log.filter(|l| !durable && !l.reaches_core_subscribers()) {
            Some(log) => log.capture(subject, &child).await,
            None => Ok(()),
        }
    }
}

fn raw_json(text: String, what: &str) -> Result<Box<RawValue>, BusError> {
    RawValue::from_string(text)
        .map_err(|e| BusError::new(ErrorCode::InvalidInput, format!("{what} is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::local::LocalBus;
    use crate::bus::Message;

    /// Regression (#26, 1): a cell granted `$KV.>` wrote other cells'
    /// state with the host's credentials. The manifest refuses such a
    /// grant; the publish is refused too should one get past it.
    #[tokio::test]
    async fn a_publish_to_a_nats_subject_is_refused_whatever_the_grants_say() {
        let mut manifest =
            Manifest::parse("id = \"test.kv\"\nversion = \"1\"\ncomponent = \"c.wasm\"").unwrap();
        manifest.capabilities.publish = vec!["$KV.>".into(), "events.>".into()];
        let bus: Arc<dyn BodyBus> = Arc::new(LocalBus::new());
        let mut watch = bus.subscribe("$KV.>", None).await.unwrap();
        let outbound = Outbound::new(bus.clone(), Arc::new(manifest), None);
        let flow = Flow {
            parent: Arc::new(Envelope::new(
                "cbs.test.kv",
                RawValue::from_string("{}".into()).unwrap(),
            )),
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let err = outbound
            .publish(&flow, "$KV.CBS_STATE_OTHER.key", "{\"x\":1}".into())
            .await
            .expect_err("refused");
        assert_eq!(err.code, ErrorCode::ContractViolation, "{err:?}");
        assert!(
            err.message.contains("belongs to NATS or the host"),
            "{err:?}"
        );
        // Nothing reached the subject: the first message there is ours.
        bus.publish(Message::new("$KV.marker", "m")).await.unwrap();
        assert_eq!(watch.next().await.unwrap().subject, "$KV.marker");
        outbound
            .publish(&flow, "events.ok", "{}".into())
            .await
            .unwrap();
    }
}
