//! Workflows: named lists of steps that the collector turns into a job DAG for each stack.
//!
//! The built-in `aligntk` workflow reproduces the original beamline app definitions
//! (find_rst → register → align) with the fixes the field notes call for: align's map and
//! output folders are relative, and `-fixed` is the first image rather than a hard-coded name.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

/// `[workflows.NAME]`: the steps of one workflow.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Folder holding the workflow's executables, substituted for `{bin}` in commands.
    #[serde(default)]
    pub bin: Option<PathBuf>,
    /// The steps; `after` names their parents. A workflow named like a built-in one may leave
    /// them out to change only `bin` or `schedule`.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Contents of `schedule.lst` written into each work folder for align: one line per step,
    /// `level kIntra kInter [kAbsolute [min_iter [threshold [damping [clampX clampY]]]]]`.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// How 16-bit and float sections become the 8-bit ones AlignTK reads, one window for the
    /// whole stack: `"percentile:0.1-99.9"` (default), `"minmax"`, `"fixed:LO-HI"`, or `"off"`
    /// for tools that read any depth.
    #[serde(default = "default_to_8bit")]
    pub to_8bit: String,
    /// `to_8bit`, parsed (set when the config loads).
    #[serde(skip)]
    pub window: To8Bit,
    /// Results the beamline fetches home once the DAG is done: globs relative to the stack
    /// version's work folder (`["aligned/*.tif", "qa.json"]`); empty: none.
    #[serde(default, rename = "return")]
    pub returns: Vec<String>,
    /// Pairs or sections per job of every fanned-out step, over each step's own `chunk` (for
    /// a built-in workflow, whose steps a config does not write): `1` makes a streamed stack's
    /// work after its last section one pair, at the cost of a job per pair.
    #[serde(default)]
    pub chunk: Option<u32>,
}

/// The window that maps a stack's deeper sections to 0..255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum To8Bit {
    /// From the low to the high percentile of all the stack's pixels.
    Percentile(f64, f64),
    /// From the stack's smallest to its largest value.
    MinMax,
    /// A fixed range of sample values.
    Fixed(f64, f64),
    /// No conversion: every section is linked as received (for tools that read any depth).
    Off,
}

impl Default for To8Bit {
    fn default() -> Self {
        To8Bit::Percentile(0.1, 99.9)
    }
}

fn default_to_8bit() -> String {
    "percentile:0.1-99.9".into()
}

/// Splits `LO-HI` where `-` may also start a negative `LO`.
fn range(s: &str) -> Option<(f64, f64)> {
    let b = s.as_bytes();
    (1..b.len())
        .filter(|&i| b[i] == b'-' && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.'))
        .find_map(|i| Some((s[..i].trim().parse().ok()?, s[i + 1..].trim().parse().ok()?)))
}

/// A written 8-bit window that is none of the four forms.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a window; write \"percentile:0.1-99.9\", \"minmax\", \"fixed:LO-HI\" (LO below HI) or \"off\"")]
pub struct WindowError(pub String);

impl std::str::FromStr for To8Bit {
    type Err = WindowError;
    fn from_str(s: &str) -> Result<Self, WindowError> {
        let bad = || WindowError(s.to_string());
        let w = match s.trim() {
            "minmax" => To8Bit::MinMax,
            "off" => To8Bit::Off,
            t => match t.split_once(':') {
                Some(("percentile", r)) => {
                    let (lo, hi) = range(r).ok_or_else(bad)?;
                    if !(0.0..=100.0).contains(&lo) || !(0.0..=100.0).contains(&hi) {
                        return Err(bad());
                    }
                    To8Bit::Percentile(lo, hi)
                }
                Some(("fixed", r)) => {
                    let (lo, hi) = range(r).ok_or_else(bad)?;
                    To8Bit::Fixed(lo, hi)
                }
                _ => return Err(bad()),
            },
        };
        match w {
            To8Bit::Percentile(lo, hi) | To8Bit::Fixed(lo, hi) if lo >= hi => Err(bad()),
            w => Ok(w),
        }
    }
}

/// align's schedule: levels 10 down to 6, the last matching register's `-output_level 6`.
pub fn default_schedule() -> String {
    "10 0.1 1.0 0.01\n9 0.1 1.0 0.01\n8 0.1 1.0 0.01\n7 0.1 1.0 0.01\n6 0.1 1.0 0.01\n6 0.05 1.0 0.01\n6 0.01 1.0 0.01\n".into()
}

/// `[[workflows.NAME.steps]]`: one job of the DAG and the resources it needs.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the workflow; the job's name.
    pub name: String,
    /// Command line template; `{bin}`, `{first}`, `{images}` … are filled in per stack, and
    /// `{pairs_file}`, `{images_file}`, `{part}` per job (see `each`). It is
    /// split into words once, when the config loads, and runs without a shell; a placeholder
    /// that comes from a name (`{stack}`, `{images}`, `{first}`, `{last}`) must be a whole word
    /// or have a plain prefix or suffix, never the program and never after `-c`; a step that
    /// wants a shell reads `$BEAMFLOW_STACK` and the rest from its environment.
    pub command: String,
    /// `command` split into words (set when the config loads).
    #[serde(skip)]
    pub argv: Vec<String>,
    /// Steps that must finish first.
    #[serde(default)]
    pub after: Vec<String>,
    /// Nodes the job needs.
    #[serde(default = "one")]
    pub nodes: u32,
    /// MPI ranks on each node.
    #[serde(default = "one")]
    pub ranks_per_node: u32,
    /// Threads per rank (OMP_NUM_THREADS).
    #[serde(default = "one")]
    pub threads_per_rank: u32,
    /// CPU binding passed to the site's launcher (`none`, `depth`, `core` …).
    #[serde(default = "default_affinity")]
    pub cpu_affinity: String,
    /// Extra environment for the job.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A summary file (relative to the work folder) to check after a zero exit: AlignTK exits
    /// 0 on a blank section, and only a `nan` quality or a `-1000000` correlation there shows it.
    #[serde(default)]
    pub check_summary: Option<String>,
    /// Files (relative to the work folder) the step must leave after a zero exit; `{pair}`
    /// expands to every pair of `pairs.lst`, `{image}` to every section's AlignTK name (a
    /// fanned-out job answers for its own pairs and sections only).
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Globs (relative to the work folder) that must match nothing after a zero exit: what
    /// a tool leaves only when it failed quietly (align's `grids/fold*.pnm`).
    #[serde(default)]
    pub absent: Vec<String>,
    /// How many jobs the step is: one for the stack, or one per chunk of consecutive pairs
    /// or of sections, so that a stack's work spreads over idle nodes. A fanned-out job reads
    /// its own list (`{pairs_file}`, `{images_file}`) and writes its own summary (`{part}`
    /// in a file name: `_0008-0015`, empty for a whole-stack job).
    #[serde(default)]
    pub each: Each,
    /// Pairs or sections per job of a fanned-out step (the built-in AlignTK workflows' find_rst
    /// and register: 1). A step spreads over jobs from 8 pairs or sections on, or from
    /// `chunk` where that is larger; a smaller stack is one job.
    #[serde(default = "default_chunk")]
    pub chunk: u32,
}

/// What one job of a step covers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Each {
    /// One job for the whole stack.
    #[default]
    Stack,
    /// One job per chunk of consecutive pairs of sections (`pairs.lst` lines).
    Pair,
    /// One job per chunk of sections (`images.lst` lines).
    Section,
}

fn default_chunk() -> u32 {
    8
}

/// A fanned-out step spreads over jobs only from this many pairs (or sections) on, or from
/// its `chunk` where that is larger: fewer are one job, as cheap to run as to spread. A
/// streamed stack's partial versions start there too, so that the version that seals it
/// fans out as they did and finds their jobs by name.
pub const SPREAD_FROM: usize = 8;

impl Step {
    /// How many pairs or sections this step needs before it runs as more than one job.
    pub fn spreads_from(&self) -> usize {
        (self.chunk.max(1) as usize).max(SPREAD_FROM)
    }
}

/// The placeholders a step's command may use: `{bin}` from the config, the rest filled in
/// per stack version when its work folder is prepared.
pub const STEP_PLACEHOLDERS: &[&str] = &[
    "bin",
    "stack",
    "images",
    "first",
    "last",
    "count",
    "collector",
    "grid_size",
    "pairs_file",
    "images_file",
    "part",
];

/// The placeholders whose values are derived from beamline names: they may never reach an
/// interpreter (see [`crate::argv::check_names`]), and each job gets them in its environment
/// too, under the names of [`NAME_ENV`].
pub const NAME_PLACEHOLDERS: &[&str] = &["stack", "images", "first", "last"];

/// The environment variables every job gets, so that a script reads names as data:
/// (placeholder, variable). `BEAMFLOW_COUNT` is not a name, but a script that loops over the
/// sections wants it beside them.
pub const NAME_ENV: &[(&str, &str)] = &[
    ("stack", "BEAMFLOW_STACK"),
    ("images", "BEAMFLOW_IMAGES"),
    ("first", "BEAMFLOW_FIRST"),
    ("last", "BEAMFLOW_LAST"),
    ("count", "BEAMFLOW_COUNT"),
];

const NAME_ENV_HINT: &str =
    "\"$BEAMFLOW_STACK\", \"$BEAMFLOW_IMAGES\", \"$BEAMFLOW_FIRST\", \"$BEAMFLOW_LAST\"";

fn one() -> u32 {
    1
}
fn default_affinity() -> String {
    "none".into()
}

impl Workflow {
    /// Checks names, parents, cycles and commands, and splits each command into its words;
    /// on error returns (key, message).
    pub(crate) fn validate(&mut self, wf: &str) -> Result<(), (String, String)> {
        for (i, g) in self.returns.iter().enumerate() {
            let inside = !g.starts_with('/') && !g.split('/').any(|c| c == "..");
            if !inside || glob::Pattern::new(g).is_err() {
                return Err((
                    format!("return[{i}]"),
                    format!(
                        "\"{g}\" must be a glob inside the work folder, like \"aligned/*.tif\""
                    ),
                ));
            }
        }
        self.window = self
            .to_8bit
            .parse()
            .map_err(|e: WindowError| ("to_8bit".to_string(), e.to_string()))?;
        if self.steps.is_empty() {
            return Err((
                "steps".into(),
                format!("workflow `{wf}` has no steps; add at least one [[workflows.{wf}.steps]]"),
            ));
        }
        for (i, s) in self.steps.iter_mut().enumerate() {
            s.argv = crate::argv::split(&s.command).map_err(|e| {
                (
                    format!("steps[{i}].command"),
                    format!("step `{}`: {e}", s.name),
                )
            })?;
            for p in s.argv.iter().flat_map(|a| crate::argv::placeholders(a)) {
                if !STEP_PLACEHOLDERS.contains(&p) {
                    return Err((
                        format!("steps[{i}].command"),
                        format!(
                            "step `{}`: unknown placeholder {{{p}}}; known are {}",
                            s.name,
                            STEP_PLACEHOLDERS
                                .iter()
                                .map(|p| format!("{{{p}}}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                    ));
                }
            }
            crate::argv::check_names(&s.argv, NAME_PLACEHOLDERS, NAME_ENV_HINT).map_err(|e| {
                (
                    format!("steps[{i}].command"),
                    format!("step `{}`: {e}", s.name),
                )
            })?;
        }
        let seen = self.check_steps()?;
        for (i, s) in self.steps.iter().enumerate() {
            for a in &s.after {
                if !seen.contains(a.as_str()) {
                    return Err((
                        format!("steps[{i}].after"),
                        format!(
                            "step `{}` runs after `{a}`, which is not a step of this workflow",
                            s.name
                        ),
                    ));
                }
            }
        }
        if let Some(step) = self.cycle() {
            return Err((
                "steps".into(),
                format!("steps form a cycle through `{step}`; a workflow must be a DAG"),
            ));
        }
        Ok(())
    }

    /// Each step's name (unique, and plain: a fanned-out job is `STEP[FIRST-LAST]`) and its
    /// counts (at least 1); the names, for the parents' check.
    fn check_steps(&self) -> Result<HashSet<&str>, (String, String)> {
        let mut seen = HashSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            if !seen.insert(s.name.as_str()) {
                return Err((
                    format!("steps[{i}].name"),
                    format!(
                        "step name `{}` is used twice; step names must be unique",
                        s.name
                    ),
                ));
            }
            if !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                || s.name.is_empty()
            {
                return Err((
                    format!("steps[{i}].name"),
                    format!(
                        "step name `{}`: use A-Z a-z 0-9 _ - . (a fanned-out job is named `STEP[FIRST-LAST]`)",
                        s.name
                    ),
                ));
            }
            for (field, v) in [
                ("nodes", s.nodes),
                ("ranks_per_node", s.ranks_per_node),
                ("threads_per_rank", s.threads_per_rank),
                ("chunk", s.chunk),
            ] {
                if v == 0 {
                    return Err((
                        format!("steps[{i}].{field}"),
                        format!("step `{}`: {field} must be at least 1", s.name),
                    ));
                }
            }
        }
        Ok(seen)
    }

    /// Steps in an order where parents come first (the order jobs are created in).
    pub fn topo_order(&self) -> Vec<&Step> {
        let mut done: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        while out.len() < self.steps.len() {
            let before = out.len();
            for s in &self.steps {
                if !done.contains(s.name.as_str())
                    && s.after.iter().all(|a| done.contains(a.as_str()))
                {
                    done.insert(&s.name);
                    out.push(s);
                }
            }
            if out.len() == before {
                break; // a cycle; validate() refuses these before anyone gets here
            }
        }
        out
    }

    fn cycle(&self) -> Option<String> {
        let ordered: HashSet<&str> = self.topo_order().iter().map(|s| s.name.as_str()).collect();
        self.steps
            .iter()
            .find(|s| !ordered.contains(s.name.as_str()))
            .map(|s| s.name.clone())
    }
}

fn step(name: &str, after: &[&str], command: &str) -> Step {
    Step {
        name: name.into(),
        command: command.into(),
        argv: Vec::new(),
        after: after.iter().map(|s| s.to_string()).collect(),
        nodes: 1,
        ranks_per_node: 1,
        threads_per_rank: 1,
        cpu_affinity: default_affinity(),
        env: BTreeMap::new(),
        check_summary: None,
        outputs: Vec::new(),
        absent: Vec::new(),
        each: Each::Stack,
        chunk: default_chunk(),
    }
}

/// A pairwise AlignTK step (most of AlignTK's time) as a job per pair, so that a stack's
/// work spreads over idle nodes and a streamed stack's seal is left with its last pair
/// only (in chunks of 8 the seal ran up to 8 pairs one after the other: 0.52× the
/// whole-stack time against 0.09×, docs/benchmarks.md): its summary and maps in `dir`.
/// `[workflows.NAME] chunk` makes the jobs bigger where a job costs more to start than a
/// pair to align. apply_map stays one
/// job: it sizes its canvas from the maps it is given, so chunks would each get a canvas of
/// their own (its `-region` could share one, once something computes the stack's extent).
fn pairwise(mut s: Step, dir: &str) -> Step {
    s.each = Each::Pair;
    s.chunk = 1;
    s.check_summary = Some(format!("{dir}/summary{{part}}.out"));
    s.outputs = vec![format!("{dir}/{{pair}}.map")];
    s
}

/// Workflows every config has unless it defines one of the same name.
pub(crate) fn builtin() -> Vec<(String, Workflow)> {
    let qa = step(
        "qa",
        &[],
        "{collector} qa images --names names.tsv --out qa.json",
    );
    let find_rst = pairwise(
        step(
            "find_rst",
            &["qa"],
            "{bin}/find_rst -pairs {pairs_file} -tif -images images/ -output cmaps/ -max_res 1024 -scale 1.0 -tx -50-50 -ty -50-50 -summary cmaps/summary{part}.out",
        ),
        "cmaps",
    );
    let register = pairwise(
        step(
            "register",
            &["find_rst"],
            "{bin}/register -pairs {pairs_file} -images images/ -output maps/ -initial_map cmaps/ -distortion 13.0 -output_level 6 -depth 6 -quality 0.5 -summary maps/summary{part}.out -min_overlap 10.0",
        ),
        "maps",
    );
    let mut align = step(
        "align",
        &["register"],
        "{bin}/align -images images/ -image_list images.lst -maps maps/ -map_list pairs.lst -output amaps/ -schedule schedule.lst -incremental -output_grid grids/ -grid_size {grid_size} -fixed {first}",
    );
    align.outputs = vec!["amaps/{image}.map".into()];
    align.absent = vec!["grids/fold*.pnm".into()];
    let mut apply_map = step(
        "apply_map",
        &["align"],
        "{bin}/apply_map -image_list images.lst -images images/ -maps amaps/ -output aligned/ -memory 1000",
    );
    apply_map.outputs = vec!["aligned/{image}.tif".into()];
    let mut preview = step(
        "preview",
        &["apply_map"],
        "{collector} preview --out preview.png",
    );
    preview.outputs = vec!["preview.png".into()];
    let wf = |steps: Vec<Step>| Workflow {
        bin: None,
        steps,
        schedule: default_schedule(),
        to_8bit: default_to_8bit(),
        window: To8Bit::default(),
        returns: Vec::new(),
        chunk: None,
    };
    vec![
        ("qa".into(), wf(vec![qa.clone()])),
        (
            "aligntk".into(),
            wf(vec![
                qa.clone(),
                find_rst.clone(),
                register.clone(),
                align.clone(),
            ]),
        ),
        (
            "aligntk-apply".into(),
            Workflow {
                // the picture comes home with the results
                returns: vec!["preview.png".into()],
                ..wf(vec![qa, find_rst, register, align, apply_map, preview])
            },
        ),
    ]
}

/// Checks the workflows (built-in ones included): steps, commands, windows; an error names the key in full and its line.
pub(crate) fn validate(
    cfg: &mut crate::Config,
    text: &str,
    path: &std::path::Path,
) -> Result<(), crate::ConfigError> {
    for (name, wf) in cfg.workflows.iter_mut() {
        if let Some(c) = wf.chunk {
            if c == 0 {
                return Err(crate::ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line: crate::locate::find_key_line(text, &format!("workflows.{name}.chunk"))
                        .unwrap_or(1),
                    key: format!("key `workflows.{name}.chunk`: "),
                    message: "must be at least 1 (pairs or sections per job)".into(),
                });
            }
            for s in wf.steps.iter_mut().filter(|s| s.each != Each::Stack) {
                s.chunk = c;
            }
        }
        wf.validate(name)
            .map_err(|(key, message)| crate::ConfigError::Invalid {
                path: path.to_path_buf(),
                line: crate::locate::find_key_line(text, &key).unwrap_or(1),
                key: format!("key `workflows.{name}.{key}`: "),
                message,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_aligntk_is_a_chain() {
        for (name, mut wf) in builtin() {
            wf.validate(&name).unwrap();
        }
        let (_, wf) = builtin().into_iter().find(|(n, _)| n == "aligntk").unwrap();
        let names: Vec<_> = wf.topo_order().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, ["qa", "find_rst", "register", "align"]);
        assert!(
            wf.steps[3].command.contains("-maps maps/ ")
                && wf.steps[3].command.contains("-fixed {first}")
        );
    }

    #[test]
    fn windows_parse_and_bad_ones_are_refused() {
        assert_eq!("minmax".parse::<To8Bit>().unwrap(), To8Bit::MinMax);
        assert_eq!("off".parse::<To8Bit>().unwrap(), To8Bit::Off);
        assert_eq!(
            "percentile:0.1-99.9".parse::<To8Bit>().unwrap(),
            To8Bit::Percentile(0.1, 99.9)
        );
        assert_eq!(
            "fixed:-1.5-3".parse::<To8Bit>().unwrap(),
            To8Bit::Fixed(-1.5, 3.0)
        );
        for bad in ["fixed:5-1", "percentile:0-101", "median", "fixed:a-b"] {
            assert!(bad.parse::<To8Bit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_workflow_s_chunk_sets_every_fanned_out_step_s_and_zero_names_its_key() {
        let p = std::path::Path::new("c.toml");
        let defaults = crate::Config::parse("", p).unwrap();
        let pairwise: Vec<u32> = defaults.workflows["aligntk"].steps[1..3]
            .iter()
            .map(|s| s.chunk)
            .collect();
        assert_eq!(
            pairwise,
            [1, 1],
            "the built-in pairwise steps: a job per pair"
        );
        let cfg = crate::Config::parse("[workflows.aligntk]\nchunk = 4\n", p).unwrap();
        let chunks: Vec<(&str, u32)> = cfg.workflows["aligntk"]
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.chunk))
            .collect();
        assert_eq!(
            chunks,
            [("qa", 8), ("find_rst", 4), ("register", 4), ("align", 8)]
        );
        assert_eq!(cfg.workflows["aligntk-apply"].steps[1].chunk, 1);
        let e = crate::Config::parse("\n[workflows.aligntk]\nchunk = 0\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml:3") && e.contains("workflows.aligntk.chunk"),
            "{e}"
        );
    }

    #[test]
    fn cycles_and_unknown_parents_are_refused() {
        let mut wf = Workflow {
            bin: None,
            steps: vec![step("a", &["b"], "x"), step("b", &["a"], "y")],
            schedule: String::new(),
            to_8bit: default_to_8bit(),
            window: To8Bit::default(),
            returns: Vec::new(),
            chunk: None,
        };
        assert!(wf.validate("w").unwrap_err().1.contains("cycle"));
        wf.steps[0].after = vec!["zzz".into()];
        assert!(wf.validate("w").unwrap_err().1.contains("zzz"));
    }
}
