//! beamflow-collector: the HPC side of beamflow, four programs in one binary.
//!
//! - `serve --stdio` ([`receive`]): the far end of an agent's link; receives, verifies and
//!   commits files under the data root, snapshots each version and forwards its submission.
//! - `service` ([`service`]): owns the SQLite database and the HTTP API, and runs the engine
//!   that moves jobs through their lifecycle and keeps launchers queued.
//! - `launcher` ([`launcher`]): runs inside a batch allocation and packs jobs onto its nodes,
//!   speaking only to the service's API.
//! - the batch systems ([`scheduler`]) behind one trait, used by the service.
//!
//! The operator's commands ([`cli`]) read through the API, never the database file;
//! [`doctor`] checks what a login node needs, one line per check; [`results`] lists and streams
//! the files a workflow returns to the beamline.

pub use beamflow_protocol::api;
pub mod cli;
pub mod doctor;
pub mod launcher;
pub mod receive;
pub mod results;
pub mod scheduler;
pub mod science;
pub mod service;

/// What a panic said, for an error that names it (a worker thread's panic becomes an error
/// of the task it worked for, never a silent loss of its share).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "it panicked".into())
}
