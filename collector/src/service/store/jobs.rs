//! The database writes of a job's life: each one transaction, each move through the job
//! table's one write path (`lifecycle::job::change`), each stamped by the database's clock.
//!
//! A change only happens from the states the table allows, so two parties racing (a
//! launcher's report and the service's timeout, say) cannot both win: the loser's update
//! finds the job elsewhere and changes nothing.

use crate::service::clock::{epoch, stamp};
use crate::service::lifecycle::job::{self, JobState, Move, Trigger};
use crate::service::lifecycle::launcher::{LauncherState, LauncherTrigger};
use crate::service::lifecycle::runtime;
use crate::service::store::{Db, DbError};
use beamflow_protocol::api::{
    AcquireRequest, AcquireResponse, EventRow, JobReport, LaunchedJob, Outcome, ReportRequest,
    StackStatus, AHEAD_PER_SLOT, SHORT_JOB,
};
use rusqlite::{params, OptionalExtension, Transaction};
use std::collections::{BTreeMap, HashMap};

/// What the runnable jobs want, for the queue policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Runnable {
    /// How many.
    pub jobs: u32,
    /// Nodes they want together.
    pub nodes: u32,
    /// The most nodes one of them wants.
    pub biggest: u32,
    /// The shortest run time expected of one of them (none when one was never measured: it
    /// fits any launcher).
    pub shortest: Option<std::time::Duration>,
}

/// A READY job's final command, and what it is expected to need of a launcher.
#[derive(Debug, Clone, Default)]
pub struct Filled {
    /// The job.
    pub id: u64,
    /// Its argument vector, placeholders filled.
    pub argv: Vec<String>,
    /// Variables the stack's names give it.
    pub env: BTreeMap<String, String>,
    /// Its expected run time (none: its step never finished yet).
    pub expected: Option<std::time::Duration>,
    /// The size class its run time is learned by
    /// ([`crate::service::lifecycle::runtime::size_class`]).
    pub size_class: u32,
}

/// A job the service must act on (prepare, check, retry).
#[derive(Debug, Clone)]
pub struct Pending {
    /// Job id.
    pub id: u64,
    /// Step name.
    pub name: String,
    /// Stack id.
    pub stack_id: u64,
    /// Stack name.
    pub stack: String,
    /// Work folder.
    pub work_dir: String,
    /// Folder of the received images.
    pub stack_dir: String,
    /// Workflow name.
    pub workflow: String,
    /// Whether the work folder is ready.
    pub prepared: bool,
    /// Argument vector (placeholders filled once it is PREPROCESSED).
    pub argv: Vec<String>,
    /// Summary to check after a zero exit.
    pub check_summary: Option<String>,
    /// Runs so far.
    pub attempts: u32,
    /// Why it is in its state (the last run's error, for a retry decision).
    pub reason: String,
    /// Its state when read.
    pub state: JobState,
    /// What it is expected to need of a launcher (none: never measured).
    pub expected: Option<std::time::Duration>,
}

impl Db {
    /// The newest finished job of an earlier version of job `id`'s stack with its name.
    pub fn earlier_finished(&self, id: u64) -> Result<Option<Earlier>, DbError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT o.id, os.version, os.work_dir, o.command
             FROM jobs j JOIN stacks s ON s.id = j.stack_id
             JOIN stacks os ON os.beamline = s.beamline AND os.name = s.name AND os.version < s.version
             JOIN jobs o ON o.stack_id = os.id AND o.name = j.name AND o.state = '{}'
             WHERE j.id = ?1 ORDER BY os.version DESC LIMIT 1",
            JobState::JobFinished.as_str()
        ))?;
        Ok(st
            .query_row([id as i64], |r| {
                Ok(Earlier {
                    id: r.get::<_, i64>(0)? as u64,
                    version: r.get(1)?,
                    work_dir: r.get(2)?,
                    argv: crate::science::dag::decode(&r.get::<_, String>(3)?),
                })
            })
            .optional()?)
    }

    /// The files (path → BLAKE3) of the latest version of a stack before `version`, when it is
    /// a partial one: a new partial version plans only what changed since.
    pub fn partial_before(
        &self,
        beamline: &str,
        stack: &str,
        version: u32,
    ) -> Result<Option<HashMap<String, String>>, DbError> {
        let row: Option<(bool, String)> = self
            .conn
            .prepare_cached(
                "SELECT partial, files FROM stacks WHERE beamline = ?1 AND name = ?2 AND version < ?3
                 ORDER BY version DESC LIMIT 1",
            )?
            .query_row(params![beamline, stack, version], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.filter(|(partial, _)| *partial).map(|(_, files)| {
            serde_json::from_str::<Vec<crate::api::SubmitFile>>(&files)
                .unwrap_or_default()
                .into_iter()
                .map(|f| (f.path, f.blake3))
                .collect()
        }))
    }

    /// The work folders of the streamed versions just before stack version `stack_id`
    /// (the unbroken run of partial versions before it), nearest first: a streamed stack's
    /// versions keep the 8-bit window of the first of them that chose one.
    pub fn streamed_before(&self, stack_id: u64) -> Result<Vec<String>, DbError> {
        let mut st = self.conn.prepare_cached(
            "SELECT os.partial, os.work_dir FROM stacks s JOIN stacks os
             ON os.beamline = s.beamline AND os.name = s.name AND os.version < s.version
             WHERE s.id = ?1 ORDER BY os.version DESC",
        )?;
        let rows: Vec<(bool, String)> = st
            .query_map([stack_id as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .take_while(|(partial, _)| *partial)
            .map(|(_, dir)| dir)
            .collect())
    }

    /// The READY fanned-out jobs (`STEP[FIRST-LAST]`) whose twin (a job of the same name of
    /// an earlier version of their stack) is ready or under way: ready to run (a partial
    /// version's job the new version did not supersede), prepared, running, being checked or
    /// about to be retried. Each waits for its twin rather than doing the same work twice, and
    /// reuses it if it read the same bytes. A twin still waiting for its parents is not waited
    /// for: a parent held for a person would hold this job too. One statement for the round.
    pub fn waiting_for_twins(&self) -> Result<std::collections::HashSet<u64>, DbError> {
        let live = [
            JobState::Ready,
            JobState::Preprocessed,
            JobState::Running,
            JobState::RunDone,
            JobState::Postprocessed,
            JobState::RunError,
            JobState::RunTimeout,
            JobState::RestartReady,
        ]
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT DISTINCT j.id FROM jobs j JOIN stacks s ON s.id = j.stack_id
             JOIN stacks os ON os.beamline = s.beamline AND os.name = s.name AND os.version < s.version
             JOIN jobs o ON o.stack_id = os.id AND o.name = j.name AND o.state IN ({live})
             WHERE j.state = '{}' AND j.name LIKE '%[%'",
            JobState::Ready.as_str()
        ))?;
        let ids = st
            .query_map([], |r| r.get::<_, i64>(0).map(|i| i as u64))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Jobs in `state` with what the service needs to act on them.
    pub fn pending(&self, state: JobState) -> Result<Vec<Pending>, DbError> {
        self.pending_in(&[state])
    }

    /// Jobs in any of `states`, oldest first: one statement for all the states a round of
    /// the engine acts on.
    pub fn pending_in(&self, states: &[JobState]) -> Result<Vec<Pending>, DbError> {
        // the states are written into the statement, not bound: a plan may depend on a value
        // bound against an indexed column, and a new value would mean a new compile
        let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT j.id, j.name, s.id, s.name, j.work_dir, s.dir, s.workflow, s.prepared, j.command, j.check_summary, j.attempts, j.reason, j.state, j.expected_secs
             FROM jobs j JOIN stacks s ON s.id = j.stack_id WHERE j.state IN ({}) ORDER BY j.id",
            list.join(", ")
        ))?;
        let rows = st
            .query_map([], |r| {
                Ok(Pending {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    stack_id: r.get::<_, i64>(2)? as u64,
                    stack: r.get(3)?,
                    work_dir: r.get(4)?,
                    stack_dir: r.get(5)?,
                    workflow: r.get(6)?,
                    prepared: r.get::<_, i64>(7)? != 0,
                    argv: crate::science::dag::decode(&r.get::<_, String>(8)?),
                    check_summary: r.get(9)?,
                    attempts: r.get(10)?,
                    reason: r.get(11)?,
                    state: super::state(r, 12)?,
                    expected: runtime::from_secs(r.get(13)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Applies one decision's moves to a job, all or none, in one transaction; false if the
    /// job was found elsewhere (someone else moved it first).
    pub fn apply(&mut self, id: u64, moves: &[Move]) -> Result<bool, DbError> {
        let at = stamp(self.now());
        let tx = self.tx()?;
        let ok = job::apply(&tx, id, moves, &at)?;
        tx.commit()?;
        Ok(ok)
    }

    /// Applies many decisions in one transaction (one disk sync for all of them); returns
    /// how many were applied.
    pub fn apply_all(&mut self, decisions: &[(u64, Vec<Move>)]) -> Result<usize, DbError> {
        if decisions.is_empty() {
            return Ok(0);
        }
        let at = stamp(self.now());
        let tx = self.tx()?;
        let mut n = 0;
        for (id, moves) in decisions {
            n += job::apply(&tx, *id, moves, &at)? as usize;
        }
        tx.commit()?;
        Ok(n)
    }

    /// AWAITING_PARENTS → READY for jobs whose parents all finished.
    pub fn promote_ready(&mut self) -> Result<usize, DbError> {
        let ids: Vec<u64> = {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT j.id FROM jobs j WHERE j.state = '{}' AND NOT EXISTS (
                   SELECT 1 FROM job_parents p JOIN jobs q ON q.id = p.parent_id
                   WHERE p.job_id = j.id AND q.state != '{}')",
                JobState::AwaitingParents.as_str(),
                JobState::JobFinished.as_str()
            ))?;
            let v = st
                .query_map([], |r| r.get::<_, i64>(0).map(|v| v as u64))?
                .collect::<Result<_, _>>()?;
            v
        };
        self.promote(&ids)
    }

    /// AWAITING_PARENTS → READY for the children of `parents` (jobs that just finished) whose
    /// parents all finished: only their rows are read, however many jobs wait elsewhere.
    pub fn promote_children(&mut self, parents: &[u64]) -> Result<usize, DbError> {
        let mut ids: Vec<u64> = Vec::new();
        {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT c.job_id FROM job_parents c JOIN jobs j ON j.id = c.job_id
                 WHERE c.parent_id = ?1 AND j.state = '{}' AND NOT EXISTS (
                   SELECT 1 FROM job_parents p JOIN jobs q ON q.id = p.parent_id
                   WHERE p.job_id = c.job_id AND q.state != '{}')",
                JobState::AwaitingParents.as_str(),
                JobState::JobFinished.as_str()
            ))?;
            for p in parents {
                let v: Vec<u64> = st
                    .query_map([*p as i64], |r| r.get::<_, i64>(0).map(|v| v as u64))?
                    .collect::<Result<_, _>>()?;
                ids.extend(v);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        self.promote(&ids)
    }

    /// The move itself, in one transaction (read first: most rounds have nothing to move,
    /// and a write transaction costs a disk sync).
    fn promote(&mut self, ids: &[u64]) -> Result<usize, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let at = stamp(self.now());
        let tx = self.tx()?;
        let mut n = 0;
        for id in ids {
            n += job::change(
                &tx,
                *id,
                JobState::Ready,
                Trigger::ParentsFinished,
                "parents finished",
                &at,
            )? as usize;
        }
        tx.commit()?;
        Ok(n)
    }

    /// The work folder of a stack is ready.
    pub fn mark_prepared(&mut self, stack_id: u64) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE stacks SET prepared = 1 WHERE id = ?1",
            [stack_id as i64],
        )?;
        Ok(())
    }

    /// READY → JOB_FINISHED for jobs whose outputs an earlier version's job left (the command
    /// they would have run, and why they did not), in one transaction.
    pub fn reused(&mut self, jobs: &[(u64, Vec<String>, String)]) -> Result<usize, DbError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let at = stamp(self.now());
        let tx = self.tx()?;
        let mut n = 0;
        for (id, argv, why) in jobs {
            tx.prepare_cached(&format!(
                "UPDATE jobs SET command = ?2 WHERE id = ?1 AND state = '{}'",
                JobState::Ready.as_str()
            ))?
            .execute(params![*id as i64, crate::science::dag::encode(argv)])?;
            n += job::change(&tx, *id, JobState::JobFinished, Trigger::Reused, why, &at)? as usize;
        }
        tx.commit()?;
        Ok(n)
    }

    /// READY → PREPROCESSED with each job's final argument vector and expected run time, all
    /// in one transaction.
    pub fn preprocessed(&mut self, jobs: &[Filled]) -> Result<usize, DbError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let at = stamp(self.now());
        let tx = self.tx()?;
        let mut n = 0;
        for j in jobs {
            // the names' variables win over a step's own `env` of the same name
            tx.prepare_cached(
                &format!("UPDATE jobs SET command = ?2, env = json_patch(env, ?3), expected_secs = ?4, size_class = ?5 WHERE id = ?1 AND state = '{}'", JobState::Ready.as_str()),
            )?
            .execute(params![
                j.id as i64,
                crate::science::dag::encode(&j.argv),
                serde_json::to_string(&j.env).unwrap_or_else(|_| "{}".into()),
                runtime::to_secs(j.expected),
                j.size_class
            ])?;
            n += job::change(
                &tx,
                j.id,
                JobState::Preprocessed,
                Trigger::Prepared,
                "work folder prepared",
                &at,
            )? as usize;
        }
        tx.commit()?;
        Ok(n)
    }

    /// The recent run times (seconds, newest first) of a workflow's step: those of the size
    /// class, and those of every size.
    pub fn recent_runtimes(
        &self,
        workflow: &str,
        step: &str,
        size_class: u32,
    ) -> Result<(Vec<f64>, Vec<f64>), DbError> {
        let mut same = self.conn.prepare_cached(
            "SELECT secs FROM runtimes WHERE workflow = ?1 AND step = ?2 AND size_class = ?3 ORDER BY id DESC LIMIT ?4",
        )?;
        let same: Vec<f64> = same
            .query_map(
                params![workflow, step, size_class, runtime::RECENT as i64],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?;
        let mut any = self.conn.prepare_cached(
            "SELECT secs FROM runtimes WHERE workflow = ?1 AND step = ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let any: Vec<f64> = any
            .query_map(params![workflow, step, runtime::RECENT as i64], |r| {
                r.get(0)
            })?
            .collect::<Result<_, _>>()?;
        Ok((same, any))
    }

    /// Each workflow step's expected run time from its recent runs of every size: (workflow,
    /// step, seconds), for `/metrics`. The table keeps [`runtime::RECENT`] runs per step and
    /// size class, so this reads little.
    pub fn learned_runtimes(&self) -> Result<Vec<(String, String, f64)>, DbError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT workflow, step, secs FROM runtimes ORDER BY id DESC")?;
        let mut runs: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for row in st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
            let (workflow, step, secs): (String, String, f64) = row?;
            runs.entry((workflow, step)).or_default().push(secs);
        }
        Ok(runs
            .into_iter()
            .filter_map(|((w, s), v)| runtime::estimate(&[], &v).map(|e| (w, s, e.as_secs_f64())))
            .collect())
    }

    /// Keeps only the newest [`runtime::RECENT`] run times of each workflow, step and size
    /// class (all an estimate reads): the table stays small however many jobs end. Run on the
    /// engine's watch, not per ending.
    pub fn prune_runtimes(&mut self) -> Result<usize, DbError> {
        Ok(self.conn.execute(
            "DELETE FROM runtimes WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER
                (PARTITION BY workflow, step, size_class ORDER BY id DESC) AS n FROM runtimes)
             WHERE n > ?1)",
            [runtime::RECENT as i64],
        )?)
    }

    /// Sets what a job is expected to need of its next launcher (a job that ran out of wall
    /// time needs at least as long as it ran).
    pub fn set_expected(
        &mut self,
        job: u64,
        expected: Option<std::time::Duration>,
    ) -> Result<(), DbError> {
        self.conn
            .prepare_cached("UPDATE jobs SET expected_secs = ?2 WHERE id = ?1")?
            .execute(params![job as i64, runtime::to_secs(expected)])?;
        Ok(())
    }

    /// What the runnable jobs want, in sum: (jobs, nodes, the most one job needs).
    pub fn runnable(&self) -> Result<Runnable, DbError> {
        let mut st = self.conn.prepare_cached(
            &format!("SELECT COUNT(*), COALESCE(SUM(nodes), 0), COALESCE(MAX(nodes), 0), COALESCE(MIN(expected_secs), 0) FROM jobs WHERE state IN ('{}', '{}')", JobState::Preprocessed.as_str(), JobState::RestartReady.as_str()),
        )?;
        Ok(st.query_row([], |r| {
            Ok(Runnable {
                jobs: r.get(0)?,
                nodes: r.get(1)?,
                biggest: r.get(2)?,
                shortest: runtime::from_secs(r.get(3)?),
            })
        })?)
    }

    /// Heartbeat, endings and work in one transaction: records `reports` (each applied only
    /// if the job is still this launcher's), then hands runnable jobs that fit the
    /// launcher's free nodes to it, so no job goes to two launchers. Free nodes are counted
    /// here, from the slots the launcher announced and the jobs it runs, so two requests of
    /// one launcher in flight at once never over-fill it. A `closing` launcher becomes
    /// ENDING in the same transaction as its endings, so no job they make runnable again
    /// can be handed back to it; an ending one is told to stop and given nothing.
    ///
    /// Up to `ahead` (no more than [`AHEAD_PER_SLOT`] per slot) nodes' worth of jobs more than
    /// it has free may be handed to a launcher that asks: held by it, each starts the moment a
    /// node frees. Only a job not known to run longer than [`SHORT_JOB`] is handed that way.
    pub fn acquire(
        &mut self,
        launcher: u64,
        ask: &AcquireRequest,
        reports: &[JobReport],
    ) -> Result<AcquireResponse, DbError> {
        let (running, closing) = (&ask.running[..], ask.closing);
        let now = self.now();
        let at = stamp(now);
        let tx = self.tx()?;
        let row = launcher_row(&tx, launcher)?;
        let mut applied = Vec::with_capacity(reports.len());
        for r in reports {
            applied.push(report_in(&tx, r.job, &r.report, &at)?);
        }
        let mut state = row.as_ref().map(|r| r.state);
        if closing && state == Some(LauncherState::Running) {
            let why = "it takes no more work: ending";
            let (to, by) = (LauncherState::Ending, LauncherTrigger::Closing);
            super::launchers::shift(&tx, launcher, to, by, why, now)?;
            state = Some(LauncherState::Ending);
        }
        if state == Some(LauncherState::Ending) {
            tx.prepare_cached("UPDATE launchers SET heartbeat_at = ?2 WHERE id = ?1")?
                .execute(params![launcher as i64, epoch(now)])?;
            tx.commit()?;
            // its own jobs are being ended by it; nothing to kill, nothing to start
            return Ok(AcquireResponse {
                stop: true,
                applied,
                ..Default::default()
            });
        }
        let Some(me) = row.filter(|_| state == Some(LauncherState::Running)) else {
            tx.commit()?;
            return Ok(AcquireResponse {
                stop: true,
                kill: running.to_vec(),
                applied,
                ..Default::default()
            });
        };
        let kill = not_mine(&tx, launcher, running)?;
        let room = if me.slots > 0 {
            let used = used_slots(&tx, launcher)?;
            let ahead = i64::from(ask.ahead).min(me.slots * i64::from(AHEAD_PER_SLOT));
            Room {
                free: (me.slots - used).max(0) as u32,
                ahead: (me.slots + ahead - used.max(me.slots)).max(0) as u32,
            }
        } else {
            Room {
                free: ask.free_nodes,
                ahead: 0,
            }
        };
        let left = me
            .deadline
            .map(|d| std::time::Duration::from_secs_f64((d - epoch(now)).max(0.0)));
        let jobs = if room.free + room.ahead > 0 && ask.max_jobs > 0 {
            start_jobs(&tx, launcher, (room, left), ask.max_jobs, &at)?
        } else {
            Vec::new()
        };
        // a held request looks again at every ring: only a look that changed something, or
        // a heartbeat gone stale, is worth a write (and its disk sync)
        if !jobs.is_empty() || !reports.is_empty() || epoch(now) - me.heartbeat_at >= 1.0 {
            tx.prepare_cached("UPDATE launchers SET heartbeat_at = ?2 WHERE id = ?1")?
                .execute(params![launcher as i64, epoch(now)])?;
        }
        tx.commit()?;
        Ok(AcquireResponse {
            jobs,
            kill,
            stop: false,
            applied,
        })
    }

    /// A launcher's account of how one run ended. Reports for jobs it no longer owns are
    /// ignored (the job was killed, or timed out when the launcher was thought lost).
    pub fn report(&mut self, job: u64, r: &ReportRequest) -> Result<bool, DbError> {
        let at = stamp(self.now());
        let tx = self.tx()?;
        let ok = report_in(&tx, job, r, &at)?;
        tx.commit()?;
        Ok(ok)
    }

    /// Puts a failed, killed or erroring job back in line with fresh attempts.
    pub fn retry(&mut self, job: u64) -> Result<bool, DbError> {
        let at = stamp(self.now());
        let tx = self.tx()?;
        let ok = job::change(
            &tx,
            job,
            JobState::RestartReady,
            Trigger::PersonRetry,
            "retry requested by a person",
            &at,
        )?;
        if ok {
            tx.execute("UPDATE jobs SET attempts = 0 WHERE id = ?1", [job as i64])?;
        }
        tx.commit()?;
        Ok(ok)
    }

    /// Stops a job for good; a running one is ended by its launcher at its next exchange.
    pub fn kill(&mut self, job: u64) -> Result<bool, DbError> {
        self.apply(
            job,
            &[Move {
                to: JobState::UserKilled,
                trigger: Trigger::PersonKill,
                reason: "killed by a person".into(),
            }],
        )
    }

    /// Cancels the open jobs of a stack abandoned while it streamed (its folder removed at
    /// the beamline, or not finished after `max_wait`), in one transaction, each saying
    /// `reason`: the count.
    /// None when the stack has a sealed version: then it was not abandoned.
    pub fn abandon(
        &mut self,
        beamline: &str,
        stack: &str,
        reason: &str,
    ) -> Result<Option<usize>, DbError> {
        let at = stamp(self.now());
        let tx = self.tx()?;
        let sealed: i64 = tx.query_row(
            "SELECT COUNT(*) FROM stacks WHERE beamline = ?1 AND name = ?2 AND partial = 0",
            params![beamline, stack],
            |r| r.get(0),
        )?;
        if sealed > 0 {
            return Ok(None);
        }
        let open: Vec<String> = job::sources(JobState::UserKilled, Trigger::Abandoned)
            .into_iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let ids: Vec<i64> = {
            let mut st = tx.prepare(&format!(
                "SELECT j.id FROM jobs j JOIN stacks s ON s.id = j.stack_id
                 WHERE s.beamline = ?1 AND s.name = ?2 AND j.state IN ({})",
                open.join(", ")
            ))?;
            let rows = st
                .query_map(params![beamline, stack], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            rows
        };
        let mut n = 0;
        for id in ids {
            n += job::change(
                &tx,
                id as u64,
                JobState::UserKilled,
                Trigger::Abandoned,
                reason,
                &at,
            )? as usize;
        }
        tx.commit()?;
        Ok(Some(n))
    }

    /// How long each run of `job` that ran out of wall time lasted, since a person last
    /// retried it (a retry starts the count again).
    pub fn timed_out_runs(&self, job: u64) -> Result<Vec<std::time::Duration>, DbError> {
        let mut runs = Vec::new();
        let mut started: Option<String> = None;
        for e in self.events(job)? {
            match e.to {
                JobState::Running => started = Some(e.at.clone()),
                JobState::RunTimeout => {
                    let secs = started
                        .take()
                        .and_then(|s| crate::service::clock::between(&s, &e.at))
                        .unwrap_or(0.0);
                    runs.push(std::time::Duration::from_secs_f64(secs.max(0.0)));
                }
                JobState::RestartReady
                    if matches!(e.from, Some(JobState::Failed | JobState::UserKilled)) =>
                {
                    runs.clear();
                }
                _ => {}
            }
        }
        Ok(runs)
    }

    /// A job's events, oldest first.
    pub fn events(&self, job: u64) -> Result<Vec<EventRow>, DbError> {
        let mut st = self.conn.prepare(
            "SELECT at, from_state, to_state, reason FROM events WHERE job_id = ?1 ORDER BY id",
        )?;
        let v = st
            .query_map([job as i64], |r| {
                Ok(EventRow {
                    at: r.get(0)?,
                    from: r
                        .get::<_, Option<String>>(1)?
                        .map(|s| s.parse())
                        .transpose()
                        .map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                1,
                                rusqlite::types::Type::Text,
                                Box::new(e),
                            )
                        })?,
                    to: super::state(r, 2)?,
                    reason: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Jobs per state for every stack version.
    pub fn stack_status(&self) -> Result<Vec<StackStatus>, DbError> {
        let mut st = self.conn.prepare(
            "SELECT s.name, s.version, s.workflow, j.state, COUNT(*), s.beamline, s.id, s.partial FROM stacks s JOIN jobs j ON j.stack_id = s.id
             GROUP BY s.id, j.state ORDER BY s.id",
        )?;
        let mut out: Vec<StackStatus> = Vec::new();
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, bool>(7)?,
            ))
        })?;
        let mut last_id = None;
        for row in rows {
            let (stack, version, workflow, state, n, beamline, id, partial) = row?;
            match out.last_mut() {
                Some(s) if last_id == Some(id) => {
                    s.counts.insert(state, n);
                }
                _ => out.push(StackStatus {
                    beamline,
                    stack,
                    version,
                    workflow,
                    counts: BTreeMap::from([(state, n)]),
                    partial,
                }),
            }
            last_id = Some(id);
        }
        Ok(out)
    }
}

/// One report inside a transaction: the moves [`job::on_report`] decides, if the job is
/// still RUNNING for the reporting launcher.
fn report_in(tx: &Transaction<'_>, job: u64, r: &ReportRequest, at: &str) -> Result<bool, DbError> {
    let owner: Option<(Option<i64>, String, Step)> = tx
        .prepare_cached(&format!(
            "SELECT j.launcher_id, j.command, s.workflow, j.name, j.size_class
             FROM jobs j JOIN stacks s ON s.id = j.stack_id WHERE j.id = ?1 AND j.state = '{}'",
            JobState::Running.as_str()
        ))?
        .query_row([job as i64], |row| {
            let step = Step {
                workflow: row.get(2)?,
                name: row.get(3)?,
                size_class: row.get(4)?,
            };
            Ok((row.get(0)?, row.get(1)?, step))
        })
        .optional()?;
    let Some((Some(owner), argv, step)) = owner else {
        return Ok(false);
    };
    if owner != r.launcher as i64 {
        return Ok(false);
    }
    let moves = job::on_report(
        r.outcome,
        r.exit_code,
        &r.message,
        &crate::science::dag::decode(&argv),
    );
    let ran = moves.last().is_some_and(|m| m.to == JobState::RunDone);
    if ran {
        learn_runtime(tx, job, &step, r.ran_ms, at)?;
    }
    let applied = job::apply(tx, job, &moves, at)?;
    if applied && r.outcome == Outcome::Unstarted {
        // handed out but never run: the attempt counted when it was handed over is undone
        tx.prepare_cached("UPDATE jobs SET attempts = MAX(attempts - 1, 0) WHERE id = ?1")?
            .execute([job as i64])?;
    }
    Ok(applied)
}

/// Where a job's run time is learned: its workflow, its name (the step's, with the range of
/// a fanned-out one) and its size class.
struct Step {
    workflow: String,
    name: String,
    size_class: i64,
}

/// Records how long a run that ended well took, under its workflow, step and size class: what
/// the next jobs of the step are expected to need. Only the newest [`runtime::RECENT`] per
/// class are read; older ones are removed by [`Db::prune_runtimes`], not here (a delete per
/// ending cost a tenth of the rate of trivial jobs).
///
/// The launcher's own timing (`ran_ms`) is the run time when it sent one; else the time since
/// the job was handed over (a launcher that holds jobs ahead always sends its timing).
fn learn_runtime(
    tx: &Transaction<'_>,
    job: u64,
    of: &Step,
    ran_ms: Option<u64>,
    at: &str,
) -> Result<(), DbError> {
    let secs = match ran_ms {
        Some(ms) => ms as f64 / 1e3,
        None => {
            let started: Option<String> = tx
                .prepare_cached(&format!(
                    "SELECT at FROM events WHERE job_id = ?1 AND to_state = '{}' ORDER BY id DESC LIMIT 1",
                    JobState::Running.as_str()
                ))?
                .query_row([job as i64], |r| r.get(0))
                .optional()?;
            match started.and_then(|s| crate::service::clock::between(&s, at)) {
                Some(secs) => secs,
                None => return Ok(()),
            }
        }
    };
    let step = crate::science::dag::step_of(&of.name).0;
    tx.prepare_cached(
        "INSERT INTO runtimes (workflow, step, size_class, secs) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![of.workflow, step, of.size_class, secs.max(0.0)])?;
    Ok(())
}

/// What a request needs of its launcher, as the database has it.
struct LauncherNow {
    state: LauncherState,
    slots: i64,
    /// Its last heartbeat (seconds since the epoch).
    heartbeat_at: f64,
    /// When its jobs must be done (seconds since the epoch), if known.
    deadline: Option<f64>,
}

fn launcher_row(tx: &rusqlite::Transaction, launcher: u64) -> Result<Option<LauncherNow>, DbError> {
    let row: Option<(String, i64, f64, Option<f64>)> = tx
        .prepare_cached(
            "SELECT state, slots, COALESCE(heartbeat_at, 0), deadline FROM launchers WHERE id = ?1",
        )?
        .query_row([launcher as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    Ok(match row {
        Some((state, slots, heartbeat_at, deadline)) => Some(LauncherNow {
            state: LauncherState::parse(&state)?,
            slots,
            heartbeat_at,
            deadline,
        }),
        None => None,
    })
}

/// A finished job of an earlier version of the same stack, of the same name: what a job
/// may reuse when it reads the same bytes.
#[derive(Debug, Clone)]
pub struct Earlier {
    /// Its id.
    pub id: u64,
    /// Its version.
    pub version: u32,
    /// Its work folder.
    pub work_dir: String,
    /// Its command as it ran.
    pub argv: Vec<String>,
}

/// The jobs a launcher says it runs that the database does not give it (killed, superseded,
/// moved on): it ends them.
fn not_mine(
    tx: &rusqlite::Transaction,
    launcher: u64,
    running: &[u64],
) -> Result<Vec<u64>, DbError> {
    let mut kill = Vec::new();
    let mut mine = tx.prepare_cached(&format!(
        "SELECT 1 FROM jobs WHERE id = ?1 AND state = '{}' AND launcher_id = ?2",
        JobState::Running.as_str()
    ))?;
    for j in running {
        if mine
            .query_row(params![*j as i64, launcher as i64], |r| r.get::<_, i64>(0))
            .optional()?
            .is_none()
        {
            kill.push(*j);
        }
    }
    Ok(kill)
}

/// The nodes a launcher's jobs hold: those it runs and those it holds ahead of a free node.
fn used_slots(tx: &rusqlite::Transaction, launcher: u64) -> Result<i64, DbError> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT COALESCE(SUM(nodes), 0) FROM jobs WHERE launcher_id = ?1 AND state = '{}'",
            JobState::Running.as_str()
        ))?
        .query_row([launcher as i64], |r| r.get(0))?)
}

/// What a launcher can take now: nodes that are idle, and nodes' worth of short jobs it
/// holds ahead of them.
#[derive(Debug, Clone, Copy)]
struct Room {
    free: u32,
    ahead: u32,
}

/// Moves runnable jobs that fit in the launcher's room and its time `left` to RUNNING on
/// this launcher, oldest first, at most `max_jobs`; each state is read in its index's order
/// (no sort of every runnable job per request), and no more than a request can take is read.
/// A job expected to outlive the launcher is left for one with room for it; one expected to
/// run longer than [`SHORT_JOB`] only goes to idle nodes, never ahead of them.
fn start_jobs(
    tx: &rusqlite::Transaction,
    launcher: u64,
    (mut room, left): (Room, Option<std::time::Duration>),
    max_jobs: u32,
    at: &str,
) -> Result<Vec<LaunchedJob>, DbError> {
    let mut candidates: Vec<(i64, u32, f64)> = Vec::new();
    let limit = (max_jobs.min(room.free + room.ahead) as i64).max(1) * 4;
    // a launcher near its end reads only what is short enough, not the long jobs it must pass
    let within = left.map(|d| d.as_secs_f64()).unwrap_or(f64::MAX);
    for state in [JobState::Preprocessed, JobState::RestartReady] {
        // the state written in, not bound (see `pending`)
        let mut st = tx.prepare_cached(&format!(
            "SELECT id, nodes, expected_secs FROM jobs WHERE state = '{}' AND expected_secs <= ?2 ORDER BY id LIMIT ?1",
            state.as_str()
        ))?;
        let v: Vec<(i64, u32, f64)> = st
            .query_map(params![limit, within], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        candidates.extend(v);
    }
    candidates.sort_unstable_by_key(|c| c.0);
    let why = format!("started by launcher {launcher}");
    let mut jobs = Vec::new();
    for (id, nodes, expected) in candidates {
        if jobs.len() as u32 >= max_jobs || room.free + room.ahead == 0 {
            break;
        }
        let expected = runtime::from_secs(expected);
        let short = expected.is_none_or(|e| e <= SHORT_JOB);
        let (now, later) = if nodes <= room.free {
            (nodes, 0)
        } else if short && nodes <= room.free + room.ahead {
            (room.free, nodes - room.free)
        } else {
            continue;
        };
        if !runtime::fits(expected, left)
            || !job::change(
                tx,
                id as u64,
                JobState::Running,
                Trigger::Acquired,
                &why,
                at,
            )?
        {
            continue;
        }
        tx.prepare_cached(
            "UPDATE jobs SET launcher_id = ?2, attempts = attempts + 1 WHERE id = ?1",
        )?
        .execute(params![id, launcher as i64])?;
        room.free -= now;
        room.ahead -= later;
        jobs.push(launched(tx, id)?);
    }
    Ok(jobs)
}

/// A started job as its launcher needs it: what to run, where, on how many nodes.
fn launched(tx: &rusqlite::Transaction, id: i64) -> Result<LaunchedJob, DbError> {
    let mut st = tx.prepare_cached(
        "SELECT j.id, j.name, s.name, j.command, j.work_dir, j.nodes, j.ranks_per_node, j.threads_per_rank,
                j.cpu_affinity, j.env, j.attempts FROM jobs j JOIN stacks s ON s.id = j.stack_id WHERE j.id = ?1",
    )?;
    Ok(st.query_row([id], |r| {
        let env: String = r.get(9)?;
        Ok(LaunchedJob {
            id: r.get::<_, i64>(0)? as u64,
            name: r.get(1)?,
            stack: r.get(2)?,
            argv: crate::science::dag::decode(&r.get::<_, String>(3)?),
            work_dir: r.get(4)?,
            nodes: r.get(5)?,
            ranks_per_node: r.get(6)?,
            threads_per_rank: r.get(7)?,
            cpu_affinity: r.get(8)?,
            env: serde_json::from_str(&env).unwrap_or_default(),
            attempt: r.get(10)?,
        })
    })?)
}
