//! `beamflow-collector serve --stdio`: the far end of a link.
//!
//! It answers offers with what the data root already holds, writes incoming bytes to a
//! temporary name beside the destination, checks the BLAKE3 of the result, and only then
//! renames it into place. Durability is batched: finished files wait until the agent pauses
//! (nothing more buffered on stdin), then all of them are fsynced, renamed, their folders
//! fsynced, and only then acknowledged. Thousands of small files therefore share a few
//! fsyncs instead of serialising on the disk, and no file is acknowledged before it is durable.

use crate::api::{Client, SubmitFile, SubmitRequest};
use beamflow_config::Config;
use beamflow_protocol::{
    normalize_rel_path, read_frame_sync, write_frame_sync, ErrorCode, FileEntry, Frame, Hash, Have,
    ProtocolError, MAGIC, VERSION,
};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
    /// The data root is unusable.
    #[error("the data root {path} is not usable: {source}")]
    DataRoot {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Files finished in one batch before they are made durable and acknowledged.
const MAX_PENDING: usize = 512;

/// Written bytes between two writeback kicks.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing a range to disk without waiting (Linux); elsewhere the
/// fsync before the acknowledgement does all the work.
fn start_writeback(f: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                offset as i64,
                len as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len);
}

struct Incoming {
    path: String,
    dest: PathBuf,
    part: PathBuf,
    size: u64,
    hash: Hash,
    file: Option<File>,
    next: u64,
    /// Bytes already handed to the kernel's writeback.
    flushed: u64,
    hasher: blake3::Hasher,
    /// State of the hasher after the partial copy we offered as a prefix, if any.
    prefix: Option<(u64, blake3::Hasher)>,
    /// Where the delta is spooled, when we offered a signature (and the spool, once open).
    delta: Option<(PathBuf, Option<File>)>,
}

struct Finished {
    id: u64,
    path: String,
    hash: Hash,
    file: File,
    part: PathBuf,
    dest: PathBuf,
}

/// One connection's worth of receiving state.
struct Receiver {
    data_root: PathBuf,
    canon_root: PathBuf,
    fsync: bool,
    incoming: HashMap<u64, Incoming>,
    pending: Vec<Finished>,
    /// Files known good in this connection: path → hash. Submissions may only name these.
    verified: HashMap<String, Hash>,
}

/// Extended attribute that remembers a stored file's BLAKE3 with the size and mtime it had,
/// so that "do you have this?" costs a stat, not a read, while the file is untouched.
const HASH_XATTR: &str = "user.beamflow.blake3";

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn remember_hash(path: &Path, hash: &Hash) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(m) = std::fs::metadata(path) else {
        return;
    };
    let value = format!("v1 {} {} {}", m.len(), mtime_ns(&m), hex::encode(hash));
    let (Ok(p), Ok(n)) = (
        std::ffi::CString::new(path.as_os_str().as_bytes()),
        std::ffi::CString::new(HASH_XATTR),
    ) else {
        return;
    };
    // best effort: a filesystem without user xattrs just means hashing again next time
    unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        );
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
    fn new(cfg: &Config) -> Result<Receiver, ServeError> {
        let data_root = cfg.collector.data_root.clone();
        let err = |source| ServeError::DataRoot {
            path: data_root.clone(),
            source,
        };
        std::fs::create_dir_all(&data_root).map_err(err)?;
        let canon_root = data_root.canonicalize().map_err(err)?;
        Ok(Receiver {
            data_root,
            canon_root,
            fsync: cfg.collector.fsync,
            incoming: HashMap::new(),
            pending: Vec::new(),
            verified: HashMap::new(),
        })
    }

    /// Resolves a wire path to a destination that is certainly inside the data root, even if
    /// someone left a symlink in it.
    fn destination(&self, path: &str) -> Result<(String, PathBuf), String> {
        let rel = normalize_rel_path(path)?;
        let dest = self.data_root.join(&rel);
        let parent = dest.parent().ok_or("path has no parent folder")?;
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let canon = parent
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", parent.display()))?;
        if !canon.starts_with(&self.canon_root) {
            return Err(format!(
                "path {rel:?} leads out of the data root through a symlink"
            ));
        }
        if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "{rel:?} is a symlink in the data root; refusing to write through it"
            ));
        }
        Ok((rel, dest))
    }

    fn offer(&mut self, id: u64, path: String, size: u64, hash: Hash) -> Frame {
        let (rel, dest) = match self.destination(&path) {
            Ok(x) => x,
            Err(reason) => {
                tracing::warn!(path = %path, %reason, "offer refused");
                return Frame::Nack {
                    id,
                    code: ErrorCode::PathRefused,
                    reason,
                };
            }
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let part = dest.with_file_name(format!(".{name}.beamflow-part"));
        if let Ok(m) = std::fs::metadata(&dest) {
            if m.is_file() && m.len() == size {
                let known = cached_hash(&dest, &m).or_else(|| {
                    hash_file(&dest, None)
                        .ok()
                        .map(|(_, h)| *h.finalize().as_bytes())
                });
                if let Some(h) = known {
                    if h == hash {
                        self.verified.insert(rel, hash);
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
            if let Some(signature) = crate::delta::signature_for(&dest, size) {
                have = Have::Delta { signature };
                delta = Some((dest.with_file_name(format!(".{name}.beamflow-delta")), None));
            }
        }
        self.incoming.insert(
            id,
            Incoming {
                path: rel,
                dest,
                part,
                size,
                hash,
                file: None,
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
        if let Some((spool, _)) = inc.delta.take() {
            // the agent declined the delta and sends the whole file
            let _ = std::fs::remove_file(spool);
        }
        if inc.file.is_none() {
            // the first data frame says where the agent resumes: 0, or the prefix we offered
            match inc.prefix.take() {
                Some((len, h)) if len == offset => {
                    inc.hasher = h;
                }
                _ if offset == 0 => {}
                _ => {
                    return Err(nack(
                        ErrorCode::Protocol,
                        format!("{}: resume at {offset} was not offered", inc.path),
                    ))
                }
            }
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&inc.part)
                .and_then(|f| f.set_len(offset).map(|_| f))
                .map_err(|e| {
                    nack(
                        ErrorCode::Io,
                        format!("cannot write {}: {e}", inc.part.display()),
                    )
                })?;
            inc.file = Some(f);
            inc.next = offset;
            inc.flushed = offset;
        }
        if offset != inc.next || offset + bytes.len() as u64 > inc.size {
            return Err(nack(
                ErrorCode::Protocol,
                format!(
                    "{}: bytes at {offset}..{} do not follow {} within {}",
                    inc.path,
                    offset + bytes.len() as u64,
                    inc.next,
                    inc.size
                ),
            ));
        }
        let f = inc.file.as_ref().expect("opened above");
        f.write_all_at(bytes, offset).map_err(|e| {
            nack(
                ErrorCode::Io,
                format!("cannot write {}: {e}", inc.part.display()),
            )
        })?;
        inc.hasher.update(bytes);
        inc.next += bytes.len() as u64;
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
        let Some(inc) = self.incoming.get_mut(&id) else {
            return Err(Frame::Error {
                code: ErrorCode::Protocol,
                message: format!("delta for file {id}, which was never offered"),
            });
        };
        let Some((spool, file)) = inc.delta.as_mut() else {
            return Err(Frame::Nack {
                id,
                code: ErrorCode::Protocol,
                reason: format!("{}: a delta was not offered", inc.path),
            });
        };
        if file.is_none() {
            *file = Some(File::create(&*spool).map_err(|e| Frame::Nack {
                id,
                code: ErrorCode::Io,
                reason: format!("cannot spool the delta: {e}"),
            })?);
        }
        file.as_mut()
            .expect("opened above")
            .write_all(bytes)
            .map_err(|e| Frame::Nack {
                id,
                code: ErrorCode::Io,
                reason: format!("cannot spool the delta: {e}"),
            })
    }

    fn done(&mut self, id: u64) -> Option<Frame> {
        if self
            .incoming
            .get(&id)
            .is_some_and(|i| i.delta.as_ref().is_some_and(|(_, f)| f.is_some()))
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
                    return Some(Frame::Nack {
                        id,
                        code: ErrorCode::Io,
                        reason: format!("cannot write {}: {e}", inc.part.display()),
                    })
                }
            }
            inc.next = start;
        }
        let got = *inc.hasher.finalize().as_bytes();
        if inc.next != inc.size || got != inc.hash {
            let _ = std::fs::remove_file(&inc.part);
            let reason = format!(
                "{}: received {} of {} bytes with BLAKE3 {}, offered {}; send it again",
                inc.path,
                inc.next,
                inc.size,
                hex::encode(&got[..8]),
                hex::encode(&inc.hash[..8])
            );
            tracing::warn!(%reason, "verification failed");
            return Some(Frame::Nack {
                id,
                code: ErrorCode::HashMismatch,
                reason,
            });
        }
        self.pending.push(Finished {
            id,
            path: inc.path,
            hash: inc.hash,
            file: inc.file.take().expect("set above"),
            part: inc.part,
            dest: inc.dest,
        });
        None
    }

    fn done_delta(&mut self, id: u64) -> Option<Frame> {
        let inc = self.incoming.remove(&id)?;
        let (spool, file) = inc.delta.expect("checked by the caller");
        drop(file);
        let applied = crate::delta::apply(&inc.dest, &spool, &inc.part, inc.size);
        let _ = std::fs::remove_file(&spool);
        match applied {
            Ok((file, got, n)) if n == inc.size && got == inc.hash => {
                self.pending.push(Finished {
                    id,
                    path: inc.path,
                    hash: inc.hash,
                    file,
                    part: inc.part,
                    dest: inc.dest,
                });
                None
            }
            Ok((_, got, n)) => {
                let _ = std::fs::remove_file(&inc.part);
                let reason = format!(
                    "{}: the delta rebuilt {n} of {} bytes with BLAKE3 {}, offered {}; send it again",
                    inc.path,
                    inc.size,
                    hex::encode(&got[..8]),
                    hex::encode(&inc.hash[..8])
                );
                tracing::warn!(%reason, "verification failed");
                Some(Frame::Nack {
                    id,
                    code: ErrorCode::HashMismatch,
                    reason,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&inc.part);
                Some(Frame::Nack {
                    id,
                    code: ErrorCode::HashMismatch,
                    reason: format!("{}: {e}", inc.path),
                })
            }
        }
    }

    /// Makes every finished file durable and returns the acknowledgements to send.
    fn commit(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut dirs = HashSet::new();
        let mut renamed = Vec::new();
        for f in self.pending.drain(..) {
            let r = (if self.fsync {
                f.file.sync_all()
            } else {
                Ok(())
            })
            .and_then(|_| std::fs::rename(&f.part, &f.dest));
            match r {
                Ok(()) => {
                    if let Some(d) = f.dest.parent() {
                        dirs.insert(d.to_path_buf());
                    }
                    renamed.push(f);
                }
                Err(e) => out.push(Frame::Nack {
                    id: f.id,
                    code: ErrorCode::Io,
                    reason: format!("cannot store {}: {e}", f.path),
                }),
            }
        }
        let mut failed_dirs = HashMap::new();
        if self.fsync {
            for d in dirs {
                if let Err(e) = File::open(&d).and_then(|f| f.sync_all()) {
                    failed_dirs.insert(d, e.to_string());
                }
            }
        }
        for f in renamed {
            match f.dest.parent().and_then(|d| failed_dirs.get(d)) {
                Some(e) => out.push(Frame::Nack {
                    id: f.id,
                    code: ErrorCode::Io,
                    reason: format!("cannot sync folder of {}: {e}", f.path),
                }),
                None => {
                    tracing::debug!(path = %f.path, "stored");
                    remember_hash(&f.dest, &f.hash);
                    self.verified.insert(f.path, f.hash);
                    out.push(Frame::Ack { id: f.id });
                }
            }
        }
        out
    }

    fn abort(&mut self, id: u64, reason: &str) {
        if let Some(inc) = self.incoming.remove(&id) {
            tracing::info!(path = %inc.path, %reason, "transfer abandoned by the agent");
            let _ = std::fs::remove_file(&inc.part);
            if let Some((spool, _)) = inc.delta {
                let _ = std::fs::remove_file(spool);
            }
        }
    }

    fn submit(
        &self,
        cfg: &Config,
        stack: String,
        version: u32,
        workflow: String,
        files: Vec<FileEntry>,
    ) -> Frame {
        let refused = |message: String| Frame::Error {
            code: ErrorCode::SubmitRefused,
            message,
        };
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let rel = match normalize_rel_path(&f.path) {
                Ok(r) => r,
                Err(e) => return refused(e),
            };
            if self.verified.get(&rel) != Some(&f.hash) {
                return refused(format!("{rel} was not received and verified in this session; offer it before submitting"));
            }
            out.push(SubmitFile {
                path: rel,
                size: f.size,
                blake3: hex::encode(f.hash),
            });
        }
        let req = SubmitRequest {
            stack: stack.clone(),
            version,
            workflow,
            files: out,
        };
        match Client::from_state_dir(&cfg.collector.state_dir).and_then(|c| c.submit(&req)) {
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

/// Answers a frame the receiver could not take: a Nack drops that file and the session goes
/// on; an Error (data for a file never offered) ends the session.
fn refuse<W: Write>(
    rx: &mut Receiver,
    wr: &mut W,
    id: u64,
    r: Result<(), Frame>,
) -> Result<(), ServeError> {
    let Err(f) = r else { return Ok(()) };
    if let Frame::Nack { .. } = f {
        rx.incoming.remove(&id);
    }
    let fatal = matches!(f, Frame::Error { .. });
    write_frame_sync(wr, &f)?;
    if fatal {
        wr.flush().map_err(ProtocolError::Io)?;
        return Err(
            ProtocolError::Malformed("data for a file that was never offered".into()).into(),
        );
    }
    Ok(())
}

/// Runs one session over `input`/`output` until the agent says goodbye or goes away.
pub fn serve<R: Read, W: Write>(cfg: &Config, input: R, output: W) -> Result<(), ServeError> {
    let mut rd = BufReader::with_capacity(4 << 20, input);
    let mut wr = BufWriter::with_capacity(1 << 16, output);
    wr.write_all(MAGIC).map_err(ProtocolError::Io)?;
    wr.flush().map_err(ProtocolError::Io)?;
    match read_frame_sync(&mut rd)? {
        Some(Frame::Hello { version, client }) if version == VERSION => {
            tracing::info!(%client, "agent connected");
        }
        Some(Frame::Hello { version, .. }) => {
            let e = ServeError::Version { theirs: version };
            write_frame_sync(
                &mut wr,
                &Frame::Error {
                    code: ErrorCode::Protocol,
                    message: e.to_string(),
                },
            )?;
            wr.flush().map_err(ProtocolError::Io)?;
            return Err(e);
        }
        Some(other) => {
            return Err(ProtocolError::Malformed(format!("expected Hello, got {other:?}")).into())
        }
        None => return Ok(()),
    }
    let mut rx = match Receiver::new(cfg) {
        Ok(r) => r,
        Err(e) => {
            write_frame_sync(
                &mut wr,
                &Frame::Error {
                    code: ErrorCode::Io,
                    message: e.to_string(),
                },
            )?;
            wr.flush().map_err(ProtocolError::Io)?;
            return Err(e);
        }
    };
    let server = format!(
        "beamflow-collector {} data_root={}",
        env!("CARGO_PKG_VERSION"),
        rx.data_root.display()
    );
    write_frame_sync(
        &mut wr,
        &Frame::Welcome {
            version: VERSION,
            server,
        },
    )?;
    wr.flush().map_err(ProtocolError::Io)?;
    loop {
        // the agent paused: a natural batch boundary for durability and for flushing answers
        if rd.buffer().is_empty() || rx.pending.len() >= MAX_PENDING {
            for f in rx.commit() {
                write_frame_sync(&mut wr, &f)?;
            }
            wr.flush().map_err(ProtocolError::Io)?;
        }
        let frame = match read_frame_sync(&mut rd)? {
            Some(f) => f,
            None => {
                tracing::info!("agent closed the link");
                return Ok(());
            }
        };
        match frame {
            Frame::Offer {
                id,
                path,
                size,
                hash,
            } => {
                let reply = rx.offer(id, path, size, hash);
                write_frame_sync(&mut wr, &reply)?;
            }
            Frame::Data { id, offset, bytes } => {
                let r = rx.data(id, offset, &bytes);
                refuse(&mut rx, &mut wr, id, r)?;
            }
            Frame::DataZ {
                id,
                offset,
                raw_len,
                bytes,
            } => {
                let r = rx.data_z(id, offset, raw_len, &bytes);
                refuse(&mut rx, &mut wr, id, r)?;
            }
            Frame::Delta { id, bytes } => {
                let r = rx.delta_bytes(id, &bytes);
                refuse(&mut rx, &mut wr, id, r)?;
            }
            Frame::Done { id } => {
                if let Some(f) = rx.done(id) {
                    write_frame_sync(&mut wr, &f)?;
                }
            }
            Frame::Abort { id, reason } => rx.abort(id, &reason),
            Frame::Submit {
                stack,
                version,
                workflow,
                files,
            } => {
                for f in rx.commit() {
                    write_frame_sync(&mut wr, &f)?;
                }
                let reply = rx.submit(cfg, stack, version, workflow, files);
                write_frame_sync(&mut wr, &reply)?;
            }
            Frame::Bye => {
                for f in rx.commit() {
                    write_frame_sync(&mut wr, &f)?;
                }
                wr.flush().map_err(ProtocolError::Io)?;
                return Ok(());
            }
            other => {
                let message = format!("unexpected frame from the agent: {other:?}");
                write_frame_sync(
                    &mut wr,
                    &Frame::Error {
                        code: ErrorCode::Protocol,
                        message: message.clone(),
                    },
                )?;
                wr.flush().map_err(ProtocolError::Io)?;
                return Err(ProtocolError::Malformed(message).into());
            }
        }
    }
}

#[cfg(test)]
#[path = "receive_tests.rs"]
mod tests;
