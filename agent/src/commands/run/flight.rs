//! Stacks in flight: slots taken oldest first, far ends shared and kept open between stacks
//! (the warm link), what a finished transfer means for its stack, and the removal of a
//! vanished stack's partial copy, which takes a slot like a send.

use super::*;

/// What sending a stack's sections ahead came back with.
#[derive(Debug)]
pub struct AheadDone {
    /// The files offered.
    pub files: Vec<FileRecord>,
    /// The TIFF checks made on the way.
    pub checks: HashMap<String, (u64, i64, Option<String>)>,
    /// The names the collector acknowledged, or why not.
    pub acked: std::result::Result<Vec<String>, transfer::TransferError>,
    /// The far end, if still good.
    pub link: Option<crate::link::Link>,
    /// The partial version submitted after them (a streamed stack): its number, its
    /// sections, the collector's answer.
    pub streamed: Option<(
        u32,
        usize,
        std::result::Result<transfer::Accepted, transfer::TransferError>,
    )>,
}

/// Finished stacks waiting for a slot, in the order they go: the time their images last
/// changed, oldest first. Kept in order, so that the next is found without sorting them all
/// at every step (a cold start queues thousands).
#[derive(Default)]
pub(super) struct Ready {
    order: std::collections::BTreeSet<(i64, PathBuf)>,
    key: HashMap<PathBuf, i64>,
}

impl Ready {
    /// Queues `dir` (again) with its order.
    pub(super) fn insert(&mut self, dir: PathBuf, order: i64) {
        if let Some(old) = self.key.insert(dir.clone(), order) {
            self.order.remove(&(old, dir.clone()));
        }
        self.order.insert((order, dir));
    }

    /// Takes `dir` out; its order, if it was queued.
    pub(super) fn remove(&mut self, dir: &Path) -> Option<i64> {
        let order = self.key.remove(dir)?;
        self.order.remove(&(order, dir.to_path_buf()));
        Some(order)
    }

    /// How many wait.
    pub(super) fn len(&self) -> usize {
        self.key.len()
    }

    /// Whether none waits.
    pub(super) fn is_empty(&self) -> bool {
        self.key.is_empty()
    }

    /// The waiting stacks with their order, oldest first.
    fn in_order(&self) -> impl Iterator<Item = &(i64, PathBuf)> {
        self.order.iter()
    }
}

impl Daemon {
    /// Closes far ends unused for `[link] idle`, off the loop, and wakes for the next one.
    pub(super) fn prune_pool(&mut self, now: Instant) {
        let idle = self.cfg.link.idle.0;
        let (old, keep): (Vec<_>, Vec<_>) = self
            .pool
            .drain(..)
            .partition(|(_, used)| now.saturating_duration_since(*used) >= idle);
        self.pool = keep;
        if !old.is_empty() {
            tracing::debug!(
                links = old.len(),
                "closing far ends unused for {}",
                self.cfg.link.idle
            );
            let old: Vec<_> = old.into_iter().map(|(l, _)| l).collect();
            tokio::task::spawn_blocking(move || old.into_iter().for_each(|l| l.close()));
        }
        if let Some(first) = self.pool.iter().map(|(_, used)| *used).min() {
            earliest(&mut self.wake, first + idle);
        }
    }

    /// Sends a settling stack's sections ahead of its finish: those hashed ahead, left alone
    /// for `[[watch]] file_settle` and whole TIFFs, not sent yet, on one far end kept open
    /// (or a new one while `channels` allow), off the loop. The stack stays waiting.
    pub(super) fn send_ahead(&mut self, dir: &Path) {
        let Some((seen, files, rec)) = self.ahead_batch(dir) else {
            return;
        };
        let Some(t) = self.stacks.get(dir) else {
            return;
        };
        // the checks done so far travel with the batch and come back with what it checked, so
        // that the finish does not read those headers again
        let checks = t.checks.clone();
        let streaming = self.streaming(t, &rec);
        self.ahead.insert(dir.to_path_buf());
        self.in_use.insert(dir.to_path_buf(), 1);
        let batch = Ahead {
            cfg: self.cfg.clone(),
            ctl: self.pool_ctl.clone(),
            link: self.pool.pop().map(|(l, _)| l),
            job: Job {
                dir: dir.to_path_buf(),
                name: rec.name.clone(),
                version: rec.version,
                workflow: rec.workflow.clone(),
                files: Vec::new(),
                progress: None,
                keep_older: false,
                partial: false,
            },
            seen,
            files,
            checks,
            streaming,
        };
        tracing::debug!(stack = %rec.name, files = batch.files.len(), "sending sections ahead of the finish");
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let dir = batch.job.dir.clone();
            let _ = tx.send(Msg::SentAhead(dir, Box::new(batch.send())));
        });
    }

    /// The sections of a waiting stack that may go ahead now, with what was seen of its
    /// folder and its journal row; none while its finish or another batch is under way, no
    /// channel is free, the shared connection is not up, or nothing is ready.
    fn ahead_batch(
        &self,
        dir: &Path,
    ) -> Option<(
        Vec<crate::stack::scan::FileSeen>,
        Vec<FileRecord>,
        crate::journal::StackRecord,
    )> {
        let t = self.stacks.get(dir)?;
        let settle = self.roots[t.root].section.section_settle()?;
        let busy: usize = self.in_use.values().sum();
        if self.ahead.contains(dir)
            || self.active.contains(dir)
            || self.checking.contains_key(dir)
            || busy >= self.cfg.link.channels as usize
            || (self.master.is_some() && self.pool_ctl.is_none())
        {
            return None; // the finish, or the next batch, sends them
        }
        let (seen, files) = t.ready_to_send_ahead(settle.0);
        if files.is_empty() {
            return None; // every round of a waiting stack asks: no journal read for nothing
        }
        let rec = self.journal.stack(&dir.display().to_string()).ok()??;
        (rec.state == StackState::Waiting).then_some((seen, files, rec))
    }

    /// What a streamed stack's next partial version is decided from; none when the stack
    /// does not stream or its workflow has nothing to run before the seal.
    fn streaming(
        &self,
        t: &Tracked,
        rec: &crate::journal::StackRecord,
    ) -> Option<super::stream::Streaming> {
        if !self.roots[t.root].section.streams() {
            return None;
        }
        let chunk = super::stream::chunk_of(self.cfg.workflows.get(&rec.workflow))?;
        if self.journal.abandoned(rec.id).ok()? {
            return None; // past max_wait: it goes whole if it is finished
        }
        let streamed = self.journal.streamed(rec.id).ok()?;
        let mut order: Vec<String> = t.scan.images.iter().map(|f| f.name.clone()).collect();
        order.sort();
        let sent = t
            .scan
            .images
            .iter()
            .filter(|f| t.sent_ahead.get(&f.name) == Some(&(f.size, f.mtime_ns)))
            .filter_map(|f| t.hashed.get(&f.name))
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        let journaled = self
            .journal
            .files(rec.id)
            .ok()?
            .into_iter()
            .filter(|f| f.sent)
            .map(|f| (f.name, f.blake3))
            .collect();
        Some(super::stream::Streaming {
            chunk,
            streamed,
            order,
            sent,
            journaled,
        })
    }

    /// A partial version of a stack still being written came back: accepted, the stack's
    /// next submission is the next version; refused (a version of that number exists from
    /// before a restart), the next partial takes the next number; else the next batch tries.
    fn streamed(
        &mut self,
        dir: &Path,
        version: u32,
        sections: usize,
        answer: std::result::Result<transfer::Accepted, transfer::TransferError>,
    ) -> Result<()> {
        let Ok(Some(rec)) = self.journal.stack(&dir.display().to_string()) else {
            return Ok(());
        };
        match answer {
            Ok(a) => {
                self.journal.stream_accepted(rec.id, version, sections)?;
                tracing::info!(stack = %rec.name, version, sections, jobs = a.jobs, "streamed: the sections so far run at the collector");
            }
            Err(transfer::TransferError::SubmitRefused(why)) => {
                let before = self.journal.streamed(rec.id)?;
                self.journal.stream_accepted(rec.id, version, before)?;
                tracing::warn!(stack = %rec.name, version, "the collector refused the sections so far ({why}); the next ones go as v{}", version + 1);
            }
            Err(e) => tracing::debug!(stack = %rec.name, "streaming: {e}"),
        }
        Ok(())
    }

    /// Sections sent ahead came back: those acknowledged are journaled as sent (the stack
    /// stays waiting), the far end goes back to the pool, and a stack whose folder vanished
    /// meanwhile has its partial copy removed.
    pub(super) fn sent_ahead(&mut self, dir: &Path, done: AheadDone) -> Result<()> {
        let AheadDone {
            files,
            checks,
            acked: r,
            link,
            streamed,
        } = done;
        self.ahead.remove(dir);
        self.in_use.remove(dir);
        let went = r.is_ok();
        if let Some(l) = link {
            self.pool.push((l, Instant::now()));
        }
        match r {
            Ok(acked) => {
                let sent: Vec<FileRecord> = files
                    .into_iter()
                    .filter(|f| acked.contains(&f.name))
                    .collect();
                if let Ok(Some(rec)) = self.journal.stack(&dir.display().to_string()) {
                    self.journal.sent_ahead(rec.id, &sent)?;
                    tracing::info!(stack = %rec.name, files = sent.len(), "sections sent ahead of the finish");
                }
                if let Some(t) = self.stacks.get_mut(dir) {
                    for f in &sent {
                        t.sent_ahead.insert(f.name.clone(), (f.size, f.mtime_ns));
                    }
                    // valid while size and mtime match, as the check itself keeps them
                    t.checks.extend(checks);
                }
            }
            // the finish sends them; it says why if it fails too
            Err(e) => tracing::debug!(stack = %dir.display(), "sending ahead: {e}"),
        }
        if let Some((version, sections, answer)) = streamed {
            self.streamed(dir, version, sections, answer)?;
        }
        if let (true, Some(t)) = (went, self.stacks.get_mut(dir)) {
            // sections that became ready while this batch was away go now, not at the
            // stack's next deadline (its settle); after a failure they wait for it, so that
            // an unreachable collector is not asked again at once, and again
            t.quiet = false;
        }
        if !dir.exists() {
            self.vanished(dir)?;
        }
        self.poke(Duration::ZERO);
        Ok(())
    }

    /// Starts finished stacks, oldest first, while a stack slot and a far end are free.
    pub(super) async fn start_ready(&mut self, now: Instant) -> Result<()> {
        let (slots, ends) = (
            self.cfg.link.max_stacks as usize,
            self.cfg.link.channels as usize,
        );
        let free = slots.saturating_sub(self.active.len());
        if self.ready.is_empty() || free == 0 {
            return Ok(());
        }
        // the oldest that may go now; those waiting out a retry name their deadline; none
        // goes before an older stack still being checked (its check's end steps again)
        let checking = self.checking.values().min().copied();
        let mut next = Vec::new();
        for (order, dir) in self.ready.in_order() {
            if checking.is_some_and(|c| c < *order) {
                break;
            }
            if self.ahead.contains(dir) {
                continue; // its sections sent ahead come back first (and step again)
            }
            match self.stacks.get(dir).and_then(|t| t.retry_at) {
                Some(at) if at > now => earliest(&mut self.wake, at),
                _ => next.push(dir.clone()),
            }
            if next.len() == free {
                break;
            }
        }
        for dir in next {
            if self.active.len() >= slots || self.in_use.values().sum::<usize>() >= ends {
                break;
            }
            let order = self.ready.remove(&dir).unwrap_or_default();
            if !self.stacks.contains_key(&dir) {
                continue;
            }
            if !self.start_send(&dir, order, now).await? {
                break; // the link is down: the others wait with it
            }
        }
        Ok(())
    }

    /// Starts sending one finished stack; false when the SSH master cannot be had.
    pub(super) async fn start_send(
        &mut self,
        dir: &Path,
        order: i64,
        now: Instant,
    ) -> Result<bool> {
        let Some(rec) = self.journal.stack(&dir.display().to_string())? else {
            return Ok(true);
        };
        let Some(t) = self.stacks.get_mut(dir) else {
            return Ok(true);
        };
        let t_root = t.root;
        if !matches!(
            rec.state,
            StackState::Queued | StackState::Sending | StackState::Sent
        ) {
            // moved meanwhile (a `push` of the same folder): decide about it afresh
            t.quiet = false;
            earliest(&mut self.wake, now);
            return Ok(true);
        }
        let files = self.journal.files(rec.id)?;
        if !same_files(&t.scan, &files) {
            self.journal.set_state(
                rec.id,
                StackState::Waiting,
                "files changed before they were sent; settling again",
            )?;
            t.quiet = false;
            earliest(&mut self.wake, now);
            return Ok(true);
        }
        let ctl = match self.master.as_mut() {
            None => None,
            Some(m) => match m.ensure().await {
                Ok(p) => Some(p),
                Err(e) => {
                    self.link_down(dir, &rec, &e.to_string(), order, now)?;
                    return Ok(false);
                }
            },
        };
        // far ends of a master that was replaced went with it
        if self.pool_ctl != ctl {
            self.pool.clear();
            self.pool_ctl = ctl.clone();
        }
        let (k, links) = self.far_ends_for(&files);
        let job = Job {
            dir: dir.to_path_buf(),
            name: rec.name.clone(),
            version: rec.version,
            workflow: rec.workflow.clone(),
            files,
            progress: None,
            keep_older: self.roots[t_root].section.on_change == beamflow_config::OnChange::Resubmit,
            partial: false,
        };
        self.journal.set_state(rec.id, StackState::Sending, "")?;
        tracing::info!(stack = %rec.name, version = rec.version, files = job.files.len(), channels = k, warm = links.len(), "sending");
        self.active.insert(dir.to_path_buf());
        self.in_use.insert(dir.to_path_buf(), k);
        let (cfg, tx, d) = (self.cfg.clone(), self.tx.clone(), dir.to_path_buf());
        tokio::task::spawn_blocking(move || {
            let (report, kept) = transfer::send_over(&cfg, &job, ctl.as_deref(), links, k);
            let _ = tx.send(Msg::Done(d, Box::new(report), kept));
        });
        Ok(true)
    }

    /// The master is down: the stack keeps its place and is tried again after its backoff,
    /// while the daemon keeps watching and journaling.
    fn link_down(
        &mut self,
        dir: &Path,
        rec: &crate::journal::StackRecord,
        why: &str,
        order: i64,
        now: Instant,
    ) -> Result<()> {
        let t = self.stacks.get_mut(dir).expect("tracked");
        let wait = t.backoff;
        let decision = lifecycle::link_down(why, wait);
        if rec.reason != decision.reason {
            tracing::warn!(stack = %rec.name, "{}", decision.reason);
        }
        self.journal
            .set_state(rec.id, decision.state, &decision.reason)?;
        t.retry_at = Some(now + wait);
        t.backoff = Backoff::of(&self.cfg).after(wait);
        earliest(&mut self.wake, now + wait);
        self.ready.insert(dir.to_path_buf(), order);
        Ok(())
    }

    /// How many far ends a stack of these files gets, and the kept ones it takes. With
    /// stacks waiting behind it, a stack gets its share of the far ends: stacks side by side
    /// overlap their fixed costs (the far side's syncs, the registration), which files side
    /// by side cannot. Never more far ends open than `channels`: the oldest kept ones go.
    fn far_ends_for(&mut self, files: &[FileRecord]) -> (usize, Vec<crate::link::Link>) {
        let ends = self.cfg.link.channels as usize;
        let busy: usize = self.in_use.values().sum();
        let slots = self.cfg.link.max_stacks as usize;
        let later = self.ready.len() + self.undecided + self.checking.len();
        let share = (ends / slots.min(later + 1)).max(1);
        let k = transfer::channels_for(&self.cfg, files.iter().map(|f| f.size))
            .min(share)
            .min(ends.saturating_sub(busy))
            .max(1);
        let mut links = Vec::new();
        while links.len() < k {
            let Some((mut l, _)) = self.pool.pop() else {
                break;
            };
            if l.alive() {
                links.push(l);
            }
        }
        while busy + k + self.pool.len() > ends && !self.pool.is_empty() {
            let (l, _) = self.pool.remove(0);
            tokio::task::spawn_blocking(move || l.close());
        }
        (k, links)
    }

    pub(super) fn finished(
        &mut self,
        dir: PathBuf,
        report: Report,
        links: Vec<crate::link::Link>,
    ) -> Result<()> {
        self.active.remove(&dir);
        self.in_use.remove(&dir);
        let now = Instant::now();
        self.pool.extend(links.into_iter().map(|l| (l, now)));
        if let Some(t) = self.stacks.get_mut(&dir) {
            t.quiet = false; // what comes next is decided at the next step
        }
        self.finished_transfer(&dir, report)?;
        if !self.stacks.contains_key(&dir) && !dir.exists() {
            // renamed or removed while it was being sent
            self.vanished(&dir)?;
        }
        Ok(())
    }

    pub(super) fn finished_transfer(&mut self, dir: &Path, report: Report) -> Result<()> {
        let dir = dir.to_path_buf();
        let Some(rec) = self.journal.stack(&dir.display().to_string())? else {
            return Ok(());
        };
        let backoff = Backoff::of(&self.cfg);
        let t = self.stacks.get_mut(&dir);
        let wait = t.as_ref().map(|t| t.backoff).unwrap_or(backoff.initial);
        let decision = report.record(&mut self.journal, rec.id, wait)?;
        if report.result.is_ok() {
            let accepted = std::time::SystemTime::now();
            let finished = t.as_ref().and_then(|t| t.finished_at);
            // the newest section's mtime: when the last of the stack landed
            let landed = self
                .journal
                .files(rec.id)?
                .iter()
                .map(|f| f.mtime_ns)
                .max()
                .map(|ns| std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64));
            let secs = |a: Option<std::time::SystemTime>, b: Option<std::time::SystemTime>| {
                let (a, b) = (a?, b?);
                Some(match b.duration_since(a) {
                    Ok(d) => d.as_secs_f64(),
                    Err(_) => 0.0,
                })
            };
            self.metrics.accepted(
                secs(landed, finished),
                secs(finished, Some(accepted)),
                report.wire_bytes,
            );
        }
        self.pushed_sent(&rec, &report, &decision);
        let t = self.stacks.get_mut(&dir);
        match (&report.result, decision.next) {
            (Ok(acc), _) => tracing::info!(
                stack = %rec.name, version = rec.version, remote_id = acc.remote_id, jobs = acc.jobs,
                bytes = report.wire_bytes, same = report.same, secs = report.elapsed.as_secs_f64(), "submitted"
            ),
            (Err(_), Next::RetryIn(_)) => tracing::warn!(stack = %rec.name, "{}", decision.reason),
            (Err(_), Next::Hold) => tracing::error!(stack = %rec.name, "{}", decision.reason),
            (Err(_), _) => tracing::info!(stack = %rec.name, "{}", decision.reason),
        }
        if let Some(t) = t {
            match decision.next {
                Next::Done => {
                    t.retry_at = None;
                    t.backoff = backoff.initial;
                }
                Next::RetryIn(w) => {
                    t.retry_at = Some(Instant::now() + w);
                    t.backoff = backoff.after(w);
                }
                Next::SettleAgain => {
                    t.last_change = Instant::now();
                    t.checks.clear();
                    t.rehash = true;
                }
                Next::Hold => t.refused = true,
            }
        }
        if decision.next == Next::SettleAgain {
            self.dirty.insert(dir);
        }
        if decision.next == Next::Hold {
            self.held(rec.id, &rec.name, rec.version, &decision.reason)?;
        }
        if report.result.is_ok() {
            self.metrics_changed(Instant::now());
        }
        Ok(())
    }

    /// Starts removing one vanished stack's partial copy, when the link is free.
    pub(super) async fn discard_next(&mut self, now: Instant) -> Result<()> {
        if self.active.len() >= self.cfg.link.max_stacks as usize || !self.discards_pending {
            return Ok(());
        }
        let waiting: Vec<_> = self
            .journal
            .stacks()?
            .into_iter()
            .filter(|r| r.state == StackState::Discarding)
            .collect();
        if waiting.is_empty() {
            self.discards_pending = false;
            return Ok(());
        }
        for r in &waiting {
            if let Some((at, _)) = self.discard_retry.get(&r.id).filter(|(at, _)| *at > now) {
                earliest(&mut self.wake, *at);
            }
        }
        let Some(rec) = waiting.into_iter().find(|r| {
            !self.active.contains(Path::new(&r.dir))
                && self
                    .discard_retry
                    .get(&r.id)
                    .is_none_or(|(at, _)| *at <= now)
        }) else {
            return Ok(());
        };
        let ctl = match self.master.as_mut() {
            None => None,
            Some(m) => match m.ensure().await {
                Ok(p) => Some(p),
                Err(e) => {
                    self.discarded(rec.id, transfer::Discard::Failed(e.to_string()))?;
                    return Ok(());
                }
            },
        };
        let files: Vec<String> = self
            .journal
            .files(rec.id)?
            .into_iter()
            .map(|f| f.name)
            .collect();
        let dir = PathBuf::from(&rec.dir);
        self.active.insert(dir.clone());
        let (cfg, tx, id, name) = (self.cfg.clone(), self.tx.clone(), rec.id, rec.name);
        tokio::task::spawn_blocking(move || {
            let outcome = transfer::discard(&cfg, ctl.as_deref(), &name, &files);
            let _ = tx.send(Msg::Discarded(dir, id, outcome));
        });
        Ok(())
    }

    pub(super) fn discarded(&mut self, id: i64, outcome: transfer::Discard) -> Result<()> {
        let still = self
            .journal
            .stacks()?
            .into_iter()
            .find(|r| r.id == id)
            .filter(|r| r.state == StackState::Discarding);
        let Some(rec) = still else {
            return Ok(()); // the folder came back meanwhile
        };
        match outcome {
            transfer::Discard::Removed(n) => {
                self.discard_retry.remove(&id);
                tracing::info!(stack = %rec.name, removed = n, "partial copy removed at the collector");
                self.journal.set_state(
                    id,
                    StackState::Gone,
                    &format!("the folder is gone (renamed or removed) before it was submitted; its partial copy at the collector ({n} files) was removed"),
                )?;
            }
            transfer::Discard::Kept(why) => {
                self.discard_retry.remove(&id);
                self.journal.set_state(
                    id,
                    StackState::Gone,
                    &format!("the folder is gone (renamed or removed); the collector keeps its files: {why}"),
                )?;
            }
            transfer::Discard::Failed(why) => {
                let backoff = Backoff::of(&self.cfg);
                let wait = self
                    .discard_retry
                    .get(&id)
                    .map(|(_, w)| *w)
                    .unwrap_or(backoff.initial);
                self.discard_retry
                    .insert(id, (Instant::now() + wait, backoff.after(wait)));
                let reason = format!(
                    "the folder is gone before it was submitted; removing its partial copy at the collector failed ({why}); retrying in {}",
                    humantime::format_duration(wait)
                );
                tracing::warn!(stack = %rec.name, "{reason}");
                self.journal
                    .set_state(id, StackState::Discarding, &reason)?;
            }
        }
        Ok(())
    }
}

/// One batch of sections going ahead of their stack's finish, with all it needs off the loop.
struct Ahead {
    cfg: Arc<Config>,
    ctl: Option<PathBuf>,
    link: Option<crate::link::Link>,
    job: Job,
    seen: Vec<crate::stack::scan::FileSeen>,
    files: Vec<FileRecord>,
    checks: HashMap<String, (u64, i64, Option<String>)>,
    streaming: Option<super::stream::Streaming>,
}

impl Ahead {
    /// Checks the sections (only whole TIFFs go ahead; the finish checks every file again),
    /// sends them, and submits a streamed stack's partial version when one is due.
    fn send(mut self) -> AheadDone {
        let scan = crate::stack::scan::DirScan {
            images: std::mem::take(&mut self.seen),
            ..Default::default()
        };
        let faults = crate::stack::images::check_images(&self.job.dir, &scan, &mut self.checks);
        let whole: Vec<FileRecord> = std::mem::take(&mut self.files)
            .into_iter()
            .filter(|f| !faults.iter().any(|(n, _)| *n == f.name))
            .collect();
        let job = Job {
            files: whole.clone(),
            ..self.job
        };
        let ctl = self.ctl.as_deref();
        let (acked, mut link) = transfer::send_ahead(&self.cfg, &job, ctl, self.link);
        let mut streamed = None;
        if let (Ok(names), Some(s)) = (&acked, self.streaming) {
            let arrived: Vec<FileRecord> = whole
                .iter()
                .filter(|f| names.contains(&f.name))
                .cloned()
                .collect();
            if let Some(files) = s.due(&arrived) {
                let n = files.len();
                let job = Job {
                    files,
                    partial: true,
                    ..job
                };
                let (answer, l) = transfer::submit_partial(&self.cfg, &job, ctl, link.take());
                link = l;
                streamed = Some((job.version, n, answer));
            }
        }
        AheadDone {
            files: whole,
            checks: self.checks,
            acked,
            link,
            streamed,
        }
    }
}
