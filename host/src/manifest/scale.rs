//! `[instances]` and `[scale]`: how a wasm cell's instances are kept
//! (pooled or fresh, warm between a floor and a ceiling), or how many
//! processes a sidecar or Python cell runs. Read by `runtime::wasm::pool`
//! and `runtime::process::pool`.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::bounds::{self, within};
use super::{Manifest, RuntimeKind};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Warm instances reused; retired after `max_messages` and after any trap.
    #[default]
    Pooled,
    /// A new instance per message: strictest isolation.
    Fresh,
}

/// `[scale]`: how many warm instances a wasm cell keeps, or how many
/// processes a sidecar or Python cell runs (between `min` and `max`, from
/// its queue depth).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Scale {
    /// Instances kept warm while idle; 0 scales to zero (the first message
    /// makes one). Unset: 1 when pooled, 0 when fresh. Processes: kept
    /// while idle, at least 1; unset: 1 (with `max`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// Warm instances kept at most (more run while messages need them, up
    /// to `[limits] concurrency`). Unset: `concurrency`. Processes: run at
    /// most, started while every live one is busy; unset: `min`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// An instance (or process) idle this long is retired, down to `min`.
    pub idle_ms: u64,
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            min: None,
            max: None,
            idle_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Instances {
    pub policy: Policy,
    /// Messages a pooled instance handles before it is retired.
    pub max_messages: u64,
}

impl Default for Instances {
    fn default() -> Self {
        Self {
            policy: Policy::Pooled,
            max_messages: 10_000,
        }
    }
}

impl Scale {
    /// Warm instances kept even when idle: `min`, else 1 for a pooled
    /// cell and 0 for a fresh one.
    pub fn min_warm(&self, policy: Policy) -> u32 {
        self.min.unwrap_or(u32::from(policy == Policy::Pooled))
    }

    /// Warm instances kept at most: `max`, else `concurrency`.
    pub fn max_warm(&self, concurrency: u32) -> u32 {
        self.max.unwrap_or(concurrency)
    }

    /// The process count a sidecar or Python cell scales between, when
    /// `min` or `max` is set (the other defaults to it); `None`: a fixed
    /// count.
    pub fn process_bounds(&self) -> Option<(u32, u32)> {
        match (self.min, self.max) {
            (None, None) => None,
            (Some(min), None) => Some((min, min)),
            (None, Some(max)) => Some((1, max)),
            (Some(min), Some(max)) => Some((min, max)),
        }
    }
}

/// `[instances]` and `[scale]` of `m`, against its runtime, policy and
/// `[limits] concurrency`.
pub(super) fn validate(m: &Manifest) -> anyhow::Result<()> {
    if m.instances.max_messages == 0 {
        bail!("[instances] max_messages must be greater than 0");
    }
    let scale = &m.scale;
    within("[scale] idle_ms", scale.idle_ms, bounds::DEDUP_WINDOW_MS)?;
    if scale.idle_ms == 0 {
        bail!("[scale] idle_ms must be greater than 0");
    }
    if m.runtime != RuntimeKind::Wasm {
        return check_process_scale(m);
    }
    if m.instances.policy == Policy::Fresh && scale.min.is_some_and(|m| m > 0) {
        bail!("[scale] min: a `fresh` cell keeps no instance warm; use policy = \"pooled\"");
    }
    let max = m.max_warm();
    if max > m.limits.concurrency || m.min_warm() > max {
        bail!(
            "[scale]: min ({}) ≤ max ({max}) ≤ [limits] concurrency ({})",
            m.min_warm(),
            m.limits.concurrency
        );
    }
    Ok(())
}

/// `[scale]` of a sidecar or Python cell: processes, at least one (it
/// describes the cell), at most [`bounds::PROCESSES`]; instead of a
/// fixed `[sidecar] processes` / `[python] workers`, not with it.
fn check_process_scale(m: &Manifest) -> anyhow::Result<()> {
    let (Some(fixed), what) = fixed_processes(m) else {
        return Ok(());
    };
    let scale = &m.scale;
    if scale.min.is_none() && scale.max.is_none() {
        return Ok(());
    }
    if fixed != 1 {
        bail!("{what} = {fixed} and [scale] min/max both size the processes: keep one of them");
    }
    let (min, max) = scale.process_bounds().unwrap_or((1, 1));
    if min == 0 || min > max {
        bail!("[scale] for processes: 1 ≤ min ({min}) ≤ max ({max})");
    }
    within("[scale] max", max.into(), bounds::PROCESSES.into())
}

/// The fixed process count of a process runtime, and its field's name.
fn fixed_processes(m: &Manifest) -> (Option<u32>, &'static str) {
    match m.runtime {
        RuntimeKind::Sidecar => (
            m.sidecar.as_ref().map(|s| s.processes),
            "[sidecar] processes",
        ),
        RuntimeKind::Python => (m.python.as_ref().map(|p| p.workers), "[python] workers"),
        RuntimeKind::Wasm => (None, ""),
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::{Manifest, MINIMAL};

    #[test]
    fn scale_bounds_warm_wasm_instances_only() {
        let parse = |extra: &str| Manifest::parse(&format!("{MINIMAL}\n{extra}"));
        let m =
            parse("[limits]\nconcurrency = 8\n[scale]\nmin = 0\nmax = 4\nidle_ms = 1000").unwrap();
        assert_eq!((m.min_warm(), m.max_warm()), (0, 4));
        let defaults = parse("").unwrap();
        assert_eq!(
            (defaults.min_warm(), defaults.max_warm()),
            (1, defaults.limits.concurrency)
        );
        for (bad, why) in [
            ("[scale]\nmin = 5\nmax = 4", "min"),
            ("[limits]\nconcurrency = 2\n[scale]\nmax = 3", "concurrency"),
            ("[instances]\npolicy = \"fresh\"\n[scale]\nmin = 1", "fresh"),
            ("[scale]\nidle_ms = 0", "idle_ms"),
        ] {
            let err = format!("{:#}", parse(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn scale_bounds_processes_instead_of_a_fixed_count() {
        let sidecar = |extra: &str| {
            Manifest::parse(&format!(
                "id = \"a.b\"\nversion = \"1\"\nruntime = \"sidecar\"\n[sidecar]\ncommand = [\"x\"]\n{extra}"
            ))
        };
        let m = sidecar("[scale]\nmin = 1\nmax = 4\nidle_ms = 500").unwrap();
        assert_eq!(m.process_bounds(), Some((1, 4)));
        assert_eq!(sidecar("").unwrap().process_bounds(), None);
        assert_eq!(
            sidecar("[scale]\nmax = 3").unwrap().process_bounds(),
            Some((1, 3))
        );
        for (bad, why) in [
            ("[scale]\nmin = 0", "1 ≤ min"),
            ("[scale]\nmin = 3\nmax = 2", "1 ≤ min"),
            ("[scale]\nmax = 100000", "[scale] max"),
        ] {
            let err = format!("{:#}", sidecar(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
        let both = "id = \"a.b\"\nversion = \"1\"\nruntime = \"sidecar\"\n[sidecar]\ncommand = [\"x\"]\nprocesses = 2\n[scale]\nmax = 4";
        let err = format!("{:#}", Manifest::parse(both).unwrap_err());
        assert!(err.contains("[sidecar] processes = 2 and [scale]"), "{err}");
    }
}
