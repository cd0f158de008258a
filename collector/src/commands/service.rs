//! `beamflow-collector service`: the long-running daemon, until SIGTERM.

use anyhow::Context;
use beamflow_config::Config;
use beamflow_program::Exit;

/// `beamflow-collector service`'s arguments: the config file.
pub type Args = beamflow_program::config::ConfigFile;

/// Runs the service until SIGTERM or Ctrl-C.
pub fn main(a: Args) -> anyhow::Result<Exit> {
    let cfg = Config::load(&a.config)?;
    beamflow_program::logs::init(cfg.agent.log_format, "info");
    let rt = beamflow_program::runtime().context("failed to start the async runtime")?;
    rt.block_on(crate::service::run(cfg, beamflow_program::shutdown()))?;
    Ok(Exit::Done)
}
