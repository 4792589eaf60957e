//! The console: a browser UI to see a lattice (or one host) live, served
//! by CBS itself with nothing fetched from outside (ADR 0021).
//!
//! [`view`] (what the views show), [`source`] (where it comes from: NATS
//! or a body in process), [`live`] (one snapshot per view and tick, sent
//! to every viewer as server-sent events), [`advice`] (what to change,
//! from a sampled history); the pages are a shell and a script under
//! `assets/`, embedded in the binary.

mod acting;
pub mod actions;
pub mod advice;
pub mod deployer;
mod live;
pub mod source;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::actions::Actions;
use self::advice::Advisor;
use self::live::Snapshots;
pub use self::source::Source;
use crate::http::listen::Limits;
use crate::http::Serving;

const SHELL: &str = include_str!("assets/console.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// Every answer's headers: the browser itself refuses anything outside
/// the console's origin, inline scripts included.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// How a console runs.
#[derive(Clone)]
pub struct Options {
    /// How far back advice looks (see [`advice`]).
    pub advice_window: Duration,
    /// Who may act (replay dead letters); `None`: read-only.
    pub actions: Option<Arc<Actions>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            advice_window: advice::DEFAULT_WINDOW,
            actions: None,
        }
    }
}

/// A console served on its own task.
pub struct Console {
    server: Serving,
    /// Ends the live streams, which would hold the server's drain open.
    streams: watch::Sender<bool>,
    sampling: JoinHandle<()>,
}

impl Console {
    /// Binds `addr` (port 0 picks one) and serves the console of `source`.
    pub async fn start(
        addr: SocketAddr,
        source: Arc<dyn Source>,
        options: Options,
    ) -> anyhow::Result<Self> {
        let advisor = Arc::new(Advisor::new(options.advice_window));
        let (streams, ended) = watch::channel(false);
        let snapshots = Snapshots::new(source.clone(), advisor.clone(), ended, options.actions);
        let server = Serving::app(
            addr,
            router(Arc::new(snapshots)),
            Limits::default(),
            "the console",
        )
        .await?;
        let bound = server.addr();
        tracing::info!(addr = %bound, "serving the console on http://{bound}");
        Ok(Self {
            server,
            streams,
            sampling: tokio::spawn(advisor.sample(source)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Ends the live streams and the sampling, and stops serving.
    pub async fn stop(self) {
        self.sampling.abort();
        let _ = self.streams.send(true);
        self.server.stop().await;
    }
}

fn router(snapshots: Arc<Snapshots>) -> axum::Router {
    axum::Router::new()
        .route("/", get(shell))
        .route("/cells/{id}", get(shell))
        .route("/cells/{id}/dead-letters", get(shell))
        .route("/releases", get(shell))
        .route("/advice", get(shell))
        .route("/flows", get(shell))
        .route("/flows/{id}", get(shell))
        .route("/assets/console.js", get(script))
        .route("/assets/console.css", get(style))
        .route("/api/lattice", get(lattice))
        .route("/api/cells/{id}", get(cell))
        .route("/events/lattice", get(lattice_events))
        .route("/events/cells/{id}", get(cell_events))
        .route("/api/cells/{id}/dead-letters", get(dead_letters))
        .route("/events/cells/{id}/dead-letters", get(dead_letter_events))
        .route("/api/flows", get(failed_flows))
        .route("/events/flows", get(failed_flow_events))
        .route("/api/flows/{id}", get(flow))
        .route("/events/flows/{id}", get(flow_events))
        .merge(acting::routes())
        .route("/api/advice", get(advice_now))
        .route("/events/advice", get(advice_events))
        .route("/api/releases", get(releases))
        .route("/events/releases", get(release_events))
        .fallback(not_found)
        .layer(axum::middleware::map_response(guard))
        .with_state(snapshots)
}

async fn guard(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn shell() -> Response {
    typed("text/html; charset=utf-8", SHELL)
}

async fn script() -> Response {
    typed("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    typed("text/css; charset=utf-8", STYLE)
}

fn typed(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn lattice(State(snapshots): State<Arc<Snapshots>>) -> Response {
    json(snapshots.get(live::Key::Lattice).await)
}

async fn cell(State(snapshots): State<Arc<Snapshots>>, Path(id): Path<String>) -> Response {
    match live::Key::cell(&id) {
        Some(key) => json(snapshots.get(key).await),
        None => problem(StatusCode::NOT_FOUND, "not a cell id"),
    }
}

async fn lattice_events(State(snapshots): State<Arc<Snapshots>>) -> Response {
    snapshots.stream(live::Key::Lattice).into_response()
}

async fn cell_events(State(snapshots): State<Arc<Snapshots>>, Path(id): Path<String>) -> Response {
    match live::Key::cell(&id) {
        Some(key) => snapshots.stream(key).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not a cell id"),
    }
}

async fn dead_letters(State(snapshots): State<Arc<Snapshots>>, Path(id): Path<String>) -> Response {
    match live::Key::dead_letters(&id) {
        Some(key) => json(snapshots.get(key).await),
        None => problem(StatusCode::NOT_FOUND, "not a cell id"),
    }
}

async fn dead_letter_events(
    State(snapshots): State<Arc<Snapshots>>,
    Path(id): Path<String>,
) -> Response {
    match live::Key::dead_letters(&id) {
        Some(key) => snapshots.stream(key).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not a cell id"),
    }
}

async fn failed_flows(State(snapshots): State<Arc<Snapshots>>) -> Response {
    json(snapshots.get(live::Key::Flows(None)).await)
}

async fn failed_flow_events(State(snapshots): State<Arc<Snapshots>>) -> Response {
    snapshots.stream(live::Key::Flows(None)).into_response()
}

async fn flow(State(snapshots): State<Arc<Snapshots>>, Path(id): Path<String>) -> Response {
    match live::Key::flow(&id) {
        Some(key) => json(snapshots.get(key).await),
        None => problem(StatusCode::NOT_FOUND, "not a correlation id"),
    }
}

async fn flow_events(State(snapshots): State<Arc<Snapshots>>, Path(id): Path<String>) -> Response {
    match live::Key::flow(&id) {
        Some(key) => snapshots.stream(key).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not a correlation id"),
    }
}

async fn advice_now(State(snapshots): State<Arc<Snapshots>>) -> Response {
    json(snapshots.get(live::Key::Advice).await)
}

async fn advice_events(State(snapshots): State<Arc<Snapshots>>) -> Response {
    snapshots.stream(live::Key::Advice).into_response()
}

async fn releases(State(snapshots): State<Arc<Snapshots>>) -> Response {
    json(snapshots.get(live::Key::Releases).await)
}

async fn release_events(State(snapshots): State<Arc<Snapshots>>) -> Response {
    snapshots.stream(live::Key::Releases).into_response()
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "no such page")
}

/// A snapshot as JSON, or the problem that kept it from being taken.
fn json(snapshot: live::Snapshot) -> Response {
    match snapshot {
        live::Snapshot::Ready(text) => (
            [(header::CONTENT_TYPE, "application/json")],
            text.to_string(),
        )
            .into_response(),
        live::Snapshot::Missing => {
            problem(StatusCode::NOT_FOUND, "nothing serves or wants this cell")
        }
        live::Snapshot::Failed(why) => problem(StatusCode::BAD_GATEWAY, &why),
    }
}

pub(crate) fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}
