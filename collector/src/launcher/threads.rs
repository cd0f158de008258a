//! The launcher's two conversations with the service, each on a thread of its own: the held
//! request for work, asked again and again, and the reporter, which delivers endings the
//! moment they happen (several per request) and tries again what could not be delivered.

use super::{Event, ToReporter};
use beamflow_protocol::api::{AcquireRequest, Client, ClientError, JobReport};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What both threads and the loop share.
#[derive(Clone)]
pub(super) struct Shared {
    /// The launcher's id.
    pub(super) id: u64,
    /// Its nodes: the most work it asks for.
    pub(super) slots: u32,
    /// The collector's state folder (`server-info`).
    pub(super) state_dir: PathBuf,
    /// The job ids the service should see as this launcher's.
    pub(super) mine: Arc<Mutex<Vec<u64>>>,
    /// Set once the launcher is ending: every request then says it takes no more work.
    pub(super) closing: Arc<AtomicBool>,
    /// Jobs to hold beyond the idle nodes, as the loop last decided.
    pub(super) ahead: Arc<AtomicU32>,
    /// The loop's inbox.
    pub(super) events: Sender<Event>,
}

impl Shared {
    fn ask(&self, reports: Vec<JobReport>, wait: Duration) -> AcquireRequest {
        ask(
            (self.slots, &self.ahead),
            &self.mine,
            &self.closing,
            reports,
            wait,
        )
    }
}

/// A request for as much work as the launcher's slots hold, and as many jobs ahead of them as
/// it decided to hold (the service counts what is free), with the jobs it runs, the endings
/// to record, and how long it may be held.
pub(super) fn ask(
    (slots, ahead): (u32, &AtomicU32),
    mine: &Mutex<Vec<u64>>,
    closing: &AtomicBool,
    reports: Vec<JobReport>,
    wait: Duration,
) -> AcquireRequest {
    let closing = closing.load(Ordering::SeqCst);
    let ahead = if closing {
        0
    } else {
        ahead.load(Ordering::SeqCst)
    };
    AcquireRequest {
        free_nodes: slots,
        max_jobs: if closing { 0 } else { slots + ahead },
        running: mine.lock().map(|m| m.clone()).unwrap_or_default(),
        reports,
        wait_ms: wait.as_millis() as u64,
        closing,
        ahead,
    }
}

/// Connects to the service, rereading `server-info` each time: a restarted service has a
/// new address and token.
pub(super) fn connect(state_dir: &std::path::Path) -> Result<Client, ClientError> {
    Client::from_state_dir(state_dir)
}

/// The held request for work, again and again, until `done`.
pub(super) fn poller(sh: Shared, wait: Duration, done: Arc<AtomicBool>) {
    let mut client = connect(&sh.state_dir).ok();
    while !done.load(Ordering::SeqCst) {
        let Some(c) = client.as_ref() else {
            std::thread::sleep(Duration::from_secs(1));
            client = connect(&sh.state_dir).ok();
            continue;
        };
        match c.acquire(sh.id, &sh.ask(Vec::new(), wait)) {
            Ok(resp) => {
                let stop = resp.stop;
                if sh.events.send(Event::Answer(resp)).is_err() || stop {
                    return;
                }
            }
            Err(e) => {
                let _ = sh.events.send(Event::LinkDown(e.to_string()));
                std::thread::sleep(Duration::from_secs(1));
                client = connect(&sh.state_dir).ok();
            }
        }
    }
}

/// Delivers endings as they come, all that are waiting in one request; what cannot be
/// delivered now is tried again. `in_hand` counts what it holds.
pub(super) fn reporter(sh: Shared, inbox: Receiver<ToReporter>, in_hand: Arc<AtomicUsize>) {
    let mut client = connect(&sh.state_dir).ok();
    let mut pending: Vec<JobReport> = Vec::new();
    let done = |n: usize| {
        in_hand.fetch_sub(n, Ordering::SeqCst);
    };
    let mut flush = false;
    loop {
        let first = if pending.is_empty() {
            match inbox.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            None
        };
        for m in first.into_iter().chain(inbox.try_iter()) {
            match m {
                ToReporter::Report(r) => pending.push(r),
                ToReporter::Flush => flush = true,
            }
        }
        if !pending.is_empty() {
            let req = sh.ask(pending.clone(), Duration::ZERO);
            let answer = match client.as_ref() {
                Some(c) => c
                    .acquire(sh.id, &req)
                    .map_err(|e| (e.is_transient(), e.to_string())),
                None => Err((true, "the service is not reachable".to_string())),
            };
            match answer {
                Ok(resp) => {
                    done(pending.len());
                    pending.clear();
                    if sh.events.send(Event::Answer(resp)).is_err() {
                        return;
                    }
                }
                Err((true, e)) => {
                    tracing::warn!("cannot deliver {} ending(s) yet: {e}", pending.len());
                    std::thread::sleep(Duration::from_millis(500));
                    client = connect(&sh.state_dir).ok();
                    if flush && !sh.state_dir.exists() {
                        done(pending.len());
                        pending.clear();
                    }
                    continue;
                }
                Err((false, e)) => {
                    tracing::warn!("{} ending(s) refused: {e}", pending.len());
                    done(pending.len());
                    pending.clear();
                }
            }
        }
        if flush && pending.is_empty() {
            flush = false;
            let _ = sh.events.send(Event::Flushed);
        }
    }
}
