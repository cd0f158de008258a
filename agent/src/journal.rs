//! The agent's journal: every stack and every file it has decided something about.
//!
//! SQLite in WAL mode; each change is one transaction, so a kill -9 at any instant leaves the
//! journal at a state the agent can resume from: a stack recorded as sending is sent again
//! (the collector answers "same" for what it already holds), a stack recorded as submitted is
//! not submitted twice. The daemon's loop is its only writer; `status` reads alongside.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::path::Path;

/// Failures of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// SQLite said no.
    #[error("journal error: {0}; if the file is damaged, move it aside and restart (the agent rescans and resends what the collector lacks)")]
    Sqlite(#[from] rusqlite::Error),
    /// The folder could not be made.
    #[error("cannot create the journal folder {0}: {1}")]
    Dir(String, std::io::Error),
    /// A move the stack lifecycle does not allow was asked for: a bug, never applied.
    #[error("stack {stack}: no legal move from {} to {}; this is a bug in beamflow, please report it", from.as_str(), to.as_str())]
    Illegal {
        /// Journal id.
        stack: i64,
        /// Where it is.
        from: StackState,
        /// Where it was asked to go.
        to: StackState,
    },
    /// A stored state this build does not know (a journal from another version).
    #[error(transparent)]
    UnknownState(#[from] beamflow_protocol::states::UnknownState),
}

/// Moves a stack to `state` with `reason` (nothing written when both are unchanged).
fn move_to(
    conn: &Connection,
    id: i64,
    state: StackState,
    reason: &str,
) -> Result<(), JournalError> {
    check_move(conn, id, state)?;
    conn.prepare_cached(
        "UPDATE stacks SET state = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1 AND (state != ?2 OR reason != ?3)",
    )?
    .execute(params![id, state.as_str(), reason, now()])?;
    Ok(())
}

/// Marks a stack submitted under the collector's id; its DAG's outcome and results start over.
fn submitted(conn: &Connection, id: i64, remote_id: i64, reason: &str) -> Result<(), JournalError> {
    check_move(conn, id, StackState::Submitted)?;
    conn.prepare_cached(
        "UPDATE stacks SET state = 'submitted', remote_id = ?2, reason = ?3, updated_at = ?4, outcome = '', outcome_final = 0, abandoned = 0, results = '', results_done = 0 WHERE id = ?1",
    )?
    .execute(params![id, remote_id, reason, now()])?;
    Ok(())
}

/// Marks files acknowledged and adds an attempt's bytes and seconds.
fn sent(
    conn: &Connection,
    id: i64,
    names: &[String],
    bytes: u64,
    secs: f64,
) -> Result<(), JournalError> {
    for n in names {
        conn.prepare_cached("UPDATE files SET sent = 1 WHERE stack_id = ?1 AND name = ?2")?
            .execute(params![id, n])?;
    }
    conn.prepare_cached(
        "UPDATE stacks SET bytes_sent = bytes_sent + ?2, send_secs = send_secs + ?3 WHERE id = ?1",
    )?
    .execute(params![id, bytes as i64, secs])?;
    Ok(())
}

/// Where an attempt leaves a stack, journaled with what it sent (`Journal::record_attempt`).
pub enum After {
    /// The collector accepted the DAG under this id.
    Submitted {
        /// The collector's id for the DAG.
        remote_id: i64,
        /// For people.
        reason: String,
    },
    /// Any other outcome: the state the stack moves to, and why.
    Moved {
        /// The next state.
        state: StackState,
        /// For people.
        reason: String,
    },
}

/// Refuses a move the lifecycle's table does not hold; a stack the journal does not know
/// moves nowhere (the update that follows matches no row).
fn check_move(conn: &Connection, id: i64, to: StackState) -> Result<(), JournalError> {
    let cur: Option<String> = conn
        .prepare_cached("SELECT state FROM stacks WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if let Some(from) = cur.as_deref().map(StackState::parse).transpose()? {
        if !crate::stack::lifecycle::legal(from, to) {
            return Err(JournalError::Illegal {
                stack: id,
                from,
                to,
            });
        }
    }
    Ok(())
}

pub use crate::stack::lifecycle::StackState;

/// One stack as journaled.
#[derive(Debug, Clone, Serialize)]
pub struct StackRecord {
    /// Journal id.
    pub id: i64,
    /// Absolute folder on this host.
    pub dir: String,
    /// Path under the collector's data root.
    pub name: String,
    /// Workflow to run.
    pub workflow: String,
    /// Version (files arriving after submission make the next one).
    pub version: u32,
    /// State.
    pub state: StackState,
    /// Why it is in that state (for people).
    pub reason: String,
    /// The collector's id once submitted.
    pub remote_id: Option<i64>,
    /// Files in the current version.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes that travelled for this version.
    pub bytes_sent: u64,
    /// Seconds spent sending this version.
    pub send_secs: f64,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Where its DAG is, as the collector last said (`running 2/5`, `done`, `FAILED: …`);
    /// empty until asked.
    pub outcome: String,
    /// What was fetched home of its results (or why not yet); empty: nothing to fetch.
    pub results: String,
}

pub use crate::stack::images::FileRecord;

/// The journal handle.
pub struct Journal {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stacks (
    id INTEGER PRIMARY KEY,
    dir TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    workflow TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    remote_id INTEGER,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    send_secs REAL NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT '',
    outcome_final INTEGER NOT NULL DEFAULT 0,
    results TEXT NOT NULL DEFAULT '',
    results_done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS removals (
    stack_id INTEGER NOT NULL REFERENCES stacks(id),
    at TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS news (
    key TEXT PRIMARY KEY,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    stack_id INTEGER NOT NULL REFERENCES stacks(id),
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    blake3 BLOB NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stack_id, name)
);
";

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Columns added after the first journals were written, with what an older row holds.
const LATER_COLUMNS: &[(&str, &str)] = &[
    ("outcome", "TEXT NOT NULL DEFAULT ''"),
    ("outcome_final", "INTEGER NOT NULL DEFAULT 0"),
    ("results", "TEXT NOT NULL DEFAULT ''"),
    ("results_done", "INTEGER NOT NULL DEFAULT 0"),
    // versions that only added files to a finished stack: the sign of a settle shorter than
    // the gaps between sections
    ("grew", "INTEGER NOT NULL DEFAULT 0"),
    // sections of the last version streamed while the stack was written (0: none)
    ("streamed", "INTEGER NOT NULL DEFAULT 0"),
    // a streamed stack past max_wait whose work at the collector was cancelled: it streams
    // no more (it is sent whole if it is finished later)
    ("abandoned", "INTEGER NOT NULL DEFAULT 0"),
];

/// The later columns an older journal lacks.
fn missing_columns(conn: &Connection) -> rusqlite::Result<Vec<(&'static str, &'static str)>> {
    let mut out = Vec::new();
    for (name, decl) in LATER_COLUMNS {
        let n: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM pragma_table_info('stacks') WHERE name = ?1")?
            .query_row([name], |r| r.get(0))?;
        if n == 0 {
            out.push((*name, *decl));
        }
    }
    Ok(out)
}

/// A journal from before those columns gets them (empty: not asked yet).
fn add_later_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (name, decl) in missing_columns(conn)? {
        conn.execute_batch(&format!("ALTER TABLE stacks ADD COLUMN {name} {decl};"))?;
    }
    Ok(())
}

/// Makes the journal readable by its owner only, whatever the umask: it names every stack
/// and file of the beamline. SQLite gives the `-wal` and `-shm` files the mode of the
/// database, so the database is made 0600 before SQLite first opens it; files of an older
/// journal are narrowed too.
fn private(db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(db)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

impl Journal {
    /// Opens (creating if needed) `agent.db` in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| JournalError::Dir(state_dir.display().to_string(), e))?;
        let path = state_dir.join("agent.db");
        private(&path).map_err(|e| JournalError::Dir(path.display().to_string(), e))?;
        let conn = Connection::open(&path)?;
        // every statement is prepared once per connection: parsing SQL cost more than running
        // it when thousands of stacks are decided at a cold start
        conn.set_prepared_statement_cache_capacity(64);
        // the timeout first: the pragmas below wait for locks too
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // switching to WAL needs the database to itself for a moment; SQLite answers "busy"
        // at once (not after the timeout) while a reader holds it, so try a few times
        let mut tries = 0;
        loop {
            let r = conn
                .pragma_update(None, "journal_mode", "WAL")
                .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
                .and_then(|_| conn.execute_batch(SCHEMA))
                .and_then(|_| add_later_columns(&conn));
            match r {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if tries < 100
                        && matches!(
                            e.code,
                            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                        ) =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Journal { conn })
    }

    /// Opens the journal for reading only (`status`), without taking any write lock, so that
    /// it never waits for or disturbs a running daemon.
    pub fn open_read_only(state_dir: &Path) -> Result<Journal, JournalError> {
        let path = state_dir.join("agent.db");
        if !path.exists() {
            // nothing journaled yet: an empty journal answers the same, and creates nothing
            let empty = Connection::open_in_memory()?;
            empty.execute_batch(SCHEMA)?;
            return Ok(Journal { conn: empty });
        }
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let tables: i64 = conn.prepare_cached(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('stacks', 'files')")?.query_row(
            [],
            |r| r.get(0),
        )?;
        if tables < 2 {
            // a daemon is creating it this very moment: nothing is journaled yet
            let empty = Connection::open_in_memory()?;
            empty.execute_batch(SCHEMA)?;
            return Ok(Journal { conn: empty });
        }
        let missing = missing_columns(&conn)?;
        if !missing.is_empty() {
            // written by an older agent that no daemon of this version opened yet: a
            // temporary view lends it the columns, empty, without writing the file
            let extra: Vec<String> = missing
                .iter()
                .map(|(n, d)| {
                    let v = if d.starts_with("TEXT") { "''" } else { "0" };
                    format!("{v} AS {n}")
                })
                .collect();
            conn.execute_batch(&format!(
                "CREATE TEMP VIEW stacks AS SELECT *, {} FROM main.stacks;",
                extra.join(", ")
            ))?;
        }
        Ok(Journal { conn })
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StackRecord> {
        Ok(StackRecord {
            id: r.get(0)?,
            dir: r.get(1)?,
            name: r.get(2)?,
            workflow: r.get(3)?,
            version: r.get(4)?,
            state: r.get::<_, String>(5)?.parse().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    5,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?,
            reason: r.get(6)?,
            remote_id: r.get(7)?,
            bytes_sent: r.get::<_, i64>(8)? as u64,
            updated_at: r.get(9)?,
            files: r.get::<_, i64>(10)? as u64,
            bytes: r.get::<_, i64>(11)? as u64,
            send_secs: r.get(12)?,
            outcome: r.get(13)?,
            results: r.get(14)?,
        })
    }

    const SELECT: &'static str =
        "SELECT s.id, s.dir, s.name, s.workflow, s.version, s.state, s.reason, s.remote_id,
        s.bytes_sent, s.updated_at,
        (SELECT COUNT(*) FROM files f WHERE f.stack_id = s.id),
        (SELECT COALESCE(SUM(size), 0) FROM files f WHERE f.stack_id = s.id), s.send_secs, s.outcome, s.results
        FROM stacks s";

    /// Every stack, oldest first.
    pub fn stacks(&self) -> Result<Vec<StackRecord>, JournalError> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{} ORDER BY s.id", Self::SELECT))?;
        let rows = st.query_map([], Self::row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// How many stacks are in `state`: what a watcher of a cold start asks again and again,
    /// without reading every row.
    pub fn count(&self, state: StackState) -> Result<usize, JournalError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM stacks WHERE state = ?1")?
            .query_row([state.as_str()], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// The stack journaled for `dir`, if any.
    pub fn stack(&self, dir: &str) -> Result<Option<StackRecord>, JournalError> {
        Ok(self
            .conn
            .prepare_cached(&format!("{} WHERE s.dir = ?1", Self::SELECT))?
            .query_row([dir], Self::row)
            .optional()?)
    }

    /// Records a newly seen stack folder (or returns the existing record).
    pub fn ensure_stack(
        &mut self,
        dir: &str,
        name: &str,
        workflow: &str,
    ) -> Result<StackRecord, JournalError> {
        self.conn.prepare_cached(
            "INSERT INTO stacks (dir, name, workflow, state, updated_at) VALUES (?1, ?2, ?3, 'waiting', ?4)
             ON CONFLICT(dir) DO NOTHING")?.execute(
            params![dir, name, workflow, now()],
        )?;
        Ok(self.stack(dir)?.expect("just inserted"))
    }

    /// Moves a stack to `state` with a reason for people. Unchanged state and reason write nothing.
    pub fn set_state(
        &mut self,
        id: i64,
        state: StackState,
        reason: &str,
    ) -> Result<(), JournalError> {
        move_to(&self.conn, id, state, reason)
    }

    /// The files of a stack's current version.
    pub fn files(&self, id: i64) -> Result<Vec<FileRecord>, JournalError> {
        let mut st = self.conn.prepare_cached("SELECT name, size, mtime_ns, blake3, sent FROM files WHERE stack_id = ?1 ORDER BY name")?;
        let rows = st
            .query_map([id], |r| {
                let h: Vec<u8> = r.get(3)?;
                Ok(FileRecord {
                    name: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                    blake3: h.try_into().unwrap_or([0; 32]),
                    sent: r.get::<_, i64>(4)? != 0,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Fixes the file list of the current version (with hashes) and queues the stack, in one
    /// transaction. Files whose bytes are unchanged keep their "sent" mark.
    pub fn queue(&mut self, id: i64, files: &[FileRecord]) -> Result<(), JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_move(&tx, id, StackState::Queued)?;
        let old: std::collections::HashMap<String, Vec<u8>> = {
            let mut st = tx.prepare_cached(
                "SELECT name, blake3 FROM files WHERE stack_id = ?1 AND sent = 1",
            )?;
            let rows = st
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            rows
        };
        tx.prepare_cached("DELETE FROM files WHERE stack_id = ?1")?
            .execute([id])?;
        for f in files {
            let sent = old.get(&f.name).is_some_and(|h| h[..] == f.blake3[..]);
            tx.prepare_cached(
                "INSERT INTO files (stack_id, name, size, mtime_ns, blake3, sent) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(
                params![id, f.name, f.size as i64, f.mtime_ns, &f.blake3[..], sent as i64],
            )?;
        }
        tx.prepare_cached(
            "UPDATE stacks SET state = 'queued', reason = '', updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![id, now()])?;
        tx.commit()?;
        Ok(())
    }

    /// Records an attempt in one transaction (one sync of the journal, not two): the files it
    /// got acknowledged, its bytes and time, and where it leaves the stack, which `after`
    /// decides from whether every file of the stack is now acknowledged (with whatever else it
    /// decided, returned).
    pub fn record_attempt<T>(
        &mut self,
        id: i64,
        names: &[String],
        bytes: u64,
        secs: f64,
        after: impl FnOnce(bool) -> (After, T),
    ) -> Result<T, JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        sent(&tx, id, names, bytes, secs)?;
        let unsent: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM files WHERE stack_id = ?1 AND sent = 0")?
            .query_row([id], |r| r.get(0))?;
        let (next, decided) = after(unsent == 0);
        match next {
            After::Submitted { remote_id, reason } => submitted(&tx, id, remote_id, &reason)?,
            After::Moved { state, reason } => move_to(&tx, id, state, &reason)?,
        }
        tx.commit()?;
        Ok(decided)
    }

    /// Records files sent ahead of their stack's finish (verified and durable at the
    /// collector): the stack keeps its state; the finish finds them sent, and a stack that
    /// vanishes has its partial copy removed.
    pub fn sent_ahead(&mut self, id: i64, files: &[FileRecord]) -> Result<(), JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for f in files {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO files (stack_id, name, size, mtime_ns, blake3, sent) VALUES (?1, ?2, ?3, ?4, ?5, 1)")?.execute(
                params![id, f.name, f.size as i64, f.mtime_ns, &f.blake3[..]],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records new sizes/mtimes for files whose bytes did not change (touched, rewritten).
    pub fn refresh_meta(&mut self, id: i64, files: &[FileRecord]) -> Result<(), JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for f in files {
            tx.prepare_cached(
                "UPDATE files SET size = ?3, mtime_ns = ?4 WHERE stack_id = ?1 AND name = ?2 AND blake3 = ?5")?.execute(
                params![id, f.name, f.size as i64, f.mtime_ns, &f.blake3[..]],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The collector accepted this version's DAG.
    pub fn mark_submitted(
        &mut self,
        id: i64,
        remote_id: i64,
        reason: &str,
    ) -> Result<(), JournalError> {
        submitted(&self.conn, id, remote_id, reason)
    }

    /// Submitted stacks whose DAG is done and whose results are home (or none are fetched):
    /// what `delete_after` may free.
    pub fn freeable(&self, results: bool) -> Result<Vec<StackRecord>, JournalError> {
        Ok(self
            .stacks()?
            .into_iter()
            .filter(|s| s.state == StackState::Submitted && s.outcome == "done")
            .filter(|s| {
                !results
                    || s.results.starts_with("results: ")
                        && !s.results.starts_with("results: not yet")
            })
            .collect())
    }

    /// Records the images removed from this host and marks the stack freed, in one
    /// transaction.
    pub fn freed(
        &mut self,
        id: i64,
        removed: &[(String, u64)],
        reason: &str,
    ) -> Result<(), JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_move(&tx, id, StackState::Freed)?;
        let at = now();
        for (path, bytes) in removed {
            tx.prepare_cached(
                "INSERT INTO removals (stack_id, at, path, bytes) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, at, path, *bytes as i64])?;
        }
        tx.prepare_cached(
            "UPDATE stacks SET state = 'freed', reason = ?2, updated_at = ?3 WHERE id = ?1",
        )?
        .execute(params![id, reason, at])?;
        tx.commit()?;
        Ok(())
    }

    /// Journals a message's key; true when it is new, i.e. the message should go out (one
    /// message per stack and event, across restarts).
    pub fn news_once(&mut self, key: &str) -> Result<bool, JournalError> {
        let n = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO news (key, at) VALUES (?1, ?2)")?
            .execute(params![key, now()])?;
        Ok(n > 0)
    }

    /// Submitted stacks whose DAG may still change: (journal id, remote id).
    pub fn outcomes_pending(&self) -> Result<Vec<(i64, i64)>, JournalError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, remote_id FROM stacks WHERE state = 'submitted' AND remote_id IS NOT NULL AND outcome_final = 0 ORDER BY id",
        )?;
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Records what the collector said of a stack's DAG, if the stack is still at that
    /// remote id (a new version may have been submitted meanwhile); true when it changed.
    pub fn set_outcome(
        &mut self,
        id: i64,
        remote_id: i64,
        outcome: &str,
        is_final: bool,
    ) -> Result<bool, JournalError> {
        let n = self.conn.prepare_cached(
            "UPDATE stacks SET outcome = ?3, outcome_final = ?4 WHERE id = ?1 AND remote_id = ?2 AND (outcome != ?3 OR outcome_final != ?4)")?.execute(
            params![id, remote_id, outcome, is_final as i64],
        )?;
        Ok(n > 0)
    }

    /// Stacks whose DAG is done and whose results are not home yet: (journal id, remote id,
    /// name, version).
    pub fn results_pending(&self) -> Result<Vec<(i64, i64, String, u32)>, JournalError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, remote_id, name, version FROM stacks WHERE state = 'submitted' AND remote_id IS NOT NULL
             AND outcome = 'done' AND results_done = 0 ORDER BY id",
        )?;
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Records what was fetched of a stack's results (`done`: nothing more to fetch), if the
    /// stack is still at that remote id.
    pub fn set_results(
        &mut self,
        id: i64,
        remote_id: i64,
        text: &str,
        done: bool,
    ) -> Result<(), JournalError> {
        self.conn.prepare_cached(
            "UPDATE stacks SET results = ?3, results_done = ?4 WHERE id = ?1 AND remote_id = ?2")?.execute(
            params![id, remote_id, text, done as i64],
        )?;
        Ok(())
    }

    /// Counts a new version that only added files to the one before.
    pub fn grew(&mut self, id: i64) -> Result<(), JournalError> {
        self.conn
            .prepare_cached("UPDATE stacks SET grew = grew + 1 WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    /// Stacks that grew after they were finished: (folder, name, versions that only added
    /// files), most first.
    pub fn grown(&self) -> Result<Vec<(String, String, u32)>, JournalError> {
        let mut st = self.conn.prepare_cached(
            "SELECT dir, name, grew FROM stacks WHERE grew > 0 ORDER BY grew DESC, name",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// How many sections the last streamed version of a stack still being written held
    /// (0: none streamed).
    pub fn streamed(&self, id: i64) -> Result<usize, JournalError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT streamed FROM stacks WHERE id = ?1")?
            .query_row([id], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// Whether a streamed stack's work at the collector was abandoned after `max_wait`.
    pub fn abandoned(&self, id: i64) -> Result<bool, JournalError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT abandoned FROM stacks WHERE id = ?1")?
            .query_row([id], |r| r.get(0))?;
        Ok(n != 0)
    }

    /// Stacks still being written that streamed versions to the collector and were not
    /// abandoned: (id, folder, remote name).
    pub fn streaming(&self) -> Result<Vec<(i64, String, String)>, JournalError> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT id, dir, name FROM stacks
                 WHERE state = 'waiting' AND streamed > 0 AND abandoned = 0",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// A streamed stack's work at the collector was abandoned after `max_wait`: `line` is
    /// what its status shows; it streams no more.
    pub fn set_abandoned(&mut self, id: i64, line: &str) -> Result<(), JournalError> {
        self.conn
            .prepare_cached(
                "UPDATE stacks SET abandoned = 1, outcome = ?2, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id, line, now()])?;
        Ok(())
    }

    /// The collector accepted version `version` of a stack still being written, holding its
    /// first `sections`: the stack stays waiting, and its next submission is the next version.
    /// A version already counted changes nothing (the answer came twice).
    pub fn stream_accepted(
        &mut self,
        id: i64,
        version: u32,
        sections: usize,
    ) -> Result<(), JournalError> {
        self.conn
            .prepare_cached(
                "UPDATE stacks SET version = ?2 + 1, streamed = ?3, updated_at = ?4
                 WHERE id = ?1 AND version = ?2",
            )?
            .execute(params![id, version, sections as i64, now()])?;
        Ok(())
    }

    /// Starts the next version of a submitted stack whose files changed.
    pub fn next_version(&mut self, id: i64) -> Result<u32, JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_move(&tx, id, StackState::Waiting)?;
        tx.prepare_cached(
            "UPDATE stacks SET version = version + 1, state = 'waiting', reason = 'files changed after submission',
             remote_id = NULL, outcome = '', bytes_sent = 0, send_secs = 0, updated_at = ?2 WHERE id = ?1")?.execute(
            params![id, now()],
        )?;
        let v: u32 = tx
            .prepare_cached("SELECT version FROM stacks WHERE id = ?1")?
            .query_row([id], |r| r.get(0))?;
        tx.commit()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_and_its_wal_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let old = unsafe { libc::umask(0o022) };
        let mut j = Journal::open(d.path()).unwrap();
        unsafe { libc::umask(old) };
        j.ensure_stack("/x/s", "s", "aligntk").unwrap();
        let mut seen = 0;
        for n in ["agent.db", "agent.db-wal", "agent.db-shm"] {
            if let Ok(m) = std::fs::metadata(d.path().join(n)) {
                assert_eq!(m.permissions().mode() & 0o777, 0o600, "{n}");
                seen += 1;
            }
        }
        assert!(seen >= 2, "the WAL files were not made");
        // an older journal made 0644 is narrowed at the next open
        drop(j);
        std::fs::set_permissions(
            d.path().join("agent.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        Journal::open(d.path()).unwrap();
        let m = std::fs::metadata(d.path().join("agent.db")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_journal_from_before_outcomes_reads_and_then_gains_them() {
        let d = tempfile::tempdir().unwrap();
        let old = Connection::open(d.path().join("agent.db")).unwrap();
        old.execute_batch(
            "CREATE TABLE stacks (id INTEGER PRIMARY KEY, dir TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
               workflow TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 1, state TEXT NOT NULL,
               reason TEXT NOT NULL DEFAULT '', remote_id INTEGER, bytes_sent INTEGER NOT NULL DEFAULT 0,
               send_secs REAL NOT NULL DEFAULT 0, updated_at TEXT NOT NULL);
             CREATE TABLE files (stack_id INTEGER NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,
               mtime_ns INTEGER NOT NULL, blake3 BLOB NOT NULL, sent INTEGER NOT NULL DEFAULT 0,
               PRIMARY KEY (stack_id, name));
             INSERT INTO stacks (dir, name, workflow, state, remote_id, updated_at)
               VALUES ('/in/s', 's', 'aligntk', 'submitted', 7, 'then');",
        )
        .unwrap();
        drop(old);
        // status on a journal no daemon of this version opened: read, not written
        let ro = Journal::open_read_only(d.path()).unwrap();
        assert_eq!(ro.stacks().unwrap()[0].outcome, "");
        drop(ro);
        let mut j = Journal::open(d.path()).unwrap();
        assert_eq!(j.outcomes_pending().unwrap(), [(1, 7)]);
        assert!(j.set_outcome(1, 7, "running 1/4", false).unwrap());
        assert!(
            !j.set_outcome(1, 7, "running 1/4", false).unwrap(),
            "unchanged"
        );
        assert!(
            !j.set_outcome(1, 8, "done", true).unwrap(),
            "another version's answer"
        );
        assert!(j.set_outcome(1, 7, "done", true).unwrap());
        assert!(j.outcomes_pending().unwrap().is_empty());
        assert_eq!(j.stacks().unwrap()[0].outcome, "done");
    }

    fn rec(name: &str, h: u8) -> FileRecord {
        FileRecord {
            name: name.into(),
            size: 10,
            mtime_ns: 1,
            blake3: [h; 32],
            sent: false,
        }
    }

    #[test]
    fn status_reads_while_the_daemon_holds_a_write_lock() {
        let d = tempfile::tempdir().unwrap();
        assert!(Journal::open_read_only(d.path())
            .unwrap()
            .stacks()
            .unwrap()
            .is_empty());
        let mut j = Journal::open(d.path()).unwrap();
        j.ensure_stack("/in/s", "s", "qa").unwrap();
        let tx = j
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        tx.execute("UPDATE stacks SET reason = 'busy'", []).unwrap();
        let start = std::time::Instant::now();
        let r = Journal::open_read_only(d.path()).unwrap().stacks().unwrap();
        assert_eq!(r.len(), 1);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "a reader must not wait for the writer"
        );
        tx.commit().unwrap();
    }

    #[test]
    fn lifecycle_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(d.path()).unwrap();
            let s = j.ensure_stack("/in/s1", "s1", "aligntk").unwrap();
            assert_eq!((s.state, s.version), (StackState::Waiting, 1));
            j.queue(s.id, &[rec("a.tif", 1), rec("b.tif", 2)]).unwrap();
            let queued = || After::Moved {
                state: StackState::Queued,
                reason: String::new(),
            };
            let all = j
                .record_attempt(s.id, &["a.tif".into()], 10, 0.5, |all| (queued(), all))
                .unwrap();
            assert!(!all, "b.tif is not acknowledged yet");
        }
        let mut j = Journal::open(d.path()).unwrap();
        let s = j.stack("/in/s1").unwrap().unwrap();
        assert_eq!(
            (s.state, s.files, s.bytes, s.bytes_sent),
            (StackState::Queued, 2, 20, 10)
        );
        j.ensure_stack("/in/s2", "s2", "aligntk").unwrap();
        assert_eq!(
            (
                j.count(StackState::Queued).unwrap(),
                j.count(StackState::Waiting).unwrap(),
                j.count(StackState::Submitted).unwrap()
            ),
            (1, 1, 0)
        );
        let files = j.files(s.id).unwrap();
        assert!(files[0].sent && !files[1].sent);
        // requeue with a changed b and the same a: a stays sent
        j.queue(s.id, &[rec("a.tif", 1), rec("b.tif", 3)]).unwrap();
        assert!(j.files(s.id).unwrap()[0].sent);
        // the lifecycle's table is enforced: a queued stack is not submitted without a send,
        // and an attempt that would do so journals nothing of itself
        let e = j.mark_submitted(s.id, 7, "").unwrap_err();
        assert!(matches!(e, JournalError::Illegal { .. }), "{e}");
        let submit = |all| {
            let next = After::Submitted {
                remote_id: 7,
                reason: String::new(),
            };
            (next, all)
        };
        let e = j
            .record_attempt(s.id, &["b.tif".into()], 5, 0.1, submit)
            .unwrap_err();
        assert!(matches!(e, JournalError::Illegal { .. }), "{e}");
        assert!(!j.files(s.id).unwrap()[1].sent);
        assert_eq!(j.stack("/in/s1").unwrap().unwrap().bytes_sent, 10);
        assert_eq!(
            j.stack("/in/s1").unwrap().unwrap().state,
            StackState::Queued
        );
        j.set_state(s.id, StackState::Sending, "").unwrap();
        j.mark_submitted(s.id, 7, "").unwrap();
        assert!(matches!(
            j.set_state(s.id, StackState::Sending, ""),
            Err(JournalError::Illegal { .. })
        ));
        assert_eq!(j.next_version(s.id).unwrap(), 2);
        let s = j.stack("/in/s1").unwrap().unwrap();
        assert_eq!((s.state, s.remote_id), (StackState::Waiting, None));
    }
}
