//! `beamflow-agent`: parses arguments and calls the library.

use anyhow::{Context, Result};
use beamflow_agent::commands::{demo, push, run as daemon, status};
use beamflow_agent::journal::Journal;
use beamflow_config::{logs, Config, LogFormat};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Prints a line to stdout; a reader that went away does not kill the program.
macro_rules! sayln {
    ($($t:tt)*) => { logs::out(&format!("{}\n", format_args!($($t)*))) };
}

/// Prints a line to stderr, ignoring a lost stderr.
macro_rules! complain {
    ($($t:tt)*) => { logs::err(&format!($($t)*)) };
}

#[derive(Parser)]
#[command(
    name = "beamflow-agent",
    version = beamflow_protocol::VERSION_AND_COMMIT,
    about = "Beamline side of beamflow: watch image folders, send finished stacks, register their DAG"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The daemon: watch, detect finished stacks, transfer, submit.
    Run {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Send one folder now and wait until its DAG is accepted.
    Push {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// The folder holding the images.
        dir: PathBuf,
        /// Attempts before giving up on transient failures (collector down, link broken).
        #[arg(long, default_value_t = 4)]
        attempts: u32,
    },
    /// Open the SSH master in this terminal (password, one-time password …) and leave it
    /// running for the daemon (`[link] master = "adopt"`).
    Login {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Put the collector side in place over the SSH master: the remote collector (copied
    /// from this host with your consent when missing or different), a starter config, the
    /// service running. A second run changes nothing.
    Setup {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Copy the collector without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Check this host and the far side: journal folder, watch roots and inotify's limit,
    /// the SSH master and host key, the remote collector and its version (its own checks
    /// too), the clocks. One line per check, `ok` or `FAIL` with the fix; exit 1 on a FAIL.
    Doctor {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Show every stack the agent knows, with state, files, bytes and reason.
    Status {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole path locally on a synthetic stack (no SSH, no batch system).
    Demo {
        /// Folder to run in (default: a fresh temporary folder, kept for inspection).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Sections to write (2 to 1000).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000))]
        sections: u32,
        /// Pixels per side of each 16-bit section (128 to 2048: the sizes AlignTK is tested
        /// to register the synthetic specimen at).
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(128..=2048))]
        side: u32,
        /// Quiet period that finishes the stack.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        settle: Duration,
    },
    /// Print shell completions (`source <(beamflow-agent completions bash)`; zsh, fish, elvish and
    /// PowerShell too).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `beamflow-agent man > /usr/local/share/man/man1/beamflow-agent.1`.
    Man,
    /// Check a config file: one verdict line, or errors with the key and line (`--print`: the
    /// effective settings too).
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Load FILE and report errors with key and line, or one line saying it is good.
    Check {
        file: PathBuf,
        /// Also print the effective settings of the sections the agent uses.
        #[arg(long)]
        print: bool,
    },
    /// Print the reference of every key both programs read, as Markdown (generated from the
    /// schema; `docs/configuration.md` is this output).
    Reference,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            complain!("beamflow-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run { config } => {
            let cfg = Config::load(&config)?;
            logs::init(cfg.agent.log_format, "info");
            let rt = runtime()?;
            let status = format!("STATUS=watching {} root(s)", cfg.watch.len());
            let ready = move || {
                beamflow_agent::systemd::notify(&format!("READY=1\n{status}"));
            };
            let result = rt.block_on(daemon::run(cfg, shutdown_signal(), ready));
            // a transfer thread still running is abandoned: its link dies with us and the
            // journal resumes it at the next start
            rt.shutdown_timeout(Duration::from_secs(2));
            result?;
        }
        Cmd::Push {
            config,
            dir,
            attempts,
        } => {
            let cfg = Config::load(&config)?;
            logs::init(cfg.agent.log_format, "warn");
            let rt = runtime()?;
            let progress = std::sync::Arc::new(beamflow_agent::link::transfer::Progress::default());
            let p = rt.block_on(async {
                let shown = tokio::spawn(show_progress(progress.clone()));
                let r = push::push(&cfg, &dir, attempts, Some(progress.clone())).await;
                shown.abort();
                r
            })?;
            sayln!(
                "{} v{}: {} files, {} ({} sent, {} already there), {:.2} s; DAG {} with {} jobs{}",
                p.stack,
                p.version,
                p.files,
                status::human_bytes(p.bytes),
                status::human_bytes(p.wire_bytes),
                p.same,
                p.secs,
                p.remote_id,
                p.jobs,
                if p.created {
                    ""
                } else {
                    " (registered before; nothing new created)"
                }
            );
        }
        Cmd::Setup { config, yes } => {
            use beamflow_agent::commands::setup;
            let cfg = Config::load(&config)?;
            let mut say = |m: setup::Mark, t: &str| sayln!("{}", setup::line(m, t));
            let mut consent = |q: &str| {
                if yes {
                    return true;
                }
                use std::io::IsTerminal;
                if !std::io::stdin().is_terminal() {
                    complain!("{q}\n(no terminal to answer on: run again with --yes to agree)\n");
                    return false;
                }
                logs::out(&format!("{q} [y/N] "));
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                matches!(answer.trim(), "y" | "Y" | "yes" | "YES")
            };
            let ok = runtime()?.block_on(setup::run(&cfg, &mut say, &mut consent))?;
            if !ok {
                return Ok(ExitCode::from(1));
            }
            sayln!("the collector side is ready; check both ends with `beamflow-agent doctor --config {}`", config.display());
        }
        Cmd::Doctor { config } => {
            let cfg = Config::load(&config)?;
            sayln!(
                "beamflow-agent {} on this host, config {}",
                env!("CARGO_PKG_VERSION"),
                config.display()
            );
            let checks = runtime()?.block_on(beamflow_agent::commands::doctor::checks(&cfg));
            for c in &checks {
                sayln!("{}", c.line());
            }
            if checks.iter().any(|c| !c.ok) {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Login { config } => {
            let cfg = Config::load(&config)?;
            anyhow::ensure!(
                cfg.link.transport == beamflow_config::Transport::Ssh,
                "[link] transport is not \"ssh\" in {}; there is no master to open",
                config.display()
            );
            let ctl = beamflow_agent::link::ssh::login(&cfg.link).map_err(anyhow::Error::msg)?;
            sayln!(
                "SSH master to {} is open at {}; beamflow-agent run uses it until it ends",
                cfg.link.host,
                ctl.display()
            );
        }
        Cmd::Status { config, json } => {
            let cfg = Config::load(&config)?;
            let journal = Journal::open_read_only(&cfg.agent.state_dir)?;
            let stacks = journal.stacks()?;
            if json {
                sayln!("{}", serde_json::to_string_pretty(&stacks)?);
            } else {
                match beamflow_agent::instance::running(&cfg.agent.state_dir) {
                    Some(pid) => sayln!("daemon: running (pid {pid})"),
                    None => sayln!(
                        "daemon: not running; start it with `systemctl start beamflow-agent` or `beamflow-agent run --config {}`",
                        config.display()
                    ),
                }
                logs::out(&status::table(&stacks));
            }
        }
        Cmd::Demo {
            dir,
            sections,
            side,
            settle,
        } => {
            logs::init(LogFormat::Plain, "warn");
            let opts = demo::DemoOptions {
                dir,
                sections,
                side,
                settle,
                ..Default::default()
            };
            let report = runtime()?.block_on(demo::run(opts))?;
            logs::out(&demo::render(&report, settle));
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "beamflow-agent", &mut std::io::stdout());
        }
        Cmd::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the manual page")?;
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { file, print },
        } => {
            let cfg = Config::load(&file)?;
            const USED: &[&str] = beamflow_config::reference::AGENT_SECTIONS;
            if print {
                logs::out(&cfg.to_toml_of(USED));
            }
            logs::out(&(cfg.verdict(&file, "beamflow-agent", USED) + "\n"));
        }
        Cmd::Config {
            cmd: ConfigCmd::Reference,
        } => logs::out(&beamflow_config::reference::reference()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows a push's progress: a bar (files, bytes, rate, ETA) on a terminal, plain lines (the
/// first once the stack is hashed, then every five seconds) otherwise. Runs until aborted.
async fn show_progress(p: std::sync::Arc<beamflow_agent::link::transfer::Progress>) {
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering::Relaxed;
    let tty = std::io::stderr().is_terminal();
    let start = std::time::Instant::now();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut last_line: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(if tty { 100 } else { 250 })).await;
        let (total, files) = (p.total_bytes.load(Relaxed), p.total_files.load(Relaxed));
        if files == 0 {
            continue; // still scanning and hashing
        }
        let (done, done_files) = (p.bytes.load(Relaxed), p.files.load(Relaxed));
        if tty {
            let b = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(total);
                let style = indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                b.set_style(style);
                b
            });
            b.set_position(done.min(total));
            b.set_message(format!("{done_files}/{files} files"));
        } else if last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            last_line = Some(std::time::Instant::now());
            let rate = done as f64 / start.elapsed().as_secs_f64().max(0.001) / 1e6;
            complain!(
                "push: {done_files}/{files} files, {} of {}, {rate:.1} MB/s",
                status::human_bytes(done),
                status::human_bytes(total)
            );
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
