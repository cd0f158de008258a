//! The agent's programs, one module each: [`run`] (the daemon), [`push`] (one stack, once),
//! [`setup`] (the collector side over the master), [`doctor`] (both ends checked), [`demo`]
//! (the whole path on one machine) and [`status`] (the journal in a table).

pub mod demo;
pub mod doctor;
pub mod push;
pub mod run;
pub mod setup;
pub mod status;
