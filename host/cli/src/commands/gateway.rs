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
/// Example: `cbs gateway --http 127.0.0.1:8080 --nats nats://127.0.0.1:4222`
#[derive(Args)]
pub struct GatewayArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080 (port 0 picks one, logged).
    #[arg(long, value_name = "ADDR")]
    http: SocketAddr,
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
    let bus = args.nats.connect_client().await?;
    let client = bus.client().clone();
    let gateway = Gateway::new(
        Arc::new(bus) as Arc<dyn BodyBus>,
        args.http_options.config("CBS lattice")?,
    );
    let refresh = Duration::from_millis(args.refresh_ms.max(100));
    let learning = tokio::spawn(learn_routes(client, gateway.clone(), refresh));
    let server = Serving::start(args.http, gateway).await.context("--http")?;
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

/// Asks the hosts what they serve every `every`, and serves those routes.
async fn learn_routes(client: async_nats::Client, gateway: Arc<Gateway>, every: Duration) {
    let quiet = Duration::from_millis(100);
    loop {
        match cbs_host::discovery::list(&client, quiet, every).await {
            Ok(hosts) => {
                let targets = hosts
                    .into_iter()
                    .flat_map(|h| h.cells)
                    .flat_map(|c| c.http)
                    .collect::<Vec<_>>();
                gateway.set_routes(dedupe(targets));
            }
            Err(e) => tracing::warn!(error = %e, "cannot ask the hosts for their routes"),
        }
        tokio::time::sleep(every).await;
    }
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
