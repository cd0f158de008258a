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
mod incoming;
mod session;
mod snapshot;
mod stacks;

use commit::mtime_ns;
use direct::{start_writeback, WRITEBACK_STEP};

use confine::{ConfineError, Folder};
use incoming::Incoming;

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
