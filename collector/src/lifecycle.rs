//! Job and launcher state changes, each one a transaction with an event row.
//!
//! A change only happens from the states it names, so two parties racing (a launcher's report
//! and the service's timeout, say) cannot both win: the loser's update matches no row.

use crate::db::{now, Db, DbError};
use crate::state::JobState;
use beamflow_protocol::api::{
    AcquireResponse, EventRow, LaunchedJob, LauncherRow, Outcome, ReportRequest, StackStatus,
};
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};
use std::collections::BTreeMap;

/// Seconds since the epoch, for heartbeats.
pub(crate) fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Moves a job from one of `from` to `to` with an event; false if it was in another state.
pub(crate) fn change(
    tx: &Transaction<'_>,
    id: u64,
    from: &[JobState],
    to: JobState,
    reason: &str,
) -> Result<bool, DbError> {
    let cur: Option<String> = tx
        .query_row("SELECT state FROM jobs WHERE id = ?1", [id as i64], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(cur) = cur else { return Ok(false) };
    if !from.iter().any(|s| s.as_str() == cur) {
        return Ok(false);
    }
    tx.execute(
        "UPDATE jobs SET state = ?2, reason = ?3 WHERE id = ?1",
        params![id as i64, to.as_str(), reason],
    )?;
    tx.execute(
        "INSERT INTO events (job_id, at, from_state, to_state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id as i64, now(), cur, to.as_str(), reason],
    )?;
    Ok(true)
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
}

impl Db {
    fn tx(&mut self) -> Result<Transaction<'_>, DbError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Jobs in `state` with what the service needs to act on them.
    pub fn pending(&self, state: JobState) -> Result<Vec<Pending>, DbError> {
        let mut st = self.conn.prepare(
            "SELECT j.id, j.name, s.id, s.name, j.work_dir, s.dir, s.workflow, s.prepared, j.command, j.check_summary, j.attempts
             FROM jobs j JOIN stacks s ON s.id = j.stack_id WHERE j.state = ?1 ORDER BY j.id",
        )?;
        let rows = st
            .query_map([state.as_str()], |r| {
                Ok(Pending {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    stack_id: r.get::<_, i64>(2)? as u64,
                    stack: r.get(3)?,
                    work_dir: r.get(4)?,
                    stack_dir: r.get(5)?,
                    workflow: r.get(6)?,
                    prepared: r.get::<_, i64>(7)? != 0,
                    argv: crate::dag::decode(&r.get::<_, String>(8)?),
                    check_summary: r.get(9)?,
                    attempts: r.get(10)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// One transition, in its own transaction.
    pub fn transition(
        &mut self,
        id: u64,
        from: &[JobState],
        to: JobState,
        reason: &str,
    ) -> Result<bool, DbError> {
        let tx = self.tx()?;
        let ok = change(&tx, id, from, to, reason)?;
        tx.commit()?;
        Ok(ok)
    }

    /// A chain of transitions applied together (RUN_DONE → RUN_ERROR → FAILED, say).
    pub fn transitions(
        &mut self,
        id: u64,
        steps: &[(JobState, JobState, &str)],
    ) -> Result<bool, DbError> {
        let tx = self.tx()?;
        for (from, to, why) in steps {
            if !change(&tx, id, &[*from], *to, why)? {
                return Ok(false); // dropped: nothing applied
            }
        }
        tx.commit()?;
        Ok(true)
    }

    /// AWAITING_PARENTS → READY for jobs whose parents all finished.
    pub fn promote_ready(&mut self) -> Result<usize, DbError> {
        let tx = self.tx()?;
        let ids: Vec<i64> = {
            let mut st = tx.prepare(
                "SELECT j.id FROM jobs j WHERE j.state = 'AWAITING_PARENTS' AND NOT EXISTS (
                   SELECT 1 FROM job_parents p JOIN jobs q ON q.id = p.parent_id
                   WHERE p.job_id = j.id AND q.state != 'JOB_FINISHED')",
            )?;
            let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            v
        };
        for id in &ids {
            change(
                &tx,
                *id as u64,
                &[JobState::AwaitingParents],
                JobState::Ready,
                "parents finished",
            )?;
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// The work folder of a stack is ready.
    pub fn mark_prepared(&mut self, stack_id: u64) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE stacks SET prepared = 1 WHERE id = ?1",
            [stack_id as i64],
        )?;
        Ok(())
    }

    /// READY → PREPROCESSED with the final argument vector.
    pub fn preprocessed(&mut self, id: u64, argv: &[String]) -> Result<bool, DbError> {
        let command = crate::dag::encode(argv);
        let tx = self.tx()?;
        tx.execute(
            "UPDATE jobs SET command = ?2 WHERE id = ?1 AND state = 'READY'",
            params![id as i64, command],
        )?;
        let ok = change(
            &tx,
            id,
            &[JobState::Ready],
            JobState::Preprocessed,
            "work folder prepared",
        )?;
        tx.commit()?;
        Ok(ok)
    }

    /// Nodes wanted by every runnable job, in order.
    pub fn runnable_nodes(&self) -> Result<Vec<u32>, DbError> {
        let mut st = self.conn.prepare(
            "SELECT nodes FROM jobs WHERE state IN ('PREPROCESSED', 'RESTART_READY') ORDER BY id",
        )?;
        let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Records a launcher the service is about to submit.
    pub fn add_launcher(
        &mut self,
        queue: &str,
        scheduler: &str,
        nodes: u32,
    ) -> Result<u64, DbError> {
        self.conn.execute(
            "INSERT INTO launchers (queue, scheduler, nodes, state, submitted_at, heartbeat_at) VALUES (?1, ?2, ?3, 'QUEUED', ?4, ?5)",
            params![queue, scheduler, nodes, now(), epoch()],
        )?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// The scheduler accepted the launcher's batch job.
    pub fn set_batch_id(&mut self, id: u64, batch_id: &str) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE launchers SET batch_id = ?2 WHERE id = ?1",
            params![id as i64, batch_id],
        )?;
        Ok(())
    }

    /// Launchers in the given states, optionally of one queue.
    pub fn launchers(
        &self,
        states: &[&str],
        queue: Option<&str>,
    ) -> Result<Vec<LauncherRow>, DbError> {
        let mut st = self.conn.prepare(
            "SELECT l.id, l.queue, l.scheduler, l.batch_id, l.nodes, l.state, l.submitted_at, l.reason,
                    (SELECT COUNT(*) FROM jobs j WHERE j.launcher_id = l.id AND j.state = 'RUNNING')
             FROM launchers l WHERE (?1 IS NULL OR l.queue = ?1) ORDER BY l.id",
        )?;
        let rows: Vec<LauncherRow> = st
            .query_map(params![queue], |r| {
                Ok(LauncherRow {
                    id: r.get::<_, i64>(0)? as u64,
                    queue: r.get(1)?,
                    scheduler: r.get(2)?,
                    batch_id: r.get(3)?,
                    nodes: r.get(4)?,
                    state: r.get(5)?,
                    submitted_at: r.get(6)?,
                    reason: r.get(7)?,
                    running_jobs: r.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .filter(|l| states.is_empty() || states.contains(&l.state.as_str()))
            .collect())
    }

    /// A launcher came up.
    pub fn launcher_started(&mut self, id: u64, nodes: usize, host: &str) -> Result<bool, DbError> {
        let n = self.conn.execute(
            "UPDATE launchers SET state = 'RUNNING', heartbeat_at = ?2, reason = ?3 WHERE id = ?1 AND state IN ('QUEUED', 'RUNNING')",
            params![id as i64, epoch(), format!("running on {host} with {nodes} node(s)")],
        )?;
        Ok(n == 1)
    }

    /// Ends a launcher (FINISHED or LOST); its running jobs time out.
    pub fn end_launcher(&mut self, id: u64, state: &str, reason: &str) -> Result<usize, DbError> {
        let tx = self.tx()?;
        tx.execute(
            "UPDATE launchers SET state = ?2, reason = ?3, ended_at = ?4 WHERE id = ?1 AND state IN ('QUEUED', 'RUNNING')",
            params![id as i64, state, reason, now()],
        )?;
        let jobs: Vec<i64> = {
            let mut st =
                tx.prepare("SELECT id FROM jobs WHERE launcher_id = ?1 AND state = 'RUNNING'")?;
            let v = st
                .query_map([id as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            v
        };
        for j in &jobs {
            change(
                &tx,
                *j as u64,
                &[JobState::Running],
                JobState::RunTimeout,
                &format!("launcher {id} ended: {reason}"),
            )?;
        }
        tx.commit()?;
        Ok(jobs.len())
    }

    /// Gives every running launcher a fresh heartbeat: used when the service starts, so that
    /// launchers that kept running while it was down are not declared lost at once.
    pub fn refresh_heartbeats(&mut self) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE launchers SET heartbeat_at = ?1 WHERE state IN ('QUEUED', 'RUNNING')",
            [epoch()],
        )?;
        Ok(())
    }

    /// Running launchers silent for longer than `secs`.
    pub fn silent_launchers(&self, secs: f64) -> Result<Vec<u64>, DbError> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM launchers WHERE state = 'RUNNING' AND heartbeat_at < ?1")?;
        let v = st
            .query_map([epoch() - secs], |r| r.get::<_, i64>(0).map(|v| v as u64))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Heartbeat plus work: hands runnable jobs that fit `free_nodes` to the launcher, all
    /// in one transaction, so no job goes to two launchers.
    pub fn acquire(
        &mut self,
        launcher: u64,
        free_nodes: u32,
        max_jobs: u32,
        running: &[u64],
    ) -> Result<AcquireResponse, DbError> {
        let tx = self.tx()?;
        let state: Option<String> = tx
            .query_row(
                "SELECT state FROM launchers WHERE id = ?1",
                [launcher as i64],
                |r| r.get(0),
            )
            .optional()?;
        if state.as_deref() != Some("RUNNING") {
            tx.commit()?;
            return Ok(AcquireResponse {
                stop: true,
                kill: running.to_vec(),
                ..Default::default()
            });
        }
        tx.execute(
            "UPDATE launchers SET heartbeat_at = ?2 WHERE id = ?1",
            params![launcher as i64, epoch()],
        )?;
        let mut kill = Vec::new();
        for j in running {
            let mine: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM jobs WHERE id = ?1 AND state = 'RUNNING' AND launcher_id = ?2",
                    params![*j as i64, launcher as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if mine.is_none() {
                kill.push(*j);
            }
        }
        let mut jobs = Vec::new();
        let mut free = free_nodes;
        if free > 0 && max_jobs > 0 {
            let candidates: Vec<(i64, u32)> = {
                let mut st = tx.prepare("SELECT id, nodes FROM jobs WHERE state IN ('PREPROCESSED', 'RESTART_READY') ORDER BY id LIMIT 1000")?;
                let v = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                v
            };
            for (id, nodes) in candidates {
                if jobs.len() as u32 >= max_jobs || free == 0 {
                    break;
                }
                if nodes > free {
                    continue;
                }
                let why = format!("started by launcher {launcher}");
                if !change(
                    &tx,
                    id as u64,
                    &[JobState::Preprocessed, JobState::RestartReady],
                    JobState::Running,
                    &why,
                )? {
                    continue;
                }
                tx.execute(
                    "UPDATE jobs SET launcher_id = ?2, attempts = attempts + 1 WHERE id = ?1",
                    params![id, launcher as i64],
                )?;
                free -= nodes;
                jobs.push(tx.query_row(
                    "SELECT j.id, j.name, s.name, j.command, j.work_dir, j.nodes, j.ranks_per_node, j.threads_per_rank,
                            j.cpu_affinity, j.env, j.attempts FROM jobs j JOIN stacks s ON s.id = j.stack_id WHERE j.id = ?1",
                    [id],
                    |r| {
                        let env: String = r.get(9)?;
                        Ok(LaunchedJob {
                            id: r.get::<_, i64>(0)? as u64,
                            name: r.get(1)?,
                            stack: r.get(2)?,
                            argv: crate::dag::decode(&r.get::<_, String>(3)?),
                            work_dir: r.get(4)?,
                            nodes: r.get(5)?,
                            ranks_per_node: r.get(6)?,
                            threads_per_rank: r.get(7)?,
                            cpu_affinity: r.get(8)?,
                            env: serde_json::from_str(&env).unwrap_or_default(),
                            attempt: r.get(10)?,
                        })
                    },
                )?);
            }
        }
        tx.commit()?;
        Ok(AcquireResponse {
            jobs,
            kill,
            stop: false,
        })
    }

    /// A launcher's account of how a run ended. Reports for jobs it no longer owns are
    /// ignored (the job was killed, or timed out when the launcher was thought lost).
    pub fn report(&mut self, job: u64, r: &ReportRequest) -> Result<bool, DbError> {
        let tx = self.tx()?;
        let owner: Option<Option<i64>> = tx
            .query_row(
                "SELECT launcher_id FROM jobs WHERE id = ?1 AND state = 'RUNNING'",
                [job as i64],
                |r| r.get(0),
            )
            .optional()?;
        if owner != Some(Some(r.launcher as i64)) {
            return Ok(false);
        }
        let code = r
            .exit_code
            .map(|c| format!("exit {c}"))
            .unwrap_or_else(|| "no exit code".into());
        let ok = match r.outcome {
            Outcome::Done => change(&tx, job, &[JobState::Running], JobState::RunDone, &code)?,
            Outcome::Error => {
                let argv: String = tx.query_row(
                    "SELECT command FROM jobs WHERE id = ?1",
                    [job as i64],
                    |r| r.get(0),
                )?;
                let fault =
                    crate::fault::classify(&crate::dag::decode(&argv), r.exit_code, &r.message);
                let why = format!("{code}: {}", r.message);
                change(&tx, job, &[JobState::Running], JobState::RunError, &why)?
                    && match fault.handling() {
                        crate::fault::Handling::Retry => true,
                        crate::fault::Handling::Hold => change(
                            &tx,
                            job,
                            &[JobState::RunError],
                            JobState::Failed,
                            &format!("held for a person, not retried ({}): {why}", fault.what()),
                        )?,
                    }
            }
            Outcome::Timeout => change(
                &tx,
                job,
                &[JobState::Running],
                JobState::RunTimeout,
                &r.message,
            )?,
            Outcome::Missing => {
                change(
                    &tx,
                    job,
                    &[JobState::Running],
                    JobState::RunError,
                    &r.message,
                )? && change(
                    &tx,
                    job,
                    &[JobState::RunError],
                    JobState::Failed,
                    &format!("not retried: {}", r.message),
                )?
            }
        };
        tx.commit()?;
        Ok(ok)
    }

    /// Puts a failed, killed or erroring job back in line with fresh attempts.
    pub fn retry(&mut self, job: u64) -> Result<bool, DbError> {
        let tx = self.tx()?;
        let ok = change(
            &tx,
            job,
            &[
                JobState::Failed,
                JobState::UserKilled,
                JobState::RunError,
                JobState::RunTimeout,
            ],
            JobState::RestartReady,
            "retry requested by a person",
        )?;
        if ok {
            tx.execute("UPDATE jobs SET attempts = 0 WHERE id = ?1", [job as i64])?;
        }
        tx.commit()?;
        Ok(ok)
    }

    /// Stops a job for good; a running one is ended by its launcher at its next heartbeat.
    pub fn kill(&mut self, job: u64) -> Result<bool, DbError> {
        let all = [
            JobState::Created,
            JobState::AwaitingParents,
            JobState::Ready,
            JobState::Preprocessed,
            JobState::Running,
            JobState::RunDone,
            JobState::RunError,
            JobState::RunTimeout,
            JobState::RestartReady,
            JobState::Failed,
        ];
        self.transition(job, &all, JobState::UserKilled, "killed by a person")
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
                    from: r.get(1)?,
                    to: r.get(2)?,
                    reason: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Jobs per state for every stack version.
    pub fn stack_status(&self) -> Result<Vec<StackStatus>, DbError> {
        let mut st = self.conn.prepare(
            "SELECT s.name, s.version, s.workflow, j.state, COUNT(*), s.beamline, s.id FROM stacks s JOIN jobs j ON j.stack_id = s.id
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
            ))
        })?;
        let mut last_id = None;
        for row in rows {
            let (stack, version, workflow, state, n, beamline, id) = row?;
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
                }),
            }
            last_id = Some(id);
        }
        Ok(out)
    }
}
