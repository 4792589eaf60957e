//! `cbs deploy`: a bundle to every watching host, health-confirmed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::audit::{self, Action, Change};
use cbs_host::bundle::{Bundle, KeyPair};
use cbs_host::deploy::downgrade::RollbackGrant;
use cbs_host::deploy::policy_gate::Refusal;
use cbs_host::deploy::Store;
use cbs_host::host::trial::InProcess;
use cbs_host::policy::Waiver;
use clap::Args;

use crate::args::{parse_label, trust_of, NatsArgs, RegistryArgs};
use crate::commands::deps::{Gate, WithDeps};
use crate::commands::pull::pull_verified;
use crate::report::{notes, report};
use cbs_host::deploy::rollout::{self, Consent, Scale, Targets};
use cbs_host::deploy::{blue_green, canary};
use cbs_host::registry::Reference;

/// Deploy a bundle to every host of a NATS cluster that runs with --watch,
/// and wait until they serve it.
///
/// The bundle goes into the JetStream object store `cbs-bundles`, the
/// desired release into the key-value bucket `cbs-desired`. Exits 1 if a
/// host cannot load it (the previous release then stays desired) or if the
/// new contract breaks the deployed one within a major version.
#[derive(Args)]
pub struct DeployArgs {
    /// The bundle (.cbs) to deploy, or where a registry holds it:
    /// HOST[:PORT]/REPOSITORY[:TAG|@DIGEST] (pulled and verified here, once;
    /// hosts get it through the lattice and never contact the registry).
    #[arg(value_name = "BUNDLE|REF")]
    bundle: String,
    /// A pulled bundle must be signed by this key (a .pub file or its
    /// hex); repeatable. Hosts check their own --trust again.
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    deps: WithDeps,
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
    /// While a lattice policy holds, --force needs a second signature:
    /// this key (as written by `cbs keygen`), one of the policy's [force]
    /// signers other than the bundle's, signs this cell and bundle; it
    /// also lets the release past the policy's rules, on every host. Both
    /// keys go into the audit trail.
    #[arg(long, value_name = "KEY", requires = "force")]
    force_key: Option<PathBuf>,
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
    /// How the release replaces the deployed one: all at once (each host
    /// swaps as it loads it), or blue-green: loaded beside the deployed one
    /// on every host, taking no traffic while its contract tests and its
    /// consumers' expectations run against it there (cbs.~p.CELL), then
    /// all traffic switched at once, the version before kept warm for
    /// --warm (a `cbs rollback` meanwhile switches back without a load).
    /// Exits 1 when a test fails (nothing switched) unless --force.
    #[arg(
        long,
        value_enum,
        default_value = "all-at-once",
        conflicts_with = "canary"
    )]
    strategy: Strategy,
    /// Blue-green: how long hosts keep the version before warm, e.g. 10m
    /// (at most 24h).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    warm: Duration,
    /// Blue-green: the seed of the generated contract tests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    canary: CanaryArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Strategy {
    AllAtOnce,
    BlueGreen,
}

/// `--canary`: the new release next to the current one, step by step.
#[derive(Args)]
struct CanaryArgs {
    /// Serve the new release next to the deployed one for this share of
    /// the messages (percent), then each of --steps, each for --interval;
    /// revert by itself when its error ratio or p99 is past the limits
    /// against the deployed release over the same interval, promote after
    /// the last step. Exits 1 when it reverts.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    canary: Option<u32>,
    /// The shares (percent) after the first, rising, ending at 100.
    #[arg(
        long,
        value_name = "P,P,..",
        value_delimiter = ',',
        default_value = "25,50,100",
        requires = "canary"
    )]
    steps: Vec<u32>,
    /// How long each step lasts, e.g. 60s or 5m.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration, requires = "canary")]
    interval: Duration,
    /// How far the canary's error ratio may exceed the deployed one's (0.01: one point).
    #[arg(
        long,
        value_name = "RATIO",
        default_value_t = 0.01,
        requires = "canary"
    )]
    max_error_ratio: f64,
    /// The highest p99 the canary may have in a step, in ms.
    #[arg(long, value_name = "MS", default_value_t = 500, requires = "canary")]
    max_p99_ms: u64,
    /// Revert at once after this many errors of the canary in a step.
    #[arg(long, value_name = "N", requires = "canary")]
    max_errors: Option<u64>,
}

impl CanaryArgs {
    fn plan(&self, first: u32) -> anyhow::Result<canary::Plan> {
        let mut steps = vec![first];
        steps.extend(self.steps.iter().copied().filter(|s| *s > first));
        if steps.windows(2).any(|w| w[0] >= w[1]) || steps.last() != Some(&100) {
            anyhow::bail!(
                "--canary {first} --steps {:?}: the shares must rise and end at 100",
                self.steps
            );
        }
        Ok(canary::Plan {
            steps,
            interval: self.interval,
            max_error_ratio: self.max_error_ratio,
            max_p99: Duration::from_millis(self.max_p99_ms),
            max_errors: self.max_errors,
        })
    }
}

pub async fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    if (!args.label.is_empty() || args.spread.is_some())
        && args.replicas.is_none()
        && args.min_replicas.is_none()
    {
        anyhow::bail!("--label and --spread place replicas: give --replicas N (or --min-replicas and --max-replicas)");
    }
    let (bundle, bytes, origin) = source(&args.bundle, &args.registry, &args.trust).await?;
    let (bus, store) = args.nats.open_store().await?;
    let writer = args.nats.options("");
    let rolled = roll(args, &bus, &store, &bundle, &bytes, origin.as_ref()).await;
    if let Some(refusal) = rolled
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<Refusal>())
    {
        let detail = format!("cbs deploy: {refusal}");
        audit_bundle(&bus, writer.as_ref(), Action::Refuse, &bundle, detail, None).await;
    }
    rolled
}

/// The rollout `args` ask for, of a bundle read and checked.
async fn roll(
    args: DeployArgs,
    bus: &cbs_host::bus::nats::NatsBus,
    store: &Store,
    bundle: &Bundle,
    bytes: &[u8],
    origin: Option<&Reference>,
) -> anyhow::Result<ExitCode> {
    let constraints = rollout::placement_labels(bundle, args.label.into_iter().collect());
    let wait = (!args.no_wait).then(|| Duration::from_millis(args.wait_ms));
    let gate = Gate {
        bus,
        store,
        nats: &args.nats,
        registry: &args.registry,
        trust: &trust_of(&args.trust)?,
        deps: &args.deps,
        force: args.force,
        wait,
    };
    gate.check(bundle, origin).await?;
    let rollback = match &args.sign_rollback {
        Some(key) => rollback_grant(store, bundle, &KeyPair::read(key)?).await?,
        None => None,
    };
    let waiver = match &args.force_key {
        Some(key) => Some(Waiver::sign(
            &KeyPair::read(key)?,
            &bundle.manifest.cell,
            &bundle.digest(),
        )),
        None => None,
    };
    let consent = |trial| Consent {
        force: args.force,
        rollback: rollback.clone(),
        trial,
        waiver: waiver.clone(),
        origin: origin.map(|r| r.registry.clone()),
    };
    if let Some(first) = args.canary.canary {
        let plan = args.canary.plan(first)?;
        let consent = consent(Some(&InProcess));
        return canary(bus, store, bundle, bytes, &plan, consent, &args.nats).await;
    }
    if args.strategy == Strategy::BlueGreen {
        let plan = blue_green::Plan {
            warm: args.warm,
            seed: args.seed,
            ..Default::default()
        };
        return blue_green(bus, store, bundle, bytes, &plan, consent(None), &args.nats).await;
    }
    eprintln!(
        "deploying {} {} ({})",
        bundle.manifest.cell,
        bundle.manifest.version,
        bundle.digest()
    );
    let scale = Scale {
        replicas: args.replicas,
        constraints,
        spread: args.spread.clone(),
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
        domain: None,
    };
    let rolled = rollout::deploy(
        bus.client(),
        store,
        bundle,
        bytes,
        scale,
        consent(Some(&InProcess)),
        wait,
    )
    .await?;
    notes(&rolled.notes);
    let outcome = rolled.outcome;
    let writer = args.nats.options("");
    if let Some(waiver) = &rolled.release.waiver {
        let detail = format!("cbs deploy --force, second signature by {}", waiver.signer);
        audit_bundle(bus, writer.as_ref(), Action::Force, bundle, detail, None).await;
    }
    let (detail, contract) = (outcome.summary(), rolled.contract);
    audit_bundle(
        bus,
        writer.as_ref(),
        Action::Deploy,
        bundle,
        detail,
        contract,
    )
    .await;
    Ok(report(
        &bundle.manifest.cell,
        &bundle.manifest.version,
        outcome,
    ))
}

/// An audit event about `bundle` (a deploy, a refusal, a forced release).
async fn audit_bundle(
    bus: &cbs_host::bus::nats::NatsBus,
    writer: Option<&cbs_host::bus::nats::NatsOptions>,
    action: Action,
    bundle: &Bundle,
    detail: String,
    contract: Option<cbs_host::contract::diff::ContractDiff>,
) {
    let change = Change {
        action,
        cell: &bundle.manifest.cell,
        version: Some(&bundle.manifest.version),
        digest: Some(&bundle.digest()),
        key: bundle.signer(),
        proof: bundle.signature(),
        from: None,
        detail,
        contract,
    };
    audit::record(bus.client(), writer, change).await;
}

/// The bundle a file holds, or a registry reference names (pulled and
/// verified), its bytes, and the reference it came from.
async fn source(
    what: &str,
    registry: &RegistryArgs,
    trust: &[String],
) -> anyhow::Result<(Bundle, Vec<u8>, Option<Reference>)> {
    let path = Path::new(what);
    if path.exists() {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bundle = Bundle::from_bytes(&bytes).with_context(|| format!("in {what}"))?;
        bundle.verify(&trust_of(trust)?)?;
        return Ok((bundle, bytes, None));
    }
    let reference = Reference::parse(what)
        .with_context(|| format!("{what:?} is neither a bundle file nor a registry reference"))?;
    let (pinned, bundle) = pull_verified(registry, &reference, &trust_of(trust)?).await?;
    eprintln!("pulled {pinned}");
    let bytes = bundle.to_bytes()?;
    Ok((bundle, bytes, Some(pinned)))
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

/// A canary rollout, audited at its end; exits 1 when it reverted.
async fn canary(
    bus: &cbs_host::bus::nats::NatsBus,
    store: &Store,
    bundle: &Bundle,
    bytes: &[u8],
    plan: &canary::Plan,
    consent: Consent<'_>,
    nats: &NatsArgs,
) -> anyhow::Result<ExitCode> {
    let progress = |line: &str| eprintln!("{line}");
    let (release, end) =
        canary::run(bus.client(), store, bundle, bytes, plan, consent, progress).await?;
    let (detail, code) = match &end {
        canary::End::Promoted => ("promoted".to_owned(), ExitCode::SUCCESS),
        canary::End::Reverted { share, reason } => (
            format!("reverted at {share} %: {reason}"),
            ExitCode::FAILURE,
        ),
    };
    let ended = Ended {
        action: Action::Canary,
        bundle,
        release: &release,
    };
    ended.record(bus, nats, detail).await;
    Ok(code)
}

/// A blue-green rollout, audited at its end; exits 1 when refused.
async fn blue_green(
    bus: &cbs_host::bus::nats::NatsBus,
    store: &Store,
    bundle: &Bundle,
    bytes: &[u8],
    plan: &blue_green::Plan,
    consent: Consent<'_>,
    nats: &NatsArgs,
) -> anyhow::Result<ExitCode> {
    let progress = |line: &str| eprintln!("{line}");
    let (release, end) =
        blue_green::run(bus, store, bundle, bytes, plan, consent, progress).await?;
    let (detail, code) = match &end {
        blue_green::End::Switched { tests, forced } => (
            format!(
                "blue-green: switched after {tests} trial(s) on the hosts ({forced} failed, forced)"
            ),
            ExitCode::SUCCESS,
        ),
        blue_green::End::Refused { reason } => {
            (format!("blue-green: refused: {reason}"), ExitCode::FAILURE)
        }
    };
    let ended = Ended {
        action: Action::Deploy,
        bundle,
        release: &release,
    };
    ended.record(bus, nats, detail).await;
    Ok(code)
}

/// A staged rollout's end (canary, blue-green), for the audit trail and
/// the terminal.
struct Ended<'a> {
    action: Action,
    bundle: &'a Bundle,
    release: &'a cbs_host::deploy::Release,
}

impl Ended<'_> {
    async fn record(&self, bus: &cbs_host::bus::nats::NatsBus, nats: &NatsArgs, detail: String) {
        let (bundle, release) = (self.bundle, self.release);
        println!("{} {}: {detail}", bundle.manifest.cell, release.version);
        let change = Change {
            action: self.action,
            cell: &bundle.manifest.cell,
            version: Some(&release.version),
            digest: Some(&release.digest),
            key: bundle.signer(),
            proof: bundle.signature(),
            from: None,
            detail,
            contract: None,
        };
        audit::record(bus.client(), nats.options("").as_ref(), change).await;
    }
}
