//! `[limits]`: memory, CPU, time and concurrency of a cell. Read by the
//! runtimes (memory, CPU) and `body` (timeout, admission).

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::bounds::{self, within};
use super::RuntimeKind;

/// Default `[limits] memory_mb` of a wasm cell.
pub const WASM_MEMORY_MB: u32 = 64;
/// Default `[limits] memory_mb` of a sidecar or Python-pool process.
pub const PROCESS_MEMORY_MB: u32 = 1_024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Memory in MiB: a wasm instance's linear memory, or a sidecar or
    /// Python worker process's data (heap and private mappings, enforced
    /// as `RLIMIT_DATA`). Unset: [`WASM_MEMORY_MB`] or
    /// [`PROCESS_MEMORY_MB`]; see [`Manifest::memory_mb`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// CPU seconds a sidecar or Python worker process may use in its life
    /// (`RLIMIT_CPU`): past them it is ended and a new one started, so a
    /// process that spins between messages cannot hold a core. Unset: no
    /// limit beyond `timeout_ms` per message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Deadline per message, in milliseconds.
    pub timeout_ms: u64,
    /// Messages handled at once.
    pub concurrency: u32,
    /// Messages waiting beyond `concurrency` before `capacity` is answered.
    pub queue: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: None,
            cpu_seconds: None,
            timeout_ms: 5_000,
            concurrency: 16,
            queue: 256,
        }
    }
}

impl Limits {
    /// The memory limit in MiB: `memory_mb`, else the default of the
    /// runtime (a process needs more than a component: Python with numpy
    /// maps ~90 MiB of data before its first message).
    pub fn memory_mb(&self, runtime: RuntimeKind) -> u32 {
        self.memory_mb.unwrap_or(match runtime {
            RuntimeKind::Wasm => WASM_MEMORY_MB,
            RuntimeKind::Sidecar | RuntimeKind::Python => PROCESS_MEMORY_MB,
        })
    }

    /// Every limit above zero and within its bound; `cpu_seconds` only
    /// for a process cell.
    pub(super) fn validate(&self, runtime: RuntimeKind) -> anyhow::Result<()> {
        if self.memory_mb == Some(0) || self.timeout_ms == 0 || self.concurrency == 0 {
            bail!("[limits] memory_mb, timeout_ms and concurrency must be greater than 0");
        }
        within(
            "[limits] memory_mb",
            self.memory_mb(runtime).into(),
            bounds::MEMORY_MB.into(),
        )?;
        within("[limits] timeout_ms", self.timeout_ms, bounds::TIMEOUT_MS)?;
        if let Some(cpu) = self.cpu_seconds {
            if runtime == RuntimeKind::Wasm {
                bail!("[limits] cpu_seconds is for process cells; a wasm cell is bounded by timeout_ms per message");
            }
            if cpu == 0 {
                bail!("[limits] cpu_seconds must be greater than 0");
            }
            within("[limits] cpu_seconds", cpu, bounds::CPU_SECONDS)?;
        }
        within(
            "[limits] concurrency",
            self.concurrency.into(),
            bounds::CONCURRENCY.into(),
        )?;
        within("[limits] queue", self.queue.into(), bounds::QUEUE.into())
    }
}
