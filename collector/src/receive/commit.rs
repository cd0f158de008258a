//! Durability off the receiving thread.
//!
//! A file that arrived whole and verified still has to be fsynced, renamed into place and its
//! folder fsynced before the agent may forget it. Doing that on the thread that reads the link
//! stops the link for as long as the disk takes, and the agent's stream stalls behind it. The
//! committer does it on a thread of its own: finished files queue up while it works, and each
//! round takes all of them at once (group commit), so a burst of small files shares a round
//! and a large file's flush overlaps the next file's bytes. Acknowledgements are written by
//! the committer itself, after the round is on disk.

use beamflow_config::SyncMode;
use beamflow_protocol::{write_frame, ErrorCode, Frame, Hash};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Extended attribute that remembers a stored file's BLAKE3 with the size and mtime it had,
/// so that "do you have this?" costs a stat, not a read, while the file is untouched.
pub(crate) const HASH_XATTR: &str = "user.beamflow.blake3";

/// A received file, verified, waiting to be made durable and put in place.
pub(crate) struct Finished {
    pub id: u64,
    pub path: String,
    pub hash: Hash,
    pub file: File,
    pub part: PathBuf,
    pub dest: PathBuf,
    /// The open folder `part` and `dest` resolve through; it must stay open until both are.
    pub folder: Arc<super::confine::Folder>,
}

/// What the receiving thread asks of the committer.
enum Work {
    File(Finished),
    /// Answer on the sender once everything handed over before it is committed.
    Barrier(mpsc::Sender<()>),
}

/// The writer both threads answer on; frames never interleave inside one another.
pub(crate) type SharedWriter<W> = Arc<Mutex<W>>;

/// Files known good in this session: path → hash. Submissions may only name these.
pub(crate) type Verified = Arc<Mutex<HashMap<String, Hash>>>;

/// The handle the receiving thread keeps.
pub(crate) struct Committer {
    tx: mpsc::Sender<Work>,
    /// Files the agent is still sending (offered, answered with a need, not yet done): a
    /// small round waits for company only while some are on the way.
    coming: Arc<AtomicUsize>,
}

impl Committer {
    /// Starts the committer on `scope`; it ends when the handle is dropped.
    pub fn start<'scope, W: Write + Send + 'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        fsync: bool,
        sync: SyncMode,
        wr: SharedWriter<W>,
        verified: Verified,
    ) -> Committer {
        let (tx, rx) = mpsc::channel();
        let coming = Arc::new(AtomicUsize::new(0));
        let seen = coming.clone();
        std::thread::Builder::new()
            .name("commit".into())
            .spawn_scoped(scope, move || run(&rx, fsync, sync, &wr, &verified, &seen))
            .expect("the committer thread starts");
        Committer { tx, coming }
    }

    /// Says how many files are still on the way. Called before the files finished meanwhile
    /// are pushed, so that the committer, having taken the last of a stack, does not wait for
    /// more that will not come.
    pub fn coming(&self, n: usize) {
        self.coming.store(n, Ordering::Release);
    }

    /// Queues a finished file.
    pub fn push(&self, f: Finished) {
        // the committer only ends when this handle is dropped
        let _ = self.tx.send(Work::File(f));
    }

    /// Waits until every file pushed so far is committed and answered.
    pub fn settle(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Work::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn run<W: Write>(
    rx: &mpsc::Receiver<Work>,
    fsync: bool,
    sync: SyncMode,
    wr: &SharedWriter<W>,
    verified: &Verified,
    coming: &AtomicUsize,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut barriers = Vec::new();
        let take = |w, batch: &mut Vec<Finished>, barriers: &mut Vec<mpsc::Sender<()>>| match w {
            Work::File(f) => batch.push(f),
            Work::Barrier(b) => barriers.push(b),
        };
        take(first, &mut batch, &mut barriers);
        while let Ok(w) = rx.try_recv() {
            take(w, &mut batch, &mut barriers);
        }
        // a round too small for one filesystem sync waits a moment for company: files of a
        // stack arrive back to back, and one sync for many costs less than an fsync each
        // (the agent does not wait for acknowledgements to send the next file); with none
        // on the way (a stack's last files), it goes at once
        if fsync && sync == SyncMode::Batch {
            let until = std::time::Instant::now() + GATHER;
            while batch.len() < BATCH_SYNC_FILES
                && barriers.is_empty()
                && coming.load(Ordering::Acquire) > 0
            {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(w) => take(w, &mut batch, &mut barriers),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let frames = commit(batch, fsync, sync, verified);
            let mut w = wr.lock().unwrap_or_else(|p| p.into_inner());
            let sent = frames
                .iter()
                .try_for_each(|f| write_frame(&mut *w, f).map_err(|_| ()))
                .and_then(|_| w.flush().map_err(|_| ()));
            if sent.is_err() {
                // the agent is gone; the receiving thread sees the end of its input
                tracing::debug!("could not send acknowledgements: the link is closed");
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

/// Makes a round of finished files durable and returns the answers to send.
fn commit(batch: Vec<Finished>, fsync: bool, sync: SyncMode, verified: &Verified) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut dirs = HashMap::new();
    let mut renamed = Vec::new();
    if fsync {
        // start every file's writeback first, so the disk works on all of them at once and
        // each fsync below mostly waits for what is already under way
        for f in &batch {
            super::direct::start_writeback(&f.file, 0, 0);
        }
    }
    // many small files: two filesystem syncs (bytes before renames, then the renames) cost
    // less than an fsync of every file and folder
    let whole = fsync && sync == SyncMode::Batch && batch.len() >= BATCH_SYNC_FILES;
    let mut synced = Ok(());
    if whole {
        for f in &batch {
            remember_hash(&f.file, &f.hash);
        }
        synced = sync_filesystem(&batch[0].file);
    }
    for f in batch {
        if !whole {
            // the hash rides on the inode, made durable by the same fsync
            remember_hash(&f.file, &f.hash);
        }
        let r = (if whole {
            synced.as_ref().map(|_| ()).map_err(clone_err)
        } else if fsync {
            f.file.sync_all()
        } else {
            Ok(())
        })
        .and_then(|_| std::fs::rename(&f.part, &f.dest));
        match r {
            Ok(()) => {
                if let Some(d) = f.dest.parent() {
                    dirs.insert(d.to_path_buf(), f.folder.clone());
                }
                renamed.push(f);
            }
            Err(e) => {
                // nothing of a refused file stays behind; a retry sends it again
                let _ = std::fs::remove_file(&f.part);
                let (code, reason) = super::io_refusal(&e, format!("cannot store {}: {e}", f.path));
                out.push(Frame::Nack {
                    id: f.id,
                    code,
                    reason,
                })
            }
        }
    }
    let failed_dirs = sync_folders(dirs, whole.then(|| renamed.first()).flatten(), fsync);
    let mut known = verified.lock().unwrap_or_else(|p| p.into_inner());
    for f in renamed {
        match f.dest.parent().and_then(|d| failed_dirs.get(d)) {
            Some(e) => out.push(Frame::Nack {
                id: f.id,
                code: ErrorCode::Io,
                reason: format!("cannot sync folder of {}: {e}", f.path),
            }),
            None => {
                tracing::debug!(path = %f.path, "stored");
                known.insert(f.path, f.hash);
                out.push(Frame::Ack { id: f.id });
            }
        }
    }
    out
}

/// Makes the renames durable: one filesystem sync after a whole-filesystem round (through
/// `any` of its files), else each folder's own fsync. The folders that failed, with why.
fn sync_folders(
    dirs: HashMap<PathBuf, Arc<super::confine::Folder>>,
    any: Option<&Finished>,
    fsync: bool,
) -> HashMap<PathBuf, String> {
    let mut failed = HashMap::new();
    if let Some(f) = any {
        if let Err(e) = sync_filesystem(&f.file) {
            for d in dirs.keys() {
                failed.insert(d.clone(), e.to_string());
            }
        }
    } else if fsync {
        for (d, folder) in dirs {
            if let Err(e) = folder.sync_all() {
                failed.insert(d, e.to_string());
            }
        }
    }
    failed
}

/// Rounds of at least this many files are synced filesystem-wide (`sync = "batch"`).
const BATCH_SYNC_FILES: usize = 8;

/// How long a small round waits for more files before it is committed alone.
const GATHER: std::time::Duration = std::time::Duration::from_millis(3);

/// Flushes everything pending on the filesystem that holds `f`, and reports whether it all
/// reached the disk (Linux reports write-back errors to syncfs since 5.8).
fn sync_filesystem(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn clone_err(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

/// The xattr value: the hash is trusted only while size and mtime are what they were.
pub(crate) fn hash_note(len: u64, mtime_ns: i128, hash: &Hash) -> String {
    format!("v1 {len} {mtime_ns} {}", hex::encode(hash))
}

fn remember_hash(file: &File, hash: &Hash) {
    use std::os::fd::AsRawFd;
    let Ok(m) = file.metadata() else {
        return;
    };
    let value = hash_note(m.len(), mtime_ns(&m), hash);
    let Ok(n) = std::ffi::CString::new(HASH_XATTR) else {
        return;
    };
    // best effort: a filesystem without user xattrs just means hashing again next time
    unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        );
    }
}
/// A file's mtime in nanoseconds, as the hash note records it.
pub(crate) fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}
