//! `cell.toml`: what a cell is, what it may touch and what it may use.
//!
//! Unknown fields are errors (a typo must not silently drop a limit), and
//! every path is relative to the cell's folder.
//!
//! One file per section, each with its types and its own `validate`:
//! [`limits`](Limits) (`[limits]`), `capabilities` (`[capabilities]`),
//! `scale` (`[instances]`, `[scale]`), `sidecar` (`[sidecar]`), `python`
//! (`[python]`), `durable` (`[durable]`), [`http`] (`[[http]]`), `bundle`
//! (`[bundle]`), and [`bounds`] (the bounds of every number). This module
//! owns those sections' types, re-exported here; the modules that act on
//! them read them from here. Three sections are owned by the module that
//! acts on them, which sits below this one and imports nothing of it:
//! `[policy]` (`resilience::CallPolicy`), `[chaos]` (`chaos::ChaosSpec`)
//! and `[[subscribe]]` (`events::Subscribe`); this module only calls their
//! checks.

pub mod bounds;
mod bundle;
mod calls;
mod capabilities;
mod durable;
pub mod expects;
pub mod http;
mod limits;
mod python;
mod scale;
mod sidecar;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::subjects::subject_of;
use bounds::within;

pub use bundle::BundleSpec;
pub use calls::{list as list_calls, Call};
pub use capabilities::{Capabilities, FileGrant, StateGrant};
pub use durable::{DurableSpec, Retention};
pub use http::HttpRoute;
pub use limits::{Limits, PROCESS_MEMORY_MB, WASM_MEMORY_MB};
pub use python::PythonSpec;
pub use scale::{Instances, Policy, Scale};
pub use sidecar::SidecarSpec;

pub const FILE_NAME: &str = "cell.toml";
/// The id a bare component is loaded under until its `describe()` names it.
pub const PROBE_ID: &str = "cbs.probe";

/// A parsed `cell.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Dotted id, e.g. `logic.greet`; the cell answers on `cbs.<id>`.
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// The component, for `runtime = "wasm"`.
    pub component: Option<PathBuf>,
    /// The process to run, for `runtime = "sidecar"`.
    pub sidecar: Option<SidecarSpec>,
    /// The source language, for the tools that build components
    /// (`python` components are built by `scripts/build-python-cell`).
    pub lang: Option<Lang>,
    /// A Python cell's handler, and for `runtime = "python"` its venv and pool.
    pub python: Option<PythonSpec>,
    /// Contract of the request payload.
    pub input: Option<SchemaRef>,
    /// Contract of the reply payload.
    pub output: Option<SchemaRef>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub instances: Instances,
    /// Warm instances between a floor and a ceiling (wasm).
    #[serde(default)]
    pub scale: Scale,
    /// Call policies per target cell: `[policy."logic.greet"]`.
    #[serde(default)]
    pub policy: BTreeMap<String, crate::resilience::CallPolicy>,
    /// Fault injection (testing only).
    pub chaos: Option<crate::chaos::ChaosSpec>,
    /// Served from a JetStream stream as well (`[durable]`): nothing is
    /// lost when a host dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<DurableSpec>,
    /// Event subjects the cell handles besides its requests (`[[subscribe]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<crate::events::Subscribe>,
    /// HTTP routes to the cell (`[[http]]`), served by `cbs-host run
    /// --http` and `cbs gateway`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// What `cbs build` puts in the bundle besides what the runtime needs.
    #[serde(default, skip_serializing_if = "BundleSpec::is_empty")]
    pub bundle: BundleSpec,
    /// What this cell relies on from the cells it calls, per callee.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expects: BTreeMap<String, Vec<expects::Expectation>>,
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RuntimeKind {
    #[default]
    Wasm,
    Python,
    Sidecar,
}

/// Languages cells are written in (`lang` in `cell.toml`, `cbs new --lang`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Lang {
    Rust,
    Python,
    Dart,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRef {
    pub id: String,
    pub schema: PathBuf,
}

/// What the cell may reach. Everything not granted is denied.
#[derive(Debug, Clone)]
pub struct CellSpec {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl CellSpec {
    /// Reads `<dir>/cell.toml`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: is {} a cell folder?",
                path.display(),
                dir.display()
            )
        })?;
        let manifest = Manifest::parse(&text).with_context(|| format!("in {}", path.display()))?;
        Ok(Self {
            manifest,
            dir: dir.to_path_buf(),
        })
    }

    /// A path from the manifest, resolved against the cell folder.
    pub fn resolve(&self, relative: &Path) -> PathBuf {
        self.dir.join(relative)
    }

    pub fn component_path(&self) -> anyhow::Result<PathBuf> {
        match &self.manifest.component {
            Some(c) => Ok(self.resolve(c)),
            None => bail!(
                "cell {} has runtime \"wasm\" but no `component = \"...\"` in {FILE_NAME}",
                self.manifest.id
            ),
        }
    }
}

impl Manifest {
    /// The manifest of a bare component: default limits, no schemas, no grants.
    pub fn bare(id: &str, version: &str, component: &Path) -> Self {
        Self {
            id: id.to_owned(),
            version: version.to_owned(),
            runtime: RuntimeKind::Wasm,
            component: Some(component.to_path_buf()),
            sidecar: None,
            lang: None,
            python: None,
            input: None,
            output: None,
            capabilities: Capabilities::default(),
            limits: Limits::default(),
            instances: Instances::default(),
            scale: Scale::default(),
            policy: Default::default(),
            chaos: None,
            durable: None,
            subscribe: Vec::new(),
            http: Vec::new(),
            bundle: BundleSpec::default(),
            expects: BTreeMap::new(),
        }
    }

    /// Writes `<dir>/cell.toml`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        self.validate()?;
        let text = toml::to_string(self).context("cannot write cell.toml")?;
        std::fs::write(dir.join(FILE_NAME), text)
            .with_context(|| format!("cannot write {}", dir.join(FILE_NAME).display()))
    }

    /// The memory limit in MiB: `[limits] memory_mb`, else the default of
    /// the runtime (see [`Limits::memory_mb`]).
    pub fn memory_mb(&self) -> u32 {
        self.limits.memory_mb(self.runtime)
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let manifest: Manifest = toml::from_str(text)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Each section's own checks, then those between sections.
    fn validate(&self) -> anyhow::Result<()> {
        check_cell_id(&self.id)?;
        if self.version.trim().is_empty() {
            bail!("`version` is empty");
        }
        self.capabilities.validate()?;
        self.limits.validate(self.runtime)?;
        if let Some(durable) = &self.durable {
            durable.validate()?;
        }
        self.check_subscriptions()?;
        self.bundle.validate()?;
        self.check_routes()?;
        self.check_process_table()?;
        python::validate(self.python.as_ref(), self.runtime, self.lang)?;
        for target in self.policy.keys() {
            if !self.may_call(target) {
                bail!("[policy.\"{target}\"] is for a cell this one may not call: add it to `calls` under [capabilities]");
            }
        }
        if let Some(chaos) = &self.chaos {
            chaos.validate().map_err(anyhow::Error::msg)?;
        }
        expects::validate(&self.expects, |callee| self.may_call(callee))?;
        scale::validate(self)
    }

    /// `[[subscribe]]`: bounded, each checked by `events`, which owns it.
    fn check_subscriptions(&self) -> anyhow::Result<()> {
        within(
            "[[subscribe]] entries",
            self.subscribe.len() as u64,
            bounds::SUBSCRIPTIONS as u64,
        )?;
        self.subscribe.iter().try_for_each(|s| s.validate())
    }

    /// `[[http]]`: bounded, each route checked.
    fn check_routes(&self) -> anyhow::Result<()> {
        within(
            "[[http]] routes",
            self.http.len() as u64,
            bounds::HTTP_ROUTES as u64,
        )?;
        self.http.iter().try_for_each(HttpRoute::validate)
    }

    /// A sidecar cell needs its `[sidecar]` table.
    fn check_process_table(&self) -> anyhow::Result<()> {
        if self.runtime != RuntimeKind::Sidecar {
            return Ok(());
        }
        match &self.sidecar {
            None => bail!("runtime \"sidecar\" needs a [sidecar] table with `command = [...]`"),
            Some(sidecar) => sidecar.validate(),
        }
    }

    /// The process count a sidecar or Python cell scales between (see
    /// [`Scale::process_bounds`]).
    pub fn process_bounds(&self) -> Option<(u32, u32)> {
        self.scale.process_bounds()
    }

    /// Warm instances kept even when idle (see [`Scale::min_warm`]).
    pub fn min_warm(&self) -> u32 {
        self.scale.min_warm(self.instances.policy)
    }

    /// Warm instances kept at most (see [`Scale::max_warm`]).
    pub fn max_warm(&self) -> u32 {
        self.scale.max_warm(self.limits.concurrency)
    }

    /// The subject the cell answers on (also its queue group).
    pub fn subject(&self) -> String {
        subject_of(&self.id)
    }

    /// May this cell request `cell_id`?
    pub fn may_call(&self, cell_id: &str) -> bool {
        self.capabilities.may_call(cell_id)
    }

    /// May this cell publish to `subject`?
    pub fn may_publish(&self, subject: &str) -> bool {
        self.capabilities.may_publish(subject)
    }

    /// Does a publish to `subject` wait until JetStream stored it?
    pub fn publishes_durably(&self, subject: &str) -> bool {
        self.capabilities.publishes_durably(subject)
    }
}

/// Cell ids are dotted tokens of lowercase letters, digits, `_` and `-`.
pub fn check_cell_id(id: &str) -> anyhow::Result<()> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    if id.split('.').all(token_ok) {
        Ok(())
    } else {
        bail!(
            "invalid cell id {id:?}: use dotted lowercase tokens of a-z, 0-9, _ and -, e.g. \"logic.greet\""
        )
    }
}

/// A domain's or a saga's name: a subject token and a key, lower-case.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        bail!(
            "{:?} is not a name: 1 to 64 lower-case letters, digits, `_` or `-`, starting with a letter",
            name.escape_debug().to_string()
        );
    }
    Ok(())
}

/// The smallest manifest, for the sections' tests.
#[cfg(test)]
const MINIMAL: &str = r#"
        id = "logic.greet"
        version = "0.1.0"
        component = "greet.wasm"
    "#;

#[cfg(test)]
mod tests {
    use super::*;

    /// `[[expects]]` comes from outside: only for cells it may call, with
    /// JSON pointers, and bounded in count.
    #[test]
    fn expectations_are_for_granted_callees_with_pointers_and_bounded() {
        let with = |calls: &str, body: &str| {
            let text = format!(
                "id = \"a.b\"\nversion = \"1\"\ncomponent = \"c.wasm\"\n[capabilities]\ncalls = [{calls}]\n{body}"
            );
            Manifest::parse(&text).map_err(|e| format!("{e:#}"))
        };
        let one = "[[expects.\"x.y\"]]\nexample = { text = \"hi\" }\nreads = [\"/text\"]\n";
        let parsed = with("\"x.y\"", one).unwrap();
        assert_eq!(parsed.expects["x.y"][0].example["text"], "hi");
        let err = with("", one).unwrap_err();
        assert!(err.contains("may not call"), "{err}");
        let bad = "[[expects.\"x.y\"]]\nexample = {}\nreads = [\"text\"]\n";
        let err = with("\"x.y\"", bad).unwrap_err();
        assert!(err.contains("JSON pointer"), "{err}");
        let many = one.repeat(expects::PER_CALLEE + 1);
        let err = with("\"x.y\"", &many).unwrap_err();
        assert!(err.contains("[[expects.\"x.y\"]] entries"), "{err}");
    }

    #[test]
    fn numbers_above_their_bounds_are_refused_by_name() {
        for (section, line, name) in [
            ("limits", "concurrency = 4294967295", "[limits] concurrency"),
            ("limits", "queue = 4294967295", "[limits] queue"),
            ("limits", "memory_mb = 5000", "[limits] memory_mb"),
            (
                "limits",
                "timeout_ms = 18446744073709551615",
                "[limits] timeout_ms",
            ),
            ("instances", "max_messages = 0", "[instances] max_messages"),
        ] {
            let text = format!(
                "id = \"a.b\"\nversion = \"1\"\ncomponent = \"c.wasm\"\n[{section}]\n{line}\n"
            );
            let err = format!("{:#}", Manifest::parse(&text).unwrap_err());
            assert!(err.contains(name), "{line}: {err}");
        }
        let sidecar = "id = \"a.b\"\nversion = \"1\"\nruntime = \"sidecar\"\n[sidecar]\ncommand = [\"x\"]\nprocesses = 100000\n";
        let err = format!("{:#}", Manifest::parse(sidecar).unwrap_err());
        assert!(err.contains("[sidecar] processes"), "{err}");
        let cpu = "id = \"a.b\"\nversion = \"1\"\nruntime = \"sidecar\"\n[sidecar]\ncommand = [\"x\"]\n[limits]\ncpu_seconds = 99999999999\n";
        let err = format!("{:#}", Manifest::parse(cpu).unwrap_err());
        assert!(err.contains("[limits] cpu_seconds"), "{err}");
        let wasm_cpu =
            "id = \"a.b\"\nversion = \"1\"\ncomponent = \"c.wasm\"\n[limits]\ncpu_seconds = 5\n";
        let err = format!("{:#}", Manifest::parse(wasm_cpu).unwrap_err());
        assert!(err.contains("is for process cells"), "{err}");
        let python = "id = \"a.b\"\nversion = \"1\"\nruntime = \"python\"\n[python]\nmodule = \"m\"\nworkers = 4294967295\n";
        let err = format!("{:#}", Manifest::parse(python).unwrap_err());
        assert!(err.contains("[python] workers"), "{err}");
    }

    #[test]
    fn defaults() {
        let m = Manifest::parse(MINIMAL).unwrap();
        assert_eq!(m.runtime, RuntimeKind::Wasm);
        assert_eq!(m.instances.policy, Policy::Pooled);
        assert!(!m.capabilities.stdio);
        assert_eq!(m.subject(), "cbs.logic.greet");
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let err = Manifest::parse(&format!("{MINIMAL}\nmemroy_mb = 3")).unwrap_err();
        assert!(format!("{err:#}").contains("memroy_mb"), "{err:#}");
        let err = Manifest::parse(&format!("{MINIMAL}\n[limits]\ntimeout = 3")).unwrap_err();
        assert!(format!("{err:#}").contains("timeout"), "{err:#}");
    }

    #[test]
    fn missing_field_is_an_error_naming_it() {
        let err = Manifest::parse("id = \"a.b\"").unwrap_err();
        assert!(format!("{err:#}").contains("version"), "{err:#}");
    }

    #[test]
    fn bad_ids_and_limits() {
        assert!(Manifest::parse(&MINIMAL.replace("logic.greet", "Logic.Greet")).is_err());
        assert!(Manifest::parse(&MINIMAL.replace("logic.greet", "a..b")).is_err());
        assert!(Manifest::parse(&format!("{MINIMAL}\n[limits]\nconcurrency = 0")).is_err());
    }
}
