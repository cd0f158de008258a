//! The README is what a newcomer reads first, so what it shows must hold: it is short, it
//! opens with the two commands the tests run, every command block in it either runs here or
//! says it is site-specific, the commands it names inline work as printed, and every file it
//! links to exists.

use beamflow_e2e::{aligntk_bin, bin};
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// The fenced blocks: (the prose just before, the language, the lines).
fn blocks(text: &str) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    let mut before = String::new();
    let mut open: Option<(String, String, Vec<String>)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => open = Some((before.clone(), lang.to_string(), Vec::new())),
            (Some(_), Some(_)) => {
                out.push(open.take().unwrap());
                before.clear();
            }
            (Some((_, _, lines)), None) => lines.push(line.to_string()),
            (None, None) => {
                before.push_str(line);
                before.push('\n');
            }
        }
    }
    out
}

#[test]
fn the_readme_is_short_and_opens_with_the_two_commands_the_tests_run() {
    let text = readme();
    let lines = text.lines().count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines; depth goes in docs/"
    );
    let (_, lang, first) = &blocks(&text)[0];
    assert_eq!(lang, "sh");
    let command = |l: &str| l.split('#').next().unwrap().trim().to_string();
    // the main job: built in release, the agent's demo with no arguments, which is what
    // `local::the_demo_s_default_runs_the_real_aligntk_to_aligned_sections` runs
    assert_eq!(
        command(&first[0]),
        "cargo build --release --bins && cargo run -q --release --bin beamflow-agent -- demo"
    );
    // every test: the command CI runs
    assert_eq!(command(&first[1]), "./tests/run.sh");
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.contains("exec bash tests/run.sh"), "{ci}");
}

#[test]
fn every_command_block_runs_in_a_test_or_says_it_is_site_specific() {
    let text = readme();
    for (i, (before, lang, lines)) in blocks(&text).into_iter().enumerate() {
        if lang != "sh" || i == 0 {
            continue; // the first block is checked above; the others show output
        }
        let last_paragraph = before.trim_end().rsplit("\n\n").next().unwrap_or("");
        assert!(
            last_paragraph.contains("Site-specific"),
            "this block neither runs in a test nor says it is site-specific:\n{}",
            lines.join("\n")
        );
    }
}

/// The commands the README names inline, run as it prints them.
#[test]
fn the_commands_the_readme_names_inline_work_as_printed() {
    let text = readme();
    for (said, program, args) in [
        (
            "`beamflow-agent config check FILE`",
            "beamflow-agent",
            vec!["config", "check", "examples/local.toml"],
        ),
        (
            "`beamflow-agent config reference`",
            "beamflow-agent",
            vec!["config", "reference"],
        ),
        (
            "`completions bash|zsh|fish`",
            "beamflow-collector",
            vec!["completions", "zsh"],
        ),
        ("`man`", "beamflow-agent", vec!["man"]),
    ] {
        assert!(text.contains(said), "the README no longer says {said}");
        let out = Command::new(bin(program))
            .args(&args)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `export ALIGNTK_BIN=$(tests/aligntk.sh)` prints the folder of a built AlignTK
    assert!(text.contains("export ALIGNTK_BIN=$(tests/aligntk.sh)"));
    let out = Command::new("bash")
        .arg(root().join("tests/aligntk.sh"))
        .env("ALIGNTK_BIN", aligntk_bin())
        .output()
        .unwrap();
    let folder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(Path::new(&folder).join("find_rst").is_file(), "{folder:?}");
}

#[test]
fn every_file_the_readme_links_to_exists() {
    let text = readme();
    let mut n = 0;
    for part in text.split("](").skip(1) {
        let target = part.split(')').next().unwrap();
        if target.starts_with("http") {
            continue;
        }
        let path = target.split('#').next().unwrap();
        assert!(
            root().join(path).exists(),
            "README links to {target}, which is missing"
        );
        n += 1;
    }
    assert!(n >= 7, "only {n} links");
}
