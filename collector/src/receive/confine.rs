//! Folders inside the data root, reached without ever leaving it.
//!
//! A wire path is already relative and normalised (no `..`, no absolute part), but a symlink
//! someone left inside the data root (`remote/evil -> /elsewhere`) would still lead out.
//! Resolving first and creating after races with whoever changes the tree in between, and
//! `create_dir_all` creates before anyone checks. So a path is walked one component at a
//! time from the opened data root: each folder is opened with `O_NOFOLLOW | O_DIRECTORY`
//! relative to the one before (`openat`), and created with `mkdirat` where it is missing, so
//! nothing is ever created or opened outside the root, whatever happens to the tree
//! meanwhile. The walk ends with an open folder; files in it are reached through
//! `/proc/self/fd/N/NAME`, which resolves to that very folder and cannot be redirected.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why a folder could not be reached inside the data root.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfineError {
    /// A component is a symlink (or not a folder): following it could leave the root.
    #[error("{0:?} is a symlink or not a folder inside the data root; refusing to go through it")]
    NotAFolder(String),
    /// A component is `.` or `..`; wire paths are normalised before they get here, so this
    /// is a bug upstream, refused all the same.
    #[error("{0:?} is not a plain folder name")]
    Dots(String),
    /// The filesystem refused; `errno` tells whether a retry can help.
    #[error("cannot open or create {path:?} in the data root: {cause}")]
    Io {
        /// The folder, relative to the data root.
        path: String,
        /// What the OS said.
        cause: std::io::Error,
    },
}

/// An open folder inside the data root.
#[derive(Debug)]
pub(crate) struct Folder {
    fd: OwnedFd,
}

impl AsRawFd for Folder {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl Folder {
    /// Opens the data root itself (which the operator chose; it may be a symlink).
    pub fn root(path: &Path) -> std::io::Result<Folder> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Folder {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Walks `rel` (components separated by `/`) down from this folder, creating what is
    /// missing when `create` is set, never following a symlink.
    /// A walk that fails part way (a name too long, a symlink further down) removes the
    /// folders it made, so nothing of a refused path stays behind.
    pub fn walk(&self, rel: &str, create: bool) -> Result<Folder, ConfineError> {
        let mut made = Vec::new();
        let r = self.walk_making(rel, create, &mut made);
        if r.is_err() {
            for (parent, name) in made.iter().rev() {
                // only empty folders go: one another session filled meanwhile stays
                unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) };
            }
        }
        r
    }

    fn walk_making(
        &self,
        rel: &str,
        create: bool,
        made: &mut Vec<(OwnedFd, CString)>,
    ) -> Result<Folder, ConfineError> {
        let mut cur = self.fd.try_clone().map_err(|source| ConfineError::Io {
            path: String::new(),
            cause: source,
        })?;
        let mut so_far = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(comp);
            if comp == "." || comp == ".." {
                return Err(ConfineError::Dots(so_far));
            }
            let io = |source| ConfineError::Io {
                path: so_far.clone(),
                cause: source,
            };
            let name = CString::new(comp)
                .map_err(|_| io(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
            let mut fd = open_at(&cur, &name);
            if create
                && fd
                    .as_ref()
                    .is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
            {
                let rc = unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) };
                if rc != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(io(e));
                    }
                } else if let Ok(parent) = cur.try_clone() {
                    made.push((parent, name.clone()));
                }
                fd = open_at(&cur, &name);
            }
            cur = match fd {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    return Err(ConfineError::NotAFolder(so_far));
                }
                Err(e) => return Err(io(e)),
            };
        }
        Ok(Folder { fd: cur })
    }

    /// A path to `name` in this folder that resolves through the open descriptor, not
    /// through the names above it.
    pub fn entry(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name)
    }

    /// Makes the folder's entries durable (a rename into it survives a crash).
    pub fn sync_all(&self) -> std::io::Result<()> {
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Whether `name` in this folder is a symlink (not followed).
    pub fn is_symlink(&self, name: &str) -> bool {
        std::fs::symlink_metadata(self.entry(name)).is_ok_and(|m| m.file_type().is_symlink())
    }
}

fn open_at(dir: &OwnedFd, name: &CString) -> std::io::Result<OwnedFd> {
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_and_creates_inside_and_never_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("evil")).unwrap();
        std::fs::write(root.join("plain"), "x").unwrap();
        let r = Folder::root(&root).unwrap();
        let f = r.walk("a/b c/$(id)", true).unwrap();
        std::fs::write(f.entry("x.tif"), "hi").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("a/b c/$(id)/x.tif")).unwrap(),
            "hi"
        );
        for bad in ["evil/newsub/deeper", "evil", "plain/x"] {
            let e = r.walk(bad, true).unwrap_err();
            assert!(matches!(e, ConfineError::NotAFolder(_)), "{bad}: {e}");
        }
        let e = r.walk("a/../evil/x", true).unwrap_err();
        assert!(matches!(e, ConfineError::Dots(_)), "{e}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        let e = r.walk("missing/x", false).unwrap_err();
        assert!(matches!(e, ConfineError::Io { .. }), "{e}");
    }

    #[test]
    fn a_walk_refused_part_way_leaves_no_folder_behind() {
        let d = tempfile::tempdir().unwrap();
        let r = Folder::root(d.path()).unwrap();
        let long = "n".repeat(256);
        let e = r.walk(&format!("bl/new/{long}/x"), true).unwrap_err();
        assert!(matches!(e, ConfineError::Io { .. }), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // what existed before stays
        std::fs::create_dir(d.path().join("bl")).unwrap();
        r.walk(&format!("bl/new/{long}"), true).unwrap_err();
        let left: Vec<_> = std::fs::read_dir(d.path().join("bl")).unwrap().collect();
        assert!(left.is_empty() && d.path().join("bl").is_dir());
    }
}
