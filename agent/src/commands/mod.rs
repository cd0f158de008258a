//! The agent's programs, one module each, with its arguments and its `main`: [`run`] (the
//! daemon), [`push`] (one stack, once), [`login`] (the SSH master a person opens),
//! [`setup`] (the collector side over the master), [`doctor`] (both ends checked), [`demo`]
//! (the whole path on one machine) and [`status`] (the journal in a table).

pub mod demo;
pub mod doctor;
pub mod login;
pub mod push;
pub mod run;
pub mod setup;
pub mod status;

/// Every subcommand and its arguments (`main.rs` parses them and calls each one's `main`).
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// The daemon: watch, detect finished stacks, transfer, submit.
    Run(run::Args),
    /// Send one folder now and wait until its DAG is accepted.
    Push(push::Args),
    /// Open the SSH master in this terminal (password, one-time password …) and leave it
    /// running for the daemon (`[link] master = "adopt"`).
    Login(login::Args),
    /// Put the collector side in place over the SSH master: the remote collector (copied
    /// from this host with your consent when missing or different), a starter config, the
    /// service running. A second run changes nothing.
    Setup(setup::Args),
    /// Check this host and the far side, one line per check, `ok` or `FAIL` with the fix.
    Doctor(doctor::Args),
    /// Show every stack the agent knows, with state, files, bytes and reason.
    Status(status::Args),
    /// Run the whole path locally on a synthetic stack (no SSH, no batch system).
    Demo(demo::Args),
    /// Print shell completions (`source <(beamflow-agent completions bash)`).
    Completions(beamflow_program::manual::CompletionsArgs),
    /// Print the manual page (roff): `beamflow-agent man > /usr/local/share/man/man1/beamflow-agent.1`.
    Man,
    /// Check a config file, or print the reference of every key.
    Config(beamflow_program::config::ConfigArgs),
}
