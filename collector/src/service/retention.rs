//! Retention: `[collector] keep` removes a stack version's received copy (its snapshot, and
//! for the newest version the live files too) and its work folder that long after its DAG
//! finished, never earlier, and never a FAILED or killed one unless `remove_failed` says so.
//! Every removal is a row in `removals` (what, where, how many bytes), which `status` and the
//! page sum up. The decision is a pure function of the DAG's state, its last change and
//! `now`; only paths under the data root and the work root are ever removed.

use crate::service::clock::{between, stamp};
use crate::service::store::{Db, DbError};
use beamflow_protocol::states::JobState;
use rusqlite::params;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where a stack version's DAG is, as far as retention cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Jobs still to run or running: never removed.
    No,
    /// Every job JOB_FINISHED.
    Done,
    /// Some job FAILED or USER_KILLED and nothing else runs.
    Failed,
}

/// Whether a stack version that ended this way, `age` after its last change, is due.
pub fn due(ended: Ended, age: Duration, keep: Duration, remove_failed: bool) -> bool {
    match ended {
        Ended::No => false,
        Ended::Done => age >= keep,
        Ended::Failed => remove_failed && age >= keep,
    }
}

/// A stack version retention may look at.
struct Candidate {
    id: u64,
    snapshot: PathBuf,
    work: PathBuf,
    files: Vec<String>,
    newest: bool,
    ended: Ended,
    last: String,
}

/// Removes `dir` and everything in it except the folders in `keep` that lie inside it (and
/// the folders on the way to them): work folders of versions made before `@vN` names (stacks
/// `s` and `s/v1` had `s/v1` and `s/v1/v1`) may hold another stack version's work. Returns
/// whether `dir` itself is gone.
pub fn remove_all_but(dir: &Path, keep: &[PathBuf]) -> std::io::Result<bool> {
    let inside: Vec<&PathBuf> = keep
        .iter()
        // one freed earlier in the same sweep is gone already: nothing of it to spare
        .filter(|k| k.starts_with(dir) && k.as_path() != dir && k.exists())
        .collect();
    if keep.iter().any(|k| k.as_path() == dir) {
        return Ok(false);
    }
    if inside.is_empty() {
        std::fs::remove_dir_all(dir)?;
        return Ok(true);
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let is_dir = e.file_type()?.is_dir();
        if is_dir && inside.iter().any(|k| k.starts_with(&p)) {
            remove_all_but(&p, keep)?;
        } else if is_dir {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(false)
}

fn size_of(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

impl Db {
    fn candidates(&self) -> Result<Vec<Candidate>, DbError> {
        let mut st = self.conn.prepare_cached(
            &format!("SELECT s.id, s.dir, s.work_dir, s.files,
                    NOT EXISTS (SELECT 1 FROM stacks n WHERE n.beamline = s.beamline AND n.name = s.name AND n.version > s.version),
                    SUM(j.state IN ('{}', '{}')), SUM(j.state IN ('{}', '{}')), COUNT(j.id),
                    (SELECT MAX(e.at) FROM events e JOIN jobs k ON k.id = e.job_id WHERE k.stack_id = s.id)
             FROM stacks s JOIN jobs j ON j.stack_id = s.id
             WHERE NOT EXISTS (SELECT 1 FROM removals r WHERE r.stack_id = s.id AND r.what = 'stack version')
             GROUP BY s.id", JobState::JobFinished.as_str(), JobState::Superseded.as_str(), JobState::Failed.as_str(), JobState::UserKilled.as_str()),
        )?;
        let rows = st
            .query_map([], |r| {
                let files: String = r.get(3)?;
                let (done, failed, total): (i64, i64, i64) = (r.get(5)?, r.get(6)?, r.get(7)?);
                let ended = if done == total {
                    Ended::Done
                } else if failed > 0 && done + failed == total {
                    Ended::Failed
                } else {
                    Ended::No
                };
                Ok(Candidate {
                    id: r.get::<_, i64>(0)? as u64,
                    snapshot: PathBuf::from(r.get::<_, String>(1)?),
                    work: PathBuf::from(r.get::<_, String>(2)?),
                    files: serde_json::from_str::<Vec<crate::api::SubmitFile>>(&files)
                        .map(|v| v.into_iter().map(|f| f.path).collect())
                        .unwrap_or_default(),
                    newest: r.get(4)?,
                    ended,
                    last: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The work folders of the stack versions whose work has not been removed, by id: what
    /// removing one version's work folder must never touch of the others.
    fn live_work(&self) -> Result<Vec<(u64, PathBuf)>, DbError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, work_dir FROM stacks s WHERE NOT EXISTS
             (SELECT 1 FROM removals r WHERE r.stack_id = s.id AND r.what = 'stack version')",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    PathBuf::from(r.get::<_, String>(1)?),
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn removed(&mut self, stack: u64, what: &str, path: &Path, bytes: u64) -> Result<(), DbError> {
        let at = stamp(self.now());
        self.conn.execute(
            "INSERT INTO removals (stack_id, at, what, path, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                stack as i64,
                at,
                what,
                path.display().to_string(),
                bytes as i64
            ],
        )?;
        Ok(())
    }

    /// What retention freed: stack versions and bytes.
    pub fn freed(&self) -> Result<(u64, u64), DbError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(DISTINCT stack_id) FILTER (WHERE what = 'stack version'), COALESCE(SUM(bytes), 0) FROM removals",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    /// Stack versions freed, by id, with the bytes freed.
    pub fn freed_stacks(&self) -> Result<std::collections::HashMap<u64, u64>, DbError> {
        let mut st = self.conn.prepare_cached(
            "SELECT stack_id, SUM(bytes) FROM removals GROUP BY stack_id HAVING SUM(what = 'stack version') > 0",
        )?;
        let v = st
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }
}

/// Applies `keep` once at `now`: removes what is due, records each removal. Returns how
/// many stack versions were freed.
pub fn sweep(
    db: &std::sync::Mutex<Db>,
    cfg: &beamflow_config::Config,
    now: SystemTime,
) -> Result<usize, DbError> {
    let Some(keep) = cfg.collector.keep else {
        return Ok(0);
    };
    let (candidates, live) = {
        let g = db.lock().map_err(|_| DbError::Poisoned)?;
        (g.candidates()?, g.live_work()?)
    };
    let data_root = &cfg.collector.data_root;
    let work_root = &cfg.service.work_root;
    let now_s = stamp(now);
    let mut freed = 0;
    for c in candidates {
        let age = between(&c.last, &now_s).unwrap_or(0.0).max(0.0);
        if !due(
            c.ended,
            Duration::from_secs_f64(age),
            keep.0,
            cfg.collector.remove_failed,
        ) {
            continue;
        }
        // only what lies under the roots this service owns
        if !c.snapshot.starts_with(data_root) || !c.work.starts_with(work_root) {
            tracing::warn!(
                stack = c.id,
                "retention skips a stack version whose folders are outside the data or work root"
            );
            continue;
        }
        let others: Vec<PathBuf> = live
            .iter()
            .filter(|(id, _)| *id != c.id)
            .map(|(_, w)| w.clone())
            .collect();
        let mut removals = remove_folders(&c, &others);
        if c.newest {
            // the live files are this version's: the received copy goes with it
            removals.extend(remove_received(&c, data_root));
        }
        let total: u64 = removals.iter().map(|r| r.2).sum();
        let mut g = db.lock().map_err(|_| DbError::Poisoned)?;
        for (what, path, bytes) in &removals {
            g.removed(c.id, what, path, *bytes)?;
        }
        g.removed(c.id, "stack version", &c.snapshot, 0)?;
        tracing::info!(
            stack = c.id,
            bytes = total,
            "retention freed a stack version"
        );
        freed += 1;
    }
    Ok(freed)
}

/// What retention removed: what it was, where, and its bytes.
type Removal = (&'static str, PathBuf, u64);

/// Removes a version's work folder and snapshot, but not the work of `others` inside them.
fn remove_folders(c: &Candidate, others: &[PathBuf]) -> Vec<Removal> {
    let mut removals = Vec::new();
    for (what, dir) in [("work folder", &c.work), ("snapshot", &c.snapshot)] {
        if !dir.exists() {
            continue;
        }
        let bytes = size_of(dir);
        match remove_all_but(dir, others) {
            Ok(gone) => {
                if !gone {
                    tracing::warn!(
                        stack = c.id,
                        "{} holds another stack version's work, which stays",
                        dir.display()
                    );
                }
                removals.push((what, dir.clone(), bytes.saturating_sub(size_of(dir))))
            }
            Err(e) => tracing::warn!(stack = c.id, "cannot remove {}: {e}", dir.display()),
        }
    }
    removals
}

/// Removes the received files of the newest version of a stack, and the folders they leave
/// empty up to the beamline's.
fn remove_received(c: &Candidate, data_root: &Path) -> Vec<Removal> {
    let mut removals = Vec::new();
    let Some(stack_dir) = c.snapshot.parent() else {
        return removals;
    };
    let beamline_dir = stack_dir
        .ancestors()
        .find(|a| a.parent() == Some(data_root))
        .map(Path::to_path_buf);
    for f in &c.files {
        let Some(name) = Path::new(f).file_name() else {
            continue;
        };
        let p = stack_dir.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.file_type().is_file() && std::fs::remove_file(&p).is_ok() {
                removals.push(("received file", p, m.len()));
            }
        }
    }
    let mut d = Some(stack_dir.to_path_buf());
    while let Some(dir) = d {
        if Some(&dir) == beamline_dir.as_ref() || std::fs::remove_dir(&dir).is_err() {
            break;
        }
        d = dir.parent().map(Path::to_path_buf);
    }
    removals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_work_folder_spares_another_stack_s_work_inside_it() {
        // the layout before `@vN`: stack `s` v1 worked in s/v1, stack `s/v1` v1 in s/v1/v1
        let d = tempfile::tempdir().unwrap();
        let s_v1 = d.path().join("s/v1");
        let nested = s_v1.join("v1");
        for f in [
            s_v1.join("maps/a.map"),
            s_v1.join("images.lst"),
            nested.join("maps/b.map"),
        ] {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, b"x").unwrap();
        }
        let gone = remove_all_but(&s_v1, std::slice::from_ref(&nested)).unwrap();
        assert!(!gone);
        assert!(
            nested.join("maps/b.map").is_file(),
            "the other stack's work is kept"
        );
        assert!(!s_v1.join("maps").exists() && !s_v1.join("images.lst").exists());
        // and with nothing inside to spare, the folder goes
        assert!(remove_all_but(&nested, &[]).unwrap());
        assert!(!nested.exists());
        // a folder that is itself another version's work is never removed
        std::fs::create_dir_all(&nested).unwrap();
        assert!(!remove_all_but(&nested, std::slice::from_ref(&nested)).unwrap());
        assert!(nested.exists());
    }

    #[test]
    fn only_what_finished_long_enough_ago_is_due() {
        let keep = Duration::from_secs(3 * 86400);
        let day = Duration::from_secs(86400);
        assert!(
            !due(Ended::No, 100 * day, keep, true),
            "never before the DAG ends"
        );
        assert!(!due(Ended::Done, 2 * day, keep, false));
        assert!(due(Ended::Done, 3 * day, keep, false));
        assert!(
            !due(Ended::Failed, 10 * day, keep, false),
            "FAILED stays for a person"
        );
        assert!(due(Ended::Failed, 10 * day, keep, true), "unless asked");
    }
}
