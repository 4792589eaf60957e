//! `cbs`: the CBS command line for people and scripts.

use std::process::ExitCode;

use cbs_cli::app::{run_cbs, CbsCli};
use clap::Parser;

fn main() -> ExitCode {
    run_cbs(CbsCli::parse())
}
