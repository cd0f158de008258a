//! A launcher's life as data: its states, the table of legal moves, the decision that ends
//! one (its batch job is gone, or it fell silent), and the database writes that apply them.
//! Ending a launcher times out the jobs it was running, in the same transaction.

use super::clock::{epoch, stamp};
use super::db::{Db, DbError};
use super::job::{self, JobState, Trigger};
use crate::scheduler::BatchState;
use beamflow_protocol::api::LauncherRow;
use rusqlite::{params, OptionalExtension};
use std::time::{Duration, SystemTime};

/// Where a launcher is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LauncherState {
    /// Submitted to the batch scheduler; its allocation has not started.
    Queued,
    /// Its allocation runs it and it asks for work.
    Running,
    /// It is ending (cancelled, out of wall time, idle) and takes no more work; its last
    /// jobs are being ended and reported.
    Ending,
    /// It exited, or its batch job ended.
    Finished,
    /// It fell silent, or its queue was removed: declared gone.
    Lost,
}

impl LauncherState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            LauncherState::Queued => "QUEUED",
            LauncherState::Running => "RUNNING",
            LauncherState::Ending => "ENDING",
            LauncherState::Finished => "FINISHED",
            LauncherState::Lost => "LOST",
        }
    }

    /// The state a stored name stands for.
    pub fn parse(s: &str) -> Option<LauncherState> {
        [
            Self::Queued,
            Self::Running,
            Self::Ending,
            Self::Finished,
            Self::Lost,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// Whether it may still run jobs.
    pub fn live(self) -> bool {
        matches!(
            self,
            LauncherState::Queued | LauncherState::Running | LauncherState::Ending
        )
    }

    /// Whether it speaks to the service, so that its silence means it is gone.
    pub fn heard(self) -> bool {
        matches!(self, LauncherState::Running | LauncherState::Ending)
    }
}

/// Every state's stored name, for exports that list each state even when none is in it.
pub const STATE_NAMES: &[&str] = &["QUEUED", "RUNNING", "ENDING", "FINISHED", "LOST"];

/// What moved a launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LauncherTrigger {
    /// It announced itself from its allocation.
    Started,
    /// It said it takes no more work: it is ending.
    Closing,
    /// It said it exits.
    Exited,
    /// The scheduler no longer runs its batch job.
    BatchEnded,
    /// The scheduler refused it.
    SubmitFailed,
    /// No heartbeat for `heartbeat_timeout`.
    Silent,
    /// Its queue is no longer configured.
    Unconfigured,
}

use LauncherState as L;
use LauncherTrigger as LT;

/// Every legal move of a launcher: (from, to, trigger).
pub const MOVES: &[(LauncherState, LauncherState, LauncherTrigger)] = &[
    (L::Queued, L::Running, LT::Started),
    // a launcher whose first answer was lost announces itself again
    (L::Running, L::Running, LT::Started),
    (L::Running, L::Ending, LT::Closing),
    (L::Queued, L::Finished, LT::Exited),
    (L::Running, L::Finished, LT::Exited),
    (L::Ending, L::Finished, LT::Exited),
    (L::Queued, L::Finished, LT::BatchEnded),
    (L::Running, L::Finished, LT::BatchEnded),
    (L::Ending, L::Finished, LT::BatchEnded),
    (L::Queued, L::Finished, LT::SubmitFailed),
    (L::Running, L::Lost, LT::Silent),
    (L::Ending, L::Lost, LT::Silent),
    (L::Queued, L::Lost, LT::Unconfigured),
    (L::Running, L::Lost, LT::Unconfigured),
    (L::Ending, L::Lost, LT::Unconfigured),
];

/// Whether the table holds the move.
pub fn legal(from: LauncherState, to: LauncherState, trigger: LauncherTrigger) -> bool {
    MOVES.contains(&(from, to, trigger))
}

/// What the engine knows of one live launcher when it judges it.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Its state.
    pub state: LauncherState,
    /// The scheduler's id ("" until the submission returned).
    pub batch_id: String,
    /// When it last spoke (seconds since the epoch).
    pub heartbeat_at: f64,
}

/// Whether a live launcher has ended, and how: its batch job is no longer queued or running
/// (`batch` is what the scheduler said of it; `None` when it was not asked), or a running
/// one has been silent for longer than `timeout` at `now`.
pub fn judge(
    f: &Facts,
    batch: Option<Option<BatchState>>,
    now: SystemTime,
    timeout: Duration,
) -> Option<(LauncherState, LauncherTrigger, String)> {
    if !f.batch_id.is_empty() {
        if let Some(None | Some(BatchState::Finished)) = batch {
            return Some((
                L::Finished,
                LT::BatchEnded,
                format!("batch job {} ended", f.batch_id),
            ));
        }
    }
    if f.state.heard() && epoch(now) - f.heartbeat_at > timeout.as_secs_f64() {
        return Some((
            L::Lost,
            LT::Silent,
            format!("no heartbeat for {}", humantime::format_duration(timeout)),
        ));
    }
    None
}

impl Db {
    /// Records a launcher the service is about to submit.
    pub fn add_launcher(
        &mut self,
        queue: &str,
        scheduler: &str,
        nodes: u32,
    ) -> Result<u64, DbError> {
        let now = self.now();
        self.conn.execute(
            "INSERT INTO launchers (queue, scheduler, nodes, state, submitted_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![queue, scheduler, nodes, L::Queued.as_str(), stamp(now), epoch(now)],
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
                    (SELECT COUNT(*) FROM jobs j WHERE j.launcher_id = l.id AND j.state = 'RUNNING')
             FROM launchers l WHERE (?1 IS NULL OR l.queue = ?1) {within} ORDER BY l.id"
        ))?;
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

    /// What [`judge`] needs of every live launcher: (id, queue, facts).
    pub fn live_launchers(&self) -> Result<Vec<(u64, String, Facts)>, DbError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, queue, state, batch_id, COALESCE(heartbeat_at, 0) FROM launchers WHERE state IN ('QUEUED', 'RUNNING', 'ENDING') ORDER BY id",
        )?;
        let v = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, f64>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(v.into_iter()
            .filter_map(|(id, q, s, batch_id, hb)| {
                Some((
                    id,
                    q,
                    Facts {
                        state: LauncherState::parse(&s)?,
                        batch_id,
                        heartbeat_at: hb,
                    },
                ))
            })
            .collect())
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

    /// A launcher came up in its allocation with `nodes` job slots.
    pub fn launcher_started(&mut self, id: u64, nodes: usize, host: &str) -> Result<bool, DbError> {
        let why = format!("running on {host} with {nodes} node(s)");
        let moved = self
            .move_launcher(id, L::Running, LT::Started, &why)?
            .is_some();
        if moved {
            self.conn.execute(
                "UPDATE launchers SET slots = ?2 WHERE id = ?1",
                params![id as i64, nodes as i64],
            )?;
        }
        Ok(moved)
    }

    /// Gives every live launcher a fresh heartbeat: used when the service starts, so that
    /// launchers that kept running while it was down are not declared lost at once.
    pub fn refresh_heartbeats(&mut self) -> Result<(), DbError> {
        let now = epoch(self.now());
        self.conn.execute(
            "UPDATE launchers SET heartbeat_at = ?1 WHERE state IN ('QUEUED', 'RUNNING', 'ENDING')",
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
    let Some(cur) = cur.as_deref().and_then(LauncherState::parse) else {
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
        .prepare_cached("SELECT id FROM jobs WHERE launcher_id = ?1 AND state = 'RUNNING'")?
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn ended_launchers_stay_ended() {
        for (f, t, _) in MOVES {
            assert!(f.live(), "{f:?} -> {t:?}: nothing leaves an end state");
        }
    }

    #[test]
    fn a_launcher_ends_when_its_batch_job_is_gone_or_it_falls_silent() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let f = Facts {
            state: L::Running,
            batch_id: "42".into(),
            heartbeat_at: epoch(t0),
        };
        let timeout = Duration::from_secs(3);
        assert_eq!(
            judge(&f, Some(Some(BatchState::Running)), t0, timeout),
            None
        );
        assert_eq!(
            judge(&f, Some(None), t0, timeout).map(|j| j.1),
            Some(LT::BatchEnded)
        );
        // silence counts only past the timeout, measured on the clock given
        let later = t0 + Duration::from_millis(2900);
        assert_eq!(judge(&f, None, later, timeout), None);
        let late = t0 + Duration::from_millis(3100);
        let (to, trigger, why) = judge(&f, None, late, timeout).unwrap();
        assert_eq!((to, trigger), (L::Lost, LT::Silent));
        assert_eq!(why, "no heartbeat for 3s");
        // a queued launcher has no heartbeat to miss
        let q = Facts {
            state: L::Queued,
            ..f
        };
        assert_eq!(judge(&q, None, late, timeout), None);
    }
}
