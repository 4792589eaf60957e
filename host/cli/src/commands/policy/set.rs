//! `cbs policy set`: sign a policy file and make it the lattice's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cbs_host::audit::{self, Action, Change};
use cbs_host::bundle::KeyPair;
use cbs_host::policy::check::short;
use cbs_host::policy::store::PolicyStore;
use cbs_host::policy::SignedPolicy;
use clap::Args;

use crate::args::NatsArgs;

/// Sign a policy file (policy.toml) and make it the lattice's policy.
///
/// Its `version` must be above the lattice's. Every watching host that
/// trusts the key (`cbs-host run --policy-key`, else its --trust keys)
/// adopts it and checks each release against it before serving; `cbs
/// deploy` checks first. Waits until the live hosts hold it, and names
/// those that do not (they do not trust the key).
#[derive(Args)]
pub struct SetArgs {
    /// The policy file (TOML; see docs/security.md for every rule).
    file: PathBuf,
    /// The signing key (as written by `cbs keygen`).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// How long to wait for the live hosts to hold it, in ms (0: do not wait).
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    wait_ms: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: SetArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let key = KeyPair::read(&args.key)?;
    let signed =
        SignedPolicy::sign(&text, &key).with_context(|| format!("in {}", args.file.display()))?;
    let (bus, store) = args.nats.open_store().await?;
    let policies = PolicyStore::open(bus.client()).await?;
    let current = policies.get().await?;
    if let Some(Ok(now)) = current.as_ref().map(|c| &c.policy) {
        if signed.version <= now.version {
            bail!(
                "{} says version {}, but the lattice's policy is v{}: raise `version` above it",
                args.file.display(),
                signed.version,
                now.version
            );
        }
    }
    policies.set(&signed, current.map(|c| c.revision)).await?;
    let detail = format!(
        "policy v{} set ({}), signed by {}",
        signed.version,
        signed.digest(),
        signed.signer
    );
    let change = Change {
        action: Action::Policy,
        cell: "*",
        version: Some(&signed.version.to_string()),
        digest: Some(&signed.digest()),
        key: Some(&signed.signer),
        proof: None,
        from: None,
        detail: detail.clone(),
        contract: None,
    };
    audit::record(bus.client(), args.nats.options("").as_ref(), change).await;
    println!("{detail}");
    if args.wait_ms > 0 {
        wait_for_hosts(&store, &signed, Duration::from_millis(args.wait_ms)).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until every live host holds `signed`, then says which hold it.
async fn wait_for_hosts(
    store: &cbs_host::deploy::Store,
    signed: &SignedPolicy,
    wait: Duration,
) -> anyhow::Result<()> {
    let (digest, started) = (signed.digest(), Instant::now());
    loop {
        let hosts = super::live(store.heartbeats().await?);
        let lagging: Vec<_> = hosts
            .iter()
            .filter(|h| h.policy.as_ref().is_none_or(|p| p.digest != digest))
            .collect();
        if lagging.is_empty() || started.elapsed() >= wait {
            let holding = hosts.len() - lagging.len();
            println!("{holding} of {} live host(s) hold it", hosts.len());
            for host in lagging {
                eprintln!(
                    "warning: host {} holds {} (does it trust {}? cbs-host run --policy-key)",
                    host.id,
                    super::held(host),
                    short(&signed.signer)
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
