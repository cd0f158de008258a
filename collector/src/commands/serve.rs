//! `beamflow-collector serve --stdio`: the far end of an agent's link.

use anyhow::Context;
use beamflow_config::Config;
use beamflow_program::{Exit, Verdict};
use std::os::fd::AsFd;
use std::path::PathBuf;

/// `serve`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use stdin/stdout (the only mode).
    #[arg(long)]
    pub stdio: bool,
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
}

/// Speaks the protocol on stdin and stdout until the agent ends the session.
pub fn main(a: Args) -> anyhow::Result<Exit> {
    if !a.stdio {
        return Err(Verdict::new(
            Exit::Usage,
            "serve needs --stdio (the protocol runs over stdin/stdout)",
        )
        .into());
    }
    let cfg = Config::load(&a.config)?;
    beamflow_program::logs::init(cfg.agent.log_format, "info");
    // stdout as a plain file: frames are binary, and Stdout's line buffering would split
    // them at every newline byte
    let out = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .context("cannot use stdout")?;
    crate::receive::serve(&cfg, std::io::stdin().lock(), out).context("serve session failed")?;
    Ok(Exit::Done)
}
