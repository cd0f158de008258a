//! Turning a workflow and a received stack into planned jobs.
//!
//! A job's command is an argument vector, split once when the config loaded. Only `{bin}`,
//! which the config owns, is filled in here; every placeholder whose value comes from the
//! beamline (`{stack}`, `{images}`, `{first}` …) and `{grid_size}`, which needs the images
//! read, are filled in one pass when the work folder is prepared ([`fill`]), each inside the
//! one argument it sits in. No shell ever sees the result.

use beamflow_config::{argv, Workflow};
use std::collections::BTreeMap;

/// One job to create, parents first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    /// Step name.
    pub name: String,
    /// Argument vector with `{bin}` filled in; the rest waits for preparation.
    pub argv: Vec<String>,
    /// Names of parent steps.
    pub parents: Vec<String>,
    /// Nodes.
    pub nodes: u32,
    /// Ranks per node.
    pub ranks_per_node: u32,
    /// Threads per rank.
    pub threads_per_rank: u32,
    /// CPU binding.
    pub cpu_affinity: String,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Summary file to check after a zero exit.
    pub check_summary: Option<String>,
}

/// What the per-stack placeholders are filled with, once the work folder is prepared.
#[derive(Debug, Clone)]
pub struct StackFacts<'a> {
    /// Stack path relative to the data root.
    pub stack: &'a str,
    /// Absolute folder holding the received images.
    pub images_dir: &'a str,
    /// The names AlignTK sees for the sections (their stems in `images.lst`), in order.
    pub aligntk_names: &'a [String],
    /// This program, for built-in steps (`{collector} qa …`).
    pub collector: &'a str,
    /// `WIDTHxHEIGHT` of the first section.
    pub grid_size: &'a str,
}

/// Plans the jobs of `wf` for one stack.
pub fn plan(wf: &Workflow) -> Vec<PlannedJob> {
    let bin = wf.bin.as_ref().map(|b| b.display().to_string());
    wf.topo_order()
        .into_iter()
        .map(|s| {
            let argv = s
                .argv
                .iter()
                .map(|a| match &bin {
                    Some(b) => argv::fill(a, &|n| (n == "bin").then(|| b.clone())),
                    // no folder configured: the executables are found on PATH
                    None => a.strip_prefix("{bin}/").unwrap_or(a).to_string(),
                })
                .collect();
            PlannedJob {
                name: s.name.clone(),
                argv,
                parents: s.after.clone(),
                nodes: s.nodes,
                ranks_per_node: s.ranks_per_node,
                threads_per_rank: s.threads_per_rank,
                cpu_affinity: s.cpu_affinity.clone(),
                env: s.env.clone(),
                check_summary: s.check_summary.clone(),
            }
        })
        .collect()
}

/// Fills a planned job's per-stack placeholders: one pass, each value inside the argument it
/// replaces (the config made sure no name-derived value sits where an interpreter parses it).
/// Also gives the name-derived values as environment variables (`BEAMFLOW_STACK` …), the way
/// a step that runs a shell script reads them as data.
pub fn fill(
    template: &[String],
    facts: &StackFacts<'_>,
) -> (Vec<String>, BTreeMap<String, String>) {
    let names = facts.aligntk_names;
    let lookup = |n: &str| -> Option<String> {
        Some(match n {
            "stack" => facts.stack.to_string(),
            "images" => facts.images_dir.to_string(),
            "first" => names.first()?.clone(),
            "last" => names.last()?.clone(),
            "count" => names.len().to_string(),
            "collector" => facts.collector.to_string(),
            "grid_size" => facts.grid_size.to_string(),
            _ => return None,
        })
    };
    let env = beamflow_config::NAME_ENV
        .iter()
        .filter_map(|(p, var)| Some((var.to_string(), lookup(p)?)))
        .collect();
    (argv::fill_all(template, &lookup), env)
}

/// The database keeps an argument vector as a JSON array.
pub fn encode(argv: &[String]) -> String {
    serde_json::to_string(argv).unwrap_or_else(|_| "[]".into())
}

/// Reads what [`encode`] wrote. A row written before commands became vectors holds a plain
/// line: it is split as the config would split it.
pub fn decode(text: &str) -> Vec<String> {
    serde_json::from_str(text)
        .ok()
        .or_else(|| argv::split(text).ok())
        .unwrap_or_else(|| text.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_config::Config;
    use std::path::Path;

    #[test]
    fn aligntk_plan_keeps_chain_and_fills_each_value_inside_one_argument() {
        let cfg = Config::parse("", Path::new("x")).unwrap();
        let wf = &cfg.workflows["aligntk"];
        let jobs = plan(wf);
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs[2].parents, ["find_rst"]);
        assert_eq!(jobs[3].parents, ["register"]);
        assert_eq!(jobs[1].argv[0], "find_rst");
        assert_eq!(jobs[2].check_summary.as_deref(), Some("maps/summary.out"));
        let names = vec!["$(id>PWNED)".to_string(), "b".to_string()];
        let facts = StackFacts {
            stack: "s; rm -rf /",
            images_dir: "/d/s; rm -rf /",
            aligntk_names: &names,
            collector: "/bin/bc",
            grid_size: "64x64",
        };
        let (qa, env) = fill(&jobs[0].argv, &facts);
        assert_eq!(qa[0], "/bin/bc");
        assert_eq!(env["BEAMFLOW_STACK"], "s; rm -rf /");
        assert_eq!(env["BEAMFLOW_FIRST"], "$(id>PWNED)");
        assert_eq!(env["BEAMFLOW_LAST"], "b");
        assert_eq!(env["BEAMFLOW_COUNT"], "2");
        assert_eq!(env["BEAMFLOW_IMAGES"], "/d/s; rm -rf /");
        let (align, _) = fill(&jobs[3].argv, &facts);
        let at = |flag: &str| &align[align.iter().position(|a| a == flag).unwrap() + 1];
        assert_eq!(at("-fixed"), "$(id>PWNED)");
        assert_eq!(at("-grid_size"), "64x64");
        assert_eq!(at("-maps"), "maps/");
        assert_eq!(decode(&encode(&align)), align);
        assert_eq!(decode("a 'b c'"), ["a", "b c"]);
    }

    #[test]
    fn bin_is_filled_from_the_config() {
        let cfg = Config::parse(
            "[workflows.aligntk]\nbin = \"/opt/align tk/bin\"\n",
            Path::new("x"),
        )
        .unwrap();
        let jobs = plan(&cfg.workflows["aligntk"]);
        assert_eq!(jobs[1].argv[0], "/opt/align tk/bin/find_rst");
    }
}
