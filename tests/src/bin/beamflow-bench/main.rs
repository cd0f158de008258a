//! `beamflow-bench local`: moves a synthetic stack through the local transport and prints a
//! table beside `rsync -a` and `cp -r` of the same files, all measured in the same run.
//! `beamflow-bench jobs`: pushes 1,000 trivial jobs through one local allocation and prints
//! jobs per second and the median delay from READY to RUNNING.
//! `beamflow-bench ssh`: over a real sshd on 127.0.0.1, beamflow beside `rsync -e ssh`, `scp` and
//! the ceiling `cat FILES | ssh host 'cat > /dev/null'` (see ssh.rs).
//! `beamflow-bench watch`: the agent on a full tree of small stacks: cold start, idle CPU and
//! peak memory beside `find` and `rsync -a` of the tree (see watch.rs).
//! `beamflow-bench stream`: a stack written section by section, streamed beside whole-stack,
//! with the real AlignTK (stream.rs).
//! `beamflow-bench daemon`: the running agent over a warm SSH link: marker → DAG accepted beside
//! `cat | ssh` over the same master, and 5,000 small files beside `rsync -a -e ssh` (daemon.rs).
//! `beamflow-bench backfill`: on the real three-node Slurm of the tests, with a seeded stream
//! of other users' jobs, 200 short jobs through launchers of the fixed size beside launchers
//! shaped to backfill windows (backfill.rs).
//! `beamflow-bench sshd`: starts the same loopback sshd and a site whose agent pushes over it,
//! prints the paths and waits for Ctrl-C, for profiling one push by hand.
//!
//! Every tool reads from a warm page cache and writes to the same filesystem. beamflow also
//! hashes every file (BLAKE3), checks every TIFF's structure, fsyncs before acknowledging and
//! registers the DAG; rsync and cp do none of that, so a row with fsync off is shown as well.

mod backfill;
mod daemon;
mod ssh;
mod stream;
mod watch;

use beamflow_e2e::{bin, write_tiff, Section, Site};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Opts {
    total: u64,
    file: u64,
    runs: usize,
}

fn parse_size(s: &str) -> u64 {
    beamflow_config::ByteSize::parse(s)
        .unwrap_or_else(|e| {
            eprintln!("beamflow-bench: {e}");
            std::process::exit(2)
        })
        .0
}

fn opts() -> Opts {
    let mut o = Opts {
        total: 1 << 30,
        file: 100 << 20,
        runs: 3,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("local") => {}
        Some("ssh") => {
            let mut runs = 3;
            let mut big = 10u64;
            let mut small = 5000u32;
            let mut channels = 4u32;
            while let Some(a) = it.next() {
                let v = it.next().map(String::as_str).unwrap_or("");
                match a.as_str() {
                    "--runs" => runs = v.parse().unwrap_or(3),
                    "--big-files" => big = v.parse().unwrap_or(10),
                    "--small-files" => small = v.parse().unwrap_or(5000),
                    "--channels" => channels = v.parse().unwrap_or(4),
                    other => {
                        eprintln!("beamflow-bench: unknown option {other}");
                        std::process::exit(2)
                    }
                }
            }
            ssh::run(runs, big, small, channels);
            std::process::exit(0)
        }
        Some("watch") => {
            let (mut files, mut layouts, mut idle) = (20_000u32, vec![200u32, 2000], 60u64);
            let mut link = (4u32, 4u32);
            while let Some(a) = it.next() {
                let v = it.next().map(String::as_str).unwrap_or("");
                match a.as_str() {
                    "--files" => files = v.parse().unwrap_or(20_000),
                    "--folders" => layouts = v.split(',').filter_map(|x| x.parse().ok()).collect(),
                    "--idle" => idle = v.parse().unwrap_or(60),
                    "--channels" => link.0 = v.parse().unwrap_or(4),
                    "--max-stacks" => link.1 = v.parse().unwrap_or(4),
                    other => {
                        eprintln!("beamflow-bench: unknown option {other}");
                        std::process::exit(2)
                    }
                }
            }
            watch::run(files, &layouts, Duration::from_secs(idle), link);
            std::process::exit(0)
        }
        Some("daemon") => {
            let (mut runs, mut small) = (10usize, 5000u32);
            while let Some(a) = it.next() {
                let v = it.next().map(String::as_str).unwrap_or("");
                match a.as_str() {
                    "--runs" => runs = v.parse().unwrap_or(10),
                    "--small-files" => small = v.parse().unwrap_or(5000),
                    other => {
                        eprintln!("beamflow-bench: unknown option {other}");
                        std::process::exit(2)
                    }
                }
            }
            daemon::run(runs.max(1), small);
            std::process::exit(0)
        }
        Some("stream") => {
            let (mut sections, mut side, mut interval, mut chunk) = (32u32, 512u32, 5.0f64, 8u32);
            while let Some(a) = it.next() {
                let v = it.next().map(String::as_str).unwrap_or("");
                match a.as_str() {
                    "--sections" => sections = v.parse().unwrap_or(32),
                    "--side" => side = v.parse().unwrap_or(512),
                    "--interval" => interval = v.parse().unwrap_or(5.0),
                    "--chunk" => chunk = v.parse().unwrap_or(8).max(1),
                    other => {
                        eprintln!("beamflow-bench: unknown option {other}");
                        std::process::exit(2)
                    }
                }
            }
            stream::run(sections, side, Duration::from_secs_f64(interval), chunk);
            std::process::exit(0)
        }
        Some("backfill") => {
            let mut r = backfill::Replay {
                jobs: 200,
                job_secs: 5,
                every: 75,
                backlog: 6,
                seed: 7,
                max_limit: 4,
            };
            while let Some(a) = it.next() {
                let v = it.next().map(String::as_str).unwrap_or("");
                match a.as_str() {
                    "--jobs" => r.jobs = v.parse().unwrap_or(200).max(1),
                    "--job-secs" => r.job_secs = v.parse().unwrap_or(5),
                    "--every" => r.every = v.parse().unwrap_or(75).max(1),
                    "--backlog" => r.backlog = v.parse().unwrap_or(6),
                    "--seed" => r.seed = v.parse().unwrap_or(7),
                    "--max-limit" => r.max_limit = v.parse().unwrap_or(4).max(1),
                    other => {
                        eprintln!("beamflow-bench: unknown option {other}");
                        std::process::exit(2)
                    }
                }
            }
            backfill::run(r);
            std::process::exit(0)
        }
        Some("sshd") => {
            ssh::hold();
            std::process::exit(0)
        }
        Some("jobs") => {
            let (mut count, mut slots, mut on) = (1000, 2, String::from("disk,tmpfs"));
            while let Some(a) = it.next() {
                let v = it.next().map(String::as_str).unwrap_or("");
                match a.as_str() {
                    "--count" => count = v.parse().unwrap_or(1000),
                    "--slots" => slots = v.parse().unwrap_or(2),
                    "--on" => on = v.to_string(),
                    other => {
                        eprintln!("beamflow-bench: unknown option {other}");
                        std::process::exit(2)
                    }
                }
            }
            jobs_bench(count, slots, &on);
            std::process::exit(0)
        }
        _ => {
            eprintln!("usage: beamflow-bench local [--size 1GiB] [--file-size 100MiB] [--runs 3]");
            eprintln!("       beamflow-bench jobs [--count 1000] [--slots 2] [--on disk,tmpfs]");
            eprintln!("       beamflow-bench stream [--sections 32] [--side 512] [--interval 5] [--chunk 8]");
            eprintln!("       beamflow-bench backfill [--jobs 200] [--job-secs 5] [--every 75] [--backlog 6] [--seed 7] [--max-limit 4]");
            eprintln!(
                "       beamflow-bench watch [--files 20000] [--folders 200,2000] [--idle 60] [--channels 4] [--max-stacks 4]"
            );
            eprintln!("       beamflow-bench ssh [--runs 3] [--big-files 10] [--small-files 5000] [--channels 4]");
            std::process::exit(2)
        }
    }
    while let Some(a) = it.next() {
        let v = it.next().map(String::as_str).unwrap_or("");
        match a.as_str() {
            "--size" => o.total = parse_size(v),
            "--file-size" => o.file = parse_size(v),
            "--runs" => o.runs = v.parse().unwrap_or(3),
            other => {
                eprintln!("beamflow-bench: unknown option {other}");
                std::process::exit(2)
            }
        }
    }
    o
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let t = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

fn beamflow_run(src: &Path, fsync: bool) -> Duration {
    let site = Site::new("30s", "");
    if !fsync {
        let text = std::fs::read_to_string(&site.config)
            .unwrap()
            .replace("[collector]\n", "[collector]\nfsync = false\n");
        std::fs::write(&site.config, text).unwrap();
    }
    let mut service = site.start_service();
    let mut cmd = Command::new(bin("beamflow-agent"));
    cmd.args(["push", "--config"]).arg(&site.config).arg(src);
    let t = timed(cmd);
    service.term();
    t
}

fn main() {
    let o = opts();
    for tool in ["rsync", "cp"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("beamflow-bench: `{tool}` is not installed (apt-get install {tool}); it is measured beside beamflow");
            std::process::exit(2);
        }
    }
    let work = tempfile::Builder::new()
        .prefix("beamflow-bench-")
        .tempdir()
        .expect("tempdir");
    let src: PathBuf = work.path().join("stack");
    std::fs::create_dir_all(&src).unwrap();
    let n = (o.total / o.file).max(1);
    eprintln!(
        "writing {n} synthetic 16-bit sections of {} each ...",
        beamflow_config::ByteSize(o.file)
    );
    let mut bytes = 0;
    for i in 0..n {
        let p = src.join(format!("S_{i:04}.tif"));
        write_tiff(&p, &Section::of_size(o.file, i + 1)).unwrap();
        bytes += std::fs::metadata(&p).unwrap().len();
    }
    // warm the page cache for everyone alike
    let _ = Command::new("cat")
        .args(std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()))
        .stdout(std::process::Stdio::null())
        .status();

    let mut rows: Vec<(&str, Vec<Duration>)> = vec![
        ("beamflow push (local)", vec![]),
        ("beamflow push (local, fsync off)", vec![]),
        ("rsync -a", vec![]),
        ("cp -r", vec![]),
        ("cp -r && sync (durable)", vec![]),
    ];
    for run in 0..o.runs {
        eprintln!("run {} of {} ...", run + 1, o.runs);
        rows[0].1.push(beamflow_run(&src, true));
        rows[1].1.push(beamflow_run(&src, false));
        let dst = work.path().join(format!("rsync-{run}"));
        let mut c = Command::new("rsync");
        c.arg("-a").arg(format!("{}/", src.display())).arg(&dst);
        rows[2].1.push(timed(c));
        std::fs::remove_dir_all(&dst).unwrap();
        let dst = work.path().join(format!("cp-{run}"));
        let mut c = Command::new("cp");
        c.arg("-r").arg(&src).arg(&dst);
        rows[3].1.push(timed(c));
        std::fs::remove_dir_all(&dst).unwrap();
        let _ = Command::new("sync").status();
        let dst = work.path().join(format!("cps-{run}"));
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "cp -r '{}' '{}' && sync",
            src.display(),
            dst.display()
        ));
        rows[4].1.push(timed(c));
        std::fs::remove_dir_all(&dst).unwrap();
        let _ = Command::new("sync").status();
    }
    println!(
        "\n{n} files, {} bytes ({:.1} MiB), median of {} runs each:\n",
        bytes,
        bytes as f64 / (1 << 20) as f64,
        o.runs
    );
    println!("{:<34} {:>10} {:>10}", "tool", "seconds", "MB/s");
    for (name, times) in rows {
        let m = median(times);
        println!(
            "{:<34} {:>10.3} {:>10.1}",
            name,
            m.as_secs_f64(),
            bytes as f64 / 1e6 / m.as_secs_f64()
        );
    }
    println!("\nbeamflow's time includes hashing (BLAKE3), the TIFF structure check, verification on the far");
    println!("side, fsync before acknowledgement (first row) and registering the DAG; rsync and cp do none of these.");
    println!(
        "Every tool reads the source from a warm page cache and writes to the same filesystem."
    );
}

/// Trivial jobs (`true`) through one local launcher with `slots` slots, straight to the
/// service API as `serve` would forward them. Four measures, each from the jobs' event rows:
/// a lone job handed to an idle launcher (READY → RUNNING, median of 10), a chain of 20 steps
/// (a parent's RUN_DONE → its child's RUNNING, median of the 19 links), and `count`
/// independent steps of one stack (jobs per second from the first READY to the last
/// JOB_FINISHED).
fn jobs_run(count: u32, slots: u32, tmp: &Path) -> JobsRun {
    use beamflow_protocol::api::{Client, EventRow, SubmitRequest};
    std::env::set_var("TMPDIR", tmp);
    let site = Site::new("30s", "");
    site.edit_config("slots = 0", &format!("slots = {slots}"));
    site.edit_config("idle_exit = \"2s\"", "idle_exit = \"60s\"");
    site.edit_config("heartbeat_timeout = \"3s\"", "heartbeat_timeout = \"60s\"");
    let mut wf = String::from(
        "[workflows.one]\n[[workflows.one.steps]]\nname = \"t\"\ncommand = \"true\"\n",
    );
    wf.push_str("[workflows.chain]\n");
    for i in 0..20 {
        wf.push_str(&format!(
            "[[workflows.chain.steps]]\nname = \"c{i:02}\"\ncommand = \"true\"\n"
        ));
        if i > 0 {
            wf.push_str(&format!("after = [\"c{:02}\"]\n", i - 1));
        }
    }
    wf.push_str("[workflows.wide]\n");
    for i in 0..count {
        wf.push_str(&format!(
            "[[workflows.wide.steps]]\nname = \"w{i:05}\"\ncommand = \"true\"\n"
        ));
    }
    site.append_config(&wf);
    let mut service = site.start_service_with(&[("BEAMFLOW_LOG", "info")]);
    let client = Client::from_state_dir(&site.dir.join("state")).unwrap();
    let submit = |name: &str, workflow: &str| {
        let files = site.snapshot("bench-bl", name);
        client
            .submit(&SubmitRequest {
                beamline: "bench-bl".into(),
                stack: name.into(),
                version: 1,
                workflow: workflow.into(),
                files,
                keep_older: false,
                partial: false,
            })
            .unwrap();
    };
    // the counts per state are one small answer; listing thousands of jobs while they run
    // would load the service being measured
    let wait_done = |name: &str, n: usize| loop {
        let st = client.status().unwrap();
        let counts = st
            .stacks
            .iter()
            .find(|s| s.stack == name)
            .map(|s| s.counts.clone());
        let count = |state: &str| {
            counts
                .as_ref()
                .and_then(|c| c.get(state).copied())
                .unwrap_or(0)
        };
        assert_eq!(count("FAILED"), 0, "a trivial job of {name} failed");
        if count("JOB_FINISHED") as usize == n {
            break client.jobs(Some(name), None).unwrap();
        }
        std::thread::sleep(Duration::from_millis(if n > 100 { 500 } else { 10 }));
    };
    // when a job first entered `state`, from its events
    let at = |h: &[EventRow], state: &str| {
        let e = h
            .iter()
            .find(|e| e.to.as_str() == state)
            .expect("the job passed through the state");
        humantime::parse_rfc3339(&e.at).expect("RFC 3339 time")
    };
    let gap = |a: std::time::SystemTime, b: std::time::SystemTime| {
        b.duration_since(a).unwrap_or_default()
    };
    eprintln!("warming up (the first job starts the launcher) ...");
    submit("warm", "one");
    wait_done("warm", 1);
    eprintln!("10 lone jobs to an idle launcher ...");
    let mut lone = Vec::new();
    let mut lone_prep = Vec::new();
    for i in 0..10 {
        let name = format!("lone-{i}");
        submit(&name, "one");
        let j = wait_done(&name, 1);
        let h = client.history(j[0].id).unwrap();
        lone.push(gap(at(&h, "READY"), at(&h, "RUNNING")));
        lone_prep.push(gap(at(&h, "READY"), at(&h, "PREPROCESSED")));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("a chain of 20 steps ...");
    submit("chain", "chain");
    let chain = wait_done("chain", 20);
    let mut links = Vec::new();
    for pair in chain.windows(2) {
        let parent = client.history(pair[0].id).unwrap();
        let child = client.history(pair[1].id).unwrap();
        links.push(gap(at(&parent, "RUN_DONE"), at(&child, "RUNNING")));
    }
    eprintln!("{count} independent steps of one stack ...");
    submit("wide", "wide");
    let wide = wait_done("wide", count as usize);
    let (mut first_ready, mut first_running, mut last_done) = (None, None, None);
    let mut queued = Vec::new();
    let earliest = |a: Option<std::time::SystemTime>, b| Some(a.map_or(b, |a| a.min(b)));
    for j in &wide {
        let h = client.history(j.id).unwrap();
        let (ready, running) = (at(&h, "READY"), at(&h, "RUNNING"));
        let done = at(&h, "JOB_FINISHED");
        queued.push(gap(ready, running));
        first_ready = earliest(first_ready, ready);
        first_running = earliest(first_running, running);
        last_done = Some(last_done.map_or(done, |l: std::time::SystemTime| l.max(done)));
    }
    let span = gap(first_ready.unwrap(), last_done.unwrap());
    let to_first = gap(first_ready.unwrap(), first_running.unwrap());
    let launchers = client.status().unwrap().launchers.len();
    let running_twice = wide
        .iter()
        .chain(&chain)
        .filter(|j| {
            client
                .history(j.id)
                .unwrap()
                .iter()
                .filter(|e| e.to.as_str() == "RUNNING")
                .count()
                != 1
        })
        .count();
    service.term();
    JobsRun {
        throughput: count as f64 / span.as_secs_f64(),
        to_first,
        lone: med(lone),
        lone_prep: med(lone_prep),
        link: med(links.clone()),
        slowest_link: *links.iter().max().unwrap(),
        queued: med(queued),
        running_twice,
        launchers,
    }
}

fn med(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One pass of the jobs bench on one filesystem.
struct JobsRun {
    throughput: f64,
    /// From the first READY to the first RUNNING: the stack's jobs prepared.
    to_first: Duration,
    lone: Duration,
    lone_prep: Duration,
    link: Duration,
    slowest_link: Duration,
    queued: Duration,
    running_twice: usize,
    launchers: usize,
}

/// The ceiling: `count` runs of `true` started straight from one process, two at a time,
/// each with its own new output files, as a launcher starts them, with nothing else.
fn spawn_ceiling(count: u32, slots: u32, dir: &Path) -> f64 {
    use std::os::unix::process::CommandExt;
    let start = Instant::now();
    let mut kids: std::collections::VecDeque<std::process::Child> = Default::default();
    for i in 0..count {
        if kids.len() as u32 == slots {
            kids.pop_front().unwrap().wait().unwrap();
        }
        let mut c = Command::new("true");
        c.stdout(std::fs::File::create(dir.join(format!("{i}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{i}.err"))).unwrap())
            .process_group(0);
        kids.push_back(c.spawn().unwrap());
    }
    for mut k in kids {
        k.wait().unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// The jobs bench on the disk's temporary folder and, where there is one, on tmpfs
/// (`/dev/shm`): on a disk where creating a file costs a millisecond, that cost (two output
/// files per job, a work folder per stack) is most of what is measured. `on` names the
/// columns wanted (`disk`, `tmpfs`).
fn jobs_bench(count: u32, slots: u32, on: &str) {
    let disk = std::env::temp_dir();
    let mut places = Vec::new();
    if on.split(',').any(|c| c == "disk") {
        places.push(("disk", disk.clone()));
    }
    if on.split(',').any(|c| c == "tmpfs") && Path::new("/dev/shm").is_dir() {
        places.push(("tmpfs", PathBuf::from("/dev/shm")));
    }
    if places.is_empty() {
        eprintln!("beamflow-bench jobs: --on names disk, tmpfs or both (tmpfs needs /dev/shm)");
        std::process::exit(2)
    }
    let mut runs = Vec::new();
    let mut ceilings = Vec::new();
    for (name, dir) in &places {
        eprintln!("== on {name} ({}) ==", dir.display());
        runs.push(jobs_run(count, slots, dir));
        let scratch = tempfile::Builder::new()
            .prefix("beamflow-spawn-")
            .tempdir_in(dir)
            .unwrap();
        ceilings.push(spawn_ceiling(count, slots, scratch.path()));
    }
    std::env::set_var("TMPDIR", &disk);
    println!("\ntrivial jobs (`true`), one local launcher with {slots} slots ({} launcher(s) used per run):\n", runs[0].launchers);
    let mut head = format!("{:<58}", "measure");
    for (name, _) in &places {
        head.push_str(&format!(" {name:>10}"));
    }
    println!("{head} {:>10}", "goal");
    let row = |what: &str, vals: Vec<String>, goal: &str| {
        let mut line = format!("{what:<58}");
        for v in vals {
            line.push_str(&format!(" {v:>10}"));
        }
        println!("{line} {goal:>10}");
    };
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    row(
        &format!("jobs/s, {count} independent steps (READY .. last JOB_FINISHED)"),
        runs.iter()
            .map(|r| format!("{:.0}", r.throughput))
            .collect(),
        ">= 1000",
    );
    row(
        "  of which first READY -> first RUNNING (the jobs prepared), s",
        runs.iter()
            .map(|r| format!("{:.3}", r.to_first.as_secs_f64()))
            .collect(),
        "",
    );
    row(
        &format!("  ceiling: `true` started {slots} at a time, nothing else, /s"),
        ceilings.iter().map(|c| format!("{c:.0}")).collect(),
        "",
    );
    row(
        "median READY -> RUNNING, one job, idle launcher, ms",
        runs.iter().map(|r| ms(r.lone)).collect(),
        "<= 5",
    );
    row(
        "  of which READY -> PREPROCESSED (work folder made), ms",
        runs.iter().map(|r| ms(r.lone_prep)).collect(),
        "",
    );
    row(
        "median parent RUN_DONE -> child RUNNING, chain of 20, ms",
        runs.iter().map(|r| ms(r.link)).collect(),
        "<= 50",
    );
    row(
        "  slowest link of the chain, ms",
        runs.iter().map(|r| ms(r.slowest_link)).collect(),
        "",
    );
    row(
        &format!("median READY -> RUNNING of the {count} (wait for a slot), s"),
        runs.iter()
            .map(|r| format!("{:.3}", r.queued.as_secs_f64()))
            .collect(),
        "",
    );
    row(
        "jobs RUNNING more than once",
        runs.iter().map(|r| r.running_twice.to_string()).collect(),
        "0",
    );
    println!(
        "\nTimes come from the jobs' event rows (millisecond stamps). The service's database, the"
    );
    println!("work folders and the jobs' output files live in the column's filesystem.");
}
