//! The embedded default: a launcher is a child process of the service on this host.

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
            source,
        })?;
        let err = log.try_clone().map_err(|source| SchedError::Spawn {
            command: "dup log".into(),
            source,
        })?;
        let child = Command::new("sh")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| SchedError::Spawn {
                command: format!("sh {}", script.display()),
                source,
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
        // reap every child that ended, asked about or not: nobody else waits for them
        m.retain(|_, c| matches!(c.try_wait(), Ok(None)));
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
