//! Launchers and probes: a launcher's start, its held request for work (which carries its
//! endings), its end; a probe from a compute node, and whether it arrived.

use super::*;

pub(super) async fn launcher_start(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
    Json(r): Json<LauncherStart>,
) -> ApiResult<serde_json::Value> {
    if !locked(&st)?
        .launcher_started(id, r.nodes.len(), &r.host, &|queue| {
            st.cfg
                .queues
                .get(queue)
                .map(|q| q.walltime_margin.0)
                .unwrap_or_default()
        })
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
pub(super) async fn launcher_acquire(
    State(st): State<AppState>,
    _: Token,
    UrlPath(id): UrlPath<u64>,
    Json(mut r): Json<AcquireRequest>,
) -> ApiResult<AcquireResponse> {
    // a closing launcher waits for nothing
    let wait = if r.closing { 0 } else { r.wait_ms };
    let hold = std::time::Duration::from_millis(wait).min(st.cfg.service.heartbeat_timeout.0 / 3);
    let until = tokio::time::Instant::now() + hold;
    let mut bell = st.wake.watch_work();
    let mut reports = std::mem::take(&mut r.reports);
    let mut applied = Vec::new();
    loop {
        bell.borrow_and_update();
        let mut resp = locked(&st)?.acquire(id, &r, &reports).map_err(internal)?;
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

pub(super) async fn launcher_end(
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

/// A probe job on a compute node reached the service.
pub(super) async fn probe_arrived(
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
pub(super) async fn probe_seen(
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
