//! The console's state-changing routes: replay dead letters; check,
//! deploy, roll back and undeploy releases. Each needs actions on and a
//! signed-in user from the console's own page ([`super::actions`]), and
//! answers with what happened or an HTTP problem saying why not.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use super::actions::{self, Actions};
use super::deployer::{Deployer, MAX_UPLOAD};
use super::live::Snapshots;
use super::problem;

type Shared = State<Arc<Snapshots>>;

/// Why a request was not acted on: an HTTP problem.
struct Problem(StatusCode, String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        problem(self.0, &self.1)
    }
}

type Answer = Result<Response, Problem>;

pub(super) fn routes() -> axum::Router<Arc<Snapshots>> {
    let upload = DefaultBodyLimit::max(MAX_UPLOAD);
    axum::Router::new()
        .route("/api/actions", get(enabled))
        .route("/api/cells/{id}/dead-letters/replay", post(replay))
        .route("/api/deploy/preview", post(preview).layer(upload))
        .route("/api/deploy", post(deploy).layer(upload))
        .route("/api/cells/{id}/rollback", post(rollback))
        .route("/api/cells/{id}/undeploy", post(undeploy))
}

/// What the page may offer: actions at all, and releases (a lattice on
/// NATS only).
async fn enabled(State(snapshots): Shared) -> Response {
    let enabled = snapshots.actions().is_some();
    let releases = enabled && snapshots.source().deployer().is_some();
    ok(&serde_json::json!({ "enabled": enabled, "releases": releases }))
}

/// The signed-in user who may act, or the problem to answer.
async fn user(snapshots: &Snapshots, headers: &HeaderMap) -> Result<String, Problem> {
    Actions::user(snapshots.actions(), headers)
        .await
        .map_err(|refusal| {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
            Problem(status, refusal.detail)
        })
}

/// The user and the deployer, for a release action.
async fn deployer<'a>(
    snapshots: &'a Snapshots,
    headers: &HeaderMap,
) -> Result<(String, &'a Deployer), Problem> {
    let user = user(snapshots, headers).await?;
    let deployer = snapshots.source().deployer().ok_or_else(|| {
        Problem(
            StatusCode::CONFLICT,
            "releases are changed on a lattice: cbs console --nats URL".into(),
        )
    })?;
    Ok((user, deployer))
}

fn cell_id(id: &str) -> Result<(), Problem> {
    crate::manifest::check_cell_id(id)
        .map_err(|_| Problem(StatusCode::NOT_FOUND, "not a cell id".into()))
}

/// `{"seqs": [..]}` or `{"all": true}`: the dead letters to replay.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayAsk {
    #[serde(default)]
    seqs: Vec<u64>,
    #[serde(default)]
    all: bool,
}

async fn replay(
    State(snapshots): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let user = user(&snapshots, &headers).await?;
    cell_id(&id)?;
    let ask: ReplayAsk = serde_json::from_slice(&body).map_err(|e| {
        let detail = format!("give {{\"seqs\": [..]}} or {{\"all\": true}}: {e}");
        Problem(StatusCode::BAD_REQUEST, detail)
    })?;
    if ask.all != ask.seqs.is_empty() || ask.seqs.len() > actions::MAX_REPLAY {
        let detail = format!(
            "give either \"all\" or 1 to {} sequences",
            actions::MAX_REPLAY
        );
        return Err(Problem(StatusCode::BAD_REQUEST, detail));
    }
    let seqs = (!ask.all).then_some(ask.seqs);
    match snapshots.source().replay(&id, seqs, &user).await {
        Ok(replayed) => Ok(ok(&serde_json::json!({ "replayed": replayed, "by": user }))),
        Err(e) => Err(Problem(StatusCode::BAD_GATEWAY, format!("{e:#}"))),
    }
}

/// The contract gate's verdict on an uploaded bundle; nothing changes.
async fn preview(State(snapshots): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Answer {
    let (_, deployer) = deployer(&snapshots, &headers).await?;
    answer(deployer.preview(&body).await)
}

/// Deploys the uploaded bundle; `?force=true` lets a contract break
/// within the major version through.
async fn deploy(
    State(snapshots): Shared,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let (user, deployer) = deployer(&snapshots, &headers).await?;
    let force = query.is_some_and(|q| q.split('&').any(|pair| pair == "force=true"));
    answer(deployer.deploy(&body, force, &user).await)
}

async fn rollback(State(snapshots): Shared, Path(id): Path<String>, headers: HeaderMap) -> Answer {
    let (user, deployer) = deployer(&snapshots, &headers).await?;
    cell_id(&id)?;
    answer(deployer.rollback(&id, &user).await)
}

async fn undeploy(State(snapshots): Shared, Path(id): Path<String>, headers: HeaderMap) -> Answer {
    let (user, deployer) = deployer(&snapshots, &headers).await?;
    cell_id(&id)?;
    answer(deployer.undeploy(&id, &user).await)
}

/// What was done, or why it did not start (the gate, no release to go
/// back to, a bundle that does not open): 422 with the reason.
fn answer(outcome: anyhow::Result<impl Serialize>) -> Answer {
    match outcome {
        Ok(done) => Ok(ok(&done)),
        Err(e) => Err(Problem(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}"))),
    }
}

fn ok(body: &impl Serialize) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
