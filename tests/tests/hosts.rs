//! Three hosts on one machine: network namespaces the test makes (and removes), joined by
//! veth pairs. "beamline" runs the agent; "hpc" runs a real sshd and the collector service,
//! which listens on every interface and advertises its address on the compute side; "compute"
//! runs the launcher (the local scheduler's, run there through the queue's `extra_args`).
//! Loopback stays down in the beamline and compute namespaces, so whatever works there went
//! over the veth pairs: a loopback address in server-info, or a launcher that connects to its
//! own host, fails this test.

use beamflow_e2e::hosts::Hosts;
use beamflow_e2e::sshd::Sshd;
use beamflow_e2e::*;

use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

#[test]
fn a_stack_crosses_three_hosts_to_job_finished_with_no_loopback_between_them() {
    let hosts = Hosts::make();
    let sshd = Sshd::start_at(Some(&hosts.hpc), &hosts.hpc_to_beamline, "");
    let site = Site::new("1s", "");
    let link = sshd.link_toml(&site.config, "own", None, "1s");
    site.edit_config("transport = \"local\"", &link);
    site.edit_config(
        "listen = \"127.0.0.1:0\"",
        &format!(
            "listen = \"0.0.0.0:0\"\nadvertise = \"{}\"",
            hosts.hpc_to_compute
        ),
    );
    // the launcher runs on the compute host; its one job records where it ran
    site.edit_config(
        "scheduler = \"local\"",
        &format!(
            "scheduler = \"local\"\nextra_args = [\"ip\", \"netns\", \"exec\", \"{}\"]",
            hosts.compute
        ),
    );
    site.edit_config("workflow = \"aligntk\"", "workflow = \"where\"");
    site.append_config(
        "[workflows.where]\nto_8bit = \"off\"\n[[workflows.where.steps]]\nname = \"where\"\ncommand = \"sh -c 'readlink /proc/self/ns/net > where.txt'\"\n",
    );
    let info_path = site.dir.join("state/server-info");
    let mut service = hosts.service(&site);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    let url = info["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("https://{}:", hosts.hpc_to_compute)),
        "server-info advertises the compute-side address: {url}"
    );

    let dir = site.write_stack("three hosts", 3, 64);
    let out = hosts
        .exec(&hosts.beamline)
        .arg(bin("beamflow-agent"))
        .args(["push", "--attempts", "1", "--config"])
        .arg(&site.config)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push from the beamline namespace: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&dir, &site.remote().join("three hosts"));

    let jobs = site_jobs_in(&hosts, &site, LONG);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let found: Vec<_> = walkdir::WalkDir::new(site.work())
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() == "where.txt")
        .collect();
    assert_eq!(found.len(), 1, "one job wrote where it ran");
    let ran_in = std::fs::read_to_string(found[0].path()).unwrap();
    assert_eq!(
        ran_in.trim(),
        hosts.id(&hosts.compute),
        "the job ran on the compute host"
    );
    assert_ne!(hosts.id(&hosts.compute), hosts.id(&hosts.hpc));
    for ns in [&hosts.beamline, &hosts.compute] {
        assert!(hosts.lo_is_down(ns), "{ns} had no loopback to use");
    }

    // the collector's doctor on the login node, with a probe job on a compute node
    let doctor = |want_ok: bool| -> String {
        let out = hosts
            .exec(&hosts.hpc)
            .arg(bin("beamflow-collector"))
            .args(["doctor", "--probe", "--probe-wait", "60s", "--config"])
            .arg(&site.config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("{text}");
        assert_eq!(out.status.success(), want_ok, "{text}");
        text
    };
    let text = doctor(true);
    let line = text
        .lines()
        .find(|l| l.contains("probe in queue default"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("ok")
            && line.contains(&format!("reached https://{}:", hosts.hpc_to_compute)),
        "{line}"
    );
    service.term();

    // advertised on the beamline side: the login node reaches itself there, compute nodes
    // do not, and the probe says so, naming the address it tried
    site.edit_config(
        &format!("advertise = \"{}\"", hosts.hpc_to_compute),
        &format!("advertise = \"{}\"", hosts.hpc_to_beamline),
    );
    let mut service = hosts.service(&site);
    let text = doctor(false);
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{text}");
    assert!(
        fails[0].starts_with("FAIL  probe in queue default:"),
        "{}",
        fails[0]
    );
    assert!(
        fails[0].contains(&format!("https://{}:", hosts.hpc_to_beamline))
            && fails[0].contains("service.advertise"),
        "{}",
        fails[0]
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok    service: answers at")),
        "{text}"
    );
    service.term();
}

/// The jobs of the site, asked from the hpc namespace (the CLI reads server-info there).
fn site_jobs_in(hosts: &Hosts, site: &Site, limit: Duration) -> Vec<serde_json::Value> {
    let jobs = || -> Vec<serde_json::Value> {
        let out = hosts
            .exec(&hosts.hpc)
            .arg(bin("beamflow-collector"))
            .args(["ls", "--json", "--config"])
            .arg(&site.config)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    wait_for(
        limit,
        "every job JOB_FINISHED",
        || {
            let jobs = jobs();
            assert!(
                !jobs.iter().any(|j| j["state"] == "FAILED"),
                "a job failed: {jobs:?}\n{}",
                site.log_tail("service.log")
            );
            (!jobs.is_empty() && jobs.iter().all(|j| j["state"] == "JOB_FINISHED")).then_some(jobs)
        },
        || format!("{:?}\n{}", jobs(), site.log_tail("service.log")),
    )
}
