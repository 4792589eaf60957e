//! Where sagas run: a start is a durable message on `cbs-saga.<domain>.<saga>`
//! (stream `CBS_SAGAS`, a work queue with one consumer shared by every host
//! that runs sagas). A host takes it, finds the saga in the domain's
//! current revision (pinned in the journal from then on), drives it, and
//! acknowledges it at its end, telling the store it is still at work in
//! between; a host that dies leaves the message to be delivered to another
//! host, which resumes the instance from its journal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::def::Saga;
use super::journal::{Instance, Journal, State};
use super::run::Runner;
use crate::bus::BodyBus;
use crate::durable::{
    Consumer, ConsumerSpec, Delivery, DurableLog, Keep, Published, Settle, StreamSpec,
};
use crate::envelope::BusError;

/// The stream of saga starts.
pub const STREAM: &str = "CBS_SAGAS";
/// Its consumer, shared by the hosts.
pub const CONSUMER: &str = "sagas";
/// A start held longer than this without news goes to another host.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How often a host says it is still at work on an instance.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Instances one host drives at once.
const AT_ONCE: usize = 256;

/// A request to run a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// The instance's id (a UUID): the message id too, so a start sent
    /// twice runs once.
    pub id: String,
    pub domain: String,
    pub saga: String,
    pub input: Value,
}

impl Start {
    /// Names that can be keys and subject tokens: a start is read from a
    /// stream anyone allowed to publish there writes to.
    pub fn check(&self) -> anyhow::Result<()> {
        super::journal::check_id(&self.id)?;
        crate::manifest::check_name(&self.domain)?;
        crate::manifest::check_name(&self.saga)?;
        Ok(())
    }
}

/// The subject a saga's starts go to.
pub fn subject(domain: &str, saga: &str) -> String {
    format!("cbs-saga.{domain}.{saga}")
}

/// The sagas hosts may run: a domain's current revision and its saga.
#[async_trait]
pub trait Catalog: Send + Sync {
    async fn saga(&self, domain: &str, saga: &str) -> anyhow::Result<Option<(u64, Saga)>>;
}

/// The sagas of specs served in process (`cbs-host run --domain`).
#[derive(Default)]
pub struct Specs {
    sagas: HashMap<(String, String), Saga>,
}

impl Specs {
    pub fn add(&mut self, domain: &str, saga: Saga) {
        self.sagas
            .insert((domain.to_owned(), saga.name.clone()), saga);
    }

    pub fn is_empty(&self) -> bool {
        self.sagas.is_empty()
    }
}

#[async_trait]
impl Catalog for Specs {
    async fn saga(&self, domain: &str, saga: &str) -> anyhow::Result<Option<(u64, Saga)>> {
        Ok(self
            .sagas
            .get(&(domain.to_owned(), saga.to_owned()))
            .map(|s| (1, s.clone())))
    }
}

/// Stores a start: the saga runs on a host that runs sagas.
pub async fn start(log: &dyn DurableLog, start: &Start) -> Result<Published, BusError> {
    let payload = serde_json::to_vec(start).map_err(|e| BusError::internal(e.to_string()))?;
    log.publish(
        &subject(&start.domain, &start.saga),
        &start.id,
        payload.into(),
    )
    .await
}

/// The stream and consumer of saga starts (made when missing).
pub async fn open(log: &dyn DurableLog) -> anyhow::Result<Box<dyn Consumer>> {
    let stream = StreamSpec {
        name: STREAM.into(),
        subjects: vec!["cbs-saga.>".into()],
        retention: Keep::WorkQueue,
        dedup_window: Duration::from_secs(120),
        max_age: Duration::ZERO,
    };
    let consumer = ConsumerSpec {
        name: CONSUMER.into(),
        filter: None,
        only_new: false,
        max_deliver: 10_000,
        ack_wait: ACK_WAIT,
    };
    log.open(&stream, &consumer).await
}

/// Takes saga starts and drives them, until the task is dropped.
pub struct Worker {
    pub log: Arc<dyn DurableLog>,
    pub bus: Arc<dyn BodyBus>,
    pub journal: Journal,
    pub catalog: Arc<dyn Catalog>,
    /// The domains' boundaries its sagas call within.
    pub boundaries: Arc<crate::boundary::Boundaries>,
}

impl Worker {
    /// Takes starts from `consumer` ([`open`]) until the task is dropped.
    /// A start is fetched only with a free slot for it: one waiting for a
    /// slot would outlive its ack wait and go to a second driver.
    pub async fn run(self: Arc<Self>, consumer: Box<dyn Consumer>) {
        let slots = Arc::new(Semaphore::new(AT_ONCE));
        loop {
            let Ok(first) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut held = vec![first];
            while held.len() < 64 {
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => held.push(slot),
                    Err(_) => break,
                }
            }
            let mut deliveries = match consumer.fetch(held.len(), Duration::from_secs(1)).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot fetch saga starts");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(delivery) = deliveries.next().await {
                let Ok(delivery) = delivery else { continue };
                let Some(slot) = held.pop() else { break };
                let me = self.clone();
                tokio::spawn(async move {
                    me.take(delivery).await;
                    drop(slot);
                });
            }
        }
    }

    /// One start: driven to its end (or stuck), then settled.
    async fn take(&self, delivery: Delivery) {
        let start: Start = match serde_json::from_slice::<Start>(&delivery.payload) {
            Ok(s) if s.check().is_ok() => s,
            Ok(s) => {
                let why = s
                    .check()
                    .err()
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_default();
                tracing::warn!(seq = delivery.stream_seq, %why, "a saga start with bad names; dropped");
                return settle(delivery, Settle::Term).await;
            }
            Err(e) => {
                tracing::warn!(seq = delivery.stream_seq, error = %e, "not a saga start; dropped");
                return settle(delivery, Settle::Term).await;
            }
        };
        let instance = match self.instance(&start).await {
            Ok(Some(i)) => i,
            Ok(None) => return settle(delivery, Settle::Term).await,
            Err(e) => {
                tracing::warn!(saga = %start.id, error = %e, "cannot read the saga journal; later");
                return settle(delivery, Settle::Retry(Duration::from_secs(1))).await;
            }
        };
        if instance.state.is_final() {
            return settle(delivery, Settle::Ack).await;
        }
        let runner = Runner {
            bus: self.bus.clone(),
            journal: self.journal.clone(),
            boundaries: self.boundaries.clone(),
        };
        let drive = runner.drive(instance);
        tokio::pin!(drive);
        let mut beat = tokio::time::interval(HEARTBEAT);
        let ended = loop {
            tokio::select! {
                ended = &mut drive => break ended,
                _ = beat.tick() => {
                    if let Err(e) = delivery.in_progress().await {
                        tracing::debug!(error = %e, "cannot hold a saga start");
                    }
                }
            }
        };
        match ended {
            Ok(i) => {
                tracing::info!(saga = %i.id, state = ?i.state, "saga ended");
                settle(delivery, Settle::Ack).await
            }
            Err(e) => {
                tracing::warn!(saga = %start.id, error = %e, "saga interrupted; resumed later");
                settle(delivery, Settle::Retry(Duration::from_secs(1))).await
            }
        }
    }

    /// The journaled instance, or a new one pinned to the saga of the
    /// domain's current revision; none when there is no such saga, or what
    /// is stored cannot be driven (dropped, with why in the log).
    async fn instance(&self, start: &Start) -> Result<Option<Instance>, BusError> {
        if let Some(i) = self.journal.get(&start.id).await? {
            if i.steps.len() != i.saga.steps.len() || i.saga.check().is_err() {
                tracing::warn!(saga = %start.id, "its journal entry does not match its saga: dropped");
                return Ok(None);
            }
            return Ok(Some(i));
        }
        let found = self
            .catalog
            .saga(&start.domain, &start.saga)
            .await
            .map_err(|e| BusError::unavailable(format!("{e:#}")))?;
        let Some((revision, saga)) = found.filter(|(_, s)| s.check().is_ok()) else {
            tracing::warn!(domain = %start.domain, saga = %start.saga, "no such saga: start dropped");
            return Ok(None);
        };
        let mut instance = Instance::new(
            &start.id,
            &start.domain,
            revision,
            saga,
            start.input.clone(),
        );
        match self.journal.put(&mut instance).await {
            Ok(()) => Ok(Some(instance)),
            // Too large to journal: it can never run; say so, once.
            Err(e) if super::journal::is_final(&e) => {
                tracing::warn!(saga = %start.id, error = %e, "cannot journal the saga: start dropped");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

async fn settle(delivery: Delivery, how: Settle) {
    if let Err(e) = delivery.settle(how).await {
        tracing::warn!(error = %e, "cannot settle a saga start");
    }
}

/// A stuck instance sent on again (its journal says where; a new start
/// message carries it to a host), or a running one asked to stop (the
/// host driving it reads that before its next step).
pub async fn resume(
    log: &dyn DurableLog,
    journal: &Journal,
    id: &str,
    cancel: bool,
) -> anyhow::Result<Instance> {
    let Some(mut instance) = journal.get(id).await? else {
        anyhow::bail!("no saga instance {id} (see `cbs saga ls`)");
    };
    if instance.state.is_final() {
        anyhow::bail!(
            "saga {id} has ended ({:?}): nothing to {}",
            instance.state,
            if cancel { "cancel" } else { "retry" }
        );
    }
    if cancel {
        if instance.state != State::Running {
            anyhow::bail!(
                "saga {id} is {:?}: only a running saga is cancelled (a stuck one is retried)",
                instance.state
            );
        }
        // The host driving it reads the flag before its next step.
        instance.cancel = true;
        instance.events.push("cancel asked".into());
        journal.put(&mut instance).await?;
        return Ok(instance);
    }
    if instance.state != State::Stuck {
        anyhow::bail!(
            "saga {id} is {:?}: only a stuck saga (a compensation failed) is retried",
            instance.state
        );
    }
    for step in &mut instance.steps {
        if step.state == super::journal::StepState::CompensationFailed {
            step.state = super::journal::StepState::Done;
        }
    }
    instance.state = State::Compensating;
    instance.events.push("retry asked".into());
    journal.put(&mut instance).await?;
    // The same instance id: the host that takes it reads the journal. A
    // message id of its own, past the first start's dedup window.
    let again = Start {
        id: instance.id.clone(),
        domain: instance.domain.clone(),
        saga: instance.saga.name.clone(),
        input: instance.input.clone(),
    };
    let payload = serde_json::to_vec(&again)?;
    let msg_id = format!("{}.{}", instance.id, instance.events.len());
    log.publish(
        &subject(&again.domain, &again.saga),
        &msg_id,
        payload.into(),
    )
    .await?;
    Ok(instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_with_names_that_cannot_be_keys_or_tokens_is_refused() {
        let good = Start {
            id: crate::envelope::new_id(),
            domain: "orders".into(),
            saga: "place".into(),
            input: Value::Null,
        };
        assert!(good.check().is_ok());
        for bad in [
            Start {
                id: "../x".into(),
                ..good.clone()
            },
            Start {
                id: String::new(),
                ..good.clone()
            },
            Start {
                id: "a".repeat(65),
                ..good.clone()
            },
            Start {
                domain: "Orders.>".into(),
                ..good.clone()
            },
            Start {
                saga: "place order".into(),
                ..good.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
