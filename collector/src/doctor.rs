//! `beamflow-collector doctor`: what a login node needs, checked one line at a time, each
//! failure with its fix. The agent's doctor runs this one over its link, so a beamline admin
//! sees the far side's faults from the beamline host.

use crate::api::Client;
use beamflow_config::{Config, SchedulerKind};
use beamflow_protocol::doctor::{free_bytes, now_secs, writable, Check, Report};
use std::path::Path;
use std::time::{Duration, Instant};

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
        Ok(c) => c.with_timeout(Duration::from_secs(10)),
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

/// Whether a compute node of `queue` reaches the service: a tiny batch job in that queue
/// runs `beamflow-collector probe` there, which reads `server-info` from the shared state
/// folder and calls the service at its advertised address. Waits up to `wait` for it (a
/// busy queue can hold it longer; then it is cancelled and the line says so).
pub fn probe(cfg: &Config, queue: &str, wait: Duration) -> Check {
    let name = format!("probe in queue {queue}");
    let Some(q) = cfg.queues.get(queue) else {
        let names: Vec<&str> = cfg.queues.keys().map(String::as_str).collect();
        return Check::fail(
            &name,
            format!("no queue {queue}"),
            format!("name one of: {}", names.join(", ")),
        );
    };
    let client = match Client::from_state_dir(&cfg.collector.state_dir) {
        Ok(c) => c.with_timeout(Duration::from_secs(10)),
        Err(e) => {
            return Check::fail(
                &name,
                e.to_string(),
                "start the service first: the probe calls it",
            )
        }
    };
    let nonce = nonce();
    let dir = cfg.collector.state_dir.join("probes");
    let script = dir.join(format!("probe-{nonce}.sh"));
    let log = dir.join(format!("probe-{nonce}.log"));
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&script, probe_script(cfg, &nonce)))
    {
        return Check::fail(
            &name,
            format!("cannot write {}: {e}", script.display()),
            "make the state folder writable",
        );
    }
    let scheduler = crate::scheduler::for_kind(q.scheduler);
    let spec = crate::scheduler::BatchSpec {
        name: "beamflow-probe".into(),
        nodes: 1,
        walltime: Duration::from_secs(300).min(q.walltime.0),
        project: q.project.clone(),
        queue: q.queue.clone(),
        extra_args: q.extra_args.clone(),
        log: log.clone(),
    };
    let started = Instant::now();
    let check = match scheduler.submit(&script, &spec) {
        Ok(batch) => {
            let probe = Probe {
                name: &name,
                client: &client,
                nonce: &nonce,
                log: &log,
                started,
            };
            probe.wait_for(scheduler.as_ref(), &batch, wait)
        }
        Err(e) => Check::fail(
            &name,
            format!("the probe job was refused: {e}"),
            format!(
                "fix what the scheduler says (`queues.{queue}.project`, `.queue`, `.extra_args`)"
            ),
        ),
    };
    scheduler.reap();
    let _ = std::fs::remove_file(&script);
    if check.ok {
        let _ = std::fs::remove_file(&log);
    }
    check
}

/// A token only this probe knows, which its batch job sends back.
fn nonce() -> String {
    let seed = format!("{}{:?}", std::process::id(), std::time::SystemTime::now());
    let h = blake3::hash(seed.as_bytes());
    format!(
        "{:016x}",
        u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    )
}

/// The probe's batch script: this very program's `probe` with the same config.
fn probe_script(cfg: &Config, nonce: &str) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "beamflow-collector".into());
    let source = cfg
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    crate::scheduler::batch_script(
        "beamflow doctor's probe: does a compute node reach the service?",
        &[],
        &[
            exe,
            "probe".into(),
            "--config".into(),
            source,
            "--nonce".into(),
            nonce.to_string(),
        ],
    )
}

/// A probe submitted, waited for.
struct Probe<'a> {
    name: &'a str,
    client: &'a Client,
    nonce: &'a str,
    log: &'a std::path::Path,
    started: Instant,
}

impl Probe<'_> {
    /// Waits until the probe's call reaches the service, its batch job ends without it, or
    /// `wait` passes (the job is then deleted).
    fn wait_for(
        &self,
        scheduler: &dyn crate::scheduler::Scheduler,
        batch: &str,
        wait: Duration,
    ) -> Check {
        let batch = batch.to_string();
        loop {
            if let Ok(p) = self.client.probe_seen(self.nonce) {
                return self.reached(p, &batch);
            }
            let gone = scheduler
                .status(std::slice::from_ref(&batch))
                .map(|s| !s.contains_key(&batch))
                .unwrap_or(false);
            if gone {
                // it ended: one more look, its call may have landed just now
                if let Ok(p) = self.client.probe_seen(self.nonce) {
                    return self.reached(p, &batch);
                }
                return Check::fail(
                    self.name,
                    format!(
                        "batch job {batch} ended without reaching {}: {}",
                        self.client.info().url,
                        self.tail()
                    ),
                    "listen where compute nodes reach the service (`service.listen = \"0.0.0.0:0\"`) and advertise a name or address they resolve to this node (`service.advertise`); check the site's firewall between compute and login nodes",
                );
            }
            if self.started.elapsed() >= wait {
                let _ = scheduler.delete(&batch);
                return Check::fail(
                    self.name,
                    format!(
                        "batch job {batch} did not reach the service within {} (still queued, or its node cannot connect)",
                        humantime::format_duration(wait)
                    ),
                    format!("look at {} and the queue; try again with a longer `--probe-wait` or a debug queue", self.log.display()),
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn reached(&self, p: crate::api::Probe, batch: &str) -> Check {
        Check::pass(
            self.name,
            format!(
                "{} reached {} in {:.1} s (batch job {batch})",
                p.host,
                self.client.info().url,
                self.started.elapsed().as_secs_f64()
            ),
        )
    }

    /// The last line the probe's job wrote.
    fn tail(&self) -> String {
        std::fs::read_to_string(self.log)
            .unwrap_or_default()
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("it printed nothing")
            .to_string()
    }
}
