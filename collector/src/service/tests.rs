//! The middle tier: the engine driven against an in-memory database, with a scheduler
//! double and a clock the test moves. Nothing here sleeps; launchers are played by calling
//! the same database writes the API routes call.

use crate::scheduler::{BatchSpec, BatchState, SchedError, Scheduler};
use crate::service::clock::{Clock, ManualClock};
use crate::service::engine::Engine;
use crate::service::lifecycle::job::{self, JobState, MoveError, Trigger};
use crate::service::lifecycle::launcher::{LauncherState, LauncherTrigger};
use crate::service::lifecycle::runtime;
use crate::service::store::{Db, DbError, NewStack};
use crate::service::wake::Wake;
use beamflow_config::Config;
use beamflow_protocol::api::{AcquireRequest, JobReport, Outcome, ReportRequest};
use beamflow_protocol::states::DagState;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// A stand-in for a batch system (the real ones need PBS, Cobalt or Slurm; Slurm is tested
/// for real in `tests/`): it accepts every submission, says what the test tells it, and
/// records deletions.
#[derive(Default, Clone)]
struct Double {
    submitted: Arc<Mutex<Vec<String>>>,
    states: Arc<Mutex<HashMap<String, BatchState>>>,
    deleted: Arc<Mutex<Vec<String>>>,
    windows: Arc<Mutex<Vec<crate::scheduler::window::Window>>>,
}

impl Scheduler for Double {
    fn submit(&self, _script: &Path, spec: &BatchSpec) -> Result<String, SchedError> {
        let mut s = self.submitted.lock().unwrap();
        s.push(spec.name.clone());
        let id = format!("batch-{}", s.len());
        self.states
            .lock()
            .unwrap()
            .insert(id.clone(), BatchState::Queued);
        Ok(id)
    }
    fn status(&self, ids: &[String]) -> Result<HashMap<String, BatchState>, SchedError> {
        let st = self.states.lock().unwrap();
        Ok(ids
            .iter()
            .filter_map(|i| st.get(i).map(|s| (i.clone(), *s)))
            .collect())
    }
    fn delete(&self, id: &str) -> Result<(), SchedError> {
        self.deleted.lock().unwrap().push(id.into());
        self.states.lock().unwrap().remove(id);
        Ok(())
    }
    fn default_launch(&self) -> &'static str {
        "{command}"
    }
    fn windows(&self, _queue: &str) -> Result<Vec<crate::scheduler::window::Window>, SchedError> {
        Ok(self.windows.lock().unwrap().clone())
    }
}

struct Tier {
    _dir: tempfile::TempDir,
    /// The next submission is a partial version planned from its sections from this one on.
    new_from: std::cell::Cell<Option<usize>>,
    cfg: Arc<Config>,
    db: Arc<Mutex<Db>>,
    wake: Arc<Wake>,
    engine: Engine,
    sched: Double,
    clock: Arc<ManualClock>,
}

fn write_section(path: &Path, seed: u8) {
    let f = std::fs::File::create(path).unwrap();
    let mut e = tiff::encoder::TiffEncoder::new(f).unwrap();
    let px: Vec<u8> = (0..64u32 * 64)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    e.write_image::<tiff::encoder::colortype::Gray8>(64, 64, &px)
        .unwrap();
}

fn tier() -> Tier {
    tier_with("")
}

/// A tier whose config has `extra` appended.
fn tier_with(extra: &str) -> Tier {
    tier_edited(&[], extra)
}

/// A tier whose config has each (from, to) replaced, and `extra` appended.
fn tier_edited(edits: &[(&str, &str)], extra: &str) -> Tier {
    let dir = tempfile::tempdir().unwrap();
    let at = |p: &str| format!("\"{}\"", dir.path().join(p).display());
    let mut text = beamflow_config::EMBEDDED_LOCAL.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "{from}");
        text = text.replacen(from, to, 1);
    }
    let text = text
        .replace("heartbeat_timeout = \"60s\"", "heartbeat_timeout = \"3s\"")
        .replace("\"./remote\"", &at("remote"))
        .replace("\"./work\"", &at("work"))
        .replace("\"./state\"", &at("state"))
        + "\n[workflows.chain]\n\
           [[workflows.chain.steps]]\nname = \"a\"\ncommand = \"true\"\n\
           [[workflows.chain.steps]]\nname = \"b\"\ncommand = \"true\"\nafter = [\"a\"]\n\
           [[workflows.chain.steps]]\nname = \"c\"\ncommand = \"true\"\nafter = [\"b\"]\n\
           [workflows.pairs]\n\
           [[workflows.pairs.steps]]\nname = \"p\"\ncommand = \"true\"\neach = \"pair\"\nchunk = 1\n\
           [[workflows.pairs.steps]]\nname = \"w\"\ncommand = \"true\"\nafter = [\"p\"]\n"
        + extra;
    let cfg = Arc::new(Config::parse(&text, &dir.path().join("beamflow.toml")).unwrap());
    let clock = Arc::new(ManualClock::at(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let db = Arc::new(Mutex::new(Db::in_memory(clock.clone()).unwrap()));
    let wake = Arc::new(Wake::default());
    let sched = Double::default();
    let schedulers: HashMap<String, Box<dyn Scheduler>> = cfg
        .queues
        .keys()
        .map(|q| (q.clone(), Box::new(sched.clone()) as Box<dyn Scheduler>))
        .collect();
    let engine = Engine::with_parts(
        cfg.clone(),
        db.clone(),
        wake.clone(),
        schedulers,
        clock.clone(),
    );
    Tier {
        _dir: dir,
        new_from: std::cell::Cell::new(None),
        cfg,
        db,
        wake,
        engine,
        sched,
        clock,
    }
}

impl Tier {
    /// Registers a stack version of `workflow` with two real sections; returns its job ids.
    fn submit(&self, name: &str, workflow: &str) -> Vec<u64> {
        self.submit_version(name, workflow, 1, true)
    }

    /// Registers version `version` of a stack; `supersede` as `on_change = "supersede"`.
    fn submit_version(
        &self,
        name: &str,
        workflow: &str,
        version: u32,
        supersede: bool,
    ) -> Vec<u64> {
        self.submit_sections(name, workflow, (version, 2), supersede, false)
    }

    /// Registers version `version` of a stack of `sections`; `partial` as a streamed
    /// stack's sections so far.
    fn submit_sections(
        &self,
        name: &str,
        workflow: &str,
        (version, sections): (u32, usize),
        supersede: bool,
        partial: bool,
    ) -> Vec<u64> {
        let root = self.cfg.collector.data_root.join("bl").join(name);
        let snap = root.join(format!(".beamflow-v{version}"));
        std::fs::create_dir_all(&snap).unwrap();
        for i in 0..sections as u8 {
            write_section(&snap.join(format!("S_{i}.tif")), i + 3);
        }
        let work = self
            .cfg
            .service
            .work_root
            .join("bl")
            .join(name)
            .join(format!("@v{version}"));
        let wf = &self.cfg.workflows[workflow];
        let jobs = match self.new_from.take() {
            // a partial version planned as the service plans it: what changed since
            Some(from) => crate::science::dag::plan_partial(wf, sections, |i| i >= from),
            None => crate::science::dag::plan(wf, sections),
        };
        let (dir, work) = (snap.display().to_string(), work.display().to_string());
        let digest = format!("{name}{version}");
        let s = NewStack {
            beamline: "bl",
            name,
            version,
            workflow,
            dir: &dir,
            work_dir: &work,
            digest: &digest,
            files_json: "[]",
            supersede,
            partial,
        };
        let mut db = self.db.lock().unwrap();
        db.submit(&s, &jobs).unwrap();
        db.jobs(Some(name), None)
            .unwrap()
            .into_iter()
            .filter(|j| j.version == version)
            .map(|j| j.id)
            .collect()
    }

    fn reason(&self, job: u64) -> String {
        self.db.lock().unwrap().job(job).unwrap().unwrap().reason
    }

    fn state(&self, job: u64) -> &'static str {
        self.db
            .lock()
            .unwrap()
            .job(job)
            .unwrap()
            .unwrap()
            .state
            .as_str()
    }

    fn running_events(&self, job: u64) -> usize {
        let db = self.db.lock().unwrap();
        db.events(job)
            .unwrap()
            .iter()
            .filter(|e| e.to == JobState::Running)
            .count()
    }

    /// A launcher of `nodes` in `queue` whose batch job `batch` waits in the batch queue.
    fn queued_launcher(&self, queue: &str, nodes: u32, batch: &str) -> u64 {
        let id = {
            let mut db = self.db.lock().unwrap();
            let id = db.add_launcher(queue, "slurm", nodes).unwrap();
            db.set_batch_id(id, batch).unwrap();
            id
        };
        self.sched
            .states
            .lock()
            .unwrap()
            .insert(batch.into(), BatchState::Queued);
        id
    }

    /// The first launcher the engine submitted, started with `slots`.
    fn first_launcher(&self, slots: usize) -> u64 {
        let id = self.db.lock().unwrap().launchers(&[], None).unwrap()[0].id;
        self.start_launcher(id, slots);
        id
    }

    /// Plays a launcher announcing itself in its allocation.
    fn start_launcher(&self, id: u64, slots: usize) {
        let mut db = self.db.lock().unwrap();
        assert!(db
            .launcher_started(id, slots, "node-1", &|_| Duration::ZERO)
            .unwrap());
    }

    fn acquire(&self, launcher: u64, reports: &[(u64, Outcome)]) -> Vec<u64> {
        self.acquire_ahead(launcher, reports, 0)
    }

    /// A launcher's request with its endings, asking for `ahead` jobs beyond its idle slots.
    fn acquire_ahead(&self, launcher: u64, reports: &[(u64, Outcome)], ahead: u32) -> Vec<u64> {
        let reports: Vec<JobReport> = reports
            .iter()
            .map(|(job, outcome)| {
                ending(
                    *job,
                    launcher,
                    *outcome,
                    Some(if *outcome == Outcome::Done { 0 } else { 1 }),
                    "played by the test",
                    None,
                )
            })
            .collect();
        let resp = self
            .db
            .lock()
            .unwrap()
            .acquire(launcher, &ask(8, ahead, false), &reports)
            .unwrap();
        assert!(!resp.stop);
        resp.jobs.iter().map(|j| j.id).collect()
    }
}

/// A launcher's account of one job's end, as its loop makes it.
fn ending(
    job: u64,
    launcher: u64,
    outcome: Outcome,
    exit_code: Option<i32>,
    message: &str,
    ran_ms: Option<u64>,
) -> JobReport {
    JobReport {
        job,
        report: ReportRequest {
            launcher,
            outcome,
            exit_code,
            message: message.into(),
            ran_ms,
        },
    }
}

/// A launcher's request as its threads make it: `max_jobs` wanted, `ahead` held beyond its
/// idle slots.
fn ask(max_jobs: u32, ahead: u32, closing: bool) -> AcquireRequest {
    AcquireRequest {
        free_nodes: max_jobs,
        max_jobs,
        running: Vec::new(),
        reports: Vec::new(),
        wait_ms: 0,
        closing,
        ahead,
    }
}

#[test]
fn a_chain_moves_on_the_moment_its_parent_reports_with_no_timer_at_all() {
    let t = tier();
    let ids = t.submit("run1", "chain");
    assert_eq!(ids.len(), 3);
    let mut bell = t.wake.watch_work();
    bell.borrow_and_update();
    t.engine.round(false);
    assert_eq!(t.state(ids[0]), "PREPROCESSED");
    assert_eq!(t.state(ids[1]), "AWAITING_PARENTS");
    assert!(
        bell.has_changed().unwrap(),
        "a runnable job rings the launchers' bell"
    );
    // the policy asked the scheduler for one launcher, and only one, however often it runs
    t.engine.round(false);
    assert_eq!(t.sched.submitted.lock().unwrap().len(), 1);
    let launcher = t.first_launcher(2);
    assert_eq!(t.acquire(launcher, &[]), [ids[0]]);
    for (parent, child) in [(ids[0], ids[1]), (ids[1], ids[2])] {
        // the report comes in the same request that asks for more: nothing is runnable yet
        assert!(t.acquire(launcher, &[(parent, Outcome::Done)]).is_empty());
        assert_eq!(t.state(parent), "RUN_DONE");
        bell.borrow_and_update();
        // one reaction (what the report's bell starts) finishes the parent and readies the child
        assert!(t.engine.react().unwrap().moved >= 3);
        assert_eq!(t.state(parent), "JOB_FINISHED");
        assert_eq!(t.state(child), "PREPROCESSED");
        assert!(bell.has_changed().unwrap());
        assert_eq!(t.acquire(launcher, &[]), [child]);
    }
    t.acquire(launcher, &[(ids[2], Outcome::Done)]);
    t.engine.react().unwrap();
    for id in &ids {
        assert_eq!(t.state(*id), "JOB_FINISHED");
        assert_eq!(t.running_events(*id), 1, "job {id} ran once");
    }
}

#[test]
fn a_silent_launcher_is_lost_exactly_when_its_heartbeat_expires_on_the_clock() {
    let t = tier();
    let ids = t.submit("run1", "chain");
    t.engine.round(true);
    let launcher = t.db.lock().unwrap().launchers(&[], None).unwrap()[0].id;
    let batch = t.db.lock().unwrap().launchers(&[], None).unwrap()[0]
        .batch_id
        .clone();
    t.sched
        .states
        .lock()
        .unwrap()
        .insert(batch.clone(), BatchState::Running);
    t.start_launcher(launcher, 1);
    assert_eq!(t.acquire(launcher, &[]), [ids[0]]);
    // 2.9 s of silence is within the 3 s heartbeat timeout
    t.clock.advance(Duration::from_millis(2900));
    t.engine.watch_launchers().unwrap();
    assert_eq!(t.state(ids[0]), "RUNNING");
    t.clock.advance(Duration::from_millis(200));
    t.engine.watch_launchers().unwrap();
    let l = t.db.lock().unwrap().launchers(&[], None).unwrap()[0].clone();
    assert_eq!(l.state, LauncherState::Lost);
    assert_eq!(l.reason, "no heartbeat for 3s");
    assert_eq!(*t.sched.deleted.lock().unwrap(), [batch]);
    assert_eq!(t.state(ids[0]), "RUN_TIMEOUT");
    // the event carries the clock's time, not the wall clock's
    let events = t.db.lock().unwrap().events(ids[0]).unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.at, crate::service::clock::stamp(t.clock.now()));
    // it runs again, once, on the next launcher the policy asks for
    t.engine.round(false);
    assert_eq!(t.state(ids[0]), "RESTART_READY");
    assert_eq!(t.sched.submitted.lock().unwrap().len(), 2);
    let second = t.db.lock().unwrap().launchers(&[], None).unwrap()[1].id;
    t.start_launcher(second, 1);
    assert_eq!(t.acquire(second, &[]), [ids[0]]);
    // a late report from the lost launcher is ignored
    assert!(t.acquire(second, &[]).is_empty());
    let late = t.db.lock().unwrap().report(
        ids[0],
        &ReportRequest {
            launcher,
            outcome: Outcome::Done,
            exit_code: Some(0),
            message: "late".into(),
            ran_ms: None,
        },
    );
    assert!(!late.unwrap());
    assert_eq!(t.state(ids[0]), "RUNNING");
    assert_eq!(
        t.db.lock().unwrap().job(ids[0]).unwrap().unwrap().attempts,
        2
    );
}

#[test]
fn an_illegal_move_is_an_error_and_a_lost_race_changes_nothing() {
    let t = tier();
    let ids = t.submit("run1", "chain");
    let mut db = t.db.lock().unwrap();
    let tx = db.tx().unwrap();
    // the table has no way to RUNNING by a person's retry
    let e = job::change(
        &tx,
        ids[0],
        JobState::Running,
        Trigger::PersonRetry,
        "x",
        "t",
    );
    assert!(
        matches!(e, Err(MoveError::Illegal { .. })),
        "{e:?} should be refused"
    );
    let e = job::change(
        &tx,
        ids[0],
        JobState::JobFinished,
        Trigger::Acquired,
        "x",
        "t",
    );
    assert!(matches!(e, Err(MoveError::Illegal { .. })));
    // a legal move from a state the job is not in is a lost race: false, nothing written
    assert!(!job::change(&tx, ids[1], JobState::Running, Trigger::Acquired, "x", "t").unwrap());
    tx.commit().unwrap();
    assert_eq!(
        db.job(ids[1]).unwrap().unwrap().state,
        JobState::AwaitingParents
    );
    assert_eq!(db.events(ids[1]).unwrap().len(), 2, "created, then waiting");
    // through the database layer the error keeps its cause
    drop(db);
    let r: Result<bool, DbError> = t.db.lock().unwrap().apply(
        ids[0],
        &[job::Move {
            to: JobState::Running,
            trigger: Trigger::PersonRetry,
            reason: "x".into(),
        }],
    );
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("no legal move to RUNNING by PersonRetry"),
        "{msg}"
    );
}

#[test]
fn two_launchers_asking_at_once_never_get_the_same_job() {
    let t = tier();
    let mut all = Vec::new();
    for i in 0..6 {
        all.extend(t.submit(&format!("s{i}"), "chain"));
    }
    t.engine.round(false);
    let mut db = t.db.lock().unwrap();
    let a = db.add_launcher("default", "local", 1).unwrap();
    let b = db.add_launcher("default", "local", 1).unwrap();
    db.launcher_started(a, 3, "n1", &|_| Duration::ZERO)
        .unwrap();
    db.launcher_started(b, 3, "n2", &|_| Duration::ZERO)
        .unwrap();
    drop(db);
    let got_a = t.acquire(a, &[]);
    let got_b = t.acquire(b, &[]);
    assert_eq!(got_a.len() + got_b.len(), 6, "{got_a:?} {got_b:?}");
    assert!(got_a.iter().all(|j| !got_b.contains(j)));
    // full launchers get nothing more, however often they ask
    assert!(t.acquire(a, &[]).is_empty());
    for j in got_a.iter().chain(&got_b) {
        assert_eq!(t.running_events(*j), 1);
    }
}

#[test]
fn a_killed_job_is_ended_by_its_launcher_and_its_late_report_ignored() {
    let t = tier();
    let ids = t.submit("run1", "chain");
    t.engine.round(false);
    let launcher = t.first_launcher(1);
    assert_eq!(t.acquire(launcher, &[]), [ids[0]]);
    assert!(t.db.lock().unwrap().kill(ids[0]).unwrap());
    let resp =
        t.db.lock()
            .unwrap()
            .acquire(
                launcher,
                &AcquireRequest {
                    running: vec![ids[0]],
                    ..ask(1, 0, false)
                },
                &[],
            )
            .unwrap();
    assert_eq!(resp.kill, [ids[0]]);
    t.acquire(launcher, &[(ids[0], Outcome::Done)]);
    assert_eq!(t.state(ids[0]), "USER_KILLED");
    // and a person's retry puts it back in line with fresh attempts
    assert!(t.db.lock().unwrap().retry(ids[0]).unwrap());
    assert_eq!(t.acquire(launcher, &[]), [ids[0]]);
}

#[test]
fn a_closing_launcher_is_never_handed_back_the_job_its_ending_made_runnable() {
    let t = tier();
    let ids = t.submit("run1", "chain");
    t.engine.round(true);
    let first = t.first_launcher(1);
    assert_eq!(t.acquire(first, &[]), [ids[0]]);
    // its allocation is cancelled: the ending comes with `closing`, in one transaction
    let ending = ending(
        ids[0],
        first,
        Outcome::Timeout,
        None,
        "the allocation was cancelled while it ran",
        None,
    );
    let resp =
        t.db.lock()
            .unwrap()
            .acquire(first, &ask(0, 0, true), &[ending])
            .unwrap();
    assert!(resp.stop && resp.jobs.is_empty() && resp.applied == [true]);
    t.engine.react().unwrap();
    assert_eq!(t.state(ids[0]), "RESTART_READY");
    // its other request, still asking for work, is answered with a stop and nothing else
    let late =
        t.db.lock()
            .unwrap()
            .acquire(first, &ask(1, 0, false), &[])
            .unwrap();
    assert!(late.stop && late.jobs.is_empty() && late.kill.is_empty());
    let l = t.db.lock().unwrap().launchers(&[], None).unwrap()[0].clone();
    assert_eq!(l.state, LauncherState::Ending);
    // the job runs again on a new launcher, its second attempt
    t.engine.round(false);
    let second = t.db.lock().unwrap().launchers(&[], None).unwrap()[1].id;
    t.start_launcher(second, 1);
    assert_eq!(t.acquire(second, &[]), [ids[0]]);
    assert_eq!(
        t.db.lock().unwrap().job(ids[0]).unwrap().unwrap().attempts,
        2
    );
    // the ending launcher's exit takes nothing with it
    let moved =
        t.db.lock()
            .unwrap()
            .move_launcher(
                first,
                LauncherState::Finished,
                LauncherTrigger::Exited,
                "done",
            )
            .unwrap();
    assert_eq!(moved, Some(0));
    assert_eq!(t.state(ids[0]), "RUNNING");
}

#[test]
fn a_new_version_supersedes_only_what_has_not_started_and_the_running_job_finishes() {
    let t = tier();
    let v1 = t.submit("run1", "chain");
    t.engine.round(false);
    t.engine.round(false);
    let launcher = t.first_launcher(2);
    assert_eq!(t.acquire(launcher, &[]), [v1[0]]);
    assert_eq!(t.state(v1[0]), "RUNNING");
    // version 2 arrives while v1's first step runs
    let v2 = t.submit_version("run1", "chain", 2, true);
    assert_eq!(t.state(v1[0]), "RUNNING", "a running job is left alone");
    for id in &v1[1..] {
        assert_eq!(t.state(*id), "SUPERSEDED");
        assert_eq!(t.reason(*id), "superseded by v2");
    }
    // the running job finishes and is kept; nothing of v1 after it ever runs
    t.acquire(launcher, &[(v1[0], Outcome::Done)]);
    t.engine.react().unwrap();
    assert_eq!(t.state(v1[0]), "JOB_FINISHED");
    assert_eq!(t.state(v1[1]), "SUPERSEDED");
    // v2 runs to the end, and only v2's jobs are handed out
    for (i, id) in v2.iter().enumerate() {
        let got = t.acquire(launcher, &[]);
        assert_eq!(got, [*id], "step {i}");
        t.acquire(launcher, &[(*id, Outcome::Done)]);
        t.engine.react().unwrap();
        assert_eq!(t.state(*id), "JOB_FINISHED");
    }
    let outcome = |v: &[u64]| {
        let jobs: Vec<_> = {
            let db = t.db.lock().unwrap();
            v.iter().map(|id| db.job(*id).unwrap().unwrap()).collect()
        };
        crate::service::outcome::summarize(1, &jobs, "c.toml")
    };
    let o = outcome(&v1);
    assert_eq!(o.state, DagState::Superseded);
    assert_eq!(o.line(), "superseded by v2 (1/3 jobs had finished)");
    assert!(o.is_final());
    assert_eq!(outcome(&v2).state, DagState::Done);
    // with on_change = "resubmit", a third version leaves the second alone (here: finished)
    // and a fourth leaves the third's unstarted jobs alone
    let v3 = t.submit_version("run1", "chain", 3, false);
    t.engine.round(false);
    let _v4 = t.submit_version("run1", "chain", 4, false);
    assert!(v3.iter().all(|id| t.state(*id) != "SUPERSEDED"));
}

#[test]
fn a_streamed_stack_s_next_version_keeps_the_pairs_it_shares_and_its_twins_wait_for_them() {
    let t = tier();
    let name_of = |id: u64| t.db.lock().unwrap().job(id).unwrap().unwrap().name;
    // a partial version of 10 sections (as many as spread): p[0] … p[8] ready, w after them
    let v1 = t.submit_sections("s", "pairs", (1, 10), true, true);
    let pairs: Vec<String> = (0..9).map(|i| format!("p[{i}]")).collect();
    let v1_names: Vec<String> = v1.iter().map(|id| name_of(*id)).collect();
    assert_eq!(v1_names[..9], pairs[..]);
    assert_eq!(v1_names[9], "w");
    assert_eq!(t.state(v1[0]), "READY");
    // the sealed version of 11 sections arrives before any of them started
    let v2 = t.submit_sections("s", "pairs", (2, 11), true, false);
    for id in &v1 {
        assert_ne!(
            t.state(*id),
            "SUPERSEDED",
            "{} of the partial version",
            name_of(*id)
        );
    }
    // v2's p[0] … p[8] wait for their twins; p[9] has none and goes
    let waiting = t.db.lock().unwrap().waiting_for_twins().unwrap();
    let mut names: Vec<String> = waiting.iter().map(|id| name_of(*id)).collect();
    names.sort();
    assert_eq!(names, pairs);
    assert!(waiting.iter().all(|id| v2.contains(id)));
    // a sealed version is superseded as before: a third version takes v2's unstarted jobs
    let _v3 = t.submit_sections("s", "pairs", (3, 11), true, false);
    assert!(v2.iter().all(|id| t.state(*id) == "SUPERSEDED"));
    assert_eq!(
        t.state(v1[0]),
        "READY",
        "the partial version's job is still kept"
    );
}

#[test]
fn a_job_that_runs_out_of_wall_time_max_timeouts_times_is_held_with_its_run_times() {
    let t = tier();
    let ids = t.submit("long", "chain");
    t.engine.round(false);
    t.engine.round(false);
    let launcher = t.first_launcher(1);
    for minutes in [10u64, 11, 12] {
        assert_eq!(t.acquire(launcher, &[]), [ids[0]]);
        t.clock.advance(Duration::from_secs(minutes * 60));
        t.acquire(launcher, &[(ids[0], Outcome::Timeout)]);
        t.engine.react().unwrap();
    }
    assert_eq!(t.state(ids[0]), "FAILED");
    let reason = t.reason(ids[0]);
    assert!(
        reason.contains("a ran out of wall time 3 times (limit 1h; it ran 10m, 11m, 12m)")
            && reason.contains("raise the queue's walltime"),
        "{reason}"
    );
    assert!(
        t.acquire(launcher, &[]).is_empty(),
        "a held job is not handed out"
    );
    // a person's retry starts the count again: one more timeout runs it again
    t.db.lock().unwrap().retry(ids[0]).unwrap();
    t.engine.react().unwrap();
    assert_eq!(t.acquire(launcher, &[]), [ids[0]]);
    t.acquire(launcher, &[(ids[0], Outcome::Timeout)]);
    t.engine.react().unwrap();
    assert_eq!(t.state(ids[0]), "RESTART_READY");
}

#[test]
fn a_job_that_ran_out_of_wall_time_goes_only_to_a_launcher_with_room_for_how_long_it_ran() {
    let t = tier();
    let ids = t.submit("slow", "chain");
    t.engine.round(false);
    let first = t.first_launcher(1);
    assert_eq!(t.acquire(first, &[]), [ids[0]]);
    // it ran 30 minutes of the launcher's hour and did not finish
    t.clock.advance(Duration::from_secs(30 * 60));
    t.acquire(first, &[(ids[0], Outcome::Timeout)]);
    t.engine.react().unwrap();
    assert_eq!(t.state(ids[0]), "RESTART_READY");
    assert!(
        t.reason(ids[0]).contains("timed out after 30m"),
        "{}",
        t.reason(ids[0])
    );
    // the launcher has 29 minutes left: not room for it
    t.clock.advance(Duration::from_secs(60));
    assert!(t.acquire(first, &[]).is_empty());
    assert_eq!(t.state(ids[0]), "RESTART_READY");
    // a fresh one of an hour has
    let second =
        t.db.lock()
            .unwrap()
            .add_shaped_launcher("default", "local", (1, 3600), false)
            .unwrap();
    t.start_launcher(second, 1);
    assert_eq!(t.acquire(second, &[]), [ids[0]]);
}

#[test]
fn a_steps_learned_run_time_keeps_its_jobs_from_a_launcher_near_its_end() {
    let t = tier_with("[queues.more]\nscheduler = \"local\"\nslots = 1\n");
    let first = t.submit("one", "chain");
    t.engine.round(false);
    let launcher = t.first_launcher(2);
    assert_eq!(t.acquire(launcher, &[]), [first[0]]);
    // step a takes 20 minutes
    t.clock.advance(Duration::from_secs(20 * 60));
    assert!(t.acquire(launcher, &[(first[0], Outcome::Done)]).is_empty());
    t.engine.react().unwrap();
    let second = t.submit("two", "chain");
    t.engine.react().unwrap();
    assert_eq!(t.state(second[0]), "PREPROCESSED");
    // 25 minutes on, the launcher has 15 left: it takes the unmeasured step b, not a 20-minute a
    t.clock.advance(Duration::from_secs(25 * 60));
    assert_eq!(t.acquire(launcher, &[]), [first[1]]);
    assert_eq!(t.state(second[0]), "PREPROCESSED");
    // its idle slot does not count for the waiting job: the policy asks for a launcher
    let before = t.sched.submitted.lock().unwrap().len();
    let mut notes = Vec::new();
    t.engine.policy(&mut notes).unwrap();
    let launchers = t.db.lock().unwrap().launchers(&[], None).unwrap();
    assert_eq!(launchers.len(), 2, "{notes:?}");
    let fresh = launchers[1].id;
    assert_eq!(t.sched.submitted.lock().unwrap().len(), before + 1);
    t.start_launcher(fresh, 1);
    assert_eq!(t.acquire(fresh, &[]), [second[0]]);
}

#[test]
fn a_launcher_queued_past_max_queue_wait_is_withdrawn_when_a_window_would_start_one() {
    let t = tier_with(
        "[queues.hpc]\nscheduler = \"slurm\"\nsubmit = false\nbackfill = true\nmax_nodes = 4\nmax_queue_wait = \"10m\"\n",
    );
    let id = t.queued_launcher("hpc", 4, "batch-77");
    let state = |id: u64| {
        let db = t.db.lock().unwrap();
        let l = db.launchers(&[], None).unwrap();
        let l = l.iter().find(|l| l.id == id).unwrap();
        (l.state.as_str().to_string(), l.reason.clone())
    };
    // two nodes free for an hour, but it has waited only 9 minutes
    *t.sched.windows.lock().unwrap() = vec![crate::scheduler::window::Window {
        nodes: 2,
        lasts: Some(Duration::from_secs(3600)),
    }];
    t.clock.advance(Duration::from_secs(9 * 60));
    t.engine.round(true);
    t.engine.round(true);
    assert_eq!(state(id).0, "QUEUED");
    // past max_queue_wait: the windows are read, then it is withdrawn at the next look
    t.clock.advance(Duration::from_secs(2 * 60));
    t.engine.round(true);
    t.engine.round(true);
    let (s, why) = state(id);
    assert_eq!(s, "FINISHED", "{why}");
    assert!(
        why.contains("withdrawn after 11m") && why.contains("max_queue_wait"),
        "{why}"
    );
    assert_eq!(*t.sched.deleted.lock().unwrap(), ["batch-77"]);
}

#[test]
fn a_window_that_opens_while_a_fixed_launcher_waits_in_line_takes_a_launcher_beside_it() {
    let t = tier_edited(
        &[("submit = true ", "submit = false ")],
        "[queues.hpc]\nscheduler = \"slurm\"\nbackfill = true\nbackfill_every = \"1s\"\nmax_queued = 3\nmax_nodes = 4\nscheduler_min_interval = \"1s\"\n",
    );
    let launchers = || t.db.lock().unwrap().launchers(&[], None).unwrap();
    t.submit("s", "chain");
    // the machine is full: the windows are read, none fits, the fixed size goes
    for _ in 0..3 {
        t.engine.round(true);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let ls = launchers();
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert!(!ls[0].window && ls[0].state == LauncherState::Queued);
    // two nodes free for an hour: read at the next look, a launcher fitted to them goes
    // beside the waiting one, which keeps its place in line
    *t.sched.windows.lock().unwrap() = vec![crate::scheduler::window::Window {
        nodes: 2,
        lasts: Some(Duration::from_secs(3600)),
    }];
    for _ in 0..3 {
        t.engine.round(true);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let ls = launchers();
    assert_eq!(ls.len(), 2, "{ls:?}");
    assert!(ls[1].window, "{ls:?}");
    assert_eq!(ls[0].state, LauncherState::Queued);
    assert!(t.sched.deleted.lock().unwrap().is_empty());
    // and no third launcher follows: the window launcher covers the one runnable job
    t.engine.round(true);
    assert_eq!(launchers().len(), 2);
    // the window's launcher starts; past max_queue_wait the waiting one is not withdrawn:
    // another window's launcher could still go beside it (max_queued = 3), so it keeps its
    // place in line
    t.start_launcher(launchers()[1].id, 2);
    let waiting = launchers()[0].batch_id.clone();
    t.clock.advance(Duration::from_secs(11 * 60));
    for _ in 0..2 {
        t.engine.round(true);
        std::thread::sleep(Duration::from_millis(1100));
    }
    // (the started one, silent on this clock for 11 minutes, is lost and cancelled)
    assert!(!t.sched.deleted.lock().unwrap().contains(&waiting));
    assert_eq!(launchers()[0].state, LauncherState::Queued);
}

#[test]
fn a_queued_launcher_is_kept_when_no_window_would_start_one_sooner() {
    let t = tier_with(
        "[queues.hpc]\nscheduler = \"slurm\"\nsubmit = false\nbackfill = true\nmax_queue_wait = \"10m\"\n",
    );
    let id = t.queued_launcher("hpc", 1, "batch-78");
    // the machine is full: no window
    t.clock.advance(Duration::from_secs(3600));
    for _ in 0..3 {
        t.engine.round(true);
    }
    let db = t.db.lock().unwrap();
    let l = db.launchers(&[], None).unwrap();
    assert_eq!(
        l.iter().find(|l| l.id == id).unwrap().state.as_str(),
        "QUEUED"
    );
    assert!(t.sched.deleted.lock().unwrap().is_empty());
}

#[test]
fn a_partial_version_after_a_partial_one_plans_the_new_pair_and_supersedes_nothing() {
    let t = tier();
    let name_of = |id: u64| t.db.lock().unwrap().job(id).unwrap().unwrap().name;
    t.new_from.set(Some(0));
    let v1 = t.submit_sections("s", "pairs", (1, 10), true, true);
    assert_eq!(v1.len(), 9, "p[0] … p[8]");
    // one section more: the new partial version holds its one new pair only
    t.new_from.set(Some(10));
    let v2 = t.submit_sections("s", "pairs", (2, 11), true, true);
    let v2_names: Vec<String> = v2.iter().map(|id| name_of(*id)).collect();
    assert_eq!(v2_names, ["p[9]"]);
    assert!(
        v1.iter().all(|id| t.state(*id) == "READY"),
        "nothing of v1 superseded"
    );
    // the seal plans every pair; each one's twin is in whichever version planned it
    let v3 = t.submit_sections("s", "pairs", (3, 11), true, false);
    let waiting = t.db.lock().unwrap().waiting_for_twins().unwrap();
    let mut names: Vec<String> = waiting.iter().map(|id| name_of(*id)).collect();
    names.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("p[{i}]")).collect();
    want.sort();
    assert_eq!(names, want);
    assert!(waiting.iter().all(|id| v3.contains(id)));
}

#[test]
fn a_launcher_holds_short_jobs_ahead_of_its_slots_and_gives_back_unstarted_ones_for_free() {
    let mut wide = String::from("[workflows.wide]\n");
    for step in ["a", "b", "c", "d", "e"] {
        wide += &format!("[[workflows.wide.steps]]\nname = \"{step}\"\ncommand = \"true\"\n");
    }
    let t = tier_with(&wide);
    let jobs = t.submit("many", "wide");
    t.engine.round(false);
    assert_eq!(jobs.len(), 5, "five independent jobs");
    let launcher = t.first_launcher(1);
    // one slot: one job for it and, asked for, one held ahead of it
    assert_eq!(t.acquire_ahead(launcher, &[], 1), jobs[..2]);
    assert!(
        t.acquire_ahead(launcher, &[], 1).is_empty(),
        "its slot and its one ahead are full"
    );
    // a job known to run 10 minutes is never held ahead: the next short one is
    t.db.lock()
        .unwrap()
        .set_expected(jobs[2], Some(Duration::from_secs(600)))
        .unwrap();
    assert_eq!(
        t.acquire_ahead(launcher, &[(jobs[0], Outcome::Done)], 1),
        [jobs[3]]
    );
    assert_eq!(t.state(jobs[2]), "PREPROCESSED");
    // ending, it gives the held one back: in line again, its attempt not spent
    let back = ending(
        jobs[3],
        launcher,
        Outcome::Unstarted,
        None,
        "not started: launcher ending",
        None,
    );
    let resp =
        t.db.lock()
            .unwrap()
            .acquire(launcher, &ask(0, 0, true), &[back])
            .unwrap();
    assert_eq!(resp.applied, [true]);
    assert_eq!(t.state(jobs[3]), "RESTART_READY");
    let job = t.db.lock().unwrap().job(jobs[3]).unwrap().unwrap();
    assert_eq!(job.attempts, 0, "an unstarted job spent no attempt");
    // the long job still goes to an idle slot
    let fresh = {
        let mut db = t.db.lock().unwrap();
        db.add_launcher("default", "local", 1).unwrap()
    };
    t.start_launcher(fresh, 1);
    assert_eq!(t.acquire(fresh, &[]), [jobs[2]]);
}

#[test]
fn a_launcher_s_own_timing_is_the_learned_run_time_not_its_wait_ahead_of_a_slot() {
    let t = tier();
    let ids = t.submit("timed", "chain");
    t.engine.round(false);
    let launcher = t.first_launcher(1);
    assert_eq!(t.acquire(launcher, &[]), [ids[0]]);
    // handed over ten minutes ago, it ran for 3 s of them
    t.clock.advance(Duration::from_secs(600));
    let done = ending(
        ids[0],
        launcher,
        Outcome::Done,
        Some(0),
        "a finished",
        Some(3_000),
    );
    t.db.lock()
        .unwrap()
        .acquire(launcher, &ask(1, 0, false), &[done])
        .unwrap();
    let (_, runs) =
        t.db.lock()
            .unwrap()
            .recent_runtimes("chain", "a", 0)
            .unwrap();
    assert_eq!(
        runs,
        [3.0],
        "the launcher's 3 s, not the 600 s since it was handed over"
    );
}

#[test]
fn the_engine_s_watch_keeps_only_the_newest_run_times_of_a_step() {
    let t = tier();
    t.engine.round(false);
    let mut firsts = Vec::new();
    for i in 0..runtime::RECENT + 5 {
        firsts.push(t.submit(&format!("s{i}"), "chain")[0]);
    }
    t.engine.round(false);
    let launcher = t.first_launcher(1);
    for (n, job) in firsts.iter().enumerate() {
        assert_eq!(t.acquire(launcher, &[]), [*job]);
        let done = ending(
            *job,
            launcher,
            Outcome::Done,
            Some(0),
            "a finished",
            Some(1_000 * n as u64),
        );
        t.db.lock()
            .unwrap()
            .acquire(launcher, &ask(0, 0, false), &[done])
            .unwrap();
    }
    let all = |t: &Tier| {
        t.db.lock()
            .unwrap()
            .recent_runtimes("chain", "a", 0)
            .unwrap()
            .1
    };
    assert_eq!(
        all(&t).len(),
        runtime::RECENT,
        "an estimate reads only the newest"
    );
    // the engine's watch removes the five oldest; nothing is left for a second pass
    t.engine.round(true);
    assert_eq!(t.db.lock().unwrap().prune_runtimes().unwrap(), 0);
    let kept = all(&t);
    assert_eq!(
        kept.first(),
        Some(&((runtime::RECENT + 4) as f64)),
        "the newest stayed"
    );
    assert_eq!(kept.last(), Some(&5.0), "the oldest went");
}
