//! Streaming (`[[watch]] stream = true`) with the real daemon, the local transport, the local
//! scheduler and the real AlignTK: a stack's pairs are aligned while the detector still
//! writes it, the version that seals it reuses that work, and what comes out is what the
//! whole-stack DAG computes.

use beamflow_e2e::*;
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);
const SIDE: u32 = 128;

/// A site whose daemon streams stacks that their marker finishes, into the AlignTK workflow
/// that renders aligned sections. Its pairs go in chunks of 8 (the default is a job per
/// pair: the demo's test and `beamflow-bench stream` run that), so that a stack of 18
/// sections is three versions whose jobs the test can name.
fn streaming_site() -> Site {
    let site = Site::new(
        "30s",
        "marker = \"DONE\"\nstream = true\nfile_settle = \"1s\"",
    );
    site.use_aligntk_in_chunks(8);
    site.edit_config("workflow = \"aligntk\"", "workflow = \"aligntk-apply\"");
    site
}

fn of<'a>(jobs: &'a [Value], version: u64, name: &str) -> Option<&'a Value> {
    jobs.iter()
        .find(|j| j["version"] == version && j["name"] == name)
}

/// The version holding a finished `name` (a chunk of pairs), once one does.
fn finished(jobs: &[Value], name: &str) -> Option<u64> {
    jobs.iter()
        .find(|j| j["name"] == name && j["state"] == "JOB_FINISHED")
        .and_then(|j| j["version"].as_u64())
}

/// RMS difference in gray levels of two aligned sections over the canvas both cover, with
/// the canvases' origins matched. apply_map sizes and places its canvas from the maps'
/// extent, so maps a thousandth of a pixel apart may round to canvases a pixel apart
/// (AlignTK's `compare_images` then refuses them): the best of the offsets up to a pixel,
/// over the pixels both cover.
fn overlap_rms(a: &std::path::Path, b: &std::path::Path) -> f64 {
    let ((wa, ha, pa), (wb, hb, pb)) = (read8(a), read8(b));
    let (wa, ha, wb, hb) = (wa as usize, ha as usize, wb as usize, hb as usize);
    assert!(
        wa.abs_diff(wb) <= 1 && ha.abs_diff(hb) <= 1,
        "{}: {wa}x{ha} against {wb}x{hb}",
        a.display()
    );
    let at = |p: &[u8], w: usize, h: usize, x: isize, y: isize| -> Option<f64> {
        (x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h)
            .then(|| p[y as usize * w + x as usize] as f64)
    };
    let mut best = f64::MAX;
    for (dx, dy) in (-1..=1).flat_map(|dx| (-1..=1).map(move |dy| (dx, dy))) {
        let (mut sum, mut n) = (0.0, 0usize);
        for y in 0..ha as isize {
            for x in 0..wa as isize {
                let (Some(u), Some(v)) = (at(&pa, wa, ha, x, y), at(&pb, wb, hb, x + dx, y + dy))
                else {
                    continue;
                };
                if u == 0.0 || v == 0.0 {
                    continue; // apply_map pads its canvas with 0
                }
                sum += (u - v) * (u - v);
                n += 1;
            }
        }
        best = best.min((sum / n.max(1) as f64).sqrt());
    }
    best
}

fn history(site: &Site, job: &Value) -> String {
    String::from_utf8_lossy(
        &site
            .run("beamflow-collector", &["history", &job["id"].to_string()])
            .stdout,
    )
    .into_owned()
}

/// Every version of `stack` the collector holds, from `status --json`: (version, partial).
fn versions(site: &Site, stack: &str) -> Vec<(u64, bool)> {
    site.collector_status()["stacks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|r| r["stack"] == stack)
        .map(|r| (r["version"].as_u64().unwrap(), r["partial"] == true))
        .collect()
}

/// Waits until no job of `stack` is open, then checks that some were cancelled and that each
/// cancelled one's history says `why`.
fn cancelled_saying(site: &Site, stack: &str, why: &str) {
    let jobs = site.wait_jobs(stack, LONG, "no job left open", |j| {
        j.iter()
            .all(|j| j["state"] == "JOB_FINISHED" || j["state"] == "USER_KILLED")
    });
    let cancelled: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["state"] == "USER_KILLED")
        .collect();
    assert!(!cancelled.is_empty(), "nothing was cancelled: {jobs:#?}");
    for j in cancelled {
        let h = history(site, j);
        assert!(
            h.contains(why),
            "{} ended without saying why:\n{h}",
            j["name"]
        );
    }
}

/// The stack is written one section at a time: its first chunks of pairs run (and finish)
/// before the last section exists, a section rewritten after its pair ran makes that pair
/// run again on its new bytes, and the marker's version runs only what was left: its first
/// two chunks of find_rst and register are reused, not run. Its maps are the whole-stack
/// DAG's within 0.01 px, and its aligned sections within AlignTK's rendering noise.
#[test]
fn a_stack_streams_while_it_is_written_and_its_seal_runs_only_what_is_left() {
    let site = streaming_site();
    let _service = site.start_service();
    let _agent = site.start_agent();
    // 18 sections: pairs 0-7 and 8-15 may run before the seal; pair 16 needs section 17
    for i in 0..9 {
        site.write_section("live", i, SIDE, i as u64 + 7);
    }
    let jobs = site.wait_jobs("live", LONG, "find_rst[0-7] finished", |j| {
        finished(j, "find_rst[0-7]").is_some()
    });
    let first = finished(&jobs, "find_rst[0-7]").unwrap();
    assert_eq!(
        site.stack("live").unwrap()["state"],
        "waiting",
        "the stack is not finished yet"
    );
    // section 3 is written again (the detector's second try) after its pairs ran
    site.write_section("live", 3, SIDE, 1003);
    for i in 9..18 {
        site.write_section("live", i, SIDE, i as u64 + 7);
    }
    let jobs = site.wait_jobs("live", LONG, "register[8-15] finished", |j| {
        finished(j, "register[8-15]").is_some()
            && j.iter().any(|j| {
                j["name"] == "find_rst[0-7]"
                    && j["state"] == "JOB_FINISHED"
                    && j["version"].as_u64() > Some(first)
            })
    });
    assert!(
        versions(&site, "live").iter().all(|(_, partial)| *partial),
        "only partial versions before the marker: {:?}",
        versions(&site, "live")
    );
    let again = jobs
        .iter()
        .filter(|j| {
            j["name"] == "find_rst[0-7]"
                && j["state"] == "JOB_FINISHED"
                && j["version"].as_u64() > Some(first)
        })
        .map(|j| history(&site, j))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        again.lines().any(|l| l.contains("RUNNING")),
        "the rewritten section's pairs did not run again:\n{again}"
    );
    std::fs::write(site.incoming().join("live").join("DONE"), b"").unwrap();
    site.wait_state("live", "submitted", LONG);
    let sealed = versions(&site, "live")
        .into_iter()
        .find(|(_, partial)| !partial)
        .map(|(v, _)| v)
        .expect("the sealed version");
    let jobs = site.wait_jobs("live", LONG, "the sealed version finished", |j| {
        j.iter()
            .filter(|j| j["version"] == sealed)
            .all(|j| j["state"] == "JOB_FINISHED")
            && of(j, sealed, "preview").is_some()
    });
    for reused in [
        "find_rst[0-7]",
        "find_rst[8-15]",
        "register[0-7]",
        "register[8-15]",
    ] {
        let j = of(&jobs, sealed, reused).unwrap();
        let h = history(&site, j);
        assert!(h.contains("reused job"), "{reused} ran again:\n{h}");
        assert_eq!(j["attempts"], 0, "{reused}");
    }
    for ran in ["qa", "find_rst[16]", "register[16]", "align", "apply_map"] {
        assert_eq!(of(&jobs, sealed, ran).unwrap()["attempts"], 1, "{ran}");
    }
    // what the sealed version reused is the rewritten section's, not the first bytes
    let work = site.work().join(format!("live/@v{sealed}"));
    let h = history(&site, of(&jobs, sealed, "find_rst[0-7]").unwrap());
    assert!(
        !h.contains(&format!("of v{first}:")),
        "the sealed version reused the pairs of the section's first bytes:\n{h}"
    );

    // the same sections, not streamed: the whole-stack DAG
    let whole = site.incoming().join("whole");
    std::fs::create_dir_all(&whole).unwrap();
    for i in 0..18 {
        let n = format!("S_{i:04}.tif");
        std::fs::copy(site.incoming().join("live").join(&n), whole.join(&n)).unwrap();
    }
    std::fs::write(whole.join("DONE"), b"").unwrap();
    site.wait_state("whole", "submitted", LONG);
    site.wait_finished("whole", LONG);
    let other = site.work().join("whole/@v1");
    let bin = aligntk_bin();
    let rms = |tool: &str, flag: &str, a: &std::path::Path, b: &std::path::Path| -> f64 {
        let out = std::process::Command::new(bin.join(tool))
            .arg(format!("-{flag}1"))
            .arg(a)
            .arg(format!("-{flag}2"))
            .arg(b)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        said.lines()
            .find_map(|l| l.strip_prefix("RMS difference = "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{tool} {}: {said}", a.display()))
    };
    let (mut worst_map, mut worst_section) = (0.0f64, 0.0f64);
    for p in 0..17 {
        let m = format!("maps/S_{p:04}_S_{:04}.map", p + 1);
        worst_map = worst_map.max(rms("compare_maps", "map", &work.join(&m), &other.join(&m)));
    }
    for i in 0..18 {
        let m = format!("amaps/S_{i:04}.map");
        worst_map = worst_map.max(rms("compare_maps", "map", &work.join(&m), &other.join(&m)));
        let a = format!("aligned/S_{i:04}.tif");
        worst_section = worst_section.max(overlap_rms(&work.join(&a), &other.join(&a)));
    }
    eprintln!(
        "streamed vs whole stack: register and align maps RMS ≤ {worst_map:.6} px; aligned sections RMS ≤ {worst_section:.3} gray levels"
    );
    assert!(worst_map < 0.01, "the streamed maps moved {worst_map} px");
    assert!(
        worst_section < 4.0,
        "aligned sections differ by {worst_section} gray levels RMS"
    );
}

/// Both sides killed with SIGKILL in the middle of a streamed stack, after its first chunk's
/// pairs ran: started again, nothing is lost and nothing runs twice. The daemon's journal
/// knows which sections went as which version, so no version is submitted again; the
/// sections already at the collector are not sent again; the chunk that ran before the kill
/// is reused by every later version.
#[test]
fn a_streamed_stack_survives_kill_9_of_both_sides_and_runs_nothing_twice() {
    let site = streaming_site();
    let mut service = site.start_service();
    let mut agent = site.start_agent();
    for i in 0..9 {
        site.write_section("killed", i, SIDE, i as u64 + 7);
    }
    site.wait_jobs("killed", LONG, "register[0-7] finished", |j| {
        finished(j, "register[0-7]").is_some()
    });
    let before = versions(&site, "killed");
    agent.kill9();
    service.kill9();
    let _service = site.start_service();
    let _agent = site.start_agent();
    for i in 9..18 {
        site.write_section("killed", i, SIDE, i as u64 + 7);
    }
    site.wait_jobs("killed", LONG, "register[8-15] finished", |j| {
        finished(j, "register[8-15]").is_some()
    });
    std::fs::write(site.incoming().join("killed").join("DONE"), b"").unwrap();
    site.wait_state("killed", "submitted", LONG);
    let all = versions(&site, "killed");
    let sealed = all
        .iter()
        .find(|(_, partial)| !partial)
        .map(|(v, _)| *v)
        .expect("the sealed version");
    let jobs = site.wait_jobs("killed", LONG, "the sealed version finished", |j| {
        let mine: Vec<_> = j.iter().filter(|j| j["version"] == sealed).collect();
        !mine.is_empty() && mine.iter().all(|j| j["state"] == "JOB_FINISHED")
    });
    // one partial version before the kill, one after (pairs 8-15), then the seal
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(all.len(), 3, "a version submitted twice: {all:?}");
    for name in [
        "find_rst[0-7]",
        "register[0-7]",
        "find_rst[8-15]",
        "register[8-15]",
    ] {
        let ran: Vec<u64> = jobs
            .iter()
            .filter(|j| j["name"] == name && j["attempts"].as_u64() > Some(0))
            .map(|j| j["version"].as_u64().unwrap())
            .collect();
        assert_eq!(ran.len(), 1, "{name} ran in versions {ran:?}");
        let h = history(&site, of(&jobs, sealed, name).unwrap());
        assert!(h.contains("reused job"), "the seal ran {name} again:\n{h}");
    }
    // the sections that were at the collector before the kill did not travel again
    let log = std::fs::read_to_string(site.dir.join("agent.log")).unwrap();
    let submitted = log
        .lines()
        .find(|l| l.contains(" submitted") && l.contains("stack=killed"))
        .unwrap_or_else(|| panic!("no submission in:\n{log}"));
    assert!(
        submitted.contains("bytes=0"),
        "the marker moved bytes again: {submitted}"
    );
}

/// A stack whose folder is removed at the beamline while it streams (never finished, only
/// partial versions at the collector) is abandoned: every job of it still open is cancelled,
/// each saying why, none is left waiting or running, and what arrived of it is removed.
#[test]
fn a_stack_abandoned_while_it_streams_has_its_open_jobs_cancelled_saying_why() {
    let site = streaming_site();
    let _service = site.start_service();
    let _agent = site.start_agent();
    // 512² sections: find_rst of eight pairs takes long enough to be caught under way
    for i in 0..9 {
        site.write_section("left", i, 512, i as u64 + 7);
    }
    site.wait_jobs("left", LONG, "the partial version's jobs", |j| {
        j.iter().any(|j| j["name"] == "register[0-7]")
    });
    std::fs::remove_dir_all(site.incoming().join("left")).unwrap();
    let s = site.wait_state("left", "gone", LONG);
    assert!(s["reason"].as_str().unwrap().contains("removed"), "{s}");
    cancelled_saying(&site, "left", "abandoned");
    assert!(
        !site.remote().join("left").join("S_0000.tif").exists(),
        "the partial copy stays at the collector"
    );
    // the service still answers, and no launcher runs a job of it
    holds_for(
        Duration::from_secs(2),
        "no job of the abandoned stack runs again",
        || {
            site.jobs()
                .iter()
                .find(|j| j["stack"] == "left" && j["state"] == "RUNNING")
                .map(|j| format!("{j}"))
        },
    );
}

/// A streamed stack not finished after its root's `max_wait` is abandoned at the collector:
/// its partial version's open jobs are cancelled, each saying max_wait passed, the agent's
/// status says so, and no further partial version goes. What ran is kept; finished later,
/// the stack is sent whole and its sealed version runs to the end.
#[test]
fn a_streamed_stack_past_max_wait_has_its_open_jobs_cancelled_and_runs_whole_when_finished() {
    let site = Site::new(
        "30s",
        "marker = \"DONE\"\nstream = true\nfile_settle = \"1s\"",
    );
    site.edit_config("max_wait = \"2h\"", "max_wait = \"10s\"");
    site.use_aligntk_in_chunks(8);
    site.edit_config("workflow = \"aligntk\"", "workflow = \"aligntk-apply\"");
    site.edit_config("outcome_every = \"30s\"", "outcome_every = \"1s\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    // 512² sections: find_rst of eight pairs outlasts max_wait
    for i in 0..9 {
        site.write_section("late", i, 512, i as u64 + 7);
    }
    let s = wait_for(
        LONG,
        "the agent to abandon the stack's streamed work",
        || {
            site.stack("late")
                .filter(|s| s["outcome"].as_str().unwrap_or("").contains("abandoned"))
        },
        || format!("{:?}", site.stack("late")),
    );
    assert_eq!(s["state"], "waiting", "{s}");
    assert!(
        s["outcome"].as_str().unwrap().contains("10s (max_wait)"),
        "{s}"
    );
    cancelled_saying(&site, "late", "not finished after 10s (max_wait)");
    // it streams no more: a section more is no new partial version
    site.write_section("late", 9, 512, 16);
    holds_for(
        Duration::from_secs(4),
        "no partial version after abandonment",
        || {
            let v = versions(&site, "late");
            (v.len() != 1).then(|| format!("{v:?}"))
        },
    );
    // finished after all: sent whole, its sealed version runs to the end
    std::fs::write(site.incoming().join("late").join("DONE"), b"").unwrap();
    site.wait_state("late", "submitted", LONG);
    let sealed = versions(&site, "late")
        .into_iter()
        .find(|(_, partial)| !partial)
        .map(|(v, _)| v)
        .expect("the sealed version");
    let jobs = site.wait_jobs("late", LONG * 2, "the sealed version finished", |j| {
        let mine: Vec<_> = j.iter().filter(|j| j["version"] == sealed).collect();
        !mine.is_empty() && mine.iter().all(|j| j["state"] == "JOB_FINISHED")
    });
    assert!(of(&jobs, sealed, "preview").is_some());
}
