//! Slurm: `sbatch --parsable`, `squeue --me`, `scancel`. Tested against a real one-node Slurm.

use super::{hms, run, BatchSpec, BatchState, SchedError, Scheduler};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// `srun` places each job on nodes of the allocation.
pub(super) const LAUNCH: &str = "srun -N {nodes} -n {ranks} --cpus-per-task {threads} {command}";

/// The Slurm client commands.
pub struct Slurm;

/// Maps `squeue %T` states.
pub(crate) fn state(s: &str) -> BatchState {
    match s {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "RESIZING" => BatchState::Queued,
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" => BatchState::Running,
        "SUSPENDED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "STOPPED" => BatchState::Held,
        _ => BatchState::Finished,
    }
}

/// Parses `squeue -h -o "%i %T"`.
pub(crate) fn parse_squeue(text: &str) -> HashMap<String, BatchState> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), state(it.next()?)))
        })
        .collect()
}

/// Parses `sbatch --parsable` ("123" or "123;cluster").
pub(crate) fn parse_sbatch(text: &str) -> Option<String> {
    let id = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())?
        .trim()
        .split(';')
        .next()?
        .to_string();
    id.chars()
        .all(|c| c.is_ascii_digit() || c == '_')
        .then_some(id)
}

impl Scheduler for Slurm {
    fn submit(&self, script: &Path, spec: &BatchSpec) -> Result<String, SchedError> {
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable")
            .arg("-J")
            .arg(&spec.name)
            .arg("-N")
            .arg(spec.nodes.to_string())
            .arg("-t")
            .arg(hms(spec.walltime));
        cmd.arg("-o").arg(&spec.log);
        if !spec.queue.is_empty() {
            cmd.arg("-p").arg(&spec.queue);
        }
        if !spec.project.is_empty() {
            cmd.arg("-A").arg(&spec.project);
        }
        cmd.args(&spec.extra_args).arg(script);
        let out = run(&mut cmd)?;
        parse_sbatch(&out).ok_or_else(|| SchedError::Parse {
            command: "sbatch --parsable".into(),
            message: format!("no job id in {out:?}"),
        })
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, BatchState>, SchedError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        // this user's jobs only (--me), never the whole cluster's; not -j: squeue fails
        // outright on ids it has already forgotten
        let mine = parse_squeue(&run(
            Command::new("squeue").args(["--me", "-h", "-o", "%i %T"])
        )?);
        Ok(mine.into_iter().filter(|(k, _)| ids.contains(k)).collect())
    }

    fn delete(&self, id: &str) -> Result<(), SchedError> {
        run(Command::new("scancel").arg(id)).map(|_| ())
    }

    fn windows(&self, queue: &str) -> Result<Vec<super::window::Window>, SchedError> {
        let partition = |c: &mut Command| {
            if !queue.is_empty() {
                c.arg("-p").arg(queue);
            }
        };
        let mut sinfo = Command::new("sinfo");
        sinfo.args(["-h", "-t", "idle", "-o", "%D %l"]);
        partition(&mut sinfo);
        let idle = run(&mut sinfo)?;
        // pending jobs' expected starts: when the idle nodes may be taken
        let mut squeue = Command::new("squeue");
        squeue.args(["-h", "-t", "PD", "--start", "-o", "%S %D"]);
        partition(&mut squeue);
        let starts = run(&mut squeue)?;
        super::window::slurm_windows(&idle, &starts, std::time::SystemTime::now())
    }

    fn default_launch(&self) -> &'static str {
        LAUNCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output recorded from squeue 22.05 on a one-node cluster.
    #[test]
    fn squeue_states() {
        let m = parse_squeue("12 RUNNING\n13 PENDING\n14 COMPLETING\n15 SUSPENDED\n");
        assert_eq!(m["12"], BatchState::Running);
        assert_eq!(m["13"], BatchState::Queued);
        assert_eq!(m["14"], BatchState::Running);
        assert_eq!(m["15"], BatchState::Held);
        assert_eq!(state("CANCELLED"), BatchState::Finished);
        assert_eq!(parse_sbatch("4242\n"), Some("4242".into()));
        assert_eq!(parse_sbatch("4242;polaris\n"), Some("4242".into()));
        assert_eq!(parse_sbatch("sbatch: error: whatever\n"), None);
    }
}
