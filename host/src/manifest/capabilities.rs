//! `[capabilities]`: what a cell may reach (calls, publishes, files,
//! environment, clocks, its own state). Everything not granted is denied.
//! Read by `outbound` (calls and publishes), `runtime::wasm` (WASI grants)
//! and `state` (`StateGrant`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::bounds::{self, within};
use crate::subjects::{check_durable_publish, check_publish};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Inherit the host's stdin/stdout/stderr (otherwise stdout and stderr
    /// go to the host log and stdin is empty).
    #[serde(default)]
    pub stdio: bool,
    /// Cells this cell may `request`, each with the versions it works
    /// with if said (`"logic.greet@^1"`).
    #[serde(default)]
    pub calls: Vec<super::Call>,
    /// Subjects (wildcards allowed) this cell may `publish` to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Subjects this cell publishes durably: a `publish` there returns only
    /// once JetStream stored the event, and fails with `unavailable` when
    /// no stream takes it. Granted for `publish` too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish_durable: Vec<String>,
    /// Folders a wasm cell may open, each preopened at a guest path;
    /// read-only unless `write = true`. No other file is reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileGrant>,
    /// Environment variables a wasm cell sees, with their values: only
    /// these, never the host's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Clocks at full resolution. By default a wasm cell's wall and
    /// monotonic clocks move in whole milliseconds, which blunts timing
    /// side channels between cells.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub precise_clocks: bool,
    /// The cell's own key-value state (`wasi:keyvalue`), with its limits.
    /// No other cell can reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateGrant>,
}

/// `[capabilities.state]`: a key-value bucket of the cell's own, on
/// JetStream (NATS) or in the host's data folder (in process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateGrant {
    /// The largest value, in bytes.
    pub max_value_bytes: u32,
    /// All keys and values of the cell together, in bytes.
    pub max_bytes: u64,
}

impl Default for StateGrant {
    fn default() -> Self {
        Self {
            max_value_bytes: 64 * 1024,
            max_bytes: 16 << 20,
        }
    }
}

/// `[[capabilities.files]]`: a host folder a wasm cell may open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    /// The folder on the host, relative to the cell folder.
    pub host: PathBuf,
    /// Where the cell sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the cell may create, change and delete files there.
    #[serde(default)]
    pub write: bool,
}

impl Capabilities {
    /// Cell ids and subjects well-formed, file and environment grants
    /// bounded and well-formed for WASI, state limits consistent.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        for subject in &self.publish {
            check_publish("[capabilities] publish", subject)?;
        }
        for subject in &self.publish_durable {
            check_durable_publish("[capabilities] publish_durable", subject)?;
        }
        check_grants(self)
    }

    /// May this cell request `cell_id`?
    pub fn may_call(&self, cell_id: &str) -> bool {
        self.call(cell_id).is_some()
    }

    /// The grant to call `cell_id`, if any.
    pub fn call(&self, cell_id: &str) -> Option<&super::Call> {
        self.calls.iter().find(|c| c.cell == cell_id)
    }

    /// May this cell publish to `subject`?
    pub fn may_publish(&self, subject: &str) -> bool {
        matches_any(&self.publish, subject) || self.publishes_durably(subject)
    }

    /// Does a publish to `subject` wait until JetStream stored it?
    pub fn publishes_durably(&self, subject: &str) -> bool {
        matches_any(&self.publish_durable, subject)
    }
}

fn matches_any(patterns: &[String], subject: &str) -> bool {
    patterns.iter().any(|p| {
        crate::bus::subject::Pattern::parse(p)
            .map(|p| p.matches(subject))
            .unwrap_or(false)
    })
}

/// File and environment grants: bounded, and well-formed for WASI.
fn check_grants(c: &Capabilities) -> anyhow::Result<()> {
    within(
        "[[capabilities.files]] entries",
        c.files.len() as u64,
        bounds::FILE_GRANTS as u64,
    )?;
    for grant in &c.files {
        if !grant.guest.starts_with('/') || grant.guest.chars().any(char::is_control) {
            bail!(
                "[[capabilities.files]] guest = {:?}: give an absolute path such as \"/data\"",
                grant.guest
            );
        }
    }
    within(
        "[capabilities.env] entries",
        c.env.len() as u64,
        bounds::ENV_VARS as u64,
    )?;
    for (name, value) in &c.env {
        if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0') {
            bail!("[capabilities.env] {name:?}: a name is non-empty without '=' or NUL, a value without NUL");
        }
        within(
            "[capabilities.env] value bytes",
            value.len().max(name.len()) as u64,
            bounds::ENV_BYTES as u64,
        )?;
    }
    if let Some(state) = &c.state {
        let value = u64::from(state.max_value_bytes);
        within(
            "[capabilities.state] max_value_bytes",
            value,
            bounds::STATE_VALUE_BYTES,
        )?;
        within(
            "[capabilities.state] max_bytes",
            state.max_bytes,
            bounds::STATE_BYTES,
        )?;
        if value == 0 || state.max_bytes < value {
            bail!("[capabilities.state]: max_value_bytes must be at least 1 and at most max_bytes");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::manifest::{Manifest, MINIMAL};

    #[test]
    fn grants_are_bounded_and_well_formed() {
        let base = "id = \"a.b\"\nversion = \"1\"\ncomponent = \"c.wasm\"\n";
        let many_files: String = (0..17)
            .map(|i| format!("[[capabilities.files]]\nhost = \"d{i}\"\nguest = \"/d{i}\"\n"))
            .collect();
        let many_vars: String = (0..65).map(|i| format!("V{i} = \"x\"\n")).collect();
        let long = "x".repeat(5000);
        for (extra, says) in [
            (many_files, "[[capabilities.files]] entries"),
            (
                "[[capabilities.files]]\nhost = \"d\"\nguest = \"data\"\n".into(),
                "absolute path",
            ),
            (
                format!("[capabilities.env]\n{many_vars}"),
                "[capabilities.env] entries",
            ),
            (
                format!("[capabilities.env]\nV = \"{long}\"\n"),
                "value bytes",
            ),
            (
                "[capabilities.env]\n\"A=B\" = \"x\"\n".into(),
                "without '='",
            ),
        ] {
            let err = format!(
                "{:#}",
                Manifest::parse(&format!("{base}{extra}")).unwrap_err()
            );
            assert!(err.contains(says), "{says}: {err}");
        }
        let ok = "[[capabilities.files]]\nhost = \"d\"\nguest = \"/data\"\nwrite = true\n[capabilities.env]\nA = \"b\"\n";
        let m = Manifest::parse(&format!("{base}{ok}")).unwrap();
        assert!(m.capabilities.files[0].write);
        assert_eq!(m.capabilities.env["A"], "b");
    }

    #[test]
    fn grants() {
        let m = Manifest::parse(&format!(
            "{MINIMAL}\n[capabilities]\ncalls = [\"io.print\"]\npublish = [\"events.>\"]"
        ))
        .unwrap();
        assert!(m.may_call("io.print"));
        assert!(!m.may_call("io.other"));
        assert!(m.may_publish("events.greeted"));
        assert!(!m.may_publish("cbs.io.print"));
    }

    /// Regression (#26, 1): `$KV.>` and `$JS.API.>` grants loaded, and the
    /// cell wrote and purged other cells' state with the host's rights.
    #[test]
    fn a_publish_grant_on_nats_or_host_subjects_is_refused_at_load() {
        for subject in [
            "$KV.>",
            "$JS.API.>",
            "$O.>",
            "$SYS.>",
            "_INBOX.>",
            "cbs.>",
            ">",
        ] {
            let err = Manifest::parse(&format!(
                "{MINIMAL}\n[capabilities]\npublish = [\"events.>\", {subject:?}]"
            ))
            .expect_err(subject);
            assert!(
                format!("{err:#}").contains("[capabilities] publish"),
                "{subject}: {err:#}"
            );
        }
    }

    #[test]
    fn durable_publishing_may_feed_durable_cells_but_not_host_streams() {
        let with = |subjects: &str| {
            Manifest::parse(&format!(
                "{MINIMAL}\n[capabilities]\npublish_durable = [{subjects}]"
            ))
        };
        let m = with("\"billing.>\", \"cbs-durable.orders.place\"").unwrap();
        assert!(m.publishes_durably("billing.invoiced"));
        assert!(
            m.may_publish("cbs-durable.orders.place"),
            "granted for publish too"
        );
        assert!(!m.publishes_durably("orders.created"));
        for bad in ["\">\"", "\"cbs-dlq.>\"", "\"cbs.logic.greet\"", "\"$KV.x\""] {
            assert!(with(bad).is_err(), "{bad}");
        }
        let durable = |subjects: &str| {
            Manifest::parse(&format!("{MINIMAL}\n[durable]\nsubjects = [{subjects}]"))
        };
        assert!(durable("\"orders.>\"").is_ok());
        for bad in ["\"cbs-durable.other\"", "\"*.x\"", "\"_INBOX.>\""] {
            assert!(durable(bad).is_err(), "{bad}");
        }
    }
}
