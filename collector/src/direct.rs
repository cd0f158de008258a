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

/// Opens (creating, not truncating) `path` for direct writes; None where the filesystem
/// does not take them.
pub fn open(path: &Path) -> Option<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
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

/// Turns O_DIRECT off for an open file.
fn buffered(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_pieces_go_direct_and_a_tail_goes_through_the_cache() {
        // not on /tmp: it may be a tmpfs, which refuses O_DIRECT
        let d = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let p = d.path().join("f");
        let Some(f) = open(&p) else {
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
}
