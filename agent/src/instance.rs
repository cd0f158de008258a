//! One daemon per journal. `run` holds an advisory lock on `agent.lock` in the state folder
//! (with its pid written in it) for as long as it lives, so a second daemon on the same
//! journal is refused, and `status` can say whether the daemon runs; a killed daemon's lock
//! goes with its process.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the state folder.
const LOCK: &str = "agent.lock";

/// Why the daemon may not start.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another daemon holds the lock.
    #[error("another beamflow-agent daemon (pid {pid}) already runs on {path}; stop it first (`systemctl stop beamflow-agent`), or give this one its own `agent.state_dir`")]
    Running {
        /// Its pid, as it wrote it.
        pid: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be opened.
    #[error("failed to open {path}: {cause}; check `agent.state_dir`")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

fn open(state_dir: &Path) -> Result<File, InstanceError> {
    let path = state_dir.join(LOCK);
    let _ = std::fs::create_dir_all(state_dir);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|cause| InstanceError::Open { path, cause })
}

fn pid_in(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.rewind();
    let _ = f.read_to_string(&mut s);
    s.trim().to_string()
}

/// Claims the journal for this process; keep the file for as long as the daemon runs.
pub fn claim(state_dir: &Path) -> Result<File, InstanceError> {
    let mut f = open(state_dir)?;
    if f.try_lock().is_err() {
        return Err(InstanceError::Running {
            pid: pid_in(&mut f),
            path: state_dir.join(LOCK),
        });
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

/// The pid of the daemon running on this journal, if one does.
pub fn running(state_dir: &Path) -> Option<String> {
    let path = state_dir.join(LOCK);
    let mut f = File::open(&path).ok()?;
    if f.try_lock_shared().is_ok() {
        return None;
    }
    Some(pid_in(&mut f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_daemon_is_refused_and_status_sees_the_first() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(running(d.path()), None);
        let held = claim(d.path()).unwrap();
        let e = claim(d.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert_eq!(running(d.path()), Some(std::process::id().to_string()));
        drop(held);
        assert_eq!(running(d.path()), None);
    }
}
