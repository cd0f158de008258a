//! `beamflow-bench daemon`: the running agent over a warm link (its own SSH master at a
//! known socket, far ends kept open) on the loopback sshd with the benchmark's cipher.
//! (1) latency: a stack of 8 × 2 MiB sections waits for its marker; time from writing
//! `DONE` to the collector accepting its DAG, beside `cat FILES | ssh -S <the same master>
//! 'cat > /dev/null'` of the same files — the bytes alone over the same open connection.
//! (2) 5,000 files of 64 KiB moved in, the marker 2 s later: marker → DAG accepted, beside
//! `rsync -a -e ssh` of the same folder (which opens its own connection, as a copy by hand
//! would). (3) the same with sections moving as they land (`[[watch]] file_settle = "1s"`):
//! most of the folder is at the collector when the marker comes.

use super::ssh::q;
use beamflow_e2e::sshd::{Sshd, ALIAS};
use beamflow_e2e::{wait_until, write_tiff, Section, Site};
use std::path::Path;
use std::time::{Duration, Instant};

fn submitted(state: &Path, name: &str) -> bool {
    beamflow_agent::journal::Journal::open_read_only(state)
        .and_then(|j| j.stacks())
        .map(|s| {
            s.iter().any(|r| {
                r.name == name && r.state == beamflow_agent::journal::StackState::Submitted
            })
        })
        .unwrap_or(false)
}

fn sh(cmd: &str) -> Duration {
    super::ssh::sh(cmd).0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Writes the marker `after` the images landed and waits for the stack's DAG to be accepted.
fn marker_to_accepted(state: &Path, dir: &Path, name: &str, after: Duration) -> Duration {
    std::thread::sleep(after);
    let start = Instant::now();
    std::fs::write(dir.join("DONE"), b"").unwrap();
    while !submitted(state, name) {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{name} was not accepted"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

/// Runs both measures and prints the tables.
pub fn run(runs: usize, small_files: u32) {
    let sshd = Sshd::start();
    let mut cfg = std::fs::read_to_string(&sshd.ssh_config).unwrap();
    cfg.push_str("  Ciphers aes128-gcm@openssh.com\n  Compression no\n");
    std::fs::write(&sshd.ssh_config, cfg).unwrap();
    let site = Site::new("1h", "marker = \"DONE\"");
    let ctl = site.dir.join("master.sock");
    let link = sshd.link_toml(&site.config, "own", Some(&ctl), "5s");
    site.edit_config("transport = \"local\"", &link);
    // one job per stack that waits: the collector registers each DAG and runs nothing
    // beside the agent
    site.hold_jobs();
    let env = [("BEAMFLOW_LOG", "info")];
    let mut service = site.start_service_with(&env);
    let mut agent = site.start_agent_with(&env);
    let state = site.dir.join("state");
    let staging = site.dir.join("staging");
    let ssh = format!("ssh -F {} -S {}", q(&sshd.ssh_config), q(&ctl));

    // a stack of 8 sections of 2 MiB, written under a staging folder and moved in
    let make = |name: &str, seed: u64| {
        let d = staging.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..8 {
            write_tiff(
                &d.join(format!("S_{i:04}.tif")),
                &Section::of_size(2 << 20, seed * 10 + i),
            )
            .unwrap();
        }
        let to = site.incoming().join(name);
        std::fs::rename(&d, &to).unwrap();
        to
    };
    // warm: the first stack opens the master and the far ends
    let first = make("warm-up", 1);
    marker_to_accepted(&state, &first, "warm-up", Duration::from_millis(300));
    wait_until(Duration::from_secs(10), "the master", || ctl.exists());

    let (mut ours, mut ceiling) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("latency-{i:02}");
        let dir = make(&name, i as u64 + 2);
        eprintln!("latency: run {} of {runs} ...", i + 1);
        // the marker 0.3 s after the images: too soon for any to be hashed ahead
        ours.push(marker_to_accepted(
            &state,
            &dir,
            &name,
            Duration::from_millis(300),
        ));
        ceiling.push(sh(&format!(
            "cat {}/S_*.tif | {ssh} {ALIAS} 'cat > /dev/null'",
            q(&dir)
        )));
    }
    let (m_ours, m_ceil) = (median(ours.clone()), median(ceiling.clone()));
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!("\n(1) marker written → DAG accepted, 8 sections of 2 MiB (16 MiB), {runs} runs:\n");
    println!("| | median | max |");
    println!("|---|---|---|");
    println!(
        "| beamflow daemon, warm link | {:.3} s | {:.3} s |",
        m_ours.as_secs_f64(),
        max(&ours).as_secs_f64()
    );
    println!(
        "| `cat \\| ssh` over the same open master | {:.3} s | {:.3} s |",
        m_ceil.as_secs_f64(),
        max(&ceiling).as_secs_f64()
    );
    println!(
        "\ngoal: at most cat|ssh + 0.3 s = {:.3} s: {}",
        (m_ceil + Duration::from_millis(300)).as_secs_f64(),
        if m_ours <= m_ceil + Duration::from_millis(300) {
            "met"
        } else {
            "NOT met"
        }
    );

    // (2) many small files, dropped whole and finished with a marker
    let template = super::ssh::small_section(&site.dir);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let far = site.dir.join("far");
    std::fs::create_dir_all(&far).unwrap();
    for run in 0..runs.clamp(1, 3) {
        let name = format!("small-{run}");
        let d = staging.join(&name);
        std::fs::create_dir_all(&d).unwrap();
        eprintln!("{small_files} small files: run {} ...", run + 1);
        for i in 0..small_files {
            let mut b = template.clone();
            b[100..104].copy_from_slice(&i.to_le_bytes());
            b[104..108].copy_from_slice(&(run as u32).to_le_bytes());
            std::fs::write(d.join(format!("S_{i:05}.tif")), b).unwrap();
        }
        let dir = site.incoming().join(&name);
        std::fs::rename(&d, &dir).unwrap();
        // the marker 2 s after the folder landed, as a detector's DONE follows its last frame:
        // the agent hashes what lands while it waits
        ours.push(marker_to_accepted(
            &state,
            &dir,
            &name,
            Duration::from_secs(2),
        ));
        let dst = far.join(format!("rsync-{run}"));
        theirs.push(sh(&format!(
            "rsync -a -e {} {}/ {ALIAS}:{}/",
            q(Path::new(&format!("ssh -F {}", sshd.ssh_config.display()))),
            q(&dir),
            q(&dst)
        )));
    }
    let (m_ours, m_theirs) = (median(ours), median(theirs));
    // (3) the same, the sections sent as they land
    agent.term();
    site.edit_config(
        "marker = \"DONE\"",
        "marker = \"DONE\"\nfile_settle = \"1s\"",
    );
    let mut agent = site.start_agent_with(&env);
    let warm = make("warm-up-2", 99);
    marker_to_accepted(&state, &warm, "warm-up-2", Duration::from_millis(300));
    let mut ahead = Vec::new();
    for run in 0..runs.clamp(1, 3) {
        let name = format!("ahead-{run}");
        let d = staging.join(&name);
        std::fs::create_dir_all(&d).unwrap();
        eprintln!(
            "{small_files} small files sent as they land: run {} ...",
            run + 1
        );
        for i in 0..small_files {
            let mut b = template.clone();
            b[100..104].copy_from_slice(&i.to_le_bytes());
            b[104..108].copy_from_slice(&(run as u32 + 100).to_le_bytes());
            std::fs::write(d.join(format!("S_{i:05}.tif")), b).unwrap();
        }
        let dir = site.incoming().join(&name);
        std::fs::rename(&d, &dir).unwrap();
        ahead.push(marker_to_accepted(
            &state,
            &dir,
            &name,
            Duration::from_secs(2),
        ));
    }
    let m_ahead = median(ahead);
    println!(
        "\n(2) {small_files} files of 64 KiB: marker → DAG accepted vs a copy by hand (median):\n"
    );
    println!("| | seconds | ÷ rsync |");
    println!("|---|---|---|");
    println!(
        "| beamflow daemon, warm link | {:.3} | {:.2}× |",
        m_ours.as_secs_f64(),
        m_ours.as_secs_f64() / m_theirs.as_secs_f64()
    );
    println!(
        "| beamflow daemon, warm link, sections sent as they land (`file_settle = \"1s\"`) | {:.3} | {:.2}× |",
        m_ahead.as_secs_f64(),
        m_ahead.as_secs_f64() / m_theirs.as_secs_f64()
    );
    println!(
        "| rsync -a -e ssh | {:.3} | 1.00× |",
        m_theirs.as_secs_f64()
    );
    println!(
        "\ngoal: at most 0.8× rsync: {}; sent as they land, at most 0.3× rsync: {}",
        if m_ours.as_secs_f64() <= 0.8 * m_theirs.as_secs_f64() {
            "met"
        } else {
            "NOT met"
        },
        if m_ahead.as_secs_f64() <= 0.3 * m_theirs.as_secs_f64() {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("\nbeamflow's time includes hashing (BLAKE3), the TIFF check, verification on the far side,");
    println!("fsync before acknowledging and registering the DAG; rsync does none of these.");
    agent.term();
    service.term();
}
