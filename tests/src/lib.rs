//! A small builder for end-to-end tests: a temporary site with a config, the real
//! `beamflow-collector service` and `beamflow-agent run` processes, and helpers to wait for
//! what a person would look at (`status --json`, `ls --json`).
//!
//! The binaries are the ones `cargo build --bins` put beside this test executable; the test
//! command in the README builds them first.

pub mod hosts;
pub mod slurm;
pub mod sshd;
pub mod wrappers;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use beamflow_agent::synth::{write_tiff, write_tiff8, Section};

/// Path of a workspace binary, built by `cargo build --bins`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // tests live in target/<profile>/deps/, tools beside the binaries in target/<profile>/
    let beside = exe.with_file_name(name);
    let p = if beside.is_file() {
        beside
    } else {
        exe.parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join(name)
    };
    assert!(p.is_file(), "{} is missing: run `cargo build --workspace --bins` before the tests (the README's test command does)", p.display());
    p
}

/// Runs a system command (`ip`, `useradd` …) that must succeed, failing the test with what it
/// printed otherwise.
pub fn run_ok(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running child that is killed (SIGKILL) when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// What it is, for messages.
    pub what: String,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Sends SIGKILL and reaps it: a real crash.
    pub fn kill9(&mut self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
    /// Sends SIGTERM and waits for a clean exit.
    pub fn term(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.child.wait().expect("wait")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `cmd` (a program of the site's, maybe under a wrapper such as `ip netns exec` or
/// `prlimit`) with its output appended to `log` and no stdin; killed when dropped.
pub fn spawn_logged(mut cmd: Command, log: &Path, what: &str) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Proc {
        child,
        what: what.into(),
    }
}

/// The beamline name (`[agent] name`) every test site's agent has.
pub const BEAMLINE: &str = "bl";

/// A throwaway site: config, watch root, data root, state.
pub struct Site {
    /// Keeps the folder alive (kept after the test when BEAMFLOW_KEEP is set, for debugging).
    pub tmp: Option<tempfile::TempDir>,
    /// The site folder.
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
}

impl Site {
    /// A site with the embedded default config, except `settle` and any `extra` TOML lines
    /// appended to the `[[watch]]` section.
    pub fn new(settle: &str, extra_watch: &str) -> Site {
        let tmp = tempfile::Builder::new()
            .prefix("beamflow-e2e-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canon");
        let text = beamflow_config::EMBEDDED_LOCAL
            .replace(
                "settle = \"30s\"",
                &format!("settle = \"{settle}\"\n{extra_watch}"),
            )
            .replace(
                "log_format = \"plain\"",
                &format!("log_format = \"plain\"\nname = \"{BEAMLINE}\""),
            )
            .replace("retry_initial = \"1s\"", "retry_initial = \"300ms\"")
            .replace("retry_max = \"5m\"", "retry_max = \"2s\"")
            .replace("poll_interval = \"2s\"", "poll_interval = \"200ms\"")
            .replace("heartbeat_timeout = \"60s\"", "heartbeat_timeout = \"3s\"")
            .replace("idle_exit = \"30s\"", "idle_exit = \"2s\"")
            .replace("poll = \"1s\"", "poll = \"100ms\"");
        let config = dir.join("beamflow.toml");
        std::fs::write(&config, text).expect("write config");
        std::fs::create_dir_all(dir.join("incoming")).expect("incoming");
        let tmp = if std::env::var_os("BEAMFLOW_KEEP").is_some() {
            eprintln!("keeping {}", tmp.keep().display());
            None
        } else {
            Some(tmp)
        };
        Site { tmp, dir, config }
    }

    /// Replaces text in the config (to change one setting of the default).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        assert!(text.contains(from), "the config has no {from:?}");
        std::fs::write(&self.config, text.replacen(from, to, 1)).expect("config");
    }

    /// Appends TOML to the config.
    pub fn append_config(&self, more: &str) {
        let mut text = std::fs::read_to_string(&self.config).expect("config");
        text.push('\n');
        text.push_str(more);
        std::fs::write(&self.config, text).expect("config");
    }

    /// The folder of the AlignTK stand-ins (tests/aligntk).
    pub fn standins() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("aligntk")
    }

    /// Points the built-in AlignTK workflows at the stand-ins.
    pub fn use_standins(&self) {
        self.append_config(&format!(
            "[workflows.aligntk]\nbin = \"{}\"\n",
            Self::standins().display()
        ));
    }

    /// Points the built-in AlignTK workflows at the real AlignTK ([`aligntk_bin`]).
    pub fn use_aligntk(&self) {
        self.use_aligntk_with("");
    }

    /// As [`Site::use_aligntk`], the pairwise steps in chunks of `chunk` pairs instead of a
    /// job per pair: for a test that names its chunks (`find_rst[0-7]`) and wants few jobs.
    pub fn use_aligntk_in_chunks(&self, chunk: u32) {
        self.use_aligntk_with(&format!("chunk = {chunk}\n"));
    }

    fn use_aligntk_with(&self, more: &str) {
        let bin = aligntk_bin();
        self.append_config(&format!(
            "[workflows.aligntk]\nbin = \"{b}\"\n{more}[workflows.aligntk-apply]\nbin = \"{b}\"\n{more}",
            b = bin.display(),
        ));
    }

    /// The watch root.
    pub fn incoming(&self) -> PathBuf {
        self.dir.join("incoming")
    }

    /// Where this site's stacks land: its beamline's folder in the collector's data root.
    pub fn remote(&self) -> PathBuf {
        self.data_root().join(BEAMLINE)
    }

    /// The collector's data root.
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("remote")
    }

    /// The work folders of this site's beamline.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work").join(BEAMLINE)
    }

    fn spawn(&self, exe: &str, args: &[&str], log: &str) -> Proc {
        self.spawn_env(exe, args, log, &[])
    }

    /// Starts `beamflow-collector service` with extra environment (passed on to launchers
    /// and jobs, e.g. the stand-ins' STANDIN_* controls).
    pub fn start_service_env(&self, env: &[(&str, &str)]) -> Proc {
        let info = self.dir.join("state/server-info");
        let _ = std::fs::remove_file(&info);
        let p = self.spawn_env("beamflow-collector", &["service"], "service.log", env);
        wait_until(Duration::from_secs(20), "service server-info", || {
            info.exists()
        });
        p
    }

    fn spawn_env(&self, exe: &str, args: &[&str], log: &str, env: &[(&str, &str)]) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .expect("log");
        let child = Command::new(bin(exe))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("BEAMFLOW_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn");
        Proc {
            child,
            what: format!("{exe} {}", args.join(" ")),
        }
    }

    /// `beamflow-collector serve --stdio` on this site's config, as an agent's link starts it;
    /// the caller chooses what its stdin, stdout and stderr are.
    pub fn serve_stdio(&self) -> Command {
        let mut c = Command::new(bin("beamflow-collector"));
        c.args(["serve", "--stdio", "--config"])
            .arg(&self.config)
            .env("BEAMFLOW_LOG", "debug");
        c
    }

    /// Starts `beamflow-collector service` and waits for its server-info.
    pub fn start_service(&self) -> Proc {
        self.start_service_with(&[])
    }

    /// [`Site::start_service`] with more environment (the benchmarks log at the default
    /// level, `BEAMFLOW_LOG=info`, as a site would; the tests log at `debug`).
    pub fn start_service_with(&self, env: &[(&str, &str)]) -> Proc {
        let info = self.dir.join("state/server-info");
        let _ = std::fs::remove_file(&info); // a killed service leaves it behind
        let p = self.spawn_env("beamflow-collector", &["service"], "service.log", env);
        wait_until(Duration::from_secs(20), "service server-info", || {
            info.exists()
        });
        p
    }

    /// Starts `beamflow-agent run`.
    pub fn start_agent(&self) -> Proc {
        self.spawn("beamflow-agent", &["run"], "agent.log")
    }

    /// [`Site::start_agent`] with more environment (the benchmarks log at `info`).
    pub fn start_agent_with(&self, env: &[(&str, &str)]) -> Proc {
        self.spawn_env("beamflow-agent", &["run"], "agent.log", env)
    }

    /// Waits until the running agent daemon's door for `push` is open
    /// (`beamflow_agent::handoff`): a push from then on is handed to it.
    pub fn wait_agent_door(&self) {
        let door = beamflow_agent::handoff::socket_path(&self.dir.join("state"));
        wait_until(Duration::from_secs(30), "the agent daemon's door", || {
            door.exists()
        });
    }

    /// Runs a command to completion.
    pub fn run(&self, exe: &str, args: &[&str]) -> Output {
        Command::new(bin(exe))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run")
    }

    /// `beamflow-agent status --json`.
    pub fn status(&self) -> Vec<Value> {
        let out = self.run("beamflow-agent", &["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("status json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The status entry of one stack, by its remote name.
    pub fn stack(&self, name: &str) -> Option<Value> {
        self.status().into_iter().find(|s| s["name"] == name)
    }

    /// Waits until the stack reaches `state`, panicking with the agent's log tail if not.
    pub fn wait_state(&self, name: &str, state: &str, limit: Duration) -> Value {
        wait_for(
            limit,
            &format!("stack {name} to reach {state}"),
            || self.stack(name).filter(|s| s["state"] == state),
            || {
                format!(
                    "status: {:?}\n--- agent.log tail ---\n{}",
                    self.stack(name),
                    self.log_tail("agent.log")
                )
            },
        )
    }

    /// Waits until a partial file of `stack` (`.part`) is in the collector's data root: bytes
    /// of it have crossed the link and more are coming.
    pub fn wait_partial(&self, stack: &str, limit: Duration) {
        let dir = self.remote().join(stack);
        wait_for(
            limit,
            &format!("a partial file of {stack} in the data root"),
            || {
                walkdir::WalkDir::new(&dir)
                    .into_iter()
                    .filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".part"))
                    .then_some(())
            },
            || self.log_tail("agent.log"),
        )
    }

    /// Last lines of a log in the site folder.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `beamflow-collector ls --json`.
    pub fn jobs(&self) -> Vec<Value> {
        let out = self.run("beamflow-collector", &["ls", "--json"]);
        assert!(
            out.status.success(),
            "ls failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("ls json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Writes `n` sections of `side`² pixels into `incoming/<stack>` as `S_0000.tif` …
    pub fn write_stack(&self, stack: &str, n: u32, side: u32) -> PathBuf {
        let d = self.incoming().join(stack);
        for i in 0..n {
            self.write_section(stack, i, side, i as u64 + 7);
        }
        d
    }

    /// Writes section `i` of `stack` (what [`Site::write_stack`] writes there with `seed`
    /// `i + 7`) as a detector that writes whole files does: under a hidden name, then renamed.
    pub fn write_section(&self, stack: &str, i: u32, side: u32, seed: u64) -> PathBuf {
        let d = self.incoming().join(stack);
        std::fs::create_dir_all(&d).expect("stack dir");
        let s = Section {
            width: side,
            height: side,
            seed,
            big: i % 2 == 1,
            rows_per_strip: 16,
        };
        let (tmp, name) = (
            d.join(format!(".S_{i:04}.part")),
            d.join(format!("S_{i:04}.tif")),
        );
        write_tiff(&tmp, &s).expect("write section");
        std::fs::rename(&tmp, &name).expect("rename section");
        name
    }
}

/// An 8-bit section as (width, height, pixels): what AlignTK wrote, read whole (test images
/// are small).
pub fn read8(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let mut d =
        tiff::decoder::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
            .unwrap();
    let (w, h) = d.dimensions().unwrap();
    match d.read_image().unwrap() {
        tiff::decoder::DecodingResult::U8(v) => (w, h, v),
        other => panic!("{}: not 8-bit: {other:?}", path.display()),
    }
}

/// The folder of the real AlignTK binaries: `ALIGNTK_BIN`, else built now by
/// `tests/aligntk.sh` (from a tarball, `../shared/aligntk` or the upstream repository). Never
/// skipped: without AlignTK this test fails.
pub fn aligntk_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("ALIGNTK_BIN") {
        let b = PathBuf::from(b);
        assert!(
            b.join("find_rst").is_file(),
            "ALIGNTK_BIN={} holds no find_rst",
            b.display()
        );
        return b;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("aligntk.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed; the real AlignTK is needed for this test",
        script.display()
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Polls `ok` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    wait_for(limit, what, || ok().then_some(()), String::new);
}

/// Watches for `span` that nothing goes wrong: `broken` is asked again and again, and the
/// test fails the moment it says what went wrong. What must not happen is watched the whole
/// time, not looked at once after a sleep.
pub fn holds_for(span: Duration, what: &str, mut broken: impl FnMut() -> Option<String>) {
    let start = Instant::now();
    while start.elapsed() < span {
        if let Some(why) = broken() {
            panic!("{what} stopped holding after {:?}: {why}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `poll` until it gives a value, which it returns; past `limit` the test fails saying
/// what it waited for and what `context` shows of the system then (a status, a log's tail).
/// Every end-to-end wait goes through here: a test waits on a condition, never on a clock.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut poll: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = poll() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts two folders hold the same regular files with the same bytes (hidden names and
/// hidden folders aside).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let list = |d: &Path| -> Vec<(String, String)> {
        let mut v: Vec<_> = walkdir::WalkDir::new(d)
            .into_iter()
            // hidden folders are the collector's own (version snapshots)
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_type().is_file() && !e.file_name().to_string_lossy().starts_with('.')
            })
            .map(|e| {
                let rel = e.path().strip_prefix(d).unwrap().display().to_string();
                (
                    rel,
                    blake3::hash(&std::fs::read(e.path()).unwrap())
                        .to_hex()
                        .to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        list(a),
        list(b),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

/// Pids of the direct children of `pid` whose command line contains `needle`.
pub fn children_matching(pid: i32, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for p in pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // the parent pid is the 2nd field after the ")" that ends the command name
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid != Some(pid) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(needle)
        {
            out.push(p);
        }
    }
    out
}

impl Site {
    /// Writes `n` sections quickly: one synthetic section, copied with a few bytes changed
    /// per copy so that every file differs. For tests that need volume, not variety.
    pub fn write_big_stack(&self, stack: &str, n: u32, side: u32) -> PathBuf {
        use std::os::unix::fs::FileExt;
        let d = self.incoming().join(stack);
        std::fs::create_dir_all(&d).expect("stack dir");
        let first = d.join(".template");
        write_tiff(
            &first,
            &Section {
                width: side,
                height: side,
                seed: 5,
                big: false,
                rows_per_strip: 64,
            },
        )
        .expect("section");
        for i in 0..n {
            // copy under a hidden name and rename: the stack sees only whole files
            let tmp = d.join(format!(".S_{i:04}.tif.tmp"));
            std::fs::copy(&first, &tmp).expect("copy");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&tmp)
                .expect("open");
            f.write_all_at(&(i as u64).to_le_bytes(), 64)
                .expect("patch");
            drop(f);
            std::fs::rename(&tmp, d.join(format!("S_{i:04}.tif"))).expect("rename");
        }
        std::fs::remove_file(&first).expect("template");
        d
    }
}

impl Site {
    /// Waits until `ok` holds for the jobs of `stack` (from `ls --json`), or panics with them.
    pub fn wait_jobs(
        &self,
        stack: &str,
        limit: Duration,
        what: &str,
        ok: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let of_stack = || -> Vec<Value> {
            self.jobs()
                .into_iter()
                .filter(|j| j["stack"] == stack)
                .collect()
        };
        wait_for(
            limit,
            &format!("jobs of {stack} to reach {what}"),
            || {
                let jobs = of_stack();
                (!jobs.is_empty() && ok(&jobs)).then_some(jobs)
            },
            || {
                let jobs: Vec<String> = of_stack()
                    .iter()
                    .map(|j| format!("{} {} {} {}", j["id"], j["name"], j["state"], j["reason"]))
                    .collect();
                format!(
                    "{jobs:#?}\n--- service.log ---\n{}",
                    self.log_tail("service.log")
                )
            },
        )
    }

    /// Registers every DAG and runs none of it: the workflow is one step (no 8-bit
    /// preparation) in a queue that submits nothing. For benchmarks of the transfer, where a
    /// stack's jobs running beside the next measurement would be measured with it.
    pub fn hold_jobs(&self) {
        self.edit_config("workflow = \"aligntk\"", "workflow = \"hold\"");
        self.edit_config("submit = true ", "submit = false ");
        self.append_config(
            "[workflows.hold]\nto_8bit = \"off\"\n[[workflows.hold.steps]]\nname = \"wait\"\ncommand = \"true\"\n",
        );
    }

    /// A stack version's snapshot under the data root, as `serve` leaves it (two tiny
    /// sections), with the files a submission names: for tests and benchmarks that drive
    /// the service's API straight, with a workflow of their own.
    pub fn snapshot(&self, beamline: &str, name: &str) -> Vec<beamflow_protocol::api::SubmitFile> {
        let snap = self
            .data_root()
            .join(beamline)
            .join(name)
            .join(".beamflow-v1");
        std::fs::create_dir_all(&snap).unwrap();
        (0..2)
            .map(|i| {
                let p = snap.join(format!("S_{i:04}.tif"));
                let section = Section {
                    width: 16,
                    height: 16,
                    seed: i,
                    big: false,
                    rows_per_strip: 16,
                };
                write_tiff(&p, &section).unwrap();
                let bytes = std::fs::read(&p).unwrap();
                beamflow_protocol::api::SubmitFile {
                    path: format!("{name}/S_{i:04}.tif"),
                    size: bytes.len() as u64,
                    blake3: blake3::hash(&bytes).to_hex().to_string(),
                }
            })
            .collect()
    }

    /// Waits until every job of `stack` is JOB_FINISHED.
    pub fn wait_finished(&self, stack: &str, limit: Duration) -> Vec<Value> {
        self.wait_jobs(stack, limit, "JOB_FINISHED", |jobs| {
            jobs.iter().all(|j| j["state"] == "JOB_FINISHED")
        })
    }

    /// `beamflow-collector history JOB --json`.
    pub fn history(&self, job: &Value) -> Vec<Value> {
        let id = job["id"].to_string();
        let out = self.run("beamflow-collector", &["history", &id, "--json"]);
        assert!(
            out.status.success(),
            "history failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("history json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `beamflow-collector status --json`.
    pub fn collector_status(&self) -> Value {
        let out = self.run("beamflow-collector", &["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// Pushes a folder and asserts that the DAG was accepted.
    pub fn push(&self, dir: &Path) {
        let out = self.run(
            "beamflow-agent",
            &["push", dir.to_str().expect("utf-8 path")],
        );
        assert!(
            out.status.success(),
            "push failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Makes one section blank (every pixel the same), keeping it a valid TIFF.
    pub fn blank(&self, file: &Path, side: u32) {
        use std::os::unix::fs::FileExt;
        let head = if std::fs::read(file).expect("read")[2] == 0x2B {
            16
        } else {
            8
        }; // BigTIFF or classic
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .expect("open");
        f.write_all_at(&vec![0x10u8; (side * side * 2) as usize], head)
            .expect("blank");
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // launchers outlive a killed service by design, and their jobs with them; a test's
        // must not outlive the test (nor keep a CPU busy for the tests after it)
        kill_processes_of(&self.dir);
    }
}

/// Every process id on this host.
fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
}

/// SIGKILLs every process of `dir` (see [`processes_of`]) but this one.
pub fn kill_processes_of(dir: &Path) {
    let me = std::process::id() as i32;
    for pid in processes_of(dir) {
        if pid != me {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Processes whose command line names `dir` or whose working folder lies under it.
pub fn processes_of(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for p in pids() {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let in_dir = std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c.starts_with(dir));
        if in_dir || cmdline.contains(&needle) {
            out.push(p);
        }
    }
    out
}

/// Every descendant of `pid` (children, their children …).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for p in pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        if let Some(pp) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok())
        {
            parent_of.push((p, pp));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(x) = frontier.pop() {
        for (c, _) in parent_of.iter().filter(|(_, pp)| *pp == x) {
            out.push(*c);
            frontier.push(*c);
        }
    }
    out
}

/// Processes (or, with negative ids, process groups) a test stopped with SIGSTOP; they are
/// continued when this is dropped, whatever happens, a panic included, so that no frozen
/// process outlives its test and holds up the next one.
pub struct Frozen(pub Vec<i32>);

impl Frozen {
    /// Stops every process (or group) in `ids`.
    pub fn stop(ids: Vec<i32>) -> Frozen {
        for p in &ids {
            unsafe { libc::kill(*p, libc::SIGSTOP) };
        }
        Frozen(ids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for p in &self.0 {
            unsafe { libc::kill(*p, libc::SIGCONT) };
        }
    }
}
