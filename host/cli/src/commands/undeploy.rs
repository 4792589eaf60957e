//! `cbs undeploy`: watching hosts stop serving a cell.

use std::process::ExitCode;

use cbs_host::audit::{self, Action, Change};
use cbs_host::manifest::check_cell_id;
use clap::Args;

use crate::args::NatsArgs;

/// Stop serving a deployed cell on every watching host.
#[derive(Args)]
pub struct UndeployArgs {
    /// The cell id, e.g. logic.greet.
    cell_id: String,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: UndeployArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let (bus, store) = args.nats.open_store().await?;
    let Some(desired) = store.desired(&args.cell_id).await? else {
        eprintln!(
            "error: cell {} is not deployed (see `cbs ls`)",
            args.cell_id
        );
        return Ok(ExitCode::FAILURE);
    };
    store.remove_desired(&args.cell_id).await?;
    let change = Change {
        action: Action::Undeploy,
        cell: &args.cell_id,
        version: Some(&desired.current.version),
        digest: Some(&desired.current.digest),
        key: None,
        proof: None,
        from: None,
        detail: String::new(),
    };
    audit::record(bus.client(), args.nats.options("").as_ref(), change).await;
    println!(
        "{} undeployed: watching hosts stop serving it",
        args.cell_id
    );
    Ok(ExitCode::SUCCESS)
}
