//! `beamflow-bench watch`: the agent on a full tree. For each layout (the same number of
//! files in fewer or more folders) it writes the tree, times `find` and `rsync -a` of it,
//! starts the service and the agent (release build, inotify, `info` logs as a site runs
//! them) and measures:
//! - cold start: agent start → every stack submitted (the collector accepted its DAG);
//! - idle CPU: the agent's user+system time over the idle window once all are submitted;
//! - the agent's CPU while `tar` reads the whole tree (a reader must not cost it work);
//! - peak RSS (VmHWM).
//!
//! The workflow is one step in a queue with `submit = false`: DAGs are registered and wait,
//! so no job (and no 8-bit preparation) runs beside the agent while it is measured.

use beamflow_e2e::{wait_until, Site};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One layout's measures.
struct Row {
    folders: u32,
    files: u32,
    bytes: u64,
    find: Duration,
    rsync: Duration,
    cold: Duration,
    idle_cpu: f64,
    read_cpu: f64,
    rss_mb: f64,
}

fn ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name, which may hold spaces
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12) // utime, stime
}

fn clock_ticks() -> f64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn hwm_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Writes `folders` stacks holding `files` small sections in all: one section, copied with
/// a few bytes changed per copy.
fn write_tree(root: &Path, folders: u32, files: u32) -> u64 {
    use std::os::unix::fs::FileExt;
    let template = root.join(".template.tif");
    beamflow_e2e::write_tiff(
        &template,
        &beamflow_e2e::Section {
            width: 64,
            height: 64,
            seed: 3,
            big: false,
            rows_per_strip: 64,
        },
    )
    .expect("template");
    let per = files / folders;
    let mut bytes = 0;
    for s in 0..folders {
        let d = root.join(format!("run_{s:05}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per {
            let p = d.join(format!("S_{i:04}.tif"));
            std::fs::copy(&template, &p).unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(&((s as u64) << 32 | i as u64).to_le_bytes(), 64)
                .unwrap();
            bytes += f.metadata().unwrap().len();
        }
    }
    std::fs::remove_file(&template).unwrap();
    bytes
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed");
    t.elapsed()
}

/// Stacks submitted so far, asked of one read-only connection kept open (a poll every 20 ms
/// that read every row would take its share of the machine from what it measures).
fn submitted(journal: &mut Option<beamflow_agent::journal::Journal>, state: &Path) -> usize {
    if journal.is_none() {
        *journal = beamflow_agent::journal::Journal::open_read_only(state).ok();
    }
    let n = journal
        .as_ref()
        .and_then(|j| j.count(beamflow_agent::journal::StackState::Submitted).ok())
        .unwrap_or(0);
    if n == 0 {
        // opened before the agent made its journal (an empty one stands in): open it again
        *journal = None;
    }
    n
}

fn layout(
    folders: u32,
    files: u32,
    idle: Duration,
    settle: Duration,
    link: (u32, u32),
) -> (Row, Site) {
    let site = Site::new(&humantime::format_duration(settle).to_string(), "");
    site.edit_config("channels = 4", &format!("channels = {}", link.0));
    site.edit_config("max_stacks = 4", &format!("max_stacks = {}", link.1));
    // one job per stack that waits: the collector registers each DAG and runs nothing
    // beside the agent
    site.hold_jobs();
    let incoming = site.incoming();
    eprintln!("{folders} folders: writing {files} files ...");
    let bytes = write_tree(&incoming, folders, files);
    let written = Instant::now();
    let _ = Command::new("sync").status();
    let find = timed(Command::new("find").arg(&incoming).arg("-type").arg("f"));
    let dst = site.dir.join("rsync-copy");
    let rsync = timed(
        Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", incoming.display()))
            .arg(&dst),
    );
    // nothing is deleted before the end: this machine's root is ext4 without a journal, which
    // skips inodes freed in the last minutes, so whatever ran right after a deletion would
    // spend seconds looking for free inodes
    let _ = Command::new("sync").status();
    // a tree that has been sitting there: its files are older than `settle`
    if let Some(left) = settle.checked_sub(written.elapsed()) {
        std::thread::sleep(left + Duration::from_millis(200));
    }
    let env = [("BEAMFLOW_LOG", "info")];
    let mut service = site.start_service_with(&env);
    let state = site.dir.join("state");
    let start = Instant::now();
    let mut agent = site.start_agent_with(&env);
    let pid = agent.pid();
    let mut journal = None;
    wait_until(Duration::from_secs(3600), "every stack submitted", || {
        std::thread::sleep(Duration::from_millis(20));
        submitted(&mut journal, &state) == folders as usize
    });
    let cold = start.elapsed();
    eprintln!(
        "  all {folders} submitted in {:.2} s; idle for {} s ...",
        cold.as_secs_f64(),
        idle.as_secs()
    );
    std::thread::sleep(Duration::from_secs(2));
    let t0 = ticks(pid);
    let w0 = Instant::now();
    std::thread::sleep(idle);
    let idle_cpu = (ticks(pid) - t0) as f64 / clock_ticks() / w0.elapsed().as_secs_f64() * 100.0;
    // a reader of the whole tree (a viewer, a backup) costs the agent nothing
    let t0 = ticks(pid);
    timed(
        Command::new("tar")
            .arg("cf")
            .arg("/dev/null")
            .arg("-C")
            .arg(&incoming)
            .arg("."),
    );
    std::thread::sleep(Duration::from_secs(1));
    let read_cpu = (ticks(pid) - t0) as f64 / clock_ticks();
    let rss_mb = hwm_mb(pid);
    agent.term();
    service.term();
    assert_eq!(
        submitted(&mut journal, &state),
        folders as usize,
        "a stack left the submitted state while idle"
    );
    let row = Row {
        folders,
        files,
        bytes,
        find,
        rsync,
        cold,
        idle_cpu,
        read_cpu,
        rss_mb,
    };
    (row, site)
}

/// Runs every layout and prints the table; `link` is `[link] channels` and `max_stacks`.
pub fn run(files: u32, layouts: &[u32], idle: Duration, link: (u32, u32)) {
    for tool in ["rsync", "find", "tar"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!("beamflow-bench: `{tool}` is not installed; it is measured beside beamflow");
            std::process::exit(2);
        }
    }
    let (rows, _sites): (Vec<Row>, Vec<Site>) = layouts
        .iter()
        .map(|&f| layout(f, files, idle, Duration::from_secs(10), link))
        .unzip();
    println!();
    println!(
        "| tree | find | rsync -a | beamflow cold start | ÷ rsync | idle CPU ({} s) | CPU while tar reads it | peak RSS |",
        idle.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} files in {} folders, {:.0} MiB | {:.2} s | {:.2} s | {:.2} s | {:.2}× | {:.2}% of a core | {:.2} s | {:.0} MB |",
            r.files,
            r.folders,
            r.bytes as f64 / (1 << 20) as f64,
            r.find.as_secs_f64(),
            r.rsync.as_secs_f64(),
            r.cold.as_secs_f64(),
            r.cold.as_secs_f64() / r.rsync.as_secs_f64(),
            r.idle_cpu,
            r.read_cpu,
            r.rss_mb
        );
    }
    println!("\n[link] channels = {}, max_stacks = {}.", link.0, link.1);
    println!(
        "cold start: agent started → every stack's DAG accepted by the collector (hashed, checked,"
    );
    println!(
        "sent, verified, fsynced, registered); the tree's files were older than `settle` (10 s)."
    );
}
