//! Placement rules driven by the kernel's process events (issue 17), in the cgroup v2 VM: the
//! daemon runs in the VM's initial PID namespace (the kernel takes a proc connector
//! subscription only there; the VM is thrown away and every process a rule can name here is
//! one this test starts, under a uid nothing else uses, or with a command line nothing else
//! has), with a rescan interval far beyond the test, so a process placed in time was placed
//! from an exec or uid event. With the events off, the rescan alone places it.
//!
//! The issue's "within 100 ms" is measured, not assumed, and does not hold here: the VM is
//! emulated (TCG, many times slower than the host, and shared with other work), where an
//! exec or a uid change reaches its tenant in 40-520 ms (README, "Placement rules"). The test
//! prints every latency, how many were within 100 ms, and asserts the bound this VM holds
//! (`EVENT_BOUND`, 1 s); the host's numbers are `benches/placement.sh`'s.

use crate::support::{Daemon, Owned, TestRoot, cgroup_of, eventually};
use crate::usage::{scrape, series};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A uid no process of the VM has but the test's.
const ACCOUNT_UID: u32 = 4242;

/// What an event-driven placement is held to in the emulated VM (exec or uid change to the
/// process in its tenant). The issue asks for 100 ms, which this VM does not hold (p50
/// 100-210 ms, up to 520 ms, in runs on a loaded host), so the bound is 1 s.
const EVENT_BOUND: Duration = Duration::from_millis(1000);

/// Processes timed per case.
const SAMPLES: usize = 10;

fn in_tenant(pid: u32, tenant: &str) -> bool {
    cgroup_of(pid).contains(&format!("/{tenant}/"))
}

/// `args`, owned (killed at the end of the test); `spawn` returns once it exec'd.
fn start(args: &[&str], stdin: Stdio) -> Owned {
    Owned(
        Command::new(args[0])
            .args(&args[1..])
            .stdin(stdin)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}")),
    )
}

/// `setpriv` to the account's uid and gid, no supplementary groups, then `args`.
fn as_account<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"];
    v.extend_from_slice(args);
    v
}

/// The real uid of `pid`, from /proc/PID/status.
fn ruid(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// When a watched process was seen with the account's uid, and in its tenant, after `t0`.
struct Seen {
    uid: Option<Duration>,
    placed: Duration,
}

/// Looks at `pid` every millisecond until it is in `tenant` (panics after `secs`).
fn watch(pid: u32, tenant: &str, t0: Instant, secs: u64, d: &Daemon) -> Seen {
    let mut uid = None;
    loop {
        if uid.is_none() && ruid(pid) == Some(ACCOUNT_UID) {
            uid = Some(t0.elapsed());
        }
        if in_tenant(pid, tenant) {
            let placed = t0.elapsed();
            // The uid change and the move between two looks: seen together.
            if uid.is_none() && ruid(pid) == Some(ACCOUNT_UID) {
                uid = Some(placed);
            }
            return Seen { uid, placed };
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            panic!(
                "PID {pid} not in tenant {tenant} after {secs} s (cgroup {}); daemon log:\n{}",
                cgroup_of(pid),
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// "p50 X ms, max Y ms, Z of N within 100 ms" of some latencies.
fn summary(v: &[Duration]) -> String {
    let mut s = v.to_vec();
    s.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.1} ms, max {:.1} ms, {} of {} within 100 ms (all: {:?} ms)",
        ms(s[s.len() / 2]),
        ms(s[s.len() - 1]),
        s.iter()
            .filter(|d| **d <= Duration::from_millis(100))
            .count(),
        s.len(),
        s.iter()
            .map(|d| (ms(*d) * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    )
}

fn explain(d: &Daemon, pid: u32) -> Value {
    let (s, body) = d.call("GET", &format!("/v1/placement/explain?pid={pid}"), None);
    assert_eq!(s, 200, "explain {pid}: {body}");
    body
}

/// Asserts explain's tenant and action for `pid`: `outcome` (`placed`, `already_there`,
/// `no_rule`) or `left` with `why`.
fn explains(d: &Daemon, pid: u32, tenant: Option<&str>, outcome: &str, why: Option<&str>) {
    let e = explain(d, pid);
    assert_eq!(e["process"]["pid"], pid, "{e}");
    assert_eq!(e["decision"]["tenant"].as_str(), tenant, "{e}");
    assert_eq!(e["action"]["outcome"], outcome, "{e}");
    assert_eq!(e["action"]["why"].as_str(), why, "{e}");
}

/// Starts the daemon with the events on and the next rescan an hour away, and the rules: the
/// account by uid, a CI job by exe and command line (more specific: it wins over the uid),
/// and a tenant without a rule for processes placed by hand.
fn daemon_with_rules(root: &TestRoot) -> Daemon {
    let d = Daemon::start_with(root, &["--placement-rescan-s", "3600"]);
    d.create("acct", json!({"placement": {"uids": [ACCOUNT_UID]}}));
    // The reader starts with the first rule (issue 15).
    eventually(10, "the reader of process events started", || {
        d.log().contains("listening to the kernel's process events")
    });
    d.create(
        "ci",
        json!({"placement": {"exe": ["/**/bin/sleep"], "cmdline": "\\x00612\\.5$"}}),
    );
    d.create("other", json!({}));
    // The rules' own rescans have run (they find nothing); the next is an hour away.
    std::thread::sleep(Duration::from_millis(500));
    d
}

/// Whether the daemon `pid` runs the reader thread of the kernel's process events.
fn reader_thread(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "tenantd-procev")
        })
}

/// Issue 15 (sampling CPU): the daemon listens to the kernel's process events (which wake it
/// for every fork, exec and exit of the host) only while a placement rule is in force: not at
/// a start without rules, from the first rule on, not after the last rule went, and again
/// with a new rule. Seen in the log and in the daemon's threads (`tenantd-procev`). On this
/// host, in the initial namespaces, so the subscription is real; the rule names a command
/// line no process has.
#[test]
fn issue_15_process_events_are_listened_to_only_while_a_rule_is_in_force() {
    let dirs = crate::support::V1Dirs::create("procev-gate");
    let mut d = dirs.launch(&dirs.db());
    let pid = d.child.id();
    eventually(10, "the start without rules is logged", || {
        d.log()
            .contains("no placement rule is in force: not listening to the kernel's process events")
    });
    let listening = |d: &Daemon| {
        d.log()
            .matches("listening to the kernel's process events (exec")
            .count()
    };
    assert_eq!(listening(&d), 0, "{}", d.log());
    assert!(!reader_thread(pid), "no reader thread without a rule");
    let rule = json!({"placement": {"cmdline": format!("^tenantd-test-never-{pid}\\x00")}});
    for round in 1..=2 {
        d.create("ruled", rule.clone());
        eventually(10, "the reader starts with the first rule", || {
            listening(&d) == round
        });
        assert!(
            !d.log().contains("process events are unavailable"),
            "this test needs the proc connector (root, initial namespaces): {}",
            d.log()
        );
        // (The thread names itself once it runs.)
        eventually(5, "the reader thread runs while a rule is in force", || {
            reader_thread(pid)
        });
        let (s, b) = d.call("DELETE", "/v1/tenants/ruled", None);
        assert!(s == 200 || s == 204, "{s} {b}");
        eventually(10, "the reader stops with the last rule", || {
            d.log()
                .matches("stopped listening to the kernel's process events")
                .count()
                == round
        });
        eventually(5, "the reader thread is gone", || !reader_thread(pid));
    }
    d.kill9();
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn issue_17_process_events_place_at_exec_and_at_a_uid_change() {
    let root = TestRoot::new("procev");
    let d = daemon_with_rules(&root);

    // Started as the account: setpriv changes the uid (an event), then execs sleep (another).
    // `spawn` returns once setpriv exec'd; its uid change comes after its own start-up.
    let (mut from_spawn, mut from_uid) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        let t0 = Instant::now();
        let p = start(&as_account(&["sleep", "600"]), Stdio::null());
        let seen = watch(p.pid(), "acct", t0, 10, &d);
        from_spawn.push(seen.placed);
        from_uid.push(seen.placed - seen.uid.expect("placed with the account's uid"));
        explains(&d, p.pid(), Some("acct"), "already_there", None);
    }
    println!(
        "started as the account (setpriv --reuid): setpriv's exec to placed: {}",
        summary(&from_spawn)
    );
    println!(
        "  its uid change as first seen (polled every 1 ms) to placed: {}",
        summary(&from_uid)
    );

    // A matching exe and command line (root): `spawn` returns once sleep exec'd.
    let mut from_exec = Vec::new();
    for _ in 0..SAMPLES {
        let t0 = Instant::now();
        let p = start(&["sleep", "612.5"], Stdio::null());
        let spawned = t0.elapsed();
        let seen = watch(p.pid(), "ci", t0, 10, &d);
        from_exec.push(seen.placed - spawned);
        explains(&d, p.pid(), Some("ci"), "already_there", None);
    }
    println!(
        "a matching exe and cmdline: exec to placed: {}",
        summary(&from_exec)
    );
    // The bound is on the event's path (exec or uid change to placed); setpriv's own start-up
    // before its uid change (its binary and libraries read over 9p, emulated) is only printed.
    for v in [&from_uid, &from_exec] {
        assert!(
            v.iter().all(|l| *l < EVENT_BOUND),
            "an event-driven placement took longer than {EVENT_BOUND:?}: {}",
            summary(v)
        );
    }

    // Started as root, then it changes its uid: left at first, placed at the change.
    let mut q = start(
        &[
            "sh",
            "-c",
            "read x; exec setpriv --reuid=4242 --regid=4242 --clear-groups sleep 600",
        ],
        Stdio::piped(),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !in_tenant(q.pid(), "acct"),
        "a root process no rule names stays where it is: {}",
        cgroup_of(q.pid())
    );
    explains(&d, q.pid(), None, "no_rule", None);
    let t0 = Instant::now();
    q.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let seen = watch(q.pid(), "acct", t0, 10, &d);
    let uid_at = seen.uid.expect("placed with the account's uid");
    println!(
        "changed its uid after start: placed {:.1} ms after the test let it go, {:.1} ms after the change was first seen",
        seen.placed.as_secs_f64() * 1000.0,
        (seen.placed - uid_at).as_secs_f64() * 1000.0
    );
    assert!(
        seen.placed - uid_at < EVENT_BOUND,
        "{:?}",
        seen.placed - uid_at
    );
    explains(&d, q.pid(), Some("acct"), "already_there", None);

    // Every one of those placements came through the events (the rescan is an hour away), and
    // each is in the latency histogram, within its bounds: 2 x SAMPLES + 1 at least (a setpriv
    // caught between its uid change and its exec is placed at the first event).
    let metrics = scrape(&d);
    let value = |name: &str| -> f64 {
        series(&metrics, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
    };
    let count = value("tenantd_placement_latency_seconds_count");
    assert!(count >= (2 * SAMPLES + 1) as f64, "{count}\n{metrics}");
    assert_eq!(
        value("tenantd_placement_latency_seconds_bucket{le=\"+Inf\"}"),
        count
    );
    // The bucket of EVENT_BOUND (1 s).
    assert_eq!(EVENT_BOUND, Duration::from_secs(1));
    assert_eq!(
        value("tenantd_placement_latency_seconds_bucket{le=\"1.0\"}"),
        count,
        "a placement over {EVENT_BOUND:?} from its event\n{metrics}"
    );
    let sum = value("tenantd_placement_latency_seconds_sum");
    assert!(
        sum > 0.0 && sum < count,
        "sum {sum} s for {count} placements"
    );
    println!(
        "tenantd_placement_latency_seconds: {count} placements, mean {:.2} ms",
        sum / count * 1000.0
    );

    // Of another uid: stays, and explain says which field each rule missed.
    let r = start(
        &[
            "setpriv",
            "--reuid=4343",
            "--regid=4343",
            "--clear-groups",
            "sleep",
            "600",
        ],
        Stdio::null(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!in_tenant(r.pid(), "acct"), "{}", cgroup_of(r.pid()));
    assert!(!in_tenant(r.pid(), "ci"), "{}", cgroup_of(r.pid()));
    explains(&d, r.pid(), None, "no_rule", None);
    let e = explain(&d, r.pid());
    let missed: Vec<(String, String)> = e["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let m = &v["misses"][0]["field"];
            (
                v["tenant"].as_str().unwrap().into(),
                m.as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        missed,
        [
            ("ci".into(), "cmdline".into()),
            ("acct".into(), "uids".into())
        ],
        "{e}"
    );

    // A forked child of a placed process stays with its parent, though it execs a program
    // another tenant's rule names (an exec event the placer sees).
    let mut parent = start(
        &as_account(&["sh", "-c", "read x; sleep 612.5; true"]),
        Stdio::piped(),
    );
    watch(parent.pid(), "acct", Instant::now(), 10, &d);
    parent.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut child = 0;
    eventually(10, "the child sleep", || {
        child = crate::placement::descendants(parent.pid())
            .into_iter()
            .find(|&p| crate::placement::comm(p) == "sleep")
            .unwrap_or(0);
        child != 0
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        in_tenant(child, "acct"),
        "the child stays with its parent: {}",
        cgroup_of(child)
    );
    explains(&d, child, Some("ci"), "left", Some("in_tenant"));

    // Placed by hand, then it changes its uid and execs (two events): it stays where it was
    // put, though the uid rule names it now.
    let mut h = start(
        &[
            "sh",
            "-c",
            "read x; exec setpriv --reuid=4242 --regid=4242 --clear-groups sleep 600",
        ],
        Stdio::piped(),
    );
    let (s, body) = d.call(
        "POST",
        "/v1/tenants/other/procs",
        Some(json!({"pid": h.pid()})),
    );
    assert_eq!(s, 201, "{body}");
    h.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    eventually(
        10,
        "the hand-placed process runs sleep as the account",
        || ruid(h.pid()) == Some(ACCOUNT_UID) && crate::placement::comm(h.pid()) == "sleep",
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(in_tenant(h.pid(), "other"), "{}", cgroup_of(h.pid()));
    explains(&d, h.pid(), Some("acct"), "left", Some("placed_by_hand"));

    let (_, ev) = d.call("GET", "/v1/events?kind=process_placed", None);
    let count: u64 = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"]["count"].as_u64().unwrap())
        .sum();
    assert!(
        count > 2 * SAMPLES as u64,
        "every placement is counted in a process_placed event: {ev}"
    );
    drop((q, r, parent, h));
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn issue_17_without_process_events_the_rescan_places_within_its_interval() {
    let root = TestRoot::new("procev-off");
    let every = Duration::from_secs(4);
    let d = Daemon::start_with(&root, &["--placement-rescan-s", "4", "--no-process-events"]);
    eventually(10, "the log says events are off", || {
        d.log().contains("process events off")
    });
    d.create("acct", json!({"placement": {"uids": [ACCOUNT_UID]}}));
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let p = start(&as_account(&["sleep", "600"]), Stdio::null());
    eventually(10, "sleep runs as the account", || {
        ruid(p.pid()) == Some(ACCOUNT_UID) && crate::placement::comm(p.pid()) == "sleep"
    });
    // Not placed yet (the rescan is due about 3.5 s after the spawn): explain says it would be.
    if t0.elapsed() < Duration::from_secs(2) && !in_tenant(p.pid(), "acct") {
        explains(&d, p.pid(), Some("acct"), "placed", None);
    }
    // Placed by the rescan: within one interval, plus the rescan's own time in the VM.
    let seen = watch(p.pid(), "acct", t0, 10, &d);
    println!(
        "events off: placed {:.0} ms after the spawn by the rescan (every {} s)",
        seen.placed.as_secs_f64() * 1000.0,
        every.as_secs()
    );
    assert!(
        seen.placed < every + Duration::from_millis(1500),
        "not placed within one rescan interval: {:?}",
        seen.placed
    );
    explains(&d, p.pid(), Some("acct"), "already_there", None);
}
