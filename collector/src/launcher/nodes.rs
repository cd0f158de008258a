//! Which nodes a launcher's allocation holds, from the scheduler's environment.

use beamflow_config::{QueueSection, SchedulerKind};

/// Expands a Slurm hostlist (`nid[001-003,007],login1`) into host names.
pub fn expand_hostlist(list: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for c in list.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    let mut out = Vec::new();
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        let (Some(open), Some(close)) = (p.find('['), p.find(']')) else {
            out.push(p);
            continue;
        };
        let (prefix, ranges, suffix) = (&p[..open], &p[open + 1..close], &p[close + 1..]);
        for r in ranges.split(',') {
            match r.split_once('-') {
                Some((a, b)) => {
                    let (Ok(x), Ok(y)) = (a.parse::<u64>(), b.parse::<u64>()) else {
                        continue;
                    };
                    for i in x..=y {
                        out.push(format!("{prefix}{i:0w$}{suffix}", w = a.len()));
                    }
                }
                None => out.push(format!("{prefix}{r}{suffix}")),
            }
        }
    }
    out
}

/// The nodes of this allocation, from the scheduler's environment.
pub fn detect_nodes(q: &QueueSection) -> Vec<String> {
    if q.scheduler == SchedulerKind::Local {
        return (0..crate::scheduler::local_slots(q))
            .map(|i| format!("local-{i}"))
            .collect();
    }
    if let Ok(list) = std::env::var("SLURM_JOB_NODELIST") {
        let v = expand_hostlist(&list);
        if !v.is_empty() {
            return v;
        }
    }
    if let Ok(file) = std::env::var("PBS_NODEFILE") {
        if let Ok(text) = std::fs::read_to_string(file) {
            let mut v: Vec<String> = Vec::new();
            for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !v.iter().any(|x| x == l) {
                    v.push(l.to_string());
                }
            }
            if !v.is_empty() {
                return v;
            }
        }
    }
    if let Some(n) = std::env::var("COBALT_JOBSIZE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        let part = std::env::var("COBALT_PARTNAME").unwrap_or_else(|_| "cobalt".into());
        return (0..n).map(|i| format!("{part}-{i}")).collect();
    }
    vec![hostname()]
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The scheduler's id of this allocation, if its environment tells it.
pub(crate) fn batch_id() -> Option<String> {
    ["SLURM_JOB_ID", "PBS_JOBID", "COBALT_JOBID"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostlists_expand() {
        assert_eq!(
            expand_hostlist("nid[001-003,007],login1"),
            ["nid001", "nid002", "nid003", "nid007", "login1"]
        );
        assert_eq!(expand_hostlist("x3001c0s7b0n0"), ["x3001c0s7b0n0"]);
        assert_eq!(expand_hostlist("a[8-10]"), ["a8", "a9", "a10"]);
    }
}
