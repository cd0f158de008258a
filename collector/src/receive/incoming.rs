//! A file's bytes as they arrive: written to its partial file (from the verified prefix
//! offered, or whole, or rebuilt from a delta), hashed on the way, and verified against the
//! offer's BLAKE3 before the committer makes it durable and it counts.

use super::*;

pub(super) struct Incoming {
    pub(super) path: String,
    /// The open folder `dest` and `part` resolve through.
    pub(super) folder: Arc<Folder>,
    pub(super) dest: PathBuf,
    pub(super) part: PathBuf,
    pub(super) size: u64,
    pub(super) hash: Hash,
    pub(super) file: Option<File>,
    /// `file` takes direct (O_DIRECT) writes.
    pub(super) direct: bool,
    pub(super) next: u64,
    /// Bytes already handed to the kernel's writeback.
    pub(super) flushed: u64,
    pub(super) hasher: blake3::Hasher,
    /// State of the hasher after the partial copy we offered as a prefix, if any.
    pub(super) prefix: Option<(u64, blake3::Hasher)>,
    /// The delta coming in, when we offered a signature.
    pub(super) delta: Option<delta::DeltaIn>,
}

impl Incoming {
    /// Opens the partial file at the first data frame, which says where the agent resumes:
    /// 0, or the prefix offered. From the start, whatever an earlier session left goes (a
    /// new file costs no truncation); a resume keeps exactly the verified prefix. A large
    /// file is written around the page cache where the filesystem allows it. True for a
    /// resume.
    pub(super) fn open(&mut self, id: u64, offset: u64, direct_io: bool) -> Result<bool, Frame> {
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
    pub(super) fn data(&mut self, id: u64, offset: u64, bytes: &[u8]) -> Result<(), Frame> {
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

    pub(super) fn data_z(
        &mut self,
        id: u64,
        offset: u64,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<(), Frame> {
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

    pub(super) fn delta_bytes(&mut self, id: u64, bytes: &[u8]) -> Result<(), Frame> {
        self.with_delta(id, |d, _| d.append(bytes).map_err(delta::DeltaError::Spool))
    }

    /// A part of the delta is complete: apply it now.
    pub(super) fn delta_cut(&mut self, id: u64) -> Result<(), Frame> {
        self.with_delta(id, |d, inc| d.cut(&inc.dest, &inc.part, inc.size))
    }

    pub(super) fn with_delta(
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

    pub(super) fn done(&mut self, id: u64) -> Option<Frame> {
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
    pub(super) fn verified(&mut self, id: u64, inc: Incoming, file: std::fs::File) {
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
    pub(super) fn refuse(&mut self, id: u64, inc: &Incoming, what: &str, got: &[u8; 32]) -> Frame {
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

    pub(super) fn done_delta(&mut self, id: u64) -> Option<Frame> {
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

    pub(super) fn abort(&mut self, id: u64, reason: &str) {
        if let Some(inc) = self.incoming.remove(&id) {
            tracing::info!(path = %inc.path, %reason, "transfer abandoned by the agent");
            let _ = std::fs::remove_file(&inc.part);
            if let Some(d) = inc.delta {
                d.discard();
            }
        }
    }
}
