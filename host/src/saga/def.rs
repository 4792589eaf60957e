//! A saga as a domain's spec declares it: ordered steps, each a call to a
//! cell with an optional compensating call.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most steps a saga may have.
pub const MAX_STEPS: usize = 64;

/// A saga: its steps run in order; when one fails, the compensations of
/// those done run in reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Saga {
    /// Its name within the domain (as a domain name: lower-case letters,
    /// digits, `_`, `-`).
    pub name: String,
    pub steps: Vec<Step>,
    /// How long one call may take, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// One step: a call with the saga's input; its compensation is called
/// with the step's output (what it has to undo) or the saga's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// The cell called.
    pub call: String,
    /// The cell that undoes it, when a later step fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<String>,
    /// What the compensation is called with [default: output].
    #[serde(default, skip_serializing_if = "With::is_output")]
    pub compensate_with: With,
}

/// A compensation's request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum With {
    /// The step's output.
    #[default]
    Output,
    /// The saga's input.
    Input,
}

impl With {
    fn is_output(&self) -> bool {
        *self == Self::Output
    }
}

impl Saga {
    /// Names well-formed, steps bounded and named once, cells valid ids.
    pub fn check(&self) -> anyhow::Result<()> {
        crate::manifest::check_name(&self.name)?;
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            anyhow::bail!("saga {}: 1 to {MAX_STEPS} steps", self.name);
        }
        let mut names = std::collections::BTreeSet::new();
        for step in &self.steps {
            crate::manifest::check_name(&step.name)?;
            if !names.insert(&step.name) {
                anyhow::bail!("saga {}: step {} is named twice", self.name, step.name);
            }
            crate::manifest::check_cell_id(&step.call)?;
            if let Some(c) = &step.compensate {
                crate::manifest::check_cell_id(c)?;
            }
        }
        Ok(())
    }

    /// Every cell it calls.
    pub fn cells(&self) -> impl Iterator<Item = &str> {
        self.steps
            .iter()
            .flat_map(|s| std::iter::once(s.call.as_str()).chain(s.compensate.as_deref()))
    }
}
