//! `beamflow-agent`: parses arguments and calls the library, one function per subcommand.

use beamflow_agent::commands::{demo, doctor, login, push, run, setup, status, Cmd};
use beamflow_config::reference::AGENT_SECTIONS;
use beamflow_program::{config, manual, EXIT_CODES};
use clap::{CommandFactory, Parser};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "beamflow-agent",
    version = beamflow_protocol::VERSION_AND_COMMIT,
    about = "Beamline side of beamflow: watch image folders, send finished stacks, register their DAG",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Run(a) => run::main(a),
        Cmd::Push(a) => push::main(a),
        Cmd::Login(a) => login::main(a),
        Cmd::Setup(a) => setup::main(a),
        Cmd::Doctor(a) => doctor::main(a),
        Cmd::Status(a) => status::main(a),
        Cmd::Demo(a) => demo::main(a),
        Cmd::Completions(a) => manual::completions(Cli::command(), a.shell),
        Cmd::Man => manual::man(Cli::command()),
        Cmd::Config(a) => config::main(a, "beamflow-agent", AGENT_SECTIONS),
    };
    beamflow_program::finish("beamflow-agent", result)
}
