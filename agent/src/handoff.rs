//! `push` hands a folder to the running daemon: the daemon already has the SSH master and far
//! ends open (the warm link), so a folder it is handed goes at once, ahead of its queue, with
//! no login and no handshake; `push` follows it to the end over the same connection. Without
//! a daemon (or for a folder outside its watch roots) `push` sends the folder itself.
//!
//! The door is a Unix socket in the agent's state folder, mode 0600, and every connection's
//! peer must be the daemon's own user (`SO_PEERCRED`), whatever the socket's mode. A
//! connection says one line (at most [`MAX_REQUEST`] bytes, within [`REQUEST_TIME`]) and at
//! most [`MAX_CONNECTIONS`] are served at once.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// The socket's name in the state folder.
pub const SOCKET: &str = "agent.sock";

/// The longest request line: a path, in JSON.
pub const MAX_REQUEST: u64 = 8192;

/// How long a connection may take to say what it wants.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);

/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;

/// Where the daemon of `state_dir` listens.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// What `push` asks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// The folder to send now (absolute, canonical).
    pub push: PathBuf,
}

/// A stack the collector accepted, as `push` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sent {
    /// Path under the collector's data root.
    pub stack: String,
    /// Version submitted.
    pub version: u32,
    /// Files in the stack.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes that crossed the link.
    pub wire_bytes: u64,
    /// Files the collector already had.
    pub same: u64,
    /// The collector's id.
    pub remote_id: u64,
    /// Jobs in the DAG (0 where it was submitted before).
    pub jobs: u32,
    /// False when this version had been registered before.
    pub created: bool,
    /// Seconds spent on the link.
    pub secs: f64,
}

impl Sent {
    /// The account of a send the collector accepted: `push` and the daemon make it alike.
    pub fn of(
        (stack, version): (&str, u32),
        (files, bytes): (u64, u64),
        report: &crate::link::transfer::Report,
        acc: &crate::link::transfer::Accepted,
    ) -> Sent {
        Sent {
            stack: stack.to_string(),
            version,
            files,
            bytes,
            wire_bytes: report.wire_bytes,
            same: report.same as u64,
            remote_id: acc.remote_id,
            jobs: acc.jobs,
            created: acc.created,
            secs: report.elapsed.as_secs_f64(),
        }
    }
}

/// What the daemon says, one line each, until the last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// It took the folder; it goes next.
    Accepted {
        /// The stack's remote name.
        stack: String,
    },
    /// An attempt failed; it tries again (what went wrong).
    Retrying {
        /// Why.
        reason: String,
    },
    /// The collector accepted it (last).
    Submitted(Sent),
    /// It is held for a person (last).
    Held {
        /// Why.
        reason: String,
    },
    /// The daemon does not take it (not in a watch root): `push` sends it itself (last).
    Refused {
        /// Why.
        reason: String,
    },
}

impl Answer {
    /// Whether nothing follows it.
    pub fn is_last(&self) -> bool {
        !matches!(self, Answer::Accepted { .. } | Answer::Retrying { .. })
    }
}

/// Why the door could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The socket could not be made.
    #[error("cannot listen on {path} for `beamflow-agent push`: {cause}; check that the state folder is writable")]
    Listen {
        /// Where.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// Opens the door at `path` (a stale socket of an earlier daemon is replaced: the journal's
/// lock says this daemon is the only one) and serves it until the runtime stops: each
/// request goes to `hand` with the sender its answers go back through.
pub fn listen(
    path: &Path,
    hand: impl Fn(PathBuf, mpsc::UnboundedSender<Answer>) + Send + Sync + 'static,
) -> Result<(), HandoffError> {
    let fail = |cause| HandoffError::Listen {
        path: path.to_path_buf(),
        cause,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    }
    let hand = Arc::new(hand);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("push door: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let hand = hand.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(stream, hand.as_ref()).await {
                    tracing::debug!("push door: {e}");
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

/// Whether a connection's peer is this process's own user.
fn own_user(s: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail
    let me = unsafe { libc::geteuid() };
    s.peer_cred().is_ok_and(|c| c.uid() == me)
}

async fn serve(
    stream: UnixStream,
    hand: &(impl Fn(PathBuf, mpsc::UnboundedSender<Answer>) + Send + Sync),
) -> std::io::Result<()> {
    if !own_user(&stream) {
        tracing::warn!("push door: a connection from another user, closed");
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let said = tokio::time::timeout(REQUEST_TIME, reader.read_line(&mut line)).await;
    let answer_now = |a: Answer| serde_json::to_string(&a).unwrap_or_default() + "\n";
    let req: Request = match said {
        Ok(Ok(_)) => match serde_json::from_str(line.trim_end()) {
            Ok(r) => r,
            Err(e) => {
                let a = Answer::Refused {
                    reason: format!("not a request this daemon understands ({e}); is `beamflow-agent push` the same version as `beamflow-agent run`?"),
                };
                return write.write_all(answer_now(a).as_bytes()).await;
            }
        },
        _ => return Ok(()),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    hand(req.push, tx);
    while let Some(a) = rx.recv().await {
        let last = a.is_last();
        write.write_all(answer_now(a).as_bytes()).await?;
        if last {
            break;
        }
    }
    write.shutdown().await
}

/// A folder handed to the daemon: its answers, as they come.
pub struct Following {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    /// Open while it is followed: its end tells the daemon nothing, but a dropped half
    /// shuts the socket's writing side down.
    _write: tokio::net::unix::OwnedWriteHalf,
}

impl Following {
    /// The daemon's next answer; none when it hung up without a last one (it stopped).
    pub async fn next(&mut self) -> Option<Answer> {
        let line = self.lines.next_line().await.ok()??;
        serde_json::from_str(&line).ok()
    }
}

/// Hands `dir` to the daemon of `state_dir`, if one listens; none when none does (`push`
/// then sends the folder itself).
pub async fn offer(state_dir: &Path, dir: &Path) -> Option<Following> {
    let stream = UnixStream::connect(socket_path(state_dir)).await.ok()?;
    let (read, mut write) = stream.into_split();
    let req = serde_json::to_string(&Request {
        push: dir.to_path_buf(),
    })
    .ok()?;
    write.write_all(format!("{req}\n").as_bytes()).await.ok()?;
    Some(Following {
        lines: BufReader::new(read).lines(),
        _write: write,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_handed_over_is_answered_to_the_end_and_junk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        listen(&socket_path(dir.path()), |push, tx| {
            let _ = tx.send(Answer::Accepted {
                stack: push.display().to_string(),
            });
            let _ = tx.send(Answer::Retrying {
                reason: "link down".into(),
            });
            let _ = tx.send(Answer::Held {
                reason: "not whole".into(),
            });
        })
        .unwrap();
        let mode = std::fs::metadata(socket_path(dir.path())).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let mut f = offer(dir.path(), Path::new("/data/s 1;rm")).await.unwrap();
        assert_eq!(
            f.next().await,
            Some(Answer::Accepted {
                stack: "/data/s 1;rm".into()
            })
        );
        assert!(matches!(f.next().await, Some(Answer::Retrying { .. })));
        assert!(matches!(f.next().await, Some(Answer::Held { .. })));
        assert_eq!(f.next().await, None);
        // a line that is not a request
        let mut s = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        s.write_all(b"{\"rm\": 1}\n").await.unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out)
            .await
            .unwrap();
        assert!(
            out.contains("refused") && out.contains("same version"),
            "{out}"
        );
        // nothing at all: the connection is closed after REQUEST_TIME, never held
        let idle = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        drop(idle);
        assert!(offer(Path::new("/nonexistent"), Path::new("/x"))
            .await
            .is_none());
    }
}
