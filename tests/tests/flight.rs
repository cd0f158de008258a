//! Many stacks in flight over far ends kept open, and decisions that do not wait for a
//! tick: real `beamflow-agent run`, real service and `serve` processes, real files.

use beamflow_e2e::*;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// Lines of the agent's log that contain `what`, in order.
fn log_lines(site: &Site, what: &str) -> Vec<String> {
    std::fs::read_to_string(site.dir.join("agent.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_string)
        .collect()
}

/// The stack a log line names (`stack=NAME`).
fn stack_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("stack="))
        .unwrap_or("")
        .to_string()
}

fn far_ends(agent: &Proc) -> usize {
    children_matching(agent.pid(), "serve").len()
}

/// Nine stacks over three far ends: three go at once, every far end is started once and
/// carries stack after stack, and the far ends close once unused for `[link] idle`.
#[test]
fn stacks_go_side_by_side_over_far_ends_kept_open() {
    let site = Site::new("1s", "");
    site.edit_config("channels = 4", "channels = 3");
    site.edit_config("max_stacks = 4", "max_stacks = 3");
    site.edit_config("idle = \"2m\"", "idle = \"2s\"");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    let names: Vec<String> = (0..9).map(|i| format!("side {i}")).collect();
    for n in &names {
        site.write_stack(n, 3, 32);
    }
    std::thread::sleep(Duration::from_millis(1200)); // older than settle: decided at start
    let _service = site.start_service();
    let agent = site.start_agent();
    for n in &names {
        site.wait_state(n, "submitted", LONG);
    }
    let sending = log_lines(&site, "sending");
    let submitted = log_lines(&site, "submitted");
    assert_eq!(sending.len(), 9, "{sending:#?}");
    // the first three went before any was accepted
    let all = std::fs::read_to_string(site.dir.join("agent.log")).unwrap();
    let first_accept = all.find(&submitted[0]).unwrap();
    let before: Vec<_> = sending
        .iter()
        .filter(|l| all.find(l.as_str()).unwrap() < first_accept)
        .collect();
    assert_eq!(before.len(), 3, "three in flight at once: {sending:#?}");
    // far ends: started once each, then kept (warm=N: links reused)
    let connected = std::fs::read_to_string(site.dir.join("agent.log"))
        .unwrap()
        .matches("agent connected")
        .count();
    assert!(
        (1..=3).contains(&connected),
        "{connected} far ends started for 9 stacks over 3 channels"
    );
    assert!(
        sending.iter().skip(3).all(|l| !l.contains("warm=0")),
        "later stacks reuse open far ends: {sending:#?}"
    );
    assert!(far_ends(&agent) > 0, "far ends stay open between stacks");
    wait_until(Duration::from_secs(10), "idle far ends to close", || {
        far_ends(&agent) == 0
    });
    // every DAG once
    let jobs = site.jobs();
    for n in &names {
        assert_eq!(
            jobs.iter().filter(|j| j["stack"] == n.as_str()).count(),
            1,
            "{n}: {jobs:#?}"
        );
    }
}

/// With one slot, stacks go in the order their images last changed, whatever their names
/// or the order the folders are listed in.
#[test]
fn the_oldest_finished_stack_goes_first() {
    let site = Site::new("1s", "");
    site.edit_config("channels = 4", "channels = 1");
    site.edit_config("max_stacks = 4", "max_stacks = 1");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    let order = ["m", "z", "a", "q"];
    for n in order {
        site.write_stack(n, 2, 32);
        // the files' own times give the order: apart by more than the filesystem's clock tick
        std::thread::sleep(Duration::from_millis(50));
    }
    // older than settle when the agent starts: decided at start, in the files' order
    std::thread::sleep(Duration::from_millis(1200));
    let _service = site.start_service();
    let _agent = site.start_agent();
    for n in order {
        site.wait_state(n, "submitted", LONG);
    }
    let sent: Vec<String> = log_lines(&site, "sending")
        .iter()
        .map(|l| stack_of(l))
        .collect();
    assert_eq!(sent, order, "oldest first");
}

/// After a restart, a stack whose files have been quiet for `settle` is decided at once
/// from their times (not after another `settle`), and a held stack keeps its reason the
/// whole time (it does not show `waiting` while settle passes again).
#[test]
fn a_restart_decides_from_file_times_and_keeps_a_held_reason() {
    let site = Site::new("5s", "");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    let _service = site.start_service();
    let mut agent = site.start_agent();
    site.write_stack("lonely", 1, 32);
    let held = site.wait_state("lonely", "held", LONG);
    let reason = held["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("min_images"), "{reason}");
    agent.term();
    // written while the agent is down, quiet longer than settle when it comes back
    site.write_stack("late", 3, 32);
    std::thread::sleep(Duration::from_millis(5300));
    let restarted = Instant::now();
    let _agent = site.start_agent();
    let mut seen = Vec::new();
    wait_for(
        Duration::from_secs(20),
        "late to be submitted",
        || {
            let status = site.status();
            let of = |n: &str| status.iter().find(|s| s["name"] == n).cloned();
            if let Some(l) = of("lonely") {
                seen.push((l["state"].to_string(), l["reason"].to_string()));
            }
            of("late")
                .is_some_and(|s| s["state"] == "submitted")
                .then_some(())
        },
        || format!("{:#?}", site.status()),
    );
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "a stack quiet for settle (5 s) is decided at once after a restart; it took {took:?}"
    );
    assert!(!seen.is_empty());
    for (state, why) in &seen {
        assert_eq!(state, "\"held\"", "{seen:#?}");
        assert_eq!(why, &format!("{reason:?}"), "{seen:#?}");
    }
}

/// A marker finishes a stack at once, whatever `settle` says: the check starts on the
/// event, not at a later tick; and its images, hashed while the stack waited for the marker,
/// are not read again for it.
#[test]
fn a_marker_finishes_a_stack_at_once() {
    let site = Site::new("1h", "marker = \"DONE\"");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    let dir = site.write_stack("marked", 3, 32);
    site.wait_state("marked", "waiting", LONG);
    std::thread::sleep(Duration::from_millis(2500)); // left alone: hashed ahead
    let start = Instant::now();
    std::fs::write(dir.join("DONE"), b"").unwrap();
    site.wait_state("marked", "submitted", LONG);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "submitted {:?} after the marker (settle is an hour)",
        start.elapsed()
    );
    let finished = log_lines(&site, "stack finished");
    assert!(
        finished.len() == 1 && finished[0].contains("hashed_ahead=3"),
        "{finished:#?}"
    );
}

/// A large stack's check and hash run off the daemon's loop: a small stack marked just
/// after it is decided meanwhile (its `stack finished` comes first), and the large one, whose
/// images changed earlier, still goes first. The images carry mtimes an hour (the large
/// stack) and two hours (the small one) ahead, as from a skewed clock, so none is hashed
/// before its marker: the large stack's whole 512 MiB is hashed at the finish.
#[test]
fn a_large_stack_s_hash_does_not_hold_back_other_decisions() {
    use std::os::unix::fs::FileExt;
    let site = Site::new("1h", "marker = \"DONE\"");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    let big = site.incoming().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let first = big.join("S_0000.tif");
    write_tiff(
        &first,
        &Section {
            width: 4096,
            height: 4096,
            seed: 1,
            big: true,
            rows_per_strip: 256,
        },
    )
    .unwrap();
    let ahead = std::time::SystemTime::now() + Duration::from_secs(3600);
    for i in 0..16u32 {
        let p = big.join(format!("S_{i:04}.tif"));
        if i > 0 {
            std::fs::copy(&first, &p).unwrap();
        }
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&i.to_le_bytes(), 200).unwrap();
        f.set_modified(ahead).unwrap();
    }
    // newer than the large stack by its files' times too
    let small = site.write_stack("small", 2, 32);
    for e in std::fs::read_dir(&small).unwrap() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(e.unwrap().path())
            .unwrap();
        f.set_modified(ahead + Duration::from_secs(3600)).unwrap();
    }
    std::fs::write(big.join("DONE"), b"").unwrap();
    std::fs::write(small.join("DONE"), b"").unwrap();
    site.wait_state("big", "submitted", LONG);
    site.wait_state("small", "submitted", LONG);
    let names = |what: &str| -> Vec<String> {
        log_lines(&site, what).iter().map(|l| stack_of(l)).collect()
    };
    assert_eq!(names("stack finished"), ["small", "big"]);
    assert_eq!(names("sending"), ["big", "small"], "the older stack first");
}

/// Sections move as they land (`[[watch]] file_settle`): a stack that only its marker
/// finishes has every section at the collector, verified and durable, while it is still
/// being written; the marker then moves no byte again: the finish finds them all there
/// ("same") and submits at once.
#[test]
fn sections_move_as_they_land_and_the_marker_only_submits() {
    let site = Site::new("30s", "marker = \"DONE\"\nfile_settle = \"1s\"");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    let dir = site.write_stack("live", 3, 32);
    let remote = site.remote().join("live");
    wait_for(
        Duration::from_secs(30),
        "the sections at the collector before the stack is finished",
        || {
            (0..3)
                .all(|i| {
                    let n = format!("S_{i:04}.tif");
                    std::fs::read(remote.join(&n)).ok() == std::fs::read(dir.join(&n)).ok()
                })
                .then_some(())
        },
        || site.log_tail("agent.log"),
    );
    let s = site.stack("live").unwrap();
    assert_eq!(s["state"], "waiting", "sent ahead, not finished: {s}");
    std::fs::write(dir.join("DONE"), b"").unwrap();
    site.wait_state("live", "submitted", Duration::from_secs(30));
    for i in 0..3 {
        let n = format!("S_{i:04}.tif");
        assert_eq!(
            std::fs::read(remote.join(&n)).ok(),
            std::fs::read(dir.join(&n)).ok(),
            "{n}"
        );
    }
    let log = std::fs::read_to_string(site.dir.join("agent.log")).unwrap();
    assert!(log.contains("sections sent ahead of the finish"), "{log}");
    let submitted = log
        .lines()
        .find(|l| l.contains(" submitted") && l.contains("stack=live"))
        .unwrap_or_else(|| panic!("no submission in:\n{log}"));
    assert!(
        submitted.contains("same=3") && submitted.contains("bytes=0"),
        "the marker moved bytes again: {submitted}"
    );
}

/// A stack whose sections went ahead and whose folder then vanishes before it finished has
/// its partial copy removed at the collector, as one sent at its finish would.
#[test]
fn sections_sent_ahead_of_a_stack_that_vanishes_are_removed_at_the_collector() {
    let site = Site::new("30s", "marker = \"DONE\"\nfile_settle = \"1s\"");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    let dir = site.write_stack("fleeting", 2, 32);
    let remote = site.remote().join("fleeting");
    wait_until(Duration::from_secs(30), "the sections sent ahead", || {
        remote.join("S_0001.tif").is_file() && remote.join("S_0000.tif").is_file()
    });
    std::fs::remove_dir_all(&dir).unwrap();
    let s = site.wait_state("fleeting", "gone", Duration::from_secs(30));
    assert!(s["reason"].as_str().unwrap().contains("removed"), "{s}");
    assert!(
        !remote.join("S_0000.tif").exists() && !remote.join("S_0001.tif").exists(),
        "the partial copy stays at the collector"
    );
}
