//! `beamflow-agent status`: what the agent knows, for people (a table) and scripts (JSON).

use crate::journal::StackRecord;
use std::fmt::Write;

/// Human-readable size ("1.5 GiB").
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The status table: one line per stack, reason last because it is the long one.
pub fn table(stacks: &[StackRecord]) -> String {
    if stacks.is_empty() {
        return "no stacks seen yet\n".into();
    }
    let mut rows: Vec<[String; 7]> = vec![[
        "STACK".into(),
        "VER".into(),
        "STATE".into(),
        "FILES".into(),
        "BYTES".into(),
        "REMOTE".into(),
        "REASON".into(),
    ]];
    for s in stacks {
        rows.push([
            s.name.clone(),
            s.version.to_string(),
            s.state.as_str().to_string(),
            s.files.to_string(),
            human_bytes(s.bytes),
            s.remote_id
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            if s.reason.is_empty() {
                "-".into()
            } else {
                s.reason.clone()
            },
        ]);
    }
    let mut w = [0usize; 7];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i == 6 {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<width$}  ", width = w[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
