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

/// The fields of `/proc/PID/stat` after the command name: state is the first, the process
/// group the third (field 5), the start time (clock ticks after boot) the twentieth (22).
fn stat_of(pid: i32) -> Option<(char, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        f.first()?.chars().next()?,
        f.get(2)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// A launcher's batch id: its pid and its start time (`4242@123456`). After a service
/// restart the launcher is no longer a child, and a pid alone may by then name another
/// process: the start time tells them apart before anything is believed or signalled.
fn batch_id(pid: u32) -> String {
    match stat_of(pid as i32) {
        Some((_, _, start)) => format!("{pid}@{start}"),
        None => pid.to_string(),
    }
}

/// The pid of `id` if that very launcher still runs (not a zombie, same start time, still
/// leading its process group). An id without a start time (written before ids had one) is
/// believed only while the pid leads its own group.
fn same_launcher(id: &str) -> Option<i32> {
    let (pid, start) = match id.split_once('@') {
        Some((p, s)) => (p.parse::<i32>().ok()?, Some(s.parse::<u64>().ok()?)),
        None => (id.parse::<i32>().ok()?, None),
    };
    let (state, pgid, started) = stat_of(pid)?;
    (state != 'Z' && pgid == pid && start.is_none_or(|s| s == started)).then_some(pid)
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
        let id = batch_id(child.id());
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
                None => same_launcher(id).is_some(),
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
        // a pid that now names another process (reused after a restart) is never signalled
        match same_launcher(id) {
            Some(pid) => unsafe {
                libc::kill(-pid, libc::SIGTERM);
            },
            None => tracing::debug!(id, "launcher already gone; nothing to signal"),
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
        let pid = id.split('@').next().unwrap().to_string();
        let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
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

    #[test]
    fn a_reused_pid_is_never_taken_for_the_launcher_nor_signalled() {
        // a process that is not ours, in a group of its own, as a reused pid would be
        let mut other = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = other.id();
        let id = batch_id(pid);
        assert_eq!(same_launcher(&id), Some(pid as i32));
        // the same pid with another start time: what a restart finds when the pid was reused
        let start: u64 = id.split_once('@').unwrap().1.parse().unwrap();
        let stale = format!("{pid}@{}", start + 1);
        let local = Local::default();
        assert!(local
            .status(std::slice::from_ref(&stale))
            .unwrap()
            .is_empty());
        local.delete(&stale).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            matches!(other.try_wait(), Ok(None)),
            "the other process was signalled"
        );
        // and the true id is both believed and ended
        assert!(local
            .status(std::slice::from_ref(&id))
            .unwrap()
            .contains_key(&id));
        local.delete(&id).unwrap();
        let status = other.wait().unwrap();
        assert!(!status.success());
    }
}
