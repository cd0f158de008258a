//! A stack version's DAG in one word for the beamline: waiting, running (with how many jobs
//! finished), done, failed (the first failed job's step and reason, and the command that
//! retries it), or killed. The agent asks for these over its own link, so a beamline learns
//! how its stacks ended without opening a port or a session on the login node.

use crate::api::{DagOutcome, JobRow, StepProgress};
use beamflow_protocol::states::{DagState, JobState};

/// Sums up the jobs of stack version `id`; `config` is the collector's config file, for the
/// retry command.
pub fn summarize(id: u64, jobs: &[JobRow], config: &str) -> DagOutcome {
    let total = jobs.len() as u32;
    let count = |s: JobState| jobs.iter().filter(|j| j.state == s).count() as u32;
    let done = count(JobState::JobFinished);
    let failed: Vec<&JobRow> = jobs
        .iter()
        .filter(|j| j.state == JobState::Failed)
        .collect();
    let killed = count(JobState::UserKilled);
    let superseded: Vec<&JobRow> = jobs
        .iter()
        .filter(|j| j.state == JobState::Superseded)
        .collect();
    let started = jobs.iter().any(|j| {
        !matches!(
            j.state,
            JobState::Created
                | JobState::AwaitingParents
                | JobState::Ready
                | JobState::Preprocessed
        )
    });
    let state = if total == 0 {
        DagState::Unknown
    } else if !failed.is_empty() {
        DagState::Failed
    } else if done == total {
        DagState::Done
    } else if !superseded.is_empty() && done + killed + superseded.len() as u32 == total {
        DagState::Superseded
    } else if killed > 0 && done + killed == total {
        DagState::Killed
    } else if started {
        DagState::Running
    } else {
        DagState::Waiting
    };
    let (failure, retry) = match failed.first() {
        Some(first) => {
            let ids: Vec<String> = failed.iter().map(|j| j.id.to_string()).collect();
            let reason = first.reason.lines().next().unwrap_or_default();
            (
                format!("{}: {reason}", first.name),
                format!(
                    "beamflow-collector retry --config {} {}",
                    beamflow_config::argv::quote(config),
                    ids.join(" ")
                ),
            )
        }
        None => (String::new(), String::new()),
    };
    DagOutcome {
        id,
        state,
        done,
        total,
        failure,
        retry,
        superseded_by: superseded
            .iter()
            .filter_map(|j| j.reason.strip_prefix("superseded by v")?.parse().ok())
            .max()
            .unwrap_or(0),
        steps: steps(jobs),
    }
}

/// Each step with its jobs finished and in all, in the order the jobs were planned (a
/// fanned-out step's jobs are `STEP[FIRST-LAST]`).
pub fn steps(jobs: &[JobRow]) -> Vec<StepProgress> {
    let mut out: Vec<StepProgress> = Vec::new();
    let mut sorted: Vec<&JobRow> = jobs.iter().collect();
    sorted.sort_by_key(|j| j.id);
    for j in sorted {
        let (name, _) = crate::science::dag::step_of(&j.name);
        let done = u32::from(j.state == JobState::JobFinished);
        match out.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.done += done;
                s.total += 1;
            }
            None => out.push(StepProgress {
                name: name.to_string(),
                done,
                total: 1,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, name: &str, state: &str, reason: &str) -> JobRow {
        JobRow {
            id,
            beamline: "bl".into(),
            stack: "s".into(),
            version: 1,
            name: name.into(),
            state: state.parse().unwrap(),
            parents: vec![],
            nodes: 1,
            ranks_per_node: 1,
            threads_per_rank: 1,
            cpu_affinity: "none".into(),
            command: String::new(),
            argv: vec![],
            attempts: 1,
            reason: reason.into(),
            launcher: None,
        }
    }

    #[test]
    fn one_word_per_dag_with_the_failure_and_its_retry() {
        let dag = |states: &[&str]| -> Vec<JobRow> {
            states
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    job(
                        i as u64 + 10,
                        ["qa", "find_rst", "register", "align"][i],
                        s,
                        "",
                    )
                })
                .collect()
        };
        let o = summarize(
            3,
            &dag(&[
                "PREPROCESSED",
                "AWAITING_PARENTS",
                "AWAITING_PARENTS",
                "AWAITING_PARENTS",
            ]),
            "c.toml",
        );
        assert_eq!(
            (o.state.as_str(), o.line()),
            ("waiting", "waiting 0/4".into())
        );
        let o = summarize(
            3,
            &dag(&[
                "JOB_FINISHED",
                "JOB_FINISHED",
                "RUNNING",
                "AWAITING_PARENTS",
            ]),
            "c.toml",
        );
        assert_eq!(o.line(), "running 2/4");
        assert!(!o.is_final());
        let o = summarize(3, &dag(&["JOB_FINISHED"; 4]), "c.toml");
        assert_eq!(o.line(), "done");
        assert!(o.is_final());
        let mut jobs = dag(&["JOB_FINISHED", "JOB_FINISHED", "FAILED", "AWAITING_PARENTS"]);
        jobs[2].reason = "maps/summary.out: S_0002.tif (every pixel is 0) is blank or featureless by qa's measures\nmore".into();
        let o = summarize(3, &jobs, "/home/me/my config.toml");
        assert_eq!(
            o.line(),
            "FAILED: register: maps/summary.out: S_0002.tif (every pixel is 0) is blank or featureless by qa's measures — retry: beamflow-collector retry --config '/home/me/my config.toml' 12"
        );
        assert!(!o.is_final(), "a person may retry it");
        assert_eq!(summarize(9, &[], "c").state, DagState::Unknown);
        let o = summarize(
            3,
            &dag(&["JOB_FINISHED", "USER_KILLED", "USER_KILLED", "USER_KILLED"]),
            "c",
        );
        assert_eq!(o.state, DagState::Killed);
    }
}
