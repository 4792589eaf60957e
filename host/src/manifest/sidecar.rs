//! `[sidecar]`: how to run a sidecar process (docs/sidecar-protocol.md).
//! Read by `runtime::process`.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::bounds::{self, within};

/// How to run a sidecar (docs/sidecar-protocol.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarSpec {
    /// argv; a program with a `/` is relative to the cell folder, else on PATH.
    pub command: Vec<String>,
    /// Copies of the process.
    #[serde(default = "one")]
    pub processes: u32,
    /// Largest frame either side may send, in KiB.
    #[serde(default = "default_max_frame_kb")]
    pub max_frame_kb: u32,
    /// Added to the sidecar's (otherwise clean) environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

fn default_max_frame_kb() -> u32 {
    1024
}

fn one() -> u32 {
    1
}

impl SidecarSpec {
    /// A command, and at least one process with a frame size, bounded.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.command.is_empty() {
            bail!("[sidecar] command is empty");
        }
        if self.processes == 0 || self.max_frame_kb == 0 {
            bail!("[sidecar] processes and max_frame_kb must be greater than 0");
        }
        within(
            "[sidecar] processes",
            self.processes.into(),
            bounds::PROCESSES.into(),
        )?;
        within(
            "[sidecar] max_frame_kb",
            self.max_frame_kb.into(),
            bounds::FRAME_KB.into(),
        )
    }
}
