//! `cbs compliance`: the running lattice against its policy and CBS's
//! practice.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::compliance::{self, html, Options};
use clap::Args;

use crate::args::{trust_of, NatsArgs};
use crate::table::Table;

/// Check the running lattice against its policy and CBS's practice: a
/// policy signed by a trusted key and held by every live host; hosts that
/// run only signed bundles from the same keys and talk TLS to NATS;
/// releases signed, current on every host, not stale, with contracts and
/// limits, meeting the policy; tenants within their quotas; an audit trail
/// that cannot be edited and is kept; no old dead letters.
///
/// Exits 1 when any check fails, so it can gate a CI pipeline.
#[derive(Args)]
pub struct ComplianceArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the report as an HTML page to this file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// The policy and every bundle must be signed by one of these keys (a
    /// .pub file or its hex); repeatable [default: any valid signature].
    #[arg(long, value_name = "PUBKEY")]
    trust: Vec<String>,
    /// A release deployed more than this many days ago is stale.
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    stale_days: u64,
    /// Dead letters older than this many days are a violation.
    #[arg(long, default_value_t = 7, value_name = "DAYS")]
    dead_letter_days: u64,
    /// The audit trail must be kept at least this many days.
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    audit_days: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: ComplianceArgs) -> anyhow::Result<ExitCode> {
    let options = Options {
        trust: trust_of(&args.trust)?,
        stale_days: args.stale_days,
        dead_letter_days: args.dead_letter_days,
        audit_days: args.audit_days,
    };
    let bus = args.nats.connect_client().await?;
    let report = compliance::report(bus.client(), &options).await?;
    if let Some(path) = &args.html {
        let lattice = args.nats.options("").map_or_else(String::new, |o| o.urls);
        std::fs::write(path, html::page(&report, &lattice))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut table = Table::new(["CHECK", "RESULT", "FINDINGS"]);
        for check in &report.checks {
            let result = if check.passed { "pass" } else { "FAIL" };
            let mut findings = check.findings.iter();
            table.row([check.id, result, findings.next().map_or("", String::as_str)]);
            for more in findings {
                table.row(["", "", more.as_str()]);
            }
        }
        print!("{table}");
        let failed = report.checks.iter().filter(|c| !c.passed).count();
        match failed {
            0 => println!("compliant: {} check(s) passed", report.checks.len()),
            n => println!(
                "not compliant: {n} of {} check(s) failed",
                report.checks.len()
            ),
        }
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
