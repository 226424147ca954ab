//! Placement never moves or kills PID 1, the daemon or one of its threads (issue 12, findings
//! 1 and 2), on this hybrid host with the v1 backend and, `#[ignore]`d, on a cgroup v2 kernel
//! in the VM.
//!
//! The daemon runs in its own PID namespace (`unshare --pid --fork --mount-proc --kill-child`),
//! so every PID it is given names a process of that namespace: a mistake cannot reach a host
//! process. Two shapes of that namespace are tested, as "PID 1" means different things in them:
//! - `Init::Daemon`: the daemon is the namespace's PID 1 (the unshare child execs it);
//! - `Init::Shell`: a shell the test started is PID 1 and the daemon is its child (PID 2).
//!
//! The test finds the daemon's host PID and its threads' IDs in the namespace through the
//! `NSpid:` lines of /proc/PID/status. Processes placed in tenants are started inside the
//! namespace with `nsenter --target DAEMON --pid` (`tenantd run` posts its own PID, which must
//! be the namespace's number). Killing unshare kills the namespace's init (`--kill-child`),
//! and with it every process of the namespace.
//!
//! On v1 the daemon is started inside `<own cgroup>/tenantd-test-place-<name>-<pid>` of each
//! hierarchy (below THIS test's cgroups), as in `v1::issue_7_v1_usage_*`.

use crate::support::{Daemon, Owned, V1Dirs, bin, eventually};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Who is PID 1 of the daemon's namespace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Init {
    Daemon,
    Shell,
}

/// `unshare --pid --fork --mount-proc --kill-child --`: what follows runs in a new PID
/// namespace with its own /proc, killed with unshare.
pub(crate) const UNSHARE_PID: [&str; 6] = [
    "unshare",
    "--pid",
    "--fork",
    "--mount-proc",
    "--kill-child",
    "--",
];

/// `unshare ... -- [sh -c '"$@" & wait' sh] tenantd serve ARGS`: the daemon in a new PID
/// namespace with its own /proc.
pub(crate) fn in_pid_namespace(init: Init, serve: &[String]) -> Vec<String> {
    let mut v: Vec<String> = UNSHARE_PID.map(String::from).to_vec();
    if init == Init::Shell {
        v.extend(["sh", "-c", "\"$@\" & wait", "sh"].map(String::from));
    }
    v.push(bin().to_string());
    v.extend(serve.iter().cloned());
    v
}

/// Every process's parent, from /proc/*/stat.
pub(crate) fn parents() -> Vec<(u32, u32)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// The descendants of `pid` (host PIDs), nearest first.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let all = parents();
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &all {
            if pp == p {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

pub(crate) fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The innermost PID of a task (its number in the deepest PID namespace) from `NSpid:`.
pub(crate) fn ns_pid(status: &Path) -> u32 {
    let s = std::fs::read_to_string(status)
        .unwrap_or_else(|e| panic!("read {}: {e}", status.display()));
    s.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{} has no NSpid line", status.display()))
}

/// The daemon's threads other than the main one: (host TID, TID in its namespace).
fn daemon_threads(host_pid: u32) -> Vec<(u32, u32)> {
    let dir = format!("/proc/{host_pid}/task");
    let mut out: Vec<(u32, u32)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&t| t != host_pid)
        .map(|t| {
            (
                t,
                ns_pid(&Path::new(&dir).join(t.to_string()).join("status")),
            )
        })
        .collect();
    out.sort();
    assert!(
        !out.is_empty(),
        "tenantd (PID {host_pid}) has no thread besides its main one: the test needs one"
    );
    out
}

/// /proc/PID/cgroup of every thread of a process, keyed by host TID.
fn cgroups_of_threads(host_pid: u32) -> Vec<(u32, String)> {
    let dir = format!("/proc/{host_pid}/task");
    let mut v: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let t: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((t, std::fs::read_to_string(e.path().join("cgroup")).ok()?))
        })
        .collect();
    v.sort();
    v
}

/// Asserts no thread of the process is in a cgroup none of its threads was in `before`. The
/// thread list itself may change in between (tokio starts and retires blocking-pool threads,
/// more of them on a busy host), so the cgroups are compared, not the thread IDs.
fn assert_threads_stayed(host_pid: u32, before: &[(u32, String)], what: &str) {
    let was: std::collections::BTreeSet<&str> = before.iter().map(|(_, c)| c.as_str()).collect();
    let now = cgroups_of_threads(host_pid);
    let moved: Vec<_> = now
        .iter()
        .filter(|(_, c)| !was.contains(c.as_str()))
        .collect();
    assert!(
        moved.is_empty(),
        "{what}: threads now in another cgroup: {moved:?}; before: {before:?}"
    );
}

fn alive(host_pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{host_pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// The daemon started in a PID namespace, seen from the host.
pub(crate) struct NsDaemon {
    pub(crate) d: Daemon,
    /// The daemon's host PID.
    pub(crate) host_pid: u32,
    /// The daemon's PID in its namespace (1 or 2).
    pub(crate) ns_pid: u32,
    /// PID 1 of the namespace, as a host PID.
    init_host_pid: u32,
}

impl NsDaemon {
    /// Starts `launch(port)` (an unshare command line) and finds the daemon below it.
    pub(crate) fn launch(log_dir: &Path, init: Init, cmd: impl FnOnce(u16) -> Command) -> NsDaemon {
        let d = Daemon::launch(log_dir, cmd);
        let unshare = d.child.id();
        let below = descendants(unshare);
        let host_pid = *below
            .iter()
            .find(|&&p| comm(p) == "tenantd")
            .unwrap_or_else(|| {
                panic!("no tenantd process below unshare (PID {unshare}): {below:?}")
            });
        let ns = ns_pid(Path::new(&format!("/proc/{host_pid}/status")));
        let init_host_pid = *below
            .iter()
            .find(|&&p| ns_pid(Path::new(&format!("/proc/{p}/status"))) == 1)
            .expect("the namespace's PID 1 below unshare");
        match init {
            Init::Daemon => assert_eq!((ns, init_host_pid), (1, host_pid)),
            Init::Shell => {
                assert_eq!(ns, 2, "the daemon is the shell's first child");
                assert_eq!(comm(init_host_pid), "sh");
            }
        }
        NsDaemon {
            d,
            host_pid,
            ns_pid: ns,
            init_host_pid,
        }
    }

    /// `tenantd run --tenant T -- sleep 600` inside the daemon's namespace.
    fn run_sleep(&self, tenant: &str) -> Owned {
        Owned(
            Command::new("nsenter")
                .args(["--target", &self.host_pid.to_string(), "--pid", "--"])
                .arg(bin())
                .args(["run", "--tenant", tenant, "--", "sleep", "600"])
                .env("TENANTD_ADDR", &self.d.addr)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn nsenter ... tenantd run"),
        )
    }

    pub(crate) fn post_pid(&self, tenant: &str, pid: u32) -> (u16, serde_json::Value) {
        self.d.call(
            "POST",
            &format!("/v1/tenants/{tenant}/procs"),
            Some(json!({ "pid": pid })),
        )
    }
}

/// Asserts a 422 problem naming `pid` whose detail contains `says`.
fn assert_refused(r: (u16, serde_json::Value), says: &str) {
    let (s, body) = r;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["field"], "pid", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(says), "{detail:?} does not say {says:?}");
}

// ---------------------------------------------------------------------------------------
// cgroup v1 (this hybrid host)

/// The v1 daemon in a PID namespace, inside test directories of each hierarchy; drop kills
/// the namespace and whatever is left in those directories (all started by this test).
pub(crate) struct V1Ns {
    // Declared first, so the namespace is killed before `dirs` cleans up.
    pub(crate) ns: NsDaemon,
    pub(crate) dirs: V1Dirs,
}

impl V1Ns {
    pub(crate) fn start(name: &str, init: Init) -> V1Ns {
        V1Ns::start_with(name, init, &[])
    }

    /// `start` with extra `serve` flags.
    pub(crate) fn start_with(name: &str, init: Init, extra: &[&str]) -> V1Ns {
        let dirs = V1Dirs::create(&format!("place-{name}"));
        let db = dirs.db();
        let ns = NsDaemon::launch(dirs.tmp.path(), init, |port| {
            let mut serve = V1Dirs::serve_args(port, &db);
            serve.extend(extra.iter().map(|a| a.to_string()));
            dirs.inside(&in_pid_namespace(init, &serve))
        });
        V1Ns { ns, dirs }
    }

    pub(crate) fn ns(&self) -> &NsDaemon {
        &self.ns
    }

    /// A directory of the daemon's default root in `controller`'s hierarchy.
    fn under_root(&self, controller: &str, rel: &str) -> PathBuf {
        self.dirs.under_root(controller, rel)
    }

    /// Host PIDs in tenant `t`'s leaf (cpu hierarchy).
    pub(crate) fn leaf_pids(&self, t: &str) -> Vec<u32> {
        let p = self.under_root("cpu", &format!("{t}/_procs/cgroup.procs"));
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// Finding 1: a daemon thread's ID was accepted and moved the whole daemon into the tenant,
/// so that `kill=true` killed tenantd. Now 422, and the daemon stays where it was.
#[test]
fn finding_1_thread_id_passes_the_self_check() {
    for init in [Init::Daemon, Init::Shell] {
        let v = V1Ns::start(&format!("f1{}", init as u8), init);
        let ns = v.ns();
        ns.d.create("x", json!({}));
        let before = cgroups_of_threads(ns.host_pid);
        assert!(
            before.iter().all(|(_, c)| c.contains("/_tenantd")),
            "the daemon starts in its own leaf: {before:?}"
        );
        for (host_tid, ns_tid) in daemon_threads(ns.host_pid) {
            assert_ne!(host_tid, ns_tid, "the daemon is in its own PID namespace");
            assert_refused(
                ns.post_pid("x", ns_tid),
                &format!("{ns_tid} is a thread of tenantd itself (PID {})", ns.ns_pid),
            );
        }
        assert_threads_stayed(ns.host_pid, &before, "no thread of the daemon moved");
        assert!(v.leaf_pids("x").is_empty());
        // The delete that used to kill tenantd: the tenant is empty, the daemon lives on.
        let (s, body) = ns.d.call("DELETE", "/v1/tenants/x?kill=true", None);
        assert_eq!(s, 204, "{body}");
        assert!(alive(ns.host_pid), "tenantd survived the delete");
        let (s, _) = ns.d.call("GET", "/healthz", None);
        assert_eq!(s, 200);
    }
}

/// Finding 2: `{"pid": 1}` was accepted. Refused whether PID 1 of the daemon's namespace is
/// the daemon itself or another process (a shell the test started), and neither moves.
#[test]
fn finding_2_pid_1_is_accepted() {
    for init in [Init::Daemon, Init::Shell] {
        let v = V1Ns::start(&format!("f2{}", init as u8), init);
        let ns = v.ns();
        ns.d.create("x", json!({}));
        let init_before = cgroups_of_threads(ns.init_host_pid);
        let daemon_before = cgroups_of_threads(ns.host_pid);
        assert_refused(ns.post_pid("x", 1), "PID 1 is init");
        assert_refused(ns.post_pid("x", 0), "0 is not a process ID");
        if init == Init::Shell {
            assert_refused(
                ns.post_pid("x", ns.ns_pid),
                &format!("PID {} is tenantd itself", ns.ns_pid),
            );
        }
        assert_threads_stayed(ns.init_host_pid, &init_before, "init did not move");
        assert_threads_stayed(ns.host_pid, &daemon_before, "the daemon did not move");
        assert!(v.leaf_pids("x").is_empty());
    }
}

/// `tenantd run` goes through the same API attach: a process started in the namespace lands
/// in the tenant, and a thread-group leader passes the policy.
#[test]
fn issue_12_tenantd_run_is_placed_through_the_policy() {
    let v = V1Ns::start("run", Init::Shell);
    let ns = v.ns();
    ns.d.create("x", json!({}));
    let _k = ns.run_sleep("x");
    eventually(20, "the sleep placed in x/_procs", || {
        v.leaf_pids("x").len() == 1
    });
    // `tenantd run` execs the command once the attach answered: until then the process in
    // the leaf is still `tenantd`.
    eventually(20, "the process in x/_procs runs sleep", || {
        let (s, procs) = ns.d.call("GET", "/v1/tenants/x/procs", None);
        s == 200 && procs[0]["comm"] == "sleep"
    });
    assert_eq!(v.leaf_pids("x").len(), 1);
}

/// The default `protected_cgroups` is init's own cgroup: with the shell as PID 1 in the test's
/// directories, a process the test puts in those directories is refused, naming the cgroup.
#[test]
fn issue_12_process_in_inits_cgroup_is_protected_by_default() {
    let v = V1Ns::start("prot", Init::Shell);
    let ns = v.ns();
    ns.d.create("x", json!({}));
    let dirs: Vec<String> = v
        .dirs
        .roots
        .distinct()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let _k = Owned(Command::new("nsenter")
        .args(["--target", &ns.host_pid.to_string(), "--pid", "--"])
        .args([
            "sh",
            "-c",
            r#"IFS=:; for d in $TENANTD_TEST_DIRS; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec sleep 600"#,
        ])
        .env("TENANTD_TEST_DIRS", dirs.join(":"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap());
    let mut sleep = 0;
    eventually(20, "the sleep in the test's directories", || {
        sleep = descendants(_k.0.id())
            .into_iter()
            .find(|&p| comm(p) == "sleep")
            .unwrap_or(0);
        sleep != 0
    });
    let ns_sleep = ns_pid(Path::new(&format!("/proc/{sleep}/status")));
    let cpu_dir = std::fs::read_to_string(format!("/proc/{sleep}/cgroup")).unwrap();
    let (s, body) = ns.post_pid("x", ns_sleep);
    assert_eq!(s, 422, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("PID {ns_sleep} is in cgroup /"))
            && detail.contains("which is protected")
            && detail.contains("tenantd-test-place-prot-"),
        "{detail}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{sleep}/cgroup")).unwrap(),
        cpu_dir,
        "the protected process did not move"
    );
}

/// The kill re-check: a thread of the daemon put into a tenant (here by the test, writing its
/// TID into the tenant's v1 `tasks` file) makes cgroup.procs list the daemon, so
/// `kill=true` and `move_to` are refused with 409 and nothing is killed or moved.
#[test]
fn issue_12_delete_refuses_to_kill_the_daemon_in_a_tenant() {
    let v = V1Ns::start("kill", Init::Shell);
    let ns = v.ns();
    ns.d.create("x", json!({}));
    ns.d.create("y", json!({}));
    let _k = ns.run_sleep("x");
    eventually(20, "the sleep placed in x/_procs", || {
        v.leaf_pids("x").len() == 1
    });
    let sleep = v.leaf_pids("x")[0];
    let (host_tid, _) = daemon_threads(ns.host_pid)[0];
    let tasks = |rel: &str| v.under_root("cpu", &format!("{rel}/tasks"));
    std::fs::write(tasks("x/_procs"), host_tid.to_string()).unwrap();
    assert!(v.leaf_pids("x").contains(&ns.host_pid));

    let (s, body) = ns.d.call("DELETE", "/v1/tenants/x?kill=true", None);
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["field"], "kill", "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("PID {} is tenantd itself", ns.ns_pid))
            && detail.contains("the kill was not done"),
        "{detail}"
    );
    let (s, body) = ns.d.call("DELETE", "/v1/tenants/x?move_to=y", None);
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["field"], "move_to", "{body}");
    assert!(alive(ns.host_pid) && alive(sleep), "nothing was killed");
    assert!(v.leaf_pids("y").is_empty(), "nothing was moved");
    let (s, _) = ns.d.call("GET", "/v1/tenants/x", None);
    assert_eq!(s, 200, "the tenant is kept");

    // The thread back home: now the kill goes through, and hits only the sleep.
    std::fs::write(tasks("_tenantd"), host_tid.to_string()).unwrap();
    let (s, body) = ns.d.call("DELETE", "/v1/tenants/x?kill=true", None);
    assert_eq!(s, 204, "{body}");
    eventually(10, "the sleep killed", || !alive(sleep));
    assert!(alive(ns.host_pid));
}

// ---------------------------------------------------------------------------------------
// cgroup v2 (the VM)

/// The daemon on a v2 test root, in a PID namespace.
pub(crate) fn v2_daemon(root: &crate::support::TestRoot, init: Init) -> NsDaemon {
    v2_daemon_with(root, init, &[])
}

/// `v2_daemon` with extra `serve` flags.
pub(crate) fn v2_daemon_with(
    root: &crate::support::TestRoot,
    init: Init,
    extra: &[&str],
) -> NsDaemon {
    NsDaemon::launch(root.dir.path(), init, |port| {
        let mut serve: Vec<String> = [
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
            &root.db().display().to_string(),
            "--cgroup-root",
            &root.path.display().to_string(),
            "--cgroup-mount",
            &root.mount.display().to_string(),
            "--reconcile-interval-s",
            "3600",
        ]
        .map(String::from)
        .to_vec();
        serve.extend(extra.iter().map(|a| a.to_string()));
        let argv = in_pid_namespace(init, &serve);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    })
}

/// Findings 1 and 2 on cgroup v2, where writing a thread's ID to cgroup.procs moves its whole
/// process, and the kill re-check with the whole daemon moved into a tenant by the test.
#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn finding_1_and_2_on_cgroup_v2() {
    for init in [Init::Daemon, Init::Shell] {
        let root = crate::support::TestRoot::new(&format!("place{}", init as u8));
        let ns = v2_daemon(&root, init);
        ns.d.create("x", json!({}));
        let own = crate::support::cgroup_of(ns.host_pid);
        assert!(own.ends_with("/_tenantd"), "{own}");
        let init_cg = crate::support::cgroup_of(ns.init_host_pid);
        for (_, ns_tid) in daemon_threads(ns.host_pid) {
            assert_refused(
                ns.post_pid("x", ns_tid),
                &format!("{ns_tid} is a thread of tenantd itself (PID {})", ns.ns_pid),
            );
        }
        assert_refused(ns.post_pid("x", 1), "PID 1 is init");
        assert_eq!(crate::support::cgroup_of(ns.host_pid), own);
        assert_eq!(crate::support::cgroup_of(ns.init_host_pid), init_cg);
        assert_eq!(root.read("x/_procs/cgroup.procs"), "");

        // The kill re-check: the test moves the whole daemon into x.
        std::fs::write(
            root.path.join("x/_procs/cgroup.procs"),
            ns.host_pid.to_string(),
        )
        .unwrap();
        let (s, body) = ns.d.call("DELETE", "/v1/tenants/x?kill=true", None);
        assert_eq!(s, 409, "{body}");
        let detail = body["detail"].as_str().unwrap();
        let who = if init == Init::Daemon {
            "PID 1 is init".to_string()
        } else {
            format!("PID {} is tenantd itself", ns.ns_pid)
        };
        assert!(
            detail.contains(&who) && detail.contains("the kill was not done"),
            "{detail}"
        );
        assert!(alive(ns.host_pid));
        std::fs::write(
            root.path.join("_tenantd/cgroup.procs"),
            ns.host_pid.to_string(),
        )
        .unwrap();
        let (s, body) = ns.d.call("DELETE", "/v1/tenants/x?kill=true", None);
        assert_eq!(s, 204, "{body}");
        assert!(alive(ns.host_pid));
    }
}
