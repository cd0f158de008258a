//! The service's HTTP routes: submissions from `serve`, reads and actions for the CLI,
//! and the launchers' start, exchange (heartbeat, endings and work, long-polled) and end.
//! Every route checks the token; every change rings the bell of whoever acts on it next.

use crate::api::{
    AcquireRequest, AcquireResponse, DagOutcome, ErrorBody, EventRow, JobRow, LauncherStart, Probe,
    Received, ReportRequest, StatusResponse, SubmitRequest, SubmitResponse,
};
use crate::science::dag::plan;
use crate::service::engine::Engine;
use crate::service::lifecycle::job::JobState;
use crate::service::lifecycle::launcher::{LauncherState, LauncherTrigger};
use crate::service::store::{Db, DbError, NewStack};
use crate::service::wake::Wake;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use beamflow_config::Config;
use beamflow_protocol::normalize_rel_path;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What every route shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Arc<Mutex<Db>>,
    /// The API's key.
    pub token: Arc<String>,
    /// The key that only reads (`/metrics`, the status page).
    pub read_token: Arc<String>,
    /// The config.
    pub cfg: Arc<Config>,
    /// The engine, for its notes.
    pub engine: Arc<Engine>,
    /// The bells.
    pub wake: Arc<Wake>,
    /// When each beamline was last heard from (a submission, or its agent asking about its
    /// DAGs): the status page's activity lights. In memory: a restart starts them afresh.
    pub contacts: Arc<Mutex<HashMap<String, std::time::SystemTime>>>,
    /// Probes that reached the service (`doctor --probe`): nonce → the host it came from.
    /// Kept in memory only: a probe matters to the doctor waiting for it, not after.
    pub probes: Arc<Mutex<HashMap<String, String>>>,
}

mod jobs;
mod launchers;
mod stacks;
mod ui;

use jobs::{job_events, job_kill, job_report, job_retry, list_jobs};
use launchers::{launcher_acquire, launcher_end, launcher_start, probe_arrived, probe_seen};
use stacks::{abandon, list_stacks, outcomes, submit};
use ui::{ui, ui_job, ui_login, ui_preview};

/// Every route of the service, each behind the token it needs.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/stacks", post(submit).get(list_stacks))
        .route("/v1/stacks/abandon", post(abandon))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/jobs/{id}/retry", post(job_retry))
        .route("/v1/jobs/{id}/kill", post(job_kill))
        .route("/v1/jobs/{id}/report", post(job_report))
        .route("/v1/launchers/{id}/start", post(launcher_start))
        .route("/v1/launchers/{id}/acquire", post(launcher_acquire))
        .route("/v1/launchers/{id}/end", post(launcher_end))
        .route("/v1/status", get(status))
        .route("/v1/outcomes", get(outcomes))
        .route("/v1/received", post(received))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .route("/ui", get(ui))
        .route("/ui/login", get(ui_login))
        .route("/ui/jobs/{id}", get(ui_job))
        .route("/ui/stacks/{id}/preview.png", get(ui_preview))
        .route("/v1/probes", post(probe_arrived))
        .route("/v1/probes/{nonce}", get(probe_seen))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            token_first,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// The largest request body read: a submission of 10,000 sections is ~1.5 MB of JSON.
const BODY_LIMIT: usize = 2 << 20;

/// Every request that carries a body (every one but GET) needs the full token, checked
/// before a byte of the body is read or parsed: a peer without the token learns nothing from
/// how its body is judged (400, 415, 422 all come after), and holds nothing while a body
/// trickles in, whatever the route (an unknown one too). Each handler also names the token
/// it needs as an argument ([`Token`], [`ReadToken`]): a route cannot forget it.
async fn token_first(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let reads = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !reads {
        if let Err(e) = check_token(req.headers(), &st.token) {
            return e.into_response();
        }
        // a body said to be over the limit is refused before a byte of it is read (a client
        // that asked `Expect: 100-continue` sends none)
        let said = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if said.is_some_and(|n| n > BODY_LIMIT as u64) {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a request body may hold at most {BODY_LIMIT} bytes"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

type ApiResult<T> = Result<Json<T>, (StatusCode, Json<ErrorBody>)>;

fn fail(status: StatusCode, msg: impl Into<String>) -> (StatusCode, Json<ErrorBody>) {
    (status, Json(ErrorBody { error: msg.into() }))
}

fn check_token(headers: &HeaderMap, token: &str) -> Result<(), (StatusCode, Json<ErrorBody>)> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if given
        .strip_prefix("Bearer ")
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    {
        Ok(())
    } else {
        Err(fail(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token; clients read it from the collector's server-info",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The service's config file as written in retry commands (unquoted; each command quotes it).
fn config_path(st: &AppState) -> String {
    st.cfg
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "beamflow.toml".into())
}

/// A request that carries the full token (every change, the launchers, the service's
/// readers that act). Taken as an argument, it is checked before the handler runs and
/// before any body is read.
pub struct Token;

impl axum::extract::FromRequestParts<AppState> for Token {
    type Rejection = (StatusCode, Json<ErrorBody>);
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, Self::Rejection> {
        check_token(&parts.headers, &st.token).map(|()| Token)
    }
}

/// A request that carries either token: reads take the read-only one too.
pub struct ReadToken;

impl axum::extract::FromRequestParts<AppState> for ReadToken {
    type Rejection = (StatusCode, Json<ErrorBody>);
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, Self::Rejection> {
        check_read(&parts.headers, st).map(|()| ReadToken)
    }
}

/// Whether the request carries either token: reads take the read-only one too.
fn check_read(headers: &HeaderMap, st: &AppState) -> Result<(), (StatusCode, Json<ErrorBody>)> {
    check_token(headers, &st.read_token).or_else(|_| check_token(headers, &st.token))
}

/// What a `serve` session received, counted for `/metrics`.
async fn received(_: Token, Json(r): Json<Received>) -> ApiResult<serde_json::Value> {
    crate::service::http::metrics::global().received(&r);
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// Prometheus' text format; the read-only token (or the full one) as a bearer token.
async fn metrics(
    State(st): State<AppState>,
    _: ReadToken,
) -> Result<
    ([(axum::http::header::HeaderName, &'static str); 1], String),
    (StatusCode, Json<ErrorBody>),
> {
    let (jobs, launchers, live, learned) = {
        let db = locked(&st)?;
        (
            db.count_by_state("jobs").map_err(internal)?,
            db.count_by_state("launchers").map_err(internal)?,
            db.launchers(&[LauncherState::Queued, LauncherState::Running], None)
                .map_err(internal)?,
            db.learned_runtimes().map_err(internal)?,
        )
    };
    let job_names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
    let launcher_names: Vec<&str> = LauncherState::ALL.iter().map(|s| s.as_str()).collect();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::service::http::metrics::CONTENT_TYPE,
        )],
        crate::service::http::metrics::global().render(&crate::service::http::metrics::Scrape {
            jobs: (&jobs, &job_names),
            launchers: (&launchers, &launcher_names),
            live: &live,
            learned: &learned,
        }),
    ))
}

/// Notes that a beamline was heard from now.
fn heard(st: &AppState, beamline: &str) {
    if beamline.is_empty() || beamline.len() > 64 {
        return;
    }
    if let Ok(mut m) = st.contacts.lock() {
        m.insert(beamline.to_string(), std::time::SystemTime::now());
    }
}

fn locked(st: &AppState) -> Result<std::sync::MutexGuard<'_, Db>, (StatusCode, Json<ErrorBody>)> {
    st.db.lock().map_err(|_| {
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database lock poisoned; restart the service",
        )
    })
}

fn internal(e: DbError) -> (StatusCode, Json<ErrorBody>) {
    fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn status(State(st): State<AppState>, _: Token) -> ApiResult<StatusResponse> {
    let db = locked(&st)?;
    let stacks = db.stack_status().map_err(internal)?;
    let all = db.launchers(&[], None).map_err(internal)?;
    // the live ones and the last few that ended
    let ended = all.iter().filter(|l| !l.state.live()).count();
    let mut skip = ended.saturating_sub(5);
    let launchers = all
        .into_iter()
        .filter(|l| {
            if skip > 0 && !l.state.live() {
                skip -= 1;
                false
            } else {
                true
            }
        })
        .collect();
    let mut notes = st
        .engine
        .notes
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    let failed = db
        .jobs(None, Some(JobState::Failed.as_str()))
        .map_err(internal)?;
    let config = beamflow_config::argv::quote(&config_path(&st));
    for j in failed.iter().take(10) {
        notes.push(format!(
            "job {} ({} of {}/{}) is FAILED: {}; after fixing it: beamflow-collector retry --config {config} {}",
            j.id, j.name, j.beamline, j.stack, j.reason, j.id
        ));
    }
    let (versions, bytes) = db.freed().map_err(internal)?;
    if versions > 0 {
        notes.push(format!(
            "retention: {versions} stack version(s) freed, {bytes} bytes (`[collector] keep`)"
        ));
    }
    Ok(Json(StatusResponse {
        stacks,
        launchers,
        notes,
    }))
}
