//! `beamflow-agent setup` against a real sshd, as a fresh account on the "login node": an
//! account the test makes (home in a temporary folder, no beamflow anywhere on its PATH) and
//! removes. Without consent nothing is copied; with it the account gets the collector, a
//! starter config and a running service, a stack then goes through with the link's default
//! remote command, and a second run changes nothing.

use beamflow_e2e::sshd::Sshd;
use beamflow_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A login account made for the test, removed (with its processes) when dropped.
struct Account {
    name: String,
    home: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Account {
    fn make() -> Account {
        let tmp = tempfile::Builder::new()
            .prefix("bfhome")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = format!("bfset{}", std::process::id() % 100_000);
        let home = tmp.path().join("home");
        let _ = Command::new("userdel").arg(&name).output();
        run_ok(
            "useradd",
            &["-M", "-d", home.to_str().unwrap(), "-s", "/bin/sh", &name],
        );
        // not locked (sshd without PAM refuses a locked account), and no password either
        run_ok("usermod", &["-p", "*", &name]);
        std::fs::create_dir(&home).unwrap();
        run_ok("chown", &[&format!("{name}:"), home.to_str().unwrap()]);
        Account {
            name,
            home,
            _tmp: tmp,
        }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-9", "-u", &self.name])
            .output();
        // userdel refuses an account that still runs something: wait for its processes to go
        let gone = || {
            Command::new("pgrep")
                .args(["-u", &self.name])
                .output()
                .is_ok_and(|o| !o.status.success())
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !gone() && std::time::Instant::now() < until {
            std::thread::yield_now();
        }
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn setup(site: &Site, yes: bool) -> (bool, String) {
    let mut args = vec!["setup"];
    if yes {
        args.push("--yes");
    }
    let out = site.run("beamflow-agent", &args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn setup_gives_a_fresh_account_the_collector_a_config_and_a_running_service_once() {
    let account = Account::make();
    let sshd = Sshd::start();
    // sshd reads the authorized keys as the account
    for p in [sshd.dir.clone(), sshd.dir.join("authorized_keys")] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let site = Site::new("1s", "");
    let ssh_config = site.dir.join("ssh_config");
    let text = std::fs::read_to_string(&sshd.ssh_config).unwrap();
    let user_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("User "))
        .unwrap()
        .to_string();
    std::fs::write(
        &ssh_config,
        text.replace(&user_line, &format!("  User {}", account.name)),
    )
    .unwrap();
    site.edit_config(
        "transport = \"local\"",
        &format!(
            "transport = \"ssh\"\nhost = \"{}\"\nssh_config = \"{}\"\nmaster = \"own\"\nkeepalive = \"1s\"",
            beamflow_e2e::sshd::ALIAS,
            ssh_config.display()
        ),
    );
    let bin_path = account.home.join(".local/bin/beamflow-collector");
    let config = account.home.join(".config/beamflow/beamflow.toml");

    // no terminal and no --yes: nothing is copied, and the line says why
    let (ok, text) = setup(&site, false);
    assert!(!ok, "{text}");
    assert!(text.contains("no beamflow-collector"), "{text}");
    assert!(
        text.contains("FAIL  collector:") && text.contains("--yes"),
        "{text}"
    );
    assert!(!bin_path.exists());

    let (ok, text) = setup(&site, true);
    assert!(ok, "{text}");
    for step in [
        "collector: copied",
        "config: wrote a starter",
        "service: started",
    ] {
        assert!(text.contains(&format!("done  {step}")), "{step}: {text}");
    }
    assert_eq!(
        std::fs::read(&bin_path).unwrap(),
        std::fs::read(bin("beamflow-collector")).unwrap(),
        "the installed collector is this host's, byte for byte"
    );
    assert!(config.exists());
    let info_path = account.home.join(".local/state/beamflow/server-info");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let owner = Command::new("ps")
        .args(["-o", "user=", "-p", &pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&owner.stdout).trim(),
        account.name,
        "the service runs as the account"
    );

    // the link's default remote command finds the collector in ~/.local/bin
    let dir = site.write_stack("after setup", 2, 32);
    let out = site.run(
        "beamflow-agent",
        &["push", "--attempts", "1", dir.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(
        &dir,
        &account
            .home
            .join("beamflow/data")
            .join(BEAMLINE)
            .join("after setup"),
    );

    // a second run changes nothing
    let (bin_time, config_time) = (mtime(&bin_path), mtime(&config));
    let (ok, again) = setup(&site, true);
    assert!(ok, "{again}");
    assert!(!again.contains("done  "), "{again}");
    for step in ["collector:", "config:", "service:"] {
        assert!(again.contains(&format!("ok    {step}")), "{step}: {again}");
    }
    assert_eq!(mtime(&bin_path), bin_time);
    assert_eq!(mtime(&config), config_time);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    assert_eq!(info["pid"].as_u64().unwrap(), pid, "the same service");
}
