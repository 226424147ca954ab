//! Per-tenant egress policies (issue 18). On any host: bad entries answer 422 naming the
//! entry, and a host that cannot enforce a policy refuses it (the v1 backend on this host).
//! In the cgroup v2 VM (`#[ignore]`), with the daemon's own nftables table: a tenant denied
//! 127.0.0.2:5432 and [::1]:5432 cannot reach them (TCP and UDP) while another tenant and the
//! root can; the policy holds after a delete and recreate; `nft flush ruleset` and a cgroup
//! removed by hand are found and corrected by reconcile, with drift events; a child at depth 2
//! inherits its parent's policy, or overrides it with its own; allow-list mode; counters
//! move; without nft (or with an nft the kernel refuses) a policy is refused.
//!
//! The processes that connect are started by the test, moved into their tenant through
//! `POST /v1/tenants/{name}/procs`, and only then open their socket (a socket keeps the
//! cgroup it was created in). The listeners are the test's own, in the root cgroup.

use crate::support::{
    Api, Daemon, NEEDS_V2, Owned, TestRoot, V1Daemon, eventually, oneshot, request,
};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The entry the tests deny or allow.
const PORT: u16 = 5432;

#[tokio::test]
async fn egress_bad_entries_are_422_naming_the_entry() {
    let a = Api::new(
        tenantd::api::auth::Tokens::open(),
        1 << 20,
        Duration::from_secs(5),
    )
    .await;
    let put = |body: Value| {
        let state = a.state.clone();
        async move {
            let r = oneshot(
                &state,
                request(
                    "PUT",
                    "/v1/tenants/acme",
                    None,
                    None,
                    Some(&body.to_string()),
                ),
            )
            .await;
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.status, v)
        }
    };
    let deny = |entries: Value| json!({"network": {"egress": {"deny": entries}}});
    for (body, field, why) in [
        (
            deny(json!(["10.0.0.0/8", "1.2.3.4:80", "10.0.0.300/8"])),
            "network.egress.deny[2]",
            "not an IPv4 or IPv6 address",
        ),
        (
            deny(json!(["127.0.0.2:0"])),
            "network.egress.deny[0]",
            "port 0 is out of range",
        ),
        (
            deny(json!(["[::1]:65536/tcp"])),
            "network.egress.deny[0]",
            "port 65536 is out of range",
        ),
        (
            deny(json!(["10.0.0.0/8:6000-5000"])),
            "network.egress.deny[0]",
            "runs backwards",
        ),
        (
            json!({"network": {"egress": {"allow": ["1.2.3.4", "10.0.0.1/8"]}}}),
            "network.egress.allow[1]",
            "write 10.0.0.0/8",
        ),
        (
            json!({"network": {"egress": {"default": "drop"}}}),
            "network.egress.default",
            "unknown variant",
        ),
        (
            deny(json!(vec!["10.0.0.0/8"; 65])),
            "network.egress.deny",
            "at most 64",
        ),
    ] {
        let (status, p) = put(body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {p}");
        assert_eq!(p["field"], field, "{body}: {p}");
        assert!(
            p["detail"].as_str().unwrap_or("").contains(why),
            "{body}: {p}"
        );
    }
    // A valid policy on a governor that cannot enforce one (never probed): refused, with
    // the reason, and nothing stored.
    let (status, p) = put(deny(json!(["127.0.0.2:5432"]))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["field"], "network.egress");
    assert!(
        p["type"].as_str().unwrap().ends_with("unsupported-by-host"),
        "{p}"
    );
    let r = oneshot(&a.state, request("GET", "/v1/tenants", None, None, None)).await;
    assert_eq!(String::from_utf8_lossy(&r.body), "[]");
}

/// This host runs tenants on cgroup v1: a tenant's sockets are in no cgroup2 directory of
/// tenantd's, so `/v1/host` says egress policies are refused here, and they are.
#[test]
fn egress_on_a_v1_host_a_policy_is_refused_and_host_says_why() {
    let v = V1Daemon::start("egress-v1");
    let d = v.d();
    let (s, host) = d.call("GET", "/v1/host", None);
    assert_eq!(s, 200);
    assert_eq!(host["egress"]["available"], false, "{host}");
    let why = host["egress"]["why"].as_str().unwrap();
    assert!(why.contains("cgroup v1"), "{why}");
    let (s, p) = d.call(
        "PUT",
        "/v1/tenants/acme",
        Some(json!({"network": {"egress": {"deny": ["127.0.0.2:5432"]}}})),
    );
    assert_eq!(s, 422, "{p}");
    assert_eq!(p["field"], "network.egress");
    assert!(p["detail"].as_str().unwrap().contains("cgroup v1"), "{p}");
    // Without a policy the tenant is made, and no policy applies to it.
    d.create("acme", json!({}));
    let (_, t) = d.call("GET", "/v1/tenants/acme", None);
    assert_eq!(t["egress"], Value::Null, "{t}");
}

// ---------------------------------------------------------------------------------------
// In the cgroup v2 VM

/// The listeners: TCP and UDP on 127.0.0.2 and ::1, accepting and recording what arrives
/// until dropped.
struct Servers {
    udp_seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(port: u16) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let udp_seen = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for host in ["127.0.0.2", "[::1]"] {
            let tcp = TcpListener::bind(format!("{host}:{port}"))
                .unwrap_or_else(|e| panic!("listen on {host}:{port}: {e}"));
            tcp.set_nonblocking(true).unwrap();
            let udp = UdpSocket::bind(format!("{host}:{port}"))
                .unwrap_or_else(|e| panic!("bind udp {host}:{port}: {e}"));
            udp.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let (stop, seen) = (stop.clone(), udp_seen.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    while let Ok((mut c, _)) = tcp.accept() {
                        let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                        let _ = c.read(&mut buf);
                    }
                    if let Ok((n, _)) = udp.recv_from(&mut buf) {
                        let msg = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                        seen.lock().unwrap().push(msg);
                    }
                }
            }));
        }
        Servers {
            udp_seen,
            stop,
            threads,
        }
    }

    fn got_udp(&self, token: &str) -> bool {
        self.udp_seen.lock().unwrap().iter().any(|m| m == token)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Proto {
    Tcp,
    Udp,
}

/// Starts a shell that waits for a line on stdin, moves it into `tenant` (through the API;
/// `None`: it stays in the test's cgroup, the root), then lets it open a `proto` socket to
/// `host:port` and send a token. Ok when the connection (TCP) or the datagram (UDP: sent and
/// received by the listener) went through; Err with what the shell said otherwise.
fn attempt(
    d: &Daemon,
    s: &Servers,
    tenant: Option<&str>,
    proto: Proto,
    host: &str,
    port: u16,
) -> Result<(), String> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let token = format!("t{}", N.fetch_add(1, Ordering::Relaxed));
    let dev = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let script = format!(
        "read -r _ || exit 99; exec 3<>/dev/{dev}/{host}/{port} || exit 1; echo {token} >&3 || exit 2; echo sent"
    );
    let mut child = Owned(
        Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bash"),
    );
    if let Some(t) = tenant {
        let (st, body) = d.call(
            "POST",
            &format!("/v1/tenants/{t}/procs"),
            Some(json!({"pid": child.pid()})),
        );
        assert_eq!(st, 201, "place {} in {t}: {body}", child.pid());
    }
    child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{proto:?} to {host}:{port} from {tenant:?} hung (a refusal must answer at once)"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
    if !status.success() {
        return Err(format!("{status}: {}", err.trim()));
    }
    if proto == Proto::Udp {
        // Sent is not received: wait for the listener to see the token.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s.got_udp(&token) {
            if Instant::now() > deadline {
                return Err("the datagram was sent but never arrived".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Every (protocol, host) the tests try.
const PATHS: [(Proto, &str); 4] = [
    (Proto::Tcp, "127.0.0.2"),
    (Proto::Udp, "127.0.0.2"),
    (Proto::Tcp, "::1"),
    (Proto::Udp, "::1"),
];

fn assert_refused(d: &Daemon, s: &Servers, tenant: &str, port: u16) {
    for (proto, host) in PATHS {
        let r = attempt(d, s, Some(tenant), proto, host, port);
        assert!(
            r.is_err(),
            "{tenant} reached {host}:{port} over {proto:?} although its policy denies it"
        );
    }
}

fn assert_reaches(d: &Daemon, s: &Servers, tenant: Option<&str>, port: u16) {
    for (proto, host) in PATHS {
        if let Err(e) = attempt(d, s, tenant, proto, host, port) {
            panic!("{tenant:?} could not reach {host}:{port} over {proto:?}: {e}");
        }
    }
}

/// The root connects too (the test process is in the root cgroup).
fn assert_root_reaches(port: u16) {
    for host in ["127.0.0.2", "[::1]"] {
        std::net::TcpStream::connect(format!("{host}:{port}"))
            .unwrap_or_else(|e| panic!("the root could not reach {host}:{port}: {e}"));
    }
}

/// A v2 daemon whose /v1/host says egress policies are enforced; fails loudly when not
/// (nft missing from the VM's PATH, the nftables modules not loaded).
fn daemon(root: &TestRoot) -> Daemon {
    let d = Daemon::start(root);
    let (_, host) = d.call("GET", "/v1/host", None);
    assert_eq!(
        host["egress"]["available"], true,
        "egress policies are not available in this VM: {} (tests/vm/build-assets.sh loads the nftables modules, .ci/run installs nft)",
        host["egress"]
    );
    d
}

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes tenantd's table after a test, so the next one starts without it.
struct DropTable;

impl Drop for DropTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", "tenantd"])
            .output();
    }
}

fn deny_5432() -> Value {
    json!({"network": {"egress": {"deny": [format!("127.0.0.2:{PORT}"), format!("[::1]:{PORT}")]}}})
}

/// The counter of one rule of `tenant`'s policy on /metrics (0 when absent).
fn counter(d: &Daemon, tenant: &str, rule: &str) -> u64 {
    let text = crate::usage::scrape(d);
    text.lines()
        .filter(|l| {
            l.starts_with("tenantd_tenant_egress_packets_total{")
                && l.contains(&format!("tenant=\"{tenant}\""))
                && l.contains(&format!("rule=\"{rule}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn egress_a_denied_destination_is_refused_to_one_tenant_only() {
    let _ = NEEDS_V2;
    let root = TestRoot::new("egress-deny");
    let _t = DropTable;
    let d = daemon(&root);
    let s = Servers::start(PORT);
    d.create("acme", deny_5432());
    d.create("globex", json!({}));
    let (_, t) = d.call("GET", "/v1/tenants/acme", None);
    assert_eq!(t["egress"]["in_force"], true, "{t}");
    assert_eq!(t["egress"]["from"], "acme");
    assert_eq!(t["egress"]["policy"]["deny"][1], "[::1]:5432");
    // The level is the tenant's depth below the cgroup2 root: <mount>/<root>/acme is 2.
    let table = nft(&["list", "table", "inet", "tenantd"]);
    assert!(
        table.contains("socket cgroupv2 level 2 vmap @level2"),
        "{table}"
    );
    let rel = root.path.strip_prefix(&root.mount).unwrap().join("acme");
    assert!(
        table.contains(&format!("\"{}\" : goto t_acme", rel.display())),
        "{table}"
    );

    assert_refused(&d, &s, "acme", PORT);
    assert_reaches(&d, &s, Some("globex"), PORT);
    assert_root_reaches(PORT);
    // Another port stays open to acme: the policy denies one destination only.
    let s2 = Servers::start(PORT + 1);
    assert_reaches(&d, &s2, Some("acme"), PORT + 1);
    // Counters move: two refused (TCP and UDP) per family at least.
    let denied = counter(&d, "acme", "deny[0]") + counter(&d, "acme", "deny[1]");
    assert!(denied >= 4, "acme's deny counters: {denied}");
    assert!(counter(&d, "acme", "default") > 0, "acme's default counter");
    let (_, t) = d.call("GET", "/v1/tenants/globex", None);
    assert_eq!(t["egress"], Value::Null, "{t}");
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn egress_delete_and_recreate_keeps_the_policy() {
    let root = TestRoot::new("egress-recreate");
    let _t = DropTable;
    let d = daemon(&root);
    let s = Servers::start(PORT);
    d.create("acme", deny_5432());
    assert_refused(&d, &s, "acme", PORT);
    let (st, body) = d.call("DELETE", "/v1/tenants/acme?kill=true", None);
    assert_eq!(st, 204, "{body}");
    // Gone with its tenant: the last policy, so the table is removed whole.
    let listed = Command::new("nft")
        .args(["list", "table", "inet", "tenantd"])
        .output()
        .unwrap();
    assert!(
        !listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    d.create("acme", deny_5432());
    // The new cgroup has a new id, and the rule holds it.
    assert_refused(&d, &s, "acme", PORT);
    let (_, t) = d.call("GET", "/v1/tenants/acme", None);
    assert_eq!(t["egress"]["in_force"], true, "{t}");
    // A policy taken away lets acme through again.
    let (st, body) = d.call("PUT", "/v1/tenants/acme", Some(json!({})));
    assert_eq!(st, 200, "{body}");
    assert_reaches(&d, &s, Some("acme"), PORT);
    let (st, body) = d.call("PATCH", "/v1/tenants/acme", Some(deny_5432()));
    assert_eq!(st, 200, "{body}");
    assert_refused(&d, &s, "acme", PORT);
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn egress_reconcile_restores_a_flushed_table_and_a_recreated_cgroup_with_drift_events() {
    let root = TestRoot::new("egress-drift");
    let _t = DropTable;
    let d = daemon(&root);
    let s = Servers::start(PORT);
    d.create("acme", deny_5432());
    assert_refused(&d, &s, "acme", PORT);
    let before = counter(&d, "acme", "deny[0]");
    assert!(before > 0);
    // A pass over a table as written finds nothing.
    let (_, r) = d.call("POST", "/v1/reconcile", None);
    assert_eq!(r["egress_drift"], json!([]), "{r}");

    nft(&["flush", "ruleset"]);
    // Flushed: nothing enforces the policy (this is what reconcile is for).
    assert_reaches(&d, &s, Some("acme"), PORT);
    let (_, r) = d.call("POST", "/v1/reconcile", None);
    let drift = r["egress_drift"].to_string();
    assert!(drift.contains("was missing"), "{r}");
    assert_refused(&d, &s, "acme", PORT);
    let (_, ev) = d.call("GET", "/v1/events?kind=drift_corrected", None);
    assert!(
        ev.as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"]["file"] == "nftables table inet tenantd"
                && e["detail"]["was"].as_str().unwrap().contains("was missing")),
        "{ev}"
    );

    // acme's cgroup removed by hand and made again by reconcile: the rule held the old
    // cgroup's id; the same pass binds the new one, and says so.
    let dir = root.path.join("acme");
    std::fs::remove_dir(dir.join("_procs")).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    let (_, r) = d.call("POST", "/v1/reconcile", None);
    assert_eq!(r["created"], json!(["acme"]), "{r}");
    let drift = r["egress_drift"].to_string();
    assert!(
        drift.contains("no longer exists") && drift.contains("acme"),
        "{r}"
    );
    assert_refused(&d, &s, "acme", PORT);
    let (_, ev) = d.call("GET", "/v1/events?tenant=acme&kind=drift_corrected", None);
    assert!(
        ev.as_array().unwrap().iter().any(|e| e["detail"]["was"]
            .as_str()
            .unwrap()
            .contains("no longer exists")),
        "{ev}"
    );
    // The counters were carried over every rewrite except the flush.
    let (_, t) = d.call("GET", "/v1/tenants/acme", None);
    assert_eq!(t["egress"]["in_force"], true, "{t}");
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn egress_a_child_at_depth_2_inherits_or_overrides() {
    let root = TestRoot::new("egress-child");
    let _t = DropTable;
    let d = daemon(&root);
    let s = Servers::start(PORT);
    d.create("acme", deny_5432());
    // web inherits acme's policy; api sets its own, which lets everything through.
    d.create("web", json!({"parent": "acme"}));
    d.create(
        "api",
        json!({"parent": "acme", "network": {"egress": {"default": "allow"}}}),
    );
    // db, one level deeper, denies with its own policy: depth 3 is matched too.
    d.create(
        "db",
        json!({"parent": "api", "network": {"egress": {"deny": ["127.0.0.2:5432/tcp"]}}}),
    );
    let (_, t) = d.call("GET", "/v1/tenants/web", None);
    assert_eq!(t["egress"]["from"], "acme", "{t}");
    assert_eq!(t["egress"]["in_force"], true, "{t}");
    assert_refused(&d, &s, "web", PORT);
    assert_reaches(&d, &s, Some("api"), PORT);
    assert!(attempt(&d, &s, Some("db"), Proto::Tcp, "127.0.0.2", PORT).is_err());
    attempt(&d, &s, Some("db"), Proto::Udp, "127.0.0.2", PORT).unwrap();
    let table = nft(&["list", "table", "inet", "tenantd"]);
    for l in ["level 2", "level 3", "level 4"] {
        assert!(
            table.contains(&format!("socket cgroupv2 {l} vmap")),
            "{l}: {table}"
        );
    }
    // web's traffic counts under acme, whose policy it is.
    assert!(counter(&d, "acme", "deny[0]") > 0);
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn egress_allow_list_mode_lets_only_the_listed_destinations_through() {
    let root = TestRoot::new("egress-allow");
    let _t = DropTable;
    let d = daemon(&root);
    let s = Servers::start(PORT);
    let s2 = Servers::start(PORT + 1);
    d.create(
        "acme",
        json!({"network": {"egress": {"default": "deny", "allow": [format!("127.0.0.2:{PORT}/tcp")]}}}),
    );
    attempt(&d, &s, Some("acme"), Proto::Tcp, "127.0.0.2", PORT).unwrap();
    for (proto, host, port) in [
        (Proto::Udp, "127.0.0.2", PORT),
        (Proto::Tcp, "127.0.0.2", PORT + 1),
        (Proto::Tcp, "::1", PORT),
        (Proto::Udp, "::1", PORT + 1),
    ] {
        let srv = if port == PORT { &s } else { &s2 };
        assert!(
            attempt(&d, srv, Some("acme"), proto, host, port).is_err(),
            "{proto:?} {host}:{port} went through an allow list that does not name it"
        );
    }
    assert!(counter(&d, "acme", "allow[0]") > 0);
    assert!(counter(&d, "acme", "default") >= 4);
    // The metrics say the policy is in force.
    let text = crate::usage::scrape(&d);
    assert!(
        text.contains("tenantd_tenant_egress_in_force{tenant=\"acme\"} 1"),
        "{text}"
    );
}

/// Without nft, and with an nft whose kernel refuses the table (a stand-in that fails
/// `--check` the way nft does without nft_socket), `/v1/host` says why and a policy is
/// refused, never stored unenforced.
#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn egress_without_nft_support_a_policy_is_refused() {
    let root = TestRoot::new("egress-nonft");
    let fake = root.dir.path().join("fake-nft");
    std::fs::create_dir_all(&fake).unwrap();
    let script = fake.join("nft");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in --version) echo 'nftables v1.0.6 (stand-in)';; *) echo 'Error: Could not process rule: No such file or directory' >&2; exit 1;; esac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (path, why) in [
        (
            "/nonexistent:/usr/bin:/bin".to_string(),
            "nft is not installed",
        ),
        (
            format!("{}:/usr/bin:/bin", fake.display()),
            "the kernel refused a table of tenantd's shape",
        ),
    ] {
        let d = Daemon::launch(root.dir.path(), |port| {
            let mut c = Daemon::serve(&root, port);
            c.env("PATH", &path);
            c
        });
        let (_, host) = d.call("GET", "/v1/host", None);
        assert_eq!(host["egress"]["available"], false, "{host}");
        assert!(
            host["egress"]["why"].as_str().unwrap().contains(why),
            "{host}"
        );
        let (st, p) = d.call("PUT", "/v1/tenants/acme", Some(deny_5432()));
        assert_eq!(st, 422, "{p}");
        assert_eq!(p["field"], "network.egress");
        assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
        let (st, _) = d.call("GET", "/v1/tenants/acme", None);
        assert_eq!(st, 404);
        eventually(5, "nothing stored", || {
            d.call("GET", "/v1/tenants", None).1 == json!([])
        });
    }
}
