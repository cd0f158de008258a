//! The service's engine: advance the DAG, prepare work folders, check results, retry what
//! timed out, watch batch jobs, and keep launchers queued by each queue's policy.
//!
//! It reacts: a submission, a launcher's report, a retry or a launcher's start rings its
//! bell ([`Wake`]) and it acts at once, and whatever it makes runnable answers the
//! launchers' held requests at once. Only what is about time runs on a timer: asking the
//! batch scheduler about its jobs and judging heartbeats, every `poll_interval`. The
//! database lock is held only for short statements; scheduler commands and file work run
//! without it. The decisions themselves are the pure functions of [`crate::service::lifecycle::job`] and
//! [`crate::service::lifecycle::launcher`]; this loop only gathers their inputs and applies their moves.

use crate::scheduler::window::Work;
use crate::scheduler::{self, capacity, BatchSpec, SchedError, Scheduler};
use crate::science::check::CheckError;
use crate::science::prepare::{name_back, name_back_sections, prepare, PrepareError, Prepared};
use crate::service::clock::Clock;
use crate::service::lifecycle::job::{self, JobState, Move, Trigger};
use crate::service::lifecycle::launcher::{self as launchers, LauncherState, LauncherTrigger};
use crate::service::lifecycle::runtime;
use crate::service::store::jobs::{Filled, Pending};
use crate::service::store::{Db, DbError};
use crate::service::wake::Wake;
use beamflow_config::{Config, QueueSection};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What stopped one round of the engine's work. Each is logged and shown in `status`; the
/// next round tries again.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The database refused.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A thread panicked while it held the database.
    #[error("the database lock is poisoned; restart the service")]
    Poisoned,
    /// A queue names a scheduler the engine does not have.
    #[error("queue {0} has no scheduler; check its `scheduler` key")]
    NoScheduler(String),
    /// The batch scheduler said no.
    #[error("queue {queue}: {cause}")]
    Scheduler {
        /// The queue.
        queue: String,
        /// Why.
        cause: SchedError,
    },
    /// The launcher script could not be written.
    #[error(
        "cannot write the launcher script {path}: {cause}; check that the state folder is writable"
    )]
    Script {
        /// Where.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, EngineError>;

/// This program's path, for built-in steps that run `beamflow-collector qa` in a launcher.
pub(crate) fn collector_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "beamflow-collector".into())
}

/// The most READY jobs one round makes runnable.
const PREPARE_SLICE: usize = 64;

/// What one reaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaction {
    /// Moves made.
    pub moved: usize,
    /// Jobs made runnable.
    pub runnable: usize,
}

/// A backfill queue's windows as read: when, what, and whether a launcher used them yet.
type WindowsRead = (Instant, Vec<crate::scheduler::window::Window>, bool);

/// The service's background work.
pub struct Engine {
    launchers_changed: AtomicBool,
    /// The first round promotes whatever a stop left waiting with its parents finished.
    first_round: AtomicBool,
    /// (workflow, step) → where the step is in its workflow: a wide workflow has thousands.
    steps: HashMap<(String, String), usize>,
    cfg: Arc<Config>,
    db: Arc<Mutex<Db>>,
    schedulers: HashMap<String, Box<dyn Scheduler>>,
    wake: Arc<Wake>,
    clock: Arc<dyn Clock>,
    /// What a person should know now (why work waits …), served by `/v1/status`.
    pub notes: Mutex<Vec<String>>,
    collector: String,
    /// Each stack version's preparation: its snapshot never changes, so neither does this.
    prepared: Mutex<HashMap<u64, std::result::Result<Prepared, PrepareError>>>,
    /// When retention last looked (on the engine's clock).
    last_sweep: Mutex<Option<std::time::SystemTime>>,
    /// When old run times were last forgotten (on the engine's clock).
    last_prune: Mutex<Option<std::time::SystemTime>>,
    /// Each backfill queue's windows as last read, with when, and whether a launcher was
    /// shaped from them yet.
    windows: Mutex<HashMap<String, WindowsRead>>,
}

impl Engine {
    /// An engine for the service's config and database, with each queue's real scheduler.
    pub fn new(cfg: Arc<Config>, db: Arc<Mutex<Db>>, wake: Arc<Wake>) -> Engine {
        let schedulers = cfg
            .queues
            .iter()
            .map(|(n, q)| (n.clone(), scheduler::for_queue(n, q)))
            .collect();
        let clock: Arc<dyn Clock> = Arc::new(crate::service::clock::SystemClock);
        Engine::with_parts(cfg, db, wake, schedulers, clock)
    }

    /// An engine with the schedulers and clock given: tests drive it with a scheduler double
    /// and a clock they move.
    pub fn with_parts(
        cfg: Arc<Config>,
        db: Arc<Mutex<Db>>,
        wake: Arc<Wake>,
        schedulers: HashMap<String, Box<dyn Scheduler>>,
        clock: Arc<dyn Clock>,
    ) -> Engine {
        let steps = cfg
            .workflows
            .iter()
            .flat_map(|(w, wf)| {
                wf.steps
                    .iter()
                    .enumerate()
                    .map(move |(i, s)| ((w.clone(), s.name.clone()), i))
            })
            .collect();
        Engine {
            launchers_changed: AtomicBool::new(true),
            first_round: AtomicBool::new(true),
            steps,
            cfg,
            db,
            schedulers,
            wake,
            clock,
            notes: Mutex::new(Vec::new()),
            collector: collector_exe(),
            prepared: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(None),
            last_prune: Mutex::new(None),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Applies `[collector] keep` at most once a minute (on the engine's clock).
    pub fn retention(&self) -> Result<usize> {
        if self.cfg.collector.keep.is_none() {
            return Ok(0);
        }
        let every = std::time::Duration::from_secs(60).min(self.cfg.service.poll_interval.0 * 5);
        let Some(now) = self.due(&self.last_sweep, every)? else {
            return Ok(0);
        };
        Ok(crate::service::retention::sweep(&self.db, &self.cfg, now)?)
    }

    /// Keeps the newest run times of each step and size, at most once a minute (on the
    /// engine's clock): the pass reads the whole table, and until it runs the rows past the
    /// newest are only never read.
    fn forget_old_runtimes(&self) -> Result<usize> {
        if self
            .due(&self.last_prune, std::time::Duration::from_secs(60))?
            .is_none()
        {
            return Ok(0);
        }
        Ok(self.db()?.prune_runtimes()?)
    }

    /// Now, if `every` has passed (on the engine's clock) since `last`, which it then
    /// becomes; none when it is too soon.
    fn due(
        &self,
        last: &Mutex<Option<std::time::SystemTime>>,
        every: std::time::Duration,
    ) -> Result<Option<std::time::SystemTime>> {
        let now = self.clock.now();
        let mut last = last.lock().map_err(|_| EngineError::Poisoned)?;
        if last.is_some_and(|t| now.duration_since(t).unwrap_or_default() < every) {
            return Ok(None);
        }
        *last = Some(now);
        Ok(Some(now))
    }

    fn db(&self) -> Result<MutexGuard<'_, Db>> {
        self.db.lock().map_err(|_| EngineError::Poisoned)
    }

    /// Runs until `stop` is set (ring the engine's bell after setting it): reacts to every
    /// ring at once, and watches launchers every `poll_interval`.
    pub fn run(&self, stop: &AtomicBool) {
        let every = self.cfg.service.poll_interval.0;
        let mut next_watch = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let seen = self.wake.engine_rings();
            let watch = Instant::now() >= next_watch;
            self.round(watch);
            if watch {
                next_watch = Instant::now() + every;
            }
            self.wake.wait_engine(seen, next_watch);
        }
    }

    /// One round: the DAG's reactions, the launchers' judgement when `watch`, the queue
    /// policy. Errors of one part are logged and do not stop the others.
    ///
    /// The policy runs when work may want a launcher: jobs became runnable, a launcher came
    /// or went (the launchers' routes and the watch ring the bell), or on the timer. Endings,
    /// the bulk of the rings, make nothing runnable and cost no policy pass.
    pub fn round(&self, watch: bool) {
        let mut errors = Vec::new();
        let mut policy = watch || self.launchers_changed.swap(false, Ordering::SeqCst);
        match self.react() {
            Ok(r) => policy |= r.runnable > 0,
            Err(e) => errors.push(("advancing the DAG", e)),
        }
        if watch {
            if let Err(e) = self.watch_launchers() {
                errors.push(("watching launchers", e));
            }
            if let Err(e) = self.retention() {
                errors.push(("applying retention", e));
            }
            if let Err(e) = self.forget_old_runtimes() {
                errors.push(("forgetting old run times", e));
            }
        }
        let mut notes = Vec::new();
        if policy {
            if let Err(e) = self.policy(&mut notes) {
                errors.push(("applying the queue policy", e));
            }
        } else if let Ok(n) = self.notes.lock() {
            notes = n
                .iter()
                .filter(|n| !n.starts_with("error while"))
                .cloned()
                .collect();
        }
        for (what, e) in errors {
            tracing::error!("{what}: {e}");
            notes.push(format!("error while {what}: {e}"));
        }
        // a batch system asked less often than its minimum (slow, or failing) says so
        notes.retain(|n| !n.contains("; asking every "));
        notes.extend(self.schedulers.values().filter_map(|s| s.note()));
        if let Ok(mut n) = self.notes.lock() {
            *n = notes;
        }
    }

    /// Tells the engine that a launcher started or ended, so that its next round weighs the
    /// queue policy again.
    pub fn reconsider_launchers(&self) {
        self.launchers_changed.store(true, Ordering::SeqCst);
        self.wake.engine();
    }

    /// Applies every reaction the database calls for, in the order a job's life cascades:
    /// endings are checked (a finished parent readies its children), run errors and timeouts
    /// are retried or held, children whose parents all finished become READY, and READY jobs
    /// get their work folder and final command. One pass does the whole cascade; what arrives
    /// meanwhile rings the bell again. Whatever became runnable answers the launchers at once.
    pub fn react(&self) -> Result<Reaction> {
        let mut r = Reaction::default();
        // one read for every state acted on; bind first: a guard in a `for` header would
        // live through the loop body
        let all = self.db()?.pending_in(&[
            JobState::RunDone,
            JobState::RunError,
            JobState::RunTimeout,
            JobState::Ready,
        ])?;
        let of = |s: JobState| all.iter().filter(move |j| j.state == s);
        let done: Vec<&Pending> = of(JobState::RunDone).collect();
        let checked: Vec<(u64, Vec<Move>)> = done
            .iter()
            .map(|j| {
                let fault = self.check(j).err().map(|e| beamflow_program::chain(&e));
                if let Some(why) = &fault {
                    tracing::warn!(job = j.id, stack = %j.stack, step = %j.name, "{why}");
                }
                (j.id, job::after_check(fault.as_deref()))
            })
            .collect();
        let finished: Vec<u64> = checked
            .iter()
            .filter(|(_, m)| m.last().is_some_and(|m| m.to == JobState::JobFinished))
            .map(|(id, _)| *id)
            .collect();
        r.moved += self.db()?.apply_all(&checked)?;
        let max = self.cfg.service.max_attempts;
        let errored: Vec<&Pending> = of(JobState::RunError).collect();
        let timed_out: Vec<&Pending> = of(JobState::RunTimeout).collect();
        if !errored.is_empty() || !timed_out.is_empty() {
            let mut retries: Vec<(u64, Vec<Move>)> = Vec::new();
            for j in &errored {
                let m = job::after_error(j.attempts, max, &j.reason);
                if m.to == JobState::Failed {
                    tracing::warn!(job = j.id, stack = %j.stack, step = %j.name, "out of attempts: {}", j.reason);
                }
                retries.push((j.id, vec![m]));
            }
            retries.extend(self.after_timeouts(&timed_out)?);
            let again = retries
                .iter()
                .filter(|(_, m)| m[0].to == JobState::RestartReady)
                .count();
            let n = self.db()?.apply_all(&retries)?;
            r.moved += n;
            r.runnable += again.min(n);
        }
        let promoted = if self.first_round.swap(false, Ordering::SeqCst) {
            // whatever a stop left waiting with its parents finished
            self.db()?.promote_ready()?
        } else {
            self.db()?.promote_children(&finished)?
        };
        r.moved += promoted;
        let ready = if promoted > 0 {
            self.db()?.pending(JobState::Ready)?
        } else {
            of(JobState::Ready).cloned().collect()
        };
        let (moved, runnable) = self.prepare_ready(ready)?;
        r.moved += moved;
        r.runnable += runnable;
        if r.runnable > 0 {
            self.wake.work();
        }
        Ok(r)
    }

    /// The decisions for jobs whose run ran out of wall time: run again, in a launcher with room
    /// for how long they ran, or held after `max_timeouts` with their run times.
    fn after_timeouts(&self, timed_out: &[&Pending]) -> Result<Vec<(u64, Vec<Move>)>> {
        // the longest a launcher of any queue may run its jobs
        let limit = self
            .cfg
            .queues
            .values()
            .map(|q| q.walltime.0)
            .max()
            .unwrap_or_default();
        let offer = self.longest_offer();
        let mut out = Vec::new();
        for j in timed_out {
            let runs = self.db()?.timed_out_runs(j.id)?;
            let step = crate::science::dag::step_of(&j.name).0;
            let m = job::after_timeout(step, &runs, self.cfg.service.max_timeouts, limit);
            if m.to == JobState::Failed {
                tracing::warn!(job = j.id, stack = %j.stack, step = %j.name, "held: {}", m.reason);
            } else {
                // its next run goes only to a launcher with room for what it ran
                let need = runtime::need_after_timeouts(j.expected, &runs, offer);
                self.db()?.set_expected(j.id, need)?;
            }
            out.push((j.id, vec![m]));
        }
        Ok(out)
    }

    /// READY → PREPROCESSED (or FAILED when the work folder cannot be made), all in one
    /// transaction: (moves, jobs made runnable).
    fn prepare_ready(&self, mut ready: Vec<Pending>) -> Result<(usize, usize)> {
        if ready.is_empty() {
            return Ok((0, 0));
        }
        // a chunk whose twin of an earlier version (a streamed stack's sections so far) is
        // under way waits for it, and is reused when it read the same bytes; its end rings
        // the bell again
        let waiting = self.db()?.waiting_for_twins()?;
        ready.retain(|j| !waiting.contains(&j.id));
        // a stack of thousands of steps is made runnable a slice at a time, so the first
        // ones run while the rest are filled in; the bell brings the engine back for more
        if ready.len() > PREPARE_SLICE {
            ready.truncate(PREPARE_SLICE);
            self.wake.engine();
        }
        let mut filled = Vec::new();
        let mut failed = Vec::new();
        let mut reused = Vec::new();
        let mut newly_prepared = Vec::new();
        // each step's expected run time, read once per slice
        let mut learned = HashMap::new();
        for j in ready {
            match self.prepared_for(&j) {
                Ok(p) => {
                    if !j.prepared && !newly_prepared.contains(&j.stack_id) {
                        newly_prepared.push(j.stack_id);
                    }
                    let names = p.aligntk_names();
                    let (argv, env) = crate::science::dag::fill(
                        &j.argv,
                        &crate::science::dag::StackFacts {
                            stack: &j.stack,
                            images_dir: &j.stack_dir,
                            aligntk_names: &names,
                            collector: &self.collector,
                            grid_size: &p.grid_size,
                        },
                    );
                    match self.reusable(&j, &argv, &p) {
                        Some(why) => reused.push((j.id, argv, why)),
                        None => {
                            let (expected, size_class) = self.expected_for(&j, &p, &mut learned)?;
                            filled.push(Filled {
                                id: j.id,
                                argv,
                                env,
                                expected,
                                size_class,
                            })
                        }
                    }
                }
                Err(e) => {
                    let why = beamflow_program::chain(&e);
                    tracing::error!(job = j.id, stack = %j.stack, "cannot prepare the work folder: {why}");
                    failed.push((
                        j.id,
                        vec![Move {
                            to: JobState::Failed,
                            trigger: Trigger::PrepareFailed,
                            reason: format!("cannot prepare the work folder: {why}"),
                        }],
                    ));
                }
            }
        }
        let mut db = self.db()?;
        for s in newly_prepared {
            db.mark_prepared(s)?;
        }
        let n = db.preprocessed(&filled)?;
        let done = db.reused(&reused)?;
        if done > 0 {
            let ids: Vec<u64> = reused.iter().map(|r| r.0).collect();
            db.promote_children(&ids)?;
            self.wake.engine();
        }
        Ok((n + done + db.apply_all(&failed)?, n))
    }

    /// What job `j` is expected to need of a launcher, learned from its step's recent runs of
    /// its size class, and that class; `learned` keeps each step's answer for the round.
    fn expected_for(
        &self,
        j: &Pending,
        p: &Prepared,
        learned: &mut HashMap<(String, String, u32), Option<std::time::Duration>>,
    ) -> Result<(Option<std::time::Duration>, u32)> {
        let size_class = runtime::pixels(&p.grid_size)
            .map(runtime::size_class)
            .unwrap_or(0);
        let step = crate::science::dag::step_of(&j.name).0.to_string();
        let key = (j.workflow.clone(), step, size_class);
        if let Some(e) = learned.get(&key) {
            return Ok((*e, size_class));
        }
        let (same, any) = self.db()?.recent_runtimes(&key.0, &key.1, size_class)?;
        let e = runtime::within(runtime::estimate(&same, &any), self.longest_offer());
        learned.insert(key, e);
        Ok((e, size_class))
    }

    /// Why job `j` (its command filled to `argv`) need not run: a finished job of an earlier
    /// version of its stack, of the same name and command, read the very same bytes; its
    /// outputs are linked in. Fanned-out jobs only: a whole-stack job reads every section,
    /// and a new version changed one.
    fn reusable(&self, j: &Pending, argv: &[String], p: &Prepared) -> Option<String> {
        use crate::science::{dag, reuse};
        let (step_name, _) = dag::step_of(&j.name);
        let wf = self.cfg.workflows.get(&j.workflow)?;
        let step = wf.steps.iter().find(|s| s.name == step_name)?;
        let part = dag::part_of(&j.name, step.each)?;
        let earlier = self.db().ok()?.earlier_finished(j.id).ok()??;
        if earlier.argv != argv {
            return None;
        }
        let parent_outputs: Vec<String> = wf
            .steps
            .iter()
            .filter(|s| step.after.contains(&s.name))
            .flat_map(|s| s.outputs.iter().cloned())
            .collect();
        let (old, new) = (Path::new(&earlier.work_dir), Path::new(&j.work_dir));
        let summary = j.check_summary.as_deref();
        let files = reuse::files(
            new,
            &j.name,
            part,
            (&step.outputs, summary),
            &parent_outputs,
        );
        if !reuse::same_inputs(old, new, &files.inputs) {
            return None;
        }
        reuse::link_outputs(old, new, &files.outputs).ok()?;
        // every declared output and the summary must be there, else the job runs
        let logs = 2;
        let declared = &files.outputs[..files.outputs.len() - logs];
        if !declared.iter().all(|f| new.join(f).is_file()) {
            return None;
        }
        name_back_sections(new, &p.sections).ok()?;
        tracing::info!(job = j.id, stack = %j.stack, step = %j.name, earlier = earlier.id, "reused: the same inputs and command as a finished job of v{}", earlier.version);
        Some(format!(
            "reused job {} of v{}: the same command read the same bytes (BLAKE3)",
            earlier.id, earlier.version
        ))
    }

    /// The output check of a zero exit: the summary it declares, its declared outputs, then
    /// the received names given back to outputs made under an alias.
    fn check(&self, j: &Pending) -> std::result::Result<(), CheckError> {
        let work = Path::new(&j.work_dir);
        let (step_name, _) = crate::science::dag::step_of(&j.name);
        let step = self
            .steps
            .get(&(j.workflow.clone(), step_name.to_string()))
            .and_then(|i| self.cfg.workflows.get(&j.workflow).map(|w| &w.steps[*i]));
        match &j.check_summary {
            Some(rel) => crate::science::check::summary(work, rel, step_name),
            None => Ok(()),
        }
        .and_then(|()| match step {
            Some(s) => {
                let part = crate::science::dag::part_of(&j.name, s.each);
                crate::science::check::outputs(work, &s.outputs, &s.absent, part)
            }
            None => Ok(()),
        })
        .and_then(|()| match self.cached(j.stack_id) {
            Some(Ok(p)) => Ok(name_back_sections(work, &p.sections)?),
            _ => Ok(name_back(work)?),
        })
    }

    fn cached(&self, stack: u64) -> Option<std::result::Result<Prepared, PrepareError>> {
        self.prepared
            .lock()
            .ok()
            .and_then(|m| m.get(&stack).cloned())
    }

    fn prepared_for(&self, j: &Pending) -> std::result::Result<Prepared, PrepareError> {
        if let Some(p) = self.cached(j.stack_id) {
            return p;
        }
        let wf = self.cfg.workflows.get(&j.workflow);
        let schedule = wf.map(|w| w.schedule.clone()).unwrap_or_default();
        let kept = self
            .db()
            .ok()
            .and_then(|db| db.streamed_before(j.stack_id).ok())
            .unwrap_or_default()
            .iter()
            .find_map(|dir| crate::science::to8bit::recorded_window(Path::new(dir)));
        let p = prepare(
            Path::new(&j.work_dir),
            Path::new(&j.stack_dir),
            &schedule,
            wf,
            kept,
        );
        if let Ok(mut m) = self.prepared.lock() {
            // a bound on memory: the stacks in flight are few, the ones that ended are not needed
            if m.len() >= 256 {
                m.clear();
            }
            m.insert(j.stack_id, p.clone());
        }
        p
    }

    /// Asks each scheduler about its launchers' batch jobs and judges every live launcher
    /// (ended batch job, silence) at the clock's `now`.
    pub fn watch_launchers(&self) -> Result<()> {
        for s in self.schedulers.values() {
            s.reap();
        }
        let live = self.db()?.live_launchers()?;
        let mut by_queue: HashMap<&str, Vec<&(u64, String, launchers::Facts)>> = HashMap::new();
        for l in &live {
            by_queue.entry(l.1.as_str()).or_default().push(l);
        }
        let now = self.clock.now();
        let timeout = self.cfg.service.heartbeat_timeout.0;
        let mut ended = false;
        for (queue, ls) in by_queue {
            let Some(s) = self.schedulers.get(queue) else {
                for (id, _, _) in ls {
                    self.db()?.move_launcher(
                        *id,
                        LauncherState::Lost,
                        LauncherTrigger::Unconfigured,
                        &format!("queue {queue} is no longer configured"),
                    )?;
                    ended = true;
                }
                continue;
            };
            let states = self.batch_states(queue, s.as_ref(), &ls)?;
            // a window's launcher goes beside a waiting one while max_queued allows (the
            // waiting one keeps its place in line); only a full queue withdraws one for it
            let full = self.cfg.queues.get(queue).is_some_and(|q| {
                ls.iter()
                    .filter(|(_, _, f)| {
                        matches!(f.state, LauncherState::Queued | LauncherState::Running)
                    })
                    .count() as u32
                    >= q.max_queued
            });
            let fits = full && self.window_fits(queue);
            for (id, _, facts) in ls {
                let batch = states.as_ref().map(|st| st.get(&facts.batch_id).copied());
                let judged = launchers::judge(facts, batch, now, timeout).or_else(|| {
                    let q = self.cfg.queues.get(queue)?;
                    launchers::withdraw(facts, batch, now, q.max_queue_wait.0, fits)
                });
                let Some((to, trigger, reason)) = judged else {
                    continue;
                };
                if trigger == LauncherTrigger::Withdrawn {
                    tracing::info!(launcher = id, batch = %facts.batch_id, "{reason}");
                    if let Err(e) = s.delete(&facts.batch_id) {
                        tracing::warn!(launcher = id, "cannot withdraw it: {e}");
                        continue;
                    }
                }
                let n = self.db()?.move_launcher(*id, to, trigger, &reason)?;
                ended = true;
                if n.is_some_and(|n| n > 0) {
                    tracing::warn!(launcher = id, batch = %facts.batch_id, jobs = n.unwrap_or(0), "{reason} with jobs still running; they time out");
                }
                if trigger == LauncherTrigger::Silent {
                    tracing::warn!(launcher = id, "{reason}; declaring it lost");
                    let _ = s.delete(&facts.batch_id);
                }
            }
        }
        if ended {
            // its timed-out jobs are retried now, and its held request learns that it ended
            self.reconsider_launchers();
            self.wake.work();
        }
        Ok(())
    }

    /// What the batch system says of a queue's launchers' batch jobs; none when it is not its
    /// time yet (judge heartbeats only), or when the windows of a backfill queue with a
    /// launcher waiting in line are read first (at most every `backfill_every`), its state
    /// asked at the next call.
    fn batch_states(
        &self,
        queue: &str,
        s: &dyn Scheduler,
        ls: &[&(u64, String, launchers::Facts)],
    ) -> Result<Option<HashMap<String, crate::scheduler::BatchState>>> {
        // a launcher waiting in a backfill queue's line: a window that opens meanwhile takes
        // a launcher beside it, and one past max_queue_wait may be withdrawn for it
        let waiting = ls.iter().any(|(_, _, f)| {
            f.state == LauncherState::Queued
                && self.cfg.queues.get(queue).is_some_and(|q| q.backfill)
        });
        if s.ready_in().is_some() {
            return Ok(None);
        }
        if waiting && !self.window_fresh(queue) {
            if let Err(e) = self.refresh_windows(queue, s) {
                tracing::warn!(queue = %queue, "cannot read backfill windows: {e}");
            }
            return Ok(None);
        }
        let ids: Vec<String> = ls
            .iter()
            .filter(|l| !l.2.batch_id.is_empty())
            .map(|l| l.2.batch_id.clone())
            .collect();
        let states = s.status(&ids).map_err(|cause| EngineError::Scheduler {
            queue: queue.to_string(),
            cause,
        })?;
        Ok(Some(states))
    }

    /// Submits launchers while runnable jobs want more nodes than the live launchers have
    /// idle, within each queue's limits.
    pub fn policy(&self, notes: &mut Vec<String>) -> Result<()> {
        let runnable = self.db()?.runnable()?;
        if runnable.jobs == 0 {
            return Ok(());
        }
        let wanted = runnable.nodes;
        let active = self
            .db()?
            .launchers(&[LauncherState::Queued, LauncherState::Running], None)?;
        let now = crate::service::clock::epoch(self.clock.now());
        // idle slots of a launcher too near its end for any runnable job serve none of them;
        // nor do those of a fixed-size launcher waiting in the batch queue while a backfill
        // window would start one now (it keeps its place in line, the window is used beside it)
        let idle: i64 = active
            .iter()
            .filter(|l| runtime::fits(runnable.shortest, self.time_left(l, now)))
            .filter(|l| l.state != LauncherState::Queued || l.window || !self.window_fits(&l.queue))
            .map(|l| {
                let cap = self
                    .cfg
                    .queues
                    .get(&l.queue)
                    .map(|q| capacity(q, l.nodes))
                    .unwrap_or(l.nodes);
                cap as i64 - l.running_jobs as i64
            })
            .sum();
        let mut needed = wanted as i64 - idle.max(0);
        if needed <= 0 {
            return Ok(());
        }
        let mut submitted_any = false;
        for (name, q) in &self.cfg.queues {
            if needed <= 0 {
                break;
            }
            let mine = active.iter().filter(|l| &l.queue == name).count() as u32;
            let work = Work {
                nodes: (needed as u32).max(runnable.biggest.max(1)),
                shortest: runnable.shortest,
            };
            let Some(shape) = self.next_shape(name, q, (mine, work, runnable.jobs), notes) else {
                continue;
            };
            let nodes = shape.nodes;
            match self.submit(name, q, (nodes, shape.walltime), shape.from_window) {
                Ok((id, batch)) => {
                    if shape.from_window {
                        notes.push(format!(
                            "queue {name}: launcher {id} fits a window: {}",
                            shape.why
                        ));
                    }
                    tracing::info!(queue = %name, launcher = id, batch = %batch, nodes, walltime = %humantime::format_duration(shape.walltime), window = shape.from_window, "launcher submitted");
                    needed -= capacity(q, nodes) as i64;
                    submitted_any = true;
                }
                Err(why) => {
                    tracing::error!(queue = %name, "cannot submit a launcher: {why}");
                    notes.push(format!("queue {name}: cannot submit a launcher: {why}"));
                }
            }
        }
        if !submitted_any && active.is_empty() && self.cfg.queues.values().all(|q| !q.submit) {
            notes.push(format!(
                "{} job(s) wait: submit = false on every queue",
                runnable.jobs
            ));
        }
        Ok(())
    }

    /// The longest time a launcher of any queue gives its jobs: its wall time less the margin.
    fn longest_offer(&self) -> std::time::Duration {
        self.cfg
            .queues
            .values()
            .map(|q| q.walltime.0.saturating_sub(q.walltime_margin.0))
            .max()
            .unwrap_or_default()
    }

    /// The time a launcher has left for jobs at `now` (seconds since the epoch): to its
    /// deadline once it runs, its whole wall time less the queue's margin while it waits; none
    /// where its wall time is unknown.
    fn time_left(
        &self,
        l: &beamflow_protocol::api::LauncherRow,
        now: f64,
    ) -> Option<std::time::Duration> {
        let secs = match l.deadline {
            Some(d) => d - now,
            None if l.walltime_secs > 0 => {
                let margin = self.cfg.queues.get(&l.queue)?.walltime_margin.0;
                l.walltime_secs as f64 - margin.as_secs_f64()
            }
            None => return None,
        };
        Some(std::time::Duration::from_secs_f64(secs.max(0.0)))
    }

    /// The shape of queue `name`'s next launcher for `work` while `mine`
    /// of its launchers are queued or running; none, with the reason in `notes`, when none
    /// goes now.
    fn next_shape(
        &self,
        name: &str,
        q: &QueueSection,
        (mine, work, jobs): (u32, Work, u32),
        notes: &mut Vec<String>,
    ) -> Option<crate::scheduler::window::Shape> {
        let mut wait = |note: String| {
            notes.push(note);
            None
        };
        if !q.submit {
            return wait(format!(
                "queue {name}: submit = false; set it to true to run the {jobs} waiting job(s)"
            ));
        }
        if mine >= q.max_queued {
            return wait(format!(
                "queue {name}: {mine} launcher(s) queued or running, max_queued = {}",
                q.max_queued
            ));
        }
        if let Some(after) = self.schedulers.get(name).and_then(|s| s.ready_in()) {
            return wait(format!(
                "queue {name}: the next launcher goes in {} (the batch system is asked at most every {})",
                humantime::format_duration(std::time::Duration::from_secs(after.as_secs() + 1)),
                q.scheduler_min_interval
            ));
        }
        if !q.backfill {
            return Some(crate::scheduler::window::shape(&[], work, q));
        }
        self.backfill_shape(name, q, work).or_else(|| {
            wait(format!(
                "queue {name}: free nodes read; the launcher fitted to them goes at the batch system's next call"
            ))
        })
    }

    /// Whether a backfill queue's windows were read within `backfill_every`.
    fn window_fresh(&self, queue: &str) -> bool {
        let every = self.cfg.queues.get(queue).map(|q| q.backfill_every.0);
        self.windows.lock().is_ok_and(|cache| {
            cache
                .get(queue)
                .zip(every)
                .is_some_and(|((at, _, _), every)| at.elapsed() < every)
        })
    }

    /// Reads a backfill queue's windows into the cache (a launcher is shaped from them next).
    fn refresh_windows(
        &self,
        queue: &str,
        s: &dyn Scheduler,
    ) -> std::result::Result<(), crate::scheduler::SchedError> {
        let Some(q) = self.cfg.queues.get(queue) else {
            return Ok(());
        };
        let w = s.windows(&q.queue)?;
        if let Ok(mut cache) = self.windows.lock() {
            cache.insert(queue.to_string(), (Instant::now(), w, false));
        }
        Ok(())
    }

    /// Whether a backfill queue's windows, as last read within `backfill_every`, would start
    /// a launcher at once.
    fn window_fits(&self, queue: &str) -> bool {
        let Some(q) = self.cfg.queues.get(queue).filter(|q| q.backfill) else {
            return false;
        };
        let Ok(cache) = self.windows.lock() else {
            return false;
        };
        cache.get(queue).is_some_and(|(at, windows, _)| {
            at.elapsed() < q.backfill_every.0
                && crate::scheduler::window::shape(windows, Work::nodes(q.max_nodes), q).from_window
        })
    }

    /// The shape of a backfill queue's next launcher from the windows read at most
    /// `backfill_every` ago (each shortened by its age); none when they had to be read now:
    /// the submission then waits for the batch system's next call. A failed read falls back
    /// to the fixed size, saying why.
    fn backfill_shape(
        &self,
        name: &str,
        q: &QueueSection,
        work: Work,
    ) -> Option<crate::scheduler::window::Shape> {
        use crate::scheduler::window::{shape, Window};
        let now = Instant::now();
        {
            let mut cache = self.windows.lock().ok()?;
            if let Some((at, windows, used)) = cache.get_mut(name) {
                let age = now.saturating_duration_since(*at);
                let fresh = age < q.backfill_every.0;
                // a read no launcher used yet is used however long the pace made it wait
                if fresh || !*used {
                    let aged: Vec<Window> = windows
                        .iter()
                        .map(|w| Window {
                            nodes: w.nodes,
                            lasts: w.lasts.map(|d| d.saturating_sub(age)),
                        })
                        .collect();
                    let s = shape(&aged, work, q);
                    // a window one launcher took is not offered to the next: it waits for
                    // the next read; the fixed size (no window fitted) may go again
                    if *used && s.from_window {
                        return None;
                    }
                    *used = true;
                    return Some(s);
                }
            }
        }
        let scheduler = self.schedulers.get(name)?;
        if scheduler.ready_in().is_some() {
            return None;
        }
        match self.refresh_windows(name, scheduler.as_ref()) {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(queue = %name, "cannot read backfill windows, the fixed size goes: {e}");
                let mut s = shape(&[], work, q);
                s.why = format!("cannot read the free nodes ({e}): the queue's fixed size");
                Some(s)
            }
        }
    }

    fn submit(
        &self,
        name: &str,
        q: &QueueSection,
        (nodes, walltime): (u32, std::time::Duration),
        window: bool,
    ) -> Result<(u64, String)> {
        let scheduler = self
            .schedulers
            .get(name)
            .ok_or_else(|| EngineError::NoScheduler(name.into()))?;
        let kind = format!("{:?}", q.scheduler).to_lowercase();
        let id =
            self.db()?
                .add_shaped_launcher(name, &kind, (nodes, walltime.as_secs()), window)?;
        let dir = self.cfg.collector.state_dir.join("launchers");
        let script = self.script(&dir, id, name, walltime)?;
        let spec = BatchSpec {
            name: format!("beamflow-{id}"),
            nodes,
            walltime,
            project: q.project.clone(),
            queue: q.queue.clone(),
            extra_args: q.extra_args.clone(),
            log: dir.join(format!("launcher-{id}.log")),
        };
        match scheduler.submit(&script, &spec) {
            Ok(batch) => {
                self.db()?.set_batch_id(id, &batch)?;
                Ok((id, batch))
            }
            Err(cause) => {
                let _ = self.db()?.move_launcher(
                    id,
                    LauncherState::Finished,
                    LauncherTrigger::SubmitFailed,
                    &format!("submit failed: {cause}"),
                );
                Err(EngineError::Scheduler {
                    queue: name.into(),
                    cause,
                })
            }
        }
    }

    fn script(
        &self,
        dir: &Path,
        id: u64,
        queue: &str,
        walltime: std::time::Duration,
    ) -> Result<PathBuf> {
        let path = dir.join(format!("launcher-{id}.sh"));
        let cfg = self
            .cfg
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let text = crate::scheduler::batch_script(
            &format!("beamflow launcher {id} for queue {queue}, written by the collector service"),
            &[("BEAMFLOW_WALLTIME_SECS", walltime.as_secs().to_string())],
            &[
                self.collector.clone(),
                "launcher".into(),
                "--config".into(),
                cfg,
                "--queue".into(),
                queue.to_string(),
                "--id".into(),
                id.to_string(),
            ],
        );
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|cause| EngineError::Script {
                path: path.clone(),
                cause,
            })?;
        Ok(path)
    }
}
