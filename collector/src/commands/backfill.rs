//! `beamflow-collector backfill`: the free nodes each backfill queue's batch system reports
//! now, for how long, and the launcher the service would submit for them, with why.

use crate::scheduler::window::{shape, Window, Work};
use beamflow_config::{Config, SchedulerKind};
use beamflow_program::{sayln, Exit};
use std::path::PathBuf;

/// `backfill`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Only this queue (default: every queue on a batch system).
    #[arg(long)]
    pub queue: Option<String>,
    /// Nodes the work wants (default: each queue's max_nodes).
    #[arg(long)]
    pub want: Option<u32>,
    /// The shortest run time expected of a job (`10m`): windows shorter are not used.
    #[arg(long)]
    pub runs_for: Option<humantime::Duration>,
    /// Machine-readable output (one JSON list).
    #[arg(long)]
    pub json: bool,
}

/// Asks each queue's batch system once (a person's question: not paced) and prints what
/// it said and the shape that follows.
pub fn main(a: Args) -> anyhow::Result<Exit> {
    let cfg = Config::load(&a.config)?;
    if let Some(q) = &a.queue {
        anyhow::ensure!(
            cfg.queues.contains_key(q),
            "no queue {q} in {}: the queues are {}",
            a.config.display(),
            cfg.queues.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let mut out = Vec::new();
    for (name, q) in &cfg.queues {
        if a.queue.as_ref().is_some_and(|n| n != name) || q.scheduler == SchedulerKind::Local {
            continue;
        }
        let want = Work {
            nodes: a.want.unwrap_or(q.max_nodes),
            shortest: a.runs_for.map(Into::into),
        };
        let read = crate::scheduler::for_kind(q.scheduler).windows(&q.queue);
        let (windows, s) = match &read {
            Ok(w) => (w.clone(), shape(w, want, q)),
            Err(e) => {
                let mut s = shape(&[], want, q);
                s.why = format!("cannot read the free nodes ({e}): the queue's fixed size");
                (Vec::<Window>::new(), s)
            }
        };
        let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs());
        if a.json {
            out.push(serde_json::json!({
                "queue": name,
                "backfill": q.backfill,
                "windows": windows.iter().map(|w| serde_json::json!({"nodes": w.nodes, "lasts_secs": secs(w.lasts)})).collect::<Vec<_>>(),
                "shape": {"nodes": s.nodes, "walltime_secs": s.walltime.as_secs(), "from_window": s.from_window, "why": s.why},
            }));
            continue;
        }
        sayln!(
            "queue {name} ({:?}, backfill = {}):",
            q.scheduler,
            q.backfill
        );
        if windows.is_empty() {
            sayln!("  no free nodes");
        }
        for w in &windows {
            sayln!(
                "  {} node(s) free for {}",
                w.nodes,
                w.lasts
                    .map(|d| humantime::format_duration(d).to_string())
                    .unwrap_or_else(|| "as long as the queue allows".into())
            );
        }
        sayln!(
            "  would submit {} node(s) for {}: {}",
            s.nodes,
            humantime::format_duration(s.walltime),
            s.why
        );
    }
    if a.json {
        sayln!("{}", serde_json::to_string(&out)?);
    }
    Ok(Exit::Done)
}
