//! `[collector]`: where the collector keeps received stacks and its own state.

use crate::{Dur, SyncMode};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[collector]`: where received files go.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorSection {
    /// Received stacks land under this folder; nothing from the wire escapes it.
    pub data_root: PathBuf,
    /// Folder for the database (`collector.db`) and `server-info`.
    pub state_dir: PathBuf,
    /// fsync files and folders before acknowledging (off only for throwaway tests).
    pub fsync: bool,
    /// With `fsync`: `batch` (a filesystem sync per round of many files) or `file`.
    pub sync: SyncMode,
    /// Write files of 8 MiB or more with O_DIRECT, around the page cache, where the
    /// filesystem takes it.
    pub direct_io: bool,
    /// The beamlines whose agents may deliver here (`[agent] name` at each); empty: any.
    pub beamlines: Vec<String>,
    /// The beamline that stacks registered before beamlines existed are filed under.
    pub legacy_beamline: String,
    /// Remove a stack version's received copy and work folder this long after its DAG
    /// finished (never earlier); empty: keep everything.
    pub keep: Option<Dur>,
    /// With `keep`: remove FAILED (or killed) stack versions too, that long after their last
    /// change. Off: they stay for a person.
    pub remove_failed: bool,
}

impl Default for CollectorSection {
    fn default() -> Self {
        CollectorSection {
            data_root: PathBuf::from("remote"),
            state_dir: PathBuf::from("state"),
            fsync: true,
            sync: SyncMode::Batch,
            direct_io: true,
            beamlines: Vec::new(),
            legacy_beamline: "default".into(),
            keep: None,
            remove_failed: false,
        }
    }
}
