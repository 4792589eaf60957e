//! `cbs policy show`: the lattice's policy and which hosts hold it.

use std::process::ExitCode;

use cbs_host::policy::check::short;
use cbs_host::policy::store::PolicyStore;
use clap::Args;
use serde_json::json;

use crate::args::NatsArgs;
use crate::table::Table;

/// The lattice's policy: its version, digest, signer, text, and each live
/// host's policy version. A policy whose signature does not match its
/// text is shown as such (hosts ignore it).
#[derive(Args)]
pub struct ShowArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// List the versions kept before it too (newest last).
    #[arg(long)]
    history: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (bus, store) = args.nats.open_store().await?;
    let policies = PolicyStore::open(bus.client()).await?;
    let hosts = super::live(store.heartbeats().await?);
    let Some(stored) = policies.get().await? else {
        println!("no lattice policy: `cbs policy set FILE --key KEY` sets one");
        return Ok(ExitCode::SUCCESS);
    };
    let signed = match stored.policy {
        Ok(signed) => signed,
        Err(e) => anyhow::bail!("the stored policy is not readable: {e}; set a new one"),
    };
    let valid = signed.verify_signature().map_err(|e| format!("{e:#}"));
    let history = match args.history {
        true => policies.history().await?,
        false => Vec::new(),
    };
    if args.json {
        let hosts: Vec<_> = hosts
            .iter()
            .map(|h| json!({"host": h.id, "policy": h.policy, "trust": h.trust}))
            .collect();
        let versions: Vec<_> = history
            .iter()
            .map(|p| json!({"version": p.version, "digest": p.digest(), "signer": p.signer, "signed_at_ms": p.signed_at_ms}))
            .collect();
        let out = json!({
            "version": signed.version,
            "digest": signed.digest(),
            "signer": signed.signer,
            "signed_at_ms": signed.signed_at_ms,
            "signature_valid": valid.is_ok(),
            "text": signed.text,
            "hosts": hosts,
            "history": versions,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("policy v{} {}", signed.version, signed.digest());
    println!("signed by {}", signed.signer);
    if let Err(e) = &valid {
        println!("SIGNATURE INVALID, hosts ignore it: {e}");
    }
    println!("\n{}", signed.text.trim_end());
    if !history.is_empty() {
        println!("\nversions kept:");
        for p in &history {
            println!(
                "  v{} {} signed by {}",
                p.version,
                p.digest(),
                short(&p.signer)
            );
        }
    }
    let mut table = Table::new(["HOST", "POLICY", "TRUSTS"]);
    for host in &hosts {
        let trusts: Vec<String> = host.trust.iter().map(|k| short(k)).collect();
        let trusts = if trusts.is_empty() {
            "any bundle".to_owned()
        } else {
            trusts.join(", ")
        };
        table.row([host.id.clone(), super::held(host), trusts]);
    }
    println!("\n{table}");
    Ok(ExitCode::SUCCESS)
}
