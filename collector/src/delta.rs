//! rsync deltas on the collector's side: a signature of the copy it holds, and applying the
//! delta the agent sends against it.
//!
//! Both sides work on memory maps, so a 512 MiB section costs address space, not RAM; the
//! delta itself is spooled to a temporary file as it arrives. fast_rsync uses MD4 inside, so the
//! result is always checked against the offered BLAKE3 before it counts.

use fast_rsync::{apply_limited, Signature, SignatureOptions};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

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

/// Applies the delta spooled at `delta` to `base`, writing `part` (at most `size` bytes).
/// Returns the written file, its BLAKE3 and its length.
pub fn apply(
    base: &Path,
    delta: &Path,
    part: &Path,
    size: u64,
) -> Result<(File, [u8; 32], u64), String> {
    let b = File::open(base).map_err(|e| format!("cannot open the base copy: {e}"))?;
    let d = File::open(delta).map_err(|e| format!("cannot open the spooled delta: {e}"))?;
    // SAFETY: both files are private to this session (the delta) or owned by the collector
    let bmap = unsafe { memmap2::Mmap::map(&b) }.map_err(|e| e.to_string())?;
    let dmap = unsafe { memmap2::Mmap::map(&d) }.map_err(|e| e.to_string())?;
    let out = File::create(part).map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    let mut w = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, out),
        hasher: blake3::Hasher::new(),
        n: 0,
    };
    apply_limited(&bmap, &dmap, &mut w, size as usize)
        .map_err(|e| format!("the delta does not apply: {e}"))?;
    w.flush().map_err(|e| e.to_string())?;
    let HashWriter { inner, hasher, n } = w;
    let file = inner.into_inner().map_err(|e| e.to_string())?;
    Ok((file, *hasher.finalize().as_bytes(), n))
}

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
        std::fs::write(d.path().join("delta"), &delta).unwrap();
        let (_, hash, n) = apply(
            &d.path().join("old"),
            &d.path().join("delta"),
            &d.path().join("part"),
            new.len() as u64,
        )
        .unwrap();
        assert_eq!(n, new.len() as u64);
        assert_eq!(hash, *blake3::hash(&new).as_bytes());
        assert_eq!(std::fs::read(d.path().join("part")).unwrap(), new);
        // a limit below the result is refused, not a memory bomb
        assert!(apply(
            &d.path().join("old"),
            &d.path().join("delta"),
            &d.path().join("p2"),
            1000
        )
        .is_err());
        assert!(
            signature_for(&d.path().join("delta"), 10).is_none(),
            "small files go whole"
        );
    }
}
