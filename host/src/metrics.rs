//! Prometheus metrics and health: `cbs-host run --metrics ADDR` serves
//! `/metrics` (text exposition), `/healthz` (the process is alive) and
//! `/readyz` (every cell loaded and the bus connected).
//!
//! Counters live as atomics next to what they count; a scrape renders them.
//! Only the latency histogram is updated per message.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
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

use crate::body::Body;
use crate::resilience::BreakerState;

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
pub fn render(body: &Body) -> String {
    let mut registry = Registry::with_prefix("cbs");
    let requests = Family::<CellLabel, Counter>::default();
    let errors = Family::<CodeLabel, Counter>::default();
    let in_flight = Family::<CellLabel, Gauge>::default();
    let instances = Family::<CellLabel, Gauge>::default();
    let breakers = Family::<TargetLabel, Gauge>::default();
    let reconnects = Counter::<u64>::default();
    for cell in body.cells() {
        let label = CellLabel {
            cell: cell.manifest.id.clone(),
        };
        let stats = &cell.stats;
        requests
            .get_or_create(&label)
            .inc_by(stats.requests.load(Ordering::Relaxed));
        for (code, n) in stats.errors_by_code() {
            let label = CodeLabel {
                cell: label.cell.clone(),
                code: code.as_str().to_owned(),
            };
            errors.get_or_create(&label).inc_by(n);
        }
        in_flight.get_or_create(&label).set(cell.in_flight() as i64);
        instances
            .get_or_create(&label)
            .set(cell.runner.instances() as i64);
        for (target, state) in cell.breakers() {
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
    reconnects.inc_by(body.bus().reconnects());
    registry.register(
        "cell_requests",
        "Messages handled, from the bus or from cells of this host",
        requests,
    );
    registry.register("cell_errors", "Failure replies, by BusError code", errors);
    registry.register(
        "cell_latency_seconds",
        "Time from arrival to reply",
        body.latency().clone(),
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
pub async fn serve(addr: SocketAddr, body: Arc<Body>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = respond(&body, request.uri().path());
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

fn respond(body: &Body, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, text) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(body),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if body.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
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
