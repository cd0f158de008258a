//! What the folders say: walks of the watch roots, symlinks and folders that cannot be sent
//! under their names (held in the journal, marked gone with their folder), and stacks
//! whose folder vanished.

use super::*;

/// What the journal key of a folder that cannot be sent under its name starts with: never an absolute
/// path, so never the key of a folder that can be sent.
pub(super) const UNNAMED_KEY: &str = "unsendable:";

impl Daemon {
    /// Something changed at `path`: its root was active, a folder moved in is walked, its
    /// parent is looked at once events have gathered.
    pub(super) fn changed_path(&mut self, path: PathBuf) {
        if let Some(i) = self.root_of(&path) {
            // the file's own time: the same after a restart, so news keyed by it is
            // not sent twice
            let t = std::fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| std::time::SystemTime::now());
            self.activity[i] = self.activity[i].max(t);
        }
        if path.is_dir() {
            // a folder moved in with files inside reports only itself: walk it
            self.walk.insert(path.clone());
        }
        if let Some(parent) = path.parent() {
            self.dirty.insert(parent.to_path_buf());
        }
        if !self.unsendable_held.is_empty() {
            if let Some(i) = self.root_of(&path) {
                self.unsendable_gone(i, &path);
            }
        }
        self.poke(GATHER);
    }

    pub(super) fn root_of(&self, p: &Path) -> Option<usize> {
        self.roots.iter().position(|r| p.starts_with(&r.canon))
    }

    pub(super) fn walk_root(&mut self, dir: &Path) {
        let Some(i) = self.root_of(dir) else { return };
        let found = stack_dirs(dir, &self.roots[i].pattern);
        for s in found.stacks {
            self.dirty.insert(s);
        }
        for link in found.symlinked {
            self.symlinked(i, &link);
        }
        for u in found.unnamed {
            self.held_unsendable(i, &u);
        }
        self.unsendable_gone(i, dir);
        // tracked stacks below that vanished are dirty too, so they get dropped
        let gone: Vec<PathBuf> = self
            .stacks
            .keys()
            .filter(|k| k.starts_with(dir))
            .cloned()
            .collect();
        self.dirty.extend(gone);
    }

    /// A symlink to a folder of images: held in the journal with the reason, so that status
    /// shows it, rather than skipped without a word.
    pub(super) fn symlinked(&mut self, root: usize, link: &Path) {
        let dir = link.display().to_string();
        let target = std::fs::canonicalize(link)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|e| e.to_string());
        let reason = format!(
            "{dir} is a symlink to a folder ({target}); symlinked folders are not followed: move \
             the images into the watch root, or watch the target with its own [[watch]] path"
        );
        let name = self.roots[root].remote_name(link);
        if let Err(e) = self.hold_folder(root, &dir, &name, &reason) {
            tracing::warn!(stack = %name, "cannot journal a symlinked folder: {e}");
        }
    }

    /// Holds a folder that can never be sent under journal key `key` with `reason` (said in
    /// the log when it is new); the row's id.
    pub(super) fn hold_folder(
        &mut self,
        root: usize,
        key: &str,
        name: &str,
        reason: &str,
    ) -> Result<i64, crate::journal::JournalError> {
        let workflow = self.roots[root].section.workflow.clone();
        let rec = match self.journal.stack(key)? {
            Some(rec) => rec,
            None => self.journal.ensure_stack(key, name, &workflow)?,
        };
        if rec.state != StackState::Held || rec.reason != reason {
            tracing::warn!(stack = %name, "{reason}");
            self.journal.set_state(rec.id, StackState::Held, reason)?;
        }
        Ok(rec.id)
    }

    /// A folder of images whose path is not UTF-8: held in the journal with a reason that
    /// names it in escaped form (`run\xe4`), under a key no UTF-8 folder can have (keys of
    /// folders that can be sent are absolute paths), so two such folders never share a row,
    /// a remote folder or a work folder; nothing of it is sent.
    pub(super) fn held_unsendable(&mut self, root: usize, dir: &Path) {
        if !crate::stack::scan::holds_images(dir, &self.roots[root].pattern) {
            return;
        }
        let shown = crate::stack::scan::escaped(dir.as_os_str());
        let key = format!("{UNNAMED_KEY}{shown}");
        let rel = dir.strip_prefix(&self.roots[root].canon).unwrap_or(dir);
        let prefix = self.roots[root].section.prefix.trim_matches('/');
        let rel = crate::stack::scan::escaped(rel.as_os_str());
        let name = if prefix.is_empty() {
            rel
        } else {
            format!("{prefix}/{rel}")
        };
        let Some(reason) = self.unsendable(root, dir) else {
            return;
        };
        match self.hold_folder(root, &key, &name, &reason) {
            Ok(id) => {
                self.unsendable_held.insert(dir.to_path_buf(), id);
            }
            Err(e) => {
                tracing::warn!(stack = %name, "cannot journal a folder that cannot be sent: {e}")
            }
        }
    }

    /// Why a folder of images can never be sent under its name (see [`Root::unsendable`]).
    pub(super) fn unsendable(&self, root: usize, dir: &Path) -> Option<String> {
        self.roots[root].unsendable(dir)
    }

    /// Held folders that cannot be sent, at or below `dir`, that no longer hold
    /// images (renamed, removed): their rows end as gone.
    pub(super) fn unsendable_gone(&mut self, root: usize, dir: &Path) {
        let gone: Vec<(PathBuf, i64)> = self
            .unsendable_held
            .iter()
            .filter(|(p, _)| {
                p.starts_with(dir)
                    && !crate::stack::scan::holds_images(p, &self.roots[root].pattern)
            })
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (p, id) in gone {
            self.unsendable_held.remove(&p);
            if let Err(e) = self.journal.set_state(
                id,
                StackState::Gone,
                "the folder is gone (renamed or removed); nothing of it had been sent",
            ) {
                tracing::warn!("cannot journal a folder gone: {e}");
            }
        }
    }

    pub(super) fn full_rescan(&mut self) {
        // the slow safety net looks at every stack again, quiet or not (a `push` of a watched
        // folder may have moved one in the journal meanwhile)
        for t in self.stacks.values_mut() {
            t.quiet = false;
        }
        let roots: Vec<PathBuf> = self.roots.iter().map(|r| r.canon.clone()).collect();
        for r in roots {
            self.walk_root(&r);
        }
    }

    /// A stack's folder is gone (renamed or removed). Unless it was submitted (its files then
    /// belong to a DAG), it is marked gone, and what arrived of it at the collector is removed
    /// so that no half copy lingers there; the folder under its new name is a stack of its own.
    pub(super) fn vanished(&mut self, dir: &Path) -> Result<()> {
        if self.active.contains(dir) || self.ahead.contains(dir) {
            return Ok(()); // its transfer ends first, and comes back here
        }
        let Some(rec) = self.journal.stack(&dir.display().to_string())? else {
            return Ok(());
        };
        if matches!(
            rec.state,
            StackState::Submitted | StackState::Gone | StackState::Discarding | StackState::Freed
        ) {
            return Ok(());
        }
        if self.journal.files(rec.id)?.is_empty() {
            tracing::info!(stack = %rec.name, "folder gone before anything of it was sent");
            self.journal.set_state(
                rec.id,
                StackState::Gone,
                "the folder is gone (renamed or removed); nothing of it had been sent",
            )?;
        } else {
            tracing::warn!(stack = %rec.name, "folder gone before the stack was submitted; removing its partial copy at the collector");
            self.discards_pending = true;
            self.journal.set_state(
                rec.id,
                StackState::Discarding,
                "the folder is gone (renamed or removed) before it was submitted; removing its partial copy at the collector",
            )?;
        }
        Ok(())
    }
}
