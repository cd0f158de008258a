//! The service's front door against peers without a token, on the real service over TLS:
//! a thousand clients that finish TLS and never finish their headers hold nothing for long,
//! while a real `serve` session submits and a real launcher runs the DAG; a slow client
//! does not hold up shutdown; the token is checked before anything of a body is read; a
//! body over the limit is refused. The attacker is `tests/clients/hold.py` (Python's own
//! TLS), so the client side shares no code with the server.

use beamflow_e2e::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);

/// A site whose service closes silent connections after 2 s, with a one-step workflow.
fn site() -> Site {
    let site = Site::new("300ms", "");
    site.edit_config(
        "heartbeat_timeout = \"3s\"",
        "heartbeat_timeout = \"3s\"\nheader_timeout = \"2s\"\nidle_timeout = \"5s\"",
    );
    site.edit_config("workflow = \"aligntk\"", "workflow = \"one\"");
    site.append_config(
        "[workflows.one]\nto_8bit = \"off\"\n[[workflows.one.steps]]\nname = \"one\"\ncommand = \"sh -c 'echo \\\"$BEAMFLOW_STACK\\\" > one.txt'\"\n",
    );
    site
}

/// Starts the service with at most `fds` descriptors (as a site's `LimitNOFILE=` would).
fn service_limited(site: &Site, fds: u32) -> Proc {
    let info = site.dir.join("state/server-info");
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={fds}:{fds}"))
        .arg(bin("beamflow-collector"))
        .args(["service", "--config"])
        .arg(&site.config)
        .env("BEAMFLOW_LOG", "info");
    let p = spawn_logged(
        cmd,
        &site.dir.join("service.log"),
        "the service under prlimit (util-linux)",
    );
    wait_until(Duration::from_secs(20), "server-info", || info.exists());
    p
}

fn port(site: &Site) -> u16 {
    let info: Value =
        serde_json::from_slice(&std::fs::read(site.dir.join("state/server-info")).unwrap())
            .unwrap();
    let url = info["url"].as_str().unwrap();
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn token(site: &Site) -> String {
    let info: Value =
        serde_json::from_slice(&std::fs::read(site.dir.join("state/server-info")).unwrap())
            .unwrap();
    info["token"].as_str().unwrap().to_string()
}

/// Sockets the process holds open.
fn sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Connections to `port` on this host the kernel holds established, from /proc/net/tcp{,6}.
fn established(port: u16) -> usize {
    let local = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    // local address, remote address, state (01: established)
                    cols.len() > 3 && format!("{} ", cols[1]).ends_with(&local) && cols[3] == "01"
                })
                .count()
        })
        .sum()
}

fn hold(port: u16, count: u32, secs: u32, rate: u32) -> std::process::Child {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/hold.py");
    Command::new("python3")
        .arg(script)
        .args([
            "127.0.0.1",
            &port.to_string(),
            &count.to_string(),
            &secs.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3")
}

#[test]
fn a_thousand_silent_clients_hold_nothing_while_serve_and_launchers_keep_flowing() {
    let site = site();
    let mut service = service_limited(&site, 256);
    let port = port(&site);
    // 1,000 attempts over ~5 s, each held up to 30 s unless the service lets go
    let attacker = hold(port, 1000, 30, 200);
    wait_until(LONG, "the siege to hold 100 connections", || {
        established(port) >= 100
    });
    // meanwhile a real serve session submits three stacks and launchers run their DAGs
    let t0 = Instant::now();
    for name in ["under siege 1", "under siege 2", "under siege 3"] {
        let dir = site.write_stack(name, 2, 32);
        site.push(&dir);
    }
    for name in ["under siege 1", "under siege 2", "under siege 3"] {
        site.wait_finished(name, LONG);
    }
    let flowing = t0.elapsed();
    // an authorized status answers too
    let out = site.run("beamflow-collector", &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = attacker.wait_with_output().unwrap();
    let stats: Value = serde_json::from_slice(&out.stdout).expect("hold.py's stats");
    eprintln!("attack: {stats}; the DAGs finished {flowing:?} after the first push");
    assert_eq!(stats["attempts"], 1000);
    assert_eq!(
        stats["still_open"], 0,
        "the service held silent clients for 30 s: {stats}"
    );
    // what the service holds falls back once they are gone
    wait_until(Duration::from_secs(10), "the sockets to be let go", || {
        sockets(service.pid()) < 20
    });
    // descriptors ran short at times, but the loop backed off instead of logging a storm
    let log = std::fs::read_to_string(site.dir.join("service.log")).unwrap();
    let storms = log.matches("cannot accept connections").count();
    assert!(storms <= 10, "{storms} accept warnings:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    let status = service.term();
    assert!(status.success(), "{status:?}");
}

/// Sends `head` (and maybe part of a body) over TLS with `openssl s_client`, keeping the
/// connection open with nothing more to say.
fn half_request(port: u16, head: &str) -> std::process::Child {
    let mut c = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    c.stdin
        .as_mut()
        .unwrap()
        .write_all(head.as_bytes())
        .unwrap();
    c
}

#[test]
fn a_slow_client_does_not_hold_up_shutdown() {
    let site = Site::new("300ms", "");
    site.edit_config(
        "heartbeat_timeout = \"3s\"",
        "heartbeat_timeout = \"3s\"\nheader_timeout = \"30s\"\nshutdown_grace = \"2s\"",
    );
    let mut service = site.start_service();
    let port = port(&site);
    // one client stuck in its headers, one authorized request whose body never ends
    let mut a = half_request(port, "GET /v1/status HTTP/1.1\r\nHost: x\r\n");
    let mut b = half_request(
        port,
        &format!(
            "POST /v1/received HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"files\"",
            token(&site)
        ),
    );
    // both connected, and held open by the service mid-request
    wait_until(LONG, "both slow clients to connect", || {
        established(port) >= 2
    });
    holds_for(
        Duration::from_secs(1),
        "both slow clients held open",
        || {
            let n = established(port);
            (n < 2).then(|| format!("{n} connection(s) left"))
        },
    );
    let t0 = Instant::now();
    let status = service.term();
    let took = t0.elapsed();
    eprintln!("stopped {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    assert!(!site.dir.join("state/server-info").exists());
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One request over TLS with curl: (status code, body).
fn curl(port: u16, args: &[&str], path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_token_is_checked_before_the_body_and_a_body_over_the_limit_is_refused() {
    let site = Site::new("300ms", "");
    let _service = site.start_service();
    let port = port(&site);
    let auth = format!("Authorization: Bearer {}", token(&site));
    for (what, args) in [
        (
            "malformed JSON",
            vec!["-H", "Content-Type: application/json", "-d", "{not json"],
        ),
        (
            "the wrong shape",
            vec!["-H", "Content-Type: application/json", "-d", "{\"x\": 1}"],
        ),
        ("no content type", vec!["-d", "{}"]),
    ] {
        let (code, body) = curl(port, &args, "/v1/stacks");
        assert_eq!(code, 401, "{what} without a token: {body}");
        // with the token, the body is judged
        let mut with = args.clone();
        with.extend(["-H", auth.as_str()]);
        let (code, _) = curl(port, &with, "/v1/stacks");
        assert!(
            [400, 415, 422].contains(&code),
            "{what} with the token: {code}"
        );
    }
    // a body over the limit: 413, and the service goes on
    let big = site.dir.join("big.json");
    let mut f = std::fs::File::create(&big).unwrap();
    f.write_all(b"{\"files\": \"").unwrap();
    f.write_all(&vec![b'a'; 8 << 20]).unwrap();
    f.write_all(b"\"}").unwrap();
    drop(f);
    let at = format!("@{}", big.display());
    let (code, _) = curl(
        port,
        &[
            "-H",
            auth.as_str(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &at,
        ],
        "/v1/stacks",
    );
    assert_eq!(code, 413);
    let (code, _) = curl(port, &["-H", auth.as_str()], "/v1/status");
    assert_eq!(code, 200);
}
