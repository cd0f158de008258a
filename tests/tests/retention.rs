//! Retention on the collector, against the real binaries: `keep` removes a stack version's
//! received copy and work folder only after its DAG finished (never while a job runs), keeps
//! a FAILED one for a person, and says what it freed.

use beamflow_e2e::*;
use std::time::Duration;

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
    let work = site.work().join("slow/@v1");
    site.wait_jobs("slow", LONG, "register RUNNING", |j| {
        j[2]["state"] == "RUNNING"
    });
    // well past `keep` of the stack's submission, but its DAG runs: everything stays
    holds_for(Duration::from_secs(2), "the running stack's files", || {
        let all = work.join("images").exists()
            && received.join("S_0000.tif").exists()
            && received.join(".beamflow-v1/S_0000.tif").exists();
        (!all).then(|| "retention took a stack whose job runs".to_string())
    });

    site.wait_finished("slow", LONG);
    wait_for(
        LONG,
        "the received copy and the work folder to be freed",
        || (!received.exists() && !work.exists()).then_some(()),
        || site.log_tail("service.log"),
    );
    // the failed one stays for a person, its files and work folder whole
    holds_for(Duration::from_secs(2), "the failed stack's files", || {
        let whole =
            site.remote().join("bad/S_0001.tif").exists() && site.work().join("bad/@v1").exists();
        (!whole).then(|| "retention took a stack held for a person".to_string())
    });
    let failed = site
        .jobs()
        .into_iter()
        .filter(|j| j["stack"] == "bad")
        .any(|j| j["state"] == "FAILED");
    assert!(failed, "{:?}", site.jobs());
    assert!(site.remote().join("bad/S_0001.tif").exists());
    assert!(site.work().join("bad/@v1").exists());

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

#[test]
fn the_beamline_frees_its_disk_only_after_the_far_side_verified_and_the_dag_is_done() {
    let site = Site::new("1s", "delete_after = \"verified+done\"");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    site.edit_config("outcome_every = \"30s\"", "outcome_every = \"300ms\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    let good = site.write_stack("good", 3, 32);
    let copy = site.dir.join("copy-of-good");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&good).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let bad = site.write_stack("bad", 3, 32);
    site.blank(&bad.join("S_0001.tif"), 32);

    wait_for(
        LONG,
        "the good stack to be freed",
        || site.stack("good").filter(|s| s["state"] == "freed"),
        || format!("{:?}\n{}", site.status(), site.log_tail("agent.log")),
    );
    let s = site.stack("good").unwrap();
    assert!(
        s["reason"].as_str().unwrap().starts_with("freed 3 file(s)"),
        "{s}"
    );
    assert!(!good.exists(), "the emptied stack folder goes too");
    // the collector holds every byte of what the beamline removed
    assert_same_tree(&copy, &site.remote().join("good"));
    // a stack whose DAG failed keeps its images for a person
    wait_for(
        LONG,
        "the bad stack's DAG to be FAILED",
        || {
            site.stack("bad")
                .filter(|s| s["outcome"].as_str().unwrap_or("").starts_with("FAILED"))
        },
        || format!("{:?}", site.status()),
    );
    holds_for(
        Duration::from_secs(1),
        "the failed stack's images kept on the beamline",
        || {
            let n = std::fs::read_dir(&bad).unwrap().count();
            let state = site.stack("bad").unwrap()["state"].clone();
            (n != 3 || state != "submitted").then(|| format!("{n} entries, state {state}"))
        },
    );
}

#[test]
fn nested_stacks_have_disjoint_work_folders_and_retention_of_one_spares_the_other() {
    let site = Site::new("1s", "");
    site.use_standins();
    site.edit_config(
        "legacy_beamline = \"default\"",
        "legacy_beamline = \"default\"\nkeep = \"1s\"",
    );
    let _service = site.start_service();
    // `s/v1` was the work folder of stack `s` before versions had names of their own
    let inner = site.write_stack("s/v1", 3, 32);
    site.blank(&inner.join("S_0001.tif"), 32); // FAILED: kept for a person
    site.push(&inner);
    let outer = site.write_stack("s", 3, 32);
    site.push(&outer);
    let inner_work = site.work().join("s/v1/@v1");
    let outer_work = site.work().join("s/@v1");
    site.wait_finished("s", LONG);
    assert!(!inner_work.starts_with(&outer_work) && !outer_work.starts_with(&inner_work));
    wait_for(
        LONG,
        "the outer stack's work folder to go",
        || (!outer_work.exists()).then_some(()),
        || site.log_tail("service.log"),
    );
    holds_for(Duration::from_secs(2), "`s/v1`'s work folder", || {
        (!inner_work.join("images.lst").is_file())
            .then(|| "retention of `s` took `s/v1`'s work folder".to_string())
    });
    assert!(
        inner_work.join("images.lst").is_file(),
        "retention of `s` took `s/v1`'s work folder"
    );
    assert!(site.remote().join("s/v1/S_0001.tif").is_file());
    // a folder named like a version folder is refused with what to do, nothing left behind
    let odd = site.write_stack("t/@v2", 2, 32);
    let out = site.run("beamflow-agent", &["push", odd.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("\"@v2\"") && err.contains("rename"),
        "{err}"
    );
    assert!(!site.remote().join("t").exists());
}
