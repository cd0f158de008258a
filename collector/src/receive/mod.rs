//! `beamflow-collector serve --stdio`: the far end of a link.
//!
//! It answers offers with what the data root already holds, writes incoming bytes to a
//! temporary name beside the destination, checks the BLAKE3 of the result, and only then
//! renames it into place. Durability happens on a thread of its own (`commit`): finished files
//! are fsynced, renamed and their folders fsynced in rounds while the next bytes arrive, and
//! only then acknowledged. The link never waits for the disk, and no file is acknowledged
//! before it is durable.

use crate::api::{Client, SubmitFile, SubmitRequest};
use beamflow_config::Config;
use beamflow_protocol::{
    normalize_rel_path, read_frame, write_frame, ErrorCode, FileEntry, Frame, Hash, Have,
    ProtocolError, MAGIC, VERSION,
};
use commit::{Committer, Finished, SharedWriter, Verified, HASH_XATTR};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod commit;
mod confine;
pub mod delta;
mod direct;
mod session;
mod snapshot;

use commit::mtime_ns;
use direct::{start_writeback, WRITEBACK_STEP};

use confine::{ConfineError, Folder};

pub use session::serve;

/// Why a `serve` session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The byte stream broke or carried something that is not the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The agent speaks another protocol version.
    #[error("the agent speaks protocol version {theirs}, this collector speaks {VERSION}; install matching versions on both hosts")]
    Version {
        /// The agent's version.
        theirs: u16,
    },
    /// The agent's beamline may not deliver here.
    #[error(transparent)]
    Beamline(#[from] beamflow_config::BeamlineNameError),
    /// The beamline is not among those `[collector] beamlines` lets deliver here.
    #[error(
        "beamline `{beamline}` may not deliver here: [collector] beamlines lists {allowed}; add it \
         there, or set [agent] name on the beamline host to one of them"
    )]
    NotAllowed {
        /// The agent's beamline.
        beamline: String,
        /// The list, joined.
        allowed: String,
    },
    /// The data root is unusable.
    #[error("the data root {path} is not usable: {cause}")]
    DataRoot {
        /// The folder.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

struct Incoming {
    path: String,
    /// The open folder `dest` and `part` resolve through.
    folder: Arc<Folder>,
    dest: PathBuf,
    part: PathBuf,
    size: u64,
    hash: Hash,
    file: Option<File>,
    /// `file` takes direct (O_DIRECT) writes.
    direct: bool,
    next: u64,
    /// Bytes already handed to the kernel's writeback.
    flushed: u64,
    hasher: blake3::Hasher,
    /// State of the hasher after the partial copy we offered as a prefix, if any.
    prefix: Option<(u64, blake3::Hasher)>,
    /// The delta coming in, when we offered a signature.
    delta: Option<delta::DeltaIn>,
}

/// One connection's worth of receiving state.
struct Receiver {
    /// The agent's beamline: everything it sends lands in its folder.
    beamline: String,
    /// The beamline's folder in the data root (for messages).
    data_root: PathBuf,
    /// The beamline's folder, opened: every folder is reached from here.
    root: Folder,
    /// Folders reached so far this session, by their path under the data root.
    folders: HashMap<String, Arc<Folder>>,
    fsync: bool,
    incoming: HashMap<u64, Incoming>,
    /// Write large files around the page cache.
    direct_io: bool,
    /// Aligned buffer for direct writes.
    stage: direct::Stage,
    /// Finished files for the committer.
    pending: Vec<Finished>,
    /// Files refused mid-stream: the agent does not wait for answers, so their remaining
    /// frames are already on the way and are dropped until its Done or Abort.
    refused: std::collections::HashSet<u64>,
    verified: Verified,
    /// What this session received, for the service's metrics.
    stats: crate::api::Received,
    /// What the whole session did, for the line `serve` logs when it ends.
    totals: Totals,
    /// The service's client, kept for the session: a warm link submits stack after stack,
    /// and one TLS handshake serves them all.
    client: std::cell::RefCell<Service>,
}

/// The service's client for a session: made from `server-info` at the first call, kept (a
/// warm link submits stack after stack, and one TLS handshake serves them all), and made anew
/// once when the kept one cannot reach the service: it may have restarted on another port or
/// with another certificate.
pub(crate) struct Service {
    state_dir: PathBuf,
    limit: Option<std::time::Duration>,
    client: Option<Client>,
}

impl Service {
    /// A client of the service whose `server-info` is in `state_dir`; `limit` bounds each
    /// request (the client's default otherwise).
    pub(crate) fn new(state_dir: &Path, limit: Option<std::time::Duration>) -> Service {
        Service {
            state_dir: state_dir.to_path_buf(),
            limit,
            client: None,
        }
    }

    /// Calls the service, once more with a fresh client if the kept one could not reach it.
    pub(crate) fn call<T>(
        &mut self,
        call: impl Fn(&Client) -> Result<T, crate::api::ClientError>,
    ) -> Result<T, crate::api::ClientError> {
        if let Some(c) = self.client.as_ref() {
            match call(c) {
                Err(e) if e.is_transient() => {}
                other => return other,
            }
        }
        let mut c = Client::from_state_dir(&self.state_dir)?;
        if let Some(limit) = self.limit {
            c = c.with_timeout(limit);
        }
        let r = call(&c);
        self.client = Some(c);
        r
    }
}

/// Where one offered file goes.
struct Target {
    /// Its path under the data root.
    rel: String,
    /// Its folder, open.
    folder: Arc<Folder>,
    /// The file, through the open folder.
    dest: PathBuf,
    /// Its temporary name while it arrives.
    part: PathBuf,
    /// Where a delta for it is spooled.
    delta: PathBuf,
}

/// A hidden temporary name beside the destination that fits whatever the destination's
/// length: a name of 250 bytes is legal, one of 266 is not, so the temporary name is a short
/// hash of the real one rather than the real one with more around it.
pub(crate) fn temp_name(name: &str, kind: &str) -> String {
    let h = blake3::hash(name.as_bytes());
    format!(".beamflow-{}.{kind}", hex::encode(&h.as_bytes()[..8]))
}

/// The code for a refusal caused by the filesystem: a fault that a retry may outlive (a
/// read-only remount, a full disk, permissions an admin fixes) asks the agent to retry with
/// backoff; one that no retry can fix (a name this filesystem cannot hold) holds the stack.
pub(crate) fn io_refusal(e: &std::io::Error, reason: String) -> (ErrorCode, String) {
    match e.raw_os_error() {
        Some(libc::ENAMETOOLONG | libc::EILSEQ | libc::EINVAL | libc::ENOTDIR | libc::EISDIR) => (
            ErrorCode::PathRefused,
            format!("{reason}; the collector's filesystem cannot hold this name, rename it at the beamline"),
        ),
        _ => (ErrorCode::Io, reason),
    }
}

fn cached_hash(path: &Path, m: &std::fs::Metadata) -> Option<Hash> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(HASH_XATTR).ok()?;
    let mut buf = [0u8; 128];
    let got = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got <= 0 {
        return None;
    }
    let text = std::str::from_utf8(&buf[..got as usize]).ok()?;
    let mut it = text.split(' ');
    if it.next()? != "v1"
        || it.next()?.parse::<u64>().ok()? != m.len()
        || it.next()?.parse::<i128>().ok()? != mtime_ns(m)
    {
        return None;
    }
    hex::decode(it.next()?).ok()?.try_into().ok()
}

fn hash_file(path: &Path, limit: Option<u64>) -> std::io::Result<(u64, blake3::Hasher)> {
    let f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let n = match limit {
        Some(l) => std::io::copy(&mut f.take(l), &mut h)?,
        None => std::io::copy(&mut BufReader::with_capacity(1 << 20, f), &mut h)?,
    };
    Ok((n, h))
}

impl Incoming {
    /// Opens the partial file at the first data frame, which says where the agent resumes:
    /// 0, or the prefix offered. From the start, whatever an earlier session left goes (a
    /// new file costs no truncation); a resume keeps exactly the verified prefix. A large
    /// file is written around the page cache where the filesystem allows it. True for a
    /// resume.
    fn open(&mut self, id: u64, offset: u64, direct_io: bool) -> Result<bool, Frame> {
        let nack = |code, reason: String| Frame::Nack { id, code, reason };
        let mut resumed = false;
        match self.prefix.take() {
            Some((len, h)) if len == offset => {
                self.hasher = h;
                resumed = len > 0;
            }
            _ if offset == 0 => {}
            _ => {
                return Err(nack(
                    ErrorCode::Protocol,
                    format!("{}: resume at {offset} was not offered", self.path),
                ))
            }
        }
        let direct = (direct_io && self.size >= direct::MIN_DIRECT)
            .then(|| direct::open(&self.part, offset == 0))
            .flatten();
        self.direct = direct.is_some();
        let f = direct
            .map(Ok)
            .unwrap_or_else(|| {
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(offset == 0)
                    .open(&self.part)
            })
            .and_then(|f| {
                if offset > 0 {
                    f.set_len(offset)?;
                }
                Ok(f)
            })
            .map_err(|e| {
                let (code, reason) = io_refusal(&e, format!("cannot write {}: {e}", self.path));
                nack(code, reason)
            })?;
        self.file = Some(f);
        self.next = offset;
        self.flushed = offset;
        Ok(resumed)
    }
}

impl Receiver {
    fn new(cfg: &Config, beamline: &str) -> Result<Receiver, ServeError> {
        beamflow_config::check_beamline(beamline)?;
        let allowed = &cfg.collector.beamlines;
        if !allowed.is_empty() && !allowed.iter().any(|b| b == beamline) {
            return Err(ServeError::NotAllowed {
                beamline: beamline.to_string(),
                allowed: allowed.join(", "),
            });
        }
        let data_root = cfg.collector.data_root.clone();
        let err = |source| ServeError::DataRoot {
            path: data_root.clone(),
            cause: source,
        };
        std::fs::create_dir_all(&data_root).map_err(err)?;
        let top = Folder::root(&data_root).map_err(err)?;
        let root = top.walk(beamline, true).map_err(|e| ServeError::DataRoot {
            path: data_root.join(beamline),
            cause: match e {
                ConfineError::Io { cause, .. } => cause,
                other => std::io::Error::other(other.to_string()),
            },
        })?;
        Ok(Receiver {
            beamline: beamline.to_string(),
            data_root: data_root.join(beamline),
            root,
            folders: HashMap::new(),
            fsync: cfg.collector.fsync,
            incoming: HashMap::new(),
            direct_io: cfg.collector.direct_io,
            stage: direct::Stage::default(),
            pending: Vec::new(),
            refused: std::collections::HashSet::new(),
            verified: Arc::new(Mutex::new(HashMap::new())),
            stats: Default::default(),
            totals: Totals::default(),
            client: std::cell::RefCell::new(Service::new(&cfg.collector.state_dir, None)),
        })
    }

    /// Calls the service with the session's client.
    fn service<T>(
        &self,
        call: impl Fn(&Client) -> Result<T, crate::api::ClientError>,
    ) -> Result<T, crate::api::ClientError> {
        self.client.borrow_mut().call(call)
    }

    /// Resolves a wire path to a destination that is certainly inside the data root, even if
    /// someone left a symlink in it: its folder is walked from the open data root and created
    /// where missing, never through a symlink (see [`confine`]). Nothing is created before
    /// the path is known to stay inside.
    fn destination(&mut self, path: &str) -> Result<Target, (ErrorCode, String)> {
        let rel = normalize_rel_path(path).map_err(|e| (ErrorCode::PathRefused, e.to_string()))?;
        if rel.split('/').any(|c| c.starts_with(".beamflow-")) {
            return Err((
                ErrorCode::PathRefused,
                format!("{rel:?}: names starting with .beamflow- are the collector's own (temporary files, snapshots)"),
            ));
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        let folder = match self.folders.get(parent) {
            Some(f) => f.clone(),
            None => {
                let f = match self.root.walk(parent, true) {
                    Ok(f) => Arc::new(f),
                    Err(e @ (ConfineError::NotAFolder(_) | ConfineError::Dots(_))) => {
                        return Err((ErrorCode::PathRefused, format!("{rel:?}: {e}")))
                    }
                    Err(ConfineError::Io { path, cause }) => {
                        return Err(io_refusal(
                            &cause,
                            format!(
                                "cannot create folder {}: {cause}",
                                self.data_root.join(path).display()
                            ),
                        ))
                    }
                };
                if self.folders.len() > 4096 {
                    self.folders.clear(); // bounded: a session over very many folders
                }
                self.folders.insert(parent.to_string(), f.clone());
                f
            }
        };
        if folder.is_symlink(name) {
            return Err((
                ErrorCode::PathRefused,
                format!("{rel:?} is a symlink in the data root; refusing to write through it"),
            ));
        }
        Ok(Target {
            dest: folder.entry(name),
            part: folder.entry(&temp_name(name, "part")),
            delta: folder.entry(&temp_name(name, "delta")),
            folder,
            rel,
        })
    }

    fn offer(&mut self, id: u64, path: String, size: u64, hash: Hash) -> Frame {
        let Target {
            rel,
            folder,
            dest,
            part,
            delta: delta_tmp,
        } = match self.destination(&path) {
            Ok(x) => x,
            Err((code, reason)) => {
                tracing::warn!(path = %path, %reason, "offer refused");
                return Frame::Nack { id, code, reason };
            }
        };
        if let Ok(m) = std::fs::metadata(&dest) {
            if m.is_file() && m.len() == size {
                let known = cached_hash(&dest, &m).or_else(|| {
                    hash_file(&dest, None)
                        .ok()
                        .map(|(_, h)| *h.finalize().as_bytes())
                });
                if let Some(h) = known {
                    if h == hash {
                        self.known().insert(rel, hash);
                        return Frame::HaveReply {
                            id,
                            have: Have::Same,
                        };
                    }
                }
            }
        }
        let mut have = Have::Nothing;
        let mut prefix = None;
        let mut delta = None;
        if let Ok(m) = std::fs::metadata(&part) {
            if m.is_file() && m.len() > 0 && m.len() <= size {
                if let Ok((n, h)) = hash_file(&part, Some(m.len())) {
                    have = Have::Prefix {
                        len: n,
                        hash: *h.finalize().as_bytes(),
                    };
                    prefix = Some((n, h));
                }
            }
        }
        if have == Have::Nothing && std::fs::metadata(&dest).is_ok_and(|m| m.is_file()) {
            // another version of the file is here: offer its signature for a delta
            let t = std::time::Instant::now();
            let sig = delta::signature_for(&dest, size);
            tracing::debug!(secs = t.elapsed().as_secs_f64(), path = %rel, "signature");
            if let Some(signature) = sig {
                have = Have::Delta { signature };
                delta = Some(delta::DeltaIn::new(
                    delta_tmp,
                    self.direct_io && size >= direct::MIN_DIRECT,
                ));
            }
        }
        self.incoming.insert(
            id,
            Incoming {
                path: rel,
                folder,
                dest,
                part,
                size,
                hash,
                file: None,
                direct: false,
                next: 0,
                flushed: 0,
                hasher: blake3::Hasher::new(),
                prefix,
                delta,
            },
        );
        Frame::HaveReply { id, have }
    }

    fn data(&mut self, id: u64, offset: u64, bytes: &[u8]) -> Result<(), Frame> {
        let inc = self.incoming.get_mut(&id).ok_or_else(|| Frame::Error {
            code: ErrorCode::Protocol,
            message: format!("data for file {id}, which was never offered"),
        })?;
        let nack = |code, reason: String| Frame::Nack { id, code, reason };
        if let Some(d) = inc.delta.take() {
            // the agent declined the delta and sends the whole file
            d.discard();
        }
        if inc.file.is_none() && inc.open(id, offset, self.direct_io)? {
            self.stats.resumes += 1;
        }
        // every number here came off the wire: nothing may wrap
        let end = offset.checked_add(bytes.len() as u64);
        if offset != inc.next || end.is_none_or(|e| e > inc.size) {
            return Err(nack(
                ErrorCode::Protocol,
                format!(
                    "{}: {} bytes at offset {offset} do not follow {} within the file's {} bytes",
                    inc.path,
                    bytes.len(),
                    inc.next,
                    inc.size
                ),
            ));
        }
        let f = inc.file.as_ref().expect("opened above");
        direct::write_at(f, &mut inc.direct, &mut self.stage, bytes, offset).map_err(|e| {
            let (code, reason) = io_refusal(&e, format!("cannot write {}: {e}", inc.path));
            nack(code, reason)
        })?;
        inc.hasher.update(bytes);
        inc.next = end.unwrap_or(inc.next);
        if self.fsync && inc.next - inc.flushed >= WRITEBACK_STEP {
            // start writing back now, so the fsync before the acknowledgement finds little
            // left to do and the disk works while the link does
            start_writeback(f, inc.flushed, inc.next - inc.flushed);
            inc.flushed = inc.next;
        }
        Ok(())
    }

    fn data_z(&mut self, id: u64, offset: u64, raw_len: u32, bytes: &[u8]) -> Result<(), Frame> {
        let nack = |reason: String| Frame::Nack {
            id,
            code: ErrorCode::Protocol,
            reason,
        };
        if raw_len as usize > beamflow_protocol::MAX_FRAME {
            return Err(nack(format!(
                "a compressed chunk claims {raw_len} bytes, more than a frame may hold"
            )));
        }
        let raw = zstd::bulk::decompress(bytes, raw_len as usize)
            .map_err(|e| nack(format!("a compressed chunk does not decompress: {e}")))?;
        if raw.len() != raw_len as usize {
            return Err(nack(format!(
                "a compressed chunk gave {} bytes, not {raw_len}",
                raw.len()
            )));
        }
        self.data(id, offset, &raw)
    }

    fn delta_bytes(&mut self, id: u64, bytes: &[u8]) -> Result<(), Frame> {
        self.with_delta(id, |d, _| d.append(bytes).map_err(delta::DeltaError::Spool))
    }

    /// A part of the delta is complete: apply it now.
    fn delta_cut(&mut self, id: u64) -> Result<(), Frame> {
        self.with_delta(id, |d, inc| d.cut(&inc.dest, &inc.part, inc.size))
    }

    fn with_delta(
        &mut self,
        id: u64,
        op: impl FnOnce(&mut delta::DeltaIn, &Incoming) -> Result<(), delta::DeltaError>,
    ) -> Result<(), Frame> {
        let Some(inc) = self.incoming.get_mut(&id) else {
            return Err(Frame::Error {
                code: ErrorCode::Protocol,
                message: format!("delta for file {id}, which was never offered"),
            });
        };
        let Some(mut d) = inc.delta.take() else {
            return Err(Frame::Nack {
                id,
                code: ErrorCode::Protocol,
                reason: format!("{}: a delta was not offered", inc.path),
            });
        };
        let r = op(&mut d, inc);
        inc.delta = Some(d);
        r.map_err(|e| Frame::Nack {
            id,
            code: ErrorCode::Io,
            reason: format!(
                "{}: {}; send it again",
                inc.path,
                beamflow_program::chain(&e)
            ),
        })
    }

    fn done(&mut self, id: u64) -> Option<Frame> {
        if self
            .incoming
            .get(&id)
            .is_some_and(|i| i.delta.as_ref().is_some_and(|d| d.started()))
        {
            return self.done_delta(id);
        }
        let Some(mut inc) = self.incoming.remove(&id) else {
            return Some(Frame::Error {
                code: ErrorCode::Protocol,
                message: format!("end of file {id}, which was never offered"),
            });
        };
        if inc.file.is_none() {
            // a zero-byte file, or a prefix that already was the whole file
            let start = match inc.prefix.take() {
                Some((len, h)) if len == inc.size => {
                    inc.hasher = h;
                    len
                }
                _ => 0,
            };
            match OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&inc.part)
                .and_then(|f| f.set_len(start).map(|_| f))
            {
                Ok(f) => inc.file = Some(f),
                Err(e) => {
                    let (code, reason) = io_refusal(&e, format!("cannot write {}: {e}", inc.path));
                    let _ = std::fs::remove_file(&inc.part);
                    return Some(Frame::Nack { id, code, reason });
                }
            }
            inc.next = start;
        }
        let got = *inc.hasher.finalize().as_bytes();
        if inc.next != inc.size || got != inc.hash {
            let what = format!("received {} of {} bytes", inc.next, inc.size);
            return Some(self.refuse(id, &inc, &what, &got));
        }
        let file = inc.file.take().expect("set above");
        self.verified(id, inc, file);
        None
    }

    /// A file whose bytes are verified: counted, and queued for the next commit.
    fn verified(&mut self, id: u64, inc: Incoming, file: std::fs::File) {
        self.stats.files += 1;
        self.stats.bytes = self.stats.bytes.saturating_add(inc.size);
        self.pending.push(Finished {
            id,
            path: inc.path,
            hash: inc.hash,
            file,
            part: inc.part,
            dest: inc.dest,
            folder: inc.folder,
        });
    }

    /// A file whose bytes are not what was offered: its part file removed, the refusal that
    /// asks the agent to send it again.
    fn refuse(&mut self, id: u64, inc: &Incoming, what: &str, got: &[u8; 32]) -> Frame {
        let _ = std::fs::remove_file(&inc.part);
        let reason = format!(
            "{}: {what} with BLAKE3 {}, offered {}; send it again",
            inc.path,
            hex::encode(&got[..8]),
            hex::encode(&inc.hash[..8])
        );
        tracing::warn!(%reason, "verification failed");
        self.stats.verify_failures += 1;
        Frame::Nack {
            id,
            code: ErrorCode::HashMismatch,
            reason,
        }
    }

    fn done_delta(&mut self, id: u64) -> Option<Frame> {
        let mut inc = self.incoming.remove(&id)?;
        let d = inc.delta.take().expect("checked by the caller");
        let t = std::time::Instant::now();
        let applied = d.finish(&inc.dest, &inc.part, inc.size);
        tracing::debug!(secs = t.elapsed().as_secs_f64(), path = %inc.path, "delta applied");
        match applied {
            Ok((file, got, n)) if n == inc.size && got == inc.hash => {
                self.stats.resumes += 1;
                self.verified(id, inc, file);
                None
            }
            Ok((_, got, n)) => {
                let what = format!("the delta rebuilt {n} of {} bytes", inc.size);
                Some(self.refuse(id, &inc, &what, &got))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&inc.part);
                self.stats.verify_failures += 1;
                Some(Frame::Nack {
                    id,
                    code: ErrorCode::HashMismatch,
                    reason: format!("{}: {}", inc.path, beamflow_program::chain(&e)),
                })
            }
        }
    }

    fn abort(&mut self, id: u64, reason: &str) {
        if let Some(inc) = self.incoming.remove(&id) {
            tracing::info!(path = %inc.path, %reason, "transfer abandoned by the agent");
            let _ = std::fs::remove_file(&inc.part);
            if let Some(d) = inc.delta {
                d.discard();
            }
        }
    }

    /// The file a frame is about, if that file was refused mid-stream.
    fn already_refused(&self, f: &Frame) -> Option<u64> {
        let id = match f {
            Frame::Data { id, .. }
            | Frame::DataZ { id, .. }
            | Frame::Delta { id, .. }
            | Frame::DeltaCut { id }
            | Frame::Done { id }
            | Frame::Abort { id, .. } => *id,
            _ => return None,
        };
        self.refused.contains(&id).then_some(id)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hash>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes what arrived of a stack whose folder vanished at the beamline before it was
    /// submitted. The service is asked first: a stack it knows (any version) has jobs that
    /// may read these files, so they stay. Each path is reached through the confined walk,
    /// like a write.
    fn discard(&mut self, stack: String, files: Vec<String>) -> Frame {
        let refused = |message: String| Frame::Error {
            code: ErrorCode::SubmitRefused,
            message,
        };
        let stack = match normalize_rel_path(&stack) {
            Ok(s) => s,
            Err(e) => return refused(e.to_string()),
        };
        let known = self.service(|c| c.stacks());
        match known {
            Ok(rows)
                if rows
                    .iter()
                    .any(|r| r.beamline == self.beamline && r.name == stack) =>
            {
                return refused(format!(
                    "stack {stack} has a DAG at the collector; its files stay where they are"
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return Frame::Error {
                    code: ErrorCode::ServiceUnavailable,
                    message: format!("cannot ask the service whether {stack} is in use: {e}"),
                }
            }
        }
        let folder = match self.root.walk(&stack, false) {
            Ok(f) => f,
            Err(ConfineError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
                return Frame::Discarded { stack, removed: 0 }
            }
            Err(e) => return refused(format!("{stack:?}: {e}")),
        };
        let mut removed = 0;
        for f in files {
            let Some(name) = normalize_rel_path(&f)
                .ok()
                .and_then(|r| r.strip_prefix(&format!("{stack}/")).map(str::to_string))
                .filter(|n| !n.contains('/'))
            else {
                return refused(format!("{f:?} is not a file directly inside {stack}"));
            };
            for n in [
                name.clone(),
                temp_name(&name, "part"),
                temp_name(&name, "delta"),
            ] {
                if std::fs::remove_file(folder.entry(&n)).is_ok() && n == name {
                    removed += 1;
                }
            }
            self.known().remove(&format!("{stack}/{name}"));
        }
        // snapshots of attempts that were never registered (the service knows no version)
        snapshot::remove_all(&folder);
        let _ = folder.sync_all();
        self.folders.remove(&stack);
        // the folder itself goes if nothing else is in it
        let (parent, leaf) = stack.rsplit_once('/').unwrap_or(("", stack.as_str()));
        if let Ok(p) = self.root.walk(parent, false) {
            if let Ok(c) = std::ffi::CString::new(leaf) {
                use std::os::fd::AsRawFd;
                unsafe { libc::unlinkat(p.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
            }
        }
        tracing::info!(stack = %stack, removed, "partial copy of a vanished stack removed");
        Frame::Discarded { stack, removed }
    }

    /// A submission's files as the snapshot and the service take them; each must have been
    /// received and verified in this session, directly inside the stack. Else the refusal.
    fn members(
        &self,
        stack: &str,
        files: Vec<FileEntry>,
    ) -> Result<(Vec<SubmitFile>, Vec<snapshot::Member>), Frame> {
        let refused = |message: String| Frame::Error {
            code: ErrorCode::SubmitRefused,
            message,
        };
        let mut out = Vec::with_capacity(files.len());
        let mut members = Vec::with_capacity(files.len());
        for f in files {
            let rel = normalize_rel_path(&f.path).map_err(|e| refused(e.to_string()))?;
            if self.known().get(&rel) != Some(&f.hash) {
                return Err(refused(format!("{rel} was not received and verified in this session; offer it before submitting")));
            }
            let Some(name) = rel
                .strip_prefix(&format!("{stack}/"))
                .filter(|n| !n.contains('/'))
            else {
                return Err(refused(format!(
                    "file {rel} is not directly inside stack {stack}"
                )));
            };
            members.push(snapshot::Member {
                name: name.to_string(),
                size: f.size,
                hash: f.hash,
            });
            out.push(SubmitFile {
                path: rel,
                size: f.size,
                blake3: hex::encode(f.hash),
            });
        }
        Ok((out, members))
    }

    fn submit(
        &self,
        stack: String,
        version: u32,
        workflow: String,
        files: Vec<FileEntry>,
        keep_older: bool,
    ) -> Frame {
        let refused = |message: String| Frame::Error {
            code: ErrorCode::SubmitRefused,
            message,
        };
        let stack = match normalize_rel_path(&stack) {
            Ok(s) => s,
            Err(e) => return refused(e.to_string()),
        };
        let (out, members) = match self.members(&stack, files) {
            Ok(m) => m,
            Err(refusal) => return refusal,
        };
        // the version's own copy, before the service may hand it to a job
        let folder = match self.root.walk(&stack, false) {
            Ok(f) => f,
            Err(e) => return refused(format!("{stack:?}: {e}")),
        };
        let registered = || -> Result<bool, crate::api::ClientError> {
            let rows = self.service(|c| c.stacks())?;
            Ok(rows
                .iter()
                .any(|r| r.beamline == self.beamline && r.name == stack && r.version == version))
        };
        if let Err(e) = snapshot::take(&folder, version, &members, &registered) {
            tracing::warn!(stack = %stack, version, "{e}");
            return match e {
                snapshot::SnapshotError::Io(..) | snapshot::SnapshotError::Service(..) => {
                    Frame::Error {
                        code: ErrorCode::ServiceUnavailable,
                        message: beamflow_program::chain(&e),
                    }
                }
                _ => refused(e.to_string()),
            };
        }
        let req = SubmitRequest {
            beamline: self.beamline.clone(),
            stack: stack.clone(),
            version,
            workflow,
            files: out,
            keep_older,
        };
        match self.service(|c| c.submit(&req)) {
            Ok(r) => Frame::Accepted {
                stack,
                version,
                remote_id: r.remote_id,
                created: r.created,
                jobs: r.jobs,
            },
            Err(e) if e.is_transient() => Frame::Error {
                code: ErrorCode::ServiceUnavailable,
                message: e.to_string(),
            },
            Err(e) => refused(e.to_string()),
        }
    }
}

/// A session's sums, logged when it ends: what arrived, what was already there, what was
/// refused.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub files: u64,
    pub bytes: u64,
    pub resumed: u64,
    pub same: u64,
    pub refused: u64,
}

impl Receiver {
    /// What arrived since the last call (for the service's metrics), counted in the
    /// session's totals too.
    pub(crate) fn take_stats(&mut self) -> crate::api::Received {
        let s = std::mem::take(&mut self.stats);
        self.totals.files += s.files;
        self.totals.bytes = self.totals.bytes.saturating_add(s.bytes);
        self.totals.resumed += s.resumes;
        s
    }

    /// Counts an answer the session sends: "the same file is there", or a refusal.
    pub(crate) fn count_answer(&mut self, f: &Frame) {
        match f {
            Frame::HaveReply {
                have: Have::Same, ..
            } => self.totals.same += 1,
            Frame::Nack { .. } => self.totals.refused += 1,
            _ => {}
        }
    }

    /// The session's sums so far.
    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }
}

#[cfg(test)]
mod tests;
