//! `beamflow-collector results`: the files a workflow returns home (`return` globs in its
//! config), listed with their BLAKE3 and streamed one at a time, for the agent to fetch over
//! its own link. Only regular files inside the stack version's work folder are ever listed or
//! read, and `--cat` reads only a path the listing would name: a path from the wire cannot
//! reach anything else.

use crate::api::{Client, ResultFile};
use beamflow_config::Config;
use std::io::Write;
use std::path::PathBuf;

/// Why results could not be listed or read.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The service could not be asked.
    #[error(transparent)]
    Service(#[from] crate::api::ClientError),
    /// No such stack version.
    #[error("no stack version {0}; `beamflow-collector status` lists them")]
    NoStack(u64),
    /// Its workflow is not in this config.
    #[error("stack version {id} ran workflow `{workflow}`, which this config does not define")]
    NoWorkflow {
        /// The stack version.
        id: u64,
        /// Its workflow.
        workflow: String,
    },
    /// A path that is not one of the results.
    #[error("{0} is not one of this stack version's results")]
    NotAResult(String),
    /// Reading failed.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// The result files of stack version `id`: (path under the work folder, absolute path).
fn matches(cfg: &Config, id: u64) -> Result<Vec<(String, PathBuf)>, ResultsError> {
    let client = Client::from_state_dir(&cfg.collector.state_dir)?;
    let stack = client
        .stacks()?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or(ResultsError::NoStack(id))?;
    let wf = cfg
        .workflows
        .get(&stack.workflow)
        .ok_or_else(|| ResultsError::NoWorkflow {
            id,
            workflow: stack.workflow.clone(),
        })?;
    let work = PathBuf::from(&stack.work_dir);
    let Ok(root) = work.canonicalize() else {
        return Ok(Vec::new());
    };
    let base = glob::Pattern::escape(&root.display().to_string());
    let mut out = Vec::new();
    for g in &wf.returns {
        let Ok(paths) = glob::glob(&format!("{base}/{g}")) else {
            continue;
        };
        for p in paths.flatten() {
            // regular files only, and only inside the work folder
            let regular = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file());
            let Ok(rel) = p.strip_prefix(&root) else {
                continue;
            };
            if !regular
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                continue;
            }
            let rel = rel.to_string_lossy().into_owned();
            if !out.iter().any(|(r, _)| *r == rel) {
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The result files with their sizes and BLAKE3s.
pub fn list(cfg: &Config, id: u64) -> Result<Vec<ResultFile>, ResultsError> {
    matches(cfg, id)?
        .into_iter()
        .map(|(rel, p)| {
            let read = |cause| ResultsError::Read {
                path: p.clone(),
                cause,
            };
            let f = std::fs::File::open(&p).map_err(read)?;
            let size = f.metadata().map_err(read)?.len();
            let mut h = blake3::Hasher::new();
            h.update_reader(f).map_err(read)?;
            Ok(ResultFile {
                path: rel,
                size,
                blake3: h.finalize().to_hex().to_string(),
            })
        })
        .collect()
}

/// Streams one result file to `out`.
pub fn cat(cfg: &Config, id: u64, path: &str, out: &mut dyn Write) -> Result<u64, ResultsError> {
    let (_, p) = matches(cfg, id)?
        .into_iter()
        .find(|(r, _)| r == path)
        .ok_or_else(|| ResultsError::NotAResult(path.to_string()))?;
    let read = |cause| ResultsError::Read {
        path: p.clone(),
        cause,
    };
    let mut f = std::fs::File::open(&p).map_err(read)?;
    let n = std::io::copy(&mut f, out).map_err(read)?;
    out.flush().map_err(read)?;
    Ok(n)
}
