//! `beamflow-agent push DIR`: send one folder now and wait for its DAG, as the old `submit`
//! script did: the daemon's path run once. The same checks, journal and verification, and
//! after each attempt the same decision ([`lifecycle::after_send`]) with the same backoff;
//! the one difference is that push does not wait for `settle`: a folder named on the command
//! line is finished by being named, and a file that changed while it was sent is hashed
//! again and sent again at once.

use crate::journal::{Journal, StackState};
use crate::link::ssh::Master;
use crate::link::transfer::{self, Job};
use crate::stack::images::{check_images, hash_files};
use crate::stack::lifecycle::{self, Backoff, Next};
use crate::stack::root::Root;
use anyhow::{bail, Context, Result};
use beamflow_config::{Config, Transport, WatchSection};
use beamflow_program::{Exit, Verdict};
use std::collections::HashMap;
use std::path::Path;

/// What a successful push did: the same account whether `push` sent the folder itself or
/// the daemon it was handed to did.
pub type Pushed = crate::handoff::Sent;

/// Hands `dir` to the daemon running for this journal, if one listens and watches it, and
/// follows it to its end: the daemon's warm link sends it at once, with no login. None when
/// `push` must send it itself (no daemon, or a folder outside its watch roots).
async fn through_daemon(cfg: &Config, dir: &Path, attempts: u32) -> Result<Option<Pushed>> {
    use crate::handoff::Answer;
    let Some(mut follow) = crate::handoff::offer(&cfg.agent.state_dir, dir).await else {
        return Ok(None);
    };
    let mut failed = 0;
    while let Some(answer) = follow.next().await {
        match answer {
            Answer::Accepted { stack } => {
                tracing::info!(%stack, "handed to the running daemon");
                beamflow_program::complain!(
                    "push: {stack} handed to the running daemon (its warm link); following it"
                );
            }
            Answer::Retrying { reason } => {
                failed += 1;
                if failed >= attempts.max(1) {
                    // the far side unreachable (exit 4), as when push sends the folder itself
                    return Err(Verdict::new(
                        Exit::Unreachable,
                        format!("{reason}; gave up after {failed} attempt(s); the running daemon keeps trying (`beamflow-agent status` shows it)"),
                    )
                    .into());
                }
                beamflow_program::complain!("push: {reason}");
            }
            Answer::Submitted(s) => return Ok(Some(s)),
            Answer::Held { reason } => return Err(held(format!("held: {reason}"))),
            Answer::Refused { reason } => {
                tracing::info!("the running daemon does not take it ({reason}): sending it here");
                return Ok(None);
            }
        }
    }
    bail!(
        "the running daemon stopped before {} was sent; push it again (or let the daemon send it when it is back)",
        dir.display()
    )
}

/// Sends `dir` and submits it, retrying transient failures `attempts` times.
pub async fn push(
    cfg: &Config,
    dir: &Path,
    attempts: u32,
    progress: Option<std::sync::Arc<crate::link::transfer::Progress>>,
) -> Result<Pushed> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{} does not exist or cannot be read", dir.display()))?;
    anyhow::ensure!(
        dir.is_dir(),
        "{} is not a folder; push takes the folder that holds the images",
        dir.display()
    );
    if let Some(p) = through_daemon(cfg, &dir, attempts).await? {
        return Ok(p);
    }
    let root = root_for(cfg, &dir)?;
    let t0 = std::time::Instant::now();
    let scan = scan_stack(&root, &dir)?;
    let mut journal = Journal::open(&cfg.agent.state_dir)?;
    let dir_s = dir.display().to_string();
    if let Some(why) = root.unsendable(&dir) {
        return Err(held(format!("cannot push: {why}")));
    }
    let name = root.remote_name(&dir);
    let known = match journal.stack(&dir_s)? {
        Some(r) => journal.files(r.id)?,
        None => Vec::new(),
    };
    // the link comes up (master, then one far end per channel) while the images are checked
    // and hashed here: on a login node a far end costs a login shell, often a slow one
    let mut master = (cfg.link.transport == Transport::Ssh).then(|| Master::new(&cfg.link));
    let k = transfer::channels_for(cfg, scan.images.iter().map(|f| f.size));
    let local = {
        let (dir, scan, known) = (dir.clone(), scan.clone(), known.clone());
        tokio::task::spawn_blocking(move || check_and_hash(&dir, &scan, &known))
    };
    let early = warm_up(cfg, master.as_mut(), k).await;
    let checked = local
        .await?
        .with_context(|| format!("cannot read the images in {}", dir.display()))?;
    let files = match checked {
        Ok(files) => files,
        Err(faults) => {
            if let Some(m) = master {
                m.close().await;
            }
            return Err(not_whole(&dir, &faults));
        }
    };
    tracing::debug!(secs = t0.elapsed().as_secs_f64(), "checked and hashed");
    let rec = version_for(&mut journal, &dir_s, &name, &root, (&known, &files))?;
    journal.queue(rec.id, &files)?;
    let job = job_for((&dir, &name), &rec, files, progress, &root);
    let result = send_with_retries(
        cfg,
        &mut journal,
        &rec,
        job,
        attempts,
        master.as_mut(),
        early,
        &root,
    )
    .await;
    if let Some(m) = master {
        m.close().await;
    }
    result.map(|mut p| {
        p.stack = name;
        p
    })
}

/// Checks that every image is a whole TIFF, then hashes them (what the journal knows of
/// unchanged files is not read again); the faults when some are not whole.
#[allow(clippy::type_complexity)]
fn check_and_hash(
    dir: &Path,
    scan: &crate::stack::scan::DirScan,
    known: &[crate::stack::images::FileRecord],
) -> std::io::Result<Result<Vec<crate::stack::images::FileRecord>, Vec<(String, String)>>> {
    let faults = check_images(dir, scan, &mut HashMap::new());
    if !faults.is_empty() {
        return Ok(Err(faults));
    }
    hash_files(dir, scan, known).map(Ok)
}

/// What the transfer sends: the stack version and its files, with the progress it reports
/// sized to them.
fn job_for(
    (dir, name): (&Path, &str),
    rec: &crate::journal::StackRecord,
    files: Vec<crate::stack::images::FileRecord>,
    progress: Option<std::sync::Arc<crate::link::transfer::Progress>>,
    root: &Root,
) -> Job {
    if let Some(p) = &progress {
        use std::sync::atomic::Ordering::Relaxed;
        p.total_bytes
            .store(files.iter().map(|f| f.size).sum(), Relaxed);
        p.total_files.store(files.len() as u64, Relaxed);
    }
    Job {
        dir: dir.to_path_buf(),
        name: name.to_string(),
        version: rec.version,
        workflow: rec.workflow.clone(),
        files,
        progress,
        keep_older: root.section.on_change == beamflow_config::OnChange::Resubmit,
        partial: false,
    }
}

/// The rules a folder is pushed under: a folder under a watch root uses that root's rules
/// and prefix; any other folder uses the first root's rules and is named by its own name.
fn root_for(cfg: &Config, dir: &Path) -> Result<Root> {
    let under = cfg
        .watch
        .iter()
        .find(|w| w.path.canonicalize().is_ok_and(|c| dir.starts_with(c)));
    Ok(match under {
        Some(w) => Root::new(w)?,
        None => {
            let base = cfg.watch.first().cloned().unwrap_or_else(default_watch);
            let parent = dir.parent().unwrap_or(dir).to_path_buf();
            Root::new(&WatchSection {
                path: parent,
                ..base
            })?
        }
    })
}

/// The folder's images, refused when there are none or fewer than `min_images`.
fn scan_stack(root: &Root, dir: &Path) -> Result<crate::stack::scan::DirScan> {
    let scan = root
        .scan(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?;
    if scan.images.is_empty() {
        bail!(
            "{} holds no files matching \"{}\"",
            dir.display(),
            root.section.pattern
        );
    }
    if (scan.images.len() as u32) < root.rules.min_images {
        bail!(
            "{} holds {} image(s); a stack needs at least {} (min_images)",
            dir.display(),
            scan.images.len(),
            root.rules.min_images
        );
    }
    Ok(scan)
}

/// A stack held for files that are not whole TIFFs, each named with what is wrong.
fn not_whole(dir: &Path, faults: &[(String, String)]) -> anyhow::Error {
    let list: Vec<String> = faults.iter().map(|(f, e)| format!("  {f}: {e}")).collect();
    held(format!(
        "not sending {}: {} file(s) are not whole TIFFs:\n{}",
        dir.display(),
        faults.len(),
        list.join("\n")
    ))
}

/// The journal's row for this push: a submitted stack whose bytes changed (`known` then
/// `files`) becomes its next version.
fn version_for(
    journal: &mut Journal,
    dir_s: &str,
    name: &str,
    root: &Root,
    (known, files): (
        &[crate::stack::images::FileRecord],
        &[crate::stack::images::FileRecord],
    ),
) -> Result<crate::journal::StackRecord> {
    let rec = journal.ensure_stack(dir_s, name, &root.section.workflow)?;
    if rec.state != StackState::Submitted {
        return Ok(rec);
    }
    let same = known.len() == files.len()
        && known
            .iter()
            .zip(files)
            .all(|(a, b)| a.name == b.name && a.blake3 == b.blake3);
    if same {
        return Ok(rec);
    }
    journal.next_version(rec.id)?;
    journal
        .stack(dir_s)?
        .context("stack vanished from the journal")
}

#[allow(clippy::too_many_arguments)]
async fn send_with_retries(
    cfg: &Config,
    journal: &mut Journal,
    rec: &crate::journal::StackRecord,
    mut job: Job,
    attempts: u32,
    mut master: Option<&mut Master>,
    early: Vec<crate::link::Link>,
    root: &Root,
) -> Result<Pushed> {
    let mut early = Some(early);
    let name = job.name.clone();
    let backoff = Backoff::of(cfg);
    let mut wait = backoff.initial;
    let attempts = attempts.max(1);
    for attempt in 1..=attempts {
        let ctl = match master.as_deref_mut() {
            None => None,
            Some(m) => match m.ensure().await {
                Ok(p) => Some(p),
                Err(e) => {
                    let d = lifecycle::link_down(&e.to_string(), wait);
                    journal.set_state(rec.id, d.state, &d.reason)?;
                    let down = "the SSH master is down";
                    if attempt == attempts {
                        return Err(failed(e, Exit::Unreachable, down, &name));
                    }
                    let again = humantime::format_duration(wait);
                    tracing::warn!("attempt {attempt}: {e}; retrying in {again}");
                    tokio::time::sleep(wait).await;
                    wait = backoff.after(wait);
                    continue;
                }
            },
        };
        tracing::debug!("link ready");
        journal.set_state(rec.id, StackState::Sending, "")?;
        if let Some(p) = &job.progress {
            // each attempt counts the stack afresh (what is already there counts as done),
            // so a retry never shows more files than the stack holds
            p.restart();
        }
        let (c, j, links) = (cfg.clone(), job.clone(), early.take().unwrap_or_default());
        let report =
            tokio::task::spawn_blocking(move || transfer::send(&c, &j, ctl.as_deref(), links))
                .await?;
        let decision = report.record(journal, rec.id, wait)?;
        let err = match report.result {
            Ok(ref acc) => {
                let sizes = (
                    job.files.len() as u64,
                    job.files.iter().map(|f| f.size).sum(),
                );
                return Ok(Pushed::of((&job.name, rec.version), sizes, &report, acc));
            }
            Err(e) => e,
        };
        let last = attempt == attempts;
        match decision.next {
            Next::Done => unreachable!("only an accepted DAG is done"),
            Next::Hold => {
                let name = format!("{name} after {attempt} attempt(s)");
                return Err(failed(
                    err,
                    Exit::Held,
                    "the stack is held for a person",
                    &name,
                ));
            }
            _ if last => {
                let name = format!("{name} after {attempt} attempt(s)");
                return Err(failed(
                    err,
                    Exit::Unreachable,
                    "the far side did not answer",
                    &name,
                ));
            }
            Next::RetryIn(w) => {
                tracing::warn!("attempt {attempt} failed: {}", decision.reason);
                tokio::time::sleep(w).await;
                wait = backoff.after(w);
            }
            Next::SettleAgain => {
                // what the daemon does after settling again, at once: hash what is there now
                tracing::warn!(
                    "attempt {attempt}: {}; hashing the folder again",
                    decision.reason
                );
                job.files = rehash(root, &job.dir).await?;
                journal.queue(rec.id, &job.files)?;
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// A push that failed: the error, what it means for the exit code, and which push.
fn failed(
    e: impl std::error::Error + Send + Sync + 'static,
    exit: Exit,
    verdict: &str,
    push: &str,
) -> anyhow::Error {
    anyhow::Error::new(e)
        .context(Verdict::new(exit, verdict))
        .context(format!("push of {push} failed"))
}

/// What the daemon does after settling again, at once: hash what is there now.
async fn rehash(root: &Root, dir: &Path) -> Result<Vec<crate::stack::images::FileRecord>> {
    let scan = root
        .scan(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?;
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || hash_files(&d, &scan, &[]))
        .await?
        .with_context(|| format!("cannot read the images in {}", dir.display()))
}

/// Brings up the master and `k` far ends; whatever fails here is tried again, and reported,
/// by the send itself.
async fn warm_up(cfg: &Config, master: Option<&mut Master>, k: usize) -> Vec<crate::link::Link> {
    let ctl = match master {
        None => None,
        Some(m) => match m.ensure().await {
            Ok(p) => Some(p),
            Err(_) => return Vec::new(),
        },
    };
    let c = cfg.clone();
    tokio::task::spawn_blocking(move || transfer::open_links(&c, ctl.as_deref(), k))
        .await
        .unwrap_or_default()
}

fn default_watch() -> WatchSection {
    let cfg = Config::parse("[[watch]]\npath = \".\"\n", Path::new("(defaults)"))
        .expect("built-in defaults parse");
    cfg.watch[0].clone()
}

/// An error that holds the stack for a person (exit 3).
fn held(message: String) -> anyhow::Error {
    Verdict::new(Exit::Held, message).into()
}

/// `beamflow-agent push`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: std::path::PathBuf,
    /// The folder holding the images.
    pub dir: std::path::PathBuf,
    /// Attempts before giving up on transient failures (collector down, link broken).
    #[arg(long, default_value_t = 4)]
    pub attempts: u32,
}

/// `beamflow-agent push`: one folder now, with its progress, until its DAG is accepted.
pub fn main(args: Args) -> Result<beamflow_program::Exit> {
    use crate::commands::status::human_bytes;
    let cfg = Config::load(&args.config)?;
    beamflow_program::logs::init(cfg.agent.log_format, "warn");
    let rt = beamflow_program::runtime().context("failed to start the async runtime")?;
    let progress = std::sync::Arc::new(transfer::Progress::default());
    let p = rt.block_on(async {
        let shown = tokio::spawn(show_progress(progress.clone()));
        let r = push(&cfg, &args.dir, args.attempts, Some(progress.clone())).await;
        shown.abort();
        r
    })?;
    beamflow_program::sayln!(
        "{} v{}: {} files, {} ({} sent, {} already there), {:.2} s; DAG {} with {} jobs{}",
        p.stack,
        p.version,
        p.files,
        human_bytes(p.bytes),
        human_bytes(p.wire_bytes),
        p.same,
        p.secs,
        p.remote_id,
        p.jobs,
        if p.created {
            ""
        } else {
            " (registered before; nothing new created)"
        }
    );
    Ok(beamflow_program::Exit::Done)
}

/// Shows a push's progress: a bar (files, bytes, rate, ETA) on a terminal, plain lines (the
/// first once the stack is hashed, then every five seconds) otherwise. Runs until aborted.
async fn show_progress(p: std::sync::Arc<transfer::Progress>) {
    use crate::commands::status::human_bytes;
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;
    let tty = std::io::stderr().is_terminal();
    let start = std::time::Instant::now();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut last_line: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(if tty { 100 } else { 250 })).await;
        let (total, files) = (p.total_bytes.load(Relaxed), p.total_files.load(Relaxed));
        if files == 0 {
            continue; // still scanning and hashing
        }
        let (done, done_files) = (p.bytes.load(Relaxed), p.files.load(Relaxed));
        if tty {
            let b = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(total);
                let style = indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                b.set_style(style);
                b
            });
            b.set_position(done.min(total));
            b.set_message(format!("{done_files}/{files} files"));
        } else if last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            last_line = Some(std::time::Instant::now());
            let rate = done as f64 / start.elapsed().as_secs_f64().max(0.001) / 1e6;
            beamflow_program::complain!(
                "push: {done_files}/{files} files, {} of {}, {rate:.1} MB/s",
                human_bytes(done),
                human_bytes(total)
            );
        }
    }
}
