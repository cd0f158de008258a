//! The SSH master: one authenticated connection that every channel shares.
//!
//! With `master = "own"` the agent opens it (host keys checked strictly, keepalives on,
//! `ControlPersist` bounded so a crashed agent leaves nothing behind for long) and reopens it
//! when it dies: at `[link] control_path` when one is set (so that a person or a script can
//! use the same socket, and an agent restarted within `persist` takes its master back), else
//! in a private folder under `/tmp` (openssh's `connect_mux`). With `master = "adopt"` a person opens it once with
//! `beamflow-agent login` (password, one-time password, whatever the site asks) and the agent
//! only adopts it (`resume_mux`); when it is gone the agent keeps watching and journaling, says
//! "waiting for the SSH master — run `beamflow-agent login`", and resumes by itself once a
//! master is back. Channels are `ssh -S <socket>` processes multiplexed over the master; they
//! carry `ProxyCommand=false` so that a dead master can never turn into a fresh login.

use beamflow_config::{LinkSection, MasterMode};
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Why there is no usable master.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// Adopt mode and nobody has logged in (or the master died).
    #[error(
        "waiting for the SSH master — run `beamflow-agent login` (no live master at {path}: {why})"
    )]
    NoMaster {
        /// The control socket.
        path: PathBuf,
        /// What the check said.
        why: String,
    },
    /// Own mode and the connection failed.
    #[error("cannot open the SSH master to {host}: {why}")]
    Connect {
        /// Host.
        host: String,
        /// What ssh said (host key refusals included).
        why: String,
    },
}

/// The master connection, opened or adopted on demand.
pub struct Master {
    link: LinkSection,
    session: Option<Session>,
    /// An own master found already running at `control_path` is this one's to end (the
    /// daemon's, from before a restart), not another's to leave running (the daemon's, found
    /// by a `push`, `doctor` or `setup` run beside it).
    takes_found: bool,
    /// The master in use was found running, not opened here.
    found: bool,
}

fn describe(e: &openssh::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    with_host_key_hint(s)
}

/// ssh's words, with what to do when they are about the host key.
fn with_host_key_hint(mut s: String) -> String {
    if s.contains("Host key verification failed")
        || s.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        s.push_str(" — the host key does not match known_hosts; if the host really changed its key, update known_hosts (ssh-keygen -R HOST) and connect once by hand");
    }
    s
}

impl Master {
    /// A master for `[link]` (not yet connected).
    pub fn new(link: &LinkSection) -> Master {
        Master {
            link: link.clone(),
            session: None,
            takes_found: false,
            found: false,
        }
    }

    /// The daemon's master: one found running at `control_path` is its own from before a
    /// restart, and it ends it when it stops.
    pub fn for_daemon(link: &LinkSection) -> Master {
        Master {
            takes_found: true,
            ..Master::new(link)
        }
    }

    /// The control socket of a live master, opening (own) or adopting (adopt) one if needed.
    pub async fn ensure(&mut self) -> Result<PathBuf, SshError> {
        if let Some(s) = &self.session {
            if s.check().await.is_ok() {
                return Ok(s.control_socket().to_path_buf());
            }
            tracing::warn!(host = %self.link.host, "the SSH master is gone");
            if let Some(s) = self.session.take() {
                let _ = s.detach(); // dropping would try to close what is already dead
            }
        }
        let session = match self.link.master {
            MasterMode::Adopt => {
                let path = self.link.control_path.clone();
                if !path.exists() {
                    return Err(SshError::NoMaster {
                        path,
                        why: "no control socket".into(),
                    });
                }
                let s = Session::resume_mux(path.clone().into_boxed_path(), None);
                if let Err(e) = s.check().await {
                    let _ = s.detach();
                    return Err(SshError::NoMaster {
                        path,
                        why: describe(&e),
                    });
                }
                s
            }
            MasterMode::Own if !self.link.control_path.as_os_str().is_empty() => {
                let (s, found) = self.own_at(&self.link.control_path.clone()).await?;
                self.found = found;
                s
            }
            MasterMode::Own => {
                let mut b = SessionBuilder::default();
                b.known_hosts_check(KnownHosts::Strict)
                    .server_alive_interval(self.link.keepalive.0)
                    .connect_timeout(Duration::from_secs(15))
                    .control_persist(ControlPersist::IdleFor(
                        std::num::NonZeroUsize::new(self.link.persist.0.as_secs().max(1) as usize)
                            .expect("at least 1"),
                    ))
                    .control_directory(self.control_dir());
                if let Some(f) = &self.link.ssh_config {
                    b.config_file(f);
                }
                b.connect_mux(&self.link.host)
                    .await
                    .map_err(|e| SshError::Connect {
                        host: self.link.host.clone(),
                        why: describe(&e),
                    })?
            }
        };
        tracing::info!(host = %self.link.host, socket = %session.control_socket().display(), mode = ?self.link.master, "SSH master ready");
        let path = session.control_socket().to_path_buf();
        self.session = Some(session);
        Ok(path)
    }

    /// Opens an own master whose socket is exactly `path`. A live master already there is
    /// this agent's from before a restart (kept by `ControlPersist`): it is taken back, not
    /// doubled; a dead one's socket is removed first.
    async fn own_at(&self, path: &Path) -> Result<(Session, bool), SshError> {
        let failed = |why: String| SshError::Connect {
            host: self.link.host.clone(),
            why,
        };
        if path.exists() {
            let s = Session::resume_mux(path.to_path_buf().into_boxed_path(), None);
            if s.check().await.is_ok() {
                return Ok((s, true));
            }
            let _ = s.detach();
            std::fs::remove_file(path).map_err(|e| {
                failed(format!(
                    "a dead master's socket {} is in the way and cannot be removed: {e}",
                    path.display()
                ))
            })?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| failed(format!("cannot make {}: {e}", dir.display())))?;
            }
        }
        let mut cmd = self.master_command(path);
        let child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot run ssh: {e}")))?;
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| failed("ssh did not finish authenticating within 60 s".into()))?
            .map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            let mut why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if why.is_empty() {
                why = format!("ssh exited with {}", out.status);
            }
            return Err(failed(with_host_key_hint(why)));
        }
        let s = Session::resume_mux(path.to_path_buf().into_boxed_path(), None);
        if let Err(e) = s.check().await {
            let _ = s.detach();
            return Err(failed(format!(
                "ssh authenticated but its master at {} does not answer: {}",
                path.display(),
                describe(&e)
            )));
        }
        Ok((s, false))
    }

    /// `ssh` that opens a master at `path` and goes to the background once authenticated
    /// (`-f`), so its exit says how that went; never asks a question (BatchMode), never
    /// accepts an unknown host key.
    fn master_command(&self, path: &Path) -> tokio::process::Command {
        // ssh expands %-tokens in ControlPath: a literal % is written %%
        let socket = path.display().to_string().replace('%', "%%");
        let mut cmd = tokio::process::Command::new("ssh");
        if let Some(f) = &self.link.ssh_config {
            cmd.arg("-F").arg(f);
        }
        for o in [
            "ControlMaster=yes".to_string(),
            format!("ControlPath={socket}"),
            format!("ControlPersist={}", self.link.persist.0.as_secs().max(1)),
            "BatchMode=yes".into(),
            "StrictHostKeyChecking=yes".into(),
            format!(
                "ServerAliveInterval={}",
                self.link.keepalive.0.as_secs().max(1)
            ),
            "ServerAliveCountMax=3".into(),
            "ConnectTimeout=15".into(),
        ] {
            cmd.arg("-o").arg(o);
        }
        cmd.args(["-f", "-N", "--"])
            .arg(&self.link.host)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    fn control_dir(&self) -> PathBuf {
        match self.link.control_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::env::temp_dir(),
        }
    }

    /// Whether a master was opened or adopted (and not yet found dead).
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// Whether the master answers now (the watchdog's question).
    pub async fn alive(&self) -> bool {
        match &self.session {
            Some(s) => s.check().await.is_ok(),
            None => false,
        }
    }

    /// Ends an owned master; leaves an adopted one to its owner, and one found running at
    /// `control_path` to the daemon that opened it (unless this is that daemon).
    pub async fn close(mut self) {
        if let Some(s) = self.session.take() {
            match self.link.master {
                MasterMode::Own if !self.found || self.takes_found => {
                    let _ = s.close().await;
                }
                // a person's, or the daemon's found by a command run beside it
                _ => {
                    let _ = s.detach();
                }
            }
        }
    }
}

/// Quotes a word for the remote shell, leaving `~/` paths and plain words alone.
pub fn shell_word(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_/.:=@%+,~-".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// The `ssh` command line of one channel over the master at `ctl`.
pub fn channel_command(link: &LinkSection, ctl: &Path, remote: &[String]) -> Vec<String> {
    let mut argv = vec!["ssh".to_string()];
    if let Some(f) = &link.ssh_config {
        argv.push("-F".into());
        argv.push(f.display().to_string());
    }
    for o in [
        "ControlMaster=no",
        "BatchMode=yes",
        "ProxyCommand=false",
        "StrictHostKeyChecking=yes",
    ] {
        argv.push("-o".into());
        argv.push(o.into());
    }
    argv.push("-S".into());
    argv.push(ctl.display().to_string());
    argv.push("-T".into());
    argv.push(link.host.clone());
    argv.push("--".into());
    argv.push(
        remote
            .iter()
            .map(|w| shell_word(w))
            .collect::<Vec<_>>()
            .join(" "),
    );
    argv
}

/// Why `login` could not open a master.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Without a control path the agent could not find the master.
    #[error(
        "set [link] control_path (and master = \"adopt\") so that the agent can find the master"
    )]
    NoControlPath,
    /// ssh could not be started.
    #[error("cannot run ssh")]
    Spawn(#[source] std::io::Error),
    /// ssh ended without a master.
    #[error("ssh exited with {0}; the master is not open")]
    Exit(std::process::ExitStatus),
    /// The master opened but does not answer.
    #[error("the master did not answer: {0}")]
    Check(String),
}

/// `beamflow-agent login`: opens a master in the person's terminal and leaves it running.
pub fn login(link: &LinkSection) -> Result<PathBuf, LoginError> {
    if link.control_path.as_os_str().is_empty() {
        return Err(LoginError::NoControlPath);
    }
    let mut cmd = Command::new("ssh");
    if let Some(f) = &link.ssh_config {
        cmd.arg("-F").arg(f);
    }
    cmd.args([
        "-M",
        "-N",
        "-f",
        "-o",
        "ControlPersist=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ])
    .arg("-o")
    .arg(format!(
        "ServerAliveInterval={}",
        link.keepalive.0.as_secs().max(1)
    ))
    .arg("-S")
    .arg(&link.control_path)
    .arg(&link.host);
    let st = cmd.status().map_err(LoginError::Spawn)?;
    if !st.success() {
        return Err(LoginError::Exit(st));
    }
    let mut check = Command::new("ssh");
    if let Some(f) = &link.ssh_config {
        check.arg("-F").arg(f);
    }
    let ok = check
        .arg("-S")
        .arg(&link.control_path)
        .args(["-O", "check"])
        .arg(&link.host)
        .output()
        .map_err(LoginError::Spawn)?;
    if !ok.status.success() {
        return Err(LoginError::Check(
            String::from_utf8_lossy(&ok.stderr).trim().to_string(),
        ));
    }
    Ok(link.control_path.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_word("~/.config/beamflow/beamflow.toml"),
            "~/.config/beamflow/beamflow.toml"
        );
        assert_eq!(shell_word("/data/run 1"), "'/data/run 1'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
