//! `beamflow-collector launcher`: runs inside a batch allocation and packs jobs onto its idle
//! nodes, as Balsam's launcher did.
//!
//! It talks only to the service API (never to the database file). Two conversations run
//! side by side: a held request for work ([`AcquireRequest::wait_ms`]) that the service
//! answers the moment a job is runnable, a kill or a stop exists, and the endings, sent the
//! moment they happen, several per request, each answer carrying the work for the nodes they
//! freed. Each job runs in the job's work folder with the site's launch template, in its own
//! process group with core dumps off (ending it ends everything it started; an aborting
//! AlignTK leaves no 24 MB `core`), and a thread per job waits for it, so an ending is seen
//! the instant it happens. Before the wall time runs out, and when the scheduler cancels the
//! allocation (SIGTERM), running jobs are ended (they time out and run again elsewhere); the
//! launcher exits after `idle_exit` with nothing to do.

mod ahead;
mod explain;
mod jobs;
mod nodes;
mod process;
mod threads;

pub use explain::explain;
pub use nodes::{detect_nodes, expand_hostlist};
pub use process::{launch_argv, missing_program};

use jobs::{Reaper, Running};
use threads::{ask, connect, poller, reporter, Shared};

use crate::scheduler::default_launch;
use beamflow_config::{argv, Config};
use beamflow_protocol::api::{
    AcquireResponse, Client, ClientError, JobReport, LaunchedJob, LauncherStart, Outcome,
    ReportRequest,
};
use std::collections::{HashMap, VecDeque};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a launcher could not run.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// The queue is not in the config.
    #[error("queue `{0}` is not defined in the config ([queues.{0}])")]
    UnknownQueue(String),
    /// The queue's launch template cannot be used.
    #[error("key `queues.{0}.launch`: {1}")]
    BadLaunch(String, #[source] beamflow_config::LaunchError),
    /// The service never answered.
    #[error("the collector service did not answer for {0:?}")]
    NoService(Duration, #[source] ClientError),
}

/// What the launcher's threads tell its loop.
enum Event {
    /// The service answered (work, kills, a stop).
    Answer(AcquireResponse),
    /// A job's process ended: its pid and how.
    Exited(u32, ExitStatus),
    /// The service could not be reached.
    LinkDown(String),
    /// Every ending handed to the reporter was delivered (or refused for good).
    Flushed,
}

/// What the loop hands the reporter thread.
enum ToReporter {
    Report(JobReport),
    Flush,
}

/// The longest the loop itself waits for the service when it reports.
const DIRECT_LIMIT: Duration = Duration::from_secs(2);

struct Launcher {
    id: u64,
    slots: u32,
    state_dir: PathBuf,
    /// Endings not sent yet.
    outbox: Vec<JobReport>,
    /// The loop's own connection, for endings sent from the loop.
    direct: Option<Client>,
    /// Endings handed to the reporter and not delivered yet.
    in_reporter: Arc<std::sync::atomic::AtomicUsize>,
    reaper: Arc<Reaper>,
    /// Job of each running process.
    by_pid: HashMap<u32, u64>,
    /// Programs already found on PATH.
    found: std::collections::HashSet<String>,
    template: Vec<String>,
    free: Vec<String>,
    running: HashMap<u64, Running>,
    /// Jobs the service handed over while their nodes were still being freed (a killed job's
    /// process takes a moment to end).
    waiting: VecDeque<LaunchedJob>,
    /// Failed endings held back a moment, in case the allocation is being cancelled.
    held: Vec<(Instant, u64, Option<i32>, ExitStatus, String)>,
    /// The job ids the service should see as this launcher's.
    mine: Arc<Mutex<Vec<u64>>>,
    /// Set once the launcher is ending: every request then says it takes no more work.
    closing: Arc<AtomicBool>,
    /// Jobs every request asks to hold beyond the idle nodes (see [`ahead`]).
    ahead: Arc<AtomicU32>,
    /// How long its recent jobs ran: whether holding jobs ahead pays.
    recent: ahead::Recent,
    /// The service has not yet been told that it is ending.
    unannounced: bool,
    reporter: Sender<ToReporter>,
}

impl Launcher {
    fn publish(&self) {
        if let Ok(mut m) = self.mine.lock() {
            m.clear();
            m.extend(self.running.keys());
            m.extend(self.waiting.iter().map(|j| j.id));
        }
    }

    fn report(&mut self, job: u64, outcome: Outcome, exit_code: Option<i32>, message: String) {
        self.report_run(job, outcome, exit_code, message, None);
    }

    /// An ending with the run's own time, as this launcher measured it.
    fn report_run(
        &mut self,
        job: u64,
        outcome: Outcome,
        exit_code: Option<i32>,
        message: String,
        ran: Option<Duration>,
    ) {
        tracing::info!(job, ?outcome, exit_code, "{message}");
        self.outbox.push(JobReport {
            job,
            report: ReportRequest {
                launcher: self.id,
                outcome,
                exit_code,
                message,
                ran_ms: ran.map(|d| d.as_millis() as u64),
            },
        });
    }

    /// Sends the endings gathered so far. When the reporter has nothing in hand they go out
    /// from here, in the request whose answer brings the next jobs, with no thread between
    /// an ending and the job that takes its nodes; on any trouble, and while the reporter
    /// still holds earlier ones (their order matters to nobody, but a slow service should
    /// hold up one thread, not this loop), the reporter delivers them. So does it while jobs
    /// are held ahead: the next job is already here, and the loop must be free to start it
    /// the moment a node frees rather than wait for the service's answer.
    fn flush(&mut self) -> Option<AcquireResponse> {
        if self.outbox.is_empty() && !self.unannounced {
            return None;
        }
        let reports = std::mem::take(&mut self.outbox);
        let holding = self.ahead.load(Ordering::SeqCst) > 0;
        if self.in_reporter.load(Ordering::SeqCst) == 0 && !holding {
            if let Some(c) = &self.direct {
                let req = ask(
                    (self.slots, &self.ahead),
                    &self.mine,
                    &self.closing,
                    reports.clone(),
                    Duration::ZERO,
                );
                match c.acquire(self.id, &req) {
                    Ok(resp) => {
                        self.unannounced = false;
                        return Some(resp);
                    }
                    Err(e) => {
                        tracing::debug!(
                            "reporting from the loop failed ({e}); the reporter retries"
                        );
                        self.direct = connect(&self.state_dir)
                            .ok()
                            .map(|c| c.with_timeout(DIRECT_LIMIT));
                    }
                }
            }
        }
        // the reporter's requests say `closing` too; with no endings to carry, the poller's
        // next request (or the launcher's end) tells the service
        self.unannounced = false;
        self.in_reporter.fetch_add(reports.len(), Ordering::SeqCst);
        for r in reports {
            let _ = self.reporter.send(ToReporter::Report(r));
        }
        None
    }

    /// The launcher is ending: from now on it asks for nothing, and the next request tells
    /// the service so before anything its endings make runnable can be handed back to it.
    fn close(&mut self) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            self.unannounced = true;
        }
    }

    /// Jobs an answer brought after the launcher began to end (the service handed them out
    /// before it knew): never started, they go back at once to run elsewhere.
    fn hand_back(&mut self, jobs: Vec<LaunchedJob>) {
        for j in jobs {
            let why = format!(
                "not started: launcher {} was ending when it was handed the job",
                self.id
            );
            self.report(j.id, Outcome::Unstarted, None, why);
        }
    }

    fn take(&mut self, resp: AcquireResponse) {
        for k in resp.kill {
            if let Some(r) = self.running.get_mut(&k) {
                tracing::info!(job = k, "ending a job the service no longer wants");
                if r.ending.is_none() {
                    process::signal_group(r.pgid, libc::SIGTERM);
                    r.ending = Some(Instant::now());
                }
            }
            self.waiting.retain(|j| j.id != k);
        }
        self.waiting.extend(resp.jobs);
        self.start_waiting();
    }
}

/// Core dumps off for this process and so for every job it starts: an aborting AlignTK
/// would otherwise leave a 24 MB `core` in the work folder for every failed attempt.
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct given and touches nothing else
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        tracing::warn!(
            "cannot turn core dumps off: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs a launcher until its allocation ends, it is idle long enough, or `stop` is set.
pub fn run(cfg: &Config, queue: &str, id: u64, stop: Arc<AtomicBool>) -> Result<(), LauncherError> {
    let q = cfg
        .queues
        .get(queue)
        .ok_or_else(|| LauncherError::UnknownQueue(queue.into()))?;
    let started = Instant::now();
    let walltime = std::env::var("BEAMFLOW_WALLTIME_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(q.walltime.0);
    let deadline = started + walltime.saturating_sub(q.walltime_margin.0);
    let nodes = detect_nodes(q);
    let written = if q.launch.is_empty() {
        default_launch(q.scheduler)
    } else {
        q.launch.as_str()
    };
    // the config refused a bad template when it loaded; this names it again should one slip by
    let template = beamflow_config::launch_argv(written)
        .map_err(|e| LauncherError::BadLaunch(queue.into(), e))?;
    let state_dir = cfg.collector.state_dir.clone();
    announce(&state_dir, id, &nodes, cfg.service.heartbeat_timeout.0)?;
    tracing::info!(launcher = id, queue, nodes = nodes.len(), walltime = ?walltime, "launcher up");
    no_core_dumps();
    let (mut l, inbox, done) = Launcher::new(id, q.poll.0, nodes, template, &state_dir);
    let reason = l.serve(&inbox, &stop, deadline, q.idle_exit.0);
    done.store(true, Ordering::SeqCst);
    l.finish(&inbox, &stop);
    if let Ok(c) = connect(&state_dir) {
        let _ = c.launcher_end(id, &reason);
    }
    tracing::info!(launcher = id, "launcher exiting: {reason}");
    Ok(())
}

/// Tells the service this launcher runs, on which nodes, retrying while it does not answer
/// (it may be restarting) for up to `wait`.
fn announce(
    state_dir: &std::path::Path,
    id: u64,
    nodes: &[String],
    wait: Duration,
) -> Result<(), LauncherError> {
    let started = Instant::now();
    loop {
        let answer = connect(state_dir).and_then(|c| {
            c.launcher_start(
                id,
                &LauncherStart {
                    host: nodes::hostname(),
                    nodes: nodes.to_vec(),
                    batch_id: nodes::batch_id(),
                },
            )
        });
        match answer {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > wait => return Err(LauncherError::NoService(wait, e)),
            Err(e) => tracing::warn!("service not answering yet: {e}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

impl Launcher {
    /// The launcher with its two conversations started: the held request for work and the
    /// reporter of endings. Returns the loop's inbox and the flag that stops the poller.
    fn new(
        id: u64,
        poll: Duration,
        nodes: Vec<String>,
        template: Vec<String>,
        state_dir: &std::path::Path,
    ) -> (Launcher, Receiver<Event>, Arc<AtomicBool>) {
        let (events, inbox) = channel();
        let (to_reporter, reporter_inbox) = channel();
        let shared = Shared {
            id,
            slots: nodes.len() as u32,
            state_dir: state_dir.to_path_buf(),
            mine: Arc::new(Mutex::new(Vec::new())),
            closing: Arc::new(AtomicBool::new(false)),
            ahead: Arc::new(AtomicU32::new(0)),
            events: events.clone(),
        };
        let done = Arc::new(AtomicBool::new(false));
        let in_reporter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        {
            let (sh, d) = (shared.clone(), done.clone());
            std::thread::spawn(move || poller(sh, poll, d));
            let (sh, n) = (shared.clone(), in_reporter.clone());
            std::thread::spawn(move || reporter(sh, reporter_inbox, n));
        }
        let l = Launcher {
            id,
            slots: shared.slots,
            state_dir: shared.state_dir,
            outbox: Vec::new(),
            direct: connect(state_dir)
                .ok()
                .map(|c| c.with_timeout(DIRECT_LIMIT)),
            in_reporter,
            reaper: Reaper::start(events),
            by_pid: HashMap::new(),
            found: Default::default(),
            template,
            free: nodes,
            running: HashMap::new(),
            waiting: VecDeque::new(),
            held: Vec::new(),
            mine: shared.mine,
            closing: shared.closing,
            ahead: shared.ahead,
            recent: Default::default(),
            unannounced: false,
            reporter: to_reporter,
        };
        (l, inbox, done)
    }

    /// The loop: events from the threads, held failures released, the decision to end,
    /// endings sent; returns why it ended once nothing runs.
    fn serve(
        &mut self,
        inbox: &Receiver<Event>,
        stop: &AtomicBool,
        deadline: Instant,
        idle_exit: Duration,
    ) -> String {
        let mut ending: Option<String> = None;
        let mut idle_since = Instant::now();
        let mut link_warned: Option<Instant> = None;
        loop {
            // the loop wakes for every event; the short timeout is for the signal flag, the
            // held failures and the clock
            match inbox.recv_timeout(Duration::from_millis(50)) {
                Ok(Event::Answer(resp)) => self.answered(resp, &mut ending),
                Ok(Event::Exited(pid, status)) => {
                    if let Some(job) = self.by_pid.remove(&pid) {
                        self.exited(job, status, stop);
                    }
                }
                Ok(Event::LinkDown(e)) => {
                    if !self.state_dir.exists() && ending.is_none() {
                        // the collector was removed, not restarted: nobody will ever answer
                        self.end_all("the collector's state folder was removed");
                        let gone = format!("state folder {} removed", self.state_dir.display());
                        ending = Some(gone);
                    } else if link_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!("service not answering: {e}; jobs keep running");
                        link_warned = Some(Instant::now());
                    }
                }
                Ok(Event::Flushed) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return "its threads ended".to_string(),
            }
            self.release_held(stop, false);
            // decided before anything is sent: a launcher that is ending says so in the very
            // request that carries its endings, so the service never hands their jobs back to it
            if ending.is_none() {
                ending = self.time_to_end(stop, deadline, idle_exit, &mut idle_since);
            }
            if ending.is_some() {
                self.close();
            }
            while let Some(resp) = self.flush() {
                let was = ending.is_some();
                self.answered(resp, &mut ending);
                if !was && ending.is_some() {
                    self.close();
                }
            }
            self.force();
            if let Some(why) = &ending {
                if self.running.is_empty() {
                    return why.clone();
                }
            }
        }
    }

    /// An answer from the service: its work taken, or handed back when ending; a stop from
    /// the service ends the launcher.
    fn answered(&mut self, resp: AcquireResponse, ending: &mut Option<String>) {
        if resp.stop && ending.is_none() {
            self.end_all("the service declared this launcher ended");
            *ending = Some("told to stop by the service".into());
        }
        if ending.is_none() {
            self.take(resp);
        } else {
            self.hand_back(resp.jobs);
        }
    }

    /// Whether the launcher should end now, and why: a signal, the wall time about to run
    /// out, or idle for `idle_exit`.
    fn time_to_end(
        &mut self,
        stop: &AtomicBool,
        deadline: Instant,
        idle_exit: Duration,
        idle_since: &mut Instant,
    ) -> Option<String> {
        if stop.load(Ordering::SeqCst) {
            self.end_all("the launcher was stopped (its allocation was cancelled)");
            Some("stopped by a signal".into())
        } else if Instant::now() >= deadline {
            self.end_all("the allocation's wall time was about to run out");
            Some("wall time".into())
        } else if !self.running.is_empty() || !self.waiting.is_empty() {
            *idle_since = Instant::now();
            None
        } else if idle_since.elapsed() >= idle_exit {
            Some(format!(
                "idle for {}",
                humantime::format_duration(idle_exit)
            ))
        } else {
            None
        }
    }

    /// The last endings delivered (through the reporter, which retries) before the launcher
    /// says it ended; waits up to 30 s for them.
    fn finish(&mut self, inbox: &Receiver<Event>, stop: &AtomicBool) {
        self.release_held(stop, true);
        self.direct = None;
        let _ = self.flush();
        let _ = self.reporter.send(ToReporter::Flush);
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            match inbox.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Event::Flushed) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
