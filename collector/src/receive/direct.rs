//! Writing large received files around the page cache (O_DIRECT).
//!
//! A received section is written once and not read again on this host soon (jobs read it on
//! compute nodes). Through the page cache each byte costs a copy into freshly allocated cache
//! pages and, before the acknowledgement, a writeback that the fsync waits for. Written
//! directly, the bytes go from one reused, aligned buffer to the disk and are there when the
//! write returns, so the fsync is left with metadata. A filesystem that refuses O_DIRECT,
//! or a piece that is not aligned (a file's tail), is written through the cache instead.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Offsets, lengths and buffer addresses of direct writes are multiples of this.
const ALIGN: usize = 4096;

/// Files at least this large are written directly.
pub const MIN_DIRECT: u64 = 8 << 20;

/// A reusable buffer whose start is aligned for direct writes.
#[derive(Default)]
pub struct Stage {
    buf: Vec<u8>,
}

impl Stage {
    /// `bytes` copied to an aligned address.
    fn aligned(&mut self, bytes: &[u8]) -> &[u8] {
        if self.buf.len() < bytes.len() + ALIGN {
            self.buf = vec![0u8; bytes.len() + ALIGN];
        }
        let start = self.buf.as_ptr().align_offset(ALIGN);
        let out = &mut self.buf[start..start + bytes.len()];
        out.copy_from_slice(bytes);
        out
    }
}

/// Opens (creating, truncating when `truncate`) `path` for direct writes; None where the
/// filesystem does not take them.
pub fn open(path: &Path, truncate: bool) -> Option<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(truncate)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Writes `bytes` at `offset`: directly while `direct` holds and the piece is aligned,
/// otherwise through the cache (and then for the rest of the file).
pub fn write_at(
    file: &File,
    direct: &mut bool,
    stage: &mut Stage,
    bytes: &[u8],
    offset: u64,
) -> std::io::Result<()> {
    if *direct && offset.is_multiple_of(ALIGN as u64) && bytes.len().is_multiple_of(ALIGN) {
        match file.write_all_at(stage.aligned(bytes), offset) {
            Ok(()) => return Ok(()),
            // the device wants another alignment, or the filesystem changed its mind
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    if *direct {
        buffered(file)?;
        *direct = false;
    }
    file.write_all_at(bytes, offset)
}

/// A sequential writer for a file being rebuilt: whole aligned pieces go directly, the rest
/// waits for [`SeqWriter::finish`].
pub struct SeqWriter {
    file: File,
    direct: bool,
    stage: Stage,
    pending: Vec<u8>,
    offset: u64,
}

/// Bytes gathered before a direct write.
const PIECE: usize = 1 << 20;

impl SeqWriter {
    /// Creates (truncating) `path`, for direct writes when `direct` and the filesystem agree.
    pub fn create(path: &Path, direct: bool) -> std::io::Result<SeqWriter> {
        let (file, direct) = match direct.then(|| open(path, true)).flatten() {
            Some(f) => (f, true),
            None => (File::create(path)?, false),
        };
        Ok(SeqWriter {
            file,
            direct,
            stage: Stage::default(),
            pending: Vec::with_capacity(PIECE),
            offset: 0,
        })
    }

    /// The file, for kicking writeback of what went through the cache.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn write_pieces(&mut self) -> std::io::Result<()> {
        let whole = self.pending.len() / ALIGN * ALIGN;
        if whole == 0 {
            return Ok(());
        }
        write_at(
            &self.file,
            &mut self.direct,
            &mut self.stage,
            &self.pending[..whole],
            self.offset,
        )?;
        self.offset += whole as u64;
        self.pending.drain(..whole);
        Ok(())
    }

    /// Writes what is left and returns the file.
    pub fn finish(mut self) -> std::io::Result<File> {
        self.write_pieces()?;
        if !self.pending.is_empty() {
            write_at(
                &self.file,
                &mut self.direct,
                &mut self.stage,
                &self.pending,
                self.offset,
            )?;
        }
        Ok(self.file)
    }
}

impl std::io::Write for SeqWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(PIECE - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() >= PIECE {
            self.write_pieces()?;
        }
        Ok(n)
    }

    /// Writes the whole aligned pieces; an unaligned rest stays for `finish`.
    fn flush(&mut self) -> std::io::Result<()> {
        self.write_pieces()
    }
}

/// Turns O_DIRECT off for an open file.
fn buffered(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Written bytes between two writeback kicks.
pub(crate) const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing a range to disk without waiting (Linux); elsewhere the
/// fsync before the acknowledgement does all the work.
pub(crate) fn start_writeback(f: &File, offset: u64, len: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_pieces_go_direct_and_a_tail_goes_through_the_cache() {
        // not on /tmp: it may be a tmpfs, which refuses O_DIRECT
        let d = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let p = d.path().join("f");
        let Some(f) = open(&p, true) else {
            panic!("{} does not take O_DIRECT", d.path().display());
        };
        let mut direct = true;
        let mut stage = Stage::default();
        let a: Vec<u8> = (0..2 * ALIGN).map(|i| (i % 251) as u8).collect();
        write_at(&f, &mut direct, &mut stage, &a, 0).unwrap();
        assert!(direct, "an aligned piece is written directly");
        write_at(&f, &mut direct, &mut stage, b"tail", a.len() as u64).unwrap();
        assert!(!direct, "a tail turns direct writes off");
        f.sync_all().unwrap();
        let mut want = a.clone();
        want.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(&p).unwrap(), want);
    }

    #[test]
    fn a_sequential_writer_keeps_every_byte_in_order() {
        use std::io::Write;
        let d = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let want: Vec<u8> = (0..3 * PIECE + 12_345).map(|i| (i % 253) as u8).collect();
        for direct in [true, false] {
            let p = d.path().join(format!("f{direct}"));
            let mut w = SeqWriter::create(&p, direct).unwrap();
            // odd-sized writes, and flushes that leave an unaligned rest behind
            for (i, piece) in want.chunks(70_001).enumerate() {
                w.write_all(piece).unwrap();
                if i % 3 == 0 {
                    w.flush().unwrap();
                }
            }
            w.finish().unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), want, "direct {direct}");
        }
    }
}
