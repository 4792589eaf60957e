//! `cbs ps`: the hosts on the bus and the cells each serves.

use std::process::ExitCode;
use std::time::Duration;

use cbs_host::discovery;
use clap::Args;

use crate::args::NatsArgs;
use crate::table::{print_listing, Table};

/// List the hosts on the bus and the cells each serves, with counts.
#[derive(Args)]
pub struct PsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Stop gathering replies after this long without a new one, in ms.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    wait_ms: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: PsArgs) -> anyhow::Result<ExitCode> {
    let bus = args.nats.connect_client().await?;
    let quiet = Duration::from_millis(args.wait_ms);
    let hosts = discovery::list(bus.client(), quiet, quiet * 10).await?;
    print_listing(
        args.json,
        &hosts,
        |host| host,
        "no CBS hosts on this bus",
        table,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn table(hosts: &[discovery::HostView]) -> Table {
    let mut table = Table::new([
        "HOST",
        "CELL",
        "VERSION",
        "INSTANCES",
        "REQUESTS",
        "ERRORS",
        "AVG µs",
        "DURABLE",
    ]);
    table.align_right(&[3, 4, 5, 6]);
    for host in hosts {
        if host.cells.is_empty() {
            table.row([host.host.as_str(), "(no cells)", "", "", "", "", "", ""]);
        }
        for cell in &host.cells {
            let durable = cell.durable.map_or(String::new(), |d| {
                format!(
                    "lag {}, redelivered {}, dead {}",
                    d.lag, d.redelivered, d.dead_lettered
                )
            });
            let recording = if cell.recording.is_some() {
                " (recording)"
            } else {
                ""
            };
            table.row([
                host.host.clone(),
                cell.id.clone(),
                format!("{}{recording}", cell.version),
                cell.instances.to_string(),
                cell.requests.to_string(),
                cell.errors.to_string(),
                cell.average_processing_us.to_string(),
                durable,
            ]);
            // A canary serving next to it: its own row, its own counters.
            if let Some(canary) = &cell.canary {
                table.row([
                    host.host.clone(),
                    cell.id.clone(),
                    format!("{} (canary, {} %)", canary.version, canary.share / 100),
                    String::new(),
                    canary.requests.to_string(),
                    canary.errors.to_string(),
                    String::new(),
                    String::new(),
                ]);
            }
            if let Some(warm) = &cell.warm {
                let empty = || String::new();
                table.row([
                    host.host.clone(),
                    cell.id.clone(),
                    format!("{warm} (warm, no traffic)"),
                    empty(),
                    empty(),
                    empty(),
                    empty(),
                    empty(),
                ]);
            }
        }
    }
    table
}
