//! `cbs policy`: the lattice policy, one file per subcommand: `set`,
//! `show`, `test`.

mod set;
mod show;
mod test;

use std::process::ExitCode;

use cbs_host::deploy::placement::HostInfo;
use cbs_host::unix_time::now_ms;
use clap::Subcommand;

/// The lattice policy (docs/adr/0032-policy-as-code.md): rules every
/// deploy and every watching host enforce — runtimes, signers, contracts,
/// limits, capabilities, registries, and who may --force.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Sign a policy file and make it the lattice's (its version must rise).
    Set(set::SetArgs),
    /// The lattice's policy, who signed it, and which hosts hold it.
    Show(show::ShowArgs),
    /// What a deploy of a bundle would meet: every rule, met or broken.
    /// Exits 1 when one is broken.
    Test(test::TestArgs),
}

pub async fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Set(args) => set::run(args).await,
        PolicyCommand::Show(args) => show::run(args).await,
        PolicyCommand::Test(args) => test::run(args).await,
    }
}

/// Heartbeats at most this old are of live hosts (they beat every 500 ms).
const LIVE_MS: u64 = 5_000;

/// The hosts whose last heartbeat is recent, by id.
fn live(heartbeats: Vec<HostInfo>) -> Vec<HostInfo> {
    let now = now_ms();
    let mut live: Vec<HostInfo> = heartbeats
        .into_iter()
        .filter(|h| now.saturating_sub(h.at_ms) <= LIVE_MS)
        .collect();
    live.sort_by(|a, b| a.id.cmp(&b.id));
    live
}

/// `v3`, or `none`.
fn held(host: &HostInfo) -> String {
    host.policy
        .as_ref()
        .map_or_else(|| "none".to_owned(), |p| format!("v{}", p.version))
}
