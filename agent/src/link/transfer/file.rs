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

#[allow(clippy::too_many_arguments)]
pub(super) fn send_file<W: Sink>(
    wr: &mut W,
    id: u64,
    f: &FileRecord,
    path: &Path,
    start: u64,
    buf: &mut [u8],
    report: &mut Report,
    pace: &mut Pace,
    job: &Job,
) -> Result<(), TransferError> {
    let changed = |why: String| TransferError::Changed {
        file: f.name.clone(),
        why,
    };
    let abort = |wr: &mut W, why: &str| -> Result<(), TransferError> {
        write_frame(
            wr,
            &Frame::Abort {
                id,
                reason: why.to_string(),
            },
        )
        .map_err(broken)
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) => {
            abort(wr, "cannot open")?;
            return Err(changed(format!("cannot open it: {e}")));
        }
    };
    // The journal hashed these bytes; the collector checks what arrives against that hash. Here
    // it is enough to see that the file is the one hashed and stays put while it is read: its
    // size and mtime as journaled, and no change of size, mtime, ctime or inode meanwhile
    // (ctime moves on every write and no tool can set it back).
    let before = file
        .metadata()
        .map(|m| Stamp::of(&m))
        .map_err(|e| changed(e.to_string()))?;
    if before.len != f.size || before.mtime != f.mtime_ns {
        abort(wr, "changed since hashed")?;
        return Err(changed("it changed after it was hashed".into()));
    }
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .map_err(|e| changed(e.to_string()))?;
    }
    let mut offset = start;
    // raw bytes go from the page cache to the link's pipe without passing through here
    if let (None, Some(pipe)) = (pace.zstd.as_ref(), wr.pipe()) {
        while offset < f.size {
            let n = (f.size - offset).min(buf.len() as u64) as usize;
            wr.write_all(&data_header(id, offset, n))
                .and_then(|_| wr.flush())
                .map_err(broken_io)?;
            // the header promised n bytes: a file that shrank now leaves a frame that cannot
            // be finished, so the link goes (the collector keeps the verified prefix)
            match splice_exact(&file, offset, pipe, n) {
                Ok(()) => {}
                Err((moved, e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // this filesystem does not splice: the rest of the frame the plain way
                    let rest = &mut buf[..n - moved];
                    file.read_exact_at(rest, offset + moved as u64)
                        .map_err(|e| changed(format!("read failed: {e}; the link is reset")))?;
                    wr.write_all(rest).map_err(broken_io)?;
                }
                Err((_, e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(changed(
                        "it shrank while it was sent; the link is reset".into(),
                    ));
                }
                // the pipe's far side went away: the link broke, not the file
                Err((_, e)) if e.raw_os_error() == Some(libc::EPIPE) => {
                    return Err(broken_io(e));
                }
                Err((_, e)) => {
                    return Err(changed(format!("read failed: {e}; the link is reset")));
                }
            }
            offset += n as u64;
            report.wire_bytes += n as u64;
            Progress::add(job, n as u64, 0);
            pace.sent(n as u64);
        }
    }
    loop {
        if offset >= f.size && offset > start {
            // sent by splice above; a read finds out whether the file grew meanwhile
            if file
                .read_at(&mut buf[..1], offset)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                abort(wr, "file grew")?;
                return Err(changed(format!(
                    "it grew past the {} bytes recorded",
                    f.size
                )));
            }
            break;
        }
        let n = match file.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                abort(wr, "read error")?;
                return Err(changed(format!("read failed: {e}")));
            }
        };
        if n == 0 {
            break;
        }
        if offset + n as u64 > f.size {
            abort(wr, "file grew")?;
            return Err(changed(format!(
                "it grew past the {} bytes recorded",
                f.size
            )));
        }
        // what crosses the link: the compressed size when compression paid
        let wire = match pace.squeeze(&buf[..n]) {
            Some(z) => {
                let len = z.len() as u64;
                let raw_len = n as u32;
                write_frame(
                    wr,
                    &Frame::DataZ {
                        id,
                        offset,
                        raw_len,
                        bytes: z,
                    },
                )
                .map_err(broken)?;
                len
            }
            None => {
                write_data(wr, id, offset, &buf[..n]).map_err(broken)?;
                n as u64
            }
        };
        offset += n as u64;
        report.wire_bytes += wire;
        Progress::add(job, n as u64, 0);
        pace.sent(wire);
    }
    let after = std::fs::metadata(path).map(|m| Stamp::of(&m)).ok();
    if offset != f.size || after != Some(before) {
        abort(wr, "content changed")?;
        return Err(changed(format!(
            "{offset} bytes read, and its size, time or inode moved while it was read"
        )));
    }
    write_frame(wr, &Frame::Done { id }).map_err(broken)?;
    Ok(())
}
