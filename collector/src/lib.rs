//! beamflow-collector: the HPC side of beamflow, four programs in one binary.
//!
//! - `serve --stdio` ([`receive`]): the far end of an agent's link; receives, verifies and
//!   commits files under the data root, snapshots each version and forwards its submission.
//! - `service` ([`service`]): owns the SQLite database and the HTTP API, and runs the engine
//!   that moves jobs through their lifecycle and keeps launchers queued.
//! - `launcher` ([`launcher`]): runs inside a batch allocation and packs jobs onto its nodes,
//!   speaking only to the service's API.
//! - the batch systems ([`scheduler`]) behind one trait, used by the service.
//! - the science ([`science`]): a stack's DAG, its work folder, its checks; what the service
//!   plans and the compute-node steps run.
//!
//! Every subcommand's entry point is in [`commands`] (the operator's read through the API,
//! never the database file); [`doctor`] checks what a login node needs, one line per check;
//! [`results`] lists and streams the files a workflow returns to the beamline.

pub use beamflow_protocol::api;
pub mod commands;
pub mod doctor;
pub mod launcher;
pub mod receive;
pub mod results;
pub mod scheduler;
pub mod science;
pub mod service;
