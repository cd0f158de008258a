//! 8-bit copies of deeper sections, for AlignTK, which reads 8-bit grayscale only.
//!
//! Most detectors write 16-bit (or 32-bit float) sections. Each section's own range would
//! make neighbours look different, so one window is chosen for the whole stack (by default
//! the 0.1st to 99.9th percentile of all its pixels) and every section is mapped through it
//! to 0..255. Sections are read and written strip by strip, so memory stays near a few
//! strips per core whatever their size, and they are worked on all cores. The received
//! originals are never touched: copies go into the work folder.

use super::open::{open, SectionError};
use beamflow_config::To8Bit;
use std::path::{Path, PathBuf};
use tiff::decoder::{ChunkType, DecodingResult};
use tiff::ColorType;

/// What preparation did about bit depth, for `qa` and for people: `conversion.json`.
pub const CONVERSION_FILE: &str = "conversion.json";

/// The record of a conversion: the window and each section's depth as received.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conversion {
    /// The window as configured (`to_8bit`).
    pub how: String,
    /// The sample values mapped to 0 and 255.
    pub window: (f64, f64),
    /// AlignTK name → depth as received (`8-bit`, `16-bit`, `32-bit float`).
    pub received: std::collections::BTreeMap<String, String>,
}

/// The window a work folder's sections were converted through, if they were.
pub fn recorded_window(work_dir: &Path) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(work_dir.join(CONVERSION_FILE)).ok()?;
    let c: Conversion = serde_json::from_str(&text).ok()?;
    // an all-8-bit stack records the identity window: nothing was chosen
    (!c.received.values().all(|d| d == "8-bit")).then_some(c.window)
}

/// A section's samples, as far as conversion cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Depth {
    /// 8-bit grayscale: linked as it is.
    Gray8,
    /// 16-bit unsigned grayscale.
    Gray16,
    /// 32-bit float grayscale.
    GrayF32,
}

/// Bins of the stack-wide histogram (16-bit samples map one to one).
const BINS: usize = 65536;

/// What a section holds; layouts AlignTK cannot use (colour, several samples per pixel)
/// are left to `qa`, which refuses them by name.
pub fn depth(path: &Path) -> Result<Option<Depth>, SectionError> {
    let mut d = open(path)?;
    let ct = d
        .colortype()
        .map_err(SectionError::tiff("no colour type"))?;
    let float = matches!(
        d.find_tag(tiff::tags::Tag::SampleFormat),
        Ok(Some(v)) if v.clone().into_u16().ok() == Some(3)
    );
    Ok(match ct {
        ColorType::Gray(8) => Some(Depth::Gray8),
        ColorType::Gray(16) => Some(Depth::Gray16),
        ColorType::Gray(32) if float => Some(Depth::GrayF32),
        _ => None,
    })
}

/// Calls `each` with every strip's samples as f32.
fn strips(
    path: &Path,
    mut each: impl FnMut(&[f32]) -> Result<(), SectionError>,
) -> Result<(), SectionError> {
    let mut d = open(path)?;
    if d.get_chunk_type() != ChunkType::Strip {
        return Err(SectionError::Tiled);
    }
    let n = d
        .strip_count()
        .map_err(SectionError::tiff("no strip count"))?;
    let mut buf: Vec<f32> = Vec::new();
    for c in 0..n {
        buf.clear();
        match d
            .read_chunk(c)
            .map_err(|source| SectionError::Strip { strip: c, source })?
        {
            DecodingResult::U8(v) => buf.extend(v.iter().map(|&x| x as f32)),
            DecodingResult::U16(v) => buf.extend(v.iter().map(|&x| x as f32)),
            DecodingResult::F32(v) => buf.extend(v.iter().copied()),
            _ => return Err(SectionError::SampleFormat),
        }
        each(&buf)?;
    }
    Ok(())
}

/// Runs `work` over `items` on all cores, keeping their order; a worker that panics is an
/// error with its message, never a share of the results lost in silence.
fn on_all_cores<T: Sync, R: Send>(
    items: &[T],
    work: impl Fn(&T) -> R + Sync,
) -> Result<Vec<R>, SectionError> {
    Ok(beamflow_program::cores::on_all_cores(items, true, work)?)
}

/// The window `[lo, hi]` for a whole stack.
pub fn window(sections: &[PathBuf], how: To8Bit) -> Result<(f64, f64), SectionError> {
    let range = || -> Result<(f64, f64), SectionError> {
        let found = on_all_cores(sections, |p| {
            let (mut lo, mut hi) = (f64::MAX, f64::MIN);
            strips(p, |s| {
                for &v in s.iter().filter(|v| v.is_finite()) {
                    lo = lo.min(v as f64);
                    hi = hi.max(v as f64);
                }
                Ok(())
            })
            .map(|()| (lo, hi))
            .map_err(|e| e.of(p))
        })?;
        let mut out = (f64::MAX, f64::MIN);
        for r in found {
            let (lo, hi) = r?;
            out = (out.0.min(lo), out.1.max(hi));
        }
        Ok(out)
    };
    match how {
        To8Bit::Fixed(lo, hi) => Ok((lo, hi)),
        To8Bit::Off => Err(SectionError::NoWindow),
        To8Bit::MinMax => range(),
        To8Bit::Percentile(plo, phi) => {
            let (min, max) = range()?;
            let span = (max - min).max(f64::MIN_POSITIVE);
            let bin = |v: f32| (((v as f64 - min) / span) * (BINS - 1) as f64).round() as usize;
            let hists = on_all_cores(sections, |p| {
                let mut h = vec![0u64; BINS];
                strips(p, |s| {
                    for &v in s.iter().filter(|v| v.is_finite()) {
                        h[bin(v).min(BINS - 1)] += 1;
                    }
                    Ok(())
                })
                .map(|()| h)
                .map_err(|e| e.of(p))
            })?;
            let mut total = vec![0u64; BINS];
            for h in hists {
                for (t, x) in total.iter_mut().zip(h?) {
                    *t += x;
                }
            }
            let n: u64 = total.iter().sum();
            let at = |pct: f64| {
                let want = (n as f64 * pct / 100.0).ceil() as u64;
                let mut seen = 0u64;
                for (i, c) in total.iter().enumerate() {
                    seen += c;
                    if seen >= want.max(1) {
                        return min + span * i as f64 / (BINS - 1) as f64;
                    }
                }
                max
            };
            Ok((at(plo), at(phi)))
        }
    }
}

/// Writes an 8-bit copy of `src` to `dst` through the window, strip by strip.
pub fn convert(src: &Path, dst: &Path, (lo, hi): (f64, f64)) -> Result<(), SectionError> {
    let mut d = open(src)?;
    let (w, h) = d
        .dimensions()
        .map_err(SectionError::tiff("no dimensions"))?;
    let rps = d
        .find_tag_unsigned::<u32>(tiff::tags::Tag::RowsPerStrip)
        .ok()
        .flatten()
        .unwrap_or(h)
        .clamp(1, h.max(1));
    drop(d);
    let tmp = dst.with_extension("tif.tmp");
    let f = std::fs::File::create(&tmp).map_err(|source| SectionError::Write {
        path: tmp.clone(),
        source,
    })?;
    let cannot = SectionError::tiff;
    let mut enc = tiff::encoder::TiffEncoder::new(std::io::BufWriter::new(f))
        .map_err(cannot("cannot start the 8-bit copy"))?;
    let mut img = enc
        .new_image::<tiff::encoder::colortype::Gray8>(w, h)
        .map_err(cannot("cannot start the 8-bit copy"))?;
    img.rows_per_strip(rps)
        .map_err(cannot("cannot set the 8-bit copy's strips"))?;
    let scale = 255.0 / (hi - lo).max(f64::MIN_POSITIVE);
    let mut out: Vec<u8> = Vec::new();
    strips(src, |s| {
        out.clear();
        out.extend(s.iter().map(|&v| {
            if v.is_finite() {
                ((v as f64 - lo) * scale).round().clamp(0.0, 255.0) as u8
            } else {
                0
            }
        }));
        img.write_strip(&out)
            .map_err(cannot("cannot write a strip of the 8-bit copy"))
    })?;
    img.finish()
        .map_err(cannot("cannot finish the 8-bit copy"))?;
    std::fs::rename(&tmp, dst).map_err(|source| SectionError::Write {
        path: dst.to_path_buf(),
        source,
    })
}

/// Converts many sections on all cores: (source, destination) pairs.
pub fn convert_all(pairs: &[(PathBuf, PathBuf)], window: (f64, f64)) -> Result<(), SectionError> {
    for r in on_all_cores(pairs, |(s, d)| convert(s, d, window).map_err(|e| e.of(s)))? {
        r?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiff::decoder::Decoder;

    #[test]
    fn a_worker_that_panics_is_an_error_with_its_message() {
        let items: Vec<u32> = (0..64).collect();
        let got = on_all_cores(&items, |&i| {
            assert!(i != 40, "section {i} broke the worker");
            i * 2
        });
        let e = got.unwrap_err().to_string();
        assert!(e.contains("section 40 broke the worker"), "{e}");
        assert_eq!(on_all_cores(&items, |&i| i).unwrap(), items);
    }

    fn write16(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u16) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = tiff::encoder::TiffEncoder::new(file).unwrap();
        let px: Vec<u16> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        let mut img = enc
            .new_image::<tiff::encoder::colortype::Gray16>(w, h)
            .unwrap();
        img.rows_per_strip(4).unwrap();
        let mut i = 0;
        while img.next_strip_sample_count() > 0 {
            let n = img.next_strip_sample_count() as usize;
            img.write_strip(&px[i..i + n]).unwrap();
            i += n;
        }
        img.finish().unwrap();
    }

    #[test]
    fn one_window_for_the_stack_keeps_sections_comparable() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.tif"), d.path().join("b.tif"));
        // b is a's brighter twin: with one window it stays brighter in 8 bits
        write16(&a, 16, 16, |x, y| 1000 + (x * 100 + y * 10) as u16);
        write16(&b, 16, 16, |x, y| 2000 + (x * 100 + y * 10) as u16);
        assert_eq!(depth(&a).unwrap(), Some(Depth::Gray16));
        let stack = [a.clone(), b.clone()];
        let (lo, hi) = window(&stack, To8Bit::MinMax).unwrap();
        assert_eq!((lo, hi), (1000.0, 2000.0 + 1500.0 + 150.0));
        let (plo, phi) = window(&stack, To8Bit::Percentile(0.1, 99.9)).unwrap();
        assert!(plo >= lo && phi <= hi && plo < phi, "{plo} {phi}");
        let pairs = vec![
            (a.clone(), d.path().join("a8.tif")),
            (b.clone(), d.path().join("b8.tif")),
        ];
        convert_all(&pairs, (lo, hi)).unwrap();
        let read = |p: &Path| -> Vec<u8> {
            let mut dec = Decoder::new(std::fs::File::open(p).unwrap()).unwrap();
            assert_eq!(dec.colortype().unwrap(), ColorType::Gray(8));
            match dec.read_image().unwrap() {
                DecodingResult::U8(v) => v,
                other => panic!("{other:?}"),
            }
        };
        let (a8, b8) = (
            read(&d.path().join("a8.tif")),
            read(&d.path().join("b8.tif")),
        );
        assert_eq!(a8[0], 0);
        assert_eq!(*b8.last().unwrap(), 255);
        assert!(a8.iter().zip(&b8).all(|(x, y)| x < y));
        assert_eq!(depth(&d.path().join("a8.tif")).unwrap(), Some(Depth::Gray8));
        // fixed windows clamp
        convert(&a, &d.path().join("f.tif"), (1500.0, 1600.0)).unwrap();
        let f = read(&d.path().join("f.tif"));
        assert_eq!((f[0], *f.last().unwrap()), (0, 255));
    }
}
