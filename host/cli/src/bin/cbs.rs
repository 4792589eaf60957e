//! `cbs`: the CBS command line for people and scripts.

use std::process::ExitCode;

use cbs_cli::app::{run_cbs, CbsCli};
use clap::Parser;

/// The allocator `cbs-host` runs with: `cbs gateway` and `cbs bench` are
/// busy processes too (docs/adr/0018-resident-slots-and-mimalloc.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    run_cbs(CbsCli::parse())
}
