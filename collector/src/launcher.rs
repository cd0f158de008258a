//! `beamflow-collector launcher`: runs inside a batch allocation and packs jobs onto its idle
//! nodes, as Balsam's launcher did.
//!
//! It talks only to the service API (never to the database file), asks for jobs that fit its
//! idle nodes, starts each with the site's launch template in the job's work folder, reports
//! every ending, and heartbeats with every request. It stops launching and ends running jobs
//! before the wall time runs out (they time out and run again elsewhere), ends them too when
//! the scheduler cancels it (SIGTERM), and exits after `idle_exit` with nothing to do. Each job
//! runs in its own process group with core dumps off, so ending it ends everything it started
//! and an aborting AlignTK leaves no 24 MB `core` behind.

use crate::scheduler::default_launch;
use beamflow_config::{argv, Config, QueueSection, SchedulerKind};
use beamflow_protocol::api::{
    AcquireRequest, Client, LaunchedJob, LauncherStart, Outcome, ReportRequest,
};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a launcher could not run.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// The queue is not in the config.
    #[error("queue `{0}` is not defined in the config ([queues.{0}])")]
    UnknownQueue(String),
    /// The queue's launch template cannot be used.
    #[error("key `queues.{0}.launch`: {1}")]
    BadLaunch(String, String),
    /// The service never answered.
    #[error("the collector service did not answer for {0:?}: {1}")]
    NoService(Duration, String),
}

struct Running {
    job: LaunchedJob,
    child: Child,
    nodes: Vec<String>,
    err_path: PathBuf,
}

/// Expands a Slurm hostlist (`nid[001-003,007],login1`) into host names.
pub fn expand_hostlist(list: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for c in list.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    let mut out = Vec::new();
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        let (Some(open), Some(close)) = (p.find('['), p.find(']')) else {
            out.push(p);
            continue;
        };
        let (prefix, ranges, suffix) = (&p[..open], &p[open + 1..close], &p[close + 1..]);
        for r in ranges.split(',') {
            match r.split_once('-') {
                Some((a, b)) => {
                    let (Ok(x), Ok(y)) = (a.parse::<u64>(), b.parse::<u64>()) else {
                        continue;
                    };
                    for i in x..=y {
                        out.push(format!("{prefix}{i:0w$}{suffix}", w = a.len()));
                    }
                }
                None => out.push(format!("{prefix}{r}{suffix}")),
            }
        }
    }
    out
}

/// The nodes of this allocation, from the scheduler's environment.
pub fn detect_nodes(q: &QueueSection) -> Vec<String> {
    if q.scheduler == SchedulerKind::Local {
        return (0..crate::engine::local_slots(q))
            .map(|i| format!("local-{i}"))
            .collect();
    }
    if let Ok(list) = std::env::var("SLURM_JOB_NODELIST") {
        let v = expand_hostlist(&list);
        if !v.is_empty() {
            return v;
        }
    }
    if let Ok(file) = std::env::var("PBS_NODEFILE") {
        if let Ok(text) = std::fs::read_to_string(file) {
            let mut v: Vec<String> = Vec::new();
            for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !v.iter().any(|x| x == l) {
                    v.push(l.to_string());
                }
            }
            if !v.is_empty() {
                return v;
            }
        }
    }
    if let Some(n) = std::env::var("COBALT_JOBSIZE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        let part = std::env::var("COBALT_PARTNAME").unwrap_or_else(|_| "cobalt".into());
        return (0..n).map(|i| format!("{part}-{i}")).collect();
    }
    vec![hostname()]
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Fills a launch template (split into words when the config loaded) for one job: the word
/// `{command}` becomes the job's whole argument vector, other placeholders are filled inside
/// their word. The result is run as it is, never through a shell.
pub fn launch_argv(template: &[String], job: &LaunchedJob, hostfile: &Path) -> Vec<String> {
    let ranks = job.nodes * job.ranks_per_node;
    let lookup = |n: &str| -> Option<String> {
        Some(match n {
            "nodes" => job.nodes.to_string(),
            "ranks_per_node" => job.ranks_per_node.to_string(),
            "ranks" => ranks.to_string(),
            "threads" => job.threads_per_rank.to_string(),
            "affinity" => job.cpu_affinity.clone(),
            "hostfile" => hostfile.display().to_string(),
            _ => return None,
        })
    };
    let mut out = Vec::with_capacity(template.len() + job.argv.len());
    for (i, w) in template.iter().enumerate() {
        if w == "{command}" {
            out.extend(job.argv.iter().cloned());
        } else {
            out.push(argv::fill(w, &lookup, argv::is_shell_script(template, i)));
        }
    }
    out
}

/// Why a program cannot run at all, checked before starting it: a missing or
/// non-executable program is a configuration error, not worth a retry storm.
pub fn missing_program(prog: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.is_empty() {
        return Some("the command is empty; check the workflow's steps".into());
    }
    if prog.contains('/') {
        let p = Path::new(prog);
        if !p.exists() {
            return Some(format!(
                "{prog} does not exist; check the workflow's bin folder"
            ));
        }
        if !exec(p) {
            return Some(format!(
                "{prog} is not executable; chmod +x it or fix the workflow's bin folder"
            ));
        }
        return None;
    }
    let path = std::env::var("PATH").unwrap_or_default();
    if path.split(':').any(|d| exec(&Path::new(d).join(prog))) {
        None
    } else {
        Some(format!(
            "{prog} is not on PATH; set the workflow's bin folder"
        ))
    }
}

/// Whether a stderr line is part of a crash report (OpenMPI's backtrace, glibc's abort
/// banner) rather than the tool saying what went wrong.
fn is_backtrace(line: &str) -> bool {
    let t = line.trim();
    t.is_empty()
        || t.starts_with("***")
        || (t.starts_with('[')
            && t.contains("] ")
            && (t.contains("] [")
                || t.contains("***")
                || t.contains("Signal")
                || t.contains("Failing at")))
}

/// What explains a failed run, from its stderr file: the first lines that are not a
/// backtrace (a tool says why before it aborts), then the last lines, then where all of it
/// is. Reads at most 16 KiB from each end, whatever the file's size.
pub fn explain(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return String::new();
    }
    let mut head = String::new();
    let _ = (&mut f).take(16 << 10).read_to_string(&mut head);
    let mut tail = String::new();
    if len > 16 << 10 {
        let _ = f.seek(SeekFrom::Start(len - (16 << 10)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        tail = String::from_utf8_lossy(&buf).into_owned();
    } else {
        tail.clone_from(&head);
    }
    let first: Vec<&str> = head
        .lines()
        .filter(|l| !is_backtrace(l))
        .map(str::trim)
        .take(3)
        .collect();
    let last: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !first.contains(l))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let mut out = first.join(" | ");
    if !last.is_empty() {
        if !out.is_empty() {
            out.push_str(" … ");
        }
        out.push_str(&last.join(" | "));
    }
    format!("{out} (all of it in {})", path.display())
}

fn end_group(child: &mut Child) {
    let pg = child.id() as i32;
    unsafe {
        libc::kill(-pg, libc::SIGTERM);
    }
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe {
        libc::kill(-pg, libc::SIGKILL);
    }
    let _ = child.wait();
}

struct Launcher {
    id: u64,
    client: Client,
    state_dir: PathBuf,
    template: Vec<String>,
    free: Vec<String>,
    running: HashMap<u64, Running>,
    reports: Vec<(u64, ReportRequest)>,
}

impl Launcher {
    fn report(&mut self, job: u64, outcome: Outcome, exit_code: Option<i32>, message: String) {
        tracing::info!(job, ?outcome, exit_code, "{message}");
        self.reports.push((
            job,
            ReportRequest {
                launcher: self.id,
                outcome,
                exit_code,
                message,
            },
        ));
    }

    fn flush_reports(&mut self) {
        let mut keep = Vec::new();
        for (job, r) in std::mem::take(&mut self.reports) {
            match self.client.report(job, &r) {
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    if let Ok(c) = Client::from_state_dir(&self.state_dir) {
                        self.client = c;
                    }
                    keep.push((job, r));
                }
                Err(e) => tracing::warn!(job, "report refused: {e}"),
            }
        }
        self.reports = keep;
    }

    fn start(&mut self, job: LaunchedJob) {
        let n = job.nodes as usize;
        let nodes: Vec<String> = self.free.drain(..n.min(self.free.len())).collect();
        let work = PathBuf::from(&job.work_dir);
        let program = job.argv.first().cloned().unwrap_or_default();
        if let Some(why) = missing_program(&program) {
            self.free.extend(nodes);
            self.report(job.id, Outcome::Missing, None, why);
            return;
        }
        let hostfile = work.join(format!(".beamflow-hosts-{}", job.id));
        let _ = std::fs::write(&hostfile, nodes.join("\n") + "\n");
        let args = launch_argv(&self.template, &job, &hostfile);
        let line = argv::render(&args);
        let out_path = work.join(format!("{}.out", job.name));
        let err_path = work.join(format!("{}.err", job.name));
        let files = std::fs::File::create(&out_path)
            .and_then(|o| std::fs::File::create(&err_path).map(|e| (o, e)));
        let (out, err) = match files {
            Ok(f) => f,
            Err(e) => {
                self.free.extend(nodes);
                self.report(
                    job.id,
                    Outcome::Error,
                    None,
                    format!("cannot write its output in {}: {e}", work.display()),
                );
                return;
            }
        };
        let Some((prog, rest)) = args.split_first() else {
            self.free.extend(nodes);
            self.report(
                job.id,
                Outcome::Missing,
                None,
                "the command is empty".into(),
            );
            return;
        };
        let mut cmd = Command::new(prog);
        cmd.args(rest)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        cmd.envs(&job.env)
            .env("OMP_NUM_THREADS", job.threads_per_rank.to_string())
            .env("BEAMFLOW_JOB_ID", job.id.to_string());
        cmd.process_group(0);
        unsafe {
            cmd.pre_exec(|| {
                let zero = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &zero);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => {
                tracing::info!(job = job.id, stack = %job.stack, step = %job.name, attempt = job.attempt, "started: {line}");
                self.running.insert(
                    job.id,
                    Running {
                        job,
                        child,
                        nodes,
                        err_path,
                    },
                );
            }
            Err(e) => {
                self.free.extend(nodes);
                self.report(
                    job.id,
                    Outcome::Error,
                    None,
                    format!("cannot start `{line}`: {e}"),
                );
            }
        }
    }

    fn reap(&mut self, stop: &AtomicBool) {
        let done: Vec<u64> = self
            .running
            .iter_mut()
            .filter_map(|(id, r)| matches!(r.child.try_wait(), Ok(Some(_))).then_some(*id))
            .collect();
        let failed = done.iter().any(|id| {
            let r = self.running.get_mut(id).expect("listed");
            r.child
                .try_wait()
                .ok()
                .flatten()
                .is_some_and(|s| !s.success())
        });
        if failed {
            // a scheduler cancelling the allocation signals the jobs and us together: give our
            // signal a moment, so that such a job counts as timed out, not as failed
            std::thread::sleep(Duration::from_millis(300));
        }
        let cancelled = stop.load(Ordering::SeqCst);
        for id in done {
            let mut r = self.running.remove(&id).expect("listed");
            let status = r.child.wait().ok();
            self.free.append(&mut r.nodes);
            let code = status.and_then(|s| s.code());
            let stderr = explain(&r.err_path);
            match code {
                Some(0) => self.report(
                    id,
                    Outcome::Done,
                    Some(0),
                    format!("{} finished", r.job.name),
                ),
                _ if cancelled => self.report(
                    id,
                    Outcome::Timeout,
                    code,
                    "the allocation was cancelled while it ran".into(),
                ),
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
                    // no shell in between any more: count a signal as shells do (abort() is
                    // exit 134, as AlignTK's users know it)
                    use std::os::unix::process::ExitStatusExt;
                    let sig = status.and_then(|s| s.signal()).unwrap_or(0);
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

    fn end_all(&mut self, why: &str) {
        for (id, mut r) in std::mem::take(&mut self.running) {
            end_group(&mut r.child);
            self.free.append(&mut r.nodes);
            self.report(id, Outcome::Timeout, None, why.to_string());
        }
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
    let wait = cfg.service.heartbeat_timeout.0;
    let client = loop {
        match Client::from_state_dir(&cfg.collector.state_dir) {
            Ok(c) => match c.launcher_start(
                id,
                &LauncherStart {
                    host: hostname(),
                    nodes: nodes.clone(),
                    batch_id: batch_id(),
                },
            ) {
                Ok(_) => break c,
                Err(e) if started.elapsed() > wait => {
                    return Err(LauncherError::NoService(wait, e.to_string()))
                }
                Err(e) => tracing::warn!("service not answering yet: {e}"),
            },
            Err(e) if started.elapsed() > wait => {
                return Err(LauncherError::NoService(wait, e.to_string()))
            }
            Err(e) => tracing::warn!("service not reachable yet: {e}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    tracing::info!(launcher = id, queue, nodes = nodes.len(), walltime = ?walltime, "launcher up");
    let mut l = Launcher {
        id,
        client,
        state_dir: cfg.collector.state_dir.clone(),
        template,
        free: nodes,
        running: HashMap::new(),
        reports: Vec::new(),
    };
    let mut idle_since = Instant::now();
    // ask again at once while work keeps coming or a slot just freed; otherwise every `poll`,
    // which is also the heartbeat
    let mut last_ask: Option<Instant> = None;
    let mut eager = true;
    let reason = loop {
        let before = l.running.len();
        l.reap(&stop);
        eager |= l.running.len() < before;
        if stop.load(Ordering::SeqCst) {
            l.end_all("the launcher was stopped (its allocation was cancelled)");
            break "stopped by a signal".to_string();
        }
        if Instant::now() >= deadline {
            l.end_all("the allocation's wall time was about to run out");
            break "wall time".to_string();
        }
        let due = last_ask.is_none_or(|t| t.elapsed() >= q.poll.0);
        if due || (eager && !l.free.is_empty()) {
            let req = AcquireRequest {
                free_nodes: l.free.len() as u32,
                max_jobs: l.free.len() as u32,
                running: l.running.keys().copied().collect(),
            };
            last_ask = Some(Instant::now());
            eager = false;
            match l.client.acquire(id, &req) {
                Ok(resp) => {
                    if resp.stop {
                        l.end_all("the service declared this launcher ended");
                        break "told to stop by the service".to_string();
                    }
                    for k in resp.kill {
                        if let Some(mut r) = l.running.remove(&k) {
                            tracing::info!(job = k, "ending a job the service no longer wants");
                            end_group(&mut r.child);
                            l.free.append(&mut r.nodes);
                        }
                    }
                    eager = !resp.jobs.is_empty();
                    for job in resp.jobs {
                        l.start(job);
                    }
                }
                Err(_) if !l.state_dir.exists() => {
                    // the collector was removed, not restarted: nobody will ever answer
                    l.end_all("the collector's state folder was removed");
                    break format!("state folder {} removed", l.state_dir.display());
                }
                Err(e) => {
                    tracing::warn!("service not answering: {e}; jobs keep running");
                    // a restarted service has a new address and token: read server-info again
                    if let Ok(c) = Client::from_state_dir(&l.state_dir) {
                        l.client = c;
                    }
                }
            }
        }
        l.flush_reports();
        if !l.running.is_empty() {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= q.idle_exit.0 {
            break format!("idle for {}", q.idle_exit);
        }
        // short naps while jobs run, so that endings are noticed and reported promptly
        std::thread::sleep(if l.running.is_empty() {
            q.poll.0
        } else {
            q.poll.0.min(Duration::from_millis(10))
        });
    };
    l.reap(&stop);
    for _ in 0..30 {
        l.flush_reports();
        if l.reports.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = l.client.launcher_end(id, &reason);
    tracing::info!(launcher = id, "launcher exiting: {reason}");
    Ok(())
}

fn batch_id() -> Option<String> {
    ["SLURM_JOB_ID", "PBS_JOBID", "COBALT_JOBID"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostlists_expand() {
        assert_eq!(
            expand_hostlist("nid[001-003,007],login1"),
            ["nid001", "nid002", "nid003", "nid007", "login1"]
        );
        assert_eq!(expand_hostlist("x3001c0s7b0n0"), ["x3001c0s7b0n0"]);
        assert_eq!(expand_hostlist("a[8-10]"), ["a8", "a9", "a10"]);
    }

    fn job(argv: &[&str]) -> LaunchedJob {
        LaunchedJob {
            id: 1,
            name: "register".into(),
            stack: "s".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            work_dir: "/w".into(),
            nodes: 2,
            ranks_per_node: 4,
            threads_per_rank: 8,
            cpu_affinity: "depth".into(),
            env: Default::default(),
            attempt: 1,
        }
    }

    #[test]
    fn templates_fill_every_placeholder_and_keep_the_job_s_arguments_whole() {
        let job = job(&["register", "-fixed", "$(id>PWNED) x;y"]);
        let line = |k| {
            let t = beamflow_config::launch_argv(default_launch(k)).unwrap();
            argv::render(&launch_argv(&t, &job, Path::new("/h")))
        };
        assert_eq!(
            line(SchedulerKind::Cobalt),
            "aprun -n 8 -N 4 -d 8 -cc depth register -fixed '$(id>PWNED) x;y'"
        );
        assert_eq!(
            line(SchedulerKind::Pbs),
            "mpiexec -n 8 --ppn 4 --depth 8 --cpu-bind depth --hostfile /h register -fixed '$(id>PWNED) x;y'"
        );
        assert_eq!(
            line(SchedulerKind::Slurm),
            "srun -N 2 -n 8 --cpus-per-task 8 register -fixed '$(id>PWNED) x;y'"
        );
        let t = beamflow_config::launch_argv(default_launch(SchedulerKind::Local)).unwrap();
        assert_eq!(launch_argv(&t, &job, Path::new("/h")), job.argv);
    }

    #[test]
    fn a_failure_is_explained_by_its_first_words_not_its_backtrace() {
        let d = tempfile::tempdir().unwrap();
        let err = d.path().join("find_rst.err");
        // what the real find_rst writes on a 16-bit section, recorded here
        std::fs::write(
            &err,
            "Either undefined or unsupported number of bits per sample (bps = 16) in tiff image images/a.tif\n\
             [vm:13215] *** Process received signal ***\n\
             [vm:13215] Signal: Aborted (6)\n\
             [vm:13215] Signal code:  (-6)\n\
             [vm:13215] [ 0] /lib/x86_64-linux-gnu/libc.so.6(+0x3c050)[0x7f5c9d439050]\n\
             [vm:13215] [12] /tmp/aligntk-1.0.2/bin/find_rst(+0x3761)[0x5648a92d6761]\n\
             [vm:13215] *** End of error message ***\n",
        )
        .unwrap();
        let e = explain(&err);
        assert!(
            e.starts_with("Either undefined or unsupported number of bits per sample (bps = 16)"),
            "{e}"
        );
        assert!(
            e.ends_with(&format!("(all of it in {})", err.display())),
            "{e}"
        );
        assert!(explain(&d.path().join("none.err")).is_empty());
    }

    #[test]
    fn missing_programs_are_named() {
        assert!(missing_program("/nonexistent/find_rst")
            .unwrap()
            .contains("/nonexistent/find_rst does not exist"));
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("find_rst");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let e = missing_program(&plain.display().to_string()).unwrap();
        assert!(e.contains("is not executable"), "{e}");
        assert!(missing_program("sh").is_none());
        assert!(missing_program("no-such-program-here")
            .unwrap()
            .contains("not on PATH"));
    }
}
