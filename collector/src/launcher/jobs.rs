//! The jobs a launcher runs: each started on free nodes in its own process group with the
//! site's launch template, its exit reaped the instant it happens, failures held back a
//! moment (an allocation being cancelled kills its jobs first), and every job ended when the
//! launcher ends.

use super::*;

pub(super) struct Running {
    pub(super) job: LaunchedJob,
    pub(super) pgid: u32,
    pub(super) nodes: Vec<String>,
    pub(super) err_path: PathBuf,
    /// When it was told to end (SIGTERM sent), for the SIGKILL that follows.
    pub(super) ending: Option<Instant>,
    /// How to report it once it exits, when the launcher ended it.
    pub(super) ended_why: Option<String>,
    /// When it started: its run time, not counting a wait ahead of a free node.
    pub(super) started: Instant,
}

/// One thread that collects every job's exit as it happens (`waitpid` on any child), rather
/// than a thread per job: at a thousand short jobs a second, starting a thread per job cost
/// more than the jobs. The launcher starts no other processes.
pub(super) struct Reaper {
    pub(super) live: Mutex<usize>,
    pub(super) more: std::sync::Condvar,
}

impl Reaper {
    pub(super) fn start(events: Sender<Event>) -> Arc<Reaper> {
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

    pub(super) fn started(&self) {
        if let Ok(mut n) = self.live.lock() {
            *n += 1;
            self.more.notify_one();
        }
    }

    pub(super) fn run(&self, events: Sender<Event>) {
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

impl Launcher {
    pub(super) fn start_waiting(&mut self) {
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
    pub(super) fn not_started(
        &mut self,
        job: u64,
        nodes: Vec<String>,
        outcome: Outcome,
        why: String,
    ) {
        self.free.extend(nodes);
        self.report(job, outcome, None, why);
    }

    pub(super) fn start(&mut self, job: LaunchedJob) {
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
                        started: Instant::now(),
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
    pub(super) fn exited(&mut self, id: u64, status: ExitStatus, stop: &AtomicBool) {
        let Some(mut r) = self.running.remove(&id) else {
            return;
        };
        self.free.append(&mut r.nodes);
        let ran = r.started.elapsed();
        if r.ended_why.is_none() && r.ending.is_none() {
            // every run that ended by itself says how long this launcher's jobs take: a long
            // one that failed stops the holding as surely as one that finished
            self.recent.ran(ran);
            let ahead = self.recent.ahead(self.slots);
            self.ahead.store(ahead, Ordering::SeqCst);
        }
        if let Some(why) = r.ended_why {
            self.report(id, Outcome::Timeout, status.code(), why);
        } else if r.ending.is_some() {
            // the service asked for it to end (a kill): it no longer listens for its report
        } else if status.success() {
            let done = format!("{} finished", r.job.name);
            self.report_run(id, Outcome::Done, Some(0), done, Some(ran));
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

    pub(super) fn release_held(&mut self, stop: &AtomicBool, all: bool) {
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
    pub(super) fn end_all(&mut self, why: &str) {
        for r in self.running.values_mut() {
            if r.ended_why.is_none() {
                r.ended_why = Some(why.to_string());
            }
            if r.ending.is_none() {
                process::signal_group(r.pgid, libc::SIGTERM);
                r.ending = Some(Instant::now());
            }
        }
        // held ahead of a node and never started: back in line, no attempt spent
        for j in std::mem::take(&mut self.waiting) {
            self.report(
                j.id,
                Outcome::Unstarted,
                None,
                format!("not started: {why}"),
            );
        }
    }

    /// SIGKILL for what did not end within 5 s of its SIGTERM.
    pub(super) fn force(&mut self) {
        for r in self.running.values_mut() {
            if r.ending
                .is_some_and(|t| t.elapsed() >= Duration::from_secs(5))
            {
                process::signal_group(r.pgid, libc::SIGKILL);
            }
        }
    }
}
