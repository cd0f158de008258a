//! What the beamline hears back and tells: DAG outcomes and results asked over the link on
//! the side, freeing what is done, the SSH master's watchdog, news (`[[notify]]`) and the
//! metrics file.

use super::*;
use beamflow_protocol::states::DagState;

/// Minutes since local midnight (for active hours).
fn local_minute(t: std::time::SystemTime) -> u32 {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes the struct it is given and reads the time it is given
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return 0;
    }
    (tm.tm_hour * 60 + tm.tm_min) as u32
}

impl Daemon {
    /// Fetching a stack's results ended: the journal says what arrived, or why not yet.
    pub(super) fn results_fetched(
        &mut self,
        id: i64,
        remote: i64,
        r: Result<(usize, u64, String), crate::link::far::FarError>,
    ) -> Result<()> {
        self.fetching = false;
        match r {
            Ok((n, bytes, dir)) => {
                let text = format!(
                    "results: {n} file(s), {} in {dir}",
                    crate::commands::status::human_bytes(bytes)
                );
                tracing::info!(remote, "{text}");
                self.journal.set_results(id, remote, &text, true)?;
            }
            Err(e) => {
                let e = beamflow_program::chain(&e);
                tracing::warn!(remote, "results not fetched yet: {e}");
                let text = format!("results: not yet: {e}");
                self.journal.set_results(id, remote, &text, false)?;
            }
        }
        Ok(())
    }

    /// The link for a question on the side (outcomes, results): `Some(None)` for the local
    /// transport, `Some(socket)` over a live SSH master, `None` while the master is down.
    pub(super) async fn side_link(&mut self) -> Option<Option<PathBuf>> {
        match self.master.as_mut() {
            Some(_) if self.master_down => None,
            Some(m) => m.ensure().await.ok().map(Some),
            None => Some(None),
        }
    }

    /// Asks the collector, off the loop, where the DAGs of submitted stacks are; the answer
    /// arrives as a message. Nothing is asked while the SSH master is down.
    pub(super) async fn ask_outcomes(&mut self) -> Result<()> {
        let pending = self.journal.outcomes_pending()?;
        if pending.is_empty() {
            return Ok(());
        }
        let Some(ctl) = self.side_link().await else {
            return Ok(());
        };
        self.asking = true;
        let (cfg, tx) = (self.cfg.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let ids: Vec<i64> = pending.iter().map(|p| p.1).collect();
            let answer = crate::outcome::fetch(&cfg, ctl.as_deref(), &ids).map(|got| {
                pending
                    .iter()
                    .filter_map(|&(id, remote)| {
                        got.iter()
                            .find(|o| o.id as i64 == remote)
                            .map(|o| (id, remote, o.clone()))
                    })
                    .collect()
            });
            let _ = tx.send(Msg::Outcomes(answer));
        });
        Ok(())
    }

    /// A streamed stack not finished after its root's `max_wait` is abandoned at the
    /// collector: the open jobs of its partial versions are cancelled, each saying why, and
    /// it streams no more (what ran is kept; it is sent whole if it is finished later). One
    /// at a time, off the loop, asked again at the next tick if the collector cannot answer.
    pub(super) async fn abandon_overdue(&mut self, now: Instant) -> Result<()> {
        let due = self
            .journal
            .streaming()?
            .into_iter()
            .find_map(|(id, dir, name)| {
                let t = self.stacks.get(Path::new(&dir))?;
                let max_wait = self.roots[t.root].rules.max_wait;
                (now.saturating_duration_since(t.first_seen) >= max_wait)
                    .then(|| (id, name, humantime::format_duration(max_wait).to_string()))
            });
        let Some((id, name, after)) = due else {
            return Ok(());
        };
        let Some(ctl) = self.side_link().await else {
            return Ok(());
        };
        self.abandoning = true;
        let req = beamflow_protocol::api::AbandonRequest {
            beamline: self.cfg.agent.beamline(),
            stack: name.clone(),
            why: beamflow_protocol::api::AbandonWhy::NotFinished(after.clone()),
        };
        let (cfg, tx) = (self.cfg.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let body = serde_json::to_vec(&req).unwrap_or_default();
            let r = crate::link::far::ask_with(&cfg, ctl.as_deref(), &["abandon"], Some(&body));
            let _ = tx.send(Msg::Abandoned(id, name, after, r));
        });
        Ok(())
    }

    /// The collector's answer to an abandonment: the stack's status says what became of its
    /// streamed work; a failure is asked again at the next tick.
    pub(super) fn abandoned(
        &mut self,
        id: i64,
        name: &str,
        after: &str,
        r: std::result::Result<beamflow_protocol::api::AbandonResponse, crate::link::far::FarError>,
    ) -> Result<()> {
        self.abandoning = false;
        match r {
            Ok(answer) => {
                let line = match answer.cancelled {
                    Some(n) => format!(
                        "abandoned after {after} (max_wait): {n} open job(s) of its streamed versions cancelled; it is sent whole if it is finished"
                    ),
                    None => format!("not finished after {after} (max_wait); it has a sealed version"),
                };
                tracing::warn!(stack = %name, "{line}");
                self.journal.set_abandoned(id, &line)?;
            }
            Err(e) => tracing::warn!(
                stack = %name,
                "cannot abandon the streamed work of a stack past max_wait (asked again later): {}",
                beamflow_program::chain(&e)
            ),
        }
        Ok(())
    }

    /// `delete_after = "verified+done"`: removes the images of stacks the collector verified
    /// and whose DAG is done (results home first, when they are fetched). Only the journaled
    /// files, each still the size and time it had when it was hashed and verified, are
    /// removed; a file that changed since stays, and so does anything else in the folder.
    pub(super) fn free_done(&mut self) -> Result<()> {
        if !self
            .cfg
            .watch
            .iter()
            .any(|w| w.delete_after == "verified+done")
        {
            return Ok(());
        }
        let results = self.cfg.agent.results_dir.is_some();
        for rec in self.journal.freeable(results)? {
            let dir = PathBuf::from(&rec.dir);
            let Some(ri) = self.root_of(&dir) else {
                continue;
            };
            if self.roots[ri].section.delete_after != "verified+done" {
                continue;
            }
            let files = self.journal.files(rec.id)?;
            if files.is_empty() || files.iter().any(|f| !f.sent) {
                continue;
            }
            let mut removed = Vec::new();
            let mut kept = 0;
            for f in &files {
                let p = dir.join(&f.name);
                let same = std::fs::symlink_metadata(&p).is_ok_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.file_type().is_file()
                        && m.len() == f.size
                        && m.mtime() * 1_000_000_000 + m.mtime_nsec() == f.mtime_ns
                });
                if same && std::fs::remove_file(&p).is_ok() {
                    removed.push((p.display().to_string(), f.size));
                } else {
                    kept += 1;
                }
            }
            if dir != self.roots[ri].canon {
                let _ = std::fs::remove_dir(&dir); // only when nothing else is left in it
            }
            let bytes: u64 = removed.iter().map(|r| r.1).sum();
            let mut reason = format!(
                "freed {} file(s), {}: the collector verified them and the DAG is done",
                removed.len(),
                crate::commands::status::human_bytes(bytes)
            );
            if kept > 0 {
                reason.push_str(&format!("; {kept} changed since and stayed"));
            }
            tracing::info!(stack = %rec.name, files = removed.len(), bytes, "{reason}");
            self.journal.freed(rec.id, &removed, &reason)?;
        }
        Ok(())
    }

    /// Fetches the results of the first done stack that has some to fetch, off the loop.
    pub(super) async fn fetch_results(&mut self) -> Result<()> {
        let Some(root) = self.cfg.agent.results_dir.clone() else {
            return Ok(());
        };
        if self.fetching {
            return Ok(());
        }
        let Some((id, remote, name, version)) = self.journal.results_pending()?.into_iter().next()
        else {
            return Ok(());
        };
        let Some(ctl) = self.side_link().await else {
            return Ok(());
        };
        self.fetching = true;
        let (cfg, tx) = (self.cfg.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let dir = root.join(&name).join(format!(
                "{}{version}",
                beamflow_protocol::WORK_VERSION_PREFIX
            ));
            let r = crate::results::fetch(&cfg, ctl.as_deref(), remote, &dir)
                .map(|(n, b)| (n, b, dir.display().to_string()));
            let _ = tx.send(Msg::Results(id, remote, r));
        });
        Ok(())
    }

    /// Writes the metrics file after an accepted stack: at once if it was last written a
    /// second ago or more, else at the end of that second. Each write reads every stack's row,
    /// and a cold start accepting thousands of stacks must not read them all per stack.
    pub(super) fn metrics_changed(&mut self, now: Instant) {
        if self.cfg.agent.metrics_file.is_some() {
            self.metrics_owed = true;
            self.write_owed_metrics(now);
        }
    }

    /// Writes what `metrics_changed` put off once its second is over; names that deadline
    /// to the loop until then.
    pub(super) fn write_owed_metrics(&mut self, now: Instant) {
        if !self.metrics_owed {
            return;
        }
        match metrics_wait(self.metrics_written, now) {
            Some(at) => earliest(&mut self.wake, at),
            None => self.write_metrics(),
        }
    }

    /// Writes `[agent] metrics_file`, if one is configured; a failure is logged, never fatal.
    pub(super) fn write_metrics(&mut self) {
        let Some(path) = self.cfg.agent.metrics_file.as_ref() else {
            return;
        };
        self.metrics_written = Some(Instant::now());
        self.metrics_owed = false;
        let r = self
            .journal
            .stacks()
            .map_err(|e| e.to_string())
            .and_then(|s| self.metrics.write(path, &s).map_err(|e| e.to_string()));
        if let Err(e) = r {
            tracing::warn!("cannot write the metrics file {}: {e}", path.display());
        }
    }

    pub(super) fn outcomes(
        &mut self,
        answer: Result<
            Vec<(i64, i64, beamflow_protocol::api::DagOutcome)>,
            crate::link::far::FarError,
        >,
    ) -> Result<()> {
        self.asking = false;
        let got = match answer {
            Ok(g) => g,
            Err(e) => {
                let e = beamflow_program::chain(&e);
                tracing::debug!("cannot ask where the DAGs are: {e}");
                return Ok(());
            }
        };
        for (id, remote, o) in got {
            let line = o.line();
            if self.journal.set_outcome(id, remote, &line, o.is_final())? {
                match o.state {
                    DagState::Failed => tracing::warn!(remote, "DAG {remote}: {line}"),
                    DagState::Done => tracing::info!(remote, "DAG {remote} done"),
                    _ => tracing::debug!(remote, "DAG {remote}: {line}"),
                }
            }
            let event = match o.state {
                DagState::Failed => NotifyEvent::Failed,
                DagState::Done => NotifyEvent::Done,
                _ => continue,
            };
            let name = self
                .journal
                .stacks()?
                .into_iter()
                .find(|s| s.id == id)
                .map(|s| s.name)
                .unwrap_or_default();
            let b = self.cfg.agent.beamline();
            let (subject, text) = if event == NotifyEvent::Failed {
                (
                    format!("beamflow: {b}/{name} FAILED"),
                    format!("beamline {b}: the DAG of stack {name} FAILED: {} — after fixing it, on the login node: {}", o.failure, o.retry),
                )
            } else {
                (
                    format!("beamflow: {b}/{name} done"),
                    format!(
                        "beamline {b}: the DAG of stack {name} is done ({} jobs).",
                        o.total
                    ),
                )
            };
            let kind = if event == NotifyEvent::Failed {
                "failed"
            } else {
                "done"
            };
            self.tell(
                &format!("{kind}:{id}:{remote}"),
                event,
                Some(&name),
                subject,
                text,
            )?;
        }
        Ok(())
    }

    /// Polls the SSH master between transfers, so that its loss is logged when it happens
    /// rather than when the next stack is ready.
    pub(super) async fn watchdog(&mut self) {
        let mode = self.cfg.link.master;
        let Some(m) = self.master.as_mut() else {
            return;
        };
        let alive = if m.has_session() {
            m.alive().await
        } else {
            match mode {
                // a person's master: adopt it if it is there, so that its absence is news and
                // its presence is not mistaken for a loss
                beamflow_config::MasterMode::Adopt => m.ensure().await.is_ok(),
                // the agent opens its own when it first needs it: nothing is lost before that
                beamflow_config::MasterMode::Own => return,
            }
        };
        if !alive && !self.master_down {
            tracing::warn!("the SSH master is gone; stacks wait until it is back");
            // its channels went with it
            self.pool.clear();
        }
        if alive && self.master_down {
            tracing::info!("the SSH master is back");
            self.poke(Duration::ZERO);
        }
        self.master_down = !alive;
        if alive {
            self.down_since = None;
            return;
        }
        let (since, wall) = *self
            .down_since
            .get_or_insert((Instant::now(), std::time::SystemTime::now()));
        let after = self
            .cfg
            .notify
            .iter()
            .filter(|n| n.wants(NotifyEvent::LinkDown))
            .map(|n| n.link_down_after.0)
            .min();
        if after.is_some_and(|a| since.elapsed() >= a) {
            let started = wall
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let fix = match self.cfg.link.master {
                beamflow_config::MasterMode::Adopt => {
                    "run `beamflow-agent login` on the beamline host"
                }
                beamflow_config::MasterMode::Own => {
                    "check the network and the account's SSH key (`beamflow-agent doctor`)"
                }
            };
            let text = format!(
                "beamline {}: the link to {} has been down for {}; stacks wait and go by themselves once it is back. To bring it back: {fix}.",
                self.cfg.agent.beamline(),
                self.cfg.link.host,
                humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
            );
            let subject = format!("beamflow: {} link down", self.cfg.agent.beamline());
            if let Err(e) = self.tell(
                &format!("link_down:{started}"),
                NotifyEvent::LinkDown,
                None,
                subject,
                text,
            ) {
                tracing::warn!("cannot journal a notification: {e}");
            }
        }
    }

    /// Sends news once: its key is journaled first, so a repeat or a restart sends nothing.
    pub(super) fn tell(
        &mut self,
        key: &str,
        event: NotifyEvent,
        stack: Option<&str>,
        subject: String,
        text: String,
    ) -> Result<()> {
        let Some(post) = &self.news else {
            return Ok(());
        };
        if !post.wanted(event) || !self.journal.news_once(key)? {
            return Ok(());
        }
        post.send(crate::notify::News {
            event,
            beamline: self.cfg.agent.beamline(),
            stack: stack.map(str::to_string),
            subject,
            text,
        });
        Ok(())
    }

    /// A stack became held: one message for its version.
    pub(super) fn held(&mut self, id: i64, name: &str, version: u32, reason: &str) -> Result<()> {
        self.tell_pushed(
            name,
            crate::handoff::Answer::Held {
                reason: reason.to_string(),
            },
        );
        let b = self.cfg.agent.beamline();
        self.tell(
            &format!("held:{id}:v{version}"),
            NotifyEvent::Held,
            Some(name),
            format!("beamflow: {b}/{name} held"),
            format!("beamline {b}: stack {name} (version {version}) is held and will not be sent until it changes: {reason}"),
        )
    }

    /// Watch roots with `alarm_after` that saw nothing that long, inside their active hours.
    pub(super) fn silence(&mut self) -> Result<()> {
        let now = std::time::SystemTime::now();
        let minute = local_minute(now);
        for i in 0..self.roots.len() {
            let w = &self.roots[i].section;
            let Some(after) = w.alarm_after else { continue };
            let hours = beamflow_config::notify::parse_hours(&w.active_hours).unwrap_or(None);
            let quiet = now.duration_since(self.activity[i]).unwrap_or_default();
            if quiet < after.0 || !beamflow_config::notify::in_hours(hours, minute) {
                continue;
            }
            let last = self.activity[i]
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let b = self.cfg.agent.beamline();
            let path = w.path.display().to_string();
            let text = format!(
                "beamline {b}: nothing arrived in {path} for {} (alarm_after = {}); is the detector writing, and is the folder mounted?",
                humantime::format_duration(Duration::from_secs(quiet.as_secs())),
                after
            );
            self.tell(
                &format!("silent:{i}:{last}"),
                NotifyEvent::Silent,
                None,
                format!("beamflow: {b} silent"),
                text,
            )?;
        }
        Ok(())
    }
}
