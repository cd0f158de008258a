//! `beamflow-agent doctor`: what a beamline host needs, checked one line at a time, each
//! failure with its fix: the journal's folder, the watch roots and inotify's watch limit, the
//! SSH master and its host key, the remote command and its protocol version (by running the
//! collector's own doctor over the link, whose checks are shown too), and the clock skew
//! between the two hosts.

use crate::link::far_command_for;
use crate::link::ssh::Master;
use beamflow_config::{Config, MasterMode, Transport, WatchMode};
use beamflow_protocol::doctor::{now_secs, writable, Check, Report};
use std::process::Stdio;
use std::time::Duration;

/// More apart than this, the hosts' clocks make event times and `settle` misleading.
const SKEW_LIMIT: f64 = 2.0;

/// Roots finished by quiet time whose stacks kept growing after they were finished: each
/// growth was a new version with a DAG over the stack so far. A root with a count or a
/// marker is never finished by quiet time, so only the others are looked at.
fn growth_checks(cfg: &Config) -> Vec<Check> {
    let Ok(journal) = crate::journal::Journal::open_read_only(&cfg.agent.state_dir) else {
        return Vec::new();
    };
    let grown = journal.grown().unwrap_or_default();
    let mut out = Vec::new();
    for (i, w) in cfg.watch.iter().enumerate() {
        if w.expect.is_some() || w.marker.is_some() {
            continue;
        }
        let root = w.path.canonicalize().unwrap_or_else(|_| w.path.clone());
        let here: Vec<&(String, String, u32)> = grown
            .iter()
            .filter(|(dir, _, _)| std::path::Path::new(dir).starts_with(&root))
            .collect();
        if here.is_empty() {
            continue;
        }
        let versions: u32 = here.iter().map(|g| g.2).sum();
        let (_, name, n) = here[0];
        out.push(Check::warn(
            "stacks finished too early",
            format!(
                "{}: {} stack(s) kept growing after they were finished ({versions} extra version(s), each a DAG over the stack so far; e.g. {name}: {n})",
                w.path.display(),
                here.len()
            ),
            format!(
                "set `watch[{i}].expect` (the section count) or `watch[{i}].marker` (a file the \
                 detector writes last), or a `watch[{i}].settle` longer than the slowest gap \
                 between two sections (now {})",
                w.settle
            ),
        ));
    }
    out
}

/// Runs every check; the caller prints them.
pub async fn checks(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match writable(&cfg.agent.state_dir) {
        Ok(()) => Check::pass(
            "journal folder",
            format!("{} writable", cfg.agent.state_dir.display()),
        ),
        Err(e) => Check::fail(
            "journal folder",
            format!("{}: {e}", cfg.agent.state_dir.display()),
            "make it writable by the agent's account, or point `agent.state_dir` elsewhere",
        ),
    });
    out.extend(watch_checks(cfg));
    out.extend(growth_checks(cfg));
    let (link, ctl) = link_check(cfg).await;
    let ssh_down = cfg.link.transport == Transport::Ssh && ctl.is_none();
    out.push(link);
    if ssh_down {
        return out;
    }
    let argv = far_command_for(
        cfg,
        ctl.as_ref().map(|(_, p)| p.as_path()),
        &["doctor", "--json"],
    );
    out.extend(remote(cfg, &argv).await);
    if let Some((m, _)) = ctl {
        m.close().await;
    }
    out
}

/// Each watch root readable, with its folders; inotify's limit against them all.
fn watch_checks(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let mut folders = 0u64;
    let mut inotify = false;
    for (i, w) in cfg.watch.iter().enumerate() {
        let name = "watch root";
        let path = w.path.display();
        match std::fs::read_dir(&w.path) {
            Err(e) => out.push(Check::fail(
                name,
                format!("{path}: cannot read it: {e}"),
                format!("create it (or mount it) and let the agent's account read it, or fix `watch[{i}].path`"),
            )),
            Ok(_) => {
                let n = walkdir::WalkDir::new(&w.path)
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_dir())
                    .count() as u64;
                folders += n;
                inotify |= w.mode == WatchMode::Inotify;
                out.push(Check::pass(name, format!("{path}: readable, {n} folder(s)")));
            }
        }
    }
    if inotify {
        out.push(inotify_check(folders, limit));
    }
    out
}

/// The link: local, or the SSH master up (kept open for the remote checks, with its control
/// path).
async fn link_check(cfg: &Config) -> (Check, Option<(Master, std::path::PathBuf)>) {
    match cfg.link.transport {
        Transport::Local => (
            Check::pass("link", "local: the collector runs on this host"),
            None,
        ),
        Transport::Ssh => {
            let mut m = Master::new(&cfg.link);
            match m.ensure().await {
                Ok(ctl) => {
                    let how = match cfg.link.master {
                        MasterMode::Own => "opened by the agent",
                        MasterMode::Adopt => "adopted",
                    };
                    let c = Check::pass(
                        "SSH master",
                        format!("{} is up ({how}; host key checked)", cfg.link.host),
                    );
                    (c, Some((m, ctl)))
                }
                Err(e) => {
                    let fix = match cfg.link.master {
                        MasterMode::Adopt => "run `beamflow-agent login --config <file>`".to_string(),
                        MasterMode::Own => format!(
                            "check that `ssh {}` works from this account without a password (its key, and known_hosts holding the host's key)",
                            cfg.link.host
                        ),
                    };
                    (Check::fail("SSH master", e.to_string(), fix), None)
                }
            }
        }
    }
}

/// The collector's doctor, run where the link's far end runs.
async fn remote(cfg: &Config, argv: &[String]) -> Vec<Check> {
    let name = "remote command";
    let before = now_secs();
    let run = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(120), run).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return vec![Check::fail(
                name,
                format!("cannot run {}: {e}", argv[0]),
                "install it, or set `link.command`",
            )]
        }
        Err(_) => {
            return vec![Check::fail(
                name,
                "no answer in 120 s".to_string(),
                "check the login node's load and its filesystems",
            )]
        }
    };
    let after = now_secs();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(report) = text
        .lines()
        .find_map(|l| serde_json::from_str::<Report>(l).ok())
    else {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        let (detail, fix) = if out.status.code() == Some(127) || err.contains("not found") {
            (
                format!("`beamflow-collector` was not found: {err}"),
                match cfg.link.transport {
                    Transport::Ssh => "put it on the login node's non-interactive PATH (`ssh HOST which beamflow-collector` must find it; ~/.local/bin, then check ~/.bashrc exports it before any early return), or give its full path in `link.command`".to_string(),
                    Transport::Local => "install beamflow-collector beside beamflow-agent or on PATH".to_string(),
                },
            )
        } else {
            (
                format!(
                    "it exited with {} and no report; it said: {}",
                    out.status,
                    if err.is_empty() { "nothing" } else { err }
                ),
                "run the same command by hand on the login node and fix what it says (an older collector has no `doctor`: update it)".to_string(),
            )
        };
        return vec![Check::fail(name, detail, fix)];
    };
    let mut checks = vec![if report.protocol == beamflow_protocol::VERSION {
        Check::pass(
            name,
            format!(
                "{} on {}, protocol {}",
                report.program, report.host, report.protocol
            ),
        )
    } else {
        Check::fail(
            name,
            format!(
                "{} on {} speaks protocol {}, this agent {}",
                report.program,
                report.host,
                report.protocol,
                beamflow_protocol::VERSION
            ),
            "install the same beamflow release on both hosts",
        )
    }];
    checks.extend(report.checks.into_iter().map(|mut c| {
        c.name = format!("collector {}", c.name);
        c
    }));
    checks.push(skew_check(before, after, report.time));
    checks
}

/// Whether inotify can watch every folder: each takes one watch of the user's limit.
pub fn inotify_check(folders: u64, limit: Option<u64>) -> Check {
    let name = "inotify watches";
    match limit {
        None => Check::pass(name, format!("{folders} folder(s); limit unknown")),
        Some(l) if folders >= l => Check::fail(
            name,
            format!("{folders} folder(s) to watch, limit {l}"),
            format!(
                "raise it: `sysctl -w fs.inotify.max_user_watches={}` and the same line in /etc/sysctl.d/90-beamflow.conf, or use `mode = \"poll\"`",
                (folders * 2).max(8192)
            ),
        ),
        Some(l) => Check::pass(name, format!("{folders} folder(s) to watch, limit {l}")),
    }
}

/// How far apart the clocks are: the remote time against the middle of the exchange.
pub fn skew_check(before: f64, after: f64, remote: f64) -> Check {
    let name = "clock skew";
    let skew = remote - (before + after) / 2.0;
    let slack = (after - before) / 2.0;
    if skew.abs() - slack > SKEW_LIMIT {
        Check::fail(
            name,
            format!("the collector's clock is {skew:+.1} s from this host's"),
            "run NTP (chrony or systemd-timesyncd) on both hosts",
        )
    } else {
        Check::pass(name, format!("{skew:+.2} s (±{slack:.2} s)"))
    }
}

/// `beamflow-agent doctor`'s arguments: the config file.
pub type Args = beamflow_program::config::ConfigFile;

/// `beamflow-agent doctor`: one line per check; exit 1 on a FAIL.
pub fn main(args: Args) -> anyhow::Result<beamflow_program::Exit> {
    use anyhow::Context;
    use beamflow_program::{sayln, Exit};
    let cfg = Config::load(&args.config)?;
    sayln!(
        "beamflow-agent {} on this host, config {}",
        env!("CARGO_PKG_VERSION"),
        args.config.display()
    );
    let rt = beamflow_program::runtime().context("failed to start the async runtime")?;
    let checks = rt.block_on(checks(&cfg));
    for c in &checks {
        sayln!("{}", c.line());
    }
    Ok(if checks.iter().any(|c| !c.ok) {
        Exit::Error
    } else {
        Exit::Done
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_limit_below_the_folder_count_fails_with_the_sysctl_that_fixes_it() {
        assert!(inotify_check(100, Some(8192)).ok);
        let c = inotify_check(20_000, Some(8192));
        assert!(!c.ok);
        assert!(
            c.fix.contains("fs.inotify.max_user_watches=40000"),
            "{}",
            c.fix
        );
        assert!(inotify_check(5, None).ok);
    }

    #[test]
    fn skew_counts_only_beyond_the_exchange_time() {
        assert!(skew_check(100.0, 100.2, 100.1).ok);
        assert!(skew_check(100.0, 100.2, 101.5).ok);
        let c = skew_check(100.0, 100.2, 95.0);
        assert!(!c.ok);
        assert!(c.detail.contains("-5.1 s"), "{}", c.detail);
        // a slow exchange cannot be blamed on the clocks
        assert!(skew_check(100.0, 106.0, 105.5).ok);
    }
}
