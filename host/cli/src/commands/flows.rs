//! `cbs flows`: recent hops from every host's memory — one flow as a
//! timeline, or the latest (failed) hops — without a trace collector.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use cbs_host::flows::{self, Hop, Query};
use clap::Args;

use crate::args::NatsArgs;
use crate::table::Table;

/// Show recent flows from the hosts' memory: one flow's hops as a
/// timeline, or the latest hops (`--failed`: failed ones).
///
/// Each host keeps the last 10,000 hops it handled (one message through one
/// cell: ids, cell, timing, outcome, error message; never the payload) and
/// its last 1,000 failed ones, and answers on `cbs-flows.query`. With a
/// correlation id, prints that flow's hops in start order, each with its
/// offset from the first (hosts' clocks may differ); exits 1 when no host
/// remembers it. Example: `cbs flows --failed`, then `cbs flows
/// 0193f9c2-5a8e-7c41-9d2b-6f1e0a7b3c4d`
#[derive(Args)]
pub struct FlowsArgs {
    /// A flow's correlation id: print its hops as a timeline.
    #[arg(value_name = "CORRELATION_ID")]
    correlation_id: Option<String>,
    /// Only failed hops.
    #[arg(long)]
    failed: bool,
    /// Only hops of this cell, e.g. logic.greet.
    #[arg(long, value_name = "CELL_ID")]
    cell: Option<String>,
    /// The newest this many hops [default: 50; a flow's: all, up to the
    /// 1,000 each host sends at most].
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Print JSON (an array of hops, oldest first) instead of a table.
    #[arg(long)]
    json: bool,
    /// Stop gathering answers after this long without a new one, in ms.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    wait_ms: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    let query = Query {
        correlation_id: args.correlation_id.clone(),
        failed: args.failed,
        cell: args.cell.clone(),
        limit: args.limit.or(args.correlation_id.is_none().then_some(50)),
    };
    let bus = args.nats.connect_client().await?;
    let quiet = Duration::from_millis(args.wait_ms);
    let hops = flows::query(&bus, &query, quiet, quiet * 10).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hops)?);
    } else if let Some(id) = &args.correlation_id {
        timeline(id, &hops);
    } else {
        latest(&args, &hops);
    }
    let unknown_flow = args.correlation_id.is_some() && hops.is_empty();
    Ok(if unknown_flow {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One flow's hops, in start order, offset from the first.
fn timeline(id: &str, hops: &[Hop]) {
    let Some(first) = hops.first() else {
        eprintln!(
            "no host remembers flow {id}: each keeps its last {} hops and {} failed ones",
            flows::MAX_HOPS,
            flows::MAX_FAILED
        );
        return;
    };
    let failed = hops.iter().filter(|h| h.failed()).count();
    println!(
        "flow {id}: {} hop(s), {failed} failed, from {}",
        hops.len(),
        time(first.started_ms)
    );
    let mut table = Table::new([
        "OFFSET", "HOST", "CELL", "VERSION", "DURATION", "OUTCOME", "ERROR",
    ]);
    table.align_right(&[0, 4]);
    for hop in hops {
        let offset = hop.started_ms.saturating_sub(first.started_ms);
        table.row([
            format!("+{offset} ms"),
            hop.host.to_string(),
            hop.cell.to_string(),
            hop.version.to_string(),
            duration(hop.duration_us),
            hop.outcome.to_string(),
            hop.error.clone().unwrap_or_default(),
        ]);
    }
    print!("{table}");
}

/// The latest hops, oldest first.
fn latest(args: &FlowsArgs, hops: &[Hop]) {
    if hops.is_empty() {
        let what = if args.failed { "failed hops" } else { "hops" };
        println!("no {what} recorded on any host");
        return;
    }
    let mut table = Table::new([
        "TIME",
        "HOST",
        "CELL",
        "CORRELATION ID",
        "DURATION",
        "OUTCOME",
        "ERROR",
    ]);
    table.align_right(&[4]);
    for hop in hops {
        table.row([
            time(hop.started_ms),
            hop.host.to_string(),
            hop.cell.to_string(),
            hop.correlation_id.clone(),
            duration(hop.duration_us),
            hop.outcome.to_string(),
            hop.error.clone().unwrap_or_default(),
        ]);
    }
    print!("{table}");
}

/// Milliseconds since the epoch as an RFC 3339 UTC time. humantime writes
/// years up to 9999 only, and a hop's time comes from another host.
fn time(ms: u64) -> String {
    let ms = ms.min(LAST_MS_OF_9999);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

const LAST_MS_OF_9999: u64 = 253_402_300_799_999;

/// Microseconds for people: `850 µs`, `3.2 ms`, `1.25 s`.
fn duration(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_the_unit_that_fits() {
        assert_eq!(duration(850), "850 µs");
        assert_eq!(duration(3_250), "3.2 ms");
        assert_eq!(duration(1_250_000), "1.25 s");
    }

    #[test]
    fn times_are_utc_with_milliseconds_and_never_panic() {
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert!(time(u64::MAX).starts_with("9999-12-31"));
    }
}
