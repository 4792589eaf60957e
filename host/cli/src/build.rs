//! `cbs build`: cell folder → component → checked → bundle.
//!
//! A Rust cell (a `Cargo.toml` next to `cell.toml`) is compiled with
//! `cargo build --release --target wasm32-wasip2`, cargo's own progress on
//! stderr; a Python cell (`lang = "python"`) with componentize-py through
//! `scripts/build-python-cell`; a cell without either ships the component
//! it names. The component
//! is then loaded the way a host loads it — it must implement the cell
//! world of `wit/`, its schemas must compile and `describe()` must answer —
//! before the bundle is written.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context as _};

use cbs_host::body::Body;
use cbs_host::bundle::{Bundle, KeyPair};
use cbs_host::bus::local::LocalBus;
use cbs_host::manifest::{CellSpec, Lang, RuntimeKind};
use cbs_host::runtime::wasm::WasmRuntime;

/// What `cbs build` produced.
pub struct Built {
    pub path: PathBuf,
    pub bundle: Bundle,
    pub size: usize,
}

/// Builds the cell in `dir` into a bundle at `out` (default
/// `<id>-<version>.cbs` in the current folder), signed with `sign` if given.
pub async fn build(
    dir: &Path,
    out: Option<&Path>,
    sign: Option<&Path>,
    runtime: Arc<WasmRuntime>,
) -> anyhow::Result<Built> {
    let key = sign.map(KeyPair::read).transpose()?;
    let spec = CellSpec::from_dir(dir)?;
    let m = &spec.manifest;
    if m.runtime != RuntimeKind::Wasm {
        bail!(
            "cell {} has runtime {:?}: only wasm cells can be bundled so far",
            m.id,
            m.runtime
        );
    }
    step(1, &format!("compiling {} {}", m.id, m.version));
    if m.lang == Some(Lang::Python) {
        componentize_py(dir)?;
    } else if dir.join("Cargo.toml").is_file() {
        let wasm = cargo_build(dir)?;
        let target = spec.component_path()?;
        std::fs::copy(&wasm, &target)
            .with_context(|| format!("cannot copy {} to {}", wasm.display(), target.display()))?;
    } else {
        eprintln!("      no Cargo.toml: bundling the component cell.toml names as it is");
    }
    step(2, "checking the component against wit/ and the schemas");
    let body = Body::new(Arc::new(LocalBus::new()), runtime);
    let cell = body.load(dir).await?;
    let info = cell.info();
    if info.id != m.id || info.version != m.version {
        eprintln!(
            "      warning: the component describes itself as {} {}, cell.toml says {} {} (cell.toml wins)",
            info.id, info.version, m.id, m.version
        );
    }
    step(3, "writing the bundle");
    let mut bundle = Bundle::pack(&spec)?;
    if let Some(key) = &key {
        bundle.sign(key);
    }
    let path = out.map_or_else(
        || {
            PathBuf::from(format!(
                "{}-{}.{}",
                m.id,
                m.version,
                cbs_host::bundle::EXTENSION
            ))
        },
        Path::to_path_buf,
    );
    let bytes = bundle.to_bytes()?;
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Built {
        path,
        size: bytes.len(),
        bundle,
    })
}

fn step(n: u32, what: &str) {
    eprintln!("[{n}/3] {what}");
}

/// Runs cargo for the cell and returns the `.wasm` it produced.
fn cargo_build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml").canonicalize()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "cannot run {}: install Rust from https://rustup.rs",
                cargo.to_string_lossy()
            )
        })?;
    let mut wasm = None;
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["manifest_path"].as_str() == manifest.to_str()
        {
            wasm = message["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
                .or(wasm);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "cargo build failed for {} (see its output above); if the wasm32-wasip2 target is missing: \
             `rustup target add wasm32-wasip2`",
            manifest.display()
        );
    }
    wasm.with_context(|| {
        format!(
            "cargo built no .wasm for {}: the crate needs `crate-type = [\"cdylib\"]` under [lib]",
            manifest.display()
        )
    })
}

/// Builds a Python component with the source tree's `scripts/build-python-cell`
/// and the project venv (`make setup-python`) that holds componentize-py.
fn componentize_py(dir: &Path) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("scripts/build-python-cell");
    let python = root.join(".venv/bin/python");
    if !script.is_file() || !python.is_file() {
        bail!(
            "building a Python component needs componentize-py from the CBS source tree's venv: \
             run `make setup-python` in {}",
            root.display()
        );
    }
    let status = Command::new(&python)
        .arg(&script)
        .arg(dir)
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!(
            "componentize-py failed for {} (see its output above)",
            dir.display()
        );
    }
    Ok(())
}
