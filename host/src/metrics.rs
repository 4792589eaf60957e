//! Prometheus metrics and health: `cbs-host run --metrics ADDR` serves
//! `/metrics` (text exposition), `/healthz` (the process is alive) and
//! `/readyz` (every cell loaded and the bus connected).
//!
//! Counters live as atomics next to what they count; a scrape renders them.
//! Only the latency histogram is updated per message.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::ErrorCode;
use crate::resilience::BreakerState;

/// What a host shows to `/metrics` and `/readyz`: implemented by the body,
/// which owns the counters.
pub trait Source: Send + Sync + 'static {
    /// The cells served now.
    fn snapshots(&self) -> Vec<CellSnapshot>;
    /// Per-cell latency histograms, updated per message.
    fn latency(&self) -> &LatencyFamily;
    /// Times the bus connection was re-established.
    fn reconnects(&self) -> u64;
    /// Every cell loaded and the bus connected.
    fn is_ready(&self) -> bool;
}

/// One served cell's counters at the time of a scrape.
#[derive(Debug, Clone)]
pub struct CellSnapshot {
    pub cell: String,
    pub requests: u64,
    /// Non-zero error counts.
    pub errors_by_code: Vec<(ErrorCode, u64)>,
    pub in_flight: usize,
    /// Warm wasm instances, or live processes of a process runtime.
    pub instances: usize,
    pub breakers: Vec<(String, BreakerState)>,
    /// Its durable consumer, for a `[durable]` cell on JetStream.
    pub durable: Option<crate::stats::DurableCounts>,
    /// Requests sent to another host (this one was full or slow).
    pub forwarded: u64,
    /// Each version loaded: the stable one, a canary, one kept warm.
    pub versions: Vec<VersionSnapshot>,
    /// A recording of its requests is on (`cbs record`).
    pub recording: bool,
}

/// One loaded version of a cell, at the time of a scrape.
#[derive(Debug, Clone)]
pub struct VersionSnapshot {
    pub version: String,
    /// `stable`, `canary` or `warm`.
    pub role: &'static str,
    /// Of every 10,000 messages.
    pub share: u32,
    pub requests: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellLabel {
    pub cell: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    cell: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    cell: String,
    version: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    cell: String,
    target: String,
}

pub type LatencyFamily = Family<CellLabel, Histogram, fn() -> Histogram>;

/// Per-message latency buckets: 10 µs to ~2.6 s.
pub fn latency_family() -> LatencyFamily {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_01, 4.0, 10)))
}

/// The Prometheus text exposition of a host.
pub fn render(source: &dyn Source) -> String {
    let mut registry = Registry::with_prefix("cbs");
    let requests = Family::<CellLabel, Counter>::default();
    let errors = Family::<CodeLabel, Counter>::default();
    let in_flight = Family::<CellLabel, Gauge>::default();
    let instances = Family::<CellLabel, Gauge>::default();
    let breakers = Family::<TargetLabel, Gauge>::default();
    let reconnects = Counter::<u64>::default();
    let lag = Family::<CellLabel, Gauge>::default();
    let redelivered = Family::<CellLabel, Counter>::default();
    let dead_lettered = Family::<CellLabel, Counter>::default();
    let without_body = Family::<CellLabel, Counter>::default();
    let letter_failures = Family::<CellLabel, Counter>::default();
    let forwarded = Family::<CellLabel, Counter>::default();
    let share = Family::<VersionLabel, Gauge>::default();
    let version_requests = Family::<VersionLabel, Counter>::default();
    let version_errors = Family::<VersionLabel, Counter>::default();
    let recording = Family::<CellLabel, Gauge>::default();
    for cell in source.snapshots() {
        let label = CellLabel { cell: cell.cell };
        for v in cell.versions {
            let label = VersionLabel {
                cell: label.cell.clone(),
                version: v.version,
                role: v.role.to_owned(),
            };
            share.get_or_create(&label).set(i64::from(v.share));
            version_requests.get_or_create(&label).inc_by(v.requests);
            version_errors.get_or_create(&label).inc_by(v.errors);
        }
        recording
            .get_or_create(&label)
            .set(i64::from(cell.recording));
        if let Some(durable) = cell.durable {
            lag.get_or_create(&label).set(durable.lag as i64);
            redelivered
                .get_or_create(&label)
                .inc_by(durable.redelivered);
            dead_lettered
                .get_or_create(&label)
                .inc_by(durable.dead_lettered);
            without_body
                .get_or_create(&label)
                .inc_by(durable.dead_lettered_without_body);
            letter_failures
                .get_or_create(&label)
                .inc_by(durable.dead_letter_failures);
        }
        requests.get_or_create(&label).inc_by(cell.requests);
        forwarded.get_or_create(&label).inc_by(cell.forwarded);
        for (code, n) in cell.errors_by_code {
            let label = CodeLabel {
                cell: label.cell.clone(),
                code: code.as_str().to_owned(),
            };
            errors.get_or_create(&label).inc_by(n);
        }
        in_flight.get_or_create(&label).set(cell.in_flight as i64);
        instances.get_or_create(&label).set(cell.instances as i64);
        for (target, state) in cell.breakers {
            let value = match state {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            breakers
                .get_or_create(&TargetLabel {
                    cell: label.cell.clone(),
                    target,
                })
                .set(value);
        }
    }
    reconnects.inc_by(source.reconnects());
    registry.register(
        "durable_lag",
        "Messages waiting in a durable cell's consumer, as of this host's last pull",
        lag,
    );
    registry.register(
        "durable_redelivered",
        "Durable messages this host got more than once",
        redelivered,
    );
    registry.register(
        "durable_dead_lettered",
        "Durable messages this host sent to the dead-letter stream",
        dead_lettered,
    );
    registry.register(
        "durable_dead_lettered_without_body",
        "Dead letters too large for the dead-letter stream, kept without the message, which stays in the cell's stream",
        without_body,
    );
    registry.register(
        "durable_dead_letter_failures",
        "Dead letters this host could not store (the message is held and the write retried)",
        letter_failures,
    );
    registry.register(
        "cell_requests",
        "Messages handled, from the bus or from cells of this host",
        requests,
    );
    registry.register(
        "cell_forwarded",
        "Requests sent to another host serving the cell, this one being full or far slower",
        forwarded,
    );
    registry.register("cell_errors", "Failure replies, by BusError code", errors);
    registry.register(
        "cell_version_share",
        "Of every 10,000 messages, those each loaded version takes: the stable one, a canary, one kept warm after a blue-green switch (0)",
        share,
    );
    registry.register(
        "cell_version_requests",
        "Messages handled by each loaded version since it was loaded",
        version_requests,
    );
    registry.register(
        "cell_version_errors",
        "Failure replies of each loaded version since it was loaded",
        version_errors,
    );
    registry.register(
        "cell_recording",
        "1 while this host records the cell's requests for a shadow replay (cbs record)",
        recording,
    );
    registry.register(
        "cell_latency_seconds",
        "Time from arrival to reply",
        source.latency().clone(),
    );
    registry.register("cell_in_flight", "Messages running or queued", in_flight);
    registry.register(
        "cell_instances",
        "Warm wasm instances, or live processes of a process runtime",
        instances,
    );
    registry.register(
        "breaker_state",
        "Circuit breaker per call target: 0 closed, 1 half-open, 2 open",
        breakers,
    );
    registry.register(
        "bus_reconnects",
        "Times the bus connection was re-established",
        reconnects,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// Serves the endpoints on `addr`; returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, source: Arc<dyn Source>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let source = source.clone();
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = respond(&*source, request.uri().path());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn respond(source: &dyn Source, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, text) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(source),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if source.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: cells still loading or bus disconnected\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(text)))
        .expect("a valid response")
}
