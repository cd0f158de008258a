//! Synthetic microscope sections: 16-bit grayscale TIFFs with smooth structure plus noise.
//!
//! The demo, the tests and the benchmarks need realistic images without shipping any: random
//! bytes would flatter nobody's compression and blank frames would look like failures. Every
//! section shows the same specimen (smooth waves and a few blobs), shifted by a few pixels
//! that follow from its seed ([`shift_of`]), as consecutive sections of a real stack would:
//! AlignTK can align them, and a test knows the shifts it should find. Files
//! are streamed row by row, pixel data first and the directory last, the way detectors write
//! them, so a copy cut short anywhere is visibly truncated.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// The shape of one synthetic section.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Varies the texture between sections (and so their bytes).
    pub seed: u64,
    /// BigTIFF instead of classic TIFF.
    pub big: bool,
    /// Rows per strip (strips are what the structural check verifies).
    pub rows_per_strip: u32,
}

impl Section {
    /// A classic TIFF of about `bytes` bytes (square, 16-bit).
    pub fn of_size(bytes: u64, seed: u64) -> Section {
        let side = ((bytes / 2) as f64).sqrt().max(8.0) as u32;
        Section {
            width: side,
            height: side,
            seed,
            big: false,
            rows_per_strip: 64,
        }
    }
    /// Bytes of pixel data.
    pub fn pixel_bytes(&self) -> u64 {
        self.width as u64 * self.height as u64 * 2
    }
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The shift (x, y) in pixels of the specimen in the section with this seed.
pub fn shift_of(seed: u64) -> (f32, f32) {
    (
        (seed.wrapping_mul(7) % 9) as f32 - 4.0,
        (seed.wrapping_mul(3) % 7) as f32 - 3.0,
    )
}

/// Smooth noise fixed to the specimen: a hashed value per lattice point every `cell`
/// pixels, interpolated between them. It gives the sections texture to align on.
fn value_noise(fx: f32, fy: f32, cell: f32) -> f32 {
    let hash = |ix: i64, iy: i64| {
        let mut v = (ix as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (iy as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        v ^= v >> 29;
        v = v.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        v ^= v >> 32;
        (v % 2001) as f32 / 1000.0 - 1.0
    };
    let (gx, gy) = (fx / cell, fy / cell);
    let (ix, iy) = (gx.floor() as i64, gy.floor() as i64);
    let (tx, ty) = (gx - gx.floor(), gy - gy.floor());
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let top = hash(ix, iy) + (hash(ix + 1, iy) - hash(ix, iy)) * sx;
    let bottom = hash(ix, iy + 1) + (hash(ix + 1, iy + 1) - hash(ix, iy + 1)) * sx;
    top + (bottom - top) * sy
}

/// Height of the specimen's grain: one pixel in four (even column of an even row, in the
/// specimen's own coordinates) is this much brighter, the rest a third of it darker.
///
/// Why it is there: find_rst pads the section it rotates with its mean and whitens the cross
/// spectrum by dividing by its magnitude, with no floor. Smooth specimens carry almost nothing
/// at the highest frequencies (half the sampling rate along a row, a column, or both), so
/// what float rounding leaves there is sometimes exactly 0, and 0/0 turns the whole
/// correlation into `nan`: about one pair in fifteen of the first sixteen sections at 512².
/// Real sections have shot noise and fine detail there; the grain gives the synthetic one
/// the same, far above the rounding, so every pair is one find_rst can match.
/// `tests/tests/specimen.rs` runs the real find_rst over many seeds, sizes and windows.
const GRAIN: f32 = 1600.0;

/// The grain at an integer point of the specimen (mean 0 over every 2×2 cell).
fn grain(fx: f32, fy: f32) -> f32 {
    let even = |v: f32| (v.round() as i64).rem_euclid(2) == 0;
    if even(fx) && even(fy) {
        GRAIN * 0.75
    } else {
        -GRAIN * 0.25
    }
}

/// The specimen at a point: smooth waves, a gradient, three blobs as landmarks and texture.
fn specimen(fx: f32, fy: f32, w: f32, h: f32) -> f32 {
    let blob = |cx: f32, cy: f32, amp: f32| {
        let (dx, dy) = ((fx - cx * w) / (0.08 * w), (fy - cy * h) / (0.08 * h));
        amp * (-(dx * dx + dy * dy) / 2.0).exp()
    };
    12000.0
        + 5000.0 * ((fx / 37.0).sin() * (fy / 53.0).cos())
        + 3000.0 * ((fx + fy) / 211.0).sin()
        + 2000.0 * (fx / w)
        + blob(0.3, 0.4, 9000.0)
        + blob(0.7, 0.25, -7000.0)
        + blob(0.55, 0.75, 8000.0)
        + 5000.0 * value_noise(fx, fy, 9.0)
        + 2500.0 * value_noise(fx + 1000.0, fy + 1000.0, 4.0)
        + grain(fx, fy)
}

/// Writes one 16-bit section to `path` (created or truncated), as most detectors do.
pub fn write_tiff(path: &Path, s: &Section) -> std::io::Result<()> {
    write_tiff_bits(path, s, 16)
}

/// Writes one 8-bit section (the only depth AlignTK reads) with the same texture.
pub fn write_tiff8(path: &Path, s: &Section) -> std::io::Result<()> {
    write_tiff_bits(path, s, 8)
}

fn write_tiff_bits(path: &Path, s: &Section, bits: u16) -> std::io::Result<()> {
    let bps = (bits / 8) as u64;
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let (w32, h32) = (s.width.max(1), s.height.max(1));
    let rps = s.rows_per_strip.clamp(1, h32);
    let strips = h32.div_ceil(rps) as u64;
    let row_bytes = w32 as u64 * bps;
    let header = if s.big { 16u64 } else { 8 };
    let data_end = header + row_bytes * h32 as u64;
    let ifd_at = data_end + (data_end & 1);
    // header
    if s.big {
        w.write_all(b"II\x2b\0\x08\0\0\0")?;
        w.write_all(&ifd_at.to_le_bytes())?;
    } else {
        w.write_all(b"II*\0")?;
        w.write_all(&(ifd_at as u32).to_le_bytes())?;
    }
    // pixels: smooth structure (two waves and slow gradients) plus per-pixel noise
    let mut rng = XorShift(s.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (sx, sy) = shift_of(s.seed);
    let mut row = vec![0u8; row_bytes as usize];
    for y in 0..h32 {
        let fy = y as f32 - sy;
        for x in 0..w32 {
            let fx = x as f32 - sx;
            let structure = specimen(fx, fy, w32 as f32, h32 as f32);
            let noise = (rng.next() % 1024) as f32 - 512.0;
            let v = (structure + noise).clamp(0.0, 65535.0) as u16;
            if bps == 2 {
                row[x as usize * 2..x as usize * 2 + 2].copy_from_slice(&v.to_le_bytes());
            } else {
                row[x as usize] = (v >> 7).min(255) as u8;
            }
        }
        w.write_all(&row)?;
    }
    if data_end & 1 == 1 {
        w.write_all(&[0])?;
    }
    // directory
    let word: u64 = if s.big { 8 } else { 4 };
    let entry: u64 = if s.big { 20 } else { 12 };
    let n_entries = 9u64;
    let count_size = if s.big { 8 } else { 2 };
    let arrays_at = ifd_at + count_size + n_entries * entry + word;
    let (long_type, long_size) = if s.big { (16u16, 8u64) } else { (4u16, 4u64) };
    let offsets_at = arrays_at;
    let counts_at = arrays_at + strips * long_size;
    let put_word = |w: &mut BufWriter<File>, v: u64| -> std::io::Result<()> {
        if s.big {
            w.write_all(&v.to_le_bytes())
        } else {
            w.write_all(&(v as u32).to_le_bytes())
        }
    };
    if s.big {
        w.write_all(&n_entries.to_le_bytes())?;
    } else {
        w.write_all(&(n_entries as u16).to_le_bytes())?;
    }
    let ent = |w: &mut BufWriter<File>,
               tag: u16,
               typ: u16,
               count: u64,
               value: u64,
               inline_short: bool|
     -> std::io::Result<()> {
        w.write_all(&tag.to_le_bytes())?;
        w.write_all(&typ.to_le_bytes())?;
        put_word(w, count)?;
        if inline_short {
            let mut v = (value as u16).to_le_bytes().to_vec();
            v.resize(word as usize, 0);
            w.write_all(&v)
        } else {
            put_word(w, value)
        }
    };
    let one_strip = strips == 1;
    ent(&mut w, 256, 4, 1, w32 as u64, false)?;
    ent(&mut w, 257, 4, 1, h32 as u64, false)?;
    ent(&mut w, 258, 3, 1, bits as u64, true)?;
    ent(&mut w, 259, 3, 1, 1, true)?;
    ent(&mut w, 262, 3, 1, 1, true)?;
    ent(
        &mut w,
        273,
        long_type,
        strips,
        if one_strip { header } else { offsets_at },
        false,
    )?;
    ent(&mut w, 277, 3, 1, 1, true)?;
    ent(&mut w, 278, 4, 1, rps as u64, false)?;
    ent(
        &mut w,
        279,
        long_type,
        strips,
        if one_strip {
            row_bytes * h32 as u64
        } else {
            counts_at
        },
        false,
    )?;
    put_word(&mut w, 0)?;
    if !one_strip {
        for i in 0..strips {
            put_word(&mut w, header + i * rps as u64 * row_bytes)?;
        }
        for i in 0..strips {
            let rows = (h32 as u64 - i * rps as u64).min(rps as u64);
            put_word(&mut w, rows * row_bytes)?;
        }
    }
    w.flush()?;
    Ok(())
}
