//! What makes the service act at once instead of on a timer: every change that gives the
//! engine something to do (a submission, a report, a retry) wakes it, and every change that
//! gives a launcher something to do (a job became runnable, a kill, a launcher declared
//! ended) answers the launchers' held requests.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The two bells: one for the engine thread, one for launchers' long-polls.
pub struct Wake {
    engine: Mutex<u64>,
    rung: Condvar,
    work: watch::Sender<u64>,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            engine: Mutex::new(0),
            rung: Condvar::new(),
            work: watch::Sender::new(0),
        }
    }
}

impl Wake {
    /// Something for the engine to do.
    pub fn engine(&self) {
        if let Ok(mut n) = self.engine.lock() {
            *n += 1;
            self.rung.notify_all();
        }
    }

    /// Something for launchers to take (or to stop).
    pub fn work(&self) {
        self.work.send_modify(|n| *n += 1);
    }

    /// How many times the engine's bell rang so far.
    pub fn engine_rings(&self) -> u64 {
        self.engine.lock().map(|n| *n).unwrap_or(0)
    }

    /// Waits until the engine's bell rang more than `seen` times or `until` passes; returns
    /// the count then.
    pub fn wait_engine(&self, seen: u64, until: Instant) -> u64 {
        let Ok(mut n) = self.engine.lock() else {
            return seen;
        };
        while *n == seen {
            let left = until.saturating_duration_since(Instant::now());
            if left == Duration::ZERO {
                break;
            }
            match self.rung.wait_timeout(n, left) {
                Ok((g, _)) => n = g,
                Err(_) => return seen,
            }
        }
        *n
    }

    /// A receiver that sees every later ring of the launchers' bell.
    pub fn watch_work(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }
}
