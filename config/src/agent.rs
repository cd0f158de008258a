//! `[agent]`: the beamline daemon, and the names a beamline may go by.

use crate::locate::invalid;
use crate::{Config, ConfigError, Dur};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[agent]`: the beamline daemon's own settings.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Folder for the journal (`agent.db`).
    pub state_dir: PathBuf,
    /// Slow periodic rescan of every watch root, a safety net for missed events.
    pub rescan: Dur,
    /// First delay before retrying a failed transfer or submission.
    pub retry_initial: Dur,
    /// Longest delay between retries (backoff doubles up to this).
    pub retry_max: Dur,
    /// Log lines: `plain` (journald-friendly) or `json`.
    pub log_format: LogFormat,
    /// This beamline's name, sent in the handshake: the collector files its stacks under it,
    /// so two beamlines may use the same stack names. Empty: the host name.
    pub name: String,
    /// How often the daemon asks the collector, over its link, where the DAGs of submitted
    /// stacks are (`status` shows `running 2/5`, `done` or `FAILED: …`).
    pub outcome_every: Dur,
    /// Where the daemon writes its metrics in node-exporter's textfile format (the agent
    /// listens on no port; point the textfile collector's folder here). Empty: none.
    pub metrics_file: Option<PathBuf>,
    /// Where results a workflow returns are fetched to, `<results_dir>/<stack>/v<version>/`
    /// (verified with BLAKE3). Empty: nothing is fetched.
    pub results_dir: Option<PathBuf>,
}

impl AgentSection {
    /// The beamline name in effect: `name`, else this host's name.
    pub fn beamline(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        // a host name is a valid beamline name; anything else falls back to a fixed one
        if check_beamline(&host).is_ok() {
            host
        } else {
            "beamline".into()
        }
    }
}

/// A name that cannot name a beamline, with the rule it broke.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} cannot name a beamline: use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -")]
pub struct BeamlineNameError(pub String);

/// Whether `name` can name a beamline: it becomes a folder under the data root and the work
/// root, so one plain component.
pub fn check_beamline(name: &str) -> Result<(), BeamlineNameError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(BeamlineNameError(name.to_string()))
    }
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            name: String::new(),
            outcome_every: Dur::secs(30),
            metrics_file: None,
            results_dir: None,
            state_dir: PathBuf::from("state"),
            rescan: Dur::secs(300),
            retry_initial: Dur::secs(1),
            retry_max: Dur::secs(300),
            log_format: LogFormat::Plain,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One plain line per event, no colours: what journald wants.
    Plain,
    /// One JSON object per line for log shippers.
    Json,
}

/// Checks the beamline names: this agent's and those the collector takes; an error names the key in full and its line.
pub(crate) fn validate(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    if !cfg.agent.name.is_empty() {
        if let Err(e) = check_beamline(&cfg.agent.name) {
            return Err(invalid(path, text, "name", "agent.name", e.to_string()));
        }
    }
    for (i, b) in cfg
        .collector
        .beamlines
        .iter()
        .chain(std::iter::once(&cfg.collector.legacy_beamline))
        .enumerate()
    {
        if let Err(e) = check_beamline(b) {
            let key = if i < cfg.collector.beamlines.len() {
                "beamlines"
            } else {
                "legacy_beamline"
            };
            return Err(invalid(
                path,
                text,
                key,
                &format!("collector.{key}"),
                e.to_string(),
            ));
        }
    }
    Ok(())
}
