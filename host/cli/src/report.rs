//! How a rollout ended: one line for the audit trail, and the report for
//! people with the exit code (`cbs deploy`, `cbs rollback`).

use std::process::ExitCode;

use crate::rollout::Outcome;

/// One line on how a rollout ended, for the audit trail.
pub fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Serving { hosts, .. } => format!("serving on {hosts} host(s)"),
        Outcome::Failed(failures) => {
            let hosts: Vec<&str> = failures.iter().map(|f| f.host.as_str()).collect();
            format!("failed on {}; reverted", hosts.join(", "))
        }
        Outcome::TimedOut { missing } => format!("not confirmed by {}", missing.join(", ")),
        Outcome::Unplaced(why) => format!("not placed: {why}"),
    }
}

/// Prints how a rollout went; the exit code says it.
pub fn report(cell: &str, version: &str, outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Serving { hosts: 0, .. } => {
            println!("{cell} {version} is the desired release; no host is watching now (hosts started with `cbs-host run --watch` will serve it)");
            ExitCode::SUCCESS
        }
        Outcome::Serving { hosts, elapsed } => {
            println!(
                "{cell} {version} serving on {hosts} host(s) after {} ms",
                elapsed.as_millis()
            );
            ExitCode::SUCCESS
        }
        Outcome::Failed(failures) => {
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
