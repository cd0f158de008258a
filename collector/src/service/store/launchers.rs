//! The database writes of a launcher's life: each one transaction through the launcher
//! table's legal moves ([`crate::service::lifecycle::launcher`]); ending a launcher times out
//! the jobs it was running, in the same transaction.

use super::{Db, DbError};
use crate::service::clock::{epoch, stamp};
use crate::service::lifecycle::job::{self, JobState, Trigger};
use crate::service::lifecycle::launcher::{legal, Facts, LauncherState, LauncherTrigger, MOVES};
use beamflow_protocol::api::LauncherRow;
use rusqlite::{params, OptionalExtension};
use std::time::SystemTime;
use LauncherState as L;
use LauncherTrigger as LT;

impl Db {
    /// Records a launcher the service is about to submit.
    pub fn add_launcher(
        &mut self,
        queue: &str,
        scheduler: &str,
        nodes: u32,
    ) -> Result<u64, DbError> {
        self.add_shaped_launcher(queue, scheduler, (nodes, 0), false)
    }

    /// A launcher of `nodes` for `walltime_secs`, shaped to a backfill window or not.
    pub fn add_shaped_launcher(
        &mut self,
        queue: &str,
        scheduler: &str,
        (nodes, walltime_secs): (u32, u64),
        window: bool,
    ) -> Result<u64, DbError> {
        let now = self.now();
        self.conn.execute(
            "INSERT INTO launchers (queue, scheduler, nodes, state, submitted_at, heartbeat_at, walltime_secs, window)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                queue,
                scheduler,
                nodes,
                L::Queued.as_str(),
                stamp(now),
                epoch(now),
                walltime_secs as i64,
                window
            ],
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

    /// Launchers in the given states (all for none), optionally of one queue.
    pub fn launchers(
        &self,
        states: &[LauncherState],
        queue: Option<&str>,
    ) -> Result<Vec<LauncherRow>, DbError> {
        // the states are written in (a short fixed list): ended launchers pile up over a
        // service's life, and the policy asks for the live ones only
        let within = if states.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
            format!("AND l.state IN ({})", list.join(", "))
        };
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT l.id, l.queue, l.scheduler, l.batch_id, l.nodes, l.state, l.submitted_at, l.reason,
                    (SELECT COUNT(*) FROM jobs j WHERE j.launcher_id = l.id AND j.state = '{running}'),
                    l.walltime_secs, l.window, l.deadline
             FROM launchers l WHERE (?1 IS NULL OR l.queue = ?1) {within} ORDER BY l.id",
            running = JobState::Running.as_str()
        ))?;
        let rows: Vec<LauncherRow> = st
            .query_map(params![queue], |r| {
                Ok(LauncherRow {
                    id: r.get::<_, i64>(0)? as u64,
                    queue: r.get(1)?,
                    scheduler: r.get(2)?,
                    batch_id: r.get(3)?,
                    nodes: r.get(4)?,
                    state: super::state(r, 5)?,
                    submitted_at: r.get(6)?,
                    reason: r.get(7)?,
                    running_jobs: r.get(8)?,
                    walltime_secs: r.get::<_, i64>(9)? as u64,
                    window: r.get(10)?,
                    deadline: r.get(11)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Whether the service ever had this launcher.
    pub fn has_launcher(&self, id: u64) -> Result<bool, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM launchers WHERE id = ?1")?
            .query_row([id as i64], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// What [`crate::service::lifecycle::launcher::judge`] needs of every live launcher: (id, queue, facts).
    pub fn live_launchers(&self) -> Result<Vec<(u64, String, Facts)>, DbError> {
        let mut st = self.conn.prepare_cached(
            &format!("SELECT id, queue, state, batch_id, COALESCE(heartbeat_at, 0), submitted_at FROM launchers WHERE state IN ('{}', '{}', '{}') ORDER BY id", LauncherState::Queued.as_str(), LauncherState::Running.as_str(), LauncherState::Ending.as_str()),
        )?;
        let v = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, f64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        v.into_iter()
            .map(|(id, q, s, batch_id, hb, at)| {
                Ok((
                    id,
                    q,
                    Facts {
                        state: LauncherState::parse(&s)?,
                        batch_id,
                        heartbeat_at: hb,
                        // a stamp this store wrote; unreadable only if the file was edited
                        submitted_at: humantime::parse_rfc3339_weak(&at)
                            .unwrap_or(std::time::UNIX_EPOCH),
                    },
                ))
            })
            .collect()
    }

    /// Moves a launcher by the table; `None` if it was in a state the move does not start
    /// from. Ending it (FINISHED, LOST) times out its running jobs in the same transaction;
    /// returns how many.
    pub fn move_launcher(
        &mut self,
        id: u64,
        to: LauncherState,
        trigger: LauncherTrigger,
        reason: &str,
    ) -> Result<Option<usize>, DbError> {
        let now = self.now();
        let tx = self.tx()?;
        let moved = shift(&tx, id, to, trigger, reason, now)?;
        tx.commit()?;
        Ok(moved)
    }

    /// A launcher came up in its allocation with `nodes` job slots; its jobs must be done
    /// its queue's `margin` before its wall time ends.
    pub fn launcher_started(
        &mut self,
        id: u64,
        nodes: usize,
        host: &str,
        margin: &dyn Fn(&str) -> std::time::Duration,
    ) -> Result<bool, DbError> {
        let why = format!("running on {host} with {nodes} node(s)");
        let moved = self
            .move_launcher(id, L::Running, LT::Started, &why)?
            .is_some();
        if moved {
            let queue: String = self.conn.query_row(
                "SELECT queue FROM launchers WHERE id = ?1",
                [id as i64],
                |r| r.get(0),
            )?;
            self.conn.execute(
                "UPDATE launchers SET slots = ?2,
                    deadline = CASE WHEN walltime_secs > 0 THEN ?3 + walltime_secs - ?4 END
                 WHERE id = ?1",
                params![
                    id as i64,
                    nodes as i64,
                    epoch(self.now()),
                    margin(&queue).as_secs_f64()
                ],
            )?;
            // how long it waited in the batch queue, for /metrics
            let submitted: String = self.conn.query_row(
                "SELECT submitted_at FROM launchers WHERE id = ?1",
                [id as i64],
                |r| r.get(0),
            )?;
            if let Some(waited) = crate::service::clock::between(&submitted, &stamp(self.now())) {
                crate::service::http::metrics::global().launcher_waited(waited);
            }
        }
        Ok(moved)
    }

    /// Gives every live launcher a fresh heartbeat: used when the service starts, so that
    /// launchers that kept running while it was down are not declared lost at once.
    pub fn refresh_heartbeats(&mut self) -> Result<(), DbError> {
        let now = epoch(self.now());
        self.conn.execute(
            &format!(
                "UPDATE launchers SET heartbeat_at = ?1 WHERE state IN ('{}', '{}', '{}')",
                LauncherState::Queued.as_str(),
                LauncherState::Running.as_str(),
                LauncherState::Ending.as_str()
            ),
            [now],
        )?;
        Ok(())
    }
}

/// The one write path of a launcher's state, inside the caller's transaction: refuses a
/// move the table does not hold (an error: a bug in the caller), returns `None` when the
/// launcher is not where the move starts (a lost race), and times out the running jobs of a
/// launcher that ended.
pub(crate) fn shift(
    tx: &rusqlite::Transaction<'_>,
    id: u64,
    to: LauncherState,
    trigger: LauncherTrigger,
    reason: &str,
    now: SystemTime,
) -> Result<Option<usize>, DbError> {
    if !MOVES.iter().any(|(_, t, g)| *t == to && *g == trigger) {
        return Err(DbError::IllegalLauncher {
            launcher: id,
            to: to.as_str(),
            trigger: format!("{trigger:?}"),
        });
    }
    let at = stamp(now);
    let cur: Option<String> = tx
        .prepare_cached("SELECT state FROM launchers WHERE id = ?1")?
        .query_row([id as i64], |r| r.get(0))
        .optional()?;
    let Some(cur) = cur.as_deref().map(LauncherState::parse).transpose()? else {
        return Ok(None);
    };
    if !legal(cur, to, trigger) {
        return Ok(None);
    }
    if to.live() {
        tx.prepare_cached(
            "UPDATE launchers SET state = ?2, reason = ?3, heartbeat_at = ?4 WHERE id = ?1",
        )?
        .execute(params![id as i64, to.as_str(), reason, epoch(now)])?;
        return Ok(Some(0));
    }
    tx.prepare_cached("UPDATE launchers SET state = ?2, reason = ?3, ended_at = ?4 WHERE id = ?1")?
        .execute(params![id as i64, to.as_str(), reason, at])?;
    let jobs: Vec<i64> = tx
        .prepare_cached(&format!(
            "SELECT id FROM jobs WHERE launcher_id = ?1 AND state = '{}'",
            JobState::Running.as_str()
        ))?
        .query_map([id as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for j in &jobs {
        job::change(
            tx,
            *j as u64,
            JobState::RunTimeout,
            Trigger::LauncherEnded,
            &format!("launcher {id} ended: {reason}"),
            &at,
        )?;
    }
    Ok(Some(jobs.len()))
}
