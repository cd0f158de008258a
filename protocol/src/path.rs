//! Paths from the wire. They are relative, normalised and confined: the collector joins them
//! to its data root only after this check, so nothing a peer sends can write outside it.

/// Returns the normalised form of a relative path (`a/./b//c` → `a/b/c`), or why it is refused.
pub fn normalize_rel_path(p: &str) -> Result<String, String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.contains('\0') {
        return Err(format!("path {p:?} contains a NUL byte"));
    }
    if p.starts_with('/') {
        return Err(format!(
            "path {p:?} is absolute; only paths relative to the data root are accepted"
        ));
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "path {p:?} contains `..`; paths may not leave the data root"
                ))
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(format!("path {p:?} names the data root itself, not a file"));
    }
    Ok(parts.join("/"))
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
        for legal in ["\\x/y.tif", "a\nb/$(id) `x`;|&.tif", "-x/-y.tif"] {
            assert_eq!(normalize_rel_path(legal).unwrap(), legal);
        }
    }
}
