//! `beamflow-collector`: parses arguments and calls the library.

use anyhow::{Context, Result};
use beamflow_collector::science::{names, qa, to8bit};
use beamflow_collector::{api::Client, cli, launcher, receive, service};
use beamflow_config::{logs, Config};
use clap::{Parser, Subcommand};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    name = "beamflow-collector",
    version = beamflow_protocol::VERSION_AND_COMMIT,
    about = "HPC side of beamflow: receive stacks, own the job DAG database"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The far end of a link: speak the protocol on stdin/stdout (started by the agent).
    Serve {
        /// Use stdin/stdout (the only mode).
        #[arg(long)]
        stdio: bool,
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
    },
    /// The long-running daemon: owns the database, serves the API.
    Service {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
    },
    /// List jobs.
    Ls {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Only jobs of this stack (path under the data root).
        #[arg(long)]
        stack: Option<String>,
        /// Only jobs in this state (e.g. READY).
        #[arg(long)]
        state: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stacks with their jobs per state, launchers, and what needs a person.
    Status {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Every state change of one job, with times and reasons.
    History {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Job id (from `ls`).
        job: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Put a FAILED, USER_KILLED, RUN_ERROR or RUN_TIMEOUT job back in line.
    Retry {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Job id.
        job: u64,
    },
    /// Stop a job for good (a running one is ended by its launcher).
    Kill {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Job id.
        job: u64,
    },
    /// Run jobs inside a batch allocation (started by the service's batch script).
    Launcher {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Queue whose settings apply.
        #[arg(long)]
        queue: String,
        /// The launcher id the service gave this allocation.
        #[arg(long)]
        id: u64,
    },
    /// Quality check of a stack: readable, same size and depth, no blank or saturated frame.
    Qa {
        /// Folder of images.
        dir: PathBuf,
        /// Where to write the report.
        #[arg(long, default_value = "qa.json")]
        out: PathBuf,
        /// The work folder's `names.tsv`: report sections by their received names rather
        /// than the names AlignTK reads them by.
        #[arg(long)]
        names: Option<PathBuf>,
    },
    /// Print shell completions (`source <(beamflow-collector completions bash)`; zsh, fish, elvish and
    /// PowerShell too).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `beamflow-collector man > /usr/local/share/man/man1/beamflow-collector.1`.
    Man,
    /// Check a config file: one verdict line, or errors with the key and line (`--print`: the
    /// effective settings too).
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// This build: its version, the protocol it speaks and the BLAKE3 of its own executable
    /// (what `beamflow-agent setup` compares with the binary it would install).
    Version {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check this host: folders, free space, the service, the batch commands. One line per
    /// check, `ok` or `FAIL` with the fix; exit 1 when any failed.
    Doctor {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Machine-readable output (what the agent's doctor reads over its link).
        #[arg(long)]
        json: bool,
        /// Also run a tiny probe job in this queue (the first queue when none is named):
        /// does a compute node reach the service? It spends a (short) allocation.
        #[arg(long, num_args = 0..=1, default_missing_value = "")]
        probe: Option<String>,
        /// How long to wait for the probe job to run and call in.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        probe_wait: std::time::Duration,
    },
    /// Where the DAGs of stack versions are, by id: `running 2/5`, `done`, `FAILED: …`. The
    /// agent runs this over its link to learn how its stacks ended.
    Outcome {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Machine-readable output (one JSON list).
        #[arg(long)]
        json: bool,
        /// The asking beamline (its agent passes its name: the status page's activity light).
        #[arg(long)]
        beamline: Option<String>,
        /// Stack version ids (the REMOTE column of the agent's status).
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// The files a stack version's workflow returns (`return` globs): listed with BLAKE3, or
    /// one streamed to stdout. The agent runs this over its link to fetch results home.
    Results {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// Machine-readable listing (one JSON list).
        #[arg(long)]
        json: bool,
        /// Stream this result file (a path the listing names) to stdout.
        #[arg(long)]
        cat: Option<String>,
        /// The stack version id.
        id: u64,
    },
    /// Run by `doctor --probe` on a compute node: calls the service at its advertised
    /// address and says whether that worked.
    #[command(hide = true)]
    Probe {
        #[arg(long, env = "BEAMFLOW_CONFIG")]
        config: PathBuf,
        /// The doctor's word for this probe.
        #[arg(long)]
        nonce: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Load FILE and report errors with key and line, or one line saying it is good.
    Check {
        file: PathBuf,
        /// Also print the effective settings of the sections the collector uses.
        #[arg(long)]
        print: bool,
    },
    /// Print the reference of every key both programs read, as Markdown (generated from the
    /// schema; `docs/configuration.md` is this output).
    Reference,
}

fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn client(config: &Path) -> Result<Client> {
    let cfg = load(config)?;
    Ok(Client::from_state_dir(&cfg.collector.state_dir)?)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            complain!("beamflow-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve { stdio, config } => {
            anyhow::ensure!(
                stdio,
                "serve needs --stdio (the protocol runs over stdin/stdout)"
            );
            let cfg = load(&config)?;
            logs::init(cfg.agent.log_format, "info");
            // stdout as a plain file: frames are binary, and Stdout's line buffering would
            // split them at every newline byte
            let out = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map(std::fs::File::from)
                .context("cannot use stdout")?;
            receive::serve(&cfg, std::io::stdin().lock(), out).context("serve session failed")?;
        }
        Cmd::Service { config } => {
            let cfg = load(&config)?;
            logs::init(cfg.agent.log_format, "info");
            let rt = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
            rt.block_on(service::run(cfg, shutdown_signal()))?;
        }
        Cmd::Ls {
            config,
            stack,
            state,
            json,
        } => {
            let cfg = load(&config)?;
            let client = Client::from_state_dir(&cfg.collector.state_dir)?;
            let jobs = cli::ls(&client, stack.as_deref(), state.as_deref())?;
            if json {
                sayln!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                logs::out(&cli::jobs_table(&jobs));
            }
        }
        Cmd::Status { config, json } => {
            let st = client(&config)?.status()?;
            if json {
                sayln!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                logs::out(&cli::status_text(&st));
            }
        }
        Cmd::History { config, job, json } => {
            let ev = client(&config)?.history(job)?;
            if json {
                sayln!("{}", serde_json::to_string_pretty(&ev)?);
            } else {
                logs::out(&cli::history_text(&ev));
            }
        }
        Cmd::Retry { config, job } => {
            let j = client(&config)?.retry(job)?;
            sayln!("job {} ({} of {}) is {}", j.id, j.name, j.stack, j.state);
        }
        Cmd::Kill { config, job } => {
            let j = client(&config)?.kill(job)?;
            sayln!("job {} ({} of {}) is {}", j.id, j.name, j.stack, j.state);
        }
        Cmd::Launcher { config, queue, id } => {
            let cfg = load(&config)?;
            logs::init(cfg.agent.log_format, "info");
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGHUP,
            ] {
                signal_hook::flag::register(sig, stop.clone())
                    .context("cannot install signal handlers")?;
            }
            launcher::run(&cfg, &queue, id, stop)?;
        }
        Cmd::Qa { dir, out, names } => {
            let (names, conversion) = match names {
                Some(p) => {
                    let table = names::read_names(&p)
                        .with_context(|| format!("cannot read the names table {}", p.display()))?;
                    // preparation's record of conversions sits beside the names table
                    let record = p.with_file_name(to8bit::CONVERSION_FILE);
                    let conversion = std::fs::read_to_string(&record)
                        .ok()
                        .and_then(|t| serde_json::from_str::<to8bit::Conversion>(&t).ok());
                    (table, conversion)
                }
                None => (Vec::new(), None),
            };
            let report =
                qa::check_dir(&dir, &names, conversion.as_ref()).map_err(anyhow::Error::msg)?;
            std::fs::write(&out, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if !report.bad.is_empty() {
                for (f, why) in &report.bad {
                    complain!("{f}: {why}");
                }
                anyhow::bail!(
                    "{} of {} sections failed the quality check (details in {})",
                    report.bad.len(),
                    report.bad.len() + report.sections.len(),
                    out.display()
                );
            }
            sayln!(
                "{} sections passed the quality check ({})",
                report.sections.len(),
                out.display()
            );
        }
        Cmd::Version { json } => {
            let me = std::env::current_exe().context("cannot find this program's file")?;
            let hash = blake3_of(&me)?;
            if json {
                sayln!(
                    "{}",
                    serde_json::json!({
                        "program": "beamflow-collector",
                        "version": env!("CARGO_PKG_VERSION"),
                        "commit": beamflow_protocol::COMMIT,
                        "protocol": beamflow_protocol::VERSION,
                        "path": me.display().to_string(),
                        "blake3": hash,
                    })
                );
            } else {
                sayln!(
                    "beamflow-collector {} (protocol {}) at {}, blake3 {hash}",
                    beamflow_protocol::VERSION_AND_COMMIT,
                    beamflow_protocol::VERSION,
                    me.display()
                );
            }
        }
        Cmd::Outcome {
            config,
            json,
            beamline,
            ids,
        } => {
            let cfg = load(&config)?;
            let outcomes = Client::from_state_dir(&cfg.collector.state_dir)?
                .outcomes(&ids, beamline.as_deref())?;
            if json {
                sayln!("{}", serde_json::to_string(&outcomes)?);
            } else {
                for o in &outcomes {
                    sayln!("{}  {}", o.id, o.line());
                }
            }
        }
        Cmd::Results {
            config,
            json,
            cat,
            id,
        } => {
            let cfg = load(&config)?;
            match cat {
                Some(path) => {
                    let stdout = std::io::stdout();
                    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
                    beamflow_collector::results::cat(&cfg, id, &path, &mut out)?;
                }
                None => {
                    let files = beamflow_collector::results::list(&cfg, id)?;
                    if json {
                        sayln!("{}", serde_json::to_string(&files)?);
                    } else {
                        for f in &files {
                            sayln!("{}  {}  {}", f.blake3, f.size, f.path);
                        }
                    }
                }
            }
        }
        Cmd::Probe { config, nonce } => {
            let cfg = load(&config)?;
            let client = Client::from_state_dir(&cfg.collector.state_dir)?;
            client.probe(&nonce)?;
            sayln!(
                "probe: {} reached the service at {}",
                beamflow_collector::api::this_host(),
                client.info().url
            );
        }
        Cmd::Doctor {
            config,
            json,
            probe,
            probe_wait,
        } => {
            let cfg = load(&config)?;
            let mut report = beamflow_collector::doctor::report(&cfg);
            if let Some(queue) = probe {
                let queue = if queue.is_empty() {
                    cfg.queues.keys().next().cloned().unwrap_or_default()
                } else {
                    queue
                };
                report
                    .checks
                    .push(beamflow_collector::doctor::probe(&cfg, &queue, probe_wait));
            }
            if json {
                sayln!("{}", serde_json::to_string(&report)?);
            } else {
                sayln!("{} on {}", report.program, report.host);
                for c in &report.checks {
                    sayln!("{}", c.line());
                }
            }
            if !report.ok() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(
                shell,
                &mut cmd,
                "beamflow-collector",
                &mut std::io::stdout(),
            );
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
            let cfg = load(&file)?;
            const USED: &[&str] = beamflow_config::reference::COLLECTOR_SECTIONS;
            if print {
                logs::out(&cfg.to_toml_of(USED));
            }
            logs::out(&(cfg.verdict(&file, "beamflow-collector", USED) + "\n"));
        }
        Cmd::Config {
            cmd: ConfigCmd::Reference,
        } => logs::out(&beamflow_config::reference::reference()),
    }
    Ok(ExitCode::SUCCESS)
}

/// BLAKE3 of a file, read in chunks.
fn blake3_of(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    h.update_reader(f)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
