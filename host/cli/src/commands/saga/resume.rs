//! `cbs saga retry ID` and `cbs saga cancel ID`.

use std::process::ExitCode;

use cbs_host::saga::worker;
use clap::Args;

use super::Sagas;
use crate::args::NatsArgs;

#[derive(Args)]
pub struct ResumeArgs {
    /// The instance id.
    id: String,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: ResumeArgs, cancel: bool) -> anyhow::Result<ExitCode> {
    let sagas = Sagas::open(&args.nats).await?;
    let instance = worker::resume(&sagas.log, &sagas.journal, &args.id, cancel).await?;
    println!(
        "saga {}: {} asked; a host running sagas takes it on (see `cbs saga show {}`)",
        instance.id,
        if cancel { "cancel" } else { "retry" },
        instance.id
    );
    Ok(ExitCode::SUCCESS)
}
