//! Looking at folders: which ones are stacks, which files in them are images.
//!
//! Used at start (reconcile before trusting events), for every folder an event names, after
//! an event-queue overflow, on the slow rescan timer, and in poll mode. Symlinks are followed
//! only while they stay inside the watch root; one that leads out is reported and skipped.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;
use walkdir::WalkDir;

/// One image as seen on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSeen {
    /// File name within the stack folder.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

/// What one folder holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirScan {
    /// Images, sorted by name.
    pub images: Vec<FileSeen>,
    /// The marker file is present.
    pub marker: bool,
    /// Files that match but cannot be used: (name, why).
    pub skipped: Vec<(String, String)>,
    /// The newest change of any image, nanoseconds since the epoch: the later of its mtime and
    /// ctime. ctime cannot be set back (as `rsync -a` or `cp -p` set mtimes back), so a stack
    /// copied in a moment ago never looks old.
    pub changed_ns: i64,
}

/// Names that writers use while a file is incomplete: never images.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".part") || name.ends_with(".tmp")
}

/// Lists one folder. `canon_root` is the canonical watch root (for the symlink rule).
pub fn scan_dir(
    canon_root: &Path,
    dir: &Path,
    pattern: &glob::Pattern,
    marker: Option<&str>,
) -> std::io::Result<DirScan> {
    let mut out = DirScan::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let raw = entry.file_name();
        let Some(name) = raw.to_str() else {
            if pattern.matches(&raw.to_string_lossy()) {
                out.skipped.push((
                    escaped(&raw),
                    "file name is not valid UTF-8 (shown with \\xNN for its bytes); rename it"
                        .into(),
                ));
            }
            continue;
        };
        if marker == Some(name) {
            out.marker = true;
            continue;
        }
        if is_temp_name(name) || !pattern.matches(name) {
            continue;
        }
        let path = entry.path();
        let lmeta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => continue, // vanished between listing and looking: the next scan sees the truth
        };
        if lmeta.file_type().is_symlink() {
            match path.canonicalize() {
                Ok(t) if t.starts_with(canon_root) => {}
                Ok(t) => {
                    out.skipped.push((
                        name.into(),
                        format!(
                            "symlink leads out of the watch root (to {}); not followed",
                            t.display()
                        ),
                    ));
                    continue;
                }
                Err(e) => {
                    out.skipped
                        .push((name.into(), format!("broken symlink: {e}")));
                    continue;
                }
            }
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        use std::os::unix::fs::MetadataExt;
        let ctime_ns = meta
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.ctime_nsec());
        out.changed_ns = out.changed_ns.max(mtime_ns).max(ctime_ns);
        out.images.push(FileSeen {
            name: name.into(),
            size: meta.len(),
            mtime_ns,
        });
    }
    out.images.sort_by(|a, b| a.name.cmp(&b.name));
    out.skipped.sort();
    Ok(out)
}

/// A name that may not be UTF-8, written so that a person can read it and no two names look
/// the same: valid UTF-8 as it is (control characters and the backslash escaped), every other
/// byte as `\xNN`. `run\xe4` and `run\xf6` stay two names; a folder literally named `run\xe4`
/// shows as `run\\xe4`.
pub fn escaped(name: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&c.escape_default().to_string()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// What a walk of a watch root found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Folders that hold at least one matching file (the root itself included).
    pub stacks: Vec<PathBuf>,
    /// Symlinks to folders that hold matching files: not followed (one could lead anywhere,
    /// or loop), and reported so that nobody waits for them in silence.
    pub symlinked: Vec<PathBuf>,
    /// Folders of images whose path below the root is not UTF-8: they cannot be named at the
    /// collector (its names, the wire and the journal are UTF-8), so they are held with the
    /// reason, never sent under a name another folder may share.
    pub unnamed: Vec<PathBuf>,
}

/// Whether `dir` holds a file that matches (a name that is not UTF-8 counts, so that a
/// folder of only such files is held with their names rather than overlooked).
pub fn holds_images(dir: &Path, pattern: &glob::Pattern) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok).any(|f| {
                let n = f.file_name();
                let n = n.to_string_lossy();
                !is_temp_name(&n) && pattern.matches(&n)
            })
        })
        .unwrap_or(false)
}

/// Every folder under `root` (itself included) that holds at least one matching file.
/// Symlinked folders are not descended into; those that hold images are listed apart.
pub fn stack_dirs(root: &Path, pattern: &glob::Pattern) -> Found {
    let mut out = Found::default();
    for e in WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
    {
        if e.depth() > 0
            && e.path_is_symlink()
            && !e.file_name().to_str().is_some_and(is_temp_name)
            && std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir())
            && holds_images(e.path(), pattern)
        {
            out.symlinked.push(e.into_path());
            continue;
        }
        if !e.file_type().is_dir() {
            continue;
        }
        if e.depth() > 0 && e.file_name().to_str().is_some_and(is_temp_name) {
            continue;
        }
        if holds_images(e.path(), pattern) {
            if e.path().to_str().is_some() {
                out.stacks.push(e.into_path());
            } else {
                out.unnamed.push(e.into_path());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_temp_names_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let s = root.join("stack one");
        std::fs::create_dir_all(&s).unwrap();
        std::fs::write(s.join("S_0001.tif"), b"x").unwrap();
        std::fs::write(s.join("Séction ä.tif"), b"y").unwrap();
        std::fs::write(s.join(".hidden.tif"), b"z").unwrap();
        std::fs::write(s.join("S_0002.tif.part"), b"z").unwrap();
        std::fs::write(s.join("notes.txt"), b"z").unwrap();
        std::fs::write(s.join("DONE"), b"").unwrap();
        std::fs::write(d.path().join("outside.tif"), b"secret").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside.tif"), s.join("S_0003.tif")).unwrap();
        std::os::unix::fs::symlink(s.join("S_0001.tif"), s.join("S_0004.tif")).unwrap();
        let pat = glob::Pattern::new("*.tif").unwrap();
        let canon = root.canonicalize().unwrap();
        let scan = scan_dir(&canon, &s, &pat, Some("DONE")).unwrap();
        let names: Vec<_> = scan.images.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["S_0001.tif", "S_0004.tif", "Séction ä.tif"]);
        assert!(scan.marker);
        assert_eq!(scan.skipped.len(), 1);
        assert!(
            scan.skipped[0].1.contains("leads out of the watch root"),
            "{:?}",
            scan.skipped
        );
        std::os::unix::fs::symlink(&s, root.join("linked")).unwrap();
        let found = stack_dirs(&root, &pat);
        assert_eq!(found.stacks, vec![s]);
        assert_eq!(found.symlinked, vec![root.join("linked")]);
    }

    #[test]
    fn folders_whose_names_are_not_utf8_are_listed_apart_and_never_share_a_name() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let (a, b) = (OsStr::from_bytes(b"run\xe4"), OsStr::from_bytes(b"run\xf6"));
        for n in [a, b, OsStr::new("run\\xe4"), OsStr::new("ok")] {
            std::fs::create_dir(root.join(n)).unwrap();
            std::fs::write(root.join(n).join("S_0001.tif"), b"x").unwrap();
        }
        let pat = glob::Pattern::new("*.tif").unwrap();
        let found = stack_dirs(&root, &pat);
        let mut unnamed = found.unnamed.clone();
        unnamed.sort();
        assert_eq!(unnamed, vec![root.join(a), root.join(b)]);
        assert_eq!(found.stacks.len(), 2, "{:?}", found.stacks);
        let shown: Vec<String> = [a, b, OsStr::new("run\\xe4")]
            .iter()
            .map(|n| escaped(n))
            .collect();
        assert_eq!(shown, ["run\\xe4", "run\\xf6", "run\\\\xe4"]);
        // a file name that is not UTF-8 is named the same way in the reason
        std::fs::write(root.join("ok").join(OsStr::from_bytes(b"S_\xff.tif")), b"y").unwrap();
        let scan = scan_dir(&root, &root.join("ok"), &pat, None).unwrap();
        assert_eq!(scan.skipped[0].0, "S_\\xff.tif");
    }
}
