//! `[queues.NAME]`: batch queues, their schedulers and the launch template of each job.

use crate::locate::invalid;
use crate::{argv, Config, ConfigError, Dur};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `[queues.NAME]`: one batch queue and the policy for keeping launchers in it.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSection {
    /// `local` (a child process), `slurm`, `pbs` (Polaris, Aurora) or `cobalt` (Theta).
    pub scheduler: SchedulerKind,
    /// Whether the service may submit launchers here at all.
    pub submit: bool,
    /// Launchers queued or running here at once, at most.
    pub max_queued: u32,
    /// Smallest allocation to ask for.
    pub min_nodes: u32,
    /// Largest allocation to ask for.
    pub max_nodes: u32,
    /// Wall time of each launcher's allocation.
    pub walltime: Dur,
    /// Project (account) to charge.
    pub project: String,
    /// The scheduler's queue or partition name; empty for its default.
    pub queue: String,
    /// How a job is started inside the allocation; empty for the scheduler's usual
    /// (`srun`, `mpiexec`, `aprun`, or directly). Placeholders: `{command}`, `{nodes}`,
    /// `{ranks}`, `{ranks_per_node}`, `{threads}`, `{affinity}`, `{hostfile}`. Split into words
    /// when the config loads; `{command}` must be a word of its own and becomes the job's
    /// whole argument vector. No shell runs it.
    pub launch: String,
    /// Local scheduler only: job slots the launcher offers (0 = one per CPU).
    pub slots: u32,
    /// A launcher with nothing to do for this long exits.
    pub idle_exit: Dur,
    /// The longest the service holds a launcher's request for work when there is none (its
    /// heartbeat period; work is handed over the moment it exists).
    pub poll: Dur,
    /// Stop launching this long before the wall time; running jobs are ended then too.
    pub walltime_margin: Dur,
    /// Extra arguments for the submit command (`sbatch`, `qsub`); for `local`, which has
    /// none, the command the launcher runs under (`["ssh", "node7"]`, `["nice"]`).
    pub extra_args: Vec<String>,
    /// The batch system is asked (a status poll, a submission) at most once per this long;
    /// a slow answer stretches it (four times the answer's time) and failures back off
    /// (doubling, up to 32 times it). Some sites demand 120 s. Cancellations are never
    /// delayed; the `local` scheduler, which is no batch system, is not paced.
    pub scheduler_min_interval: Dur,
    /// Shape each launcher to the batch system's free nodes now (a backfill window: idle
    /// nodes until the next job's expected start), so that it starts at once; the fixed size
    /// (`max_nodes`, `walltime`) where no window fits. Slurm (`sinfo`, `squeue --start`), PBS
    /// Pro (`pbsnodes -F json`, `qstat -f -F json -i`) and Cobalt (`nodelist`).
    pub backfill: bool,
    /// How often the windows are asked for (each query also waits for the queue's pace).
    pub backfill_every: Dur,
    /// A window shorter than this (after `walltime_pad`) is not used.
    pub min_walltime: Dur,
    /// Taken off a window's length for the launcher's wall time, so that it ends before the
    /// job it made room for starts.
    pub walltime_pad: Dur,
    /// A backfill queue's launcher still waiting in the batch queue after this long is
    /// withdrawn (cancelled) when a window would start one at once; the next one fits it.
    pub max_queue_wait: Dur,
}

/// The placeholders a launch template may use.
pub const LAUNCH_PLACEHOLDERS: &[&str] = &[
    "command",
    "nodes",
    "ranks",
    "ranks_per_node",
    "threads",
    "affinity",
    "hostfile",
];

/// Why a launch template was refused.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The template's words themselves (quotes, operators, names that would run as code).
    #[error(transparent)]
    Command(#[from] argv::CommandError),
    /// `{command}` missing, repeated or glued to other text.
    #[error(
        "the template must hold {{command}} exactly once, as a word of its own (it becomes the \
         job's arguments), e.g. \"srun -n {{ranks}} {{command}}\"; got {0:?}"
    )]
    CommandWord(String),
    /// A placeholder the launcher does not fill.
    #[error("unknown placeholder {{{0}}}; known are {known}", known = LAUNCH_PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(" "))]
    Placeholder(String),
    /// `{command}` after an option that runs its argument as code.
    #[error(
        "`{0} {{command}}` would run the job's arguments, which hold beamline names, as code; \
         put {{command}} where its words stay arguments, e.g. \"srun -n {{ranks}} {{command}}\""
    )]
    RunsAsCode(String),
}

/// Checks a launch template and splits it into words: `{command}` exactly once, as a word
/// of its own, and only known placeholders.
pub fn launch_argv(template: &str) -> Result<Vec<String>, LaunchError> {
    let words = argv::split(template)?;
    let whole = words.iter().filter(|w| *w == "{command}").count();
    if whole != 1
        || words
            .iter()
            .any(|w| w != "{command}" && w.contains("{command}"))
    {
        return Err(LaunchError::CommandWord(template.to_string()));
    }
    for p in words.iter().flat_map(|w| argv::placeholders(w)) {
        if !LAUNCH_PLACEHOLDERS.contains(&p) {
            return Err(LaunchError::Placeholder(p.to_string()));
        }
    }
    // the job's own words (which hold names) and the work folder's path are data here too
    let at = words.iter().position(|w| w == "{command}").unwrap_or(0);
    if at > 0 && argv::runs_next_as_code(&words[at - 1]) {
        return Err(LaunchError::RunsAsCode(words[at - 1].clone()));
    }
    argv::check_names(&words, &["hostfile"], "\"$BEAMFLOW_HOSTFILE\"")?;
    Ok(words)
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection {
            scheduler: SchedulerKind::Local,
            submit: true,
            max_queued: 1,
            min_nodes: 1,
            max_nodes: 1,
            walltime: Dur::secs(3600),
            project: String::new(),
            queue: String::new(),
            launch: String::new(),
            slots: 0,
            idle_exit: Dur::secs(30),
            poll: Dur::secs(1),
            walltime_margin: Dur::secs(60),
            extra_args: Vec::new(),
            scheduler_min_interval: Dur::secs(30),
            backfill: false,
            backfill_every: Dur::secs(60),
            min_walltime: Dur::secs(600),
            walltime_pad: Dur::secs(120),
            max_queue_wait: Dur::secs(600),
        }
    }
}

/// Which batch system a queue belongs to.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Launchers are child processes of the service on this host.
    #[default]
    Local,
    /// `sbatch` / `squeue` / `scancel`.
    Slurm,
    /// PBS Pro: `qsub -l select=` / `qstat -f -F json` / `qdel`.
    Pbs,
    /// Cobalt: `qsub -n -t --mode script` / `qstat` / `qdel`.
    Cobalt,
}

/// Checks the queues; an error names the key in full and its line.
pub(crate) fn validate(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    for (name, q) in cfg.queues.iter() {
        let bad = |key: &str, message: String| {
            invalid(path, text, key, &format!("queues.{name}.{key}"), message)
        };
        if q.min_nodes == 0 || q.min_nodes > q.max_nodes {
            return Err(bad(
                "min_nodes",
                format!(
                    "min_nodes ({}) must be at least 1 and at most max_nodes ({})",
                    q.min_nodes, q.max_nodes
                ),
            ));
        }
        if !q.launch.is_empty() {
            if let Err(e) = launch_argv(&q.launch) {
                return Err(bad("launch", e.to_string()));
            }
        }
        if q.walltime <= q.walltime_margin {
            return Err(bad(
                "walltime",
                format!(
                    "walltime ({}) must be longer than walltime_margin ({})",
                    q.walltime, q.walltime_margin
                ),
            ));
        }
        if q.backfill && q.scheduler == SchedulerKind::Local {
            return Err(bad(
                "backfill",
                "the local scheduler has no backfill windows (it is no batch system); remove the key or set it to false".into(),
            ));
        }
        if q.backfill && q.min_walltime <= q.walltime_margin {
            return Err(bad(
                "min_walltime",
                format!(
                    "min_walltime ({}) must be longer than walltime_margin ({}): a launcher stops that long before its end",
                    q.min_walltime, q.walltime_margin
                ),
            ));
        }
    }
    Ok(())
}
