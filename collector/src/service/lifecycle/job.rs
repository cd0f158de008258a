//! A job's life as data: its states (named as HPC users know them from Balsam), the one
//! table of legal moves, the one write path that enforces it, and the pure decisions that
//! pick a move from what happened.
//!
//! Everything that changes a job's state goes through `change`: a move the table does not
//! hold is an error (a bug in the caller, caught by the tests), while a job found in another
//! state than the caller expected is a lost race (`Ok(false)`), not an error: a person's kill
//! and a launcher's report may meet, and exactly one of them wins.

use crate::science::fault::{self, Handling};
use beamflow_protocol::api::Outcome;
use rusqlite::{params, OptionalExtension, Transaction};

pub use beamflow_protocol::states::JobState;

/// What made a job move: the rows of [`MOVES`] name one each, and so does every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The stack version was registered.
    Submitted,
    /// Its last parent finished.
    ParentsFinished,
    /// Its work folder was prepared and its command filled.
    Prepared,
    /// Its work folder could not be prepared (the data is at fault).
    PrepareFailed,
    /// A launcher took it.
    Acquired,
    /// Its launcher reported how it ended.
    Reported,
    /// Its launcher ended or fell silent while it ran.
    LauncherEnded,
    /// Its launcher held it ahead of a free node and gave it back unstarted.
    Returned,
    /// Its outputs were checked after a zero exit.
    Checked,
    /// The service's retry policy decided (attempts left, a timeout, or none left).
    Policy,
    /// The fault table says a rerun cannot help.
    Hold,
    /// A person asked for a retry.
    PersonRetry,
    /// A person killed it.
    PersonKill,
    /// A newer version of its stack was accepted before it started.
    Superseded,
    /// Its stack was abandoned while it streamed: the folder removed at the beamline before
    /// the stack was finished.
    Abandoned,
    /// A finished job of an earlier version read the very same bytes with the same command:
    /// its outputs are this job's.
    Reused,
}

/// Why a move was not made: the database failed, or the table holds no such move.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored state this build does not know (a database from another version).
    #[error(transparent)]
    UnknownState(#[from] beamflow_protocol::states::UnknownState),
    /// A move the table does not hold was asked for: a bug, never applied.
    #[error("job {job}: no legal move to {} by {trigger:?}; this is a bug in beamflow, please report it", to.as_str())]
    Illegal {
        /// The job.
        job: u64,
        /// Where it was asked to go.
        to: JobState,
        /// By what.
        trigger: Trigger,
    },
}

use JobState as S;
use Trigger as T;

/// Every legal move: (from, to, trigger). The one table of a job's life; `change` refuses
/// anything else.
pub const MOVES: &[(JobState, JobState, Trigger)] = &[
    (S::Created, S::Ready, T::Submitted),
    (S::Created, S::AwaitingParents, T::Submitted),
    (S::AwaitingParents, S::Ready, T::ParentsFinished),
    (S::Ready, S::Preprocessed, T::Prepared),
    (S::Ready, S::JobFinished, T::Reused),
    (S::Ready, S::Failed, T::PrepareFailed),
    (S::Preprocessed, S::Running, T::Acquired),
    (S::RestartReady, S::Running, T::Acquired),
    (S::Running, S::RunDone, T::Reported),
    (S::Running, S::RunError, T::Reported),
    (S::Running, S::RunTimeout, T::Reported),
    (S::Running, S::RunTimeout, T::LauncherEnded),
    // held by a launcher that ended before a node freed for it: it never ran
    (S::Running, S::RestartReady, T::Returned),
    (S::RunDone, S::Postprocessed, T::Checked),
    (S::RunDone, S::RunError, T::Checked),
    (S::Postprocessed, S::JobFinished, T::Checked),
    (S::RunError, S::RestartReady, T::Policy),
    (S::RunError, S::Failed, T::Policy),
    (S::RunError, S::Failed, T::Hold),
    (S::RunTimeout, S::RestartReady, T::Policy),
    (S::RunTimeout, S::Failed, T::Hold),
    (S::Failed, S::RestartReady, T::PersonRetry),
    (S::UserKilled, S::RestartReady, T::PersonRetry),
    (S::RunError, S::RestartReady, T::PersonRetry),
    (S::RunTimeout, S::RestartReady, T::PersonRetry),
    (S::Created, S::UserKilled, T::PersonKill),
    (S::AwaitingParents, S::UserKilled, T::PersonKill),
    (S::Ready, S::UserKilled, T::PersonKill),
    (S::Preprocessed, S::UserKilled, T::PersonKill),
    (S::Running, S::UserKilled, T::PersonKill),
    (S::RunDone, S::UserKilled, T::PersonKill),
    (S::RunError, S::UserKilled, T::PersonKill),
    (S::RunTimeout, S::UserKilled, T::PersonKill),
    (S::RestartReady, S::UserKilled, T::PersonKill),
    (S::Failed, S::UserKilled, T::PersonKill),
    // a streamed stack whose folder went before it was finished: its open jobs end as if a
    // person killed them, saying why
    (S::Created, S::UserKilled, T::Abandoned),
    (S::AwaitingParents, S::UserKilled, T::Abandoned),
    (S::Ready, S::UserKilled, T::Abandoned),
    (S::Preprocessed, S::UserKilled, T::Abandoned),
    (S::Running, S::UserKilled, T::Abandoned),
    (S::RunDone, S::UserKilled, T::Abandoned),
    (S::RunError, S::UserKilled, T::Abandoned),
    (S::RunTimeout, S::UserKilled, T::Abandoned),
    (S::RestartReady, S::UserKilled, T::Abandoned),
    // a newer version takes over whatever of the older one has not started; what runs
    // finishes, and its results are kept
    (S::Created, S::Superseded, T::Superseded),
    (S::AwaitingParents, S::Superseded, T::Superseded),
    (S::Ready, S::Superseded, T::Superseded),
    (S::Preprocessed, S::Superseded, T::Superseded),
    (S::RestartReady, S::Superseded, T::Superseded),
];

/// Whether the table holds the move.
pub fn legal(from: JobState, to: JobState, trigger: Trigger) -> bool {
    MOVES.contains(&(from, to, trigger))
}

/// The states `trigger` may move a job from to reach `to`: what a caller expects to find.
pub fn sources(to: JobState, trigger: Trigger) -> Vec<JobState> {
    MOVES
        .iter()
        .filter(|(_, t, g)| *t == to && *g == trigger)
        .map(|(f, _, _)| *f)
        .collect()
}

/// One move a decision asks for, with the reason people will read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Where to.
    pub to: JobState,
    /// Why, as data.
    pub trigger: Trigger,
    /// Why, for people.
    pub reason: String,
}

fn mv(to: JobState, trigger: Trigger, reason: impl Into<String>) -> Move {
    Move {
        to,
        trigger,
        reason: reason.into(),
    }
}

/// The one write path: moves job `id` to `to` by `trigger`, with an event at `at`, if it
/// is in a state the table lets `trigger` move from. `Err(Illegal)` when the table holds no
/// such move at all; `Ok(false)` when the job is elsewhere (someone else moved it first).
pub(crate) fn change(
    tx: &Transaction<'_>,
    id: u64,
    to: JobState,
    trigger: Trigger,
    reason: &str,
    at: &str,
) -> Result<bool, MoveError> {
    let from = sources(to, trigger);
    if from.is_empty() {
        return Err(MoveError::Illegal {
            job: id,
            to,
            trigger,
        });
    }
    let cur: Option<String> = tx
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
        .query_row([id as i64], |r| r.get(0))
        .optional()?;
    let Some(cur) = cur.as_deref().map(JobState::parse).transpose()? else {
        return Ok(false);
    };
    if !legal(cur, to, trigger) {
        return Ok(false);
    }
    if to == JobState::Running {
        // how long it waited, runnable, for a slot: since its last move
        let since: Option<String> = tx
            .prepare_cached("SELECT at FROM events WHERE job_id = ?1 ORDER BY id DESC LIMIT 1")?
            .query_row([id as i64], |r| r.get(0))
            .optional()?;
        if let Some(secs) = since.and_then(|s| crate::service::clock::between(&s, at)) {
            crate::service::http::metrics::global().queue_wait(secs);
        }
    }
    tx.prepare_cached("UPDATE jobs SET state = ?2, reason = ?3 WHERE id = ?1")?
        .execute(params![id as i64, to.as_str(), reason])?;
    tx.prepare_cached(
        "INSERT INTO events (job_id, at, from_state, to_state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id as i64, at, cur.as_str(), to.as_str(), reason])?;
    let metrics = crate::service::http::metrics::global();
    metrics.transition(to.as_str());
    if to == JobState::JobFinished {
        // the stack version's last job: its DAG is done. Two looks in the (stack, state)
        // index, one on each side of JOB_FINISHED, each a range that stops at its first
        // row: one look with `<> OR >` walks the stack's finished jobs (they sort between
        // the open ones), a cost per finish that grew with the DAG.
        let finished = JobState::JobFinished.as_str();
        let (open, created): (bool, String) = tx
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM jobs o INDEXED BY jobs_by_stack_state
                                WHERE o.stack_id = j.stack_id AND o.state < '{finished}')
                     OR EXISTS (SELECT 1 FROM jobs o INDEXED BY jobs_by_stack_state
                                WHERE o.stack_id = j.stack_id AND o.state > '{finished}'),
                        s.created_at
                 FROM jobs j JOIN stacks s ON s.id = j.stack_id WHERE j.id = ?1"
            ))?
            .query_row([id as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if !open {
            if let Some(secs) = crate::service::clock::between(&created, at) {
                metrics.dag_done(secs);
            }
        }
    }
    Ok(true)
}

/// Applies the moves of one decision in order, all or none: false (nothing applied) as soon
/// as one of them finds the job elsewhere.
pub(crate) fn apply(
    tx: &Transaction<'_>,
    id: u64,
    moves: &[Move],
    at: &str,
) -> Result<bool, MoveError> {
    if moves.len() == 1 {
        // one move is all or none by itself
        return change(tx, id, moves[0].to, moves[0].trigger, &moves[0].reason, at);
    }
    tx.prepare_cached("SAVEPOINT moves")?.execute([])?;
    for m in moves {
        if !change(tx, id, m.to, m.trigger, &m.reason, at)? {
            tx.execute_batch("ROLLBACK TO moves; RELEASE moves")?;
            return Ok(false);
        }
    }
    tx.prepare_cached("RELEASE moves")?.execute([])?;
    Ok(true)
}

/// What a launcher's report leads to. A non-zero exit the fault table blames on the data
/// (a blank section, a bad parameter) is held at once; a run fault goes on to the retry
/// policy ([`after_error`]); a command that cannot start is held.
pub fn on_report(
    outcome: Outcome,
    exit_code: Option<i32>,
    message: &str,
    argv: &[String],
) -> Vec<Move> {
    let code = exit_code
        .map(|c| format!("exit {c}"))
        .unwrap_or_else(|| "no exit code".into());
    match outcome {
        Outcome::Done => vec![mv(S::RunDone, T::Reported, code)],
        Outcome::Timeout => vec![mv(S::RunTimeout, T::Reported, message)],
        Outcome::Error => {
            let why = format!("{code}: {message}");
            let fault = fault::classify(argv, exit_code, message);
            let mut moves = vec![mv(S::RunError, T::Reported, why.clone())];
            if fault.handling() == Handling::Hold {
                moves.push(mv(
                    S::Failed,
                    T::Hold,
                    format!("held for a person, not retried ({}): {why}", fault.what()),
                ));
            }
            moves
        }
        Outcome::Missing => vec![
            mv(S::RunError, T::Reported, message),
            mv(S::Failed, T::Hold, format!("not retried: {message}")),
        ],
        Outcome::Unstarted => vec![mv(S::RestartReady, T::Returned, message)],
    }
}

/// What the output check of a zero exit leads to: finished when it found no `fault`, else
/// held (the data, not the run, is at fault: AlignTK exits 0 on a blank section).
pub fn after_check(fault: Option<&str>) -> Vec<Move> {
    match fault {
        None => vec![
            mv(S::Postprocessed, T::Checked, "outputs checked"),
            mv(S::JobFinished, T::Checked, "done"),
        ],
        Some(why) => vec![
            mv(S::RunError, T::Checked, why),
            mv(
                S::Failed,
                T::Hold,
                format!(
                    "held for a person, not retried (the data, not the run, is at fault): {why}"
                ),
            ),
        ],
    }
}

/// What a run error with attempts left, or none, leads to.
pub fn after_error(attempts: u32, max: u32, last: &str) -> Move {
    if attempts < max {
        mv(
            S::RestartReady,
            T::Policy,
            format!("attempt {attempts} of {max} failed; retrying"),
        )
    } else {
        mv(
            S::Failed,
            T::Policy,
            format!("out of attempts ({max}); last: {last}"),
        )
    }
}

/// A run that timed out runs again (its allocation, not the job, ran out) until it has run
/// out of wall time `max` times (`runs`: how long each of those runs lasted); then it is held
/// for a person, since the next allocation of that size would end it the same way. `limit`
/// is the longest wall time the queues give a launcher, for the message.
pub fn after_timeout(
    step: &str,
    runs: &[std::time::Duration],
    max: u32,
    limit: std::time::Duration,
) -> Move {
    if (runs.len() as u32) < max {
        let longest = runs.iter().max().copied().unwrap_or_default();
        return mv(
            S::RestartReady,
            T::Policy,
            format!(
                "timed out after {}; will run again in a launcher with room for that long",
                humantime::format_duration(std::time::Duration::from_secs(longest.as_secs()))
            ),
        );
    }
    let took: Vec<String> = runs
        .iter()
        .map(|d| {
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
        })
        .collect();
    mv(
        S::Failed,
        T::Hold,
        format!(
            "{step} ran out of wall time {} times (limit {}; it ran {}): raise the queue's walltime or make its jobs smaller (the workflow's chunk), then retry it",
            runs.len(),
            humantime::format_duration(std::time::Duration::from_secs(limit.as_secs())),
            took.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_name() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Ok(*s));
        }
        assert!(JobState::parse("LOST").is_err());
    }

    #[test]
    fn the_table_reaches_every_state_and_leaves_no_end_state() {
        for &s in JobState::ALL.iter().filter(|s| **s != S::Created) {
            assert!(
                MOVES.iter().any(|(_, to, _)| *to == s),
                "{s:?} is never reached"
            );
        }
        // JOB_FINISHED and SUPERSEDED are the states nothing leaves
        for &s in JobState::ALL {
            let leaves = MOVES.iter().any(|(f, _, _)| *f == s);
            assert_eq!(
                leaves,
                !matches!(s, S::JobFinished | S::Superseded),
                "{s:?}"
            );
        }
        // only what has not started is superseded: a running job finishes
        for (f, to, _) in MOVES {
            if *to == S::Superseded {
                assert!(
                    matches!(
                        f,
                        S::Created
                            | S::AwaitingParents
                            | S::Ready
                            | S::Preprocessed
                            | S::RestartReady
                    ),
                    "{f:?} -> SUPERSEDED"
                );
            }
        }
        // a launcher is only ever handed a job that waits for one
        for (f, to, _) in MOVES {
            if *to == S::Running {
                assert!(f.runnable(), "{f:?} -> RUNNING");
            }
        }
    }

    #[test]
    fn reports_decide_by_the_fault_table() {
        let argv = vec!["find_rst".to_string()];
        assert_eq!(
            on_report(Outcome::Done, Some(0), "", &argv)[0].to,
            S::RunDone
        );
        let run_fault = on_report(Outcome::Error, Some(137), "killed by signal 9", &argv);
        assert_eq!(run_fault.len(), 1, "{run_fault:?}");
        let missing = on_report(Outcome::Missing, None, "x is not on PATH", &argv);
        assert_eq!(
            missing.iter().map(|m| m.to).collect::<Vec<_>>(),
            [S::RunError, S::Failed]
        );
        let unstarted = on_report(Outcome::Unstarted, None, "launcher ending", &argv);
        assert_eq!(
            unstarted.len(),
            1,
            "back in line in one move: {unstarted:?}"
        );
        assert_eq!(unstarted[0].to, S::RestartReady);
        for plan in [run_fault, missing, unstarted, after_check(Some("blank"))] {
            let mut at = S::Running;
            if plan[0].trigger == T::Checked {
                at = S::RunDone;
            }
            for m in plan {
                assert!(legal(at, m.to, m.trigger), "{at:?} -> {m:?}");
                at = m.to;
            }
        }
        assert_eq!(after_error(1, 3, "x").to, S::RestartReady);
        assert_eq!(after_error(3, 3, "x").to, S::Failed);
    }
}
