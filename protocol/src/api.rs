//! The collector service's HTTP API: its types and the small blocking client that `serve`,
//! the CLIs and the agent's demo use. Kept here, beside the frames, because both programs
//! depend on it and it changes as carefully.
//!
//! The service writes `server-info` (its advertised URL, a random token and its TLS
//! certificate with that certificate's fingerprint; mode 0600) into the state folder, which
//! on a site is the shared home folder that login and compute nodes all see. Every request
//! carries the token, over TLS that trusts exactly the pinned certificate. Nobody but the
//! service touches the database.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the file, in the collector's state folder, that tells clients where the service is.
pub const SERVER_INFO: &str = "server-info";

/// Contents of `server-info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Base URL at the advertised address, e.g. `https://login1.site.org:40123`.
    pub url: String,
    /// Bearer token every request must carry.
    pub token: String,
    /// A second token that only reads: the status page and `/metrics` take it, so a browser
    /// or a Prometheus server never holds the token that can change anything.
    #[serde(default)]
    pub read_token: String,
    /// The service's process id, for operators.
    pub pid: u32,
    /// The host the service runs on, for messages that say where to look.
    #[serde(default)]
    pub host: String,
    /// The service's self-signed certificate (PEM): the only one a client trusts for it.
    #[serde(default)]
    pub cert: String,
    /// `sha256:` and the hex SHA-256 of the certificate's DER bytes: checked against `cert`
    /// before it is trusted, and shown by `doctor` so people can compare it by eye.
    #[serde(default)]
    pub fingerprint: String,
}

/// The fingerprint of a certificate's DER bytes, as `server-info` and `doctor` write it.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex_lower(&sha2::Sha256::digest(der)))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This host's name, for messages that say from where an address was tried.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "this host".into())
}

/// One file of a submission.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubmitFile {
    /// Relative to the data root.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// BLAKE3, hex.
    pub blake3: String,
}

/// `POST /v1/stacks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The beamline it came from (its agent's `[agent] name`).
    #[serde(default)]
    pub beamline: String,
    /// Stack path relative to the beamline's folder in the data root.
    pub stack: String,
    /// Version.
    pub version: u32,
    /// Workflow name.
    pub workflow: String,
    /// Files of this version.
    pub files: Vec<SubmitFile>,
    /// Older versions' jobs that have not started keep running (`on_change = "resubmit"`);
    /// by default this version supersedes them.
    #[serde(default)]
    pub keep_older: bool,
    /// A streamed stack's sections so far: its DAG holds only the work they allow (whole
    /// chunks of pairs), and the version that seals the stack reuses it.
    #[serde(default)]
    pub partial: bool,
}

/// `POST /v1/stacks/abandon`: a stack still being written (only partial versions at the
/// collector) whose folder was removed at the beamline, or that `max_wait` passed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbandonRequest {
    /// The beamline it came from.
    pub beamline: String,
    /// Stack path relative to the beamline's folder.
    pub stack: String,
    /// Why: each cancelled job's event says it.
    #[serde(default)]
    pub why: AbandonWhy,
}

/// Why a stack still being written was abandoned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbandonWhy {
    /// Its folder was removed at the beamline.
    #[default]
    FolderRemoved,
    /// It was not finished after its watch root's `max_wait` (as written in the config).
    NotFinished(String),
}

impl AbandonWhy {
    /// The reason each cancelled job's event gives.
    pub fn reason(&self) -> String {
        match self {
            AbandonWhy::FolderRemoved => {
                "abandoned: the stack's folder was removed at the beamline before it was finished"
                    .into()
            }
            AbandonWhy::NotFinished(after) => format!(
                "abandoned: the stack was not finished after {after} (max_wait); what ran of it is kept, and it runs whole if it is finished later"
            ),
        }
    }
}

/// Answer to an abandonment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbandonResponse {
    /// Open jobs cancelled; none when the stack has a sealed version (it was not abandoned:
    /// what the beamline does with a submitted stack's folder is its own business).
    pub cancelled: Option<u64>,
}

/// Answer to a submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The stack version's id.
    pub remote_id: u64,
    /// False when this exact version existed already.
    pub created: bool,
    /// Jobs in its DAG.
    pub jobs: u32,
}

/// A stack version as the service knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackRow {
    /// The service's id.
    pub id: u64,
    /// The beamline it came from.
    pub beamline: String,
    /// Path relative to the data root.
    pub name: String,
    /// Version.
    pub version: u32,
    /// Workflow name.
    pub workflow: String,
    /// Work folder.
    pub work_dir: String,
    /// Files in it.
    pub files: u64,
    /// When it was submitted (RFC 3339).
    pub created_at: String,
    /// Sections so far of a stack still being written (streamed), not a whole stack.
    #[serde(default)]
    pub partial: bool,
}

/// A job as shown by `ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRow {
    /// The service's id.
    pub id: u64,
    /// The beamline its stack came from.
    pub beamline: String,
    /// Stack path.
    pub stack: String,
    /// Stack version.
    pub version: u32,
    /// Step name.
    pub name: String,
    /// Its state (Balsam's names; strict: an unknown name is an error).
    pub state: crate::states::JobState,
    /// Ids of the jobs it waits for.
    pub parents: Vec<u64>,
    /// Nodes.
    pub nodes: u32,
    /// Ranks per node.
    pub ranks_per_node: u32,
    /// Threads per rank.
    pub threads_per_rank: u32,
    /// CPU binding.
    pub cpu_affinity: String,
    /// The argument vector as one line a person can paste into a shell (every value quoted).
    pub command: String,
    /// The arguments the job runs with, exactly; no shell sees them.
    pub argv: Vec<String>,
    /// Runs so far.
    pub attempts: u32,
    /// Why it is in its state (the last event's reason).
    pub reason: String,
    /// The launcher running it, if any.
    pub launcher: Option<u64>,
}

/// A job handed to a launcher: everything needed to run it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LaunchedJob {
    /// The service's id.
    pub id: u64,
    /// Step name (names the output files).
    pub name: String,
    /// Stack path, for logs.
    pub stack: String,
    /// The job's arguments, placeholders filled; run as they are, never through a shell.
    pub argv: Vec<String>,
    /// Folder to run in.
    pub work_dir: String,
    /// Nodes.
    pub nodes: u32,
    /// Ranks per node.
    pub ranks_per_node: u32,
    /// Threads per rank.
    pub threads_per_rank: u32,
    /// CPU binding.
    pub cpu_affinity: String,
    /// Extra environment.
    pub env: std::collections::BTreeMap<String, String>,
    /// Which attempt this is (1-based).
    pub attempt: u32,
}

/// `POST /v1/launchers/{id}/start`: a launcher came up inside its allocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LauncherStart {
    /// Host the launcher runs on.
    pub host: String,
    /// Nodes of its allocation.
    pub nodes: Vec<String>,
    /// Scheduler's id of the allocation, if the environment tells it.
    pub batch_id: Option<String>,
}

/// The longest a job may be expected to run and still be held by a launcher ahead of a free
/// node ([`AcquireRequest::ahead`]): below it, the service's round trip between one job's end
/// and the next one's start is a large part of a slot's time; above it, a held job would keep
/// work from another launcher's idle node for longer than the trip saves.
pub const SHORT_JOB: Duration = Duration::from_secs(1);

/// The most jobs a launcher holds ahead of its idle nodes, per node: enough to cover the
/// round trip in which the service records endings and hands out the next jobs, while each
/// of them lasts far less than it (held jobs are short ones, see [`SHORT_JOB`]).
pub const AHEAD_PER_SLOT: u32 = 4;

/// `POST /v1/launchers/{id}/acquire`: a heartbeat that may ask for work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcquireRequest {
    /// Idle nodes as the launcher counts them. The service counts free nodes itself from the
    /// slots the launcher announced at its start; this is used only for one that announced none.
    pub free_nodes: u32,
    /// Most jobs to take.
    pub max_jobs: u32,
    /// Jobs the launcher is running now (so that the service can spot strays).
    pub running: Vec<u64>,
    /// Endings to record first, in the same transaction as the acquire: a launcher reports
    /// several endings per request and gets the work for the freed nodes in the answer.
    #[serde(default)]
    pub reports: Vec<JobReport>,
    /// How long the service may hold the request while there is nothing to hand out (a
    /// long-poll, answered the moment work, a kill or a stop exists); 0 answers at once.
    #[serde(default)]
    pub wait_ms: u64,
    /// The launcher is ending (cancelled, out of wall time, idle): it takes no more work.
    /// The service marks it ENDING in the same transaction as the request's endings, so a
    /// job those endings make runnable again is never handed back to it.
    #[serde(default)]
    pub closing: bool,
    /// Jobs the launcher will hold beyond its idle nodes, each started the moment a node
    /// frees, with no round trip between one job's end and the next one's start: asked only
    /// while its jobs end within moments (a held job is no use to another launcher, but a
    /// slot that waits for the service costs more than a job of a millisecond). The service
    /// hands no more than the launcher's slots this way, and only jobs expected to be short.
    #[serde(default)]
    pub ahead: u32,
}

/// One ending inside an acquire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobReport {
    /// The job.
    pub job: u64,
    /// How it ended.
    pub report: ReportRequest,
}

/// Answer to an acquire.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AcquireResponse {
    /// Jobs to start now; they are RUNNING for this launcher already.
    pub jobs: Vec<LaunchedJob>,
    /// Running jobs a person killed: end them.
    pub kill: Vec<u64>,
    /// The service declared this launcher lost or ended: stop everything and exit.
    pub stop: bool,
    /// Reports of the request that were recorded (false: the job was no longer this
    /// launcher's, a stale report the service ignored), in the request's order.
    #[serde(default)]
    pub applied: Vec<bool>,
}

/// How a run ended, as the launcher saw it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exited 0.
    Done,
    /// Exited non-zero or was killed by a signal.
    Error,
    /// Ended because the allocation ran out (or was cancelled).
    Timeout,
    /// Could not be started: missing or not executable. Not worth retrying.
    Missing,
    /// Never started: the launcher held it (ahead of a free node) and is ending. It goes
    /// back in line as it was; no attempt is counted.
    Unstarted,
}

/// `POST /v1/jobs/{id}/report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportRequest {
    /// The reporting launcher.
    pub launcher: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// For people: signal, stderr tail, the missing path …
    pub message: String,
    /// How long the run took, from its start to its exit, as the launcher timed it: a job
    /// held ahead of a free node waits before it starts, and that wait is not its run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_ms: Option<u64>,
}

/// A launcher as the service tracks it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LauncherRow {
    /// The service's id.
    pub id: u64,
    /// Queue name.
    pub queue: String,
    /// Scheduler kind.
    pub scheduler: String,
    /// The scheduler's job id.
    pub batch_id: String,
    /// Nodes asked for.
    pub nodes: u32,
    /// Its state.
    pub state: crate::states::LauncherState,
    /// Jobs it runs now.
    pub running_jobs: u32,
    /// When it was submitted (RFC 3339).
    pub submitted_at: String,
    /// Why it is in its state.
    pub reason: String,
    /// The wall time asked for, in seconds (0: not recorded).
    #[serde(default)]
    pub walltime_secs: u64,
    /// Whether it was shaped to a backfill window (else the queue's fixed size).
    #[serde(default)]
    pub window: bool,
    /// When the jobs it runs must be done (seconds since the epoch): its start, plus its wall
    /// time, less the queue's margin; none before it runs or where its wall time is unknown.
    #[serde(default)]
    pub deadline: Option<f64>,
}

impl LauncherRow {
    /// Its allocation for people: `2 × 38m (backfill window)`, `1 × 1h`, or the nodes alone
    /// where the wall time was not recorded.
    pub fn shape(&self) -> String {
        let mut s = self.nodes.to_string();
        if self.walltime_secs > 0 {
            s.push_str(&format!(
                " × {}",
                humantime::format_duration(std::time::Duration::from_secs(self.walltime_secs))
            ));
        }
        if self.window {
            s.push_str(" (backfill window)");
        }
        s
    }
}

/// One stack's jobs, counted by state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackStatus {
    /// The beamline it came from.
    pub beamline: String,
    /// Stack path.
    pub stack: String,
    /// Version.
    pub version: u32,
    /// Workflow.
    pub workflow: String,
    /// Jobs per state name.
    pub counts: std::collections::BTreeMap<String, u32>,
    /// The sections so far of a stack still being written (streamed).
    #[serde(default)]
    pub partial: bool,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Every stack version.
    pub stacks: Vec<StackStatus>,
    /// Launchers not yet forgotten (queued, running, and the last ended ones).
    pub launchers: Vec<LauncherRow>,
    /// Things a person should know: why work waits, what is held.
    pub notes: Vec<String>,
}

/// One state change of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRow {
    /// When (RFC 3339).
    pub at: String,
    /// Previous state (none when created).
    pub from: Option<crate::states::JobState>,
    /// New state.
    pub to: crate::states::JobState,
    /// Why.
    pub reason: String,
}

/// Where a stack version's DAG is, as the beamline is told (`GET /v1/outcomes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DagOutcome {
    /// The stack version's id (what the agent journaled as its remote id).
    pub id: u64,
    /// Its one word (strict on the wire: an unknown word is an error).
    pub state: crate::states::DagState,
    /// Jobs finished.
    pub done: u32,
    /// Jobs in the DAG.
    pub total: u32,
    /// For `failed`: the first failed job's step and reason, for people.
    #[serde(default)]
    pub failure: String,
    /// For `failed`: the command that puts the failed jobs back in line.
    #[serde(default)]
    pub retry: String,
    /// For `superseded`: the version whose DAG took over what had not started.
    #[serde(default)]
    pub superseded_by: u32,
    /// Each step with its jobs finished and in all (a fanned-out step has a job per chunk),
    /// in the order the workflow runs them.
    #[serde(default)]
    pub steps: Vec<StepProgress>,
}

/// One step of a DAG: its jobs finished and in all.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepProgress {
    /// The step's name.
    pub name: String,
    /// Its jobs JOB_FINISHED.
    pub done: u32,
    /// Its jobs.
    pub total: u32,
}

impl DagOutcome {
    /// The steps for people: `qa 1/1 · find_rst 12/31 · register 3/31 · align 0/1`.
    pub fn steps_line(&self) -> String {
        self.steps
            .iter()
            .map(|s| format!("{} {}/{}", s.name, s.done, s.total))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

impl DagOutcome {
    /// Whether it can still change without a person (`failed` can, after a retry: the agent
    /// keeps asking about it, slowly).
    pub fn is_final(&self) -> bool {
        use crate::states::DagState as D;
        matches!(self.state, D::Done | D::Killed | D::Superseded | D::Unknown)
    }

    /// One line for `status`: `running 2/5`, `done`, `FAILED: register: … — retry: …`.
    pub fn line(&self) -> String {
        use crate::states::DagState as D;
        match self.state {
            D::Done => "done".into(),
            D::Failed => format!("FAILED: {} — retry: {}", self.failure, self.retry),
            D::Superseded => format!(
                "superseded by v{} ({}/{} jobs had finished)",
                self.superseded_by, self.done, self.total
            ),
            D::Unknown => "the collector no longer knows this DAG".into(),
            other => format!("{other} {}/{}", self.done, self.total),
        }
    }
}

/// One result file a workflow returns (`beamflow-collector results --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResultFile {
    /// Relative to the stack version's work folder.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// BLAKE3, hex.
    pub blake3: String,
}

/// `POST /v1/received`: what one `serve` session received, for the service's metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Received {
    /// Files received and verified.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files whose BLAKE3 did not match after transfer.
    pub verify_failures: u64,
    /// Files resumed from a verified prefix or sent as a delta.
    pub resumes: u64,
}

/// `POST /v1/probes`: a probe job on a compute node reached the service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// The doctor's random word, to tell its probe from others.
    pub nonce: String,
    /// The host the probe ran on.
    pub host: String,
}

/// Error body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// Why talking to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No `server-info`: the service has not been started (or was stopped cleanly).
    #[error("the collector service is not running: {path} does not exist; start it with `beamflow-collector service --config <file>`")]
    NotRunning {
        /// Where server-info was expected.
        path: PathBuf,
    },
    /// `server-info` exists but nobody answers (a killed service leaves it behind, or the
    /// advertised address is not reachable from this host).
    #[error("the collector service is not answering at {url} from {from} ({cause}); check that `beamflow-collector service` runs (its server-info is {path}), that the address resolves and is reachable from {from} (firewall, `[service] listen` and `advertise`), and `beamflow-collector doctor`")]
    NotAnswering {
        /// The URL tried.
        url: String,
        /// The host it was tried from.
        from: String,
        /// Where the URL came from.
        path: PathBuf,
        /// The transport error.
        cause: Box<ureq::Error>,
    },
    /// `server-info` is unreadable.
    #[error("cannot read {path}: {message}")]
    BadInfo {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The service answered with an error.
    #[error("the collector service refused the request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its explanation.
        message: String,
    },
}

impl ClientError {
    /// Whether retrying later may help (the service may come back); refusals are final.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Refused { status, .. } => *status >= 500,
            _ => true,
        }
    }
}

/// The HTTP side of a client: statuses are answers to read, not errors; `limit` bounds a
/// whole request; `tls` trusts the service's pinned certificate and nothing else.
fn http_agent(limit: Duration, tls: &ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(limit))
        .tls_config(tls.clone())
        .build()
        .into()
}

/// TLS that trusts exactly the certificate `server-info` pins, after checking it against
/// the fingerprint written beside it.
fn pinned(info: &ServerInfo, path: &Path) -> Result<ureq::tls::TlsConfig, ClientError> {
    let bad = |message: String| ClientError::BadInfo {
        path: path.to_path_buf(),
        message,
    };
    // the token goes with every request: never over plain HTTP, never to a server that is
    // not the one pinned
    if !info.url.starts_with("https://") || info.cert.is_empty() {
        return Err(bad(format!(
            "it names {} without a pinned certificate, and the token must not travel in plain \
             HTTP or to an unpinned server; it was written by an older service: restart the \
             service (`beamflow-collector service`), which writes an https URL and its certificate",
            info.url
        )));
    }
    let cert = ureq::tls::parse_pem(info.cert.as_bytes())
        .find_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .ok_or_else(|| bad("its `cert` is not a PEM certificate".into()))?;
    let seen = fingerprint(cert.der());
    if seen != info.fingerprint {
        return Err(bad(format!(
            "its certificate's fingerprint is {seen}, not the pinned {}; the file was altered or half-written: restart the service to write it anew",
            info.fingerprint
        )));
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
            cert.to_owned(),
        ])))
        .build())
}

/// A small blocking client of the service API.
pub struct Client {
    info: ServerInfo,
    info_path: PathBuf,
    tls: ureq::tls::TlsConfig,
    agent: ureq::Agent,
}

impl Client {
    /// Reads `server-info` from the collector's state folder.
    pub fn from_state_dir(state_dir: &Path) -> Result<Client, ClientError> {
        let path = state_dir.join(SERVER_INFO);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NotRunning { path })
            }
            Err(e) => {
                return Err(ClientError::BadInfo {
                    path,
                    message: e.to_string(),
                })
            }
        };
        let info: ServerInfo = serde_json::from_str(&text).map_err(|e| ClientError::BadInfo {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tls = pinned(&info, &path)?;
        Ok(Client {
            agent: http_agent(Duration::from_secs(60), &tls),
            info,
            info_path: path,
            tls,
        })
    }

    /// The same client with another limit on each request's time: for a caller that must not
    /// be held long (a launcher reporting from its main loop).
    pub fn with_timeout(mut self, limit: Duration) -> Client {
        self.agent = http_agent(limit, &self.tls);
        self
    }

    /// What `server-info` said: where the service is and which certificate it pins.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    fn finish<T: for<'de> Deserialize<'de>>(
        &self,
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut res = res.map_err(|e| ClientError::NotAnswering {
            url: self.info.url.clone(),
            from: this_host(),
            path: self.info_path.clone(),
            cause: Box::new(e),
        })?;
        let status = res.status().as_u16();
        if (200..300).contains(&status) {
            return res
                .body_mut()
                .read_json::<T>()
                .map_err(|e| ClientError::Refused {
                    status,
                    message: format!("unreadable answer: {e}"),
                });
        }
        let message = res
            .body_mut()
            .read_json::<ErrorBody>()
            .map(|b| b.error)
            .unwrap_or_else(|_| "no explanation given".into());
        Err(ClientError::Refused { status, message })
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.info.token)
    }

    /// Submits a stack version (idempotent).
    pub fn submit(&self, req: &SubmitRequest) -> Result<SubmitResponse, ClientError> {
        let res = self
            .agent
            .post(format!("{}/v1/stacks", self.info.url))
            .header("Authorization", self.auth())
            .send_json(req);
        self.finish(res)
    }

    /// Cancels the open jobs of a stack abandoned while it streamed.
    pub fn abandon(&self, req: &AbandonRequest) -> Result<AbandonResponse, ClientError> {
        let res = self
            .agent
            .post(format!("{}/v1/stacks/abandon", self.info.url))
            .header("Authorization", self.auth())
            .send_json(req);
        self.finish(res)
    }

    /// Lists jobs, optionally filtered.
    pub fn jobs(
        &self,
        stack: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<JobRow>, ClientError> {
        let mut req = self
            .agent
            .get(format!("{}/v1/jobs", self.info.url))
            .header("Authorization", self.auth());
        if let Some(s) = stack {
            req = req.query("stack", s);
        }
        if let Some(s) = state {
            req = req.query("state", s);
        }
        self.finish(req.call())
    }

    fn post<B: Serialize, T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let res = self
            .agent
            .post(format!("{}{path}", self.info.url))
            .header("Authorization", self.auth())
            .send_json(body);
        self.finish(res)
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, ClientError> {
        let res = self
            .agent
            .get(format!("{}{path}", self.info.url))
            .header("Authorization", self.auth())
            .call();
        self.finish(res)
    }

    /// The service's overview.
    pub fn status(&self) -> Result<StatusResponse, ClientError> {
        self.get("/v1/status")
    }

    /// A job's events.
    pub fn history(&self, job: u64) -> Result<Vec<EventRow>, ClientError> {
        self.get(&format!("/v1/jobs/{job}/events"))
    }

    /// Puts a failed or killed job back in line.
    pub fn retry(&self, job: u64) -> Result<JobRow, ClientError> {
        self.post(&format!("/v1/jobs/{job}/retry"), &serde_json::json!({}))
    }

    /// Stops a job for good.
    pub fn kill(&self, job: u64) -> Result<JobRow, ClientError> {
        self.post(&format!("/v1/jobs/{job}/kill"), &serde_json::json!({}))
    }

    /// A launcher announces itself.
    pub fn launcher_start(
        &self,
        id: u64,
        req: &LauncherStart,
    ) -> Result<serde_json::Value, ClientError> {
        self.post(&format!("/v1/launchers/{id}/start"), req)
    }

    /// Heartbeat and request for work.
    pub fn acquire(&self, id: u64, req: &AcquireRequest) -> Result<AcquireResponse, ClientError> {
        self.post(&format!("/v1/launchers/{id}/acquire"), req)
    }

    /// How a job's run ended.
    pub fn report(&self, job: u64, req: &ReportRequest) -> Result<serde_json::Value, ClientError> {
        self.post(&format!("/v1/jobs/{job}/report"), req)
    }

    /// Tells the service that a probe reached it from this host.
    pub fn probe(&self, nonce: &str) -> Result<Probe, ClientError> {
        self.post(
            "/v1/probes",
            &Probe {
                nonce: nonce.into(),
                host: this_host(),
            },
        )
    }

    /// The probe with this nonce, once it arrived.
    pub fn probe_seen(&self, nonce: &str) -> Result<Probe, ClientError> {
        self.get(&format!("/v1/probes/{nonce}"))
    }

    /// Tells the service what a `serve` session received.
    pub fn received(&self, r: &Received) -> Result<serde_json::Value, ClientError> {
        self.post("/v1/received", r)
    }

    /// Where the DAGs of these stack versions are; `beamline` (the asking agent's) lights its
    /// activity light on the status page.
    pub fn outcomes(
        &self,
        ids: &[u64],
        beamline: Option<&str>,
    ) -> Result<Vec<DagOutcome>, ClientError> {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let mut req = self
            .agent
            .get(format!("{}/v1/outcomes", self.info.url))
            .header("Authorization", self.auth())
            .query("ids", list.join(","));
        if let Some(b) = beamline {
            req = req.query("beamline", b);
        }
        self.finish(req.call())
    }

    /// A launcher is exiting.
    pub fn launcher_end(&self, id: u64, reason: &str) -> Result<serde_json::Value, ClientError> {
        self.post(
            &format!("/v1/launchers/{id}/end"),
            &serde_json::json!({ "reason": reason }),
        )
    }

    /// Lists stack versions.
    pub fn stacks(&self) -> Result<Vec<StackRow>, ClientError> {
        let res = self
            .agent
            .get(format!("{}/v1/stacks", self.info.url))
            .header("Authorization", self.auth())
            .call();
        self.finish(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_info_without_https_and_a_pinned_certificate_is_refused() {
        let d = std::env::temp_dir().join(format!("beamflow-info-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for (url, cert) in [
            ("http://127.0.0.1:9/", ""),
            ("https://127.0.0.1:9/", ""),
            ("http://127.0.0.1:9/", "-----BEGIN CERTIFICATE-----"),
        ] {
            let info = serde_json::json!({
                "url": url, "token": "t", "read_token": "r", "pid": 1, "host": "h",
                "cert": cert, "fingerprint": "",
            });
            std::fs::write(d.join(SERVER_INFO), info.to_string()).unwrap();
            let e = match Client::from_state_dir(&d) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{url} with cert {cert:?} was accepted"),
            };
            assert!(
                e.contains("pinned certificate") && e.contains("restart the service"),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
