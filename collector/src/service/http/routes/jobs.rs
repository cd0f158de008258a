//! Jobs: listed, their history, retried and killed by a person, and their endings reported.

use super::*;

#[derive(serde::Deserialize)]
pub(super) struct JobFilter {
    pub(super) stack: Option<String>,
    pub(super) state: Option<String>,
}

pub(super) async fn list_jobs(
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

pub(super) async fn job_events(
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

pub(super) fn job_action(st: &AppState, id: u64, retry: bool) -> ApiResult<JobRow> {
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

pub(super) async fn job_retry(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<JobRow> {
    job_action(&st, id, true)
}

pub(super) async fn job_kill(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
) -> ApiResult<JobRow> {
    job_action(&st, id, false)
}

pub(super) async fn job_report(
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
