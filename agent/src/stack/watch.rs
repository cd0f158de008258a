//! Filesystem events in, [`Event`]s out.
//!
//! notify's callback runs on its own thread; it only turns events into messages for the
//! daemon's loop. An event-queue overflow arrives as an ordinary event with the rescan flag
//! and becomes a full rescan. A root that cannot be watched (the inotify watch limit, most
//! often) is reported with the sysctl that fixes it and falls back to polling.

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::PathBuf;

/// What the filesystem said.
#[derive(Debug)]
pub enum Event {
    /// Something changed at this path.
    Changed(PathBuf),
    /// Events were lost: rescan everything.
    Rescan,
}

/// Watches `roots` recursively. Returns the watcher (dropping it stops events) and the roots
/// that could not be watched and must be polled instead.
pub fn start(
    roots: &[PathBuf],
    send: impl Fn(Event) + Send + 'static,
) -> (Option<RecommendedWatcher>, Vec<PathBuf>) {
    if roots.is_empty() {
        return (None, Vec::new());
    }
    let watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if ev.need_rescan() {
                    send(Event::Rescan);
                }
                if !can_change_a_stack(&ev.kind) {
                    return;
                }
                for p in ev.paths {
                    send(Event::Changed(p));
                }
            }
            Err(e) => {
                tracing::warn!("filesystem watch error: {e}; rescanning");
                send(Event::Rescan);
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
