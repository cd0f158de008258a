//! rsync deltas on the collector's side: a signature of the copy it holds, and applying the
//! delta the agent sends against it.
//!
//! Both sides work on memory maps, so a 512 MiB section costs address space, not RAM; the
//! delta itself is spooled to a temporary file as it arrives, and applied part by part. fast_rsync uses MD4 inside, so the
//! result is always checked against the offered BLAKE3 before it counts.

use fast_rsync::{apply_limited, ApplyError, Signature, SignatureOptions};
use std::fs::File;
use std::io::{Seek, Write};
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
    // a copy written around the page cache is read from the disk: ask for all of it at once
    let _ = map.advise(memmap2::Advice::WillNeed);
    let bytes = match signature_of(&map, block_size(len)) {
        Ok(b) => b,
        Err(e) => {
            // no delta is offered: the file comes whole, and the cause is said
            tracing::warn!(path = %path.display(), "{e}");
            return None;
        }
    };
    (bytes.len() <= MAX_SIGNATURE).then_some(bytes)
}

/// Why a delta could not be made or applied; the file then comes whole.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The base copy could not be opened or mapped.
    #[error("cannot {what} the base copy")]
    Base {
        /// "open" or "map".
        what: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file being rebuilt could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The partial file.
        path: std::path::PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The spool of delta bytes failed.
    #[error("cannot spool the delta")]
    Spool(#[source] std::io::Error),
    /// The delta is not one for this base, or would write past the size offered.
    #[error("the delta does not apply")]
    Apply(#[source] ApplyError),
    /// A signature worker thread panicked.
    #[error("a signature worker failed: {0}")]
    Worker(String),
}

/// The serialized signature of `buf`, computed in parts on several threads. Parts are whole
/// blocks, and a signature is a header followed by one entry per block, so the parts'
/// entries laid end to end are the signature of the whole.
fn signature_of(buf: &[u8], block: u32) -> Result<Vec<u8>, DeltaError> {
    const HEADER: usize = 12;
    let options = SignatureOptions {
        block_size: block,
        crypto_hash_size: 8,
    };
    let part = (SIGNATURE_PART / block as usize).max(1) * block as usize;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let parts: Vec<&[u8]> = buf.chunks(part).collect();
    if parts.len() <= 1 || threads == 1 {
        return Ok(Signature::calculate(buf, options).into_serialized());
    }
    let per = parts.len().div_ceil(threads);
    let done: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| -> Result<_, DeltaError> {
        let handles: Vec<_> = parts
            .chunks(per)
            .map(|mine| {
                s.spawn(move || {
                    mine.iter()
                        .map(|p| Signature::calculate(p, options).into_serialized())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().map_err(|p| {
                    DeltaError::Worker(beamflow_program::cores::panic_message(p.as_ref()))
                })
            })
            .collect()
    })?;
    let mut out = Vec::with_capacity(buf.len() / block as usize * 12 + HEADER + 12);
    for (i, sig) in done.into_iter().flatten().enumerate() {
        out.extend_from_slice(if i == 0 { &sig } else { &sig[HEADER..] });
    }
    Ok(out)
}

/// Bytes of the base per signature part: whole blocks of about this many bytes.
const SIGNATURE_PART: usize = 16 << 20;

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
    out: Option<(memmap2::Mmap, HashWriter<super::direct::SeqWriter>)>,
    /// Write the rebuilt file around the page cache.
    direct: bool,
}

impl DeltaIn {
    /// A delta to be spooled at `spool`; the rebuilt file is written directly (O_DIRECT)
    /// when `direct`.
    pub fn new(spool: PathBuf, direct: bool) -> DeltaIn {
        DeltaIn {
            direct,
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
        self.spooled = self.spooled.saturating_add(bytes.len() as u64);
        Ok(())
    }

    /// Applies the part spooled so far to `base`, appending to `part` (at most `size` bytes
    /// in all), and empties the spool for the next part.
    pub fn cut(&mut self, base: &Path, part: &Path, size: u64) -> Result<(), DeltaError> {
        if self.out.is_none() {
            let b = File::open(base).map_err(|source| DeltaError::Base {
                what: "open",
                source,
            })?;
            // SAFETY: the base belongs to the collector's data root, which nobody else is
            // expected to truncate. Populated, so that writing straight from the map never
            // meets a missing page inside the kernel (a short copy that it then redoes).
            let bmap =
                unsafe { memmap2::MmapOptions::new().populate().map(&b) }.map_err(|source| {
                    DeltaError::Base {
                        what: "map",
                        source,
                    }
                })?;
            let out = super::direct::SeqWriter::create(part, self.direct).map_err(|source| {
                DeltaError::Write {
                    path: part.to_path_buf(),
                    source,
                }
            })?;
            let w = HashWriter {
                inner: out,
                hasher: blake3::Hasher::new(),
                n: 0,
            };
            self.out = Some((bmap, w));
        }
        let Some(spool) = self.file.as_mut() else {
            return Ok(()); // an empty part
        };
        spool.flush().map_err(DeltaError::Spool)?;
        let (bmap, w) = self.out.as_mut().expect("set above");
        if self.spooled > 0 {
            // SAFETY: the spool is private to this session
            let dmap = unsafe { memmap2::Mmap::map(&*spool) }.map_err(DeltaError::Spool)?;
            let room = size.saturating_sub(w.n) as usize;
            apply_limited(bmap, &dmap[..self.spooled as usize], w, room)
                .map_err(DeltaError::Apply)?;
            // what this part wrote starts for the disk now, not at the fsync
            w.flush().map_err(write(part))?;
            super::direct::start_writeback(w.inner.file(), self.written, w.n - self.written);
            self.written = w.n;
        }
        spool.set_len(0).map_err(DeltaError::Spool)?;
        spool.rewind().map_err(DeltaError::Spool)?;
        self.spooled = 0;
        Ok(())
    }

    /// Applies what is left and returns the written file, its BLAKE3 and its length.
    pub fn finish(mut self, base: &Path, part: &Path, size: u64) -> Result<Finished, DeltaError> {
        let r = self.cut(base, part, size);
        let _ = std::fs::remove_file(&self.spool);
        r?;
        let (_, mut w) = self.out.take().expect("cut sets it");
        w.flush().map_err(write(part))?;
        let HashWriter { inner, hasher, n } = w;
        let file = inner.finish().map_err(write(part))?;
        Ok((file, *hasher.finalize().as_bytes(), n))
    }

    /// Forgets the delta (the agent sends the file whole after all).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.spool);
    }
}

fn write(part: &Path) -> impl FnOnce(std::io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Write {
        path: part.to_path_buf(),
        source,
    }
}

/// A rebuilt file, its BLAKE3 and its length.
pub type Finished = (File, [u8; 32], u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_in_parts_is_the_signature_of_the_whole() {
        let buf: Vec<u8> = (0..(40u32 << 20) + 777)
            .map(|i| (i * 31 % 255) as u8)
            .collect();
        let block = block_size(buf.len() as u64);
        let whole = Signature::calculate(
            &buf,
            SignatureOptions {
                block_size: block,
                crypto_hash_size: 8,
            },
        )
        .into_serialized();
        assert_eq!(signature_of(&buf, block).unwrap(), whole);
    }

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
            let mut din = DeltaIn::new(d.path().join(format!("{part}.spool")), false);
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
        let mut din = DeltaIn::new(d.path().join("p3.spool"), true);
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
