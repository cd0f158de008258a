//! The two lifecycles as data: states as enums, the legal moves in one table each, and the
//! pure decisions that pick a move from what happened and `now`. [`job`] (a job's life, named
//! as HPC users know it from Balsam) and [`launcher`] (a batch allocation's). The writes that
//! apply them are in [`crate::service::store`].

pub mod job;
pub mod launcher;
