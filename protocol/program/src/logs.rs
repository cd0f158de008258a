//! How both programs write logs and terminal output: never able to kill the process.
//!
//! A `serve` whose agent was killed has lost its stderr; a `status | head -1` has lost its
//! stdout. Rust's own `eprintln!`/`println!` panic when a write fails, and tracing's fmt
//! layer reports its own write errors with `eprintln!`, so a lost pipe turned into exit 101
//! mid-session. Logs here go through a writer that drops what cannot be written, and the
//! binaries print through [`out`] and [`err`], which do the same.

use beamflow_config::LogFormat;
use std::io::Write;

/// stderr that swallows write errors: a log line that cannot be written is lost, the process
/// goes on.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Installs the log subscriber: plain lines for journald by default, JSON on request, level
/// from `BEAMFLOW_LOG` (else `default`).
pub fn init(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BEAMFLOW_LOG")
        .unwrap_or_else(|_| default.into());
    let most = filter.max_level_hint();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr)
        .log_internal_errors(false)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Plain => b.try_init(),
    };
    // the bridge from the `log` crate (which the HTTP client logs through) lets every record
    // through to be filtered here, costing a launcher a sixth of its time at a thousand jobs a
    // second; records above the most verbose level asked for are now dropped where they are made
    use tracing_subscriber::filter::LevelFilter;
    log::set_max_level(match most {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
}

/// Writes to stdout; a reader that went away is not an error worth dying for.
pub fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// Writes a line to stderr, ignoring a lost stderr.
pub fn err(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
