//! The daemon's start and stop: its state built from the config and the journal, the
//! watchers, the first reconcile (every root rescanned and set against the journal before any
//! event is trusted), the loop's timers, and the goodbye to far ends kept open.

use super::*;

impl Daemon {
    /// The daemon's state before anything is scanned.
    pub(super) fn new(
        cfg: Config,
        journal: Journal,
        roots: Vec<Root>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Daemon {
        let master = (cfg.link.transport == beamflow_config::Transport::Ssh)
            .then(|| crate::link::ssh::Master::for_daemon(&cfg.link));
        let news = (!cfg.notify.is_empty())
            .then(|| crate::notify::Post::new(cfg.notify.clone(), cfg.agent.retry_initial.0));
        let activity = vec![std::time::SystemTime::now(); roots.len()];
        Daemon {
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
            tx,
            master,
            master_down: false,
            discard_retry: HashMap::new(),
            discards_pending: true,
            asking: false,
            abandoning: false,
            metrics: crate::metrics::Metrics::new(),
            metrics_written: None,
            metrics_owed: false,
            fetching: false,
            news,
            down_since: None,
            activity,
            unsendable_held: HashMap::new(),
            ahead: HashSet::new(),
            waiting_push: HashMap::new(),
        }
    }

    /// Starts inotify on the roots that use it; returns the watcher (alive while held) and
    /// the roots to poll (those set to poll, and those inotify could not take).
    pub(super) fn start_watching(
        &self,
        tx: &mpsc::UnboundedSender<Msg>,
    ) -> (Option<notify::RecommendedWatcher>, Vec<usize>) {
        let inotify: Vec<PathBuf> = self
            .roots
            .iter()
            .filter(|r| r.section.mode == WatchMode::Inotify)
            .map(|r| r.canon.clone())
            .collect();
        let (watcher, fallback) = watch::start(&inotify, {
            let tx = tx.clone();
            move |e| {
                let _ = tx.send(match e {
                    watch::Event::Changed(p) => Msg::Fs(p),
                    watch::Event::Rescan => Msg::Rescan,
                });
            }
        });
        let polled = self
            .roots
            .iter()
            .enumerate()
            .filter(|(_, r)| r.section.mode == WatchMode::Poll || fallback.contains(&r.canon))
            .map(|(i, _)| i)
            .collect();
        (watcher, polled)
    }

    /// The first round: every root rescanned and decided, then the journal's stacks whose
    /// folders went away while the daemon was stopped, then each root's last activity.
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        self.full_rescan();
        self.step().await?;
        self.starting = false;
        for rec in self.journal.stacks()? {
            if rec.dir.starts_with(UNNAMED_KEY) {
                // not a path: the walk above found those still there
                let still = self.unsendable_held.values().any(|id| *id == rec.id);
                if rec.state == StackState::Held && !still {
                    self.journal.set_state(
                        rec.id,
                        StackState::Gone,
                        "the folder is gone (renamed or removed); nothing of it had been sent",
                    )?;
                }
                continue;
            }
            let dir = PathBuf::from(&rec.dir);
            if !self.stacks.contains_key(&dir) && !dir.exists() {
                self.vanished(&dir)?;
            }
        }
        for i in 0..self.roots.len() {
            self.activity[i] = self.last_activity(i);
        }
        Ok(())
    }

    /// A root's last activity: its newest image, or the root folder's own last change.
    fn last_activity(&self, root: usize) -> std::time::SystemTime {
        let folder = std::fs::metadata(&self.roots[root].canon)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        let newest = self
            .stacks
            .values()
            .filter(|t| t.root == root)
            .flat_map(|t| t.scan.images.iter())
            .map(|f| std::time::UNIX_EPOCH + Duration::from_nanos(f.mtime_ns.max(0) as u64))
            .max()
            .unwrap_or(std::time::UNIX_EPOCH);
        folder.max(newest)
    }

    /// Far ends kept open say goodbye (they commit what they hold and exit); the master
    /// closes.
    pub(super) async fn stop(mut self) {
        tracing::info!("agent stopping; transfers in flight resume at the next start");
        crate::systemd::notify("STOPPING=1");
        let idle: Vec<_> = self.pool.drain(..).map(|(l, _)| l).collect();
        let _ = tokio::task::spawn_blocking(move || idle.into_iter().for_each(|l| l.close())).await;
        if let Some(m) = self.master.take() {
            m.close().await;
        }
    }
}

/// The loop's timers: polling the roots that need it, the slow rescan, the master's
/// watchdog, asking for outcomes, and systemd's watchdog.
pub(super) struct Timers {
    pub(super) poll: tokio::time::Interval,
    pub(super) rescan: tokio::time::Interval,
    pub(super) watchdog: tokio::time::Interval,
    pub(super) outcomes: tokio::time::Interval,
    /// Fed from the loop, so a wedged loop gets the unit restarted.
    pub(super) systemd: tokio::time::Interval,
    /// Whether systemd asked for a watchdog at all.
    pub(super) systemd_on: bool,
}

impl Timers {
    /// The timers for these settings; the reconcile was the first rescan.
    pub(super) fn new(d: &Daemon, polled: &[usize]) -> Timers {
        let poll_every = polled
            .iter()
            .map(|&i| d.roots[i].section.poll_interval.0)
            .min()
            .unwrap_or(Duration::from_secs(3600));
        let every = |d: Duration| tokio::time::interval(d);
        let sd_every = crate::systemd::watchdog_interval();
        let mut t = Timers {
            poll: every(poll_every),
            rescan: every(d.cfg.agent.rescan.0),
            watchdog: every(d.cfg.link.keepalive.0.max(Duration::from_secs(1))),
            outcomes: every(d.cfg.agent.outcome_every.0.max(Duration::from_millis(100))),
            systemd: every(sd_every.unwrap_or(Duration::from_secs(3600))),
            systemd_on: sd_every.is_some(),
        };
        for i in [&mut t.poll, &mut t.rescan, &mut t.watchdog, &mut t.outcomes] {
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        t.rescan.reset();
        t
    }
}
