//! `beamflow-collector qa DIR`: the built-in first step of every AlignTK workflow.
//!
//! Every section must be readable, share the first one's width, height and bit depth, and be
//! neither blank (one value everywhere) nor saturated (half or more of its pixels at the
//! largest value). AlignTK would run for hours on such a stack and exit 0; this refuses it
//! before any allocation is spent, naming every bad section. Pixels are read strip by strip,
//! so memory stays near one strip whatever the image size.

use super::open::{open, SectionError};
use serde::Serialize;
use std::path::Path;
use tiff::decoder::{ChunkType, DecodingResult};
use tiff::ColorType;

/// Where the `qa` step writes its report, in the work folder.
pub const QA_FILE: &str = "qa.json";

/// Below this share of its full range, a section's standard deviation leaves AlignTK nothing
/// to match (1 % of 255 for an 8-bit section): "featureless".
pub const FEATURELESS: f64 = 0.01;

/// Why qa's measures say a section has nothing to match on (blank, saturated, featureless),
/// or `None` when it has texture. Used to name a culprit only when it is one.
pub fn featureless(s: &Section) -> Option<String> {
    let top = if s.bits >= 32 {
        1.0
    } else {
        ((1u64 << s.bits) - 1) as f64
    };
    if s.max == s.min {
        Some(format!("every pixel is {}", s.min))
    } else if s.saturated >= 0.5 {
        Some(format!(
            "{:.0}% of pixels at the maximum",
            s.saturated * 100.0
        ))
    } else if s.std < FEATURELESS * top {
        Some(format!("standard deviation {:.2} of {top}", s.std))
    } else {
        None
    }
}

/// Facts about one section.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Section {
    /// File name.
    pub name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bits per sample.
    pub bits: u8,
    /// Smallest pixel value.
    pub min: f64,
    /// Largest pixel value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Share of pixels at the largest representable value.
    pub saturated: f64,
    /// Depth as the beamline sent it, where preparation converted it (`16-bit` …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<String>,
    /// The conversion applied to it (`16-bit → 8-bit, percentile:0.1-99.9 window 812..40211`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion: Option<String>,
}

/// The outcome, as written to `qa.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Report {
    /// Sections that passed and their numbers.
    pub sections: Vec<Section>,
    /// Sections that did not: (file, why).
    pub bad: Vec<(String, String)>,
}

/// Reads one section strip by strip and measures it.
pub fn measure(path: &Path) -> Result<Section, SectionError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut d = open(path)?;
    let (width, height) = d
        .dimensions()
        .map_err(SectionError::tiff("no dimensions"))?;
    let bits = match d
        .colortype()
        .map_err(SectionError::tiff("no colour type"))?
    {
        ColorType::Gray(b) => b,
        other => return Err(SectionError::NotGray(format!("{other:?}"))),
    };
    let chunks = match d.get_chunk_type() {
        ChunkType::Strip => d.strip_count(),
        ChunkType::Tile => d.tile_count(),
    }
    .map_err(SectionError::tiff("no strip or tile count"))?;
    let top = if bits >= 32 {
        f64::MAX
    } else {
        ((1u64 << bits) - 1) as f64
    };
    let (mut n, mut sum, mut sq, mut min, mut max, mut at_top) =
        (0f64, 0f64, 0f64, f64::MAX, f64::MIN, 0f64);
    let mut add = |v: f64| {
        n += 1.0;
        sum += v;
        sq += v * v;
        min = min.min(v);
        max = max.max(v);
        if v >= top {
            at_top += 1.0;
        }
    };
    for c in 0..chunks {
        match d
            .read_chunk(c)
            .map_err(|source| SectionError::Chunk { chunk: c, source })?
        {
            DecodingResult::U8(v) => v.iter().for_each(|&x| add(x as f64)),
            DecodingResult::U16(v) => v.iter().for_each(|&x| add(x as f64)),
            DecodingResult::U32(v) => v.iter().for_each(|&x| add(x as f64)),
            DecodingResult::F32(v) => v.iter().for_each(|&x| add(x as f64)),
            _ => return Err(SectionError::SampleFormat),
        }
    }
    if n == 0.0 {
        return Err(SectionError::Empty);
    }
    let mean = sum / n;
    let std = (sq / n - mean * mean).max(0.0).sqrt();
    Ok(Section {
        name,
        width,
        height,
        bits,
        min,
        max,
        mean,
        std,
        saturated: at_top / n,
        received: None,
        conversion: None,
    })
}

/// Why `qa` could not check a folder at all (a bad section is a finding, not this).
#[derive(Debug, thiserror::Error)]
pub enum QaError {
    /// The folder could not be listed.
    #[error("cannot list {}", dir.display())]
    List {
        /// The folder.
        dir: std::path::PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// No image to check.
    #[error("{} holds no .tif images; point qa at the stack's images/ folder", .0.display())]
    Empty(std::path::PathBuf),
}

/// Checks every image in `dir` (sorted by name). Where `names` (a work folder's
/// `names.tsv`) knows a file, the report names the section the beamline sent instead.
pub fn check_dir(
    dir: &Path,
    names: &[super::names::Section],
    conversion: Option<&super::to8bit::Conversion>,
) -> Result<Report, QaError> {
    // images/ holds `<aligntk>.tif`
    let received = |n: &str| {
        let stem = n.strip_suffix(".tif").unwrap_or(n);
        match super::names::received(names, stem) {
            r if r == stem => n.to_string(),
            r => r.to_string(),
        }
    };
    let mut report = check_files(dir, &received)?;
    let Some(c) = conversion else {
        return Ok(report);
    };
    // say what preparation did, and hold the stack to one depth as received
    let depth_of = |shown: &str| {
        names
            .iter()
            .find(|s| s.original == shown)
            .and_then(|s| c.received.get(&s.aligntk))
            .cloned()
    };
    let first = report
        .sections
        .first()
        .and_then(|s| depth_of(&s.name).map(|d| (s.name.clone(), d)));
    let mut mixed = Vec::new();
    for s in &mut report.sections {
        s.received = depth_of(&s.name);
        if let Some(d) = &s.received {
            if d != "8-bit" {
                s.conversion = Some(format!(
                    "{d} → 8-bit, {} window {:.1}..{:.1}",
                    c.how, c.window.0, c.window.1
                ));
            }
            if let Some((f, fd)) = &first {
                if d != fd {
                    mixed.push((s.name.clone(), format!("{d}, but {f} is {fd}")));
                }
            }
        }
    }
    if !mixed.is_empty() {
        report
            .sections
            .retain(|s| !mixed.iter().any(|(n, _)| *n == s.name));
        report.bad.extend(mixed);
    }
    Ok(report)
}

fn check_files(dir: &Path, received: &dyn Fn(&str) -> String) -> Result<Report, QaError> {
    let names = super::names::image_names(dir).map_err(|source| QaError::List {
        dir: dir.to_path_buf(),
        source,
    })?;
    if names.is_empty() {
        return Err(QaError::Empty(dir.to_path_buf()));
    }
    let mut report = Report {
        sections: Vec::new(),
        bad: Vec::new(),
    };
    let mut shape: Option<(u32, u32, u8, String)> = None;
    for file in names {
        let name = received(&file);
        match measure(&dir.join(&file)) {
            Err(e) => report.bad.push((name, beamflow_program::chain(&e))),
            Ok(mut s) => {
                s.name = name.clone();
                let mut why = Vec::new();
                match &shape {
                    None => shape = Some((s.width, s.height, s.bits, name.clone())),
                    Some((w, h, b, first)) => {
                        if (s.width, s.height, s.bits) != (*w, *h, *b) {
                            why.push(format!(
                                "{}x{} {}-bit, but {first} is {w}x{h} {b}-bit",
                                s.width, s.height, s.bits
                            ));
                        }
                    }
                }
                if s.max == s.min {
                    why.push(format!("blank: every pixel is {}", s.min));
                } else if s.saturated >= 0.5 {
                    why.push(format!(
                        "saturated: {:.0}% of pixels at the maximum",
                        s.saturated * 100.0
                    ));
                }
                if why.is_empty() {
                    report.sections.push(s);
                } else {
                    report.bad.push((name, why.join("; ")));
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiff16(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u16) {
        let mut e = tiff::encoder::TiffEncoder::new(std::fs::File::create(path).unwrap()).unwrap();
        let data: Vec<u16> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        e.write_image::<tiff::encoder::colortype::Gray16>(w, h, &data)
            .unwrap();
    }

    #[test]
    fn blank_saturated_odd_sized_and_broken_sections_are_named() {
        let d = tempfile::tempdir().unwrap();
        tiff16(&d.path().join("S_0000.tif"), 32, 32, |x, y| {
            (x * 100 + y) as u16
        });
        tiff16(&d.path().join("S_0001.tif"), 32, 32, |x, y| {
            (x + y * 7) as u16
        });
        tiff16(&d.path().join("S_0002.tif"), 32, 32, |_, _| 1200);
        tiff16(&d.path().join("S_0003.tif"), 32, 32, |x, _| {
            if x < 20 {
                65535
            } else {
                3
            }
        });
        tiff16(&d.path().join("S_0004.tif"), 16, 32, |x, y| (x + y) as u16);
        std::fs::write(d.path().join("S_0005.tif"), b"not a tiff").unwrap();
        let r = check_dir(d.path(), &[], None).unwrap();
        assert_eq!(r.sections.len(), 2);
        let bad: std::collections::HashMap<_, _> = r.bad.into_iter().collect();
        assert!(bad["S_0002.tif"].contains("blank"), "{bad:?}");
        assert!(bad["S_0003.tif"].contains("saturated"), "{bad:?}");
        assert!(
            bad["S_0004.tif"].contains("16x32 16-bit, but S_0000.tif is 32x32"),
            "{bad:?}"
        );
        assert!(bad["S_0005.tif"].contains("not a readable TIFF"), "{bad:?}");
    }
}
