//! Results home: a workflow names files to return; the agent daemon, linked over a real
//! sshd, fetches them once the DAG is done into `results_dir/<stack>/v<version>/`, verified,
//! byte-identical to the collector's work folder, and `status` says so.

use beamflow_e2e::sshd::Sshd;
use beamflow_e2e::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn declared_results_come_home_byte_identical() {
    let sshd = Sshd::start();
    let site = Site::new("1s", "");
    let link = sshd.link_toml(&site.config, "own", None, "1s");
    site.edit_config("transport = \"local\"", &link);
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    site.edit_config(
        "outcome_every = \"30s\"",
        "outcome_every = \"300ms\"\nresults_dir = \"./results\"",
    );
    site.append_config("[workflows.qa]\nreturn = [\"qa.json\", \"*.out\", \"../escape\"]\n");
    // a glob that leaves the work folder is a config error, naming the key
    let out = std::process::Command::new(bin("beamflow-agent"))
        .args(["config", "check"])
        .arg(&site.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("workflows.qa.return[2]"), "{err}");
    site.edit_config(", \"../escape\"]", "]");

    let _service = site.start_service();
    let _agent = site.start_agent();
    let name = "run 1/stäck ü";
    site.write_stack(name, 3, 32);
    let line = wait_for(
        LONG,
        "the results to be home",
        || {
            let s = site.stack(name).unwrap_or_default();
            let r = s["results"].as_str().unwrap_or("").to_string();
            r.starts_with("results: 2 file(s)").then_some(r)
        },
        || format!("{:?}\n{}", site.stack(name), site.log_tail("agent.log")),
    );
    let home = site.dir.join("results").join(name).join("@v1");
    assert!(line.contains(&home.display().to_string()), "{line}");
    let work = site.work().join(name).join("@v1");
    for f in ["qa.json", "qa.out"] {
        assert_eq!(
            std::fs::read(home.join(f)).unwrap(),
            std::fs::read(work.join(f)).unwrap(),
            "{f} came home byte-identical"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only what was declared, no leftovers: {names:?}"
    );
    let table =
        String::from_utf8_lossy(&site.run("beamflow-agent", &["status"]).stdout).into_owned();
    assert!(table.contains("done; results: 2 file(s)"), "{table}");
}
