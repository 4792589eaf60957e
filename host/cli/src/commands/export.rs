//! `cbs export --domain NAME`: the spec of what a domain runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::domain::apply;
use cbs_host::domain::state::Domains;
use clap::Args;

use crate::args::NatsArgs;

/// Write the spec of what a domain runs now — each cell's release as
/// desired (a rollout since the apply included), its placement, the
/// domain's exports and uses — with its bundles in DIR/bundles, so that
/// `cbs apply DIR/domain.yaml` changes nothing.
///
/// Example: `cbs export --domain orders -o orders-now`
#[derive(Args)]
pub struct ExportArgs {
    /// The domain.
    #[arg(long, value_name = "NAME")]
    domain: String,
    /// The folder to write domain.yaml and bundles/ into.
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    output: PathBuf,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    cbs_host::domain::spec::check_name(&args.domain)?;
    let (bus, store) = args.nats.open_store().await?;
    let domains = Domains::open(bus.client()).await?;
    let spec = apply::export(&store, &domains, &args.domain, &args.output).await?;
    let file = args.output.join("domain.yaml");
    std::fs::write(&file, spec.to_yaml()?)
        .with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "wrote {} ({} cells) and their bundles",
        file.display(),
        spec.cells.len()
    );
    Ok(ExitCode::SUCCESS)
}
