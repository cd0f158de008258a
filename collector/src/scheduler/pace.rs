//! Never hammer a batch system. Sites forbid tools that poll their scheduler hard (some ask
//! for 120 s between calls), and slurmctld overload from `squeue` is a common complaint
//! against workflow tools. Every question and submission to a queue's batch system goes
//! through its [`Pace`]: at most one call per `[queues.NAME] scheduler_min_interval`, a
//! slow answer stretches the interval (four times the answer's time), and a failing one backs
//! off (doubling, up to 32 times the minimum). The decisions are pure functions of `now`; the
//! [`Paced`] scheduler applies them and says what it is doing for the status page.
//!
//! A cancellation (`delete`) is never delayed: it frees nodes, and it is rare.

use super::{BatchSpec, BatchState, SchedError, Scheduler};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest back-off, as a multiple of the minimum interval.
const MAX_BACKOFF: u32 = 32;

/// When a queue's batch system may next be asked, and why that long.
#[derive(Debug, Clone)]
pub struct Pace {
    min: Duration,
    interval: Duration,
    last: Option<Instant>,
    failures: u32,
    took: Duration,
}

impl Pace {
    /// A pace of at most one call per `min`.
    pub fn new(min: Duration) -> Pace {
        Pace {
            min,
            interval: min,
            last: None,
            failures: 0,
            took: Duration::ZERO,
        }
    }

    /// How long to wait before the next call at `now`; none: call now.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        let next = self.last? + self.interval;
        (next > now).then(|| next - now)
    }

    /// A call made at `now` took `took` and succeeded or not: the interval before the next.
    pub fn record(&mut self, now: Instant, took: Duration, ok: bool) {
        self.last = Some(now);
        self.took = took;
        if ok {
            self.failures = 0;
            // a batch system that is slow to answer is loaded: ask it less often
            let stretched = Duration::from_secs((took.as_secs_f64() * 4.0).ceil() as u64);
            self.interval = self.min.max(stretched);
        } else {
            self.failures += 1;
            let factor = 2u32.saturating_pow(self.failures).min(MAX_BACKOFF);
            self.interval = self.min * factor;
        }
    }

    /// What a person should know, when the pace is slower than the minimum: `what` is the
    /// batch system's name.
    pub fn note(&self, what: &str) -> Option<String> {
        let every = humantime::format_duration(self.interval);
        if self.failures > 0 {
            return Some(format!(
                "{what} failed {} time(s) in a row; asking every {every}",
                self.failures
            ));
        }
        (self.interval > self.min).then(|| {
            format!(
                "{what} answered in {:.1} s; asking every {every}",
                self.took.as_secs_f64()
            )
        })
    }
}

/// Calls made to batch systems, for `/metrics`: (queue, call) → (ok, failed, seconds).
type Counts = BTreeMap<(String, &'static str), (u64, u64, f64)>;

fn counts() -> &'static Mutex<Counts> {
    static C: std::sync::OnceLock<Mutex<Counts>> = std::sync::OnceLock::new();
    C.get_or_init(|| Mutex::new(Counts::new()))
}

/// Every call made so far: (queue, call, succeeded, failed, seconds spent).
pub fn calls() -> Vec<(String, &'static str, u64, u64, f64)> {
    counts()
        .lock()
        .map(|c| {
            c.iter()
                .map(|((q, call), (ok, bad, secs))| (q.clone(), *call, *ok, *bad, *secs))
                .collect()
        })
        .unwrap_or_default()
}

/// A batch scheduler asked at its queue's pace.
pub struct Paced {
    inner: Box<dyn Scheduler>,
    queue: String,
    what: &'static str,
    pace: Mutex<Pace>,
}

impl Paced {
    /// `inner`, for queue `queue`, named `what` in notes ("Slurm"), at most once per `min`.
    pub fn new(inner: Box<dyn Scheduler>, queue: &str, what: &'static str, min: Duration) -> Self {
        Paced {
            inner,
            queue: queue.to_string(),
            what,
            pace: Mutex::new(Pace::new(min)),
        }
    }

    fn call<T>(
        &self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, SchedError>,
    ) -> Result<T, SchedError> {
        let started = Instant::now();
        let r = f();
        let took = started.elapsed();
        if let Ok(mut p) = self.pace.lock() {
            p.record(Instant::now(), took, r.is_ok());
        }
        if let Ok(mut c) = counts().lock() {
            let e = c.entry((self.queue.clone(), name)).or_default();
            match r.is_ok() {
                true => e.0 += 1,
                false => e.1 += 1,
            }
            e.2 += took.as_secs_f64();
        }
        r
    }
}

impl Scheduler for Paced {
    fn submit(&self, script: &Path, spec: &BatchSpec) -> Result<String, SchedError> {
        self.call("submit", || self.inner.submit(script, spec))
    }

    fn status(&self, ids: &[String]) -> Result<HashMap<String, BatchState>, SchedError> {
        self.call("status", || self.inner.status(ids))
    }

    fn delete(&self, id: &str) -> Result<(), SchedError> {
        self.inner.delete(id)
    }

    fn windows(&self, queue: &str) -> Result<Vec<super::window::Window>, SchedError> {
        self.call("windows", || self.inner.windows(queue))
    }

    fn default_launch(&self) -> &'static str {
        self.inner.default_launch()
    }

    fn reap(&self) {
        self.inner.reap()
    }

    fn ready_in(&self) -> Option<Duration> {
        self.pace.lock().ok()?.wait(Instant::now())
    }

    fn note(&self) -> Option<String> {
        let note = self.pace.lock().ok()?.note(self.what)?;
        Some(format!("queue {}: {note}", self.queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_per_interval_slow_answers_stretch_it_and_failures_back_off() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut p = Pace::new(s(30));
        assert_eq!(p.wait(t0), None, "the first call goes at once");
        p.record(t0, Duration::from_millis(200), true);
        assert_eq!(p.wait(t0 + s(10)), Some(s(20)));
        assert_eq!(p.wait(t0 + s(30)), None);
        assert_eq!(p.note("Slurm"), None, "at the minimum: nothing to say");
        // a 14 s answer: ask every 56 s
        p.record(t0 + s(30), s(14), true);
        assert_eq!(p.wait(t0 + s(44)), Some(s(42)));
        assert_eq!(
            p.note("Slurm").as_deref(),
            Some("Slurm answered in 14.0 s; asking every 56s")
        );
        // failures double the minimum, up to 32 times it
        let mut at = t0 + s(100);
        for (n, want) in [
            (1u32, 60u64),
            (2, 120),
            (3, 240),
            (4, 480),
            (5, 960),
            (6, 960),
        ] {
            p.record(at, s(1), false);
            assert_eq!(p.wait(at), Some(s(want)), "failure {n}");
            at += s(want);
        }
        assert_eq!(
            p.note("PBS").as_deref(),
            Some("PBS failed 6 time(s) in a row; asking every 16m")
        );
        // one success and the pace is back at the minimum
        p.record(at, Duration::from_millis(100), true);
        assert_eq!(p.wait(at), Some(s(30)));
    }
}
