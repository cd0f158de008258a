//! The two lifecycles as data: states as enums, the legal moves in one table each, and the
//! pure decisions that pick a move from what happened and `now`. [`job`] (a job's life, named
//! as HPC users know it from Balsam), [`launcher`] (a batch allocation's) and [`runtime`] (how
//! long a job is expected to run, and which launchers have room for it). The writes that
//! apply them are in [`crate::service::store`].

pub mod job;
pub mod launcher;
pub mod runtime;
