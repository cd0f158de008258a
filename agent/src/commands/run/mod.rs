//! `beamflow-agent run`: one loop owns the state.
//!
//! Filesystem events, rescans, deadlines and transfer completions all arrive at one `select!`
//! loop, which alone writes the journal. It sleeps until an event or the next deadline its
//! decisions named (a settle period ending, a retry, a far end to close): nothing ticks.
//! On start it rescans every watch root and reconciles with the journal before it trusts any
//! event: stacks that were being sent are sent again (the collector answers "same" for what
//! it holds), submitted stacks are not submitted twice, and stacks that changed after
//! submission become a new version. Up to `[link] max_stacks` stacks are in flight at once
//! over far ends kept open between stacks (the warm link).

mod decide;
mod flight;
mod folders;
mod pushed;
mod side;
mod start;
mod stream;
mod tracked;

use folders::UNNAMED_KEY;
use tracked::{changed_at, same_files, Tracked};

use crate::journal::{FileRecord, Journal, StackState};
use crate::link::transfer::{self, Job, Report};
use crate::stack::images::hash_files;
use crate::stack::lifecycle::{self, Backoff, Next};
use crate::stack::root::Root;
use crate::stack::scan::{stack_dirs, DirScan};
use crate::stack::watch;
use crate::stack::{decide, Observed, Verdict};
use anyhow::Context;
use beamflow_config::notify::NotifyEvent;
use beamflow_config::{Config, OnChange, WatchMode};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the daemon's loop receives.
#[derive(Debug)]
pub enum Msg {
    /// Something changed at this path.
    Fs(PathBuf),
    /// Events were lost: rescan everything.
    Rescan,
    /// A transfer ended; the far ends it used, still open, for the next stack.
    Done(PathBuf, Box<Report>, Vec<crate::link::Link>),
    /// Checking and hashing a finished stack's images ended.
    Checked(PathBuf, Box<crate::stack::images::Checked>),
    /// Hashing a settling stack's images ahead of its finish ended.
    Hashed(
        PathBuf,
        std::io::Result<Vec<crate::stack::images::FileRecord>>,
    ),
    /// Sending a settling stack's sections ahead ended (and streaming them, if due).
    SentAhead(PathBuf, Box<flight::AheadDone>),
    /// Removing a vanished stack's partial copy ended (its folder, journal id, outcome).
    Discarded(PathBuf, i64, crate::link::transfer::Discard),
    /// The collector said where these stacks' DAGs are: (journal id, remote id, outcome),
    /// or why it could not be asked.
    Outcomes(
        Result<Vec<(i64, i64, beamflow_protocol::api::DagOutcome)>, crate::link::far::FarError>,
    ),
    /// The collector answered for a streamed stack abandoned after `max_wait`: (journal id,
    /// remote name, the `max_wait` it was given, how many jobs it cancelled or why not).
    Abandoned(
        i64,
        String,
        String,
        Result<beamflow_protocol::api::AbandonResponse, crate::link::far::FarError>,
    ),
    /// `beamflow-agent push` named a folder; its answers go back through the sender.
    Push(PathBuf, mpsc::UnboundedSender<crate::handoff::Answer>),
    /// Fetching a stack's results ended: (journal id, remote id, files and bytes, or why not).
    Results(
        i64,
        i64,
        Result<(usize, u64, String), crate::link::far::FarError>,
    ),
}

/// `beamflow-agent run`'s arguments: the config file.
pub type Args = beamflow_program::config::ConfigFile;

/// `beamflow-agent run`: the daemon, until SIGTERM; systemd hears when it is ready.
pub fn main(args: Args) -> anyhow::Result<beamflow_program::Exit> {
    let cfg = Config::load(&args.config)?;
    beamflow_program::logs::init(cfg.agent.log_format, "info");
    let rt = beamflow_program::runtime().context("failed to start the async runtime")?;
    let status = format!("STATUS=watching {} root(s)", cfg.watch.len());
    let ready = move || {
        crate::systemd::notify(&format!("READY=1\n{status}"));
    };
    let result = rt.block_on(run(cfg, beamflow_program::shutdown(), ready));
    // a transfer thread still running is abandoned: its link dies with us and the journal
    // resumes it at the next start
    rt.shutdown_timeout(Duration::from_secs(2));
    result?;
    Ok(beamflow_program::Exit::Done)
}

/// Why the daemon stopped before it was told to: each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon holds the journal, or its lock could not be taken.
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
    /// The journal could not be opened, read or written.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// A watch root cannot be watched.
    #[error(transparent)]
    Root(#[from] crate::stack::root::RootError),
    /// Nothing to watch.
    #[error("no [[watch]] section in the config: nothing to watch; add one with a path")]
    NoWatch,
}

/// The daemon's decisions end early only for what a person must mend.
type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// The metrics file is written at most this often for accepted stacks (the slow timer
/// writes it too).
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// When the metrics file, last written at `written`, may be written again: `None` for now.
fn metrics_wait(written: Option<Instant>, now: Instant) -> Option<Instant> {
    written
        .map(|at| at + METRICS_EVERY)
        .filter(|&next| next > now)
}

/// How long filesystem events gather before the folders they name are looked at: a file
/// written in many pieces is one look, not one per write.
const GATHER: Duration = Duration::from_millis(25);

/// Moves `wake` to `at` if that is earlier.
fn earliest(wake: &mut Option<Instant>, at: Instant) {
    if wake.is_none_or(|w| at < w) {
        *wake = Some(at);
    }
}

/// The daemon's state: owned by its loop alone.
pub struct Daemon {
    cfg: Arc<Config>,
    journal: Journal,
    roots: Vec<Root>,
    stacks: HashMap<PathBuf, Tracked>,
    dirty: HashSet<PathBuf>,
    walk: HashSet<PathBuf>,
    /// Stacks being sent (or their partial copy removed), at most `[link] max_stacks`.
    active: HashSet<PathBuf>,
    /// Far ends each stack in flight holds.
    in_use: HashMap<PathBuf, usize>,
    /// Finished stacks waiting for a free slot, with their order: the time their images last
    /// changed, oldest first (the same order at a cold start as live).
    ready: flight::Ready,
    /// Far ends kept open between stacks (the warm link), most recently used last, each with
    /// when it was last used; they run over the master socket `pool_ctl`.
    pool: Vec<(crate::link::Link, Instant)>,
    pool_ctl: Option<PathBuf>,
    /// When the loop next looks at the folders events named (events gather a moment first).
    soon: Option<Instant>,
    /// The next deadline a decision waits for: a settle period ending, a retry, a far end
    /// to close. The loop sleeps until then or until an event; nothing ticks.
    wake: Option<Instant>,
    /// The reconcile at start: stacks found now are timed from their files' own times.
    starting: bool,
    /// Stacks this round has yet to decide about: each may finish and want far ends too.
    undecided: usize,
    /// Finished stacks whose images are being checked and hashed off the loop, with the
    /// time their images last changed (a newer stack does not start before them).
    checking: HashMap<PathBuf, i64>,
    tx: mpsc::UnboundedSender<Msg>,
    /// The SSH master, for transport `ssh`.
    master: Option<crate::link::ssh::Master>,
    master_down: bool,
    /// Vanished stacks whose partial copy could not be removed yet: when to try again, and
    /// the wait after that.
    discard_retry: HashMap<i64, (Instant, Duration)>,
    /// Some stack may be waiting for its partial copy to be removed: only then is the journal
    /// read for them (true at start, for those left from before a restart).
    discards_pending: bool,
    /// A question about DAG outcomes is out: no second one until it is answered.
    asking: bool,
    /// A streamed stack past `max_wait` is being abandoned at the collector: one at a time.
    abandoning: bool,
    /// What `[agent] metrics_file` gets.
    metrics: crate::metrics::Metrics,
    /// When the metrics file was last written, and whether a write was put off since.
    metrics_written: Option<Instant>,
    metrics_owed: bool,
    /// A stack's results are being fetched: no second fetch until it ends.
    fetching: bool,
    /// Where news goes (`[[notify]]`); none without targets.
    news: Option<crate::notify::Post>,
    /// Since when the SSH master has been down (for `link_down` news).
    down_since: Option<(Instant, std::time::SystemTime)>,
    /// When each watch root last saw a change (for `silent` news).
    activity: Vec<std::time::SystemTime>,
    /// Folders of images that cannot be sent under their names, held in the journal (their rows' ids): a
    /// row is marked gone once its folder is.
    unsendable_held: HashMap<PathBuf, i64>,
    /// Stacks whose sections are being sent ahead of their finish (one transfer each).
    ahead: HashSet<PathBuf>,
    /// Those waiting for a pushed stack's end, by its remote name.
    waiting_push: HashMap<String, Vec<mpsc::UnboundedSender<crate::handoff::Answer>>>,
}

/// Runs the daemon until `shutdown` completes. `ready` is called once the first reconcile is
/// done (systemd's READY=1 belongs there).
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<()> {
    // held until the daemon returns: one daemon per journal
    let _instance = crate::instance::claim(&cfg.agent.state_dir)?;
    let journal = Journal::open(&cfg.agent.state_dir)?;
    if cfg.watch.is_empty() {
        return Err(DaemonError::NoWatch);
    }
    let roots = cfg
        .watch
        .iter()
        .map(Root::new)
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut d = Daemon::new(cfg, journal, roots, tx.clone());
    // watchers first, so nothing written during the reconcile scan is missed
    let (_watcher, polled) = d.start_watching(&tx);
    // the door for `push`: a folder it names rides this daemon's warm link
    let door = crate::handoff::socket_path(&d.cfg.agent.state_dir);
    let to_loop = tx.clone();
    if let Err(e) = crate::handoff::listen(&door, move |dir, reply| {
        let _ = to_loop.send(Msg::Push(dir, reply));
    }) {
        tracing::warn!("{e}; `beamflow-agent push` sends folders itself");
    }
    d.reconcile().await?;
    tracing::info!(roots = d.roots.len(), stacks = d.stacks.len(), "watching");
    ready();
    d.serve(shutdown, &mut rx, &polled).await?;
    d.stop().await;
    Ok(())
}

impl Daemon {
    /// The loop: sleeps until an event, a timer or the next deadline the decisions named, and
    /// hands each to the daemon, until `shutdown`.
    async fn serve(
        &mut self,
        shutdown: impl Future<Output = ()>,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        polled: &[usize],
    ) -> Result<()> {
        let mut t = start::Timers::new(self, polled);
        tokio::pin!(shutdown);
        loop {
            let next = match (self.soon, self.wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if next.is_some_and(|at| at <= Instant::now()) {
                // due already: the timer would round up to its next millisecond, and a stack
                // whose transfer just ended would leave its slot empty that long
                self.step().await?;
                continue;
            }
            let deadline = async move {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                // before the events: a flood of them must not hold decisions back
                _ = deadline => self.step().await?,
                Some(msg) = rx.recv() => self.handle(msg).await?,
                _ = t.poll.tick(), if !polled.is_empty() => {
                    for &i in polled {
                        let root = self.roots[i].canon.clone();
                        self.walk_root(&root);
                    }
                    self.poke(Duration::ZERO);
                }
                _ = t.rescan.tick() => {
                    self.full_rescan();
                    self.poke(Duration::ZERO);
                }
                _ = t.watchdog.tick(), if self.master.is_some() => self.watchdog().await,
                _ = t.outcomes.tick() => {
                    self.write_metrics();
                    self.silence()?;
                    if !self.asking {
                        self.ask_outcomes().await?;
                    }
                    if !self.abandoning {
                        self.abandon_overdue(Instant::now()).await?;
                    }
                }
                _ = t.systemd.tick(), if t.systemd_on => {
                    crate::systemd::notify("WATCHDOG=1");
                }
            }
        }
    }

    /// Looks at the folders events named, and decides, `after` from now (or sooner if
    /// already due).
    fn poke(&mut self, after: Duration) {
        earliest(&mut self.soon, Instant::now() + after);
    }

    async fn handle(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Fs(path) => self.changed_path(path),
            Msg::Rescan => {
                tracing::warn!("filesystem event queue overflowed; rescanning every watch root");
                self.full_rescan();
                self.poke(Duration::ZERO);
            }
            Msg::Done(dir, report, links) => {
                self.finished(dir, *report, links)?;
                self.poke(Duration::ZERO);
            }
            Msg::Checked(dir, c) => self.checked(&dir, *c)?,
            Msg::Hashed(dir, r) => self.hashed(&dir, r),
            Msg::SentAhead(dir, done) => self.sent_ahead(&dir, *done)?,
            Msg::Discarded(dir, id, outcome) => {
                self.active.remove(&dir);
                self.discarded(id, outcome)?;
                self.poke(Duration::ZERO);
            }
            Msg::Outcomes(answer) => {
                self.outcomes(answer)?;
                self.fetch_results().await?;
                self.free_done()?;
            }
            Msg::Results(id, remote, r) => self.results_fetched(id, remote, r)?,
            Msg::Abandoned(id, name, after, r) => self.abandoned(id, &name, &after, r)?,
            Msg::Push(dir, reply) => self.handed(dir, reply)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{write_tiff, Section};

    #[test]
    fn the_metrics_file_is_written_at_most_once_a_second() {
        let now = Instant::now();
        assert_eq!(metrics_wait(None, now), None);
        let written = now - Duration::from_millis(300);
        assert_eq!(
            metrics_wait(Some(written), now),
            Some(now + Duration::from_millis(700))
        );
        assert_eq!(metrics_wait(Some(now - METRICS_EVERY), now), None);
    }

    #[test]
    fn a_stack_found_at_start_is_timed_from_its_files() {
        let now = Instant::now();
        let wall = std::time::SystemTime::now();
        let scan_at = |t: std::time::SystemTime| DirScan {
            changed_ns: t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64,
            ..DirScan::default()
        };
        let ten = changed_at(&scan_at(wall - Duration::from_secs(10)), now);
        let quiet = now - ten;
        assert!(
            quiet >= Duration::from_secs(10) && quiet < Duration::from_secs(11),
            "{quiet:?}"
        );
        // a file from the future (a skewed clock) has just changed, not long ago
        assert_eq!(
            changed_at(&scan_at(wall + Duration::from_secs(60)), now),
            now
        );
        // a file from long ago is a week old on the loop's clock, or as old as that clock
        // reaches (a host booted less than a week ago)
        let old = changed_at(&DirScan::default(), now);
        let back = now - old;
        assert!(
            back == Duration::from_secs(7 * 86_400)
                || now.checked_sub(back + Duration::from_millis(2)).is_none(),
            "{back:?}"
        );
    }

    /// The daemon's loop under a paused clock: a quiet stack is finished exactly when
    /// `settle` has passed on the loop's clock, and a far end that cannot start is retried
    /// with the configured backoff, doubling up to `retry_max` (not a cap of its own). A
    /// second stack appearing meanwhile (a round of decisions that does not look at the first)
    /// does not move the first one's deadline. The 30 s settle and the retries take no real
    /// time.
    #[tokio::test(start_paused = true)]
    async fn settle_and_backoff_follow_the_loop_s_clock() {
        // images written long ago (by the wall clock, which the paused one does not move) are
        // hashed ahead at once: no deadline but settle's calls the stack back
        let old_mtime = |p: &Path| {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
                .unwrap();
        };
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("incoming");
        let stack = root.join("s1");
        std::fs::create_dir_all(&stack).unwrap();
        for i in 0..3 {
            let s = Section {
                width: 32,
                height: 32,
                seed: i,
                big: false,
                rows_per_strip: 8,
            };
            write_tiff(&stack.join(format!("S_{i}.tif")), &s).unwrap();
            old_mtime(&stack.join(format!("S_{i}.tif")));
        }
        // setting the mtime moved the ctime to now, and the stack is timed from the later of
        // the two: settle counts from this real instant, which a loaded machine puts a moment
        // before the loop's first look
        let changed = std::time::Instant::now();
        let at = |p: &str| format!("\"{}\"", d.path().join(p).display());
        let text = beamflow_config::EMBEDDED_LOCAL
            .replace("\"./incoming\"", &at("incoming"))
            .replace("\"./state\"", &at("state"))
            .replace("\"./remote\"", &at("remote"))
            .replace("\"./work\"", &at("work"))
            .replace("retry_max = \"5m\"", "retry_max = \"4s\"")
            .replace(
                "[link]\n",
                "[link]\ncommand = [\"/nonexistent/beamflow-collector\", \"serve\"]\n",
            );
        let cfg = Config::parse(&text, &d.path().join("beamflow.toml")).unwrap();
        assert_eq!(cfg.watch[0].settle.0, Duration::from_secs(30));
        let state = d.path().join("state");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let start = Instant::now();
        let watch = async {
            let mut seen: Vec<(Duration, String, String)> = Vec::new();
            let mut journal = None;
            let mut other = false;
            while start.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !other && start.elapsed() > Duration::from_secs(5) {
                    other = true;
                    let s2 = root.join("s2");
                    std::fs::create_dir_all(&s2).unwrap();
                    let s = Section {
                        width: 8,
                        height: 8,
                        seed: 9,
                        big: false,
                        rows_per_strip: 8,
                    };
                    write_tiff(&s2.join("S_0.tif"), &s).unwrap();
                    old_mtime(&s2.join("S_0.tif"));
                }
                if journal.is_none() {
                    journal = Journal::open_read_only(&state).ok();
                }
                let Some(j) = journal.as_ref() else { continue };
                let Some(r) = j.stack(&stack.display().to_string()).unwrap() else {
                    continue;
                };
                let now = (r.state.as_str().to_string(), r.reason.clone());
                if seen
                    .last()
                    .is_none_or(|(_, s, why)| (s, why) != (&now.0, &now.1))
                {
                    seen.push((start.elapsed(), now.0, now.1));
                }
            }
            let _ = stop.send(());
            seen
        };
        let (result, seen) = tokio::join!(
            run(
                cfg,
                async {
                    let _ = stopped.await;
                },
                || {}
            ),
            watch
        );
        result.unwrap();
        // waiting until settle has passed on the loop's clock, not a moment before
        let first_queued = seen
            .iter()
            .find(|(_, s, _)| s != "waiting")
            .unwrap_or_else(|| panic!("never left waiting: {seen:?}"));
        let late = changed.elapsed();
        assert!(
            first_queued.0 + late >= Duration::from_secs(30)
                && first_queued.0 < Duration::from_millis(30_500),
            "finished at {:?} ({late:?} of real time after the files changed): {seen:?}",
            first_queued.0
        );
        // then retried with waits of 1, 2, 4, 4 … seconds: an uncapped backoff would say 8s at
        // 37 s (equal reasons in a row show once, so the repeats of 4s are not counted)
        let waits: Vec<&str> = seen
            .iter()
            .filter_map(|(_, _, why)| why.rsplit_once("retrying in ").map(|(_, w)| w))
            .collect();
        assert!(waits.len() >= 3, "{seen:?}");
        assert_eq!(waits[..3], ["1s", "2s", "4s"], "{seen:?}");
        assert!(waits[3..].iter().all(|w| *w == "4s"), "{seen:?}");
        assert!(
            seen.iter()
                .any(|(_, _, why)| why.contains("/nonexistent/beamflow-collector")),
            "the reason names the far end it could not start: {seen:?}"
        );
    }
}
