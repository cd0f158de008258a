//! `config check` and `config reference`, the same in both programs but for the sections
//! each reads.

use crate::{logs, Exit};
use beamflow_config::Config;
use std::path::PathBuf;

/// The one argument most subcommands take: the config file (`--config`, or `BEAMFLOW_CONFIG`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigFile {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
}

impl ConfigFile {
    /// Loads it; an error names the key and line (exit 2).
    pub fn load(&self) -> Result<Config, beamflow_config::ConfigError> {
        Config::load(&self.config)
    }
}

/// `config`'s subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCmd {
    /// Load FILE and report errors with key and line, or one line saying it is good.
    Check {
        /// The config file.
        file: PathBuf,
        /// Also print the effective settings of the sections this program uses.
        #[arg(long)]
        print: bool,
    },
    /// Print the reference of every key both programs read, as Markdown (generated from the
    /// schema; `docs/configuration.md` is this output).
    Reference,
}

/// `config`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: ConfigCmd,
}

/// Runs `config` for `program`, which reads the sections `used`.
pub fn main(args: ConfigArgs, program: &str, used: &[&str]) -> anyhow::Result<Exit> {
    match args.cmd {
        ConfigCmd::Check { file, print } => {
            let cfg = Config::load(&file)?;
            if print {
                logs::out(&cfg.to_toml_of(used));
            }
            logs::out(&(cfg.verdict(&file, program, used) + "\n"));
        }
        ConfigCmd::Reference => logs::out(&beamflow_config::reference::reference()),
    }
    Ok(Exit::Done)
}
