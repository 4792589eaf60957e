//! `cbs pull`: a bundle from an OCI registry, verified.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use cbs_host::bundle::Bundle;
use cbs_host::registry::{self, Reference};
use clap::Args;

use crate::args::{trust_of, RegistryArgs};

/// Pull a cell from an OCI registry into a bundle file, every layer checked
/// against its digest and every file against the bundle's manifest.
///
/// Without a tag, the highest version the repository has.
///
/// Example: `cbs pull localhost:5000/cells/logic.greet:0.1.0 --insecure`
#[derive(Args)]
pub struct PullArgs {
    /// HOST[:PORT]/REPOSITORY[:TAG|@DIGEST].
    reference: String,
    /// Where to write the bundle [default: CELL-VERSION.cbs here].
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Refuse the bundle unless signed by this key (a .pub file or its
    /// hex); repeatable.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    let trust = trust_of(&args.trust)?;
    let started = Instant::now();
    let (pinned, bundle) = pull_verified(&args.registry, &reference, &trust).await?;
    let output = args.output.unwrap_or_else(|| {
        PathBuf::from(format!(
            "{}-{}.{}",
            bundle.manifest.cell,
            bundle.manifest.version,
            cbs_host::bundle::EXTENSION
        ))
    });
    std::fs::write(&output, bundle.to_bytes()?)
        .with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!(
        "pulled {pinned} in {} ms: {} {} ({})",
        started.elapsed().as_millis(),
        bundle.manifest.cell,
        bundle.manifest.version,
        bundle.digest()
    );
    println!("{}", output.display());
    Ok(ExitCode::SUCCESS)
}

/// The bundle at `reference`, its layers, files and (with keys) its
/// signature checked; with the reference pinned to a digest.
pub async fn pull_verified(
    registry_args: &RegistryArgs,
    reference: &Reference,
    trust: &cbs_host::bundle::Trust,
) -> anyhow::Result<(Reference, Bundle)> {
    let client = registry_args.client(&reference.registry).await?;
    let (pinned, bundle) = registry::pull(&client, reference)
        .await
        .with_context(|| format!("cannot pull {reference}"))?;
    bundle.verify(trust)?;
    Ok((pinned, bundle))
}
