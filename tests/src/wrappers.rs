//! Wrappers first on a program's `PATH` that log every call it makes to a tool (Slurm's
//! clients, `ssh`) before running the real one: how the tests count what a program asks of
//! the batch system, or whether it started `ssh` at all.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes, in `dir`, a wrapper for each of `tools` that appends `SECONDS.NANOS TOOL ARGS` to
/// `log` and runs the real tool; returns a `PATH` with `dir` first.
pub fn counting_wrappers(dir: &Path, tools: &[&str], log: &Path) -> String {
    std::fs::create_dir_all(dir).expect("wrapper folder");
    for tool in tools {
        let real = String::from_utf8(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .expect("sh")
                .stdout,
        )
        .expect("a path");
        let w = dir.join(tool);
        std::fs::write(
            &w,
            format!(
                "#!/bin/sh\necho \"$(date +%s.%N) {tool} $*\" >> '{}'\nexec {} \"$@\"\n",
                log.display(),
                real.trim()
            ),
        )
        .expect("write wrapper");
        let mut perm = std::fs::metadata(&w).expect("wrapper").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&w, perm).expect("chmod wrapper");
    }
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The calls a wrapper logged: (seconds since the epoch, the command line).
pub fn calls(log: &Path) -> Vec<(f64, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (at, rest) = l.split_once(' ')?;
            Some((at.parse().ok()?, rest.to_string()))
        })
        .collect()
}

/// Where a test's wrappers and their log go in a site folder.
pub fn wrapper_paths(site_dir: &Path) -> (PathBuf, PathBuf) {
    (site_dir.join("wrappers"), site_dir.join("calls.log"))
}
