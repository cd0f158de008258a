//! beamflow-agent: the beamline side of beamflow.
//!
//! It watches image folders ([`watch`], [`scan`], [`root`]), decides when a stack is
//! finished ([`stack`], [`tiff_check`], [`images`]), journals every decision ([`journal`])
//! along the stack lifecycle's one table ([`lifecycle`]), moves what the far side lacks over
//! a link ([`link`], [`transfer`]) and asks for the DAG. [`daemon`] is the loop that ties
//! them together; [`push`] (the daemon's path, run once) and [`demo`] are the one-shot ways
//! in.

pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod images;
pub mod instance;
pub mod journal;
pub mod lifecycle;
pub mod link;
pub mod metrics;
pub mod news;
pub mod notify;
pub mod outcome;
pub mod push;
pub mod results;
pub mod root;
pub mod scan;
pub mod setup;
pub mod ssh;
pub mod stack;
pub mod status;
pub mod synth;
pub mod tiff_check;
pub mod transfer;
pub mod watch;
