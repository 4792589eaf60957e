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

/// Make the previous release of a cell the desired one again.
#[derive(Args)]
pub struct RollbackArgs {
    /// The cell id, e.g. logic.greet.
    cell_id: String,
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
    check_cell_id(&args.cell_id)?;
    let key = args.sign.as_deref().map(KeyPair::read).transpose()?;
    let (bus, store) = args.nats.open_store().await?;
    let wait = Some(Duration::from_millis(args.wait_ms));
    let rolled = rollout::rollback(bus.client(), &store, &args.cell_id, key.as_ref(), wait).await?;
    let (release, outcome) = (rolled.release, rolled.outcome);
    eprintln!("rolling {} back to {}", args.cell_id, release.version);
    notes(&rolled.notes);
    let grant = release.rollback.as_ref();
    let change = Change {
        action: Action::Rollback,
        cell: &args.cell_id,
        version: Some(&release.version),
        digest: Some(&release.digest),
        key: grant.map(|g| g.signer.as_str()),
        proof: grant.map(|g| g.signature.as_str()),
        from: grant.map(|g| g.from.as_str()),
        detail: outcome.summary(),
        contract: None,
    };
    audit::record(bus.client(), args.nats.options("").as_ref(), change).await;
    Ok(report(&args.cell_id, &release.version, outcome))
}
