//! `cell.toml`: what a cell is, what it may touch and what it may use.
//!
//! Unknown fields are errors (a typo must not silently drop a limit), and
//! every path is relative to the cell's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::subjects::{
    check_durable_publish, check_own_subject, check_publish, check_stream_name, stream_token,
    subject_of,
};

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
    pub policy: std::collections::BTreeMap<String, crate::resilience::CallPolicy>,
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
    pub http: Vec<crate::http::HttpRoute>,
    /// What `cbs build` puts in the bundle besides what the runtime needs.
    #[serde(default, skip_serializing_if = "BundleSpec::is_empty")]
    pub bundle: BundleSpec,
}

/// `[bundle]`: extra files a bundle carries, and the platform its native
/// code is built for (docs/adr/0017-bundles-for-every-runtime.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleSpec {
    /// Files or folders (relative to the cell folder) the bundle holds as
    /// well, e.g. a sidecar's script or data.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PathBuf>,
    /// `<os>-<arch>` (e.g. `linux-x86_64`) or `any`. Default: for a sidecar
    /// whose program is in the bundle, the platform `cbs build` runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl BundleSpec {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.platform.is_none()
    }

    fn validate(&self) -> anyhow::Result<()> {
        within(
            "[bundle] files",
            self.files.len() as u64,
            bounds::BUNDLE_FILES as u64,
        )?;
        if let Some(platform) = &self.platform {
            crate::bundle::platform::check(platform).context("in [bundle] platform")?;
        }
        Ok(())
    }
}

/// `[durable]`: a cell fed by a JetStream stream through one durable pull
/// consumer that every host serving it shares (each message handled once,
/// acknowledged only after the cell succeeded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurableSpec {
    /// The stream; default `CBS_DURABLE_<ID>` (see [`DurableSpec::stream_name`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Subjects the stream takes; default `cbs-durable.<cell id>`.
    pub subjects: Vec<String>,
    /// Deliveries before a message goes to the dead-letter stream.
    pub max_deliver: u32,
    /// How long a host may hold a message before it is redelivered.
    pub ack_wait_ms: u64,
    /// Delay before each redelivery after a retryable failure; the last
    /// one repeats.
    pub backoff_ms: Vec<u64>,
    /// A message published again with the same envelope id within this
    /// window is stored once.
    pub dedup_window_ms: u64,
    /// What the stream keeps: see [`Retention`].
    pub retention: Retention,
    /// With `retention = "limits"`, how long messages are kept (0: no age
    /// limit).
    pub max_age_ms: u64,
}

/// What a durable cell's stream keeps. Fixed when the stream is created
/// (JetStream cannot change it later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Retention {
    /// A message is removed once acknowledged.
    #[default]
    WorkQueue,
    /// Messages stay, processed or not, up to `max_age_ms`: `cbs replay`
    /// can re-drive any range into the cell.
    Limits,
}

impl Default for DurableSpec {
    fn default() -> Self {
        Self {
            stream: None,
            subjects: Vec::new(),
            max_deliver: 5,
            ack_wait_ms: 30_000,
            backoff_ms: vec![100, 1_000, 5_000],
            dedup_window_ms: 120_000,
            retention: Retention::WorkQueue,
            max_age_ms: 0,
        }
    }
}

impl DurableSpec {
    /// The stream of cell `id`: the name given, or `CBS_DURABLE_<ID>`.
    pub fn stream_name(&self, id: &str) -> String {
        self.stream
            .clone()
            .unwrap_or_else(|| format!("CBS_DURABLE_{}", stream_token(id)))
    }

    /// The subjects of cell `id`'s stream.
    pub fn subjects_of(&self, id: &str) -> Vec<String> {
        if self.subjects.is_empty() {
            vec![format!("cbs-durable.{id}")]
        } else {
            self.subjects.clone()
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(stream) = &self.stream {
            check_stream_name("[durable] stream", stream)?;
        }
        for subject in &self.subjects {
            check_own_subject("[durable] subjects", subject)?;
        }
        if self.max_deliver == 0 {
            bail!("[durable] max_deliver must be at least 1");
        }
        within(
            "[durable] max_deliver",
            self.max_deliver.into(),
            bounds::MAX_DELIVER,
        )?;
        within(
            "[durable] ack_wait_ms",
            self.ack_wait_ms,
            bounds::TIMEOUT_MS,
        )?;
        within(
            "[durable] backoff_ms entries",
            self.backoff_ms.len() as u64,
            16,
        )?;
        for delay in &self.backoff_ms {
            within("[durable] backoff_ms", *delay, bounds::TIMEOUT_MS)?;
        }
        within(
            "[durable] dedup_window_ms",
            self.dedup_window_ms,
            bounds::DEDUP_WINDOW_MS,
        )?;
        if self.max_age_ms > 0 && self.retention == Retention::WorkQueue {
            bail!("[durable] max_age_ms is for retention = \"limits\": a work queue keeps a message until it is acknowledged");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
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

/// A Python cell: where its handler is and, in the native pool
/// (`runtime = "python"`), which venv runs it on how many workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    /// The module holding the handler (`stats` for `stats.py`).
    pub module: String,
    /// A function `handle(payload, ctx)` or a class with such a method.
    #[serde(default = "default_handler")]
    pub handler: String,
    /// The folder the module is in, relative to the cell folder.
    #[serde(default = "dot")]
    pub path: PathBuf,
    /// pip requirements installed into the venv (by `make`).
    pub requirements: Option<PathBuf>,
    /// The venv whose interpreter and packages run the cell.
    #[serde(default = "default_venv")]
    pub venv: PathBuf,
    /// Worker processes.
    #[serde(default = "one")]
    pub workers: u32,
    /// Messages one worker handles at once (its handler threads).
    #[serde(default = "one")]
    pub max_concurrency: u32,
}

fn default_handler() -> String {
    "handle".to_owned()
}

fn dot() -> PathBuf {
    PathBuf::from(".")
}

fn default_venv() -> PathBuf {
    PathBuf::from(".venv")
}

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

fn one() -> u32 {
    1
}

fn default_max_frame_kb() -> u32 {
    1024
}

/// A payload contract: its id (`<cell>/<name>@<major>`) and JSON Schema file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRef {
    pub id: String,
    pub schema: PathBuf,
}

/// What the cell may reach. Everything not granted is denied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Inherit the host's stdin/stdout/stderr (otherwise stdout and stderr
    /// go to the host log and stdin is empty).
    #[serde(default)]
    pub stdio: bool,
    /// Cell ids this cell may `request`.
    #[serde(default)]
    pub calls: Vec<String>,
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

/// A manifest together with the folder its paths are relative to.
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

/// Upper bounds of the manifest's numbers. A manifest comes from outside
/// (a bundle, a deploy) and each of these sizes something the host
/// allocates or waits for; every sum and product of them fits in a u32.
/// Default `[limits] memory_mb` of a wasm cell.
pub const WASM_MEMORY_MB: u32 = 64;
/// Default `[limits] memory_mb` of a sidecar or Python-pool process.
pub const PROCESS_MEMORY_MB: u32 = 1_024;

pub mod bounds {
    /// wasm32 memories end at 4 GiB.
    pub const MEMORY_MB: u32 = 4_096;
    /// One hour.
    pub const TIMEOUT_MS: u64 = 3_600_000;
    pub const CONCURRENCY: u32 = 10_000;
    pub const QUEUE: u32 = 1_000_000;
    /// Sidecar processes or Python workers of one cell.
    pub const PROCESSES: u32 = 256;
    /// 64 MiB.
    pub const FRAME_KB: u32 = 65_536;
    /// Deliveries of one durable message.
    pub const MAX_DELIVER: u64 = 1_000;
    /// A day.
    pub const DEDUP_WINDOW_MS: u64 = 86_400_000;
    /// A year of CPU time.
    pub const CPU_SECONDS: u64 = 31_536_000;
    /// `[[capabilities.files]]` entries.
    pub const FILE_GRANTS: usize = 16;
    /// `[capabilities.env]` entries, and bytes per name or value.
    pub const ENV_VARS: usize = 64;
    pub const ENV_BYTES: usize = 4_096;
    /// `[[subscribe]]` entries.
    pub const SUBSCRIPTIONS: usize = 16;
    /// `[[http]]` routes of one cell.
    pub const HTTP_ROUTES: usize = 32;
    /// 1 MiB, NATS's default `max_payload`.
    pub const STATE_VALUE_BYTES: u64 = 1 << 20;
    /// 1 GiB.
    pub const STATE_BYTES: u64 = 1 << 30;
    /// `[bundle] files` entries (each may be a folder).
    pub const BUNDLE_FILES: usize = 256;
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

fn within(name: &str, value: u64, max: u64) -> anyhow::Result<()> {
    if value > max {
        bail!("{name} = {value} is above the largest this host accepts, {max}");
    }
    Ok(())
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
    /// the runtime (a process needs more than a component: Python with
    /// numpy maps ~90 MiB of data before its first message).
    pub fn memory_mb(&self) -> u32 {
        self.limits.memory_mb.unwrap_or(match self.runtime {
            RuntimeKind::Wasm => WASM_MEMORY_MB,
            RuntimeKind::Sidecar | RuntimeKind::Python => PROCESS_MEMORY_MB,
        })
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let manifest: Manifest = toml::from_str(text)?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> anyhow::Result<()> {
        check_cell_id(&self.id)?;
        if self.version.trim().is_empty() {
            bail!("`version` is empty");
        }
        for target in &self.capabilities.calls {
            check_cell_id(target).context("in [capabilities] calls")?;
        }
        for subject in &self.capabilities.publish {
            check_publish("[capabilities] publish", subject)?;
        }
        check_grants(&self.capabilities)?;
        if let Some(durable) = &self.durable {
            durable.validate()?;
        }
        within(
            "[[subscribe]] entries",
            self.subscribe.len() as u64,
            bounds::SUBSCRIPTIONS as u64,
        )?;
        for subscription in &self.subscribe {
            subscription.validate()?;
        }
        self.bundle.validate()?;
        within(
            "[[http]] routes",
            self.http.len() as u64,
            bounds::HTTP_ROUTES as u64,
        )?;
        for route in &self.http {
            route.validate()?;
        }
        for subject in &self.capabilities.publish_durable {
            check_durable_publish("[capabilities] publish_durable", subject)?;
        }
        let l = &self.limits;
        if l.memory_mb == Some(0) || l.timeout_ms == 0 || l.concurrency == 0 {
            bail!("[limits] memory_mb, timeout_ms and concurrency must be greater than 0");
        }
        within(
            "[limits] memory_mb",
            self.memory_mb().into(),
            bounds::MEMORY_MB.into(),
        )?;
        within("[limits] timeout_ms", l.timeout_ms, bounds::TIMEOUT_MS)?;
        if let Some(cpu) = l.cpu_seconds {
            if self.runtime == RuntimeKind::Wasm {
                bail!("[limits] cpu_seconds is for process cells; a wasm cell is bounded by timeout_ms per message");
            }
            if cpu == 0 {
                bail!("[limits] cpu_seconds must be greater than 0");
            }
            within("[limits] cpu_seconds", cpu, bounds::CPU_SECONDS)?;
        }
        within(
            "[limits] concurrency",
            l.concurrency.into(),
            bounds::CONCURRENCY.into(),
        )?;
        within("[limits] queue", l.queue.into(), bounds::QUEUE.into())?;
        if self.instances.max_messages == 0 {
            bail!("[instances] max_messages must be greater than 0");
        }
        if self.runtime == RuntimeKind::Sidecar {
            match &self.sidecar {
                None => bail!("runtime \"sidecar\" needs a [sidecar] table with `command = [...]`"),
                Some(s) if s.command.is_empty() => bail!("[sidecar] command is empty"),
                Some(s) if s.processes == 0 || s.max_frame_kb == 0 => {
                    bail!("[sidecar] processes and max_frame_kb must be greater than 0")
                }
                Some(s) => {
                    within(
                        "[sidecar] processes",
                        s.processes.into(),
                        bounds::PROCESSES.into(),
                    )?;
                    within(
                        "[sidecar] max_frame_kb",
                        s.max_frame_kb.into(),
                        bounds::FRAME_KB.into(),
                    )?;
                }
            }
        }
        if self.runtime == RuntimeKind::Python {
            match &self.python {
                None => bail!(
                    "runtime \"python\" needs a [python] table with `module = \"...\"` (the handler's module)"
                ),
                Some(p) if p.workers == 0 || p.max_concurrency == 0 => {
                    bail!("[python] workers and max_concurrency must be greater than 0")
                }
                Some(p) => {
                    within("[python] workers", p.workers.into(), bounds::PROCESSES.into())?;
                    within(
                        "[python] max_concurrency",
                        p.max_concurrency.into(),
                        bounds::CONCURRENCY.into(),
                    )?;
                }
            }
        }
        if self.lang == Some(Lang::Python) && self.python.is_none() {
            bail!("lang \"python\" needs a [python] table with `module = \"...\"`");
        }
        for target in self.policy.keys() {
            if !self.may_call(target) {
                bail!("[policy.\"{target}\"] is for a cell this one may not call: add it to `calls` under [capabilities]");
            }
        }
        if let Some(chaos) = &self.chaos {
            chaos.validate().map_err(anyhow::Error::msg)?;
        }
        self.check_scale()?;
        Ok(())
    }

    fn check_scale(&self) -> anyhow::Result<()> {
        let scale = &self.scale;
        within("[scale] idle_ms", scale.idle_ms, bounds::DEDUP_WINDOW_MS)?;
        if scale.idle_ms == 0 {
            bail!("[scale] idle_ms must be greater than 0");
        }
        if self.runtime != RuntimeKind::Wasm {
            return self.check_process_scale();
        }
        if self.instances.policy == Policy::Fresh && scale.min.is_some_and(|m| m > 0) {
            bail!("[scale] min: a `fresh` cell keeps no instance warm; use policy = \"pooled\"");
        }
        let max = self.max_warm();
        if max > self.limits.concurrency || self.min_warm() > max {
            bail!(
                "[scale]: min ({}) ≤ max ({max}) ≤ [limits] concurrency ({})",
                self.min_warm(),
                self.limits.concurrency
            );
        }
        Ok(())
    }

    /// `[scale]` of a sidecar or Python cell: processes, at least one (it
    /// describes the cell), at most [`bounds::PROCESSES`]; instead of a
    /// fixed `[sidecar] processes` / `[python] workers`, not with it.
    fn check_process_scale(&self) -> anyhow::Result<()> {
        let (Some(fixed), what) = self.fixed_processes() else {
            return Ok(());
        };
        let scale = &self.scale;
        if scale.min.is_none() && scale.max.is_none() {
            return Ok(());
        }
        if fixed != 1 {
            bail!("{what} = {fixed} and [scale] min/max both size the processes: keep one of them");
        }
        let (min, max) = self.process_bounds().unwrap_or((1, 1));
        if min == 0 || min > max {
            bail!("[scale] for processes: 1 ≤ min ({min}) ≤ max ({max})");
        }
        within("[scale] max", max.into(), bounds::PROCESSES.into())
    }

    /// The fixed process count of a process runtime, and its field's name.
    fn fixed_processes(&self) -> (Option<u32>, &'static str) {
        match self.runtime {
            RuntimeKind::Sidecar => (
                self.sidecar.as_ref().map(|s| s.processes),
                "[sidecar] processes",
            ),
            RuntimeKind::Python => (self.python.as_ref().map(|p| p.workers), "[python] workers"),
            RuntimeKind::Wasm => (None, ""),
        }
    }

    /// The process count a sidecar or Python cell scales between, when its
    /// `[scale]` sets `min` or `max` (the other defaults to it); `None`:
    /// a fixed count.
    pub fn process_bounds(&self) -> Option<(u32, u32)> {
        let scale = &self.scale;
        match (scale.min, scale.max) {
            (None, None) => None,
            (Some(min), None) => Some((min, min)),
            (None, Some(max)) => Some((1, max)),
            (Some(min), Some(max)) => Some((min, max)),
        }
    }

    /// Warm instances kept even when idle: `[scale] min`, else 1 for a
    /// pooled cell and 0 for a fresh one.
    pub fn min_warm(&self) -> u32 {
        let default = u32::from(self.instances.policy == Policy::Pooled);
        self.scale.min.unwrap_or(default)
    }

    /// Warm instances kept at most: `[scale] max`, else `concurrency`.
    pub fn max_warm(&self) -> u32 {
        self.scale.max.unwrap_or(self.limits.concurrency)
    }

    /// The subject the cell answers on (also its queue group).
    pub fn subject(&self) -> String {
        subject_of(&self.id)
    }

    /// May this cell request `cell_id`?
    pub fn may_call(&self, cell_id: &str) -> bool {
        self.capabilities.calls.iter().any(|c| c == cell_id)
    }

    /// May this cell publish to `subject`?
    pub fn may_publish(&self, subject: &str) -> bool {
        matches_any(&self.capabilities.publish, subject) || self.publishes_durably(subject)
    }

    /// Does a publish to `subject` wait until JetStream stored it?
    pub fn publishes_durably(&self, subject: &str) -> bool {
        matches_any(&self.capabilities.publish_durable, subject)
    }
}

fn matches_any(patterns: &[String], subject: &str) -> bool {
    patterns.iter().any(|p| {
        crate::bus::subject::Pattern::parse(p)
            .map(|p| p.matches(subject))
            .unwrap_or(false)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        id = "logic.greet"
        version = "0.1.0"
        component = "greet.wasm"
    "#;

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

    #[test]
    fn python_cells() {
        let native = Manifest::parse(
            "id = \"a.b\"\nversion = \"1\"\nruntime = \"python\"\n[python]\nmodule = \"m\"\nworkers = 3",
        )
        .unwrap();
        let py = native.python.unwrap();
        assert_eq!(
            (py.handler.as_str(), py.workers, py.max_concurrency),
            ("handle", 3, 1)
        );
        assert_eq!(py.venv, PathBuf::from(".venv"));
        let err =
            Manifest::parse("id = \"a.b\"\nversion = \"1\"\nruntime = \"python\"").unwrap_err();
        assert!(format!("{err:#}").contains("[python] table"), "{err:#}");
        let component = Manifest::parse(&format!(
            "{MINIMAL}\nlang = \"python\"\n[python]\nmodule = \"m\""
        ))
        .unwrap();
        assert_eq!(component.lang, Some(Lang::Python));
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
