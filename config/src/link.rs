//! `[link]`: how the agent reaches the collector (a local child, or one SSH master).

use crate::locate::{find_key_line, invalid};
use crate::{ByteSize, Config, ConfigError, Dur};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[link]`: how the agent reaches `beamflow-collector serve`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSection {
    /// `local`: the collector runs as a child process on this host.
    pub transport: Transport,
    /// The command that starts the far end. Empty means `beamflow-collector serve --stdio
    /// --config <this file>`, with the collector found beside the agent's binary or on PATH.
    pub command: Vec<String>,
    /// Size of data frames on the wire (memory per transfer stays near this).
    pub chunk_size: ByteSize,
    /// Bandwidth cap in bytes per second (like rsync's --bwlimit), for links shared with
    /// the beamline's other traffic; 0 means no cap.
    pub max_rate: ByteSize,
    /// Far ends open at once (files are spread across them). One stack alone uses as many as
    /// help it; stacks in flight together share them. Over SSH they are channels of the one
    /// master; sshd allows 10 sessions per connection by default (MaxSessions).
    pub channels: u32,
    /// Stacks in flight at once over the link (the daemon; oldest finished first).
    pub max_stacks: u32,
    /// The daemon keeps far ends open between stacks (no remote start, no handshake for the
    /// next one) and closes them after this long unused.
    pub idle: Dur,
    /// zstd-compress data chunks; a chunk goes compressed only when that saves at least 10%,
    /// and a file whose chunks keep not compressing is sent raw from then on.
    pub compress: bool,
    /// How long the far end may take to answer the handshake.
    pub handshake_timeout: Dur,
    /// `ssh` transport: the host, an ssh_config alias or `user@host`.
    pub host: String,
    /// `ssh` transport: `own` (the agent opens its master) or `adopt` (use the master a person
    /// opened with `beamflow-agent login`, for one-time-password sites).
    pub master: MasterMode,
    /// `ssh` transport: the master's control socket. Required for `adopt`; for `own` a socket
    /// in a private folder under `/tmp` is used when empty. At most 108 bytes.
    pub control_path: PathBuf,
    /// `ssh` transport: an ssh_config file to use instead of `~/.ssh/config` (`ssh -F`).
    pub ssh_config: Option<PathBuf>,
    /// `ssh` transport: ServerAliveInterval of the master; three missed answers end it.
    pub keepalive: Dur,
    /// `ssh` transport, `own` master: how long it outlives its last use (a crashed agent
    /// leaves nothing behind for longer).
    pub persist: Dur,
}

/// Who opens the SSH master connection.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MasterMode {
    /// The agent opens (and reopens) it; needs key or agent authentication.
    #[default]
    Own,
    /// A person opens it with `beamflow-agent login`; the agent waits when it is gone.
    Adopt,
}

impl Default for LinkSection {
    fn default() -> Self {
        LinkSection {
            transport: Transport::Local,
            command: Vec::new(),
            chunk_size: ByteSize(1 << 20),
            max_rate: ByteSize(0),
            channels: 4,
            compress: false,
            handshake_timeout: Dur::secs(30),
            host: String::new(),
            master: MasterMode::Own,
            control_path: PathBuf::new(),
            ssh_config: None,
            keepalive: Dur::secs(5),
            persist: Dur::secs(600),
            max_stacks: 4,
            idle: Dur::secs(120),
        }
    }
}

/// Which transport carries the protocol.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A child process on this host speaking over its pipes.
    #[default]
    Local,
    /// `beamflow-collector serve --stdio` on another host, over one shared SSH master.
    Ssh,
}

/// How the collector makes a round of received files durable.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// A round of 8 or more files: one filesystem sync for their bytes, the renames, one more
    /// for the renames. Fewer, larger writes; it also flushes whatever else is pending on that
    /// filesystem, which a busy shared one may not want.
    #[default]
    Batch,
    /// One fsync per file and per folder, always.
    File,
}

/// Checks the link; an error names the key in full and its line.
pub(crate) fn validate(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    if cfg.link.channels == 0 || cfg.link.channels > 10 {
        return Err(invalid(
            path,
            text,
            "channels",
            "link.channels",
            format!(
                "{} channels: use 1 to 10 (sshd's MaxSessions is 10 by default)",
                cfg.link.channels
            ),
        ));
    }
    if cfg.link.max_stacks == 0 || cfg.link.max_stacks > 64 {
        return Err(invalid(
            path,
            text,
            "max_stacks",
            "link.max_stacks",
            format!(
                "{} stacks in flight: use 1 to 64 (they share `channels` far ends)",
                cfg.link.max_stacks
            ),
        ));
    }
    if cfg.link.transport == Transport::Ssh {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: find_key_line(text, key)
                .or_else(|| find_key_line(text, "transport"))
                .unwrap_or(1),
            key: format!("key `link.{key}`: "),
            message,
        };
        if cfg.link.host.trim().is_empty() {
            return Err(bad(
                "host",
                "transport \"ssh\" needs a host (an ssh_config alias or user@host)".into(),
            ));
        }
        if cfg.link.master == MasterMode::Adopt && cfg.link.control_path.as_os_str().is_empty() {
            return Err(bad(
                "control_path",
                "master = \"adopt\" needs the control socket that `beamflow-agent login` opens"
                    .into(),
            ));
        }
        if cfg.link.control_path.as_os_str().len() > 100 {
            return Err(bad(
                "control_path",
                format!(
                    "{} is too long for a unix socket (at most 100 bytes here)",
                    cfg.link.control_path.display()
                ),
            ));
        }
    }
    Ok(())
}
