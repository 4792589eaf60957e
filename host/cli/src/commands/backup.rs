//! `cbs backup`: the lattice's streams into one file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::args::NatsArgs;

/// Write the lattice to one file: desired state, placements, what hosts
/// served, consumers' expectations, domains, the policy, the bundles, the
/// audit trail and every cell's state bucket — with --streams also the
/// durable, event and saga streams and the dead letters — each stream up
/// to its last message when its copy starts, with a manifest and sha256
/// sums. Restartable: streams finished are kept in FILE.parts/ until the
/// file is written, and a second run copies only the rest.
#[derive(Args)]
pub struct BackupArgs {
    /// The file to write (a tar; `cbs restore FILE` reads it).
    file: PathBuf,
    /// Also every other stream: durable cells' and events' streams, sagas,
    /// recordings and dead letters (not hosts' live status and heartbeats).
    #[arg(long)]
    streams: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let bus = args.nats.connect_client().await?;
    let mut progress = |line: &str| eprintln!("{line}");
    let manifest =
        cbs_host::backup::dump::backup(bus.client(), &args.file, args.streams, &mut progress)
            .await?;
    let messages: u64 = manifest.parts.iter().map(|p| p.messages).sum();
    let bytes: u64 = manifest.parts.iter().map(|p| p.bytes).sum();
    println!(
        "backed up {} stream(s), {messages} message(s), {bytes} bytes, to {}",
        manifest.parts.len(),
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}
