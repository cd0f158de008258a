//! `beamflow-collector doctor`: what a login node needs, checked one line at a time, each
//! failure with its fix. The agent's doctor runs this one over its link, so a beamline admin
//! sees the far side's faults from the beamline host.

use crate::api::Client;
use beamflow_config::{Config, SchedulerKind};
use beamflow_protocol::doctor::{free_bytes, now_secs, writable, Check, Report};
use std::path::Path;

/// Below this much free space a folder that receives stacks fails its check.
const LOW_SPACE: u64 = 1 << 30;

/// Runs every check of this host against `cfg`.
pub fn report(cfg: &Config) -> Report {
    let mut checks = Vec::new();
    let folder = |name: &str, key: &str, dir: &Path, checks: &mut Vec<Check>| {
        let c = match writable(dir) {
            Err(e) => Check::fail(
                name,
                format!("{}: {e}", dir.display()),
                format!("make it writable by this account, or point `{key}` elsewhere"),
            ),
            Ok(()) => match free_bytes(dir) {
                Ok(free) if free < LOW_SPACE => Check::fail(
                    name,
                    format!("{}: only {} free", dir.display(), gib(free)),
                    format!("free space there, or point `{key}` at a larger filesystem"),
                ),
                Ok(free) => Check::pass(
                    name,
                    format!("{} writable, {} free", dir.display(), gib(free)),
                ),
                Err(e) => Check::pass(
                    name,
                    format!("{} writable (free space: {e})", dir.display()),
                ),
            },
        };
        checks.push(c);
    };
    folder(
        "data root",
        "collector.data_root",
        &cfg.collector.data_root,
        &mut checks,
    );
    folder(
        "work root",
        "service.work_root",
        &cfg.service.work_root,
        &mut checks,
    );
    folder(
        "state folder",
        "collector.state_dir",
        &cfg.collector.state_dir,
        &mut checks,
    );
    checks.push(service(cfg));
    for (name, q) in &cfg.queues {
        checks.push(scheduler(name, q.scheduler, q.submit));
    }
    Report {
        program: format!("beamflow-collector {}", env!("CARGO_PKG_VERSION")),
        protocol: beamflow_protocol::VERSION,
        host: crate::api::this_host(),
        time: now_secs(),
        checks,
    }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The service answers at its advertised address, over TLS to the pinned certificate.
fn service(cfg: &Config) -> Check {
    let name = "service";
    let client = match Client::from_state_dir(&cfg.collector.state_dir) {
        Ok(c) => c.with_timeout(std::time::Duration::from_secs(10)),
        Err(crate::api::ClientError::NotRunning { path }) => {
            return Check::fail(
                name,
                format!("not running ({} does not exist)", path.display()),
                "start it: `systemctl --user enable --now beamflow-collector`, or `beamflow-collector service --config <file>`",
            )
        }
        Err(e) => {
            return Check::fail(
                name,
                e.to_string(),
                "start it: `systemctl --user enable --now beamflow-collector`, or `beamflow-collector service --config <file>`",
            )
        }
    };
    match client.status() {
        Ok(s) => Check::pass(
            name,
            format!(
                "answers at {} from {} (certificate {}); {} stack version(s), {} launcher(s)",
                client.info().url,
                crate::api::this_host(),
                client.info().fingerprint,
                s.stacks.len(),
                s.launchers.len()
            ),
        ),
        Err(e) => Check::fail(
            name,
            e.to_string(),
            "check that it runs on the host in server-info and that `[service] listen`/`advertise` give an address this host reaches",
        ),
    }
}

/// The queue's batch commands are on PATH (the service submits with them).
fn scheduler(queue: &str, kind: SchedulerKind, submit: bool) -> Check {
    let name = format!("queue {queue}");
    let needed: &[&str] = match kind {
        SchedulerKind::Local => &[],
        SchedulerKind::Slurm => &["sbatch", "squeue", "scancel"],
        SchedulerKind::Pbs | SchedulerKind::Cobalt => &["qsub", "qstat", "qdel"],
    };
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| crate::launcher::missing_program(c).is_some())
        .collect();
    if missing.is_empty() {
        let how = if needed.is_empty() {
            "local launchers".to_string()
        } else {
            format!("{} on PATH", needed.join(", "))
        };
        let submit = if submit {
            ""
        } else {
            "; submit = false: jobs wait"
        };
        Check::pass(&name, format!("{kind:?} ({how}){submit}").to_lowercase())
    } else {
        Check::fail(
            &name,
            format!("{} not found on PATH", missing.join(", ")),
            format!("run the service where the {kind:?} commands are (a login node), or load their module in the unit's environment").to_lowercase(),
        )
    }
}
