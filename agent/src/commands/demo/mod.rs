//! `beamflow-agent demo`: the whole path on one machine, with nothing to install.
//!
//! In a fresh folder it writes the embedded default config, starts the collector service and
//! the agent daemon, writes a synthetic stack section by section as a detector would, waits
//! until the collector has accepted the DAG, and prints what happened and where to look.

pub mod science;

pub use science::Science;

use crate::commands::status::human_bytes;
use crate::journal::{Journal, StackState};
use crate::link::collector_exe;
use crate::synth::{write_tiff, Section};
use anyhow::{bail, Context, Result};
use beamflow_config::{Config, EMBEDDED_LOCAL};
use beamflow_protocol::api::Client;
use beamflow_protocol::states::JobState;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the demo does, adjustable from the command line.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Folder to run in (created); a fresh temporary one when `None`.
    pub dir: Option<PathBuf>,
    /// Sections to write.
    pub sections: u32,
    /// Pixels per side of each section.
    pub side: u32,
    /// Pause between sections, as a detector would.
    pub interval: Duration,
    /// Quiet period that finishes the stack.
    pub settle: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            dir: None,
            sections: 16,
            side: 512,
            interval: Duration::from_millis(150),
            settle: Duration::from_secs(3),
        }
    }
}

/// The numbers the demo reports.
#[derive(Debug)]
pub struct DemoReport {
    /// Where everything is.
    pub dir: PathBuf,
    /// Files in the stack.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Seconds on the link.
    pub send_secs: f64,
    /// From the last section written to the DAG accepted.
    pub latency: Duration,
    /// Jobs the collector lists for the stack: (id, name, state, parents).
    pub jobs: Vec<(u64, String, JobState, Vec<u64>)>,
    /// From the DAG accepted to every job finished.
    pub run_time: Duration,
    /// The workflow that ran.
    pub workflow: String,
    /// The version that sealed the stack (the ones before it were its sections streamed).
    pub version: u32,
    /// Each step's own run and beamflow's time before it, from the jobs' event rows.
    pub steps: Vec<StepTime>,
    /// What AlignTK found against what the sections were written with (AlignTK runs only);
    /// why it could not be measured otherwise.
    pub science: Option<Result<Science, science::MeasureError>>,
}

/// Where one step's time went.
#[derive(Debug, Clone)]
pub struct StepTime {
    /// Step name.
    pub name: String,
    /// The tool's own run: RUNNING → RUN_DONE.
    pub tool: Duration,
    /// beamflow's time before it: from its parent's JOB_FINISHED (or its own READY, for the
    /// first) to its RUNNING, plus its RUN_DONE → JOB_FINISHED (the output check); for a
    /// reused job, from then to its JOB_FINISHED.
    pub beamflow: Duration,
    /// It did not run: a job of a version streamed before had done the same work.
    pub reused: bool,
}

/// Reads each job's times from its history: the tool's run and beamflow's part around it.
fn step_times(client: &Client, jobs: &[beamflow_protocol::api::JobRow]) -> Result<Vec<StepTime>> {
    let mut out = Vec::new();
    let mut finished: std::collections::HashMap<u64, std::time::SystemTime> = Default::default();
    for j in jobs {
        let h = client.history(j.id)?;
        let at = |state: JobState| {
            h.iter()
                .find(|e| e.to == state)
                .and_then(|e| humantime::parse_rfc3339(&e.at).ok())
                .with_context(|| format!("job {} never passed through {state}", j.id))
        };
        let (ready, end) = (at(JobState::Ready)?, at(JobState::JobFinished)?);
        // a job reused from a streamed version goes READY → JOB_FINISHED without running
        let ran = match at(JobState::Running) {
            Ok(running) => Some((running, at(JobState::RunDone)?)),
            Err(_) => None,
        };
        let since = j
            .parents
            .iter()
            .filter_map(|p| finished.get(p))
            .max()
            .copied()
            .unwrap_or(ready);
        let gap = |a: std::time::SystemTime, b: std::time::SystemTime| {
            b.duration_since(a).unwrap_or_default()
        };
        out.push(match ran {
            Some((running, done)) => StepTime {
                name: j.name.clone(),
                tool: gap(running, done),
                beamflow: gap(since, running) + gap(done, end),
                reused: false,
            },
            None => StepTime {
                name: j.name.clone(),
                tool: Duration::ZERO,
                beamflow: gap(since, end),
                reused: true,
            },
        });
        finished.insert(j.id, end);
    }
    Ok(out)
}

/// The sealed version's jobs, each replaced by the job of the same name that did the work
/// in an earlier (streamed) version where it reused one: the steps' times are then the
/// tools' real runs, wherever they happened.
fn where_each_ran(
    client: &Client,
    stack: &str,
    sealed: &[beamflow_protocol::api::JobRow],
) -> Result<Vec<beamflow_protocol::api::JobRow>> {
    let all = client.jobs(Some(stack), None)?;
    Ok(sealed
        .iter()
        .map(|j| {
            all.iter()
                .filter(|o| o.name == j.name && o.attempts > 0 && o.state == JobState::JobFinished)
                .min_by_key(|o| o.version)
                .unwrap_or(j)
                .clone()
        })
        .collect())
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM lets the service remove its server-info; kill if it does not go
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// AlignTK's folder when its binaries are there: `ALIGNTK_BIN`, else wherever PATH finds find_rst.
pub fn aligntk_bin() -> Option<PathBuf> {
    let has_all = |d: &Path| {
        ["find_rst", "register", "align"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Some(d) = std::env::var_os("ALIGNTK_BIN").map(PathBuf::from) {
        return has_all(&d).then_some(d);
    }
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).find(|d| has_all(d)))
}

fn demo_config(settle: Duration, aligntk: Option<&Path>) -> String {
    let mut text = EMBEDDED_LOCAL
        .replace(
            "settle = \"30s\"",
            &format!("settle = \"{}\"", humantime::format_duration(settle)),
        )
        .replace("poll_interval = \"2s\"", "poll_interval = \"300ms\"")
        .replace("idle_exit = \"30s\"", "idle_exit = \"3s\"")
        .replace("poll = \"1s\"", "poll = \"200ms\"")
        // the demo's status at the end shows how the DAG ended
        .replace("outcome_every = \"30s\"", "outcome_every = \"300ms\"")
        // sections move as they land, as a detector writes them
        .replace("# file_settle = \"2s\"", "file_settle = \"1s\"")
        .replace("# name = \"alcfxray1\"", "name = \"demo\"");
    match aligntk {
        // the science: 16-bit sections become 8-bit for AlignTK, and apply_map renders them
        Some(bin) => {
            text = text.replace("workflow = \"aligntk\"", "workflow = \"aligntk-apply\"");
            text.push_str(&format!(
                "\n[workflows.aligntk-apply]\nbin = \"{}\"\n",
                bin.display()
            ))
        }
        None => text = text.replace("workflow = \"aligntk\"", "workflow = \"qa\""),
    }
    text
}

/// The folder the demo runs in: the one asked for (created), else a fresh temporary one,
/// kept for inspection.
fn demo_dir(asked: Option<&Path>) -> Result<PathBuf> {
    Ok(match asked {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.canonicalize()?
        }
        None => tempfile::Builder::new()
            .prefix("beamflow-demo-")
            .tempdir()?
            .keep(),
    })
}

/// Starts the collector service on the demo's config and waits until it serves.
async fn start_service(dir: &Path, cfg_path: &Path, cfg: &Config) -> Result<Service> {
    let exe = collector_exe();
    let log = std::fs::File::create(dir.join("collector-service.log"))?;
    let child = Command::new(&exe)
        .args(["service", "--config"])
        .arg(cfg_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {}; build it with `cargo build --release --bins`",
                exe.display()
            )
        })?;
    let mut service = Service(child);
    wait_for(Duration::from_secs(20), || {
        cfg.collector.state_dir.join("server-info").exists()
    })
    .await
    .with_context(|| {
        format!(
            "the collector service did not start; see {}",
            dir.join("collector-service.log").display()
        )
    })?;
    if let Ok(Some(status)) = service.0.try_wait() {
        bail!(
            "the collector service exited ({status}); see {}",
            dir.join("collector-service.log").display()
        );
    }
    Ok(service)
}

/// Writes the synthetic stack section by section, `interval` apart, as a detector would.
async fn write_stack(stack: &Path, opts: &DemoOptions) -> Result<()> {
    std::fs::create_dir_all(stack)?;
    for i in 0..opts.sections {
        if i > 0 {
            tokio::time::sleep(opts.interval).await;
        }
        let s = Section {
            width: opts.side,
            height: opts.side,
            seed: i as u64 + 1,
            big: false,
            rows_per_strip: 16,
        };
        let p = stack.join(format!("S_{i:04}.tif"));
        tokio::task::spawn_blocking(move || write_tiff(&p, &s)).await??;
    }
    Ok(())
}

/// Runs the demo and returns its numbers.
pub async fn run(opts: DemoOptions) -> Result<DemoReport> {
    let dir = demo_dir(opts.dir.as_deref())?;
    let cfg_path = dir.join("beamflow.toml");
    let aligntk = aligntk_bin();
    std::fs::write(&cfg_path, demo_config(opts.settle, aligntk.as_deref()))?;
    std::fs::create_dir_all(dir.join("incoming"))?;
    let cfg = Config::load(&cfg_path)?;
    let service = start_service(&dir, &cfg_path, &cfg).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent_cfg = cfg.clone();
    let agent = tokio::spawn(async move {
        crate::commands::run::run(
            agent_cfg,
            async {
                let _ = stop_rx.await;
            },
            || {},
        )
        .await
    });

    let stack = dir.join("incoming").join("stack_0001");
    write_stack(&stack, &opts).await?;
    // from the moment the last image is whole: what the settle period counts from too
    let last_written = Instant::now();

    let journal = Journal::open_read_only(&cfg.agent.state_dir)?;
    let stack_dir = stack.canonicalize()?.display().to_string();
    let deadline = opts.settle + Duration::from_secs(60);
    let Some(rec) = submitted(&journal, &stack_dir, last_written, deadline).await? else {
        let _ = stop_tx.send(());
        agent.await??;
        let state = journal
            .stack(&stack_dir)?
            .map(|r| format!("{} ({})", r.state.as_str(), r.reason))
            .unwrap_or_else(|| "never seen".into());
        bail!("the stack was not accepted within {deadline:?}; its state: {state}");
    };
    let latency = last_written.elapsed();
    let client = Client::from_state_dir(&cfg.collector.state_dir)?;
    let accepted = Instant::now();
    let jobs = wait_done(&client, &rec.name, rec.version, &dir).await?;
    let run_time = accepted.elapsed();
    // the agent hears how the DAG ended (what its status shows), then stops
    let _ = wait_for(Duration::from_secs(10), || {
        journal
            .stack(&stack_dir)
            .ok()
            .flatten()
            .is_some_and(|r| r.outcome.starts_with("done"))
    })
    .await;
    let _ = stop_tx.send(());
    agent.await??;
    let steps = step_times(&client, &where_each_ran(&client, &rec.name, &jobs)?)?;
    let science =
        (aligntk.is_some()).then(|| science::measure(&dir.join(work_rel(rec.version)), opts.side));
    let jobs = jobs
        .into_iter()
        .map(|j| (j.id, j.name, j.state, j.parents))
        .collect();
    drop(service);
    Ok(DemoReport {
        dir,
        files: rec.files,
        bytes: rec.bytes,
        send_secs: rec.send_secs,
        latency,
        jobs,
        run_time,
        workflow: rec.workflow,
        version: rec.version,
        steps,
        science,
    })
}

/// The stack's journal row once the agent submitted it; none if it was not by `deadline`
/// after the last image was written.
async fn submitted(
    journal: &Journal,
    stack_dir: &str,
    last_written: Instant,
    deadline: Duration,
) -> Result<Option<crate::journal::StackRecord>> {
    while last_written.elapsed() < deadline {
        if let Some(r) = journal.stack(stack_dir)? {
            if r.state == StackState::Submitted {
                return Ok(Some(r));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

/// The demo stack's work folder for `version`, under the demo folder: the sections streamed
/// ahead of it were earlier versions.
fn work_rel(version: u32) -> String {
    format!("work/demo/stack_0001/@v{version}")
}

/// Waits until every job of the stack's `version` (the one that sealed it) is JOB_FINISHED;
/// a FAILED one is held for a person (exit 3), five minutes without an end is an error naming
/// each job's state.
async fn wait_done(
    client: &Client,
    stack: &str,
    version: u32,
    dir: &Path,
) -> Result<Vec<beamflow_protocol::api::JobRow>> {
    let accepted = Instant::now();
    loop {
        let mut jobs = client.jobs(Some(stack), None)?;
        jobs.retain(|j| j.version == version);
        let failed: Vec<String> = jobs
            .iter()
            .filter(|j| j.state == JobState::Failed)
            .map(|j| format!("{}: {}", j.name, j.reason))
            .collect();
        if !failed.is_empty() {
            return Err(beamflow_program::Verdict::new(
                beamflow_program::Exit::Held,
                format!(
                    "a job failed: {}; see {}",
                    failed.join("; "),
                    dir.join("work").display()
                ),
            )
            .into());
        }
        if !jobs.is_empty() && jobs.iter().all(|j| j.state == JobState::JobFinished) {
            return Ok(jobs);
        }
        if accepted.elapsed() > Duration::from_secs(300) {
            let states: Vec<String> = jobs
                .iter()
                .map(|j| format!("{} {}", j.name, j.state))
                .collect();
            bail!(
                "the jobs did not finish within 5 minutes: {}",
                states.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out after {limit:?}")
}

/// The report as people read it.
pub fn render(r: &DemoReport, settle: Duration) -> String {
    let mbs = if r.send_secs > 0.0 {
        r.bytes as f64 / 1e6 / r.send_secs
    } else {
        0.0
    };
    let cfg = r.dir.join("beamflow.toml");
    let mut out = String::new();
    out.push_str(
        "beamflow demo: a synthetic stack went from the detector folder through a finished DAG\n\n",
    );
    out.push_str(&format!("  files                 {}\n", r.files));
    out.push_str(&format!(
        "  bytes                 {} ({})\n",
        r.bytes,
        human_bytes(r.bytes)
    ));
    out.push_str(&format!("  transfer              {:.3} s, {:.1} MB/s (verified with BLAKE3, durable before acknowledged)\n", r.send_secs, mbs));
    out.push_str(&format!(
        "  last image -> DAG     {:.2} s (of which {} is the settle period that decides the stack is finished)\n\n",
        r.latency.as_secs_f64(),
        humantime::format_duration(settle)
    ));
    out.push_str(&format!(
        "  DAG accepted -> done   {:.2} s (workflow `{}`, run by a local launcher)\n",
        r.run_time.as_secs_f64(),
        r.workflow
    ));
    out.push_str(&format!(
        "  last section -> done   {:.2} s (its sections moved as they landed)\n\n",
        (r.latency + r.run_time).as_secs_f64()
    ));
    if r.workflow == "qa" {
        out.push_str("  AlignTK was not found, so the `qa` workflow ran (the quality check that starts every\n");
        out.push_str("  AlignTK workflow). Put find_rst, register and align on PATH or set ALIGNTK_BIN to run\n");
        out.push_str("  qa -> find_rst -> register -> align -> apply_map instead.\n\n");
    } else {
        let work = r.dir.join(work_rel(r.version));
        out.push_str(&format!(
            "  aligned sections: {}\n  preview:          {} (the stack resliced before and after)\n\n",
            work.join("aligned").display(),
            work.join("preview.png").display()
        ));
    }
    match &r.science {
        Some(Ok(s)) => out.push_str(&science::render(s)),
        Some(Err(e)) => out.push_str(&format!(
            "  what AlignTK found could not be read: {}\n\n",
            beamflow_program::chain(e)
        )),
        None => {}
    }
    out.push_str(&step_table(&r.steps));
    out.push_str(&job_list(&r.jobs));
    out.push_str(&format!(
        "\nWhere to look:\n  {d}/incoming   the watched folder\n  {d}/remote     what the collector received (under the beamline's name, demo)\n  {d}/work       one work folder per stack version (qa.json, job output)\n  {d}/state      journal (agent.db) and database (collector.db)\n",
        d = r.dir.display()
    ));
    // full paths: right after a build the programs are not on PATH yet
    let agent = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "beamflow-agent".into());
    let collector = collector_exe().display().to_string();
    out.push_str(&format!("  {agent} status --config {}\n", cfg.display()));
    out.push_str(&format!(
        "  {collector} service --config {c} &   then   {collector} ls --config {c}\n",
        c = cfg.display()
    ));
    // its service is stopped: the folder is all it leaves
    out.push_str(&format!(
        "\nThe demo stopped its service; `rm -rf {}` removes all it made.\n",
        r.dir.display()
    ));
    out
}

/// Each step's own run beside the time beamflow spent around it.
fn step_table(steps: &[StepTime]) -> String {
    let mut out = String::new();
    if steps.is_empty() {
        return out;
    }
    out.push_str("  step             tool's own runs   around them: waiting for a free slot, then checks (ready -> running, done -> checked)\n");
    let (mut tool, mut ours) = (Duration::ZERO, Duration::ZERO);
    for (name, group) in by_step(steps, |s| s.name.as_str()) {
        let ran: Vec<&&StepTime> = group.iter().filter(|s| !s.reused).collect();
        let t: Duration = ran.iter().map(|s| s.tool).sum();
        let b: Duration = group.iter().map(|s| s.beamflow).sum();
        let reused = group.len() - ran.len();
        let run = match (ran.is_empty(), reused) {
            (true, _) => format!("{:>15}", "reused"),
            (false, 0) => format!("{:>13.3} s", t.as_secs_f64()),
            (false, n) => format!("{:>13.3} s ({n} reused)", t.as_secs_f64()),
        };
        out.push_str(&format!(
            "  {:<16} {run} {:>14.3} s\n",
            counted(name, group.len()),
            b.as_secs_f64()
        ));
        tool += t;
        ours += b;
    }
    out.push_str(&format!(
        "  {:<16} {:>13.3} s {:>14.3} s   (summed over the jobs, wherever they ran: the streamed versions' jobs too)\n\n",
        "all",
        tool.as_secs_f64(),
        ours.as_secs_f64()
    ));
    out
}

/// The step a job belongs to: `find_rst` for `find_rst[3]` or `find_rst[0-7]`.
fn step_of(job: &str) -> &str {
    &job[..job.find('[').unwrap_or(job.len())]
}

/// A fanned-out step's jobs together under its name, in the order the steps first appear.
fn by_step<'a, T>(items: &'a [T], name: impl Fn(&'a T) -> &'a str) -> Vec<(&'a str, Vec<&'a T>)> {
    let mut out: Vec<(&str, Vec<&T>)> = Vec::new();
    for item in items {
        let step = step_of(name(item));
        match out.iter_mut().find(|(s, _)| *s == step) {
            Some((_, g)) => g.push(item),
            None => out.push((step, vec![item])),
        }
    }
    out
}

/// A step's name with how many jobs it was, when more than one.
fn counted(step: &str, n: usize) -> String {
    match n {
        1 => step.to_string(),
        n => format!("{step} ×{n}"),
    }
}

/// The DAG's steps with their jobs' states and the steps they ran after.
fn job_list(jobs: &[(u64, String, JobState, Vec<u64>)]) -> String {
    let step_of_id: std::collections::HashMap<u64, &str> = jobs
        .iter()
        .map(|(id, name, _, _)| (*id, step_of(name)))
        .collect();
    let mut out = String::from("  jobs:\n");
    for (step, group) in by_step(jobs, |j| j.1.as_str()) {
        let mut states: Vec<(JobState, usize)> = Vec::new();
        let mut after: Vec<&str> = Vec::new();
        for (_, _, state, parents) in &group {
            match states.iter_mut().find(|(s, _)| s == state) {
                Some((_, n)) => *n += 1,
                None => states.push((*state, 1)),
            }
            for p in parents {
                let p = step_of_id.get(p).copied().unwrap_or("an earlier job");
                if !after.contains(&p) {
                    after.push(p);
                }
            }
        }
        let states: Vec<String> = states
            .iter()
            .map(|(s, n)| match (group.len(), n) {
                (1, _) => s.to_string(),
                (_, n) => format!("{s} ×{n}"),
            })
            .collect();
        let after = match after.is_empty() {
            true => String::new(),
            false => format!(" (after {})", after.join(", ")),
        };
        out.push_str(&format!(
            "    {:<16} {}{after}\n",
            counted(step, group.len()),
            states.join(", ")
        ));
    }
    out
}

/// `beamflow-agent demo`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to run in (default: a fresh temporary folder, kept for inspection).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Sections to write (2 to 1000).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub sections: u32,
    /// Pixels per side of each 16-bit section (128 to 2048: the sizes AlignTK is tested to
    /// register the synthetic specimen at).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(128..=2048))]
    pub side: u32,
    /// Quiet period that finishes the stack.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
}

/// `beamflow-agent demo`: the whole path on one machine, and what it found.
pub fn main(args: Args) -> Result<beamflow_program::Exit> {
    beamflow_program::logs::init(beamflow_config::LogFormat::Plain, "warn");
    let opts = DemoOptions {
        dir: args.dir,
        sections: args.sections,
        side: args.side,
        settle: args.settle,
        ..Default::default()
    };
    let rt = beamflow_program::runtime().context("failed to start the async runtime")?;
    let report = rt.block_on(run(opts))?;
    beamflow_program::logs::out(&render(&report, args.settle));
    Ok(beamflow_program::Exit::Done)
}
