//! The service's heartbeat: advance the DAG, prepare work folders, check results, retry what
//! timed out, watch batch jobs, and keep launchers queued by each queue's policy.
//!
//! It runs on its own thread every `poll_interval`. The database lock is held only for short
//! statements; scheduler commands and file work run without it.

use crate::db::Db;
use crate::lifecycle::Pending;
use crate::prepare::{name_back, prepare};
use crate::scheduler::{self, BatchSpec, BatchState, Scheduler};
use crate::state::JobState;
use beamflow_config::{Config, QueueSection, SchedulerKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The service's background work.
pub struct Engine {
    cfg: Arc<Config>,
    db: Arc<Mutex<Db>>,
    schedulers: HashMap<String, Box<dyn Scheduler>>,
    /// What a person should know now (why work waits …), served by `/v1/status`.
    pub notes: Mutex<Vec<String>>,
    collector: String,
}

type Result<T> = std::result::Result<T, String>;

/// This program's path, for built-in steps that run `beamflow-collector qa` in a launcher.
pub(crate) fn collector_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "beamflow-collector".into())
}

/// Job slots a launcher of this queue offers.
pub fn capacity(q: &QueueSection, nodes: u32) -> u32 {
    match q.scheduler {
        SchedulerKind::Local => local_slots(q),
        _ => nodes,
    }
}

/// Slots of a local launcher: configured, or one per CPU.
pub fn local_slots(q: &QueueSection) -> u32 {
    if q.slots > 0 {
        q.slots
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    }
}

impl Engine {
    /// An engine for the service's config and database.
    pub fn new(cfg: Arc<Config>, db: Arc<Mutex<Db>>) -> Engine {
        let schedulers = cfg
            .queues
            .iter()
            .map(|(n, q)| (n.clone(), scheduler::for_kind(q.scheduler)))
            .collect();
        Engine {
            cfg,
            db,
            schedulers,
            notes: Mutex::new(Vec::new()),
            collector: collector_exe(),
        }
    }

    fn db(&self) -> Result<std::sync::MutexGuard<'_, Db>> {
        self.db
            .lock()
            .map_err(|_| "database lock poisoned; restart the service".to_string())
    }

    /// One round of everything. Errors of one part are logged and do not stop the others.
    pub fn tick(&self) {
        let mut notes = Vec::new();
        for (what, r) in [
            ("advancing the DAG", self.advance()),
            ("watching launchers", self.watch_launchers()),
            ("applying the queue policy", self.policy(&mut notes)),
        ] {
            if let Err(e) = r {
                tracing::error!("{what}: {e}");
                notes.push(format!("error while {what}: {e}"));
            }
        }
        if let Ok(mut n) = self.notes.lock() {
            *n = notes;
        }
    }

    fn advance(&self) -> Result<()> {
        let e = |x: crate::db::DbError| x.to_string();
        self.db()?.promote_ready().map_err(e)?;
        let ready = self.db()?.pending(JobState::Ready).map_err(e)?;
        let mut prepared: HashMap<u64, std::result::Result<crate::prepare::Prepared, String>> =
            HashMap::new();
        for j in ready {
            let p = prepared
                .entry(j.stack_id)
                .or_insert_with(|| self.prepare(&j))
                .clone();
            match p {
                Ok(p) => {
                    if !j.prepared {
                        self.db()?.mark_prepared(j.stack_id).map_err(e)?;
                    }
                    let names = p.aligntk_names();
                    let argv = crate::dag::fill(
                        &j.argv,
                        &crate::dag::StackFacts {
                            stack: &j.stack,
                            images_dir: &j.stack_dir,
                            aligntk_names: &names,
                            collector: &self.collector,
                            grid_size: &p.grid_size,
                        },
                    );
                    self.db()?.preprocessed(j.id, &argv).map_err(e)?;
                }
                Err(why) => {
                    tracing::error!(job = j.id, stack = %j.stack, "cannot prepare the work folder: {why}");
                    self.db()?
                        .transition(
                            j.id,
                            &[JobState::Ready],
                            JobState::Failed,
                            &format!("cannot prepare the work folder: {why}"),
                        )
                        .map_err(e)?;
                }
            }
        }
        // bind first: a guard in a `for` header would live through the loop body
        let done = self.db()?.pending(JobState::RunDone).map_err(e)?;
        for j in done {
            let work = Path::new(&j.work_dir);
            let step = self
                .cfg
                .workflows
                .get(&j.workflow)
                .and_then(|w| w.steps.iter().find(|s| s.name == j.name));
            let check = match &j.check_summary {
                Some(rel) => crate::check::summary(work, rel),
                None => Ok(()),
            }
            .and_then(|()| match step {
                Some(s) => crate::check::outputs(work, &s.outputs, &s.absent),
                None => Ok(()),
            })
            .and_then(|()| name_back(work));
            let mut db = self.db()?;
            match check {
                Ok(()) => {
                    db.transitions(
                        j.id,
                        &[
                            (
                                JobState::RunDone,
                                JobState::Postprocessed,
                                "outputs checked",
                            ),
                            (JobState::Postprocessed, JobState::JobFinished, "done"),
                        ],
                    )
                    .map_err(e)?;
                }
                Err(why) => {
                    tracing::warn!(job = j.id, stack = %j.stack, step = %j.name, "{why}");
                    db.transitions(
                        j.id,
                        &[
                            (JobState::RunDone, JobState::RunError, &why),
                            (
                                JobState::RunError,
                                JobState::Failed,
                                &format!("held for a person, not retried (the data, not the run, is at fault): {why}"),
                            ),
                        ],
                    )
                    .map_err(e)?;
                }
            }
        }
        let max = self.cfg.service.max_attempts;
        let errored = self.db()?.pending(JobState::RunError).map_err(e)?;
        for j in errored {
            let mut db = self.db()?;
            if j.attempts < max {
                db.transition(
                    j.id,
                    &[JobState::RunError],
                    JobState::RestartReady,
                    &format!("attempt {} of {max} failed; retrying", j.attempts),
                )
                .map_err(e)?;
            } else {
                let last = db
                    .job(j.id)
                    .map_err(e)?
                    .map(|r| r.reason)
                    .unwrap_or_default();
                tracing::warn!(job = j.id, stack = %j.stack, step = %j.name, "out of attempts: {last}");
                db.transition(
                    j.id,
                    &[JobState::RunError],
                    JobState::Failed,
                    &format!("out of attempts ({max}); last: {last}"),
                )
                .map_err(e)?;
            }
        }
        let timed_out = self.db()?.pending(JobState::RunTimeout).map_err(e)?;
        for j in timed_out {
            self.db()?
                .transition(
                    j.id,
                    &[JobState::RunTimeout],
                    JobState::RestartReady,
                    "timed out; will run again",
                )
                .map_err(e)?;
        }
        Ok(())
    }

    fn prepare(&self, j: &Pending) -> std::result::Result<crate::prepare::Prepared, String> {
        let wf = self.cfg.workflows.get(&j.workflow);
        let schedule = wf.map(|w| w.schedule.clone()).unwrap_or_default();
        prepare(
            Path::new(&j.work_dir),
            Path::new(&j.stack_dir),
            &schedule,
            wf,
        )
    }

    fn watch_launchers(&self) -> Result<()> {
        for s in self.schedulers.values() {
            s.reap();
        }
        let e = |x: crate::db::DbError| x.to_string();
        let active = self
            .db()?
            .launchers(&["QUEUED", "RUNNING"], None)
            .map_err(e)?;
        let mut by_queue: HashMap<&str, Vec<&beamflow_protocol::api::LauncherRow>> = HashMap::new();
        for l in &active {
            by_queue.entry(l.queue.as_str()).or_default().push(l);
        }
        for (queue, ls) in by_queue {
            let Some(s) = self.schedulers.get(queue) else {
                for l in ls {
                    self.db()?
                        .end_launcher(
                            l.id,
                            "LOST",
                            &format!("queue {queue} is no longer configured"),
                        )
                        .map_err(e)?;
                }
                continue;
            };
            let ids: Vec<String> = ls
                .iter()
                .filter(|l| !l.batch_id.is_empty())
                .map(|l| l.batch_id.clone())
                .collect();
            let states = s.status(&ids).map_err(|x| x.to_string())?;
            for l in ls {
                match states.get(&l.batch_id) {
                    None | Some(BatchState::Finished) => {
                        let n = self
                            .db()?
                            .end_launcher(
                                l.id,
                                "FINISHED",
                                &format!("batch job {} ended", l.batch_id),
                            )
                            .map_err(e)?;
                        if n > 0 {
                            tracing::warn!(launcher = l.id, batch = %l.batch_id, jobs = n, "batch job ended with jobs still running; they time out");
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        let timeout = self.cfg.service.heartbeat_timeout;
        let silent = self
            .db()?
            .silent_launchers(timeout.0.as_secs_f64())
            .map_err(e)?;
        for id in silent {
            let reason = format!("no heartbeat for {timeout}");
            tracing::warn!(launcher = id, "{reason}; declaring it lost");
            let row = self
                .db()?
                .launchers(&[], None)
                .map_err(e)?
                .into_iter()
                .find(|l| l.id == id);
            self.db()?.end_launcher(id, "LOST", &reason).map_err(e)?;
            if let Some(l) = row {
                if let Some(s) = self.schedulers.get(&l.queue) {
                    let _ = s.delete(&l.batch_id);
                }
            }
        }
        Ok(())
    }

    fn policy(&self, notes: &mut Vec<String>) -> Result<()> {
        let e = |x: crate::db::DbError| x.to_string();
        let runnable = self.db()?.runnable_nodes().map_err(e)?;
        if runnable.is_empty() {
            return Ok(());
        }
        let wanted: u32 = runnable.iter().sum();
        let active = self
            .db()?
            .launchers(&["QUEUED", "RUNNING"], None)
            .map_err(e)?;
        let idle: i64 = active
            .iter()
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
            if !q.submit {
                notes.push(format!(
                    "queue {name}: submit = false; set it to true to run the {} waiting job(s)",
                    runnable.len()
                ));
                continue;
            }
            let mine = active.iter().filter(|l| &l.queue == name).count() as u32;
            if mine >= q.max_queued {
                notes.push(format!(
                    "queue {name}: {mine} launcher(s) queued or running, max_queued = {}",
                    q.max_queued
                ));
                continue;
            }
            let biggest = runnable.iter().copied().max().unwrap_or(1);
            let nodes = (needed as u32).max(biggest).clamp(q.min_nodes, q.max_nodes);
            match self.submit(name, q, nodes) {
                Ok((id, batch)) => {
                    tracing::info!(queue = %name, launcher = id, batch = %batch, nodes, "launcher submitted");
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
                runnable.len()
            ));
        }
        Ok(())
    }

    fn submit(&self, name: &str, q: &QueueSection, nodes: u32) -> Result<(u64, String)> {
        let scheduler = self.schedulers.get(name).ok_or("no scheduler")?;
        let kind = format!("{:?}", q.scheduler).to_lowercase();
        let id = self
            .db()?
            .add_launcher(name, &kind, nodes)
            .map_err(|e| e.to_string())?;
        let dir = self.cfg.collector.state_dir.join("launchers");
        let script = self
            .script(&dir, id, name, q)
            .map_err(|e| format!("cannot write the launcher script: {e}"))?;
        let spec = BatchSpec {
            name: format!("beamflow-{id}"),
            nodes,
            walltime: q.walltime.0,
            project: q.project.clone(),
            queue: q.queue.clone(),
            extra_args: q.extra_args.clone(),
            log: dir.join(format!("launcher-{id}.log")),
        };
        match scheduler.submit(&script, &spec) {
            Ok(batch) => {
                self.db()?
                    .set_batch_id(id, &batch)
                    .map_err(|e| e.to_string())?;
                Ok((id, batch))
            }
            Err(err) => {
                let _ = self
                    .db()?
                    .end_launcher(id, "FINISHED", &format!("submit failed: {err}"));
                Err(err.to_string())
            }
        }
    }

    fn script(
        &self,
        dir: &Path,
        id: u64,
        queue: &str,
        q: &QueueSection,
    ) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let cfg = self
            .cfg
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let quote = beamflow_config::argv::quote;
        let text = format!(
            "#!/bin/sh\n# beamflow launcher {id} for queue {}, written by the collector service\nexport BEAMFLOW_WALLTIME_SECS={}\nexec {} launcher --config {} --queue {} --id {id}\n",
            quote(queue).replace('\n', " "),
            q.walltime.0.as_secs(),
            quote(&self.collector),
            quote(&cfg),
            quote(queue),
        );
        let path = dir.join(format!("launcher-{id}.sh"));
        std::fs::write(&path, text)?;
        Ok(path)
    }
}
