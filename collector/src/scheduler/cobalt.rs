//! Cobalt (Theta): `qsub -n -t --mode script`, `qstat`, `qdel`. Cobalt cannot run here; the
//! parsers are tested against output in the format Cobalt's `qstat` prints.

use super::{run, BatchSpec, BatchState, SchedError, Scheduler};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// `aprun` on Cray XC.
pub(super) const LAUNCH: &str =
    "aprun -n {ranks} -N {ranks_per_node} -d {threads} -cc {affinity} {command}";

/// The Cobalt client commands.
pub struct Cobalt;

/// Maps Cobalt's state words.
pub(crate) fn state(s: &str) -> BatchState {
    match s {
        "queued" => BatchState::Queued,
        "starting" | "running" => BatchState::Running,
        "exiting" | "killing" => BatchState::Exiting,
        s if s.ends_with("hold") => BatchState::Held,
        _ => BatchState::Finished,
    }
}

/// Parses `qstat` tables: a header naming `JobID` and `State`, a rule of `=`, then rows.
pub(crate) fn parse_qstat(text: &str) -> HashMap<String, BatchState> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return HashMap::new();
    };
    let cols: Vec<&str> = header.split_whitespace().collect();
    let (Some(id_col), Some(state_col)) = (
        cols.iter().position(|c| c.eq_ignore_ascii_case("JobID")),
        cols.iter().position(|c| c.eq_ignore_ascii_case("State")),
    ) else {
        return HashMap::new();
    };
    lines
        .filter(|l| !l.trim_start().starts_with('='))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(id_col)?.to_string(), state(f.get(state_col)?)))
        })
        .collect()
}

impl Scheduler for Cobalt {
    fn submit(&self, script: &Path, spec: &BatchSpec) -> Result<String, SchedError> {
        let mins = spec.walltime.as_secs().div_ceil(60).max(1);
        let mut cmd = Command::new("qsub");
        cmd.arg("-n")
            .arg(spec.nodes.to_string())
            .arg("-t")
            .arg(mins.to_string())
            .arg("--mode")
            .arg("script");
        cmd.arg("--jobname")
            .arg(&spec.name)
            .arg("-o")
            .arg(&spec.log)
            .arg("-e")
            .arg(&spec.log);
        if !spec.queue.is_empty() {
            cmd.arg("-q").arg(&spec.queue);
        }
        if !spec.project.is_empty() {
            cmd.arg("-A").arg(&spec.project);
        }
        cmd.args(&spec.extra_args).arg(script);
        let out = run(&mut cmd)?;
        // Cobalt may print notices first; the id is the last number
        out.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_string)
            .ok_or_else(|| SchedError::Parse {
                command: "qsub".into(),
                message: format!("no job id in {out:?}"),
            })
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, BatchState>, SchedError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let out = Command::new("qstat")
            .args(ids)
            .output()
            .map_err(|source| SchedError::Spawn {
                command: "qstat".into(),
                cause: source,
            })?;
        Ok(parse_qstat(&String::from_utf8_lossy(&out.stdout)))
    }

    fn delete(&self, id: &str) -> Result<(), SchedError> {
        run(Command::new("qdel").arg(id)).map(|_| ())
    }

    fn windows(&self, queue: &str) -> Result<Vec<super::window::Window>, SchedError> {
        super::window::cobalt_windows(&run(&mut Command::new("nodelist"))?, queue)
    }

    fn default_launch(&self) -> &'static str {
        LAUNCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of Cobalt's default `qstat` output on Theta.
    const QSTAT: &str = "\
JobID    User     WallTime  Nodes  State      Location
=======================================================
401001   alice    00:30:00  128    queued     None
401002   alice    01:00:00  8      running    3824-3831
401003   alice    00:10:00  8      exiting    3832-3839
401004   alice    00:10:00  8      user_hold  None
401005   alice    00:10:00  8      starting   3840-3847
";

    #[test]
    fn qstat_table_states() {
        let m = parse_qstat(QSTAT);
        assert_eq!(m["401001"], BatchState::Queued);
        assert_eq!(m["401002"], BatchState::Running);
        assert_eq!(m["401003"], BatchState::Exiting);
        assert_eq!(m["401004"], BatchState::Held);
        assert_eq!(m["401005"], BatchState::Running);
        assert!(!m.contains_key("401006"));
        assert!(parse_qstat("").is_empty());
    }
}
