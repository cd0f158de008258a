//! The work folder of a stack version, as AlignTK expects it, and the check of its summaries.
//!
//! Preparation does what the original Python did before each run: link `images/` to the
//! received stack, create `cmaps maps amaps grids aligned` (find_rst test-writes into
//! `cmaps/` and aborts without it), write `images.lst`, `pairs.lst` and align's
//! `schedule.lst`. AlignTK exits 0 on a blank or featureless section; only its summaries
//! show it (a `nan` quality, a `-1000000` correlation), so a zero exit is checked there.

use std::path::Path;

/// What preparing a work folder learned, for command placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// `WIDTHxHEIGHT` of the first image (align's `-grid_size`).
    pub grid_size: String,
    /// Number of images.
    pub images: usize,
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Image file names (sorted) in a received stack folder.
pub fn image_names(stack_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(stack_dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| {
            !n.starts_with('.')
                && (n.ends_with(".tif") || n.ends_with(".tiff") || n.ends_with(".TIF"))
        })
        .collect();
    v.sort();
    Ok(v)
}

fn stem(n: &str) -> &str {
    n.rsplit_once('.').map(|(s, _)| s).unwrap_or(n)
}

/// Prepares `work_dir` for the images in `stack_dir`. Safe to repeat.
pub fn prepare(work_dir: &Path, stack_dir: &Path, schedule: &str) -> Result<Prepared, String> {
    let io =
        |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
    std::fs::create_dir_all(work_dir).map_err(|e| io("create", work_dir, e))?;
    let link = work_dir.join("images");
    match std::fs::read_link(&link) {
        Ok(t) if t == stack_dir => {}
        _ => {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(stack_dir, &link).map_err(|e| io("link", &link, e))?;
        }
    }
    for d in ["cmaps", "maps", "amaps", "grids", "aligned"] {
        std::fs::create_dir_all(work_dir.join(d))
            .map_err(|e| io("create", &work_dir.join(d), e))?;
    }
    let names = image_names(stack_dir).map_err(|e| io("list", stack_dir, e))?;
    if names.len() < 2 {
        return Err(format!(
            "{} holds {} image(s); alignment needs at least 2",
            stack_dir.display(),
            names.len()
        ));
    }
    let stems: Vec<&str> = names.iter().map(|n| stem(n)).collect();
    let mut images = stems.join("\n");
    images.push('\n');
    let pairs: String = stems
        .windows(2)
        .map(|w| format!("{} {} {}_{}\n", w[0], w[1], w[0], w[1]))
        .collect();
    write_atomic(&work_dir.join("images.lst"), &images)
        .map_err(|e| io("write", &work_dir.join("images.lst"), e))?;
    write_atomic(&work_dir.join("pairs.lst"), &pairs)
        .map_err(|e| io("write", &work_dir.join("pairs.lst"), e))?;
    write_atomic(&work_dir.join("schedule.lst"), schedule)
        .map_err(|e| io("write", &work_dir.join("schedule.lst"), e))?;
    let first = stack_dir.join(&names[0]);
    let (w, h) = crate::qa::dimensions(&first).map_err(|e| format!("{}: {e}", names[0]))?;
    Ok(Prepared {
        grid_size: format!("{w}x{h}"),
        images: names.len(),
    })
}

/// Checks an AlignTK summary: every pair must have a real quality and correlation.
pub fn check_summary(work_dir: &Path, rel: &str) -> Result<(), String> {
    let path = work_dir.join(rel);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!("{rel} is missing or unreadable ({e}); the step did not finish every pair")
    })?;
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let fault = toks.iter().find(|t| {
            let l = t.to_ascii_lowercase();
            l == "nan" || l == "-nan" || t.parse::<f64>().is_ok_and(|v| v == -1_000_000.0)
        });
        if let Some(f) = fault {
            let pair = toks
                .iter()
                .find(|t| t.contains('_') && t.parse::<f64>().is_err())
                .copied()
                .unwrap_or(toks[0]);
            bad.push(format!(
                "pair {pair} has {} ({rel} line {})",
                if f.to_ascii_lowercase().contains("nan") {
                    "quality nan"
                } else {
                    "correlation -1000000"
                },
                i + 1
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("blank or featureless section: {}", bad.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_with_nan_or_sentinel_name_the_pair() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("cmaps")).unwrap();
        std::fs::write(
            d.path().join("cmaps/summary.out"),
            "S_0000_S_0001 QUALITY 0.93\nS_0001_S_0002 QUALITY nan\n",
        )
        .unwrap();
        let e = check_summary(d.path(), "cmaps/summary.out").unwrap_err();
        assert!(
            e.contains("pair S_0001_S_0002 has quality nan (cmaps/summary.out line 2)"),
            "{e}"
        );
        std::fs::write(
            d.path().join("cmaps/summary.out"),
            "S_0000_S_0001 CORRELATION -1000000\n",
        )
        .unwrap();
        assert!(check_summary(d.path(), "cmaps/summary.out")
            .unwrap_err()
            .contains("correlation -1000000"));
        std::fs::write(
            d.path().join("cmaps/summary.out"),
            "S_0000_S_0001 QUALITY 0.9 CORRELATION 0.87\n",
        )
        .unwrap();
        check_summary(d.path(), "cmaps/summary.out").unwrap();
        assert!(check_summary(d.path(), "maps/summary.out")
            .unwrap_err()
            .contains("missing"));
    }
}
