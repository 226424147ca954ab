//! Non-root operation in a subtree delegated the way systemd delegates (issue 14), against a
//! real cgroup v2 kernel (the VM): the test, as root, plays the delegator (cgroup-v2.rst,
//! "Delegation": the directory and its cgroup.procs, cgroup.subtree_control and
//! cgroup.threads chowned to an unprivileged user), and the daemon runs as that user.

use crate::support::*;
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The unprivileged user the subtree is delegated to (no passwd entry needed with setpriv).
const UID: u32 = 1000;

/// `setpriv` arguments that drop to `UID` with no supplementary groups.
fn as_user() -> [String; 3] {
    [
        format!("--reuid={UID}"),
        format!("--regid={UID}"),
        "--clear-groups".into(),
    ]
}

/// What the delegator does: the test root with every controller enabled for its children,
/// and `<root>/deleg` handed to `UID` (the directory and the three files the delegation model
/// names), the database directory too. Returns the delegated directory.
fn delegate(root: &TestRoot) -> PathBuf {
    std::fs::create_dir(&root.path).unwrap();
    std::fs::write(
        root.path.join("cgroup.subtree_control"),
        "+cpu +memory +io +pids",
    )
    .unwrap();
    let deleg = root.path.join("deleg");
    std::fs::create_dir(&deleg).unwrap();
    for p in [
        deleg.clone(),
        deleg.join("cgroup.procs"),
        deleg.join("cgroup.subtree_control"),
        deleg.join("cgroup.threads"),
        root.dir.path().to_path_buf(),
    ] {
        std::os::unix::fs::chown(&p, Some(UID), Some(UID))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    }
    deleg
}

/// `ARGS` run as `UID` from inside the cgroup `cgroup` (its PID written to its cgroup.procs
/// by root first, as systemd starts a delegated unit's process in the unit's cgroup).
fn inside_as_user(cgroup: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec setpriv "$@""#)
        .arg("sh")
        .arg(cgroup)
        .args(as_user())
        .arg("--")
        .args(args);
    c
}

/// Waits until `pid` runs `comm` as `UID` (setpriv has exec'ed it).
fn wait_user_process(pid: u32, comm: &str) {
    eventually(10, &format!("PID {pid} runs {comm} as uid {UID}"), || {
        let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let uid = std::fs::metadata(format!("/proc/{pid}"))
            .map(|m| m.uid())
            .unwrap_or(0);
        c.trim() == comm && uid == UID
    });
}

/// A `sleep` started by `c` (which drops to `UID`), once it runs as `UID`.
fn user_sleeper(mut c: Command) -> Owned {
    let o = Owned(
        c.stdin(Stdio::null())
            .spawn()
            .expect("spawn a sleeper as the user"),
    );
    wait_user_process(o.pid(), "sleep");
    o
}

/// POST /v1/tenants/{tenant}/procs; the status, the Content-Type and the body.
fn attach(d: &Daemon, tenant: &str, pid: u32) -> (u16, String, serde_json::Value) {
    let r = d
        .http
        .post(d.url(&format!("/v1/tenants/{tenant}/procs")))
        .json(&json!({ "pid": pid }))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (
        status,
        ct,
        serde_json::from_str(&r.text().unwrap()).unwrap_or_default(),
    )
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn delegated_non_root_daemon_governs_below_its_root_and_refuses_what_the_kernel_refuses() {
    assert_eq!(
        tenantd::cgroup::euid(),
        0,
        "the test plays the delegator, so it must run as root (as in the VM)"
    );
    let root = TestRoot::new("deleg");
    let deleg = delegate(&root);
    let rel = deleg
        .strip_prefix(&root.mount)
        .unwrap()
        .display()
        .to_string();
    let d = Daemon::launch(root.dir.path(), |port| {
        let listen = format!("127.0.0.1:{port}");
        let (db, mount) = (root.db(), root.mount.clone());
        let mut c = inside_as_user(
            &deleg,
            &[
                bin(),
                "serve",
                "--listen",
                &listen,
                "--reconcile-interval-s",
                "3600",
            ],
        );
        c.arg("--db")
            .arg(db)
            .arg("--cgroup-root")
            .arg(&deleg)
            .arg("--cgroup-mount")
            .arg(mount);
        c
    });
    let daemon_pid = d.child.id();
    wait_user_process(daemon_pid, "tenantd");
    assert_eq!(
        cgroup_of(daemon_pid),
        format!("/{rel}/_tenantd"),
        "the daemon moved itself into its own leaf"
    );

    // /v1/host says which mode it runs in and what it cannot do there.
    let (s, host) = d.call("GET", "/v1/host", None);
    assert_eq!(s, 200, "{host}");
    assert_eq!(host["mode"], "delegated", "{host}");
    let cannot: Vec<String> = host["cannot"]
        .as_array()
        .unwrap_or_else(|| panic!("no cannot list: {host}"))
        .iter()
        .map(|c| format!("{}: {}", c["what"], c["why"]))
        .collect();
    println!("delegated: /v1/host cannot:\n{}", cannot.join("\n"));
    for what in [
        "memory.min and memory.low of",
        "cpu.weight of",
        "placing processes",
    ] {
        assert!(
            cannot.iter().any(|c| c.contains(what)),
            "/v1/host cannot names '{what}': {cannot:#?}"
        );
    }

    // Tenants with guarantees: created (the issue's 500), their values in their own files.
    let (s, acme) = d.call(
        "PUT",
        "/v1/tenants/acme",
        Some(json!({"cpu": {"guarantee_pct": 60}, "memory": {"guarantee_bytes": 32 << 20, "protection": "hard"}})),
    );
    assert_eq!(s, 201, "{acme}");
    let (s, beta) = d.call(
        "PUT",
        "/v1/tenants/beta",
        Some(json!({"cpu": {"guarantee_pct": 20}, "pids": {"limit": 50}})),
    );
    assert_eq!(s, 201, "{beta}");
    let (_, acme) = d.call("GET", "/v1/tenants/acme", None);
    let (_, beta) = d.call("GET", "/v1/tenants/beta", None);
    assert_eq!(root.read("deleg/acme/cpu.weight"), "6000");
    assert_eq!(root.read("deleg/beta/cpu.weight"), "2000");
    for (t, v) in [("acme", &acme), ("beta", &beta)] {
        assert_eq!(
            root.read(&format!("deleg/{t}/cpu.weight")),
            v["planned"]["tenant"]["cpu_weight"].to_string(),
            "{t}: {v}"
        );
        assert_eq!(
            v["effective"]["cpu_weight"], v["planned"]["tenant"]["cpu_weight"],
            "{t}: {v}"
        );
    }
    assert_eq!(
        root.read("deleg/acme/memory.min"),
        (32u64 << 20).to_string()
    );
    assert_eq!(root.read("deleg/beta/pids.max"), "50");
    assert_eq!(
        root.read("deleg/_tenantd/cpu.weight"),
        "500",
        "the daemon's own leaf is its to write"
    );
    // The delegated root's own files are the delegator's: untouched, still root's.
    assert_eq!(root.read("deleg/memory.min"), "0");
    assert_eq!(root.read("deleg/cpu.weight"), "100");
    assert_eq!(
        std::fs::metadata(deleg.join("memory.min")).unwrap().uid(),
        0
    );

    // A process of its own, inside the delegated subtree: placed.
    let mine = user_sleeper(inside_as_user(&deleg.join("_tenantd"), &["sleep", "600"]));
    let (s, ct, body) = attach(&d, "acme", mine.pid());
    assert_eq!(s, 201, "{ct} {body}");
    assert_eq!(cgroup_of(mine.pid()), format!("/{rel}/acme/_procs"));

    // Another user's process (root's, outside the subtree): 403 with the kernel's reason.
    let theirs = sleeper();
    let before = cgroup_of(theirs.pid());
    let (s, ct, body) = attach(&d, "acme", theirs.pid());
    assert_eq!(s, 403, "{body}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["field"], "pid", "{body}");
    assert_eq!(body["status"], 403, "{body}");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("Permission denied") && detail.contains(&theirs.pid().to_string()),
        "the kernel's reason and the PID: {detail}"
    );
    assert_eq!(cgroup_of(theirs.pid()), before, "nothing moved");
    println!("delegated: root's process refused: {detail}");

    // The kernel's rule is the subtree, not the uid: the same user's process outside it is
    // refused the same way.
    let mut c = Command::new("setpriv");
    c.args(as_user()).args(["--", "sleep", "600"]);
    let outside = user_sleeper(c);
    let (s, _, body) = attach(&d, "beta", outside.pid());
    assert_eq!(s, 403, "{body}");

    // Reconcile as the delegatee: nothing to correct, no error (the root is not written).
    let (s, r) = d.call("POST", "/v1/reconcile", None);
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["errors"], json!([]), "{r}");
    assert_eq!(r["corrected"], json!([]), "{r}");
    let (s, _) = d.call("DELETE", "/v1/tenants/beta", None);
    assert_eq!(s, 204);
    assert!(!deleg.join("beta").exists());
}
