//! `cbs-host`: runs CBS cells and bridges their envelopes to a bus.

use std::process::ExitCode;

use cbs_cli::app::{run_host, HostCli};
use clap::Parser;

/// mimalloc: glibc's malloc and free were a tenth of a busy host's CPU
/// time; without transparent huge pages (feature `no_thp`) an idle host
/// stays as small as with glibc (docs/adr/0018-resident-slots-and-mimalloc.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    run_host(HostCli::parse())
}
