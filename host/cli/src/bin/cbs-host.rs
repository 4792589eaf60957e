//! `cbs-host`: runs CBS cells and bridges their envelopes to a bus.

use std::process::ExitCode;

use cbs_cli::app::{run_host, HostCli};
use clap::Parser;

fn main() -> ExitCode {
    run_host(HostCli::parse())
}
