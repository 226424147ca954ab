//! Running as a system service (issue 14), against `tenantd serve` on a real socket (v1 backend
//! on this host): logs without ANSI codes in a file and as JSON lines on request; SIGHUP
//! reloads the token file, keeping the tokens in force when the new file is bad; the systemd
//! notification protocol (READY, STATUS, RELOADING, WATCHDOG, STOPPING) on a real datagram
//! socket in the abstract namespace.

use crate::support::{Daemon, V1Dirs, bin, eventually, free_port};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `tenantd serve` (v1, inside `dirs`) with `extra` flags, logging to
/// `<tmp>/daemon-<port>.log`; waits for /healthz.
fn launch(dirs: &V1Dirs, extra: &[&str]) -> Daemon {
    Daemon::launch(dirs.tmp.path(), |port| {
        dirs.inside(&serve_args(dirs, port, extra))
    })
}

fn serve_args(dirs: &V1Dirs, port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = vec![bin().to_string()];
    args.extend(V1Dirs::serve_args(port, &dirs.db()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The daemon's log so far.
fn log_of(dirs: &V1Dirs, d: &Daemon) -> String {
    let port = d.addr.rsplit(':').next().unwrap();
    let path = dirs.tmp.path().join(format!("daemon-{port}.log"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn signal(d: &Daemon, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(d.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).expect("signal the daemon");
}

/// SIGTERM, then waits (10 s at most) for a clean exit.
fn stop(d: &mut Daemon) {
    signal(d, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            assert!(status.success(), "tenantd serve exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests that log something: a refused tenant (422) and an unknown one (404).
fn exercise(d: &Daemon) {
    let (s, _) = d.call("PUT", "/v1/tenants/Bad_Name", Some(serde_json::json!({})));
    assert_eq!(s, 422);
    let (s, _) = d.call("GET", "/v1/tenants/nobody", None);
    assert_eq!(s, 404);
}

#[test]
fn issue_14_logs_in_a_file_carry_no_ansi_codes() {
    let dirs = V1Dirs::create("svc-text");
    let mut d = launch(&dirs, &[]);
    exercise(&d);
    stop(&mut d);
    let log = log_of(&dirs, &d);
    assert!(log.contains("INFO"), "the log has lines: {log}");
    assert!(log.contains("serving on http://"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "an ESC byte in a log written to a file:\n{log:?}"
    );
}

#[test]
fn issue_14_log_format_json_is_one_object_per_line() {
    let dirs = V1Dirs::create("svc-json");
    let mut d = launch(&dirs, &["--log-format", "json"]);
    exercise(&d);
    stop(&mut d);
    let log = log_of(&dirs, &d);
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "a few lines at least: {log}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}"));
        assert!(v["message"].is_string(), "no message: {line}");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .contains(&v["level"].as_str().unwrap_or("")),
            "no level: {line}"
        );
        assert!(v["timestamp"].is_string(), "no timestamp: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("serving on http://")),
        "{log}"
    );
    // The env var picks the format too, and a bad value is one line and a non-zero exit.
    let out = dirs
        .inside(&serve_args(&dirs, free_port(), &[]))
        .env("TENANTD_LOG_FORMAT", "xml")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'xml'"), "{err}");
}

const TOKEN_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
const TOKEN_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";

/// Writes the token file as an operator rotates it: a new file renamed over the old one.
fn write_tokens(path: &Path, text: &str, mode: u32) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The `daemon_reload` events, newest first, once there are `n` (each is recorded just after
/// its reload's log lines).
fn reload_events(d: &Daemon, token: Option<&str>, n: usize) -> Vec<serde_json::Value> {
    let mut ev = Vec::new();
    eventually(10, &format!("{n} daemon_reload events"), || {
        let mut req = d.http.get(d.url("/v1/events?kind=daemon_reload"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let body: serde_json::Value = req.send().unwrap().json().unwrap();
        ev = body.as_array().expect("a list of events").clone();
        ev.len() >= n
    });
    assert_eq!(ev.len(), n, "{ev:?}");
    ev
}

fn status_with(d: &Daemon, token: &str) -> u16 {
    d.http
        .get(d.url("/v1/tenants"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Sends SIGHUP and waits for one more log line that contains `says`; returns the last.
fn reload_until(dirs: &V1Dirs, d: &Daemon, says: &str) -> String {
    let before = log_of(dirs, d).matches(says).count();
    signal(d, rustix::process::Signal::HUP);
    let mut log = String::new();
    eventually(
        10,
        &format!("a log line with {says:?} after SIGHUP"),
        || {
            log = log_of(dirs, d);
            log.matches(says).count() > before
        },
    );
    log.lines().rfind(|l| l.contains(says)).unwrap().to_string()
}

#[test]
fn issue_14_sighup_rotates_the_token_file_and_keeps_it_when_the_new_one_is_broken() {
    let dirs = V1Dirs::create("svc-hup");
    let tokens: PathBuf = dirs.tmp.path().join("tokens");
    write_tokens(&tokens, &format!("ops admin {TOKEN_A}\n"), 0o600);
    let token_flag = tokens.display().to_string();
    let mut d = launch(&dirs, &["--token-file", &token_flag]);
    assert_eq!(status_with(&d, TOKEN_A), 200);
    assert_eq!(status_with(&d, TOKEN_B), 401);

    // Rotated: the old token is refused, the new one accepted, the log names what changed.
    write_tokens(
        &tokens,
        &format!("ops admin {TOKEN_B}\nci viewer {TOKEN_A}x\n"),
        0o600,
    );
    let line = reload_until(&dirs, &d, &format!("token file {token_flag}: "));
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("2 tokens; added: ci; changed: ops"), "{line}");
    assert!(!line.contains(TOKEN_B), "tokens are never logged: {line}");
    assert_eq!(status_with(&d, TOKEN_A), 401);
    assert_eq!(status_with(&d, TOKEN_B), 200);

    // Broken in two ways: each time the tokens in force stay, and the log says why.
    for (text, mode, why) in [
        (
            "ops admin short\n".to_string(),
            0o600,
            "line 1: the token of 'ops' is shorter than 16 characters",
        ),
        (
            format!("ops admin {TOKEN_A}\n"),
            0o644,
            "is readable by others (mode 0644)",
        ),
    ] {
        write_tokens(&tokens, &text, mode);
        let line = reload_until(&dirs, &d, "the tokens in force stay");
        assert!(line.contains(" ERROR "), "{line}");
        assert!(line.contains(&format!("token file {token_flag}")), "{line}");
        assert!(line.contains(why), "{line}");
        assert!(d.child.try_wait().unwrap().is_none(), "the daemon runs on");
        assert_eq!(status_with(&d, TOKEN_B), 200);
        assert_eq!(status_with(&d, TOKEN_A), 401);
    }

    // Gone: the same.
    std::fs::remove_file(&tokens).unwrap();
    let line = reload_until(&dirs, &d, "the tokens in force stay");
    assert!(line.contains("cannot read token file"), "{line}");
    assert_eq!(status_with(&d, TOKEN_B), 200);

    // Every reload is a `daemon_reload` event, newest first.
    let ev = reload_events(&d, Some(TOKEN_B), 4);
    let rotated = &ev[3]["detail"];
    assert_eq!(
        rotated["applied"],
        serde_json::json!([format!(
            "token file {token_flag}: 2 tokens; added: ci; changed: ops"
        )]),
        "{rotated}"
    );
    assert_eq!(rotated["failed"], serde_json::json!([]), "{rotated}");
    let failed = ev[0]["detail"]["failed"][0].as_str().unwrap_or_default();
    assert!(failed.starts_with("cannot read token file"), "{failed}");
    assert_eq!(ev[0]["detail"]["applied"], serde_json::json!([]));
    stop(&mut d);
}

#[test]
fn issue_14_sighup_reloads_the_log_level_and_names_keys_that_need_a_restart() {
    let dirs = V1Dirs::create("svc-conf");
    let conf = dirs.tmp.path().join("tenantd.toml");
    std::fs::write(&conf, "log_level = 'info'\n").unwrap();
    let conf_flag = conf.display().to_string();
    // Without TENANTD_LOG (the harness sets it otherwise, and it beats the file).
    let mut d = Daemon::launch(dirs.tmp.path(), |port| {
        let mut c = dirs.inside(&serve_args(&dirs, port, &["--config", &conf_flag]));
        c.env_remove("TENANTD_LOG");
        c
    });
    std::fs::write(
        &conf,
        "log_level = 'warn'\nreconcile_interval_s = 60\nmax_body_bytes = 2048\n",
    )
    .unwrap();
    let line = reload_until(&dirs, &d, "which takes effect at the next restart");
    assert!(
        line.contains(&format!(
            "config file {conf_flag}: max_body_bytes, reconcile_interval_s changed"
        )),
        "{line}"
    );
    let log = log_of(&dirs, &d);
    assert!(log.contains("reload: log_level 'info' -> 'warn'"), "{log}");
    let ev = reload_events(&d, None, 1);
    assert_eq!(
        ev[0]["detail"],
        serde_json::json!({
            "applied": ["log_level 'info' -> 'warn'"],
            "restart_needed": ["max_body_bytes", "reconcile_interval_s"],
            "failed": [],
        }),
        "{ev:?}"
    );
    // A broken file keeps the configuration in force (warn still shows errors and warnings).
    std::fs::write(&conf, "log_level = 'tenantd=loud'\n").unwrap();
    let line = reload_until(&dirs, &d, "the configuration in force stays");
    assert!(line.contains(" ERROR "), "{line}");
    assert!(
        line.contains(&format!(
            "config file {conf_flag}: log_level: 'tenantd=loud'"
        )),
        "{line}"
    );
    std::fs::write(&conf, "log_level = [\n").unwrap();
    let line = reload_until(&dirs, &d, "the configuration in force stays");
    assert!(
        line.contains(&format!("config file {conf_flag}: ")),
        "{line}"
    );
    // At warn, a good reload's info lines are filtered out: the level in force is warn.
    let before = log_of(&dirs, &d).matches("reload: SIGHUP received").count();
    std::fs::write(&conf, "log_level = 'warn'\nreconcile_interval_s = 60\n").unwrap();
    let _ = reload_until(&dirs, &d, "which takes effect at the next restart");
    let log = log_of(&dirs, &d);
    assert_eq!(
        log.matches("reload: SIGHUP received").count(),
        before,
        "{log}"
    );
    assert_eq!(status(&d, "/v1/host"), 200);
    stop(&mut d);
}

fn status(d: &Daemon, path: &str) -> u16 {
    d.http.get(d.url(path)).send().unwrap().status().as_u16()
}

/// The datagrams a test socket receives, each as text.
struct Notifications(UnixDatagram);

impl Notifications {
    /// The next datagram within `secs`, or a panic naming `waiting_for`.
    fn next(&self, secs: u64, waiting_for: &str) -> String {
        self.0
            .set_read_timeout(Some(Duration::from_secs(secs)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = self.0.recv(&mut buf).unwrap_or_else(|e| {
            panic!("no notification within {secs} s ({e}) waiting for {waiting_for}")
        });
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// Datagrams until one with the line `line`, which is returned; `seen` gets the others.
    fn until(&self, line: &str, seen: &mut Vec<String>) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .max(1);
            let m = self.next(left, line);
            if m.lines().any(|l| l == line) {
                return m;
            }
            seen.push(m);
        }
    }
}

#[test]
fn issue_14_systemd_notify_ready_watchdog_reload_stopping() {
    let dirs = V1Dirs::create("svc-notify");
    let name = format!("tenantd-test-notify-{}", std::process::id());
    let sock =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let notes = Notifications(sock);
    let port = free_port();
    let log_path = dirs.tmp.path().join(format!("daemon-{port}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    // Started by hand: `Daemon::launch` waits for /healthz, and READY must be seen first.
    let child = dirs
        .inside(&serve_args(&dirs, port, &[]))
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child,
        addr: format!("http://127.0.0.1:{port}"),
        log_path,
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    let mut before = Vec::new();
    let ready = notes.until("READY=1", &mut before);
    // The API answers as soon as READY=1 is sent.
    assert_eq!(status(&d, "/v1/host"), 200, "/v1/host right after READY=1");
    assert!(
        ready.contains("STATUS=serving on http://127.0.0.1:"),
        "{ready}"
    );
    assert!(
        before
            .iter()
            .any(|m| m.starts_with("STATUS=opening the database")),
        "a STATUS line while starting: {before:?}"
    );

    // WATCHDOG=1 every 0.2 s (half of WATCHDOG_USEC): several within 1.5 s.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        if notes.next(5, "WATCHDOG=1") == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!((4..=12).contains(&pings), "{pings} pings in 1.5 s");

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 again.
    signal(&d, rustix::process::Signal::HUP);
    let mut seen = Vec::new();
    let reloading = notes.until("RELOADING=1", &mut seen);
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "{usec} vs {now_usec}"
    );
    let again = notes.until("READY=1", &mut seen);
    assert!(again.contains("STATUS=serving"), "{again}");

    // SIGTERM: STOPPING=1, then a clean exit.
    signal(&d, rustix::process::Signal::TERM);
    let stopping = notes.until("STOPPING=1", &mut seen);
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    stop_waiting(&mut d);
}

/// Waits for the exit a SIGTERM already asked for.
fn stop_waiting(d: &mut Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.child.wait().unwrap().success());
}
