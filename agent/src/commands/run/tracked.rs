//! A stack as the daemon tracks it between decisions: its last scan, its clocks, what was
//! hashed ahead, and whether anything can move it.

use super::*;

pub(super) struct Tracked {
    pub(super) root: usize,
    pub(super) scan: DirScan,
    pub(super) last_change: Instant,
    pub(super) first_seen: Instant,
    /// Structural check results by file name, valid while (size, mtime) match.
    pub(super) checks: HashMap<String, (u64, i64, Option<String>)>,
    pub(super) warned: bool,
    pub(super) retry_at: Option<Instant>,
    pub(super) backoff: Duration,
    pub(super) ignored: bool,
    /// Held because the collector refused it: stays held until its files change.
    pub(super) refused: bool,
    /// Hash every file again at the next finish, not trusting journaled hashes (a file changed
    /// in a way its size and mtime did not show).
    pub(super) rehash: bool,
    /// When it was decided finished (for the stage latencies in the metrics).
    pub(super) finished_at: Option<std::time::SystemTime>,
    /// Nothing can move it until its files change (submitted, freed, gone, as the journal
    /// said when it was last considered): rounds of decisions skip it, so an idle tree of
    /// many submitted stacks costs no journal reads. Cleared by a change, and by the slow rescan.
    pub(super) quiet: bool,
    /// Not considered yet since it was first seen (at start: a held stack's reason is kept).
    pub(super) fresh: bool,
    /// A quiet stack waiting for a deadline (settle, max_wait) is looked at again then.
    pub(super) due: Option<Instant>,
    /// Hashes of its images taken while it settles (valid while name, size and mtime match):
    /// when it finishes, its files are offered at once instead of after hashing them all.
    pub(super) hashed: HashMap<String, FileRecord>,
    /// Hashing ahead is under way.
    pub(super) hashing: bool,
    /// Sections sent ahead of the finish, by name, valid while (size, mtime) match.
    pub(super) sent_ahead: HashMap<String, (u64, i64)>,
    /// How many of its images had been hashed ahead when its final check started (for the log).
    pub(super) ahead: usize,
    /// `beamflow-agent push` named it: finished by being named, sent ahead of the queue, and
    /// its end told to whoever waits for it.
    pub(super) pushed: bool,
}

impl Tracked {
    /// A stack first seen at `now`, its images last changed at `last_change`.
    pub(super) fn new(
        root: usize,
        scan: DirScan,
        last_change: Instant,
        now: Instant,
        backoff: Duration,
    ) -> Tracked {
        Tracked {
            root,
            scan,
            last_change,
            first_seen: now,
            checks: HashMap::new(),
            warned: false,
            retry_at: None,
            backoff,
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
            sent_ahead: HashMap::new(),
            pushed: false,
        }
    }

    /// Its images changed at `now`: whatever was decided about the old ones no longer holds.
    pub(super) fn changed(&mut self, scan: DirScan, now: Instant) {
        self.scan = scan;
        self.last_change = now;
        self.ignored = false;
        self.refused = false;
        self.quiet = false;
    }

    /// What the rules decide on: its images as last scanned, with the faults found (none
    /// before its check), at `now` on the loop's clock.
    pub(super) fn observed(&self, now: Instant, invalid: Vec<(String, String)>) -> Observed {
        Observed {
            images: self.scan.images.len() as u32,
            marker: self.scan.marker,
            quiet_for: now - self.last_change,
            seen_for: now - self.first_seen,
            invalid,
            named: self.pushed,
        }
    }

    /// Where it goes in the line of finished stacks: by when its images last changed, a
    /// pushed one first.
    pub(super) fn order(&self) -> i64 {
        if self.pushed {
            i64::MIN
        } else {
            self.scan.changed_ns
        }
    }

    /// Its images left alone long enough to be hashed ahead of its finish and not hashed
    /// yet; `due` learns when the others will have been.
    pub(super) fn to_hash_ahead(
        &self,
        now: Instant,
        due: &mut Option<Instant>,
    ) -> Vec<crate::stack::scan::FileSeen> {
        let wall = std::time::SystemTime::now();
        let age = |f: &crate::stack::scan::FileSeen| {
            let m = std::time::UNIX_EPOCH + Duration::from_nanos(f.mtime_ns.max(0) as u64);
            wall.duration_since(m).unwrap_or_default()
        };
        let mut ahead = Vec::new();
        for f in self.scan.images.iter().filter(|f| !self.hashed_ahead(f)) {
            match HASH_AHEAD_AFTER.checked_sub(age(f)) {
                None => ahead.push(f.clone()),
                Some(left) => earliest(due, now + left),
            }
        }
        ahead
    }

    /// Its sections that may go ahead of its finish: hashed ahead, not sent yet, left alone
    /// for `settle`; as scanned and as hashed.
    pub(super) fn ready_to_send_ahead(
        &self,
        settle: Duration,
    ) -> (Vec<crate::stack::scan::FileSeen>, Vec<FileRecord>) {
        let wall = std::time::SystemTime::now();
        let seen: Vec<crate::stack::scan::FileSeen> = self
            .scan
            .images
            .iter()
            .filter(|f| {
                self.hashed_ahead(f) && self.sent_ahead.get(&f.name) != Some(&(f.size, f.mtime_ns))
            })
            .filter(|f| {
                let m = std::time::UNIX_EPOCH + Duration::from_nanos(f.mtime_ns.max(0) as u64);
                wall.duration_since(m).unwrap_or_default() >= settle
            })
            .cloned()
            .collect();
        let files = seen
            .iter()
            .filter_map(|f| self.hashed.get(&f.name).cloned())
            .collect();
        (seen, files)
    }

    /// Tells `due` when its sections hashed ahead and not sent yet will have been left alone
    /// for `settle`, the moment they may be sent ahead.
    pub(super) fn to_send_ahead(&self, now: Instant, settle: Duration, due: &mut Option<Instant>) {
        let wall = std::time::SystemTime::now();
        for f in self.scan.images.iter().filter(|f| self.hashed_ahead(f)) {
            if self.sent_ahead.get(&f.name) == Some(&(f.size, f.mtime_ns)) {
                continue;
            }
            let m = std::time::UNIX_EPOCH + Duration::from_nanos(f.mtime_ns.max(0) as u64);
            if let Some(left) = settle.checked_sub(wall.duration_since(m).unwrap_or_default()) {
                if !left.is_zero() {
                    earliest(due, now + left);
                }
            }
        }
    }

    /// Whether `f`, as it is now, was hashed while the stack settled.
    pub(super) fn hashed_ahead(&self, f: &crate::stack::scan::FileSeen) -> bool {
        self.hashed
            .get(&f.name)
            .is_some_and(|h| h.size == f.size && h.mtime_ns == f.mtime_ns)
    }
}

/// When a stack's images last changed, on the loop's clock, from the files' own times (the
/// later of mtime and ctime): a stack found at start whose files have been quiet for
/// `settle` is decided at once rather than after another `settle`.
pub(super) fn changed_at(scan: &DirScan, now: Instant) -> Instant {
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

pub(super) fn same_files(scan: &DirScan, files: &[FileRecord]) -> bool {
    scan.images.len() == files.len()
        && scan
            .images
            .iter()
            .zip(files)
            .all(|(a, b)| a.name == b.name && a.size == b.size && a.mtime_ns == b.mtime_ns)
}

/// How long an image must have been left alone before it is hashed ahead of the stack's
/// finish (a file still being written would be hashed for nothing).
pub(super) const HASH_AHEAD_AFTER: Duration = Duration::from_secs(1);
