//! Retention on the collector, against the real binaries: `keep` removes a stack version's
//! received copy and work folder only after its DAG finished (never while a job runs), keeps
//! a FAILED one for a person, and says what it freed.

use beamflow_e2e::*;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn keep_removes_only_what_finished_and_never_what_failed() {
    let site = Site::new("1s", "");
    site.use_standins();
    site.edit_config(
        "legacy_beamline = \"default\"",
        "legacy_beamline = \"default\"\nkeep = \"1s\"",
    );
    // register takes 4 s: the DAG is not finished while it runs
    let _service = site.start_service_env(&[("STANDIN_SLEEP", "register:4")]);
    let slow = site.write_stack("slow", 3, 32);
    site.push(&slow);
    let bad = site.write_stack("bad", 3, 32);
    site.blank(&bad.join("S_0001.tif"), 32);
    site.push(&bad);

    let received = site.remote().join("slow");
    let work = site.work().join("slow/v1");
    site.wait_jobs("slow", LONG, "register RUNNING", |j| {
        j[2]["state"] == "RUNNING"
    });
    // well past `keep` of the stack's submission, but its DAG runs: everything stays
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        work.join("images").exists(),
        "the work folder stays while a job runs"
    );
    assert!(received.join("S_0000.tif").exists());
    assert!(received.join(".beamflow-v1/S_0000.tif").exists());

    site.wait_finished("slow", LONG);
    let start = Instant::now();
    while received.exists() || work.exists() {
        assert!(
            start.elapsed() < LONG,
            "not freed: {:?}\n{}",
            std::fs::read_dir(&received).map(|d| d.count()),
            site.log_tail("service.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // the failed one stays for a person, its files and work folder whole
    std::thread::sleep(Duration::from_secs(2));
    let failed = site
        .jobs()
        .into_iter()
        .filter(|j| j["stack"] == "bad")
        .any(|j| j["state"] == "FAILED");
    assert!(failed, "{:?}", site.jobs());
    assert!(site.remote().join("bad/S_0001.tif").exists());
    assert!(site.work().join("bad/v1").exists());

    let st = site.collector_status();
    let notes: Vec<String> = st["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let freed = notes
        .iter()
        .find(|n| n.starts_with("retention:"))
        .unwrap_or_else(|| panic!("{notes:?}"));
    assert!(freed.contains("1 stack version(s) freed"), "{freed}");
}
