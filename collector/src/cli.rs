//! The operator's commands: tables for people, `--json` for scripts.

use crate::api::Client;
use crate::api::JobRow;
pub use beamflow_protocol::table;

/// Renders jobs as an aligned table.
pub fn jobs_table(jobs: &[JobRow]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "BEAMLINE".into(),
        "STACK".into(),
        "VER".into(),
        "NAME".into(),
        "STATE".into(),
        "PARENTS".into(),
    ]];
    for j in jobs {
        let parents = if j.parents.is_empty() {
            "-".to_string()
        } else {
            j.parents
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push([
            j.id.to_string(),
            j.beamline.clone(),
            j.stack.clone(),
            j.version.to_string(),
            j.name.clone(),
            j.state.clone(),
            parents,
        ]);
    }
    table(&rows)
}

/// The `status` page: stacks with jobs per state, launchers, and what needs a person.
pub fn status_text(s: &beamflow_protocol::api::StatusResponse) -> String {
    let mut out = String::new();
    if s.stacks.is_empty() {
        out.push_str("no stacks registered yet\n");
    } else {
        let mut rows = vec![[
            "BEAMLINE".to_string(),
            "STACK".into(),
            "VER".into(),
            "WORKFLOW".into(),
            "JOBS".into(),
        ]];
        for st in &s.stacks {
            let counts: Vec<String> = st.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            rows.push([
                st.beamline.clone(),
                st.stack.clone(),
                st.version.to_string(),
                st.workflow.clone(),
                counts.join(", "),
            ]);
        }
        out.push_str(&table(&rows));
    }
    if !s.launchers.is_empty() {
        out.push('\n');
        let mut rows = vec![[
            "LAUNCHER".to_string(),
            "QUEUE".into(),
            "SCHEDULER".into(),
            "BATCH".into(),
            "NODES".into(),
            "STATE".into(),
            "JOBS".into(),
            "REASON".into(),
        ]];
        for l in &s.launchers {
            rows.push([
                l.id.to_string(),
                l.queue.clone(),
                l.scheduler.clone(),
                if l.batch_id.is_empty() {
                    "-".into()
                } else {
                    l.batch_id.clone()
                },
                l.nodes.to_string(),
                l.state.clone(),
                l.running_jobs.to_string(),
                if l.reason.is_empty() {
                    "-".into()
                } else {
                    l.reason.clone()
                },
            ]);
        }
        out.push_str(&table(&rows));
    }
    for n in &s.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// A job's events as a table.
pub fn history_text(events: &[beamflow_protocol::api::EventRow]) -> String {
    let mut rows = vec![[
        "TIME".to_string(),
        "FROM".into(),
        "TO".into(),
        "REASON".into(),
    ]];
    for e in events {
        rows.push([
            e.at.clone(),
            e.from.clone().unwrap_or_else(|| "-".into()),
            e.to.clone(),
            e.reason.clone(),
        ]);
    }
    table(&rows)
}

/// `ls`: fetches jobs from the service.
pub fn ls(
    client: &Client,
    stack: Option<&str>,
    state: Option<&str>,
) -> Result<Vec<JobRow>, crate::api::ClientError> {
    client.jobs(stack, state)
}
