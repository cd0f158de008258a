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
    let mut rows = vec![header()];
    rows.extend(jobs.iter().map(row));
    table(&rows)
}

fn header() -> [String; 7] {
    ["ID", "BEAMLINE", "STACK", "VER", "NAME", "STATE", "PARENTS"].map(String::from)
}

fn row(j: &JobRow) -> [String; 7] {
    [
        j.id.to_string(),
        j.beamline.clone(),
        j.stack.clone(),
        j.version.to_string(),
        j.name.clone(),
        j.state.to_string(),
        list(&j.parents),
    ]
}

fn list(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "-".to_string();
    }
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
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
                match st.partial {
                    true => format!("{} (streamed)", st.version),
                    false => st.version.to_string(),
                },
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
            "NODES × WALLTIME".into(),
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
                l.shape(),
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

/// A fanned-out step's jobs as one row, so that a stack still reads as its steps: the step
/// with how many jobs and their ids, the state they share, else how many are done and what
/// the others are doing (`12/31 done, RUNNING 4`), the parents of them all.
fn grouped(jobs: &[JobRow]) -> String {
    use beamflow_protocol::states::JobState;
    let mut groups: Vec<(String, Vec<&JobRow>)> = Vec::new();
    for j in jobs {
        let (step, _) = crate::science::dag::step_of(&j.name);
        let same =
            |g: &&JobRow| g.beamline == j.beamline && g.stack == j.stack && g.version == j.version;
        match groups
            .iter_mut()
            .find(|(name, m)| name == step && m.first().is_some_and(same))
        {
            Some((_, members)) => members.push(j),
            None => groups.push((step.to_string(), vec![j])),
        }
    }
    let mut rows = vec![header()];
    for (step, members) in groups {
        if let [one] = members[..] {
            rows.push(row(one));
            continue;
        }
        let own: Vec<u64> = members.iter().map(|m| m.id).collect();
        let mut parents: Vec<u64> = members
            .iter()
            .flat_map(|m| m.parents.iter().copied())
            .filter(|p| !own.contains(p))
            .collect();
        parents.sort_unstable();
        parents.dedup();
        let first_state = members[0].state;
        let state = match first_state {
            s if members.iter().all(|m| m.state == s) => s.to_string(),
            _ => {
                let done = members
                    .iter()
                    .filter(|m| m.state == JobState::JobFinished)
                    .count();
                let others: Vec<String> = JobState::ALL
                    .iter()
                    .filter(|s| **s != JobState::JobFinished)
                    .filter_map(|s| {
                        let n = members.iter().filter(|m| m.state == *s).count();
                        (n > 0).then(|| format!("{s} {n}"))
                    })
                    .collect();
                format!("{done}/{} done, {}", members.len(), others.join(", "))
            }
        };
        let first = members[0];
        rows.push([
            format!("{}..{}", own[0], own[own.len() - 1]),
            first.beamline.clone(),
            first.stack.clone(),
            first.version.to_string(),
            format!("{step} ×{}", members.len()),
            state,
            list(&parents),
        ]);
    }
    table(&rows)
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
    /// One row per job, a fanned-out step's too (by default they are one row per step).
    #[arg(long)]
    pub every: bool,
}

/// `ls`: the jobs, filtered.
pub fn ls_main(a: LsArgs) -> anyhow::Result<Exit> {
    let state = a.state.map(|s| s.as_str());
    let jobs = ls(&client(&a.config)?, a.stack.as_deref(), state)?;
    if a.json {
        sayln!("{}", serde_json::to_string_pretty(&jobs)?);
    } else {
        logs::out(&if a.every {
            jobs_table(&jobs)
        } else {
            grouped(&jobs)
        });
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
