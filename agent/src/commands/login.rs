//! `beamflow-agent login`: a person opens the SSH master in a terminal (password, one-time
//! code …) and leaves it running for the daemon (`[link] master = "adopt"`).

use anyhow::Result;
use beamflow_config::{Config, Transport};
use beamflow_program::{sayln, Exit};

/// `beamflow-agent login`'s arguments: the config file.
pub type Args = beamflow_program::config::ConfigFile;

/// Opens the master and says where it is.
pub fn main(args: Args) -> Result<Exit> {
    let cfg = Config::load(&args.config)?;
    if cfg.link.transport != Transport::Ssh {
        return Err(beamflow_program::Verdict::new(
            Exit::Usage,
            format!(
                "[link] transport is not \"ssh\" in {}; there is no master to open",
                args.config.display()
            ),
        )
        .into());
    }
    let ctl = crate::link::ssh::login(&cfg.link).map_err(|e| {
        beamflow_program::Verdict::new(
            Exit::Unreachable,
            format!(
                "cannot open the SSH master: {}",
                beamflow_program::chain(&e)
            ),
        )
    })?;
    sayln!(
        "SSH master to {} is open at {}; beamflow-agent run uses it until it ends",
        cfg.link.host,
        ctl.display()
    );
    Ok(Exit::Done)
}
