//! `cbs saga start DOMAIN SAGA [JSON]`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cbs_host::saga::journal::State;
use cbs_host::saga::worker::{self, Catalog, Start};
use clap::Args;

use super::Sagas;
use crate::args::NatsArgs;

#[derive(Args)]
pub struct StartArgs {
    /// The domain (as applied with `cbs apply`).
    domain: String,
    /// The saga, by its name in the domain's spec.
    saga: String,
    /// The saga's input (JSON), given to every step.
    #[arg(default_value = "{}")]
    input: String,
    /// How long to wait for its end, in ms (0: do not wait).
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    wait_ms: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: StartArgs) -> anyhow::Result<ExitCode> {
    let input: serde_json::Value = serde_json::from_str(&args.input)
        .map_err(|e| anyhow::anyhow!("the input is not JSON: {e}"))?;
    let sagas = Sagas::open(&args.nats).await?;
    let domains = cbs_host::domain::state::Domains::open(&sagas.client).await?;
    if domains.saga(&args.domain, &args.saga).await?.is_none() {
        anyhow::bail!(
            "domain {} has no saga {} (see its spec's `sagas:`, applied with cbs apply)",
            args.domain,
            args.saga
        );
    }
    let start = Start {
        id: cbs_host::envelope::new_id(),
        domain: args.domain.clone(),
        saga: args.saga.clone(),
        input,
    };
    // The stream, when no host that runs sagas has made it yet: the start
    // waits there for one.
    worker::open(&sagas.log).await?;
    worker::start(&sagas.log, &start).await?;
    eprintln!("started saga {} ({}/{})", start.id, args.domain, args.saga);
    if args.wait_ms == 0 {
        println!("{}", start.id);
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    loop {
        let now = sagas.journal.get(&start.id).await?;
        if let Some(i) = now.filter(|i| i.state.is_final() || i.state == State::Stuck) {
            super::print(&i);
            return Ok(if i.state == State::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "saga {} has not ended within {} ms (is a host running sagas? `cbs-host run --watch --sagas`); see `cbs saga show {}`",
                start.id,
                args.wait_ms,
                start.id
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
