//! `[[watch]]`: the folders the agent watches and when a stack there counts as finished.

use crate::locate::invalid;
use crate::{notify, Config, ConfigError, Dur};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[[watch]]`: one watch root and the rules that decide when a stack in it is finished.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchSection {
    /// The folder to watch; each folder below it holding images is a stack.
    pub path: PathBuf,
    /// Which files are images (a glob on the file name).
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// A stack needs at least this many images.
    #[serde(default = "default_min_images")]
    pub min_images: std::num::NonZeroU32,
    /// A file whose appearance says "this stack is complete".
    #[serde(default)]
    pub marker: Option<String>,
    /// The stack is complete once it holds this many images.
    #[serde(default)]
    pub expect: Option<std::num::NonZeroU32>,
    /// Where neither `expect` nor `marker` is set, the stack is complete once nothing in it
    /// changed for this long: it must be longer than the slowest gap between two sections.
    #[serde(default = "default_settle")]
    pub settle: Dur,
    /// Where `expect` or `marker` is set, only they finish a stack; this (off by default)
    /// finishes one anyway once nothing changed for this long, saying so.
    #[serde(default)]
    pub finish_after: Option<Dur>,
    /// Sections move as they land: a section left alone this long (e.g. `"2s"`) that passes
    /// the TIFF check is sent over the warm link while its stack is still being written, and
    /// the finish sends only what came or changed since. Unset: a stack moves when finished.
    #[serde(default)]
    pub file_settle: Option<Dur>,
    /// The collector runs a stack's pairwise work while the detector still writes it: each
    /// time the sections sent ahead complete a chunk of pairs, they are submitted as a partial
    /// version, and the version that seals the stack reuses that work. Sends sections ahead
    /// (`file_settle`, 2 s unless set). Unset: on where the workflow has fanned-out steps
    /// (`each`), as the built-in AlignTK workflows do, off elsewhere.
    #[serde(default)]
    pub stream: Option<bool>,
    /// A stack not finished after this long raises a visible warning; a streamed one is
    /// abandoned at the collector too (the open jobs of its partial versions cancelled, each
    /// saying why; what ran is kept, and it is sent whole if it is finished later).
    #[serde(default = "default_max_wait")]
    pub max_wait: Dur,
    /// What files arriving after submission do.
    #[serde(default)]
    pub on_change: OnChange,
    /// `inotify` (local disks) or `poll` (NFS/GPFS/Lustre written from other hosts).
    #[serde(default)]
    pub mode: WatchMode,
    /// How often `poll` mode rescans.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Dur,
    /// The collector workflow to run on finished stacks.
    #[serde(default = "default_workflow")]
    pub workflow: String,
    /// Folder under the collector's data root that this root's stacks go into.
    #[serde(default)]
    pub prefix: String,
    /// Raise a `silent` notification when nothing arrived here for this long during
    /// `active_hours` (a detector that stopped, a mount that went away).
    #[serde(default)]
    pub alarm_after: Option<Dur>,
    /// When the beamline works, `"08:00-20:00"` in local time (may pass midnight); empty:
    /// all day. Only silence inside these hours counts.
    #[serde(default)]
    pub active_hours: String,
    /// `"verified+done"`: remove a stack's images from this host once the collector verified
    /// every one and its DAG is done (and its results are home, when `results_dir` is set).
    /// Empty (the default): never.
    #[serde(default)]
    pub delete_after: String,
}

fn default_pattern() -> String {
    "*.tif".into()
}

fn default_min_images() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(2).expect("2 is not zero")
}

impl WatchSection {
    /// How long a section must be left alone before it moves ahead of its stack's finish:
    /// `file_settle`, or 2 s for a streamed stack; none: sections move when the stack is
    /// finished.
    pub fn section_settle(&self) -> Option<Dur> {
        self.file_settle
            .or_else(|| self.streams().then(|| Dur::secs(2)))
    }

    /// Whether this root's stacks stream (`stream`, as the config loaded it).
    pub fn streams(&self) -> bool {
        self.stream == Some(true)
    }
}

fn default_settle() -> Dur {
    Dur::secs(30)
}

fn default_max_wait() -> Dur {
    Dur::secs(2 * 3600)
}

fn default_poll_interval() -> Dur {
    Dur::secs(10)
}

fn default_workflow() -> String {
    "aligntk".into()
}

/// Policy for files that arrive after a stack was submitted.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    /// Send the changes and submit a new version; the older version's jobs that have not
    /// started are superseded (those running finish, their results kept).
    #[default]
    Supersede,
    /// Send the changes and submit a new version; every version runs to the end.
    Resubmit,
    /// Keep the submitted version; log the change and do nothing.
    Ignore,
}

/// How a watch root notices changes.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// Kernel events; misses writes made by other NFS/Lustre/GPFS clients.
    #[default]
    Inotify,
    /// Periodic scans; sees every writer.
    Poll,
}

/// Checks the watch roots; an error names the key in full and its line.
pub(crate) fn validate(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    for (i, w) in cfg.watch.iter().enumerate() {
        if !matches!(w.delete_after.as_str(), "" | "verified+done") {
            return Err(invalid(path, text, "delete_after", &format!("watch[{i}].delete_after"), format!(
                    "\"{}\" is not a rule; write \"verified+done\" (or leave it out to keep every image)",
                    w.delete_after
                )));
        }
        if let Err(e) = notify::parse_hours(&w.active_hours) {
            return Err(invalid(
                path,
                text,
                "active_hours",
                &format!("watch[{i}].active_hours"),
                e.to_string(),
            ));
        }
        if !cfg.workflows.contains_key(&w.workflow) {
            let names: Vec<&str> = cfg.workflows.keys().map(String::as_str).collect();
            return Err(invalid(path, text, "workflow", &format!("watch[{i}].workflow"), format!(
                    "no workflow \"{}\"; the workflows are: {} (names are case-sensitive; define your own under [workflows.NAME])",
                    w.workflow,
                    names.join(", ")
                )));
        }
        if glob::Pattern::new(&w.pattern).is_err() {
            return Err(invalid(
                path,
                text,
                "pattern",
                &format!("watch[{i}].pattern"),
                format!(
                    "\"{}\" is not a valid glob; write e.g. \"*.tif\"",
                    w.pattern
                ),
            ));
        }
    }
    Ok(())
}
