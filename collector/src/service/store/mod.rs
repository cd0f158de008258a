//! The collector's SQLite database: stacks, jobs, their parents and every state change.
//!
//! Only `service` opens it (SQLite must not be shared across hosts over Lustre/GPFS, and a
//! single owner avoids that). Every change is one `BEGIN IMMEDIATE` transaction, so a kill -9
//! at any instant leaves either the whole submission or none of it.

use crate::science::dag::PlannedJob;
use crate::service::clock::{stamp, Clock, SystemClock};
use crate::service::lifecycle::job::JobState;
pub use beamflow_protocol::api::{JobRow, StackRow};

pub mod jobs;
pub mod launchers;

/// Column `i` of a row as a state; a name this build does not know is an error naming it.
pub(crate) fn state<T>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = beamflow_protocol::states::UnknownState>,
{
    r.get::<_, String>(i)?.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Arc;

/// Failures of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An older database could not be brought up to date.
    #[error("cannot bring the database up to date: {0}")]
    Migration(String),
    /// The database file itself could not be created or restricted.
    #[error("cannot create {0} readable by its owner only: {1}; check the state folder's owner and permissions")]
    File(String, std::io::Error),
    /// A job's move failed or was not in its table.
    #[error(transparent)]
    Move(#[from] crate::service::lifecycle::job::MoveError),
    /// A stored state this build does not know (a database from another version).
    #[error(transparent)]
    UnknownState(#[from] beamflow_protocol::states::UnknownState),
    /// A launcher move its table does not hold was asked for: a bug, never applied.
    #[error("launcher {launcher}: no legal move to {to} by {trigger}; this is a bug in beamflow, please report it")]
    IllegalLauncher {
        /// The launcher.
        launcher: u64,
        /// Where it was asked to go.
        to: &'static str,
        /// By what.
        trigger: String,
    },
    /// Another thread panicked while it held the database.
    #[error("the database lock is poisoned (a thread panicked holding it); restart the service")]
    Poisoned,
    /// The same stack version was submitted before with other files.
    #[error("stack {stack} version {version} was already submitted with different files; a changed stack must come as a new version")]
    Conflict {
        /// Stack.
        stack: String,
        /// Version.
        version: u32,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stacks (
    id INTEGER PRIMARY KEY,
    beamline TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    workflow TEXT NOT NULL,
    dir TEXT NOT NULL,
    work_dir TEXT NOT NULL,
    digest TEXT NOT NULL,
    files TEXT NOT NULL,
    created_at TEXT NOT NULL,
    prepared INTEGER NOT NULL DEFAULT 0,
    partial INTEGER NOT NULL DEFAULT 0,
    UNIQUE (beamline, name, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    stack_id INTEGER NOT NULL REFERENCES stacks(id),
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    command TEXT NOT NULL,
    work_dir TEXT NOT NULL,
    nodes INTEGER NOT NULL,
    ranks_per_node INTEGER NOT NULL,
    threads_per_rank INTEGER NOT NULL,
    cpu_affinity TEXT NOT NULL,
    env TEXT NOT NULL,
    check_summary TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    launcher_id INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    expected_secs REAL NOT NULL DEFAULT 0,
    size_class INTEGER NOT NULL DEFAULT 0,
    UNIQUE (stack_id, name)
);
CREATE TABLE IF NOT EXISTS job_parents (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    parent_id INTEGER NOT NULL REFERENCES jobs(id),
    PRIMARY KEY (job_id, parent_id)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    at TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_by_stack_state ON jobs(stack_id, state);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job_id);
CREATE INDEX IF NOT EXISTS parents_by_parent ON job_parents(parent_id);
CREATE TABLE IF NOT EXISTS launchers (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    scheduler TEXT NOT NULL,
    batch_id TEXT NOT NULL DEFAULT '',
    nodes INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    submitted_at TEXT NOT NULL,
    heartbeat_at REAL,
    ended_at TEXT,
    slots INTEGER NOT NULL DEFAULT 0,
    walltime_secs INTEGER NOT NULL DEFAULT 0,
    window INTEGER NOT NULL DEFAULT 0,
    deadline REAL
);
CREATE TABLE IF NOT EXISTS runtimes (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    size_class INTEGER NOT NULL,
    secs REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runtimes_by_step ON runtimes(workflow, step, size_class);
CREATE TABLE IF NOT EXISTS removals (
    id INTEGER PRIMARY KEY,
    stack_id INTEGER NOT NULL REFERENCES stacks(id),
    at TEXT NOT NULL,
    what TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS removals_by_stack ON removals(stack_id);
";

/// The `stacks` table's definition from [`SCHEMA`], under another name: the migration builds
/// the new table from the one definition there is.
fn stacks_table(name: &str) -> String {
    let start = SCHEMA
        .find("CREATE TABLE IF NOT EXISTS stacks (")
        .expect("SCHEMA defines stacks");
    let end = start + SCHEMA[start..].find(");").expect("the definition ends") + 1;
    SCHEMA[start..end].replace("IF NOT EXISTS stacks (", &format!("{name} ("))
}

/// Brings a database written before beamlines existed up to date, in one transaction: every
/// stack it holds becomes `legacy`'s, and a stack's name is unique per beamline. Its folders
/// and work folders stay where they are (their rows keep their absolute paths), so jobs that
/// ran or run keep reading what they read. A database that has beamlines is left alone.
fn migrate_to_beamlines(conn: &Connection, legacy: &str) -> Result<(), DbError> {
    let has_stacks: bool = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'stacks'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_stacks {
        return Ok(());
    }
    let has_beamline: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('stacks') WHERE name = 'beamline'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if has_beamline {
        return Ok(());
    }
    // the unique key changes, which SQLite can only do by rebuilding the table; foreign
    // keys are off meanwhile (the ids do not change) and checked before the commit
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let rebuilt = conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         {};
         INSERT INTO stacks_with_beamlines
             (id, beamline, name, version, workflow, dir, work_dir, digest, files, created_at, prepared)
             SELECT id, '{}', name, version, workflow, dir, work_dir, digest, files, created_at, prepared
             FROM stacks;
         DROP TABLE stacks;
         ALTER TABLE stacks_with_beamlines RENAME TO stacks;",
        stacks_table("stacks_with_beamlines"),
        legacy.replace('\'', "''")
    ));
    if let Err(e) = rebuilt {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    let broken: i64 = conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
        r.get(0)
    })?;
    if broken > 0 {
        conn.execute_batch("ROLLBACK")?;
        return Err(DbError::Migration(format!(
            "{broken} rows would lose their stack; the database was left as it was"
        )));
    }
    conn.execute_batch("COMMIT")?;
    tracing::info!(
        beamline = legacy,
        "the database had no beamlines; its stacks are now {legacy}'s"
    );
    Ok(())
}

/// A new submission, as `serve` forwards it.
#[derive(Debug, Clone)]
pub struct NewStack<'a> {
    /// The beamline it came from.
    pub beamline: &'a str,
    /// Path relative to the beamline's folder.
    pub name: &'a str,
    /// Version.
    pub version: u32,
    /// Workflow.
    pub workflow: &'a str,
    /// Absolute folder of this version's snapshot: the bytes its jobs read, never changed.
    pub dir: &'a str,
    /// Absolute work folder.
    pub work_dir: &'a str,
    /// BLAKE3 over the sorted (path, hash) list: equal means the same stack version.
    pub digest: &'a str,
    /// JSON list of files.
    pub files_json: &'a str,
    /// Whether this version supersedes the older versions' jobs that have not started
    /// (`[[watch]] on_change = "supersede"`, the default) or lets every version run.
    pub supersede: bool,
    /// A streamed stack's sections so far, not the sealed stack.
    pub partial: bool,
}

/// One planned job of a new stack version, with the two events of its birth (created, then
/// ready or awaiting its parents); its id.
fn insert_job(
    tx: &rusqlite::Transaction,
    stack_id: i64,
    s: &NewStack<'_>,
    j: &PlannedJob,
    at: &str,
) -> Result<i64, DbError> {
    let (state, why) = if j.parents.is_empty() {
        (JobState::Ready, "no parents".to_string())
    } else {
        let why = format!("waits for {}", j.parents.join(", "));
        (JobState::AwaitingParents, why)
    };
    tx.execute(
        "INSERT INTO jobs (stack_id, name, state, command, work_dir, nodes, ranks_per_node,
         threads_per_rank, cpu_affinity, env, check_summary, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            stack_id,
            j.name,
            state.as_str(),
            crate::science::dag::encode(&j.argv),
            s.work_dir,
            j.nodes,
            j.ranks_per_node,
            j.threads_per_rank,
            j.cpu_affinity,
            serde_json::to_string(&j.env).unwrap_or_else(|_| "{}".into()),
            j.check_summary,
            why,
        ],
    )?;
    let id = tx.last_insert_rowid();
    let reason = format!("stack {} v{} submitted", s.name, s.version);
    tx.execute(
        "INSERT INTO events (job_id, at, from_state, to_state, reason) VALUES (?1, ?2, NULL, ?3, ?4)",
        params![id, at, JobState::Created.as_str(), reason],
    )?;
    tx.execute(
        "INSERT INTO events (job_id, at, from_state, to_state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, at, JobState::Created.as_str(), state.as_str(), why],
    )?;
    Ok(id)
}

/// Moves the older versions' jobs that have not started to SUPERSEDED, in the submission's
/// own transaction: one stack, one DAG that runs to the end. A streamed stack's partial
/// versions keep the jobs the new version (`stack_id`) has too, and all of them when the new
/// one is partial as well (it plans only what changed): the new one's twin waits for them and
/// takes their outputs, so a stack streamed one section at a time runs each pair once instead
/// of starting it again with every section that arrives.
fn superseded_by(
    tx: &rusqlite::Transaction<'_>,
    s: &NewStack<'_>,
    stack_id: i64,
    at: &str,
) -> Result<usize, DbError> {
    use crate::service::lifecycle::job::{change, Trigger};
    let from: Vec<&str> =
        crate::service::lifecycle::job::sources(JobState::Superseded, Trigger::Superseded)
            .into_iter()
            .map(JobState::as_str)
            .collect();
    let ids: Vec<i64> = {
        let mut st = tx.prepare(&format!(
            "SELECT j.id FROM jobs j JOIN stacks k ON k.id = j.stack_id
             WHERE k.beamline = ?1 AND k.name = ?2 AND k.version < ?3 AND j.state IN ({})
               AND NOT (k.partial = 1 AND (?5 OR EXISTS
                 (SELECT 1 FROM jobs n WHERE n.stack_id = ?4 AND n.name = j.name)))",
            from.iter()
                .map(|f| format!("'{f}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
        let rows = st
            .query_map(
                params![s.beamline, s.name, s.version, stack_id, s.partial],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?;
        rows
    };
    let reason = format!("superseded by v{}", s.version);
    let mut n = 0;
    for id in ids {
        n += change(
            tx,
            id as u64,
            JobState::Superseded,
            Trigger::Superseded,
            &reason,
            at,
        )? as usize;
    }
    Ok(n)
}

/// Plans that do not depend on bound values: otherwise SQLite recompiles a cached statement
/// each time a value bound against an indexed column changes, which was most of what a
/// launcher's request cost.
fn stable_plans(conn: &Connection) -> Result<(), DbError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Compiled statements kept per connection.
const STATEMENT_CACHE: usize = 128;

/// The database handle owned by the service.
pub struct Db {
    pub(crate) conn: Connection,
    clock: Arc<dyn Clock>,
}

/// The columns later versions brought to tables an earlier version made: (table, column,
/// declaration).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("launchers", "slots", "INTEGER NOT NULL DEFAULT 0"),
    // a launcher's wall time and whether it was shaped to a backfill window
    ("launchers", "walltime_secs", "INTEGER NOT NULL DEFAULT 0"),
    ("launchers", "window", "INTEGER NOT NULL DEFAULT 0"),
    // when a running launcher's jobs must be done (seconds since the epoch)
    ("launchers", "deadline", "REAL"),
    ("stacks", "partial", "INTEGER NOT NULL DEFAULT 0"),
    // what a job is expected to need of a launcher, and the size class it is learned by
    ("jobs", "expected_secs", "REAL NOT NULL DEFAULT 0"),
    ("jobs", "size_class", "INTEGER NOT NULL DEFAULT 0"),
];

/// Adds the columns later versions brought to a table an earlier version made.
fn add_columns(conn: &Connection) -> Result<(), DbError> {
    for (table, column, decl) in ADDED_COLUMNS {
        let has: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}

impl Db {
    /// Opens (creating if needed) the database file. It holds every stack's names and every
    /// job's command, so it is readable by its owner only, like `server-info`; the WAL and
    /// shared-memory files SQLite makes beside it take the same mode from the file.
    pub fn open(path: &Path, legacy_beamline: &str) -> Result<Db, DbError> {
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| DbError::File(path.display().to_string(), e))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| DbError::File(path.display().to_string(), e))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // every hot statement stays compiled: the default cache of 16 is smaller than the
        // set the engine and the launchers' requests use, and a miss costs a compile
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        stable_plans(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate_to_beamlines(&conn, legacy_beamline)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        add_columns(&conn)?;
        Ok(Db {
            conn,
            clock: Arc::new(SystemClock),
        })
    }

    /// A database in memory on the given clock: the engine's tests run on it, and never sleep.
    pub fn in_memory(clock: Arc<dyn Clock>) -> Result<Db, DbError> {
        let conn = Connection::open_in_memory()?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        stable_plans(&conn)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Db { conn, clock })
    }

    /// Puts the database on another clock (tests that move time).
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    /// The time every write of this handle is stamped with.
    pub fn now(&self) -> std::time::SystemTime {
        self.clock.now()
    }

    pub(crate) fn tx(&mut self) -> Result<rusqlite::Transaction<'_>, DbError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Records a stack version and its jobs in one transaction. Returns (stack id, created,
    /// job count); an identical earlier submission returns its id with `created == false`.
    pub fn submit(
        &mut self,
        s: &NewStack<'_>,
        jobs: &[PlannedJob],
    ) -> Result<(u64, bool, u32), DbError> {
        let at = stamp(self.now());
        let tx = self.tx()?;
        let existing: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, digest FROM stacks WHERE beamline = ?1 AND name = ?2 AND version = ?3",
                params![s.beamline, s.name, s.version],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, digest)) = existing {
            if digest != s.digest {
                return Err(DbError::Conflict {
                    stack: format!("{}/{}", s.beamline, s.name),
                    version: s.version,
                });
            }
            let n: i64 =
                tx.query_row("SELECT COUNT(*) FROM jobs WHERE stack_id = ?1", [id], |r| {
                    r.get(0)
                })?;
            return Ok((id as u64, false, n as u32));
        }
        tx.execute(
            "INSERT INTO stacks (beamline, name, version, workflow, dir, work_dir, digest, files, created_at, partial)
             VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10)",
            params![
                s.name,
                s.version,
                s.workflow,
                s.dir,
                s.work_dir,
                s.digest,
                s.files_json,
                at,
                s.beamline,
                s.partial
            ],
        )?;
        let stack_id = tx.last_insert_rowid();
        let mut ids = std::collections::HashMap::new();
        for j in jobs {
            let id = insert_job(&tx, stack_id, s, j, &at)?;
            ids.insert(j.name.clone(), id);
            for p in &j.parents {
                let pid = ids[p]; // planned jobs come parents-first
                tx.execute(
                    "INSERT INTO job_parents (job_id, parent_id) VALUES (?1, ?2)",
                    params![id, pid],
                )?;
            }
        }
        if s.supersede {
            superseded_by(&tx, s, stack_id, &at)?;
        }
        tx.commit()?;
        Ok((stack_id as u64, true, jobs.len() as u32))
    }

    /// Jobs, optionally filtered by stack name and state.
    pub fn jobs(&self, stack: Option<&str>, state: Option<&str>) -> Result<Vec<JobRow>, DbError> {
        self.jobs_where(stack, state, None, None)
    }

    /// One job.
    pub fn job(&self, id: u64) -> Result<Option<JobRow>, DbError> {
        Ok(self.jobs_where(None, None, Some(id), None)?.pop())
    }

    /// Since `since` (a stamp): stack versions accepted, their bytes, and jobs finished.
    pub fn throughput(&self, since: &str) -> Result<(u64, u64, u64), DbError> {
        let (stacks, bytes): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT COUNT(DISTINCT s.id), COALESCE(SUM(json_extract(f.value, '$.size')), 0)
             FROM stacks s LEFT JOIN json_each(s.files) f WHERE s.created_at >= ?1",
            )?
            .query_row([since], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let jobs: i64 = self
            .conn
            .prepare_cached(&format!(
                "SELECT COUNT(*) FROM events WHERE to_state = '{}' AND at >= ?1",
                JobState::JobFinished.as_str()
            ))?
            .query_row([since], |r| r.get(0))?;
        Ok((stacks as u64, bytes as u64, jobs as u64))
    }

    /// Seconds from acceptance to the last JOB_FINISHED of each DAG that finished since
    /// `since`.
    pub fn dag_times(&self, since: &str) -> Result<Vec<f64>, DbError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT s.created_at, MAX(e.at) FROM stacks s JOIN jobs j ON j.stack_id = s.id
             JOIN events e ON e.job_id = j.id AND e.to_state = '{}'
             WHERE NOT EXISTS (SELECT 1 FROM jobs o WHERE o.stack_id = s.id AND o.state != '{}')
             GROUP BY s.id HAVING MAX(e.at) >= ?1",
            JobState::JobFinished.as_str(),
            JobState::JobFinished.as_str()
        ))?;
        let v: Vec<(String, String)> = st
            .query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(v.iter()
            .filter_map(|(a, b)| crate::service::clock::between(a, b))
            .collect())
    }

    /// How many rows of `table` (`jobs` or `launchers`) are in each state.
    pub fn count_by_state(&self, table: &str) -> Result<Vec<(String, i64)>, DbError> {
        let table = if table == "launchers" {
            "launchers"
        } else {
            "jobs"
        };
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT state, COUNT(*) FROM {table} GROUP BY state"
        ))?;
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// The jobs of one stack version (its DAG).
    pub fn dag(&self, stack_id: u64) -> Result<Vec<JobRow>, DbError> {
        self.jobs_where(None, None, None, Some(stack_id))
    }

    fn jobs_where(
        &self,
        stack: Option<&str>,
        state: Option<&str>,
        id: Option<u64>,
        stack_id: Option<u64>,
    ) -> Result<Vec<JobRow>, DbError> {
        let mut st = self.conn.prepare(
            "SELECT j.id, s.name, s.version, j.name, j.state, j.nodes, j.ranks_per_node,
                    j.threads_per_rank, j.cpu_affinity, j.command, j.attempts, j.reason, j.launcher_id, s.beamline
             FROM jobs j JOIN stacks s ON s.id = j.stack_id
             WHERE (?1 IS NULL OR s.name = ?1) AND (?2 IS NULL OR j.state = ?2) AND (?3 IS NULL OR j.id = ?3)
               AND (?4 IS NULL OR j.stack_id = ?4)
             ORDER BY j.id",
        )?;
        let mut rows: Vec<JobRow> = st
            .query_map(
                params![
                    stack,
                    state,
                    id.map(|v| v as i64),
                    stack_id.map(|v| v as i64)
                ],
                |r| {
                    Ok(JobRow {
                        id: r.get::<_, i64>(0)? as u64,
                        stack: r.get(1)?,
                        version: r.get(2)?,
                        name: r.get(3)?,
                        state: self::state(r, 4)?,
                        parents: Vec::new(),
                        nodes: r.get(5)?,
                        ranks_per_node: r.get(6)?,
                        threads_per_rank: r.get(7)?,
                        cpu_affinity: r.get(8)?,
                        command: String::new(),
                        argv: crate::science::dag::decode(&r.get::<_, String>(9)?),
                        attempts: r.get(10)?,
                        reason: r.get(11)?,
                        launcher: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
                        beamline: r.get(13)?,
                    })
                },
            )?
            .collect::<Result<_, _>>()?;
        let mut pst = self
            .conn
            .prepare("SELECT parent_id FROM job_parents WHERE job_id = ?1 ORDER BY parent_id")?;
        for row in &mut rows {
            row.command = beamflow_config::argv::render(&row.argv);
            row.parents = pst
                .query_map([row.id as i64], |r| r.get::<_, i64>(0).map(|v| v as u64))?
                .collect::<Result<_, _>>()?;
        }
        Ok(rows)
    }

    /// A stack version's work folder, if the version exists.
    pub fn work_dir_of(&self, id: u64) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT work_dir FROM stacks WHERE id = ?1")?
            .query_row([id as i64], |r| r.get(0))
            .optional()?)
    }

    /// Every stack version.
    pub fn stacks(&self) -> Result<Vec<StackRow>, DbError> {
        self.stacks_limited(i64::MAX)
    }

    /// The newest `limit` stack versions, newest first (the status page's list).
    pub fn recent_stacks(&self, limit: usize) -> Result<Vec<StackRow>, DbError> {
        let mut v = self.stacks_limited(limit as i64)?;
        v.reverse();
        Ok(v)
    }

    fn stacks_limited(&self, limit: i64) -> Result<Vec<StackRow>, DbError> {
        let mut st = self.conn.prepare_cached(
            "SELECT * FROM (SELECT id, name, version, workflow, work_dir, files, created_at, beamline, partial
             FROM stacks ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let rows = st
            .query_map([limit], |r| {
                let files: String = r.get(5)?;
                let n = serde_json::from_str::<Vec<serde_json::Value>>(&files)
                    .map(|v| v.len())
                    .unwrap_or(0);
                Ok(StackRow {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    version: r.get(2)?,
                    workflow: r.get(3)?,
                    work_dir: r.get(4)?,
                    files: n as u64,
                    created_at: r.get(6)?,
                    beamline: r.get(7)?,
                    partial: r.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `stacks` table as the version before beamlines wrote it (recorded from that
    /// version's schema), with one stack and one job in it.
    const BEFORE_BEAMLINES: &str = "
        CREATE TABLE stacks (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,
            workflow TEXT NOT NULL, dir TEXT NOT NULL, work_dir TEXT NOT NULL,
            digest TEXT NOT NULL, files TEXT NOT NULL, created_at TEXT NOT NULL,
            prepared INTEGER NOT NULL DEFAULT 0, UNIQUE (name, version));
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY, stack_id INTEGER NOT NULL REFERENCES stacks(id),
            name TEXT NOT NULL, state TEXT NOT NULL, command TEXT NOT NULL,
            work_dir TEXT NOT NULL, nodes INTEGER NOT NULL, ranks_per_node INTEGER NOT NULL,
            threads_per_rank INTEGER NOT NULL, cpu_affinity TEXT NOT NULL, env TEXT NOT NULL,
            check_summary TEXT, attempts INTEGER NOT NULL DEFAULT 0, launcher_id INTEGER,
            reason TEXT NOT NULL DEFAULT '', UNIQUE (stack_id, name));
        INSERT INTO stacks VALUES (7, 'run1', 1, 'qa', '/d/remote/run1', '/d/work/run1/v1',
            'abc', '[{\"path\":\"run1/a.tif\"}]', '2026-11-01T00:00:00Z', 1);
        INSERT INTO jobs (id, stack_id, name, state, command, work_dir, nodes, ranks_per_node,
            threads_per_rank, cpu_affinity, env)
            VALUES (3, 7, 'qa', 'JOB_FINISHED', 'qa images --out qa.json', '/d/work/run1/v1',
            1, 1, 1, 'none', '{}');
    ";

    #[test]
    fn a_database_from_before_beamlines_is_read_with_its_stacks_under_the_legacy_one() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("collector.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(BEFORE_BEAMLINES)
            .unwrap();
        let db = Db::open(&path, "legacy").unwrap();
        let stacks = db.stacks().unwrap();
        assert_eq!(stacks.len(), 1);
        assert_eq!(
            (
                stacks[0].id,
                stacks[0].beamline.as_str(),
                stacks[0].name.as_str()
            ),
            (7, "legacy", "run1")
        );
        let job = db.job(3).unwrap().unwrap();
        assert_eq!(
            (job.beamline.as_str(), job.state.as_str()),
            ("legacy", "JOB_FINISHED")
        );
        // an old plain command line is still shown and split as the config would
        assert_eq!(job.argv, ["qa", "images", "--out", "qa.json"]);
        drop(db);
        // opening again changes nothing; the same name may now exist per beamline
        let mut db = Db::open(&path, "other").unwrap();
        assert_eq!(db.stacks().unwrap()[0].beamline, "legacy");
        let s = NewStack {
            beamline: "b2",
            name: "run1",
            version: 1,
            workflow: "qa",
            dir: "/d/remote/b2/run1/.beamflow-v1",
            work_dir: "/d/work/b2/run1/v1",
            digest: "def",
            files_json: "[]",
            supersede: true,
            partial: false,
        };
        let (id, created, _) = db.submit(&s, &[]).unwrap();
        assert!(created && id != 7);
        // the same beamline, name and version with other files is still a conflict
        let clash = NewStack {
            beamline: "legacy",
            digest: "zzz",
            ..s
        };
        assert!(matches!(
            db.submit(&clash, &[]),
            Err(DbError::Conflict { .. })
        ));
    }
}
