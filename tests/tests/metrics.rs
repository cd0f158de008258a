//! `/metrics` on the collector (over its pinned TLS, with the read-only token) and the
//! agent's textfile, after a stack went through: the values say what happened, and the real
//! `promtool check metrics` (Debian's prometheus package) accepts both.

use beamflow_e2e::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (tests/run.sh installs prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the first sample whose line starts with `series`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn metrics_count_what_happened_and_promtool_accepts_them() {
    let site = Site::new("1s", "");
    site.use_standins();
    site.edit_config(
        "outcome_every = \"30s\"",
        "outcome_every = \"300ms\"\nmetrics_file = \"./state/agent.prom\"",
    );
    let _service = site.start_service();
    let _agent = site.start_agent();
    site.write_stack("m1", 3, 32);
    site.wait_finished("m1", LONG);

    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.dir.join("state/server-info")).unwrap())
            .unwrap();
    let pem = site.dir.join("pinned.pem");
    std::fs::write(&pem, info["cert"].as_str().unwrap()).unwrap();
    let url = info["url"].as_str().unwrap().to_string();
    let curl = |method: &str, path: &str, token: Option<&str>| {
        let mut c = Command::new("curl");
        c.args(["-sS", "-X", method, "-w", "\n%{http_code}", "--cacert"])
            .arg(&pem);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = c.arg(format!("{url}{path}")).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (code.to_string(), body.to_string())
    };
    let read = info["read_token"].as_str().unwrap();
    assert_eq!(curl("GET", "/metrics", None).0, "401");
    // the read-only token reads, and changes nothing
    assert_eq!(curl("POST", "/v1/jobs/1/kill", Some(read)).0, "401");
    // each far end reports what it received a moment after it arrives (it may stay open)
    let (code, text) = wait_for(
        std::time::Duration::from_secs(5),
        "the far ends' reports of 3 received files",
        || {
            let got = curl("GET", "/metrics", Some(read));
            (got.0 != "200" || value(&got.1, "beamflow_received_files_total") >= 3.0).then_some(got)
        },
        || curl("GET", "/metrics", Some(read)).1,
    );
    assert_eq!(code, "200", "{text}");
    assert_eq!(value(&text, "beamflow_jobs{state=\"JOB_FINISHED\"}"), 4.0);
    assert_eq!(value(&text, "beamflow_jobs{state=\"FAILED\"}"), 0.0);
    assert_eq!(
        value(&text, "beamflow_job_transitions_total{state=\"RUNNING\"}"),
        4.0
    );
    assert_eq!(value(&text, "beamflow_stacks_accepted_total"), 1.0);
    assert_eq!(value(&text, "beamflow_received_files_total"), 3.0);
    let bytes: u64 = std::fs::read_dir(site.incoming().join("m1"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(value(&text, "beamflow_received_bytes_total"), bytes as f64);
    assert_eq!(value(&text, "beamflow_verify_failures_total"), 0.0);
    assert_eq!(value(&text, "beamflow_queue_wait_seconds_count"), 4.0);
    assert_eq!(
        value(&text, "beamflow_dag_accepted_to_done_seconds_count"),
        1.0
    );
    assert!(value(&text, "beamflow_launchers{state=\"RUNNING\"}") <= 1.0);
    // each step's run time as learned from the runs that ended well
    let learned: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("beamflow_step_expected_seconds{"))
        .collect();
    assert!(
        learned
            .iter()
            .any(|l| l.contains("step=\"register\"") && l.contains("workflow=\"aligntk\"")),
        "{text}"
    );
    assert!(
        text.contains("# TYPE beamflow_launcher_nodes gauge"),
        "{text}"
    );
    promtool_accepts(&text);

    // the agent's textfile
    let prom = site.dir.join("state/agent.prom");
    wait_until(LONG, "the agent's metrics file", || {
        std::fs::read_to_string(&prom).is_ok_and(|t| t.contains("beamflow_agent_submitted_total 1"))
    });
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        value(
            &text,
            "beamflow_agent_stage_seconds_count{stage=\"landed_to_finished\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "beamflow_agent_stage_seconds_count{stage=\"finished_to_accepted\"}"
        ),
        1.0
    );
    // it settled for 1 s after the last section landed
    assert!(
        value(
            &text,
            "beamflow_agent_stage_seconds_sum{stage=\"landed_to_finished\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(&text, "beamflow_agent_stacks{state=\"submitted\"}"),
        1.0
    );
    assert!(value(&text, "beamflow_agent_sent_bytes_total") >= bytes as f64);
    promtool_accepts(&text);
}
