//! `cbs keygen`: a key pair for signing bundles.

use std::path::PathBuf;
use std::process::ExitCode;

use cbs_host::bundle::KeyPair;
use clap::Args;

/// Create an ed25519 key pair for signing bundles: KEY (secret, mode 0600)
/// and KEY.pub (give it to hosts with `--trust`).
#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the secret key; the public key goes to <KEY>.pub.
    #[arg(default_value = "cbs.key")]
    key: PathBuf,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let pair = KeyPair::generate()?;
    pair.write(&args.key)?;
    println!(
        "secret key {} (keep it private)\npublic key {}.pub: {}\nsign with `cbs build --sign {}`; hosts accept with `cbs-host run --trust {}.pub`",
        args.key.display(),
        args.key.display(),
        pair.public().to_hex(),
        args.key.display(),
        args.key.display()
    );
    Ok(ExitCode::SUCCESS)
}
