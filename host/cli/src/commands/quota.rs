//! `cbs quota show`: each tenant's use against its quota.

use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::policy::quota::usage;
use cbs_host::policy::store::PolicyStore;
use clap::{Args, Subcommand};

use crate::args::NatsArgs;
use crate::table::Table;

/// Tenants' quotas (the lattice policy's [tenants.<name>]).
#[derive(Subcommand)]
pub enum QuotaCommand {
    /// Each tenant's cells, replicas and memory against its quota, and its
    /// request rate per host; OVER marks a tenant past one.
    Show(ShowArgs),
}

#[derive(Args)]
pub struct ShowArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(command: QuotaCommand) -> anyhow::Result<ExitCode> {
    let QuotaCommand::Show(args) = command;
    let (bus, store) = args.nats.open_store().await?;
    let stored = PolicyStore::open(bus.client())
        .await?
        .get()
        .await?
        .context(
            "the lattice has no policy, so no quotas: `cbs policy set` one with [tenants.<name>]",
        )?;
    let policy = stored
        .policy
        .map_err(anyhow::Error::msg)?
        .verify_signature()?;
    let deployed = cbs_host::deploy::rollout::deployed(&store.all_desired().await?);
    let used = usage(&policy, &deployed);
    if args.json {
        let rows: Vec<_> = used
            .iter()
            .map(|u| serde_json::json!({"use": u, "quota": u.rules, "over": u.over()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new([
        "TENANT",
        "CELLS",
        "REPLICAS",
        "MEMORY MIB",
        "RATE/S/HOST",
        "STATE",
    ]);
    let of = |used: u64, max: Option<u64>| match max {
        Some(max) => format!("{used}/{max}"),
        None => used.to_string(),
    };
    for u in &used {
        let r = &u.rules;
        let rate = r.rate.map_or("-".to_owned(), |rate| format!("{rate}"));
        let state = if u.over().is_empty() { "ok" } else { "OVER" };
        table.row([
            u.tenant.clone(),
            of(u.cells, r.max_cells.map(u64::from)),
            of(u.replicas, r.max_replicas.map(u64::from)),
            of(u.memory_mb, r.max_memory_mb),
            rate,
            state.to_owned(),
        ]);
    }
    print!("{table}");
    for line in used.iter().flat_map(|u| u.over()) {
        println!("over: {line}");
    }
    Ok(ExitCode::SUCCESS)
}
