//! The TOML schema shared by `beamflow-agent` and `beamflow-collector`.
//!
//! One file may hold every section; each program reads the sections it needs. Defaults live
//! in one place (the `Default` impls below), unknown keys and bad values are errors that name
//! the key and the line, and relative paths resolve against the config file's own folder so
//! that a systemd unit and a person in another working directory see the same paths.

pub mod argv;
pub mod notify;
pub mod reference;
mod units;
mod workflow;

pub use units::{ByteSize, Dur};
pub use workflow::{Step, To8Bit, Workflow, NAME_ENV, NAME_PLACEHOLDERS};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The shipped `examples/local.toml`: local transport, local scheduler, everything under the
/// config's own folder. The demo writes it; tests check that it loads.
pub const EMBEDDED_LOCAL: &str = include_str!("../../examples/local.toml");

/// Why a config could not be used. Every variant says which file and, where one exists,
/// which key on which line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("failed to read config {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The TOML was malformed, had an unknown key, or a value of the wrong kind.
    #[error("{path}:{line}: {key}{message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// "key `x`: " when a key could be named, else empty.
        key: String,
        /// What is wrong and what to write instead.
        message: String,
    },
}

/// Everything a config file can say. Both programs load the whole file so that a mistake in
/// any section is reported early, whichever program reads it first.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The beamline daemon.
    #[serde(default)]
    pub agent: AgentSection,
    /// Folders the agent watches for stacks.
    #[serde(default)]
    pub watch: Vec<WatchSection>,
    /// How the agent reaches the collector.
    #[serde(default)]
    pub link: LinkSection,
    /// Where the collector stores what it receives.
    #[serde(default)]
    pub collector: CollectorSection,
    /// The collector's long-running service.
    #[serde(default)]
    pub service: ServiceSection,
    /// Named workflows; `aligntk`, `aligntk-apply` and `qa` exist even when not written here.
    #[serde(default)]
    pub workflows: BTreeMap<String, Workflow>,
    /// Batch queues the service keeps launchers in; `default` (local) exists if none is written.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueSection>,
    /// Where the agent's news goes (held stacks, failed DAGs, a link down, a silent root).
    #[serde(default)]
    pub notify: Vec<notify::NotifySection>,
    /// The file this was loaded from (set by [`Config::load`]).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

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

/// `[[watch]]`: one watch root and the rules that decide when a stack in it is finished.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchSection {
    /// The folder to watch; each folder below it holding images is a stack.
    pub path: PathBuf,
    /// Which files are images (a glob on the file name).
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// A stack needs at least this many images.
    #[serde(default = "default_min_images")]
    pub min_images: std::num::NonZeroU32,
    /// A file whose appearance says "this stack is complete".
    #[serde(default)]
    pub marker: Option<String>,
    /// The stack is complete once it holds this many images.
    #[serde(default)]
    pub expect: Option<std::num::NonZeroU32>,
    /// Where neither `expect` nor `marker` is set, the stack is complete once nothing in it
    /// changed for this long: it must be longer than the slowest gap between two sections.
    #[serde(default = "default_settle")]
    pub settle: Dur,
    /// Where `expect` or `marker` is set, only they finish a stack; this (off by default)
    /// finishes one anyway once nothing changed for this long, saying so.
    #[serde(default)]
    pub finish_after: Option<Dur>,
    /// A stack still changing after this long raises a visible warning.
    #[serde(default = "default_max_wait")]
    pub max_wait: Dur,
    /// What files arriving after submission do.
    #[serde(default)]
    pub on_change: OnChange,
    /// `inotify` (local disks) or `poll` (NFS/GPFS/Lustre written from other hosts).
    #[serde(default)]
    pub mode: WatchMode,
    /// How often `poll` mode rescans.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Dur,
    /// The collector workflow to run on finished stacks.
    #[serde(default = "default_workflow")]
    pub workflow: String,
    /// Folder under the collector's data root that this root's stacks go into.
    #[serde(default)]
    pub prefix: String,
    /// Raise a `silent` notification when nothing arrived here for this long during
    /// `active_hours` (a detector that stopped, a mount that went away).
    #[serde(default)]
    pub alarm_after: Option<Dur>,
    /// When the beamline works, `"08:00-20:00"` in local time (may pass midnight); empty:
    /// all day. Only silence inside these hours counts.
    #[serde(default)]
    pub active_hours: String,
    /// `"verified+done"`: remove a stack's images from this host once the collector verified
    /// every one and its DAG is done (and its results are home, when `results_dir` is set).
    /// Empty (the default): never.
    #[serde(default)]
    pub delete_after: String,
}

fn default_pattern() -> String {
    "*.tif".into()
}
fn default_min_images() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(2).expect("2 is not zero")
}
fn default_settle() -> Dur {
    Dur::secs(30)
}
fn default_max_wait() -> Dur {
    Dur::secs(2 * 3600)
}
fn default_poll_interval() -> Dur {
    Dur::secs(10)
}
fn default_workflow() -> String {
    "aligntk".into()
}

/// Policy for files that arrive after a stack was submitted.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    /// Send the changes and submit a new version; the older version's jobs that have not
    /// started are superseded (those running finish, their results kept).
    #[default]
    Supersede,
    /// Send the changes and submit a new version; every version runs to the end.
    Resubmit,
    /// Keep the submitted version; log the change and do nothing.
    Ignore,
}

/// How a watch root notices changes.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// Kernel events; misses writes made by other NFS/Lustre/GPFS clients.
    #[default]
    Inotify,
    /// Periodic scans; sees every writer.
    Poll,
}

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

/// `[collector]`: where received files go.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorSection {
    /// Received stacks land under this folder; nothing from the wire escapes it.
    pub data_root: PathBuf,
    /// Folder for the database (`collector.db`) and `server-info`.
    pub state_dir: PathBuf,
    /// fsync files and folders before acknowledging (off only for throwaway tests).
    pub fsync: bool,
    /// With `fsync`: `batch` (a filesystem sync per round of many files) or `file`.
    pub sync: SyncMode,
    /// Write files of 8 MiB or more with O_DIRECT, around the page cache, where the
    /// filesystem takes it.
    pub direct_io: bool,
    /// The beamlines whose agents may deliver here (`[agent] name` at each); empty: any.
    pub beamlines: Vec<String>,
    /// The beamline that stacks registered before beamlines existed are filed under.
    pub legacy_beamline: String,
    /// Remove a stack version's received copy and work folder this long after its DAG
    /// finished (never earlier); empty: keep everything.
    pub keep: Option<Dur>,
    /// With `keep`: remove FAILED (or killed) stack versions too, that long after their last
    /// change. Off: they stay for a person.
    pub remove_failed: bool,
}

impl Default for CollectorSection {
    fn default() -> Self {
        CollectorSection {
            data_root: PathBuf::from("remote"),
            state_dir: PathBuf::from("state"),
            fsync: true,
            sync: SyncMode::Batch,
            direct_io: true,
            beamlines: Vec::new(),
            legacy_beamline: "default".into(),
            keep: None,
            remove_failed: false,
        }
    }
}

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
            header_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
            max_connections: 512,
            max_per_peer: 128,
            shutdown_grace: Dur::secs(5),
        }
    }
}

/// `[queues.NAME]`: one batch queue and the policy for keeping launchers in it.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSection {
    /// `local` (a child process), `slurm`, `pbs` (Polaris, Aurora) or `cobalt` (Theta).
    pub scheduler: SchedulerKind,
    /// Whether the service may submit launchers here at all.
    pub submit: bool,
    /// Launchers queued or running here at once, at most.
    pub max_queued: u32,
    /// Smallest allocation to ask for.
    pub min_nodes: u32,
    /// Largest allocation to ask for.
    pub max_nodes: u32,
    /// Wall time of each launcher's allocation.
    pub walltime: Dur,
    /// Project (account) to charge.
    pub project: String,
    /// The scheduler's queue or partition name; empty for its default.
    pub queue: String,
    /// How a job is started inside the allocation; empty for the scheduler's usual
    /// (`srun`, `mpiexec`, `aprun`, or directly). Placeholders: `{command}`, `{nodes}`,
    /// `{ranks}`, `{ranks_per_node}`, `{threads}`, `{affinity}`, `{hostfile}`. Split into words
    /// when the config loads; `{command}` must be a word of its own and becomes the job's
    /// whole argument vector. No shell runs it.
    pub launch: String,
    /// Local scheduler only: job slots the launcher offers (0 = one per CPU).
    pub slots: u32,
    /// A launcher with nothing to do for this long exits.
    pub idle_exit: Dur,
    /// The longest the service holds a launcher's request for work when there is none (its
    /// heartbeat period; work is handed over the moment it exists).
    pub poll: Dur,
    /// Stop launching this long before the wall time; running jobs are ended then too.
    pub walltime_margin: Dur,
    /// Extra arguments for the submit command (`sbatch`, `qsub`); for `local`, which has
    /// none, the command the launcher runs under (`["ssh", "node7"]`, `["nice"]`).
    pub extra_args: Vec<String>,
}

/// The placeholders a launch template may use.
pub const LAUNCH_PLACEHOLDERS: &[&str] = &[
    "command",
    "nodes",
    "ranks",
    "ranks_per_node",
    "threads",
    "affinity",
    "hostfile",
];

/// Why a launch template was refused.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The template's words themselves (quotes, operators, names that would run as code).
    #[error(transparent)]
    Command(#[from] argv::CommandError),
    /// `{command}` missing, repeated or glued to other text.
    #[error(
        "the template must hold {{command}} exactly once, as a word of its own (it becomes the \
         job's arguments), e.g. \"srun -n {{ranks}} {{command}}\"; got {0:?}"
    )]
    CommandWord(String),
    /// A placeholder the launcher does not fill.
    #[error("unknown placeholder {{{0}}}; known are {known}", known = LAUNCH_PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(" "))]
    Placeholder(String),
    /// `{command}` after an option that runs its argument as code.
    #[error(
        "`{0} {{command}}` would run the job's arguments, which hold beamline names, as code; \
         put {{command}} where its words stay arguments, e.g. \"srun -n {{ranks}} {{command}}\""
    )]
    RunsAsCode(String),
}

/// Checks a launch template and splits it into words: `{command}` exactly once, as a word
/// of its own, and only known placeholders.
pub fn launch_argv(template: &str) -> Result<Vec<String>, LaunchError> {
    let words = argv::split(template)?;
    let whole = words.iter().filter(|w| *w == "{command}").count();
    if whole != 1
        || words
            .iter()
            .any(|w| w != "{command}" && w.contains("{command}"))
    {
        return Err(LaunchError::CommandWord(template.to_string()));
    }
    for p in words.iter().flat_map(|w| argv::placeholders(w)) {
        if !LAUNCH_PLACEHOLDERS.contains(&p) {
            return Err(LaunchError::Placeholder(p.to_string()));
        }
    }
    // the job's own words (which hold names) and the work folder's path are data here too
    let at = words.iter().position(|w| w == "{command}").unwrap_or(0);
    if at > 0 && argv::runs_next_as_code(&words[at - 1]) {
        return Err(LaunchError::RunsAsCode(words[at - 1].clone()));
    }
    argv::check_names(&words, &["hostfile"], "\"$BEAMFLOW_HOSTFILE\"")?;
    Ok(words)
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection {
            scheduler: SchedulerKind::Local,
            submit: true,
            max_queued: 1,
            min_nodes: 1,
            max_nodes: 1,
            walltime: Dur::secs(3600),
            project: String::new(),
            queue: String::new(),
            launch: String::new(),
            slots: 0,
            idle_exit: Dur::secs(30),
            poll: Dur::secs(1),
            walltime_margin: Dur::secs(60),
            extra_args: Vec::new(),
        }
    }
}

/// Which batch system a queue belongs to.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Launchers are child processes of the service on this host.
    #[default]
    Local,
    /// `sbatch` / `squeue` / `scancel`.
    Slurm,
    /// PBS Pro: `qsub -l select=` / `qstat -f -F json` / `qdel`.
    Pbs,
    /// Cobalt: `qsub -n -t --mode script` / `qstat` / `qdel`.
    Cobalt,
}

impl Config {
    /// Reads, parses, validates and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let said = text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if !said {
            // a file that sets nothing is a mistake (a wrong path, an unsaved edit), not a wish
            // for every default
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: 1,
                key: String::new(),
                message: "the file sets nothing; start from examples/local.toml (one host), examples/beamline.toml (a beamline) or examples/polaris.toml (an HPC site)".into(),
            });
        }
        let mut cfg = Config::parse(&text, path)?;
        cfg.resolve(&base);
        cfg.source = Some(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()));
        Ok(cfg)
    }

    /// Parses and validates text; `path` only names the file in errors. Paths stay as written.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let line = line_of(text, offset);
            let message = e.message().trim().to_string();
            // an unknown key is named in full (`agent.no_such_key`) by the line it is on; a
            // missing one has no line of its own
            let key = if message.contains("missing field") {
                String::new()
            } else {
                key_on_line(text, line)
                    .map(|k| format!("key `{k}`: "))
                    .unwrap_or_default()
            };
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                key,
                message,
            }
        })?;
        for (name, wf) in workflow::builtin() {
            match cfg.workflows.get_mut(&name) {
                Some(mine) if mine.steps.is_empty() => mine.steps = wf.steps,
                Some(_) => {}
                None => {
                    cfg.workflows.insert(name, wf);
                }
            }
        }
        validate_workflows(&mut cfg, text, path)?;
        validate_notify(&mut cfg, text, path)?;
        validate_watch(&cfg, text, path)?;
        validate_queues(&cfg, text, path)?;
        validate_names(&cfg, text, path)?;
        validate_link(&cfg, text, path)?;
        validate_service(&cfg, text, path)?;
        if cfg.queues.is_empty() {
            cfg.queues.insert("default".into(), QueueSection::default());
        }
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let fix = |p: &mut PathBuf| {
            if let (Ok(rest), Some(h)) = (p.strip_prefix("~"), home.as_ref()) {
                *p = h.join(rest);
            }
            if p.is_relative() {
                *p = base.join(&*p);
            }
            // drop `.` components so logs and status show the path people expect
            *p = p
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
        };
        fix(&mut self.agent.state_dir);
        if let Some(p) = self.agent.metrics_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.agent.results_dir.as_mut() {
            fix(p);
        }
        for w in &mut self.watch {
            fix(&mut w.path);
        }
        fix(&mut self.collector.data_root);
        fix(&mut self.collector.state_dir);
        fix(&mut self.service.work_root);
        if !self.link.control_path.as_os_str().is_empty() {
            fix(&mut self.link.control_path);
        }
        if let Some(p) = self.link.ssh_config.as_mut() {
            fix(p);
        }
        for wf in self.workflows.values_mut() {
            if let Some(bin) = wf.bin.as_mut() {
                fix(bin);
            }
        }
    }

    /// The effective config as TOML, for `config check`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// The effective settings of the top-level sections `keys` only (what one program
    /// uses), as TOML.
    pub fn to_toml_of(&self, keys: &[&str]) -> String {
        let Ok(toml::Value::Table(mut all)) = toml::Value::try_from(self) else {
            return self.to_toml();
        };
        all.retain(|k, _| keys.contains(&k));
        toml::to_string_pretty(&all).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// One line that says the file is good and what in it `program` uses, for `config check`.
    pub fn verdict(&self, path: &Path, program: &str, keys: &[&str]) -> String {
        let mut used = Vec::new();
        for k in keys {
            match *k {
                "watch" => used.push(format!("{} [[watch]]", self.watch.len())),
                "notify" => used.push(format!("{} [[notify]]", self.notify.len())),
                "workflows" => used.push(format!("{} workflow(s)", self.workflows.len())),
                "queues" => used.push(format!("{} queue(s)", self.queues.len())),
                k => used.push(format!("[{k}]")),
            }
        }
        format!(
            "{}: ok for {program} ({}; `--print` shows the effective settings)",
            path.display(),
            used.join(", ")
        )
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

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Checks the workflows (built-in ones included): steps, commands, windows; an error names the key in full and its line.
fn validate_workflows(cfg: &mut Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    for (name, wf) in cfg.workflows.iter_mut() {
        wf.validate(name)
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, &key).unwrap_or(1),
                key: format!("key `workflows.{name}.{key}`: "),
                message,
            })?;
    }
    Ok(())
}

/// Checks the notification targets; an error names the key in full and its line.
fn validate_notify(cfg: &mut Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    for (i, n) in cfg.notify.iter_mut().enumerate() {
        if let Err((key, message)) = n.validate() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, &key)
                    .or_else(|| find_key_line(text, "events"))
                    .unwrap_or(1),
                key: format!("key `notify[{i}].{key}`: "),
                message,
            });
        }
    }
    Ok(())
}

/// Checks the watch roots; an error names the key in full and its line.
fn validate_watch(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    for (i, w) in cfg.watch.iter().enumerate() {
        if !matches!(w.delete_after.as_str(), "" | "verified+done") {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, "delete_after").unwrap_or(1),
                key: format!("key `watch[{i}].delete_after`: "),
                message: format!(
                    "\"{}\" is not a rule; write \"verified+done\" (or leave it out to keep every image)",
                    w.delete_after
                ),
            });
        }
        if let Err(e) = notify::parse_hours(&w.active_hours) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, "active_hours").unwrap_or(1),
                key: format!("key `watch[{i}].active_hours`: "),
                message: e.to_string(),
            });
        }
        if !cfg.workflows.contains_key(&w.workflow) {
            let names: Vec<&str> = cfg.workflows.keys().map(String::as_str).collect();
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, "workflow").unwrap_or(1),
                key: format!("key `watch[{i}].workflow`: "),
                message: format!(
                    "no workflow \"{}\"; the workflows are: {} (names are case-sensitive; define your own under [workflows.NAME])",
                    w.workflow,
                    names.join(", ")
                ),
            });
        }
        if glob::Pattern::new(&w.pattern).is_err() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, "pattern").unwrap_or(1),
                key: format!("key `watch[{i}].pattern`: "),
                message: format!(
                    "\"{}\" is not a valid glob; write e.g. \"*.tif\"",
                    w.pattern
                ),
            });
        }
    }
    Ok(())
}

/// Checks the queues; an error names the key in full and its line.
fn validate_queues(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    for (name, q) in cfg.queues.iter() {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: find_key_line(text, key).unwrap_or(1),
            key: format!("key `queues.{name}.{key}`: "),
            message,
        };
        if q.min_nodes == 0 || q.min_nodes > q.max_nodes {
            return Err(bad(
                "min_nodes",
                format!(
                    "min_nodes ({}) must be at least 1 and at most max_nodes ({})",
                    q.min_nodes, q.max_nodes
                ),
            ));
        }
        if !q.launch.is_empty() {
            if let Err(e) = launch_argv(&q.launch) {
                return Err(bad("launch", e.to_string()));
            }
        }
        if q.walltime <= q.walltime_margin {
            return Err(bad(
                "walltime",
                format!(
                    "walltime ({}) must be longer than walltime_margin ({})",
                    q.walltime, q.walltime_margin
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the beamline names: this agent's and those the collector takes; an error names the key in full and its line.
fn validate_names(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    if !cfg.agent.name.is_empty() {
        if let Err(e) = check_beamline(&cfg.agent.name) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, "name").unwrap_or(1),
                key: "key `agent.name`: ".into(),
                message: e.to_string(),
            });
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
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, key).unwrap_or(1),
                key: format!("key `collector.{key}`: "),
                message: e.to_string(),
            });
        }
    }
    Ok(())
}

/// Checks the link; an error names the key in full and its line.
fn validate_link(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    if cfg.link.channels == 0 || cfg.link.channels > 10 {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            line: find_key_line(text, "channels").unwrap_or(1),
            key: "key `link.channels`: ".into(),
            message: format!(
                "{} channels: use 1 to 10 (sshd's MaxSessions is 10 by default)",
                cfg.link.channels
            ),
        });
    }
    if cfg.link.max_stacks == 0 || cfg.link.max_stacks > 64 {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            line: find_key_line(text, "max_stacks").unwrap_or(1),
            key: "key `link.max_stacks`: ".into(),
            message: format!(
                "{} stacks in flight: use 1 to 64 (they share `channels` far ends)",
                cfg.link.max_stacks
            ),
        });
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

/// Checks the service's address and limits; an error names the key in full and its line.
fn validate_service(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    if let Err(e) = split_host_port(&cfg.service.listen) {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            line: find_key_line(text, "listen").unwrap_or(1),
            key: "key `service.listen`: ".into(),
            message: e.to_string(),
        });
    }
    if cfg.service.advertise.contains(['/', ' ', '@']) {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            line: find_key_line(text, "advertise").unwrap_or(1),
            key: "key `service.advertise`: ".into(),
            message: format!(
                "\"{}\" is not a host name or address; write e.g. \"login1.site.org\" (no scheme, no port)",
                cfg.service.advertise
            ),
        });
    }
    if cfg.service.max_attempts == 0 {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            line: find_key_line(text, "max_attempts").unwrap_or(1),
            key: "key `service.max_attempts`: ".into(),
            message: "must be at least 1".into(),
        });
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
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: find_key_line(text, key).unwrap_or(1),
                key: format!("key `service.{key}`: "),
                message: message.into(),
            });
        }
    }
    Ok(())
}

/// The key assigned on `line`, in full: the table it sits in (`[link]`, the second
/// `[[watch]]`) and its own name, as `link.channels` or `watch[1].settle`.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let l = lines.get(line.checked_sub(1)?)?;
    let (k, _) = l.split_once('=')?;
    let k = k.trim();
    if k.is_empty() || k.starts_with('[') {
        return None;
    }
    Some(match table_of(&lines[..line - 1]) {
        Some(t) => format!("{t}.{k}"),
        None => k.to_string(),
    })
}

/// The table the last of `above` leaves open: `name` for `[name]`, `name[i]` for the i-th
/// `[[name]]`.
fn table_of(above: &[&str]) -> Option<String> {
    let (at, header) = above
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| l.trim_start().starts_with('['))?;
    let h = header.trim();
    if let Some(name) = h.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
        let name = name.trim();
        let i = above[..at]
            .iter()
            .filter(|l| {
                l.trim()
                    .strip_prefix("[[")
                    .and_then(|r| r.split("]]").next())
                    .is_some_and(|n| n.trim() == name)
            })
            .count();
        return Some(format!("{name}[{i}]"));
    }
    h.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .map(|n| n.trim().to_string())
}

/// Finds the first line that assigns the last segment of a dotted key; good enough to point a
/// person at the right place for errors found after parsing.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let last = dotted.rsplit('.').next()?;
    let last = last.split('[').next()?;
    text.lines()
        .position(|l| {
            let t = l.trim_start();
            t.starts_with(last) && t[last.len()..].trim_start().starts_with('=')
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("t.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn embedded_default_loads() {
        let cfg = Config::parse(EMBEDDED_LOCAL, Path::new("local.toml")).unwrap();
        assert_eq!(cfg.watch.len(), 1);
        assert_eq!(cfg.link.transport, Transport::Local);
        assert!(cfg.workflows.contains_key("aligntk"));
    }

    #[test]
    fn shipped_examples_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "local, beamline, polaris, slurm, theta: {n}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[agent]\nstate_dir = \"s\"\nretry_maxx = \"5s\"\n");
        assert!(e.starts_with("t.toml:3:"), "{e}");
        assert!(e.contains("retry_maxx"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_and_line() {
        let e = err("[[watch]]\npath = \"in\"\nsettle = \"thirty\"\n");
        assert!(e.starts_with("t.toml:3: key `watch[0].settle`"), "{e}");
        assert!(e.contains("30s"), "{e}");
    }

    #[test]
    fn listen_is_host_and_port_and_says_how_to_write_it() {
        for ok in [
            "0.0.0.0:0",
            "[::]:7000",
            "login1.site.org:0",
            "10.1.2.3:443",
        ] {
            assert!(split_host_port(ok).is_ok(), "{ok}");
        }
        assert_eq!(split_host_port("[::1]:5").unwrap(), ("::1".to_string(), 5));
        let e = err("[service]\nwork_root = \"w\"\nlisten = \"0.0.0.0\"\n");
        assert!(e.starts_with("t.toml:3: key `service.listen`"), "{e}");
        assert!(e.contains("host:port"), "{e}");
        let e = err("[service]\nlisten = \":::5\"\n");
        assert!(e.contains("service.listen"), "{e}");
        let e = err("[service]\nadvertise = \"https://x\"\n");
        assert!(e.starts_with("t.toml:2: key `service.advertise`"), "{e}");
    }

    #[test]
    fn newcomers_mistakes_are_named_in_full_with_what_to_write() {
        let d = tempfile::tempdir().unwrap();
        for text in ["", "# only a comment\n\n"] {
            let p = d.path().join("empty.toml");
            std::fs::write(&p, text).unwrap();
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(
                e.contains("sets nothing") && e.contains("examples/local.toml"),
                "{e}"
            );
        }
        let e = err("[[watch]]\npath = \"in\"\nsettle = 30\n");
        assert!(e.starts_with("t.toml:3: key `watch[0].settle`"), "{e}");
        assert!(e.contains("\"30s\""), "{e}");
        let e = err("[[watch]]\npath = \"a\"\n[[watch]]\npath = \"b\"\nmax_wait = 5\n");
        assert!(e.starts_with("t.toml:5: key `watch[1].max_wait`"), "{e}");
        let e = err("[link]\nchannels = \"x\"\n");
        assert!(e.starts_with("t.toml:2: key `link.channels`"), "{e}");
        let e = err("[link]\nchannels = 2\nmax_stacks = 0\n");
        assert!(
            e.starts_with("t.toml:3: key `link.max_stacks`") && e.contains("use 1 to 64"),
            "{e}"
        );
        let e = err("[link]\nidle = 30\n");
        assert!(e.starts_with("t.toml:2: key `link.idle`"), "{e}");
        let e = err("[[watch]]\npath = \"in\"\nworkflow = \"alignTK\"\n");
        assert!(e.starts_with("t.toml:3: key `watch[0].workflow`"), "{e}");
        assert!(e.contains("aligntk, aligntk-apply, qa"), "{e}");
    }

    #[test]
    fn zero_min_images_is_refused() {
        let e = err("[[watch]]\npath = \"in\"\nmin_images = 0\n");
        assert!(e.starts_with("t.toml:3: key `watch[0].min_images`"), "{e}");
    }

    #[test]
    fn bad_glob_is_refused() {
        let e = err("[[watch]]\npath = \"in\"\npattern = \"[*.tif\"\n");
        assert!(e.contains("watch[0].pattern") && e.contains(":3:"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(
            &f,
            "[[watch]]\npath = \"./incoming\"\n[collector]\ndata_root = \"/abs\"\nstate_dir = \"~/st\"\n",
        )
        .unwrap();
        let cfg = Config::load(&f).unwrap();
        let base = d.path().canonicalize().unwrap();
        assert_eq!(cfg.watch[0].path, base.join("incoming"));
        assert_eq!(cfg.collector.data_root, PathBuf::from("/abs"));
        assert_eq!(cfg.agent.state_dir, base.join("state"));
        let home = PathBuf::from(std::env::var_os("HOME").unwrap());
        assert_eq!(cfg.collector.state_dir, home.join("st"));
    }

    #[test]
    fn missing_file_names_it() {
        let e = Config::load(Path::new("/nonexistent/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }
}
