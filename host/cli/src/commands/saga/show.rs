//! `cbs saga show ID`.

use std::process::ExitCode;

use clap::Args;

use super::Sagas;
use crate::args::NatsArgs;

#[derive(Args)]
pub struct ShowArgs {
    /// The instance id (from `cbs saga start` or `ls`).
    id: String,
    /// As JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let sagas = Sagas::open(&args.nats).await?;
    let Some(instance) = sagas.journal.get(&args.id).await? else {
        anyhow::bail!("no saga instance {} (see `cbs saga ls`)", args.id);
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&instance)?);
    } else {
        super::print(&instance);
    }
    Ok(ExitCode::SUCCESS)
}
