//! `cbs gateway`: serves every HTTP route of every cell in the lattice.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::bus::BodyBus;
use cbs_host::http::{Gateway, Serving};
use clap::Args;

use crate::args::{HttpArgs, NatsArgs};
use crate::signals::shutdown_signal;

/// Serve the HTTP routes (`[[http]]`) of every cell the lattice serves.
///
/// Learns routes from the hosts' discovery replies and follows them: a
/// route appears when a host serves its cell and goes when none does.
/// Requests go to the cells over NATS. OpenAPI at /openapi.json.
/// With `--domain NAME`, only the cells that domain exports (its public
/// API, as their hosts report it); `--print-openapi` prints the OpenAPI
/// document of what would be served and exits.
/// Example: `cbs gateway --http 127.0.0.1:8080 --nats nats://127.0.0.1:4222`
/// Example: `cbs gateway --domain orders --print-openapi > orders.json`
#[derive(Args)]
pub struct GatewayArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080 (port 0 picks one, logged).
    #[arg(long, value_name = "ADDR", required_unless_present = "print_openapi")]
    http: Option<SocketAddr>,
    /// Serve only the cells this domain exports.
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// Print the OpenAPI document of the routes found and exit.
    #[arg(long)]
    print_openapi: bool,
    /// How often to look for new or removed routes, in milliseconds.
    #[arg(long, default_value_t = 1_000, value_name = "MS")]
    refresh_ms: u64,
    /// On SIGINT/SIGTERM, how long requests in progress may take to finish.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    drain_timeout_ms: u64,
    #[command(flatten)]
    http_options: HttpArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    if let Some(domain) = &args.domain {
        cbs_host::domain::spec::check_name(domain).context("--domain")?;
    }
    let bus = args.nats.connect_client().await?;
    let client = bus.client().clone();
    let title = match &args.domain {
        Some(domain) => format!("CBS domain {domain}"),
        None => "CBS lattice".to_owned(),
    };
    let gateway = Gateway::new(
        Arc::new(bus) as Arc<dyn BodyBus>,
        args.http_options.config(&title).await?,
    );
    let refresh = Duration::from_millis(args.refresh_ms.max(100));
    let domain = args.domain.clone();
    if args.print_openapi {
        let hosts = discover(&client, refresh).await?;
        gateway.set_routes(targets(hosts, domain.as_deref()));
        let document = cbs_host::http::openapi::document(&gateway.routes(), &title);
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(ExitCode::SUCCESS);
    }
    let learning = tokio::spawn(learn_routes(client, gateway.clone(), refresh, domain));
    let addr = args.http.context("--http is required to serve")?;
    let server = Serving::start(addr, gateway).await.context("--http")?;
    let signal = shutdown_signal().await?;
    tracing::info!(
        signal,
        "draining: no new HTTP requests, finishing those in progress"
    );
    learning.abort();
    let grace = Duration::from_millis(args.drain_timeout_ms);
    Ok(match tokio::time::timeout(grace, server.stop()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    })
}

/// Asks the hosts what they serve every `every`, and serves those routes
/// (of `domain`'s exported cells only, with a domain).
async fn learn_routes(
    client: async_nats::Client,
    gateway: Arc<Gateway>,
    every: Duration,
    domain: Option<String>,
) {
    loop {
        match discover(&client, every).await {
            Ok(hosts) => gateway.set_routes(targets(hosts, domain.as_deref())),
            Err(e) => tracing::warn!(error = %e, "cannot ask the hosts for their routes"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn discover(
    client: &async_nats::Client,
    limit: Duration,
) -> Result<Vec<cbs_host::discovery::HostView>, cbs_host::envelope::BusError> {
    cbs_host::discovery::list(client, Duration::from_millis(100), limit).await
}

/// The routes of the cells `hosts` serve; with `domain`, of those it
/// exports only (a cell whose host reports no domain is left out).
fn targets(
    hosts: Vec<cbs_host::discovery::HostView>,
    domain: Option<&str>,
) -> Vec<cbs_host::http::Target> {
    let exported = |cell: &cbs_host::discovery::CellView| match domain {
        None => true,
        Some(name) => cell
            .domain
            .as_ref()
            .is_some_and(|d| d.name == name && d.exported),
    };
    let targets = hosts
        .into_iter()
        .flat_map(|h| h.cells)
        .filter(exported)
        .flat_map(|c| c.http)
        .collect::<Vec<_>>();
    dedupe(targets)
}

/// One target per cell, method and path (hosts serving one cell report
/// the same routes; mid-rollout, the newest version's are kept).
fn dedupe(mut targets: Vec<cbs_host::http::Target>) -> Vec<cbs_host::http::Target> {
    let version = |t: &cbs_host::http::Target| semver::Version::parse(&t.version).ok();
    targets.sort_by(|a, b| {
        (&a.cell, a.route.method, &a.route.path)
            .cmp(&(&b.cell, b.route.method, &b.route.path))
            .then_with(|| version(b).cmp(&version(a)))
    });
    targets.dedup_by(|b, a| {
        a.cell == b.cell && a.route.method == b.route.method && a.route.path == b.route.path
    });
    targets
}
