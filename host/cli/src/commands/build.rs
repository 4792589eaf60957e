//! `cbs build`: cell folder → compiled → checked → bundle.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cbs_host::runtime::python::venvs::VenvCache;
use cbs_host::runtime::wasm::{Compiler, ComponentCache, EngineOptions, WasmRuntime};
use clap::Args;

/// Compile a cell, check it, and write a bundle (.cbs) of its files with
/// sha256 digests: cell.toml, schemas, and the component (wasm), the
/// handler's .py files and requirements lock (native Python), or the
/// program and `[bundle] files` (sidecar). Only the cell folder's own
/// files are packed: a symbolic link leading out of it fails the build.
///
/// A wasm cell is checked against wit/ and its schemas; a process cell is
/// started from its bundle as a host would (a Python cell's venv is built
/// from its lock, once per machine).
///
/// Example: `cbs build cells/logic.greet -o greet.cbs --sign cbs.key`
#[derive(Args)]
pub struct BuildArgs {
    /// The cell folder (with cell.toml).
    #[arg(default_value = ".")]
    cell_dir: PathBuf,
    /// Bundle to write [default: ./<cell-id>-<version>.cbs].
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Sign the bundle with this key (from `cbs keygen`).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// Folder of precompiled components, and of Python venvs in its
    /// `python-venvs` [default: $CBS_CACHE_DIR, else ~/.cache/cbs/components].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The largest memory the hosts it is built for grant a cell, in MiB
    /// (as `cbs-host run --max-memory-mb`): the check loads the component
    /// within it.
    #[arg(long, value_name = "MIB", default_value_t = EngineOptions::default().max_memory_mb)]
    max_memory_mb: u32,
}

pub async fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let venvs = Arc::new(VenvCache::new(match &args.cache_dir {
        Some(dir) => dir.join("python-venvs"),
        None => VenvCache::default_dir(),
    }));
    let cache = args.cache_dir.or_else(ComponentCache::default_dir);
    // Building fills the cache with the optimized code the hosts load.
    let engine = EngineOptions {
        max_memory_mb: args.max_memory_mb,
        compiler: Compiler::Optimized,
        ..EngineOptions::default()
    };
    let runtime = Arc::new(WasmRuntime::new(&engine, cache)?);
    let built = crate::build::build(
        &args.cell_dir,
        args.output.as_deref(),
        args.sign.as_deref(),
        runtime,
        venvs,
    )
    .await?;
    let m = &built.bundle.manifest;
    println!(
        "built {} ({} {}, {} files, {} KiB)\ndigest {}{}",
        built.path.display(),
        m.cell,
        m.version,
        m.files.len(),
        built.size.div_ceil(1024),
        built.bundle.digest(),
        built
            .bundle
            .signer()
            .map_or_else(|| "\nunsigned".to_owned(), |k| format!("\nsigned by {k}"))
    );
    Ok(ExitCode::SUCCESS)
}
