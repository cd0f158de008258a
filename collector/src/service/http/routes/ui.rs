//! The status page for people: its login with the read-only token, the page itself and one
//! job's history.

use super::*;

pub(super) const READ_COOKIE: &str = "beamflow_read";

/// Whether a browser (its cookie) or a client (a bearer token) may read the page.
pub(super) fn page_allowed(headers: &HeaderMap, st: &AppState) -> bool {
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

pub(super) type Page = (StatusCode, axum::response::Html<String>);

pub(super) fn page(code: StatusCode, html: String) -> Page {
    (code, axum::response::Html(html))
}

#[derive(serde::Deserialize)]
pub(super) struct Login {
    pub(super) token: String,
}

/// `/ui/login?token=READ_TOKEN`: keeps the read-only token in a cookie the browser sends
/// back (HttpOnly, Secure, SameSite=Strict) and goes to the page. The full token is refused
/// here: a URL ends up in histories and logs.
pub(super) async fn ui_login(
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
pub(super) async fn ui(State(st): State<AppState>, headers: HeaderMap) -> Page {
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

pub(super) fn page_view(st: &AppState) -> Result<crate::service::http::page::View, DbError> {
    let config = config_path(st);
    let now = std::time::SystemTime::now();
    let db = st.db.lock().map_err(|_| DbError::Poisoned)?;
    let mut stacks = Vec::new();
    let freed = db.freed_stacks()?;
    for s in db.recent_stacks(50)? {
        let jobs = db.dag(s.id)?;
        let dag = crate::service::outcome::summarize(s.id, &jobs, &config);
        let preview = std::path::Path::new(&s.work_dir)
            .join(crate::science::preview::PREVIEW_FILE)
            .is_file();
        stacks.push(crate::service::http::page::StackLine {
            freed: freed.get(&s.id).copied(),
            row: s,
            dag,
            preview,
        });
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
pub(super) async fn ui_job(
    State(st): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> Page {
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

/// A stack version's preview picture (`preview.png` in its work folder), for the page.
pub(super) async fn ui_preview(
    State(st): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !page_allowed(&headers, &st) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let work = match st.db.lock() {
        Ok(db) => db.work_dir_of(id),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let Ok(Some(work)) = work else {
        return (StatusCode::NOT_FOUND, format!("no stack version {id}")).into_response();
    };
    let path = std::path::Path::new(&work).join(crate::science::preview::PREVIEW_FILE);
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(axum::http::header::CONTENT_TYPE, "image/png")], bytes).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "no preview (yet)").into_response(),
    }
}
