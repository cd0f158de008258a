//! Work reused by content. A new version of a stack often differs from the one before by a
//! section or two; a fanned-out job whose inputs are byte-identical (by BLAKE3) to those of a
//! job that finished for an earlier version, with the same command, takes that job's outputs
//! (hard links, no copy) instead of running again. N versions of a growing stack then cost
//! O(N) pair work, not O(N²).
//!
//! A job's inputs are the AlignTK inputs of its part (`images/NAME.tif`, as prepared: the
//! 8-bit window of the whole stack is in those bytes) and its parents' declared outputs for
//! its pairs or sections (register reads find_rst's maps). Its outputs are its declared
//! outputs for its part, its summary and its logs.

use super::dag::Part;
use std::path::Path;

/// The files of a job, relative to its work folder: what it reads and what it leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    /// What it reads.
    pub inputs: Vec<String>,
    /// What it leaves.
    pub outputs: Vec<String>,
}

/// `patterns` expanded over a part's pairs (`{pair}`) and sections (`{image}`), from the
/// work folder's lists.
fn expand(work: &Path, patterns: &[String], part: Part) -> Vec<String> {
    let sections: Vec<String> = super::check::sections(work)
        .into_iter()
        .map(|s| s.aligntk)
        .collect();
    let pairs = super::check::pairs(work);
    let mut out = Vec::new();
    for p in patterns {
        if p.contains("{pair}") {
            out.extend(
                part.pairs()
                    .filter_map(|i| pairs.get(i))
                    .map(|n| p.replace("{pair}", n)),
            );
        } else if p.contains("{image}") {
            out.extend(
                part.sections()
                    .filter_map(|i| sections.get(i))
                    .map(|n| p.replace("{image}", n)),
            );
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// The files of job `name` (a part of a step with `outputs` and `summary`), whose parents'
/// steps declare `parent_outputs`.
pub fn files(
    work: &Path,
    name: &str,
    part: Part,
    (outputs, summary): (&[String], Option<&str>),
    parent_outputs: &[String],
) -> Files {
    let images: Vec<String> = vec!["images/{image}.tif".into()];
    let mut inputs = expand(work, &images, part);
    inputs.extend(expand(work, parent_outputs, part));
    let mut outs = expand(work, outputs, part);
    outs.extend(summary.map(str::to_string));
    outs.push(format!("{name}.out"));
    outs.push(format!("{name}.err"));
    Files {
        inputs,
        outputs: outs,
    }
}

fn blake3_of(path: &Path) -> Option<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).ok()?).ok()?;
    Some(*h.finalize().as_bytes())
}

/// Whether every input exists in both work folders with the same bytes (and there is one).
pub fn same_inputs(old: &Path, new: &Path, inputs: &[String]) -> bool {
    !inputs.is_empty()
        && inputs.iter().all(|f| {
            let (a, b) = (old.join(f), new.join(f));
            // one file under two names (an output linked in from the version before) is the
            // same bytes without reading them: a streamed stack asks this of every pair
            if same_file(&a, &b) {
                return true;
            }
            let h = blake3_of(&a);
            h.is_some() && h == blake3_of(&b)
        })
}

/// Whether two paths name one file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Gives the new work folder the old one's outputs, as hard links; an output the old job
/// did not leave (a log it never wrote) is skipped. Safe to repeat.
pub fn link_outputs(old: &Path, new: &Path, outputs: &[String]) -> std::io::Result<usize> {
    let mut n = 0;
    for f in outputs {
        let (from, to) = (old.join(f), new.join(f));
        if !from.is_file() {
            continue;
        }
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&to);
        std::fs::hard_link(&from, &to).or_else(|_| std::fs::copy(&from, &to).map(|_| ()))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::science::names::NAMES_FILE;
    use beamflow_config::Each;

    fn work(dir: &Path, sections: &[(&str, &[u8])]) {
        std::fs::create_dir_all(dir.join("images")).unwrap();
        std::fs::create_dir_all(dir.join("cmaps")).unwrap();
        let mut table = String::from("aligntk\toriginal\n");
        let mut pairs = String::new();
        for (i, (n, bytes)) in sections.iter().enumerate() {
            table.push_str(&format!("{n}\t{n}.tif\n"));
            std::fs::write(dir.join(format!("images/{n}.tif")), bytes).unwrap();
            if i + 1 < sections.len() {
                let m = sections[i + 1].0;
                pairs.push_str(&format!("{n} {m} {n}_{m}\n"));
                std::fs::write(dir.join(format!("cmaps/{n}_{m}.map")), format!("{n}{m}")).unwrap();
            }
        }
        std::fs::write(dir.join(NAMES_FILE), table).unwrap();
        std::fs::write(dir.join("pairs.lst"), pairs).unwrap();
    }

    #[test]
    fn a_part_is_reused_only_when_every_byte_it_reads_is_the_same() {
        let d = tempfile::tempdir().unwrap();
        let (old, new) = (d.path().join("v1"), d.path().join("v2"));
        work(&old, &[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        // v2 grew by a section and its last old section changed
        work(&new, &[("a", b"1"), ("b", b"2"), ("c", b"X"), ("d", b"4")]);
        let part = |first, last| Part {
            each: Each::Pair,
            first,
            last,
        };
        let outputs = vec!["maps/{pair}.map".to_string()];
        let f = files(
            &new,
            "register[0]",
            part(0, 0),
            (&outputs, Some("maps/summary_0000-0000.out")),
            &["cmaps/{pair}.map".to_string()],
        );
        assert_eq!(f.inputs, ["images/a.tif", "images/b.tif", "cmaps/a_b.map"]);
        assert_eq!(
            f.outputs,
            [
                "maps/a_b.map",
                "maps/summary_0000-0000.out",
                "register[0].out",
                "register[0].err"
            ]
        );
        assert!(same_inputs(&old, &new, &f.inputs));
        // the pair b-c reads c, which changed
        let g = files(&new, "register[1]", part(1, 1), (&outputs, None), &[]);
        assert!(!same_inputs(&old, &new, &g.inputs));
        std::fs::create_dir_all(old.join("maps")).unwrap();
        std::fs::write(old.join("maps/a_b.map"), "map").unwrap();
        assert_eq!(link_outputs(&old, &new, &f.outputs).unwrap(), 1);
        assert_eq!(std::fs::read(new.join("maps/a_b.map")).unwrap(), b"map");
    }

    #[test]
    fn inputs_are_the_same_when_linked_or_byte_identical_and_not_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = (tmp.path().join("v1"), tmp.path().join("v2"));
        for d in [&old, &new] {
            std::fs::create_dir_all(d.join("cmaps")).unwrap();
        }
        std::fs::write(old.join("cmaps/a.map"), b"map bytes").unwrap();
        std::fs::hard_link(old.join("cmaps/a.map"), new.join("cmaps/a.map")).unwrap();
        assert!(same_file(
            &old.join("cmaps/a.map"),
            &new.join("cmaps/a.map")
        ));
        std::fs::write(old.join("cmaps/b.map"), b"same").unwrap();
        std::fs::write(new.join("cmaps/b.map"), b"same").unwrap();
        let inputs = ["cmaps/a.map".to_string(), "cmaps/b.map".to_string()];
        assert!(same_inputs(&old, &new, &inputs));
        std::fs::write(new.join("cmaps/b.map"), b"other").unwrap();
        assert!(!same_inputs(&old, &new, &inputs));
        assert!(!same_inputs(&old, &new, &["cmaps/none.map".to_string()]));
    }
}
