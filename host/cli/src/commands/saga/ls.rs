//! `cbs saga ls`.

use std::process::ExitCode;

use clap::Args;

use super::Sagas;
use crate::args::NatsArgs;

#[derive(Args)]
pub struct LsArgs {
    /// Only this domain's.
    #[arg(long)]
    domain: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 1_000)]
    limit: usize,
    /// As JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
    let sagas = Sagas::open(&args.nats).await?;
    let all = sagas.journal.list(args.limit).await?;
    let mine: Vec<_> = all
        .into_iter()
        .filter(|i| args.domain.as_ref().is_none_or(|d| *d == i.domain))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&mine)?);
        return Ok(ExitCode::SUCCESS);
    }
    for i in &mine {
        let done = i
            .steps
            .iter()
            .filter(|s| s.state == cbs_host::saga::journal::StepState::Done)
            .count();
        println!(
            "{}  {}/{}  {:?}  {done}/{} steps done",
            i.id,
            i.domain,
            i.saga.name,
            i.state,
            i.steps.len()
        );
    }
    if mine.is_empty() {
        println!("no saga instances");
    }
    Ok(ExitCode::SUCCESS)
}
