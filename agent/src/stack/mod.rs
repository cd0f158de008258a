//! A stack's rules, from a folder on the beamline to a stack the link may send: the watch
//! roots ([`watch`] for events, [`scan`] for what a folder holds, [`root`] for a root resolved
//! and what cannot be sent), when a stack is finished ([`finished`], a pure function of what
//! was observed), the checks of its images ([`tiff_check`], [`images`]: structure and BLAKE3 on
//! all cores) and its lifecycle as data ([`lifecycle`]: states and the one table of legal
//! moves the journal enforces).

pub mod finished;
pub mod images;
pub mod lifecycle;
pub mod root;
pub mod scan;
pub mod tiff_check;
pub mod watch;

pub use finished::*;
