//! `cell.toml` for test cells, built on the host's own manifest type
//! (`cbs_host::manifest::Manifest`) and written by the `toml` crate, so a
//! test cannot write a field the host does not know or misspell a table.
//!
//! ```ignore
//! let caller = CellToml::faulty("test.caller")
//!     .calls(&["test.flaky"])
//!     .policy("test.flaky", |p| p.breaker.failures = 3)
//!     .write();
//! ```
//!
//! Manifests that exist to be broken as text (unknown or missing fields)
//! are not built here: they test the parser, so they stay literal.

use std::path::{Path, PathBuf};

use cbs_host::chaos::ChaosSpec;
use cbs_host::manifest::{
    Capabilities, CellSpec, DurableSpec, Limits, Manifest, Policy, PythonSpec, RuntimeKind,
    SchemaRef, SidecarSpec,
};
use cbs_host::resilience::CallPolicy;

use crate::{faulty, repo};

/// A cell manifest under construction. Nothing is checked until the host
/// loads the folder: a builder may make a cell the host must refuse.
#[derive(Debug, Clone)]
pub struct CellToml {
    manifest: Manifest,
}

impl CellToml {
    /// Just an id and version 0.1.0: no runtime settings, no schemas, no
    /// grants, default limits.
    pub fn new(id: &str) -> Self {
        let mut manifest = Manifest::bare(id, "0.1.0", Path::new(""));
        manifest.component = None;
        Self { manifest }
    }

    /// A wasm cell of `component` (absolute, or relative to the folder the
    /// manifest is written to).
    pub fn wasm(id: &str, component: impl Into<PathBuf>) -> Self {
        let mut cell = Self::new(id);
        cell.manifest.component = Some(component.into());
        cell
    }

    /// The test component `test.faulty` (`tests/cells/faulty`) under another
    /// id, without its schemas, grants and limits.
    pub fn faulty(id: &str) -> Self {
        Self::wasm(id, faulty().join("test_faulty.wasm"))
    }

    /// A sidecar cell running `command` (one process).
    pub fn sidecar(id: &str, command: &[&str]) -> Self {
        let mut cell = Self::new(id).runtime(RuntimeKind::Sidecar);
        cell.manifest.sidecar = Some(SidecarSpec {
            command: command.iter().map(|s| s.to_string()).collect(),
            processes: 1,
            max_frame_kb: 1024,
            env: Default::default(),
        });
        cell
    }

    /// A native-pool Python cell whose handler is `handle` in `module`, with
    /// the defaults of `[python]` (venv `.venv`, one worker).
    pub fn python(id: &str, module: &str) -> Self {
        let mut cell = Self::new(id).runtime(RuntimeKind::Python);
        cell.manifest.python = Some(PythonSpec {
            module: module.to_owned(),
            handler: "handle".into(),
            path: ".".into(),
            requirements: None,
            venv: ".venv".into(),
            workers: 1,
            max_concurrency: 1,
        });
        cell
    }

    /// The reference sidecar's own `cell.toml` (`tests/sidecars/reference`),
    /// its script and schemas made absolute so that it runs from any folder.
    pub fn reference() -> Self {
        Self::from_dir(&reference_dir())
    }

    /// The `cell.toml` of the cell folder `dir`, with every path in it
    /// (the component, sidecar scripts, Python source and venv, schemas)
    /// made absolute, so that a copy written elsewhere runs the same cell.
    pub fn from_dir(dir: &Path) -> Self {
        let mut manifest = CellSpec::from_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()))
            .manifest;
        if let Some(sidecar) = manifest.sidecar.as_mut() {
            for arg in &mut sidecar.command {
                if dir.join(&*arg).is_file() {
                    *arg = dir.join(&*arg).display().to_string();
                }
            }
        }
        if let Some(component) = manifest.component.as_mut() {
            *component = dir.join(&*component);
        }
        if let Some(python) = manifest.python.as_mut() {
            python.path = dir.join(&python.path);
            python.venv = dir.join(&python.venv);
        }
        for schema in [&mut manifest.input, &mut manifest.output]
            .into_iter()
            .flatten()
        {
            schema.schema = dir.join(&schema.schema);
        }
        Self { manifest }
    }

    pub fn version(mut self, version: &str) -> Self {
        self.manifest.version = version.to_owned();
        self
    }

    pub fn id(mut self, id: &str) -> Self {
        self.manifest.id = id.to_owned();
        self
    }

    pub fn runtime(mut self, runtime: RuntimeKind) -> Self {
        self.manifest.runtime = runtime;
        self
    }

    /// `[capabilities] calls`.
    pub fn calls(mut self, targets: &[&str]) -> Self {
        self.manifest.capabilities.calls = targets
            .iter()
            .map(|s| cbs_host::manifest::Call::parse(s).expect("a call grant"))
            .collect();
        self
    }

    /// `[input]`: contract `id`, checked against the schema file `schema`.
    pub fn input(mut self, id: &str, schema: &Path) -> Self {
        self.manifest.input = Some(SchemaRef {
            id: id.to_owned(),
            schema: schema.to_path_buf(),
        });
        self
    }

    /// `[output]`: contract `id`, checked against the schema file `schema`.
    pub fn output(mut self, id: &str, schema: &Path) -> Self {
        self.manifest.output = Some(SchemaRef {
            id: id.to_owned(),
            schema: schema.to_path_buf(),
        });
        self
    }

    /// `[durable]`.
    pub fn durable(mut self, spec: DurableSpec) -> Self {
        self.manifest.durable = Some(spec);
        self
    }

    /// One `[[subscribe]]` entry more.
    pub fn subscribe(mut self, subscription: cbs_host::events::Subscribe) -> Self {
        self.manifest.subscribe.push(subscription);
        self
    }

    /// `[capabilities]`, from what is set so far.
    pub fn capabilities(mut self, set: impl FnOnce(&mut Capabilities)) -> Self {
        set(&mut self.manifest.capabilities);
        self
    }

    /// `[limits]`, from the defaults.
    pub fn limits(mut self, set: impl FnOnce(&mut Limits)) -> Self {
        set(&mut self.manifest.limits);
        self
    }

    /// `[scale]`.
    pub fn scale(mut self, scale: cbs_host::manifest::Scale) -> Self {
        self.manifest.scale = scale;
        self
    }

    /// `[instances]`.
    pub fn instances(mut self, policy: Policy, max_messages: u64) -> Self {
        self.manifest.instances.policy = policy;
        self.manifest.instances.max_messages = max_messages;
        self
    }

    /// `[policy."<target>"]`, from the defaults.
    pub fn policy(mut self, target: &str, set: impl FnOnce(&mut CallPolicy)) -> Self {
        set(self.manifest.policy.entry(target.to_owned()).or_default());
        self
    }

    /// `[chaos]`.
    pub fn chaos(mut self, chaos: ChaosSpec) -> Self {
        self.manifest.chaos = Some(chaos);
        self
    }

    /// An entry of `[sidecar] env`.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        let sidecar = self.manifest.sidecar.as_mut().expect("env is for sidecars");
        sidecar.env.insert(key.to_owned(), value.into());
        self
    }

    /// One more `[[http]]` route.
    pub fn http(mut self, route: cbs_host::http::HttpRoute) -> Self {
        self.manifest.http.push(route);
        self
    }

    /// `[python] workers`.
    pub fn workers(mut self, workers: u32) -> Self {
        let python = self
            .manifest
            .python
            .as_mut()
            .expect("workers are for Python cells");
        python.workers = workers;
        self
    }

    /// `[python] venv`.
    pub fn venv(mut self, venv: impl Into<PathBuf>) -> Self {
        let python = self
            .manifest
            .python
            .as_mut()
            .expect("venv is for Python cells");
        python.venv = venv.into();
        self
    }

    /// The manifest as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.manifest).expect("a manifest serializes")
    }

    /// Writes `cell.toml` into `dir`.
    pub fn write_to(&self, dir: &Path) {
        std::fs::write(dir.join(cbs_host::manifest::FILE_NAME), self.to_toml()).unwrap();
    }

    /// A new temporary cell folder holding this `cell.toml`.
    pub fn write(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        self.write_to(dir.path());
        dir
    }
}

/// The reference sidecar's folder.
pub fn reference_dir() -> PathBuf {
    repo().join("tests/sidecars/reference")
}
