//! The beamline hears how its stacks ended: the agent daemon, linked over a real sshd, asks
//! the collector where each submitted stack's DAG is and `status` shows `done`, or `FAILED`
//! with the failed step, its reason and a retry command that works as printed.

use beamflow_e2e::sshd::Sshd;
use beamflow_e2e::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn dag_of(site: &Site, stack: &str) -> String {
    site.stack(stack)
        .and_then(|s| s["outcome"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn wait_dag(site: &Site, stack: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_for(
        LONG,
        &format!("{stack}'s DAG"),
        || Some(dag_of(site, stack)).filter(|d| ok(d)),
        || {
            format!(
                "DAG still {:?}\n{}",
                dag_of(site, stack),
                site.log_tail("agent.log")
            )
        },
    )
}

#[test]
fn status_at_the_beamline_shows_done_and_failed_with_the_retry_command() {
    let sshd = Sshd::start();
    let site = Site::new("1s", "");
    let link = sshd.link_toml(&site.config, "own", None, "1s");
    site.edit_config("transport = \"local\"", &link);
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    site.edit_config("outcome_every = \"30s\"", "outcome_every = \"300ms\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    site.write_stack("good", 3, 64);
    let bad = site.write_stack("bad", 3, 64);
    site.blank(&bad.join("S_0001.tif"), 64);

    assert_eq!(wait_dag(&site, "good", |d| d == "done"), "done");
    let failed = wait_dag(&site, "bad", |d| d.starts_with("FAILED"));
    assert!(failed.starts_with("FAILED: qa: "), "{failed}");
    assert!(failed.contains("S_0001.tif: blank"), "{failed}");
    let (_, retry) = failed.split_once(" — retry: ").expect("a retry command");
    assert!(
        retry.starts_with("beamflow-collector retry --config "),
        "{retry}"
    );
    // the plain table shows the same
    let table =
        String::from_utf8_lossy(&site.run("beamflow-agent", &["status"]).stdout).into_owned();
    assert!(
        table.contains("DAG") && table.contains("FAILED: qa:"),
        "{table}"
    );

    // the retry command works as printed (with this build's collector)
    let words: Vec<String> = retry
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_string())
        .collect();
    let out = std::process::Command::new(bin("beamflow-collector"))
        .args(&words[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{retry}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the job runs again (and fails again, the section is still blank): the beamline hears
    // of it as a new attempt, never a stale "done"
    let again = wait_dag(&site, "bad", |d| d.starts_with("FAILED"));
    assert!(again.contains("S_0001.tif: blank"), "{again}");
    let jobs = site.jobs();
    let qa = jobs
        .iter()
        .find(|j| j["stack"] == "bad")
        .expect("the bad stack's qa job");
    wait_until(LONG, "the retried job to run again", || {
        site.history(qa)
            .iter()
            .filter(|e| e["to"] == "RUNNING")
            .count()
            >= 2
    });
}
