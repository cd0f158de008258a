//! `beamflow-agent setup`: puts the collector side in place over the agent's own SSH master,
//! so that a beamline joins a site in three commands (install, `login`/`setup`, `systemctl
//! enable --now`). It checks the remote `beamflow-collector` (found as the link finds it: on
//! the non-interactive PATH, else in `~/.local/bin`) and its protocol; with the user's consent
//! copies this host's collector there when it is missing or differs (verified by BLAKE3 once
//! it is in place); writes a starter collector config when there is none (never over one);
//! and starts the service as a user unit, or detached where the login node has no
//! `systemd --user`. A second run changes nothing.

use crate::link::ssh::{channel_command, Master};
use crate::link::{collector_exe, remote_collector, REMOTE_BIN, REMOTE_CONFIG};
use beamflow_config::{Config, MasterMode, Transport};
use beamflow_protocol::doctor::Report;
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why setup stopped.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The link is not SSH: there is no far side to set up.
    #[error("setup works over the ssh transport; `link.transport` is \"local\", where the collector is this host's own (check it with `beamflow-agent doctor`)")]
    NotSsh,
    /// No master.
    #[error("{0} — fix: {1}")]
    Master(String, String),
    /// A remote command could not even be started.
    #[error("failed to run ssh: {0}")]
    Ssh(std::io::Error),
    /// The collector to install is not on this host.
    #[error("no usable beamflow-collector on this host to install ({path}: {why}); build it (`cargo build --release`) or install it beside beamflow-agent")]
    NoLocalCollector {
        /// Where it was looked for.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// What `beamflow-collector version --json` says.
#[derive(Debug, Clone, Deserialize)]
struct Build {
    version: String,
    protocol: u16,
    path: String,
    blake3: String,
}

fn parse_build(out: &Output) -> Option<Build> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// One step's outcome, printed as a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Already as it should be.
    Ok,
    /// Changed by this run.
    Done,
    /// Could not be done; the line says what to do.
    Fail,
}

impl Mark {
    fn word(self) -> &'static str {
        match self {
            Mark::Ok => "ok  ",
            Mark::Done => "done",
            Mark::Fail => "FAIL",
        }
    }
}

struct Remote<'a> {
    cfg: &'a Config,
    ctl: PathBuf,
}

impl Remote<'_> {
    fn run(&self, argv: &[String], input: Option<&Path>) -> Result<Output, SetupError> {
        let full = channel_command(&self.cfg.link, &self.ctl, argv);
        let mut child = Command::new(&full[0])
            .args(&full[1..])
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(SetupError::Ssh)?;
        if let (Some(path), Some(mut stdin)) = (input, child.stdin.take()) {
            // streamed: the binary is never held in memory whole
            let copied = std::fs::File::open(path)
                .and_then(|mut f| std::io::copy(&mut f, &mut stdin).map(|_| ()));
            drop(stdin);
            if let Err(e) = copied {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SetupError::Ssh(e));
            }
        }
        child.wait_with_output().map_err(SetupError::Ssh)
    }

    fn sh(&self, script: &str) -> Result<Output, SetupError> {
        self.run(&["sh".into(), "-c".into(), script.into()], None)
    }

    /// The collector as the link would start it, if there is one.
    fn build(&self) -> Result<Option<Build>, SetupError> {
        let argv = if self.cfg.link.command.is_empty() {
            remote_collector(&["version", "--json"])
        } else {
            vec![
                self.cfg.link.command[0].clone(),
                "version".into(),
                "--json".into(),
            ]
        };
        Ok(parse_build(&self.run(&argv, None)?))
    }

    fn doctor(&self) -> Result<Option<Report>, SetupError> {
        let out = self.run(
            &remote_collector(&[
                "doctor",
                "--json",
                "--config",
                &format!("~/{REMOTE_CONFIG}"),
            ]),
            None,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| serde_json::from_str(l).ok()))
    }
}

fn stderr(out: &Output) -> String {
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if e.is_empty() {
        format!("{}", out.status)
    } else {
        e
    }
}

/// A collector config for a login node that has none: this beamline may deliver, files land
/// under `~/beamflow`, the database stays in the home folder (never on Lustre/GPFS), the
/// service listens where compute nodes reach it, and a batch queue is written with
/// `submit = false` until someone names the project and queue it may spend.
pub fn starter_config(scheduler: &str, beamline: &str) -> String {
    let queue = match scheduler {
        "slurm" | "pbs" => format!(
            "[queues.default]\nscheduler = \"{scheduler}\"\nsubmit = false                 # set project and queue below, then true\nproject = \"\"\nqueue = \"\"\nmax_queued = 1\nmin_nodes = 1\nmax_nodes = 1\nwalltime = \"1h\"\nidle_exit = \"5m\"\n"
        ),
        _ => "[queues.default]\nscheduler = \"local\"           # no batch system found: launchers run on this node\nsubmit = true\nmax_queued = 1\nslots = 0\n".to_string(),
    };
    let beamlines = if beamline.is_empty() {
        "[]".to_string()
    } else {
        format!("[\"{beamline}\"]")
    };
    format!(
        "# beamflow collector, written by `beamflow-agent setup` (examples/polaris.toml and slurm.toml\n\
         # in the beamflow sources show every setting). Edit freely: setup never writes over this file.\n\n\
         [collector]\ndata_root = \"~/beamflow/data\"\nstate_dir = \"~/.local/state/beamflow\"   # database and server-info: keep off Lustre/GPFS\nbeamlines = {beamlines}\n\n\
         [service]\nlisten = \"0.0.0.0:0\"             # compute nodes and the other login nodes reach it here\nwork_root = \"~/beamflow/work\"\n\n{queue}"
    )
}

/// Runs setup; `say` prints each step's line, `consent` asks before the binary is copied.
/// Returns whether everything is in place.
pub async fn run(
    cfg: &Config,
    say: &mut dyn FnMut(Mark, &str),
    consent: &mut dyn FnMut(&str) -> bool,
) -> Result<bool, SetupError> {
    if cfg.link.transport != Transport::Ssh {
        return Err(SetupError::NotSsh);
    }
    let host = cfg.link.host.clone();
    let mut master = Master::new(&cfg.link);
    let ctl = master.ensure().await.map_err(|e| {
        let fix = match cfg.link.master {
            MasterMode::Adopt => "run `beamflow-agent login --config <file>` first".to_string(),
            MasterMode::Own => format!("make `ssh {host}` work from this account with its key; check the host's key against the site's published fingerprints and add it to known_hosts (`ssh {host}` once, by hand)"),
        };
        SetupError::Master(e.to_string(), fix)
    })?;
    say(
        Mark::Ok,
        &format!("SSH master: {host} is up (host key checked)"),
    );
    let remote = Remote { cfg, ctl };
    let result = steps(&remote, &host, say, consent);
    master.close().await;
    result
}

/// The three steps in order, each stopping the run when it cannot do its part: the collector
/// binary, its config, its service. True when all is in place and as the link will find it.
fn steps(
    remote: &Remote<'_>,
    host: &str,
    say: &mut dyn FnMut(Mark, &str),
    consent: &mut dyn FnMut(&str) -> bool,
) -> Result<bool, SetupError> {
    // this host's collector, the one that would be installed
    let local_exe = collector_exe();
    let local = Command::new(&local_exe)
        .args(["version", "--json"])
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| parse_build(&o).ok_or_else(|| stderr(&o)))
        .map_err(|why| SetupError::NoLocalCollector {
            path: local_exe.clone(),
            why,
        })?;
    if local.protocol != beamflow_protocol::VERSION {
        return Err(SetupError::NoLocalCollector {
            path: local_exe,
            why: format!(
                "it speaks protocol {}, this agent {}",
                local.protocol,
                beamflow_protocol::VERSION
            ),
        });
    }
    let Some(ok) = install_collector(remote, host, &local_exe, &local, say, consent)? else {
        return Ok(false);
    };
    if !place_config(remote, host, say)? {
        return Ok(false);
    }
    Ok(start_service(remote, host, say)? && ok)
}

/// The collector binary: this host's build where the link will find it, copied with consent
/// when missing or different. `None`: stop here; `Some(false)`: in place but not first on PATH.
fn install_collector(
    remote: &Remote<'_>,
    host: &str,
    local_exe: &Path,
    local: &Build,
    say: &mut dyn FnMut(Mark, &str),
    consent: &mut dyn FnMut(&str) -> bool,
) -> Result<Option<bool>, SetupError> {
    let cfg = remote.cfg;
    let mut ok = true;
    match remote.build()? {
        Some(b) if b.blake3 == local.blake3 => say(
            Mark::Ok,
            &format!(
                "collector: {} at {host}:{} is this host's build",
                b.version, b.path
            ),
        ),
        found => {
            let what = match &found {
                Some(b) => format!(
                    "{host}:{} is {} (protocol {}), this host's is {} (protocol {})",
                    b.path, b.version, b.protocol, local.version, local.protocol
                ),
                None => format!("{host} has no beamflow-collector on its non-interactive PATH or in ~/{REMOTE_BIN}"),
            };
            if !cfg.link.command.is_empty() {
                say(Mark::Fail, &format!("collector: {what}; `link.command` names it, so setup leaves it to you: install the same release there"));
                return Ok(None);
            }
            if !consent(&format!(
                "{what}.\nCopy this host's {} ({}) to {host}:~/{REMOTE_BIN}?",
                local_exe.display(),
                local.version
            )) {
                say(Mark::Fail, &format!("collector: {what}; not copied (no consent): run setup again and answer yes, or install it yourself"));
                return Ok(None);
            }
            let out = remote.run(
                &[
                    "sh".into(),
                    "-c".into(),
                    format!("mkdir -p \"$HOME/{dir}\" && cat > \"$HOME/{REMOTE_BIN}.part\" && chmod 755 \"$HOME/{REMOTE_BIN}.part\" && mv -f \"$HOME/{REMOTE_BIN}.part\" \"$HOME/{REMOTE_BIN}\"", dir = Path::new(REMOTE_BIN).parent().map(|p| p.display().to_string()).unwrap_or_default()),
                ],
                Some(local_exe),
            )?;
            if !out.status.success() {
                say(Mark::Fail, &format!("collector: copying to {host}:~/{REMOTE_BIN} failed: {} (check the quota and that ~/.local/bin is writable)", stderr(&out)));
                return Ok(None);
            }
            // verified where it landed, and as the link will find it
            match remote.build()? {
                Some(b) if b.blake3 == local.blake3 => say(
                    Mark::Done,
                    &format!(
                        "collector: copied to {host}:{} and verified (BLAKE3 {})",
                        b.path,
                        &b.blake3[..16]
                    ),
                ),
                Some(b) => {
                    say(Mark::Fail, &format!("collector: copied to ~/{REMOTE_BIN}, but the link finds {} ({}) first on the login node's PATH: set `link.command = [\"~/{REMOTE_BIN}\", \"serve\", \"--stdio\", \"--config\", \"~/{REMOTE_CONFIG}\"]`", b.path, b.version));
                    ok = false;
                }
                None => {
                    say(Mark::Fail, &format!("collector: copied to ~/{REMOTE_BIN} but it does not run there (another CPU or C library?): build it on the login node (`cargo install --path collector`)"));
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some(ok))
}

/// The collector's config: written once (a starter for the scheduler found), never over one
/// that exists; then it must load. False: stop here.
fn place_config(
    remote: &Remote<'_>,
    host: &str,
    say: &mut dyn FnMut(Mark, &str),
) -> Result<bool, SetupError> {
    let cfg = remote.cfg;
    // the collector's config: written once, never over one that exists
    let exists = remote.sh(&format!("test -e \"$HOME/{REMOTE_CONFIG}\""))?;
    if exists.status.success() {
        say(
            Mark::Ok,
            &format!("config: {host}:~/{REMOTE_CONFIG} exists (left as it is)"),
        );
    } else {
        let found = remote.sh("command -v sbatch; command -v qsub")?;
        let found = String::from_utf8_lossy(&found.stdout);
        let scheduler = if found.contains("sbatch") {
            "slurm"
        } else if found.contains("qsub") {
            "pbs"
        } else {
            "local"
        };
        let text = starter_config(scheduler, &cfg.agent.name);
        let tmp = tempfile::NamedTempFile::new().map_err(SetupError::Ssh)?;
        tmp.as_file()
            .write_all(text.as_bytes())
            .map_err(SetupError::Ssh)?;
        let dir = Path::new(REMOTE_CONFIG)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let out = remote.run(
            &[
                "sh".into(),
                "-c".into(),
                format!("mkdir -p \"$HOME/{dir}\" && set -C && cat > \"$HOME/{REMOTE_CONFIG}\""),
            ],
            Some(tmp.path()),
        )?;
        if !out.status.success() {
            say(
                Mark::Fail,
                &format!(
                    "config: cannot write {host}:~/{REMOTE_CONFIG}: {}",
                    stderr(&out)
                ),
            );
            return Ok(false);
        }
        let note = if scheduler == "local" {
            "launchers run on the login node itself".to_string()
        } else {
            format!("{scheduler} found: set its project and queue and `submit = true` to run jobs")
        };
        say(
            Mark::Done,
            &format!("config: wrote a starter {host}:~/{REMOTE_CONFIG} ({note})"),
        );
    }
    let check = remote.run(
        &remote_collector(&["config", "check", &format!("~/{REMOTE_CONFIG}")]),
        None,
    )?;
    if !check.status.success() {
        say(
            Mark::Fail,
            &format!(
                "config: {host}:~/{REMOTE_CONFIG} does not load: {}",
                stderr(&check)
            ),
        );
        return Ok(false);
    }
    Ok(true)
}

/// The service: answering already, else started (a user unit where systemd --user exists,
/// detached otherwise) and waited for up to 30 s.
fn start_service(
    remote: &Remote<'_>,
    host: &str,
    say: &mut dyn FnMut(Mark, &str),
) -> Result<bool, SetupError> {
    // the service
    let answers = |r: &Option<Report>| {
        r.as_ref()
            .and_then(|r| r.checks.iter().find(|c| c.name == "service"))
            .filter(|c| c.ok)
            .map(|c| c.detail.clone())
    };
    if let Some(d) = answers(&remote.doctor()?) {
        say(Mark::Ok, &format!("service: {d}"));
        return Ok(true);
    }
    let unit = include_str!("../../../systemd/beamflow-collector.service");
    let user_systemd = remote.sh("systemctl --user show-environment >/dev/null 2>&1")?;
    let how = if user_systemd.status.success() {
        let tmp = tempfile::NamedTempFile::new().map_err(SetupError::Ssh)?;
        tmp.as_file()
            .write_all(unit.as_bytes())
            .map_err(SetupError::Ssh)?;
        let out = remote.run(
            &[
                "sh".into(),
                "-c".into(),
                "mkdir -p \"$HOME/.config/systemd/user\" && cat > \"$HOME/.config/systemd/user/beamflow-collector.service\" && systemctl --user daemon-reload && systemctl --user enable --now beamflow-collector".into(),
            ],
            Some(tmp.path()),
        )?;
        if !out.status.success() {
            say(Mark::Fail, &format!("service: the user unit did not start: {}; see `journalctl --user -u beamflow-collector` on {host}", stderr(&out)));
            return Ok(false);
        }
        "as the user unit beamflow-collector (`loginctl enable-linger` keeps it after you log out, where the site allows)".to_string()
    } else {
        let start = format!(
            "mkdir -p \"$HOME/.local/state/beamflow\" && cd \"$HOME\" && setsid -f \"$(command -v beamflow-collector || echo \"$HOME/{REMOTE_BIN}\")\" service --config \"$HOME/{REMOTE_CONFIG}\" </dev/null >>\"$HOME/.local/state/beamflow/service.log\" 2>&1"
        );
        let out = remote.sh(&start)?;
        if !out.status.success() {
            say(Mark::Fail, &format!("service: could not start it: {}; on {host} run: beamflow-collector service --config ~/{REMOTE_CONFIG}", stderr(&out)));
            return Ok(false);
        }
        format!("detached, without systemd --user on {host} (it does not come back after a reboot: use the site's way of keeping a service, e.g. a crontab `@reboot beamflow-collector service --config ~/{REMOTE_CONFIG}`)")
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let report = remote.doctor()?;
        if let Some(d) = answers(&report) {
            say(Mark::Done, &format!("service: started {how}; {d}"));
            return Ok(true);
        }
        if Instant::now() >= until {
            let why = report
                .and_then(|r| r.checks.into_iter().find(|c| c.name == "service"))
                .map(|c| c.line())
                .unwrap_or_else(|| "no report".into());
            say(Mark::Fail, &format!("service: started but not answering after 30 s ({why}); see ~/.local/state/beamflow/service.log on {host}"));
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The line printed for a step.
pub fn line(mark: Mark, text: &str) -> String {
    format!("{}  {text}", mark.word())
}

/// `beamflow-agent setup`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Copy the collector without asking.
    #[arg(long)]
    pub yes: bool,
}

/// `beamflow-agent setup`: the collector side in place, asking before it copies anything.
pub fn main(args: Args) -> anyhow::Result<beamflow_program::Exit> {
    use anyhow::Context;
    use beamflow_program::{complain, sayln, Exit};
    let cfg = Config::load(&args.config)?;
    let mut say = |m: Mark, t: &str| sayln!("{}", line(m, t));
    let yes = args.yes;
    let mut consent = |q: &str| {
        if yes {
            return true;
        }
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            complain!("{q}\n(no terminal to answer on: run again with --yes to agree)\n");
            return false;
        }
        beamflow_program::logs::out(&format!("{q} [y/N] "));
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        matches!(answer.trim(), "y" | "Y" | "yes" | "YES")
    };
    let rt = beamflow_program::runtime().context("failed to start the async runtime")?;
    if !rt.block_on(run(&cfg, &mut say, &mut consent))? {
        return Ok(Exit::Error);
    }
    sayln!(
        "the collector side is ready; check both ends with `beamflow-agent doctor --config {}`",
        args.config.display()
    );
    Ok(Exit::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starter_configs_load_for_every_kind_of_site() {
        for kind in ["slurm", "pbs", "local"] {
            let text = starter_config(kind, "alcfxray1");
            let cfg = Config::parse(&text, Path::new("starter.toml"))
                .unwrap_or_else(|e| panic!("{kind}: {e}\n{text}"));
            assert_eq!(cfg.collector.beamlines, ["alcfxray1"]);
            assert_eq!(cfg.service.listen, "0.0.0.0:0");
            let q = &cfg.queues["default"];
            assert_eq!(q.submit, kind == "local", "{kind}");
        }
    }
}
