//! The TOML schema shared by `beamflow-agent` and `beamflow-collector`.
//!
//! One file may hold every section; each program reads the sections it needs. A module per
//! section holds its keys, their defaults (its `Default` impl) and its checks; `file` reads
//! and checks the whole. Unknown keys and bad values are errors that name the key and the
//! line, and relative paths resolve against the config file's own folder so that a systemd
//! unit and a person in another working directory see the same paths.

mod agent;
pub mod argv;
mod collector;
mod file;
mod link;
mod locate;
pub mod notify;
mod queue;
pub mod reference;
mod service;
mod units;
mod watch;
mod workflow;

pub use agent::{check_beamline, AgentSection, BeamlineNameError, LogFormat};
pub use collector::CollectorSection;
pub use file::ConfigError;
pub use link::{LinkSection, MasterMode, SyncMode, Transport};
pub use queue::{launch_argv, LaunchError, QueueSection, SchedulerKind, LAUNCH_PLACEHOLDERS};
pub use service::{split_host_port, AddressError, ServiceSection};
pub use units::{ByteSize, Dur};
pub use watch::{OnChange, WatchMode, WatchSection};
pub use workflow::{Each, Step, To8Bit, Workflow, NAME_ENV, NAME_PLACEHOLDERS};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The shipped `examples/local.toml`: local transport, local scheduler, everything under the
/// config's own folder. The demo writes it; tests check that it loads.
pub const EMBEDDED_LOCAL: &str = include_str!("../../examples/local.toml");

/// Everything a config file can say. Both programs load the whole file so that a mistake in
/// any section is reported early, whichever program reads it first.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The beamline daemon.
    #[serde(default)]
    pub agent: AgentSection,
    /// Folders the agent watches for stacks.
    #[serde(default)]
    pub watch: Vec<WatchSection>,
    /// How the agent reaches the collector.
    #[serde(default)]
    pub link: LinkSection,
    /// Where the collector stores what it receives.
    #[serde(default)]
    pub collector: CollectorSection,
    /// The collector's long-running service.
    #[serde(default)]
    pub service: ServiceSection,
    /// Named workflows; `aligntk`, `aligntk-apply` and `qa` exist even when not written here.
    #[serde(default)]
    pub workflows: BTreeMap<String, Workflow>,
    /// Batch queues the service keeps launchers in; `default` (local) exists if none is written.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueSection>,
    /// Where the agent's news goes (held stacks, failed DAGs, a link down, a silent root).
    #[serde(default)]
    pub notify: Vec<notify::NotifySection>,
    /// The file this was loaded from (set by [`Config::load`]).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("t.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_fanned_out_step_s_bad_chunk_or_name_names_the_key() {
        let wf = |extra: &str, name: &str| {
            format!(
                "[workflows.w]\n[[workflows.w.steps]]\nname = \"{name}\"\ncommand = \"x\"\n{extra}"
            )
        };
        let e = err(&wf("each = \"pair\"\nchunk = 0\n", "a"));
        assert!(
            e.contains("workflows.w.steps[0].chunk") && e.contains("at least 1"),
            "{e}"
        );
        let e = err(&wf("", "find[0-7]"));
        assert!(
            e.contains("workflows.w.steps[0].name") && e.contains("STEP[FIRST-LAST]"),
            "{e}"
        );
        let e = err(&wf("each = \"pairs\"\n", "a"));
        assert!(e.contains("each") && e.contains("pair"), "{e}");
    }

    #[test]
    fn embedded_default_loads() {
        let cfg = Config::parse(EMBEDDED_LOCAL, Path::new("local.toml")).unwrap();
        assert_eq!(cfg.watch.len(), 1);
        assert_eq!(cfg.link.transport, Transport::Local);
        assert!(cfg.workflows.contains_key("aligntk"));
    }

    #[test]
    fn shipped_examples_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "local, beamline, polaris, slurm, theta: {n}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[agent]\nstate_dir = \"s\"\nretry_maxx = \"5s\"\n");
        assert!(e.starts_with("t.toml:3:"), "{e}");
        assert!(e.contains("retry_maxx"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_and_line() {
        let e = err("[[watch]]\npath = \"in\"\nsettle = \"thirty\"\n");
        assert!(e.starts_with("t.toml:3: key `watch[0].settle`"), "{e}");
        assert!(e.contains("30s"), "{e}");
    }

    #[test]
    fn listen_is_host_and_port_and_says_how_to_write_it() {
        for ok in [
            "0.0.0.0:0",
            "[::]:7000",
            "login1.site.org:0",
            "10.1.2.3:443",
        ] {
            assert!(split_host_port(ok).is_ok(), "{ok}");
        }
        assert_eq!(split_host_port("[::1]:5").unwrap(), ("::1".to_string(), 5));
        let e = err("[service]\nwork_root = \"w\"\nlisten = \"0.0.0.0\"\n");
        assert!(e.starts_with("t.toml:3: key `service.listen`"), "{e}");
        assert!(e.contains("host:port"), "{e}");
        let e = err("[service]\nlisten = \":::5\"\n");
        assert!(e.contains("service.listen"), "{e}");
        let e = err("[service]\nadvertise = \"https://x\"\n");
        assert!(e.starts_with("t.toml:2: key `service.advertise`"), "{e}");
    }

    #[test]
    fn newcomers_mistakes_are_named_in_full_with_what_to_write() {
        let d = tempfile::tempdir().unwrap();
        for text in ["", "# only a comment\n\n"] {
            let p = d.path().join("empty.toml");
            std::fs::write(&p, text).unwrap();
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(
                e.contains("sets nothing") && e.contains("examples/local.toml"),
                "{e}"
            );
        }
        let e = err("[[watch]]\npath = \"in\"\nsettle = 30\n");
        assert!(e.starts_with("t.toml:3: key `watch[0].settle`"), "{e}");
        assert!(e.contains("\"30s\""), "{e}");
        let e = err("[[watch]]\npath = \"a\"\n[[watch]]\npath = \"b\"\nmax_wait = 5\n");
        assert!(e.starts_with("t.toml:5: key `watch[1].max_wait`"), "{e}");
        // the keys of this stop: a local queue has no backfill windows, and a job held after
        // no timeout at all would never run
        let e = err("[queues.q]\nscheduler = \"local\"\nbackfill = true\n");
        assert!(
            e.contains("key `queues.q.backfill`") && e.contains("no backfill windows"),
            "{e}"
        );
        let e = err("[service]\nmax_timeouts = 0\n");
        assert!(
            e.contains("key `service.max_timeouts`") && e.contains("at least 1"),
            "{e}"
        );
        let e = err("[queues.q]\nscheduler = \"slurm\"\nbackfill = true\nmin_walltime = \"30s\"\n");
        assert!(e.contains("key `queues.q.min_walltime`"), "{e}");
        let e = err("[link]\nchannels = \"x\"\n");
        assert!(e.starts_with("t.toml:2: key `link.channels`"), "{e}");
        let e = err("[link]\nchannels = 2\nmax_stacks = 0\n");
        assert!(
            e.starts_with("t.toml:3: key `link.max_stacks`") && e.contains("use 1 to 64"),
            "{e}"
        );
        let e = err("[link]\nidle = 30\n");
        assert!(e.starts_with("t.toml:2: key `link.idle`"), "{e}");
        let e = err("[[watch]]\npath = \"in\"\nworkflow = \"alignTK\"\n");
        assert!(e.starts_with("t.toml:3: key `watch[0].workflow`"), "{e}");
        assert!(e.contains("aligntk, aligntk-apply, qa"), "{e}");
    }

    #[test]
    fn zero_min_images_is_refused() {
        let e = err("[[watch]]\npath = \"in\"\nmin_images = 0\n");
        assert!(e.starts_with("t.toml:3: key `watch[0].min_images`"), "{e}");
    }

    #[test]
    fn bad_glob_is_refused() {
        let e = err("[[watch]]\npath = \"in\"\npattern = \"[*.tif\"\n");
        assert!(e.contains("watch[0].pattern") && e.contains(":3:"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(
            &f,
            "[[watch]]\npath = \"./incoming\"\n[collector]\ndata_root = \"/abs\"\nstate_dir = \"~/st\"\n",
        )
        .unwrap();
        let cfg = Config::load(&f).unwrap();
        let base = d.path().canonicalize().unwrap();
        assert_eq!(cfg.watch[0].path, base.join("incoming"));
        assert_eq!(cfg.collector.data_root, PathBuf::from("/abs"));
        assert_eq!(cfg.agent.state_dir, base.join("state"));
        let home = PathBuf::from(std::env::var_os("HOME").unwrap());
        assert_eq!(cfg.collector.state_dir, home.join("st"));
    }

    #[test]
    fn missing_file_names_it() {
        let e = Config::load(Path::new("/nonexistent/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }
}
