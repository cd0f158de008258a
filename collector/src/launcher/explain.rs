//! What explains a failed run, from its stderr file.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Whether a stderr line is part of a crash report (OpenMPI's backtrace, glibc's abort
/// banner) rather than the tool saying what went wrong.
fn is_backtrace(line: &str) -> bool {
    let t = line.trim();
    t.is_empty()
        || t.starts_with("***")
        || (t.starts_with('[')
            && t.contains("] ")
            && (t.contains("] [")
                || t.contains("***")
                || t.contains("Signal")
                || t.contains("Failing at")))
}

/// What explains a failed run, from its stderr file: the first lines that are not a
/// backtrace (a tool says why before it aborts), then the last lines, then where all of it
/// is. Reads at most 16 KiB from each end, whatever the file's size.
pub fn explain(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return String::new();
    }
    let mut head = String::new();
    let _ = (&mut f).take(16 << 10).read_to_string(&mut head);
    let mut tail = String::new();
    if len > 16 << 10 {
        let _ = f.seek(SeekFrom::Start(len - (16 << 10)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        tail = String::from_utf8_lossy(&buf).into_owned();
    } else {
        tail.clone_from(&head);
    }
    let first: Vec<&str> = head
        .lines()
        .filter(|l| !is_backtrace(l))
        .map(str::trim)
        .take(3)
        .collect();
    let last: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !first.contains(l))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let mut out = first.join(" | ");
    if !last.is_empty() {
        if !out.is_empty() {
            out.push_str(" … ");
        }
        out.push_str(&last.join(" | "));
    }
    format!("{out} (all of it in {})", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_explained_by_its_first_words_not_its_backtrace() {
        let d = tempfile::tempdir().unwrap();
        let err = d.path().join("find_rst.err");
        // what the real find_rst writes on a 16-bit section, recorded here
        std::fs::write(
            &err,
            "Either undefined or unsupported number of bits per sample (bps = 16) in tiff image images/a.tif\n\
             [vm:13215] *** Process received signal ***\n\
             [vm:13215] Signal: Aborted (6)\n\
             [vm:13215] Signal code:  (-6)\n\
             [vm:13215] [ 0] /lib/x86_64-linux-gnu/libc.so.6(+0x3c050)[0x7f5c9d439050]\n\
             [vm:13215] [12] /tmp/aligntk-1.0.2/bin/find_rst(+0x3761)[0x5648a92d6761]\n\
             [vm:13215] *** End of error message ***\n",
        )
        .unwrap();
        let e = explain(&err);
        assert!(
            e.starts_with("Either undefined or unsupported number of bits per sample (bps = 16)"),
            "{e}"
        );
        assert!(
            e.ends_with(&format!("(all of it in {})", err.display())),
            "{e}"
        );
        assert!(explain(&d.path().join("none.err")).is_empty());
    }
}
