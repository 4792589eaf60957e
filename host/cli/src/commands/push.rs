//! `cbs push`: a bundle to an OCI registry.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use cbs_host::bundle::Bundle;
use cbs_host::registry::{self, Reference};
use clap::Args;

use crate::args::RegistryArgs;

/// Push a bundle to an OCI registry, tagged with its version (or the tag
/// given).
///
/// A wasm cell is a standard Wasm artifact (config
/// application/vnd.wasm.config.v0+json, one application/wasm layer), so
/// other Wasm tools pull its component; the rest of the bundle (manifest,
/// signature, cell.toml, schemas) is an artifact that refers to it. A
/// Python or sidecar cell is one artifact of its bundle's files.
///
/// Example: `cbs push logic.greet.cbs localhost:5000/cells/logic.greet --insecure`
#[derive(Args)]
pub struct PushArgs {
    /// The bundle (.cbs), as `cbs build` writes it.
    bundle: PathBuf,
    /// Where: HOST[:PORT]/REPOSITORY[:TAG] [default tag: the cell's version].
    reference: String,
    /// Where the cell's source lives (the org.opencontainers.image.source
    /// annotation), e.g. https://github.com/org/repo.
    #[arg(long, value_name = "URL")]
    source: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(args: PushArgs) -> anyhow::Result<ExitCode> {
    let target = Reference::parse(&args.reference)?;
    let bundle = Bundle::read(&args.bundle)?;
    let size: usize = bundle.files().values().map(Vec::len).sum();
    let client = args.registry.client(&target.registry).await?;
    eprintln!(
        "pushing {} {} ({:.1} MB) to {}",
        bundle.manifest.cell,
        bundle.manifest.version,
        size as f64 / 1e6,
        target.registry
    );
    let started = Instant::now();
    let pushed = registry::push(&client, &bundle, &target, args.source.as_deref())
        .await
        .with_context(|| format!("cannot push to {target}"))?;
    println!("{}", pushed.reference);
    eprintln!(
        "pushed in {} ms{}",
        started.elapsed().as_millis(),
        if bundle.signer().is_some() {
            ", signed"
        } else {
            ", unsigned"
        }
    );
    Ok(ExitCode::SUCCESS)
}
