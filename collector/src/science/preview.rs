//! The picture a scientist looks at first: `preview.png` of a stack version, written by the
//! built-in `preview` step after the aligned sections exist.
//!
//! Its top is a reslice through the middle of the stack (row `H/2` of every section, one
//! above the other, in stack order) before alignment beside the same reslice after: the view
//! across sections, where a misaligned stack shows as a ragged edge and an aligned one as a
//! straight one. Below it, the first, middle and last aligned sections. Every section is read
//! strip by strip and only what the picture needs is kept (one row, or a thumbnail's rows), so
//! a stack of any size costs a few megabytes.

use super::open::{open, SectionError};
use std::path::{Path, PathBuf};
use tiff::decoder::{ChunkType, DecodingResult};

/// The file the step writes in the work folder (and that the page and `results` show).
pub const PREVIEW_FILE: &str = "preview.png";

/// The widest a reslice is drawn; wider sections are sampled down to it.
const MAX_WIDTH: usize = 512;

/// Gap between the panels, and the background it shows.
const GAP: usize = 8;
const BACKGROUND: u8 = 32;

/// Why a preview could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// A section could not be read.
    #[error(transparent)]
    Section(#[from] SectionError),
    /// The work folder's list of sections could not be read.
    #[error("cannot read {}; run preview in a prepared work folder", .0.display())]
    List(PathBuf, #[source] std::io::Error),
    /// Nothing to show.
    #[error("{} names no sections", .0.display())]
    Empty(PathBuf),
    /// The picture could not be written.
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    /// The PNG encoder refused.
    #[error("cannot encode {}", .0.display())]
    Encode(PathBuf, #[source] png::EncodingError),
}

/// A gray picture being composed.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            pixels: vec![BACKGROUND; width * height],
        }
    }

    /// Draws `rows` (each `w` wide) with their top left corner at (x, y).
    fn draw(&mut self, x: usize, y: usize, w: usize, rows: &[Vec<u8>]) {
        for (dy, row) in rows.iter().enumerate() {
            let at = (y + dy) * self.width + x;
            self.pixels[at..at + w].copy_from_slice(&row[..w]);
        }
    }

    /// Writes `text` (capitals, digits, spaces) in 3×5 glyphs scaled by 2, light on the
    /// background, at (x, y).
    fn label(&mut self, x: usize, y: usize, text: &str) {
        for (i, c) in text.chars().enumerate() {
            let Some(g) = glyph(c) else { continue };
            for (r, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) == 0 {
                        continue;
                    }
                    for (sy, sx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let (px, py) = (x + i * 8 + col * 2 + sx, y + r * 2 + sy);
                        if px < self.width && py < self.height {
                            self.pixels[py * self.width + px] = 230;
                        }
                    }
                }
            }
        }
    }

    fn write_png(&self, out: &Path) -> Result<(), PreviewError> {
        let tmp = out.with_extension("png.part");
        let file = std::fs::File::create(&tmp).map_err(|e| PreviewError::Write(tmp.clone(), e))?;
        let mut enc = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let encode = |e| PreviewError::Encode(out.to_path_buf(), e);
        let mut w = enc.write_header().map_err(encode)?;
        w.write_image_data(&self.pixels).map_err(encode)?;
        w.finish().map_err(encode)?;
        std::fs::rename(&tmp, out).map_err(|e| PreviewError::Write(out.to_path_buf(), e))
    }
}

/// The 3×5 glyphs the labels need, a row per entry, the leftmost pixel the highest bit.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        _ => return None,
    })
}

/// Calls `each` with every row of the section at `path`, as 8-bit samples (16-bit ones
/// keep their high byte); returns its width and height. Strip by strip: never the whole
/// section in memory.
fn rows(path: &Path, mut each: impl FnMut(usize, &[u8])) -> Result<(usize, usize), PreviewError> {
    let mut d = open(path).map_err(|e| e.of(path))?;
    let (w, h) = d
        .dimensions()
        .map_err(|e| SectionError::tiff("no dimensions")(e).of(path))?;
    let (w, h) = (w as usize, h as usize);
    if d.get_chunk_type() != ChunkType::Strip {
        return Err(SectionError::Tiled.of(path).into());
    }
    let n = d
        .strip_count()
        .map_err(|e| SectionError::tiff("no strip count")(e).of(path))?;
    let mut y = 0;
    let mut row = Vec::with_capacity(w);
    for c in 0..n {
        let strip = d
            .read_chunk(c)
            .map_err(|source| SectionError::Strip { strip: c, source }.of(path))?;
        let samples: Box<dyn Iterator<Item = u8>> = match strip {
            DecodingResult::U8(v) => Box::new(v.into_iter()),
            DecodingResult::U16(v) => Box::new(v.into_iter().map(|s| (s >> 8) as u8)),
            _ => return Err(SectionError::SampleFormat.of(path).into()),
        };
        for s in samples {
            row.push(s);
            if row.len() == w {
                if y < h {
                    each(y, &row);
                }
                y += 1;
                row.clear();
            }
        }
    }
    Ok((w, h))
}

/// `row` sampled (nearest) to `width` samples.
fn resample(row: &[u8], width: usize) -> Vec<u8> {
    (0..width)
        .map(|x| row[(x * row.len() / width.max(1)).min(row.len().saturating_sub(1))])
        .collect()
}

/// Row `H/2` of each section, each `width` wide, in order.
fn reslice(sections: &[PathBuf], width: usize) -> Result<Vec<Vec<u8>>, PreviewError> {
    let mut out = Vec::with_capacity(sections.len());
    for s in sections {
        let (_, h) = super::open::dimensions(s).map_err(|e| e.of(s))?;
        let mut kept = None;
        rows(s, |y, row| {
            if y == h as usize / 2 {
                kept = Some(resample(row, width));
            }
        })?;
        out.push(kept.unwrap_or_else(|| vec![0; width]));
    }
    Ok(out)
}

/// The section at `path` shrunk (nearest) to `width` wide, its aspect kept.
fn thumbnail(path: &Path, width: usize) -> Result<Vec<Vec<u8>>, PreviewError> {
    let (w, h) = super::open::dimensions(path)
        .map(|(w, h)| (w as usize, h as usize))
        .map_err(|e| e.of(path))?;
    let height = (h * width / w.max(1)).max(1);
    let mut out = vec![Vec::new(); height];
    rows(path, |y, row| {
        let ty = y * height / h.max(1);
        if ty < height && out[ty].is_empty() {
            out[ty] = resample(row, width);
        }
    })?;
    // a section shorter than the thumbnail: each row drawn as often as it takes
    let mut last = vec![0; width];
    for row in out.iter_mut() {
        if row.is_empty() {
            row.clone_from(&last);
        } else {
            last.clone_from(row);
        }
    }
    Ok(out)
}

/// What a preview shows, for the log and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// Its size in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
    /// Sections in the reslices.
    pub sections: usize,
}

/// Writes `out` for the work folder `work`: its sections are `images.lst` (AlignTK's names),
/// read from `images/` (before) and `aligned/` (after).
pub fn write(work: &Path, out: &Path) -> Result<Preview, PreviewError> {
    let list = work.join("images.lst");
    let names: Vec<String> = std::fs::read_to_string(&list)
        .map_err(|e| PreviewError::List(list.clone(), e))?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(PreviewError::Empty(list));
    }
    let at = |dir: &str| -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| work.join(dir).join(format!("{n}.tif")))
            .collect()
    };
    let (before, after) = (at("images"), at("aligned"));
    let (w, _) = super::open::dimensions(&before[0]).map_err(|e| e.of(&before[0]))?;
    let width = (w as usize).min(MAX_WIDTH);
    // each section's row drawn this many times, so that a short stack is still seen
    let stretch = (256 / names.len()).clamp(1, 24);
    let tall = |rows: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        rows.into_iter()
            .flat_map(|r| std::iter::repeat_n(r, stretch))
            .collect()
    };
    let (left, right) = (
        tall(reslice(&before, width)?),
        tall(reslice(&after, width)?),
    );
    let total = 2 * width + GAP;
    let thumb_w = (total - 2 * GAP) / 3;
    let picks = [0, names.len() / 2, names.len() - 1];
    let thumbs: Vec<Vec<Vec<u8>>> = picks
        .iter()
        .map(|&i| thumbnail(&after[i], thumb_w))
        .collect::<Result<_, _>>()?;
    let thumb_h = thumbs.iter().map(Vec::len).max().unwrap_or(0);
    let label_h = 14;
    let height = label_h + left.len() + GAP + label_h + thumb_h;
    let mut c = Canvas::new(total, height);
    c.label(2, 2, "BEFORE");
    c.label(width + GAP + 2, 2, "ALIGNED");
    c.draw(0, label_h, width, &left);
    c.draw(width + GAP, label_h, width, &right);
    let y = label_h + left.len() + GAP;
    for (k, (t, name)) in thumbs.iter().zip(["FIRST", "MIDDLE", "LAST"]).enumerate() {
        let x = k * (thumb_w + GAP);
        c.label(x + 2, y + 2, name);
        c.draw(x, y + label_h, thumb_w, t);
    }
    c.write_png(out)?;
    Ok(Preview {
        width: total as u32,
        height: height as u32,
        sections: names.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A section whose bright square sits `dx` pixels right of centre.
    fn section(path: &Path, side: u32, dx: i64) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = tiff::encoder::TiffEncoder::new(file).unwrap();
        let mut px = vec![20u8; (side * side) as usize];
        let c = side as i64 / 2;
        for y in 0..side as i64 {
            for x in 0..side as i64 {
                if (x - c - dx).abs() < 16 && (y - c).abs() < 16 {
                    px[(y * side as i64 + x) as usize] = 220;
                }
            }
        }
        enc.write_image::<tiff::encoder::colortype::Gray8>(side, side, &px)
            .unwrap();
    }

    fn edges(row: &[u8]) -> (usize, usize) {
        let first = row.iter().position(|&v| v > 128).unwrap();
        let last = row.iter().rposition(|&v| v > 128).unwrap();
        (first, last)
    }

    #[test]
    fn the_reslice_shows_the_shifts_before_and_none_after() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["images", "aligned"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        let names: Vec<String> = (0..6).map(|i| format!("S_{i:04}")).collect();
        std::fs::write(d.path().join("images.lst"), names.join("\n")).unwrap();
        let shifts = [0, 7, -5, 12, 3, -9];
        for (n, dx) in names.iter().zip(shifts) {
            section(&d.path().join(format!("images/{n}.tif")), 128, dx);
            section(&d.path().join(format!("aligned/{n}.tif")), 128, 0);
        }
        let out = d.path().join(PREVIEW_FILE);
        let p = write(d.path(), &out).unwrap();
        assert_eq!(p.sections, 6);
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (p.width, p.height));
        assert_eq!(info.width, 2 * 128 + 8);
        let w = info.width as usize;
        let stretch = 24; // 256 / 6 sections, at most 24
        for (i, dx) in shifts.iter().enumerate() {
            let y = 14 + i * stretch + stretch / 2;
            let row = &buf[y * w..(y + 1) * w];
            let (b0, _) = edges(&row[..128]);
            let (a0, _) = edges(&row[128 + 8..]);
            // before: the square's left edge moves with the section's shift; after: it does not
            assert_eq!(b0 as i64, 64 - 15 + dx, "section {i} before");
            assert_eq!(a0 as i64, 64 - 15, "section {i} after");
        }
    }

    #[test]
    fn a_work_folder_without_its_list_says_so() {
        let d = tempfile::tempdir().unwrap();
        let e = write(d.path(), &d.path().join(PREVIEW_FILE)).unwrap_err();
        assert!(e.to_string().contains("images.lst"), "{e}");
    }
}
