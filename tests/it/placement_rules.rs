//! Placement rules (issue 17) with real processes: the daemon's rescan of /proc places a
//! process started as a matching uid, or running a matching exe and command line, within one
//! rescan interval; a process no rule names stays; a forked child of a placed process stays
//! with its parent; a process placed by hand is not moved back; `explain` answers for each.
//! Rules are validated at apply (422 naming the field, 409 naming both tenants on a conflict).
//!
//! The daemon runs in a PID namespace of its own (`placement::NsDaemon`), so the rescan sees
//! only the processes this test starts there (with `nsenter --pid`): a rule can never reach a
//! host process. The rescan runs every second (`--placement-rescan-s 1`). The cgroup v1 test
//! runs on this hybrid host; the same body runs `#[ignore]`d on cgroup v2 in the VM, where it
//! also checks that a process in a cgroup marked delegated (`user.delegate`) is reported and
//! left, unless the rule says `override_delegated`.

use crate::placement::{Init, NsDaemon, V1Ns, comm, descendants, ns_pid, v2_daemon_with};
use crate::support::{Daemon, Owned, TestRoot, eventually, remove_tree};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The uid the test's "hosting account" runs as (`as_account`; no passwd entry is needed for
/// an id).
const ACCOUNT_UID: u32 = 4242;

/// A process the test started in the daemon's namespace.
struct Proc {
    /// `nsenter`, outside the namespace; the process itself dies with the namespace.
    nsenter: Owned,
    /// Its PID on the host and in the daemon's namespace.
    host: u32,
    ns: u32,
}

/// What the body needs from a backend's setup.
trait Setup {
    fn ns(&self) -> &NsDaemon;
    /// Host PIDs in tenant `t`'s leaf.
    fn leaf_pids(&self, t: &str) -> Vec<u32>;
    /// Arguments that put the process where it starts (before `args`).
    fn prefix(&self) -> Vec<String>;

    fn d(&self) -> &Daemon {
        &self.ns().d
    }

    /// Starts `args` in the daemon's namespace and waits until the process runs `comm_is`.
    fn spawn(&self, args: &[&str], comm_is: &str, stdin: Stdio) -> Proc {
        let mut c = Command::new("nsenter");
        c.args(["--target", &self.ns().host_pid.to_string(), "--pid", "--"])
            .args(self.prefix())
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::null());
        let nsenter = Owned(c.spawn().expect("spawn nsenter"));
        let mut host = 0;
        eventually(20, &format!("{args:?} running as {comm_is}"), || {
            host = descendants(nsenter.pid())
                .into_iter()
                .find(|&p| comm(p) == comm_is)
                .unwrap_or(0);
            host != 0
        });
        let ns = ns_pid(Path::new(&format!("/proc/{host}/status")));
        Proc { nsenter, host, ns }
    }

    fn explain(&self, ns_pid: u32) -> Value {
        let (s, body) = self
            .d()
            .call("GET", &format!("/v1/placement/explain?pid={ns_pid}"), None);
        assert_eq!(s, 200, "explain {ns_pid}: {body}");
        body
    }
}

struct V1Setup(V1Ns);

impl Setup for V1Setup {
    fn ns(&self) -> &NsDaemon {
        &self.0.ns
    }
    fn leaf_pids(&self, t: &str) -> Vec<u32> {
        self.0.leaf_pids(t)
    }
    /// On v1 the processes start in this test's own cgroups (outside the test's directories,
    /// whose init cgroup is protected), as `tenantd run` in `placement` does.
    fn prefix(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The v2 daemon, and a cgroup of the test's own beside its root where the processes start
/// (in the VM the test runs in the root cgroup, which init of the namespace shares).
struct V2Setup {
    ns: NsDaemon,
    root: TestRoot,
    outside: PathBuf,
}

impl Setup for V2Setup {
    fn ns(&self) -> &NsDaemon {
        &self.ns
    }
    fn leaf_pids(&self, t: &str) -> Vec<u32> {
        std::fs::read_to_string(self.root.path.join(t).join("_procs/cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
    fn prefix(&self) -> Vec<String> {
        into_cgroup(&self.outside)
    }
}

impl Drop for V2Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::support::print_logs(self.root.dir.path());
        }
        remove_tree(&self.outside);
    }
}

/// `sh -c 'echo $$ > DIR/cgroup.procs && exec "$@"' sh`: the command starts in DIR.
fn into_cgroup(dir: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("echo $$ > '{}/cgroup.procs' && exec \"$@\"", dir.display()),
        "sh".into(),
    ]
}

/// The rules of the test: one hosting account by uid, one CI job by exe and command line.
fn create_rules(d: &Daemon) {
    // A glob over the exe: in the VM the daemon's mount namespace (unshare --mount-proc) shows
    // the guest's chroot, so /proc/PID/exe reads /newroot/usr/bin/sleep there.
    let sleep = "/**/bin/sleep";
    d.create("web", json!({"placement": {"uids": [ACCOUNT_UID]}}));
    d.create(
        "ci",
        json!({"placement": {"exe": [sleep], "cmdline": "\\x00612\\.5$"}}),
    );
}

/// `setpriv` to the account's uid and gid, no supplementary groups, then `args`.
fn as_account<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"];
    v.extend_from_slice(args);
    v
}

fn decision(e: &Value) -> Value {
    e["decision"]["tenant"].clone()
}

/// The body: placement by uid, by exe and cmdline, precedence, a non-matching process, a
/// forked child, a hand-placed process, explain for each, events and counters.
fn rules_place_and_leave<S: Setup>(s: &S) {
    let d = s.d();
    // Placed by hand before the rules exist (the test setups protect the tenants' processes
    // from moves between tenants on v1, whose init cgroup holds the tenants): a rule that
    // names it later leaves it there.
    d.create("other", json!({}));
    let by_hand = s.spawn(&as_account(&["sleep", "601"]), "sleep", Stdio::null());
    let (st, body) = s.ns().post_pid("other", by_hand.ns);
    assert_eq!(st, 201, "{body}");
    create_rules(d);
    // By uid; by exe and cmdline; both (the more specific rule wins); neither.
    let by_uid = s.spawn(&as_account(&["sleep", "600"]), "sleep", Stdio::null());
    let by_exe = s.spawn(&["sleep", "612.5"], "sleep", Stdio::null());
    let both = s.spawn(&as_account(&["sleep", "612.5"]), "sleep", Stdio::null());
    let neither = s.spawn(&["sleep", "600"], "sleep", Stdio::null());
    let placed = || {
        let (web, ci) = (s.leaf_pids("web"), s.leaf_pids("ci"));
        web.contains(&by_uid.host) && ci.contains(&by_exe.host) && ci.contains(&both.host)
    };
    // The rescan runs every second: the next one places them (5 s leave room for a slow
    // rescan under the VM's emulation).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !placed() {
        if std::time::Instant::now() > deadline {
            let why: Vec<Value> = [&by_uid, &by_exe, &both]
                .iter()
                .map(|p| s.explain(p.ns))
                .collect();
            panic!("the rescan did not place the uid and exe processes within 5 s: {why:#?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !s.leaf_pids("web").contains(&both.host),
        "the more specific rule (exe and cmdline) beat the uid rule"
    );
    for t in ["web", "ci", "other"] {
        assert!(!s.leaf_pids(t).contains(&neither.host), "no rule names it");
    }

    // Explain: each case, without moving anything.
    let e = s.explain(by_uid.ns);
    assert_eq!(decision(&e), "web", "{e}");
    assert_eq!(e["action"]["outcome"], "already_there", "{e}");
    assert_eq!(e["process"]["ruid"], 4242, "{e}");
    let e = s.explain(both.ns);
    assert_eq!(decision(&e), "ci", "{e}");
    assert_eq!(e["decision"]["won_by"], "specificity", "{e}");
    assert_eq!(e["decision"]["runner_up"], "web", "{e}");
    let e = s.explain(neither.ns);
    assert_eq!(e["decision"], Value::Null, "{e}");
    assert_eq!(e["action"]["outcome"], "no_rule", "{e}");
    let misses: Vec<(String, Vec<String>)> = e["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tenant"].as_str().unwrap().to_string(),
                r["misses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["field"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        misses,
        vec![
            ("ci".to_string(), vec!["cmdline".to_string()]),
            ("web".to_string(), vec!["uids".to_string()]),
        ],
        "{e}"
    );
    let (st, body) = d.call("GET", "/v1/placement/explain?pid=4194000", None);
    assert_eq!((st, body["field"].as_str()), (404, Some("pid")), "{body}");
    let (st, body) = d.call("GET", "/v1/placement/explain?pid=0", None);
    assert_eq!((st, body["field"].as_str()), (422, Some("pid")), "{body}");
    let (st, body) = d.call("GET", "/v1/placement/explain?pid=x", None);
    assert_eq!((st, body["field"].as_str()), (422, Some("pid")), "{body}");

    // A forked child of a placed process stays with its parent, even though its own exe and
    // command line match another tenant's rule.
    let mut parent = s.spawn(
        &as_account(&["sh", "-c", "read x; sleep 612.5; true"]),
        "sh",
        Stdio::piped(),
    );
    eventually(10, "the parent shell placed in web", || {
        s.leaf_pids("web").contains(&parent.host)
    });
    parent
        .nsenter
        .0
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let mut child = 0;
    eventually(10, "the child sleep", || {
        child = descendants(parent.host)
            .into_iter()
            .find(|&p| comm(p) == "sleep")
            .unwrap_or(0);
        child != 0
    });
    let child_ns = ns_pid(Path::new(&format!("/proc/{child}/status")));
    // Three rescans later it is still with its parent.
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    assert!(
        s.leaf_pids("web").contains(&child),
        "the child stays in web"
    );
    assert!(!s.leaf_pids("ci").contains(&child));
    let e = s.explain(child_ns);
    assert_eq!(decision(&e), "ci", "{e}");
    assert_eq!(e["action"]["why"], "in_tenant", "{e}");

    // Placed by hand: not moved by the rule.
    assert!(
        s.leaf_pids("other").contains(&by_hand.host),
        "a hand-placed process stays where it was put"
    );
    assert!(!s.leaf_pids("web").contains(&by_hand.host));
    let e = s.explain(by_hand.ns);
    assert_eq!(decision(&e), "web", "{e}");
    assert_eq!(e["action"]["why"], "placed_by_hand", "{e}");

    // Events and counters: summarised per tenant, not one per process.
    let (_, ev) = d.call("GET", "/v1/events?kind=process_placed", None);
    let placed: u64 = ev
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["tenant"] == "ci")
        .map(|e| e["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(placed, 2, "{ev}");
    let ci = ev
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["tenant"] == "ci")
        .unwrap();
    assert!(
        ci["detail"]["rule"].as_str().unwrap().contains("cmdline"),
        "{ci}"
    );
    let metrics = d.text("/metrics");
    assert!(
        metrics.contains("tenantd_processes_placed_total{tenant=\"ci\"} 2"),
        "{metrics}"
    );
    // web counts at least its two (a process caught between setpriv's setuid and its exec
    // of `sleep 612.5` goes to web first, then to ci, by rule both times).
    let web: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tenantd_processes_placed_total{tenant=\"web\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(web >= 2, "{metrics}");

    // `tenantd procs explain` reads the same answer: a table, and -o json.
    let out = d
        .cli()
        .args(["procs", "explain", &both.ns.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("tenant ci (priority 0, specificity 2, won by specificity over web)"),
        "{text}"
    );
    let out = d
        .cli()
        .args(["procs", "explain", &neither.ns.to_string(), "-o", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["action"]["outcome"], "no_rule");
    drop((by_uid, by_exe, both, neither, by_hand, child));
}

/// The rules on this hybrid host, v1 backend.
#[test]
fn issue_17_rescan_places_by_uid_exe_and_cmdline_v1() {
    let v = V1Ns::start_with("rules", Init::Shell, &["--placement-rescan-s", "1"]);
    rules_place_and_leave(&V1Setup(v));
}

/// Apply-time checks: 422 naming the field for a bad regex, a relative exe and an unknown
/// user; 409 naming both tenants for a conflict; the rule from a TOML apply file; a scoped
/// token cannot set one. Validation needs no kernel, but a stored rule is live, so the daemon
/// is in its own PID namespace as for the other tests.
#[test]
fn issue_17_rules_are_validated_at_apply() {
    let v = V1Ns::start_with("rulesval", Init::Shell, &["--placement-rescan-s", "1"]);
    let d = &v.ns.d;
    for (placement, field, says) in [
        (
            json!({"cmdline": "(unclosed"}),
            "placement.cmdline",
            "not a valid regex",
        ),
        (
            json!({"exe": ["/usr/bin/php", "php-fpm"]}),
            "placement.exe[1]",
            "not an absolute path",
        ),
        (
            json!({"uids": [0, "no-such-user-tenantd-test"]}),
            "placement.uids[1]",
            "there is no user named 'no-such-user-tenantd-test'",
        ),
        (
            json!({"gids": ["no-such-group-tenantd-test"]}),
            "placement.gids[0]",
            "no group",
        ),
        (json!({"uids": [-1]}), "placement.uids[0]", "id from 0"),
        (json!({"priority": 3}), "placement", "names no process"),
        (json!({"uid": [1]}), "placement", "unknown field"),
    ] {
        let (s, body) = d.call(
            "PUT",
            "/v1/tenants/bad",
            Some(json!({ "placement": placement })),
        );
        assert_eq!(s, 422, "{placement}: {body}");
        assert!(
            body["field"].as_str().unwrap().starts_with(field),
            "{placement}: {body}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains(says),
            "{placement}: {body}"
        );
    }
    // Names resolve from /etc/passwd and /etc/group (root is on every host).
    d.create(
        "alice",
        json!({"placement": {"uids": ["root", 4300], "gids": ["root"]}}),
    );
    let (s, body) = d.call(
        "PUT",
        "/v1/tenants/bob",
        Some(json!({"placement": {"uids": [4300, 4301], "gids": [0]}})),
    );
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["field"], "placement", "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("'bob'") && detail.contains("'alice'"),
        "{detail}"
    );
    // A higher priority settles it; a PATCH that removes the rule too.
    let (s, body) = d.call(
        "PUT",
        "/v1/tenants/bob",
        Some(json!({"placement": {"uids": [4300], "gids": [0], "priority": 5}})),
    );
    assert_eq!(s, 201, "{body}");
    let (s, body) = d.call(
        "PATCH",
        "/v1/tenants/bob",
        Some(json!({"placement": {"priority": null, "uids": [4301]}})),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["spec"]["placement"],
        json!({"uids": [4301], "gids": [0], "exe": null, "cmdline": null, "priority": 0, "override_delegated": false}),
        "{body}"
    );
    let (s, body) = d.call(
        "PATCH",
        "/v1/tenants/bob",
        Some(json!({"placement": {"bogus": null}})),
    );
    assert_eq!(
        (s, body["field"].as_str()),
        (422, Some("placement.bogus")),
        "{body}"
    );
    // A TOML apply file: mixed ids and names, a glob, a regex.
    let file = v.dirs.tmp.path().join("rules.toml");
    std::fs::write(
        &file,
        r#"
[[tenant]]
name = "site1"
placement = { uids = [4400, "root"], exe = ["/opt/acme/bin/*"], priority = 10 }

[[tenant]]
name = "runner"
[tenant.placement]
exe = ["/usr/bin/gitlab-runner"]
cmdline = '^gitlab-runner\x00run\x00.*project-a'
priority = 1
"#,
    )
    .unwrap();
    let apply = || {
        let mut c = d.cli();
        c.args(["tenant", "apply", "-f"]).arg(&file);
        c.output().unwrap()
    };
    let out = apply();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, t) = d.call("GET", "/v1/tenants/site1", None);
    assert_eq!(t["spec"]["placement"]["uids"], json!([4400, "root"]), "{t}");
    let (_, t) = d.call("GET", "/v1/tenants/runner", None);
    assert_eq!(
        t["spec"]["placement"]["cmdline"], "^gitlab-runner\\x00run\\x00.*project-a",
        "{t}"
    );
    std::fs::write(
        &file,
        "[[tenant]]\nname = \"bad\"\nplacement = { exe = [\"relative/x\"] }\n",
    )
    .unwrap();
    let out = apply();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("placement.exe[0]"), "{err}");
}

/// The rules on cgroup v2 in the VM, plus a delegated cgroup: reported and left without
/// `override_delegated`, moved with it.
#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn issue_17_rescan_places_by_uid_exe_and_cmdline_v2() {
    let root = TestRoot::new("rules");
    let outside = root.path.with_file_name(format!(
        "{}-outside",
        root.path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir(&outside).unwrap();
    let ns = v2_daemon_with(&root, Init::Shell, &["--placement-rescan-s", "1"]);
    let s = V2Setup { ns, root, outside };
    rules_place_and_leave(&s);

    // A cgroup another manager delegated (systemd marks it so).
    let delegated = s.outside.join("unit.service");
    std::fs::create_dir(&delegated).unwrap();
    mark_delegated(&delegated);
    let d = s.d();
    d.create(
        "dlg",
        json!({"placement": {"cmdline": "\\x00633\\.5$", "priority": 1}}),
    );
    let mut c = Command::new("nsenter");
    c.args(["--target", &s.ns.host_pid.to_string(), "--pid", "--"])
        .args(into_cgroup(&delegated))
        .args(["sleep", "633.5"])
        .stdin(Stdio::null());
    let k = Owned(c.spawn().unwrap());
    let mut host = 0;
    eventually(20, "the sleep in the delegated cgroup", || {
        host = descendants(k.pid())
            .into_iter()
            .find(|&p| comm(p) == "sleep")
            .unwrap_or(0);
        host != 0
    });
    let ns = ns_pid(Path::new(&format!("/proc/{host}/status")));
    eventually(10, "the process_not_placed event", || {
        let (_, ev) = d.call("GET", "/v1/events?kind=process_not_placed", None);
        ev.as_array().is_some_and(|a| !a.is_empty())
    });
    assert!(
        !s.leaf_pids("dlg").contains(&host),
        "a delegated process is left"
    );
    let e = s.explain(ns);
    assert_eq!(e["action"]["why"], "delegated", "{e}");
    let (st, body) = d.call(
        "PATCH",
        "/v1/tenants/dlg",
        Some(json!({"placement": {"override_delegated": true}})),
    );
    assert_eq!(st, 200, "{body}");
    eventually(
        10,
        "the delegated process moved with override_delegated",
        || s.leaf_pids("dlg").contains(&host),
    );
}

/// `setfattr -n user.delegate -v 1 DIR`, as systemd's user manager marks a delegated unit
/// (cgroupfs takes user.* attributes since Linux 5.7).
fn mark_delegated(dir: &Path) {
    let ok = Command::new("setfattr")
        .args(["-n", "user.delegate", "-v", "1"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        // No attr package: write it with Python's os.setxattr.
        let st = Command::new("python3")
            .args([
                "-c",
                "import os,sys; os.setxattr(sys.argv[1], 'user.delegate', b'1')",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "cannot mark {} delegated", dir.display());
    }
}

/// Rescan cost on a host with about 5,000 processes (README): 5,000 sleeps in the daemon's
/// namespace, a rule by uid and exe that none matches (so every process's stat, status and
/// exe are read), and the rescan's own report (wall time and the thread's CPU time) from the
/// daemon's log.
/// `cargo nextest run --features measure --test it issue_17_measure --no-capture`
#[cfg(feature = "measure")]
#[test]
fn issue_17_measure_rescan_of_5000_processes() {
    let n = 5000;
    let dirs = crate::support::V1Dirs::create("place-rulescost");
    let db = dirs.db();
    let ns = NsDaemon::launch(dirs.tmp.path(), Init::Shell, |port| {
        let mut serve = crate::support::V1Dirs::serve_args(port, &db);
        serve.extend(["--placement-rescan-s", "1"].map(String::from));
        let mut c = dirs.inside(&crate::placement::in_pid_namespace(Init::Shell, &serve));
        c.env("TENANTD_LOG", "info,tenantd::cli::serve=debug");
        c
    });
    let v = V1Ns { ns, dirs };
    let d = &v.ns.d;
    d.create("web", json!({"placement": {"uids": [4999]}}));
    let mut c = Command::new("nsenter");
    c.args(["--target", &v.ns.host_pid.to_string(), "--pid", "--"])
        .args([
            "sh",
            "-c",
            &format!("i=0; while [ $i -lt {n} ]; do sleep 3600 & i=$((i+1)); done; wait"),
        ])
        .stdin(Stdio::null());
    let k = Owned(c.spawn().unwrap());
    eventually(300, "5,000 sleeps", || descendants(k.pid()).len() > n);
    let log_path = std::fs::read_dir(v.dirs.tmp.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .unwrap()
        .path();
    // (rescan's process count, its CPU time in us) of every rescan logged so far.
    let rescans = || -> Vec<(usize, u64)> {
        let log = std::fs::read_to_string(&log_path).unwrap();
        log.lines()
            .filter_map(|l| {
                let r = l.split("placement rescan: ").nth(1)?;
                let count = r.split(' ').next()?.parse().ok()?;
                let cpu = r
                    .split(" us of CPU")
                    .next()?
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()?;
                Some((count, cpu))
            })
            .collect()
    };
    // Each rule matches none of the sleeps, so the rescan reads what the rule looks at for
    // every process: the ids (through a pidfd, or status for groups), the exe link, the
    // command line.
    for (what, placement) in [
        ("uids", json!({"uids": [4999]})),
        // Groups: the supplementary ones are only in `status`, read for every process.
        ("gids", json!({"gids": [4999]})),
        ("exe", json!({"exe": ["/opt/none/*"]})),
        (
            "uids, exe and cmdline",
            json!({"uids": [4999], "exe": ["/opt/none/*"], "cmdline": "^none"}),
        ),
    ] {
        let (st, body) = d.call(
            "PUT",
            "/v1/tenants/web",
            Some(json!({ "placement": placement })),
        );
        assert!(st == 200 || st == 201, "{body}");
        let before = rescans().len();
        std::thread::sleep(std::time::Duration::from_secs(12));
        let mut cpu: Vec<u64> = rescans()[before..]
            .iter()
            .filter(|(c, _)| *c >= n)
            .map(|(_, us)| *us)
            .collect();
        assert!(
            cpu.len() >= 5,
            "rescans over {n} processes:\n{:?}",
            rescans()
        );
        cpu.sort();
        println!(
            "rule by {what}: {} rescans of {n}+ processes, CPU per rescan median {:.1} ms, min {:.1} ms, max {:.1} ms",
            cpu.len(),
            cpu[cpu.len() / 2] as f64 / 1000.0,
            cpu[0] as f64 / 1000.0,
            cpu[cpu.len() - 1] as f64 / 1000.0
        );
    }
}
