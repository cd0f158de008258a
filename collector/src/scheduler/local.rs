//! The embedded default: a launcher is a child process of the service on this host, or of a
//! command the queue's `extra_args` names to run it somewhere else (`["ssh", "node7"]`,
//! `["nice"]`, `["ip", "netns", "exec", "compute"]`): there is no submit command for them to
//! be arguments of, so they are the command the launcher's script runs under.

use super::{BatchSpec, BatchState, SchedError, Scheduler};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// Jobs run directly: there is no allocation to place them in.
pub(super) const LAUNCH: &str = "{command}";

/// Launchers as child processes, each in its own process group so that deleting one ends
/// everything it started.
#[derive(Default)]
pub struct Local {
    children: Mutex<HashMap<String, Child>>,
}

fn alive(pid: &str) -> bool {
    // after a service restart the launcher is no longer our child: ask /proc
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Scheduler for Local {
    fn submit(&self, script: &Path, spec: &BatchSpec) -> Result<String, SchedError> {
        let log = std::fs::File::create(&spec.log).map_err(|source| SchedError::Spawn {
            command: format!("create {}", spec.log.display()),
            cause: source,
        })?;
        let err = log.try_clone().map_err(|source| SchedError::Spawn {
            command: "dup log".into(),
            cause: source,
        })?;
        let (program, before) = match spec.extra_args.split_first() {
            Some((p, rest)) => (p.as_str(), [rest, &["sh".to_string()]].concat()),
            None => ("sh", Vec::new()),
        };
        let shown = format!("{program} {} {}", before.join(" "), script.display());
        let child = Command::new(program)
            .args(&before)
            .arg(script)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| SchedError::Spawn {
                command: shown,
                cause: source,
            })?;
        let id = child.id().to_string();
        if let Ok(mut m) = self.children.lock() {
            m.insert(id.clone(), child);
        }
        Ok(id)
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, BatchState>, SchedError> {
        let mut out = HashMap::new();
        let mut m = self.children.lock().map_err(|_| SchedError::Parse {
            command: "local".into(),
            message: "lock poisoned".into(),
        })?;
        reap_ended(&mut m);
        for id in ids {
            let running = match m.get_mut(id) {
                Some(c) => match c.try_wait() {
                    Ok(None) => true,
                    _ => {
                        m.remove(id);
                        false
                    }
                },
                None => alive(id),
            };
            if running {
                out.insert(id.clone(), BatchState::Running);
            }
        }
        Ok(out)
    }

    fn reap(&self) {
        if let Ok(mut m) = self.children.lock() {
            reap_ended(&mut m);
        }
    }

    fn delete(&self, id: &str) -> Result<(), SchedError> {
        if let Ok(pid) = id.parse::<i32>() {
            unsafe {
                libc::kill(-pid, libc::SIGTERM);
            }
        }
        Ok(())
    }

    fn default_launch(&self) -> &'static str {
        LAUNCH
    }
}

/// Waits for every child that ended, asked about or not: nobody else does.
fn reap_ended(m: &mut HashMap<String, Child>) {
    m.retain(|_, c| matches!(c.try_wait(), Ok(None)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launcher_that_ended_by_itself_is_reaped_unasked() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("l.sh");
        std::fs::write(&script, "exit 0\n").unwrap();
        let local = Local::default();
        let spec = BatchSpec {
            name: "t".into(),
            nodes: 1,
            walltime: std::time::Duration::from_secs(60),
            project: String::new(),
            queue: String::new(),
            extra_args: Vec::new(),
            log: d.path().join("l.log"),
        };
        let id = local.submit(&script, &spec).unwrap();
        let stat = || std::fs::read_to_string(format!("/proc/{id}/stat")).ok();
        // it ends at once and stays a zombie until someone waits for it
        let start = std::time::Instant::now();
        while !stat().is_some_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        }) {
            assert!(start.elapsed().as_secs() < 10, "the launcher never ended");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        local.reap();
        assert!(stat().is_none(), "still in the process table: {:?}", stat());
        assert!(local.children.lock().unwrap().is_empty());
    }
}
