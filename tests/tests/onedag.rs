//! One stack, one DAG, with the real AlignTK 1.0.2 (built from `../shared/aligntk`, or
//! `ALIGNTK_BIN`): sections written one at a time, slower than `settle`, as serial-section
//! imaging writes them. With `expect` the stack is finished once, with one DAG; without a
//! count or marker, versions supersede each other's unstarted work and only the last runs to
//! the end; a version arriving while the previous one's jobs run leaves those jobs alone.

use beamflow_e2e::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(300);

fn section(dir: &Path, i: u32) {
    // written under a temporary name and renamed in, as acquisition software does
    let tmp = dir.join(format!(".S_{i:04}.tif"));
    write_tiff8(
        &tmp,
        &Section {
            width: 256,
            height: 256,
            seed: 11 + i as u64,
            big: false,
            rows_per_strip: 16,
        },
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join(format!("S_{i:04}.tif"))).unwrap();
}

/// Writes `n` sections into `dir`, one every `gap`, on a thread of its own.
fn write_slowly(dir: &Path, n: u32, gap: Duration) -> std::thread::JoinHandle<()> {
    std::fs::create_dir_all(dir).unwrap();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for i in 0..n {
            section(&dir, i);
            std::thread::sleep(gap);
        }
    })
}

fn jobs_of(site: &Site, stack: &str) -> Vec<Value> {
    site.jobs()
        .into_iter()
        .filter(|j| j["stack"] == stack)
        .collect()
}

/// Jobs that ever ran (an event into RUNNING).
fn ran(site: &Site, jobs: &[Value]) -> usize {
    jobs.iter()
        .filter(|j| site.history(j).iter().any(|e| e["to"] == "RUNNING"))
        .count()
}

#[test]
fn a_counted_stack_written_slower_than_settle_is_one_version_and_one_dag() {
    // the pace that made a version per section: each gap longer than settle (six sections:
    // the synthetic specimen makes align diverge on longer stacks)
    let site = Site::new("1s", "expect = 6");
    site.use_aligntk();
    let _service = site.start_service();
    let _agent = site.start_agent();
    let dir = site.incoming().join("slow");
    write_slowly(&dir, 6, Duration::from_millis(1500))
        .join()
        .unwrap();
    let jobs = site.wait_finished("slow", LONG);
    let s = site.stack("slow").unwrap();
    assert_eq!(s["version"], 1, "{s}");
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    assert!(jobs.iter().all(|j| j["version"] == 1));
    eprintln!(
        "6 sections, 1.5 s apart, settle 1 s, expect 6: 1 version, {} jobs ran",
        ran(&site, &jobs)
    );
}

#[test]
fn without_a_count_versions_supersede_each_other_and_only_the_last_runs_to_the_end() {
    let site = Site::new("1s", "");
    site.use_aligntk();
    let _service = site.start_service();
    let _agent = site.start_agent();
    let dir = site.incoming().join("growing");
    write_slowly(&dir, 5, Duration::from_millis(2500))
        .join()
        .unwrap();
    // the last version holds every section and runs to the end
    let last = wait_for(
        LONG,
        "the last version to finish, the earlier ones finished or superseded",
        || {
            let s = site.stack("growing").unwrap();
            let v = s["version"].as_u64().unwrap();
            let jobs = jobs_of(&site, "growing");
            assert!(
                !jobs.iter().any(|j| j["state"] == "FAILED"),
                "{jobs:?}\n{}",
                site.log_tail("service.log")
            );
            let mine: Vec<&Value> = jobs.iter().filter(|j| j["version"] == v).collect();
            let ended = jobs
                .iter()
                .all(|j| j["state"] == "JOB_FINISHED" || j["state"] == "SUPERSEDED");
            (s["state"] == "submitted"
                && !mine.is_empty()
                && mine.iter().all(|j| j["state"] == "JOB_FINISHED")
                && ended)
                .then_some(v)
        },
        || format!("{:?}", jobs_of(&site, "growing")),
    );
    assert!(
        last >= 2,
        "the sections arrived slower than settle: versions were expected"
    );
    let jobs = jobs_of(&site, "growing");
    let superseded: Vec<&Value> = jobs.iter().filter(|j| j["state"] == "SUPERSEDED").collect();
    assert!(!superseded.is_empty(), "{jobs:?}");
    for j in &superseded {
        let v = j["version"].as_u64().unwrap();
        let reason = j["reason"].as_str().unwrap();
        let by: u64 = reason
            .strip_prefix("superseded by v")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{reason}"));
        assert!(by > v && by <= last, "{j}");
        assert!(
            !site.history(j).iter().any(|e| e["to"] == "RUNNING"),
            "a superseded job had run: {j}"
        );
    }
    // in an earlier version, every job the next version found not yet started is superseded;
    // what had started runs to the end
    let arrived = |v: u64| -> String {
        jobs.iter()
            .filter(|j| j["version"] == v)
            .flat_map(|j| site.history(j))
            .map(|e| e["at"].as_str().unwrap().to_string())
            .min()
            .unwrap()
    };
    for v in 1..last {
        let next = arrived(v + 1);
        for j in jobs.iter().filter(|j| j["version"] == v) {
            if j["state"] == "SUPERSEDED" {
                continue;
            }
            let started = site
                .history(j)
                .iter()
                .find(|e| e["to"] == "RUNNING")
                .map(|e| e["at"].as_str().unwrap().to_string());
            assert!(
                started.as_ref().is_some_and(|at| *at <= next),
                "v{v}'s {} had not started when v{} arrived at {next} (started {started:?}), yet it was not superseded: {j}",
                j["name"],
                v + 1
            );
        }
    }
    // and doctor says why, with the keys that fix it
    let out = site.run("beamflow-agent", &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let warn = text
        .lines()
        .find(|l| l.starts_with("WARN  stacks finished too early"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        warn.contains("kept growing")
            && warn.contains("watch[0].expect")
            && warn.contains("settle"),
        "{warn}"
    );
    eprintln!(
        "5 sections, 2.5 s apart, settle 1 s: {last} versions, {} jobs made, {} ran, {} superseded",
        jobs.len(),
        ran(&site, &jobs),
        superseded.len()
    );
}

#[test]
fn a_version_arriving_while_jobs_run_leaves_them_alone() {
    let site = Site::new("1s", "");
    site.use_aligntk();
    let _service = site.start_service();
    let dir = site.incoming().join("busy");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..4 {
        section(&dir, i);
    }
    let _agent = site.start_agent();
    // v1's pairwise step runs
    let mut running = Value::Null;
    wait_until(LONG, "a step of v1 to run", || {
        running = jobs_of(&site, "busy")
            .into_iter()
            .find(|j| {
                j["state"] == "RUNNING" && (j["name"] == "find_rst" || j["name"] == "register")
            })
            .unwrap_or(Value::Null);
        !running.is_null()
    });
    section(&dir, 4);
    site.wait_state("busy", "submitted", LONG);
    wait_until(LONG, "version 2", || {
        site.stack("busy").is_some_and(|s| s["version"] == 2)
            && jobs_of(&site, "busy").iter().any(|j| j["version"] == 2)
    });
    let jobs = site.wait_jobs("busy", LONG, "every job ended", |js| {
        js.iter().all(|j| {
            j["state"] == "JOB_FINISHED" || j["state"] == "SUPERSEDED" || j["state"] == "FAILED"
        })
    });
    let id = running["id"].clone();
    let was_running = jobs.iter().find(|j| j["id"] == id).unwrap();
    assert_eq!(
        was_running["state"], "JOB_FINISHED",
        "the running job was not left alone: {was_running}"
    );
    let v1: Vec<&Value> = jobs.iter().filter(|j| j["version"] == 1).collect();
    let after: Vec<&&Value> = v1
        .iter()
        .filter(|j| j["id"].as_u64() > id.as_u64() && j["state"] == "SUPERSEDED")
        .collect();
    assert!(!after.is_empty(), "{v1:?}");
    assert!(after.iter().all(|j| j["reason"] == "superseded by v2"));
    let v2: Vec<&Value> = jobs.iter().filter(|j| j["version"] == 2).collect();
    assert_eq!(v2.len(), 4);
    assert!(v2.iter().all(|j| j["state"] == "JOB_FINISHED"), "{v2:?}");
}
