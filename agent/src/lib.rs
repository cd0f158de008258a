//! beamflow-agent: the beamline side of beamflow.
//!
//! It watches image folders ([`watch`], [`scan`]), decides when a stack is finished
//! ([`stack`], [`tiff_check`]), journals every decision ([`journal`]), moves what the far
//! side lacks over a link ([`link`], [`transfer`]) and asks for the DAG. [`daemon`] is the
//! loop that ties them together; [`push`] and [`demo`] are the one-shot ways in.

pub mod daemon;
pub mod demo;
pub mod journal;
pub mod link;
pub mod notify;
pub mod push;
pub mod scan;
pub mod ssh;
pub mod stack;
pub mod status;
pub mod synth;
pub mod tiff_check;
pub mod transfer;
pub mod watch;
