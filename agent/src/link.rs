//! The link: a byte stream to `beamflow-collector serve --stdio` and the handshake on it.
//!
//! Transport `local` runs the collector as a child process and speaks over its pipes. The
//! far end's stderr is relayed into the agent's log, and its last lines are kept so that a
//! far end that dies says why in the agent's error rather than just "broken pipe".

use beamflow_config::{Config, Transport};
use beamflow_protocol::{read_frame, read_magic, write_frame, Frame, ProtocolError, VERSION};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Why a link could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The far-end command could not be started.
    #[error("cannot start the collector ({command}): {source}; install beamflow-collector beside beamflow-agent or set [link] command")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed.
    #[error("handshake with the collector failed: {source}{}", tail_text(.stderr))]
    Handshake {
        /// What went wrong.
        #[source]
        source: ProtocolError,
        /// The far end's last stderr lines.
        stderr: String,
    },
    /// The collector refused the handshake.
    #[error("the collector refused the link: {0}")]
    Refused(String),
    /// No answer within the handshake timeout.
    #[error("the collector did not answer within {0:?}; is the far end hanging?")]
    Timeout(std::time::Duration),
}

fn tail_text(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; the collector said: {s}")
    }
}

/// Last lines the far end wrote to stderr.
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
    /// Frames from the collector.
    pub reader: BufReader<ChildStdout>,
    /// Frames to the collector (buffered; flush when waiting for an answer).
    pub writer: BufWriter<ChildStdin>,
    /// The far end's stderr tail.
    pub stderr: StderrTail,
    /// What the collector said about itself.
    pub server: String,
    child: Child,
}

/// The command that starts the far end.
pub fn far_command(cfg: &Config) -> Vec<String> {
    if !cfg.link.command.is_empty() {
        return cfg.link.command.clone();
    }
    let exe = collector_exe();
    let config = cfg
        .source
        .clone()
        .unwrap_or_else(|| PathBuf::from("beamflow.toml"));
    vec![
        exe.display().to_string(),
        "serve".into(),
        "--stdio".into(),
        "--config".into(),
        config.display().to_string(),
    ]
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

impl Link {
    /// Starts the far end and performs the handshake.
    pub async fn open(cfg: &Config) -> Result<Link, LinkError> {
        match cfg.link.transport {
            Transport::Local => {}
        }
        let argv = far_command(cfg);
        let command = argv.join(" ");
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LinkError::Spawn {
                command: command.clone(),
                source,
            })?;
        let stderr = StderrTail::default();
        if let Some(err) = child.stderr.take() {
            let tail = stderr.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "collector", "{line}");
                    if let Ok(mut q) = tail.0.lock() {
                        if q.len() >= 5 {
                            q.pop_front();
                        }
                        q.push_back(line);
                    }
                }
            });
        }
        let reader = BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped"));
        let writer = BufWriter::with_capacity(1 << 20, child.stdin.take().expect("piped"));
        let mut link = Link {
            reader,
            writer,
            stderr,
            server: String::new(),
            child,
        };
        let timeout = cfg.link.handshake_timeout.0;
        match tokio::time::timeout(timeout, link.handshake()).await {
            Ok(Ok(())) => Ok(link),
            Ok(Err(e)) => {
                // give the far end a moment to finish writing why it failed
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(300), link.child.wait())
                        .await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Err(match e {
                    LinkError::Handshake { source, .. } => LinkError::Handshake {
                        source,
                        stderr: link.stderr.text(),
                    },
                    e => e,
                })
            }
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    async fn handshake(&mut self) -> Result<(), LinkError> {
        let hs = |source| LinkError::Handshake {
            source,
            stderr: String::new(),
        };
        read_magic(&mut self.reader).await.map_err(hs)?;
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
            },
        )
        .await
        .map_err(hs)?;
        self.writer.flush().await.map_err(|e| hs(e.into()))?;
        match read_frame(&mut self.reader).await.map_err(hs)? {
            Some(Frame::Welcome { server, .. }) => {
                tracing::debug!(%server, "link open");
                self.server = server;
                Ok(())
            }
            Some(Frame::Error { message, .. }) => Err(LinkError::Refused(message)),
            Some(other) => Err(hs(ProtocolError::Malformed(format!(
                "expected Welcome, got {other:?}"
            )))),
            None => Err(hs(ProtocolError::ClosedBeforeHandshake {
                text: String::new(),
            })),
        }
    }

    /// Says goodbye and waits briefly for the far end to exit.
    pub async fn close(mut self) {
        let _ = write_frame(&mut self.writer, &Frame::Bye).await;
        let _ = self.writer.flush().await;
        drop(self.writer);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait()).await;
    }

    /// Splits into halves for concurrent reading and writing; the child lives in the guard.
    pub fn split(self) -> (BufReader<ChildStdout>, BufWriter<ChildStdin>, LinkGuard) {
        (
            self.reader,
            self.writer,
            LinkGuard {
                child: self.child,
                stderr: self.stderr,
            },
        )
    }
}

/// Keeps the far end's process (killed on drop) and its stderr tail.
pub struct LinkGuard {
    child: Child,
    /// The far end's stderr tail.
    pub stderr: StderrTail,
}

impl LinkGuard {
    /// Waits briefly for the far end to exit after the writer was dropped.
    pub async fn finish(mut self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait()).await;
    }
}
