//! The work folder of a stack version, as AlignTK expects it, and the check of its summaries.
//!
//! Preparation does what the original Python did before each run: fill `images/`, create
//! `cmaps maps amaps grids aligned` (find_rst test-writes into `cmaps/` and aborts without
//! it), write `images.lst`, `pairs.lst` and align's `schedule.lst`. AlignTK splits its lists
//! on whitespace, takes a leading `-` for an option and reads `<name>.tif`, while a beamline
//! may name a section anything. So `images/` is a folder of links: a section whose stem
//! AlignTK can take keeps it, any other gets a safe alias (`section0003`), and `names.tsv`
//! maps every AlignTK name back to the received file. After a step, outputs named for an
//! alias get a second name, the original's ([`name_back`]). The received originals are
//! never touched. AlignTK exits 0 on a blank or featureless section; only its summaries show
//! it (a `nan` quality, a `-1000000` correlation), so a zero exit is checked (see `check`).

use super::names::{aligntk_names, image_names, read_names, stem, NAMES_FILE};
use super::open::SectionError;
use super::to8bit::{Conversion, CONVERSION_FILE};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use super::names::Section;

/// Why a work folder could not be prepared, or an output not named back. Cheap to clone: the
/// engine keeps each stack's preparation, failed or not, for all its steps.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrepareError {
    /// A file system call failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "list", "link", "write" …).
        what: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A received section could not be read or converted.
    #[error("{file}")]
    Section {
        /// The section as the beamline named it (or the work folder's name for it).
        file: String,
        /// What is wrong with it.
        #[source]
        source: Arc<SectionError>,
    },
    /// The stack's 8-bit window or a conversion failed (the error names the section).
    #[error("cannot convert the stack to 8-bit")]
    Convert(#[source] Arc<SectionError>),
    /// Fewer than two images: nothing to align.
    #[error("{} holds {count} image(s); alignment needs at least 2", dir.display())]
    TooFew {
        /// The stack's folder.
        dir: PathBuf,
        /// How many it holds.
        count: usize,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError {
    let path = path.to_path_buf();
    move |e| PrepareError::Io {
        what,
        path,
        source: Arc::new(e),
    }
}

fn section(file: &str) -> impl FnOnce(SectionError) -> PrepareError {
    let file = file.to_string();
    move |e| PrepareError::Section {
        file,
        source: Arc::new(e),
    }
}

fn convert(e: SectionError) -> PrepareError {
    PrepareError::Convert(Arc::new(e))
}

/// What preparing a work folder learned, for command placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// `WIDTHxHEIGHT` of the first image (align's `-grid_size`).
    pub grid_size: String,
    /// The sections in order.
    pub sections: Vec<Section>,
}

impl Prepared {
    /// The AlignTK names in order (what `{first}` and `{last}` are taken from).
    pub fn aligntk_names(&self) -> Vec<String> {
        self.sections.iter().map(|s| s.aligntk.clone()).collect()
    }
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Links 8-bit sections into `images/` and writes 8-bit copies of deeper ones, with one
/// window for the stack; records what it did. A layout that cannot be converted (colour) is
/// linked as it is, for `qa` to refuse by name. Done once per version: the snapshot it reads
/// never changes.
fn fill_images(
    work_dir: &Path,
    stack_dir: &Path,
    sections: &[Section],
    to_8bit: &str,
    how: beamflow_config::To8Bit,
    kept: Option<(f64, f64)>,
) -> Result<(), PrepareError> {
    use super::to8bit::{depth, Depth};
    let images = work_dir.join("images");
    let record = work_dir.join(CONVERSION_FILE);
    let done = std::fs::read_to_string(&record)
        .ok()
        .and_then(|t| serde_json::from_str::<Conversion>(&t).ok())
        .is_some_and(|c| {
            c.how == to_8bit
                && c.received.len() == sections.len()
                && sections
                    .iter()
                    .all(|s| images.join(format!("{}.tif", s.aligntk)).exists())
        });
    if done {
        return Ok(());
    }
    let mut received = std::collections::BTreeMap::new();
    let mut deeper = Vec::new();
    for s in sections {
        let src = stack_dir.join(&s.original);
        let link = images.join(format!("{}.tif", s.aligntk));
        let d = depth(&src).map_err(section(&s.original))?;
        received.insert(
            s.aligntk.clone(),
            match d {
                Some(Depth::Gray8) => "8-bit",
                Some(Depth::Gray16) => "16-bit",
                Some(Depth::GrayF32) => "32-bit float",
                None => "not grayscale",
            }
            .to_string(),
        );
        match d {
            Some(Depth::Gray16 | Depth::GrayF32) if how != beamflow_config::To8Bit::Off => {
                deeper.push((src, link))
            }
            _ => match std::fs::read_link(&link) {
                Ok(t) if t == src => {}
                _ => {
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&src, &link).map_err(io("link", &link))?;
                }
            },
        }
    }
    let mut window = (0.0, 255.0);
    if !deeper.is_empty() {
        let sources: Vec<std::path::PathBuf> = deeper.iter().map(|(s, _)| s.clone()).collect();
        window = match kept {
            Some(w) => w,
            None => super::to8bit::window(&sources, how).map_err(convert)?,
        };
        for (_, link) in &deeper {
            let _ = std::fs::remove_file(link); // a link from an earlier layout
        }
        super::to8bit::convert_all(&deeper, window).map_err(convert)?;
    }
    let c = Conversion {
        how: to_8bit.to_string(),
        window,
        received,
    };
    write_atomic(
        &record,
        &serde_json::to_string_pretty(&c).unwrap_or_default(),
    )
    .map_err(io("write", &record))
}

/// Prepares `work_dir` for the images in `stack_dir`. Safe to repeat. `kept` is an 8-bit
/// window chosen before (a streamed stack keeps its first one, so that a section's 8-bit
/// copy is the same bytes in every version and the work on it is reused).
pub fn prepare(
    work_dir: &Path,
    stack_dir: &Path,
    schedule: &str,
    wf: Option<&beamflow_config::Workflow>,
    kept: Option<(f64, f64)>,
) -> Result<Prepared, PrepareError> {
    std::fs::create_dir_all(work_dir).map_err(io("create", work_dir))?;
    let names = image_names(stack_dir).map_err(io("list", stack_dir))?;
    if names.len() < 2 {
        return Err(PrepareError::TooFew {
            dir: stack_dir.to_path_buf(),
            count: names.len(),
        });
    }
    let sections = aligntk_names(&names);
    let images = work_dir.join("images");
    if std::fs::symlink_metadata(&images).is_ok_and(|m| !m.is_dir()) {
        // a work folder prepared when images/ was one link to the whole stack
        std::fs::remove_file(&images).map_err(io("replace", &images))?;
    }
    std::fs::create_dir_all(&images).map_err(io("create", &images))?;
    let wanted: HashSet<String> = sections
        .iter()
        .map(|s| format!("{}.tif", s.aligntk))
        .collect();
    for e in std::fs::read_dir(&images).map_err(io("list", &images))? {
        let e = e.map_err(io("list", &images))?;
        if !e.file_name().to_str().is_some_and(|n| wanted.contains(n)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let (to_8bit, how) = wf
        .map(|w| (w.to_8bit.as_str(), w.window))
        .unwrap_or(("percentile:0.1-99.9", beamflow_config::To8Bit::default()));
    fill_images(work_dir, stack_dir, &sections, to_8bit, how, kept)?;
    for d in ["cmaps", "maps", "amaps", "grids", "aligned"] {
        std::fs::create_dir_all(work_dir.join(d)).map_err(io("create", &work_dir.join(d)))?;
    }
    let mut list = String::new();
    let mut table = String::from("aligntk\toriginal\n");
    for s in &sections {
        list.push_str(&s.aligntk);
        list.push('\n');
        table.push_str(&super::names::table_row(s));
    }
    let pairs: String = sections
        .windows(2)
        .map(|w| format!("{0} {1} {0}_{1}\n", w[0].aligntk, w[1].aligntk))
        .collect();
    for (name, text) in [
        ("images.lst", list.as_str()),
        ("pairs.lst", pairs.as_str()),
        ("schedule.lst", schedule),
        (NAMES_FILE, table.as_str()),
    ] {
        write_atomic(&work_dir.join(name), text).map_err(io("write", &work_dir.join(name)))?;
    }
    if let Some(wf) = wf {
        write_part_lists(work_dir, wf, (&list, &pairs))?;
    }
    let first = stack_dir.join(&sections[0].original);
    let (w, h) = super::open::dimensions(&first).map_err(section(&sections[0].original))?;
    Ok(Prepared {
        grid_size: format!("{w}x{h}"),
        sections,
    })
}

/// Each fanned-out job's own list: the lines of `images.lst` or `pairs.lst` its part covers
/// (`pairs_0008-0015.lst` …), for the steps of `wf` that fan out.
fn write_part_lists(
    work_dir: &Path,
    wf: &beamflow_config::Workflow,
    (images, pairs): (&str, &str),
) -> Result<(), PrepareError> {
    use super::dag::{parts, whole_chunks, Part};
    let images: Vec<&str> = images.lines().collect();
    let pairs: Vec<&str> = pairs.lines().collect();
    let lines = |p: &Part| -> String {
        let all = match p.each {
            beamflow_config::Each::Section => &images,
            _ => &pairs,
        };
        let end = p.last.min(all.len().saturating_sub(1));
        all.get(p.first..=end)
            .unwrap_or_default()
            .iter()
            .map(|l| format!("{l}\n"))
            .collect()
    };
    for s in &wf.steps {
        // a streamed stack's partial versions name their chunks even where the whole stack
        // fits in one
        let mut all = parts(s, images.len());
        for c in whole_chunks(s, images.len()) {
            if !all.contains(&c) {
                all.push(c);
            }
        }
        for p in all.into_iter().flatten() {
            let path = work_dir.join(p.list_file());
            write_atomic(&path, &lines(&p)).map_err(io("write", &path))?;
        }
    }
    Ok(())
}

/// Gives each output that carries an alias (`aligned/section0003.tif`, `amaps/section0003.map`)
/// a second name, the received section's (`aligned/<original>`, `amaps/<original stem>.map`),
/// as a hard link: no copy, and AlignTK's own name stays for the steps after. Safe to repeat.
pub fn name_back(work_dir: &Path) -> Result<(), PrepareError> {
    let Ok(sections) = read_names(&work_dir.join(NAMES_FILE)) else {
        return Ok(()); // a workflow that prepared no names
    };
    name_back_sections(work_dir, &sections)
}

/// [`name_back`] with the sections known (the engine keeps each version's preparation).
pub fn name_back_sections(work_dir: &Path, sections: &[Section]) -> Result<(), PrepareError> {
    for s in sections.iter().filter(|s| s.aligntk != stem(&s.original)) {
        for (dir, from, to) in [
            (
                "aligned",
                format!("{}.tif", s.aligntk),
                s.original.to_string(),
            ),
            (
                "amaps",
                format!("{}.map", s.aligntk),
                format!("{}.map", stem(&s.original)),
            ),
        ] {
            let (from, to) = (work_dir.join(dir).join(from), work_dir.join(dir).join(to));
            if !from.exists() {
                continue;
            }
            let _ = std::fs::remove_file(&to);
            std::fs::hard_link(&from, &to).map_err(io("give its received name", &to))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prepared_folder_links_every_section_and_maps_names_back() {
        let d = tempfile::tempdir().unwrap();
        let stack = d.path().join("stack");
        std::fs::create_dir_all(&stack).unwrap();
        let hostile = ["-x0.tif", "a b.tif", "n\nl\tt\\.tif", "$(id>PWNED).tif"];
        for n in hostile {
            let f = std::fs::File::create(stack.join(n)).unwrap();
            let mut enc = tiff::encoder::TiffEncoder::new(f).unwrap();
            let px: Vec<u8> = (0..64u32).map(|i| (i * 3) as u8).collect();
            enc.write_image::<tiff::encoder::colortype::Gray8>(8, 8, &px)
                .unwrap();
        }
        let work = d.path().join("work");
        let p = prepare(&work, &stack, "6 0.1 1.0 0.01\n", None, None).unwrap();
        assert_eq!(p.sections.len(), 4);
        let listed = std::fs::read_to_string(work.join("images.lst")).unwrap();
        for line in listed.lines() {
            assert!(
                !line.starts_with('-') && !line.contains(char::is_whitespace),
                "{line:?}"
            );
            assert!(work.join("images").join(format!("{line}.tif")).exists());
        }
        let back = read_names(&work.join(NAMES_FILE)).unwrap();
        assert_eq!(back, p.sections);
        let mut originals: Vec<String> = back.iter().map(|s| s.original.clone()).collect();
        originals.sort();
        let mut want = v(&hostile);
        want.sort();
        assert_eq!(originals, want);
        // again: nothing changes, nothing breaks
        assert_eq!(
            prepare(&work, &stack, "6 0.1 1.0 0.01\n", None, None).unwrap(),
            p
        );
        // outputs under an alias get the original name too
        for s in &p.sections {
            std::fs::write(work.join("aligned").join(format!("{}.tif", s.aligntk)), "x").unwrap();
        }
        name_back(&work).unwrap();
        for n in hostile {
            assert!(work.join("aligned").join(n).exists(), "{n:?}");
        }
    }
}
