//! `cbs replay --shadow BUNDLE`: a recording replayed against a candidate.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cbs_host::bundle::Bundle;
use cbs_host::host::shadow::{self as replay, Replayed, Summary};
use cbs_host::shadow::stream;

use crate::args::NatsArgs;

pub async fn run(
    path: &Path,
    limit: u64,
    timeout: Duration,
    json: bool,
    nats: &NatsArgs,
) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::from_bytes(
        &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("in {}", path.display()))?;
    let cell = bundle.manifest.cell.clone();
    let bus = nats.connect_client().await?;
    let js = async_nats::jetstream::new(bus.client().clone());
    let (records, invalid) = stream::read(&js, &cell, limit).await?;
    if invalid > 0 {
        eprintln!("warning: {invalid} record(s) that do not parse were skipped");
    }
    if records.is_empty() {
        anyhow::bail!(
            "the recording of {cell} is empty: record some traffic with `cbs record {cell}` first"
        );
    }
    eprintln!(
        "replaying {} recorded request(s) of {cell} against {} {} (no live traffic, calls answered from the recording)",
        records.len(),
        cell,
        bundle.manifest.version
    );
    let total = records.len();
    let progress = |done: usize| {
        if done.is_multiple_of(100) && done < total {
            eprintln!("{done} of {total} replayed…");
        }
    };
    let results = replay::run(&bundle, &records, timeout, progress).await?;
    let summary = Summary::of(&results);
    if json {
        for result in &results {
            println!("{}", serde_json::to_string(result)?);
        }
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        for result in results.iter().filter(|r| r.verdict != "equal") {
            print_one(result);
        }
        println!(
            "{} replayed: {} equal, {} different, {} error(s)",
            summary.replayed, summary.equal, summary.different, summary.errors
        );
    }
    Ok(if summary.equal == summary.replayed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_one(result: &Replayed) {
    println!(
        "#{} {}: request {}",
        result.seq, result.verdict, result.request
    );
    if let Some(error) = &result.error {
        println!("  {}: {}", error.code, error.message);
    }
    for d in &result.differences {
        let show = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .map_or("(absent)".to_owned(), ToString::to_string)
        };
        let path = if d.path.is_empty() {
            "(the reply)"
        } else {
            &d.path
        };
        println!(
            "  {path}: recorded {}, now {}",
            show(&d.recorded),
            show(&d.candidate)
        );
    }
    for call in &result.unrecorded {
        println!(
            "  called {} with {}: not in the recording",
            call.cell, call.request
        );
    }
}
