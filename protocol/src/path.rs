//! Paths from the wire. They are relative, normalised and confined: the collector joins them
//! to its data root only after this check, so nothing a peer sends can write outside it.

/// Why a path from the wire is refused; each says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing at all.
    #[error("empty path")]
    Empty,
    /// A NUL byte, which no file name can hold.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// An absolute path.
    #[error("path {0:?} is absolute; only paths relative to the data root are accepted")]
    Absolute(String),
    /// A `..` component.
    #[error("path {0:?} contains `..`; paths may not leave the data root")]
    Parent(String),
    /// A folder named like the ones beamflow makes for versions.
    #[error(
        "path {path:?} has a folder named {folder:?}, a name beamflow keeps for the folders it \
         makes for a stack's versions; rename that folder"
    )]
    Reserved {
        /// The whole path.
        path: String,
        /// The reserved component.
        folder: String,
    },
    /// Only `.` and `/`: the root itself.
    #[error("path {0:?} names the data root itself, not a file")]
    Root(String),
}

/// Returns the normalised form of a relative path (`a/./b//c` → `a/b/c`), or why it is refused.
pub fn normalize_rel_path(p: &str) -> Result<String, PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.contains('\0') {
        return Err(PathError::Nul(p.into()));
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute(p.into()));
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(PathError::Parent(p.into())),
            c if reserved(c) => {
                return Err(PathError::Reserved {
                    path: p.into(),
                    folder: c.into(),
                })
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Root(p.into()));
    }
    Ok(parts.join("/"))
}

/// Names beamflow gives the folders it makes inside a stack's folder: a version's snapshot
/// (`.beamflow-v3` in the data root) and a version's work folder (`@v3` in the work root).
/// No stack's path may hold them, so a version folder is never taken for a stack folder, and
/// a stack folder never lies inside another stack's version folder (stacks `s` and `s/@v1`
/// would otherwise share one).
pub fn reserved(component: &str) -> bool {
    component.starts_with(".beamflow-")
        || component
            .strip_prefix(WORK_VERSION_PREFIX)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What a version's work folder is called inside its stack's: `@v` and the version.
pub const WORK_VERSION_PREFIX: &str = "@v";

/// The work folder of one stack version, relative to the work root.
pub fn work_rel(beamline: &str, stack: &str, version: u32) -> String {
    format!("{beamline}/{stack}/{WORK_VERSION_PREFIX}{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confines_paths() {
        assert_eq!(normalize_rel_path("a/./b//c.tif").unwrap(), "a/b/c.tif");
        assert_eq!(
            normalize_rel_path("stack 1/S_ä.tif").unwrap(),
            "stack 1/S_ä.tif"
        );
        assert!(normalize_rel_path("/etc/passwd").is_err());
        assert!(normalize_rel_path("a/../../x").is_err());
        assert!(normalize_rel_path("..").is_err());
        assert!(normalize_rel_path("./").is_err());
        assert!(normalize_rel_path("").is_err());
        assert!(normalize_rel_path("a\0b").is_err());
        // a backslash, a newline, shell syntax: legal names on the collector's side
        for legal in [
            "\\x/y.tif",
            "a\nb/$(id) `x`;|&.tif",
            "-x/-y.tif",
            "s/v1/x.tif",
            "s/@v/x.tif",
            "s/@v1x/x.tif",
            "s/.beamflow/x.tif",
        ] {
            assert_eq!(normalize_rel_path(legal).unwrap(), legal);
        }
        for reserved in ["s/@v1/x.tif", "s/.beamflow-v2/x.tif", "@v10/x.tif"] {
            let e = normalize_rel_path(reserved).unwrap_err();
            assert!(e.to_string().contains("rename that folder"), "{e}");
        }
    }
}
