//! The units pass `systemd-analyze verify`, and the agent speaks systemd's notify protocol to a
//! real datagram socket: READY=1 after the first reconcile, WATCHDOG=1 from its loop, STOPPING=1.

use beamflow_e2e::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_unit_files_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: tests/run.sh installs systemd"
    );
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let tmp = tempfile::tempdir().unwrap();
    for (name, exe) in [
        ("beamflow-agent.service", bin("beamflow-agent")),
        ("beamflow-agent.user.service", bin("beamflow-agent")),
        ("beamflow-collector.service", bin("beamflow-collector")),
    ] {
        // verify checks that ExecStart exists: point it at the built binary
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        let text = text
            .replace("/usr/local/bin/beamflow-agent", &exe.display().to_string())
            .replace("%h/.local/bin/beamflow-agent", &exe.display().to_string())
            .replace(
                "%h/.local/bin/beamflow-collector",
                &exe.display().to_string(),
            )
            .replace("User=beamline", "User=root")
            .replace("Group=beamline", "Group=root");
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = err.lines().filter(|l| l.contains(name)).collect();
        assert!(out.status.success() && ours.is_empty(), "{name}: {err}");
    }
}

#[test]
fn the_agent_notifies_ready_feeds_the_watchdog_and_says_stopping() {
    let site = Site::new("30s", "");
    let sock_path = site.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    site.write_stack("existing", 2, 32); // something to reconcile before READY
    let log = std::fs::File::create(site.dir.join("agent.log")).unwrap();
    let child = Command::new(bin("beamflow-agent"))
        .args(["run", "--config"])
        .arg(&site.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut agent = Proc {
        child,
        what: "agent".into(),
    };
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while !got.iter().any(|m: &String| m.starts_with("WATCHDOG=1"))
        || !got.iter().any(|m| m.starts_with("READY=1"))
    {
        let n = sock.recv(&mut buf).expect("a notification within 15 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        got[0].starts_with("READY=1\nSTATUS=watching 1 root(s)"),
        "{got:?}"
    );
    // READY came after the reconcile: the existing stack is in the journal already
    assert!(site.stack("existing").is_some());
    let st = agent.term();
    assert!(st.success(), "a SIGTERM is a clean stop: {st}");
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING=1 before exit");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
}
