//! Notifications against a real HTTP receiver on 127.0.0.1: one message per stack and event
//! (a held stack, a FAILED DAG, a done DAG, a silent watch root), however often the daemon
//! asks and across a restart; a receiver that fails once gets the message on a retry.

use beamflow_e2e::sshd::Sshd;
use beamflow_e2e::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// A webhook receiver: records every request's JSON body and whether it was answered 200.
/// The first request is answered 500, as a receiver that hiccups.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(bool, serde_json::Value)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<(bool, serde_json::Value)>>> = Arc::default();
        let g = got.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut len = 0usize;
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let mut all = g.lock().unwrap();
                let ok = !all.is_empty();
                all.push((ok, json));
                let status = if ok {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, got }
    }

    /// Delivered messages of `event` (answered 200).
    fn delivered(&self, event: &str) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(ok, j)| *ok && j["event"] == event)
            .map(|(_, j)| j.clone())
            .collect()
    }
}

#[test]
fn one_message_per_stack_and_event_through_a_real_webhook() {
    let hook = Receiver::start();
    let site = Site::new("1s", "alarm_after = \"2s\"");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    site.edit_config("outcome_every = \"30s\"", "outcome_every = \"300ms\"");
    site.append_config(&format!(
        "[[notify]]\nurl = \"http://127.0.0.1:{}/hook\"\nevents = [\"held\", \"failed\", \"done\", \"silent\"]\n",
        hook.port
    ));
    // a mail command, run without a shell of its own: here a script that files each message
    let mailbox = site.dir.join("mailbox");
    site.append_config(&format!(
        "[[notify]]\ncommand = \"sh -c 'printf \\\"%s\\\\n\\\" \\\"$1\\\" \\\"$BEAMFLOW_EVENT|$BEAMFLOW_STACK|$BEAMFLOW_SUBJECT\\\" >> \\\"$0\\\"; cat >> \\\"$0\\\"; echo >> \\\"$0\\\"' {} {{subject}}\"\nevents = [\"failed\"]\n",
        mailbox.display()
    ));
    let _service = site.start_service();
    let mut agent = site.start_agent();
    site.write_stack("good", 3, 32);
    let bad = site.write_stack("bad", 3, 32);
    site.blank(&bad.join("S_0001.tif"), 32);
    let broken = site.incoming().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for i in 0..3 {
        std::fs::write(broken.join(format!("S_{i:04}.tif")), b"not a tiff at all").unwrap();
    }

    wait_for(
        LONG,
        "held, failed, done and silent news",
        || {
            ["held", "failed", "done", "silent"]
                .iter()
                .all(|e| !hook.delivered(e).is_empty())
                .then_some(())
        },
        || {
            format!(
                "{:?}\n{}",
                hook.got.lock().unwrap(),
                site.log_tail("agent.log")
            )
        },
    );
    // the daemon keeps asking about the failed DAG, and a restart reads the journal afresh:
    // neither sends anything twice
    let once = |hook: &Receiver| {
        ["held", "failed", "done"].iter().find_map(|e| {
            let n = hook.delivered(e).len();
            (n != 1).then(|| format!("{n} {e} notifications"))
        })
    };
    holds_for(Duration::from_secs(2), "each notification once", || {
        once(&hook)
    });
    agent.term();
    let _agent = site.start_agent();
    holds_for(
        Duration::from_secs(3),
        "each notification once across a restart",
        || once(&hook),
    );

    let failed = hook.delivered("failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let text = failed[0]["text"].as_str().unwrap();
    assert!(
        text.contains("stack bad") && text.contains("FAILED"),
        "{text}"
    );
    assert!(text.contains("beamflow-collector retry --config"), "{text}");
    assert_eq!(failed[0]["stack"], "bad");
    let done = hook.delivered("done");
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["stack"], "good");
    let held = hook.delivered("held");
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0]["text"].as_str().unwrap().contains("stack broken"),
        "{held:?}"
    );
    let silent = hook.delivered("silent");
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert!(silent[0]["text"]
        .as_str()
        .unwrap()
        .contains("nothing arrived in"));
    // the mail command got the failed stack's message once, its subject as an argument
    let mail = std::fs::read_to_string(&mailbox).unwrap_or_default();
    assert_eq!(mail.matches("beamflow: bl/bad FAILED").count(), 2, "{mail}");
    // and the same from the environment, where a script reads names as data
    assert_eq!(
        mail.matches("failed|bad|beamflow: bl/bad FAILED").count(),
        1,
        "{mail}"
    );
    assert_eq!(
        mail.matches("the DAG of stack bad FAILED").count(),
        1,
        "{mail}"
    );
    // the first request was refused, and its message still arrived, once
    let all = hook.got.lock().unwrap().clone();
    assert!(!all[0].0);
    let refused = &all[0].1;
    assert_eq!(
        all.iter().filter(|(ok, j)| *ok && j == refused).count(),
        1,
        "{all:?}"
    );
}

#[test]
fn a_link_down_longer_than_its_limit_is_one_message_naming_the_fix() {
    let hook = Receiver::start();
    let sshd = Sshd::start();
    let site = Site::new("1s", "");
    let ctl = sshd.dir.join("m.sock");
    sshd.open_master(&ctl);
    let link = sshd.link_toml(&site.config, "adopt", Some(&ctl), "1s");
    site.edit_config("transport = \"local\"", &link);
    site.append_config(&format!(
        "[[notify]]\nurl = \"http://127.0.0.1:{}/hook\"\nevents = [\"link_down\"]\nlink_down_after = \"2s\"\n",
        hook.port
    ));
    let _service = site.start_service();
    let _agent = site.start_agent();
    // the receiver refuses its first request: make that one a throwaway
    let _ = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-d", "{}"])
        .arg(format!("http://127.0.0.1:{}/warmup", hook.port))
        .output();
    // longer than link_down_after with the master up (and nothing to send yet): no news
    holds_for(
        Duration::from_secs(4),
        "no link_down news while the master is up",
        || {
            let down = hook.delivered("link_down");
            (!down.is_empty()).then(|| format!("{down:?}"))
        },
    );
    assert!(
        !site
            .log_tail("agent.log")
            .contains("the SSH master is gone"),
        "{}",
        site.log_tail("agent.log")
    );
    // the person's master ends: the agent waits for a login, and says so once
    assert!(sshd.master(&ctl, "exit"));
    wait_for(
        LONG,
        "link_down news",
        || (!hook.delivered("link_down").is_empty()).then_some(()),
        || site.log_tail("agent.log"),
    );
    holds_for(Duration::from_secs(3), "one link_down notification", || {
        let down = hook.delivered("link_down");
        (down.len() != 1).then(|| format!("{down:?}"))
    });
    let down = hook.delivered("link_down");
    let text = down[0]["text"].as_str().unwrap();
    assert!(text.contains("beamflow-agent login"), "{text}");
    assert!(text.contains("has been down for"), "{text}");
}
