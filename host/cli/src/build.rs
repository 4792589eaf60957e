//! `cbs build`: cell folder → compiled → checked → bundle.
//!
//! - A Rust cell (a `Cargo.toml` next to `cell.toml`) is compiled with
//!   `cargo build --release --target wasm32-wasip2`, cargo's own progress
//!   on stderr; a Python component (`lang = "python"`) with componentize-py
//!   through `scripts/build-python-cell`; a cell without either ships the
//!   component it names. The component is then loaded the way a host loads
//!   it — it must implement the cell world of `wit/`, its schemas must
//!   compile and `describe()` must answer — before the bundle is written.
//! - A process cell (sidecar, native Python) is packed first (a Dart
//!   sidecar is compiled with `dart compile exe` before), then started from
//!   its bundle in a scratch host exactly as a host would start it: the
//!   venv of its lock is built, the handshake must complete.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use cbs_host::body::Sources;
use cbs_host::bundle::{bundled_program, Bundle, KeyPair};
use cbs_host::host::Host;
use cbs_host::manifest::{CellSpec, Lang, RuntimeKind};
use cbs_host::runtime::python::venvs::VenvCache;
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
    venvs: Arc<VenvCache>,
) -> anyhow::Result<Built> {
    let key = sign.map(KeyPair::read).transpose()?;
    let spec = CellSpec::from_dir(dir)?;
    let m = &spec.manifest;
    step(1, &format!("compiling {} {}", m.id, m.version));
    let mut bundle = match m.runtime {
        RuntimeKind::Wasm => {
            compile_component(dir, &spec)?;
            step(2, "checking the component against wit/ and the schemas");
            check_component(dir, &spec, runtime).await?;
            Bundle::pack(&spec)?
        }
        RuntimeKind::Sidecar | RuntimeKind::Python => {
            compile_process(dir, &spec)?;
            let bundle = Bundle::pack(&spec)?;
            step(2, "starting the cell from its bundle, as a host would");
            check_process(&bundle, runtime, venvs).await?;
            bundle
        }
    };
    step(3, "writing the bundle");
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

/// A Rust cell with cargo, a Python component with componentize-py, else
/// the component as it is.
fn compile_component(dir: &Path, spec: &CellSpec) -> anyhow::Result<()> {
    if spec.manifest.lang == Some(Lang::Python) {
        componentize_py(dir)
    } else if dir.join("Cargo.toml").is_file() {
        let wasm = cargo_build(dir)?;
        let target = spec.component_path()?;
        std::fs::copy(&wasm, &target)
            .with_context(|| format!("cannot copy {} to {}", wasm.display(), target.display()))?;
        Ok(())
    } else {
        eprintln!("      no Cargo.toml: bundling the component cell.toml names as it is");
        Ok(())
    }
}

/// Loads the component the way a host does.
async fn check_component(
    dir: &Path,
    spec: &CellSpec,
    runtime: Arc<WasmRuntime>,
) -> anyhow::Result<()> {
    let m = &spec.manifest;
    let host = Host::builder().runtime(runtime).start().await?;
    let cell = host.body().load(dir).await?;
    let info = cell.info();
    if info.id != m.id || info.version != m.version {
        eprintln!(
            "      warning: the component describes itself as {} {}, cell.toml says {} {} (cell.toml wins)",
            info.id, info.version, m.id, m.version
        );
    }
    Ok(())
}

/// A Dart sidecar (a `pubspec.yaml` next to cell.toml) with `dart compile
/// exe` into its program; other process cells ship their files as they are.
fn compile_process(dir: &Path, spec: &CellSpec) -> anyhow::Result<()> {
    match bundled_program(&spec.manifest) {
        Some(program) if dir.join("pubspec.yaml").is_file() => dart_compile(dir, &program),
        _ => {
            eprintln!("      nothing to compile: bundling the files cell.toml names as they are");
            Ok(())
        }
    }
}

fn dart_compile(dir: &Path, program: &Path) -> anyhow::Result<()> {
    let program = program.to_string_lossy();
    for args in [
        &["pub", "get"][..],
        &["compile", "exe", "bin/main.dart", "-o", &program],
    ] {
        let status = Command::new("dart")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .status()
            .context("cannot run dart: install the Dart SDK (https://dart.dev/get-dart)")?;
        if !status.success() {
            bail!(
                "`dart {}` failed in {} (its error is above)",
                args.join(" "),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Unpacks and starts the bundle in a scratch host — the venv of a Python
/// cell's lock is built (or reused) as a host builds it — then stops it.
/// A bundle for another platform cannot start here and is only checked.
async fn check_process(
    bundle: &Bundle,
    runtime: Arc<WasmRuntime>,
    venvs: Arc<VenvCache>,
) -> anyhow::Result<()> {
    if let Err(e) = bundle.check_platform() {
        eprintln!("      not started here: {e:#}");
        return Ok(());
    }
    let manifest = bundle.cell_manifest()?;
    if manifest.runtime == RuntimeKind::Python {
        eprintln!(
            "      the venv of its lock is built once per machine, in {} \
             (pip's progress with --log-level info)",
            venvs.root().display()
        );
    }
    let scratch = tempfile::tempdir()?;
    let host = Host::builder()
        .runtime(runtime)
        .sources(Sources {
            unpack_dir: scratch.path().join("bundles"),
            process_bundles: true,
            venvs,
            ..Sources::default()
        })
        .data_dir(scratch.path())
        .start()
        .await?;
    let cell = host.body().load_bundle(bundle).await?;
    cbs_host::body::retire(cell, Duration::from_secs(5)).await;
    Ok(())
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
