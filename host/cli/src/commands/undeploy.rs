//! `cbs undeploy`: watching hosts stop serving a cell.

use std::process::ExitCode;
use std::time::Duration;

use cbs_host::audit::{self, Action, Change};
use cbs_host::deploy::deps::Lattice;
use cbs_host::deploy::rollout;
use cbs_host::manifest::check_cell_id;
use cbs_host::manifest::Call;
use clap::Args;

use crate::args::NatsArgs;

/// Stop serving a deployed cell on every watching host, and wait until
/// each host that served it has drained it and stopped.
///
/// Deployed cells that call it are named; one that declared the versions
/// it works with (`calls = ["CELL@^1"]`) would lose what it needs, so the
/// undeploy is refused unless --force.
#[derive(Args)]
pub struct UndeployArgs {
    /// The cell id, e.g. logic.greet.
    cell_id: String,
    /// How long to wait for the hosts to stop it, in ms (0: do not wait).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    wait_ms: u64,
    /// Undeploy even though deployed cells declare they need it.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: UndeployArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let (bus, store) = args.nats.open_store().await?;
    let wait = Duration::from_millis(args.wait_ms);
    let dependents = Lattice::read(&store).await?.dependents(&args.cell_id);
    let (needing, calling): (Vec<_>, Vec<_>) = dependents
        .iter()
        .partition(|(_, call)| call.range.is_some());
    let names = |list: &[&(String, Call)]| {
        let names: Vec<String> = list
            .iter()
            .map(|(c, call)| format!("{c} ({call})"))
            .collect();
        names.join(", ")
    };
    if !needing.is_empty() && !args.force {
        eprintln!(
            "error: {} is needed by deployed cells: {}; undeploy them first, or --force",
            args.cell_id,
            names(&needing)
        );
        return Ok(ExitCode::FAILURE);
    }
    if !needing.is_empty() || !calling.is_empty() {
        let all: Vec<&(String, Call)> = dependents.iter().collect();
        eprintln!(
            "warning: deployed cells still call {}: {}",
            args.cell_id,
            names(&all)
        );
    }
    let Some(stopped) = rollout::undeploy(&store, &args.cell_id, wait).await? else {
        eprintln!(
            "error: cell {} is not deployed (see `cbs ls`)",
            args.cell_id
        );
        return Ok(ExitCode::FAILURE);
    };
    let detail = rollout::stopped_summary(&stopped);
    let change = Change {
        action: Action::Undeploy,
        cell: &args.cell_id,
        version: Some(&stopped.release.version),
        digest: Some(&stopped.release.digest),
        key: None,
        proof: None,
        from: None,
        detail: detail.clone(),
        contract: None,
    };
    audit::record(bus.client(), args.nats.options("").as_ref(), change).await;
    println!("{} undeployed: {detail}", args.cell_id);
    let confirmed = args.wait_ms == 0 || stopped.pending.is_empty();
    Ok(if confirmed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
