//! The science: what turns a received stack into aligned sections, shared by the service (which
//! plans and checks jobs) and the compute-node steps (which run them).
//!
//! [`dag`] turns a workflow and a stack into planned jobs; [`prepare`] makes a stack version's
//! work folder as AlignTK expects it, with [`names`] (section names AlignTK can parse) and
//! [`to8bit`] (one window for the stack's deeper sections); [`open`] reads a section; [`qa`]
//! is the first step of every AlignTK workflow; [`check`] reads a step's summary and outputs
//! after a zero exit; [`preview`] draws the picture a person looks at first; [`fault`] sorts a
//! failed run into data faults (held for a person) and run
//! faults (retried). None of it knows the database, HTTP or the batch systems.

pub mod check;
pub mod dag;
pub mod fault;
pub mod names;
pub mod open;
pub mod prepare;
pub mod preview;
pub mod qa;
pub mod reuse;
pub mod to8bit;
