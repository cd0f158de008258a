//! A watch root, resolved once: its canonical folder, its pattern and the rules that decide
//! when a folder below it is a finished stack, and the name a stack gets at the collector.

use crate::stack::scan::{scan_dir, DirScan};
use crate::stack::Rules;
use beamflow_config::WatchSection;
use std::path::{Path, PathBuf};

/// Why a `[[watch]]` section cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The folder is missing or unreadable.
    #[error("watch root {} does not exist or cannot be read; create it or fix [[watch]] path", .path.display())]
    Missing {
        /// The folder as configured.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The pattern is no glob.
    #[error("[[watch]] pattern {pattern:?} is not a glob; write e.g. \"*.tif\"")]
    Pattern {
        /// The pattern as configured.
        pattern: String,
        /// What the glob parser said.
        #[source]
        source: glob::PatternError,
    },
}

/// One watch root, resolved.
pub struct Root {
    /// The folder, canonical.
    pub canon: PathBuf,
    /// Which files are images.
    pub pattern: glob::Pattern,
    /// When a stack is finished.
    pub rules: Rules,
    /// The config section.
    pub section: WatchSection,
}

impl Root {
    /// Resolves a `[[watch]]` section; its folder must exist.
    pub fn new(w: &WatchSection) -> Result<Root, RootError> {
        let canon = w.path.canonicalize().map_err(|source| RootError::Missing {
            path: w.path.clone(),
            source,
        })?;
        let pattern = glob::Pattern::new(&w.pattern).map_err(|source| RootError::Pattern {
            pattern: w.pattern.clone(),
            source,
        })?;
        Ok(Root {
            canon,
            pattern,
            rules: Rules {
                min_images: w.min_images.get(),
                marker: w.marker.clone(),
                expect: w.expect.map(|n| n.get()),
                settle: w.settle.0,
                max_wait: w.max_wait.0,
                finish_after: w.finish_after.map(|d| d.0),
            },
            section: w.clone(),
        })
    }

    /// The stack's path under the collector's data root.
    pub fn remote_name(&self, dir: &Path) -> String {
        let rel = dir.strip_prefix(&self.canon).unwrap_or(dir);
        let rel = if rel.as_os_str().is_empty() {
            PathBuf::from(self.canon.file_name().unwrap_or_default())
        } else {
            rel.to_path_buf()
        };
        let prefix = self.section.prefix.trim_matches('/');
        let rel = rel.to_string_lossy().into_owned();
        if prefix.is_empty() {
            rel
        } else {
            format!("{prefix}/{rel}")
        }
    }

    /// Why a folder of images below this root can never be sent under its name, if it cannot:
    /// a path that is not UTF-8 (the wire, the journal and the collector's names are UTF-8,
    /// and a lossy name could make two folders one), or one holding a name beamflow keeps
    /// for its version folders (`@v1`, `.beamflow-v1`). The daemon holds such a folder with
    /// this reason; `push` refuses it with it.
    pub fn unsendable(&self, dir: &Path) -> Option<String> {
        if dir.to_str().is_none() {
            return Some(format!(
                "the folder name {} is not valid UTF-8 (shown with \\xNN for its bytes), so it \
                 cannot be named at the collector without two folders risking one name; rename \
                 it (e.g. `mv` it to a UTF-8 name) and it is sent as a stack of its own",
                crate::stack::scan::escaped(dir.as_os_str())
            ));
        }
        let name = self.remote_name(dir);
        let c = name.split('/').find(|c| beamflow_protocol::reserved(c))?;
        Some(format!(
            "the folder {} has {c:?} in its path, a name beamflow keeps for the folders it makes \
             for a stack's versions (`@v1`, `.beamflow-v1`), so its work could be taken for \
             another stack's; rename that folder and it is sent as a stack of its own",
            dir.display()
        ))
    }

    /// Lists one folder below the root.
    pub fn scan(&self, dir: &Path) -> std::io::Result<DirScan> {
        scan_dir(
            &self.canon,
            dir,
            &self.pattern,
            self.rules.marker.as_deref(),
        )
    }
}
