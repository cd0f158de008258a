//! systemd's notify protocol: `READY=1` once the first reconcile is done, `WATCHDOG=1` from the
//! main loop, `STATUS=…` for `systemctl status`, `STOPPING=1` on the way out.
//!
//! A datagram to `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`). Outside
//! systemd the variable is unset and every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification; false when not under systemd or the socket refused it.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    sent.is_ok()
}

/// How often to send `WATCHDOG=1`: half of `WatchdogSec`, if the unit set one for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a real datagram socket, as systemd listens.
    #[test]
    fn messages_reach_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        // the variables are process-wide: set, use, restore within this one test
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "20000000");
        std::env::remove_var("WATCHDOG_PID");
        assert!(notify("READY=1\nSTATUS=watching 2 roots"));
        assert!(notify("WATCHDOG=1"));
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(10)));
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=watching 2 roots");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        // an abstract socket name
        let name = format!("beamflow-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let abs = UnixDatagram::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
        )
        .unwrap();
        abs.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        assert!(notify("STOPPING=1"));
        let n = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        assert!(!notify("READY=1"));
        assert_eq!(watchdog_interval(), None);
    }
}
