//! `beamflow-collector launcher`: runs inside a batch allocation, until its wall time, idle
//! time or a signal ends it.

use anyhow::Context;
use beamflow_config::Config;
use beamflow_program::Exit;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// `launcher`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Queue whose settings apply.
    #[arg(long)]
    pub queue: String,
    /// The launcher id the service gave this allocation.
    #[arg(long)]
    pub id: u64,
}

/// Packs ready jobs onto the allocation's nodes; SIGTERM, SIGINT or SIGHUP ends it cleanly.
pub fn main(a: Args) -> anyhow::Result<Exit> {
    let cfg = Config::load(&a.config)?;
    beamflow_program::logs::init(cfg.agent.log_format, "info");
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    crate::launcher::run(&cfg, &a.queue, a.id, stop)?;
    Ok(Exit::Done)
}
