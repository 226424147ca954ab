//! `tenantd top` as a person sees it (issue 14): the real binary in a tmux pane against a
//! daemon on the v1 backend with three busy tenants, read back with `tmux capture-pane`. One
//! tenant's guarantee is left unmet on purpose: busy loops in a sibling directory of the
//! daemon's root, outside tenantd, with a larger `cpu.shares`, take the CPU its guarantee
//! promises, so the SLA column must say VIOLATION. Then a resize, `q`, the tree view and
//! Ctrl-C; after each exit the pane must be back on the normal screen.
//!
//! Needs tmux: the test fails, never skips, when it is missing.

use crate::support::{BUSY_LOOP, Owned, V1Daemon, bin};
use crate::usage::{scrape, series};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tmux server of the test's own (`tmux -S SOCKET` in a temporary directory), killed on
/// drop.
pub(crate) struct Tmux {
    pub(crate) socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    pub(crate) fn new() -> Tmux {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            other => panic!(
                "tmux is missing ({other:?}): install tmux (apt-get install tmux) to run the \
                 `tenantd top` test"
            ),
        }
        let dir = tempfile::tempdir().expect("tempdir");
        Tmux {
            socket: dir.path().join("tmux.sock"),
            _dir: dir,
        }
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The visible pane as text.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into()
    }

    /// Whether the pane shows the alternate screen (a full-screen program is running).
    fn alternate(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Waits until the screen satisfies `f`; panics with the last screen after `secs`.
    pub(crate) fn wait_for(&self, secs: u64, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs} s waiting for {what}; the pane shows:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The line of `tenant` on the screen (its name first, after a tree branch if any).
fn line<'a>(screen: &'a str, tenant: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        l.trim_start_matches(['└', ' '])
            .split_whitespace()
            .next()
            .is_some_and(|w| w == tenant)
    })
}

/// Busy loops in `<test dir>/outside` of the cpu hierarchy, beside the daemon's root, with
/// 4 × the root's `cpu.shares`: they take most of the CPU the tenants compete for.
fn outside_hogs(dir: &Path, n: usize) -> Vec<Owned> {
    std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    std::fs::write(dir.join("cpu.shares"), "4096").unwrap();
    (0..n)
        .map(|_| {
            let hog = Owned(
                Command::new("sh")
                    .args(["-c", BUSY_LOOP])
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            std::fs::write(dir.join("cgroup.procs"), hog.pid().to_string())
                .unwrap_or_else(|e| panic!("moving PID {} into {}: {e}", hog.pid(), dir.display()));
            hog
        })
        .collect()
}

#[test]
fn issue_14_top_under_tmux_shows_rows_numbers_and_the_violation_then_quits_cleanly() {
    let tmux = Tmux::new();
    let v = V1Daemon::start("top");
    let d = v.d();
    d.create(
        "alpha",
        json!({"labels": {"team": "a"}, "cpu": {"guarantee_pct": 50},
               "memory": {"guarantee_bytes": "64MiB", "protection": "soft", "limit_bytes": "1GiB"}}),
    );
    d.create(
        "beta",
        json!({"labels": {"team": "b"}, "cpu": {"guarantee_pct": 30, "limit_pct": 150}}),
    );
    d.create(
        "gamma",
        json!({"parent": "alpha", "labels": {"team": "a"}, "cpu": {"guarantee_pct": 40}}),
    );
    let mut busy = Vec::new();
    for t in ["alpha", "beta", "gamma"] {
        busy.extend(d.busy(t, 1));
    }
    let cpu_dir = v.dirs.roots.cpu.clone().expect("the cpu hierarchy");
    let _hogs = outside_hogs(&cpu_dir.join("outside"), 2);
    let (_, host) = d.call("GET", "/v1/host", None);
    let cpus = host["cpus"].as_f64().expect("cpus in /v1/host");

    // Two runs in one pane: q after the first, Ctrl-C in the tree view after the second; the
    // shell reports each exit status and then waits (for Enter after the first run, so the
    // second cannot cover the first's exit status before the test has read it).
    let top = format!("TENANTD_ADDR={} '{}' top --utc", d.addr, bin());
    let script = format!(
        "echo before-top; {top}; echo \"top exited $?\"; read go; {top} --tree -l team=a; \
         echo \"tree top exited $?\"; sleep 600"
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        "sh",
        "-c",
        &script,
    ]);

    let s = tmux.wait_for(30, "a row per tenant", |s| {
        ["alpha", "beta", "gamma"]
            .iter()
            .all(|t| line(s, t).is_some())
    });
    eprintln!("the pane at 160×40:\n{s}");
    assert!(tmux.alternate(), "top runs on the alternate screen:\n{s}");
    assert!(s.starts_with("tenantd top  "), "{s}");
    assert!(s.contains("CPU cores used/guar/limit"), "{s}");
    assert!(s.contains("q quit"), "{s}");

    // The numbers: cores used, the guarantee in cores (host CPUs × 50%; gamma 40% of that),
    // the limit, the guarantee as a share, the memory guarantee and limit.
    // PROCS: the busy loop of each, once placed.
    let s = tmux.wait_for(30, "CPU rates and one process for every tenant", |s| {
        ["alpha", "beta", "gamma"].iter().all(|t| {
            line(s, t).is_some_and(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words[1].parse::<f64>().is_ok() && words.last() == Some(&"1")
            })
        })
    });
    let alpha = line(&s, "alpha").unwrap();
    let g = format!("/ {:.2} / -", cpus * 0.5);
    assert!(alpha.contains(&g), "alpha guarantees {g}: {alpha}");
    assert!(alpha.contains("/ 50%"), "{alpha}");
    assert!(alpha.contains("/ 64 MiB / 1 GiB"), "{alpha}");
    let beta = line(&s, "beta").unwrap();
    assert!(
        beta.contains(&format!("/ {:.2} / 1.50", cpus * 0.3)),
        "{beta}"
    );
    let gamma = line(&s, "gamma").unwrap();
    assert!(
        gamma.contains(&format!("/ {:.2} / -", cpus * 0.5 * 0.4)),
        "{gamma}"
    );

    // alpha's 50% cannot be met while the outside loops take most of the CPU.
    let s = tmux.wait_for(90, "alpha in VIOLATION", |s| {
        line(s, "alpha").is_some_and(|l| l.contains("VIOLATION"))
    });
    eprintln!("the pane with alpha in violation:\n{s}");
    let violation_s = series(
        &scrape(d),
        "tenantd_tenant_sla_violation_seconds_total{tenant=\"alpha\"}",
    )
    .expect("alpha's violation seconds in /metrics");
    assert!(violation_s > 0.0, "the API agrees: {violation_s} s\n{s}");

    // Sorting: `s` moves to the next column, the status line says which.
    tmux.run(&["send-keys", "-t", "top", "s"]);
    tmux.wait_for(10, "sort share", |s| s.contains("sort share"));
    tmux.run(&["send-keys", "-t", "top", "<"]);
    tmux.wait_for(10, "sort cpu", |s| s.contains("sort cpu"));

    // A smaller window: redrawn at the new size.
    tmux.run(&["resize-window", "-t", "top", "-x", "100", "-y", "20"]);
    let s = tmux.wait_for(10, "the view redrawn at 100×20", |s| {
        s.lines().count() <= 20
            && s.lines().all(|l| l.chars().count() <= 100)
            && line(s, "alpha").is_some()
            && s.lines().any(|l| l.starts_with("q quit"))
    });
    eprintln!("the pane at 100×20:\n{s}");
    assert!(line(&s, "alpha").unwrap().contains("VIOLATION"), "{s}");

    // q: exit status 0, the normal screen back, nothing of top left on it.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let s = tmux.wait_for(30, "top's exit status", |s| s.contains("top exited"));
    eprintln!("the pane after q:\n{s}");
    assert!(s.contains("top exited 0"), "{s}");
    assert!(
        s.contains("before-top"),
        "the screen before top is back:\n{s}"
    );
    assert!(!s.contains("TENANT"), "top's table left behind:\n{s}");

    // The second run: the tree view filtered to team=a, then Ctrl-C.
    tmux.run(&["send-keys", "-t", "top", "Enter"]);
    let s = tmux.wait_for(30, "the tree of team a", |s| {
        line(s, "gamma").is_some_and(|l| l.starts_with("└ gamma"))
    });
    eprintln!("the tree view:\n{s}");
    assert!(tmux.alternate(), "{s}");
    assert!(line(&s, "alpha").is_some(), "{s}");
    assert!(line(&s, "beta").is_none(), "beta is not in team a:\n{s}");
    assert!(s.contains("filter team=a") && s.contains("tree"), "{s}");
    tmux.run(&["send-keys", "-t", "top", "C-c"]);
    let s = tmux.wait_for(30, "the tree top's exit status", |s| {
        s.contains("tree top exited")
    });
    assert!(s.contains("tree top exited 0"), "{s}");
    assert!(!tmux.alternate(), "the alternate screen was left:\n{s}");
    assert!(!s.contains("TENANT"), "{s}");

    // The busy loops ran all along.
    for b in &mut busy {
        assert!(b.alive());
    }
}
