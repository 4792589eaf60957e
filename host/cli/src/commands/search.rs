//! `cbs search`: the cells a registry holds.

use std::process::ExitCode;

use cbs_host::registry::{self, oci};
use clap::Args;

use crate::args::RegistryArgs;

/// List the cells an OCI registry holds (from its catalog, tags and the
/// annotations `cbs push` writes), those whose repository, cell id or
/// contract ids contain TERM.
///
/// Example: `cbs search greet --registry localhost:5000 --insecure`
#[derive(Args)]
pub struct SearchArgs {
    /// What to look for (case-insensitive) [default: every cell].
    term: Option<String>,
    /// The registry, HOST[:PORT].
    #[arg(long, value_name = "HOST")]
    registry: String,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    args: RegistryArgs,
}

pub async fn run(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let client = args.args.client(&args.registry).await?;
    let found = registry::search(&client, args.term.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(ExitCode::SUCCESS);
    }
    if found.is_empty() {
        eprintln!("no cell found in {}", args.registry);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = found
        .iter()
        .map(|l| {
            let a = |k: &str| l.annotations.get(k).cloned().unwrap_or_else(|| "-".into());
            [
                a(oci::CELL),
                l.versions.join(", "),
                a(oci::RUNTIME),
                format!("{} -> {}", a(oci::CONTRACT_INPUT), a(oci::CONTRACT_OUTPUT)),
                l.annotations
                    .get(oci::SIGNER)
                    .map_or("unsigned".into(), |k| short(k)),
                format!("{}/{}", args.registry, l.repository),
            ]
        })
        .collect();
    print_table(
        [
            "CELL",
            "VERSIONS",
            "RUNTIME",
            "CONTRACT",
            "SIGNER",
            "REFERENCE",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// A key's first 16 hex digits.
pub fn short(key: &str) -> String {
    key.chars().take(16).collect()
}

fn print_table<const N: usize>(head: [&str; N], rows: &[[String; N]]) {
    let mut widths = head.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(head.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
