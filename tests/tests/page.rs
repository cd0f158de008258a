//! The status page in a real browser: Debian's Chromium, headless, signs in with the
//! read-only token (kept in a cookie across the redirect), trusts exactly the service's
//! pinned key (`--ignore-certificate-errors-spki-list` with its SPKI hash, as openssl
//! computes it), and renders the page: its text is checked, and its screenshot is kept in
//! `target/test-artifacts/status-page.png`.

use beamflow_e2e::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate, by openssl.
fn spki_hash(pem: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        )
        .arg("sh")
        .arg(pem)
        .output()
        .expect("openssl");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn chromium(profile: &std::path::Path, spki: &str, args: &[&str], url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("chromium (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Width and height from a PNG's header.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// A screenshot of `url` at `size`, kept in target/test-artifacts as `name` for a person to
/// look at; its bytes, checked to be a picture of that size.
fn screenshot(
    profile: &std::path::Path,
    spki: &str,
    url: &str,
    size: (u32, u32),
    name: &str,
) -> Vec<u8> {
    let artefacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let shot = artefacts.join(name);
    let _ = std::fs::remove_file(&shot);
    chromium(
        profile,
        spki,
        &[
            &format!("--screenshot={}", shot.display()),
            &format!("--window-size={},{}", size.0, size.1),
            "--hide-scrollbars",
        ],
        url,
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert_eq!(png_size(&png), size);
    png
}

#[test]
fn the_status_page_renders_in_chromium_with_what_needs_a_person_first() {
    let site = Site::new("1s", "");
    site.edit_config("workflow = \"aligntk\"", "workflow = \"qa\"");
    site.edit_config("outcome_every = \"30s\"", "outcome_every = \"300ms\"");
    let _service = site.start_service();
    let _agent = site.start_agent();
    site.write_stack("good run", 3, 32);
    let bad = site.write_stack("bad <run>", 3, 32);
    site.blank(&bad.join("S_0001.tif"), 32);
    wait_for(
        LONG,
        "one DAG done and one FAILED",
        || {
            let good = site
                .stack("good run")
                .is_some_and(|s| s["outcome"] == "done");
            let bad = site
                .stack("bad <run>")
                .is_some_and(|s| s["outcome"].as_str().unwrap_or("").starts_with("FAILED"));
            (good && bad).then_some(())
        },
        || format!("{:?}", site.status()),
    );

    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.dir.join("state/server-info")).unwrap())
            .unwrap();
    let pem = site.dir.join("pinned.pem");
    std::fs::write(&pem, info["cert"].as_str().unwrap()).unwrap();
    let spki = spki_hash(&pem);
    let url = info["url"].as_str().unwrap();
    let read = info["read_token"].as_str().unwrap();
    let write = info["token"].as_str().unwrap();
    let profile = tempfile::tempdir().unwrap();

    // no token: a page that says how to get in, and no data
    let dom = chromium(profile.path(), &spki, &["--dump-dom"], &format!("{url}/ui"));
    assert!(dom.contains("read-only token"), "{dom}");
    assert!(!dom.contains("good run"), "{dom}");
    // the full token is never taken in a URL
    let dom = chromium(
        profile.path(),
        &spki,
        &["--dump-dom"],
        &format!("{url}/ui/login?token={write}"),
    );
    assert!(dom.contains("never taken in a URL"), "{dom}");

    let login = format!("{url}/ui/login?token={read}");
    let dom = chromium(profile.path(), &spki, &["--dump-dom"], &login);
    for want in [
        "Needs a person",
        "FAILED",
        "S_0001.tif: blank",
        "beamflow-collector retry --config",
        "good run",
        "bad &lt;run&gt;",
        "done",
        "Beamlines",
        "light green",
        "Throughput",
        "last hour",
        "Launchers",
    ] {
        assert!(dom.contains(want), "missing {want:?} in:\n{dom}");
    }
    assert!(
        dom.find("Needs a person") < dom.find("Stacks"),
        "what needs a person comes first"
    );

    let png = screenshot(
        profile.path(),
        &spki,
        &login,
        (1280, 1400),
        "status-page.png",
    );
    assert!(
        png.len() > 20_000,
        "a page, not a blank: {} bytes",
        png.len()
    );

    // one job's history has its own page
    let failed = site
        .jobs()
        .into_iter()
        .find(|j| j["state"] == "FAILED")
        .expect("the failed job");
    let dom = chromium(
        profile.path(),
        &spki,
        &["--dump-dom"],
        &format!("{url}/ui/jobs/{}", failed["id"]),
    );
    for want in ["RUNNING", "RUN_ERROR", "FAILED", "S_0001.tif: blank"] {
        assert!(dom.contains(want), "missing {want:?} in:\n{dom}");
    }
}

/// The picture a scientist looks at first: the real AlignTK aligns a stack whose sections were
/// written with known shifts, the `preview` step draws the reslice before and after, and the
/// page shows it on the stack's row; Chromium loads it at the size the step wrote.
#[test]
fn a_stack_s_preview_shows_on_its_row_and_opens_full_size() {
    let site = Site::new("1s", "");
    site.use_aligntk();
    site.edit_config("workflow = \"aligntk\"", "workflow = \"aligntk-apply\"");
    let _service = site.start_service();
    let dir = site.write_stack("shown", 6, 256);
    site.push(&dir);
    site.wait_finished("shown", LONG);
    let work = site.work().join("shown/@v1");
    let written = std::fs::read(work.join("preview.png")).expect("the preview step's picture");
    let (w, h) = png_size(&written);
    assert_eq!(w, 2 * 256 + 8, "two reslices side by side");

    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.dir.join("state/server-info")).unwrap())
            .unwrap();
    let pem = site.dir.join("pinned.pem");
    std::fs::write(&pem, info["cert"].as_str().unwrap()).unwrap();
    let spki = spki_hash(&pem);
    let url = info["url"].as_str().unwrap();
    let read = info["read_token"].as_str().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let login = format!("{url}/ui/login?token={read}");
    let dom = chromium(profile.path(), &spki, &["--dump-dom"], &login);
    let id = site.stack("shown").map(|s| s["remote_id"].clone());
    let src = format!("/ui/stacks/{}/preview.png", id.clone().unwrap());
    assert!(
        dom.contains(&format!("<img class=\"preview\" src=\"{src}\"")),
        "no thumbnail {src} ({id:?}) in:\n{dom}"
    );
    // opened full size, Chromium names the image with the size it decoded
    let dom = chromium(
        profile.path(),
        &spki,
        &["--dump-dom"],
        &format!("{url}{src}"),
    );
    assert!(
        dom.contains(&format!("({w}×{h})")),
        "Chromium did not load a {w}×{h} picture:\n{dom}"
    );
    // without the token there is no picture
    let other = tempfile::tempdir().unwrap();
    let dom = chromium(other.path(), &spki, &["--dump-dom"], &format!("{url}{src}"));
    assert!(!dom.contains(&format!("({w}×{h})")), "{dom}");
    let artefacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    std::fs::write(artefacts.join("preview.png"), &written).unwrap();
    // the page with its thumbnail, as a person sees it
    screenshot(
        profile.path(),
        &spki,
        &login,
        (1280, 900),
        "status-page-preview.png",
    );
}
