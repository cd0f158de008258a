//! One immutable snapshot per submitted stack version.
//!
//! The live stack folder is where files arrive: a new version's file, a re-send or a delta
//! result is written under a temporary name and renamed over the live name, which gives the
//! name a new inode and never changes the old one. A version's snapshot,
//! `<stack>/.beamflow-v<N>/`, holds hard links to the inodes that were live when it was
//! submitted, exactly its files and no others. Its jobs read the snapshot, so whatever
//! arrives later (the next version, another send) cannot change the bytes they read, and
//! taking it costs no copy. It is built under a temporary name and renamed into place, so a
//! crash leaves either no snapshot or a whole one; a leftover is rebuilt, and a snapshot
//! that does not match its version is replaced only while the service knows no such version.

use super::confine::{ConfineError, Folder};
use beamflow_protocol::Hash;
use std::ffi::CString;
use std::os::fd::AsRawFd;

/// The snapshot folder of a version, inside its stack folder. Wire paths may not name it:
/// every component starting with `.beamflow-` belongs to the collector.
pub(crate) fn folder_name(version: u32) -> String {
    format!(".beamflow-v{version}")
}

/// One file of a version: its name in the stack folder, its size and BLAKE3.
pub(crate) struct Member {
    pub name: String,
    pub size: u64,
    pub hash: Hash,
}

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    /// A registered version's snapshot holds other files: it stays as it is.
    #[error(
        "version {0} is registered with other files; a changed stack must come as a new version"
    )]
    Registered(u32),
    /// A live file is not what the submission says (size or BLAKE3).
    #[error("{0}: {1}; send it again")]
    Mismatch(String, String),
    /// The filesystem refused.
    #[error("cannot take the snapshot {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The service could not say whether the version is registered.
    #[error("cannot ask the service about version {0}; the agent submits again")]
    Service(u32, #[source] crate::api::ClientError),
}

fn c(name: &str) -> CString {
    CString::new(name).unwrap_or_default()
}

fn last_err<T>(what: String) -> Result<T, SnapshotError> {
    Err(SnapshotError::Io(what, std::io::Error::last_os_error()))
}

/// Removes a snapshot folder (it holds files only) and the folder itself.
fn remove(stack: &Folder, name: &str) -> Result<(), SnapshotError> {
    let Ok(dir) = stack.walk(name, false) else {
        return Ok(());
    };
    if let Ok(rd) = std::fs::read_dir(dir.entry("")) {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str() {
                unsafe { libc::unlinkat(dir.as_raw_fd(), c(n).as_ptr(), 0) };
            }
        }
    }
    if unsafe { libc::unlinkat(stack.as_raw_fd(), c(name).as_ptr(), libc::AT_REMOVEDIR) } != 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
    {
        return last_err(format!("removing {name}"));
    }
    Ok(())
}

/// Removes every snapshot folder of a stack (its attempts were never registered).
pub(crate) fn remove_all(stack: &Folder) {
    let names: Vec<String> = std::fs::read_dir(stack.entry(""))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(".beamflow-v"))
        .collect();
    for n in names {
        let _ = remove(stack, &n);
    }
}

/// Whether `dir` holds exactly `members`, each with its size and BLAKE3.
fn holds_exactly(dir: &Folder, members: &[Member]) -> Result<bool, SnapshotError> {
    let listed: std::collections::BTreeSet<String> = std::fs::read_dir(dir.entry(""))
        .map_err(|e| SnapshotError::Io("listing the snapshot".into(), e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    let wanted: std::collections::BTreeSet<String> =
        members.iter().map(|m| m.name.clone()).collect();
    if listed != wanted {
        return Ok(false);
    }
    for m in members {
        if check(dir, m).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Checks one file's size and BLAKE3, from the hash note the committer left on its inode
/// where it is still valid, else by reading it.
fn check(dir: &Folder, m: &Member) -> Result<(), SnapshotError> {
    let path = dir.entry(&m.name);
    let meta = std::fs::symlink_metadata(&path)
        .map_err(|e| SnapshotError::Mismatch(m.name.clone(), e.to_string()))?;
    if !meta.is_file() || meta.len() != m.size {
        return Err(SnapshotError::Mismatch(
            m.name.clone(),
            format!("holds {} bytes, the submission says {}", meta.len(), m.size),
        ));
    }
    let got = match super::cached_hash(&path, &meta) {
        Some(h) => h,
        None => *super::hash_file(&path, None)
            .map_err(|e| SnapshotError::Io(m.name.clone(), e))?
            .1
            .finalize()
            .as_bytes(),
    };
    if got != m.hash {
        return Err(SnapshotError::Mismatch(
            m.name.clone(),
            "its bytes differ from the submission's BLAKE3".into(),
        ));
    }
    Ok(())
}

/// Makes the snapshot of `version` in `stack` hold exactly `members`, linked from the live
/// files. `registered` tells whether the service already knows this version (asked only when
/// an existing snapshot does not match).
pub(crate) fn take(
    stack: &Folder,
    version: u32,
    members: &[Member],
    registered: &dyn Fn() -> Result<bool, crate::api::ClientError>,
) -> Result<(), SnapshotError> {
    let name = folder_name(version);
    match stack.walk(&name, false) {
        Ok(existing) => {
            if holds_exactly(&existing, members)? {
                return Ok(()); // the same version again: nothing to do
            }
            match registered() {
                Ok(false) => remove(stack, &name)?, // a leftover of an attempt never registered
                Ok(true) => return Err(SnapshotError::Registered(version)),
                Err(e) => return Err(SnapshotError::Service(version, e)),
            }
        }
        Err(ConfineError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(SnapshotError::Io(
                name,
                std::io::Error::other(e.to_string()),
            ))
        }
    }
    let tmp = format!("{name}.tmp");
    remove(stack, &tmp)?;
    let dir = stack
        .walk(&tmp, true)
        .map_err(|e| SnapshotError::Io(tmp.clone(), std::io::Error::other(e.to_string())))?;
    for m in members {
        let n = c(&m.name);
        let linked = unsafe {
            libc::linkat(
                stack.as_raw_fd(),
                n.as_ptr(),
                dir.as_raw_fd(),
                n.as_ptr(),
                0,
            )
        };
        if linked != 0 {
            return last_err(format!(
                "linking {} (the data root's filesystem must support hard links)",
                m.name
            ));
        }
        check(&dir, m)?;
    }
    dir.sync_all()
        .map_err(|e| SnapshotError::Io(tmp.clone(), e))?;
    let renamed = unsafe {
        libc::renameat(
            stack.as_raw_fd(),
            c(&tmp).as_ptr(),
            stack.as_raw_fd(),
            c(&name).as_ptr(),
        )
    };
    if renamed != 0 {
        return last_err(format!("renaming {tmp} to {name}"));
    }
    stack
        .sync_all()
        .map_err(|e| SnapshotError::Io(name.clone(), e))?;
    Ok(())
}
