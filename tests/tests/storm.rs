//! A kill storm across two hosts: the agent in a "beamline" network namespace, a real sshd,
//! `serve` and the collector service in an "hpc" namespace, the link between them a veth
//! pair. For a minute (`BEAMFLOW_STORM_SECS`), while 20 stacks arrive and some are rewritten
//! into new versions, SIGKILL hits the agent, a `serve` far end, the service and the SSH
//! master at random; the killed programs are started again as systemd would. Afterwards
//! every stack's files are byte-identical at the collector, every version the agent
//! journaled is registered exactly once, no temporary file is left, and nothing panicked.

use beamflow_e2e::hosts::Hosts;
use beamflow_e2e::sshd::Sshd;
use beamflow_e2e::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STACKS: usize = 20;

fn storm_secs() -> u64 {
    std::env::var("BEAMFLOW_STORM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// A small deterministic generator: the same seed gives the same storm.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn agent(hosts: &Hosts, site: &Site) -> Proc {
    let mut cmd = hosts.exec(&hosts.beamline);
    cmd.arg(bin("beamflow-agent"))
        .args(["run", "--config"])
        .arg(&site.config)
        .env("BEAMFLOW_LOG", "info");
    spawn_logged(
        cmd,
        &site.dir.join("agent.log"),
        "the agent on the beamline host",
    )
}

fn kill9(pids: &[i32]) -> usize {
    for p in pids {
        unsafe {
            libc::kill(*p, libc::SIGKILL);
        }
    }
    pids.len()
}

fn write_section(path: &Path, seed: u64) {
    // written elsewhere and renamed in, as detectors that finish a file do
    let tmp = path.with_extension("tif.part");
    write_tiff8(
        &tmp,
        &Section {
            width: 64,
            height: 64,
            seed,
            big: false,
            rows_per_strip: 16,
        },
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_minute_of_kill_9_across_two_hosts_loses_and_duplicates_nothing() {
    let hosts = Hosts::make();
    let sshd = Sshd::start_at(Some(&hosts.hpc), &hosts.hpc_to_beamline, "");
    let site = Site::new("500ms", "marker = \"DONE\"");
    let link = sshd.link_toml(&site.config, "own", None, "1s");
    site.edit_config("transport = \"local\"", &link);
    site.edit_config("workflow = \"aligntk\"", "workflow = \"sum\"");
    site.append_config(
        "[workflows.sum]\nto_8bit = \"off\"\n[[workflows.sum.steps]]\nname = \"sum\"\ncommand = \"sh -c 'ls -l images/ > sum.txt'\"\n",
    );
    let seed = std::env::var("BEAMFLOW_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64)
        | 1;
    eprintln!("storm seed {seed} (BEAMFLOW_STORM_SEED replays it)");
    let mut rng = Rng(seed);

    let mut service = hosts.service(&site);
    let mut agent_p = agent(&hosts, &site);
    let stop = Arc::new(AtomicBool::new(false));
    // the beamline writes 20 stacks over the storm, rewriting a section of every fourth
    // after it was marked done (a new version)
    let writer = {
        let (incoming, stop) = (site.incoming(), stop.clone());
        let every = Duration::from_millis(storm_secs() * 1000 * 2 / 3 / STACKS as u64);
        std::thread::spawn(move || {
            for i in 0..STACKS {
                let dir = incoming.join(format!("stack {i:02}"));
                std::fs::create_dir_all(&dir).unwrap();
                for s in 0..3 {
                    write_section(&dir.join(format!("S_{s:04}.tif")), (i * 10 + s) as u64);
                }
                std::fs::write(dir.join("DONE"), b"").unwrap();
                if i % 4 == 3 {
                    std::thread::sleep(every / 2);
                    write_section(&dir.join("S_0001.tif"), 1000 + i as u64);
                }
                std::thread::sleep(every);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        })
    };

    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(storm_secs()) {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
        match rng.below(4) {
            0 => {
                agent_p.kill9();
                *kills.entry("agent").or_default() += 1;
                std::thread::sleep(Duration::from_millis(rng.below(1000)));
                agent_p = agent(&hosts, &site);
            }
            1 => {
                let n = kill9(&hosts.pids(&hosts.hpc, &["beamflow-collector", "serve"]));
                *kills.entry("serve").or_default() += n;
            }
            2 => {
                service.kill9();
                *kills.entry("service").or_default() += 1;
                std::thread::sleep(Duration::from_millis(rng.below(1000)));
                service = hosts.service(&site);
            }
            _ => {
                let n = kill9(&hosts.pids(&hosts.beamline, &["ssh", "-M"]));
                *kills.entry("ssh master").or_default() += n;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!("kills: {kills:?}");
    for (what, n) in &kills {
        assert!(*n > 0, "no {what} was killed: the storm proves little");
    }

    // quiet again: every stack arrives whole, as the beamline last wrote it
    let names: Vec<String> = (0..STACKS).map(|i| format!("stack {i:02}")).collect();
    wait_until(
        Duration::from_secs(180),
        "every stack to be submitted",
        || {
            names.iter().all(|n| {
                site.stack(n).is_some_and(|s| s["state"] == "submitted")
                    && same_tree(&site.incoming().join(n), &site.remote().join(n))
            })
        },
    );
    for n in &names {
        assert!(
            same_tree(&site.incoming().join(n), &site.remote().join(n)),
            "{n} differs"
        );
    }
    // each version the agent journaled is registered exactly once
    let jobs: Vec<Value> = {
        let out = hosts
            .exec(&hosts.hpc)
            .arg(bin("beamflow-collector"))
            .args(["ls", "--json", "--config"])
            .arg(&site.config)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).expect("ls --json")
    };
    let mut registered: HashMap<(String, u64), usize> = HashMap::new();
    for j in &jobs {
        *registered
            .entry((
                j["stack"].as_str().unwrap().to_string(),
                j["version"].as_u64().unwrap(),
            ))
            .or_default() += 1;
    }
    for n in &names {
        let s = site.stack(n).unwrap();
        let v = s["version"].as_u64().unwrap();
        for version in 1..=v {
            let got = registered.get(&(n.clone(), version)).copied().unwrap_or(0);
            // a version superseded before it was sent is never registered; none twice
            assert!(got <= 1, "{n} v{version} registered {got} times");
        }
        assert_eq!(
            registered.get(&(n.clone(), v)).copied(),
            Some(1),
            "{n}'s last version v{v} is not registered once: {registered:?}"
        );
    }
    // nothing temporary is left, nothing panicked
    let temps: Vec<String> = walkdir::WalkDir::new(site.data_root())
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part") || n.ends_with(".delta") || n.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "left behind: {temps:?}");
    for log in ["agent.log", "service.log"] {
        let text = std::fs::read_to_string(site.dir.join(log)).unwrap_or_default();
        assert!(!text.contains("panicked"), "{log} holds a panic");
    }
    eprintln!(
        "storm: {} stacks identical, {} versions registered once each, kills {kills:?}",
        names.len(),
        registered.len()
    );
    drop(agent_p);
    drop(service);
}

/// Whether two folders hold the same files with the same bytes (snapshots aside).
fn same_tree(a: &Path, b: &Path) -> bool {
    let list = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".tif"))
                    .map(|n| (n.clone(), std::fs::read(d.join(&n)).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (x, y) = (list(a), list(b));
    !x.is_empty() && x == y
}
