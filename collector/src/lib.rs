//! beamflow-collector: the HPC side of beamflow.
//!
//! `serve --stdio` receives files from an agent over a byte stream ([`receive`]);
//! `service` owns the SQLite database and the HTTP API ([`service`], [`db`], [`dag`]);
//! the engine ([`engine`]) advances the DAG and keeps launchers queued ([`scheduler`]);
//! launchers ([`launcher`]) run jobs inside allocations; the operator's commands ([`cli`])
//! read through the API, never the database file.

pub use beamflow_protocol::api;
pub mod check;
pub mod cli;
pub mod dag;
pub mod db;
pub mod engine;
pub mod fault;
pub mod launcher;
pub mod lifecycle;
pub mod names;
pub mod prepare;
pub mod qa;
pub mod receive;
pub mod scheduler;
pub mod service;
pub mod state;
pub mod to8bit;
