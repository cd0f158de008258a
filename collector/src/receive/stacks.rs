//! What a session does to whole stacks: a submission (its files verified in this session,
//! the version's snapshot taken, the service asked to register it) and a discard (a vanished
//! stack's partial copy removed).

use super::*;

/// A submission or discard refused, with what is wrong and what to do.
fn refused(message: String) -> Frame {
    Frame::Error {
        code: ErrorCode::SubmitRefused,
        message,
    }
}

impl Receiver {
    /// Removes what arrived of a stack whose folder vanished at the beamline before it was
    /// submitted. The service is asked first: a stack it knows (any version) has jobs that
    /// may read these files, so they stay. Each path is reached through the confined walk,
    /// like a write.
    pub(super) fn discard(&mut self, stack: String, files: Vec<String>) -> Frame {
        let stack = match normalize_rel_path(&stack) {
            Ok(s) => s,
            Err(e) => return refused(e.to_string()),
        };
        let known = self.service(|c| c.stacks());
        let mut abandoned = false;
        match known {
            Ok(rows)
                if rows
                    .iter()
                    .any(|r| r.beamline == self.beamline && r.name == stack) =>
            {
                // only partial versions (it streamed, never sealed): abandoned; their open
                // jobs are cancelled and what arrived goes, as for any unfinished stack.
                // Each version's snapshot stays with its version.
                let req = crate::api::AbandonRequest {
                    beamline: self.beamline.clone(),
                    stack: stack.clone(),
                    why: crate::api::AbandonWhy::FolderRemoved,
                };
                match self.service(|c| c.abandon(&req)) {
                    Ok(crate::api::AbandonResponse { cancelled: Some(_) }) => abandoned = true,
                    Ok(_) => {
                        return refused(format!(
                        "stack {stack} has a DAG at the collector; its files stay where they are"
                    ))
                    }
                    Err(e) => {
                        return Frame::Error {
                            code: ErrorCode::ServiceUnavailable,
                            message: format!(
                                "cannot tell the service that {stack} was abandoned: {e}"
                            ),
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                return Frame::Error {
                    code: ErrorCode::ServiceUnavailable,
                    message: format!("cannot ask the service whether {stack} is in use: {e}"),
                }
            }
        }
        let folder = match self.root.walk(&stack, false) {
            Ok(f) => f,
            Err(ConfineError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
                return Frame::Discarded { stack, removed: 0 }
            }
            Err(e) => return refused(format!("{stack:?}: {e}")),
        };
        let mut removed = 0;
        for f in files {
            let Some(name) = normalize_rel_path(&f)
                .ok()
                .and_then(|r| r.strip_prefix(&format!("{stack}/")).map(str::to_string))
                .filter(|n| !n.contains('/'))
            else {
                return refused(format!("{f:?} is not a file directly inside {stack}"));
            };
            for n in [
                name.clone(),
                temp_name(&name, "part"),
                temp_name(&name, "delta"),
            ] {
                if std::fs::remove_file(folder.entry(&n)).is_ok() && n == name {
                    removed += 1;
                }
            }
            self.known().remove(&format!("{stack}/{name}"));
        }
        if !abandoned {
            // snapshots of attempts that were never registered (the service knows no version)
            snapshot::remove_all(&folder);
        }
        let _ = folder.sync_all();
        self.folders.remove(&stack);
        // the folder itself goes if nothing else is in it
        let (parent, leaf) = stack.rsplit_once('/').unwrap_or(("", stack.as_str()));
        if let Ok(p) = self.root.walk(parent, false) {
            if let Ok(c) = std::ffi::CString::new(leaf) {
                use std::os::fd::AsRawFd;
                unsafe { libc::unlinkat(p.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
            }
        }
        tracing::info!(stack = %stack, removed, "partial copy of a vanished stack removed");
        Frame::Discarded { stack, removed }
    }

    /// A submission's files as the snapshot and the service take them; each must have been
    /// received and verified in this session, directly inside the stack. Else the refusal.
    pub(super) fn members(
        &self,
        stack: &str,
        files: Vec<FileEntry>,
    ) -> Result<(Vec<SubmitFile>, Vec<snapshot::Member>), Frame> {
        let mut out = Vec::with_capacity(files.len());
        let mut members = Vec::with_capacity(files.len());
        for f in files {
            let rel = normalize_rel_path(&f.path).map_err(|e| refused(e.to_string()))?;
            if self.known().get(&rel) != Some(&f.hash) {
                return Err(refused(format!("{rel} was not received and verified in this session; offer it before submitting")));
            }
            let Some(name) = rel
                .strip_prefix(&format!("{stack}/"))
                .filter(|n| !n.contains('/'))
            else {
                return Err(refused(format!(
                    "file {rel} is not directly inside stack {stack}"
                )));
            };
            members.push(snapshot::Member {
                name: name.to_string(),
                size: f.size,
                hash: f.hash,
            });
            out.push(SubmitFile {
                path: rel,
                size: f.size,
                blake3: hex::encode(f.hash),
            });
        }
        Ok((out, members))
    }

    pub(super) fn submit(
        &self,
        stack: String,
        version: u32,
        workflow: String,
        files: Vec<FileEntry>,
        (keep_older, partial): (bool, bool),
    ) -> Frame {
        let stack = match normalize_rel_path(&stack) {
            Ok(s) => s,
            Err(e) => return refused(e.to_string()),
        };
        let (out, members) = match self.members(&stack, files) {
            Ok(m) => m,
            Err(refusal) => return refusal,
        };
        // the version's own copy, before the service may hand it to a job
        let folder = match self.root.walk(&stack, false) {
            Ok(f) => f,
            Err(e) => return refused(format!("{stack:?}: {e}")),
        };
        let registered = || -> Result<bool, crate::api::ClientError> {
            let rows = self.service(|c| c.stacks())?;
            Ok(rows
                .iter()
                .any(|r| r.beamline == self.beamline && r.name == stack && r.version == version))
        };
        if let Err(e) = snapshot::take(&folder, version, &members, &registered) {
            tracing::warn!(stack = %stack, version, "{e}");
            return match e {
                snapshot::SnapshotError::Io(..) | snapshot::SnapshotError::Service(..) => {
                    Frame::Error {
                        code: ErrorCode::ServiceUnavailable,
                        message: beamflow_program::chain(&e),
                    }
                }
                _ => refused(e.to_string()),
            };
        }
        let req = SubmitRequest {
            beamline: self.beamline.clone(),
            stack: stack.clone(),
            version,
            workflow,
            files: out,
            keep_older,
            partial,
        };
        match self.service(|c| c.submit(&req)) {
            Ok(r) => Frame::Accepted {
                stack,
                version,
                remote_id: r.remote_id,
                created: r.created,
                jobs: r.jobs,
            },
            Err(e) if e.is_transient() => Frame::Error {
                code: ErrorCode::ServiceUnavailable,
                message: e.to_string(),
            },
            Err(e) => refused(e.to_string()),
        }
    }
}
