//! Sections and the names AlignTK reads them by.
//!
//! A beamline may name a section anything; AlignTK splits its lists on whitespace, takes a
//! leading `-` for an option and reads `<name>.tif`. Every section therefore has two names:
//! the received one, byte for byte, and the one AlignTK sees, which is its own stem where
//! AlignTK can take it and a safe alias (`section0003`) otherwise. `names.tsv` in each work
//! folder records the pairs, so that checks and outputs can speak of the received names.

use std::collections::HashSet;
use std::path::Path;

/// One section as AlignTK sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The received file's name, byte for byte.
    pub original: String,
    /// The stem AlignTK reads it by (`images/<aligntk>.tif`, lines of `images.lst`).
    pub aligntk: String,
}

/// The file mapping AlignTK names back to the received ones.
pub const NAMES_FILE: &str = "names.tsv";

/// Whether a file name is a section image.
pub fn is_image(n: &str) -> bool {
    !n.starts_with('.') && (n.ends_with(".tif") || n.ends_with(".tiff") || n.ends_with(".TIF"))
}

/// Image file names (sorted byte-wise) in a received stack folder. Names that are not UTF-8
/// never arrive: the link carries UTF-8 paths only.
pub fn image_names(stack_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(stack_dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| is_image(n))
        .collect();
    v.sort();
    Ok(v)
}

/// The name without its extension.
pub fn stem(n: &str) -> &str {
    n.rsplit_once('.').map(|(s, _)| s).unwrap_or(n)
}

/// Whether AlignTK can take `stem` as it is: a word of plain characters that no list parser
/// splits and no option parser takes for a flag.
fn aligntk_can_take(stem: &str) -> bool {
    !stem.is_empty()
        && stem.len() <= 200
        && !stem.starts_with(['-', '.'])
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.+".contains(c))
}

/// Names every section for AlignTK: its own stem where AlignTK can take it and no other
/// section has it, otherwise an alias no other section uses.
pub fn aligntk_names(originals: &[String]) -> Vec<Section> {
    let stems: Vec<&str> = originals.iter().map(|n| stem(n)).collect();
    let mut count = std::collections::HashMap::new();
    for s in &stems {
        *count.entry(*s).or_insert(0) += 1;
    }
    let keep = |s: &str| aligntk_can_take(s) && count[s] == 1;
    let mut taken: HashSet<String> = stems
        .iter()
        .filter(|s| keep(s))
        .map(|s| s.to_string())
        .collect();
    originals
        .iter()
        .zip(&stems)
        .enumerate()
        .map(|(i, (orig, st))| {
            let aligntk = if keep(st) {
                st.to_string()
            } else {
                let mut alias = format!("section{i:04}");
                let mut n = 0;
                while taken.contains(&alias) {
                    n += 1;
                    alias = format!("section{i:04}_{n}");
                }
                taken.insert(alias.clone());
                alias
            };
            Section {
                original: orig.clone(),
                aligntk,
            }
        })
        .collect()
}

/// A field of `names.tsv`: tabs, newlines and backslashes escaped so that any name fits one
/// field.
/// One line of `names.tsv` for a section.
pub fn table_row(s: &Section) -> String {
    format!("{}\t{}\n", escape(&s.aligntk), escape(&s.original))
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

/// The received name of the section AlignTK knows as `aligntk` (itself if none is known).
pub fn received<'a>(sections: &'a [Section], aligntk: &'a str) -> &'a str {
    sections
        .iter()
        .find(|s| s.aligntk == aligntk)
        .map(|s| s.original.as_str())
        .unwrap_or(aligntk)
}

/// Reads `names.tsv`: the sections in order.
pub fn read_names(path: &Path) -> std::io::Result<Vec<Section>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, o)| Section {
            aligntk: unescape(a),
            original: unescape(o),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_aligntk_cannot_take_get_aliases_and_plain_ones_stay() {
        let got = aligntk_names(&v(&[
            "-x0.tif",
            "S_0001.tif",
            "a b.tif",
            "dup.tif",
            "dup.tiff",
            "section0005.tif",
            "$(id>PWNED).tif",
        ]));
        let names: Vec<&str> = got.iter().map(|s| s.aligntk.as_str()).collect();
        assert_eq!(
            names,
            [
                "section0000",
                "S_0001",
                "section0002",
                "section0003",
                "section0004",
                "section0005",
                "section0006"
            ]
        );
        let unique: HashSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        // an alias that a real name already holds moves aside
        let got = aligntk_names(&v(&["a b.tif", "section0000.tif"]));
        assert_eq!(got[0].aligntk, "section0000_1");
        assert_eq!(got[1].aligntk, "section0000");
    }

    #[test]
    fn the_table_round_trips_any_name() {
        let d = tempfile::tempdir().unwrap();
        let secs = aligntk_names(&v(&["a\tb\\c\nd\re.tif", "plain.tif"]));
        let mut text = String::from("aligntk\toriginal\n");
        for s in &secs {
            text.push_str(&table_row(s));
        }
        std::fs::write(d.path().join(NAMES_FILE), text).unwrap();
        assert_eq!(read_names(&d.path().join(NAMES_FILE)).unwrap(), secs);
    }
}
