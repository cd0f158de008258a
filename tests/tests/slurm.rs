//! The DAG on a real three-node Slurm (munge, slurmctld, slurmd started by tests/slurm/start.sh):
//! launchers are real batch jobs, jobs run through `srun`, and `scancel` is the real one.
//! The DAG runs the real AlignTK 1.0.2; the cancellation test needs a step that is slow on
//! demand and uses the stand-ins in tests/aligntk for that. The pace test counts the calls the
//! service makes to the real `squeue` and `sbatch` through wrappers first on its `PATH`.

use beamflow_e2e::*;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn slurm() -> String {
    beamflow_e2e::slurm::cluster()
}

/// One test at a time on the cluster: the backfill test fills it with other jobs on purpose,
/// and the others' launchers would wait behind them.
static CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The cluster to oneself for the test's length (the guard), its config and a site using it.
fn slurm_site(real_aligntk: bool) -> (Site, String, std::sync::MutexGuard<'static, ()>) {
    let held = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let conf = slurm();
    let site = Site::new("1s", "");
    if real_aligntk {
        site.use_aligntk();
        // AlignTK is built against OpenMPI, which srun must start with PMIx: the site's
        // launch template says so (as a site whose slurm.conf has no MpiDefault would)
        site.edit_config(
            "slots = 0",
            "slots = 0\nlaunch = \"srun --mpi=pmix -N {nodes} -n {ranks} --cpus-per-task {threads} {command}\"",
        );
    } else {
        site.use_standins();
    }
    // the suite's other tests want launchers seen ending at once; the pace has its own test
    site.edit_config(
        "scheduler = \"local\"",
        "scheduler = \"slurm\"\nqueue = \"debug\"\nscheduler_min_interval = \"1s\"",
    );
    site.edit_config("idle_exit = \"2s\"", "idle_exit = \"5s\"");
    site.edit_config("walltime = \"1h\"", "walltime = \"10m\"");
    (site, conf, held)
}

/// Runs a Slurm client command against the test cluster; its output, once it succeeded.
fn slurm_cmd(conf: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("SLURM_CONF", conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn squeue(conf: &str) -> String {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i %T %j"])
        .env("SLURM_CONF", conf)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_full_dag_runs_to_job_finished_in_slurm_allocations() {
    let (site, conf, _cluster) = slurm_site(true);
    let _service = site.start_service_env(&[("SLURM_CONF", &conf)]);
    let dir = site.write_stack("slurm1", 3, 256);
    site.push(&dir);
    let jobs = site.wait_finished("slurm1", LONG);
    assert_eq!(jobs.len(), 4);
    let st = site.collector_status();
    let l = &st["launchers"][0];
    assert_eq!(l["scheduler"], "slurm");
    let batch = l["batch_id"].as_str().unwrap();
    assert!(
        batch.chars().all(|c| c.is_ascii_digit()),
        "a Slurm job id: {batch}"
    );
    // the jobs ran through srun inside that allocation
    let log = std::fs::read_to_string(
        site.dir
            .join(format!("state/launchers/launcher-{}.log", l["id"])),
    )
    .unwrap();
    assert!(
        log.contains("started: srun --mpi=pmix -N 1 -n 1"),
        "{}",
        &log[..log.len().min(3000)]
    );
}

#[test]
fn a_launcher_cancelled_mid_job_times_out_and_the_job_finishes_in_a_new_allocation() {
    // a register that is slow on demand: the stand-in's
    let (site, conf, _cluster) = slurm_site(false);
    let _service =
        site.start_service_env(&[("SLURM_CONF", &conf), ("STANDIN_SLEEP", "register:8")]);
    let dir = site.write_stack("slurm2", 3, 32);
    site.push(&dir);
    let jobs = site.wait_jobs("slurm2", LONG, "register RUNNING", |j| {
        j[2]["state"] == "RUNNING"
    });
    let first = jobs[2]["launcher"].as_u64().unwrap();
    let st = site.collector_status();
    let batch = st["launchers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == first)
        .unwrap()["batch_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        squeue(&conf).contains(&format!("{batch} RUNNING")),
        "{}",
        squeue(&conf)
    );
    slurm_cmd(&conf, "scancel", &[&batch]);
    let jobs = site.wait_finished("slurm2", LONG);
    let h = site.history(&jobs[2]);
    let path: Vec<&str> = h.iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert!(
        path.windows(2).any(|w| w == ["RUNNING", "RUN_TIMEOUT"]),
        "{path:?}"
    );
    assert!(
        path.windows(2)
            .any(|w| w == ["RUN_TIMEOUT", "RESTART_READY"]),
        "{path:?}"
    );
    let told: Vec<String> = h
        .iter()
        .map(|e| format!("{} -> {}: {}", e["from"], e["to"], e["reason"]))
        .collect();
    assert_eq!(jobs[2]["attempts"], 2, "{told:#?}");
    assert_ne!(
        jobs[2]["launcher"].as_u64().unwrap(),
        first,
        "finished in a new allocation"
    );
}

/// The service asks Slurm at its queue's pace and about its own jobs only: wrappers first on
/// the service's `PATH` log every `squeue` and `sbatch` before running the real one; two
/// stacks run to the end, and meanwhile no two calls came closer than
/// `scheduler_min_interval`, and every `squeue` asked with `--me`.
#[test]
fn slurm_is_asked_at_the_queue_s_pace_and_only_about_this_user_s_jobs() {
    let (site, conf, _cluster) = slurm_site(false);
    site.edit_config(
        "scheduler_min_interval = \"1s\"",
        "scheduler_min_interval = \"3s\"",
    );
    let (bin, log) = beamflow_e2e::wrappers::wrapper_paths(&site.dir);
    let path = beamflow_e2e::wrappers::counting_wrappers(&bin, &["squeue", "sbatch"], &log);
    let _service = site.start_service_env(&[("SLURM_CONF", &conf), ("PATH", &path)]);
    for name in ["paced1", "paced2"] {
        let dir = site.write_stack(name, 3, 32);
        site.push(&dir);
    }
    site.wait_finished("paced1", LONG);
    site.wait_finished("paced2", LONG);
    // a while longer: the launcher idles out and the service polls its end
    wait_until(LONG, "the launchers to end", || {
        site.collector_status()["launchers"]
            .as_array()
            .is_some_and(|ls| ls.iter().all(|l| l["state"] == "FINISHED"))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let calls = beamflow_e2e::wrappers::calls(&log);
    let polls = calls
        .iter()
        .filter(|(_, c)| c.starts_with("squeue"))
        .count();
    assert!(polls >= 2, "Slurm was hardly asked:\n{text}");
    assert!(calls.iter().any(|(_, c)| c.starts_with("sbatch")), "{text}");
    for (_, c) in &calls {
        if c.starts_with("squeue") {
            assert!(c.contains("--me"), "the whole cluster was asked: {c}");
        }
    }
    for w in calls.windows(2) {
        let gap = w[1].0 - w[0].0;
        // the wrapper's clock and the service's differ by the wrapper's start: a few ms
        assert!(
            gap > 2.9,
            "{gap:.2} s between `{}` and `{}`:\n{text}",
            w[0].1,
            w[1].1
        );
    }
    eprintln!(
        "{} calls to Slurm ({polls} polls), none closer than 3 s",
        calls.len()
    );
}

/// Backfill windows on the real Slurm, three nodes: another user's job holds two of them for
/// six minutes, and a job of all three waits for them (Reason `Resources`).
/// `beamflow-collector backfill` sees one node free until that job's expected start. First
/// the service runs with `backfill = false`: its launcher of the fixed size (all three nodes)
/// waits too, and `scontrol` says why. Then the same service, restarted with
/// `backfill = true`, withdraws that launcher once it has waited past `max_queue_wait` while
/// a window exists, and submits one of the window's shape (one node, the window less
/// `walltime_pad`), which starts at once beside the waiting job; the stack finishes in it.
#[test]
fn backfill_fits_a_launcher_to_the_free_node_and_it_starts_while_a_bigger_job_waits() {
    let (site, conf, _cluster) = slurm_site(false);
    site.edit_config(
        "scheduler_min_interval = \"1s\"",
        "scheduler_min_interval = \"1s\"\nbackfill = false\nbackfill_every = \"2s\"\nmin_walltime = \"1m\"\nwalltime_pad = \"30s\"\nwalltime_margin = \"20s\"\nmax_queue_wait = \"20s\"",
    );
    site.edit_config("max_nodes = 1", "max_nodes = 3");
    site.edit_config("min_nodes = 1", "min_nodes = 3");
    // other users' jobs write nowhere (slurm-N.out would land in the test's working folder)
    let sbatch = |args: &[&str]| -> String {
        slurm_cmd(
            &conf,
            "sbatch",
            &[&["--parsable", "-o", "/dev/null"], args].concat(),
        )
    };
    wait_until(LONG, "the three nodes to be idle", || {
        squeue(&conf).trim().is_empty()
    });
    let holder = sbatch(&[
        "-J",
        "other-two",
        "-N",
        "2",
        "-t",
        "6",
        "--wrap",
        "sleep 350",
    ]);
    let big = sbatch(&[
        "--exclusive",
        "-J",
        "other-all",
        "-N",
        "3",
        "-t",
        "2",
        "--wrap",
        "sleep 1",
    ]);
    let cleanup = Cancel(vec![holder.clone(), big.clone()], conf.clone());
    let left = std::time::Instant::now() + Duration::from_secs(360);
    wait_until(LONG, "the big job to wait with an expected start", || {
        let out = Command::new("squeue")
            .args(["-h", "-j", &big, "--start", "-o", "%S %r"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout);
        t.contains("Resources") && !t.starts_with("N/A")
    });
    let out = Command::new(bin("beamflow-collector"))
        .args(["backfill", "--json", "--want", "3", "--config"])
        .arg(&site.config)
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    let b: serde_json::Value =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone();
    assert_eq!(b["windows"][0]["nodes"], 1, "{b}");
    let lasts = b["windows"][0]["lasts_secs"]
        .as_u64()
        .expect("a window that ends");
    assert!(lasts <= 360, "{b}");
    // min_nodes = 3 for now: the one free node is too few, the fixed size goes
    assert_eq!(b["shape"]["from_window"], false, "{b}");
    assert_eq!(b["shape"]["nodes"], 3, "{b}");

    // the fixed size: a launcher of three nodes that waits, and Slurm says why
    let service = site.start_service_env(&[("SLURM_CONF", &conf)]);
    let dir = site.write_stack("window", 3, 32);
    site.push(&dir);
    let fixed = wait_for(
        LONG,
        "the fixed launcher's batch job",
        || {
            let st = site.collector_status();
            let l = st["launchers"].get(0)?.clone();
            (l["batch_id"].as_str().is_some_and(|b| !b.is_empty())).then_some(l)
        },
        String::new,
    );
    assert_eq!(
        (fixed["nodes"].clone(), fixed["window"].clone()),
        (3.into(), false.into())
    );
    let batch = fixed["batch_id"].as_str().unwrap().to_string();
    let why = wait_for(
        LONG,
        "Slurm's reason for the fixed launcher",
        || {
            let job = slurm_cmd(&conf, "scontrol", &["show", "job", &batch]);
            let reason = job
                .split_whitespace()
                .find_map(|w| w.strip_prefix("Reason="))?
                .to_string();
            (job.contains("JobState=PENDING") && reason != "None").then_some(reason)
        },
        String::new,
    );
    assert!(
        ["Resources", "Priority"].contains(&why.as_str()),
        "the fixed launcher waits for {why}"
    );
    drop(service);

    // the same service with backfill on: the waiting launcher is withdrawn, a window's goes
    site.edit_config("backfill = false", "backfill = true");
    site.edit_config("min_nodes = 3", "min_nodes = 1");
    let _service = site.start_service_env(&[("SLURM_CONF", &conf)]);
    site.wait_finished("window", LONG);
    let st = site.collector_status();
    let ls = st["launchers"].as_array().unwrap();
    let first = ls.iter().find(|l| l["batch_id"] == batch.as_str()).unwrap();
    assert_eq!(first["state"], "FINISHED", "{st}");
    let reason = first["reason"].as_str().unwrap();
    assert!(
        reason.contains("withdrawn") && reason.contains("max_queue_wait"),
        "{reason}"
    );
    assert!(
        !squeue(&conf).contains(&format!("{batch} ")),
        "the withdrawn batch job is gone: {}",
        squeue(&conf)
    );
    let l = ls
        .iter()
        .find(|l| l["window"] == true)
        .unwrap_or_else(|| panic!("no launcher of a window: {st}"));
    assert_eq!(l["nodes"], 1, "{st}");
    let time_left = left.saturating_duration_since(std::time::Instant::now());
    assert!(
        l["walltime_secs"].as_u64().unwrap() < 360,
        "{st} (the holder has {time_left:?} left)"
    );
    assert!(
        squeue(&conf).contains(&format!("{big} PENDING")),
        "the big job should still wait: {}",
        squeue(&conf)
    );
    assert!(
        ls.iter()
            .all(|l| l["window"] == true || l["batch_id"] == batch.as_str()),
        "only the withdrawn launcher was of the fixed size: {st}"
    );
    drop(cleanup);
}

/// Cancels the other users' jobs a test submitted, however it ends.
struct Cancel(Vec<String>, String);

impl Drop for Cancel {
    fn drop(&mut self) {
        let _ = Command::new("scancel")
            .args(&self.0)
            .env("SLURM_CONF", &self.1)
            .output();
    }
}
