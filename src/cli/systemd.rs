//! The systemd notification protocol (`sd_notify(3)`) without libsystemd: datagrams of
//! `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace), and the watchdog period from `WATCHDOG_USEC`/`WATCHDOG_PID`. Without
//! `NOTIFY_SOCKET` every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go; `None` when the daemon was not started by a service manager.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr, String)>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; an address it cannot use is logged once and ignored.
    pub fn from_env() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let name = name.to_string_lossy().into_owned();
        let target = socket_addr(&name).and_then(|addr| {
            let sock = UnixDatagram::unbound()
                .map_err(|e| format!("cannot create a datagram socket: {e}"))?;
            Ok((sock, addr, name.clone()))
        });
        match target {
            Ok(t) => Notifier { target: Some(t) },
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={name}: {e}; systemd is not notified");
                Notifier { target: None }
            }
        }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines). A failure is logged, not fatal:
    /// the service manager may be gone while the daemon still serves.
    pub fn send(&self, state: &str) {
        let Some((sock, addr, name)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
            tracing::warn!("cannot notify systemd at {name}: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// `RELOADING=1` with the monotonic time `Type=notify-reload` expects; `ready` ends it.
    pub fn reloading(&self) {
        let usec = crate::cgroup::proc_connector::monotonic_now().as_micros();
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading"
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// `NOTIFY_SOCKET`'s value as an address: `/path` or `@abstract-name`.
fn socket_addr(name: &str) -> Result<SocketAddr, String> {
    let addr = match name.as_bytes() {
        [b'@', abstract_name @ ..] => SocketAddr::from_abstract_name(abstract_name),
        [b'/', ..] => SocketAddr::from_pathname(name),
        _ => return Err("not an absolute path or an '@' abstract socket name".into()),
    };
    addr.map_err(|e| format!("not a usable socket address: {e}"))
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set, positive and meant
/// for this process (`WATCHDOG_PID` unset or equal to `own_pid`).
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(own_pid)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// `watchdog_period` from this process's environment.
pub fn watchdog_period_from_env() -> Option<Duration> {
    let var = |k: &str| std::env::var(k).ok();
    watchdog_period(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_period_is_half_the_timeout_and_only_for_this_pid() {
        let half = Some(Duration::from_secs(5));
        assert_eq!(watchdog_period(Some("10000000"), None, 42), half);
        assert_eq!(watchdog_period(Some("10000000"), Some("42"), 42), half);
        assert_eq!(watchdog_period(Some("10000000"), Some("41"), 42), None);
        assert_eq!(watchdog_period(Some("10000000"), Some("x"), 42), None);
        assert_eq!(watchdog_period(Some("0"), None, 42), None);
        assert_eq!(watchdog_period(Some("ten"), None, 42), None);
        assert_eq!(watchdog_period(None, None, 42), None);
    }

    #[test]
    fn notify_socket_addresses() {
        let a = socket_addr("@tenantd/notify").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"tenantd/notify"[..]));
        let p = socket_addr("/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(socket_addr("run/notify").is_err());
        assert!(socket_addr("vsock:2:1234").is_err());
    }

    /// A real datagram socket in the abstract namespace receives what `send` writes.
    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("tenantd-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), addr, format!("@{name}"))),
        };
        n.reloading();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(
            got.starts_with("RELOADING=1\nMONOTONIC_USEC=") && got.ends_with("\nSTATUS=reloading"),
            "{got}"
        );
    }
}
