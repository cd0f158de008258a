//! `beamflow-bench local`: moves a synthetic stack through the local transport and prints a
//! table beside `rsync -a` and `cp -r` of the same files, all measured in the same run.
//! `beamflow-bench jobs`: pushes 1,000 trivial jobs through one local allocation and prints
//! jobs per second and the median delay from READY to RUNNING.
//! `beamflow-bench ssh`: over a real sshd on 127.0.0.1, beamflow beside `rsync -e ssh`, `scp` and
//! the ceiling `cat FILES | ssh host 'cat > /dev/null'` (see ssh.rs).
//! `beamflow-bench sshd`: starts the same loopback sshd and a site whose agent pushes over it,
//! prints the paths and waits for Ctrl-C, for profiling one push by hand.
//!
//! Every tool reads from a warm page cache and writes to the same filesystem. beamflow also
//! hashes every file (BLAKE3), checks every TIFF's structure, fsyncs before acknowledging and
//! registers the DAG; rsync and cp do none of that, so a row with fsync off is shown as well.

mod ssh;

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
        Some("sshd") => {
            ssh::hold();
            std::process::exit(0)
        }
        Some("jobs") => {
            let (mut count, mut slots) = (1000, 2);
            while let Some(a) = it.next() {
                let v = it.next().map(String::as_str).unwrap_or("");
                match a.as_str() {
                    "--count" => count = v.parse().unwrap_or(1000),
                    "--slots" => slots = v.parse().unwrap_or(2),
                    other => {
                        eprintln!("beamflow-bench: unknown option {other}");
                        std::process::exit(2)
                    }
                }
            }
            jobs_bench(count, slots);
            std::process::exit(0)
        }
        _ => {
            eprintln!("usage: beamflow-bench local [--size 1GiB] [--file-size 100MiB] [--runs 3]");
            eprintln!("       beamflow-bench jobs [--count 1000] [--slots 2]");
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

/// 1,000 trivial jobs (`true`) through one local launcher: each is a stack version of a
/// one-step workflow submitted straight to the service API.
fn jobs_bench(count: u32, slots: u32) {
    use beamflow_protocol::api::{Client, SubmitFile, SubmitRequest};
    let site = Site::new("30s", "");
    site.edit_config("poll_interval = \"200ms\"", "poll_interval = \"50ms\"");
    site.edit_config("slots = 0", &format!("slots = {slots}"));
    site.edit_config("poll = \"100ms\"", "poll = \"50ms\"");
    site.edit_config("idle_exit = \"2s\"", "idle_exit = \"10s\"");
    site.edit_config("heartbeat_timeout = \"3s\"", "heartbeat_timeout = \"60s\"");
    site.append_config(
        "[workflows.trivial]\n[[workflows.trivial.steps]]\nname = \"t\"\ncommand = \"true\"\n",
    );
    // straight to the API, as `serve` would forward it: the files under the beamline's
    // folder, each version's snapshot of hard links beside them
    let stack = site.data_root().join("bench-bl/bench");
    std::fs::create_dir_all(&stack).unwrap();
    let mut files = Vec::new();
    for i in 0..2 {
        let p = stack.join(format!("S_{i:04}.tif"));
        write_tiff(
            &p,
            &Section {
                width: 16,
                height: 16,
                seed: i,
                big: false,
                rows_per_strip: 16,
            },
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        files.push(SubmitFile {
            path: format!("bench/S_{i:04}.tif"),
            size: bytes.len() as u64,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
        });
    }
    for v in 1..=count + 1 {
        let snap = stack.join(format!(".beamflow-v{v}"));
        std::fs::create_dir_all(&snap).unwrap();
        for i in 0..2 {
            let name = format!("S_{i:04}.tif");
            std::fs::hard_link(stack.join(&name), snap.join(&name)).unwrap();
        }
    }
    let mut service = site.start_service();
    let client = Client::from_state_dir(&site.dir.join("state")).unwrap();
    eprintln!("submitting {count} one-job stack versions ...");
    let start = Instant::now();
    for v in 1..=count {
        client
            .submit(&SubmitRequest {
                beamline: "bench-bl".into(),
                stack: "bench".into(),
                version: v,
                workflow: "trivial".into(),
                files: files.clone(),
            })
            .unwrap();
    }
    let submitted = start.elapsed();
    loop {
        let done = client
            .jobs(Some("bench"), Some("JOB_FINISHED"))
            .unwrap()
            .len() as u32;
        if done == count {
            break;
        }
        let failed = client.jobs(Some("bench"), Some("FAILED")).unwrap();
        assert!(
            failed.is_empty(),
            "a trivial job failed: {}",
            failed[0].reason
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let jobs = client.jobs(Some("bench"), None).unwrap();
    // when a job first entered `state`, from its events
    let at = |h: &[beamflow_protocol::api::EventRow], state: &str| {
        let e = h
            .iter()
            .find(|e| e.to == state)
            .expect("the job passed through the state");
        humantime::parse_rfc3339(&e.at).expect("RFC 3339 time")
    };
    let (mut delays, mut first_ready, mut last_done) = (Vec::new(), None, None);
    for j in &jobs {
        let h = client.history(j.id).unwrap();
        let ready = at(&h, "READY");
        let running = at(&h, "RUNNING");
        let done = at(&h, "JOB_FINISHED");
        delays.push(running.duration_since(ready).unwrap_or_default());
        first_ready = Some(first_ready.map_or(ready, |f: std::time::SystemTime| f.min(ready)));
        last_done = Some(last_done.map_or(done, |l: std::time::SystemTime| l.max(done)));
    }
    let span = last_done
        .unwrap()
        .duration_since(first_ready.unwrap())
        .unwrap_or_default();
    // one more job alone, to an idle launcher: the delay without any queue
    let lone = client
        .submit(&SubmitRequest {
            beamline: "bench-bl".into(),
            stack: "bench".into(),
            version: count + 1,
            workflow: "trivial".into(),
            files: files.clone(),
        })
        .unwrap();
    let lone_delay = loop {
        let j = client.jobs(Some("bench"), Some("JOB_FINISHED")).unwrap();
        if let Some(j) = j.iter().find(|j| j.version == count + 1) {
            let h = client.history(j.id).unwrap();
            let ready = at(&h, "READY");
            let running = at(&h, "RUNNING");
            break running.duration_since(ready).unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = lone;
    let launchers = client.status().unwrap().launchers.len();
    delays.sort();
    let median = delays[delays.len() / 2];
    let p95 = delays[delays.len() * 95 / 100];
    service.term();
    println!("\n{count} trivial jobs (`true`), one local launcher with {slots} slots ({launchers} launcher(s) used):\n");
    println!("{:<44} {:>12}", "measure", "value");
    println!(
        "{:<44} {:>12.1}",
        "submissions/s (API, one at a time)",
        count as f64 / submitted.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.1}",
        "jobs/s (first READY to last JOB_FINISHED)",
        count as f64 / span.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.3}",
        "median READY -> RUNNING, s",
        median.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.3}",
        "95th percentile READY -> RUNNING, s",
        p95.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.3}",
        "READY -> RUNNING of one job, idle launcher, s",
        lone_delay.as_secs_f64()
    );
    println!("\nAll {count} jobs are READY at once, so their READY -> RUNNING includes waiting for a free");
    println!("slot; the last row is the pure scheduling delay (service poll 50 ms, launcher poll 50 ms).");
}
