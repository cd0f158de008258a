//! How many jobs a launcher holds ahead of its idle nodes. A trivial job ends in a
//! millisecond, and a slot that waits a round trip to the service for its next job idles
//! most of its time; a job held by the launcher starts the instant a node frees. But a held
//! job is one no other launcher can start, so jobs are held only while this launcher's own
//! recent runs show its jobs end within moments ([`SHORT_JOB`]).

use beamflow_protocol::api::{AHEAD_PER_SLOT, SHORT_JOB};
use std::collections::VecDeque;
use std::time::Duration;

/// The recent runs the decision reads.
const RECENT: usize = 16;

/// Runs seen before any job is held: one short job says little.
const ENOUGH: usize = 4;

/// A launcher's recent run times, newest last.
#[derive(Debug, Default)]
pub(super) struct Recent(VecDeque<Duration>);

impl Recent {
    /// Remembers one run's time, forgetting the oldest past [`RECENT`].
    pub(super) fn ran(&mut self, took: Duration) {
        if self.0.len() == RECENT {
            self.0.pop_front();
        }
        self.0.push_back(took);
    }

    /// Jobs to hold ahead of idle nodes, see [`ahead`].
    pub(super) fn ahead(&mut self, slots: u32) -> u32 {
        ahead(slots, self.0.make_contiguous())
    }
}

/// [`AHEAD_PER_SLOT`] jobs per slot while nearly all of its recent runs (all but one in
/// ten) ended within [`SHORT_JOB`]; none before [`ENOUGH`] runs were seen, or once its jobs
/// run longer: then a slot's round trip to the service is small beside its job.
pub(super) fn ahead(slots: u32, recent: &[Duration]) -> u32 {
    if recent.len() < ENOUGH {
        return 0;
    }
    let long = recent.iter().filter(|d| **d > SHORT_JOB).count();
    if long * 10 <= recent.len() {
        slots * AHEAD_PER_SLOT
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn jobs_are_held_ahead_only_while_recent_runs_are_short() {
        assert_eq!(ahead(2, &[]), 0, "nothing known: nothing held");
        assert_eq!(ahead(2, &[ms(1); 3]), 0, "three runs are not enough");
        assert_eq!(ahead(2, &[ms(1); 4]), 2 * AHEAD_PER_SLOT);
        assert_eq!(ahead(2, &[ms(1), ms(1), ms(1), ms(2_000)]), 0);
        // one long run in sixteen is an outlier, not a change
        let mut runs = vec![ms(3); 15];
        runs.push(ms(5_000));
        assert_eq!(ahead(8, &runs), 8 * AHEAD_PER_SLOT);
        runs.push(ms(5_000));
        assert_eq!(ahead(8, &runs), 0);
    }

    #[test]
    fn the_decision_follows_the_newest_runs() {
        let mut r = Recent::default();
        for _ in 0..RECENT {
            r.ran(ms(90_000));
        }
        assert_eq!(r.ahead(4), 0);
        for _ in 0..RECENT {
            r.ran(ms(2));
        }
        assert_eq!(
            r.ahead(4),
            4 * AHEAD_PER_SLOT,
            "the long runs were forgotten"
        );
    }
}
