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

mod explain;
mod nodes;
mod process;
mod threads;

pub use explain::explain;
pub use nodes::{detect_nodes, expand_hostlist};
pub use process::{launch_argv, missing_program};

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
use std::sync::atomic::{AtomicBool, Ordering};
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

struct Running {
    job: LaunchedJob,
    pgid: u32,
    nodes: Vec<String>,
    err_path: PathBuf,
    /// When it was told to end (SIGTERM sent), for the SIGKILL that follows.
    ending: Option<Instant>,
    /// How to report it once it exits, when the launcher ended it.
    ended_why: Option<String>,
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
        tracing::info!(job, ?outcome, exit_code, "{message}");
        self.outbox.push(JobReport {
            job,
            report: ReportRequest {
                launcher: self.id,
                outcome,
                exit_code,
                message,
            },
        });
    }

    /// Sends the endings gathered so far. When the reporter has nothing in hand they go out
    /// from here, in the request whose answer brings the next jobs, with no thread between
    /// an ending and the job that takes its nodes; on any trouble, and while the reporter
    /// still holds earlier ones (their order matters to nobody, but a slow service should
    /// hold up one thread, not this loop), the reporter delivers them.
    fn flush(&mut self) -> Option<AcquireResponse> {
        if self.outbox.is_empty() && !self.unannounced {
            return None;
        }
        let reports = std::mem::take(&mut self.outbox);
        if self.in_reporter.load(Ordering::SeqCst) == 0 {
            if let Some(c) = &self.direct {
                let req = ask(
                    self.slots,
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
            self.report(j.id, Outcome::Timeout, None, why);
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

    fn start_waiting(&mut self) {
        while let Some(j) = self.waiting.front() {
            if j.nodes as usize > self.free.len() {
                break;
            }
            let j = self.waiting.pop_front().expect("front exists");
            self.start(j);
        }
        self.publish();
    }

    /// A job that could not be started: its nodes are free again, and its ending says why.
    fn not_started(&mut self, job: u64, nodes: Vec<String>, outcome: Outcome, why: String) {
        self.free.extend(nodes);
        self.report(job, outcome, None, why);
    }

    fn start(&mut self, job: LaunchedJob) {
        let n = job.nodes as usize;
        let nodes: Vec<String> = self.free.drain(..n.min(self.free.len())).collect();
        let work = PathBuf::from(&job.work_dir);
        let program = job.argv.first().cloned().unwrap_or_default();
        if !self.found.contains(&program) {
            if let Some(why) = missing_program(&program) {
                return self.not_started(job.id, nodes, Outcome::Missing, why);
            }
            // found once, found for good: a PATH search per job costs more than `true`
            self.found.insert(program);
        }
        let hostfile = work.join(format!(".beamflow-hosts-{}", job.id));
        if self.template.iter().any(|w| w.contains("{hostfile}")) {
            let _ = std::fs::write(&hostfile, nodes.join("\n") + "\n");
        }
        let args = launch_argv(&self.template, &job, &hostfile);
        let out_path = work.join(format!("{}.out", job.name));
        let err_path = work.join(format!("{}.err", job.name));
        let files = std::fs::File::create(&out_path)
            .and_then(|o| std::fs::File::create(&err_path).map(|e| (o, e)));
        let (out, err) = match files {
            Ok(f) => f,
            Err(e) => {
                let why = format!("cannot write its output in {}: {e}", work.display());
                return self.not_started(job.id, nodes, Outcome::Error, why);
            }
        };
        let Some((prog, rest)) = args.split_first() else {
            let why = "the command is empty".to_string();
            return self.not_started(job.id, nodes, Outcome::Missing, why);
        };
        let mut cmd = Command::new(prog);
        cmd.args(rest)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        cmd.envs(&job.env)
            .env("OMP_NUM_THREADS", job.threads_per_rank.to_string())
            .env("BEAMFLOW_JOB_ID", job.id.to_string())
            .env("BEAMFLOW_HOSTFILE", &hostfile);
        // no pre_exec hook: without one the standard library starts the job with
        // posix_spawn (no copy of this process's page tables per job); the core limit is
        // this process's own, set at start, which every job inherits
        cmd.process_group(0);
        match cmd.spawn() {
            Ok(child) => {
                tracing::info!(job = job.id, stack = %job.stack, step = %job.name, attempt = job.attempt, "started: {}", argv::render(&args));
                // the reaper collects it; the handle is not needed (dropping it neither waits
                // nor kills)
                let (id, pgid) = (job.id, child.id());
                drop(child);
                self.reaper.started();
                self.by_pid.insert(pgid, id);
                self.running.insert(
                    id,
                    Running {
                        job,
                        pgid,
                        nodes,
                        err_path,
                        ending: None,
                        ended_why: None,
                    },
                );
            }
            Err(e) => {
                let why = format!("cannot start `{}`: {e}", argv::render(&args));
                self.not_started(job.id, nodes, Outcome::Error, why);
            }
        }
    }

    /// A job's process ended: its nodes are free at once; its report goes out now, or a
    /// moment later for a failure (a scheduler cancelling the allocation signals the jobs
    /// and us together: such a job counts as timed out, not as failed).
    fn exited(&mut self, id: u64, status: ExitStatus, stop: &AtomicBool) {
        let Some(mut r) = self.running.remove(&id) else {
            return;
        };
        self.free.append(&mut r.nodes);
        if let Some(why) = r.ended_why {
            self.report(id, Outcome::Timeout, status.code(), why);
        } else if r.ending.is_some() {
            // the service asked for it to end (a kill): it no longer listens for its report
        } else if status.success() {
            self.report(
                id,
                Outcome::Done,
                Some(0),
                format!("{} finished", r.job.name),
            );
        } else if stop.load(Ordering::SeqCst) {
            self.report(
                id,
                Outcome::Timeout,
                status.code(),
                "the allocation was cancelled while it ran".into(),
            );
        } else {
            self.held.push((
                Instant::now() + Duration::from_millis(300),
                id,
                status.code(),
                status,
                explain(&r.err_path),
            ));
        }
        self.start_waiting();
    }

    fn release_held(&mut self, stop: &AtomicBool, all: bool) {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| all || h.0 <= now || stop.load(Ordering::SeqCst));
        self.held = keep;
        for (_, id, code, status, stderr) in due {
            if stop.load(Ordering::SeqCst) {
                self.report(
                    id,
                    Outcome::Timeout,
                    code,
                    "the allocation was cancelled while it ran".into(),
                );
                continue;
            }
            match code {
                Some(c @ (126 | 127)) => self.report(
                    id,
                    Outcome::Missing,
                    Some(c),
                    format!("could not run the command: {stderr}"),
                ),
                Some(c) => self.report(
                    id,
                    Outcome::Error,
                    Some(c),
                    if stderr.is_empty() {
                        "no stderr".into()
                    } else {
                        format!("stderr: {stderr}")
                    },
                ),
                None => {
                    // no shell in between: count a signal as shells do (abort() is exit
                    // 134, as AlignTK's users know it)
                    let sig = status.signal().unwrap_or(0);
                    self.report(
                        id,
                        Outcome::Error,
                        Some(128 + sig),
                        format!("killed by signal {sig}; stderr: {stderr}"),
                    );
                }
            }
        }
    }

    /// Signals every job to end; each is reported as timed out with `why` once it exits.
    fn end_all(&mut self, why: &str) {
        for r in self.running.values_mut() {
            if r.ended_why.is_none() {
                r.ended_why = Some(why.to_string());
            }
            if r.ending.is_none() {
                process::signal_group(r.pgid, libc::SIGTERM);
                r.ending = Some(Instant::now());
            }
        }
        for j in std::mem::take(&mut self.waiting) {
            self.report(j.id, Outcome::Timeout, None, why.to_string());
        }
    }

    /// SIGKILL for what did not end within 5 s of its SIGTERM.
    fn force(&mut self) {
        for r in self.running.values_mut() {
            if r.ending
                .is_some_and(|t| t.elapsed() >= Duration::from_secs(5))
            {
                process::signal_group(r.pgid, libc::SIGKILL);
            }
        }
    }
}

/// One thread that collects every job's exit as it happens (`waitpid` on any child), rather
/// than a thread per job: at a thousand short jobs a second, starting a thread per job cost
/// more than the jobs. The launcher starts no other processes.
struct Reaper {
    live: Mutex<usize>,
    more: std::sync::Condvar,
}

impl Reaper {
    fn start(events: Sender<Event>) -> Arc<Reaper> {
        let r = Arc::new(Reaper {
            live: Mutex::new(0),
            more: std::sync::Condvar::new(),
        });
        let me = r.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || me.run(events))
            .expect("a launcher without a reaper cannot see its jobs end");
        r
    }

    fn started(&self) {
        if let Ok(mut n) = self.live.lock() {
            *n += 1;
            self.more.notify_one();
        }
    }

    fn run(&self, events: Sender<Event>) {
        loop {
            {
                let Ok(mut n) = self.live.lock() else { return };
                while *n == 0 {
                    match self.more.wait(n) {
                        Ok(g) => n = g,
                        Err(_) => return,
                    }
                }
            }
            let mut status = 0;
            // SAFETY: waitpid writes the status it was given and touches nothing else
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                if let Ok(mut n) = self.live.lock() {
                    *n = n.saturating_sub(1);
                }
                if events
                    .send(Event::Exited(pid as u32, ExitStatus::from_raw(status)))
                    .is_err()
                {
                    return;
                }
            } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                if let Ok(mut n) = self.live.lock() {
                    *n = 0;
                }
            }
        }
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
