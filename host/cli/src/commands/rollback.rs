//! `cbs rollback`: the previous release becomes the desired one again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cbs_host::audit::{self, Action, Change};
use cbs_host::bundle::KeyPair;
use cbs_host::manifest::check_cell_id;
use clap::Args;

use crate::args::NatsArgs;
use crate::report::{notes, report};
use cbs_host::deploy::rollout;

/// Make the previous release of a cell the desired one again; or, with
/// --domain, take every cell of a domain back to its revision before the
/// last apply (cells added since are removed).
#[derive(Args)]
pub struct RollbackArgs {
    /// The cell id, e.g. logic.greet.
    #[arg(required_unless_present = "domain", conflicts_with = "domain")]
    cell_id: Option<String>,
    /// Roll back this domain as one unit (`cbs apply`).
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// Sign the rollback with this key (as written by `cbs keygen`): hosts
    /// that require signed releases (`--trust`) go back only with it.
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// How long to wait for the hosts, in ms.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    wait_ms: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let key = args.sign.as_deref().map(KeyPair::read).transpose()?;
    let (bus, store) = args.nats.open_store().await?;
    if let Some(domain) = &args.domain {
        return rollback_domain(&bus, &store, domain, key.as_ref(), &args).await;
    }
    let cell_id = args.cell_id.as_deref().unwrap_or_default();
    check_cell_id(cell_id)?;
    let wait = Some(Duration::from_millis(args.wait_ms));
    let rolled = rollout::rollback(bus.client(), &store, cell_id, key.as_ref(), wait).await?;
    let (release, outcome) = (rolled.release, rolled.outcome);
    eprintln!("rolling {cell_id} back to {}", release.version);
    notes(&rolled.notes);
    let grant = release.rollback.as_ref();
    let change = Change {
        action: Action::Rollback,
        cell: cell_id,
        version: Some(&release.version),
        digest: Some(&release.digest),
        key: grant.map(|g| g.signer.as_str()),
        proof: grant.map(|g| g.signature.as_str()),
        from: grant.map(|g| g.from.as_str()),
        detail: outcome.summary(),
        contract: None,
    };
    audit::record(bus.client(), args.nats.options("").as_ref(), change).await;
    Ok(report(cell_id, &release.version, outcome))
}

/// Every cell of `domain` back to the domain's revision before.
async fn rollback_domain(
    bus: &cbs_host::bus::nats::NatsBus,
    store: &cbs_host::deploy::Store,
    domain: &str,
    key: Option<&KeyPair>,
    args: &RollbackArgs,
) -> anyhow::Result<ExitCode> {
    cbs_host::domain::spec::check_name(domain)?;
    let domains = cbs_host::domain::state::Domains::open(bus.client()).await?;
    let lattice = cbs_host::domain::apply::Lattice {
        client: bus.client(),
        store,
        domains: &domains,
        wait: Duration::from_millis(args.wait_ms),
    };
    let back = cbs_host::domain::apply::rollback(&lattice, domain, key, |line| eprintln!("{line}"))
        .await?;
    let writer = args.nats.options("");
    let detail = format!(
        "cbs rollback --domain {domain}: revision {}",
        back.revision.revision
    );
    let changes = back
        .restored
        .iter()
        .map(|c| (Action::Rollback, c))
        .chain(back.removed.iter().map(|c| (Action::Undeploy, c)));
    for (action, cell) in changes {
        let release = back.revision.cells.get(cell);
        let change = Change {
            action,
            cell,
            version: release.map(|r| r.version.as_str()),
            digest: release.map(|r| r.digest.as_str()),
            key: None,
            proof: None,
            from: None,
            detail: detail.clone(),
            contract: None,
        };
        audit::record(bus.client(), writer.as_ref(), change).await;
    }
    println!(
        "domain {domain} back to revision {} ({} cells), as revision {}",
        back.to,
        back.revision.cells.len(),
        back.revision.revision
    );
    Ok(ExitCode::SUCCESS)
}
