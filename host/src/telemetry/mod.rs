//! Logs and traces: `tracing` to stderr, as text or JSON lines, and, when
//! an OTLP endpoint is given, spans exported over OTLP/HTTP. Every hop runs
//! in a span carrying the flow's `correlation_id`; W3C `traceparent` in the
//! envelope links the spans of one flow across hosts. The spans of a hop
//! are [`messaging`]'s; log levels by name are [`level`].

pub mod level;
pub mod messaging;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::envelope::header;

/// Set once spans are exported: trace context work is skipped otherwise
/// (it runs on every message and every call).
static EXPORTING: AtomicBool = AtomicBool::new(false);

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    strum::Display,
    strum::EnumString,
    strum::VariantNames,
)]
#[strum(serialize_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: could not flush traces: {e}");
            }
        }
    }
}

/// Where spans are exported, and who exports them: the resource of every
/// span (`service.name`, and `service.instance.id` so that each host's
/// spans can be told apart).
#[derive(Debug, Clone)]
pub struct Exporter {
    /// An OTLP/HTTP base URL such as `http://127.0.0.1:4318`; `None`:
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else no export.
    pub endpoint: Option<String>,
    pub service: String,
    pub instance: String,
}

impl Default for Exporter {
    fn default() -> Self {
        Self {
            endpoint: None,
            service: "cbs-host".to_owned(),
            instance: format!("cbs-host-{}", std::process::id()),
        }
    }
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive
/// (`info`, `cbs_host=debug`, ...); `RUST_LOG` wins when set.
pub fn init(format: LogFormat, level: &str) {
    let _ = init_with_otlp(format, level, Exporter::default());
}

/// As [`init`], exporting spans as `exporter` says.
pub fn init_with_otlp(
    format: LogFormat,
    level: &str,
    exporter: Exporter,
) -> anyhow::Result<Telemetry> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let otlp = exporter
        .endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok());
    let provider = otlp
        .map(|endpoint| provider(&endpoint, &exporter))
        .transpose()?;
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("cbs-host"))
            .with_filter(EnvFilter::new("cbs_host=debug"))
    });
    let exporting = otel.is_some();
    // A second init (tests) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
        .is_ok();
    if installed && exporting {
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry { provider })
}

fn provider(endpoint: &str, who: &Exporter) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    crate::tls::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("cannot export traces to {url}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(who.service.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            who.instance.clone(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` a child of the `traceparent` in `headers`, if any.
pub fn link_parent(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    if EXPORTING.load(Ordering::Relaxed) && headers.contains_key(header::TRACEPARENT) {
        let cx = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(cx);
    }
}

/// Writes the current span's context as `traceparent` into `headers`
/// (nothing when no span is being exported).
pub fn inject_current(headers: &mut BTreeMap<String, String>) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
}

struct Headers<'a>(&'a BTreeMap<String, String>);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut BTreeMap<String, String>);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}
