//! The exit codes of both programs, one table, so scripts and systemd can tell a refusal that
//! needs a person from a network that is down.

use std::process::ExitCode;

/// What a program's exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Done = 0,
    /// 1: an error (the message says what to do).
    Error = 1,
    /// 2: a usage or config error: the command line or the config file must change.
    Usage = 2,
    /// 3: held: the data needs a person (a stack refused, a job FAILED, a check that failed).
    Held = 3,
    /// 4: the far side is unreachable (the collector, its service, the SSH master).
    Unreachable = 4,
}

/// The table as `--help` prints it.
pub const EXIT_CODES: &str = "Exit codes: 0 done, 1 error, 2 usage or config error, 3 held (needs a person), 4 the far side unreachable.";

/// An error that says which exit it means; other errors exit 1 (or 2 for a config error).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Verdict {
    /// The exit it means.
    pub exit: Exit,
    /// What happened and what to do.
    pub message: String,
}

impl Verdict {
    /// An error exiting with `exit`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Verdict {
            exit,
            message: message.into(),
        }
    }
}

impl Exit {
    /// The exit an error means: a [`Verdict`] anywhere in its chain says; a config error is
    /// a usage error; a collector service that is not running or not answering is the far
    /// side unreachable; anything else is 1.
    pub fn of(e: &anyhow::Error) -> Exit {
        // a verdict or config error given as context is found by anyhow's own downcast
        if let Some(v) = e.downcast_ref::<Verdict>() {
            return v.exit;
        }
        if e.downcast_ref::<beamflow_config::ConfigError>().is_some() {
            return Exit::Usage;
        }
        for cause in e.chain() {
            if let Some(v) = cause.downcast_ref::<Verdict>() {
                return v.exit;
            }
            if cause
                .downcast_ref::<beamflow_config::ConfigError>()
                .is_some()
            {
                return Exit::Usage;
            }
            use beamflow_protocol::api::ClientError;
            if let Some(ClientError::NotRunning { .. } | ClientError::NotAnswering { .. }) =
                cause.downcast_ref::<ClientError>()
            {
                return Exit::Unreachable;
            }
        }
        Exit::Error
    }
}

/// Ends a program: its result as an exit code, an error printed once as `NAME: message`.
pub fn finish(name: &str, result: anyhow::Result<Exit>) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            crate::complain!("{name}: {e:#}");
            ExitCode::from(Exit::of(&e) as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn an_error_s_exit_is_read_from_its_chain() {
        let held = anyhow::Error::new(Verdict::new(Exit::Held, "a job FAILED")).context("the demo");
        assert_eq!(Exit::of(&held), Exit::Held);
        let cfg: anyhow::Result<()> = Err(beamflow_config::ConfigError::Invalid {
            path: "c.toml".into(),
            line: 3,
            key: "key `agent.x`: ".into(),
            message: "unknown".into(),
        })
        .context("loading");
        assert_eq!(Exit::of(&cfg.unwrap_err()), Exit::Usage);
        assert_eq!(Exit::of(&anyhow::anyhow!("disk full")), Exit::Error);
        let down: anyhow::Result<()> = Err(anyhow::anyhow!("connection refused"));
        let down = down
            .context(Verdict::new(Exit::Unreachable, "the collector is down"))
            .context("push of run1 failed");
        assert_eq!(Exit::of(&down.unwrap_err()), Exit::Unreachable);
        let gone = anyhow::Error::new(beamflow_protocol::api::ClientError::NotRunning {
            path: "/var/lib/beamflow/server-info".into(),
        });
        assert_eq!(Exit::of(&gone), Exit::Unreachable);
        for (e, code) in [
            (Exit::Done, 0),
            (Exit::Error, 1),
            (Exit::Usage, 2),
            (Exit::Held, 3),
            (Exit::Unreachable, 4),
        ] {
            assert_eq!(e as u8, code);
            assert!(EXIT_CODES.contains(&format!("{code} ")));
        }
    }
}
