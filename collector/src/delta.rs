//! rsync deltas on the collector's side: a signature of the copy it holds, and applying the
//! delta the agent sends against it.
//!
//! Both sides work on memory maps, so a 512 MiB section costs address space, not RAM; the
//! delta itself is spooled to a temporary file as it arrives, and applied part by part. fast_rsync uses MD4 inside, so the
//! result is always checked against the offered BLAKE3 before it counts.

use fast_rsync::{apply_limited, Signature, SignatureOptions};
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

/// Files smaller than this go whole: a delta would not pay for its round trip.
pub const MIN_DELTA_FILE: u64 = 64 << 10;

/// Largest signature sent (it travels in one frame).
const MAX_SIGNATURE: usize = 8 << 20;

/// Block size as rsync chooses it: about the square root of the file, within bounds.
pub fn block_size(len: u64) -> u32 {
    let root = (len as f64).sqrt() as u64;
    (root.div_ceil(1024) * 1024).clamp(2048, 128 << 10) as u32
}

/// The signature of the file at `path`, if a delta against it is worth offering.
pub fn signature_for(path: &Path, offered: u64) -> Option<Vec<u8>> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len < MIN_DELTA_FILE || offered < MIN_DELTA_FILE {
        return None;
    }
    // SAFETY: the collector owns the data root; nobody else is expected to truncate it while
    // this read-only map lives (a few hundred milliseconds)
    let map = unsafe { memmap2::Mmap::map(&f) }.ok()?;
    let sig = Signature::calculate(
        &map,
        SignatureOptions {
            block_size: block_size(len),
            crypto_hash_size: 8,
        },
    );
    let bytes = sig.into_serialized();
    (bytes.len() <= MAX_SIGNATURE).then_some(bytes)
}

struct HashWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file being rebuilt from an rsync delta against the copy already here. The delta arrives
/// in parts (each a whole delta for the next stretch of the file): each part is spooled to a
/// temporary file as it arrives and applied when the agent cuts it, so memory holds neither
/// the delta nor the file.
pub struct DeltaIn {
    spool: PathBuf,
    file: Option<File>,
    spooled: u64,
    /// Output bytes already handed to the kernel's writeback.
    written: u64,
    out: Option<(memmap2::Mmap, HashWriter<BufWriter<File>>)>,
}

impl DeltaIn {
    /// A delta to be spooled at `spool`.
    pub fn new(spool: PathBuf) -> DeltaIn {
        DeltaIn {
            spool,
            file: None,
            spooled: 0,
            written: 0,
            out: None,
        }
    }

    /// True once any part of the delta has arrived: the file comes as a delta, not whole.
    pub fn started(&self) -> bool {
        self.file.is_some() || self.out.is_some()
    }

    /// Spools the next bytes of the current part.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            // read as well: each part is mapped to be applied
            self.file = Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&self.spool)?,
            );
        }
        self.file.as_mut().expect("opened above").write_all(bytes)?;
        self.spooled += bytes.len() as u64;
        Ok(())
    }

    /// Applies the part spooled so far to `base`, appending to `part` (at most `size` bytes
    /// in all), and empties the spool for the next part.
    pub fn cut(&mut self, base: &Path, part: &Path, size: u64) -> Result<(), String> {
        if self.out.is_none() {
            let b = File::open(base).map_err(|e| format!("cannot open the base copy: {e}"))?;
            // SAFETY: the base belongs to the collector's data root, which nobody else is
            // expected to truncate. Populated, so that writing straight from the map never
            // meets a missing page inside the kernel (a short copy that it then redoes).
            let bmap = unsafe { memmap2::MmapOptions::new().populate().map(&b) }
                .map_err(|e| format!("cannot map the base copy: {e}"))?;
            let out =
                File::create(part).map_err(|e| format!("cannot write {}: {e}", part.display()))?;
            let w = HashWriter {
                inner: BufWriter::with_capacity(1 << 20, out),
                hasher: blake3::Hasher::new(),
                n: 0,
            };
            self.out = Some((bmap, w));
        }
        let Some(spool) = self.file.as_mut() else {
            return Ok(()); // an empty part
        };
        spool.flush().map_err(|e| e.to_string())?;
        let (bmap, w) = self.out.as_mut().expect("set above");
        if self.spooled > 0 {
            // SAFETY: the spool is private to this session
            let dmap = unsafe { memmap2::Mmap::map(&*spool) }.map_err(|e| e.to_string())?;
            let room = size.saturating_sub(w.n) as usize;
            apply_limited(bmap, &dmap[..self.spooled as usize], w, room)
                .map_err(|e| format!("the delta does not apply: {e}"))?;
            // what this part wrote starts for the disk now, not at the fsync
            w.flush().map_err(|e| e.to_string())?;
            crate::receive::start_writeback(w.inner.get_ref(), self.written, w.n - self.written);
            self.written = w.n;
        }
        spool.set_len(0).map_err(|e| e.to_string())?;
        spool.rewind().map_err(|e| e.to_string())?;
        self.spooled = 0;
        Ok(())
    }

    /// Applies what is left and returns the written file, its BLAKE3 and its length.
    pub fn finish(mut self, base: &Path, part: &Path, size: u64) -> Result<Finished, String> {
        let r = self.cut(base, part, size);
        let _ = std::fs::remove_file(&self.spool);
        r?;
        let (_, mut w) = self.out.take().expect("cut sets it");
        w.flush().map_err(|e| e.to_string())?;
        let HashWriter { inner, hasher, n } = w;
        let file = inner.into_inner().map_err(|e| e.to_string())?;
        Ok((file, *hasher.finalize().as_bytes(), n))
    }

    /// Forgets the delta (the agent sends the file whole after all).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.spool);
    }
}

/// A rebuilt file, its BLAKE3 and its length.
pub type Finished = (File, [u8; 32], u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_rebuilds_the_new_file_from_the_old() {
        let d = tempfile::tempdir().unwrap();
        let old: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[150_000..150_100].fill(9);
        std::fs::write(d.path().join("old"), &old).unwrap();
        let sig =
            Signature::deserialize(signature_for(&d.path().join("old"), new.len() as u64).unwrap())
                .unwrap();
        let mut delta = Vec::new();
        fast_rsync::diff(&sig.index(), &new, &mut delta).unwrap();
        assert!(
            delta.len() < 20_000,
            "delta of {} bytes for a 100-byte change",
            delta.len()
        );
        let apply = |delta: &[u8], part: &str, size: u64| {
            let mut din = DeltaIn::new(d.path().join(format!("{part}.spool")));
            din.append(delta).unwrap();
            din.finish(&d.path().join("old"), &d.path().join(part), size)
        };
        let (_, hash, n) = apply(&delta, "part", new.len() as u64).unwrap();
        assert_eq!(n, new.len() as u64);
        assert_eq!(hash, *blake3::hash(&new).as_bytes());
        assert_eq!(std::fs::read(d.path().join("part")).unwrap(), new);
        // a limit below the result is refused, not a memory bomb
        assert!(apply(&delta, "p2", 1000).is_err());
        assert!(
            signature_for(&d.path().join("part"), 10).is_none(),
            "small files go whole"
        );
        // the same file in three parts, each a delta of its own stretch, cut between them
        let sig = sig.index();
        let mut din = DeltaIn::new(d.path().join("p3.spool"));
        for stretch in new.chunks(120_000) {
            let mut part = Vec::new();
            fast_rsync::diff(&sig, stretch, &mut part).unwrap();
            // a part may arrive in several frames
            let (a, b) = part.split_at(part.len() / 2);
            din.append(a).unwrap();
            din.append(b).unwrap();
            din.cut(
                &d.path().join("old"),
                &d.path().join("p3"),
                new.len() as u64,
            )
            .unwrap();
        }
        let (_, hash, n) = din
            .finish(
                &d.path().join("old"),
                &d.path().join("p3"),
                new.len() as u64,
            )
            .unwrap();
        assert_eq!(
            (n, hash),
            (new.len() as u64, *blake3::hash(&new).as_bytes())
        );
        assert!(!d.path().join("p3.spool").exists(), "the spool is removed");
    }
}
