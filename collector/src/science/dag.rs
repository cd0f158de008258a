//! Turning a workflow and a received stack into planned jobs.
//!
//! A job's command is an argument vector, split once when the config loaded. Only `{bin}`,
//! which the config owns, is filled in here; every placeholder whose value comes from the
//! beamline (`{stack}`, `{images}`, `{first}` …) and `{grid_size}`, which needs the images
//! read, are filled in one pass when the work folder is prepared ([`fill`]), each inside the
//! one argument it sits in. No shell ever sees the result.

use beamflow_config::{argv, Each, Step, Workflow};
use std::collections::{BTreeMap, HashMap};

/// What a fanned-out job covers: consecutive pairs (`pairs.lst` lines) or sections
/// (`images.lst` lines), zero-based and inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Pairs or sections.
    pub each: Each,
    /// The first one.
    pub first: usize,
    /// The last one.
    pub last: usize,
}

impl Part {
    /// What `{part}` becomes in a file name: `_0008-0015`.
    pub fn suffix(&self) -> String {
        format!("_{:04}-{:04}", self.first, self.last)
    }

    /// The list the job reads: `pairs_0008-0015.lst` or `images_0008-0015.lst`.
    pub fn list_file(&self) -> String {
        match self.each {
            Each::Section => format!("images{}.lst", self.suffix()),
            _ => format!("pairs{}.lst", self.suffix()),
        }
    }

    /// The sections whose bytes the job reads (a pair reads two).
    pub fn sections(&self) -> std::ops::RangeInclusive<usize> {
        match self.each {
            Each::Pair => self.first..=self.last + 1,
            _ => self.first..=self.last,
        }
    }

    /// The pairs the job covers (a chunk of sections covers the pairs inside it).
    pub fn pairs(&self) -> std::ops::Range<usize> {
        match self.each {
            Each::Section => self.first..self.last,
            _ => self.first..self.last + 1,
        }
    }
}

/// How many pairs or sections a fanned-out step covers in a stack of `sections` (none for a
/// whole-stack step).
fn units(each: Each, sections: usize) -> Option<usize> {
    match each {
        Each::Stack => None,
        Each::Pair => Some(sections.saturating_sub(1)),
        Each::Section => Some(sections),
    }
}

/// The chunks of `n` units, `chunk` at a time; the last one shorter unless `whole_only`.
fn chunks(each: Each, chunk: u32, n: usize, whole_only: bool) -> Vec<Option<Part>> {
    let chunk = chunk.max(1) as usize;
    (0..n)
        .step_by(chunk)
        .filter(|first| !whole_only || first + chunk <= n)
        .map(|first| {
            Some(Part {
                each,
                first,
                last: (first + chunk).min(n) - 1,
            })
        })
        .collect()
}

/// The jobs of a step for a stack of `sections`: one for the whole stack, or one per chunk
/// once the stack has enough pairs or sections to spread ([`Step::spreads_from`]).
pub fn parts(s: &Step, sections: usize) -> Vec<Option<Part>> {
    match units(s.each, sections) {
        Some(n) if n >= s.spreads_from() => chunks(s.each, s.chunk, n, false),
        _ => vec![None],
    }
}

/// A job's name: its step's, with the range of a fanned-out one (`find_rst[8-15]`, or
/// `find_rst[8]` for one pair).
pub fn job_name(step: &str, part: Option<Part>) -> String {
    match part {
        Some(p) if p.first == p.last => format!("{step}[{}]", p.first),
        Some(p) => format!("{step}[{}-{}]", p.first, p.last),
        None => step.to_string(),
    }
}

/// The step a job's name belongs to, and the range of a fanned-out one.
pub fn step_of(name: &str) -> (&str, Option<(usize, usize)>) {
    let Some((step, rest)) = name.split_once('[') else {
        return (name, None);
    };
    let range = rest.strip_suffix(']').and_then(|r| {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        Some((a.parse().ok()?, b.parse().ok()?))
    });
    (step, range)
}

/// Whether a job covering `child` needs the output of one covering `parent`: a whole-stack
/// job on either side needs all; otherwise the data must overlap (register of pairs 8–15
/// needs find_rst of pairs 8–15, not of 0–7).
fn needs(child: Option<Part>, parent: Option<Part>) -> bool {
    match (child, parent) {
        (Some(c), Some(p)) if c.each == p.each => c.first <= p.last && p.first <= c.last,
        (Some(c), Some(p)) => {
            let (a, b) = (c.sections(), p.sections());
            a.start() <= b.end() && b.start() <= a.end()
        }
        _ => true,
    }
}

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

/// Plans the jobs of `wf` for a stack of `sections`: a fanned-out step becomes a job per
/// chunk, and each job's parents are the jobs whose output it reads.
pub fn plan(wf: &Workflow, sections: usize) -> Vec<PlannedJob> {
    plan_with(wf, |s| parts(s, sections))
}

/// The whole chunks of a fanned-out step among `sections` received so far: always named by
/// their range, as the sealed stack's plan names them, so that its jobs find these by name.
/// None before the stack has enough to spread: the sealed stack might not fan out then.
pub(crate) fn whole_chunks(s: &Step, sections: usize) -> Vec<Option<Part>> {
    match units(s.each, sections) {
        Some(n) if n >= s.spreads_from() => chunks(s.each, s.chunk, n, true),
        _ => Vec::new(),
    }
}

/// The steps a streamed stack runs before it is sealed: fanned-out steps whose every
/// parent runs before the seal too, or is a whole-stack step that hands them no files (a
/// check such as `qa`). Whole-stack steps wait for the seal: they read every section.
pub fn before_seal(wf: &Workflow) -> std::collections::HashSet<&str> {
    let mut kept = std::collections::HashSet::new();
    for s in wf.topo_order() {
        let parents_allow = s.after.iter().all(|p| {
            kept.contains(p.as_str())
                || wf
                    .steps
                    .iter()
                    .any(|q| &q.name == p && q.each == Each::Stack && q.outputs.is_empty())
        });
        if s.each != Each::Stack && parents_allow {
            kept.insert(s.name.as_str());
        }
    }
    kept
}

/// Plans the jobs a streamed stack's first `sections` allow ([`before_seal`]'s steps, whole
/// chunks only), leaving out the parts an earlier partial version already planned on the same
/// bytes: `changed(i)` says whether section `i` is new or other than it was there. A part kept
/// keeps every part it reads from. The version that seals the stack plans everything; its
/// jobs of these names find their twins in whichever version ran them and reuse their
/// outputs by content, so a stack streamed a section at a time is O(sections) jobs, not
/// O(sections²).
pub fn plan_partial(
    wf: &Workflow,
    sections: usize,
    changed: impl Fn(usize) -> bool,
) -> Vec<PlannedJob> {
    let steps = before_seal(wf);
    let mut keep: HashMap<&str, Vec<Part>> = HashMap::new();
    for s in wf.topo_order().into_iter().rev() {
        if !steps.contains(s.name.as_str()) {
            continue;
        }
        let wanted: Vec<Part> = whole_chunks(s, sections)
            .into_iter()
            .flatten()
            .filter(|p| {
                p.sections().any(&changed)
                    || wf
                        .steps
                        .iter()
                        .filter(|c| c.after.contains(&s.name))
                        .filter_map(|c| keep.get(c.name.as_str()))
                        .flatten()
                        .any(|c| needs(Some(*c), Some(*p)))
            })
            .collect();
        keep.insert(s.name.as_str(), wanted);
    }
    plan_with(wf, |s| {
        keep.get(s.name.as_str())
            .map(|v| v.iter().copied().map(Some).collect())
            .unwrap_or_default()
    })
}

/// Plans a job for each part `parts_of` gives a step, parents first.
fn plan_with(
    wf: &Workflow,
    parts_of: impl Fn(&beamflow_config::Step) -> Vec<Option<Part>>,
) -> Vec<PlannedJob> {
    let bin = wf.bin.as_ref().map(|b| b.display().to_string());
    let mut made: HashMap<&str, Vec<(String, Option<Part>)>> = HashMap::new();
    let mut out = Vec::new();
    for s in wf.topo_order() {
        for part in parts_of(s) {
            // what a job's own part fills in: known now, unlike what the work folder tells
            let own = |n: &str| -> Option<String> {
                Some(match (n, part) {
                    ("bin", _) => bin.clone()?,
                    ("part", Some(p)) => p.suffix(),
                    ("part", None) => String::new(),
                    ("pairs_file", Some(p)) if p.each == Each::Pair => p.list_file(),
                    ("images_file", Some(p)) if p.each == Each::Section => p.list_file(),
                    ("pairs_file", _) => "pairs.lst".into(),
                    ("images_file", _) => "images.lst".into(),
                    _ => return None,
                })
            };
            let argv = s
                .argv
                .iter()
                .map(|a| match &bin {
                    Some(_) => argv::fill_known(a, &own),
                    // no folder configured: the executables are found on PATH
                    None => argv::fill_known(a.strip_prefix("{bin}/").unwrap_or(a), &own),
                })
                .collect();
            let parents = s
                .after
                .iter()
                .flat_map(|p| made.get(p.as_str()).into_iter().flatten())
                .filter(|(_, pp)| needs(part, *pp))
                .map(|(n, _)| n.clone())
                .collect();
            let name = job_name(&s.name, part);
            made.entry(&s.name).or_default().push((name.clone(), part));
            out.push(PlannedJob {
                name,
                argv,
                parents,
                nodes: s.nodes,
                ranks_per_node: s.ranks_per_node,
                threads_per_rank: s.threads_per_rank,
                cpu_affinity: s.cpu_affinity.clone(),
                env: s.env.clone(),
                check_summary: s.check_summary.as_ref().map(|c| argv::fill_known(c, &own)),
            });
        }
    }
    out
}

/// The part a job covers, from its name and its step's `each`.
pub fn part_of(name: &str, each: Each) -> Option<Part> {
    let (_, range) = step_of(name);
    range.map(|(first, last)| Part { each, first, last })
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
        let jobs = plan(wf, 2);
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
    fn fanned_out_steps_are_a_job_per_chunk_and_edges_follow_the_data() {
        let cfg = Config::parse(
            r#"
[workflows.w]
[[workflows.w.steps]]
name = "qa"
command = "qa"
[[workflows.w.steps]]
name = "find"
command = "find -pairs {pairs_file} -summary s{part}.out"
after = ["qa"]
each = "pair"
chunk = 4
check_summary = "s{part}.out"
[[workflows.w.steps]]
name = "reg"
command = "reg -pairs {pairs_file} -note {{literal}}"
after = ["find"]
each = "pair"
chunk = 4
[[workflows.w.steps]]
name = "align"
command = "align -image_list {images_file}"
after = ["reg"]
[[workflows.w.steps]]
name = "apply"
command = "apply -image_list {images_file}"
after = ["align"]
each = "section"
chunk = 5
"#,
            Path::new("x"),
        )
        .unwrap();
        // 10 sections: 9 pairs in chunks of 4, 10 sections in chunks of 5
        let jobs = plan(&cfg.workflows["w"], 10);
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "qa",
                "find[0-3]",
                "find[4-7]",
                "find[8]",
                "reg[0-3]",
                "reg[4-7]",
                "reg[8]",
                "align",
                "apply[0-4]",
                "apply[5-9]"
            ]
        );
        let job = |n: &str| jobs.iter().find(|j| j.name == n).unwrap();
        assert_eq!(job("find[4-7]").parents, ["qa"]);
        assert_eq!(job("reg[4-7]").parents, ["find[4-7]"]);
        assert_eq!(job("align").parents, ["reg[0-3]", "reg[4-7]", "reg[8]"]);
        assert_eq!(job("apply[5-9]").parents, ["align"]);
        let find = job("find[4-7]");
        assert_eq!(
            find.argv,
            [
                "find",
                "-pairs",
                "pairs_0004-0007.lst",
                "-summary",
                "s_0004-0007.out"
            ]
        );
        assert_eq!(find.check_summary.as_deref(), Some("s_0004-0007.out"));
        // the rest waits for the work folder, escapes too
        assert_eq!(job("reg[8]").argv[4], "{{literal}}");
        assert_eq!(job("align").argv[2], "images.lst");
        assert_eq!(job("apply[0-4]").argv[2], "images_0000-0004.lst");
        assert_eq!(step_of("reg[4-7]"), ("reg", Some((4, 7))));
        assert_eq!(step_of("reg[4]"), ("reg", Some((4, 4))));
        assert_eq!(
            job_name(
                "reg",
                step_of("reg[4]").1.map(|(a, b)| Part {
                    each: Each::Pair,
                    first: a,
                    last: b
                })
            ),
            "reg[4]"
        );
        assert_eq!(step_of("align"), ("align", None));
        // a stack that fits in one chunk is one job per step, as before
        let small: Vec<String> = plan(&cfg.workflows["w"], 4)
            .into_iter()
            .map(|j| j.name)
            .collect();
        assert_eq!(small, ["qa", "find", "reg", "align", "apply"]);
        // sections and pairs meet where their sections overlap
        let p = |each, first, last| Some(Part { each, first, last });
        assert!(needs(p(Each::Section, 4, 7), p(Each::Pair, 7, 9)));
        assert!(!needs(p(Each::Section, 0, 3), p(Each::Pair, 4, 7)));
        assert!(needs(p(Each::Pair, 3, 3), p(Each::Section, 4, 4)));
    }

    #[test]
    fn bin_is_filled_from_the_config() {
        let cfg = Config::parse(
            "[workflows.aligntk]\nbin = \"/opt/align tk/bin\"\n",
            Path::new("x"),
        )
        .unwrap();
        let jobs = plan(&cfg.workflows["aligntk"], 2);
        assert_eq!(jobs[1].argv[0], "/opt/align tk/bin/find_rst");
    }

    #[test]
    fn a_partial_version_plans_only_what_changed_and_what_that_reads() {
        let cfg = Config::parse("", Path::new("x")).unwrap();
        let wf = &cfg.workflows["aligntk-apply"];
        let names =
            |jobs: Vec<PlannedJob>| -> Vec<String> { jobs.into_iter().map(|j| j.name).collect() };
        // the first partial version: every pair of its 10 sections
        assert_eq!(plan_partial(wf, 10, |_| true).len(), 18);
        // fewer than the 8 pairs a stack spreads from: nothing yet
        assert!(plan_partial(wf, 8, |_| true).is_empty());
        // one section more: its one pair
        assert_eq!(
            names(plan_partial(wf, 11, |i| i == 10)),
            ["find_rst[9]", "register[9]"]
        );
        // section 3 written again: the two pairs that read it
        assert_eq!(
            names(plan_partial(wf, 11, |i| i == 3)),
            ["find_rst[2]", "find_rst[3]", "register[2]", "register[3]"]
        );
        // a kept part keeps what it reads: b's chunk of pairs 8-11 needs a's pairs 8-11
        let cfg = Config::parse(
            "[workflows.w]\n[[workflows.w.steps]]\nname = \"a\"\ncommand = \"a {pairs_file}\"\neach = \"pair\"\nchunk = 1\n\
             [[workflows.w.steps]]\nname = \"b\"\ncommand = \"b {pairs_file}\"\neach = \"pair\"\nchunk = 4\nafter = [\"a\"]\n",
            Path::new("x"),
        )
        .unwrap();
        let got = names(plan_partial(&cfg.workflows["w"], 13, |i| i == 12));
        assert_eq!(got, ["a[8]", "a[9]", "a[10]", "a[11]", "b[8-11]"]);
    }
}
