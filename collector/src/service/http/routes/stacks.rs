//! Stacks: a submission registered as a version with its DAG (its files checked in the
//! snapshot), the stacks listed, and where their DAGs are as the beamline is told.

use super::*;

/// Digest that identifies a stack version's content: equal digests are the same submission.
pub(super) fn digest(files: &[crate::api::SubmitFile]) -> String {
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

pub(super) async fn submit(
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

/// The jobs of a submitted version: every step's for a sealed one; for a partial one, the
/// pairs whose sections are new or changed since the partial version before it.
fn plan_for(
    st: &AppState,
    req: &SubmitRequest,
    wf: &beamflow_config::Workflow,
    (beamline, stack): (&str, &str),
) -> Vec<crate::science::dag::PlannedJob> {
    if !req.partial {
        return plan(wf, req.files.len());
    }
    let before = st
        .db
        .lock()
        .ok()
        .and_then(|db| db.partial_before(beamline, stack, req.version).ok())
        .flatten()
        .unwrap_or_default();
    // the sections in the collector's order (bytewise, as its work folder lists them)
    let mut files: Vec<&crate::api::SubmitFile> = req.files.iter().collect();
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let changed = |i: usize| {
        files
            .get(i)
            .is_none_or(|f| before.get(&f.path) != Some(&f.blake3))
    };
    crate::science::dag::plan_partial(wf, req.files.len(), changed)
}

pub(super) fn submit_blocking(st: &AppState, req: SubmitRequest) -> ApiResult<SubmitResponse> {
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
    let jobs = plan_for(st, &req, wf, (&beamline, &stack));
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
        partial: req.partial,
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
pub(super) fn check_snapshot(
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
pub(super) struct Ids {
    pub(super) ids: String,
    /// The asking agent's beamline, for its activity light.
    #[serde(default)]
    pub(super) beamline: Option<String>,
}

/// Where the DAGs of some stack versions are (`?ids=3,4`): what an agent asks over its link.
pub(super) async fn outcomes(
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

/// A stack abandoned while it streamed: its partial versions' open jobs are cancelled, each
/// saying why, and the launchers end the running ones.
pub(super) async fn abandon(
    State(st): State<AppState>,
    _: Token,
    Json(req): Json<crate::api::AbandonRequest>,
) -> ApiResult<crate::api::AbandonResponse> {
    let stack = normalize_rel_path(&req.stack)
        .map_err(|e| fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let cancelled = {
        let mut db = st
            .db
            .lock()
            .map_err(|_| fail(StatusCode::INTERNAL_SERVER_ERROR, "database lock poisoned"))?;
        db.abandon(&req.beamline, &stack, &req.why.reason())
            .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    if let Some(n) = cancelled {
        tracing::warn!(beamline = %req.beamline, stack = %stack, cancelled = n, "stack abandoned while it streamed: {}", req.why.reason());
        st.wake.engine();
        st.wake.work();
    }
    Ok(Json(crate::api::AbandonResponse {
        cancelled: cancelled.map(|n| n as u64),
    }))
}

pub(super) async fn list_stacks(
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
