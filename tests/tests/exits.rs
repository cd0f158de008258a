//! Both programs' exit codes, as `--help` and the README document them: 0 done, 1 error,
//! 2 usage or config error, 3 held (needs a person), 4 the far side unreachable. Scripts and
//! systemd read them; each is produced here by the real binaries.

use beamflow_e2e::{bin, Site};
use std::process::Command;

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn help_names_the_exit_codes_of_both_programs() {
    for exe in ["beamflow-agent", "beamflow-collector"] {
        let out = Command::new(bin(exe)).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Exit codes: 0 done, 1 error, 2 usage or config error, 3 held (needs a person), 4 the far side unreachable."),
            "{exe}: {text}"
        );
        assert_eq!(code(&out), 0);
    }
}

#[test]
fn a_usage_or_config_error_exits_2() {
    let site = Site::new("1s", "");
    std::fs::write(site.dir.join("bad.toml"), "[agent]\nno_such_key = 1\n").unwrap();
    for exe in ["beamflow-agent", "beamflow-collector"] {
        let bad = site.dir.join("bad.toml");
        let out = Command::new(bin(exe))
            .args(["config", "check"])
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), 2, "{exe}: {err}");
        assert!(err.contains("agent.no_such_key"), "{err}");
        let out = Command::new(bin(exe))
            .arg("--no-such-flag")
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{exe}");
    }
    // `serve` without --stdio is a usage error too
    let out = site.run("beamflow-collector", &["serve"]);
    assert_eq!(code(&out), 2);
}

#[test]
fn a_stack_held_for_a_person_exits_3() {
    let site = Site::new("1s", "");
    let dir = site.write_stack("cut", 3, 64);
    // a section cut short: never sent, held with its name
    let f = dir.join("S_0001.tif");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = site.run("beamflow-agent", &["push", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 3, "{err}");
    assert!(err.contains("S_0001.tif"), "{err}");
    // the same through a running daemon (push hands it over): held, the file named, exit 3
    let _agent = site.start_agent();
    site.wait_agent_door();
    let out = site.run("beamflow-agent", &["push", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 3, "{err}");
    assert!(
        err.contains("handed to the running daemon") && err.contains("S_0001.tif"),
        "{err}"
    );
    // the qa step on a section that is one value everywhere
    let blank = site.dir.join("blank");
    std::fs::create_dir_all(&blank).unwrap();
    for i in 0..2u32 {
        let s = beamflow_agent::synth::Section {
            width: 32,
            height: 32,
            seed: i as u64,
            big: false,
            rows_per_strip: 8,
        };
        beamflow_agent::synth::write_tiff(&blank.join(format!("S_{i}.tif")), &s).unwrap();
    }
    let mut w =
        tiff::encoder::TiffEncoder::new(std::fs::File::create(blank.join("S_2.tif")).unwrap())
            .unwrap();
    w.write_image::<tiff::encoder::colortype::Gray16>(32, 32, &[500u16; 32 * 32])
        .unwrap();
    let out = Command::new(bin("beamflow-collector"))
        .arg("qa")
        .arg(&blank)
        .arg("--out")
        .arg(site.dir.join("qa.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 3, "{err}");
    assert!(err.contains("S_2.tif: blank"), "{err}");
}

#[test]
fn a_far_side_that_is_not_there_exits_4() {
    let site = Site::new("1s", "");
    // no service was started
    for args in [&["status"][..], &["ls"][..]] {
        let out = site.run("beamflow-collector", args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), 4, "{args:?}: {err}");
        assert!(err.contains("not running"), "{err}");
    }
    // a push to a collector service that is not running, after its attempts
    let dir = site.write_stack("lonely", 2, 64);
    let out = Command::new(bin("beamflow-agent"))
        .args(["push", "--attempts", "1", "--config"])
        .arg(&site.config)
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 4, "{err}");
    // the same handed to a running daemon: its attempt fails, push gives up with 4 and says
    // the daemon keeps trying
    let _agent = site.start_agent();
    site.wait_agent_door();
    let out = site.run(
        "beamflow-agent",
        &["push", "--attempts", "1", dir.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 4, "{err}");
    assert!(
        err.contains("handed to the running daemon") && err.contains("keeps trying"),
        "{err}"
    );
}

#[test]
fn done_exits_0() {
    let site = Site::new("1s", "");
    let out = Command::new(bin("beamflow-agent"))
        .args(["config", "check"])
        .arg(&site.config)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
}
