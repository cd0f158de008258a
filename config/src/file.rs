//! Reading a config file: load, parse, check every section, resolve paths against the
//! file's folder. Every error names the file, the key in full and its line.

use crate::locate::{key_on_line, line_of};
use crate::{workflow, Config, QueueSection};
use std::path::{Path, PathBuf};

/// Why a config could not be used. Every variant says which file and, where one exists,
/// which key on which line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("failed to read config {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The TOML was malformed, had an unknown key, or a value of the wrong kind.
    #[error("{path}:{line}: {key}{message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// "key `x`: " when a key could be named, else empty.
        key: String,
        /// What is wrong and what to write instead.
        message: String,
    },
}

impl Config {
    /// Reads, parses, validates and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let said = text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if !said {
            // a file that sets nothing is a mistake (a wrong path, an unsaved edit), not a wish
            // for every default
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: 1,
                key: String::new(),
                message: "the file sets nothing; start from examples/local.toml (one host), examples/beamline.toml (a beamline) or examples/polaris.toml (an HPC site)".into(),
            });
        }
        let mut cfg = Config::parse(&text, path)?;
        cfg.resolve(&base);
        cfg.source = Some(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()));
        Ok(cfg)
    }

    /// Parses and validates text; `path` only names the file in errors. Paths stay as written.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let line = line_of(text, offset);
            let message = e.message().trim().to_string();
            // an unknown key is named in full (`agent.no_such_key`) by the line it is on; a
            // missing one has no line of its own
            let key = if message.contains("missing field") {
                String::new()
            } else {
                key_on_line(text, line)
                    .map(|k| format!("key `{k}`: "))
                    .unwrap_or_default()
            };
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                key,
                message,
            }
        })?;
        for (name, wf) in workflow::builtin() {
            match cfg.workflows.get_mut(&name) {
                // a built-in workflow written with only some keys (its `bin`): the rest is built in
                Some(mine) if mine.steps.is_empty() => {
                    mine.steps = wf.steps;
                    if mine.returns.is_empty() {
                        mine.returns = wf.returns;
                    }
                }
                Some(_) => {}
                None => {
                    cfg.workflows.insert(name, wf);
                }
            }
        }
        crate::workflow::validate(&mut cfg, text, path)?;
        for w in cfg.watch.iter_mut() {
            // unset: a workflow with work to run before the seal streams
            let fans = cfg.workflows.get(&w.workflow).is_some_and(|wf| {
                wf.steps
                    .iter()
                    .any(|s| s.each != crate::workflow::Each::Stack)
            });
            w.stream.get_or_insert(fans);
        }
        crate::notify::validate(&mut cfg, text, path)?;
        crate::watch::validate(&cfg, text, path)?;
        crate::queue::validate(&cfg, text, path)?;
        crate::agent::validate(&cfg, text, path)?;
        crate::link::validate(&cfg, text, path)?;
        crate::service::validate(&cfg, text, path)?;
        if cfg.queues.is_empty() {
            cfg.queues.insert("default".into(), QueueSection::default());
        }
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let fix = |p: &mut PathBuf| {
            if let (Ok(rest), Some(h)) = (p.strip_prefix("~"), home.as_ref()) {
                *p = h.join(rest);
            }
            if p.is_relative() {
                *p = base.join(&*p);
            }
            // drop `.` components so logs and status show the path people expect
            *p = p
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
        };
        fix(&mut self.agent.state_dir);
        if let Some(p) = self.agent.metrics_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.agent.results_dir.as_mut() {
            fix(p);
        }
        for w in &mut self.watch {
            fix(&mut w.path);
        }
        fix(&mut self.collector.data_root);
        fix(&mut self.collector.state_dir);
        fix(&mut self.service.work_root);
        if !self.link.control_path.as_os_str().is_empty() {
            fix(&mut self.link.control_path);
        }
        if let Some(p) = self.link.ssh_config.as_mut() {
            fix(p);
        }
        for wf in self.workflows.values_mut() {
            if let Some(bin) = wf.bin.as_mut() {
                fix(bin);
            }
        }
    }

    /// The effective config as TOML, for `config check`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// The effective settings of the top-level sections `keys` only (what one program
    /// uses), as TOML.
    pub fn to_toml_of(&self, keys: &[&str]) -> String {
        let Ok(toml::Value::Table(mut all)) = toml::Value::try_from(self) else {
            return self.to_toml();
        };
        all.retain(|k, _| keys.contains(&k));
        toml::to_string_pretty(&all).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// One line that says the file is good and what in it `program` uses, for `config check`.
    pub fn verdict(&self, path: &Path, program: &str, keys: &[&str]) -> String {
        let mut used = Vec::new();
        for k in keys {
            match *k {
                "watch" => used.push(format!("{} [[watch]]", self.watch.len())),
                "notify" => used.push(format!("{} [[notify]]", self.notify.len())),
                "workflows" => used.push(format!("{} workflow(s)", self.workflows.len())),
                "queues" => used.push(format!("{} queue(s)", self.queues.len())),
                k => used.push(format!("[{k}]")),
            }
        }
        format!(
            "{}: ok for {program} ({}; `--print` shows the effective settings)",
            path.display(),
            used.join(", ")
        )
    }
}
