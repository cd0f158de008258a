//! Finding where in the file a key was written, so that an error can name its line.

use std::path::Path;

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key assigned on `line`, in full: the table it sits in (`[link]`, the second
/// `[[watch]]`) and its own name, as `link.channels` or `watch[1].settle`.
pub(crate) fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let l = lines.get(line.checked_sub(1)?)?;
    let (k, _) = l.split_once('=')?;
    let k = k.trim();
    if k.is_empty() || k.starts_with('[') {
        return None;
    }
    Some(match table_of(&lines[..line - 1]) {
        Some(t) => format!("{t}.{k}"),
        None => k.to_string(),
    })
}

/// The table the last of `above` leaves open: `name` for `[name]`, `name[i]` for the i-th
/// `[[name]]`.
pub(crate) fn table_of(above: &[&str]) -> Option<String> {
    let (at, header) = above
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| l.trim_start().starts_with('['))?;
    let h = header.trim();
    if let Some(name) = h.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
        let name = name.trim();
        let i = above[..at]
            .iter()
            .filter(|l| {
                l.trim()
                    .strip_prefix("[[")
                    .and_then(|r| r.split("]]").next())
                    .is_some_and(|n| n.trim() == name)
            })
            .count();
        return Some(format!("{name}[{i}]"));
    }
    h.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .map(|n| n.trim().to_string())
}

/// Finds the first line that assigns the last segment of a dotted key; good enough to point a
/// person at the right place for errors found after parsing.
pub(crate) fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let last = dotted.rsplit('.').next()?;
    let last = last.split('[').next()?;
    text.lines()
        .position(|l| {
            let t = l.trim_start();
            t.starts_with(last) && t[last.len()..].trim_start().starts_with('=')
        })
        .map(|i| i + 1)
}

/// A value refused: the error names the key in full (`key`, e.g. `link.channels`) and the
/// line where `at` is written (the dotted key as the file spells it).
pub(crate) fn invalid(
    path: &Path,
    text: &str,
    at: &str,
    key: &str,
    message: impl Into<String>,
) -> crate::ConfigError {
    crate::ConfigError::Invalid {
        path: path.to_path_buf(),
        line: find_key_line(text, at).unwrap_or(1),
        key: format!("key `{key}`: "),
        message: message.into(),
    }
}
