//! `cbs policy test`: what a deploy of a bundle would meet.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::policy::quota::Deployed;
use cbs_host::policy::store::PolicyStore;
use cbs_host::policy::{check, Candidate, Policy};
use clap::Args;

use crate::args::{NatsArgs, RegistryArgs};
use crate::commands::pull::pull_verified;

/// What a deploy of a bundle would meet under the lattice's policy (or
/// --policy FILE): every rule that applies, met or broken. Exits 1 when
/// one is broken, so it runs in a pipeline before `cbs deploy`.
#[derive(Args)]
pub struct TestArgs {
    /// The bundle (.cbs), or a registry reference HOST[:PORT]/REPO[:TAG].
    #[arg(value_name = "BUNDLE|REF")]
    bundle: String,
    /// Test against this policy file instead of the lattice's (no NATS).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The replicas the deploy would ask (`--replicas`, `--max-replicas`).
    #[arg(long, value_name = "N")]
    replicas: Option<u32>,
    /// The domain the cell would belong to.
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let (bundle, origin) = source(&args).await?;
    let (policy, usage) = match &args.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let policy = Policy::parse(&text).with_context(|| format!("in {}", path.display()))?;
            (policy, Vec::new())
        }
        None => lattice_policy(&args.nats).await?,
    };
    let manifest = bundle.cell_manifest()?;
    let candidate = Candidate {
        bundle: &bundle,
        manifest: &manifest,
        replicas: args.replicas,
        domain: args.domain.as_deref(),
        origin: origin.as_deref(),
        usage: &usage,
    };
    let findings = check::check(&policy, &candidate);
    let broken = findings.iter().filter(|f| !f.met).count();
    if args.json {
        let out = serde_json::json!({
            "cell": manifest.id,
            "version": manifest.version,
            "policy": policy.version,
            "passes": broken == 0,
            "rules": findings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} {} against policy v{}:",
            manifest.id, manifest.version, policy.version
        );
        for f in &findings {
            let mark = if f.met { "ok  " } else { "FAIL" };
            println!("  {mark} {f}");
        }
        match broken {
            0 => println!("a deploy would pass the policy"),
            n => println!("a deploy would be refused: {n} rule(s) broken"),
        }
    }
    Ok(if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The bundle, and the registry it comes from (none: a file).
async fn source(args: &TestArgs) -> anyhow::Result<(cbs_host::bundle::Bundle, Option<String>)> {
    let path = std::path::Path::new(&args.bundle);
    if path.exists() {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bundle = cbs_host::bundle::Bundle::from_bytes(&bytes)
            .with_context(|| format!("in {}", args.bundle))?;
        return Ok((bundle, None));
    }
    let reference = cbs_host::registry::Reference::parse(&args.bundle).with_context(|| {
        format!(
            "{:?} is neither a bundle file nor a registry reference",
            args.bundle
        )
    })?;
    let (_, bundle) = pull_verified(&args.registry, &reference, &Default::default()).await?;
    Ok((bundle, Some(reference.registry)))
}

/// The lattice's policy, when validly signed, and its deployed cells (for
/// the tenants' quotas).
async fn lattice_policy(nats: &NatsArgs) -> anyhow::Result<(Policy, Vec<Deployed>)> {
    let (bus, store) = nats.open_store().await?;
    let usage = cbs_host::deploy::rollout::deployed(&store.all_desired().await?);
    let stored = PolicyStore::open(bus.client())
        .await?
        .get()
        .await?
        .context(
            "the lattice has no policy: `cbs policy set` one, or test against a file with --policy",
        )?;
    let signed = stored.policy.map_err(anyhow::Error::msg)?;
    Ok((signed.verify_signature()?, usage))
}
