//! beamflow over SSH beside rsync, scp and the ceiling, on the same loopback sshd and cipher
//! (aes128-gcm@openssh.com), median of several runs, three data sets:
//! (1) a new stack of 100 MiB 16-bit sections with microscope-like texture;
//! (2) 5,000 files of 64 KiB; (3) one 512 MiB file with 1% of its blocks changed, whose older
//! version the far side already holds.

use beamflow_e2e::sshd::{Sshd, ALIAS};
use beamflow_e2e::{bin, write_tiff, Section, Site};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Row {
    tool: String,
    times: Vec<Duration>,
    wire: u64,
}

/// Runs a shell command line, panicking with its stderr if it fails: its time and stdout.
pub(crate) fn sh(cmd: &str) -> (Duration, String) {
    let start = Instant::now();
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    let t = start.elapsed();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (t, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A path quoted for `sh`.
pub(crate) fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// One section of 64 KiB (128 × 256, 16-bit): the template of the many-small-files sets.
pub(crate) fn small_section(work: &Path) -> Vec<u8> {
    let one = work.join("one.tif");
    write_tiff(
        &one,
        &Section {
            width: 128,
            height: 256,
            seed: 3,
            big: false,
            rows_per_strip: 64,
        },
    )
    .unwrap();
    std::fs::read(&one).unwrap()
}

fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn parse_sent(text: &str) -> u64 {
    let sent = text
        .split('(')
        .nth(1)
        .and_then(|t| t.split(" sent").next())
        .unwrap_or("0 B");
    let (num, unit) = sent.split_once(' ').unwrap_or(("0", "B"));
    let mult = match unit {
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        _ => 1.0,
    };
    (num.parse::<f64>().unwrap_or(0.0) * mult) as u64
}

fn rsync_sent(text: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with("Total bytes sent:"))
        .and_then(|l| l.split(':').nth(1))
        .map(|v| v.trim().replace(',', "").parse().unwrap_or(0))
        .unwrap_or(0)
}

/// Starts sshd (with the benchmark's cipher) and a site pushing over it, prints how to use
/// them and waits to be killed.
pub fn hold() {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // Ctrl-C or kill: leave the loop so that the service, sshd and the folders go too
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let sshd = Sshd::start();
    let mut cfg = std::fs::read_to_string(&sshd.ssh_config).unwrap();
    cfg.push_str("  Ciphers aes128-gcm@openssh.com\n  Compression no\n");
    std::fs::write(&sshd.ssh_config, cfg).unwrap();
    let site = Site::new("30s", "");
    let link = sshd.link_toml(&site.config, "own", None, "5s");
    site.edit_config("transport = \"local\"", &link);
    site.hold_jobs();
    let _service = site.start_service();
    let data = site.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let d = make_data(&data, 10, 5000);
    println!(
        "data:         {} {} {}",
        d.big.display(),
        d.small.display(),
        d.delta.display()
    );
    println!("ssh config:   {}", sshd.ssh_config.display());
    println!("site config:  {}", site.config.display());
    println!(
        "push:         {} push --config {} DIR",
        bin("beamflow-agent").display(),
        site.config.display()
    );
    println!(
        "ceiling:      cat FILES | ssh -F {} {ALIAS} 'cat > /dev/null'",
        sshd.ssh_config.display()
    );
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stopping: the service, sshd and the site folder go");
}

/// A site that pushes to the collector over this sshd; `prime` is pushed first, untimed.
/// The site is kept in `keep`, received files and all, until the benchmark ends: see `run`.
/// A site whose agent reaches the collector over `sshd` with its own master, on `channels`.
fn ssh_site(sshd: &Sshd, settle: &str, channels: u32) -> Site {
    let site = Site::new(settle, "");
    let link = sshd.link_toml(&site.config, "own", None, "5s");
    site.edit_config("transport = \"local\"", &link);
    site.edit_config("channels = 4", &format!("channels = {channels}"));
    // a primed stack's DAG (a 512 MiB section made 8-bit, its jobs started) would otherwise
    // run beside the push that is measured after it
    site.hold_jobs();
    site
}

fn beamflow(
    keep: &mut Vec<Site>,
    sshd: &Sshd,
    src: &Path,
    prime: Option<&dyn Fn()>,
    fsync: bool,
    channels: u32,
) -> (Duration, u64) {
    let site = ssh_site(sshd, "30s", channels);
    if !fsync {
        site.edit_config("[collector]\n", "[collector]\nfsync = false\n");
    }
    let mut service = site.start_service();
    let push = || {
        let start = Instant::now();
        let out = site.run("beamflow-agent", &["push", src.to_str().unwrap()]);
        let t = start.elapsed();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "push failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (t, parse_sent(&text))
    };
    if let Some(change) = prime {
        push();
        change();
    }
    let r = push();
    service.term();
    drop(service);
    keep.push(site);
    r
}

/// `push` beside a running daemon (the beamline's case): the daemon has sent a small stack
/// before (its master and far ends are open), it watches the folder as it is written (hard
/// links of `src`, made while it watches, with a `settle` it never reaches), and the push hands
/// it over to ride the daemon's warm link. The time is the push's, from its start to its exit.
fn beamflow_beside_daemon(
    keep: &mut Vec<Site>,
    sshd: &Sshd,
    src: &Path,
    channels: u32,
) -> (Duration, u64) {
    let site = ssh_site(sshd, "1h", channels);
    let mut service = site.start_service();
    let mut agent = site.start_agent();
    site.wait_agent_door();
    // a daemon that has sent before: its master and far ends are open (kept `[link] idle`)
    let warm = site.write_stack("warm", channels.max(1), 32);
    let out = site.run("beamflow-agent", &["push", warm.to_str().unwrap()]);
    assert!(out.status.success(), "the warm-up push failed");
    let dir = site.incoming().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = 0;
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::hard_link(&p, dir.join(p.file_name().unwrap())).unwrap();
        files += 1;
    }
    // the daemon has seen every file (it tracks the stack with all of them)
    beamflow_e2e::wait_until(
        Duration::from_secs(120),
        "the daemon to track the stack",
        || {
            site.stack("stack").is_some_and(|s| {
                s["files"].as_u64() == Some(files)
                    || s["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with(&format!("{files} images")))
            })
        },
    );
    let start = Instant::now();
    let out = site.run("beamflow-agent", &["push", dir.to_str().unwrap()]);
    let t = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("handed to the running daemon"),
        "push beside the daemon failed: {text}{err}"
    );
    agent.term();
    service.term();
    drop((agent, service));
    keep.push(site);
    (t, parse_sent(&text))
}

fn median(r: &Row) -> f64 {
    let mut t = r.times.clone();
    t.sort();
    t[t.len() / 2].as_secs_f64()
}

/// The issue's goal for each set, checked against this run's medians.
fn verdict(set: usize, rows: &[Row]) {
    let (ours, rsync, ceiling) = (median(&rows[0]), median(&rows[2]), median(&rows[4]));
    let yes = |ok: bool| if ok { "met" } else { "NOT met" };
    let line = match set {
        0 => format!(
            "goal (1), at least 0.85x the ceiling's rate: {:.2}x the ceiling's rate, {:.2}x rsync's time: {}",
            ceiling / ours,
            ours / rsync,
            yes(ceiling / ours >= 0.85)
        ),
        1 => format!(
            "goal (2), at most 0.8x rsync's time: {:.2}x rsync's time: {}",
            ours / rsync,
            yes(ours <= 0.8 * rsync)
        ),
        _ => format!(
            "goal (3), fewer bytes than rsync and no slower: {} vs {} bytes, {:.2}x rsync's time: {}",
            rows[0].wire,
            rows[2].wire,
            ours / rsync,
            yes(rows[0].wire < rows[2].wire && ours <= rsync)
        ),
    };
    println!("{line}");
}

fn table(title: &str, bytes: u64, rows: &[Row]) {
    println!(
        "\n{title}: {} bytes ({:.1} MiB)",
        bytes,
        bytes as f64 / 1048576.0
    );
    println!(
        "{:<34} {:>9} {:>9} {:>16}",
        "tool", "seconds", "MB/s", "bytes on wire"
    );
    for r in rows {
        let mut t = r.times.clone();
        t.sort();
        let m = t[t.len() / 2];
        println!(
            "{:<34} {:>9.3} {:>9.1} {:>16}",
            r.tool,
            m.as_secs_f64(),
            bytes as f64 / 1e6 / m.as_secs_f64(),
            r.wire
        );
    }
}

/// The three data sets, written under `work`.
struct Data {
    big: PathBuf,
    small: PathBuf,
    one: PathBuf,
    delta_old: PathBuf,
    delta: PathBuf,
}

fn make_data(work: &Path, big_files: u64, small_files: u32) -> Data {
    // (1) new stack of 100 MiB sections
    let big = work.join("big");
    std::fs::create_dir_all(&big).unwrap();
    eprintln!("writing {big_files} sections of 100 MiB ...");
    for i in 0..big_files {
        write_tiff(
            &big.join(format!("S_{i:04}.tif")),
            &Section::of_size(100 << 20, i + 1),
        )
        .unwrap();
    }
    // (2) many small files
    let small = work.join("small");
    std::fs::create_dir_all(&small).unwrap();
    eprintln!("writing {small_files} files of 64 KiB ...");
    let template = small_section(work);
    let one = work.join("one.tif");
    for i in 0..small_files {
        let mut b = template.clone();
        b[100..104].copy_from_slice(&i.to_le_bytes());
        std::fs::write(small.join(format!("S_{i:05}.tif")), b).unwrap();
    }
    // (3) one 512 MiB file, and its version with 1% of the blocks changed
    let delta_old = work.join("delta-old");
    let delta = work.join("delta");
    std::fs::create_dir_all(&delta_old).unwrap();
    std::fs::create_dir_all(&delta).unwrap();
    eprintln!("writing a 512 MiB section and its 1%-changed version ...");
    write_tiff(
        &delta_old.join("S_0000.tif"),
        &Section::of_size(512 << 20, 77),
    )
    .unwrap();
    let change = |dir: &Path| {
        std::fs::copy(delta_old.join("S_0000.tif"), dir.join("S_0000.tif")).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("S_0000.tif"))
            .unwrap();
        let len = f.metadata().unwrap().len();
        let blocks = len / (64 << 10);
        let mut x: u64 = 12345;
        for _ in 0..blocks / 100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = 4096 + (x % (blocks - 1)) * (64 << 10);
            f.write_all_at(&[0x5Au8; 64 << 10], at).unwrap();
        }
        // a later mtime, so that rsync's size-and-time quick check sees the change
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
            .unwrap();
    };
    change(&delta);
    // a second small file keeps the stack valid (min_images = 2)
    std::fs::copy(one.as_path(), delta_old.join("S_0001.tif")).unwrap();
    std::fs::copy(one.as_path(), delta.join("S_0001.tif")).unwrap();
    let _ = sh(&format!(
        "cat {}/* {}/* {}/* {}/* > /dev/null",
        q(&big),
        q(&small),
        q(&delta),
        q(&delta_old)
    ));

    Data {
        big,
        small,
        one,
        delta_old,
        delta,
    }
}

/// Runs the three comparisons. Nothing received is deleted before the end: on ext4 without a
/// journal (this machine's root) new inodes skip those freed in the last minutes, and a run
/// after a deletion spends seconds scanning for free ones, whichever tool it measures.
pub fn run(runs: usize, big_files: u64, small_files: u32, channels: u32) {
    for tool in ["rsync", "scp", "ssh"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is not installed"
        );
    }
    let sshd = Sshd::start();
    // one cipher for everyone
    let mut cfg = std::fs::read_to_string(&sshd.ssh_config).unwrap();
    cfg.push_str("  Ciphers aes128-gcm@openssh.com\n  Compression no\n");
    std::fs::write(&sshd.ssh_config, cfg).unwrap();
    let ssh = format!("ssh -F {}", q(&sshd.ssh_config));
    let work = tempfile::Builder::new()
        .prefix("beamflow-bench-ssh-")
        .tempdir()
        .unwrap();
    let far = work.path().join("far");
    std::fs::create_dir_all(&far).unwrap();

    let Data {
        big,
        small,
        one,
        delta_old,
        delta,
    } = make_data(work.path(), big_files, small_files);
    let mut keep: Vec<Site> = Vec::new();
    let sets: Vec<(&str, PathBuf)> = vec![
        ("(1) new stack of 100 MiB sections", big.clone()),
        ("(2) 5,000 files of 64 KiB", small.clone()),
        ("(3) 512 MiB file, 1% of blocks changed", delta.clone()),
    ];
    for (n, (title, src)) in sets.iter().enumerate() {
        let bytes = size_of(src);
        let is_delta = n == 2;
        let mut rows = vec![
            Row {
                tool: format!("beamflow push (ssh, {channels} channels)"),
                times: vec![],
                wire: 0,
            },
            Row {
                tool: "beamflow push (same, fsync off)".into(),
                times: vec![],
                wire: 0,
            },
            Row {
                tool: "rsync -a -e ssh".into(),
                times: vec![],
                wire: 0,
            },
            Row {
                tool: "scp -r".into(),
                times: vec![],
                wire: 0,
            },
            Row {
                tool: "ceiling: cat | ssh 'cat >/dev/null'".into(),
                times: vec![],
                wire: 0,
            },
            Row {
                tool: "beamflow push beside its daemon".into(),
                times: vec![],
                wire: 0,
            },
        ];
        for run in 0..runs {
            eprintln!("{title}: run {} of {runs} ...", run + 1);
            // beamflow: for the delta set the far side first receives the old version
            for (row, fsync) in [(0usize, true), (1usize, false)] {
                let (t, wire) = if is_delta {
                    let stage = work.path().join(format!("stage-{run}-{row}"));
                    let _ = std::fs::remove_dir_all(&stage);
                    std::fs::create_dir_all(&stage).unwrap();
                    std::fs::copy(delta_old.join("S_0000.tif"), stage.join("S_0000.tif")).unwrap();
                    std::fs::copy(one.as_path(), stage.join("S_0001.tif")).unwrap();
                    let stage2 = stage.clone();
                    let new = delta.join("S_0000.tif");
                    let swap = move || {
                        std::fs::copy(&new, stage2.join("S_0000.tif")).unwrap();
                    };
                    beamflow(&mut keep, &sshd, &stage, Some(&swap), fsync, channels)
                } else {
                    beamflow(&mut keep, &sshd, src, None, fsync, channels)
                };
                rows[row].times.push(t);
                rows[row].wire = wire;
            }
            // rsync
            let dst = far.join(format!("rsync-{n}-{run}"));
            if is_delta {
                let _ = sh(&format!(
                    "rsync -a -e {} {}/ {ALIAS}:{}/",
                    q(Path::new(&ssh)),
                    q(&delta_old),
                    q(&dst)
                ));
            }
            let (t, out) = sh(&format!(
                "rsync -a --stats -e {} {}/ {ALIAS}:{}/",
                q(Path::new(&ssh)),
                q(src),
                q(&dst)
            ));
            rows[2].times.push(t);
            rows[2].wire = rsync_sent(&out);
            // scp
            let dst = far.join(format!("scp-{n}-{run}"));
            let (t, _) = sh(&format!(
                "scp -F {} -r -q {} {ALIAS}:{}",
                q(&sshd.ssh_config),
                q(src),
                q(&dst)
            ));
            rows[3].times.push(t);
            rows[3].wire = bytes;
            // ceiling
            let (t, _) = sh(&format!(
                "cat {}/* | {ssh} {ALIAS} 'cat > /dev/null'",
                q(src)
            ));
            rows[4].times.push(t);
            rows[4].wire = bytes;
            if !is_delta {
                let (t, wire) = beamflow_beside_daemon(&mut keep, &sshd, src, channels);
                rows[5].times.push(t);
                rows[5].wire = wire;
            }
        }
        if is_delta {
            rows.pop();
        }
        table(title, bytes, &rows);
        verdict(n, &rows);
    }
    println!("\nbeamflow's time includes hashing every file (BLAKE3), checking every TIFF, verifying on the far");
    println!("side, fsync before acknowledging, and registering the DAG; the far side is this machine (2 cores).");
}
