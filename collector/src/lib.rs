//! beamflow-collector: the HPC side of beamflow.
//!
//! `serve --stdio` receives files from an agent over a byte stream ([`receive`]);
//! `service` owns the SQLite database and the HTTP API ([`service`], [`db`], [`dag`]);
//! the operator's commands ([`cli`]) read through that API, never the database file.

pub use beamflow_protocol::api;
pub mod cli;
pub mod dag;
pub mod db;
pub mod receive;
pub mod service;
pub mod state;
