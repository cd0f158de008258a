//! The operator's commands: tables for people, `--json` for scripts.

use crate::api::Client;
use crate::db::JobRow;
use std::fmt::Write;

/// Renders jobs as an aligned table.
pub fn jobs_table(jobs: &[JobRow]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "STACK".into(),
        "VER".into(),
        "NAME".into(),
        "STATE".into(),
        "PARENTS".into(),
    ]];
    for j in jobs {
        let parents = if j.parents.is_empty() {
            "-".to_string()
        } else {
            j.parents
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push([
            j.id.to_string(),
            j.stack.clone(),
            j.version.to_string(),
            j.name.clone(),
            j.state.clone(),
            parents,
        ]);
    }
    table(&rows)
}

/// Left-aligned columns separated by two spaces.
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

/// `ls`: fetches jobs from the service.
pub fn ls(
    client: &Client,
    stack: Option<&str>,
    state: Option<&str>,
) -> Result<Vec<JobRow>, crate::api::ClientError> {
    client.jobs(stack, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[["a".to_string(), "bbb".into()], ["cccc".into(), "d".into()]]);
        assert_eq!(t, "a     bbb\ncccc  d\n");
    }
}
