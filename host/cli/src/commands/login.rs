//! `cbs login --oidc ISSUER`: single sign-on from a terminal.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::http::oidc::device;
use clap::Args;

/// Sign in with your organisation's OpenID Connect issuer (the device
/// flow: open the link shown, enter the code) and keep the token it grants
/// in $CBS_TOKEN_FILE, else ~/.config/cbs/token (mode 0600). Gateways and
/// consoles started with --http-oidc-issuer / --oidc-issuer accept it for
/// the roles its claims give: `curl -H "Authorization: Bearer $(cbs login
/// --print)" ...`, or paste it into the console's sign-in.
#[derive(Args)]
pub struct LoginArgs {
    /// The issuer's URL (as its tokens' `iss`).
    #[arg(long, value_name = "ISSUER", required_unless_present = "print")]
    oidc: Option<String>,
    /// The client id CBS is registered under at the issuer.
    #[arg(long, value_name = "ID", requires = "oidc", default_value = "cbs")]
    client_id: String,
    /// The scopes asked for.
    #[arg(long, default_value = "openid profile email")]
    scope: String,
    /// Print the token kept by the last sign-in, and nothing else.
    #[arg(long, conflicts_with = "oidc")]
    print: bool,
}

pub async fn run(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let path = cbs_host::dirs::token();
    if args.print {
        let token = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no token in {}: sign in with cbs login --oidc ISSUER",
                path.display()
            )
        })?;
        println!("{}", token.trim());
        return Ok(ExitCode::SUCCESS);
    }
    let issuer = args.oidc.as_deref().unwrap_or_default();
    let granted = device::login(issuer, &args.client_id, &args.scope, |prompt| {
        let link = prompt
            .verification_uri_complete
            .as_deref()
            .unwrap_or(&prompt.verification_uri);
        eprintln!("open {link} and enter the code {}", prompt.user_code);
        eprintln!("waiting for the sign-in to be approved...");
    })
    .await?;
    keep(&path, &granted.token)?;
    let lasts = granted
        .expires_in
        .map_or(String::new(), |s| format!(", valid {s} s"));
    println!(
        "signed in at {issuer}; token kept in {}{lasts}",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the token readable by this user only.
fn keep(path: &std::path::Path, token: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{token}")?;
    Ok(())
}
