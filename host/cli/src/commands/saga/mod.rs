//! `cbs saga`: a domain's sagas, one file per subcommand: `start`, `ls`,
//! `show`, and `retry`/`cancel` (`resume`).

mod ls;
mod resume;
mod show;
mod start;

use std::process::ExitCode;

use cbs_host::durable::JetStreamLog;
use cbs_host::saga::journal::Journal;
use cbs_host::state::jetstream::JetStreamState;
use clap::Subcommand;

use crate::args::NatsArgs;

/// A domain's sagas (declared under `sagas:` in its spec, run by hosts
/// started with `cbs-host run --watch --sagas`).
#[derive(Subcommand)]
pub enum SagaCommand {
    /// Start a saga of a domain with an input; waits for its end.
    Start(start::StartArgs),
    /// The saga instances: state, steps done, when.
    Ls(ls::LsArgs),
    /// One instance: each step's state, output or error, and its events.
    Show(show::ShowArgs),
    /// Run the compensations of a stuck instance again.
    Retry(resume::ResumeArgs),
    /// Stop an instance before its next step; its completed steps are
    /// compensated.
    Cancel(resume::ResumeArgs),
}

pub async fn run(command: SagaCommand) -> anyhow::Result<ExitCode> {
    match command {
        SagaCommand::Start(args) => start::run(args).await,
        SagaCommand::Ls(args) => ls::run(args).await,
        SagaCommand::Show(args) => show::run(args).await,
        SagaCommand::Retry(args) => resume::run(args, false).await,
        SagaCommand::Cancel(args) => resume::run(args, true).await,
    }
}

/// The lattice's saga stream and journal.
struct Sagas {
    log: JetStreamLog,
    journal: Journal,
    client: async_nats::Client,
}

impl Sagas {
    async fn open(nats: &NatsArgs) -> anyhow::Result<Self> {
        let bus = nats.connect_client().await?;
        let js = async_nats::jetstream::new(bus.client().clone());
        let journal = Journal::open(&JetStreamState::new(js.clone())).await?;
        Ok(Self {
            log: JetStreamLog::new(js),
            journal,
            client: bus.client().clone(),
        })
    }
}

/// An instance in a few lines: state, then its events.
fn print(instance: &cbs_host::saga::journal::Instance) {
    println!(
        "saga {} {}/{} (revision {}): {:?}",
        instance.id, instance.domain, instance.saga.name, instance.revision, instance.state
    );
    for step in &instance.steps {
        let what = step
            .error
            .as_ref()
            .map(|e| format!(" ({}: {})", e.code, e.message))
            .unwrap_or_default();
        println!(
            "  {:<20} {:?}, {} call(s){what}",
            step.name, step.state, step.attempts
        );
    }
    for event in &instance.events {
        println!("  - {event}");
    }
}
