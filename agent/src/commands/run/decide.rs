//! A round of decisions: every stack events named is looked at, its rules decide at the
//! loop's `now`, and the loop applies the verdict (settle, check and hash, send, hold).

use super::*;

/// Finished stacks checked and hashed at once, off the loop (each hashes a large stack on
/// all cores).
pub(super) const CHECKS_AT_ONCE: usize = 2;

impl Daemon {
    /// Hashing ahead ended: what it hashed is kept for the stack's finish.
    pub(super) fn hashed(
        &mut self,
        dir: &Path,
        r: std::io::Result<Vec<crate::stack::images::FileRecord>>,
    ) {
        let Some(t) = self.stacks.get_mut(dir) else {
            return;
        };
        t.hashing = false;
        match r {
            Ok(files) => {
                t.hashed
                    .extend(files.into_iter().map(|f| (f.name.clone(), f)));
                // images that came of age while this batch ran wait for the next
                // one: the stack is looked at again now, not at its settle deadline
                t.quiet = false;
                self.poke(Duration::ZERO);
                self.send_ahead(dir);
            }
            // read again when it finishes, which says why if it still fails
            Err(e) => tracing::debug!(stack = %dir.display(), "hashing ahead: {e}"),
        }
    }

    /// Rescans dirty folders, decides about every stack that may move, starts transfers
    /// while slots are free, and sets the next deadline.
    pub(super) async fn step(&mut self) -> Result<()> {
        self.soon = None;
        self.wake = None;
        for w in std::mem::take(&mut self.walk) {
            self.walk_root(&w);
        }
        let now = Instant::now();
        for dir in std::mem::take(&mut self.dirty) {
            self.rescan(&dir, now)?;
        }
        let dirs = self.due(now);
        // decisions read the journal and scan folders: a long round yields to the loop, so that
        // transfers already under way are answered and the next ones start while the rest are
        // decided (the checks and hashes themselves run off the loop)
        let budget = std::time::Instant::now() + Duration::from_millis(10);
        let count = dirs.len();
        for (i, dir) in dirs.into_iter().enumerate() {
            if std::time::Instant::now() > budget {
                self.poke(Duration::from_millis(1));
                break;
            }
            if self.checking.len() >= CHECKS_AT_ONCE {
                break; // the end of a check steps again
            }
            self.consider(&dir, now).await?;
            self.undecided = count - i - 1;
            if self.active.len() < self.cfg.link.max_stacks as usize {
                self.start_ready(now).await?;
            }
        }
        self.undecided = 0;
        self.start_ready(now).await?;
        self.discard_next(now).await?;
        self.prune_pool(now);
        self.write_owed_metrics(now);
        Ok(())
    }

    /// Scans a folder events named: a new stack is tracked, a changed one is looked at
    /// afresh, one that no longer holds images is forgotten (and, gone, has its copy
    /// removed).
    pub(super) fn rescan(&mut self, dir: &Path, now: Instant) -> Result<()> {
        let Some(ri) = self.root_of(dir) else {
            return Ok(());
        };
        if self.unsendable(ri, dir).is_some() {
            // never tracked as a stack: held with its reason
            self.held_unsendable(ri, dir);
            return Ok(());
        }
        match self.roots[ri].scan(dir) {
            Ok(scan) if !scan.images.is_empty() || !scan.skipped.is_empty() => {
                match self.stacks.get_mut(dir) {
                    Some(t) if t.scan == scan => {}
                    Some(t) => t.changed(scan, now),
                    None => {
                        let last_change = if self.starting {
                            changed_at(&scan, now)
                        } else {
                            now
                        };
                        let backoff = self.cfg.agent.retry_initial.0;
                        let t = Tracked::new(ri, scan, last_change, now, backoff);
                        self.stacks.insert(dir.to_path_buf(), t);
                    }
                }
            }
            _ => {
                if self.stacks.remove(dir).is_some() {
                    tracing::info!(stack = %dir.display(), "folder no longer holds images; forgetting it");
                    if !dir.exists() {
                        self.vanished(dir)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The stacks to look at this round, oldest change first (decided, and so started, in
    /// the order they finished); the deadlines of those left alone stand in `wake`.
    fn due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut dirs: Vec<(i64, PathBuf)> = Vec::new();
        for (d, t) in &self.stacks {
            match t.due {
                _ if !t.quiet => {}
                Some(at) if at <= now => {}
                // not looked at this round: the deadline an earlier round named still stands
                // (`wake` was cleared by the step)
                Some(at) => {
                    earliest(&mut self.wake, at);
                    continue;
                }
                None => continue,
            }
            dirs.push((t.scan.changed_ns, d.clone()));
        }
        dirs.sort();
        dirs.into_iter().map(|(_, d)| d).collect()
    }

    /// Decides about one stack from its journaled state: what it is waiting for, whether
    /// changed files make a new version, or, finished by its rules, its check and hash.
    pub(super) async fn consider(&mut self, dir: &Path, now: Instant) -> Result<()> {
        let rec = self.record(dir)?;
        let t = self.stacks.get_mut(dir).expect("tracked");
        match rec.state {
            StackState::Freed => self.images_where_freed(dir, &rec, now),
            StackState::Submitted => {
                self.after_submission(dir, &rec, now).await?;
                // pushed, and nothing new since: what the collector holds is the answer
                if self.stacks.get(dir).is_some_and(|t| t.pushed) {
                    if let Some(rec) = self.journal.stack(&rec.dir)? {
                        if rec.state == StackState::Submitted {
                            self.already_sent(&rec);
                        }
                    }
                }
                Ok(())
            }
            StackState::Queued | StackState::Sending | StackState::Sent => {
                // waits for a slot, or for its transfer to end: looked at again when one frees,
                // when the transfer ends or when its files change
                t.quiet = true;
                if !self.active.contains(dir) {
                    self.ready.insert(dir.to_path_buf(), t.order());
                }
                Ok(())
            }
            StackState::Held if t.refused => {
                t.quiet = true;
                if t.pushed {
                    let (name, reason) = (rec.name.clone(), rec.reason.clone());
                    self.tell_pushed(&name, crate::handoff::Answer::Held { reason });
                }
                Ok(())
            }
            // a folder back under a name that had vanished starts over
            StackState::Waiting | StackState::Held | StackState::Discarding | StackState::Gone => {
                let verdict = decide(&self.roots[t.root].rules, &t.observed(now, Vec::new()));
                if matches!(verdict, Verdict::Finished(_)) {
                    self.check(dir, &rec)
                } else {
                    self.apply(dir, &rec, verdict, now)
                }
            }
        }
    }

    /// The stack's journal row (made at first sight); a stack held when the daemon started
    /// because the collector refused it stays held until its files change.
    fn record(&mut self, dir: &Path) -> Result<crate::journal::StackRecord> {
        let dir_s = dir.display().to_string();
        let (ri, name) = {
            let t = &self.stacks[dir];
            (t.root, self.roots[t.root].remote_name(dir))
        };
        let rec = match self.journal.stack(&dir_s)? {
            Some(r) => r,
            None => {
                let workflow = &self.roots[ri].section.workflow;
                self.journal.ensure_stack(&dir_s, &name, workflow)?
            }
        };
        let t = self.stacks.get_mut(dir).expect("tracked");
        t.due = None;
        if std::mem::take(&mut t.fresh) && rec.state == StackState::Held {
            // held after its files were hashed and sent: the collector refused it, and it
            // stays held (with its reason) across a restart until its files change
            let files = self.journal.files(rec.id)?;
            t.refused = !files.is_empty() && same_files(&t.scan, &files);
        }
        Ok(rec)
    }

    /// Images again where a freed stack was: they make its next version.
    fn images_where_freed(
        &mut self,
        dir: &Path,
        rec: &crate::journal::StackRecord,
        now: Instant,
    ) -> Result<()> {
        let t = self.stacks.get_mut(dir).expect("tracked");
        if t.scan.images.is_empty() {
            t.quiet = true;
            return Ok(());
        }
        let v = self.journal.next_version(rec.id)?;
        t.last_change = now;
        earliest(&mut self.wake, now);
        let name = self.roots[t.root].remote_name(dir);
        tracing::info!(stack = %name, version = v, "images arrived where a freed stack was; this becomes a new version");
        Ok(())
    }

    /// A submitted stack's files as scanned now: the same, the same bytes touched, or
    /// changed (a new version, or ignored, as the root's `on_change` says).
    async fn after_submission(
        &mut self,
        dir: &Path,
        rec: &crate::journal::StackRecord,
        now: Instant,
    ) -> Result<()> {
        let files = self.journal.files(rec.id)?;
        let t = self.stacks.get_mut(dir).expect("tracked");
        if same_files(&t.scan, &files) || t.ignored {
            t.quiet = true;
            return Ok(());
        }
        // touched or rewritten with the same bytes: not a new version
        let (d, scan, known) = (dir.to_path_buf(), t.scan.clone(), files.clone());
        if let Ok(Ok(now_files)) =
            tokio::task::spawn_blocking(move || hash_files(&d, &scan, &known)).await
        {
            let same_bytes = now_files.len() == files.len()
                && now_files
                    .iter()
                    .zip(&files)
                    .all(|(a, b)| a.name == b.name && a.blake3 == b.blake3);
            if same_bytes {
                self.journal.refresh_meta(rec.id, &now_files)?;
                return Ok(());
            }
        }
        let t = self.stacks.get_mut(dir).expect("tracked");
        let name = self.roots[t.root].remote_name(dir);
        match self.roots[t.root].section.on_change {
            OnChange::Supersede | OnChange::Resubmit => {
                // every file of the version before still there, unchanged, and more:
                // the stack was finished while it was still being written
                let only_added = t.scan.images.len() > files.len()
                    && files.iter().all(|f| {
                        t.scan.images.iter().any(|s| {
                            s.name == f.name && s.size == f.size && s.mtime_ns == f.mtime_ns
                        })
                    });
                if only_added {
                    self.journal.grew(rec.id)?;
                }
                let v = self.journal.next_version(rec.id)?;
                t.last_change = now;
                earliest(&mut self.wake, now);
                tracing::info!(stack = %name, version = v, "files changed after submission; this becomes a new version");
            }
            OnChange::Ignore => {
                if !t.ignored {
                    t.ignored = true;
                    tracing::info!(stack = %name, "files changed after submission; ignored (on_change = \"ignore\")");
                }
            }
        }
        Ok(())
    }

    /// A stack its rules call finished: its images are checked and hashed off the loop,
    /// which meanwhile answers transfers and decides other stacks; the result comes back as
    /// a message.
    fn check(&mut self, dir: &Path, rec: &crate::journal::StackRecord) -> Result<()> {
        let t = self.stacks.get_mut(dir).expect("tracked");
        if self.checking.contains_key(dir) {
            t.quiet = true; // its check comes back as a message
            return Ok(());
        }
        let mut known = if t.rehash {
            t.hashed.clear();
            Vec::new()
        } else {
            self.journal.files(rec.id)?
        };
        // hashed while it settled: those files are not read again now
        t.ahead = t.scan.images.iter().filter(|f| t.hashed_ahead(f)).count();
        known.extend(t.hashed.values().cloned());
        t.quiet = true;
        self.checking.insert(dir.to_path_buf(), t.scan.changed_ns);
        let (d, scan, checks, tx) = (
            dir.to_path_buf(),
            t.scan.clone(),
            t.checks.clone(),
            self.tx.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let c = crate::stack::images::check_and_hash(&d, scan, checks, &known);
            let _ = tx.send(Msg::Checked(d, Box::new(c)));
        });
        Ok(())
    }

    /// Applies a verdict other than a check's: waiting (with the deadlines it waits for, and
    /// the images left alone hashed ahead), or held until its files change.
    pub(super) fn apply(
        &mut self,
        dir: &Path,
        rec: &crate::journal::StackRecord,
        verdict: Verdict,
        now: Instant,
    ) -> Result<()> {
        let Some(t) = self.stacks.get_mut(dir) else {
            return Ok(());
        };
        let name = self.roots[t.root].remote_name(dir);
        match verdict {
            Verdict::Waiting { why, overdue } => {
                self.wait(dir, &name, (overdue, &why), now);
                if rec.state != StackState::Waiting || rec.reason != why {
                    self.journal.set_state(rec.id, StackState::Waiting, &why)?;
                }
            }
            Verdict::Held(reason) => {
                t.quiet = true; // until its files change
                if rec.state != StackState::Held || rec.reason != reason {
                    tracing::warn!(stack = %name, %reason, "stack held");
                }
                self.journal.set_state(rec.id, StackState::Held, &reason)?;
                if rec.state != StackState::Held {
                    self.held(rec.id, &name, rec.version, &reason)?;
                } else {
                    // held before: no news again, but a push waiting for it hears why
                    self.tell_pushed(&name, crate::handoff::Answer::Held { reason });
                }
            }
            Verdict::Finished(_) => {
                // only a check's result finishes a stack (`checked`)
                t.quiet = false;
            }
        }
        Ok(())
    }

    /// A stack that is not finished yet: the deadlines its decision waits for, on the loop's
    /// clock (until then only a change of its files moves it), and what has been left alone
    /// meanwhile hashed ahead, off the loop.
    fn wait(&mut self, dir: &Path, name: &str, (overdue, why): (bool, &str), now: Instant) {
        let t = self.stacks.get_mut(dir).expect("tracked");
        let rules = &self.roots[t.root].rules;
        if overdue && !t.warned {
            t.warned = true;
            tracing::warn!(stack = %name, "stack is not finished after max_wait ({}): {why}", humantime::format_duration(rules.max_wait));
        }
        let mut due = None;
        // settle still matters to a counted stack: a broken image is held only once
        // the folder has been quiet that long
        let settled = t.last_change + rules.settle;
        if settled > now {
            earliest(&mut due, settled);
        }
        if let (true, Some(f)) = (rules.counted(), rules.finish_after) {
            if t.last_change + f > now {
                earliest(&mut due, t.last_change + f);
            }
        }
        let overdue_at = t.first_seen + rules.max_wait;
        if !t.warned && overdue_at > now {
            earliest(&mut due, overdue_at);
        }
        let ahead = t.to_hash_ahead(now, &mut due);
        if let Some(settle) = self.roots[t.root].section.section_settle() {
            // a section hashed ahead is looked at again when it has been left alone long
            // enough to be sent ahead
            t.to_send_ahead(now, settle.0, &mut due);
        }
        if !ahead.is_empty() && !t.hashing && !t.rehash {
            t.hashing = true;
            let (d, tx) = (dir.to_path_buf(), self.tx.clone());
            let scan = DirScan {
                images: ahead,
                ..DirScan::default()
            };
            tokio::task::spawn_blocking(move || {
                let r = hash_files(&d, &scan, &[]);
                let _ = tx.send(Msg::Hashed(d, r));
            });
        }
        if let Some(at) = due {
            t.quiet = true;
            t.due = Some(at);
            earliest(&mut self.wake, at);
        }
        self.send_ahead(dir);
    }

    /// A finished stack's check and hash came back: it is queued with its files, or waits,
    /// or is held with the faults found. A result for files that changed meanwhile is
    /// dropped, and the stack decided again.
    pub(super) fn checked(&mut self, dir: &Path, c: crate::stack::images::Checked) -> Result<()> {
        self.checking.remove(dir);
        self.poke(Duration::ZERO);
        let Some(t) = self.stacks.get_mut(dir) else {
            return Ok(());
        };
        if t.scan != c.scan {
            t.quiet = false;
            return Ok(());
        }
        t.checks = c.checks;
        let Some(rec) = self.journal.stack(&dir.display().to_string())? else {
            return Ok(());
        };
        let t = self.stacks.get_mut(dir).expect("tracked");
        if !matches!(
            rec.state,
            StackState::Waiting | StackState::Held | StackState::Discarding | StackState::Gone
        ) {
            t.quiet = false; // moved meanwhile (a `push` of the same folder)
            return Ok(());
        }
        let now = Instant::now();
        let rules = &self.roots[t.root].rules;
        let verdict = decide(rules, &t.observed(now, c.faults));
        let Verdict::Finished(trigger) = verdict else {
            return self.apply(dir, &rec, verdict, now);
        };
        let name = self.roots[t.root].remote_name(dir);
        match c.files {
            Some(Ok(files)) => {
                t.rehash = false;
                if trigger == crate::stack::Trigger::QuietTooLong {
                    tracing::warn!(stack = %name, files = files.len(), "stack finished without its count or marker: nothing changed for finish_after");
                }
                tracing::info!(stack = %name, version = rec.version, files = files.len(), hashed_ahead = t.ahead, ?trigger, "stack finished");
                t.finished_at = Some(std::time::SystemTime::now());
                t.quiet = true;
                self.journal.queue(rec.id, &files)?;
                self.ready.insert(dir.to_path_buf(), t.order());
            }
            Some(Err(e)) => {
                // a file vanished or became unreadable between scan and hash
                t.last_change = now;
                t.quiet = true;
                t.due = Some(now + rules.settle);
                earliest(&mut self.wake, now + rules.settle);
                self.journal.set_state(
                    rec.id,
                    StackState::Waiting,
                    &format!("cannot read an image yet: {e}"),
                )?;
            }
            // whole images are always hashed; decided again if not
            None => t.quiet = false,
        }
        Ok(())
    }
}
