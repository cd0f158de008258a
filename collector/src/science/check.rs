//! Every step's result checked after it exits 0.
//!
//! AlignTK exits 0 on a blank or featureless section (only its summaries show it: a `nan`
//! quality, a `-1000000` correlation), and align can exit 0 having written no maps at all
//! (only `grids/fold*.pnm`). So a zero exit counts only once the step's summary reads clean
//! and the outputs it declares are there: `outputs` (per pair with `{pair}`, per section
//! with `{image}`) and none of `absent`. Sections are named as the beamline sent them,
//! through `names.tsv`.

use super::names::{read_names, received, Section, NAMES_FILE};
use std::collections::BTreeMap;
use std::path::Path;

pub(super) fn sections(work_dir: &Path) -> Vec<Section> {
    read_names(&work_dir.join(NAMES_FILE)).unwrap_or_default()
}

/// Checks an AlignTK summary table (`cmaps/summary.out`, `maps/summary.out`): every pair
/// must have a real quality and correlation. The table is printed twice (by slice, then by
/// quality or energy) and names both images of a row as separate words; each bad pair is
/// named once, by both sections.
///
/// Who is to blame is read from `qa`'s own measures (`qa.json`, or the section measured now
/// as qa would, for a workflow without the qa step), never guessed from the table alone: a
/// section is called blank or featureless only when those measures say so. When both
/// sections of a bad pair have texture, the tool could not match them (find_rst does so by
/// numerical accident: see `docs/concepts.md`), and the message says that, with what to try.
pub fn summary(work_dir: &Path, rel: &str, step: &str) -> Result<(), CheckError> {
    let text =
        std::fs::read_to_string(work_dir.join(rel)).map_err(|source| CheckError::Summary {
            rel: rel.to_string(),
            source,
        })?;
    let secs = sections(work_dir);
    let bad = bad_pairs(&text, &secs);
    if bad.is_empty() {
        return Ok(());
    }
    let name = |a: &str| received(&secs, a).to_string();
    let qa = read_qa(work_dir).unwrap_or_default();
    // qa's measures of every section of a bad pair: its report, else measured now as qa
    // would (a workflow without the qa step), each once; `None` when unreadable
    let mut measured: BTreeMap<&str, Option<super::qa::Section>> = BTreeMap::new();
    for (a, b, _) in &bad {
        for s in [a.as_str(), b.as_str()] {
            measured.entry(s).or_insert_with(|| {
                qa.get(&name(s)).cloned().or_else(|| {
                    super::qa::measure(&work_dir.join("images").join(format!("{s}.tif"))).ok()
                })
            });
        }
    }
    let measures = |aligntk: &str| measured.get(aligntk).cloned().flatten();
    // sections qa measured as lacking texture, in the order the table names them
    let mut flat: Vec<(String, String)> = Vec::new();
    for (a, b, _) in &bad {
        for s in [a, b] {
            if let Some(why) = measures(s).as_ref().and_then(super::qa::featureless) {
                if !flat.iter().any(|(n, _)| *n == name(s)) {
                    flat.push((name(s), why));
                }
            }
        }
    }
    let pairs: Vec<String> = bad
        .iter()
        .map(|(a, b, f)| format!("{} and {} have {f}", name(a), name(b)))
        .collect();
    if !flat.is_empty() {
        let who: Vec<String> = flat.iter().map(|(n, w)| format!("{n} ({w})")).collect();
        return Err(CheckError::Featureless {
            who,
            pairs,
            rel: rel.to_string(),
        });
    }
    let texture = |s: &str| match measures(s) {
        Some(q) => format!("{} standard deviation {:.1}", name(s), q.std),
        None => format!("{} unreadable", name(s)),
    };
    let each: Vec<String> = bad
        .iter()
        .map(|(a, b, f)| {
            format!(
                "{step} could not match {} to {} ({f}); both sections have texture: {}, {}",
                name(a),
                name(b),
                texture(a),
                texture(b)
            )
        })
        .collect();
    Err(CheckError::Unmatched {
        each,
        rel: rel.to_string(),
    })
}

/// The pairs of a summary table whose row holds a failure (a `nan` quality or a
/// `-1000000` correlation), each named once; rows of other sections (a heading, a blank
/// line, names the work folder does not know) are skipped.
fn bad_pairs(text: &str, secs: &[Section]) -> Vec<(String, String, &'static str)> {
    let known = |t: &str| secs.is_empty() || secs.iter().any(|s| s.aligntk == t);
    let mut bad: Vec<(String, String, &'static str)> = Vec::new();
    for line in text.lines() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.len() < 3 || toks[0].parse::<f64>().is_ok() || toks[1].parse::<f64>().is_ok() {
            continue; // a heading, a blank line
        }
        if !(known(toks[0]) && known(toks[1])) {
            continue;
        }
        let fault = toks[2..].iter().find_map(|t| {
            let l = t.to_ascii_lowercase();
            if l == "nan" || l == "-nan" {
                Some("quality nan")
            } else if t.parse::<f64>().is_ok_and(|v| v == -1_000_000.0) {
                Some("correlation -1000000")
            } else {
                None
            }
        });
        if let Some(f) = fault {
            let pair = (toks[0].to_string(), toks[1].to_string(), f);
            if !bad.contains(&pair) {
                bad.push(pair);
            }
        }
    }
    bad
}

/// qa's measures of the sections (`qa.json`), by the name the beamline sent them under.
fn read_qa(work_dir: &Path) -> Option<BTreeMap<String, super::qa::Section>> {
    let text = std::fs::read_to_string(work_dir.join(super::qa::QA_FILE)).ok()?;
    let report: super::qa::Report = serde_json::from_str(&text).ok()?;
    Some(
        report
            .sections
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect(),
    )
}

/// The pairs of `pairs.lst` (`A B A_B` per line): their names.
pub(super) fn pairs(work_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(work_dir.join("pairs.lst"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect()
}

/// Checks a step's declared outputs: each of `outputs` must exist (expanded per pair for
/// `{pair}` and per section for `{image}`), none of `absent` (globs) may. A miss names what
/// is missing and for which sections.
pub fn outputs(
    work_dir: &Path,
    outputs: &[String],
    absent: &[String],
    part: Option<super::dag::Part>,
) -> Result<(), CheckError> {
    if outputs.is_empty() && absent.is_empty() {
        return Ok(()); // nothing declared: no lists to read
    }
    let secs = sections(work_dir);
    let mut pair_names = pairs(work_dir);
    // a fanned-out job answers for its own pairs and sections only
    let mine: Vec<Section> = match part {
        Some(p) => {
            pair_names = (pair_names.into_iter().enumerate())
                .filter(|(i, _)| p.pairs().contains(i))
                .map(|(_, n)| n)
                .collect();
            (secs.iter().enumerate())
                .filter(|(i, _)| p.sections().contains(i))
                .map(|(_, s)| s.clone())
                .collect()
        }
        None => secs.clone(),
    };
    let mut missing = Vec::new();
    for pattern in outputs {
        let expanded: Vec<(String, String)> = if pattern.contains("{pair}") {
            pair_names
                .iter()
                .map(|p| {
                    let who = p
                        .split_once('_')
                        .map(|_| {
                            let (a, b) = split_pair(p, &secs);
                            format!("{} and {}", received(&secs, &a), received(&secs, &b))
                        })
                        .unwrap_or_else(|| p.clone());
                    (pattern.replace("{pair}", p), who)
                })
                .collect()
        } else if pattern.contains("{image}") {
            mine.iter()
                .map(|s| (pattern.replace("{image}", &s.aligntk), s.original.clone()))
                .collect()
        } else {
            vec![(pattern.clone(), String::new())]
        };
        for (rel, who) in expanded {
            if !work_dir.join(&rel).exists() {
                missing.push(if who.is_empty() {
                    rel
                } else {
                    format!("{rel} (for {who})")
                });
            }
        }
    }
    let mut present = Vec::new();
    for pattern in absent {
        let full = work_dir.join(pattern).display().to_string();
        for p in glob::glob(&full).into_iter().flatten().flatten() {
            if let Ok(rel) = p.strip_prefix(work_dir) {
                present.push(rel.display().to_string());
            }
        }
    }
    if missing.is_empty() && present.is_empty() {
        Ok(())
    } else {
        Err(CheckError::Outputs { missing, present })
    }
}

/// Why a step that exited 0 is not done: its own summary or outputs say it failed. The data,
/// not the run, is at fault, so these are held for a person rather than retried.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The summary the step declares was not written.
    #[error("{rel} is missing or unreadable ({source}); the step did not finish every pair")]
    Summary {
        /// The summary, relative to the work folder.
        rel: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// qa measured sections of failed pairs as lacking texture.
    #[error(
        "{} {} blank or featureless by qa's measures: {} ({rel}); replace or leave out the \
         section and resubmit",
        who.join(", "),
        if who.len() == 1 { "is" } else { "are" },
        pairs.join("; ")
    )]
    Featureless {
        /// Each such section, with qa's measure.
        who: Vec<String>,
        /// Each failed pair.
        pairs: Vec<String>,
        /// The summary.
        rel: String,
    },
    /// Pairs of textured sections the tool could not match.
    #[error(
        "{} ({rel}); the same bytes fail the same way, so a retry will not help: try another \
         8-bit window (the workflow's `to_8bit`) or resubmit without one of the two",
        each.join("; ")
    )]
    Unmatched {
        /// Each pair, with both sections' texture.
        each: Vec<String>,
        /// The summary.
        rel: String,
    },
    /// Declared outputs missing, or failure-only outputs present.
    #[error("the step exited 0 but {}", outputs_why(missing, present))]
    Outputs {
        /// What is missing, with the sections it is for.
        missing: Vec<String>,
        /// What is there that only a failure writes.
        present: Vec<String>,
    },
    /// An output could not be given its received name.
    #[error(transparent)]
    NameBack(#[from] super::prepare::PrepareError),
}

fn outputs_why(missing: &[String], present: &[String]) -> String {
    let mut why = Vec::new();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        why.push(format!(
            "{} of its outputs are missing: {}{}",
            missing.len(),
            shown.join(", "),
            if missing.len() > 5 { ", …" } else { "" }
        ));
    }
    if !present.is_empty() {
        why.push(format!(
            "it left {} (written only when it fails)",
            present.join(", ")
        ));
    }
    why.join("; ")
}

/// Splits a pair name `A_B` into its sections: names may hold `_` themselves, so the split
/// is the one whose both halves are sections.
fn split_pair(p: &str, secs: &[Section]) -> (String, String) {
    for (i, _) in p.match_indices('_') {
        let (a, b) = (&p[..i], &p[i + 1..]);
        if secs.iter().any(|s| s.aligntk == a) && secs.iter().any(|s| s.aligntk == b) {
            return (a.to_string(), b.to_string());
        }
    }
    let (a, b) = p.split_once('_').unwrap_or((p, ""));
    (a.to_string(), b.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(names: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let mut t = String::from("aligntk\toriginal\n");
        for (a, o) in names {
            t.push_str(&format!("{a}\t{o}\n"));
        }
        std::fs::write(d.path().join(NAMES_FILE), t).unwrap();
        let pairs: String = names
            .windows(2)
            .map(|w| format!("{0} {1} {0}_{1}\n", w[0].0, w[1].0))
            .collect();
        std::fs::write(d.path().join("pairs.lst"), pairs).unwrap();
        d
    }

    /// The real find_rst's table (recorded from AlignTK 1.0.2), with S_0002 blank.
    const FIND_RST: &str = "Sorted by slice:
         SOURCE  TARGET   QUALITY     ROTATION    SCALE       TX          TY
S_0000  S_0001      0.601787      0.000000      1.000000      0.000000      0.000000
S_0001  S_0002      nan      0.000000      1.000000      0.000000      0.000000
S_0002  S_0003      nan      0.000000      1.000000      0.000000      0.000000


Sorted by quality:
         SOURCE  TARGET   QUALITY     ROTATION    SCALE       TX          TY
S_0001  S_0002      nan      0.000000      1.000000      0.000000      0.000000
S_0002  S_0003      nan      0.000000      1.000000      0.000000      0.000000
S_0000  S_0001      0.601787      0.000000      1.000000      0.000000      0.000000
";

    /// qa's report for these sections: (received name, standard deviation, every pixel one value).
    fn qa_json(dir: &Path, sections: &[(&str, f64, bool)]) {
        let sections: Vec<_> = sections
            .iter()
            .map(|(n, std, flat)| super::super::qa::Section {
                name: n.to_string(),
                width: 64,
                height: 64,
                bits: 8,
                min: if *flat { 7.0 } else { 0.0 },
                max: if *flat { 7.0 } else { 255.0 },
                mean: 100.0,
                std: *std,
                saturated: 0.0,
                received: None,
                conversion: None,
            })
            .collect();
        let r = super::super::qa::Report {
            sections,
            bad: vec![],
        };
        std::fs::write(
            dir.join(super::super::qa::QA_FILE),
            serde_json::to_string(&r).unwrap(),
        )
        .unwrap();
    }

    fn four() -> tempfile::TempDir {
        work(&[
            ("S_0000", "S_0000.tif"),
            ("S_0001", "S_0001.tif"),
            ("S_0002", "S_0002.tif"),
            ("S_0003", "S_0003.tif"),
        ])
    }

    #[test]
    fn a_section_qa_measured_blank_is_named_as_the_culprit_of_each_bad_pair() {
        let d = four();
        std::fs::create_dir_all(d.path().join("cmaps")).unwrap();
        std::fs::write(d.path().join("cmaps/summary.out"), FIND_RST).unwrap();
        qa_json(
            d.path(),
            &[
                ("S_0000.tif", 40.0, false),
                ("S_0001.tif", 41.0, false),
                ("S_0002.tif", 0.0, true),
                ("S_0003.tif", 39.0, false),
            ],
        );
        let e = summary(d.path(), "cmaps/summary.out", "find_rst")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "S_0002.tif (every pixel is 7) is blank or featureless by qa's measures: "
            ),
            "{e}"
        );
        assert_eq!(e.matches("have quality nan").count(), 2, "{e}");
        assert!(
            e.contains("S_0001.tif and S_0002.tif have quality nan"),
            "{e}"
        );
        let clean = FIND_RST.replace("nan", "0.5");
        std::fs::write(d.path().join("cmaps/summary.out"), clean).unwrap();
        summary(d.path(), "cmaps/summary.out", "find_rst").unwrap();
        assert!(summary(d.path(), "maps/summary.out", "register")
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }

    /// The pair that failed the default demo: both sections textured, find_rst's `nan` anyway.
    #[test]
    fn a_pair_find_rst_cannot_match_between_textured_sections_is_never_called_blank() {
        let d = four();
        std::fs::create_dir_all(d.path().join("cmaps")).unwrap();
        let one_bad = FIND_RST
            .replacen("nan", "0.92", 1)
            .replace("S_0002  S_0003      nan", "S_0002  S_0003      0.93");
        let one_bad = one_bad.replace("S_0001  S_0002      0.92", "S_0001  S_0002      nan");
        std::fs::write(d.path().join("cmaps/summary.out"), &one_bad).unwrap();
        qa_json(
            d.path(),
            &[
                ("S_0000.tif", 40.0, false),
                ("S_0001.tif", 40.02, false),
                ("S_0002.tif", 39.96, false),
                ("S_0003.tif", 40.0, false),
            ],
        );
        let e = summary(d.path(), "cmaps/summary.out", "find_rst")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("find_rst could not match S_0001.tif to S_0002.tif (quality nan); both sections have texture: S_0001.tif standard deviation 40.0, S_0002.tif standard deviation 40.0 (cmaps/summary.out); "),
            "{e}"
        );
        assert!(!e.contains("blank"), "{e}");
        assert!(e.contains("to_8bit"), "{e}");
    }

    /// A workflow without the qa step: the sections are measured as qa would, from the images.
    #[test]
    fn without_qa_json_the_sections_are_measured_from_the_images() {
        let d = four();
        std::fs::create_dir_all(d.path().join("cmaps")).unwrap();
        std::fs::create_dir_all(d.path().join("images")).unwrap();
        std::fs::write(d.path().join("cmaps/summary.out"), FIND_RST).unwrap();
        for i in 0..4u32 {
            let mut e = tiff::encoder::TiffEncoder::new(
                std::fs::File::create(d.path().join(format!("images/S_{i:04}.tif"))).unwrap(),
            )
            .unwrap();
            let px: Vec<u8> = (0..32 * 32u32)
                .map(|p| if i == 2 { 9 } else { (p * 37 % 251) as u8 })
                .collect();
            e.write_image::<tiff::encoder::colortype::Gray8>(32, 32, &px)
                .unwrap();
        }
        let e = summary(d.path(), "cmaps/summary.out", "find_rst")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("S_0002.tif (every pixel is 9) is blank or featureless"),
            "{e}"
        );
    }

    #[test]
    fn a_register_table_with_the_sentinel_names_the_sections_by_their_received_names() {
        let d = work(&[("section0000", "-x.tif"), ("S_0001", "S_0001.tif")]);
        std::fs::create_dir_all(d.path().join("maps")).unwrap();
        std::fs::write(
            d.path().join("maps/summary.out"),
            "Sorted by slice:\nIMAGE    REFERENCE  CORRELATION   DISTORTION\nsection0000   S_0001  -1000000.000000  0.0\n\n\nSorted by energy:\nIMAGE    REFERENCE  CORRELATION   DISTORTION\nsection0000   S_0001  -1000000.000000  0.0\n",
        )
        .unwrap();
        qa_json(
            d.path(),
            &[("-x.tif", 0.3, false), ("S_0001.tif", 30.0, false)],
        );
        let e = summary(d.path(), "maps/summary.out", "register")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("-x.tif (standard deviation 0.30 of 255) is blank or featureless by qa's measures: -x.tif and S_0001.tif have correlation -1000000"),
            "{e}"
        );
    }

    #[test]
    fn missing_outputs_and_failure_leftovers_are_named() {
        let d = work(&[("a", "a.tif"), ("b_c", "b c.tif"), ("d", "d.tif")]);
        std::fs::create_dir_all(d.path().join("amaps")).unwrap();
        std::fs::create_dir_all(d.path().join("grids")).unwrap();
        std::fs::create_dir_all(d.path().join("maps")).unwrap();
        std::fs::write(d.path().join("amaps/a.map"), "M1").unwrap();
        std::fs::write(d.path().join("grids/fold0.pnm"), "P5").unwrap();
        std::fs::write(d.path().join("maps/a_b_c.map"), "M1").unwrap();
        let e = outputs(
            d.path(),
            &["amaps/{image}.map".into()],
            &["grids/fold*.pnm".into()],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("2 of its outputs are missing"), "{e}");
        assert!(e.contains("amaps/b_c.map (for b c.tif)"), "{e}");
        assert!(e.contains("grids/fold0.pnm"), "{e}");
        let e = outputs(d.path(), &["maps/{pair}.map".into()], &[], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("maps/b_c_d.map (for b c.tif and d.tif)"), "{e}");
        std::fs::write(d.path().join("maps/b_c_d.map"), "M1").unwrap();
        outputs(d.path(), &["maps/{pair}.map".into()], &[], None).unwrap();
    }
}
