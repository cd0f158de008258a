//! How the beamline learns where its submitted stacks' DAGs are: the collector's
//! `outcome --json` is run where the link's far end runs (over the SSH master, or as a local
//! child), so no port opens on the beamline host and nothing new is needed on the far side
//! but the collector itself. The daemon asks on a slow timer, only about stacks whose DAG may
//! still change, and journals the answer; `status` shows it.

use crate::link::far::{ask, FarError};
use beamflow_config::Config;
use beamflow_protocol::api::DagOutcome;
use std::path::Path;

/// Asks the collector about these stack versions. Blocking: run it off the daemon's loop.
pub fn fetch(cfg: &Config, ctl: Option<&Path>, ids: &[i64]) -> Result<Vec<DagOutcome>, FarError> {
    let mut sub: Vec<String> = vec![
        "outcome".into(),
        "--json".into(),
        "--beamline".into(),
        cfg.agent.beamline(),
    ];
    sub.extend(ids.iter().map(|i| i.to_string()));
    let words: Vec<&str> = sub.iter().map(String::as_str).collect();
    ask(cfg, ctl, &words)
}
