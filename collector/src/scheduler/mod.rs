//! Batch schedulers behind one small trait: submit a launcher script, ask about batch jobs,
//! delete one. A job id the scheduler no longer knows means finished-or-lost, never an error.

mod cobalt;
mod local;
pub mod pace;
mod pbs;
mod slurm;
pub mod window;

pub use cobalt::Cobalt;
pub use local::Local;
pub use pbs::Pbs;
pub use slurm::Slurm;

use beamflow_config::SchedulerKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What to ask the scheduler for.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    /// Job name shown by the scheduler.
    pub name: String,
    /// Nodes.
    pub nodes: u32,
    /// Wall time.
    pub walltime: Duration,
    /// Project (account), empty for none.
    pub project: String,
    /// Queue or partition, empty for the default.
    pub queue: String,
    /// Extra submit arguments from config.
    pub extra_args: Vec<String>,
    /// Where the batch job's own output goes.
    pub log: PathBuf,
}

/// A batch job's state, across schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Waiting in the queue.
    Queued,
    /// Allocated and running.
    Running,
    /// Ending.
    Exiting,
    /// Held by the user, an admin or a dependency.
    Held,
    /// Ended (completed, cancelled, failed, timed out).
    Finished,
}

/// Why a scheduler command failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// The command could not be run at all.
    #[error("cannot run `{command}`: {cause}; is the scheduler's client installed and on PATH?")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command.
        command: String,
        /// Exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// What was asked is not built for this batch system.
    #[error("{what} is not built for {scheduler}")]
    Unsupported {
        /// What was asked.
        what: &'static str,
        /// The batch system.
        scheduler: &'static str,
    },
    /// Its output was not understood.
    #[error("cannot understand the output of `{command}`: {message}")]
    Parse {
        /// The command.
        command: String,
        /// What was wrong.
        message: String,
    },
}

/// The three things the service asks of a batch system.
pub trait Scheduler: Send + Sync {
    /// Submits `script` and returns the scheduler's job id.
    fn submit(&self, script: &Path, spec: &BatchSpec) -> Result<String, SchedError>;
    /// States of the given jobs; ids missing from the answer are finished or lost.
    fn status(&self, ids: &[String]) -> Result<HashMap<String, BatchState>, SchedError>;
    /// Cancels a job (finished ones are not an error).
    fn delete(&self, id: &str) -> Result<(), SchedError>;
    /// How jobs start inside an allocation of this scheduler.
    fn default_launch(&self) -> &'static str;
    /// Collects batch jobs that ended on their own; only a scheduler whose jobs are this
    /// service's children has any (they would otherwise stay zombies).
    fn reap(&self) {}
    /// The nodes free now in the queue's partition, and for how long ([`window`]).
    fn windows(&self, _queue: &str) -> Result<Vec<window::Window>, SchedError> {
        Err(SchedError::Unsupported {
            what: "reading backfill windows",
            scheduler: "this batch system",
        })
    }
    /// How long before the batch system may be asked again (none: now); see [`pace`].
    fn ready_in(&self) -> Option<Duration> {
        None
    }
    /// What a person should know about how the batch system is asked, when it is slowed.
    fn note(&self) -> Option<String> {
        None
    }
}

/// The text of a batch script: a comment saying what it is, `KEY=value` exports, then the
/// command, each word quoted for `sh` (a queue or config path with odd characters stays one
/// word, and nothing in it is run by the shell).
pub fn batch_script(what: &str, env: &[(&str, String)], argv: &[String]) -> String {
    let quote = beamflow_config::argv::quote;
    let mut text = format!("#!/bin/sh\n# {}\n", what.replace('\n', " "));
    for (k, v) in env {
        text.push_str(&format!("export {k}={}\n", quote(v)));
    }
    let words: Vec<String> = argv.iter().map(|w| quote(w)).collect();
    text.push_str(&format!("exec {}\n", words.join(" ")));
    text
}

/// The scheduler of a queue.
pub fn for_kind(kind: SchedulerKind) -> Box<dyn Scheduler> {
    match kind {
        SchedulerKind::Local => Box::new(Local::default()),
        SchedulerKind::Slurm => Box::new(Slurm),
        SchedulerKind::Pbs => Box::new(Pbs),
        SchedulerKind::Cobalt => Box::new(Cobalt),
    }
}

/// The scheduler of queue `name`, a batch system asked at the queue's pace
/// (`scheduler_min_interval`).
pub fn for_queue(name: &str, q: &beamflow_config::QueueSection) -> Box<dyn Scheduler> {
    let what = match q.scheduler {
        SchedulerKind::Local => return for_kind(q.scheduler),
        SchedulerKind::Slurm => "Slurm",
        SchedulerKind::Pbs => "PBS",
        SchedulerKind::Cobalt => "Cobalt",
    };
    Box::new(pace::Paced::new(
        for_kind(q.scheduler),
        name,
        what,
        q.scheduler_min_interval.0,
    ))
}

/// The usual launch template of a scheduler kind (for launchers, which have no scheduler object).
pub fn default_launch(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::Local => local::LAUNCH,
        SchedulerKind::Slurm => slurm::LAUNCH,
        SchedulerKind::Pbs => pbs::LAUNCH,
        SchedulerKind::Cobalt => cobalt::LAUNCH,
    }
}

/// Job slots a launcher of this queue offers: a node each on a batch system, the configured
/// slots (or one per CPU) on the local scheduler.
pub fn capacity(q: &beamflow_config::QueueSection, nodes: u32) -> u32 {
    match q.scheduler {
        SchedulerKind::Local => local_slots(q),
        _ => nodes,
    }
}

/// Slots of a local launcher: configured, or one per CPU.
pub fn local_slots(q: &beamflow_config::QueueSection) -> u32 {
    if q.slots > 0 {
        q.slots
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    }
}

/// `HH:MM:SS`, rounded up to whole minutes as schedulers count them.
pub fn hms(d: Duration) -> String {
    let mins = d.as_secs().div_ceil(60).max(1);
    format!("{:02}:{:02}:00", mins / 60, mins % 60)
}

/// Runs a scheduler command and returns its stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<String, SchedError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| SchedError::Spawn {
        command: command.clone(),
        cause: source,
    })?;
    if !out.status.success() {
        return Err(SchedError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walltime_rounds_up_to_minutes() {
        assert_eq!(hms(Duration::from_secs(3600)), "01:00:00");
        assert_eq!(hms(Duration::from_secs(61)), "00:02:00");
        assert_eq!(hms(Duration::from_secs(5)), "00:01:00");
    }
}
