//! Starting a job as the site's launch template says, with no shell in between, and ending
//! everything it started.

use beamflow_config::argv;
use beamflow_protocol::api::LaunchedJob;
use std::path::Path;

/// Fills a launch template (split into words when the config loaded) for one job: the word
/// `{command}` becomes the job's whole argument vector, other placeholders are filled inside
/// their word. The result is run as it is, never through a shell.
pub fn launch_argv(template: &[String], job: &LaunchedJob, hostfile: &Path) -> Vec<String> {
    let ranks = job.nodes * job.ranks_per_node;
    let lookup = |n: &str| -> Option<String> {
        Some(match n {
            "nodes" => job.nodes.to_string(),
            "ranks_per_node" => job.ranks_per_node.to_string(),
            "ranks" => ranks.to_string(),
            "threads" => job.threads_per_rank.to_string(),
            "affinity" => job.cpu_affinity.clone(),
            "hostfile" => hostfile.display().to_string(),
            _ => return None,
        })
    };
    let mut out = Vec::with_capacity(template.len() + job.argv.len());
    for w in template {
        if w == "{command}" {
            out.extend(job.argv.iter().cloned());
        } else {
            out.push(argv::fill(w, &lookup));
        }
    }
    out
}

/// Why a program cannot run at all, checked before starting it: a missing or
/// non-executable program is a configuration error, not worth a retry storm.
pub fn missing_program(prog: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.is_empty() {
        return Some("the command is empty; check the workflow's steps".into());
    }
    if prog.contains('/') {
        let p = Path::new(prog);
        if !p.exists() {
            return Some(format!(
                "{prog} does not exist; check the workflow's bin folder"
            ));
        }
        if !exec(p) {
            return Some(format!(
                "{prog} is not executable; chmod +x it or fix the workflow's bin folder"
            ));
        }
        return None;
    }
    let path = std::env::var("PATH").unwrap_or_default();
    if path.split(':').any(|d| exec(&Path::new(d).join(prog))) {
        None
    } else {
        Some(format!(
            "{prog} is not on PATH; set the workflow's bin folder"
        ))
    }
}

/// Ends a job's whole process group: SIGTERM, then SIGKILL.
pub(crate) fn signal_group(pgid: u32, sig: i32) {
    // SAFETY: kill(2) on a process group this launcher made; no memory is touched
    unsafe {
        libc::kill(-(pgid as i32), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::default_launch;
    use beamflow_config::SchedulerKind;

    fn job(argv: &[&str]) -> LaunchedJob {
        LaunchedJob {
            id: 1,
            name: "register".into(),
            stack: "s".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            work_dir: "/w".into(),
            nodes: 2,
            ranks_per_node: 4,
            threads_per_rank: 8,
            cpu_affinity: "depth".into(),
            env: Default::default(),
            attempt: 1,
        }
    }

    #[test]
    fn templates_fill_every_placeholder_and_keep_the_job_s_arguments_whole() {
        let job = job(&["register", "-fixed", "$(id>PWNED) x;y"]);
        let line = |k| {
            let t = beamflow_config::launch_argv(default_launch(k)).unwrap();
            argv::render(&launch_argv(&t, &job, Path::new("/h")))
        };
        assert_eq!(
            line(SchedulerKind::Cobalt),
            "aprun -n 8 -N 4 -d 8 -cc depth register -fixed '$(id>PWNED) x;y'"
        );
        assert_eq!(
            line(SchedulerKind::Pbs),
            "mpiexec -n 8 --ppn 4 --depth 8 --cpu-bind depth --hostfile /h register -fixed '$(id>PWNED) x;y'"
        );
        assert_eq!(
            line(SchedulerKind::Slurm),
            "srun -N 2 -n 8 --cpus-per-task 8 register -fixed '$(id>PWNED) x;y'"
        );
        let t = beamflow_config::launch_argv(default_launch(SchedulerKind::Local)).unwrap();
        assert_eq!(launch_argv(&t, &job, Path::new("/h")), job.argv);
    }

    #[test]
    fn missing_programs_are_named() {
        assert!(missing_program("/nonexistent/find_rst")
            .unwrap()
            .contains("/nonexistent/find_rst does not exist"));
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("find_rst");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let e = missing_program(&plain.display().to_string()).unwrap();
        assert!(e.contains("is not executable"), "{e}");
        assert!(missing_program("sh").is_none());
        assert!(missing_program("no-such-program-here")
            .unwrap()
            .contains("not on PATH"));
    }
}
