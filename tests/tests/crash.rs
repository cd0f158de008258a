//! Crashes for real: `kill -9` of the agent and of `serve` at several points of a multi-file
//! transfer, files changing while they are sent, and hostile frames sent to the real `serve`.

use beamflow_e2e::*;
use beamflow_protocol::{read_frame, read_magic, write_frame, ErrorCode, Frame, VERSION};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn one_dag(site: &Site, stack: &str) {
    let jobs: Vec<_> = site
        .jobs()
        .into_iter()
        .filter(|j| j["stack"] == stack)
        .collect();
    // one DAG: each job once, one version, the four steps (qa, find_rst, register, align;
    // the pairwise ones fanned out over chunks of pairs)
    let mut names: Vec<String> = jobs
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "a job twice for {stack}: {jobs:#?}");
    assert!(jobs.iter().all(|j| j["version"] == 1), "{jobs:#?}");
    let mut steps: Vec<&str> = names.iter().map(|n| n.split('[').next().unwrap()).collect();
    steps.dedup();
    assert_eq!(
        steps,
        ["align", "find_rst", "qa", "register"],
        "exactly one DAG for {stack}: {jobs:#?}"
    );
    assert_eq!(site.jobs().len(), jobs.len(), "no other DAG");
}

/// Files the collector shows under their real names must be whole and right, at any instant.
fn no_wrong_file(site: &Site, src: &std::path::Path, stack: &str) {
    let remote = site.remote().join(stack);
    for e in std::fs::read_dir(&remote)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let a = std::fs::read(src.join(&name)).unwrap();
        let b = std::fs::read(e.path()).unwrap();
        assert!(
            a == b,
            "{name} is in place on the collector but differs from the source"
        );
    }
}

#[test]
fn agent_killed_at_several_points_finishes_with_every_file_and_one_dag() {
    let site = Site::new("1s", "");
    site.edit_config("max_rate = 0", "max_rate = \"64 MiB\""); // ~2.5 s of transfer to kill into
    let _service = site.start_service();
    let src = site.write_big_stack("big", 20, 2048); // 20 × 8 MiB
    let mut agent = site.start_agent();
    let mut interrupted = 0;
    for delay_ms in [30u64, 250, 600] {
        site.wait_state("big", "sending", LONG);
        // the instant of the kill is the scenario: early, mid-file, late in the transfer
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.kill9();
        no_wrong_file(&site, &src, "big");
        let s = site.stack("big").unwrap();
        if s["state"] != "submitted" {
            interrupted += 1;
        }
        agent = site.start_agent();
    }
    assert!(
        interrupted >= 2,
        "the kills should land mid-transfer (only {interrupted} did); make the stack bigger"
    );
    site.wait_state("big", "submitted", LONG);
    assert_same_tree(&src, &site.remote().join("big"));
    one_dag(&site, "big");
    // partial files are gone once everything is in place
    let leftovers: Vec<_> = std::fs::read_dir(site.remote().join("big"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(".beamflow-")
                && (n.ends_with(".part") || n.ends_with(".delta") || n.ends_with(".tmp"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn serve_killed_mid_file_is_restarted_and_the_stack_completes() {
    let site = Site::new("1s", "");
    site.edit_config("max_rate = 0", "max_rate = \"64 MiB\"");
    let _service = site.start_service();
    let src = site.write_big_stack("s", 16, 2048);
    let agent = site.start_agent();
    let mut kills = 0;
    for _ in 0..2 {
        site.wait_state("s", "sending", LONG);
        // the instant of the kill is the scenario: a moment into the transfer
        std::thread::sleep(Duration::from_millis(150));

        for pid in children_matching(agent.pid(), "serve --stdio") {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            kills += 1;
        }
        no_wrong_file(&site, &src, "s");
    }
    assert!(kills >= 1, "no serve process was found to kill");
    site.wait_state("s", "submitted", LONG);
    assert_same_tree(&src, &site.remote().join("s"));
    one_dag(&site, "s");
    let log = std::fs::read_to_string(site.dir.join("agent.log")).unwrap();
    assert!(
        log.contains("link to the collector broke"),
        "the kill should have broken a transfer:\n{}",
        site.log_tail("agent.log")
    );
}

#[test]
fn a_file_that_changes_while_it_is_sent_is_sent_again_never_recorded_wrong() {
    use std::os::unix::fs::FileExt;
    let site = Site::new("1s", "");
    site.edit_config("max_rate = 0", "max_rate = \"64 MiB\"");
    let _service = site.start_service();
    let src = site.write_big_stack("c", 4, 4096); // 4 × 32 MiB; the last one changes
    let _agent = site.start_agent();
    site.wait_state("c", "sending", LONG);
    let last = src.join("S_0003.tif");
    let len = std::fs::metadata(&last).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.write_all_at(b"changed!", len - 4096).unwrap();
    drop(f);
    site.wait_state("c", "submitted", LONG);
    assert_same_tree(&src, &site.remote().join("c"));
    let s = site.stack("c").unwrap();
    assert_eq!(
        s["version"], 1,
        "the change was caught before submission, not after"
    );
    let log = std::fs::read_to_string(site.dir.join("agent.log")).unwrap();
    assert!(
        log.contains("S_0003.tif changed while it was being sent"),
        "{}",
        site.log_tail("agent.log")
    );
    one_dag(&site, "c");
}

/// Drives the real `serve --stdio` with frames a hostile or broken agent might send.
#[test]
fn serve_refuses_paths_outside_the_data_root() {
    let site = Site::new("1s", "");
    let mut child = site
        .serve_stdio()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    read_magic(&mut out).unwrap();
    write_frame(
        &mut input,
        &Frame::Hello {
            version: VERSION,
            client: "test".into(),
            beamline: "bl".into(),
        },
    )
    .unwrap();
    let evil = [
        "../escape.tif",
        "/etc/passwd",
        "a/../../x.tif",
        "ok/../../../y.tif",
    ];
    for (i, p) in evil.iter().enumerate() {
        write_frame(
            &mut input,
            &Frame::Offer {
                id: i as u64,
                path: p.to_string(),
                size: 4,
                hash: [0; 32],
            },
        )
        .unwrap();
    }
    write_frame(&mut input, &Frame::Bye).unwrap();
    input.flush().unwrap();
    assert!(matches!(
        read_frame(&mut out).unwrap(),
        Some(Frame::Welcome { .. })
    ));
    for (i, p) in evil.iter().enumerate() {
        match read_frame(&mut out).unwrap() {
            Some(Frame::Nack {
                id,
                code: ErrorCode::PathRefused,
                reason,
            }) => {
                assert_eq!(id, i as u64);
                assert!(
                    reason.contains("data root") || reason.contains("absolute"),
                    "{p}: {reason}"
                );
            }
            other => panic!("{p}: expected a refusal, got {other:?}"),
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(!site.dir.join("escape.tif").exists() && !site.dir.join("x.tif").exists());

    // garbage instead of frames is an error, not a crash
    let mut child = site
        .serve_stdio()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("larger than") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn a_far_end_that_prints_before_the_protocol_is_reported_with_its_text() {
    let site = Site::new("30s", "");
    let collector = bin("beamflow-collector");
    let cfg = std::fs::read_to_string(&site.config).unwrap().replace(
        "transport = \"local\"",
        &format!(
            "transport = \"local\"\ncommand = [\"sh\", \"-c\", \"echo Welcome to Theta; exec '{}' serve --stdio --config '{}'\"]",
            collector.display(),
            site.config.display()
        ),
    );
    std::fs::write(&site.config, cfg).unwrap();
    let dir = site.write_stack("noisy", 2, 32);
    let out = site.run(
        "beamflow-agent",
        &["push", "--attempts", "1", dir.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("printed text before the protocol started: \"Welcome to Theta\\n\"")
            && err.contains("rc"),
        "{err}"
    );
}
