//! Turning a workflow and a received stack into planned jobs.
//!
//! Placeholders that depend only on the stack (`{bin}`, `{stack}`, `{images}`, `{first}`,
//! `{last}`, `{count}`) are filled in here; ones that need the images read (`{grid_size}`)
//! stay for the preprocessing step that prepares the work folder.

use beamflow_config::Workflow;
use std::collections::BTreeMap;

/// One job to create, parents first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    /// Step name.
    pub name: String,
    /// Command line with stack placeholders filled in.
    pub command: String,
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

/// What the placeholders are filled with.
#[derive(Debug, Clone)]
pub struct StackFacts<'a> {
    /// Stack path relative to the data root.
    pub stack: &'a str,
    /// Absolute folder holding the images.
    pub images_dir: &'a str,
    /// Image file names, sorted.
    pub images: &'a [String],
    /// This program, for built-in steps (`{collector} qa …`).
    pub collector: &'a str,
}

fn stem(name: &str) -> &str {
    name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name)
}

/// Plans the jobs of `wf` for one stack.
pub fn plan(wf: &Workflow, facts: &StackFacts<'_>) -> Vec<PlannedJob> {
    let bin = wf.bin.as_ref().map(|b| b.display().to_string());
    let first = facts.images.first().map(|s| stem(s)).unwrap_or("");
    let last = facts.images.last().map(|s| stem(s)).unwrap_or("");
    wf.topo_order()
        .into_iter()
        .map(|s| {
            let mut cmd = match &bin {
                Some(b) => s.command.replace("{bin}", b),
                // no folder configured: the executables are found on PATH
                None => s.command.replace("{bin}/", "").replace("{bin}", ""),
            };
            for (k, v) in [
                ("{stack}", facts.stack),
                ("{images}", facts.images_dir),
                ("{first}", first),
                ("{last}", last),
                ("{count}", &facts.images.len().to_string()),
                ("{collector}", facts.collector),
            ] {
                cmd = cmd.replace(k, v);
            }
            PlannedJob {
                name: s.name.clone(),
                command: cmd,
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

#[cfg(test)]
mod tests {
    use super::*;
    use beamflow_config::Config;
    use std::path::Path;

    #[test]
    fn aligntk_plan_fills_first_image_and_keeps_chain() {
        let cfg = Config::parse("", Path::new("x")).unwrap();
        let wf = &cfg.workflows["aligntk"];
        let images = vec!["S_0007.tif".to_string(), "S_0008.tif".to_string()];
        let facts = StackFacts {
            stack: "s",
            images_dir: "/d/s",
            images: &images,
            collector: "/bin/bc",
        };
        let jobs = plan(wf, &facts);
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs[0].command, "/bin/bc qa images --out qa.json");
        assert_eq!(jobs[2].parents, ["find_rst"]);
        assert_eq!(jobs[3].parents, ["register"]);
        assert!(
            jobs[3].command.contains("-fixed S_0007"),
            "{}",
            jobs[3].command
        );
        assert!(
            jobs[1].command.starts_with("find_rst "),
            "{}",
            jobs[1].command
        );
        assert!(jobs[3].command.contains("-maps maps/ "));
        assert_eq!(jobs[2].check_summary.as_deref(), Some("maps/summary.out"));
    }
}
