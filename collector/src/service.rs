//! `beamflow-collector service`: the long-running daemon that owns the database and serves
//! the HTTP API that `serve`, the CLI (and later launchers) use.

use crate::api::{
    AcquireRequest, AcquireResponse, ErrorBody, EventRow, JobRow, LauncherStart, ReportRequest,
    ServerInfo, StatusResponse, SubmitRequest, SubmitResponse, SERVER_INFO,
};
use crate::dag::plan;
use crate::db::{Db, DbError, NewStack};
use crate::engine::Engine;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use beamflow_config::Config;
use beamflow_protocol::normalize_rel_path;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why the service could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A folder or file of the state dir could not be made.
    #[error("failed to prepare {path}: {cause}")]
    State {
        /// Which.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Another service holds the lock.
    #[error("another collector service already owns {path}; stop it first (see its pid in server-info), or give this one its own state_dir")]
    AlreadyRunning {
        /// The lock file.
        path: PathBuf,
    },
    /// The database could not be opened.
    #[error("failed to open the database {path}: {cause}")]
    Db {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: DbError,
    },
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}: {cause}; pick another [service] listen address")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the API server failed: {0}")]
    Serve(std::io::Error),
}

#[derive(Clone)]
struct AppState {
    db: Arc<Mutex<Db>>,
    token: Arc<String>,
    cfg: Arc<Config>,
    engine: Arc<Engine>,
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

fn random_token() -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(hex::encode(buf))
}

/// Writes `server-info` atomically with mode 0600: the token in it is the API's only key.
fn write_server_info(dir: &Path, info: &ServerInfo) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{SERVER_INFO}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(
        serde_json::to_string_pretty(info)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SERVER_INFO))
}

/// Runs the service until `shutdown` completes. The database, the lock and `server-info`
/// live in `[collector] state_dir`.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let state_dir = cfg.collector.state_dir.clone();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ServiceError::State {
            path,
            cause: source,
        }
    };
    std::fs::create_dir_all(&state_dir).map_err(io(&state_dir))?;
    let lock_path = state_dir.join("service.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(ServiceError::AlreadyRunning { path: lock_path });
    }
    let db_path = state_dir.join("collector.db");
    let db =
        Db::open(&db_path, &cfg.collector.legacy_beamline).map_err(|source| ServiceError::Db {
            path: db_path.clone(),
            cause: source,
        })?;
    let token = random_token().map_err(io(Path::new("/dev/urandom")))?;
    let listener = tokio::net::TcpListener::bind(cfg.service.listen)
        .await
        .map_err(|source| ServiceError::Bind {
            addr: cfg.service.listen,
            cause: source,
        })?;
    let addr = listener.local_addr().map_err(ServiceError::Serve)?;
    let info = ServerInfo {
        url: format!("http://{addr}"),
        token: token.clone(),
        pid: std::process::id(),
    };
    write_server_info(&state_dir, &info).map_err(io(&state_dir.join(SERVER_INFO)))?;
    tracing::info!(url = %info.url, db = %db_path.display(), "collector service listening");

    let db = Arc::new(Mutex::new(db));
    if let Ok(mut d) = db.lock() {
        // launchers that kept running while the service was down get a full heartbeat period
        let _ = d.refresh_heartbeats();
    }
    let cfg = Arc::new(cfg);
    let engine = Arc::new(Engine::new(cfg.clone(), db.clone()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (engine, stop, every) = (engine.clone(), stop.clone(), cfg.service.poll_interval.0);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                engine.tick();
                let until = std::time::Instant::now() + every;
                while std::time::Instant::now() < until
                    && !stop.load(std::sync::atomic::Ordering::SeqCst)
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        })
    };
    let state = AppState {
        db,
        token: Arc::new(token),
        cfg,
        engine,
    };
    let app = Router::new()
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
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = ticker.join();
    let _ = std::fs::remove_file(state_dir.join(SERVER_INFO));
    drop(lock);
    tracing::info!("collector service stopped");
    result.map_err(ServiceError::Serve)
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
    headers: HeaderMap,
    Json(req): Json<SubmitRequest>,
) -> ApiResult<SubmitResponse> {
    check_token(&headers, &st.token)?;
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
    let stack = normalize_rel_path(&req.stack).map_err(bad)?;
    let beamline = if req.beamline.is_empty() {
        st.cfg.collector.legacy_beamline.clone()
    } else {
        req.beamline.clone()
    };
    beamflow_config::check_beamline(&beamline).map_err(bad)?;
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
    let mut images = Vec::new();
    for f in &req.files {
        let p = normalize_rel_path(&f.path).map_err(bad)?;
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
        images.push(name.to_string());
    }
    images.sort();
    let work_dir = st
        .cfg
        .service
        .work_root
        .join(&beamline)
        .join(&stack)
        .join(format!("v{}", req.version));
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
    };
    let mut db = st.db.lock().map_err(|_| {
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database lock poisoned; restart the service",
        )
    })?;
    match db.submit(&new, &jobs) {
        Ok((remote_id, created, n)) => {
            if created {
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

#[derive(serde::Deserialize)]
struct JobFilter {
    stack: Option<String>,
    state: Option<String>,
}

async fn list_jobs(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<JobFilter>,
) -> ApiResult<Vec<crate::db::JobRow>> {
    check_token(&headers, &st.token)?;
    let db = st
        .db
        .lock()
        .map_err(|_| fail(StatusCode::INTERNAL_SERVER_ERROR, "database lock poisoned"))?;
    db.jobs(f.stack.as_deref(), f.state.as_deref())
        .map(Json)
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn list_stacks(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Vec<crate::db::StackRow>> {
    check_token(&headers, &st.token)?;
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
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<Vec<EventRow>> {
    check_token(&headers, &st.token)?;
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
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<JobRow> {
    check_token(&headers, &st.token)?;
    job_action(&st, id, true)
}

async fn job_kill(
    State(st): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<JobRow> {
    check_token(&headers, &st.token)?;
    job_action(&st, id, false)
}

async fn job_report(
    State(st): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
    Json(r): Json<ReportRequest>,
) -> ApiResult<serde_json::Value> {
    check_token(&headers, &st.token)?;
    let applied = locked(&st)?.report(id, &r).map_err(internal)?;
    Ok(Json(serde_json::json!({ "applied": applied })))
}

async fn launcher_start(
    State(st): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
    Json(r): Json<LauncherStart>,
) -> ApiResult<serde_json::Value> {
    check_token(&headers, &st.token)?;
    if !locked(&st)?
        .launcher_started(id, r.nodes.len(), &r.host)
        .map_err(internal)?
    {
        return Err(fail(
            StatusCode::GONE,
            format!("launcher {id} is unknown or already ended; exit"),
        ));
    }
    tracing::info!(launcher = id, host = %r.host, nodes = r.nodes.len(), "launcher started");
    Ok(Json(serde_json::json!({ "ok": true })))
}

async fn launcher_acquire(
    State(st): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
    Json(r): Json<AcquireRequest>,
) -> ApiResult<AcquireResponse> {
    check_token(&headers, &st.token)?;
    locked(&st)?
        .acquire(id, r.free_nodes, r.max_jobs, &r.running)
        .map(Json)
        .map_err(internal)
}

async fn launcher_end(
    State(st): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
    Json(r): Json<serde_json::Value>,
) -> ApiResult<serde_json::Value> {
    check_token(&headers, &st.token)?;
    let reason = r
        .get("reason")
        .and_then(|v| v.as_str())
        .unwrap_or("ended")
        .to_string();
    let mut db = locked(&st)?;
    if !db
        .launchers(&[], None)
        .map_err(internal)?
        .iter()
        .any(|l| l.id == id)
    {
        return Err(fail(
            StatusCode::NOT_FOUND,
            format!("no launcher {id}; `beamflow-collector status` lists them"),
        ));
    }
    db.end_launcher(id, "FINISHED", &format!("exited: {reason}"))
        .map_err(internal)?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

async fn status(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<StatusResponse> {
    check_token(&headers, &st.token)?;
    let db = locked(&st)?;
    let stacks = db.stack_status().map_err(internal)?;
    let all = db.launchers(&[], None).map_err(internal)?;
    // the live ones and the last few that ended
    let ended = all
        .iter()
        .filter(|l| l.state == "FINISHED" || l.state == "LOST")
        .count();
    let mut skip = ended.saturating_sub(5);
    let launchers = all
        .into_iter()
        .filter(|l| {
            if skip > 0 && (l.state == "FINISHED" || l.state == "LOST") {
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
    let failed = db.jobs(None, Some("FAILED")).map_err(internal)?;
    let config = st
        .cfg
        .source
        .as_ref()
        .map(|p| beamflow_config::argv::quote(&p.display().to_string()))
        .unwrap_or_else(|| "beamflow.toml".into());
    for j in failed.iter().take(10) {
        notes.push(format!(
            "job {} ({} of {}/{}) is FAILED: {}; after fixing it: beamflow-collector retry --config {config} {}",
            j.id, j.name, j.beamline, j.stack, j.reason, j.id
        ));
    }
    Ok(Json(StatusResponse {
        stacks,
        launchers,
        notes,
    }))
}
