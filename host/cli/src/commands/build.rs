//! `cbs build`: cell folder → component → checked → bundle.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cbs_host::runtime::wasm::{ComponentCache, EngineOptions, WasmRuntime};
use clap::Args;

/// Compile a cell, check it against wit/ and its schemas, and write a
/// bundle (.cbs): cell.toml, component and schemas with sha256 digests.
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
    /// Folder of precompiled components [default: $CBS_CACHE_DIR, else
    /// ~/.cache/cbs/components].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

pub async fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let cache = args.cache_dir.or_else(ComponentCache::default_dir);
    let runtime = Arc::new(WasmRuntime::new(&EngineOptions::default(), cache)?);
    let built = crate::build::build(
        &args.cell_dir,
        args.output.as_deref(),
        args.sign.as_deref(),
        runtime,
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
