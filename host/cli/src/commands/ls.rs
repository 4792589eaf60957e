//! `cbs ls`: deployed cells, the desired release and what each host serves.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use cbs_host::deploy::{State, Store};
use clap::Args;
use serde::Serialize;

use crate::args::NatsArgs;
use crate::table::{print_listing, Table};

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
    let listing = list(bus.client(), &store).await?;
    print_listing(
        args.json,
        &listing,
        |cell| cell,
        "nothing deployed (deploy with `cbs deploy BUNDLE`)",
        table,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn table(listing: &[Listing]) -> Table {
    let mut table = Table::new([
        "CELL", "DESIRED", "REPLICAS", "HOST", "RUNNING", "STATE", "NOTE",
    ]);
    for cell in listing {
        let desired = cell.desired.as_deref().unwrap_or("(none)");
        let replicas = match cell.replicas {
            Some(n) => format!("{}/{n} placed", cell.placed.len()),
            None => "every host".to_owned(),
        };
        let beside =
            (!cell.beside.is_empty()).then(|| format!("beside it: {}", cell.beside.join(", ")));
        let unplaced = [cell.unplaced.clone(), cell.canary.clone(), beside]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
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
    table
}

/// One row of `cbs ls`: a cell's desired release and what each host reports.
#[derive(Debug, Serialize)]
struct Listing {
    cell: String,
    desired: Option<String>,
    digest: Option<String>,
    /// Replicas wanted (none: every watching host).
    replicas: Option<u32>,
    /// Hosts the placer chose, and why some replicas have none.
    placed: Vec<String>,
    unplaced: Option<String>,
    /// A canary running now, or how the last one ended.
    canary: Option<String>,
    #[serde(skip)]
    canary_digest: Option<String>,
    /// Older majors kept serving beside the desired release (ADR 31).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    beside: Vec<String>,
    hosts: Vec<HostReport>,
}

#[derive(Debug, Serialize)]
struct HostReport {
    host: String,
    state: State,
    version: String,
    serving: Option<String>,
    error: Option<String>,
    /// Whether the host answered discovery just now.
    online: bool,
    in_sync: bool,
    /// Whether the placer chose this host (always, without replicas).
    placed: bool,
}

/// Desired vs running, per cell and host.
async fn list(client: &async_nats::Client, store: &Store) -> anyhow::Result<Vec<Listing>> {
    let online: BTreeSet<String> =
        cbs_host::discovery::hosts(client, Duration::from_millis(250), Duration::from_secs(2))
            .await?
            .into_iter()
            .map(|peer| peer.host)
            .collect();
    let mut cells: BTreeMap<String, Listing> = BTreeMap::new();
    for d in store.all_desired().await? {
        cells.insert(
            d.cell.clone(),
            Listing {
                canary: d.rollout_note(),
                canary_digest: d.canary.as_ref().map(|c| c.release.digest.clone()),
                beside: d.beside.iter().map(|r| r.version.clone()).collect(),
                cell: d.cell,
                desired: Some(d.current.version),
                digest: Some(d.current.digest),
                replicas: d.current.replicas,
                placed: Vec::new(),
                unplaced: None,
                hosts: Vec::new(),
            },
        );
    }
    for p in store.placements().await? {
        if let Some(listing) = cells.get_mut(&p.cell) {
            listing.placed = p.hosts;
            listing.unplaced = p.unplaced;
        }
    }
    for s in store.statuses().await? {
        let listing = cells.entry(s.cell.clone()).or_insert_with(|| Listing {
            cell: s.cell.clone(),
            desired: None,
            digest: None,
            replicas: None,
            placed: Vec::new(),
            unplaced: None,
            canary: None,
            canary_digest: None,
            beside: Vec::new(),
            hosts: Vec::new(),
        });
        let known = [&listing.digest, &listing.canary_digest];
        let in_sync =
            s.state == State::Serving && known.iter().any(|d| d.as_deref() == Some(&s.digest));
        let placed = listing.replicas.is_none() || listing.placed.contains(&s.host);
        listing.hosts.push(HostReport {
            placed,
            online: online.contains(&s.host),
            in_sync,
            host: s.host,
            state: s.state,
            version: s.version,
            serving: s.serving,
            error: s.error,
        });
    }
    let mut cells: Vec<Listing> = cells.into_values().collect();
    for cell in &mut cells {
        cell.hosts.sort_by(|a, b| a.host.cmp(&b.host));
    }
    Ok(cells)
}
