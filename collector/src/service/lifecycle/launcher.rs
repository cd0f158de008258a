//! A launcher's life as data: its states, the table of legal moves, and the decision that ends
//! one (its batch job is gone, or it fell silent). The writes that apply them are in
//! [`crate::service::store`].

use crate::scheduler::BatchState;
use crate::service::clock::epoch;
use std::time::{Duration, SystemTime};

pub use beamflow_protocol::states::LauncherState;

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
    /// It waited in the batch queue past `max_queue_wait` while a backfill window would take
    /// a launcher at once: withdrawn, for one that fits.
    Withdrawn,
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
    // only a queued launcher is withdrawn: it holds no job
    (L::Queued, L::Finished, LT::Withdrawn),
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
    /// When it was submitted.
    pub submitted_at: SystemTime,
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

/// Whether a launcher still waiting in the batch queue (`batch`: what the scheduler said of
/// it) should be withdrawn at `now`: it has waited `max_queue_wait` and a backfill window
/// would start one at once (`window_fits`). A launcher that announced itself holds jobs, or
/// may, and is never withdrawn.
pub fn withdraw(
    f: &Facts,
    batch: Option<Option<BatchState>>,
    now: SystemTime,
    max_queue_wait: Duration,
    window_fits: bool,
) -> Option<(LauncherState, LauncherTrigger, String)> {
    let waiting = matches!(batch, Some(Some(BatchState::Queued | BatchState::Held)));
    let waited = now.duration_since(f.submitted_at).unwrap_or_default();
    (f.state == L::Queued && waiting && waited >= max_queue_wait && window_fits).then(|| {
        (
            L::Finished,
            LT::Withdrawn,
            format!(
                "withdrawn after {} in the batch queue (max_queue_wait): a backfill window takes a launcher now",
                humantime::format_duration(Duration::from_secs(waited.as_secs()))
            ),
        )
    })
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
            submitted_at: t0,
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

    #[test]
    fn a_queued_launcher_is_withdrawn_only_past_max_queue_wait_while_a_window_fits() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let f = Facts {
            state: L::Queued,
            batch_id: "42".into(),
            heartbeat_at: 0.0,
            submitted_at: t0,
        };
        let wait = Duration::from_secs(600);
        let queued = Some(Some(BatchState::Queued));
        let later = t0 + Duration::from_secs(601);
        let (to, trigger, why) = withdraw(&f, queued, later, wait, true).unwrap();
        assert_eq!((to, trigger), (L::Finished, LT::Withdrawn));
        assert!(
            why.contains("10m 1s") && why.contains("max_queue_wait"),
            "{why}"
        );
        assert!(legal(L::Queued, to, trigger));
        // not yet, no window, not asked, or already running: kept
        assert_eq!(
            withdraw(&f, queued, t0 + Duration::from_secs(599), wait, true),
            None
        );
        assert_eq!(withdraw(&f, queued, later, wait, false), None);
        assert_eq!(withdraw(&f, None, later, wait, true), None);
        let running = Facts {
            state: L::Running,
            ..f.clone()
        };
        assert_eq!(withdraw(&running, queued, later, wait, true), None);
        assert_eq!(
            withdraw(&f, Some(Some(BatchState::Running)), later, wait, true),
            None
        );
    }
}
