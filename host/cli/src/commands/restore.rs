//! `cbs restore`: a backup onto a NATS server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::args::NatsArgs;

/// Rebuild the lattice a backup holds on a NATS server (a fresh one):
/// every part is checked against the manifest first, and a damaged one is
/// named before anything is written; then each stream is created and its
/// messages published again in order — bundles first, the desired state
/// last, so watching hosts converge to the same cells with the same state.
/// Restartable: FILE.restored records how far each stream got, and a
/// second run goes on from there.
#[derive(Args)]
pub struct RestoreArgs {
    /// The backup (from `cbs backup`).
    file: PathBuf,
    /// Publish onto streams that already hold messages (they are kept).
    #[arg(long)]
    force: bool,
    /// Only check the file against its manifest.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let manifest = cbs_host::backup::load::verify(&args.file)?;
    let messages: u64 = manifest.parts.iter().map(|p| p.messages).sum();
    eprintln!(
        "{}: {} stream(s), {messages} message(s), taken from {}, every part intact",
        args.file.display(),
        manifest.parts.len(),
        manifest.source
    );
    if args.check {
        return Ok(ExitCode::SUCCESS);
    }
    let bus = args.nats.connect_client().await?;
    let mut progress = |line: &str| eprintln!("{line}");
    let restored = cbs_host::backup::load::restore(
        bus.client(),
        &args.file,
        &manifest,
        args.force,
        &mut progress,
    )
    .await?;
    println!(
        "restored {} stream(s), {} message(s)",
        restored.streams, restored.messages
    );
    Ok(ExitCode::SUCCESS)
}
