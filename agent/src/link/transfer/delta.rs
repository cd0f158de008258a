//! A changed file as an rsync delta against the collector's copy, computed in parts on all
//! cores.

use super::file::Stamp;
use super::*;

/// Writes an rsync delta as Delta frames of at most one chunk each, counting and pacing them.
pub(super) struct DeltaFrames<'a, W: Write> {
    pub(super) wr: &'a mut W,
    pub(super) id: u64,
    pub(super) buf: Vec<u8>,
    pub(super) chunk: usize,
    pub(super) report: &'a mut Report,
    pub(super) pace: &'a mut Pace,
}

impl<W: Write> DeltaFrames<'_, W> {
    /// Ends the current part of the delta: the collector applies it now.
    pub(super) fn cut(&mut self) -> std::io::Result<()> {
        self.emit()?;
        write_frame(self.wr, &Frame::DeltaCut { id: self.id }).map_err(std::io::Error::other)
    }

    pub(super) fn emit(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.buf);
        let n = bytes.len() as u64;
        write_frame(self.wr, &Frame::Delta { id: self.id, bytes })
            .map_err(std::io::Error::other)?;
        self.report.wire_bytes += n;
        self.pace.sent(n);
        Ok(())
    }
}

impl<W: Write> Write for DeltaFrames<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.emit()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.emit()
    }
}

/// Sends a file as an rsync delta against the collector's signature of its older copy.
/// Returns false (nothing sent) when the signature cannot be used; the caller then sends
/// the file whole.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_delta<W: Write>(
    wr: &mut W,
    id: u64,
    f: &FileRecord,
    path: &Path,
    signature: Vec<u8>,
    chunk: usize,
    report: &mut Report,
    pace: &mut Pace,
) -> Result<bool, TransferError> {
    // a block size of 0 off the wire would make diff panic: refuse it here
    if signature.len() < 12
        || u32::from_be_bytes([signature[4], signature[5], signature[6], signature[7]]) == 0
    {
        return Ok(false);
    }
    let sig_block = [signature[4], signature[5], signature[6], signature[7]];
    let Ok(sig) = fast_rsync::Signature::deserialize(signature) else {
        return Ok(false);
    };
    let changed = |why: String| TransferError::Changed {
        file: f.name.clone(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|e| changed(format!("cannot open it: {e}")))?;
    let before = file
        .metadata()
        .map(|m| Stamp::of(&m))
        .map_err(|e| changed(e.to_string()))?;
    if before.len != f.size || before.mtime != f.mtime_ns {
        write_frame(
            wr,
            &Frame::Abort {
                id,
                reason: "changed since hashed".into(),
            },
        )
        .map_err(broken)?;
        return Err(changed("it changed after it was hashed".into()));
    }
    // SAFETY: a read-only map of a finished section; that it stays put is checked below (size,
    // times, inode) and the collector checks the rebuilt file against the journal's BLAKE3
    let map =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| changed(format!("cannot map it: {e}")))?;
    let mut out = DeltaFrames {
        wr,
        id,
        buf: Vec::with_capacity(chunk),
        chunk,
        report,
        pace,
    };
    let block = u32::from_be_bytes([sig_block[0], sig_block[1], sig_block[2], sig_block[3]]);
    diff_in_parts(&sig.index(), &map, block as usize, &mut out)
        .map_err(|e| TransferError::Broken(format!("cannot send the delta of {}: {e}", f.name)))?;
    if std::fs::metadata(path).map(|m| Stamp::of(&m)).ok() != Some(before) {
        write_frame(
            wr,
            &Frame::Abort {
                id,
                reason: "content changed".into(),
            },
        )
        .map_err(broken)?;
        return Err(changed(
            "its size, time or inode moved while the delta was computed".into(),
        ));
    }
    write_frame(wr, &Frame::Done { id }).map_err(broken)?;
    Ok(true)
}

/// Bytes of the new file per delta part: whole blocks of about this many bytes.
pub(super) const DELTA_PART: usize = 8 << 20;

/// Computes the delta of `new` part by part on several threads and writes the parts in order,
/// each followed by a cut. Parts start on block boundaries, so a file changed in place loses
/// no match at a cut; at most a few parts wait in memory for their turn.
pub(super) fn diff_in_parts<W: Write>(
    sig: &fast_rsync::IndexedSignature<'_>,
    new: &[u8],
    block: usize,
    out: &mut DeltaFrames<'_, W>,
) -> std::io::Result<()> {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let part = (DELTA_PART / block.max(1)).max(1) * block.max(1);
    let parts: Vec<&[u8]> = new.chunks(part).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
        .min(parts.len().max(1));
    let next = AtomicUsize::new(0);
    // parts written so far: a thread starts part i only when i < written + 2 × threads, which
    // bounds what waits in memory whatever the threads' relative speed
    let written = (std::sync::Mutex::new(0usize), std::sync::Condvar::new());
    let ahead = 2 * threads;
    let (tx, rx) = mpsc::sync_channel::<(usize, std::io::Result<Vec<u8>>)>(threads);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (tx, next, parts, written) = (tx.clone(), &next, &parts, &written);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = parts.get(i) else { return };
                {
                    let (m, cv) = written;
                    let mut w = m.lock().unwrap_or_else(|p| p.into_inner());
                    while i >= *w + ahead {
                        w = cv.wait(w).unwrap_or_else(|p| p.into_inner());
                    }
                }
                let mut d = Vec::new();
                let r = fast_rsync::diff(sig, p, &mut d)
                    .map(|_| d)
                    .map_err(std::io::Error::other);
                // the writer stopped (an error): nothing more to do
                if tx.send((i, r)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let set_written = |n: usize| {
            let (m, cv) = &written;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = n;
            cv.notify_all();
        };
        let mut waiting = BTreeMap::new();
        let mut due = 0;
        let r = (|| {
            for (i, r) in rx.iter() {
                waiting.insert(i, r);
                while let Some(r) = waiting.remove(&due) {
                    out.write_all(&r?)?;
                    out.cut()?;
                    due += 1;
                    set_written(due);
                }
            }
            if due != parts.len() {
                return Err(std::io::Error::other("a delta thread stopped early"));
            }
            Ok(())
        })();
        // on an error, let waiting threads run into the closed channel and end
        set_written(usize::MAX / 2);
        drop(rx);
        r
    })
}
