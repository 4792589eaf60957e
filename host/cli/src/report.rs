//! How a rollout ended, for people: its warnings, and the report with its
//! exit code (`cbs deploy`, `cbs rollback`).

use std::process::ExitCode;

use cbs_host::deploy::rollout::Outcome;

/// Prints a rollout's warnings.
pub fn notes(notes: &[String]) {
    for note in notes {
        eprintln!("warning: {note}");
    }
}

/// Prints how a rollout went; the exit code says it.
pub fn report(cell: &str, version: &str, outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Serving { hosts, .. } if hosts.is_empty() => {
            println!("{cell} {version} is the desired release; no host is watching now (hosts started with `cbs-host run --watch` will serve it)");
            ExitCode::SUCCESS
        }
        Outcome::Serving {
            hosts,
            elapsed,
            warm,
        } => {
            let warm = match warm {
                0 => String::new(),
                n => format!(" ({n} switched to the version kept warm, no load)"),
            };
            println!(
                "{cell} {version} serving on {} host(s) after {} ms{warm}",
                hosts.len(),
                elapsed.as_millis()
            );
            ExitCode::SUCCESS
        }
        Outcome::Failed {
            failed: failures, ..
        } => {
            eprintln!(
                "error: {cell} {version} failed to load; the desired state is back to what it was before the deploy:"
            );
            for f in failures {
                eprintln!(
                    "  {}: {} (still serving: {})",
                    f.host,
                    f.error.unwrap_or_default(),
                    f.serving.as_deref().unwrap_or("nothing")
                );
            }
            ExitCode::FAILURE
        }
        Outcome::Unplaced(why) => {
            eprintln!("error: {cell} {version} is desired, but no host can take a replica: {why} (see `cbs ls`)");
            ExitCode::FAILURE
        }
        Outcome::TimedOut { missing } => {
            eprintln!(
                "error: {cell} {version} is desired, but these hosts did not report in time: {} (see `cbs ls`)",
                missing.join(", ")
            );
            ExitCode::FAILURE
        }
    }
}
