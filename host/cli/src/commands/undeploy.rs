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
    /// Only stop serving this major of the cell, kept beside its current
    /// release (e.g. 1, or 0_3 for 0.3.x).
    #[arg(long, value_name = "MAJOR")]
    major: Option<String>,
    /// Undeploy even though deployed cells declare they need it.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

/// Stops keeping major `lane` of `cell` beside its current release.
async fn undeploy_major(
    store: &cbs_host::deploy::Store,
    cell: &str,
    lane: &str,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let Some(mut desired) = store.desired(cell).await? else {
        anyhow::bail!("cell {cell} is not deployed (see `cbs ls`)");
    };
    if cbs_host::majors::of_version(&desired.current.version).as_deref() == Some(lane) {
        anyhow::bail!(
            "major {lane} is {cell}'s current release ({}): undeploy the cell, or deploy another major first",
            desired.current.version
        );
    }
    let needing = Lattice::read(store).await?.needing_major(cell, lane);
    if !needing.is_empty() && !force {
        let names: Vec<String> = needing
            .iter()
            .map(|(c, call)| format!("{c} ({call})"))
            .collect();
        eprintln!(
            "error: major {lane} of {cell} is the last a deployed caller can use: {}; undeploy them first, or --force",
            names.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    let Some(dropped) = desired.drop_beside(lane) else {
        anyhow::bail!("{cell} keeps no major {lane} beside its current release");
    };
    store.set_desired(&desired).await?;
    println!(
        "{cell} {}: no longer served beside {}",
        dropped.version, desired.current.version
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run(args: UndeployArgs) -> anyhow::Result<ExitCode> {
    check_cell_id(&args.cell_id)?;
    let (bus, store) = args.nats.open_store().await?;
    let wait = Duration::from_millis(args.wait_ms);
    if let Some(lane) = &args.major {
        return undeploy_major(&store, &args.cell_id, lane, args.force).await;
    }
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
