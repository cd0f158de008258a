//! Hostile names and faults, against the real binaries: names from the beamline never reach a
//! shell, nothing is created outside the data root and the work folders, every legal name
//! arrives, and faults that no retry can fix hold the stack with their reason while faults a
//! retry may outlive are retried. The AlignTK runs use the real AlignTK 1.0.2 built from
//! `../shared/aligntk` (the test command builds it; `ALIGNTK_BIN` names its folder).

use beamflow_e2e::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;

const LONG: Duration = Duration::from_secs(240);

/// Every file and folder under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.path().strip_prefix(dir).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

fn write8(dir: &Path, name: &str, seed: u64, side: u32) {
    write_tiff8(
        &dir.join(name),
        &Section {
            width: side,
            height: side,
            seed,
            big: false,
            rows_per_strip: 16,
        },
    )
    .expect("write section");
}

/// Names that a shell, an option parser or AlignTK's whitespace-split lists would take apart.
const HOSTILE: &[&str] = &[
    "$(id>PWNED1) `id>PWNED2`.tif",
    "-x0.tif",
    "S_0002.tif",
    "a;id>PWNED3|b&&c.tif",
    "it's \"q\".tif",
    "new\nline*.tif",
];

#[test]
fn a_stack_of_hostile_names_runs_the_real_aligntk_to_job_finished_and_nothing_runs_in_a_shell() {
    let bin = aligntk_bin();
    let site = Site::new("1s", "");
    site.append_config(&format!(
        "[workflows.aligntk]\nbin = \"{}\"\n",
        bin.display()
    ));
    let _service = site.start_service();
    let stack = "run $(id>PWNED0);x";
    let dir = site.incoming().join(stack);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, n) in HOSTILE.iter().enumerate() {
        write8(&dir, n, 11 + i as u64, 256);
    }
    let _agent = site.start_agent();
    site.wait_state(stack, "submitted", LONG);
    let jobs = site.wait_finished(stack, LONG);
    let names: Vec<&str> = jobs.iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["qa", "find_rst", "register", "align"]);
    // the names arrive byte-identical, with the same bytes
    assert_same_tree(&dir, &site.remote().join(stack));
    let mut arrived: Vec<String> = std::fs::read_dir(site.remote().join(stack))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with(".beamflow-v")) // the version's snapshot
        .collect();
    arrived.sort();
    let mut sent: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    sent.sort();
    assert_eq!(arrived, sent);
    // nothing ran in a shell: no PWNED file anywhere (the site, the service's folder, here)
    let cwd = std::env::current_dir().unwrap();
    for root in [site.dir.as_path(), cwd.as_path(), Path::new("/tmp")] {
        for e in walkdir::WalkDir::new(root)
            .max_depth(if root == site.dir { 64 } else { 1 })
            .into_iter()
            .filter_map(Result::ok)
        {
            assert!(
                !e.file_name().to_string_lossy().starts_with("PWNED"),
                "{} exists: a name was run by a shell",
                e.path().display()
            );
        }
    }
    // align got an AlignTK name, the maps are there, and the outputs carry the received names
    let align = &jobs[3];
    let argv: Vec<&str> = align["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let fixed = argv[argv.iter().position(|a| *a == "-fixed").unwrap() + 1];
    assert_eq!(fixed, "section0000");
    let work = site.work().join(stack).join("@v1");
    let listed = std::fs::read_to_string(work.join("images.lst")).unwrap();
    assert_eq!(listed.lines().count(), HOSTILE.len());
    for n in HOSTILE {
        let stem = n.trim_end_matches(".tif");
        assert!(
            work.join("amaps").join(format!("{stem}.map")).is_file(),
            "amaps/{stem:?}.map missing: {:?}",
            tree(&work.join("amaps"))
        );
    }
    // everything the jobs wrote is inside the work folder; the site holds nothing else new
    let mut top: Vec<String> = std::fs::read_dir(&site.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    for t in &top {
        assert!(
            [
                "beamflow.toml",
                "incoming",
                "remote",
                "state",
                "work",
                "agent.log",
                "service.log"
            ]
            .contains(&t.as_str()),
            "{t} was created in the site folder: {top:?}"
        );
    }
    assert_eq!(
        tree(&site.work())
            .iter()
            .filter(|p| !p.is_empty() && !p.starts_with(stack))
            .count(),
        0,
        "work/ holds something beside the stack's folder: {:?}",
        tree(&site.work())
    );
}

#[test]
fn a_symlink_in_the_data_root_never_gets_a_folder_created_behind_it() {
    let site = Site::new("300ms", "");
    let elsewhere = site.dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(site.remote()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, site.remote().join("evil")).unwrap();
    let _service = site.start_service();
    let dir = site.incoming().join("evil/newsub/deeper");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..2 {
        write8(&dir, &format!("x{i}.tif"), i, 32);
    }
    let _agent = site.start_agent();
    let s = site.wait_state("evil/newsub/deeper", "held", LONG);
    assert!(s["reason"].as_str().unwrap().contains("symlink"), "{s}");
    assert_eq!(tree(&elsewhere), [""], "created behind the symlink");
}

#[test]
fn a_250_byte_name_arrives_and_leaves_no_part_file() {
    let site = Site::new("300ms", "");
    let _service = site.start_service();
    let dir = site.incoming().join("long");
    std::fs::create_dir_all(&dir).unwrap();
    let long = format!("{}.tif", "L".repeat(246));
    assert_eq!(long.len(), 250);
    for (i, n) in [long.as_str(), "a.tif", "b.tif"].iter().enumerate() {
        write8(&dir, n, i as u64, 32);
    }
    let _agent = site.start_agent();
    site.wait_state("long", "submitted", LONG);
    assert_same_tree(&dir, &site.remote().join("long"));
    assert!(tree(&site.remote().join("long"))
        .iter()
        .all(|n| !n.ends_with(".part")));
}

#[test]
fn a_file_that_can_never_be_stored_holds_the_stack_and_leaves_nothing_behind() {
    let site = Site::new("300ms", "");
    let _service = site.start_service();
    // the destination is a folder: no retry can put a file there
    std::fs::create_dir_all(site.remote().join("s/a.tif")).unwrap();
    let dir = site.incoming().join("s");
    std::fs::create_dir_all(&dir).unwrap();
    for n in ["a.tif", "b.tif"] {
        write8(&dir, n, 3, 32);
    }
    let _agent = site.start_agent();
    let s = site.wait_state("s", "held", LONG);
    let reason = s["reason"].as_str().unwrap();
    assert!(reason.contains("a.tif"), "{reason}");
    let leftovers: Vec<String> = tree(&site.remote().join("s"))
        .into_iter()
        .filter(|n| n.ends_with(".part") || n.ends_with(".delta"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // held, not looping: no new attempt after the refusal
    let attempts = |log: &str| log.matches("sending").count();
    let log = || std::fs::read_to_string(site.dir.join("agent.log")).unwrap();
    let before = attempts(&log());
    holds_for(Duration::from_secs(3), "no new attempt", || {
        let after = attempts(&log());
        (after != before).then(|| format!("the agent kept retrying a refusal: {after} attempts"))
    });
}

/// A tmpfs of the test's own, mounted read-only and back, as an admin remounting the data
/// root would. Unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path) -> Mount {
        Mount::tmpfs_of(at, "64m")
    }
    fn tmpfs_of(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "cannot mount a tmpfs at {} (the tests run as root)",
            at.display()
        );
        Mount(at.to_path_buf())
    }
    fn remount(&self, how: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {how} failed");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_data_root_is_retried_with_backoff_and_the_cause_is_said_once() {
    let site = Site::new("300ms", "");
    let mount = Mount::tmpfs(&site.data_root());
    mount.remount("ro");
    let _service = site.start_service();
    let dir = site.incoming().join("ro");
    std::fs::create_dir_all(&dir).unwrap();
    for n in ["a.tif", "b.tif"] {
        write8(&dir, n, 5, 32);
    }
    let _agent = site.start_agent();
    let mut seen = String::new();
    wait_until(LONG, "a retry because of the read-only data root", || {
        let Some(s) = site.stack("ro") else {
            return false;
        };
        seen = s["reason"].as_str().unwrap_or_default().to_string();
        seen.contains("Read-only file system") && seen.contains("retrying in")
    });
    assert_eq!(
        seen.matches("Read-only file system").count(),
        1,
        "the cause is said more than once: {seen}"
    );
    mount.remount("rw");
    site.wait_state("ro", "submitted", LONG);
    assert_same_tree(&dir, &site.remote().join("ro"));
}

#[test]
fn serve_survives_a_lost_stderr_and_exits_cleanly() {
    use beamflow_protocol::{Frame, MAGIC, VERSION};
    use std::io::{Read, Write};
    let site = Site::new("1s", "");
    for clean_end in [true, false] {
        let mut child = site
            .serve_stdio()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take()); // as when the agent that started it is killed
        let mut input = child.stdin.take().unwrap();
        let mut hello = Frame::Hello {
            version: VERSION,
            client: "test".into(),
            beamline: "bl".into(),
        }
        .encode();
        if clean_end {
            hello.extend(Frame::Bye.encode());
        }
        input.write_all(&hello).unwrap();
        drop(input);
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let status = child.wait().unwrap();
        assert!(out.starts_with(MAGIC));
        assert_eq!(status.code(), Some(0), "serve ended with {status}");
    }
}

#[test]
fn a_stack_folder_renamed_while_it_is_sent_is_gone_and_leaves_no_partial_copy() {
    let site = Site::new("300ms", "");
    site.edit_config("max_rate = 0", "max_rate = \"4 MiB\"");
    let _service = site.start_service();
    let dir = site.write_big_stack("before", 8, 1024);
    let _agent = site.start_agent();
    site.wait_state("before", "sending", LONG);
    site.wait_partial("before", LONG);
    std::fs::rename(&dir, site.incoming().join("after")).unwrap();
    let s = site.wait_state("before", "gone", LONG);
    assert!(s["reason"].as_str().unwrap().contains("removed"), "{s}");
    assert!(
        !site.remote().join("before").exists(),
        "partial copy left: {:?}",
        tree(&site.remote().join("before"))
    );
    site.wait_state("after", "submitted", LONG);
    assert_same_tree(&site.incoming().join("after"), &site.remote().join("after"));
}

#[test]
fn a_symlinked_folder_is_reported_not_skipped_in_silence() {
    let site = Site::new("300ms", "");
    let _service = site.start_service();
    let real = site.dir.join("elsewhere/real");
    std::fs::create_dir_all(&real).unwrap();
    for n in ["a.tif", "b.tif"] {
        write8(&real, n, 1, 32);
    }
    std::os::unix::fs::symlink(&real, site.incoming().join("linked")).unwrap();
    let _agent = site.start_agent();
    let s = site.wait_state("linked", "held", LONG);
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("symlink to a folder"),
        "{s}"
    );
}

#[test]
fn the_service_answers_404_for_an_unknown_launcher_and_keeps_its_database_private() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new("1s", "");
    let _service = site.start_service();
    let client = beamflow_protocol::api::Client::from_state_dir(&site.dir.join("state")).unwrap();
    let e = client.launcher_end(999, "test").unwrap_err().to_string();
    assert!(e.contains("404") || e.contains("no launcher 999"), "{e}");
    let mode = std::fs::metadata(site.dir.join("state/collector.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "collector.db is {:o}", mode & 0o777);
}

/// Every way a review found to hand a name to an interpreter, each as a step's command.
const WRAPPED_SHELLS: &[&str] = &[
    "bash -o pipefail -c 'echo {stack} > u.txt'",
    "env sh -c 'echo {stack} > u.txt'",
    "timeout 60 sh -c 'echo {stack} > u.txt'",
    "nice sh -c 'echo {stack} > u.txt'",
    "python3 -c 'open(\\\"u.txt\\\", \\\"w\\\").write(\\\"{stack}\\\")'",
    "perl -e 'print \\\"{first}\\\"'",
    "sh -c {stack}",
];

#[test]
fn a_name_inside_any_script_is_a_config_error_naming_the_key_and_line() {
    let site = Site::new("1s", "");
    for (n, command) in WRAPPED_SHELLS.iter().enumerate() {
        let bad = site.dir.join(format!("wrapped{n}.toml"));
        std::fs::write(
            &bad,
            format!(
                "[workflows.w]\nto_8bit = \"off\"\n\n[[workflows.w.steps]]\nname = \"s\"\ncommand = \"{command}\"\n"
            ),
        )
        .unwrap();
        for exe in ["beamflow-agent", "beamflow-collector"] {
            let out = Command::new(bin(exe))
                .args(["config", "check"])
                .arg(&bad)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{exe} took {command}");
            assert!(
                err.contains(&format!(
                    "wrapped{n}.toml:6: key `workflows.w.steps[0].command`"
                )) && err.contains("BEAMFLOW_STACK"),
                "{exe}, {command}: {err}"
            );
        }
    }
    // the same rule for a launch template and a mail command
    for (n, (section, line)) in [
        (
            "[queues.default]\nlaunch = \"sh -c 'mpirun -hostfile {hostfile} x' {command}\"\n",
            "queues.default.launch",
        ),
        (
            "[queues.default]\nlaunch = \"sh -c {command}\"\n",
            "queues.default.launch",
        ),
        (
            "[[notify]]\ncommand = \"sh -c 'mail -s {subject} ops@site.org'\"\n",
            "notify[0].command",
        ),
    ]
    .iter()
    .enumerate()
    {
        let bad = site.dir.join(format!("other{n}.toml"));
        std::fs::write(&bad, section).unwrap();
        let exe = if line.starts_with("notify") {
            "beamflow-agent"
        } else {
            "beamflow-collector"
        };
        let out = Command::new(bin(exe))
            .args(["config", "check"])
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{exe} took {section}");
        assert!(err.contains(&format!("key `{line}`")), "{section}: {err}");
    }
}

#[test]
fn a_step_that_wants_a_shell_reads_the_name_from_its_environment_and_never_runs_it() {
    let site = Site::new("1s", "");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"env\"");
    site.append_config(
        "[workflows.env]\nto_8bit = \"off\"\n[[workflows.env.steps]]\nname = \"u\"\ncommand = \"bash -o pipefail -c 'printf %s \\\"$BEAMFLOW_STACK|$BEAMFLOW_FIRST|$BEAMFLOW_LAST|$BEAMFLOW_COUNT|$BEAMFLOW_HOSTFILE\\\" > u.txt'\"\n",
    );
    let _service = site.start_service();
    let stack = "a$(touch PWNED)b";
    let dir = site.incoming().join(stack);
    std::fs::create_dir_all(&dir).unwrap();
    write8(&dir, "$(touch PWNED2).tif", 3, 64);
    write8(&dir, "z`touch PWNED3`.tif", 4, 64);
    let _agent = site.start_agent();
    let jobs = site.wait_finished(stack, LONG);
    assert_eq!(jobs.len(), 1);
    let work = site.work().join(stack).join("@v1");
    let got = std::fs::read_to_string(work.join("u.txt")).unwrap();
    // the names as AlignTK sees them are the aliases; the stack name is byte-exact
    assert!(
        got.starts_with(&format!("{stack}|")) && got.contains("|2|"),
        "{got:?}"
    );
    // the launcher names the job's host file too (inside its work folder)
    let hostfile = got.rsplit('|').next().unwrap();
    assert!(
        hostfile.starts_with(work.to_str().unwrap()) && hostfile.contains(".beamflow-hosts-"),
        "{got:?}"
    );
    for e in walkdir::WalkDir::new(&site.dir)
        .into_iter()
        .filter_map(Result::ok)
    {
        assert!(
            !e.file_name().to_string_lossy().starts_with("PWNED"),
            "{} exists: a name was run by a shell",
            e.path().display()
        );
    }
}

#[test]
fn two_folders_whose_names_are_not_utf8_are_held_apart_and_never_merge() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let site = Site::new("300ms", "");
    let _service = site.start_service();
    let a = site.incoming().join(OsStr::from_bytes(b"run\xe4"));
    let b = site.incoming().join(OsStr::from_bytes(b"run\xf6"));
    for (d, seed) in [(&a, 1), (&b, 2)] {
        std::fs::create_dir_all(d).unwrap();
        write8(d, "S_0000.tif", seed, 32);
        write8(d, "S_0001.tif", seed + 10, 32);
    }
    let ok = site.write_stack("plain", 2, 32);
    let _agent = site.start_agent();
    site.wait_state("plain", "submitted", LONG);
    let held_a = site.wait_state("run\\xe4", "held", LONG);
    let held_b = site.wait_state("run\\xf6", "held", LONG);
    for (h, shown) in [(&held_a, "run\\xe4"), (&held_b, "run\\xf6")] {
        let why = h["reason"].as_str().unwrap();
        assert!(
            why.contains(shown) && why.contains("not valid UTF-8") && why.contains("rename"),
            "{h}"
        );
    }
    // nothing of either reached the collector, under any name
    let arrived: Vec<String> = std::fs::read_dir(site.remote())
        .unwrap()
        .map(|e| escape(&e.unwrap().file_name()))
        .collect();
    assert_eq!(arrived, ["plain"], "the data root holds {arrived:?}");
    assert_same_tree(&ok, &site.remote().join("plain"));
    let log = std::fs::read_to_string(site.dir.join("agent.log")).unwrap();
    assert!(!log.contains("folder gone"), "{log}");
    // renamed to a UTF-8 name, each arrives as a stack of its own; the held rows end
    std::fs::rename(&a, site.incoming().join("run-a")).unwrap();
    std::fs::rename(&b, site.incoming().join("run-b")).unwrap();
    site.wait_state("run-a", "submitted", LONG);
    site.wait_state("run-b", "submitted", LONG);
    assert_ne!(
        std::fs::read(site.remote().join("run-a/S_0000.tif")).unwrap(),
        std::fs::read(site.remote().join("run-b/S_0000.tif")).unwrap()
    );
    site.wait_state("run\\xe4", "gone", LONG);
}

fn escape(n: &std::ffi::OsStr) -> String {
    n.to_string_lossy().into_owned()
}

/// `beamflow-agent push` with the far end's log lines forwarded (debug).
fn push_logged(site: &Site, dir: &Path) -> String {
    let out = Command::new(bin("beamflow-agent"))
        .args(["push", dir.to_str().unwrap(), "--config"])
        .arg(&site.config)
        .env("BEAMFLOW_LOG", "debug")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    text
}

/// The sums of a field over the session-end lines of `log`, and how many such lines.
fn session_sum(log: &str, field: &str) -> (u64, usize) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session ended"))
        .collect();
    let sum = lines
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{field}=")))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum();
    (sum, lines.len())
}

#[test]
fn serve_says_what_each_session_did_when_it_ends() {
    let site = Site::new("1s", "");
    site.use_standins();
    let _service = site.start_service();
    let dir = site.write_stack("said", 3, 32);
    let first = push_logged(&site, &dir);
    let (files, sessions) = session_sum(&first, "files");
    assert!(sessions >= 1 && files == 3, "{first}");
    assert!(first.contains("file(s) received ("), "{first}");
    // (the channel that submits offers every file; what the others brought is "same" there)
    assert_eq!(session_sum(&first, "refused").0, 0, "{first}");
    // a version that changes one file: two are already there
    write8(&dir, "S_0001.tif", 99, 32);
    let second = push_logged(&site, &dir);
    assert_eq!(session_sum(&second, "files").0, 1, "{second}");
    assert!(session_sum(&second, "same").0 >= 2, "{second}");
    assert_eq!(session_sum(&second, "refused").0, 0, "{second}");
}

/// A site whose data root is a 4 MiB tmpfs with 3 MiB taken by `filler` (removed to make
/// space), its service running.
fn nearly_full_site() -> (Site, Mount, PathBuf, Proc) {
    let site = Site::new("300ms", "");
    let mount = Mount::tmpfs_of(&site.data_root(), "4m");
    let filler = site.data_root().join("filler");
    std::fs::write(&filler, vec![7u8; 3 << 20]).unwrap();
    let service = site.start_service();
    (site, mount, filler, service)
}

#[test]
fn a_full_disk_at_the_collector_is_retried_nothing_partial_counts_and_other_stacks_go_on() {
    // most of the data root is taken: the big stack cannot fit, the small one can
    let (site, mount, filler, _service) = nearly_full_site();
    let big = site.incoming().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for (i, n) in ["a.tif", "b.tif"].iter().enumerate() {
        write8(&big, n, 20 + i as u64, 1024); // 1 MiB each
    }
    let _agent = site.start_agent();
    let mut seen = String::new();
    wait_until(LONG, "a retry because the disk is full", || {
        let Some(s) = site.stack("big") else {
            return false;
        };
        seen = s["reason"].as_str().unwrap_or_default().to_string();
        seen.contains("No space left on device") && seen.contains("retrying in")
    });
    // another stack goes on meanwhile
    let small = site.write_stack("small", 2, 32);
    site.wait_state("small", "submitted", LONG);
    assert_same_tree(&small, &site.remote().join("small"));
    // nothing partial of the big one is kept or counted
    let partial: Vec<String> = tree(&site.remote().join("big"))
        .into_iter()
        .filter(|n| n.ends_with(".part") || n.contains(".beamflow-v"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
    assert!(site.stack("big").unwrap()["state"] != "submitted");
    assert!(
        !site.jobs().iter().any(|j| j["stack"] == "big"),
        "a DAG was made of a stack that never arrived whole"
    );
    // space comes back: the stack arrives whole, registered once
    std::fs::remove_file(&filler).unwrap();
    site.wait_state("big", "submitted", LONG);
    assert_same_tree(&big, &site.remote().join("big"));
    let versions: Vec<Value> = site
        .jobs()
        .into_iter()
        .filter(|j| j["stack"] == "big" && j["name"] == "qa")
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    drop(mount);
}

/// The counts of push's progress lines ("push: 2/3 files, 1.0 MiB of 1.4 MiB, …"), not its
/// log lines (whose target ends in "push:" too).
fn progress(said: &str) -> Vec<(u64, u64)> {
    said.lines()
        .filter_map(|l| l.strip_prefix("push: "))
        .filter_map(|rest| rest.split(" files").next())
        .filter_map(|c| c.split_once('/'))
        .filter_map(|(d, t)| Some((d.parse().ok()?, t.parse().ok()?)))
        .collect()
}

#[test]
fn a_push_retrying_on_a_full_disk_never_counts_a_file_twice() {
    let (site, _mount, filler, _service) = nearly_full_site();
    let dir = site.incoming().join("full");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, n) in ["a.tif", "b.tif", "c.tif"].iter().enumerate() {
        write8(&dir, n, 40 + i as u64, 700); // ~0.5 MiB each: one or two fit, not three
    }
    let mut push = Command::new(bin("beamflow-agent"))
        .args([
            "push",
            "--attempts",
            "30",
            dir.to_str().unwrap(),
            "--config",
        ])
        .arg(&site.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // what it says, read as it says it: the disk stays full until two progress lines (one
    // every 5 s) and a refusal for want of space have been said
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (said, mut stderr) = (said.clone(), push.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut buf) {
                said.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    wait_until(
        LONG,
        "two progress lines and a refusal for want of space",
        || {
            let s = said.lock().unwrap();
            progress(&s).len() >= 2 && s.contains("No space left on device")
        },
    );
    std::fs::remove_file(&filler).unwrap();
    let out = push.wait_with_output().unwrap();
    reader.join().unwrap();
    let err = said.lock().unwrap().clone();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let counts = progress(&err);
    assert!(counts.len() >= 2, "{err}");
    for (done, total) in counts {
        assert!(
            done <= total,
            "progress counted a file twice: {done}/{total}\n{err}"
        );
    }
    assert_same_tree(&dir, &site.remote().join("full"));
}
