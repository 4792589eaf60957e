//! `cbs ls`: deployed cells, the desired release and what each host serves.

use std::process::ExitCode;

use clap::Args;

use crate::args::NatsArgs;
use crate::rollout;
use crate::table::Table;

/// Deployed cells: the desired release and what each host serves.
#[derive(Args)]
pub struct LsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
    let (bus, store) = args.nats.open_store().await?;
    let listing = rollout::list(bus.client(), &store).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(ExitCode::SUCCESS);
    }
    if listing.is_empty() {
        println!("nothing deployed (deploy with `cbs deploy BUNDLE`)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(["CELL", "DESIRED", "HOST", "RUNNING", "STATE", "NOTE"]);
    for cell in &listing {
        let desired = cell.desired.as_deref().unwrap_or("(none)");
        if cell.hosts.is_empty() {
            table.row([cell.cell.as_str(), desired, "(no host reports)", "", "", ""]);
        }
        for h in &cell.hosts {
            let running = h.serving.as_deref().unwrap_or("-");
            let state = if h.in_sync { "ok" } else { "behind" };
            let mut note = h.error.clone().unwrap_or_default();
            if !h.online {
                note = format!("offline {note}");
            }
            table.row([
                cell.cell.as_str(),
                desired,
                h.host.as_str(),
                running,
                state,
                note.as_str(),
            ]);
        }
    }
    print!("{table}");
    Ok(ExitCode::SUCCESS)
}
