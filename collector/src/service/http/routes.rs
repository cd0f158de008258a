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

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/stacks", post(submit).get(list_stacks))
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
        .route("/v1/probes", post(probe_arrived))
        .route("/v1/probes/{nonce}", get(probe_seen))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            token_first,
        ))
        .with_state(state)
}

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

/// Digest that identifies a stack version's content: equal digests are the same submission.
fn digest(files: &[crate::api::SubmitFile]) -> String {
    let mut sorted: Vec<_> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = blake3::Hasher::new();
    for f in sorted {
        h.update(f.path.as_bytes());
        h.update(b"\0");
        h.update(f.blake3.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

async fn submit(
    State(st): State<AppState>,
    _: Token,
    Json(req): Json<SubmitRequest>,
) -> ApiResult<SubmitResponse> {
    tokio::task::spawn_blocking(move || submit_blocking(&st, req))
        .await
        .map_err(|e| {
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("submission task failed: {e}"),
            )
        })?
}

fn submit_blocking(st: &AppState, req: SubmitRequest) -> ApiResult<SubmitResponse> {
    let bad = |m: String| fail(StatusCode::UNPROCESSABLE_ENTITY, m);
    let stack = normalize_rel_path(&req.stack).map_err(|e| bad(e.to_string()))?;
    let beamline = if req.beamline.is_empty() {
        st.cfg.collector.legacy_beamline.clone()
    } else {
        req.beamline.clone()
    };
    beamflow_config::check_beamline(&beamline).map_err(|e| bad(e.to_string()))?;
    let wf = st.cfg.workflows.get(&req.workflow).ok_or_else(|| {
        let known: Vec<_> = st.cfg.workflows.keys().cloned().collect();
        bad(format!(
            "unknown workflow `{}`; this collector has: {}",
            req.workflow,
            known.join(", ")
        ))
    })?;
    if req.files.is_empty() {
        return Err(bad(format!("stack {stack} has no files")));
    }
    // the version's snapshot, which `serve` took before it forwarded the submission
    let dir = st
        .cfg
        .collector
        .data_root
        .join(&beamline)
        .join(&stack)
        .join(format!(".beamflow-v{}", req.version));
    check_snapshot(&dir, &stack, &req.files)?;
    // `@vN` is a name no stack path may hold: a version's folder is never another stack's
    let work_dir =
        st.cfg
            .service
            .work_root
            .join(beamflow_protocol::work_rel(&beamline, &stack, req.version));
    let (dir_s, work_s) = (dir.display().to_string(), work_dir.display().to_string());
    let jobs = plan(wf);
    let files_json = serde_json::to_string(&req.files).unwrap_or_else(|_| "[]".into());
    let dg = digest(&req.files);
    let new = NewStack {
        beamline: &beamline,
        name: &stack,
        version: req.version,
        workflow: &req.workflow,
        dir: &dir_s,
        work_dir: &work_s,
        digest: &dg,
        files_json: &files_json,
        supersede: !req.keep_older,
    };
    let mut db = st.db.lock().map_err(|_| {
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database lock poisoned; restart the service",
        )
    })?;
    match db.submit(&new, &jobs) {
        Ok((remote_id, created, n)) => {
            heard(st, &beamline);
            if created {
                st.wake.engine();
                crate::service::http::metrics::global().stack_accepted();
                tracing::info!(stack = %stack, version = req.version, remote_id, jobs = n, "stack registered");
            } else {
                tracing::info!(stack = %stack, version = req.version, remote_id, "stack was registered before; nothing new created");
            }
            Ok(Json(SubmitResponse {
                remote_id,
                created,
                jobs: n,
            }))
        }
        Err(e @ DbError::Conflict { .. }) => Err(fail(StatusCode::CONFLICT, e.to_string())),
        Err(e) => Err(fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Each file of a submission is in the version's snapshot, directly inside the stack and
/// of the size the submission says; else the answer says what is wrong and what to do.
fn check_snapshot(
    dir: &std::path::Path,
    stack: &str,
    files: &[crate::api::SubmitFile],
) -> Result<(), (StatusCode, Json<ErrorBody>)> {
    let bad = |m: String| fail(StatusCode::UNPROCESSABLE_ENTITY, m);
    for f in files {
        let p = normalize_rel_path(&f.path).map_err(|e| bad(e.to_string()))?;
        let name = p
            .strip_prefix(&format!("{stack}/"))
            .filter(|n| !n.contains('/'))
            .ok_or_else(|| bad(format!("file {p} is not directly inside stack {stack}")))?;
        match std::fs::metadata(dir.join(name)) {
            Ok(m) if m.len() == f.size => {}
            Ok(m) => {
                return Err(bad(format!(
                    "file {p} holds {} bytes, the submission says {}; send it again",
                    m.len(),
                    f.size
                )))
            }
            Err(e) => {
                return Err(bad(format!(
                    "file {p} is not in the data root ({e}); send it before submitting"
                )))
            }
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct JobFilter {
    stack: Option<String>,
    state: Option<String>,
}

async fn list_jobs(
    State(st): State<AppState>,
    _: Token,
    Query(f): Query<JobFilter>,
) -> ApiResult<Vec<crate::service::store::JobRow>> {
    let db = st
        .db
        .lock()
        .map_err(|_| fail(StatusCode::INTERNAL_SERVER_ERROR, "database lock poisoned"))?;
    db.jobs(f.stack.as_deref(), f.state.as_deref())
        .map(Json)
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
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
    let (jobs, launchers) = {
        let db = locked(&st)?;
        (
            db.count_by_state("jobs").map_err(internal)?,
            db.count_by_state("launchers").map_err(internal)?,
        )
    };
    let job_names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
    let launcher_names: Vec<&str> = LauncherState::ALL.iter().map(|s| s.as_str()).collect();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::service::http::metrics::CONTENT_TYPE,
        )],
        crate::service::http::metrics::global()
            .render((&jobs, &job_names), (&launchers, &launcher_names)),
    ))
}

#[derive(serde::Deserialize)]
struct Ids {
    ids: String,
    /// The asking agent's beamline, for its activity light.
    #[serde(default)]
    beamline: Option<String>,
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

const READ_COOKIE: &str = "beamflow_read";

/// Whether a browser (its cookie) or a client (a bearer token) may read the page.
fn page_allowed(headers: &HeaderMap, st: &AppState) -> bool {
    if check_read(headers, st).is_ok() {
        return true;
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(&format!("{READ_COOKIE}=")))
        .any(|t| constant_time_eq(t.as_bytes(), st.read_token.as_bytes()))
}

type Page = (StatusCode, axum::response::Html<String>);

fn page(code: StatusCode, html: String) -> Page {
    (code, axum::response::Html(html))
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

/// `/ui/login?token=READ_TOKEN`: keeps the read-only token in a cookie the browser sends
/// back (HttpOnly, Secure, SameSite=Strict) and goes to the page. The full token is refused
/// here: a URL ends up in histories and logs.
async fn ui_login(
    State(st): State<AppState>,
    Query(q): Query<Login>,
) -> Result<axum::response::Response, Page> {
    use axum::response::IntoResponse;
    if constant_time_eq(q.token.as_bytes(), st.token.as_bytes()) {
        return Err(page(
            StatusCode::BAD_REQUEST,
            "<p>That is the service's full token, which can change things; it is never taken in a URL. Use <code>read_token</code> from server-info.</p>".into(),
        ));
    }
    if !constant_time_eq(q.token.as_bytes(), st.read_token.as_bytes()) {
        return Err(page(
            StatusCode::UNAUTHORIZED,
            crate::service::http::page::login_needed(),
        ));
    }
    let cookie = format!(
        "{READ_COOKIE}={}; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age=2592000",
        st.read_token
    );
    Ok((
        StatusCode::SEE_OTHER,
        [
            (axum::http::header::SET_COOKIE, cookie),
            (axum::http::header::LOCATION, "/ui".to_string()),
        ],
    )
        .into_response())
}

/// The status page.
async fn ui(State(st): State<AppState>, headers: HeaderMap) -> Page {
    if !page_allowed(&headers, &st) {
        return page(
            StatusCode::UNAUTHORIZED,
            crate::service::http::page::login_needed(),
        );
    }
    match page_view(&st) {
        Ok(v) => page(
            StatusCode::OK,
            crate::service::http::page::render(&v, std::time::SystemTime::now()),
        ),
        Err(e) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "<p>{}</p>",
                crate::service::http::page::esc(&beamflow_program::chain(&e))
            ),
        ),
    }
}

fn page_view(st: &AppState) -> Result<crate::service::http::page::View, DbError> {
    let config = config_path(st);
    let now = std::time::SystemTime::now();
    let db = st.db.lock().map_err(|_| DbError::Poisoned)?;
    let mut stacks = Vec::new();
    let freed = db.freed_stacks()?;
    for s in db.recent_stacks(50)? {
        let jobs = db.dag(s.id)?;
        let o = crate::service::outcome::summarize(s.id, &jobs, &config);
        let f = freed.get(&s.id).copied();
        stacks.push((s, o, f));
    }
    let launchers = db
        .launchers(&[], None)?
        .into_iter()
        .rev()
        .take(20)
        .collect();
    let failed = db.jobs(None, Some(JobState::Failed.as_str()))?;
    let mut windows = Vec::new();
    for (name, secs) in [("last hour", 3600u64), ("last day", 86400)] {
        let since = crate::service::clock::stamp(now - std::time::Duration::from_secs(secs));
        let (stacks, bytes, jobs) = db.throughput(&since)?;
        windows.push(crate::service::http::page::Window {
            name: name.into(),
            stacks,
            bytes,
            jobs,
            dag_times: db.dag_times(&since)?,
        });
    }
    let mut names: std::collections::BTreeSet<String> =
        st.cfg.collector.beamlines.iter().cloned().collect();
    names.extend(db.stacks()?.into_iter().map(|s| s.beamline));
    drop(db);
    let contacts = st.contacts.lock().map(|m| m.clone()).unwrap_or_default();
    let beamlines = names
        .into_iter()
        .map(|b| {
            let t = contacts.get(&b).copied();
            (b, t)
        })
        .collect();
    let notes = st
        .engine
        .notes
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    Ok(crate::service::http::page::View {
        host: crate::api::this_host(),
        stacks,
        launchers,
        notes,
        failed,
        beamlines,
        windows,
        config: beamflow_config::argv::quote(&config),
    })
}

/// One job's history, as a page.
async fn ui_job(State(st): State<AppState>, headers: HeaderMap, UrlPath(id): UrlPath<u64>) -> Page {
    if !page_allowed(&headers, &st) {
        return page(
            StatusCode::UNAUTHORIZED,
            crate::service::http::page::login_needed(),
        );
    }
    let Ok(db) = st.db.lock() else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "<p>database lock poisoned</p>".into(),
        );
    };
    match (db.job(id), db.events(id)) {
        (Ok(Some(j)), Ok(ev)) => page(
            StatusCode::OK,
            crate::service::http::page::job_page(&j, &ev),
        ),
        (Ok(None), _) => page(StatusCode::NOT_FOUND, format!("<p>no job {id}</p>")),
        (Err(e), _) | (_, Err(e)) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("<p>{}</p>", crate::service::http::page::esc(&e.to_string())),
        ),
    }
}

/// Where the DAGs of some stack versions are (`?ids=3,4`): what an agent asks over its link.
async fn outcomes(
    State(st): State<AppState>,
    _: Token,
    Query(q): Query<Ids>,
) -> ApiResult<Vec<DagOutcome>> {
    if let Some(b) = &q.beamline {
        heard(&st, b);
    }
    let ids: Vec<u64> = q
        .ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            fail(
                StatusCode::BAD_REQUEST,
                "ids is a comma-separated list of stack version ids",
            )
        })?;
    if ids.len() > 1000 {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "at most 1000 ids per request",
        ));
    }
    let config = config_path(&st);
    let db = locked(&st)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let jobs = db.dag(id).map_err(internal)?;
        out.push(crate::service::outcome::summarize(id, &jobs, &config));
    }
    Ok(Json(out))
}

async fn list_stacks(
    State(st): State<AppState>,
    _: Token,
) -> ApiResult<Vec<crate::service::store::StackRow>> {
    let db = st
        .db
        .lock()
        .map_err(|_| fail(StatusCode::INTERNAL_SERVER_ERROR, "database lock poisoned"))?;
    db.stacks()
        .map(Json)
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
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

async fn job_events(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<Vec<EventRow>> {
    let db = locked(&st)?;
    if db.job(id).map_err(internal)?.is_none() {
        return Err(fail(
            StatusCode::NOT_FOUND,
            format!("no job {id}; `beamflow-collector ls` lists them"),
        ));
    }
    db.events(id).map(Json).map_err(internal)
}

fn job_action(st: &AppState, id: u64, retry: bool) -> ApiResult<JobRow> {
    let mut db = locked(st)?;
    let Some(job) = db.job(id).map_err(internal)? else {
        return Err(fail(
            StatusCode::NOT_FOUND,
            format!("no job {id}; `beamflow-collector ls` lists them"),
        ));
    };
    let ok = if retry { db.retry(id) } else { db.kill(id) }.map_err(internal)?;
    if ok {
        // a retried job is runnable (and may need a launcher); a killed one must be ended
        st.engine.reconsider_launchers();
        st.wake.work();
    }
    if !ok {
        let what = if retry {
            "retried (only FAILED, USER_KILLED, RUN_ERROR or RUN_TIMEOUT jobs can be)"
        } else {
            "killed (it already ended)"
        };
        return Err(fail(
            StatusCode::CONFLICT,
            format!("job {id} is {} and cannot be {what}", job.state),
        ));
    }
    db.job(id)
        .map_err(internal)?
        .map(Json)
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "job vanished"))
}

async fn job_retry(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<JobRow> {
    job_action(&st, id, true)
}

async fn job_kill(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<JobRow> {
    job_action(&st, id, false)
}

async fn job_report(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
    Json(r): Json<ReportRequest>,
) -> ApiResult<serde_json::Value> {
    let applied = locked(&st)?.report(id, &r).map_err(internal)?;
    if applied {
        st.wake.engine();
        st.wake.work();
    }
    Ok(Json(serde_json::json!({ "applied": applied })))
}

async fn launcher_start(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
    Json(r): Json<LauncherStart>,
) -> ApiResult<serde_json::Value> {
    if !locked(&st)?
        .launcher_started(id, r.nodes.len(), &r.host)
        .map_err(internal)?
    {
        return Err(fail(
            StatusCode::GONE,
            format!("launcher {id} is unknown or already ended; exit"),
        ));
    }
    st.engine.reconsider_launchers();
    tracing::info!(launcher = id, host = %r.host, nodes = r.nodes.len(), "launcher started");
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// Heartbeat, endings and work in one exchange. With nothing to hand out, the request is
/// held (up to its `wait_ms`, and never past a third of the heartbeat timeout) and answered
/// the moment a job becomes runnable, a kill or a stop exists.
async fn launcher_acquire(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
    Json(r): Json<AcquireRequest>,
) -> ApiResult<AcquireResponse> {
    // a closing launcher waits for nothing
    let wait = if r.closing { 0 } else { r.wait_ms };
    let hold = std::time::Duration::from_millis(wait).min(st.cfg.service.heartbeat_timeout.0 / 3);
    let until = tokio::time::Instant::now() + hold;
    let mut bell = st.wake.watch_work();
    let mut reports = r.reports;
    let mut applied = Vec::new();
    loop {
        bell.borrow_and_update();
        let mut resp = locked(&st)?
            .acquire(
                id,
                r.free_nodes,
                r.max_jobs,
                &r.running,
                &reports,
                r.closing,
            )
            .map_err(internal)?;
        if !reports.is_empty() {
            applied = std::mem::take(&mut resp.applied);
            reports.clear();
            if applied.iter().any(|a| *a) {
                // the nodes they freed are filled by this very answer: only the engine
                // has something new to do (check the outputs, ready the children)
                st.wake.engine();
            }
        }
        if !resp.jobs.is_empty()
            || !resp.kill.is_empty()
            || resp.stop
            || tokio::time::Instant::now() >= until
        {
            resp.applied = applied;
            return Ok(Json(resp));
        }
        if tokio::time::timeout_at(until, bell.changed())
            .await
            .is_err()
        {
            // one last look at the deadline: a heartbeat, and whatever came meanwhile
            continue;
        }
    }
}

async fn launcher_end(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
    Json(r): Json<serde_json::Value>,
) -> ApiResult<serde_json::Value> {
    let reason = r
        .get("reason")
        .and_then(|v| v.as_str())
        .unwrap_or("ended")
        .to_string();
    let mut db = locked(&st)?;
    if !db.has_launcher(id).map_err(internal)? {
        return Err(fail(
            StatusCode::NOT_FOUND,
            format!("no launcher {id}; `beamflow-collector status` lists them"),
        ));
    }
    db.move_launcher(
        id,
        LauncherState::Finished,
        LauncherTrigger::Exited,
        &format!("exited: {reason}"),
    )
    .map_err(internal)?;
    st.engine.reconsider_launchers();
    Ok(Json(serde_json::json!({ "ok": true })))
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

/// A probe job on a compute node reached the service.
async fn probe_arrived(
    State(st): State<AppState>,
    _: Token,
    Json(p): Json<Probe>,
) -> ApiResult<Probe> {
    if p.nonce.len() > 64 || p.host.len() > 256 {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "a probe's nonce is at most 64 bytes",
        ));
    }
    tracing::info!(host = %p.host, "a probe reached the service");
    if let Ok(mut m) = st.probes.lock() {
        if m.len() > 1000 {
            m.clear(); // doctors wait seconds to minutes; nobody needs the old ones
        }
        m.insert(p.nonce.clone(), p.host.clone());
    }
    Ok(Json(p))
}

/// Whether the probe with this nonce arrived, and from which host.
async fn probe_seen(
    State(st): State<AppState>,
    _: Token,
    UrlPath(nonce): UrlPath<String>,
) -> ApiResult<Probe> {
    let host = st.probes.lock().ok().and_then(|m| m.get(&nonce).cloned());
    match host {
        Some(host) => Ok(Json(Probe { nonce, host })),
        None => Err(fail(StatusCode::NOT_FOUND, "no such probe has arrived yet")),
    }
}
