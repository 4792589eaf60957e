//! `cbs new`: a cell folder that builds and tests as made.

use std::path::PathBuf;
use std::process::ExitCode;

use cbs_host::manifest::Lang;
use clap::Args;

use crate::args::names_of;
use crate::scaffold;

/// Create a cell folder that builds and tests unchanged.
///
/// Example: `cbs new text.upper && cd text.upper && cargo test && cbs build .`
/// (`--lang python`: a Python component, `python3 -m unittest` tests it;
/// `--lang dart`: a Dart sidecar, `dart test` tests it).
#[derive(Args)]
pub struct NewArgs {
    /// The cell id, dotted lowercase, e.g. text.upper.
    cell_id: String,
    /// The language of the cell.
    #[arg(long, value_parser = names_of::<Lang>(), default_value = "rust")]
    lang: Lang,
    /// Folder to create [default: ./<cell-id>].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The guest SDK (guest-sdk/rust, python or dart of the CBS sources)
    /// [default: the one of the tree cbs was built from].
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
}

pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.cell_id));
    let files = scaffold::new_cell(&args.cell_id, args.lang, &dir, args.sdk.as_deref())?;
    println!("created cell {} in {}:", args.cell_id, dir.display());
    for file in files {
        println!("  {}", file.display());
    }
    let steps = match args.lang {
        Lang::Python => "python3 -m unittest   # the handler's unit tests\n  cbs build .           # component + bundle",
        Lang::Dart => &format!(
            "dart pub get && dart test   # the handler's unit tests\n  dart compile exe bin/main.dart -o bin/{}",
            args.cell_id.replace(['.', '-'], "_")
        ),
        Lang::Rust => "cargo test            # the handler's unit tests\n  cbs build .           # component + bundle",
    };
    println!(
        "next:\n  cd {}\n  {steps}\n  cbs-host run --start {} --input '{{\"text\":\"hi\"}}' .",
        dir.display(),
        args.cell_id
    );
    Ok(ExitCode::SUCCESS)
}
