//! The link: a byte stream to `beamflow-collector serve --stdio` and the handshake on it.
//!
//! Transport `local` runs the collector as a child process and speaks over its pipes. The data
//! path is plain blocking I/O on its own threads: that measured about twice as fast as async
//! pipes for bulk data, and a transfer has nothing else to wait for. The far end's stderr is
//! relayed into the agent's log, and its last lines are kept so that a far end that dies says
//! why in the agent's error rather than just "broken pipe".

pub mod far;
pub mod ssh;
pub mod transfer;

use beamflow_config::{Config, Transport};
use beamflow_protocol::{read_frame, read_magic, write_frame, Frame, ProtocolError, VERSION};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Why a link could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The far-end command could not be started.
    #[error("cannot start the collector ({command}): {cause}; install beamflow-collector beside beamflow-agent or set [link] command")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The handshake failed.
    #[error("handshake with the collector failed: {cause}{}", tail_text(.stderr))]
    Handshake {
        /// What went wrong.
        cause: ProtocolError,
        /// The far end's last stderr lines.
        stderr: String,
    },
    /// The collector refused the handshake.
    #[error("the collector refused the link: {0}")]
    Refused(String),
    /// The collector could not take the link this time (its disk, its data root).
    #[error("the collector cannot take the link now: {0}")]
    Unavailable(String),
    /// No answer within the handshake timeout.
    #[error("the collector did not answer within {waited:?}; is the far end hanging?{}", tail_text(.stderr))]
    Timeout {
        /// How long we waited.
        waited: Duration,
        /// The far end's last stderr lines.
        stderr: String,
    },
}

fn tail_text(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; the collector said: {s}")
    }
}

/// Whether a line of the far end's stderr may explain why it stopped: its warnings and
/// errors, and whatever is not a log line at all (a shell's "command not found", a panic).
/// Its ordinary log lines ("agent connected") explain nothing and are never quoted as what
/// the collector said.
pub fn explains(line: &str) -> bool {
    let quiet = [" INFO ", " DEBUG ", " TRACE "]
        .iter()
        .any(|l| line.contains(l))
        || ["\"INFO\"", "\"DEBUG\"", "\"TRACE\""]
            .iter()
            .any(|l| line.contains(&format!("\"level\":{l}")));
    !quiet && !line.trim().is_empty()
}

/// Last lines the far end wrote to stderr that may explain a break (see [`explains`]).
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    /// The kept lines, joined.
    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }
}

/// An open, handshaken link.
pub struct Link {
    /// Frames to the collector (buffered; flush when waiting for an answer).
    pub writer: BufWriter<ChildStdin>,
    /// Frames from the collector, read on their own thread so that answers never back up
    /// behind the data we are writing.
    pub frames: mpsc::Receiver<Result<Frame, ProtocolError>>,
    /// The far end's stderr tail.
    pub stderr: StderrTail,
    /// What the collector said about itself.
    pub server: String,
    child: Child,
    /// Reads the far end's stderr: waited for (briefly) when the link closes, so that the
    /// far end's last lines (its session summary) reach the log.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

/// The command that starts the far end: for `local` the collector itself, for `ssh` a channel
/// over the master at `ctl` running the remote command.
pub fn far_command(cfg: &Config, ctl: Option<&Path>) -> Vec<String> {
    far_command_for(cfg, ctl, &["serve", "--stdio"])
}

/// [`far_command`] with another subcommand of the same collector in place of `serve --stdio`
/// (the agent's doctor runs the collector's `doctor --json` there, with the same config).
pub fn far_command_for(cfg: &Config, ctl: Option<&Path>, sub: &[&str]) -> Vec<String> {
    let swap = |argv: Vec<String>| -> Vec<String> {
        match argv.iter().position(|w| w == "serve") {
            Some(i) => {
                let mut out = argv[..i].to_vec();
                out.extend(sub.iter().map(|w| w.to_string()));
                out.extend(argv[i + 1..].iter().filter(|w| *w != "--stdio").cloned());
                out
            }
            None => argv,
        }
    };
    match (cfg.link.transport, ctl) {
        (Transport::Ssh, Some(ctl)) => {
            let remote = if cfg.link.command.is_empty() {
                default_remote(&["serve", "--stdio"])
            } else {
                cfg.link.command.clone()
            };
            crate::link::ssh::channel_command(&cfg.link, ctl, &swap(remote))
        }
        _ if !cfg.link.command.is_empty() => swap(cfg.link.command.clone()),
        _ => {
            let exe = collector_exe();
            let config = cfg
                .source
                .clone()
                .unwrap_or_else(|| PathBuf::from("beamflow.toml"));
            swap(vec![
                exe.display().to_string(),
                "serve".into(),
                "--stdio".into(),
                "--config".into(),
                config.display().to_string(),
            ])
        }
    }
}

/// Where `beamflow-agent setup` installs the collector on the login node, relative to the
/// remote home.
pub const REMOTE_BIN: &str = ".local/bin/beamflow-collector";

/// Where the collector's config lives on the login node, relative to the remote home.
pub const REMOTE_CONFIG: &str = ".config/beamflow/beamflow.toml";

/// The remote command when `[link] command` is empty: `beamflow-collector SUB… --config
/// ~/.config/beamflow/beamflow.toml`, found on the login node's PATH or else in
/// `~/.local/bin`, where `setup` installs it: a non-interactive SSH command often runs with
/// a PATH that lacks `~/.local/bin`. `sh` does the finding so that any login shell (csh
/// included) runs it the same way.
pub fn default_remote(sub: &[&str]) -> Vec<String> {
    let mut argv = remote_collector(sub);
    argv.push("--config".into());
    argv.push(format!("~/{REMOTE_CONFIG}"));
    argv
}

/// `beamflow-collector SUB…` on the login node, found as [`default_remote`] finds it.
pub fn remote_collector(sub: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!("exec \"$(command -v beamflow-collector || echo \"$HOME/{REMOTE_BIN}\")\" \"$@\""),
        "beamflow-collector".into(),
    ];
    argv.extend(sub.iter().map(|w| w.to_string()));
    argv
}

/// `beamflow-collector` beside this binary if it is there (a build tree or one install
/// folder), else whatever PATH finds.
pub fn collector_exe() -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name("beamflow-collector");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("beamflow-collector")
}

/// Pipes default to 64 KiB; bulk data wants fewer, larger writes. Best effort (Linux only).
fn widen_pipe(fd: std::os::fd::RawFd) {
    #[cfg(target_os = "linux")]
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20);
    }
}

impl Link {
    /// Starts the far end and performs the handshake. `ctl` is the SSH master's socket
    /// (transport `ssh` only).
    pub fn open(cfg: &Config, ctl: Option<&Path>) -> Result<Link, LinkError> {
        use std::os::fd::AsRawFd;
        if cfg.link.transport == Transport::Ssh && ctl.is_none() {
            return Err(LinkError::Refused(
                "no SSH master to open a channel on".into(),
            ));
        }
        let argv = far_command(cfg, ctl);
        let command = argv.join(" ");
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LinkError::Spawn {
                command: command.clone(),
                cause: source,
            })?;
        let stderr = StderrTail::default();
        let mut stderr_reader = None;
        if let Some(err) = child.stderr.take() {
            let tail = stderr.clone();
            stderr_reader = Some(std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    tracing::debug!(target: "collector", "{line}");
                    if !explains(&line) {
                        continue;
                    }
                    if let Ok(mut q) = tail.0.lock() {
                        if q.len() >= 5 {
                            q.pop_front();
                        }
                        q.push_back(line);
                    }
                }
            }));
        }
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        widen_pipe(stdin.as_raw_fd());
        widen_pipe(stdout.as_raw_fd());
        let writer = BufWriter::with_capacity(1 << 20, stdin);
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || reader_loop(stdout, tx));
        let mut link = Link {
            writer,
            frames,
            stderr,
            server: String::new(),
            child,
            stderr_reader,
        };
        match link.handshake(cfg.link.handshake_timeout.0, &cfg.agent.beamline()) {
            Ok(()) => Ok(link),
            Err(e) => {
                // give the far end a moment to finish writing why it failed
                for _ in 0..10 {
                    if let Ok(Some(_)) = link.child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }
                std::thread::sleep(Duration::from_millis(50));
                let tail = link.stderr.text();
                Err(match e {
                    LinkError::Handshake { cause: source, .. } => LinkError::Handshake {
                        cause: source,
                        stderr: tail,
                    },
                    LinkError::Timeout { waited, .. } => LinkError::Timeout {
                        waited,
                        stderr: tail,
                    },
                    e => e,
                })
            }
        }
    }

    fn handshake(&mut self, timeout: Duration, beamline: &str) -> Result<(), LinkError> {
        let hs = |source| LinkError::Handshake {
            cause: source,
            stderr: String::new(),
        };
        let client = format!(
            "beamflow-agent {} pid {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        );
        write_frame(
            &mut self.writer,
            &Frame::Hello {
                version: VERSION,
                client,
                beamline: beamline.to_string(),
            },
        )
        .map_err(hs)?;
        self.writer.flush().map_err(|e| hs(e.into()))?;
        match self.frames.recv_timeout(timeout) {
            Ok(Ok(Frame::Welcome { server, .. })) => {
                tracing::debug!(%server, "link open");
                self.server = server;
                Ok(())
            }
            Ok(Ok(Frame::Error { code, message })) if code.is_transient() => {
                Err(LinkError::Unavailable(message))
            }
            Ok(Ok(Frame::Error { message, .. })) => Err(LinkError::Refused(message)),
            Ok(Ok(other)) => Err(hs(ProtocolError::Malformed(format!(
                "expected Welcome, got {other:?}"
            )))),
            Ok(Err(e)) => Err(hs(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(LinkError::Timeout {
                waited: timeout,
                stderr: String::new(),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(hs(ProtocolError::ClosedBeforeHandshake {
                    text: String::new(),
                }))
            }
        }
    }

    /// Says goodbye and waits briefly for the far end to exit (dropping kills it if not).
    pub fn close(mut self) {
        let _ = write_frame(&mut self.writer, &Frame::Bye);
        let _ = self.writer.flush();
        // the far end commits what it holds before it exits: up to 10 s, looked at often
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut nap = Duration::from_millis(1);
        while std::time::Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                // its last lines are on their way: wait for them a moment, not longer (a
                // child it left behind may hold the pipe open)
                if let Some(r) = self.stderr_reader.take() {
                    let by = std::time::Instant::now() + Duration::from_millis(200);
                    while !r.is_finished() && std::time::Instant::now() < by {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                return;
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(50));
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("server", &self.server)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Link {
    /// Whether the far end still runs: a link kept open between stacks is looked at before it
    /// is used again (an SSH channel's client exits when its master or its far end goes).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // an abandoned link must not leave a far end behind
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn reader_loop(stdout: ChildStdout, tx: mpsc::Sender<Result<Frame, ProtocolError>>) {
    let mut rd = BufReader::with_capacity(1 << 16, stdout);
    if let Err(e) = read_magic(&mut rd) {
        let _ = tx.send(Err(e));
        return;
    }
    loop {
        match read_frame(&mut rd) {
            Ok(Some(f)) => {
                if tx.send(Ok(f)).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::explains;

    #[test]
    fn only_what_may_explain_a_break_is_quoted() {
        for quiet in [
            "2026-12-05T23:22:11.229728Z  INFO beamflow_collector::receive::session: agent connected client=x",
            "2026-12-05T23:22:11Z DEBUG ureq::run: Request",
            r#"{"timestamp":"x","level":"INFO","fields":{"message":"agent connected"}}"#,
            "",
        ] {
            assert!(!explains(quiet), "{quiet}");
        }
        for said in [
            "2026-12-05T23:22:11Z  WARN beamflow_collector::receive: cannot write: No space left on device",
            "2026-12-05T23:22:11Z ERROR beamflow_collector: the data root is gone",
            "bash: line 1: beamflow-collector: command not found",
            "thread 'main' panicked at src/x.rs:1:1",
        ] {
            assert!(explains(said), "{said}");
        }
    }
}
