//! What `doctor` reports, on both programs: one line per check, `ok` or `FAIL` with the fix.
//! The agent runs the collector's doctor over its own link and reads it as JSON, so the
//! report's shape lives here beside the other types both programs share.

use serde::{Deserialize, Serialize};

/// One check and its outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked, short (`data root`, `SSH master`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about a failure (empty when it passed).
    #[serde(default)]
    pub fix: String,
    /// Passed, but something worth a person's look (a config that wastes work): shown as
    /// `WARN` with its fix, without failing the report.
    #[serde(default)]
    pub warn: bool,
}

impl Check {
    /// A passed check.
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: String::new(),
            warn: false,
        }
    }

    /// A check that passed with a warning and what to do about it.
    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: fix.into(),
            warn: true,
        }
    }

    /// A failed check and its fix.
    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            fix: fix.into(),
            warn: false,
        }
    }

    /// `ok    NAME: DETAIL` or `FAIL  NAME: DETAIL — fix: FIX`, always one line: what a
    /// tool printed over several (ssh's warnings, framed in `@`) is joined with `; `.
    pub fn line(&self) -> String {
        let detail = one_line(&self.detail);
        if self.ok && self.warn {
            format!(
                "WARN  {}: {detail} — fix: {}",
                self.name,
                one_line(&self.fix)
            )
        } else if self.ok {
            format!("ok    {}: {detail}", self.name)
        } else {
            format!(
                "FAIL  {}: {detail} — fix: {}",
                self.name,
                one_line(&self.fix)
            )
        }
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '@'))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A whole report, as `beamflow-collector doctor --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The program and its version.
    pub program: String,
    /// The wire protocol it speaks.
    pub protocol: u16,
    /// Its host.
    pub host: String,
    /// Its clock when the report was made (seconds since the epoch), to judge skew.
    pub time: f64,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes the struct it is given and reads the C string
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A folder that takes no new file: what could not be done, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {0}: {1}")]
pub struct Unwritable(pub &'static str, #[source] pub std::io::Error);

/// Whether a folder takes a new file: makes and removes one (permissions alone do not tell,
/// for root, on a read-only mount or a full quota).
pub fn writable(dir: &std::path::Path) -> Result<(), Unwritable> {
    std::fs::create_dir_all(dir).map_err(|e| Unwritable("create it", e))?;
    let probe = dir.join(format!(".beamflow-doctor-{}", std::process::id()));
    std::fs::write(&probe, b"probe").map_err(|e| Unwritable("write in it", e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Now, in seconds since the epoch.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_its_fix_on_the_same_line() {
        let f = Check::fail("data root", "/x: cannot write in it", "make it writable");
        assert_eq!(
            f.line(),
            "FAIL  data root: /x: cannot write in it — fix: make it writable"
        );
        assert_eq!(
            Check::pass("clock", "0.1 s apart").line(),
            "ok    clock: 0.1 s apart"
        );
    }
}
