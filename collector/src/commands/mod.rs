//! The collector's programs, one module each with its arguments and its `main`: [`serve`]
//! (the far end of a link), [`service`] (the daemon), [`launcher`] (inside an allocation),
//! [`qa`] (the first step on a compute node), [`preview`] (the picture after alignment), [`operator`] (`ls`, `status`, `history`,
//! `retry`, `kill`), [`beamline`] (`outcome` and `results`, asked over the link), [`doctor`]
//! (and its `probe`) and [`version`].

pub mod backfill;
pub mod beamline;
pub mod doctor;
pub mod launcher;
pub mod operator;
pub mod preview;
pub mod qa;
pub mod serve;
pub mod service;
pub mod version;

/// Every subcommand and its arguments (`main.rs` parses them and calls each one's `main`).
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// The far end of a link: speak the protocol on stdin/stdout (started by the agent).
    Serve(serve::Args),
    /// The long-running daemon: owns the database, serves the API.
    Service(service::Args),
    /// List jobs.
    Ls(operator::LsArgs),
    /// Stacks with their jobs per state, launchers, and what needs a person.
    Status(operator::StatusArgs),
    /// Every state change of one job, with times and reasons.
    History(operator::HistoryArgs),
    /// Put a FAILED, USER_KILLED, RUN_ERROR or RUN_TIMEOUT job back in line.
    Retry(operator::JobArgs),
    /// Stop a job for good (a running one is ended by its launcher).
    Kill(operator::JobArgs),
    /// Run jobs inside a batch allocation (started by the service's batch script).
    Launcher(launcher::Args),
    /// Quality check of a stack: readable, same size and depth, no blank or saturated frame.
    Qa(qa::Args),
    /// Draw a stack version's preview: a reslice before and after alignment, and aligned sections.
    Preview(preview::Args),
    /// Print shell completions (`source <(beamflow-collector completions bash)`).
    Completions(beamflow_program::manual::CompletionsArgs),
    /// Print the manual page (roff): `beamflow-collector man > /usr/local/share/man/man1/beamflow-collector.1`.
    Man,
    /// Check a config file, or print the reference of every key.
    Config(beamflow_program::config::ConfigArgs),
    /// This build: its version, the protocol it speaks and the BLAKE3 of its executable.
    Version(version::Args),
    /// Check this host: folders, free space, the service, the batch commands.
    Doctor(doctor::Args),
    /// The free nodes each batch queue reports now, for how long, and the launcher that fits.
    Backfill(backfill::Args),
    /// Where the DAGs of stack versions are, by id (the agent asks this over its link).
    Outcome(beamline::OutcomeArgs),
    /// The files a stack version's workflow returns, listed or streamed (for the agent).
    Results(beamline::ResultsArgs),
    /// End the open jobs of a stack still being written that its agent gave up on (its
    /// `max_wait` passed): the request as JSON on stdin, so that no name is an argument.
    Abandon(beamline::AbandonArgs),
    /// Run by `doctor --probe` on a compute node: does the service answer from here?
    #[command(hide = true)]
    Probe(doctor::ProbeArgs),
}
