//! Hosts on one machine: network namespaces a test makes (and removes), joined by veth
//! pairs. "beamline" runs the agent; "hpc" runs a real sshd and the collector service;
//! "compute" runs launchers. Loopback stays down in the beamline and compute namespaces, so
//! whatever works there went over the veth pairs.

use crate::{bin, run_ok, spawn_logged, wait_until, Proc, Site};
use std::process::Command;
use std::time::Duration;

fn ip(args: &[&str]) {
    run_ok("ip", args);
}

/// The three namespaces and their links; removed when dropped (with whatever runs in them).
pub struct Hosts {
    /// The beamline host's namespace.
    pub beamline: String,
    /// The login node's namespace.
    pub hpc: String,
    /// The compute node's namespace.
    pub compute: String,
    /// The hpc host's address on the beamline side.
    pub hpc_to_beamline: String,
    /// The hpc host's address on the compute side (what the service advertises).
    pub hpc_to_compute: String,
}

impl Hosts {
    /// Makes the three namespaces and their links.
    pub fn make() -> Hosts {
        let tag = format!("bf{}", std::process::id() % 100_000);
        // a /16 of the private range per run, so that two runs at once do not meet
        let net = 10 + (std::process::id() % 200);
        let h = Hosts {
            beamline: format!("{tag}b"),
            hpc: format!("{tag}h"),
            compute: format!("{tag}c"),
            hpc_to_beamline: format!("10.{net}.1.1"),
            hpc_to_compute: format!("10.{net}.2.1"),
        };
        for ns in [&h.beamline, &h.hpc, &h.compute] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
        }
        for (side, there, here_ip, there_ip) in [
            (
                "b",
                &h.beamline,
                &h.hpc_to_beamline,
                format!("10.{net}.1.2"),
            ),
            ("c", &h.compute, &h.hpc_to_compute, format!("10.{net}.2.2")),
        ] {
            let (a, b) = (format!("{tag}{side}0"), format!("{tag}{side}1"));
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &h.hpc]);
            ip(&["link", "set", &b, "netns", there]);
            ip(&[
                "-n",
                &h.hpc,
                "addr",
                "add",
                &format!("{here_ip}/24"),
                "dev",
                &a,
            ]);
            ip(&["-n", &h.hpc, "link", "set", &a, "up"]);
            ip(&[
                "-n",
                there,
                "addr",
                "add",
                &format!("{there_ip}/24"),
                "dev",
                &b,
            ]);
            ip(&["-n", there, "link", "set", &b, "up"]);
        }
        // the login node talks to itself (serve to the service) as a login node does; the
        // other two have no loopback at all
        ip(&["-n", &h.hpc, "link", "set", "lo", "up"]);
        h
    }

    /// `ip netns exec NS`, to which the program and its arguments are added.
    pub fn exec(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c
    }

    /// Whether the namespace has no loopback to use.
    pub fn lo_is_down(&self, ns: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show", "lo"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("state DOWN") || !text.contains(",UP")
    }

    /// The pids running in a namespace whose command line holds every one of `words`.
    pub fn pids(&self, ns: &str, words: &[&str]) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let args: Vec<String> = cmd
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                words.iter().all(|w| args.iter().any(|a| a.contains(w)))
            })
            .collect()
    }

    /// `beamflow-collector service` on the hpc host, once its server-info is written.
    pub fn service(&self, site: &Site) -> Proc {
        let info = site.dir.join("state/server-info");
        let _ = std::fs::remove_file(&info); // a killed service leaves it behind
        let mut cmd = self.exec(&self.hpc);
        cmd.arg(bin("beamflow-collector"))
            .args(["service", "--config"])
            .arg(&site.config)
            .env("BEAMFLOW_LOG", "debug");
        let p = spawn_logged(
            cmd,
            &site.dir.join("service.log"),
            "the service on the hpc host",
        );
        wait_until(Duration::from_secs(20), "server-info", || info.exists());
        p
    }

    /// The namespace's identity as /proc shows it (`net:[N]`).
    pub fn id(&self, ns: &str) -> String {
        let out = self
            .exec(ns)
            .args(["readlink", "/proc/self/ns/net"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.beamline, &self.hpc, &self.compute] {
            // end what still runs there, then the namespace (its veth ends go with it)
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
