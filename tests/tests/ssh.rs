//! The SSH transport against a real sshd on 127.0.0.1 (generated host and user keys, strict
//! host key checking): an owned master, an adopted master, no master, a wrong host key, and a
//! master that dies in the middle of a transfer, parallel channels, a delta.

use beamflow_e2e::sshd::Sshd;
use beamflow_e2e::*;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn ssh_site(sshd: &Sshd, master: &str, ctl: Option<&std::path::Path>) -> Site {
    let site = Site::new("1s", "");
    let link = sshd.link_toml(&site.config, master, ctl, "1s");
    site.edit_config("transport = \"local\"", &link);
    site
}

fn pushed_ok(site: &Site, dir: &std::path::Path) -> String {
    let out = site.run(
        "beamflow-agent",
        &["push", "--attempts", "1", dir.to_str().unwrap()],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "push over ssh failed: {text}");
    text
}

/// The files of a stack travel over several channels of the one master, each with its own
/// far end; a stack whose largest file is most of it does not open channels it cannot use.
#[test]
fn a_stack_is_spread_over_parallel_channels() {
    let sshd = Sshd::start();
    let site = ssh_site(&sshd, "own", None);
    site.edit_config("channels = 4", "channels = 3");
    let _service = site.start_service();
    let sessions = |dir: &std::path::Path| {
        let out = Command::new(beamflow_e2e::bin("beamflow-agent"))
            .args(["push", "--attempts", "1", "--config"])
            .arg(&site.config)
            .arg(dir)
            .env("BEAMFLOW_LOG", "debug")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "push failed: {text}");
        // every far end logs its start; the agent relays its lines
        text.matches("agent connected").count()
    };
    let even = site.write_stack("even", 6, 64);
    assert_eq!(sessions(&even), 3, "six like sections: three channels");
    assert_same_tree(&even, &site.remote().join("even"));
    let lopsided = site.write_big_stack("lopsided", 1, 1024);
    std::fs::copy(even.join("S_0000.tif"), lopsided.join("S_0001.tif")).unwrap();
    assert_eq!(
        sessions(&lopsided),
        1,
        "one large section and a small one: one channel"
    );
    assert_same_tree(&lopsided, &site.remote().join("lopsided"));
    assert_eq!(site.jobs().len(), 8, "two DAGs");
}

#[test]
fn push_over_ssh_with_the_agents_own_master() {
    let sshd = Sshd::start();
    let site = ssh_site(&sshd, "own", None);
    let _service = site.start_service();
    let dir = site.write_stack("over ssh", 4, 64);
    let text = pushed_ok(&site, &dir);
    assert!(text.contains("DAG 1 with 4 jobs"), "{text}");
    assert_same_tree(&dir, &site.remote().join("over ssh"));
    assert_eq!(site.jobs().len(), 4);
}

#[test]
fn push_over_an_adopted_master_leaves_it_running() {
    let sshd = Sshd::start();
    let ctl = sshd.dir.join("master.sock");
    sshd.open_master(&ctl);
    let site = ssh_site(&sshd, "adopt", Some(&ctl));
    let _service = site.start_service();
    let dir = site.write_stack("adopted", 3, 64);
    pushed_ok(&site, &dir);
    assert_same_tree(&dir, &site.remote().join("adopted"));
    assert!(
        sshd.master(&ctl, "check"),
        "the person's master must outlive the agent's use of it"
    );
    sshd.master(&ctl, "exit");
}

#[test]
fn without_a_master_the_agent_says_to_log_in_and_never_logs_in_by_itself() {
    let sshd = Sshd::start();
    let ctl = sshd.dir.join("absent.sock");
    let site = ssh_site(&sshd, "adopt", Some(&ctl));
    let _service = site.start_service();
    let dir = site.write_stack("nomaster", 2, 32);
    let out = site.run(
        "beamflow-agent",
        &["push", "--attempts", "1", dir.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("waiting for the SSH master — run `beamflow-agent login`"),
        "{err}"
    );
    assert!(!site.remote().join("nomaster").exists());
}

#[test]
fn a_host_key_mismatch_is_a_clear_refusal() {
    let sshd = Sshd::start();
    sshd.distrust_host_key();
    let site = ssh_site(&sshd, "own", None);
    let _service = site.start_service();
    let dir = site.write_stack("mitm", 2, 32);
    let out = site.run(
        "beamflow-agent",
        &["push", "--attempts", "1", dir.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("host key"), "{err}");
    assert!(!site.remote().join("mitm").exists());
}

#[test]
fn the_master_killed_mid_transfer_makes_the_agent_wait_then_finish_when_it_is_back() {
    let sshd = Sshd::start();
    let ctl = sshd.dir.join("m.sock");
    sshd.open_master(&ctl);
    let site = ssh_site(&sshd, "adopt", Some(&ctl));
    site.edit_config("max_rate = 0", "max_rate = \"32 MiB\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    let src = site.write_big_stack("m", 12, 2048); // 12 × 8 MiB at 32 MiB/s: ~3 s on the wire
    site.wait_state("m", "sending", LONG);
    site.wait_partial("m", LONG);
    assert!(sshd.master(&ctl, "exit"), "could not stop the master");
    wait_until(LONG, "the agent to say it waits for the master", || {
        site.stack("m").is_some_and(|s| {
            s["reason"]
                .as_str()
                .unwrap_or("")
                .contains("waiting for the SSH master")
        })
    });
    assert_eq!(site.stack("m").unwrap()["state"], "queued");
    sshd.open_master(&ctl);
    site.wait_state("m", "submitted", LONG);
    assert_same_tree(&src, &site.remote().join("m"));
    // one DAG: qa, find_rst and register a job per pair (11 each), align
    assert_eq!(site.jobs().len(), 2 + 2 * 11, "one DAG");
    sshd.master(&ctl, "exit");
}

#[test]
fn a_black_holed_link_is_noticed_within_the_keepalive_bound_and_the_transfer_completes() {
    let sshd = Sshd::start();
    let site = ssh_site(&sshd, "own", None); // keepalive 1 s: three missed answers end the master
    site.edit_config("max_rate = 0", "max_rate = \"24 MiB\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    let src = site.write_big_stack("bh", 12, 2048); // ~4 s on the wire
    site.wait_state("bh", "sending", LONG);
    // wait for data to flow (remote shells can take a while to start `serve` on a busy machine)
    wait_until(LONG, "data to reach the collector", || {
        std::fs::read_dir(site.remote().join("bh")).is_ok_and(|mut d| d.next().is_some())
    });
    // freeze the sshd session processes, and only those: a frozen login shell could hold a lock
    // that every other login waits for. The TCP connection stays up; nothing answers.
    let retries = || {
        std::fs::read_to_string(site.dir.join("agent.log"))
            .unwrap_or_default()
            .matches("retrying in")
            .count()
    };
    let retries_before = retries();
    let frozen = Frozen(
        descendants(sshd.proc.pid())
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sshd")
            })
            .collect(),
    );
    assert!(!frozen.0.is_empty(), "no sshd session to freeze");
    for p in &frozen.0 {
        unsafe { libc::kill(*p, libc::SIGSTOP) };
    }
    let start = std::time::Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the agent to notice the dead link",
        || retries() > retries_before,
    );
    let noticed = start.elapsed();
    drop(frozen); // continued even if the wait above panics
    assert!(
        noticed < Duration::from_secs(12),
        "noticed after {noticed:?}; the keepalive bound is about 3 s"
    );
    // the agent opens a new master by itself and finishes
    site.wait_state("bh", "submitted", LONG);
    assert_same_tree(&src, &site.remote().join("bh"));
    // one DAG: qa, find_rst and register a job per pair (11 each), align
    assert_eq!(site.jobs().len(), 2 + 2 * 11);
    eprintln!("black hole noticed after {noticed:?}");
}

#[test]
fn a_changed_file_goes_as_a_delta_far_smaller_than_the_file() {
    use std::os::unix::fs::FileExt;
    let sshd = Sshd::start();
    let site = ssh_site(&sshd, "own", None);
    let _service = site.start_service();
    let dir = site.write_big_stack("d", 2, 2896); // 2 × 16 MiB
    pushed_ok(&site, &dir);
    // change about 1% of one section, in ten places
    let f = dir.join("S_0001.tif");
    let len = std::fs::metadata(&f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    for i in 0..10u64 {
        file.write_all_at(&vec![0xAB; 16 << 10], 4096 + i * (len / 11))
            .unwrap();
    }
    drop(file);
    let text = pushed_ok(&site, &dir);
    // "d v2: 2 files, 32.0 MiB (X sent, 1 already there) …"
    let sent = text
        .split('(')
        .nth(1)
        .and_then(|t| t.split(" sent").next())
        .unwrap_or("");
    let (num, unit) = sent.split_once(' ').unwrap_or(("", ""));
    let bytes = num.parse::<f64>().unwrap_or(f64::MAX)
        * match unit {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1048576.0,
            _ => f64::MAX,
        };
    assert!(
        text.contains("v2") && text.contains("1 already there"),
        "{text}"
    );
    assert!(
        bytes < len as f64 / 10.0,
        "{sent} on the wire for a 1% change of a {len}-byte file: {text}"
    );
    assert_same_tree(&dir, &site.remote().join("d"));
    eprintln!("delta: {sent} on the wire for a {len}-byte file with 1% changed");
}

#[test]
fn a_remote_login_script_that_prints_is_reported_with_its_text() {
    // every session first prints a banner, as a chatty ~/.bashrc does for non-interactive shells
    let sshd = Sshd::start_with(
        "ForceCommand echo 'Welcome to Polaris!'; eval \"$SSH_ORIGINAL_COMMAND\"\n",
    );
    let site = ssh_site(&sshd, "own", None);
    let _service = site.start_service();
    let dir = site.write_stack("chatty", 2, 32);
    let out = site.run(
        "beamflow-agent",
        &["push", "--attempts", "1", dir.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("printed text before the protocol started: \"Welcome to Polaris!\\n\""),
        "{err}"
    );
    assert!(err.contains("non-interactive shells"), "{err}");
    assert!(!site.remote().join("chatty").exists());
}

#[test]
fn login_opens_a_master_that_the_agent_then_adopts() {
    let sshd = Sshd::start();
    let ctl = sshd.dir.join("login.sock");
    let site = ssh_site(&sshd, "adopt", Some(&ctl));
    let _service = site.start_service();
    // key authentication here; at a one-time-password site ssh would ask in the terminal
    let out = site.run("beamflow-agent", &["login"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("is open at") && text.contains("login.sock"),
        "{text}"
    );
    assert!(sshd.master(&ctl, "check"));
    let dir = site.write_stack("after-login", 2, 32);
    pushed_ok(&site, &dir);
    assert!(
        sshd.master(&ctl, "check"),
        "the login's master stays for the next stack"
    );
    sshd.master(&ctl, "exit");
    // login without transport ssh is refused clearly
    let local = Site::new("1s", "");
    let out = local.run("beamflow-agent", &["login"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not \"ssh\""));
}

/// The pid of the master answering at `ctl` (`ssh -O check` says it).
fn master_pid(sshd: &Sshd, ctl: &std::path::Path) -> Option<String> {
    let out = Command::new("ssh")
        .arg("-F")
        .arg(&sshd.ssh_config)
        .arg("-S")
        .arg(ctl)
        .args(["-O", "check", beamflow_e2e::sshd::ALIAS])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.split("pid=")
        .nth(1)
        .map(|p| p.trim_end_matches([')', '\n', '\r']).to_string())
}

/// `master = "own"` with a `control_path`: the daemon's master answers exactly there, a
/// daemon killed and started again takes the same master back (no second login), a push run
/// beside it uses that master and leaves it running, and a daemon that stops ends it.
#[test]
fn an_own_master_lives_at_control_path_and_is_taken_back_after_a_restart() {
    let sshd = Sshd::start();
    let ctl = sshd.dir.join("ctl").join("own.sock");
    let site = ssh_site(&sshd, "own", Some(&ctl));
    let _service = site.start_service();
    let mut agent = site.start_agent();
    site.write_stack("first", 2, 32);
    site.wait_state("first", "submitted", LONG);
    let pid = master_pid(&sshd, &ctl).expect("a master answers at control_path");
    agent.kill9();
    assert_eq!(
        master_pid(&sshd, &ctl).as_deref(),
        Some(pid.as_str()),
        "ControlPersist keeps it"
    );
    let mut agent = site.start_agent();
    site.write_stack("second", 2, 32);
    site.wait_state("second", "submitted", LONG);
    assert_eq!(
        master_pid(&sshd, &ctl).as_deref(),
        Some(pid.as_str()),
        "the restarted daemon took the same master back"
    );
    // a push beside the daemon uses its master and leaves it running
    let third = site.write_stack("third", 2, 32);
    pushed_ok(&site, &third);
    assert_eq!(
        master_pid(&sshd, &ctl).as_deref(),
        Some(pid.as_str()),
        "a push beside the daemon leaves the daemon's master alone"
    );
    agent.term();
    wait_until(Duration::from_secs(10), "the master to end", || {
        !sshd.master(&ctl, "check")
    });
}

/// `push` beside a running daemon hands the folder over a Unix socket and follows it: the
/// daemon sends it at once over the master and far ends it already has (its `settle` of an
/// hour would never finish it alone), and the push itself starts no `ssh` at all (a wrapper
/// first on its `PATH` would log one). A folder outside the daemon's watch roots is sent by
/// the push itself, over its own `ssh`.
#[test]
fn push_hands_a_folder_to_the_running_daemon_and_rides_its_warm_link() {
    let sshd = Sshd::start();
    let site = Site::new("1h", "");
    let link = sshd.link_toml(&site.config, "own", None, "1s");
    site.edit_config("transport = \"local\"", &link);
    let _service = site.start_service();
    let _agent = site.start_agent();
    let (wrappers, log) = beamflow_e2e::wrappers::wrapper_paths(&site.dir);
    let path = beamflow_e2e::wrappers::counting_wrappers(&wrappers, &["ssh"], &log);
    let push = |dir: &std::path::Path| {
        let out = Command::new(bin("beamflow-agent"))
            .args(["push", "--attempts", "1", "--config"])
            .arg(&site.config)
            .arg(dir)
            .env("PATH", &path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "push failed: {text}");
        text
    };
    // the daemon is up and watching (its door open) before the push
    site.wait_agent_door();
    for name in ["first", "second"] {
        let dir = site.write_stack(name, 3, 32);
        let text = push(&dir);
        assert!(
            text.contains("handed to the running daemon") && text.contains(" v1: 3 files"),
            "{text}"
        );
        site.wait_state(name, "submitted", LONG);
    }
    assert!(
        beamflow_e2e::wrappers::calls(&log).is_empty(),
        "the push started ssh itself: {:?}",
        beamflow_e2e::wrappers::calls(&log)
    );
    // pushed again unchanged: the collector's answer at once, no new version
    let again = push(&site.incoming().join("first"));
    assert!(again.contains("first v1"), "{again}");
    // outside the watch roots: the push's own way, its own ssh
    let outside = site.dir.join("elsewhere").join("third");
    std::fs::create_dir_all(&outside).unwrap();
    for i in 0..3 {
        std::fs::copy(
            site.incoming().join("first").join(format!("S_{i:04}.tif")),
            outside.join(format!("S_{i:04}.tif")),
        )
        .unwrap();
    }
    let text = push(&outside);
    assert!(!text.contains("handed to the running daemon"), "{text}");
    assert!(
        !beamflow_e2e::wrappers::calls(&log).is_empty(),
        "the push sent it itself, over its own ssh"
    );
}
