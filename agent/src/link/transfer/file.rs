//! A file sent whole (or from a verified prefix): spliced from the page cache into the link's
//! pipe, or read and compressed, while its size, times and inode must stay put.

use super::*;

/// What identifies a file's content without reading it: size, mtime, ctime, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) len: u64,
    pub(super) mtime: i64,
    pub(super) ctime: i64,
    pub(super) ino: u64,
    pub(super) dev: u64,
}

impl Stamp {
    pub(super) fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: m.len(),
            // the same nanoseconds the scan journals
            mtime: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            ctime: m
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// Moves exactly `n` bytes of `file` from `offset` into `pipe`; on failure, says how many
/// bytes were moved before it.
pub(super) fn splice_exact(
    file: &std::fs::File,
    offset: u64,
    pipe: std::os::fd::RawFd,
    n: usize,
) -> Result<(), (usize, std::io::Error)> {
    use std::os::fd::AsRawFd;
    let mut off = offset as libc::loff_t;
    let mut left = n;
    while left > 0 {
        let r = unsafe {
            libc::splice(
                file.as_raw_fd(),
                &mut off,
                pipe,
                std::ptr::null_mut(),
                left,
                libc::SPLICE_F_MORE,
            )
        };
        match r {
            0 => return Err((n - left, std::io::ErrorKind::UnexpectedEof.into())),
            r if r > 0 => left -= r as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err((n - left, e));
                }
            }
        }
    }
    Ok(())
}

/// The link's writer: a buffer over a pipe, into which file bytes can also be spliced.
pub(super) trait Sink: Write {
    /// The pipe under the buffer (flush first), if there is one.
    fn pipe(&mut self) -> Option<std::os::fd::RawFd>;
}

impl Sink for std::io::BufWriter<std::process::ChildStdin> {
    fn pipe(&mut self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.get_ref().as_raw_fd())
    }
}

/// One file on its way: the link's writer, the file's id and record, and what the send
/// counts (the report, the pace, the job's progress).
pub(super) struct Outgoing<'a, W: Sink> {
    pub(super) wr: &'a mut W,
    pub(super) id: u64,
    pub(super) f: &'a FileRecord,
    pub(super) buf: &'a mut [u8],
    pub(super) report: &'a mut Report,
    pub(super) pace: &'a mut Pace,
    pub(super) job: &'a Job,
}

impl<W: Sink> Outgoing<'_, W> {
    /// Sends the file at `path` from byte `start` (a verified prefix the collector holds);
    /// the file must be the one hashed, and stay put while it is read.
    pub(super) fn send(mut self, path: &Path, start: u64) -> Result<(), TransferError> {
        let (mut file, before) = self.open(path, start)?;
        let mut offset = start;
        // raw bytes go from the page cache to the link's pipe without passing through here
        if let (None, Some(pipe)) = (self.pace.zstd.as_ref(), self.wr.pipe()) {
            offset = self.splice(&file, pipe, offset)?;
        }
        if offset >= self.f.size && offset > start {
            // sent by splice; a read finds out whether the file grew meanwhile
            if file
                .read_at(&mut self.buf[..1], offset)
                .is_ok_and(|n| n > 0)
            {
                let why = format!("it grew past the {} bytes recorded", self.f.size);
                return Err(self.refuse("file grew", why));
            }
        } else {
            offset = self.stream(&mut file, offset)?;
        }
        let after = std::fs::metadata(path).map(|m| Stamp::of(&m)).ok();
        if offset != self.f.size || after != Some(before) {
            let why =
                format!("{offset} bytes read, and its size, time or inode moved while it was read");
            return Err(self.refuse("content changed", why));
        }
        write_frame(self.wr, &Frame::Done { id: self.id }).map_err(broken)
    }

    fn changed(&self, why: String) -> TransferError {
        TransferError::Changed {
            file: self.f.name.clone(),
            why,
        }
    }

    /// Tells the collector to drop what it holds of the file; the error says why it
    /// changed (or that the link broke on the way).
    fn refuse(&mut self, reason: &str, why: String) -> TransferError {
        let abort = Frame::Abort {
            id: self.id,
            reason: reason.to_string(),
        };
        match write_frame(self.wr, &abort) {
            Ok(()) => self.changed(why),
            Err(e) => broken(e),
        }
    }

    /// The file opened and positioned at `start`, with its stamp. The journal hashed these
    /// bytes; the collector checks what arrives against that hash. Here it is enough to see
    /// that the file is the one hashed and stays put while it is read: its size and mtime as
    /// journaled, and no change of size, mtime, ctime or inode meanwhile (ctime moves on
    /// every write and no tool can set it back).
    fn open(&mut self, path: &Path, start: u64) -> Result<(std::fs::File, Stamp), TransferError> {
        let mut file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) => return Err(self.refuse("cannot open", format!("cannot open it: {e}"))),
        };
        let before = file
            .metadata()
            .map(|m| Stamp::of(&m))
            .map_err(|e| self.changed(e.to_string()))?;
        if before.len != self.f.size || before.mtime != self.f.mtime_ns {
            let why = "it changed after it was hashed".into();
            return Err(self.refuse("changed since hashed", why));
        }
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .map_err(|e| self.changed(e.to_string()))?;
        }
        Ok((file, before))
    }

    /// Splices the rest of the file from `offset` into the link's pipe, a frame at a time;
    /// returns the offset reached.
    fn splice(
        &mut self,
        file: &std::fs::File,
        pipe: std::os::fd::RawFd,
        mut offset: u64,
    ) -> Result<u64, TransferError> {
        let (id, size) = (self.id, self.f.size);
        while offset < size {
            let n = (size - offset).min(self.buf.len() as u64) as usize;
            self.wr
                .write_all(&data_header(id, offset, n))
                .and_then(|_| self.wr.flush())
                .map_err(broken_io)?;
            // the header promised n bytes: a file that shrank now leaves a frame that cannot
            // be finished, so the link goes (the collector keeps the verified prefix)
            match splice_exact(file, offset, pipe, n) {
                Ok(()) => {}
                Err((moved, e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // this filesystem does not splice: the rest of the frame the plain way
                    let rest = &mut self.buf[..n - moved];
                    file.read_exact_at(rest, offset + moved as u64)
                        .map_err(|e| {
                            self.changed(format!("read failed: {e}; the link is reset"))
                        })?;
                    self.wr
                        .write_all(&self.buf[..n - moved])
                        .map_err(broken_io)?;
                }
                Err((_, e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(
                        self.changed("it shrank while it was sent; the link is reset".into())
                    );
                }
                // the pipe's far side went away: the link broke, not the file
                Err((_, e)) if e.raw_os_error() == Some(libc::EPIPE) => {
                    return Err(broken_io(e));
                }
                Err((_, e)) => {
                    return Err(self.changed(format!("read failed: {e}; the link is reset")));
                }
            }
            offset += n as u64;
            self.counted(n as u64, n as u64);
        }
        Ok(offset)
    }

    /// Reads the file from `offset` and sends it in data frames, compressed where that
    /// pays; returns the offset reached.
    fn stream(&mut self, file: &mut std::fs::File, mut offset: u64) -> Result<u64, TransferError> {
        loop {
            let n = match file.read(self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.refuse("read error", format!("read failed: {e}"))),
            };
            if n == 0 {
                return Ok(offset);
            }
            if offset + n as u64 > self.f.size {
                let why = format!("it grew past the {} bytes recorded", self.f.size);
                return Err(self.refuse("file grew", why));
            }
            // what crosses the link: the compressed size when compression paid
            let wire = match self.pace.squeeze(&self.buf[..n]) {
                Some(z) => {
                    let len = z.len() as u64;
                    let frame = Frame::DataZ {
                        id: self.id,
                        offset,
                        raw_len: n as u32,
                        bytes: z,
                    };
                    write_frame(self.wr, &frame).map_err(broken)?;
                    len
                }
                None => {
                    write_data(self.wr, self.id, offset, &self.buf[..n]).map_err(broken)?;
                    n as u64
                }
            };
            offset += n as u64;
            self.counted(n as u64, wire);
        }
    }

    /// `raw` bytes of the file sent as `wire` bytes on the link.
    fn counted(&mut self, raw: u64, wire: u64) {
        self.report.wire_bytes += wire;
        Progress::add(self.job, raw, 0);
        self.pace.sent(wire);
    }
}
