//! `beamflow-bench backfill`: a replay on the real three-node Slurm of the tests. The benchmark
//! plays the other users: a backlog of their jobs at the start, then one every `--every`
//! seconds, each of a random size (1 to 3 nodes, whole nodes), time limit (1 to `--max-limit`
//! minutes) and
//! length (half to nine tenths of its limit), the same seeded stream in each mode. A minute in,
//! beamflow gets a stack of `--jobs` + 1 sections whose workflow runs one job per pair, each
//! `sleep --job-secs` on one node (5 s: what the real AlignTK's find_rst or register took per
//! 512² pair in `beamflow-bench stream`). Once with the queue's fixed size (3 nodes × 30 min),
//! once with `backfill = true`, in the same run; for each: the time from the first of its jobs
//! runnable to the last finished, the node-minutes its launchers held (sampled from `squeue`
//! every second) and of them idle (held less the jobs' own run times), and the calls the
//! service made to Slurm (counted by wrappers first on its `PATH`).

use beamflow_e2e::slurm::cluster;
use beamflow_e2e::wrappers::{calls, counting_wrappers, wrapper_paths};
use beamflow_e2e::{wait_until, Site};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the replay is asked to do.
pub struct Replay {
    /// beamflow's jobs.
    pub jobs: u32,
    /// Each job's length.
    pub job_secs: u32,
    /// Seconds between other users' jobs after the backlog.
    pub every: u64,
    /// Other users' jobs waiting at the start.
    pub backlog: u32,
    /// The stream's seed.
    pub seed: u64,
    /// The longest time limit of another user's job, in minutes (the shortest is 1).
    pub max_limit: u32,
}

/// SplitMix64: the same stream of other users' jobs in every mode, without a crate for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Another user's job: nodes, time limit in minutes (1 to `max_limit`), seconds it runs.
fn other_job(rng: &mut Rng, max_limit: u32) -> (u32, u32, u32) {
    let u = rng.unit();
    let nodes = if u < 0.45 {
        1
    } else if u < 0.8 {
        2
    } else {
        3
    };
    let limit = 1 + (rng.next() % max_limit.max(1) as u64) as u32;
    let runs = (limit as f64 * 60.0 * (0.5 + 0.4 * rng.unit())) as u32;
    (nodes, limit, runs)
}

fn slurm(conf: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("SLURM_CONF", conf)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The other users: submits the backlog, then a job every `every` seconds until `stop`.
fn other_users(
    conf: String,
    r: &Replay,
    stop: Arc<AtomicBool>,
    ids: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    let (seed, backlog, every, max_limit) = (r.seed, r.backlog, r.every, r.max_limit);
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let start = Instant::now();
        let mut i = 0u32;
        while !stop.load(Ordering::SeqCst) {
            // the backlog at once, then one every `every`
            let due = Duration::from_secs(every * (i + 1).saturating_sub(backlog) as u64);
            if start.elapsed() < due {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let (nodes, limit, runs) = other_job(&mut rng, max_limit);
            let id = slurm(
                &conf,
                "sbatch",
                &[
                    "--parsable",
                    "--exclusive",
                    "-o",
                    "/dev/null",
                    "-J",
                    &format!("other-{i}"),
                    "-N",
                    &nodes.to_string(),
                    "-t",
                    &limit.to_string(),
                    "--wrap",
                    &format!("sleep {runs}"),
                ],
            );
            ids.lock().unwrap().push(id.trim().to_string());
            i += 1;
        }
    })
}

/// One mode's measures.
struct Row {
    mode: &'static str,
    finish: f64,
    launchers: String,
    held: f64,
    busy: f64,
    squeue: usize,
    calls: usize,
    closest: f64,
    span: f64,
}

/// Seconds since the epoch of an RFC 3339 stamp.
fn at(stamp: &str) -> Option<f64> {
    humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z'))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

fn one(conf: &str, r: &Replay, backfill: bool) -> Row {
    let mode = if backfill { "backfill" } else { "fixed size" };
    eprintln!("beamflow-bench backfill: {mode}: waiting for an idle cluster");
    slurm(conf, "scancel", &["--me"]);
    wait_until(Duration::from_secs(300), "an idle cluster", || {
        slurm(conf, "squeue", &["-h"]).trim().is_empty()
    });
    let site = Site::new("1s", "");
    site.edit_config(
        "scheduler = \"local\"",
        &format!(
            "scheduler = \"slurm\"\nqueue = \"debug\"\nextra_args = [\"--exclusive\"]\nscheduler_min_interval = \"5s\"\nbackfill = {backfill}\nbackfill_every = \"10s\"\nmin_walltime = \"1m\"\nwalltime_pad = \"10s\"\nwalltime_margin = \"15s\"\nmax_queue_wait = \"5m\""
        ),
    );
    site.edit_config("max_nodes = 1", "max_nodes = 3");
    site.edit_config("max_queued = 1", "max_queued = 3");
    site.edit_config("walltime = \"1h\"", "walltime = \"30m\"");
    site.edit_config("idle_exit = \"2s\"", "idle_exit = \"10s\"");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"replay\"");
    site.append_config(&format!(
        "[workflows.replay]\n[[workflows.replay.steps]]\nname = \"pair\"\ncommand = \"sleep {}\"\neach = \"pair\"\nchunk = 1\n",
        r.job_secs
    ));
    let (bin, log) = wrapper_paths(&site.dir);
    let path = counting_wrappers(&bin, &["squeue", "sbatch", "sinfo", "scancel"], &log);
    let stop = Arc::new(AtomicBool::new(false));
    let others = Arc::new(Mutex::new(Vec::new()));
    let stream = other_users(conf.to_string(), r, stop.clone(), others.clone());
    let began = Instant::now();
    let _service = site.start_service_env(&[("SLURM_CONF", conf), ("PATH", &path)]);
    let dir = site.write_stack("replay", r.jobs + 1, 32);
    std::thread::sleep(Duration::from_secs(60).saturating_sub(began.elapsed()));
    eprintln!("beamflow-bench backfill: {mode}: {} jobs submitted", r.jobs);
    site.push(&dir);
    // node-seconds beamflow's batch jobs held, sampled every second until they have all left
    let mut held = 0.0;
    let mut last = Instant::now();
    let mut done_at: Option<Instant> = None;
    let mut printed = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let q = slurm(conf, "squeue", &["-h", "-t", "R", "-o", "%j %D"]);
        let nodes: f64 = q
            .lines()
            .filter(|l| l.starts_with("beamflow-"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .sum();
        held += nodes * last.elapsed().as_secs_f64();
        last = Instant::now();
        let ended = || {
            site.jobs()
                .iter()
                .filter(|j| j["stack"] == "replay" && j["state"] == "JOB_FINISHED")
                .count()
        };
        let finished = done_at.is_some() || ended() >= r.jobs as usize;
        if finished && done_at.is_none() {
            done_at = Some(Instant::now());
        }
        let mine = slurm(conf, "squeue", &["-h", "-o", "%j"])
            .lines()
            .any(|l| l.starts_with("beamflow-"));
        if finished && !mine {
            break;
        }
        if printed.elapsed() > Duration::from_secs(60) {
            printed = Instant::now();
            eprintln!(
                "beamflow-bench backfill: {mode}: {:.0} s, {} finished, {nodes} node(s) held",
                began.elapsed().as_secs_f64(),
                ended()
            );
        }
        assert!(
            began.elapsed() < Duration::from_secs(3600),
            "{mode}: not done in an hour"
        );
    }
    stop.store(true, Ordering::SeqCst);
    let _ = stream.join();
    let ids = others.lock().unwrap().clone();
    slurm(
        conf,
        "scancel",
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // the jobs' own histories: first runnable, last finished, time running
    let (mut first, mut end, mut busy) = (f64::MAX, 0.0f64, 0.0);
    for j in site.jobs().into_iter().filter(|j| j["stack"] == "replay") {
        let h = site.history(&j);
        let t = |state: &str| {
            h.iter()
                .rev()
                .find(|e| e["to"] == state)
                .and_then(|e| e["at"].as_str())
                .and_then(at)
        };
        if let Some(p) = h
            .iter()
            .find(|e| e["to"] == "PREPROCESSED")
            .and_then(|e| e["at"].as_str())
            .and_then(at)
        {
            first = first.min(p);
        }
        if let Some(f) = t("JOB_FINISHED") {
            end = end.max(f);
        }
        if let (Some(a), Some(b)) = (t("RUNNING"), t("RUN_DONE")) {
            busy += b - a;
        }
    }
    let st = site.collector_status();
    let shapes: Vec<String> = st["launchers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|l| l["batch_id"].as_str().is_some_and(|b| !b.is_empty()))
        .map(|l| {
            let wall = l["walltime_secs"].as_u64().unwrap_or(0);
            let w = if l["window"] == true { "w" } else { "" };
            format!("{}×{}m{w}", l["nodes"], wall / 60)
        })
        .collect();
    let c = calls(&log);
    // a window read is two commands back to back (sinfo, then squeue --start): the pace is
    // between the service's questions, so the gap is measured between its squeue calls
    let polls: Vec<f64> = c
        .iter()
        .filter(|(_, l)| l.starts_with("squeue"))
        .map(|(t, _)| *t)
        .collect();
    let closest = polls
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min);
    let span = match (c.first(), c.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0.0,
    };
    Row {
        mode,
        finish: end - first,
        launchers: summarize(&shapes),
        held,
        busy,
        squeue: c.iter().filter(|(_, l)| l.starts_with("squeue")).count(),
        calls: c.len(),
        closest,
        span,
    }
}

/// `2 × 3×30m, 1×4mw`: launcher shapes counted (w: a backfill window).
fn summarize(shapes: &[String]) -> String {
    let mut counted: Vec<(String, usize)> = Vec::new();
    for s in shapes {
        match counted.iter_mut().find(|(k, _)| k == s) {
            Some((_, n)) => *n += 1,
            None => counted.push((s.clone(), 1)),
        }
    }
    counted
        .iter()
        .map(|(s, n)| format!("{n} × {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs both modes and prints the table.
pub fn run(r: Replay) {
    let conf = cluster();
    let rows = [one(&conf, &r, false), one(&conf, &r, true)];
    slurm(&conf, "scancel", &["--me"]);
    println!(
        "\n{} jobs of {} s; other users: a backlog of {}, then one every {} s, limits 1 to {} min (seed {})\n",
        r.jobs, r.job_secs, r.backlog, r.every, r.max_limit, r.seed
    );
    println!("| mode | first runnable → last finished | × fixed | launchers (nodes×wall, w: window) | node-min held | of them idle | calls to Slurm (squeue) | closest two squeue | squeue per 10 min |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let fixed = rows[0].finish;
    for row in &rows {
        println!(
            "| {} | {:.0} s | {:.2}× | {} | {:.1} | {:.1} | {} ({}) | {:.1} s | {:.0} |",
            row.mode,
            row.finish,
            row.finish / fixed,
            row.launchers,
            row.held / 60.0,
            (row.held - row.busy).max(0.0) / 60.0,
            row.calls,
            row.squeue,
            row.closest,
            row.squeue as f64 * 600.0 / row.span.max(1.0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_of_other_users_is_the_same_for_a_seed() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        let x: Vec<_> = (0..50).map(|_| other_job(&mut a, 4)).collect();
        let y: Vec<_> = (0..50).map(|_| other_job(&mut b, 4)).collect();
        assert_eq!(x, y);
        assert!(x.iter().all(|(n, l, s)| (1..=3).contains(n)
            && (1..=4).contains(l)
            && *s < l * 60
            && *s >= l * 30));
        assert!(x.iter().any(|j| j.0 == 3) && x.iter().any(|j| j.0 == 1));
    }
}
