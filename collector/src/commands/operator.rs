//! The operator's commands (`ls`, `status`, `history`, `retry`, `kill`), read and acted on
//! through the service's API, never the database file: tables for people, `--json` for
//! scripts.

use crate::api::Client;
use crate::api::JobRow;
use beamflow_config::Config;
use beamflow_program::{logs, sayln, Exit};
pub use beamflow_protocol::table;
use std::path::{Path, PathBuf};

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
            j.state.to_string(),
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
                l.state.to_string(),
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
            e.from.map_or_else(|| "-".into(), |s| s.to_string()),
            e.to.to_string(),
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

/// The service's client, from the config's state folder.
pub fn client(config: &Path) -> anyhow::Result<Client> {
    let cfg = Config::load(config)?;
    Ok(Client::from_state_dir(&cfg.collector.state_dir)?)
}

/// `ls`'s arguments.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Only jobs of this stack (path under the data root).
    #[arg(long)]
    pub stack: Option<String>,
    /// Only jobs in this state (e.g. READY).
    #[arg(long, value_parser = beamflow_protocol::states::JobState::parse)]
    pub state: Option<beamflow_protocol::states::JobState>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `ls`: the jobs, filtered.
pub fn ls_main(a: LsArgs) -> anyhow::Result<Exit> {
    let state = a.state.map(|s| s.as_str());
    let jobs = ls(&client(&a.config)?, a.stack.as_deref(), state)?;
    if a.json {
        sayln!("{}", serde_json::to_string_pretty(&jobs)?);
    } else {
        logs::out(&jobs_table(&jobs));
    }
    Ok(Exit::Done)
}

/// `status`'s and other reads' arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `status`: stacks with their jobs per state, launchers, and what needs a person.
pub fn status_main(a: StatusArgs) -> anyhow::Result<Exit> {
    let st = client(&a.config)?.status()?;
    if a.json {
        sayln!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        logs::out(&status_text(&st));
    }
    Ok(Exit::Done)
}

/// `history`'s arguments.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Job id (from `ls`).
    pub job: u64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `history`: every state change of one job.
pub fn history_main(a: HistoryArgs) -> anyhow::Result<Exit> {
    let ev = client(&a.config)?.history(a.job)?;
    if a.json {
        sayln!("{}", serde_json::to_string_pretty(&ev)?);
    } else {
        logs::out(&history_text(&ev));
    }
    Ok(Exit::Done)
}

/// `retry`'s and `kill`'s arguments.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Job id.
    pub job: u64,
}

/// `retry`: a FAILED, USER_KILLED, RUN_ERROR or RUN_TIMEOUT job back in line.
pub fn retry_main(a: JobArgs) -> anyhow::Result<Exit> {
    let j = client(&a.config)?.retry(a.job)?;
    sayln!("job {} ({} of {}) is {}", j.id, j.name, j.stack, j.state);
    Ok(Exit::Done)
}

/// `kill`: a job stopped for good.
pub fn kill_main(a: JobArgs) -> anyhow::Result<Exit> {
    let j = client(&a.config)?.kill(a.job)?;
    sayln!("job {} ({} of {}) is {}", j.id, j.name, j.stack, j.state);
    Ok(Exit::Done)
}
