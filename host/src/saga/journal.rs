//! A saga instance as it goes: each step's input, output and outcome,
//! written before and after each call, in a bucket of the host's state
//! store (JetStream key-value on NATS, the embedded store in process), so
//! another host resumes it from its last completed step.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::def::Saga;
use crate::envelope::BusError;
use crate::manifest::StateGrant;
use crate::state::{Bucket, StateBackend};
use crate::unix_time::now_ms;

/// The journal's bucket, by a name no cell id can have (`~`).
pub const BUCKET: &str = "~sagas";
/// The most instances read at once (`cbs saga ls`, the deploy gate).
pub const MAX_LISTED: usize = 10_000;
/// The largest instance record, and all of them together.
const GRANT: StateGrant = StateGrant {
    max_value_bytes: 512 * 1024,
    max_bytes: 1 << 30,
};

/// Where an instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    /// A step failed (or it was cancelled): compensating.
    Compensating,
    Completed,
    /// A step failed; every completed step was compensated.
    Compensated,
    /// A compensation failed: `cbs saga retry` runs the rest again.
    Stuck,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    /// Called; no outcome journaled yet (a host that dies here leaves it
    /// to be called again).
    Running,
    Done,
    Failed,
    Compensated,
    CompensationFailed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub state: StepState,
    /// Calls made of this step (more than one: resumed after a host died).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BusError>,
    /// Failed, but the callee may have run it (the call timed out, or its
    /// output could not be journaled): compensated like a completed step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_have_run: bool,
}

impl StepRecord {
    /// A step whose effect a compensation undoes: completed, or failed
    /// with an outcome not known.
    pub fn to_undo(&self) -> bool {
        self.state == StepState::Done || (self.state == StepState::Failed && self.may_have_run)
    }
}

/// One run of a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub domain: String,
    /// The domain's revision it started on: its steps are that revision's.
    pub revision: u64,
    pub saga: Saga,
    pub input: Value,
    pub state: State,
    pub steps: Vec<StepRecord>,
    /// What happened, in order (`reserve done`, `ship failed: …`,
    /// `charge compensated`).
    pub events: Vec<String>,
    /// Asked to stop: completed steps are compensated.
    #[serde(default)]
    pub cancel: bool,
    pub started_ms: u64,
    pub updated_ms: u64,
}

impl Instance {
    pub fn new(id: &str, domain: &str, revision: u64, saga: Saga, input: Value) -> Self {
        let steps = saga
            .steps
            .iter()
            .map(|s| StepRecord {
                name: s.name.clone(),
                state: StepState::Pending,
                attempts: 0,
                output: None,
                error: None,
                may_have_run: false,
            })
            .collect();
        Self {
            id: id.to_owned(),
            domain: domain.to_owned(),
            revision,
            saga,
            input,
            state: State::Running,
            steps,
            events: Vec::new(),
            cancel: false,
            started_ms: now_ms(),
            updated_ms: now_ms(),
        }
    }
}

/// The instances, by id.
#[derive(Clone)]
pub struct Journal {
    bucket: Arc<dyn Bucket>,
}

impl Journal {
    pub async fn open(backend: &dyn StateBackend) -> Result<Self, BusError> {
        Ok(Self {
            bucket: backend.open(BUCKET, GRANT).await?,
        })
    }

    pub async fn get(&self, id: &str) -> Result<Option<Instance>, BusError> {
        let Some(bytes) = self.bucket.get(&key(id)?).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            BusError::internal(format!("saga {id}: its journal entry is not valid: {e}"))
        })
    }

    pub async fn put(&self, instance: &mut Instance) -> Result<(), BusError> {
        instance.updated_ms = now_ms();
        let bytes = serde_json::to_vec(instance).map_err(|e| BusError::internal(e.to_string()))?;
        if bytes.len() > GRANT.max_value_bytes as usize {
            return Err(BusError::new(
                crate::envelope::ErrorCode::Capacity,
                format!(
                    "saga {}: its journal entry would be {} bytes, more than {}",
                    instance.id,
                    bytes.len(),
                    GRANT.max_value_bytes
                ),
            ));
        }
        self.bucket.set(&key(&instance.id)?, bytes).await
    }

    /// Every instance (at most `limit`), in id order (ids are time-sortable).
    pub async fn list(&self, limit: usize) -> Result<Vec<Instance>, BusError> {
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            let (keys, next) = self.bucket.keys(cursor).await?;
            for k in keys {
                if out.len() >= limit {
                    return Ok(out);
                }
                if let Some(id) = k.strip_prefix("i.") {
                    if let Some(instance) = self.get(id).await? {
                        out.push(instance);
                    }
                }
            }
            match next {
                Some(n) => cursor = n,
                None => return Ok(out),
            }
        }
    }
}

/// A journal failure that trying again cannot mend.
pub fn is_final(e: &BusError) -> bool {
    matches!(
        e.code,
        crate::envelope::ErrorCode::Capacity | crate::envelope::ErrorCode::InvalidInput
    )
}

/// An instance id as a key.
fn key(id: &str) -> Result<String, BusError> {
    check_id(id)
        .map_err(|e| BusError::new(crate::envelope::ErrorCode::InvalidInput, format!("{e:#}")))?;
    Ok(format!("i.{id}"))
}

/// An instance id: 1 to 64 letters, digits and `-` (a UUID).
pub fn check_id(id: &str) -> anyhow::Result<()> {
    let ok =
        (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        anyhow::bail!(
            "{:?} is not a saga instance id",
            id.escape_debug().to_string()
        );
    }
    Ok(())
}
