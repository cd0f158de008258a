//! `beamflow-collector`: parses arguments and calls the library, one function per subcommand.

use beamflow_collector::commands::{
    backfill, beamline, doctor, launcher, operator, preview, qa, serve, service, version, Cmd,
};
use beamflow_config::reference::COLLECTOR_SECTIONS;
use beamflow_program::{config, manual, EXIT_CODES};
use clap::{CommandFactory, Parser};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "beamflow-collector",
    version = beamflow_protocol::VERSION_AND_COMMIT,
    about = "HPC side of beamflow: receive stacks, own the job DAG database",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Serve(a) => serve::main(a),
        Cmd::Service(a) => service::main(a),
        Cmd::Ls(a) => operator::ls_main(a),
        Cmd::Status(a) => operator::status_main(a),
        Cmd::History(a) => operator::history_main(a),
        Cmd::Retry(a) => operator::retry_main(a),
        Cmd::Kill(a) => operator::kill_main(a),
        Cmd::Launcher(a) => launcher::main(a),
        Cmd::Qa(a) => qa::main(a),
        Cmd::Preview(a) => preview::main(a),
        Cmd::Completions(a) => manual::completions(Cli::command(), a.shell),
        Cmd::Man => manual::man(Cli::command()),
        Cmd::Config(a) => config::main(a, "beamflow-collector", COLLECTOR_SECTIONS),
        Cmd::Version(a) => version::main(a),
        Cmd::Doctor(a) => doctor::main(a),
        Cmd::Backfill(a) => backfill::main(a),
        Cmd::Outcome(a) => beamline::outcome_main(a),
        Cmd::Results(a) => beamline::results_main(a),
        Cmd::Abandon(a) => beamline::abandon_main(a),
        Cmd::Probe(a) => doctor::probe_main(a),
    };
    beamflow_program::finish("beamflow-collector", result)
}
