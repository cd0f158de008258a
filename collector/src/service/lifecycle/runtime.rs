//! How long a job is expected to run, learned from the history of its step, and whether a
//! launcher has room for it. A launcher shaped to a short backfill window is only worth the
//! jobs that finish inside it: one handed a job that outlives it wastes the window and the
//! attempt. Every decision here is a pure function of recorded run times and the clock.

use std::time::Duration;

/// The recent runs an estimate reads: a step's run time drifts with the data and the machine,
/// so old runs stop speaking for it.
pub const RECENT: usize = 20;

/// Runs of a size class needed before they alone speak for it; fewer, and the step's runs of
/// every size do.
pub const ENOUGH: usize = 3;

/// The share of recent runs an estimate covers: a launcher handed a job expects it to finish,
/// so the estimate is a high percentile, not the mean.
const PERCENTILE: f64 = 0.9;

/// The part of the queue's longest launcher a job that ran out of it is asked to fit: such a
/// job can only be given a launcher that is still nearly whole, never the tail of one.
const WHOLE: f64 = 0.9;

/// The size class of a section of `pixels`: run times of AlignTK steps grow with the section's
/// area, so runs are learned per power of two of it.
pub fn size_class(pixels: u64) -> u32 {
    64 - pixels.max(1).leading_zeros()
}

/// The pixels of a `WIDTHxHEIGHT` grid size (none when it is not one).
pub fn pixels(grid_size: &str) -> Option<u64> {
    let (w, h) = grid_size.split_once('x')?;
    Some(w.trim().parse::<u64>().ok()? * h.trim().parse::<u64>().ok()?)
}

/// The expected run time from a step's recent runs (seconds, newest first): the 90th
/// percentile of those of its size class when there are [`ENOUGH`], else of all its sizes';
/// none before the step ever finished (such a job fits any launcher).
pub fn estimate(same_size: &[f64], any_size: &[f64]) -> Option<Duration> {
    let runs = if same_size.len() >= ENOUGH {
        same_size
    } else {
        any_size
    };
    let mut v: Vec<f64> = runs
        .iter()
        .take(RECENT)
        .copied()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = ((v.len() as f64 * PERCENTILE).ceil() as usize).clamp(1, v.len()) - 1;
    Some(Duration::from_secs_f64(v[at]))
}

/// What a job that ran out of wall time needs of its next launcher: its longest run (it did
/// not finish in it), but no more than [`WHOLE`] of the longest launcher the queues offer, so
/// that it still gets one (and its `max_timeouts` decide when to stop).
pub fn need_after_timeouts(
    expected: Option<Duration>,
    runs: &[Duration],
    longest_offer: Duration,
) -> Option<Duration> {
    let longest_run = runs.iter().max().copied();
    within(expected.max(longest_run), longest_offer)
}

/// An expectation no launcher could meet is asked as [`WHOLE`] of the longest one the queues
/// offer: the job still runs (a nearly whole launcher is the best there is), and its
/// wall-time endings, counted by `max_timeouts`, say when to stop. Never a job that waits for
/// a launcher that never comes.
pub fn within(need: Option<Duration>, longest_offer: Duration) -> Option<Duration> {
    need.map(|n| n.min(longest_offer.mul_f64(WHOLE)))
}

/// Whether a launcher with `left` of its wall time (none: it did not say) has room for a job
/// expected to run `need` (none: never measured).
pub fn fits(need: Option<Duration>, left: Option<Duration>) -> bool {
    match (need, left) {
        (Some(need), Some(left)) => need <= left,
        _ => true,
    }
}

/// Seconds as the database keeps an expectation: 0 for none.
pub fn to_secs(d: Option<Duration>) -> f64 {
    d.map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// An expectation as the database keeps it: 0 (or less) for none.
pub fn from_secs(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_estimate_is_a_high_percentile_of_the_recent_runs_of_the_size() {
        // ten runs of 60 s and one of 600 s: the outlier is past the 90th percentile
        let mut runs = vec![60.0; 10];
        runs.insert(0, 600.0);
        assert_eq!(estimate(&runs, &[]), Some(s(60)));
        // two slow ones among ten are not
        let runs = [600.0, 600.0, 60.0, 60.0, 60.0, 60.0, 60.0, 60.0, 60.0, 60.0];
        assert_eq!(estimate(&runs, &[]), Some(s(600)));
        // only the newest RECENT count: a step that got faster is believed
        let mut runs = vec![10.0; RECENT];
        runs.extend([1000.0; 50]);
        assert_eq!(estimate(&runs, &[]), Some(s(10)));
    }

    #[test]
    fn too_few_runs_of_a_size_borrow_the_steps_other_sizes() {
        assert_eq!(estimate(&[500.0], &[30.0, 40.0, 50.0]), Some(s(50)));
        assert_eq!(estimate(&[500.0, 400.0, 450.0], &[30.0]), Some(s(500)));
        assert_eq!(estimate(&[], &[]), None);
        assert_eq!(estimate(&[f64::NAN], &[f64::NAN]), None);
    }

    #[test]
    fn a_job_that_ran_out_of_time_needs_its_longest_run_but_never_more_than_a_launcher_offers() {
        let hour = s(3600);
        assert_eq!(
            need_after_timeouts(Some(s(60)), &[s(600), s(840)], hour),
            Some(s(840))
        );
        assert_eq!(
            need_after_timeouts(None, &[s(3600)], hour),
            Some(hour.mul_f64(WHOLE))
        );
        assert_eq!(need_after_timeouts(None, &[], hour), None);
        // a step learned to take longer than any launcher runs is asked a nearly whole one
        assert_eq!(within(Some(s(7200)), hour), Some(hour.mul_f64(WHOLE)));
        assert_eq!(within(Some(s(60)), hour), Some(s(60)));
    }

    #[test]
    fn a_launcher_has_room_for_what_fits_its_time_left() {
        assert!(fits(Some(s(60)), Some(s(61))));
        assert!(fits(Some(s(60)), Some(s(60))));
        assert!(!fits(Some(s(60)), Some(s(59))));
        assert!(fits(None, Some(s(1))));
        assert!(fits(Some(s(600)), None));
    }

    #[test]
    fn sizes_are_classes_of_the_sections_area() {
        assert_eq!(pixels("1024x768"), Some(786_432));
        assert_eq!(pixels("1024"), None);
        assert_eq!(pixels("ax3"), None);
        assert_eq!(size_class(1 << 20), size_class((1 << 20) - 1) + 1);
        assert_eq!(size_class(1000 * 1000), size_class(600 * 1000));
        assert_eq!(size_class(0), 1);
        assert_eq!(from_secs(to_secs(Some(s(5)))), Some(s(5)));
        assert_eq!(from_secs(0.0), None);
    }
}
