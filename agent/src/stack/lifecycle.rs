//! A stack's life at the beamline, as data: its states, the one table of legal moves that
//! the journal enforces, and the decisions that both `run` (the daemon) and `push` (the
//! daemon's path run once) apply after a transfer attempt, so the two cannot disagree about
//! what an outcome means or how long to wait before the next try.

use std::time::Duration;

beamflow_protocol::states! {
    /// Where a stack is in the agent's hands.
    pub enum StackState {
        /// Images are arriving; not finished yet.
        Waiting = "waiting",
        /// Quiet but not sendable (broken image, too few images); the reason says why.
        Held = "held",
        /// Finished and hashed; waiting for its turn on the link.
        Queued = "queued",
        /// Files are moving (or were, when the agent stopped).
        Sending = "sending",
        /// Every file is verified on the far side; the submission has not been accepted yet.
        Sent = "sent",
        /// The collector accepted the DAG.
        Submitted = "submitted",
        /// The folder disappeared (renamed or removed) before the stack was submitted; what
        /// arrived of it at the collector is being removed.
        Discarding = "discarding",
        /// The folder disappeared before the stack was submitted; nothing of it is left at
        /// the collector. A folder that appears again under the same name starts over.
        Gone = "gone",
        /// Submitted, its DAG done, and its images removed from this host (`delete_after`):
        /// every one had been verified at the collector. Images that arrive again start a
        /// new version.
        Freed = "freed",
    }
}

use StackState::{Discarding, Freed, Gone, Held, Queued, Sending, Sent, Submitted, Waiting};

/// Every legal move between two different states; staying in a state with a new reason is
/// always allowed.
pub const MOVES: &[(StackState, StackState)] = &[
    // images arrive, the rules decide
    (Waiting, Held),
    (Waiting, Queued),
    (Held, Waiting),
    (Held, Queued),
    // the link
    (Queued, Sending),
    (Queued, Waiting),
    (Queued, Held),
    (Sending, Sent),
    (Sending, Queued),
    (Sending, Submitted),
    (Sending, Held),
    (Sending, Waiting),
    (Sent, Sending),
    (Sent, Queued),
    (Sent, Submitted),
    (Sent, Held),
    (Sent, Waiting),
    // a new version, or `push` of the same folder again
    (Submitted, Waiting),
    (Submitted, Queued),
    (Submitted, Held),
    // the folder vanished before submission, and maybe came back
    (Waiting, Gone),
    (Held, Gone),
    (Queued, Gone),
    (Queued, Discarding),
    (Sending, Discarding),
    (Sending, Gone),
    (Sent, Discarding),
    (Held, Discarding),
    (Waiting, Discarding),
    (Discarding, Gone),
    (Discarding, Waiting),
    (Discarding, Held),
    (Discarding, Queued),
    (Gone, Waiting),
    (Gone, Held),
    (Gone, Queued),
    // the beamline freed its disk once the far side verified every file and the DAG was done;
    // images arriving again make a new version
    (Submitted, Freed),
    (Freed, Waiting),
];

/// Whether the table allows `from` → `to`.
pub fn legal(from: StackState, to: StackState) -> bool {
    from == to || MOVES.contains(&(from, to))
}

/// What to do about a failed attempt; the daemon's retry policy keys on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try again after a backoff (link, service, transient disk trouble).
    Retry,
    /// The stack changed: wait for it to settle again.
    Rewait,
    /// Needs a person: hold with the reason.
    Hold,
}

/// How long to wait before the next attempt: from `retry_initial`, doubling, never more than
/// `retry_max`. One rule for the daemon and for `push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// The longest.
    pub max: Duration,
}

impl Backoff {
    /// The agent's configured backoff.
    pub fn of(cfg: &beamflow_config::Config) -> Backoff {
        Backoff {
            initial: cfg.agent.retry_initial.0,
            max: cfg.agent.retry_max.0,
        }
    }

    /// The wait after one of `wait`.
    pub fn after(&self, wait: Duration) -> Duration {
        (wait * 2).min(self.max)
    }
}

/// How a transfer attempt ended, as far as the stack's life cares.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The collector accepted the DAG.
    Accepted {
        /// Jobs in it.
        jobs: u32,
        /// False when this version had been registered before.
        created: bool,
    },
    /// It did not; what that means and why.
    Failed {
        /// The policy for the failure.
        action: Action,
        /// For people.
        why: String,
    },
}

/// What comes next for the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing: the DAG is the collector's now.
    Done,
    /// Another attempt after this wait.
    RetryIn(Duration),
    /// Its files changed: hash them again (the daemon also waits for `settle` again).
    SettleAgain,
    /// A person must look; it stays held until its files change.
    Hold,
}

/// The decision after an attempt: the state and reason to journal, and what comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// State to journal.
    pub state: StackState,
    /// Reason to journal.
    pub reason: String,
    /// What to do.
    pub next: Next,
}

/// Decides what an attempt's outcome means. `all_sent`: every file is verified on the far
/// side (only the submission is missing); `wait`: the backoff this attempt would wait.
pub fn after_send(outcome: &Outcome, all_sent: bool, wait: Duration) -> Decision {
    match outcome {
        Outcome::Accepted { jobs, created } => Decision {
            state: Submitted,
            reason: format!(
                "DAG of {jobs} job{}{}",
                if *jobs == 1 { "" } else { "s" },
                if *created { "" } else { " (registered before)" }
            ),
            next: Next::Done,
        },
        Outcome::Failed { action, why } => match action {
            Action::Retry => Decision {
                state: if all_sent { Sent } else { Queued },
                reason: format!("{why}; retrying in {}", humantime::format_duration(wait)),
                next: Next::RetryIn(wait),
            },
            Action::Rewait => Decision {
                state: Waiting,
                reason: why.clone(),
                next: Next::SettleAgain,
            },
            Action::Hold => Decision {
                state: Held,
                reason: why.clone(),
                next: Next::Hold,
            },
        },
    }
}

/// The decision when the link cannot even be opened (the SSH master is down, waiting for
/// `login`): the stack waits in line, and tries again after `wait`.
pub fn link_down(why: &str, wait: Duration) -> Decision {
    Decision {
        state: Queued,
        reason: why.to_string(),
        next: Next::RetryIn(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_retry_max_for_everyone() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
        };
        let mut w = b.initial;
        let mut seen = vec![w];
        for _ in 0..5 {
            w = b.after(w);
            seen.push(w);
        }
        assert_eq!(seen, [1, 2, 4, 5, 5, 5].map(Duration::from_secs));
    }

    #[test]
    fn outcomes_map_to_states_the_table_allows() {
        let w = Duration::from_secs(2);
        let fail = |action| Outcome::Failed {
            action,
            why: "x".into(),
        };
        let d = after_send(&fail(Action::Retry), false, w);
        assert_eq!((d.state, d.next), (Queued, Next::RetryIn(w)));
        assert_eq!(d.reason, "x; retrying in 2s");
        assert_eq!(after_send(&fail(Action::Retry), true, w).state, Sent);
        assert_eq!(
            after_send(&fail(Action::Rewait), false, w).next,
            Next::SettleAgain
        );
        assert_eq!(after_send(&fail(Action::Hold), false, w).state, Held);
        let ok = after_send(
            &Outcome::Accepted {
                jobs: 5,
                created: false,
            },
            true,
            w,
        );
        assert_eq!(ok.reason, "DAG of 5 jobs (registered before)");
        // every decision is a legal move from where an attempt starts
        for d in [
            after_send(&fail(Action::Retry), false, w),
            after_send(&fail(Action::Retry), true, w),
            after_send(&fail(Action::Rewait), false, w),
            after_send(&fail(Action::Hold), false, w),
            ok,
        ] {
            assert!(legal(Sending, d.state), "{d:?}");
        }
        assert!(
            !legal(Submitted, Sending),
            "a submitted stack is queued first"
        );
        assert!(!legal(Gone, Submitted));
    }
}
