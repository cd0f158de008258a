//! Filesystem events in, messages out.
//!
//! notify's callback runs on its own thread; it only turns events into messages for the
//! daemon's loop. An event-queue overflow arrives as an ordinary event with the rescan flag
//! and becomes a full rescan. A root that cannot be watched (the inotify watch limit, most
//! often) is reported with the sysctl that fixes it and falls back to polling.

use crate::transfer::Report;
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
    /// A transfer ended.
    Done(PathBuf, Box<Report>),
    /// Removing a vanished stack's partial copy ended (journal id, outcome).
    Discarded(i64, crate::transfer::Discard),
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

fn limit_hint() -> String {
    "The inotify watch limit is probably reached: raise it with `sysctl fs.inotify.max_user_watches=1048576` \
     (persist it in /etc/sysctl.d/), or set mode = \"poll\" for this root."
        .into()
}
