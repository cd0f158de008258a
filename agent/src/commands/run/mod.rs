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

mod flight;
mod side;

use crate::journal::{FileRecord, Journal, StackState};
use crate::link::transfer::{self, Job, Report};
use crate::stack::images::hash_files;
use crate::stack::lifecycle::{self, Backoff, Next};
use crate::stack::root::Root;
use crate::stack::scan::{stack_dirs, DirScan};
use crate::stack::watch;
use crate::stack::{decide, Observed, Verdict};
use anyhow::{Context, Result};
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
        Result<Vec<crate::stack::images::FileRecord>, String>,
    ),
    /// Removing a vanished stack's partial copy ended (its folder, journal id, outcome).
    Discarded(PathBuf, i64, crate::link::transfer::Discard),
    /// The collector said where these stacks' DAGs are: (journal id, remote id, outcome),
    /// or why it could not be asked.
    Outcomes(
        Result<Vec<(i64, i64, beamflow_protocol::api::DagOutcome)>, crate::link::far::FarError>,
    ),
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
    result.map(|()| beamflow_program::Exit::Done)
}

struct Tracked {
    root: usize,
    scan: DirScan,
    last_change: Instant,
    first_seen: Instant,
    /// Structural check results by file name, valid while (size, mtime) match.
    checks: HashMap<String, (u64, i64, Option<String>)>,
    warned: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    ignored: bool,
    /// Held because the collector refused it: stays held until its files change.
    refused: bool,
    /// Hash every file again at the next finish, not trusting journaled hashes (a file changed
    /// in a way its size and mtime did not show).
    rehash: bool,
    /// When it was decided finished (for the stage latencies in the metrics).
    finished_at: Option<std::time::SystemTime>,
    /// Nothing can move it until its files change (submitted, freed, gone, as the journal
    /// said when it was last considered): rounds of decisions skip it, so an idle tree of
    /// many submitted stacks costs no journal reads. Cleared by a change, and by the slow rescan.
    quiet: bool,
    /// Not considered yet since it was first seen (at start: a held stack's reason is kept).
    fresh: bool,
    /// A quiet stack waiting for a deadline (settle, max_wait) is looked at again then.
    due: Option<Instant>,
    /// Hashes of its images taken while it settles (valid while name, size and mtime match):
    /// when it finishes, its files are offered at once instead of after hashing them all.
    hashed: HashMap<String, FileRecord>,
    /// Hashing ahead is under way.
    hashing: bool,
    /// How many of its images had been hashed ahead when its final check started (for the log).
    ahead: usize,
}

/// How long an image must have been left alone before it is hashed ahead of the stack's
/// finish (a file still being written would be hashed for nothing).
const HASH_AHEAD_AFTER: Duration = Duration::from_secs(1);

/// The metrics file is written at most this often for accepted stacks (the slow timer
/// writes it too).
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// When the metrics file, last written at `written`, may be written again: `None` for now.
fn metrics_wait(written: Option<Instant>, now: Instant) -> Option<Instant> {
    written
        .map(|at| at + METRICS_EVERY)
        .filter(|&next| next > now)
}

/// Finished stacks checked and hashed at once, off the loop (each hashes a large stack on
/// all cores).
const CHECKS_AT_ONCE: usize = 2;

/// How long filesystem events gather before the folders they name are looked at: a file
/// written in many pieces is one look, not one per write.
const GATHER: Duration = Duration::from_millis(25);

/// Moves `wake` to `at` if that is earlier.
fn earliest(wake: &mut Option<Instant>, at: Instant) {
    if wake.is_none_or(|w| at < w) {
        *wake = Some(at);
    }
}

/// When a stack's images last changed, on the loop's clock, from the files' own times (the
/// later of mtime and ctime): a stack found at start whose files have been quiet for
/// `settle` is decided at once rather than after another `settle`.
fn changed_at(scan: &DirScan, now: Instant) -> Instant {
    let newest = std::time::UNIX_EPOCH + Duration::from_nanos(scan.changed_ns.max(0) as u64);
    let age = std::time::SystemTime::now()
        .duration_since(newest)
        .unwrap_or_default()
        .min(Duration::from_secs(7 * 86_400));
    if let Some(t) = now.checked_sub(age) {
        return t;
    }
    // the loop's clock does not reach back that far (a host booted after the files were
    // written): as far back as it goes
    let (mut lo, mut hi) = (Duration::ZERO, age);
    while hi - lo > Duration::from_millis(1) {
        let mid = lo + (hi - lo) / 2;
        if now.checked_sub(mid).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    now - lo
}

impl Tracked {
    /// What the rules decide on: its images as last scanned, with the faults found (none
    /// before its check), at `now` on the loop's clock.
    fn observed(&self, now: Instant, invalid: Vec<(String, String)>) -> Observed {
        Observed {
            images: self.scan.images.len() as u32,
            marker: self.scan.marker,
            quiet_for: now - self.last_change,
            seen_for: now - self.first_seen,
            invalid,
        }
    }

    /// Whether `f`, as it is now, was hashed while the stack settled.
    fn hashed_ahead(&self, f: &crate::stack::scan::FileSeen) -> bool {
        self.hashed
            .get(&f.name)
            .is_some_and(|h| h.size == f.size && h.mtime_ns == f.mtime_ns)
    }
}

fn same_files(scan: &DirScan, files: &[FileRecord]) -> bool {
    scan.images.len() == files.len()
        && scan
            .images
            .iter()
            .zip(files)
            .all(|(a, b)| a.name == b.name && a.size == b.size && a.mtime_ns == b.mtime_ns)
}

/// What the journal key of a folder that cannot be sent under its name starts with: never an absolute
/// path, so never the key of a folder that can be sent.
const UNNAMED_KEY: &str = "unsendable:";

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
    anyhow::ensure!(
        !cfg.watch.is_empty(),
        "no [[watch]] section in the config: nothing to watch; add one with a path"
    );
    let roots = cfg
        .watch
        .iter()
        .map(Root::new)
        .collect::<Result<Vec<_>>>()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (cfg_transport, cfg_link) = (cfg.link.transport, cfg.link.clone());
    let mut d = Daemon {
        cfg: Arc::new(cfg),
        journal,
        roots,
        stacks: HashMap::new(),
        dirty: HashSet::new(),
        walk: HashSet::new(),
        active: HashSet::new(),
        in_use: HashMap::new(),
        ready: flight::Ready::default(),
        pool: Vec::new(),
        pool_ctl: None,
        soon: None,
        wake: None,
        starting: true,
        undecided: 0,
        checking: HashMap::new(),
        tx: tx.clone(),
        master: (cfg_transport == beamflow_config::Transport::Ssh)
            .then(|| crate::link::ssh::Master::for_daemon(&cfg_link)),
        master_down: false,
        discard_retry: HashMap::new(),
        discards_pending: true,
        asking: false,
        metrics: crate::metrics::Metrics::new(),
        metrics_written: None,
        metrics_owed: false,
        fetching: false,
        news: None,
        down_since: None,
        activity: Vec::new(),
        unsendable_held: HashMap::new(),
    };
    if !d.cfg.notify.is_empty() {
        d.news = Some(crate::notify::Post::new(
            d.cfg.notify.clone(),
            d.cfg.agent.retry_initial.0,
        ));
    }
    d.activity = vec![std::time::SystemTime::now(); d.roots.len()];
    // watchers first, so nothing written during the reconcile scan is missed
    let inotify: Vec<PathBuf> = d
        .roots
        .iter()
        .filter(|r| r.section.mode == WatchMode::Inotify)
        .map(|r| r.canon.clone())
        .collect();
    let (_watcher, fallback) = watch::start(&inotify, {
        let tx = tx.clone();
        move |e| {
            let _ = tx.send(match e {
                watch::Event::Changed(p) => Msg::Fs(p),
                watch::Event::Rescan => Msg::Rescan,
            });
        }
    });
    let polled: Vec<usize> = d
        .roots
        .iter()
        .enumerate()
        .filter(|(_, r)| r.section.mode == WatchMode::Poll || fallback.contains(&r.canon))
        .map(|(i, _)| i)
        .collect();
    d.full_rescan();
    d.step().await?;
    d.starting = false;
    // stacks journaled before a stop whose folders went away meanwhile
    for rec in d.journal.stacks()? {
        if rec.dir.starts_with(UNNAMED_KEY) {
            // not a path: the walk above found those still there
            if rec.state == StackState::Held && !d.unsendable_held.values().any(|id| *id == rec.id)
            {
                d.journal.set_state(
                    rec.id,
                    StackState::Gone,
                    "the folder is gone (renamed or removed); nothing of it had been sent",
                )?;
            }
            continue;
        }
        let dir = PathBuf::from(&rec.dir);
        if !d.stacks.contains_key(&dir) && !dir.exists() {
            d.vanished(&dir)?;
        }
    }
    // each root's last activity: its newest image, or the root folder's own last change
    for (i, r) in d.roots.iter().enumerate() {
        let folder = std::fs::metadata(&r.canon)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        let newest = d
            .stacks
            .iter()
            .filter(|(_, t)| t.root == i)
            .flat_map(|(_, t)| t.scan.images.iter())
            .map(|f| std::time::UNIX_EPOCH + Duration::from_nanos(f.mtime_ns.max(0) as u64))
            .max()
            .unwrap_or(std::time::UNIX_EPOCH);
        d.activity[i] = folder.max(newest);
    }
    tracing::info!(roots = d.roots.len(), stacks = d.stacks.len(), "watching");
    ready();

    let poll_every = polled
        .iter()
        .map(|&i| d.roots[i].section.poll_interval.0)
        .min()
        .unwrap_or(Duration::from_secs(3600));
    let mut poll = tokio::time::interval(poll_every);
    let mut rescan = tokio::time::interval(d.cfg.agent.rescan.0);
    let mut watchdog = tokio::time::interval(d.cfg.link.keepalive.0.max(Duration::from_secs(1)));
    let mut outcomes =
        tokio::time::interval(d.cfg.agent.outcome_every.0.max(Duration::from_millis(100)));
    // systemd's watchdog is fed from this loop, so a wedged loop gets the unit restarted
    let sd_every = crate::systemd::watchdog_interval();
    let mut sd_watchdog = tokio::time::interval(sd_every.unwrap_or(Duration::from_secs(3600)));
    for t in [&mut poll, &mut rescan, &mut watchdog, &mut outcomes] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    rescan.reset(); // the reconcile was the first rescan
    tokio::pin!(shutdown);
    loop {
        let next = match (d.soon, d.wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next.is_some_and(|at| at <= Instant::now()) {
            // due already: the timer would round up to its next millisecond, and a stack
            // whose transfer just ended would leave its slot empty that long
            d.step().await?;
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
            _ = &mut shutdown => break,
            // before the events: a flood of them must not hold decisions back
            _ = deadline => d.step().await?,
            Some(msg) = rx.recv() => d.handle(msg).await?,
            _ = poll.tick(), if !polled.is_empty() => {
                for &i in &polled {
                    let root = d.roots[i].canon.clone();
                    d.walk_root(&root);
                }
                d.poke(Duration::ZERO);
            }
            _ = rescan.tick() => {
                d.full_rescan();
                d.poke(Duration::ZERO);
            }
            _ = watchdog.tick(), if d.master.is_some() => d.watchdog().await,
            _ = outcomes.tick() => {
                d.write_metrics();
                d.silence()?;
                if !d.asking {
                    d.ask_outcomes().await?;
                }
            }
            _ = sd_watchdog.tick(), if sd_every.is_some() => {
                crate::systemd::notify("WATCHDOG=1");
            }
        }
    }
    tracing::info!("agent stopping; transfers in flight resume at the next start");
    crate::systemd::notify("STOPPING=1");
    // far ends kept open say goodbye (they commit what they hold and exit)
    let idle: Vec<_> = d.pool.drain(..).map(|(l, _)| l).collect();
    let _ = tokio::task::spawn_blocking(move || idle.into_iter().for_each(|l| l.close())).await;
    if let Some(m) = d.master.take() {
        m.close().await;
    }
    Ok(())
}

impl Daemon {
    /// Looks at the folders events named, and decides, `after` from now (or sooner if
    /// already due).
    fn poke(&mut self, after: Duration) {
        earliest(&mut self.soon, Instant::now() + after);
    }

    fn root_of(&self, p: &Path) -> Option<usize> {
        self.roots.iter().position(|r| p.starts_with(&r.canon))
    }

    fn walk_root(&mut self, dir: &Path) {
        let Some(i) = self.root_of(dir) else { return };
        let found = stack_dirs(dir, &self.roots[i].pattern);
        for s in found.stacks {
            self.dirty.insert(s);
        }
        for link in found.symlinked {
            self.symlinked(i, &link);
        }
        for u in found.unnamed {
            self.held_unsendable(i, &u);
        }
        self.unsendable_gone(i, dir);
        // tracked stacks below that vanished are dirty too, so they get dropped
        let gone: Vec<PathBuf> = self
            .stacks
            .keys()
            .filter(|k| k.starts_with(dir))
            .cloned()
            .collect();
        self.dirty.extend(gone);
    }

    /// A symlink to a folder of images: held in the journal with the reason, so that status
    /// shows it, rather than skipped without a word.
    fn symlinked(&mut self, root: usize, link: &Path) {
        let dir = link.display().to_string();
        let target = std::fs::canonicalize(link)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|e| e.to_string());
        let reason = format!(
            "{dir} is a symlink to a folder ({target}); symlinked folders are not followed: move \
             the images into the watch root, or watch the target with its own [[watch]] path"
        );
        let name = self.roots[root].remote_name(link);
        if let Err(e) = self.hold_folder(root, &dir, &name, &reason) {
            tracing::warn!(stack = %name, "cannot journal a symlinked folder: {e}");
        }
    }

    /// Holds a folder that can never be sent under journal key `key` with `reason` (said in
    /// the log when it is new); the row's id.
    fn hold_folder(
        &mut self,
        root: usize,
        key: &str,
        name: &str,
        reason: &str,
    ) -> Result<i64, crate::journal::JournalError> {
        let workflow = self.roots[root].section.workflow.clone();
        let rec = match self.journal.stack(key)? {
            Some(rec) => rec,
            None => self.journal.ensure_stack(key, name, &workflow)?,
        };
        if rec.state != StackState::Held || rec.reason != reason {
            tracing::warn!(stack = %name, "{reason}");
            self.journal.set_state(rec.id, StackState::Held, reason)?;
        }
        Ok(rec.id)
    }

    /// A folder of images whose path is not UTF-8: held in the journal with a reason that
    /// names it in escaped form (`run\xe4`), under a key no UTF-8 folder can have (keys of
    /// folders that can be sent are absolute paths), so two such folders never share a row,
    /// a remote folder or a work folder; nothing of it is sent.
    fn held_unsendable(&mut self, root: usize, dir: &Path) {
        if !crate::stack::scan::holds_images(dir, &self.roots[root].pattern) {
            return;
        }
        let shown = crate::stack::scan::escaped(dir.as_os_str());
        let key = format!("{UNNAMED_KEY}{shown}");
        let rel = dir.strip_prefix(&self.roots[root].canon).unwrap_or(dir);
        let prefix = self.roots[root].section.prefix.trim_matches('/');
        let rel = crate::stack::scan::escaped(rel.as_os_str());
        let name = if prefix.is_empty() {
            rel
        } else {
            format!("{prefix}/{rel}")
        };
        let Some(reason) = self.unsendable(root, dir) else {
            return;
        };
        match self.hold_folder(root, &key, &name, &reason) {
            Ok(id) => {
                self.unsendable_held.insert(dir.to_path_buf(), id);
            }
            Err(e) => {
                tracing::warn!(stack = %name, "cannot journal a folder that cannot be sent: {e}")
            }
        }
    }

    /// Why a folder of images can never be sent under its name (see [`Root::unsendable`]).
    fn unsendable(&self, root: usize, dir: &Path) -> Option<String> {
        self.roots[root].unsendable(dir)
    }

    /// Held folders that cannot be sent, at or below `dir`, that no longer hold
    /// images (renamed, removed): their rows end as gone.
    fn unsendable_gone(&mut self, root: usize, dir: &Path) {
        let gone: Vec<(PathBuf, i64)> = self
            .unsendable_held
            .iter()
            .filter(|(p, _)| {
                p.starts_with(dir)
                    && !crate::stack::scan::holds_images(p, &self.roots[root].pattern)
            })
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (p, id) in gone {
            self.unsendable_held.remove(&p);
            if let Err(e) = self.journal.set_state(
                id,
                StackState::Gone,
                "the folder is gone (renamed or removed); nothing of it had been sent",
            ) {
                tracing::warn!("cannot journal a folder gone: {e}");
            }
        }
    }

    fn full_rescan(&mut self) {
        // the slow safety net looks at every stack again, quiet or not (a `push` of a watched
        // folder may have moved one in the journal meanwhile)
        for t in self.stacks.values_mut() {
            t.quiet = false;
        }
        let roots: Vec<PathBuf> = self.roots.iter().map(|r| r.canon.clone()).collect();
        for r in roots {
            self.walk_root(&r);
        }
    }

    async fn handle(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Fs(path) => {
                if let Some(i) = self.root_of(&path) {
                    // the file's own time: the same after a restart, so news keyed by it is
                    // not sent twice
                    let t = std::fs::symlink_metadata(&path)
                        .and_then(|m| m.modified())
                        .unwrap_or_else(|_| std::time::SystemTime::now());
                    self.activity[i] = self.activity[i].max(t);
                }
                if path.is_dir() {
                    // a folder moved in with files inside reports only itself: walk it
                    self.walk.insert(path.clone());
                }
                if let Some(parent) = path.parent() {
                    self.dirty.insert(parent.to_path_buf());
                }
                if !self.unsendable_held.is_empty() {
                    if let Some(i) = self.root_of(&path) {
                        self.unsendable_gone(i, &path);
                    }
                }
                self.poke(GATHER);
            }
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
            Msg::Hashed(dir, r) => {
                if let Some(t) = self.stacks.get_mut(&dir) {
                    t.hashing = false;
                    match r {
                        Ok(files) => {
                            t.hashed
                                .extend(files.into_iter().map(|f| (f.name.clone(), f)));
                            // images that came of age while this batch ran wait for the next
                            // one: the stack is looked at again now, not at its settle deadline
                            t.quiet = false;
                            self.poke(Duration::ZERO);
                        }
                        // read again when it finishes, which says why if it still fails
                        Err(e) => tracing::debug!(stack = %dir.display(), "hashing ahead: {e}"),
                    }
                }
            }
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
            Msg::Results(id, remote, r) => {
                self.fetching = false;
                match r {
                    Ok((n, bytes, dir)) => {
                        let text = format!(
                            "results: {n} file(s), {} in {dir}",
                            crate::commands::status::human_bytes(bytes)
                        );
                        tracing::info!(remote, "{text}");
                        self.journal.set_results(id, remote, &text, true)?;
                    }
                    Err(e) => {
                        let e = beamflow_program::chain(&e);
                        tracing::warn!(remote, "results not fetched yet: {e}");
                        self.journal.set_results(
                            id,
                            remote,
                            &format!("results: not yet: {e}"),
                            false,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A stack's folder is gone (renamed or removed). Unless it was submitted (its files then
    /// belong to a DAG), it is marked gone, and what arrived of it at the collector is removed
    /// so that no half copy lingers there; the folder under its new name is a stack of its own.
    fn vanished(&mut self, dir: &Path) -> Result<()> {
        if self.active.contains(dir) {
            return Ok(()); // its transfer ends first; `finished` comes back here
        }
        let Some(rec) = self.journal.stack(&dir.display().to_string())? else {
            return Ok(());
        };
        if matches!(
            rec.state,
            StackState::Submitted | StackState::Gone | StackState::Discarding | StackState::Freed
        ) {
            return Ok(());
        }
        if self.journal.files(rec.id)?.is_empty() {
            tracing::info!(stack = %rec.name, "folder gone before anything of it was sent");
            self.journal.set_state(
                rec.id,
                StackState::Gone,
                "the folder is gone (renamed or removed); nothing of it had been sent",
            )?;
        } else {
            tracing::warn!(stack = %rec.name, "folder gone before the stack was submitted; removing its partial copy at the collector");
            self.discards_pending = true;
            self.journal.set_state(
                rec.id,
                StackState::Discarding,
                "the folder is gone (renamed or removed) before it was submitted; removing its partial copy at the collector",
            )?;
        }
        Ok(())
    }

    /// Rescans dirty folders, decides about every stack that may move, starts transfers
    /// while slots are free, and sets the next deadline.
    async fn step(&mut self) -> Result<()> {
        self.soon = None;
        self.wake = None;
        for w in std::mem::take(&mut self.walk) {
            self.walk_root(&w);
        }
        let now = Instant::now();
        for dir in std::mem::take(&mut self.dirty) {
            let Some(ri) = self.root_of(&dir) else {
                continue;
            };
            if self.unsendable(ri, &dir).is_some() {
                // never tracked as a stack: held with its reason
                self.held_unsendable(ri, &dir);
                continue;
            }
            match self.roots[ri].scan(&dir) {
                Ok(scan) if !scan.images.is_empty() || !scan.skipped.is_empty() => {
                    match self.stacks.get_mut(&dir) {
                        Some(t) if t.scan == scan => {}
                        Some(t) => {
                            t.scan = scan;
                            t.last_change = now;
                            t.ignored = false;
                            t.refused = false;
                            t.quiet = false;
                        }
                        None => {
                            let last_change = if self.starting {
                                changed_at(&scan, now)
                            } else {
                                now
                            };
                            let t = Tracked {
                                root: ri,
                                scan,
                                last_change,
                                first_seen: now,
                                checks: HashMap::new(),
                                warned: false,
                                retry_at: None,
                                backoff: self.cfg.agent.retry_initial.0,
                                ignored: false,
                                refused: false,
                                rehash: false,
                                finished_at: None,
                                quiet: false,
                                fresh: true,
                                due: None,
                                hashed: HashMap::new(),
                                hashing: false,
                                ahead: 0,
                            };
                            self.stacks.insert(dir.clone(), t);
                        }
                    }
                }
                _ => {
                    if self.stacks.remove(&dir).is_some() {
                        tracing::info!(stack = %dir.display(), "folder no longer holds images; forgetting it");
                        if !dir.exists() {
                            self.vanished(&dir)?;
                        }
                    }
                }
            }
        }
        // oldest change first: decided (and so started) in the order they finished
        let mut dirs: Vec<(i64, PathBuf)> = Vec::new();
        for (d, t) in &self.stacks {
            match t.due {
                _ if !t.quiet => {}
                Some(at) if at <= now => {}
                // not looked at this round: the deadline an earlier round named still stands
                // (`wake` was cleared above)
                Some(at) => {
                    earliest(&mut self.wake, at);
                    continue;
                }
                None => continue,
            }
            dirs.push((t.scan.changed_ns, d.clone()));
        }
        dirs.sort();
        // decisions read the journal and scan folders: a long round yields to the loop, so that
        // transfers already under way are answered and the next ones start while the rest are
        // decided (the checks and hashes themselves run off the loop)
        let budget = std::time::Instant::now() + Duration::from_millis(10);
        let count = dirs.len();
        for (i, (_, dir)) in dirs.into_iter().enumerate() {
            if std::time::Instant::now() > budget {
                self.poke(Duration::from_millis(1));
                break;
            }
            if self.checking.len() >= CHECKS_AT_ONCE {
                break; // the end of a check steps again
            }
            self.consider(&dir, now).await?;
            self.undecided = count - i - 1;
            if self.active.len() < self.cfg.link.max_stacks as usize {
                self.start_ready(now).await?;
            }
        }
        self.undecided = 0;
        self.start_ready(now).await?;
        self.discard_next(now).await?;
        self.prune_pool(now);
        self.write_owed_metrics(now);
        Ok(())
    }

    async fn consider(&mut self, dir: &Path, now: Instant) -> Result<()> {
        let dir_s = dir.display().to_string();
        let (ri, name) = {
            let t = &self.stacks[dir];
            (t.root, self.roots[t.root].remote_name(dir))
        };
        let workflow = self.roots[ri].section.workflow.clone();
        let rec = match self.journal.stack(&dir_s)? {
            Some(r) => r,
            None => self.journal.ensure_stack(&dir_s, &name, &workflow)?,
        };
        let t = self.stacks.get_mut(dir).expect("tracked");
        t.due = None;
        if std::mem::take(&mut t.fresh) && rec.state == StackState::Held {
            // held after its files were hashed and sent: the collector refused it, and it
            // stays held (with its reason) across a restart until its files change
            let files = self.journal.files(rec.id)?;
            t.refused = !files.is_empty() && same_files(&t.scan, &files);
        }
        match rec.state {
            StackState::Freed => {
                // images again where a freed stack was: they make its next version
                if t.scan.images.is_empty() {
                    t.quiet = true;
                    return Ok(());
                }
                let v = self.journal.next_version(rec.id)?;
                t.last_change = now;
                earliest(&mut self.wake, now);
                tracing::info!(stack = %name, version = v, "images arrived where a freed stack was; this becomes a new version");
                Ok(())
            }
            StackState::Submitted => {
                let files = self.journal.files(rec.id)?;
                if same_files(&t.scan, &files) || t.ignored {
                    t.quiet = true;
                    return Ok(());
                }
                // touched or rewritten with the same bytes: not a new version
                let (d, scan, known) = (dir.to_path_buf(), t.scan.clone(), files.clone());
                if let Ok(Ok(now_files)) =
                    tokio::task::spawn_blocking(move || hash_files(&d, &scan, &known)).await
                {
                    let same_bytes = now_files.len() == files.len()
                        && now_files
                            .iter()
                            .zip(&files)
                            .all(|(a, b)| a.name == b.name && a.blake3 == b.blake3);
                    if same_bytes {
                        self.journal.refresh_meta(rec.id, &now_files)?;
                        return Ok(());
                    }
                }
                match self.roots[ri].section.on_change {
                    OnChange::Supersede | OnChange::Resubmit => {
                        // every file of the version before still there, unchanged, and more:
                        // the stack was finished while it was still being written
                        let only_added = t.scan.images.len() > files.len()
                            && files.iter().all(|f| {
                                t.scan.images.iter().any(|s| {
                                    s.name == f.name && s.size == f.size && s.mtime_ns == f.mtime_ns
                                })
                            });
                        if only_added {
                            self.journal.grew(rec.id)?;
                        }
                        let v = self.journal.next_version(rec.id)?;
                        t.last_change = now;
                        earliest(&mut self.wake, now);
                        tracing::info!(stack = %name, version = v, "files changed after submission; this becomes a new version");
                    }
                    OnChange::Ignore => {
                        if !t.ignored {
                            t.ignored = true;
                            tracing::info!(stack = %name, "files changed after submission; ignored (on_change = \"ignore\")");
                        }
                    }
                }
                Ok(())
            }
            StackState::Queued | StackState::Sending | StackState::Sent => {
                // waits for a slot, or for its transfer to end: looked at again when one frees,
                // when the transfer ends or when its files change
                t.quiet = true;
                if !self.active.contains(dir) {
                    self.ready.insert(dir.to_path_buf(), t.scan.changed_ns);
                }
                Ok(())
            }
            StackState::Held if t.refused => {
                t.quiet = true;
                Ok(())
            }
            // a folder back under a name that had vanished starts over
            StackState::Waiting | StackState::Held | StackState::Discarding | StackState::Gone => {
                let verdict = decide(&self.roots[ri].rules, &t.observed(now, Vec::new()));
                if !matches!(verdict, Verdict::Finished(_)) {
                    return self.apply(dir, &rec, verdict, now);
                }
                if self.checking.contains_key(dir) {
                    t.quiet = true; // its check comes back as a message
                    return Ok(());
                }
                // the check and the hash run off the loop, which meanwhile answers transfers
                // and decides other stacks
                let mut known = if t.rehash {
                    t.hashed.clear();
                    Vec::new()
                } else {
                    self.journal.files(rec.id)?
                };
                // hashed while it settled: those files are not read again now
                t.ahead = t.scan.images.iter().filter(|f| t.hashed_ahead(f)).count();
                known.extend(t.hashed.values().cloned());
                t.quiet = true;
                self.checking.insert(dir.to_path_buf(), t.scan.changed_ns);
                let (d, scan, checks, tx) = (
                    dir.to_path_buf(),
                    t.scan.clone(),
                    t.checks.clone(),
                    self.tx.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    let c = crate::stack::images::check_and_hash(&d, scan, checks, &known);
                    let _ = tx.send(Msg::Checked(d, Box::new(c)));
                });
                Ok(())
            }
        }
    }

    /// Records a verdict short of finished: the stack waits (with the deadlines it waits
    /// for, and its images hashed ahead meanwhile) or is held with its reason.
    fn apply(
        &mut self,
        dir: &Path,
        rec: &crate::journal::StackRecord,
        verdict: Verdict,
        now: Instant,
    ) -> Result<()> {
        let Some(t) = self.stacks.get_mut(dir) else {
            return Ok(());
        };
        let rules = &self.roots[t.root].rules;
        let name = self.roots[t.root].remote_name(dir);
        match verdict {
            Verdict::Waiting { why, overdue } => {
                if overdue && !t.warned {
                    t.warned = true;
                    tracing::warn!(stack = %name, "stack is not finished after max_wait ({}): {why}", humantime::format_duration(rules.max_wait));
                }
                // the deadlines this decision waits for, on the loop's clock: until then
                // only a change of its files moves it
                let mut due = None;
                // settle still matters to a counted stack: a broken image is held only once
                // the folder has been quiet that long
                let settled = t.last_change + rules.settle;
                if settled > now {
                    earliest(&mut due, settled);
                }
                if let (true, Some(f)) = (rules.counted(), rules.finish_after) {
                    if t.last_change + f > now {
                        earliest(&mut due, t.last_change + f);
                    }
                }
                let overdue_at = t.first_seen + rules.max_wait;
                if !t.warned && overdue_at > now {
                    earliest(&mut due, overdue_at);
                }
                // hash what has been left alone meanwhile, off the loop
                let wall = std::time::SystemTime::now();
                let age = |f: &crate::stack::scan::FileSeen| {
                    let m = std::time::UNIX_EPOCH + Duration::from_nanos(f.mtime_ns.max(0) as u64);
                    wall.duration_since(m).unwrap_or_default()
                };
                let mut ahead = Vec::new();
                for f in &t.scan.images {
                    if t.hashed_ahead(f) {
                        continue;
                    }
                    match HASH_AHEAD_AFTER.checked_sub(age(f)) {
                        None => ahead.push(f.clone()),
                        Some(left) => earliest(&mut due, now + left),
                    }
                }
                if !ahead.is_empty() && !t.hashing && !t.rehash {
                    t.hashing = true;
                    let (d, tx) = (dir.to_path_buf(), self.tx.clone());
                    let scan = DirScan {
                        images: ahead,
                        ..DirScan::default()
                    };
                    tokio::task::spawn_blocking(move || {
                        let r = hash_files(&d, &scan, &[]).map_err(|e| e.to_string());
                        let _ = tx.send(Msg::Hashed(d, r));
                    });
                }
                if let Some(at) = due {
                    t.quiet = true;
                    t.due = Some(at);
                    earliest(&mut self.wake, at);
                }
                if rec.state != StackState::Waiting || rec.reason != why {
                    self.journal.set_state(rec.id, StackState::Waiting, &why)?;
                }
            }
            Verdict::Held(reason) => {
                t.quiet = true; // until its files change
                if rec.state != StackState::Held || rec.reason != reason {
                    tracing::warn!(stack = %name, %reason, "stack held");
                }
                self.journal.set_state(rec.id, StackState::Held, &reason)?;
                if rec.state != StackState::Held {
                    self.held(rec.id, &name, rec.version, &reason)?;
                }
            }
            Verdict::Finished(_) => {
                // only a check's result finishes a stack (`checked`)
                t.quiet = false;
            }
        }
        Ok(())
    }

    /// A finished stack's check and hash came back: it is queued with its files, or waits,
    /// or is held with the faults found. A result for files that changed meanwhile is
    /// dropped, and the stack decided again.
    fn checked(&mut self, dir: &Path, c: crate::stack::images::Checked) -> Result<()> {
        self.checking.remove(dir);
        self.poke(Duration::ZERO);
        let Some(t) = self.stacks.get_mut(dir) else {
            return Ok(());
        };
        if t.scan != c.scan {
            t.quiet = false;
            return Ok(());
        }
        t.checks = c.checks;
        let Some(rec) = self.journal.stack(&dir.display().to_string())? else {
            return Ok(());
        };
        let t = self.stacks.get_mut(dir).expect("tracked");
        if !matches!(
            rec.state,
            StackState::Waiting | StackState::Held | StackState::Discarding | StackState::Gone
        ) {
            t.quiet = false; // moved meanwhile (a `push` of the same folder)
            return Ok(());
        }
        let now = Instant::now();
        let rules = &self.roots[t.root].rules;
        let verdict = decide(rules, &t.observed(now, c.faults));
        let Verdict::Finished(trigger) = verdict else {
            return self.apply(dir, &rec, verdict, now);
        };
        let name = self.roots[t.root].remote_name(dir);
        match c.files {
            Some(Ok(files)) => {
                t.rehash = false;
                if trigger == crate::stack::Trigger::QuietTooLong {
                    tracing::warn!(stack = %name, files = files.len(), "stack finished without its count or marker: nothing changed for finish_after");
                }
                tracing::info!(stack = %name, version = rec.version, files = files.len(), hashed_ahead = t.ahead, ?trigger, "stack finished");
                t.finished_at = Some(std::time::SystemTime::now());
                t.quiet = true;
                self.journal.queue(rec.id, &files)?;
                self.ready.insert(dir.to_path_buf(), t.scan.changed_ns);
            }
            Some(Err(e)) => {
                // a file vanished or became unreadable between scan and hash
                t.last_change = now;
                t.quiet = true;
                t.due = Some(now + rules.settle);
                earliest(&mut self.wake, now + rules.settle);
                self.journal.set_state(
                    rec.id,
                    StackState::Waiting,
                    &format!("cannot read an image yet: {e}"),
                )?;
            }
            // whole images are always hashed; decided again if not
            None => t.quiet = false,
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
        assert!(
            first_queued.0 >= Duration::from_secs(30)
                && first_queued.0 < Duration::from_millis(30_500),
            "finished at {:?}: {seen:?}",
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
