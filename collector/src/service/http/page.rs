//! The status page: server-rendered HTML that refreshes itself, no JavaScript and no build
//! step. What needs a person comes first (FAILED jobs with the command that retries them,
//! queues that may not submit, beamlines silent for too long), then an activity light per
//! beamline, throughput and latency over the last hour and day, the recent stack versions
//! with their DAG in one word, the launchers with their nodes, and one job's history on its
//! own page. Every name on it came from a beamline, so every text is escaped.

use crate::api::{DagOutcome, EventRow, JobRow, LauncherRow, StackRow};
use beamflow_protocol::states::DagState;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// Escapes text for HTML (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A beamline's activity light.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Light {
    /// Heard from within two minutes (its daemon asks every 30 s by default).
    Green,
    /// Silent for two to fifteen minutes.
    Amber,
    /// Silent for longer, or never heard since the service started.
    Red,
}

/// The light for a beamline last heard from at `last`.
pub fn light(last: Option<SystemTime>, now: SystemTime) -> Light {
    match last.map(|t| now.duration_since(t).unwrap_or(Duration::ZERO)) {
        Some(d) if d <= Duration::from_secs(120) => Light::Green,
        Some(d) if d <= Duration::from_secs(900) => Light::Amber,
        _ => Light::Red,
    }
}

/// Throughput and latency over one window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// "last hour", "last day".
    pub name: String,
    /// Stack versions accepted.
    pub stacks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Jobs finished.
    pub jobs: u64,
    /// DAG accepted → done, of those that finished in the window, seconds.
    pub dag_times: Vec<f64>,
}

/// One stack version on the page.
#[derive(Debug, Clone)]
pub struct StackLine {
    /// The version.
    pub row: StackRow,
    /// Where its DAG is.
    pub dag: DagOutcome,
    /// Bytes retention freed, once its files are gone from this host.
    pub freed: Option<u64>,
    /// Whether its work folder holds a preview picture.
    pub preview: bool,
}

/// What the page shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The service's host.
    pub host: String,
    /// Recent stack versions and their DAGs.
    pub stacks: Vec<StackLine>,
    /// Launchers (live, and the last few ended).
    pub launchers: Vec<LauncherRow>,
    /// The engine's notes (queues that may not submit, …).
    pub notes: Vec<String>,
    /// FAILED jobs.
    pub failed: Vec<JobRow>,
    /// Beamlines and when each was last heard from.
    pub beamlines: Vec<(String, Option<SystemTime>)>,
    /// Throughput windows.
    pub windows: Vec<Window>,
    /// The config, for retry commands.
    pub config: String,
}

fn ago(t: SystemTime, now: SystemTime) -> String {
    let d = now.duration_since(t).unwrap_or(Duration::ZERO);
    let d = Duration::from_secs(d.as_secs());
    format!("{} ago", humantime::format_duration(d))
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}th{background:#f3f3f3}.person{background:#fff3f0;border:1px solid #e0a090;padding:.5em 1em;margin-bottom:1.5em}.light{display:inline-block;width:.9em;height:.9em;border-radius:50%;margin-right:.4em;vertical-align:middle}.green{background:#2a2}.amber{background:#e90}.red{background:#d22}.failed{color:#b00;font-weight:bold}.done{color:#070}code{background:#f6f6f6;padding:0 .2em}";

fn head(out: &mut String, title: &str, refresh: bool) {
    let meta = if refresh {
        "<meta http-equiv=\"refresh\" content=\"10\">"
    } else {
        ""
    };
    let _ = write!(
        out,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">{meta}<title>{}</title><style>{STYLE}</style></head><body>",
        esc(title)
    );
}

/// The whole status page at `now`.
pub fn render(v: &View, now: SystemTime) -> String {
    let mut o = String::new();
    head(&mut o, &format!("beamflow on {}", v.host), true);
    let _ = write!(
        o,
        "<h1>beamflow on {}</h1><p>{} — refreshes every 10 s</p>",
        esc(&v.host),
        esc(&humantime::format_rfc3339_seconds(now).to_string())
    );
    // what needs a person, first
    needs_a_person(&mut o, v, now);
    beamlines(&mut o, v, now);
    throughput(&mut o, v);
    stacks(&mut o, v);
    launchers(&mut o, v);
    o.push_str("</body></html>");
    o
}

/// Held jobs with the command that retries them, the engine's notes, silent beamlines.
fn needs_a_person(o: &mut String, v: &View, now: SystemTime) {
    let mut person: Vec<String> = Vec::new();
    for j in &v.failed {
        person.push(format!(
            "<span class=\"failed\">FAILED</span> job <a href=\"/ui/jobs/{id}\">{id}</a> ({} of {}/{} v{}): {} — after fixing it: <code>beamflow-collector retry --config {} {id}</code>",
            esc(&j.name),
            esc(&j.beamline),
            esc(&j.stack),
            j.version,
            esc(j.reason.lines().next().unwrap_or_default()),
            esc(&v.config),
            id = j.id
        ));
    }
    for n in v
        .notes
        .iter()
        .filter(|n| !n.contains(" is FAILED: ") && !n.starts_with("retention:"))
    {
        person.push(esc(n));
    }
    for (b, last) in &v.beamlines {
        if light(*last, now) == Light::Red {
            let since = last
                .map(|t| format!("silent for {}", ago(t, now).trim_end_matches(" ago")))
                .unwrap_or_else(|| "not heard from since the service started".into());
            person.push(format!(
                "beamline <b>{}</b> is {since}: its link may be down, or its SSH master waits for <code>beamflow-agent login</code> (check with <code>beamflow-agent status</code> and <code>doctor</code> there)",
                esc(b)
            ));
        }
    }
    o.push_str("<h2>Needs a person</h2>");
    if person.is_empty() {
        o.push_str("<p>Nothing.</p>");
    } else {
        o.push_str("<div class=\"person\"><ul>");
        for p in &person {
            let _ = write!(o, "<li>{p}</li>");
        }
        o.push_str("</ul></div>");
    }
}

/// Each beamline with its light: when it was last heard from.
fn beamlines(o: &mut String, v: &View, now: SystemTime) {
    o.push_str("<h2>Beamlines</h2><table><tr><th>beamline</th><th>last heard from</th></tr>");
    for (b, last) in &v.beamlines {
        let class = match light(*last, now) {
            Light::Green => "green",
            Light::Amber => "amber",
            Light::Red => "red",
        };
        let when = last
            .map(|t| ago(t, now))
            .unwrap_or_else(|| "not since the service started".into());
        let _ = write!(
            o,
            "<tr><td><span class=\"light {class}\" title=\"{class}\"></span>{}</td><td>{}</td></tr>",
            esc(b),
            esc(&when)
        );
    }
    o.push_str("</table>");
}

/// Stacks, bytes and jobs of the last hour and day, and how long DAGs took.
fn throughput(o: &mut String, v: &View) {
    o.push_str("<h2>Throughput</h2><table><tr><th></th><th>stacks</th><th>bytes</th><th>jobs finished</th><th>DAG accepted → done (median)</th></tr>");
    for w in &v.windows {
        let lat = median(&w.dag_times)
            .map(|s| format!("{s:.1} s of {}", w.dag_times.len()))
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&w.name),
            w.stacks,
            bytes(w.bytes),
            w.jobs,
            lat
        );
    }
    o.push_str("</table>");
}

/// The recent stacks and where their DAGs are.
fn stacks(o: &mut String, v: &View) {
    o.push_str("<h2>Stacks</h2><table><tr><th>id</th><th>beamline</th><th>stack</th><th>version</th><th>workflow</th><th>accepted</th><th>DAG</th><th>preview</th></tr>");
    for StackLine {
        row: s,
        dag: d,
        freed,
        preview,
    } in &v.stacks
    {
        let class = match d.state {
            DagState::Failed => " class=\"failed\"",
            DagState::Done => " class=\"done\"",
            _ => "",
        };
        let mut line = if d.state == DagState::Failed {
            format!("FAILED: {}", d.failure)
        } else {
            d.line()
        };
        if let Some(b) = freed {
            // its files are gone from this host
            let _ = write!(line, " (freed {b} bytes)");
        }
        if d.steps.iter().any(|s| s.total > 1) {
            // a fanned-out step still reads as one step
            let _ = write!(line, " — {}", d.steps_line());
        }
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{class}>{}</td><td>{}</td></tr>",
            s.id,
            esc(&s.beamline),
            esc(&s.name),
            s.version,
            esc(&s.workflow),
            esc(&s.created_at),
            esc(&line),
            if *preview { thumbnail(s) } else { String::new() }
        );
    }
    o.push_str("</table>");
}

/// A stack version's preview as a thumbnail that opens full size: the reslice before and
/// after alignment shows at a glance whether the stack aligned.
fn thumbnail(s: &StackRow) -> String {
    let src = format!("/ui/stacks/{}/preview.png", s.id);
    format!(
        "<a href=\"{src}\"><img class=\"preview\" src=\"{src}\" alt=\"preview of {} v{}\" height=\"96\"></a>",
        esc(&s.name),
        s.version
    )
}

/// Launchers, live and the last few ended.
fn launchers(o: &mut String, v: &View) {
    o.push_str("<h2>Launchers</h2><table><tr><th>id</th><th>queue</th><th>scheduler</th><th>batch job</th><th>nodes × wall time</th><th>state</th><th>running jobs</th><th>why</th></tr>");
    for l in &v.launchers {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            l.id,
            esc(&l.queue),
            esc(&l.scheduler),
            esc(&l.batch_id),
            esc(&l.shape()),
            l.state,
            l.running_jobs,
            esc(&l.reason)
        );
    }
    o.push_str("</table>");
}

/// One job's history.
pub fn job_page(j: &JobRow, events: &[EventRow]) -> String {
    let mut o = String::new();
    head(&mut o, &format!("job {}", j.id), false);
    let _ = write!(
        o,
        "<p><a href=\"/ui\">← status</a></p><h1>Job {} — {} of {}/{} v{}</h1><p>state <b>{}</b>, attempts {}</p><p>command: <code>{}</code></p><table><tr><th>at</th><th>from</th><th>to</th><th>why</th></tr>",
        j.id,
        esc(&j.name),
        esc(&j.beamline),
        esc(&j.stack),
        j.version,
        j.state,
        j.attempts,
        esc(&j.command)
    );
    for e in events {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.at),
            e.from.map_or("-", |s| s.as_str()),
            e.to,
            esc(&e.reason)
        );
    }
    o.push_str("</table></body></html>");
    o
}

/// The page for a browser without the read token: how to get in, without naming a secret.
pub fn login_needed() -> String {
    let mut o = String::new();
    head(&mut o, "beamflow: sign in", false);
    o.push_str("<h1>beamflow status</h1><p>This page needs the service's read-only token. On the login node, read <code>read_token</code> from the collector's <code>server-info</code> (in its state folder) and open <code>/ui/login?token=READ_TOKEN</code> once; the browser keeps it in a cookie. The other token in that file can change things and is never accepted here.</p></body></html>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_beamline_are_text_never_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        let stack = StackRow {
            id: 1,
            beamline: "bl<b>".into(),
            name: "run <img src=x onerror=alert(1)>".into(),
            version: 1,
            workflow: "aligntk".into(),
            work_dir: String::new(),
            files: 2,
            created_at: "2026-01-01T00:00:00Z".into(),
            partial: false,
        };
        let dag = DagOutcome {
            id: 1,
            state: DagState::Failed,
            done: 1,
            total: 4,
            failure: "qa: <b>S_0001.tif</b>: blank".into(),
            retry: String::new(),
            superseded_by: 0,
            steps: Vec::new(),
        };
        let v = View {
            host: "login1".into(),
            stacks: vec![StackLine {
                row: stack,
                dag,
                freed: None,
                preview: false,
            }],
            beamlines: vec![("bl<b>".into(), None)],
            ..Default::default()
        };
        let html = render(&v, SystemTime::now());
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>S_0001"), "{html}");
        assert!(html.contains("run &lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("FAILED: qa: &lt;b&gt;S_0001.tif&lt;/b&gt;: blank"));
    }

    #[test]
    fn a_fanned_out_step_reads_as_one_and_a_preview_is_a_thumbnail() {
        let step = |name: &str, done, total| crate::api::StepProgress {
            name: name.into(),
            done,
            total,
        };
        let stack = StackRow {
            id: 7,
            beamline: "bl".into(),
            name: "s".into(),
            version: 2,
            workflow: "aligntk-apply".into(),
            work_dir: String::new(),
            files: 12,
            created_at: "2026-01-01T00:00:00Z".into(),
            partial: false,
        };
        let dag = DagOutcome {
            id: 7,
            state: DagState::Running,
            done: 3,
            total: 6,
            failure: String::new(),
            retry: String::new(),
            superseded_by: 0,
            steps: vec![
                step("qa", 1, 1),
                step("find_rst", 2, 2),
                step("register", 0, 2),
                step("align", 0, 1),
            ],
        };
        let v = View {
            stacks: vec![StackLine {
                row: stack,
                dag,
                freed: None,
                preview: true,
            }],
            ..Default::default()
        };
        let html = render(&v, SystemTime::now());
        assert!(
            html.contains("running 3/6 — qa 1/1 · find_rst 2/2 · register 0/2 · align 0/1"),
            "{html}"
        );
        assert!(
            html.contains("<img class=\"preview\" src=\"/ui/stacks/7/preview.png\""),
            "{html}"
        );
    }

    #[test]
    fn a_beamline_silent_too_long_turns_red_and_needs_a_person() {
        let now = SystemTime::now();
        assert_eq!(
            light(Some(now - Duration::from_secs(30)), now),
            Light::Green
        );
        assert_eq!(
            light(Some(now - Duration::from_secs(600)), now),
            Light::Amber
        );
        assert_eq!(
            light(Some(now - Duration::from_secs(3600)), now),
            Light::Red
        );
        assert_eq!(light(None, now), Light::Red);
        let v = View {
            beamlines: vec![("bm1".into(), Some(now - Duration::from_secs(3600)))],
            ..Default::default()
        };
        let html = render(&v, now);
        assert!(
            html.contains("beamline <b>bm1</b> is silent for 1h"),
            "{html}"
        );
        assert!(html.contains("beamflow-agent login"));
    }
}
