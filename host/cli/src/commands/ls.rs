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
    let mut table = Table::new([
        "CELL", "DESIRED", "REPLICAS", "HOST", "RUNNING", "STATE", "NOTE",
    ]);
    for cell in &listing {
        let desired = cell.desired.as_deref().unwrap_or("(none)");
        let replicas = match cell.replicas {
            Some(n) => format!("{}/{n} placed", cell.placed.len()),
            None => "every host".to_owned(),
        };
        let unplaced = cell.unplaced.clone().unwrap_or_default();
        if cell.hosts.is_empty() {
            let row = [
                cell.cell.as_str(),
                desired,
                &replicas,
                "(no host reports)",
                "",
                "",
                &unplaced,
            ];
            table.row(row);
        }
        for (i, h) in cell.hosts.iter().enumerate() {
            let running = h.serving.as_deref().unwrap_or("-");
            let state = if h.in_sync { "ok" } else { "behind" };
            let mut note = h.error.clone().unwrap_or_default();
            if !h.online {
                note = format!("offline {note}");
            }
            if !h.placed {
                note = format!("not placed {note}");
            }
            if i == 0 && !unplaced.is_empty() {
                note = format!("{unplaced} {note}");
            }
            table.row([
                cell.cell.as_str(),
                desired,
                &replicas,
                h.host.as_str(),
                running,
                state,
                note.trim(),
            ]);
        }
    }
    print!("{table}");
    Ok(ExitCode::SUCCESS)
}
