//! The collector runs the DAG on the local scheduler: real service, real launcher processes.
//! The full DAG runs the real AlignTK 1.0.2; tests that need a fault on demand (a tool that
//! fails, hangs, is slow, or counts its runs) use the stand-ins in tests/aligntk/standin.py,
//! which agree with the real tools on formats (8-bit only, the summary tables, the abort
//! message) and say so in their own doc comment.

use beamflow_e2e::*;
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn names(jobs: &[Value]) -> Vec<String> {
    jobs.iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect()
}

/// The real AlignTK 1.0.2 on a detector's 16-bit sections: preparation converts them to
/// 8-bit with one window for the stack, and every step, apply_map included, finishes.
#[test]
fn a_full_aligntk_dag_runs_to_job_finished_and_leaves_what_align_needs() {
    let site = Site::new("1s", "");
    site.use_aligntk();
    site.edit_config("workflow = \"aligntk\"", "workflow = \"aligntk-apply\"");
    let _service = site.start_service();
    let dir = site.write_stack("run1", 4, 256);
    site.push(&dir);
    let jobs = site.wait_finished("run1", LONG);
    assert_eq!(
        names(&jobs),
        [
            "qa",
            "find_rst",
            "register",
            "align",
            "apply_map",
            "preview"
        ]
    );
    let work = site.work().join("run1/@v1");
    for f in [
        "preview.png",
        "images.lst",
        "pairs.lst",
        "schedule.lst",
        "qa.json",
        "conversion.json",
        "cmaps/summary.out",
        "maps/summary.out",
        "cmaps/S_0000_S_0001.map",
        "maps/S_0002_S_0003.map",
        "amaps/S_0003.map",
        "aligned/S_0003.tif",
        "aligned/size",
    ] {
        assert!(work.join(f).exists(), "{f} missing in the work folder");
    }
    assert_eq!(
        std::fs::read_to_string(work.join("images.lst")).unwrap(),
        "S_0000\nS_0001\nS_0002\nS_0003\n"
    );
    assert!(std::fs::read_to_string(work.join("pairs.lst"))
        .unwrap()
        .starts_with("S_0000 S_0001 S_0000_S_0001\n"));
    let align_cmd = jobs[3]["command"].as_str().unwrap();
    assert!(
        align_cmd.contains("-grid_size 256x256") && align_cmd.contains("-fixed S_0000"),
        "{align_cmd}"
    );
    // images/ holds 8-bit copies made with one window; the received 16-bit originals stay
    let qa: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("qa.json")).unwrap()).unwrap();
    for s in qa["sections"].as_array().unwrap() {
        assert_eq!(s["bits"], 8, "{s}");
        assert_eq!(s["received"], "16-bit", "{s}");
        assert!(
            s["conversion"]
                .as_str()
                .unwrap()
                .starts_with("16-bit → 8-bit, percentile:0.1-99.9 window"),
            "{s}"
        );
    }
    assert_same_tree(&dir, &site.remote().join("run1"));
    // every transition is an event with a reason
    let h = site.history(&jobs[1]);
    let path: Vec<&str> = h.iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert_eq!(
        path,
        [
            "CREATED",
            "AWAITING_PARENTS",
            "READY",
            "PREPROCESSED",
            "RUNNING",
            "RUN_DONE",
            "POSTPROCESSED",
            "JOB_FINISHED"
        ]
    );
    let st = site.collector_status();
    assert_eq!(st["stacks"][0]["counts"]["JOB_FINISHED"], 6);
    // ls filters by state and stack
    let out = site.run(
        "beamflow-collector",
        &["ls", "--json", "--stack", "run1", "--state", "JOB_FINISHED"],
    );
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 6);
    let out = site.run("beamflow-collector", &["ls", "--json", "--state", "READY"]);
    assert_eq!(
        serde_json::from_slice::<Vec<Value>>(&out.stdout)
            .unwrap()
            .len(),
        0
    );
    let table = String::from_utf8_lossy(
        &site
            .run("beamflow-collector", &["ls", "--stack", "run1"])
            .stdout,
    )
    .into_owned();
    assert!(
        table.starts_with("ID") && table.contains("align") && table.contains("JOB_FINISHED"),
        "{table}"
    );
    let text =
        String::from_utf8_lossy(&site.run("beamflow-collector", &["status"]).stdout).into_owned();
    assert!(
        text.contains("run1") && text.contains("JOB_FINISHED 6"),
        "{text}"
    );
}

#[test]
fn a_blank_section_that_aligntk_passes_with_exit_0_is_caught_and_held() {
    let site = Site::new("1s", "");
    // no qa step: find_rst must run on the blank section and exit 0 with a nan quality
    site.append_config(&format!(
        "[workflows.noqa]\nbin = \"{}\"\n[[workflows.noqa.steps]]\nname = \"find_rst\"\ncommand = \"{{bin}}/find_rst -pairs pairs.lst -tif -images images/ -output cmaps/ -max_res 1024 -scale 1.0 -tx -50-50 -ty -50-50 -summary cmaps/summary.out\"\ncheck_summary = \"cmaps/summary.out\"\n",
        aligntk_bin().display()
    ));
    site.edit_config("workflow = \"aligntk\"", "workflow = \"noqa\"");
    let _service = site.start_service();
    let dir = site.write_stack("blank", 4, 256);
    site.blank(&dir.join("S_0002.tif"), 256);
    site.push(&dir);
    let jobs = site.wait_jobs("blank", LONG, "FAILED", |j| j[0]["state"] == "FAILED");
    let reason = jobs[0]["reason"].as_str().unwrap();
    assert_eq!(jobs[0]["attempts"], 1, "a data fault is not retried");
    let h = site.history(&jobs[0]);
    let err = h
        .iter()
        .find(|e| e["to"] == "RUN_ERROR")
        .expect("a RUN_ERROR event");
    let why = err["reason"].as_str().unwrap();
    // the real table names both images of each pair; each bad pair once; and the section
    // qa's measures (taken now: this workflow has no qa step) find blank
    assert!(
        why.contains("S_0002.tif (every pixel is ")
            && why.contains(") is blank or featureless by qa's measures"),
        "{why}"
    );
    assert!(
        why.contains("S_0001.tif and S_0002.tif have quality nan"),
        "{why}"
    );
    assert!(
        why.contains("S_0002.tif and S_0003.tif have quality nan"),
        "{why}"
    );
    assert_eq!(why.matches("have quality nan").count(), 2, "{why}");
    assert!(reason.contains("held for a person"), "{reason}");

    // with the built-in qa step the same stack never reaches AlignTK
    let site = Site::new("1s", "");
    site.use_standins();
    let log = site.dir.join("standin.log");
    let _service = site.start_service_env(&[("STANDIN_LOG", log.to_str().unwrap())]);
    let dir = site.write_stack("blank2", 3, 32);
    site.blank(&dir.join("S_0001.tif"), 32);
    site.push(&dir);
    let jobs = site.wait_jobs("blank2", LONG, "qa FAILED", |j| j[0]["state"] == "FAILED");
    let h = site.history(&jobs[0]);
    let errs: Vec<&str> = h
        .iter()
        .filter(|e| e["to"] == "RUN_ERROR")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(
        errs.iter().all(|r| r.contains("S_0001.tif: blank")),
        "{errs:?}"
    );
    // a data fault: held after one attempt, not run three times
    assert_eq!(jobs[0]["attempts"], 1, "{errs:?}");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        jobs[0]["reason"]
            .as_str()
            .unwrap()
            .contains("held for a person, not retried"),
        "{}",
        jobs[0]["reason"]
    );
    assert_eq!(jobs[1]["state"], "AWAITING_PARENTS");
    assert!(
        !log.exists(),
        "no AlignTK step may run on a stack that failed qa"
    );
}

#[test]
fn a_missing_command_fails_at_once_with_its_path() {
    let site = Site::new("1s", "");
    site.append_config("[workflows.aligntk]\nbin = \"/opt/nowhere/aligntk\"\n");
    let _service = site.start_service();
    let dir = site.write_stack("m", 2, 32);
    site.push(&dir);
    let jobs = site.wait_jobs("m", LONG, "find_rst FAILED", |j| j[1]["state"] == "FAILED");
    assert_eq!(jobs[0]["state"], "JOB_FINISHED");
    assert_eq!(
        jobs[1]["attempts"], 1,
        "no retry storm for a missing program"
    );
    let r = jobs[1]["reason"].as_str().unwrap();
    assert!(
        r.contains("/opt/nowhere/aligntk/find_rst does not exist"),
        "{r}"
    );
}

#[test]
fn a_failing_step_is_retried_then_held_with_its_stderr() {
    let site = Site::new("1s", "");
    site.use_standins();
    let _service = site.start_service_env(&[("STANDIN_FAIL", "register")]);
    let dir = site.write_stack("f", 3, 32);
    site.push(&dir);
    let jobs = site.wait_jobs("f", LONG, "register FAILED", |j| j[2]["state"] == "FAILED");
    assert_eq!(jobs[2]["attempts"], 3);
    let h = site.history(&jobs[2]);
    let errors: Vec<&str> = h
        .iter()
        .filter(|e| e["to"] == "RUN_ERROR")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 3, "{h:#?}");
    assert!(
        errors[0].starts_with("exit 134") && errors[0].contains("register: failing as told"),
        "{}",
        errors[0]
    );
    assert_eq!(h.iter().filter(|e| e["to"] == "RESTART_READY").count(), 2);
    assert!(jobs[2]["reason"]
        .as_str()
        .unwrap()
        .contains("out of attempts (3)"));
    // core dumps are off: an aborting register leaves no core file
    let work = site.work().join("f/@v1");
    assert!(!work.join("core").exists());
    // a person fixes it and retries
    let out = site.run("beamflow-collector", &["retry", &jobs[2]["id"].to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("RESTART_READY"));
}

#[test]
fn with_submit_off_everywhere_work_waits_and_status_says_why() {
    let site = Site::new("1s", "");
    site.use_standins();
    site.edit_config("submit = true", "submit = false");
    let _service = site.start_service();
    let dir = site.write_stack("w", 2, 32);
    site.push(&dir);
    site.wait_jobs("w", LONG, "qa PREPROCESSED", |j| {
        j[0]["state"] == "PREPROCESSED"
    });
    holds_for(Duration::from_secs(1), "no launcher submitted", || {
        let st = site.collector_status();
        (!st["launchers"].as_array().unwrap().is_empty()).then(|| format!("{st}"))
    });
    let st = site.collector_status();
    let notes = st["notes"].to_string();
    assert!(notes.contains("submit = false"), "{notes}");
    let text =
        String::from_utf8_lossy(&site.run("beamflow-collector", &["status"]).stdout).into_owned();
    assert!(
        text.contains("note: ") && text.contains("submit = false"),
        "{text}"
    );
}

#[test]
fn two_stacks_share_one_allocation_and_max_queued_holds() {
    let site = Site::new("1s", "");
    site.use_standins();
    site.edit_config("idle_exit = \"2s\"", "idle_exit = \"20s\"");
    site.edit_config("slots = 0", "slots = 2");
    let _service = site.start_service_env(&[("STANDIN_SLEEP", "register:1")]);
    let a = site.write_stack("a", 3, 32);
    let b = site.write_stack("b", 3, 32);
    site.push(&a);
    // b arrives once a's launcher is in the queue: max_queued = 1 must make b share it
    wait_until(LONG, "a launcher for a", || {
        !site.collector_status()["launchers"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    site.push(&b);
    let ja = site.wait_finished("a", LONG);
    let jb = site.wait_finished("b", LONG);
    let st = site.collector_status();
    let launchers = st["launchers"].as_array().unwrap();
    assert_eq!(
        launchers.len(),
        1,
        "max_queued = 1: one launcher ran everything: {launchers:#?}"
    );
    let lid = launchers[0]["id"].as_u64().unwrap();
    for j in ja.iter().chain(&jb) {
        assert_eq!(j["launcher"].as_u64(), Some(lid), "{j}");
    }
}

#[test]
fn the_service_killed_while_jobs_run_reconciles_and_runs_nothing_twice() {
    let site = Site::new("1s", "");
    site.use_standins();
    site.edit_config("heartbeat_timeout = \"3s\"", "heartbeat_timeout = \"10s\"");
    let log = site.dir.join("standin.log");
    let env = [
        ("STANDIN_SLEEP", "register:4"),
        ("STANDIN_LOG", log.to_str().unwrap()),
    ];
    let mut service = site.start_service_env(&env);
    let dir = site.write_stack("k", 3, 32);
    site.push(&dir);
    site.wait_jobs("k", LONG, "register RUNNING", |j| {
        j[2]["state"] == "RUNNING"
    });
    service.kill9();
    // the service stays down a moment, as after a crash: the launcher's calls fail meanwhile
    std::thread::sleep(Duration::from_secs(1));
    let _service = site.start_service_env(&env);
    let jobs = site.wait_finished("k", LONG);
    assert_eq!(
        jobs[2]["attempts"],
        1,
        "register ran once: {:#?}\n--- launcher 1 ---\n{}",
        site.history(&jobs[2]),
        std::fs::read_to_string(site.dir.join("state/launchers/launcher-1.log"))
            .unwrap_or_default()
    );
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        runs.lines().filter(|l| l.starts_with("register ")).count(),
        1,
        "{runs}"
    );
}

#[test]
fn a_launcher_whose_heartbeats_stop_is_declared_lost_and_its_job_runs_again() {
    let site = Site::new("1s", "");
    site.use_standins();
    let mut service = site.start_service_env(&[("STANDIN_SLEEP", "align:3")]);
    let dir = site.write_stack("h", 3, 32);
    site.push(&dir);
    let jobs = site.wait_jobs("h", LONG, "align RUNNING", |j| j[3]["state"] == "RUNNING");
    let first = jobs[3]["launcher"].as_u64().unwrap();
    // freeze the launcher process (its batch job is still there, but it says nothing)
    let launcher_pid = children_matching(service.pid(), "launcher")
        .into_iter()
        .chain(children_matching(service.pid(), "sh"))
        .next()
        .expect("the launcher process");
    let frozen = Frozen::stop(vec![-launcher_pid]);
    let jobs = site.wait_finished("h", LONG);
    assert_ne!(
        jobs[3]["launcher"].as_u64().unwrap(),
        first,
        "a new launcher ran it"
    );
    let h = site.history(&jobs[3]);
    assert!(
        h.iter()
            .any(|e| e["to"] == "RUN_TIMEOUT"
                && e["reason"].as_str().unwrap().contains("no heartbeat")),
        "{h:#?}"
    );
    drop(frozen);
    let st = site.collector_status();
    assert!(
        st["launchers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == first && l["state"] == "LOST"),
        "{st}"
    );
    service.term();
}

#[test]
fn a_person_can_kill_a_running_job() {
    let site = Site::new("1s", "");
    site.use_standins();
    let _service = site.start_service_env(&[("STANDIN_HANG", "find_rst")]);
    let dir = site.write_stack("x", 2, 32);
    site.push(&dir);
    let jobs = site.wait_jobs("x", LONG, "find_rst RUNNING", |j| {
        j[1]["state"] == "RUNNING"
    });
    let out = site.run("beamflow-collector", &["kill", &jobs[1]["id"].to_string()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("USER_KILLED"));
    // the launcher ends the process group: nothing named find_rst keeps running
    wait_until(
        Duration::from_secs(15),
        "the hanging find_rst to end",
        || {
            let out = std::process::Command::new("pgrep")
                .args(["-f", &format!("find_rst.*{}", site.dir.display())])
                .output()
                .unwrap();
            out.stdout.is_empty()
        },
    );
    let out = site.run("beamflow-collector", &["retry", "99999"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no job 99999"));
}

/// Pearson correlation of two same-sized images over the pixels both cover (apply_map pads
/// its canvas with 0).
fn correlation(a: &[u8], b: &[u8]) -> f64 {
    let both: Vec<(f64, f64)> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| **x > 0 && **y > 0)
        .map(|(x, y)| (*x as f64, *y as f64))
        .collect();
    let n = both.len() as f64;
    let (ma, mb) = (
        both.iter().map(|p| p.0).sum::<f64>() / n,
        both.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in &both {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// The real AlignTK finds the shifts the synthetic stack was made with, and after apply_map
/// neighbouring sections correlate better than they did as received.
#[test]
fn a_stack_with_known_shifts_aligns_and_neighbours_correlate_better_after() {
    let site = Site::new("1s", "");
    site.use_aligntk();
    site.edit_config("workflow = \"aligntk\"", "workflow = \"aligntk-apply\"");
    let _service = site.start_service();
    let dir = site.write_stack("shifted", 4, 256);
    site.push(&dir);
    site.wait_finished("shifted", LONG);
    let work = site.work().join("shifted/@v1");
    // find_rst's translations are the synthetic shifts (write_stack's seeds are i + 7)
    let table = std::fs::read_to_string(work.join("cmaps/summary.out")).unwrap();
    for i in 0..3u64 {
        let (a, b) = (
            beamflow_agent::synth::shift_of(i + 7),
            beamflow_agent::synth::shift_of(i + 8),
        );
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("S_{i:04} ")))
            .unwrap_or_else(|| panic!("no row for S_{i:04} in {table}"));
        let f: Vec<f64> = row
            .split_whitespace()
            .skip(2)
            .map(|t| t.parse().unwrap())
            .collect();
        let (tx, ty) = (f[3], f[4]);
        eprintln!(
            "S_{i:04} -> S_{:04}: made with shift ({}, {}), find_rst found ({tx}, {ty})",
            i + 1,
            b.0 - a.0,
            b.1 - a.1
        );
        assert!(
            (tx - (b.0 - a.0) as f64).abs() <= 1.0 && (ty - (b.1 - a.1) as f64).abs() <= 1.0,
            "{row}"
        );
    }
    let mut better = 0;
    for i in 0..3 {
        let raw = |k: u32| read8(&work.join(format!("images/S_{k:04}.tif"))).2;
        let aligned = |k: u32| read8(&work.join(format!("aligned/S_{k:04}.tif"))).2;
        let before = correlation(&raw(i), &raw(i + 1));
        let after = correlation(&aligned(i), &aligned(i + 1));
        eprintln!(
            "S_{i:04} ~ S_{:04}: correlation {before:.3} as received, {after:.3} aligned",
            i + 1
        );
        if after > before {
            better += 1;
        }
    }
    assert_eq!(
        better, 3,
        "every neighbouring pair should correlate better once aligned"
    );
}

/// With the real tools and no summary check, a blank section lets align exit 0 with no maps:
/// the declared outputs catch it, naming what is missing, and hold it at once.
#[test]
fn an_align_that_leaves_no_maps_is_failed_naming_them() {
    let site = Site::new("1s", "");
    let bin = aligntk_bin();
    site.append_config(&format!(
        "[workflows.nochecks]\nbin = \"{}\"\n\
         [[workflows.nochecks.steps]]\nname = \"find_rst\"\ncommand = \"{{bin}}/find_rst -pairs pairs.lst -tif -images images/ -output cmaps/ -max_res 1024 -scale 1.0 -tx -50-50 -ty -50-50 -summary cmaps/summary.out\"\n\
         [[workflows.nochecks.steps]]\nname = \"register\"\nafter = [\"find_rst\"]\ncommand = \"{{bin}}/register -pairs pairs.lst -images images/ -output maps/ -initial_map cmaps/ -distortion 13.0 -output_level 6 -depth 6 -quality 0.5 -summary maps/summary.out -min_overlap 10.0\"\n\
         [[workflows.nochecks.steps]]\nname = \"align\"\nafter = [\"register\"]\ncommand = \"{{bin}}/align -images images/ -image_list images.lst -maps maps/ -map_list pairs.lst -output amaps/ -schedule schedule.lst -incremental -output_grid grids/ -grid_size {{grid_size}} -fixed {{first}}\"\noutputs = [\"amaps/{{image}}.map\"]\nabsent = [\"grids/fold*.pnm\"]\n",
        bin.display()
    ));
    site.edit_config("workflow = \"aligntk\"", "workflow = \"nochecks\"");
    let _service = site.start_service();
    let dir = site.write_stack("nomaps", 4, 256);
    site.blank(&dir.join("S_0002.tif"), 256);
    site.push(&dir);
    let jobs = site.wait_jobs("nomaps", LONG, "align FAILED", |j| {
        j.len() == 3 && j[2]["state"] == "FAILED"
    });
    let reason = jobs[2]["reason"].as_str().unwrap();
    assert_eq!(jobs[2]["attempts"], 1, "{reason}");
    assert!(reason.contains("of its outputs are missing"), "{reason}");
    assert!(
        reason.contains("amaps/S_0002.map (for S_0002.tif)"),
        "{reason}"
    );
}

/// The built-in AlignTK workflow fans its pairwise steps out over chunks of a stack, each job
/// with its own list and summary and its parents only the jobs whose output it reads; what it
/// computes is what the whole-stack DAG computes, checked against the real tools run here over
/// the whole stack's lists: find_rst's maps byte for byte, register's within 0.01 px (AlignTK's
/// `compare_maps`; register draws its moves from one `drand48` sequence per process, so a pair's
/// map depends on how many pairs the process registered before it), and the aligned sections
/// within AlignTK's rendering of those maps (`compare_images`), the numbers printed.
#[test]
fn a_fanned_out_dag_computes_what_the_whole_stack_does() {
    let site = Site::new("1s", "");
    site.use_aligntk_in_chunks(8);
    site.edit_config("workflow = \"aligntk\"", "workflow = \"aligntk-apply\"");
    let _service = site.start_service();
    // 12 sections: pairs 0-7 and 8-10 (chunks of 8)
    let dir = site.write_stack("fanned", 12, 128);
    site.push(&dir);
    let jobs = site.wait_finished("fanned", LONG);
    assert_eq!(
        names(&jobs),
        [
            "qa",
            "find_rst[0-7]",
            "find_rst[8-10]",
            "register[0-7]",
            "register[8-10]",
            "align",
            "apply_map",
            "preview"
        ]
    );
    let parents = |n: &str| -> Vec<u64> {
        let j = jobs.iter().find(|j| j["name"] == n).unwrap();
        serde_json::from_value(j["parents"].clone()).unwrap()
    };
    let id = |n: &str| {
        jobs.iter().find(|j| j["name"] == n).unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(parents("find_rst[8-10]"), [id("qa")]);
    assert_eq!(parents("register[8-10]"), [id("find_rst[8-10]")]);
    assert_eq!(
        parents("align"),
        [id("register[0-7]"), id("register[8-10]")]
    );
    // a person still reads the stack as its steps
    let ls = |args: &[&str]| {
        let mut all = vec!["ls", "--stack", "fanned"];
        all.extend(args);
        String::from_utf8_lossy(&site.run("beamflow-collector", &all).stdout).into_owned()
    };
    let steps = ls(&[]);
    assert!(
        steps.contains("find_rst ×2") && steps.contains("register ×2") && !steps.contains("[8-10]"),
        "{steps}"
    );
    assert_eq!(steps.lines().count(), 1 + 6, "{steps}");
    let every = ls(&["--every"]);
    assert!(every.contains("register[8-10]"), "{every}");
    let work = site.work().join("fanned/@v1");
    assert_eq!(
        std::fs::read_to_string(work.join("pairs_0008-0010.lst")).unwrap(),
        "S_0008 S_0009 S_0008_S_0009\nS_0009 S_0010 S_0009_S_0010\nS_0010 S_0011 S_0010_S_0011\n"
    );
    for f in ["cmaps/summary_0000-0007.out", "maps/summary_0008-0010.out"] {
        assert!(
            work.join(f).is_file(),
            "{f}: each job writes its own summary"
        );
    }
    // the whole-stack DAG, by the same tools, beside the fanned-out outputs
    let bin = aligntk_bin();
    let run = |tool: &str, args: &str| -> String {
        let out = std::process::Command::new(bin.join(tool))
            .args(args.split_whitespace())
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for d in [
        "whole_cmaps",
        "whole_maps",
        "whole_amaps",
        "whole_grids",
        "whole_aligned",
        "again_maps",
        "again_amaps",
        "again_grids",
        "again_aligned",
    ] {
        std::fs::create_dir_all(work.join(d)).unwrap();
    }
    run("find_rst", "-pairs pairs.lst -tif -images images/ -output whole_cmaps/ -max_res 1024 -scale 1.0 -tx -50-50 -ty -50-50 -summary whole_cmaps/summary.out");
    run("register", "-pairs pairs.lst -images images/ -output whole_maps/ -initial_map whole_cmaps/ -distortion 13.0 -output_level 6 -depth 6 -quality 0.5 -summary whole_maps/summary.out -min_overlap 10.0");
    run("align", "-images images/ -image_list images.lst -maps whole_maps/ -map_list pairs.lst -output whole_amaps/ -schedule schedule.lst -incremental -output_grid whole_grids/ -grid_size 128x128 -fixed S_0000");
    run("apply_map", "-image_list images.lst -images images/ -maps whole_amaps/ -output whole_aligned/ -memory 1000");
    // the noise floor: the whole stack again with register's pairs in the reverse order (each
    // pair then draws other numbers from its sequence), as valid a run as the first
    let reversed: String = std::fs::read_to_string(work.join("pairs.lst"))
        .unwrap()
        .lines()
        .rev()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(work.join("pairs_reversed.lst"), reversed).unwrap();
    run("register", "-pairs pairs_reversed.lst -images images/ -output again_maps/ -initial_map whole_cmaps/ -distortion 13.0 -output_level 6 -depth 6 -quality 0.5 -summary again_maps/summary.out -min_overlap 10.0");
    run("align", "-images images/ -image_list images.lst -maps again_maps/ -map_list pairs.lst -output again_amaps/ -schedule schedule.lst -incremental -output_grid again_grids/ -grid_size 128x128 -fixed S_0000");
    run("apply_map", "-image_list images.lst -images images/ -maps again_amaps/ -output again_aligned/ -memory 1000");
    let rms = |tool: &str, flag: &str, a: &str, b: &str| -> f64 {
        let said = run(tool, &format!("-{flag}1 {a} -{flag}2 {b}"));
        said.lines()
            .find_map(|l| l.strip_prefix("RMS difference = "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{tool} {a} {b}: {said}"))
    };
    let pairs: Vec<String> = std::fs::read_to_string(work.join("pairs.lst"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap().to_string())
        .collect();
    assert_eq!(pairs.len(), 11);
    let (mut worst_map, mut worst_section) = (0.0f64, 0.0f64);
    for p in &pairs {
        let (a, b) = (format!("cmaps/{p}.map"), format!("whole_cmaps/{p}.map"));
        assert!(
            std::fs::read(work.join(&a)).unwrap() == std::fs::read(work.join(&b)).unwrap(),
            "{a} differs from the whole stack's"
        );
        let d = rms(
            "compare_maps",
            "map",
            &format!("maps/{p}.map"),
            &format!("whole_maps/{p}.map"),
        );
        worst_map = worst_map.max(d);
    }
    // the noise floor: register's maps of two whole-stack runs whose pairs came in another order
    let floor = pairs
        .iter()
        .map(|p| {
            rms(
                "compare_maps",
                "map",
                &format!("whole_maps/{p}.map"),
                &format!("again_maps/{p}.map"),
            )
        })
        .fold(0.0f64, f64::max);
    for i in 0..12 {
        let (a, b) = (
            format!("aligned/S_{i:04}.tif"),
            format!("whole_aligned/S_{i:04}.tif"),
        );
        worst_section = worst_section.max(rms("compare_images", "image", &a, &b));
    }
    eprintln!(
        "fanned out vs whole stack: find_rst maps identical; register maps RMS ≤ {worst_map:.6} px \
         (two whole-stack runs: ≤ {floor:.6} px); aligned sections RMS ≤ {worst_section:.3} gray levels"
    );
    assert!(worst_map < 0.01, "register's maps moved {worst_map} px");
    assert!(
        floor < 0.01,
        "two whole-stack runs' maps differ by {floor} px"
    );
    // what AlignTK renders from maps a thousandth of a pixel apart: a few gray levels at edges
    assert!(
        worst_section < 4.0,
        "aligned sections differ by {worst_section} gray levels RMS"
    );
}

/// A stack that grew by a section comes as a new version; its fanned-out jobs whose inputs
/// are the same bytes as a finished job of the version before (with the same command) take
/// that job's outputs instead of running: the new version costs the pairs that changed,
/// align and apply_map, not the whole stack again. With a fixed 8-bit window the prepared
/// sections keep their bytes (a percentile window over the stack moves with every section).
#[test]
fn a_grown_stack_reuses_the_pair_work_it_already_did() {
    let site = Site::new("1s", "");
    site.use_aligntk_in_chunks(8);
    site.append_config("to_8bit = \"fixed:0-65535\"\n");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"aligntk-apply\"");
    let _service = site.start_service();
    let dir = site.write_stack("grown", 12, 128);
    site.push(&dir);
    site.wait_finished("grown", LONG);
    // one more section; the twelve before keep their bytes
    site.write_stack("grown", 13, 128);
    site.push(&dir);
    let jobs = site.wait_jobs("grown", LONG, "both versions JOB_FINISHED", |j| {
        j.iter().filter(|j| j["version"] == 2).count() == 8
            && j.iter().all(|j| j["state"] == "JOB_FINISHED")
    });
    let v2: Vec<&Value> = jobs.iter().filter(|j| j["version"] == 2).collect();
    let of = |n: &str| v2.iter().find(|j| j["name"] == n).copied().unwrap();
    let history = |j: &Value| {
        String::from_utf8_lossy(
            &site
                .run("beamflow-collector", &["history", &j["id"].to_string()])
                .stdout,
        )
        .into_owned()
    };
    for reused in ["find_rst[0-7]", "register[0-7]"] {
        let h = history(of(reused));
        assert!(h.contains("reused job"), "{reused} ran again:\n{h}");
        assert_eq!(of(reused)["attempts"], 0, "{reused}");
    }
    for ran in ["find_rst[8-11]", "register[8-11]", "align", "apply_map"] {
        assert_eq!(of(ran)["attempts"], 1, "{ran} should have run");
    }
    let work = site.work().join("grown/@v2");
    for f in [
        "cmaps/S_0000_S_0001.map",
        "maps/summary_0000-0007.out",
        "maps/S_0011_S_0012.map",
        "aligned/S_0012.tif",
    ] {
        assert!(work.join(f).is_file(), "{f} missing in v2's work folder");
    }
}

/// A launcher whose jobs end within moments holds some ahead of its one slot. Cancelled as a
/// batch system cancels an allocation (SIGTERM to the launcher) while it holds them, it gives
/// them back: every job still runs to the end, the one it was running counts its attempt,
/// and each one given back unstarted spends none.
#[test]
fn a_launcher_cancelled_while_holding_jobs_ahead_gives_them_back_with_no_attempt_spent() {
    use beamflow_protocol::api::{Client, SubmitRequest};
    let site = Site::new("1s", "");
    site.edit_config("slots = 0", "slots = 1");
    let mut wf = String::from("[workflows.many]\n");
    for i in 0..150 {
        wf += &format!("[[workflows.many.steps]]\nname = \"s{i:03}\"\ncommand = \"sleep 0.04\"\n");
    }
    site.append_config(&wf);
    let service = site.start_service();
    let client = Client::from_state_dir(&site.dir.join("state")).unwrap();
    client
        .submit(&SubmitRequest {
            beamline: "bl".into(),
            stack: "many".into(),
            version: 1,
            workflow: "many".into(),
            files: site.snapshot("bl", "many"),
            keep_older: false,
            partial: false,
        })
        .unwrap();
    // a dozen short runs: the launcher has seen its jobs are short, and holds some ahead
    site.wait_jobs("many", LONG, "a dozen finished", |j| {
        j.iter().filter(|j| j["state"] == "JOB_FINISHED").count() >= 12
    });
    let launcher = children_matching(service.pid(), "launcher")
        .into_iter()
        .next()
        .expect("the launcher process");
    // SAFETY: a signal to a process this test's service started
    unsafe { libc::kill(launcher, libc::SIGTERM) };
    let jobs = site.wait_finished("many", LONG);
    assert_eq!(jobs.len(), 150);
    let mut given_back = 0;
    for j in &jobs {
        let h = site.history(j);
        let returned = h.iter().any(|e| {
            e["to"] == "RESTART_READY" && e["reason"].as_str().unwrap().starts_with("not started")
        });
        let timed_out = h.iter().any(|e| e["to"] == "RUN_TIMEOUT");
        if returned && !timed_out {
            given_back += 1;
            assert_eq!(
                j["attempts"], 1,
                "given back unstarted, then run once: {h:#?}"
            );
        } else if !timed_out {
            assert_eq!(j["attempts"], 1, "{h:#?}");
        }
    }
    assert!(
        given_back >= 1,
        "the cancelled launcher held no job ahead of its slot; its log:\n{}",
        std::fs::read_to_string(site.dir.join("state/launchers/launcher-1.log"))
            .unwrap_or_default()
    );
}
