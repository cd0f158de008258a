//! Filesystem events in, messages out.
//!
//! notify's callback runs on its own thread; it only turns events into messages for the
//! daemon's loop. An event-queue overflow arrives as an ordinary event with the rescan flag
//! and becomes a full rescan. A root that cannot be watched (the inotify watch limit, most
//! often) is reported with the sysctl that fixes it and falls back to polling.

use crate::link::transfer::Report;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::PathBuf;
use tokio::sync::mpsc::UnboundedSender;

/// What the daemon's loop receives.
#[derive(Debug)]
pub enum Msg {
    /// Something changed at this path.
    Fs(PathBuf),
    /// Events were lost: rescan everything.
    Rescan,
    /// A transfer ended; the far ends it used, still open, for the next stack.
    Done(PathBuf, Box<Report>, Vec<crate::link::Link>),
    /// Checking and hashing a finished stack's images ended.
    Checked(PathBuf, Box<crate::stack::images::Checked>),
    /// Hashing a settling stack's images ahead of its finish ended.
    Hashed(PathBuf, Result<Vec<crate::journal::FileRecord>, String>),
    /// Removing a vanished stack's partial copy ended (its folder, journal id, outcome).
    Discarded(PathBuf, i64, crate::link::transfer::Discard),
    /// The collector said where these stacks' DAGs are: (journal id, remote id, outcome),
    /// or why it could not be asked.
    Outcomes(Result<Vec<(i64, i64, beamflow_protocol::api::DagOutcome)>, String>),
    /// Fetching a stack's results ended: (journal id, remote id, files and bytes, or why not).
    Results(i64, i64, Result<(usize, u64, String), String>),
}

/// Watches `roots` recursively. Returns the watcher (dropping it stops events) and the roots
/// that could not be watched and must be polled instead.
pub fn start(
    roots: &[PathBuf],
    tx: UnboundedSender<Msg>,
) -> (Option<RecommendedWatcher>, Vec<PathBuf>) {
    if roots.is_empty() {
        return (None, Vec::new());
    }
    let cb_tx = tx.clone();
    let watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if ev.need_rescan() {
                    let _ = cb_tx.send(Msg::Rescan);
                }
                if !can_change_a_stack(&ev.kind) {
                    return;
                }
                for p in ev.paths {
                    let _ = cb_tx.send(Msg::Fs(p));
                }
            }
            Err(e) => {
                tracing::warn!("filesystem watch error: {e}; rescanning");
                let _ = cb_tx.send(Msg::Rescan);
            }
        });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(
                "cannot start inotify ({e}); polling every watch root instead. {}",
                limit_hint()
            );
            return (None, roots.to_vec());
        }
    };
    let mut fallback = Vec::new();
    for r in roots {
        if let Err(e) = watcher.watch(r, RecursiveMode::Recursive) {
            let hint = if matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
                || e.to_string().contains("No space left")
            {
                limit_hint()
            } else {
                String::new()
            };
            tracing::error!(root = %r.display(), "cannot watch ({e}); polling this root instead. {hint}");
            fallback.push(r.clone());
        }
    }
    (Some(watcher), fallback)
}

/// Whether an event can change what a stack holds. Opening, reading and closing a file or
/// folder without writing cannot, and reacting to them made every scan (which opens the
/// folder) queue the next one, as did any reader of the watch root: a viewer, `find`.
pub fn can_change_a_stack(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn limit_hint() -> String {
    "The inotify watch limit is probably reached: raise it with `sysctl fs.inotify.max_user_watches=1048576` \
     (persist it in /etc/sysctl.d/), or set mode = \"poll\" for this root."
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    #[test]
    fn reads_are_ignored_and_every_change_is_kept() {
        for quiet in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(!can_change_a_stack(&quiet), "{quiet:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Create(CreateKind::Folder),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
            EventKind::Other,
        ] {
            assert!(can_change_a_stack(&change), "{change:?}");
        }
    }
}
