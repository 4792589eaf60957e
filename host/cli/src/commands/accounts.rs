//! `cbs accounts`: the NATS accounts that enforce domain boundaries.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::domain::accounts::{self, Domain};
use clap::Args;
use nkeys::KeyPair;

/// Write the NATS server configuration that enforces domain boundaries with
/// the server: each domain its own account; a user per role (host,
/// deployer, caller, observer) with that role's permissions, cut to the
/// domain's cells (docs/security.md); a service export for each exported
/// cell, imported by the domains that `use` it and by an account for
/// callers outside every domain. Give every domain spec of the lattice at
/// once. Writes DIR/accounts.conf (for `include` in nats-server.conf) and
/// one nkey seed per user, DIR/<account>/<role>.nk (mode 0600); seeds
/// already there are kept, so users stay the same across runs.
///
/// Example: `cbs accounts orders/domain.yaml shop/domain.yaml -o nats/`
#[derive(Args)]
pub struct AccountsArgs {
    /// The domain specs.
    #[arg(required = true, value_name = "SPEC")]
    specs: Vec<PathBuf>,
    /// The folder to write accounts.conf and the users' seeds into.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// The account of callers outside every domain (it imports every
    /// export).
    #[arg(long, value_name = "NAME", default_value = "public")]
    public: String,
    /// Folder of precompiled components (cells given as folders are built).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pulls: super::apply::Pulls,
}

pub async fn run(args: AccountsArgs) -> anyhow::Result<ExitCode> {
    let mut loaded = Vec::with_capacity(args.specs.len());
    for path in &args.specs {
        loaded.push(super::apply::load(path, args.cache_dir.as_deref(), &args.pulls).await?);
    }
    let mut manifests = Vec::with_capacity(loaded.len());
    for (spec, resolved) in &loaded {
        let mut cells = Vec::with_capacity(resolved.len());
        for r in resolved {
            let manifest = r.bundle.cell_manifest();
            cells.push(manifest.with_context(|| format!("in domain {}", spec.domain))?);
        }
        manifests.push(cells);
    }
    let domains: Vec<Domain<'_>> = loaded
        .iter()
        .zip(&manifests)
        .map(|((spec, _), cells)| Domain {
            spec,
            manifests: cells.iter().collect(),
        })
        .collect();
    let layout = accounts::layout(&domains, &args.public)?;
    let mut keys = Vec::new();
    for account in &layout {
        for (role, _) in &account.users {
            let file = args.output.join(&account.name).join(format!("{role}.nk"));
            keys.push((account.name.clone(), *role, seed(&file)?.public_key(), file));
        }
    }
    let text = accounts::render(&layout, |account, role| {
        keys.iter()
            .find(|(a, r, _, _)| a == account && *r == role)
            .map(|(_, _, key, _)| key.clone())
            .unwrap_or_default()
    });
    let conf = args.output.join("accounts.conf");
    let names: Vec<&str> = loaded.iter().map(|(s, _)| s.domain.as_str()).collect();
    let header = format!(
        "# Written by `cbs accounts` from the domains {}; include it from\n\
         # nats-server.conf (with a `jetstream {{}}` block). Each user is an nkey\n\
         # whose seed is in <account>/<role>.nk beside this file.\n",
        names.join(", ")
    );
    std::fs::write(&conf, header + &text)
        .with_context(|| format!("cannot write {}", conf.display()))?;
    println!("wrote {} ({} accounts)", conf.display(), layout.len());
    for (account, role, _, file) in &keys {
        println!("  {account:<16} {role:<9} {}", file.display());
    }
    println!(
        "connect with the user's seed, e.g. cbs-host run --watch --nats-nkey \"$(cat {})\"",
        args.output.join("<domain>").join("host.nk").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The user whose seed is in `file`, made (and written, owner-only) if
/// there is none yet.
fn seed(file: &Path) -> anyhow::Result<KeyPair> {
    if file.exists() {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        return KeyPair::from_seed(text.trim())
            .with_context(|| format!("{} holds no nkey seed", file.display()));
    }
    let user = KeyPair::new_user();
    let seed = user.seed().context("cannot encode a new nkey seed")?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut out = owner_only(file)?;
    writeln!(out, "{seed}").with_context(|| format!("cannot write {}", file.display()))?;
    Ok(user)
}

fn owner_only(file: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create {}", file.display()))
}
