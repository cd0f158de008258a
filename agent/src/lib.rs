//! beamflow-agent: the beamline side of beamflow.
//!
//! [`stack`] holds a stack's rules: the watch roots ([`stack::watch`], [`stack::scan`],
//! [`stack::root`]), when a stack is finished ([`stack::decide`], [`stack::tiff_check`],
//! [`stack::images`]) and its lifecycle's one table ([`stack::lifecycle`]). [`journal`] records
//! every decision; [`link`] is the way to the collector (the SSH master in [`link::ssh`], the
//! transfer in [`link::transfer`]). [`commands`] are the programs: `run` (the daemon loop that
//! ties them together), `push` (its path, once), `setup`, `doctor`, `demo`, `status`. Around
//! them: [`outcome`] (where the DAGs are), [`results`] (fetched home), [`notify`] (news for
//! people), [`metrics`], [`systemd`] (readiness and the watchdog), [`instance`] (one daemon
//! per journal), [`handoff`] (`push` handing a folder to the running daemon) and [`synth`] (synthetic sections).

pub mod commands;
pub mod handoff;
pub mod instance;
pub mod journal;
pub mod link;
pub mod metrics;
pub mod notify;
pub mod outcome;
pub mod results;
pub mod stack;
pub mod synth;
pub mod systemd;
