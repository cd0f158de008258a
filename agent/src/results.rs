//! Results home: the files a workflow returns (its `return` globs, on the collector's side),
//! fetched over the link once the DAG is done, into `[agent] results_dir/<stack>/v<version>/`.
//! Each file streams through a bounded buffer into a temporary name while its BLAKE3 is
//! computed, and counts only once it matches the collector's listing; paths from the far
//! side are normalised and stay inside the stack's results folder.

use crate::link::far_command_for;
use beamflow_config::Config;
use beamflow_protocol::api::ResultFile;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn far(cfg: &Config, ctl: Option<&Path>, sub: &[&str]) -> Command {
    let argv = far_command_for(cfg, ctl, sub);
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]).stdin(Stdio::null());
    c
}

/// Fetches stack version `remote`'s results into `dir`; says what arrived.
pub fn fetch(
    cfg: &Config,
    ctl: Option<&Path>,
    remote: i64,
    dir: &Path,
) -> Result<(usize, u64), String> {
    let id = remote.to_string();
    let out = far(cfg, ctl, &["results", "--json", &id])
        .output()
        .map_err(|e| format!("cannot ask for the results: {e}"))?;
    let files: Vec<ResultFile> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            let err = String::from_utf8_lossy(&out.stderr);
            format!(
                "the collector did not list them ({}): {}",
                out.status,
                err.trim().lines().last().unwrap_or("nothing on stderr")
            )
        })?;
    let mut bytes = 0;
    for f in &files {
        let rel = beamflow_protocol::normalize_rel_path(&f.path)
            .map_err(|e| format!("refused the result name {:?}: {e}", f.path))?;
        let dest = dir.join(&rel);
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == f.size)
            && blake3_of(&dest).is_ok_and(|h| h == f.blake3)
        {
            bytes += f.size;
            continue; // fetched before (a retry after a failure part-way)
        }
        fetch_one(cfg, ctl, &id, f, &dest)?;
        bytes += f.size;
    }
    Ok((files.len(), bytes))
}

fn blake3_of(p: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(p)?)?;
    Ok(h.finalize().to_hex().to_string())
}

fn fetch_one(
    cfg: &Config,
    ctl: Option<&Path>,
    id: &str,
    f: &ResultFile,
    dest: &Path,
) -> Result<(), String> {
    let parent = dest.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
    let part: PathBuf = parent.join(format!(
        ".{}.part",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut child = far(cfg, ctl, &["results", "--cat", &f.path, id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot fetch {}: {e}", f.path))?;
    let mut src = child.stdout.take().ok_or("no pipe")?;
    let mut out = std::fs::File::create(&part)
        .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = src.read(&mut buf).map_err(|e| format!("{}: {e}", f.path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k])
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        n += k as u64;
    }
    let done = child.wait_with_output().map_err(|e| e.to_string())?;
    let got = h.finalize().to_hex().to_string();
    if !done.status.success() || n != f.size || got != f.blake3 {
        let _ = std::fs::remove_file(&part);
        return Err(format!(
            "{}: received {n} of {} bytes with BLAKE3 {}, listed {} ({}); fetched again later",
            f.path,
            f.size,
            &got[..16],
            &f.blake3[..16.min(f.blake3.len())],
            String::from_utf8_lossy(&done.stderr).trim()
        ));
    }
    out.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&part, dest).map_err(|e| format!("cannot place {}: {e}", dest.display()))
}
