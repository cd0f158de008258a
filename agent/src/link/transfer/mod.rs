//! Moving one stack version to the collector and asking for its DAG.
//!
//! A stack's files are spread over channels by size; on each, offers for all its files go out
//! at once (no round trip per file) and answers come back on a reader thread while data flows.
//! A file goes whole or from a verified prefix (`file`), or as an rsync delta (`delta`), paced
//! and optionally compressed (`pace`). The agent checks that a file's size, times and inode
//! stay put while it is read; the collector checks the bytes against the BLAKE3 the journal
//! recorded. Nothing counts as sent until the collector acknowledges it verified and durable.

use crate::journal::{After, FileRecord};
use crate::link::{Link, LinkError};
use crate::stack::lifecycle;
use beamflow_config::Config;
use beamflow_protocol::{
    data_header, write_data, write_frame, ErrorCode, FileEntry, Frame, Have, ProtocolError,
};
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod delta;
mod exchange;
mod file;
mod pace;
mod session;

use delta::send_delta;
use exchange::exchange;
use file::{Outgoing, Sink};
use pace::Pace;
use session::Session;

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
    /// Where to count progress, for people watching a `push`.
    pub progress: Option<std::sync::Arc<Progress>>,
    /// Older versions' unstarted jobs keep running (`on_change = "resubmit"`) instead of
    /// being superseded by this one.
    pub keep_older: bool,
    /// The sections so far of a stack still being written ([`Frame::Submit`]'s `partial`).
    pub partial: bool,
}

/// Progress of one stack's transfer, readable from another thread while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of files done or under way (a file already there, or sent as a delta, counts whole).
    pub bytes: std::sync::atomic::AtomicU64,
    /// Files done (acknowledged by the far side or already there).
    pub files: std::sync::atomic::AtomicU64,
    /// Bytes of the whole stack (set before the transfer starts).
    pub total_bytes: std::sync::atomic::AtomicU64,
    /// Files of the whole stack.
    pub total_files: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// Back to nothing done, for a new attempt at the same stack.
    pub fn restart(&self) {
        self.bytes.store(0, std::sync::atomic::Ordering::Relaxed);
        self.files.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn add(job: &Job, bytes: u64, files: u64) {
        if let Some(p) = &job.progress {
            p.bytes
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            p.files
                .fetch_add(files, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

pub use crate::stack::lifecycle::Action;

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
    /// How much a failure weighs when several channels fail at once: a refusal holds the stack,
    /// a change makes it settle again, a glitch only delays it.
    fn severity(&self) -> u8 {
        match self.action() {
            Action::Hold => 2,
            Action::Rewait => 1,
            Action::Retry => 0,
        }
    }

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

impl Report {
    /// Journals what this attempt achieved (the files acknowledged, the bytes) and decides,
    /// by the stack lifecycle's rule, what comes next; the daemon and `push` both record an
    /// attempt here. `wait` is the backoff this attempt would wait before the next.
    pub fn record(
        &self,
        journal: &mut crate::journal::Journal,
        stack: i64,
        wait: Duration,
    ) -> Result<lifecycle::Decision, crate::journal::JournalError> {
        let outcome = match &self.result {
            Ok(acc) => lifecycle::Outcome::Accepted {
                jobs: acc.jobs,
                created: acc.created,
            },
            Err(e) => lifecycle::Outcome::Failed {
                action: e.action(),
                why: e.to_string(),
            },
        };
        journal.record_attempt(
            stack,
            &self.acked,
            self.wire_bytes,
            self.elapsed.as_secs_f64(),
            |all_sent| {
                let decision = lifecycle::after_send(&outcome, all_sent, wait);
                let reason = decision.reason.clone();
                let after = match &self.result {
                    Ok(acc) => After::Submitted {
                        remote_id: acc.remote_id as i64,
                        reason,
                    },
                    Err(_) => After::Moved {
                        state: decision.state,
                        reason,
                    },
                };
                (after, decision)
            },
        )
    }
}

fn broken(e: ProtocolError) -> TransferError {
    TransferError::Broken(e.to_string())
}

fn broken_io(e: std::io::Error) -> TransferError {
    TransferError::Broken(e.to_string())
}

/// Hashes the first `len` bytes of a file, returning the hasher to continue with.
fn hash_prefix(path: &Path, len: u64) -> std::io::Result<(u64, blake3::Hasher)> {
    let f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut f.take(len), &mut h)?;
    Ok((n, h))
}

impl Report {
    fn new() -> Report {
        Report {
            acked: Vec::new(),
            same: 0,
            wire_bytes: 0,
            elapsed: Duration::ZERO,
            result: Err(TransferError::Broken(String::new())),
        }
    }
}

/// How many channels a stack of `files` files moves over.
/// The largest file goes over one channel whatever happens, so channels beyond total ÷ largest
/// cannot shorten the transfer; each costs a far end (a login shell and a collector process).
pub fn channels_for(cfg: &Config, sizes: impl Iterator<Item = u64>) -> usize {
    let (mut n, mut total, mut largest) = (0usize, 0u64, 0u64);
    for s in sizes {
        n += 1;
        total += s;
        largest = largest.max(s);
    }
    let useful = if largest == 0 {
        n
    } else {
        ((total as f64 / largest as f64).round() as usize).max(1)
    };
    (cfg.link.channels as usize)
        .clamp(1, n.max(1))
        .min(useful.max(1))
}

/// Opens `k` links at once, each with its own far end, for a caller with other work to do
/// meanwhile (starting a far end costs a remote login shell). A link that fails to open is
/// left out: `send` opens it again and reports why.
pub fn open_links(cfg: &Config, ctl: Option<&Path>, k: usize) -> Vec<Link> {
    std::thread::scope(|s| {
        let opening: Vec<_> = (0..k).map(|_| s.spawn(|| Link::open(cfg, ctl))).collect();
        opening
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(l)) => Some(l),
                Ok(Err(e)) => {
                    tracing::debug!("opening a link early failed: {e}");
                    None
                }
                Err(_) => None,
            })
            .collect()
    })
}

/// Sends `job` over links (channels of the SSH master at `ctl`, for transport `ssh`) and
/// submits it: `links` already open are used first, the rest are opened here, and all are
/// closed at the end. Blocking: run it on a blocking thread.
pub fn send(cfg: &Config, job: &Job, ctl: Option<&Path>, links: Vec<Link>) -> Report {
    let k = channels_for(cfg, job.files.iter().map(|f| f.size));
    let (report, kept) = send_over(cfg, job, ctl, links, k);
    for l in kept {
        l.close();
    }
    report
}

/// [`send`] over `k` channels that stay open: after a stack the collector accepted, the links
/// come back for the next stack (the daemon's warm link: no far end to start, no handshake).
/// After a failure they are closed, since one may be mid-way through something.
pub fn send_over(
    cfg: &Config,
    job: &Job,
    ctl: Option<&Path>,
    links: Vec<Link>,
    k: usize,
) -> (Report, Vec<Link>) {
    let start = Instant::now();
    let mut report = Report::new();
    let mut kept = Vec::new();
    report.result = run(cfg, job, ctl, links, k.max(1), &mut report, &mut kept);
    report.acked.sort();
    report.acked.dedup();
    report.elapsed = start.elapsed();
    if report.result.is_err() {
        for l in kept.drain(..) {
            l.close();
        }
    }
    (report, kept)
}

/// Sends `job`'s files ahead of their stack's finish on one far end, without submitting: the
/// collector holds them verified and durable, and the finish finds them there ("same").
/// Returns the names acknowledged, and the far end when it is still good.
pub fn send_ahead(
    cfg: &Config,
    job: &Job,
    ctl: Option<&Path>,
    link: Option<Link>,
) -> (Result<Vec<String>, TransferError>, Option<Link>) {
    let mut report = Report::new();
    let ids: Vec<usize> = (0..job.files.len()).collect();
    let (link, r) = channel(cfg, job, ctl, &ids, false, &mut report, link);
    match r {
        Ok(_) => (Ok(report.acked), link),
        Err(e) => {
            if let Some(l) = link {
                l.close();
            }
            (Err(e), None)
        }
    }
}

/// Submits the sections so far of a stack still being written (`job.partial`): each is
/// offered again on this channel (the collector has them, so it says so at once) and the
/// collector plans the work they allow. The far end comes back when all went well.
pub fn submit_partial(
    cfg: &Config,
    job: &Job,
    ctl: Option<&Path>,
    link: Option<Link>,
) -> (Result<Accepted, TransferError>, Option<Link>) {
    let mut report = Report::new();
    let ids: Vec<usize> = (0..job.files.len()).collect();
    let (link, r) = channel(cfg, job, ctl, &ids, true, &mut report, link);
    match r {
        Ok(Some(a)) => (Ok(a), link),
        Ok(None) => (
            Err(TransferError::Broken(
                "the collector did not answer the submission".into(),
            )),
            link,
        ),
        Err(e) => {
            if let Some(l) = link {
                l.close();
            }
            (Err(e), None)
        }
    }
}

/// How asking the collector to drop a vanished stack's partial copy ended.
#[derive(Debug)]
pub enum Discard {
    /// Removed; this many files were there.
    Removed(u32),
    /// The collector keeps the files (the stack has a DAG there): nothing to retry.
    Kept(String),
    /// The link or the service failed: try again later.
    Failed(String),
}

/// Asks the collector to remove what arrived of stack `name` (its `files`, by name in the
/// stack folder) after its folder vanished at the beamline before it was submitted.
pub fn discard(cfg: &Config, ctl: Option<&Path>, name: &str, files: &[String]) -> Discard {
    let mut link = match Link::open(cfg, ctl) {
        Ok(l) => l,
        Err(e) => return Discard::Failed(e.to_string()),
    };
    let frame = Frame::Discard {
        stack: name.to_string(),
        files: files.iter().map(|f| format!("{name}/{f}")).collect(),
    };
    let sent = write_frame(&mut link.writer, &frame)
        .map_err(|e| e.to_string())
        .and_then(|_| link.writer.flush().map_err(|e| e.to_string()));
    if let Err(e) = sent {
        return Discard::Failed(format!("the link to the collector broke: {e}"));
    }
    let answer = match link
        .frames
        .recv_timeout(cfg.link.handshake_timeout.0.max(Duration::from_secs(30)))
    {
        Ok(Ok(Frame::Discarded { removed, .. })) => Discard::Removed(removed),
        Ok(Ok(Frame::Error {
            code: ErrorCode::SubmitRefused,
            message,
        })) => Discard::Kept(message),
        Ok(Ok(Frame::Error { message, .. })) => Discard::Failed(message),
        Ok(Ok(other)) => {
            Discard::Failed(format!("unexpected answer from the collector: {other:?}"))
        }
        Ok(Err(e)) => Discard::Failed(format!("the link to the collector broke: {e}")),
        Err(_) => Discard::Failed("the collector did not answer".into()),
    };
    link.close();
    answer
}

/// Spreads files over `k` groups of about equal bytes (largest first onto the lightest group).
fn groups(files: &[FileRecord], k: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by(|a, b| files[*b].size.cmp(&files[*a].size));
    let mut out = vec![(0u64, Vec::new()); k.max(1)];
    for i in order {
        let g = out
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one group");
        g.0 += files[i].size;
        g.1.push(i);
    }
    out.into_iter()
        .map(|(_, mut v)| {
            v.sort();
            v
        })
        .collect()
}

/// One channel: a link and what was learned on it.
fn channel(
    cfg: &Config,
    job: &Job,
    ctl: Option<&Path>,
    ids: &[usize],
    submit: bool,
    report: &mut Report,
    link: Option<Link>,
) -> (Option<Link>, Result<Option<Accepted>, TransferError>) {
    let mut link = match link {
        Some(l) => l,
        None => match Link::open(cfg, ctl) {
            Ok(l) => l,
            Err(e) => return (None, Err(e.into())),
        },
    };
    let mut s = Session {
        frames: &link.frames,
        have: HashMap::new(),
        acked: HashMap::new(),
        failed: None,
        names: job.files.iter().map(|f| f.name.clone()).collect(),
    };
    let rate = cfg.link.max_rate.0 / cfg.link.channels.max(1) as u64;
    let result = exchange(
        cfg,
        job,
        ids,
        submit,
        rate,
        &mut link.writer,
        &mut s,
        report,
    );
    for (id, ok) in &s.acked {
        if *ok {
            report.acked.push(job.files[*id as usize].name.clone());
        }
    }
    let result = match result {
        Err(TransferError::Broken(m)) => {
            std::thread::sleep(Duration::from_millis(50)); // let the far end's last words arrive
            let tail = link.stderr.text();
            Err(TransferError::Broken(if tail.is_empty() {
                format!("{m}; the far end ended without a word (its log on the collector's host may say more)")
            } else {
                format!("{m}; the collector said: {tail}")
            }))
        }
        other => other,
    };
    (Some(link), result)
}

fn run(
    cfg: &Config,
    job: &Job,
    ctl: Option<&Path>,
    links: Vec<Link>,
    k: usize,
    report: &mut Report,
    kept: &mut Vec<Link>,
) -> Result<Accepted, TransferError> {
    let groups = groups(&job.files, k.min(job.files.len().max(1)));
    let mut links = links.into_iter();
    let link0 = links.next();
    // every channel but the first runs on a thread of its own; the first submits at the end,
    // after offering the others' files once more (the collector answers "same" from a stat)
    let (first, rest) = groups.split_first().expect("at least one group");
    let (link0, r0, outcomes) = std::thread::scope(|scope| {
        let handles: Vec<_> = rest
            .iter()
            .map(|ids| {
                let early = links.next();
                scope.spawn(move || {
                    let mut rep = Report::new();
                    let (link, r) = channel(cfg, job, ctl, ids, false, &mut rep, early);
                    (rep, r, link)
                })
            })
            .collect();
        let (link0, r0) = channel(cfg, job, ctl, first, rest.is_empty(), report, link0);
        let outcomes: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        Report::new(),
                        Err(TransferError::Broken("a transfer thread panicked".into())),
                        None,
                    )
                })
            })
            .collect();
        (link0, r0, outcomes)
    });
    let (accepted, errors) = gather(r0, outcomes, report, kept);
    // a refusal or a change decides what happens to the stack; a broken link only delays it
    if let Some(worst) = errors.into_iter().max_by_key(TransferError::severity) {
        if let Some(l) = link0 {
            l.close();
        }
        return Err(worst);
    }
    let (link, r) = match accepted {
        Some(acc) => (link0, Ok(Some(acc))),
        None => {
            // everything crossed: submit on the first channel
            let others: Vec<usize> = rest.iter().flatten().copied().collect();
            let same_before = report.same;
            let out = channel(cfg, job, ctl, &others, true, report, link0);
            report.same = same_before; // the re-offers are bookkeeping, not files already there
            out
        }
    };
    kept.extend(link);
    r.and_then(|a| a.ok_or_else(|| TransferError::Broken("no answer to the submission".into())))
}

/// The channels' outcomes gathered: their reports added to `report`, the far ends of those
/// that went well kept (the others closed), the first channel's acceptance if it submitted,
/// and every error.
#[allow(clippy::type_complexity)]
fn gather(
    r0: Result<Option<Accepted>, TransferError>,
    outcomes: Vec<(
        Report,
        Result<Option<Accepted>, TransferError>,
        Option<Link>,
    )>,
    report: &mut Report,
    kept: &mut Vec<Link>,
) -> (Option<Accepted>, Vec<TransferError>) {
    let mut errors = Vec::new();
    let mut accepted = None;
    match r0 {
        Ok(a) => accepted = a,
        Err(e) => errors.push(e),
    }
    for (rep, r, link) in outcomes {
        report.same += rep.same;
        report.wire_bytes += rep.wire_bytes;
        report.acked.extend(rep.acked);
        match r {
            Err(e) => {
                errors.push(e);
                if let Some(l) = link {
                    l.close();
                }
            }
            Ok(_) => kept.extend(link),
        }
    }
    (accepted, errors)
}

fn unexpected(f: Frame) -> TransferError {
    match f {
        Frame::Error { message, .. } => TransferError::Broken(message),
        other => TransferError::Broken(format!("unexpected frame from the collector: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, size: u64) -> FileRecord {
        FileRecord {
            name: name.into(),
            size,
            mtime_ns: 0,
            blake3: [0; 32],
            sent: false,
        }
    }

    #[test]
    fn no_more_channels_than_can_help() {
        let cfg = Config::parse("[link]\nchannels = 4\n", std::path::Path::new("t")).unwrap();
        let k = |sizes: &[u64]| channels_for(&cfg, sizes.iter().copied());
        assert_eq!(k(&[100; 10]), 4, "ten equal files use every channel");
        assert_eq!(k(&[100, 100]), 2, "two files, two channels");
        assert_eq!(
            k(&[512 << 20, 64 << 10]),
            1,
            "one large file and a small one: one"
        );
        assert_eq!(k(&[300, 100, 100, 100]), 2, "the largest is half: two");
        assert_eq!(k(&[0, 0, 0]), 3, "empty files spread like any");
        assert_eq!(k(&[]), 1);
    }

    #[test]
    fn files_are_spread_by_bytes() {
        let files = vec![
            rec("a", 100),
            rec("b", 10),
            rec("c", 60),
            rec("d", 50),
            rec("e", 1),
        ];
        let g = groups(&files, 2);
        assert_eq!(g.len(), 2);
        let bytes: Vec<u64> = g
            .iter()
            .map(|ids| ids.iter().map(|&i| files[i].size).sum())
            .collect();
        assert!(
            bytes.iter().max().unwrap() - bytes.iter().min().unwrap() <= 20,
            "{g:?} {bytes:?}"
        );
        let mut all: Vec<usize> = g.concat();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3, 4]);
        assert_eq!(groups(&files, 1), vec![vec![0, 1, 2, 3, 4]]);
    }

    #[test]
    fn failures_map_to_the_policy() {
        assert_eq!(TransferError::Broken("x".into()).action(), Action::Retry);
        assert_eq!(
            TransferError::ServiceUnavailable("x".into()).action(),
            Action::Retry
        );
        assert_eq!(
            TransferError::Changed {
                file: "f".into(),
                why: "w".into()
            }
            .action(),
            Action::Rewait
        );
        assert_eq!(
            TransferError::Refused {
                file: "f".into(),
                reason: "r".into()
            }
            .action(),
            Action::Hold
        );
        assert_eq!(
            TransferError::SubmitRefused("x".into()).action(),
            Action::Hold
        );
    }
}
