//! What both beamflow programs share as programs, written once: output and logs that cannot
//! kill them ([`logs`], [`sayln`], [`complain`]), the signals that stop them ([`shutdown`]),
//! their exit codes ([`exit`]), shell completions and manual pages from their argument
//! definitions ([`manual`]), and work spread over all cores ([`cores`]).

pub mod config;
pub mod cores;
pub mod exit;
pub mod logs;
pub mod manual;

pub use exit::{finish, Exit, Verdict, EXIT_CODES};

/// Prints a line to stdout; a reader that went away does not kill the program.
#[macro_export]
macro_rules! sayln {
    ($($t:tt)*) => { $crate::logs::out(&format!("{}\n", format_args!($($t)*))) };
}

/// Prints a line to stderr, ignoring a lost stderr.
#[macro_export]
macro_rules! complain {
    ($($t:tt)*) => { $crate::logs::err(&format!($($t)*)) };
}

/// Resolves on SIGTERM (systemd stopping the unit) or Ctrl-C.
pub async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        // without a SIGTERM handler, Ctrl-C alone still stops it
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A multi-threaded async runtime for a command that needs one.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
