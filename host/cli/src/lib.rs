//! The CBS command lines, `cbs-host` and `cbs`, on the `cbs-host` library:
//! both command lines in [`app`], one module per subcommand in [`commands`],
//! the flags they share in [`args`], and what only the command line does: [`build`] (`cbs build`),
//! [`scaffold`] (`cbs new`), [`report`] (how a rollout ended, for people),
//! [`loadgen`] (`cbs bench`, `make bench`), [`table`] (output for people),
//! [`signals`] (what long-running commands stop on)
//! and, with the `python` feature, [`python_worker`] (embeds CPython).

pub mod app;
pub mod args;
pub mod build;
pub mod commands;
pub mod loadgen;
#[cfg(feature = "python")]
pub mod python_worker;
pub mod report;
pub mod scaffold;
pub mod signals;
pub mod table;

use std::future::Future;
use std::process::ExitCode;

/// Runs a command on `runtime`: its exit code, or 2 with the error on
/// stderr when it failed or the runtime could not start.
pub fn block_on(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    command: impl Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let result = runtime
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
        .and_then(|runtime| {
            let result = runtime.block_on(command);
            // A task blocked on I/O must not keep the process alive.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}
