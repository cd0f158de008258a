//! Immutable versions and beamline namespaces, against the real binaries: two agents with the
//! same stack names feed one collector, a version 2 arrives while version 1's job runs, and
//! agents are killed during a version switch. A workflow step (`hash-inputs`, a test binary)
//! records the BLAKE3 of the inputs a job sees, at its start and at its end.

use beamflow_e2e::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// Adds the `hashes` workflow: one step that hashes `images/` at its start, sleeps, and
/// hashes it again (sections linked as received, not converted for AlignTK); and makes it
/// every watch root's workflow.
fn use_hash_workflow(site: &Site, sleep_secs: u32) {
    let bin_dir = bin("hash-inputs").parent().unwrap().to_path_buf();
    site.edit_config("workflow = \"aligntk\"", "workflow = \"hashes\"");
    site.append_config(&format!(
        "[workflows.hashes]\nbin = \"{}\"\nto_8bit = \"off\"\n[[workflows.hashes.steps]]\nname = \"hash\"\ncommand = \"{{bin}}/hash-inputs images start.b3 --sleep {sleep_secs} end.b3\"\n",
        bin_dir.display()
    ));
}

/// BLAKE3 of every file in a folder, by name.
fn hashes_of(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            let hash = blake3::hash(&std::fs::read(e.path()).unwrap())
                .to_hex()
                .to_string();
            (name, hash)
        })
        .filter(|(n, _)| !n.starts_with('.'))
        .collect()
}

/// What a `hash-inputs` output file says.
fn recorded(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect()
}

/// A second agent on the same collector: its own journal, watch root and beamline name.
fn second_agent(site: &Site, name: &str) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(&site.config).unwrap();
    let text = text
        .replacen(
            &format!("name = \"{BEAMLINE}\""),
            &format!("name = \"{name}\""),
            1,
        )
        .replacen(
            "state_dir = \"./state\"",
            &format!("state_dir = \"./state-{name}\""),
            1,
        )
        .replacen(
            "path = \"./incoming\"",
            &format!("path = \"./incoming-{name}\""),
            1,
        );
    let config = site.dir.join(format!("beamflow-{name}.toml"));
    std::fs::write(&config, text).unwrap();
    let incoming = site.dir.join(format!("incoming-{name}"));
    std::fs::create_dir_all(&incoming).unwrap();
    (config, incoming)
}

fn write_sections(dir: &Path, n: u32, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        write_tiff8(
            &dir.join(format!("S_{i:04}.tif")),
            &Section {
                width: 64,
                height: 64,
                seed: seed + i as u64,
                big: false,
                rows_per_strip: 16,
            },
        )
        .unwrap();
    }
}

fn run_with(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("beamflow-agent"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn jobs_of(site: &Site, beamline: &str, stack: &str) -> Vec<Value> {
    site.jobs()
        .into_iter()
        .filter(|j| j["beamline"] == beamline && j["stack"] == stack)
        .collect()
}

fn wait_done(site: &Site, beamline: &str, stack: &str, versions: usize) -> Vec<Value> {
    wait_for(
        LONG,
        &format!("{beamline}/{stack}: {versions} finished job(s)"),
        || {
            let jobs = jobs_of(site, beamline, stack);
            let done = jobs.len() == versions && jobs.iter().all(|j| j["state"] == "JOB_FINISHED");
            done.then_some(jobs)
        },
        || {
            format!(
                "{:#?}\n{}",
                jobs_of(site, beamline, stack),
                site.log_tail("service.log")
            )
        },
    )
}

#[test]
fn two_beamlines_with_the_same_stack_names_each_get_their_own_bytes_and_dag() {
    let site = Site::new("300ms", "");
    use_hash_workflow(&site, 0);
    let (config_b, incoming_b) = second_agent(&site, "bl-b");
    let _service = site.start_service();
    let a = site.incoming().join("run1");
    let b = incoming_b.join("run1");
    write_sections(&a, 3, 100);
    write_sections(&b, 3, 900);
    assert_ne!(hashes_of(&a), hashes_of(&b));
    site.push(&a);
    let out = run_with(&config_b, &["push", b.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_done(&site, BEAMLINE, "run1", 1);
    wait_done(&site, "bl-b", "run1", 1);
    // both arrived byte-identical, each in its own beamline's folder
    assert_same_tree(&a, &site.data_root().join(BEAMLINE).join("run1"));
    assert_same_tree(&b, &site.data_root().join("bl-b").join("run1"));
    // each job read its own beamline's bytes
    for (bl, src) in [(BEAMLINE, &a), ("bl-b", &b)] {
        let work = site.dir.join("work").join(bl).join("run1/@v1");
        assert_eq!(recorded(&work.join("start.b3")), hashes_of(src), "{bl}");
    }
    // and status names the beamline of every stack
    let st = site.collector_status();
    let mut seen: Vec<&str> = st["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["beamline"].as_str().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, [BEAMLINE, "bl-b"]);
}

#[test]
fn a_beamline_the_collector_does_not_list_is_refused_by_name() {
    let site = Site::new("300ms", "");
    site.edit_config("beamlines = []", &format!("beamlines = [\"{BEAMLINE}\"]"));
    let (config_x, incoming_x) = second_agent(&site, "intruder");
    let _service = site.start_service();
    let dir = incoming_x.join("s");
    write_sections(&dir, 2, 1);
    let out = run_with(&config_x, &["push", dir.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("beamline `intruder` may not deliver here"),
        "{text}"
    );
    assert!(!site.data_root().join("intruder").exists());
}

#[test]
fn a_version_2_arriving_while_version_1_runs_leaves_version_1_s_inputs_unchanged() {
    let site = Site::new("300ms", "");
    use_hash_workflow(&site, 6);
    let _service = site.start_service();
    let dir = site.incoming().join("s");
    write_sections(&dir, 3, 10);
    let v1 = hashes_of(&dir);
    let _agent = site.start_agent();
    let work = site.work().join("s");
    wait_until(LONG, "v1's job to start", || {
        work.join("@v1/start.b3").exists()
    });
    // the beamline rewrites every section while v1's job runs
    write_sections(&dir, 3, 70);
    let v2 = hashes_of(&dir);
    assert!(v1.values().all(|h| !v2.values().any(|g| g == h)));
    wait_until(LONG, "v2 to be registered", || {
        site.jobs()
            .iter()
            .any(|j| j["stack"] == "s" && j["version"] == 2)
    });
    assert!(
        !work.join("@v1/end.b3").exists(),
        "v2 came only after v1's job ended; the test proves nothing"
    );
    let jobs = wait_done(&site, BEAMLINE, "s", 2);
    assert_eq!(jobs.len(), 2);
    assert_eq!(recorded(&work.join("@v1/start.b3")), v1);
    assert_eq!(
        recorded(&work.join("@v1/end.b3")),
        v1,
        "v1's inputs changed while it ran"
    );
    assert_eq!(recorded(&work.join("@v2/start.b3")), v2);
    assert_eq!(recorded(&work.join("@v2/end.b3")), v2);
    // v1's snapshot still holds v1's bytes; the live folder holds v2's
    assert_eq!(hashes_of(&site.remote().join("s/.beamflow-v1")), v1);
    assert_eq!(hashes_of(&site.remote().join("s/.beamflow-v2")), v2);
    assert_same_tree(&dir, &site.remote().join("s"));
}

#[test]
fn agents_killed_during_a_version_switch_lose_and_duplicate_nothing() {
    let site = Site::new("300ms", "");
    site.edit_config("max_rate = 0", "max_rate = \"8 MiB\"");
    use_hash_workflow(&site, 0);
    let _service = site.start_service();
    let dir = site.write_big_stack("big", 6, 2048);
    let v1 = hashes_of(&dir);
    let mut agent = site.start_agent();
    site.wait_state("big", "submitted", LONG);
    // version 2: half of every section changes (sent as deltas against version 1)
    for i in 0..6u64 {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(format!("S_{i:04}.tif")))
            .unwrap();
        let noise: Vec<u8> = (0..4u64 << 20)
            .map(|k| (k.wrapping_mul(2654435761).wrapping_add(i * 97) >> 13) as u8)
            .collect();
        f.write_all_at(&noise, 1 << 20).unwrap();
    }
    let v2 = hashes_of(&dir);
    let mut kills = 0;
    for _ in 0..3 {
        wait_until(LONG, "version 2 to be sent", || {
            site.stack("big")
                .is_some_and(|s| s["version"] == 2 && s["state"] != "waiting")
        });
        // the instant of the kill is the scenario: a moment into sending version 2
        std::thread::sleep(Duration::from_millis(200));
        if site.stack("big").is_some_and(|s| s["state"] == "submitted") {
            break;
        }
        agent.kill9();
        kills += 1;
        agent = site.start_agent();
    }
    assert!(kills >= 1, "no kill landed during the switch");
    site.wait_state("big", "submitted", LONG);
    let s = site.stack("big").unwrap();
    assert_eq!(s["version"], 2, "{s}");
    let jobs = wait_done(&site, BEAMLINE, "big", 2);
    assert_eq!(jobs.len(), 2, "one DAG per version, no more: {jobs:#?}");
    assert_eq!(hashes_of(&site.remote().join("big/.beamflow-v1")), v1);
    assert_eq!(hashes_of(&site.remote().join("big/.beamflow-v2")), v2);
    assert_eq!(recorded(&site.work().join("big/@v1/start.b3")), v1);
    assert_eq!(recorded(&site.work().join("big/@v2/start.b3")), v2);
    assert_same_tree(&dir, &site.remote().join("big"));
}
