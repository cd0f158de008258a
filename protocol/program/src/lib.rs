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

/// An error and its causes in one line, `what: why: deeper why`, for people (a job's reason,
/// a report): typed errors keep their causes as sources rather than in their own text.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// A multi-threaded async runtime for a command that needs one.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot write the copy")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_reads_as_one_line_from_the_top_down() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(super::chain(&e), "cannot write the copy: disk full");
    }
}
