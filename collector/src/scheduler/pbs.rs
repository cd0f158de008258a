//! PBS Pro (Polaris, Aurora): `qsub -l select=`, `qstat -f -F json`, `qdel`. PBS cannot run
//! here; the parsers are tested against output in the format PBS Pro documents and prints.

use super::{hms, run, BatchSpec, BatchState, SchedError, Scheduler};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// `mpiexec` (Cray PALS / MPICH) with the job's own hostfile.
pub(super) const LAUNCH: &str =
    "mpiexec -n {ranks} --ppn {ranks_per_node} --depth {threads} --cpu-bind {affinity} --hostfile {hostfile} {command}";

/// The PBS Pro client commands.
pub struct Pbs;

/// Maps PBS `job_state` letters.
pub(crate) fn state(s: &str) -> BatchState {
    match s {
        "Q" | "W" | "T" => BatchState::Queued,
        "R" | "B" | "M" => BatchState::Running,
        "E" => BatchState::Exiting,
        "H" | "S" | "U" => BatchState::Held,
        _ => BatchState::Finished, // F, X and anything newer
    }
}

/// Parses `qstat -f -F json [-x]`.
pub(crate) fn parse_qstat_json(
    text: &str,
) -> Result<HashMap<String, BatchState>, serde_json::Error> {
    if text.trim().is_empty() {
        return Ok(HashMap::new());
    }
    let v: serde_json::Value = serde_json::from_str(text)?;
    let mut out = HashMap::new();
    if let Some(jobs) = v.get("Jobs").and_then(|j| j.as_object()) {
        for (id, job) in jobs {
            let s = job.get("job_state").and_then(|s| s.as_str()).unwrap_or("F");
            out.insert(id.clone(), state(s));
        }
    }
    Ok(out)
}

impl Scheduler for Pbs {
    fn submit(&self, script: &Path, spec: &BatchSpec) -> Result<String, SchedError> {
        let mut cmd = Command::new("qsub");
        cmd.arg("-N").arg(&spec.name);
        cmd.arg("-l")
            .arg(format!("select={}", spec.nodes))
            .arg("-l")
            .arg(format!("walltime={}", hms(spec.walltime)));
        cmd.arg("-o").arg(&spec.log).arg("-j").arg("oe");
        if !spec.project.is_empty() {
            cmd.arg("-A").arg(&spec.project);
        }
        if !spec.queue.is_empty() {
            cmd.arg("-q").arg(&spec.queue);
        }
        cmd.args(&spec.extra_args).arg(script);
        let out = run(&mut cmd)?;
        out.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| SchedError::Parse {
                command: "qsub".into(),
                message: "no job id printed".into(),
            })
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, BatchState>, SchedError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        // -x includes finished jobs; unknown ids make qstat exit non-zero but still print the rest
        let out = Command::new("qstat")
            .args(["-f", "-F", "json", "-x"])
            .args(ids)
            .output()
            .map_err(|source| SchedError::Spawn {
                command: "qstat -f -F json -x".into(),
                cause: source,
            })?;
        parse_qstat_json(&String::from_utf8_lossy(&out.stdout)).map_err(|e| SchedError::Parse {
            command: "qstat -f -F json".into(),
            message: e.to_string(),
        })
    }

    fn delete(&self, id: &str) -> Result<(), SchedError> {
        match run(Command::new("qdel").arg(id)) {
            Err(SchedError::Failed { stderr, .. })
                if stderr.contains("Unknown Job Id") || stderr.contains("finished") =>
            {
                Ok(())
            }
            r => r.map(|_| ()),
        }
    }

    fn windows(&self, queue: &str) -> Result<Vec<super::window::Window>, SchedError> {
        let nodes = run(Command::new("pbsnodes").args(["-a", "-F", "json"]))?;
        // the queue's waiting jobs: their estimated starts bound the free nodes' window
        let mut qstat = Command::new("qstat");
        qstat.args(["-f", "-F", "json", "-i"]);
        if !queue.is_empty() {
            qstat.arg(queue);
        }
        let jobs = run(&mut qstat)?;
        super::window::pbs_windows(&nodes, &jobs, std::time::SystemTime::now())
    }

    fn default_launch(&self) -> &'static str {
        LAUNCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of `qstat -f -F json -x` as PBS Pro 2022 prints it (trimmed to the fields read).
    const QSTAT: &str = r#"{
        "timestamp":1700000000,
        "pbs_version":"2022.1.1",
        "pbs_server":"polaris-pbs-01",
        "Jobs":{
            "101.polaris-pbs-01":{"Job_Name":"beamflow-1","job_state":"Q","queue":"debug"},
            "102.polaris-pbs-01":{"Job_Name":"beamflow-2","job_state":"R","queue":"debug","exec_host":"x3001c0s7b0n0/0*64"},
            "103.polaris-pbs-01":{"Job_Name":"beamflow-3","job_state":"E"},
            "104.polaris-pbs-01":{"Job_Name":"beamflow-4","job_state":"H"},
            "105.polaris-pbs-01":{"Job_Name":"beamflow-5","job_state":"F","Exit_status":0}
        }
    }"#;

    #[test]
    fn qstat_json_states() {
        let m = parse_qstat_json(QSTAT).unwrap();
        assert_eq!(m["101.polaris-pbs-01"], BatchState::Queued);
        assert_eq!(m["102.polaris-pbs-01"], BatchState::Running);
        assert_eq!(m["103.polaris-pbs-01"], BatchState::Exiting);
        assert_eq!(m["104.polaris-pbs-01"], BatchState::Held);
        assert_eq!(m["105.polaris-pbs-01"], BatchState::Finished);
        assert!(parse_qstat_json("").unwrap().is_empty());
        assert!(parse_qstat_json("qstat: Unknown Job Id 9.x").is_err());
    }
}
