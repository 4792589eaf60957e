//! `cbs console`: the browser console of a lattice.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::bundle::KeyPair;
use cbs_host::console::actions::Actions;
use cbs_host::console::source::Nats;
use cbs_host::console::{Console, Options};
use cbs_host::host::trial::InProcess;
use cbs_host::http::auth::{Authenticator, JwtRules};
use clap::Args;

use crate::args::NatsArgs;
use crate::signals::shutdown_signal;

/// Serve the console: see the lattice's hosts and cells live in a browser.
///
/// Read-only unless --allow-actions: it shows what the hosts report
/// (discovery, recent flows), the desired state, dead letters and the
/// audit trail, and advice. Pages update every second over server-sent
/// events; nothing is fetched from outside the console's own address.
/// Example: `cbs console --listen 127.0.0.1:8090 --nats nats://127.0.0.1:4222`,
/// then open http://127.0.0.1:8090
#[derive(Args)]
pub struct ConsoleArgs {
    /// Address to serve the console on (port 0 picks one, logged). Keep it
    /// on loopback or behind your own access control: it shows every
    /// host, cell and error message of the lattice.
    #[arg(long, default_value = "127.0.0.1:8090", value_name = "ADDR")]
    listen: SocketAddr,
    /// Let signed-in users act from the console: replay dead letters,
    /// deploy an uploaded bundle, roll back and undeploy cells.
    /// Needs --token-file or --jwks; each action is audited with the user
    /// who asked, as the console's NATS identity.
    #[arg(long)]
    allow_actions: bool,
    /// Users who may act: bearer tokens, one per line (`#` comments).
    #[arg(long, value_name = "FILE", requires = "allow_actions")]
    token_file: Option<PathBuf>,
    /// Users who may act: JWTs signed by a key of this JWK set; the `sub`
    /// claim names the user in the audit trail.
    #[arg(long, value_name = "FILE", requires = "allow_actions")]
    jwks: Option<PathBuf>,
    /// With --jwks: the `aud` a JWT must carry.
    #[arg(long, value_name = "AUD", requires = "jwks")]
    jwt_audience: Option<String>,
    /// With --jwks: the `iss` a JWT must carry.
    #[arg(long, value_name = "ISS", requires = "jwks")]
    jwt_issuer: Option<String>,
    /// Users who may act, by single sign-on: tokens of this OpenID Connect
    /// issuer (its URL) whose claims give the deployer role (--oidc-role).
    #[arg(long, value_name = "URL", requires_all = ["allow_actions", "oidc_audience"])]
    oidc_issuer: Option<String>,
    /// The `aud` the issuer's tokens must name.
    #[arg(long, value_name = "AUD", requires = "oidc_issuer")]
    oidc_audience: Option<String>,
    /// A claim that gives a role: ROLE=CLAIM:VALUE, e.g.
    /// deployer=groups:platform; repeatable. Acting needs deployer.
    #[arg(long, value_name = "ROLE=CLAIM:VALUE", requires = "oidc_issuer")]
    oidc_role: Vec<cbs_host::http::oidc::RoleRule>,
    /// With --allow-actions: sign rollbacks with this key (as written by
    /// `cbs keygen`), so hosts that require signed releases (--trust) go
    /// back when a user rolls back from the console.
    #[arg(long, value_name = "KEY", requires = "allow_actions")]
    sign_rollbacks: Option<PathBuf>,
    /// How far back advice looks, in seconds: capacity refusals within
    /// it, a durable lag growing over it, no request for six of it.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    advice_window_secs: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let actions = actions(&args).await?;
    let key = args
        .sign_rollbacks
        .as_deref()
        .map(KeyPair::read)
        .transpose()
        .context("--sign-rollbacks")?;
    let bus = args.nats.connect_client().await?;
    let source = Nats::connect(bus, args.nats.options(""), key)
        .await?
        .with_trial(Arc::new(InProcess));
    let options = Options {
        advice_window: Duration::from_secs(args.advice_window_secs.max(1)),
        actions,
    };
    let console = Console::start(args.listen, Arc::new(source), options).await?;
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "stopping the console");
    console.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Who may act, with --allow-actions.
async fn actions(args: &ConsoleArgs) -> anyhow::Result<Option<Arc<Actions>>> {
    if !args.allow_actions {
        return Ok(None);
    }
    let rules = JwtRules {
        audience: args.jwt_audience.clone(),
        issuer: args.jwt_issuer.clone(),
        ..JwtRules::default()
    };
    let users = Authenticator::load(args.token_file.as_deref(), args.jwks.as_deref(), rules)
        .context("--token-file / --jwks")?;
    let users = match (&args.oidc_issuer, &args.oidc_audience) {
        (Some(issuer), Some(audience)) => {
            let config = cbs_host::http::oidc::OidcConfig {
                issuer: issuer.clone(),
                audience: audience.clone(),
                roles: cbs_host::http::oidc::RoleRules(args.oidc_role.clone()),
                leeway_secs: cbs_host::http::auth::DEFAULT_LEEWAY_SECS,
            };
            let oidc = cbs_host::http::oidc::Oidc::discover(config).await;
            users.with_oidc(oidc.context("--oidc-issuer")?)
        }
        _ => users,
    };
    let actions = Actions::new(users)
        .context("--allow-actions: give --token-file, --jwks or --oidc-issuer")?;
    Ok(Some(Arc::new(actions)))
}
