//! The HTTP server: matches a request to a route, checks access, maps it
//! to one envelope for the route's cell, sends it over the bus and answers
//! with the reply payload — or with the failure as a problem. It also
//! serves `/openapi.json`, `/healthz` and `/readyz`. HTTP/1.1 and HTTP/2
//! (cleartext, prior knowledge) on one port; SIGTERM drains it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::value::RawValue;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use super::auth::Authenticator;
use super::listen::Limits;
use super::problem::{self, Problem};
use super::request::payload;
use super::route::{Auth, Matched, Method, Routes, Target};
use super::trace;
use crate::bus::BodyBus;
use crate::envelope::{header as envelope_header, BusError, Envelope};
use crate::subjects::subject_of;
use crate::telemetry::messaging::{Hop, Operation};

/// The flow's correlation id, taken from the request and returned.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// Milliseconds the caller will wait: the flow's budget, when shorter than
/// the cell's own deadline.
pub const DEADLINE_HEADER: &str = "x-deadline-ms";
/// The longest correlation id taken from a request.
const MAX_CORRELATION_ID: usize = 128;

/// How the server treats requests.
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Origins allowed by CORS (`*` for any); none: no CORS headers.
    pub cors_origins: Vec<String>,
    pub auth: Authenticator,
    /// The OpenAPI document's title.
    pub title: String,
    /// Connections at once, and how long one may go without a request.
    pub connections: Limits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit: 1 << 20,
            cors_origins: Vec::new(),
            auth: Authenticator::default(),
            title: "CBS cells".to_owned(),
            connections: Limits::default(),
        }
    }
}

/// The routes served and the bus requests go out on.
pub struct Gateway {
    bus: Arc<dyn BodyBus>,
    routes: RwLock<(Vec<Target>, Arc<Routes>)>,
    config: HttpConfig,
}

impl Gateway {
    pub fn new(bus: Arc<dyn BodyBus>, config: HttpConfig) -> Arc<Self> {
        Arc::new(Self {
            bus,
            routes: RwLock::new((Vec::new(), Arc::new(Routes::new(Vec::new()).0))),
            config,
        })
    }

    /// Serves `targets` from now on (a no-op when they did not change).
    pub fn set_routes(&self, mut targets: Vec<Target>) {
        targets.sort_by(|a, b| {
            (&a.route.path, a.route.method, &a.cell).cmp(&(&b.route.path, b.route.method, &b.cell))
        });
        if self.routes.read().unwrap().0 == targets {
            return;
        }
        let (routes, conflicts) = Routes::new(targets.clone());
        for conflict in conflicts {
            tracing::warn!(%conflict, "two cells claim one route; the first cell id keeps it");
        }
        let served: Vec<String> = routes
            .targets()
            .iter()
            .map(|t| format!("{} {} → {}", t.route.method.as_str(), t.route.path, t.cell))
            .collect();
        tracing::info!(routes = ?served, "HTTP routes");
        *self.routes.write().unwrap() = (targets, Arc::new(routes));
    }

    /// How many connections it holds and for how long without a request.
    pub fn limits(&self) -> super::listen::Limits {
        self.config.connections
    }

    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().unwrap().1.clone()
    }
}

/// The gateway's routes: OpenAPI, health, and every cell route.
pub fn app(gateway: Arc<Gateway>) -> axum::Router {
    let cors = cors(&gateway.config.cors_origins);
    let app = axum::Router::new()
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(handle)
        .with_state(gateway);
    match cors {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let names = [
        "content-type",
        "authorization",
        CORRELATION_HEADER,
        "traceparent",
        DEADLINE_HEADER,
    ];
    let headers = names.map(header::HeaderName::from_static);
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::PUT,
                axum::http::Method::PATCH,
                axum::http::Method::DELETE,
            ])
            .allow_headers(headers.clone())
            .expose_headers([
                header::HeaderName::from_static(CORRELATION_HEADER),
                header::HeaderName::from_static("traceparent"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

async fn openapi(State(gateway): State<Arc<Gateway>>) -> Response {
    let doc = super::openapi::document(&gateway.routes(), &gateway.config.title);
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.bus.is_connected() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the bus is not connected").into_response()
    }
}

/// Every request that is not one of the server's own paths.
async fn handle(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let routes = gateway.routes();
    let matched = Method::parse(parts.method.as_str()).and_then(|m| routes.find(m, &path));
    let Some(matched) = matched else {
        return unrouted(&routes, &path);
    };
    let route = &matched.target.route;
    let span = tracing::debug_span!(
        "http",
        otel.name = %format!("{} {}", route.method.as_str(), route.path),
        otel.kind = "server",
        http.request.method = route.method.as_str(),
        http.route = %route.path,
        url.path = %path,
        cbs.cell = %matched.target.cell,
        http.response.status_code = tracing::field::Empty,
    );
    let incoming = trace::incoming(&parts.headers);
    crate::telemetry::link_parent(&span, &incoming);
    let response = answer(
        &gateway,
        &parts.headers,
        parts.uri.query(),
        body,
        &matched,
        &path,
    )
    .instrument(span.clone())
    .await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// 404 when no route has the path, 405 (with `Allow`) when another
/// method has.
fn unrouted(routes: &Routes, path: &str) -> Response {
    let methods = routes.methods_at(path);
    if methods.is_empty() {
        return problem_response(
            Problem::http(
                404,
                "Not Found",
                format!("no route for {path}; see /openapi.json"),
                path,
            ),
            None,
            None,
        );
    }
    let allow: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
    let mut response = problem_response(
        Problem::http(
            405,
            "Method Not Allowed",
            format!("{path} takes {}", allow.join(", ")),
            path,
        ),
        None,
        None,
    );
    if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Access, body, payload, the call, the reply.
async fn answer(
    gateway: &Gateway,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Body,
    matched: &Matched,
    path: &str,
) -> Response {
    let target = &matched.target;
    if target.route.auth == Auth::Bearer {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let allowed = gateway
            .config
            .auth
            .authorize(authorization, super::oidc::Role::Caller)
            .await;
        if let Err(why) = allowed {
            let mut response =
                problem_response(Problem::http(401, "Unauthorized", why, path), None, None);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    if let Some(kind) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        if !is_json(kind) {
            let detail = format!("the body is {kind}; send application/json");
            return problem_response(
                Problem::http(415, "Unsupported Media Type", detail, path),
                None,
                None,
            );
        }
    }
    let Some(bytes) = read_body(body, gateway.config.body_limit).await else {
        let detail = format!(
            "the body is larger than {} bytes",
            gateway.config.body_limit
        );
        return problem_response(
            Problem::http(413, "Content Too Large", detail, path),
            None,
            None,
        );
    };
    let correlation = correlation_id(headers);
    let fields = match payload(target, matched.params.clone(), query, &bytes) {
        Ok(fields) => fields,
        Err(error) => return failure(&error, path, correlation.as_deref(), None),
    };
    let subject = subject_of(&target.cell);
    let span = Hop::new(Operation::Send, gateway.bus.kind(), &subject)
        .to_cell(&target.cell)
        .span();
    let envelope = span.in_scope(|| envelope(target, fields, correlation, headers));
    let traceparent = envelope.headers.get(envelope_header::TRACEPARENT).cloned();
    let cid = envelope.correlation_id.clone();
    let wait = Duration::from_millis(budget(target, headers)) + Duration::from_millis(100);
    let call = crate::call::request(gateway.bus.as_ref(), &envelope, wait);
    match call.instrument(span).await {
        Ok(reply) => match reply.into_result() {
            Ok(payload) => success(&payload, &cid, traceparent.as_deref()),
            Err(error) => failure(&error, path, Some(&cid), traceparent.as_deref()),
        },
        Err(error) => failure(&error, path, Some(&cid), traceparent.as_deref()),
    }
}

/// The body, unless it is larger than `limit` bytes: refused on its
/// declared length (`Content-Length`) before any of it is read, else as
/// soon as more arrives.
async fn read_body(body: Body, limit: usize) -> Option<Bytes> {
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    if axum::body::HttpBody::size_hint(&body).lower() > limit_u64 {
        return None;
    }
    axum::body::to_bytes(body, limit).await.ok()
}

/// The envelope of one HTTP request: its own correlation id (or the
/// caller's), trace context (the caller's continued, or a new trace) and
/// budget.
fn envelope(
    target: &Target,
    fields: serde_json::Value,
    correlation: Option<String>,
    headers: &HeaderMap,
) -> Envelope {
    // Serialized straight into the envelope's raw payload: parsing the
    // text again would only check what serde_json just wrote.
    let payload = serde_json::value::to_raw_value(&fields)
        .unwrap_or_else(|_| RawValue::from_string("{}".to_owned()).expect("{} is JSON"));
    let mut envelope = Envelope::new(subject_of(&target.cell), payload);
    if let Some(id) = correlation {
        envelope.correlation_id = id;
    }
    let mut trace_headers = BTreeMap::new();
    crate::telemetry::inject_current(&mut trace_headers);
    let traceparent = trace_headers
        .remove(envelope_header::TRACEPARENT)
        .unwrap_or_else(|| {
            trace::child_of(
                trace::incoming(headers)
                    .get(envelope_header::TRACEPARENT)
                    .map(String::as_str),
            )
        });
    envelope
        .headers
        .insert(envelope_header::TRACEPARENT.to_owned(), traceparent);
    envelope.headers.insert(
        envelope_header::BUDGET_MS.to_owned(),
        budget(target, headers).to_string(),
    );
    envelope
}

/// The caller's deadline header, capped by the cell's own deadline.
fn budget(target: &Target, headers: &HeaderMap) -> u64 {
    headers
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(target.timeout_ms, |ms| ms.min(target.timeout_ms))
}

/// The caller's correlation id, when it is a short printable token.
fn correlation_id(headers: &HeaderMap) -> Option<String> {
    let id = headers.get(CORRELATION_HEADER)?.to_str().ok()?.trim();
    let ok = !id.is_empty()
        && id.len() <= MAX_CORRELATION_ID
        && id.chars().all(|c| c.is_ascii_graphic());
    ok.then(|| id.to_owned())
}

/// Whether a body of this type is read as JSON: JSON types, and
/// `application/x-www-form-urlencoded`, which `curl -d` sends by default
/// (the body must still parse as JSON).
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence == "application/x-www-form-urlencoded"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn success(payload: &RawValue, correlation: &str, traceparent: Option<&str>) -> Response {
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        payload.get().to_owned(),
    )
        .into_response();
    flow_headers(response.headers_mut(), Some(correlation), traceparent);
    response
}

fn failure(
    error: &BusError,
    path: &str,
    correlation: Option<&str>,
    traceparent: Option<&str>,
) -> Response {
    problem_response(
        Problem::of(error, path, correlation),
        correlation,
        traceparent,
    )
}

fn problem_response(
    problem: Problem,
    correlation: Option<&str>,
    traceparent: Option<&str>,
) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, problem::CONTENT_TYPE)],
        problem.body.to_string(),
    )
        .into_response();
    if let Some(seconds) = problem.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    flow_headers(response.headers_mut(), correlation, traceparent);
    response
}

fn flow_headers(headers: &mut HeaderMap, correlation: Option<&str>, traceparent: Option<&str>) {
    for (name, value) in [
        (CORRELATION_HEADER, correlation),
        ("traceparent", traceparent),
    ] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(header::HeaderName::from_static(name), value);
        }
    }
}
