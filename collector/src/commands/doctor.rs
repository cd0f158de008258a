//! `beamflow-collector doctor` (this host, one line per check) and the `probe` it runs on a
//! compute node.

use crate::api::Client;
use beamflow_config::Config;
use beamflow_program::{sayln, Exit};
use std::path::PathBuf;

/// `doctor`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Machine-readable output (what the agent's doctor reads over its link).
    #[arg(long)]
    pub json: bool,
    /// Also run a tiny probe job in this queue (the first queue when none is named): does a
    /// compute node reach the service? It spends a (short) allocation.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub probe: Option<String>,
    /// How long to wait for the probe job to run and call in.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub probe_wait: std::time::Duration,
}

/// Checks this host; exit 1 when any check failed.
pub fn main(a: Args) -> anyhow::Result<Exit> {
    let cfg = Config::load(&a.config)?;
    let mut report = crate::doctor::report(&cfg);
    if let Some(queue) = a.probe {
        let queue = if queue.is_empty() {
            cfg.queues.keys().next().cloned().unwrap_or_default()
        } else {
            queue
        };
        report
            .checks
            .push(crate::doctor::probe(&cfg, &queue, a.probe_wait));
    }
    if a.json {
        sayln!("{}", serde_json::to_string(&report)?);
    } else {
        sayln!("{} on {}", report.program, report.host);
        for c in &report.checks {
            sayln!("{}", c.line());
        }
    }
    Ok(if report.ok() { Exit::Done } else { Exit::Error })
}

/// `probe`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// The doctor's word for this probe.
    #[arg(long)]
    pub nonce: String,
}

/// Calls the service at its advertised address and says whether that worked.
pub fn probe_main(a: ProbeArgs) -> anyhow::Result<Exit> {
    let cfg = Config::load(&a.config)?;
    let client = Client::from_state_dir(&cfg.collector.state_dir)?;
    client.probe(&a.nonce)?;
    sayln!(
        "probe: {} reached the service at {}",
        crate::api::this_host(),
        client.info().url
    );
    Ok(Exit::Done)
}
