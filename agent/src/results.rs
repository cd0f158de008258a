//! Results home: the files a workflow returns (its `return` globs, on the collector's side),
//! fetched over the link once the DAG is done, into `[agent] results_dir/<stack>/v<version>/`.
//! Each file streams through a bounded buffer into a temporary name while its BLAKE3 is
//! computed, and counts only once it matches the collector's listing; paths from the far
//! side are normalised and stay inside the stack's results folder.

use crate::link::far::{ask, command, last_line, FarError};
use beamflow_config::Config;
use beamflow_protocol::api::ResultFile;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Fetches stack version `remote`'s results into `dir`; says what arrived.
pub fn fetch(
    cfg: &Config,
    ctl: Option<&Path>,
    remote: i64,
    dir: &Path,
) -> Result<(usize, u64), FarError> {
    let id = remote.to_string();
    let files: Vec<ResultFile> = ask(cfg, ctl, &["results", "--json", &id])?;
    let mut bytes = 0;
    for f in &files {
        let rel =
            beamflow_protocol::normalize_rel_path(&f.path).map_err(|source| FarError::Name {
                name: f.path.clone(),
                source,
            })?;
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

fn local(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FarError {
    let path = path.to_path_buf();
    move |source| FarError::Local { what, path, source }
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
) -> Result<(), FarError> {
    let parent = dest.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&parent).map_err(local("make", &parent))?;
    let part: PathBuf = parent.join(format!(
        ".{}.part",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut c = command(cfg, ctl, &["results", "--cat", &f.path, id]);
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FarError::Spawn {
            program: c.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    let mut src = child.stdout.take().expect("piped above");
    let mut out = std::fs::File::create(&part).map_err(local("write", &part))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = src
            .read(&mut buf)
            .map_err(local("read the stream for", dest))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k]).map_err(local("write", &part))?;
        n += k as u64;
    }
    let done = child
        .wait_with_output()
        .map_err(local("read the stream for", dest))?;
    let got = h.finalize().to_hex().to_string();
    if !done.status.success() || n != f.size || got != f.blake3 {
        let _ = std::fs::remove_file(&part);
        return Err(FarError::Mismatch {
            path: f.path.clone(),
            got_bytes: n,
            bytes: f.size,
            got: got[..16].to_string(),
            listed: f.blake3[..16.min(f.blake3.len())].to_string(),
            said: last_line(&done.stderr),
        });
    }
    out.sync_all().map_err(local("write", &part))?;
    std::fs::rename(&part, dest).map_err(local("place", dest))
}
