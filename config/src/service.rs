//! `[service]`: the collector's long-running service, where it listens and what it tells others.

use crate::locate::invalid;
use crate::{Config, ConfigError, Dur};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[service]`: the collector's daemon.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSection {
    /// Where the API listens, `host:port`: an interface address, a host name, or
    /// `0.0.0.0` / `[::]` for every interface; port 0 picks a free port (written to
    /// `server-info`). Loopback (the default) serves this host only; on a site, compute nodes
    /// and the other login nodes must reach it, so listen on an address they see.
    pub listen: String,
    /// The host name or address `server-info` tells clients to use. Empty: the listen
    /// address when it names one, the host's fully qualified name when it listens on every
    /// interface.
    pub advertise: String,
    /// Each stack version gets a work folder under this one.
    pub work_root: PathBuf,
    /// How often the service asks the batch schedulers about its launchers and judges their
    /// heartbeats. Jobs do not wait for it: the engine reacts to every report and submission.
    pub poll_interval: Dur,
    /// A launcher silent for this long is declared lost and its jobs time out.
    pub heartbeat_timeout: Dur,
    /// Runs a job gets before a run error holds it as FAILED.
    pub max_attempts: u32,
    /// Times a job may run out of its launcher's wall time before it is held as FAILED with
    /// its measured run times: a job that always outlives its allocation would otherwise be
    /// retried without end.
    pub max_timeouts: u32,
    /// A new connection must finish its TLS handshake and its first request's headers
    /// within this, and every request its headers: anyone who reaches the port can connect
    /// without a token, so nothing they hold is unbounded.
    pub header_timeout: Dur,
    /// A connection with no request in flight is closed after this (clients open a new one).
    pub idle_timeout: Dur,
    /// Connections open at once, in all (lowered to what `ulimit -n` allows). At the limit
    /// the oldest idle connection makes room; only when all are busy is a newcomer refused.
    pub max_connections: u32,
    /// Connections open at once from one address (a login node's `serve` sessions and a
    /// compute node's launcher come from few addresses each).
    pub max_per_peer: u32,
    /// At shutdown, how long requests in flight may still finish before every connection
    /// is closed (systemd's `TimeoutStopSec` must be longer).
    pub shutdown_grace: Dur,
}

impl Default for ServiceSection {
    fn default() -> Self {
        ServiceSection {
            listen: "127.0.0.1:0".into(),
            advertise: String::new(),
            work_root: PathBuf::from("work"),
            poll_interval: Dur::secs(2),
            heartbeat_timeout: Dur::secs(60),
            max_attempts: 3,
            max_timeouts: 3,
            header_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
            max_connections: 512,
            max_per_peer: 128,
            shutdown_grace: Dur::secs(5),
        }
    }
}

/// Why a `host:port` was refused.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// No `:port` at the end.
    #[error("\"{0}\" has no port; {HOST_PORT_HINT}")]
    NoPort(String),
    /// The host part is empty or an unbracketed IPv6 address.
    #[error("\"{0}\" is not host:port; {HOST_PORT_HINT}")]
    NotHostPort(String),
    /// The port is not a number from 0 to 65535.
    #[error("\"{port}\" in \"{whole}\" is not a port number; {HOST_PORT_HINT}")]
    Port {
        /// The port as written.
        port: String,
        /// The whole address as written.
        whole: String,
    },
}

const HOST_PORT_HINT: &str = "write host:port, e.g. \"0.0.0.0:0\", \"[::]:7000\" or \"login1.site.org:0\" (port 0: any free port)";

/// Splits `host:port` (`[v6]:port` for IPv6) as `[service] listen` is written.
pub fn split_host_port(s: &str) -> Result<(String, u16), AddressError> {
    let no_port = || AddressError::NoPort(s.to_string());
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once("]:").ok_or_else(no_port)?
    } else {
        s.rsplit_once(':').ok_or_else(no_port)?
    };
    if host.is_empty() || (!s.starts_with('[') && host.contains(':')) {
        return Err(AddressError::NotHostPort(s.to_string()));
    }
    let port: u16 = port.parse().map_err(|_| AddressError::Port {
        port: port.to_string(),
        whole: s.to_string(),
    })?;
    Ok((host.to_string(), port))
}

/// Checks the service's address and limits; an error names the key in full and its line.
pub(crate) fn validate(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    if let Err(e) = split_host_port(&cfg.service.listen) {
        return Err(invalid(
            path,
            text,
            "listen",
            "service.listen",
            e.to_string(),
        ));
    }
    if cfg.service.advertise.contains(['/', ' ', '@']) {
        return Err(invalid(path, text, "advertise", "service.advertise", format!(
                "\"{}\" is not a host name or address; write e.g. \"login1.site.org\" (no scheme, no port)",
                cfg.service.advertise
            )));
    }
    for (key, value) in [
        ("max_attempts", cfg.service.max_attempts),
        ("max_timeouts", cfg.service.max_timeouts),
    ] {
        if value == 0 {
            return Err(invalid(
                path,
                text,
                key,
                &format!("service.{key}"),
                "must be at least 1",
            ));
        }
    }
    let limits = [
        ("max_connections", cfg.service.max_connections == 0, "must be at least 1"),
        ("max_per_peer", cfg.service.max_per_peer == 0, "must be at least 1"),
        (
            "header_timeout",
            cfg.service.header_timeout.0.is_zero(),
            "must be longer than 0 (e.g. \"10s\"): without it a silent client holds its connection for ever",
        ),
        (
            "idle_timeout",
            cfg.service.idle_timeout.0.is_zero(),
            "must be longer than 0 (e.g. \"60s\")",
        ),
    ];
    for (key, bad, message) in limits {
        if bad {
            return Err(invalid(path, text, key, &format!("service.{key}"), message));
        }
    }
    Ok(())
}
