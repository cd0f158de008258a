//! `doctor` on both programs, against the real binaries and a real sshd: a healthy site is
//! all `ok`; then one thing is broken at a time, and exactly that check fails, named, with
//! its fix on the same line.

use beamflow_e2e::sshd::Sshd;
use beamflow_e2e::*;

/// Runs `beamflow-agent doctor` (or the collector's) and returns (exit code, lines).
fn doctor(site: &Site, exe: &str) -> (i32, Vec<String>) {
    let out = site.run(exe, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text.lines().skip(1).map(str::to_string).collect(),
    )
}

/// The failing lines; asserts the exit code says so.
fn failing(site: &Site, exe: &str) -> Vec<String> {
    let (code, lines) = doctor(site, exe);
    let fails: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("FAIL"))
        .cloned()
        .collect();
    assert_eq!(code, i32::from(!fails.is_empty()), "{lines:#?}");
    fails
}

/// The one failing line, which must name `check` and carry `fix`.
fn only_failure(site: &Site, exe: &str, check: &str, fix: &str) {
    let fails = failing(site, exe);
    assert_eq!(fails.len(), 1, "exactly one check fails: {fails:#?}");
    assert!(
        fails[0].starts_with(&format!("FAIL  {check}:")),
        "{check}: {}",
        fails[0]
    );
    let (_, said) = fails[0].split_once(" — fix: ").expect("a fix on the line");
    assert!(said.contains(fix), "the fix names {fix:?}: {}", fails[0]);
}

#[test]
fn a_healthy_local_site_is_all_ok_and_each_fault_is_named_with_its_fix() {
    let site = Site::new("1s", "");
    let mut service = site.start_service();
    let (code, lines) = doctor(&site, "beamflow-agent");
    assert_eq!(code, 0, "{lines:#?}");
    for want in [
        "journal folder",
        "watch root",
        "inotify watches",
        "remote command",
        "collector data root",
        "collector service",
        "clock skew",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("ok    {want}"))),
            "{want}: {lines:#?}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("protocol 3")), "{lines:#?}");

    // the service down
    service.term();
    only_failure(
        &site,
        "beamflow-agent",
        "collector service",
        "systemctl --user",
    );
    only_failure(
        &site,
        "beamflow-collector",
        "service",
        "beamflow-collector service",
    );
    let mut service = site.start_service();

    // a watch root that is not there
    std::fs::rename(site.incoming(), site.dir.join("moved")).unwrap();
    only_failure(&site, "beamflow-agent", "watch root", "watch[0].path");
    std::fs::rename(site.dir.join("moved"), site.incoming()).unwrap();

    // a data root that cannot be written (a file stands where its folder would be)
    let blocker = site.dir.join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    site.edit_config(
        "data_root = \"./remote\"",
        "data_root = \"./not-a-folder/remote\"",
    );
    only_failure(
        &site,
        "beamflow-agent",
        "collector data root",
        "collector.data_root",
    );
    site.edit_config(
        "data_root = \"./not-a-folder/remote\"",
        "data_root = \"./remote\"",
    );

    // a queue whose batch commands are not on this host
    site.edit_config("scheduler = \"local\"", "scheduler = \"pbs\"");
    only_failure(&site, "beamflow-collector", "queue default", "module");
    site.edit_config("scheduler = \"pbs\"", "scheduler = \"local\"");

    // a remote command that is not installed
    site.edit_config(
        "transport = \"local\"",
        "transport = \"local\"\ncommand = [\"/nowhere/beamflow-collector\", \"serve\", \"--stdio\"]",
    );
    only_failure(&site, "beamflow-agent", "remote command", "link.command");
    service.term();
}

#[test]
fn over_ssh_the_master_and_host_key_are_checked_and_the_far_side_reports() {
    let sshd = Sshd::start();
    let site = Site::new("1s", "");
    let link = sshd.link_toml(&site.config, "own", None, "1s");
    site.edit_config("transport = \"local\"", &link);
    let _service = site.start_service();
    let (code, lines) = doctor(&site, "beamflow-agent");
    assert_eq!(code, 0, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok    SSH master: beamflow-test is up")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok    collector service: answers at https://")),
        "{lines:#?}"
    );

    // the host presents a key known_hosts does not hold for it
    sshd.distrust_host_key();
    let fails = failing(&site, "beamflow-agent");
    assert_eq!(fails.len(), 1, "{fails:#?}");
    assert!(fails[0].starts_with("FAIL  SSH master:"), "{}", fails[0]);
    assert!(fails[0].contains("known_hosts"), "{}", fails[0]);

    // adopt mode with nobody logged in says to log in
    let ctl = sshd.dir.join("nobody.sock");
    site.edit_config(
        "master = \"own\"",
        &format!("master = \"adopt\"\ncontrol_path = \"{}\"", ctl.display()),
    );
    only_failure(
        &site,
        "beamflow-agent",
        "SSH master",
        "beamflow-agent login",
    );
}
