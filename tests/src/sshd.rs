//! A real `sshd` on 127.0.0.1 for the tests, with generated host and user keys, its own
//! known_hosts and an ssh_config alias (`beamflow-test`) that the agent uses with `ssh -F`.

use crate::{wait_until, Proc};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The host alias in the generated ssh_config.
pub const ALIAS: &str = "beamflow-test";

/// A running sshd (killed when dropped).
pub struct Sshd {
    /// Keys, configs, logs.
    pub dir: PathBuf,
    /// Its port.
    pub port: u16,
    /// ssh_config with the alias, the user key and strict host key checking.
    pub ssh_config: PathBuf,
    /// The daemon.
    pub proc: Proc,
    _tmp: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // masters opened with this sshd's ssh_config would linger for their ControlPersist
        crate::kill_processes_of(&self.dir);
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(path)
        .stdout(Stdio::null())
        .status();
    assert!(
        st.is_ok_and(|s| s.success()),
        "ssh-keygen failed (apt-get install openssh-client)"
    );
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Sshd {
    /// Starts sshd; fails (never skips) when it cannot, because the test command installs it.
    pub fn start() -> Sshd {
        Self::start_with("")
    }

    /// Starts sshd with extra sshd_config lines (a `ForceCommand` that prints a banner first,
    /// for instance, the way a chatty login script does).
    pub fn start_with(extra: &str) -> Sshd {
        Self::start_at(None, "127.0.0.1", extra)
    }

    /// Starts sshd inside a network namespace (`netns`, made by the test) listening on
    /// `addr`, one of that namespace's addresses; the ssh_config alias points there.
    pub fn start_at(netns: Option<&str>, addr: &str, extra: &str) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "/usr/sbin/sshd is missing: tests/run.sh installs openssh-server"
        );
        // short path: control sockets live here and must fit in 108 bytes
        let tmp = tempfile::Builder::new()
            .prefix("bfssh")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        keygen(&dir.join("host_key"));
        keygen(&dir.join("user_key"));
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress {addr}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nMaxSessions 20\nLogLevel ERROR\nSubsystem sftp internal-sftp\n{extra}",
                d = dir.display()
            ),
        )
        .unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(sshd);
                c
            }
            None => Command::new(sshd),
        };
        let child = cmd
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let proc = Proc {
            child,
            what: "sshd".into(),
        };
        wait_until(Duration::from_secs(10), "sshd to listen", || match netns {
            // out of reach from here: sshd writes its pid file once it listens
            Some(_) => dir.join("sshd.pid").exists(),
            None => std::net::TcpStream::connect((addr, port)).is_ok(),
        });
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        std::fs::write(
            dir.join("known_hosts"),
            format!("[{addr}]:{port} {host_pub}"),
        )
        .unwrap();
        let ssh_config = dir.join("ssh_config");
        std::fs::write(
            &ssh_config,
            format!(
                "Host {ALIAS}\n  HostName {addr}\n  Port {port}\n  User {u}\n  IdentityFile {d}/user_key\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n",
                u = user(),
                d = dir.display()
            ),
        )
        .unwrap();
        Sshd {
            dir,
            port,
            ssh_config,
            proc,
            _tmp: tmp,
        }
    }

    /// `[link]` lines for a site: transport ssh to this sshd, the collector started over it.
    pub fn link_toml(
        &self,
        site_config: &Path,
        master: &str,
        control_path: Option<&Path>,
        keepalive: &str,
    ) -> String {
        let collector = crate::bin("beamflow-collector");
        let mut t = format!(
            "transport = \"ssh\"\nhost = \"{ALIAS}\"\nssh_config = \"{}\"\nmaster = \"{master}\"\nkeepalive = \"{keepalive}\"\ncommand = [\"{}\", \"serve\", \"--stdio\", \"--config\", \"{}\"]\n",
            self.ssh_config.display(),
            collector.display(),
            site_config.display()
        );
        if let Some(p) = control_path {
            t.push_str(&format!("control_path = \"{}\"\n", p.display()));
        }
        t
    }

    /// Makes known_hosts hold another key for this host, as after a host's key changed (or
    /// a machine in the middle answered): every connection must then be refused.
    pub fn distrust_host_key(&self) {
        let other = self.dir.join("other_key");
        keygen(&other);
        let wrong = std::fs::read_to_string(other.with_extension("pub")).unwrap();
        let known = self.dir.join("known_hosts");
        let host = std::fs::read_to_string(&known).unwrap();
        let host = host.split_whitespace().next().unwrap().to_string();
        std::fs::write(known, format!("{host} {wrong}")).unwrap();
    }

    /// Opens a master the way a person would (`ssh -M -N -f`), at `ctl`.
    pub fn open_master(&self, ctl: &Path) {
        let st = Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .args([
                "-M",
                "-N",
                "-f",
                "-o",
                "ControlPersist=yes",
                "-o",
                "ServerAliveInterval=1",
            ])
            .arg("-S")
            .arg(ctl)
            .arg(ALIAS)
            .status()
            .expect("ssh");
        assert!(st.success(), "could not open an SSH master");
    }

    /// Asks a master at `ctl`: `check` or `exit`.
    pub fn master(&self, ctl: &Path, op: &str) -> bool {
        Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .arg("-S")
            .arg(ctl)
            .args(["-O", op, ALIAS])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}
