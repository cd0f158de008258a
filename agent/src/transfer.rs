//! Moving one stack version to the collector and asking for its DAG.
//!
//! Offers for every file go out at once (no round trip per file); answers come back on a
//! reader task while data flows. Each file is read in bounded chunks and hashed as it is
//! sent: if its bytes no longer match the BLAKE3 the journal recorded, the file changed under
//! us, the collector is told to drop it, and the stack goes back to waiting. Nothing counts
//! as sent until the collector acknowledges it verified and durable.

use crate::journal::FileRecord;
use crate::link::{Link, LinkError};
use beamflow_config::Config;
use beamflow_protocol::{
    read_frame, write_frame, ErrorCode, FileEntry, Frame, Have, ProtocolError,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// One stack version to send.
#[derive(Debug, Clone)]
pub struct Job {
    /// Folder on this host.
    pub dir: PathBuf,
    /// Path under the collector's data root.
    pub name: String,
    /// Version.
    pub version: u32,
    /// Workflow.
    pub workflow: String,
    /// Files with the hashes the journal recorded.
    pub files: Vec<FileRecord>,
}

/// What to do about a failed attempt; the daemon's retry policy keys on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try again after a backoff (link, service, transient disk trouble).
    Retry,
    /// The stack changed: wait for it to settle again.
    Rewait,
    /// Needs a person: hold with the reason.
    Hold,
}

/// Why an attempt did not end with an accepted DAG.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The link could not be opened.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The link broke mid-way.
    #[error("the link to the collector broke: {0}")]
    Broken(String),
    /// A file changed or vanished while it was being sent.
    #[error(
        "{file} changed while it was being sent ({why}); waiting for the stack to settle again"
    )]
    Changed {
        /// File name.
        file: String,
        /// What was seen.
        why: String,
    },
    /// The collector refused a file for good.
    #[error("the collector refused {file}: {reason}")]
    Refused {
        /// File name.
        file: String,
        /// Its reason.
        reason: String,
    },
    /// The collector failed to take a file this time.
    #[error("the collector could not take {file}: {reason}; will retry")]
    FileFailed {
        /// File name.
        file: String,
        /// Its reason.
        reason: String,
    },
    /// The service was not reachable; everything is sent, only the submission waits.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// The service refused the submission.
    #[error("the collector refused the submission: {0}")]
    SubmitRefused(String),
}

impl TransferError {
    /// The policy: what each failure means for the stack.
    pub fn action(&self) -> Action {
        match self {
            TransferError::Link(LinkError::Refused(_)) => Action::Hold,
            TransferError::Link(_)
            | TransferError::Broken(_)
            | TransferError::FileFailed { .. } => Action::Retry,
            TransferError::ServiceUnavailable(_) => Action::Retry,
            TransferError::Changed { .. } => Action::Rewait,
            TransferError::Refused { .. } | TransferError::SubmitRefused(_) => Action::Hold,
        }
    }
}

/// The DAG the collector accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The collector's id of this stack version.
    pub remote_id: u64,
    /// False if this exact version had been submitted before.
    pub created: bool,
    /// Jobs in the DAG.
    pub jobs: u32,
}

/// What one attempt achieved, whatever its outcome.
#[derive(Debug)]
pub struct Report {
    /// Files acknowledged in this attempt (newly stored or already there).
    pub acked: Vec<String>,
    /// Files the collector already held.
    pub same: usize,
    /// Payload bytes that crossed the link.
    pub wire_bytes: u64,
    /// Wall time of the attempt.
    pub elapsed: Duration,
    /// The result.
    pub result: Result<Accepted, TransferError>,
}

fn broken(e: ProtocolError) -> TransferError {
    TransferError::Broken(e.to_string())
}

/// Hashes the first `len` bytes of a file, returning the hasher to continue with.
fn hash_prefix(path: &Path, len: u64) -> std::io::Result<(u64, blake3::Hasher)> {
    let f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut std::io::Read::take(f, len), &mut h)?;
    Ok((n, h))
}

struct Session {
    rx: mpsc::UnboundedReceiver<Result<Frame, ProtocolError>>,
    have: HashMap<u64, Have>,
    acked: HashMap<u64, bool>,
    failed: Option<TransferError>,
    names: Vec<String>,
}

impl Session {
    async fn next(&mut self) -> Result<Frame, TransferError> {
        match self.rx.recv().await {
            Some(Ok(f)) => Ok(f),
            Some(Err(e)) => Err(broken(e)),
            None => Err(TransferError::Broken(
                "the collector closed the link".into(),
            )),
        }
    }

    /// Takes one frame about files into account; returns frames that are not about files.
    fn absorb(&mut self, f: Frame) -> Option<Frame> {
        match f {
            Frame::HaveReply { id, have } => {
                self.have.insert(id, have);
            }
            Frame::Ack { id } => {
                self.acked.insert(id, true);
            }
            Frame::Nack { id, code, reason } => {
                let file = self
                    .names
                    .get(id as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("#{id}"));
                self.acked.insert(id, false);
                self.have.entry(id).or_insert(Have::Same);
                let e = if code.is_transient() {
                    TransferError::FileFailed { file, reason }
                } else {
                    TransferError::Refused { file, reason }
                };
                // keep the most serious failure: a refusal outranks a transient one
                if !matches!(self.failed, Some(TransferError::Refused { .. })) {
                    self.failed = Some(e);
                }
            }
            other => return Some(other),
        }
        None
    }
}

/// Sends `job` over a fresh link and submits it.
pub async fn send(cfg: &Config, job: &Job) -> Report {
    let start = Instant::now();
    let mut report = Report {
        acked: Vec::new(),
        same: 0,
        wire_bytes: 0,
        elapsed: Duration::ZERO,
        result: Err(TransferError::Broken(String::new())),
    };
    report.result = run(cfg, job, &mut report).await;
    report.elapsed = start.elapsed();
    report
}

async fn run(cfg: &Config, job: &Job, report: &mut Report) -> Result<Accepted, TransferError> {
    let link = Link::open(cfg).await?;
    let (mut rd, mut wr, guard) = link.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            match read_frame(&mut rd).await {
                Ok(Some(f)) => {
                    if tx.send(Ok(f)).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
    let mut s = Session {
        rx,
        have: HashMap::new(),
        acked: HashMap::new(),
        failed: None,
        names: job.files.iter().map(|f| f.name.clone()).collect(),
    };
    let result = exchange(cfg, job, &mut wr, &mut s, report).await;
    let result = match result {
        Err(TransferError::Broken(m)) => {
            let tail = guard.stderr.text();
            Err(TransferError::Broken(if tail.is_empty() {
                m
            } else {
                format!("{m}; the collector said: {tail}")
            }))
        }
        other => other,
    };
    for (id, ok) in &s.acked {
        if *ok {
            report.acked.push(job.files[*id as usize].name.clone());
        }
    }
    let _ = write_frame(&mut wr, &Frame::Bye).await;
    let _ = wr.flush().await;
    drop(wr);
    guard.finish().await;
    reader.abort();
    result
}

async fn exchange(
    cfg: &Config,
    job: &Job,
    wr: &mut (impl AsyncWriteExt + Unpin),
    s: &mut Session,
    report: &mut Report,
) -> Result<Accepted, TransferError> {
    let chunk = cfg.link.chunk_size.0.clamp(4096, 8 << 20) as usize;
    let path_of = |f: &FileRecord| format!("{}/{}", job.name, f.name);
    for (i, f) in job.files.iter().enumerate() {
        let offer = Frame::Offer {
            id: i as u64,
            path: path_of(f),
            size: f.size,
            hash: f.blake3,
        };
        write_frame(wr, &offer).await.map_err(broken)?;
    }
    wr.flush().await.map_err(|e| broken(e.into()))?;
    let mut sent_ids = Vec::new();
    let mut buf = vec![0u8; chunk];
    for (i, f) in job.files.iter().enumerate() {
        let id = i as u64;
        while !s.have.contains_key(&id) {
            let fr = s.next().await?;
            if let Some(other) = s.absorb(fr) {
                return Err(unexpected(other));
            }
        }
        if s.acked.get(&id) == Some(&false) {
            continue; // refused at offer time
        }
        let path = job.dir.join(&f.name);
        let (start, hasher) = match s.have[&id].clone() {
            Have::Same => {
                s.acked.insert(id, true);
                report.same += 1;
                continue;
            }
            Have::Nothing => (0, blake3::Hasher::new()),
            Have::Prefix { len, hash } => {
                let p = path.clone();
                let mine = tokio::task::spawn_blocking(move || hash_prefix(&p, len))
                    .await
                    .ok()
                    .and_then(Result::ok);
                match mine {
                    Some((n, h)) if n == len && *h.finalize().as_bytes() == hash => (len, h),
                    _ => (0, blake3::Hasher::new()),
                }
            }
        };
        send_file(wr, id, f, &path, start, hasher, &mut buf, report).await?;
        sent_ids.push(id);
        // take in whatever answers are already here, without waiting
        while let Ok(fr) = s.rx.try_recv() {
            let fr = fr.map_err(broken)?;
            if let Some(other) = s.absorb(fr) {
                return Err(unexpected(other));
            }
        }
    }
    wr.flush().await.map_err(|e| broken(e.into()))?;
    while sent_ids.iter().any(|id| !s.acked.contains_key(id)) {
        let fr = s.next().await?;
        if let Some(other) = s.absorb(fr) {
            return Err(unexpected(other));
        }
    }
    if let Some(e) = s.failed.take() {
        return Err(e);
    }
    let files = job
        .files
        .iter()
        .map(|f| FileEntry {
            path: path_of(f),
            size: f.size,
            hash: f.blake3,
        })
        .collect();
    let submit = Frame::Submit {
        stack: job.name.clone(),
        version: job.version,
        workflow: job.workflow.clone(),
        files,
    };
    write_frame(wr, &submit).await.map_err(broken)?;
    wr.flush().await.map_err(|e| broken(e.into()))?;
    loop {
        match s.next().await? {
            Frame::Accepted {
                remote_id,
                created,
                jobs,
                ..
            } => {
                return Ok(Accepted {
                    remote_id,
                    created,
                    jobs,
                })
            }
            Frame::Error {
                code: ErrorCode::ServiceUnavailable,
                message,
            } => return Err(TransferError::ServiceUnavailable(message)),
            Frame::Error {
                code: ErrorCode::SubmitRefused,
                message,
            } => return Err(TransferError::SubmitRefused(message)),
            Frame::Error { message, .. } => return Err(TransferError::Broken(message)),
            other => {
                if let Some(other) = s.absorb(other) {
                    return Err(unexpected(other));
                }
            }
        }
    }
}

fn unexpected(f: Frame) -> TransferError {
    match f {
        Frame::Error { message, .. } => TransferError::Broken(message),
        other => TransferError::Broken(format!("unexpected frame from the collector: {other:?}")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_file(
    wr: &mut (impl AsyncWriteExt + Unpin),
    id: u64,
    f: &FileRecord,
    path: &Path,
    start: u64,
    mut hasher: blake3::Hasher,
    buf: &mut Vec<u8>,
    report: &mut Report,
) -> Result<(), TransferError> {
    let changed = |why: String| TransferError::Changed {
        file: f.name.clone(),
        why,
    };
    let abort = |why: &str| Frame::Abort {
        id,
        reason: why.to_string(),
    };
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) => {
            write_frame(wr, &abort("cannot open"))
                .await
                .map_err(broken)?;
            return Err(changed(format!("cannot open it: {e}")));
        }
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| changed(e.to_string()))?;
    }
    let mut offset = start;
    loop {
        let want = buf.len().min((f.size.saturating_sub(offset)) as usize + 1);
        let n = match file.read(&mut buf[..want.max(1)]).await {
            Ok(n) => n,
            Err(e) => {
                write_frame(wr, &abort("read error"))
                    .await
                    .map_err(broken)?;
                return Err(changed(format!("read failed: {e}")));
            }
        };
        if n == 0 {
            break;
        }
        if offset + n as u64 > f.size {
            write_frame(wr, &abort("file grew")).await.map_err(broken)?;
            return Err(changed(format!(
                "it grew past the {} bytes recorded",
                f.size
            )));
        }
        hasher.update(&buf[..n]);
        let frame = Frame::Data {
            id,
            offset,
            bytes: buf[..n].to_vec(),
        };
        write_frame(wr, &frame).await.map_err(broken)?;
        offset += n as u64;
        report.wire_bytes += n as u64;
    }
    if offset != f.size || *hasher.finalize().as_bytes() != f.blake3 {
        write_frame(wr, &abort("content changed"))
            .await
            .map_err(broken)?;
        return Err(changed(format!(
            "{offset} bytes now, BLAKE3 differs from the one recorded"
        )));
    }
    write_frame(wr, &Frame::Done { id }).await.map_err(broken)?;
    Ok(())
}

use tokio::io::AsyncSeekExt;
