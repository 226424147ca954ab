//! Least-privilege launch (issue 18): `tenantd run` with the tenant's `launch` defaults and its
//! own flags, checked on the real processes after exec, never assumed: `/proc/PID/status`
//! (`NoNewPrivs`, `Cap*`, `Uid`, `Gid`, `Groups`), the `/proc/PID/ns/{net,mnt,pid}` links
//! against the test's own, what the process sees of /tmp, its network and its /proc.
//!
//! v1 backend on this host (namespaces and capabilities do not depend on the cgroup version),
//! the daemon in its own PID namespace as in `placement` (`tenantd run` posts its own PID, so it
//! is started there with `nsenter --pid`). Needs root, like every test that starts a daemon.

use crate::placement::{Init, V1Ns, comm, descendants, ns_pid};
use crate::support::{Owned, bin, eventually};
use crate::top::Tmux;
use serde_json::json;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use tenantd::domain::launch::{CapSet, ProcCreds};

/// `nsenter --target DAEMON --pid -- tenantd run --tenant T ARGS` (ARGS: flags, `--`, command).
fn run(v: &V1Ns, tenant: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.args(["--target", &v.ns().host_pid.to_string(), "--pid", "--"])
        .arg(bin())
        .args(["run", "--tenant", tenant])
        .args(args)
        .env("TENANTD_ADDR", &v.ns().d.addr)
        .stdin(Stdio::null());
    c
}

/// `run` to its end, with its output.
fn run_output(v: &V1Ns, tenant: &str, args: &[&str]) -> Output {
    run(v, tenant, args)
        .output()
        .expect("run nsenter ... tenantd run")
}

/// Starts `run(.., ARGS -- sleep 600)` and finds the sleep: (its owner, the sleep's host PID).
fn sleeping(v: &V1Ns, tenant: &str, flags: &[&str]) -> (Owned, u32) {
    let mut args = flags.to_vec();
    args.extend(["--", "sleep", "600"]);
    let mut o = Owned(run(v, tenant, &args).spawn().expect("spawn tenantd run"));
    let mut pid = 0;
    eventually(20, "the launched sleep", || {
        assert!(
            o.alive(),
            "tenantd run {flags:?} ended before the sleep started"
        );
        pid = descendants(o.pid())
            .into_iter()
            .find(|&p| comm(p) == "sleep")
            .unwrap_or(0);
        pid != 0
    });
    (o, pid)
}

fn creds(pid: u32) -> ProcCreds {
    ProcCreds::parse(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap())
}

/// The namespace a `/proc/PID/ns/KIND` link names (`net:[4026531833]`).
fn ns(pid: &str, kind: &str) -> String {
    let p = format!("/proc/{pid}/ns/{kind}");
    std::fs::read_link(&p)
        .unwrap_or_else(|e| panic!("readlink {p}: {e}"))
        .display()
        .to_string()
}

/// The groups of `user` as `id -G` lists them (sorted), independent of the code under test.
fn groups_of(user: &str) -> Vec<u32> {
    let out = Command::new("id").args(["-G", user]).output().unwrap();
    assert!(out.status.success(), "id -G {user}");
    let mut g: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    g.sort_unstable();
    g
}

fn uid_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A user with everything dropped: the tenant's defaults (user, private /tmp) and the run's
/// flags (private network) together; the bounding set empty by default for a non-root user.
#[test]
fn issue_18_launch_as_a_user_in_private_namespaces_is_in_force_after_exec() {
    let v = V1Ns::start("launch-user", Init::Shell);
    v.ns().d.create("x", json!({}));
    // The defaults set by a merge patch, as a client would change them.
    let (st, body) = v.ns().d.call(
        "PATCH",
        "/v1/tenants/x",
        Some(json!({"launch": {"user": "nobody", "private_tmp": true}})),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["spec"]["launch"]["user"], "nobody", "{body}");
    let marker = tempfile::Builder::new()
        .prefix("tenantd-launch-marker-")
        .tempfile_in("/tmp")
        .unwrap();
    let (_o, pid) = sleeping(&v, "x", &["--private-network"]);
    let c = creds(pid);
    let (uid, gid) = (uid_of("nobody", "-u"), uid_of("nobody", "-g"));
    assert_eq!(c.no_new_privs, Some(true), "{c:?}");
    for (what, set) in [
        ("CapBnd", c.cap_bnd),
        ("CapEff", c.cap_eff),
        ("CapPrm", c.cap_prm),
        ("CapInh", c.cap_inh),
        ("CapAmb", c.cap_amb),
    ] {
        assert_eq!(set, Some(CapSet(0)), "{what}: {c:?}");
    }
    assert_eq!(c.uid, vec![uid; 4]);
    assert_eq!(c.gid, vec![gid; 4]);
    assert_eq!(c.groups, groups_of("nobody"));
    // Placed as before: in the tenant's leaf.
    assert_eq!(v.leaf_pids("x"), vec![pid]);
    // Network and mount namespaces of its own; the PID namespace is the daemon's.
    let p = pid.to_string();
    assert_ne!(ns(&p, "net"), ns("self", "net"));
    assert_ne!(ns(&p, "mnt"), ns("self", "mnt"));
    let daemon = v.ns().host_pid.to_string();
    assert_eq!(ns(&p, "pid"), ns(&daemon, "pid"));
    // Only loopback, and it is up (::1 is on lo only while lo is up).
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{dev}");
    let inet6 = std::fs::read_to_string(format!("/proc/{pid}/net/if_inet6")).unwrap();
    assert!(
        inet6.starts_with("00000000000000000000000000000001") && inet6.contains(" lo"),
        "lo is not up: {inet6:?}"
    );
    // A private tmpfs on /tmp: the host's file is not there, and nothing leaked to the host.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/tmp") && l.contains(" - tmpfs ")),
        "{mounts}"
    );
    let name = marker.path().file_name().unwrap();
    assert!(marker.path().exists());
    assert!(
        !Path::new(&format!("/proc/{pid}/root/tmp"))
            .join(name)
            .exists(),
        "the host's /tmp is visible to the command"
    );
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(&format!("/proc/{pid}")));
}

/// Root with an explicit bounding set: the command holds exactly those capabilities (root's
/// capabilities after exec are the bounding set); without a list, root keeps the set it has,
/// and `--allow-new-privs` turns no_new_privs off.
#[test]
fn issue_18_root_gets_exactly_the_listed_capabilities_or_keeps_its_own() {
    let v = V1Ns::start("launch-root", Init::Shell);
    v.ns().d.create("x", json!({}));
    let (_o, pid) = sleeping(&v, "x", &["--capabilities", "CAP_NET_BIND_SERVICE,kill"]);
    let c = creds(pid);
    let want = Some(CapSet((1 << 10) | (1 << 5)));
    assert_eq!(
        (c.cap_bnd, c.cap_eff, c.cap_prm),
        (want, want, want),
        "{c:?}"
    );
    assert_eq!((c.cap_inh, c.cap_amb), (Some(CapSet(0)), Some(CapSet(0))));
    assert_eq!(c.no_new_privs, Some(true));
    assert_eq!(c.uid, vec![0; 4]);
    assert_eq!(ns(&pid.to_string(), "net"), ns("self", "net"));
    assert_eq!(ns(&pid.to_string(), "mnt"), ns("self", "mnt"));

    let (_o2, pid) = sleeping(&v, "x", &["--allow-new-privs"]);
    let c = creds(pid);
    let me = creds(std::process::id());
    assert_eq!(c.no_new_privs, Some(false));
    assert_eq!(c.cap_bnd, me.cap_bnd, "root keeps the bounding set it had");
    assert_eq!(c.cap_eff, me.cap_bnd);
    assert_eq!(c.cap_amb, Some(CapSet(0)));
}

/// A process launched with `--private-network` cannot reach a listener on the host's
/// loopback (127.0.0.2); the same command without it can.
#[test]
fn issue_18_private_network_cannot_reach_the_hosts_loopback() {
    let v = V1Ns::start("launch-net", Init::Shell);
    v.ns().d.create("x", json!({}));
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.2/{port} && echo connected");
    let accepted = |l: &TcpListener| {
        let mut n = 0;
        while l.accept().is_ok() {
            n += 1;
        }
        n
    };

    let out = run_output(&v, "x", &["--", "bash", "-c", &connect]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "connected");
    eventually(5, "the host-namespace connection accepted", || {
        accepted(&listener) == 1
    });

    let out = run_output(
        &v,
        "x",
        &["--private-network", "--", "bash", "-c", &connect],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Connection refused"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        accepted(&listener),
        0,
        "the private network reached the host"
    );
}

/// `--private-pid`: the command is PID 2 under a tenantd reaper (PID 1) in a namespace of its
/// own with its own /proc; exit status and signals pass through as without it.
#[test]
fn issue_18_private_pid_runs_under_a_reaper_and_passes_status_and_signals() {
    let v = V1Ns::start("launch-pid", Init::Shell);
    v.ns().d.create("x", json!({"launch": {"user": "nobody"}}));
    let out = run_output(
        &v,
        "x",
        &[
            "--private-pid",
            "--",
            "sh",
            "-c",
            "echo $$; cat /proc/1/comm; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\ntenantd\n");

    let out = run_output(
        &v,
        "x",
        &["--private-pid", "--", "sh", "-c", "kill -USR1 $$"],
    );
    assert_eq!(out.status.signal(), Some(libc::SIGUSR1), "{out:?}");

    let (mut o, pid) = sleeping(&v, "x", &["--private-pid"]);
    let s = Path::new(&format!("/proc/{pid}/status")).to_path_buf();
    assert_eq!(ns_pid(&s), 2);
    let reaper = descendants(o.pid())
        .into_iter()
        .find(|&p| ns_pid(Path::new(&format!("/proc/{p}/status"))) == 1 && comm(p) == "tenantd")
        .expect("the reaper, PID 1 of the new namespace");
    let daemon = v.ns().host_pid.to_string();
    assert_ne!(ns(&pid.to_string(), "pid"), ns(&daemon, "pid"));
    assert_eq!(ns(&reaper.to_string(), "pid"), ns(&pid.to_string(), "pid"));
    // The reaper dropped its privileges too.
    for p in [pid, reaper] {
        let c = creds(p);
        assert_eq!(
            (c.no_new_privs, c.cap_bnd, c.cap_eff, c.uid[0]),
            (
                Some(true),
                Some(CapSet(0)),
                Some(CapSet(0)),
                uid_of("nobody", "-u")
            ),
            "{p}: {c:?}"
        );
    }
    // tenantd run, the reaper and the command are all in the tenant.
    let mut leaf = v.leaf_pids("x");
    leaf.sort_unstable();
    let run_pid = *descendants(o.pid())
        .iter()
        .find(|&&p| comm(p) == "tenantd" && p != reaper)
        .expect("tenantd run below nsenter");
    let mut want = vec![run_pid, reaper, pid];
    want.sort_unstable();
    assert_eq!(leaf, want);
    // SIGTERM to tenantd run reaches the command, and tenantd run dies of it as the command did.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = o.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    eventually(5, "the namespace gone", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            && !Path::new(&format!("/proc/{reaper}")).exists()
    });
}

/// Without `--private-pid` the command replaces `tenantd run` as before: the same PID, the
/// exit status and the signal it dies of are its own.
#[test]
fn issue_18_without_private_pid_the_command_is_exec_ed_in_place() {
    let v = V1Ns::start("launch-exec", Init::Shell);
    v.ns().d.create("x", json!({}));
    let out = run_output(&v, "x", &["--user", "nobody", "--", "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    let out = run_output(&v, "x", &["--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{out:?}");
    let mut o = Owned(
        run(&v, "x", &["--private-tmp", "--", "sleep", "600"])
            .spawn()
            .unwrap(),
    );
    let mut pid = 0;
    eventually(20, "the sleep", || {
        pid = descendants(o.pid())
            .into_iter()
            .find(|&p| comm(p) == "sleep")
            .unwrap_or(0);
        pid != 0
    });
    // nsenter's only child is the sleep: tenantd run became it.
    assert_eq!(descendants(o.pid()), vec![pid]);
    assert!(o.alive());
}

/// Every refusal is one line and exit 1, and a refused launch placed nothing.
#[test]
fn issue_18_bad_launch_options_are_refused_in_one_line_before_placement() {
    let v = V1Ns::start("launch-bad", Init::Shell);
    v.ns().d.create("x", json!({}));
    v.ns()
        .d
        .create("y", json!({"launch": {"user": "no-such-user-tenantd"}}));
    let (st, body) = v.ns().d.call(
        "PATCH",
        "/v1/tenants/x",
        Some(json!({"launch": {"capabilities": ["CAP_FLY"]}})),
    );
    assert_eq!(st, 422, "{body}");
    assert_eq!(body["field"], "launch.capabilities[0]", "{body}");
    for (tenant, args, says) in [
        (
            "x",
            vec!["--capabilities", "CAP_NOPE", "--", "true"],
            "tenantd: error: --capabilities: 'CAP_NOPE' is not a capability",
        ),
        (
            "x",
            vec!["--user", "no-such-user-tenantd", "--", "true"],
            "tenantd: error: unknown user 'no-such-user-tenantd'",
        ),
        (
            "x",
            vec!["--group", "no-such-group-tenantd", "--", "true"],
            "tenantd: error: unknown group 'no-such-group-tenantd'",
        ),
        (
            "y",
            vec!["--", "true"],
            "tenantd: error: unknown user 'no-such-user-tenantd'",
        ),
        (
            "x",
            vec!["--private-pid", "--", "/nonexistent/cmd"],
            "tenantd: error: cannot start '/nonexistent/cmd'",
        ),
        (
            "x",
            vec!["--", "/nonexistent/cmd"],
            "tenantd: error: cannot start '/nonexistent/cmd'",
        ),
    ] {
        let out = run_output(&v, tenant, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with(says) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    // Only the two commands that could not start were placed (placement comes before exec;
    // every other refusal came before placement).
    let (st, events) = v
        .ns()
        .d
        .call("GET", "/v1/events?kind=process_attached", None);
    assert_eq!(st, 200, "{events}");
    let attached: Vec<&serde_json::Value> = events.as_array().unwrap().iter().collect();
    assert_eq!(attached.len(), 2, "{events}");
    assert!(attached.iter().all(|e| e["tenant"] == "x"), "{events}");

    // An unprivileged caller cannot switch user: said before anything changes.
    let out = Command::new("nsenter")
        .args(["--target", &v.ns().host_pid.to_string(), "--pid", "--"])
        .args([
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(bin())
        .args(["run", "--tenant", "x", "--user", "0", "--", "true"])
        .env("TENANTD_ADDR", &v.ns().d.addr)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "tenantd: error: switching user needs CAP_SETUID (run tenantd run as root)"
    );
}

/// Ctrl-C in a terminal under `--private-pid`: the terminal's SIGINT reaches the command once
/// (it is in the foreground process group; the forwarder and the reaper do not pass a
/// terminal's signal on again), and `tenantd run` ends as the command did. The tmux server
/// runs inside the daemon's PID namespace, so the pane's `tenantd run` posts a PID the daemon
/// knows; the pane's shell has a handler for SIGINT, so it survives the Ctrl-C and prints the
/// status (a handler, unlike an ignored signal, is not inherited across exec). Needs tmux,
/// like `top`.
#[test]
fn issue_18_ctrl_c_under_private_pid_reaches_the_command_once() {
    let tmux = Tmux::new();
    let v = V1Ns::start("launch-tty", Init::Shell);
    v.ns().d.create("x", json!({}));
    // Counts SIGINTs in Python, whose handler runs at once (a shell runs its trap only after
    // the foreground command, so two SIGINTs could merge into one there).
    let counter = "import signal, time\nn = []\nsignal.signal(signal.SIGINT, lambda *a: n.append(1))\nprint('ready', flush=True)\nwhile not n: time.sleep(0.05)\ntime.sleep(1)\nprint(f'ints={len(n)}')\nraise SystemExit(4)";
    let script = format!(
        "trap true INT; TENANTD_ADDR={} '{}' run --tenant x --private-pid -- python3 -c '{}'; echo \"status=$?\"; sleep 600",
        v.ns().d.addr,
        bin(),
        counter.replace('\'', r#"'\''"#)
    );
    let out = Command::new("nsenter")
        .args(["--target", &v.ns().host_pid.to_string(), "--pid", "--"])
        .arg("tmux")
        .arg("-S")
        .arg(&tmux.socket)
        .args(["new-session", "-d", "-s", "top", "-x", "160", "-y", "20"])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    tmux.wait_for(30, "the command ready", |s| s.contains("ready"));
    tmux.run(&["send-keys", "-t", "top", "C-c"]);
    let s = tmux.wait_for(30, "tenantd run's status", |s| s.contains("status="));
    assert!(s.contains("ints=1\n") && s.contains("status=4"), "{s}");
}
