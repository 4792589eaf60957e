//! `cbs deploy`: a bundle to every watching host, health-confirmed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::audit::{self, Action, Change};
use cbs_host::bundle::{Bundle, KeyPair};
use cbs_host::deploy::downgrade::RollbackGrant;
use cbs_host::deploy::Store;
use cbs_host::host::trial::InProcess;
use cbs_host::platform;
use clap::Args;

use crate::args::{parse_label, NatsArgs};
use crate::report::{notes, report};
use cbs_host::deploy::rollout::{self, Consent, Scale, Targets};

/// Deploy a bundle to every host of a NATS cluster that runs with --watch,
/// and wait until they serve it.
///
/// The bundle goes into the JetStream object store `cbs-bundles`, the
/// desired release into the key-value bucket `cbs-desired`. Exits 1 if a
/// host cannot load it (the previous release then stays desired) or if the
/// new contract breaks the deployed one within a major version.
#[derive(Args)]
pub struct DeployArgs {
    /// The bundle (.cbs) to deploy.
    bundle: PathBuf,
    /// How many watching hosts serve it, placed (and re-placed when one
    /// stops) by the hosts' placer [default: every watching host].
    #[arg(long)]
    replicas: Option<u32>,
    /// Only on hosts with this label (`cbs-host run --label k=v`);
    /// repeatable.
    #[arg(long, value_name = "K=V", value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// Spread the replicas over the values of this host label (e.g. zone).
    #[arg(long, value_name = "LABEL")]
    spread: Option<String>,
    /// Autoscale between this many replicas and --max-replicas (instead of
    /// --replicas): a durable cell on its consumer lag, a request cell on
    /// its hosts' `capacity` replies and how busy they are.
    #[arg(
        long,
        value_name = "N",
        requires = "max_replicas",
        conflicts_with = "replicas"
    )]
    min_replicas: Option<u32>,
    /// The most replicas the autoscaler places.
    #[arg(long, value_name = "N", requires = "min_replicas")]
    max_replicas: Option<u32>,
    /// Messages waiting per replica the autoscaler aims at (durable cells).
    #[arg(
        long,
        default_value_t = 100,
        value_name = "N",
        requires = "min_replicas"
    )]
    target_lag: u64,
    /// How long the lag must allow fewer replicas before one is removed.
    #[arg(
        long,
        default_value_t = 30_000,
        value_name = "MS",
        requires = "min_replicas"
    )]
    scale_down_after_ms: u64,
    /// The mean wait for a running slot, in ms, above which a request
    /// cell gains a replica (its hosts report it in their heartbeats).
    #[arg(
        long,
        default_value_t = 50,
        value_name = "MS",
        requires = "min_replicas"
    )]
    target_wait_ms: u64,
    /// Deploy even if the contract breaks the deployed one, or the release
    /// breaks what a deployed consumer expects of it ([[expects."CELL"]]
    /// in the consumer's cell.toml: each example is sent to the new
    /// release, served in this process, before it takes traffic).
    #[arg(long)]
    force: bool,
    /// Sign, with this key (as written by `cbs keygen`), the step back
    /// from the release hosts last installed of the cell (kept in
    /// cbs-served, also after `cbs undeploy`) to this bundle: hosts that
    /// require signed releases (--trust) deploy an older version only with
    /// it.
    #[arg(long, value_name = "KEY")]
    sign_rollback: Option<PathBuf>,
    /// How long to wait for the hosts, in ms.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    wait_ms: u64,
    /// Record the desired release and return without waiting.
    #[arg(long, conflicts_with = "wait_ms")]
    no_wait: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    if (!args.label.is_empty() || args.spread.is_some())
        && args.replicas.is_none()
        && args.min_replicas.is_none()
    {
        anyhow::bail!("--label and --spread place replicas: give --replicas N (or --min-replicas and --max-replicas)");
    }
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let bundle =
        Bundle::from_bytes(&bytes).with_context(|| format!("in {}", args.bundle.display()))?;
    let mut constraints: BTreeMap<String, String> = args.label.into_iter().collect();
    if let Some(platform) = bundle
        .manifest
        .platform
        .as_ref()
        .filter(|p| *p != platform::ANY)
    {
        // Replicas of native code go only to hosts that can run it.
        constraints
            .entry(platform::LABEL.to_owned())
            .or_insert_with(|| platform.clone());
    }
    let (bus, store) = args.nats.open_store().await?;
    let rollback = match &args.sign_rollback {
        Some(key) => rollback_grant(&store, &bundle, &KeyPair::read(key)?).await?,
        None => None,
    };
    let wait = (!args.no_wait).then(|| Duration::from_millis(args.wait_ms));
    eprintln!(
        "deploying {} {} ({})",
        bundle.manifest.cell,
        bundle.manifest.version,
        bundle.digest()
    );
    let rolled = rollout::deploy(
        bus.client(),
        &store,
        &bundle,
        &bytes,
        Scale {
            replicas: args.replicas,
            constraints,
            spread: args.spread,
            autoscale: args
                .min_replicas
                .zip(args.max_replicas)
                .map(|(min, max)| Targets {
                    min_replicas: min,
                    max_replicas: max,
                    lag: args.target_lag,
                    wait_ms: args.target_wait_ms,
                    scale_down_after_ms: args.scale_down_after_ms,
                }),
        },
        Consent {
            force: args.force,
            rollback,
            trial: Some(&InProcess),
        },
        wait,
    )
    .await?;
    notes(&rolled.notes);
    let outcome = rolled.outcome;
    let change = Change {
        action: Action::Deploy,
        cell: &bundle.manifest.cell,
        version: Some(&bundle.manifest.version),
        digest: Some(&bundle.digest()),
        key: bundle.signer(),
        proof: bundle.signature(),
        from: None,
        detail: outcome.summary(),
        contract: rolled.contract,
    };
    audit::record(bus.client(), args.nats.options("").as_ref(), change).await;
    Ok(report(
        &bundle.manifest.cell,
        &bundle.manifest.version,
        outcome,
    ))
}

/// A grant for the step from what hosts last installed of the bundle's
/// cell to the bundle; none when they installed nothing of it, or this.
async fn rollback_grant(
    store: &Store,
    bundle: &Bundle,
    key: &KeyPair,
) -> anyhow::Result<Option<RollbackGrant>> {
    let cell = &bundle.manifest.cell;
    let Some(served) = store.served(cell).await? else {
        eprintln!("no release of {cell} was installed before: no rollback to sign");
        return Ok(None);
    };
    if served.digest == bundle.digest() {
        return Ok(None);
    }
    eprintln!(
        "signing the step from {} ({}) to {}",
        served.version, served.digest, bundle.manifest.version
    );
    Ok(Some(RollbackGrant::sign(
        key,
        cell,
        &served.digest,
        &bundle.digest(),
    )))
}
