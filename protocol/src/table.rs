//! Plain-text tables, the way both programs print them for people: left-aligned columns two
//! spaces apart, the last (usually a reason) left unpadded. Kept here because both CLIs use it.

use std::fmt::Write;

/// Renders rows (the first is the header) as aligned text, one line each.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = width[i]);
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
    fn columns_align() {
        let t = table(&[["a".to_string(), "bbb".into()], ["cccc".into(), "d".into()]]);
        assert_eq!(t, "a     bbb\ncccc  d\n");
    }
}
