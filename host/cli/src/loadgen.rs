//! A closed-loop load generator: N workers each send a request, wait for the
//! reply, and send the next, for a fixed time. Used by `cbs bench` and by
//! `make bench`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use cbs_host::bus::{BodyBus, Message};
use cbs_host::call::call;
use cbs_host::envelope::{BusError, Envelope};

/// What to send, how hard, and for how long.
#[derive(Debug, Clone)]
pub struct Load {
    pub subject: String,
    /// The request payload (JSON text); each request gets a fresh envelope.
    pub payload: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Measured time, after `warmup`.
    pub duration: Duration,
    pub warmup: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Send raw payload bytes instead of an envelope (for non-CBS responders).
    pub raw: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub requests: u64,
    pub errors: u64,
    /// Errors by `BusError` code (or `transport` for bus failures).
    pub errors_by_code: BTreeMap<String, u64>,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// Live counters, for a progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

/// Runs `load` against `bus`; `progress` is updated as requests complete.
pub async fn run(bus: Arc<dyn BodyBus>, load: &Load, progress: Arc<Progress>) -> Report {
    let load = Arc::new(load.clone());
    if !load.warmup.is_zero() {
        workers(&bus, &load, Instant::now() + load.warmup, &Arc::default()).await;
    }
    let start = Instant::now();
    let results = workers(&bus, &load, start + load.duration, &progress).await;
    let seconds = start.elapsed().as_secs_f64();
    summarize(results, seconds)
}

/// One worker's latencies (µs) and errors by code.
pub type Outcome = (Vec<u32>, BTreeMap<String, u64>);

async fn workers(
    bus: &Arc<dyn BodyBus>,
    load: &Arc<Load>,
    until: Instant,
    progress: &Arc<Progress>,
) -> Vec<Outcome> {
    let tasks: Vec<_> = (0..load.concurrency.max(1))
        .map(|_| {
            let (bus, load, progress) = (bus.clone(), load.clone(), progress.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = BTreeMap::new();
                while Instant::now() < until {
                    let sent = Instant::now();
                    match one(bus.as_ref(), &load).await {
                        Ok(()) => {
                            latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32)
                        }
                        Err(code) => {
                            *errors.entry(code).or_insert(0) += 1;
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    progress.done.fetch_add(1, Ordering::Relaxed);
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("load worker"));
    }
    out
}

/// One request; `Err(code)` on failure.
async fn one(bus: &dyn BodyBus, load: &Load) -> Result<(), String> {
    let code = |e: BusError| e.code.as_str().to_owned();
    if load.raw {
        let message = Message::new(load.subject.clone(), Bytes::from(load.payload.clone()));
        return bus
            .request(message, load.timeout)
            .await
            .map(drop)
            .map_err(code);
    }
    let payload =
        RawValue::from_string(load.payload.clone()).map_err(|_| "invalid_input".to_owned())?;
    let envelope = Envelope::new(load.subject.clone(), payload);
    call(bus, &envelope, load.timeout)
        .await
        .map(drop)
        .map_err(code)
}

/// Rates and percentiles of the workers' outcomes over `seconds`.
pub fn summarize(results: Vec<Outcome>, seconds: f64) -> Report {
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors_by_code = BTreeMap::new();
    for (lat, errs) in results {
        latencies.extend(lat);
        for (code, n) in errs {
            *errors_by_code.entry(code).or_insert(0) += n;
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[i])
    };
    let errors: u64 = errors_by_code.values().sum();
    let requests = latencies.len() as u64 + errors;
    Report {
        requests,
        errors,
        errors_by_code,
        seconds,
        rps: latencies.len() as f64 / seconds,
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let lat: Vec<u32> = (1..=1000).collect();
        let mut errs = BTreeMap::new();
        errs.insert("timeout".to_owned(), 5);
        let r = summarize(vec![(lat, errs)], 2.0);
        assert_eq!(r.requests, 1005);
        assert_eq!(r.errors, 5);
        assert_eq!(r.rps, 500.0);
        assert_eq!(
            (r.p50_us, r.p90_us, r.p99_us, r.p999_us),
            (500.0, 900.0, 990.0, 999.0)
        );
    }
}
