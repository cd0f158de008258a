//! What the demo's AlignTK run found, set against what the synthetic sections were made with.
//!
//! A demo that only says "finished" proves the plumbing; people want to see the science. The
//! synthetic sections know the shift each was written with ([`shift_of`]), so the demo can
//! show find_rst's shift for every pair beside the written one, register's correlation, and,
//! measured on the images themselves, how far each section sits from the first before and
//! after alignment. Images are read as a central window, strip by strip: never whole.

use crate::synth::shift_of;
use std::path::{Path, PathBuf};
use tiff::decoder::{Decoder, DecodingResult};

/// Why what AlignTK found could not be measured: which file, and what about it.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A file (a summary, a list, an image) could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// An image is not a TIFF the decoder reads.
    #[error("cannot decode {}", path.display())]
    Decode {
        /// The image.
        path: PathBuf,
        /// What the TIFF library said.
        #[source]
        source: tiff::TiffError,
    },
    /// An image is not 8-bit grayscale (what AlignTK reads and writes).
    #[error("{} is not 8-bit", .0.display())]
    NotEightBit(PathBuf),
    /// An image is smaller than the window measured in it.
    #[error("{} is too small to measure", .0.display())]
    TooSmall(PathBuf),
    /// `images.lst` names no section.
    #[error("images.lst is empty")]
    NoSections,
}

fn decode(path: &Path) -> impl FnOnce(tiff::TiffError) -> MeasureError + '_ {
    move |source| MeasureError::Decode {
        path: path.to_path_buf(),
        source,
    }
}

fn opened(path: &Path) -> Result<Decoder<std::fs::File>, MeasureError> {
    let f = std::fs::File::open(path).map_err(|source| MeasureError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Decoder::new(f).map_err(decode(path))
}

/// One pair as find_rst saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct PairShift {
    /// Source and target sections (AlignTK names).
    pub pair: (String, String),
    /// The shift the synthetic sections were written with (target less source), in pixels.
    pub written: (f32, f32),
    /// The shift find_rst found.
    pub found: (f32, f32),
    /// find_rst's quality, as it printed it.
    pub quality: String,
}

impl PairShift {
    /// Whether find_rst found the written shift to within its working resolution.
    pub fn as_written(&self, tolerance: f32) -> bool {
        (self.found.0 - self.written.0).abs() < tolerance
            && (self.found.1 - self.written.1).abs() < tolerance
    }
}

/// The whole account.
#[derive(Debug, Clone)]
pub struct Science {
    /// find_rst's pairs, in stack order.
    pub pairs: Vec<PairShift>,
    /// find_rst's working resolution: it finds shifts to within this many pixels.
    pub tolerance: f32,
    /// Register's correlation per pair.
    pub correlations: Vec<f64>,
    /// Farthest any section sat from the first before alignment, in pixels (measured).
    pub before: i32,
    /// Farthest any aligned section sits from the first aligned one, in pixels (measured).
    pub after: i32,
    /// Sections measured.
    pub sections: usize,
}

/// The seed the demo wrote a section with: `S_0007` is the eighth section, seed 8.
pub fn seed_of(aligntk_name: &str) -> Option<u64> {
    let n: u64 = aligntk_name.strip_prefix("S_")?.parse().ok()?;
    Some(n + 1)
}

/// find_rst's reduction at `-max_res 1024`: it works on sections shrunk by this factor (see
/// find_rst.c, "determine resolutions").
pub fn reduction(side: u32) -> u32 {
    let mut r = 1;
    while (2 * side / r).next_power_of_two() > 1024 {
        r += 1;
    }
    r
}

/// find_rst's pairs from its summary (`cmaps/summary.out`, the table "Sorted by slice"), set
/// against the shifts of the seeds `seed` gives each section (by its AlignTK name).
pub fn find_rst_pairs(summary: &str, seed: impl Fn(&str) -> Option<u64>) -> Vec<PairShift> {
    let mut out = Vec::new();
    for line in summary.lines().skip(2) {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 7 {
            break;
        }
        let (Some(a), Some(b)) = (seed(t[0]), seed(t[1])) else {
            continue;
        };
        let (Ok(tx), Ok(ty)) = (t[5].parse::<f32>(), t[6].parse::<f32>()) else {
            continue;
        };
        let (sa, sb) = (shift_of(a), shift_of(b));
        out.push(PairShift {
            pair: (t[0].to_string(), t[1].to_string()),
            written: (sb.0 - sa.0, sb.1 - sa.1),
            found: (tx, ty),
            quality: t[2].to_string(),
        });
    }
    out
}

/// Register's correlation per pair from its summary (`maps/summary.out`, first table).
pub fn register_correlations(summary: &str) -> Vec<f64> {
    summary
        .lines()
        .skip(2)
        .map_while(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.len() >= 3).then(|| t[2].parse::<f64>().ok()).flatten()
        })
        .collect()
}

/// A window of an 8-bit section, read strip by strip: `side`² pixels at (`x0`, `y0`).
fn window(path: &Path, x0: u32, y0: u32, side: u32) -> Result<Vec<u8>, MeasureError> {
    let mut d = opened(path)?;
    let (w, h) = d.dimensions().map_err(decode(path))?;
    if x0 + side > w || y0 + side > h {
        return Err(MeasureError::TooSmall(path.to_path_buf()));
    }
    let rows_per = d.chunk_dimensions().1.max(1);
    let mut out = vec![0u8; (side * side) as usize];
    for strip in y0 / rows_per..=(y0 + side - 1) / rows_per {
        let DecodingResult::U8(px) = d.read_chunk(strip).map_err(decode(path))? else {
            return Err(MeasureError::NotEightBit(path.to_path_buf()));
        };
        let first = strip * rows_per;
        for (i, row) in px.chunks(w as usize).enumerate() {
            let y = first + i as u32;
            if y >= y0 && y < y0 + side {
                let at = ((y - y0) * side) as usize;
                out[at..at + side as usize]
                    .copy_from_slice(&row[x0 as usize..(x0 + side) as usize]);
            }
        }
    }
    Ok(out)
}

/// Where `b`'s content sits relative to `a`'s, within `reach` pixels: the shift that makes
/// the central windows agree best (least mean absolute difference).
pub fn offset(a: &Path, b: &Path, reach: u32) -> Result<(i32, i32), MeasureError> {
    let (w, h) = { opened(a)?.dimensions().map_err(decode(a))? };
    let side = (w.min(h) / 2).min(128);
    if side < 16 || w.min(h) < side + 2 * reach {
        return Err(MeasureError::TooSmall(a.to_path_buf()));
    }
    let (x0, y0) = ((w - side) / 2, (h - side) / 2);
    let wa = window(a, x0, y0, side)?;
    let big = side + 2 * reach;
    let wb = window(b, x0 - reach, y0 - reach, big)?;
    let mut best = (u64::MAX, 0, 0);
    let r = reach as i32;
    for dy in -r..=r {
        for dx in -r..=r {
            let mut sad = 0u64;
            for y in 0..side {
                let ra = (y * side) as usize;
                let rb = ((y as i32 + dy + r) as u32 * big) as usize + (dx + r) as usize;
                for x in 0..side as usize {
                    sad += wa[ra + x].abs_diff(wb[rb + x]) as u64;
                }
            }
            if sad < best.0 {
                best = (sad, dx, dy);
            }
        }
    }
    Ok((best.1, best.2))
}

/// Reads the account from a finished work folder (`images/`, `aligned/`, the summaries).
pub fn measure(work: &Path, side: u32) -> Result<Science, MeasureError> {
    let read = |rel: &str| {
        std::fs::read_to_string(work.join(rel)).map_err(|source| MeasureError::Read {
            path: work.join(rel),
            source,
        })
    };
    // one summary per job: the whole stack's, or one per chunk of pairs
    let summaries = |dir: &str| -> Result<Vec<String>, MeasureError> {
        let mut names: Vec<String> = std::fs::read_dir(work.join(dir))
            .map_err(|source| MeasureError::Read {
                path: work.join(dir),
                source,
            })?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("summary") && n.ends_with(".out"))
            .collect();
        names.sort();
        names.iter().map(|n| read(&format!("{dir}/{n}"))).collect()
    };
    let pairs: Vec<PairShift> = summaries("cmaps")?
        .iter()
        .flat_map(|t| find_rst_pairs(t, seed_of))
        .collect();
    let correlations: Vec<f64> = summaries("maps")?
        .iter()
        .flat_map(|t| register_correlations(t))
        .collect();
    let names: Vec<String> = read("images.lst")?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    // written shifts differ by at most 8 + 6 pixels between any two sections
    let reach = 16;
    let (mut before, mut after) = (0, 0);
    let first = names.first().ok_or(MeasureError::NoSections)?;
    for n in &names[1..] {
        let tif = |dir: &str, n: &str| work.join(dir).join(format!("{n}.tif"));
        let (bx, by) = offset(&tif("images", first), &tif("images", n), reach)?;
        let (ax, ay) = offset(&tif("aligned", first), &tif("aligned", n), reach)?;
        before = before.max(bx.abs()).max(by.abs());
        after = after.max(ax.abs()).max(ay.abs());
    }
    Ok(Science {
        pairs,
        tolerance: reduction(side) as f32,
        correlations,
        before,
        after,
        sections: names.len(),
    })
}

/// The account as people read it: a line of verdicts, then every pair (at most 16 rows).
pub fn render(s: &Science) -> String {
    let good = s.pairs.iter().filter(|p| p.as_written(s.tolerance)).count();
    let mut c = s.correlations.clone();
    c.sort_by(f64::total_cmp);
    let median = c.get(c.len() / 2).copied().unwrap_or(f64::NAN);
    let mut out = format!(
        "  what AlignTK found:\n    find_rst: {good} of {} pairs at the shift they were written with{}\n    register: correlation {median:.4} (median of {} pairs)\n    measured on the images: sections sat up to {} px from the first; after alignment, {} px\n\n",
        s.pairs.len(),
        if s.tolerance > 1.0 {
            format!(" (to within {} px: it works at 1/{} size)", s.tolerance - 1.0, s.tolerance)
        } else {
            String::new()
        },
        c.len(),
        s.before,
        s.after,
    );
    out.push_str(&format!(
        "    {:<17} {:<7}   {:<7}  quality\n",
        "pair", "written", "found"
    ));
    let shown = s.pairs.len().min(16);
    for p in &s.pairs[..shown] {
        out.push_str(&format!(
            "    {:<8} {:<8} {:>+3.0},{:<+3.0}   {:>+3.0},{:<+3.0}  {}{}\n",
            p.pair.0,
            p.pair.1,
            p.written.0,
            p.written.1,
            p.found.0,
            p.found.1,
            p.quality,
            if p.as_written(s.tolerance) {
                ""
            } else {
                "  differs"
            }
        ));
    }
    if s.pairs.len() > shown {
        out.push_str(&format!("    … {} more pairs\n", s.pairs.len() - shown));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIND_RST: &str = "Sorted by slice:
         SOURCE  TARGET   QUALITY     ROTATION    SCALE       TX          TY
S_0000  S_0001      0.923915      0.000000      1.000000     -2.000000      3.000000
S_0001  S_0002           nan      0.000000      1.000000      1.000000      1.000000


Sorted by quality:
         SOURCE  TARGET   QUALITY     ROTATION    SCALE       TX          TY
S_0000  S_0001      0.923915      0.000000      1.000000     -2.000000      3.000000
";

    #[test]
    fn find_rst_s_first_table_is_set_against_the_written_shifts() {
        let p = find_rst_pairs(FIND_RST, seed_of);
        assert_eq!(p.len(), 2);
        // seeds 1 and 2: (3, 0) and (1, 3)
        assert_eq!(p[0].written, (-2.0, 3.0));
        assert!(p[0].as_written(1.0));
        // seeds 2 and 3: (1, 3) and (-1, -1)
        assert_eq!(p[1].written, (-2.0, -4.0));
        assert!(!p[1].as_written(1.0));
        assert_eq!(p[1].quality, "nan");
        let text = render(&Science {
            pairs: p,
            tolerance: 1.0,
            correlations: vec![0.99, 0.98],
            before: 6,
            after: 0,
            sections: 3,
        });
        assert!(
            text.contains("find_rst: 1 of 2 pairs at the shift"),
            "{text}"
        );
        assert!(text.contains("up to 6 px from the first; after alignment, 0 px"));
        assert!(text.contains("nan  differs"), "{text}");
    }

    #[test]
    fn register_s_correlations_are_read_from_its_first_table() {
        let t = "Sorted by slice:
IMAGE    REFERENCE  CORRELATION   DISTORTION    CORRESPOND    CONSTRAIN     ENERGY
  S_0000   S_0001     0.995481      0.000001      0.000000      0.000000     -0.995468
  S_0001   S_0002     0.995512      0.000001      0.000000      0.000000     -0.995504


Sorted by energy:
";
        assert_eq!(register_correlations(t), vec![0.995481, 0.995512]);
    }

    #[test]
    fn the_offset_of_a_shifted_section_is_measured_from_its_pixels() {
        let d = tempfile::tempdir().unwrap();
        let s = |seed| crate::synth::Section {
            width: 200,
            height: 200,
            seed,
            big: false,
            rows_per_strip: 7,
        };
        let (a, b) = (d.path().join("a.tif"), d.path().join("b.tif"));
        crate::synth::write_tiff8(&a, &s(1)).unwrap();
        crate::synth::write_tiff8(&b, &s(3)).unwrap();
        // seeds 1 and 3: (3, 0) and (-1, -1)
        assert_eq!(offset(&a, &b, 10).unwrap(), (-4, -1));
        assert_eq!(offset(&a, &a, 10).unwrap(), (0, 0));
        assert_eq!(seed_of("S_0002"), Some(3));
        assert_eq!([128, 512, 513, 2048].map(reduction), [1, 1, 2, 4]);
    }
}
