//! Asking the collector a question where the link's far end runs (over the SSH master, or
//! as a local child): its subcommands answer one line of JSON, so no port opens on the
//! beamline host. Outcomes and results both ask this way.

use super::far_command_for;
use beamflow_config::Config;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a question to the far side, or a result fetched from it, did not come through.
#[derive(Debug, thiserror::Error)]
pub enum FarError {
    /// The command (ssh, or the collector itself) could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The collector answered no JSON line.
    #[error("the collector did not answer ({status}): {said}")]
    Silent {
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its last line on stderr.
        said: String,
    },
    /// A result's name would leave the results folder.
    #[error("refused the result name {name:?}")]
    Name {
        /// The name as listed.
        name: String,
        /// Why.
        #[source]
        source: beamflow_protocol::PathError,
    },
    /// A local file could not be made, written or placed.
    #[error("cannot {what} {}", path.display())]
    Local {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A result arrived other than listed; it is fetched again later.
    #[error("{path}: received {got_bytes} of {bytes} bytes with BLAKE3 {got}, listed {listed} ({said}); fetched again later")]
    Mismatch {
        /// The result's name.
        path: String,
        /// Bytes received.
        got_bytes: u64,
        /// Bytes listed.
        bytes: u64,
        /// The first hex digits of what arrived.
        got: String,
        /// The first hex digits listed.
        listed: String,
        /// What the far side said on stderr.
        said: String,
    },
}

/// The far-side collector subcommand `sub`, ready to run with no input.
pub fn command(cfg: &Config, ctl: Option<&Path>, sub: &[&str]) -> Command {
    let argv = far_command_for(cfg, ctl, sub);
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]).stdin(Stdio::null());
    c
}

/// Runs `sub` on the far side and reads the first line of its output that parses as `T`.
pub fn ask<T: serde::de::DeserializeOwned>(
    cfg: &Config,
    ctl: Option<&Path>,
    sub: &[&str],
) -> Result<T, FarError> {
    ask_with(cfg, ctl, sub, None)
}

/// [`ask`], with `input` on the far side's stdin: where a question carries a stack's name,
/// it travels there, never as an argument a remote shell would read.
pub fn ask_with<T: serde::de::DeserializeOwned>(
    cfg: &Config,
    ctl: Option<&Path>,
    sub: &[&str],
    input: Option<&[u8]>,
) -> Result<T, FarError> {
    use std::io::Write;
    let mut c = command(cfg, ctl, sub);
    let program = c.get_program().to_string_lossy().into_owned();
    let spawn = |source| FarError::Spawn {
        program: program.clone(),
        source,
    };
    let out = match input {
        None => c.output().map_err(spawn)?,
        Some(bytes) => {
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(spawn)?;
            if let Some(mut stdin) = child.stdin.take() {
                // a far side that ends without reading says why on stderr, read below
                let _ = stdin.write_all(bytes);
            }
            child.wait_with_output().map_err(spawn)?
        }
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| FarError::Silent {
            status: out.status,
            said: last_line(&out.stderr),
        })
}

/// The last line a program wrote on stderr, for an error that says why.
pub fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .trim()
        .lines()
        .last()
        .unwrap_or("nothing on stderr")
        .to_string()
}
