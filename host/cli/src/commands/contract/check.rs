//! `cbs contract check`: does a new contract keep the old one's promises?

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::bundle::Bundle;
use cbs_host::contract::compat::{self, Direction};
use cbs_host::contract::diff::ContractDiff;
use cbs_host::manifest::CellSpec;
use clap::Args;

#[derive(Args)]
pub struct CheckArgs {
    /// The contract in force: a schema (.json), a cell folder or a bundle.
    old: PathBuf,
    /// The contract to check against it, of the same kind.
    new: PathBuf,
    /// Compare two schema files as output schemas.
    #[arg(long)]
    output: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let is_schema = |p: &PathBuf| p.extension().is_some_and(|e| e == "json") && p.is_file();
    let breaks: Vec<String> = if is_schema(&args.old) && is_schema(&args.new) {
        let (direction, name) = if args.output {
            (Direction::Output, "output")
        } else {
            (Direction::Input, "input ")
        };
        compat::check(&read_json(&args.old)?, &read_json(&args.new)?, direction)
            .into_iter()
            .map(|b| format!("{name} {b}"))
            .collect()
    } else {
        let (old, new) = (bundle_of(&args.old)?, bundle_of(&args.new)?);
        let (old_schemas, new_schemas) = (old.schemas()?, new.schemas()?);
        ContractDiff::between(
            Some((&old_schemas, &old.manifest.version)),
            (&new_schemas, &new.manifest.version),
        )
        .breaks
    };
    if breaks.is_empty() {
        println!(
            "compatible: {} keeps the contract of {}",
            args.new.display(),
            args.old.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} breaking change(s):", breaks.len());
    for b in &breaks {
        println!("  {b}");
    }
    Ok(ExitCode::FAILURE)
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// A bundle file, or a cell folder packed in memory.
fn bundle_of(path: &Path) -> anyhow::Result<Bundle> {
    if path.is_dir() {
        Bundle::pack_contract(&CellSpec::from_dir(path)?)
    } else {
        Bundle::read(path)
    }
}
