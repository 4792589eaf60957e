//! `cbs console`: the browser console of a lattice.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cbs_host::console::source::Nats;
use cbs_host::console::{Console, Options};
use clap::Args;

use crate::args::NatsArgs;
use crate::signals::shutdown_signal;

/// Serve the console: see the lattice's hosts and cells live in a browser.
///
/// Read-only: it shows what the hosts report (discovery) and the desired
/// state; it changes nothing. Pages update every second over server-sent
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
    /// How far back advice looks, in seconds: capacity refusals within
    /// it, a durable lag growing over it, no request for six of it.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    advice_window_secs: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let bus = args.nats.connect_client().await?;
    let source = Nats::connect(bus).await?;
    let options = Options {
        advice_window: Duration::from_secs(args.advice_window_secs.max(1)),
    };
    let console = Console::start(args.listen, Arc::new(source), options).await?;
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "stopping the console");
    console.stop().await;
    Ok(ExitCode::SUCCESS)
}
