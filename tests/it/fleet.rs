//! A fleet sharing one desired state in a real PostgreSQL (issue 19), on this cgroup v1 host:
//! the store's schema guard, and three nodes (each its own cgroup roots below the test's own
//! cgroups, its own SQLite database, its own labels) applying what any node's API accepts,
//! through an outage of the store.

use super::pg::Postgres;
use super::support::{Daemon, V1Dirs, bin, eventually};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tenantd::store::fleet::{FleetError, FleetStore};

/// A node: its directories and daemon (`fleet_history` starts them too).
pub struct Node {
    // Dropped (killed) before the directories.
    pub d: Option<Daemon>,
    pub dirs: V1Dirs,
    pub name: &'static str,
    pub labels: &'static str,
}

impl Node {
    fn args(&self, url: &str) -> Vec<String> {
        let mut args = vec![bin().to_string()];
        args.extend(V1Dirs::serve_args(0, &self.dirs.db()));
        args.extend(
            [
                "--store",
                url,
                "--node",
                self.name,
                "--node-labels",
                self.labels,
                "--node-timeout-s",
                "3",
            ]
            .map(String::from),
        );
        args
    }

    pub fn start(name: &'static str, labels: &'static str, url: &str) -> Node {
        // Numbered: tests of one process (`cargo test`) start nodes of the same names.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut n = Node {
            d: None,
            dirs: V1Dirs::create(&format!("fleet-{name}-{k}")),
            name,
            labels,
        };
        n.launch(url);
        n
    }

    pub fn launch(&mut self, url: &str) {
        let args = self.args(url);
        let dirs = &self.dirs;
        self.d = Some(Daemon::launch(dirs.tmp.path(), |port| {
            let mut args = args.clone();
            // serve_args(0, ..) put port 0 after --listen: the real one.
            let i = args.iter().position(|a| a == "--listen").unwrap() + 1;
            args[i] = format!("127.0.0.1:{port}");
            dirs.inside(&args)
        }));
    }

    pub fn d(&self) -> &Daemon {
        self.d.as_ref().expect("running")
    }

    /// A file of tenant `t` in `controller`'s hierarchy on this node.
    pub fn file(&self, controller: &str, t: &str, file: &str) -> PathBuf {
        self.dirs.under_root(controller, t).join(file)
    }

    pub fn pids_max(&self, t: &str) -> Option<String> {
        std::fs::read_to_string(self.file("pids", t, "pids.max"))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

pub fn spec(pids: u64, cpu: f64, nodes: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"cpu": {"guarantee_pct": cpu}, "pids": {"limit": pids}, "nodes": nodes})
}

/// Waits (at most `secs`) until every node of `on` holds `want` as the tenant's pids.max and
/// every node of `off` holds no directory for it; returns how long it took.
fn converge(t: &str, want: Option<&str>, on: &[&Node], off: &[&Node], secs: u64) -> Duration {
    let start = Instant::now();
    eventually(
        secs,
        &format!("tenant '{t}' with pids.max {want:?} on the selected nodes only"),
        || {
            on.iter().all(|n| n.pids_max(t).as_deref() == want)
                && off.iter().all(|n| !n.dirs.under_root("pids", t).exists())
        },
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_store_refuses_a_schema_newer_than_it_knows() {
    let pg = Postgres::start();
    let store = FleetStore::new(&pg.url(), Duration::from_secs(3)).unwrap();
    store.prepare().await.unwrap();
    store
        .prepare()
        .await
        .expect("preparing twice changes nothing");
    let known = FleetStore::known_version();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from a newer tenantd', true, '\\x00', 0)",
    )
    .bind(known + 1)
    .execute(&sqlx::PgPool::connect(&pg.url()).await.unwrap())
    .await
    .unwrap();
    let e = store.prepare().await.unwrap_err();
    assert!(
        matches!(e, FleetError::SchemaTooNew { found, .. } if found == known + 1),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("schema version {}", known + 1))
            && msg.contains("upgrade tenantd")
            && msg.contains(&format!("127.0.0.1:{}", pg.port)),
        "{msg}"
    );
    store.close().await;

    // A node refuses to start against it, saying why, with a non-zero exit.
    let dirs = V1Dirs::create("fleet-schema");
    let mut args = vec![bin().to_string()];
    args.extend(V1Dirs::serve_args(super::support::free_port(), &dirs.db()));
    args.extend(["--store".into(), pg.url(), "--node".into(), "n1".into()]);
    let mut child = dirs
        .inside(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tenantd serve kept running against a newer schema");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("newer than this tenantd knows"),
        "the refusal names the cause: {err}"
    );
}

/// Three nodes on this host (n1, n2 labelled role=web, n3 role=db) sharing one desired state:
/// a tenant applied on any node reaches the kernel of the selected nodes only, within 2 s;
/// admission refuses an overcommit naming the node; with PostgreSQL stopped, enforcement
/// goes on (drift is corrected, a restarted node starts from its local copy) and writes get
/// 503 naming the store; after PostgreSQL restarts, a change converges again; a node that
/// stops heartbeating is shown as down.
#[test]
fn three_nodes_share_one_desired_state_through_an_outage() {
    let pg = Postgres::start();
    let url = pg.url();
    let n1 = Node::start("n1", "role=web,zone=a", &url);
    let mut n2 = Node::start("n2", "role=web,zone=b", &url);
    let mut n3 = Node::start("n3", "role=db", &url);

    let (s, nodes) = n1.d().call("GET", "/v1/nodes", None);
    assert_eq!(s, 200, "{nodes}");
    let listed = nodes["nodes"].as_array().unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["n1", "n2", "n3"],
        "{nodes}"
    );
    for n in listed {
        assert_eq!(n["cgroup_version"], "v1", "{n}");
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"), "{n}");
        assert_eq!(n["down"], false, "{n}");
    }
    assert_eq!(listed[0]["labels"]["zone"], "a");
    assert_eq!(nodes["this_node"], "n1");

    // Applied on n1, selected for the web nodes: in n1's and n2's kernels, not n3's.
    let web = serde_json::json!({"role": "web"});
    let (s, b) = n1
        .d()
        .call("PUT", "/v1/tenants/shop", Some(spec(77, 50.0, web.clone())));
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        n1.pids_max("shop").as_deref(),
        Some("77"),
        "n1 applied it before answering"
    );
    let took = converge("shop", Some("77"), &[&n1, &n2], &[&n3], 10);
    eprintln!("create reached every selected node in {took:?}");
    assert!(took < Duration::from_secs(2), "create took {took:?}");
    // Applied on n3, which it does not select: 202 with the nodes that enforce it.
    let (s, b) = n3
        .d()
        .call("PUT", "/v1/tenants/cart", Some(spec(33, 10.0, web.clone())));
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["nodes"], serde_json::json!(["n1", "n2"]), "{b}");
    let took = converge("cart", Some("33"), &[&n1, &n2], &[&n3], 10);
    assert!(
        took < Duration::from_secs(2),
        "create from n3 took {took:?}"
    );
    // Everywhere (no selector).
    let (s, b) = n2.d().call(
        "PUT",
        "/v1/tenants/base",
        Some(spec(11, 5.0, serde_json::Value::Null)),
    );
    assert_eq!(s, 201, "{b}");
    converge("base", Some("11"), &[&n1, &n2, &n3], &[], 2);

    // A change, applied on n2.
    let (s, b) = n2.d().call(
        "PATCH",
        "/v1/tenants/shop",
        Some(serde_json::json!({"pids": {"limit": 88}})),
    );
    assert_eq!(s, 200, "{b}");
    let took = converge("shop", Some("88"), &[&n1, &n2], &[&n3], 10);
    assert!(took < Duration::from_secs(2), "change took {took:?}");
    // Twenty changes on n1, each timed from the request to n1's answer and to n2's kernel
    // holding it.
    let (mut answered, mut times) = (Vec::new(), Vec::new());
    for i in 0..20u64 {
        let limit = 200 + i;
        let sent = Instant::now();
        let (s, b) = n1.d().call(
            "PATCH",
            "/v1/tenants/shop",
            Some(serde_json::json!({"pids": {"limit": limit}})),
        );
        assert_eq!(s, 200, "{b}");
        answered.push(sent.elapsed().as_secs_f64());
        let want = limit.to_string();
        converge("shop", Some(&want), &[&n2], &[&n3], 10);
        times.push(sent.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    answered.sort_by(f64::total_cmp);
    eprintln!(
        "20 changes sent to n1: answered after median {:.3} s, max {:.3} s; in n2's kernel after median {:.3} s, max {:.3} s",
        answered[10], answered[19], times[10], times[19]
    );
    assert!(times[19] < 2.0, "{times:?}");
    let (s, b) = n1.d().call(
        "PATCH",
        "/v1/tenants/shop",
        Some(serde_json::json!({"pids": {"limit": 88}})),
    );
    assert_eq!(s, 200, "{b}");
    converge("shop", Some("88"), &[&n1, &n2], &[&n3], 2);

    // Admission per node: 50% + 10% of the web nodes are taken; 45% more does not fit there.
    let (s, b) = n3
        .d()
        .call("PUT", "/v1/tenants/big", Some(spec(10, 45.0, web.clone())));
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["field"], "cpu.guarantee_pct", "{b}");
    let detail = b["detail"].as_str().unwrap();
    assert!(
        detail.contains("on node 'n1'") && detail.contains("at most 35% is left"),
        "{detail}"
    );
    // The same on the db node fits.
    let (s, b) = n3.d().call(
        "PUT",
        "/v1/tenants/big",
        Some(spec(10, 45.0, serde_json::json!({"role": "db"}))),
    );
    assert_eq!(s, 201, "{b}");
    converge("big", Some("10"), &[&n3], &[&n1, &n2], 2);

    // `tenantd tenant apply` on a node that does not enforce it says where it is enforced.
    let toml = n3.dirs.tmp.path().join("tenants.toml");
    std::fs::write(
        &toml,
        "[[tenant]]\nname = \"blog\"\npids = { limit = 22 }\nnodes = { role = \"web\" }\n",
    )
    .unwrap();
    let out = n3
        .d()
        .cli()
        .args(["tenant", "apply", "-f"])
        .arg(&toml)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "[1/1] applied tenant 'blog' to the fleet (enforced on n1, n2, not on this node)"
        ),
        "{err}"
    );
    converge("blog", Some("22"), &[&n1, &n2], &[&n3], 2);

    // A delete, applied on n3 (which does not hold it).
    let (s, b) = n3.d().call("DELETE", "/v1/tenants/cart", None);
    assert_eq!(s, 204, "{b}");
    let took = converge("cart", None, &[], &[&n1, &n2, &n3], 10);
    assert!(took < Duration::from_secs(2), "delete took {took:?}");

    // What a node cannot do is reported as failed, with the reason: a hard memory guarantee
    // on the (cgroup v1) db node.
    let hard = serde_json::json!({
        "memory": {"guarantee_bytes": "64MiB", "protection": "hard"},
        "nodes": {"role": "db"}
    });
    let (s, b) = n1.d().call("PUT", "/v1/tenants/pinned", Some(hard));
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["nodes"], serde_json::json!(["n3"]), "{b}");

    // What each node holds, as every node sees it.
    let mut nodes = serde_json::Value::Null;
    eventually(10, "every node reports its tenants in force", || {
        let (_, b) = n3.d().call("GET", "/v1/nodes", None);
        nodes = b.clone();
        let counts: Vec<(u64, u64)> = b["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["in_force"].as_u64().unwrap(),
                    n["failed"].as_u64().unwrap(),
                )
            })
            .collect();
        counts == [(3, 0), (3, 0), (2, 1)]
    });
    let problem = &nodes["nodes"][2]["problems"][0];
    assert_eq!(problem["tenant"], "pinned", "{nodes}");
    assert_eq!(problem["state"], "failed", "{nodes}");
    assert!(
        problem["reason"].as_str().unwrap().contains("memory"),
        "the reason names what v1 cannot do: {problem}"
    );

    // PostgreSQL stops.
    pg.down();
    let (s, b) = n1
        .d()
        .call("PUT", "/v1/tenants/late", Some(spec(5, 1.0, web.clone())));
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["field"], "store", "{b}");
    let detail = b["detail"].as_str().unwrap();
    assert!(detail.contains(&url), "names the store: {detail}");
    let (s, b) = n2.d().call("DELETE", "/v1/tenants/shop", None);
    assert_eq!(s, 503, "{b}");
    // Enforcement goes on: drift on n2 is corrected from its local copy.
    std::fs::write(n2.file("pids", "shop", "pids.max"), "1000").unwrap();
    let (s, b) = n2.d().call("POST", "/v1/reconcile", None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(n2.pids_max("shop").as_deref(), Some("88"), "{b}");
    // A node restarted while the store is down starts from its local copy.
    n2.d = None;
    n2.launch(&url);
    let (s, b) = n2.d().call("GET", "/v1/tenants/shop", None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["spec"]["pids"]["limit"], 88, "{b}");
    assert_eq!(n2.pids_max("shop").as_deref(), Some("88"));

    // PostgreSQL is back: writes are accepted again and converge.
    pg.up();
    let mut answer = (0, serde_json::Value::Null);
    eventually(20, "a write accepted after PostgreSQL restarted", || {
        answer = n1.d().call(
            "PATCH",
            "/v1/tenants/shop",
            Some(serde_json::json!({"pids": {"limit": 99}})),
        );
        answer.0 == 200
    });
    converge("shop", Some("99"), &[&n1, &n2], &[&n3], 10);

    // A value changed by hand on n2 is reported as drifted (with the file and both values)
    // until a reconcile pass restores it.
    std::fs::write(n2.file("pids", "shop", "pids.max"), "1000").unwrap();
    let n2_shop = |nodes: &serde_json::Value| -> Option<(u64, serde_json::Value)> {
        let n = nodes["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == "n2")?;
        let p = n["problems"]
            .as_array()?
            .iter()
            .find(|p| p["tenant"] == "shop");
        Some((n["drifted"].as_u64()?, p.cloned().unwrap_or_default()))
    };
    let mut nodes = serde_json::Value::Null;
    eventually(30, "n2 reports shop drifted", || {
        nodes = n1.d().call("GET", "/v1/nodes", None).1;
        n2_shop(&nodes).is_some_and(|(d, _)| d == 1)
    });
    let (_, problem) = n2_shop(&nodes).unwrap();
    assert_eq!(problem["state"], "drifted", "{nodes}");
    let reason = problem["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("pids.max is 1000 in the kernel, the plan says 99"),
        "the reason names the file and both values: {reason}"
    );
    let (s, b) = n2.d().call("POST", "/v1/reconcile", None);
    assert_eq!(s, 200, "{b}");
    eventually(30, "n2 reports shop in force again", || {
        nodes = n1.d().call("GET", "/v1/nodes", None).1;
        n2_shop(&nodes).is_some_and(|(d, p)| d == 0 && p.is_null())
    });
    let (s, b) = n3
        .d()
        .call("PUT", "/v1/tenants/late", Some(spec(5, 1.0, web.clone())));
    assert_eq!(s, 202, "{b}");
    // Within the poll (5 s) at worst: a node subscribes again a second after its LISTEN
    // connection failed, and reads everything when it does.
    let took = converge("late", Some("5"), &[&n1, &n2], &[&n3], 10);
    eprintln!("after the outage, a create reached every selected node in {took:?}");
    assert!(
        took < Duration::from_secs(6),
        "create after the outage took {took:?}"
    );

    // n3 stops: after node_timeout_s (3 s) it is shown as down, and kept.
    n3.d = None;
    eventually(15, "n3 shown as down", || {
        let (_, b) = n1.d().call("GET", "/v1/nodes", None);
        let ns = b["nodes"].as_array().unwrap();
        ns.len() == 3 && ns[2]["name"] == "n3" && ns[2]["down"] == true && ns[0]["down"] == false
    });
    drop(n3);

    // SIGTERM stops a node of a fleet (its LISTEN connection does not hold up the pool's
    // close).
    let mut n1 = n1;
    let d = n1.d.as_mut().unwrap();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while d.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "n1 did not stop within 15 s of SIGTERM; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The store on a real PostgreSQL: a change is checked under the lock, written and announced;
/// a refused one writes nothing; a delete keeps its mode; node rows and reports round-trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_store_checks_writes_and_announces_them() {
    use tenantd::domain::fleet::TenantState;
    use tenantd::domain::{DomainError, TenantName, TenantSpec};
    use tenantd::store::fleet::{NodeRow, TenantReport, Write};
    let pg = Postgres::start();
    let store = FleetStore::new(&pg.url(), Duration::from_secs(3)).unwrap();
    store.prepare().await.unwrap();
    let node = |name: &str, role: &str| NodeRow {
        name: name.into(),
        labels: [("role".to_string(), role.to_string())].into(),
        version: "0.1.0".into(),
        cgroup_version: "v1".into(),
        cpus: 2.0,
        memory_bytes: 8 << 30,
        memory_reserve_bytes: 512 << 20,
        started_ms: 1,
        last_heartbeat_ms: 2,
    };
    store.register(&node("n1", "web")).await.unwrap();
    store.register(&node("n2", "db")).await.unwrap();
    assert!(store.heartbeat("n2", 10).await.unwrap());
    assert!(!store.heartbeat("nope", 10).await.unwrap());
    let mut changes = store.changes().await.unwrap();

    let a = TenantName::parse("a").unwrap();
    let spec = TenantSpec {
        nodes: Some([("role".to_string(), "web".to_string())].into()),
        ..Default::default()
    };
    let put = Write::Put(Box::new(spec.clone()));
    let w = store.write(&a, &put, "alice", 100, |s| {
        assert_eq!(s.nodes.len(), 2, "the check sees every node");
        Ok(())
    });
    let w = w.await.unwrap().unwrap();
    assert_eq!((w.generation, w.created), (1, true));
    let announced = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("announced within 5 s")
        .unwrap();
    assert_eq!(announced.as_deref(), Some("a"));
    let w = store
        .write(&a, &put, "bob", 200, |_| Ok(()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((w.generation, w.created), (2, false));
    // Refused: nothing written.
    let e = store
        .write(&a, &Write::Delete("kill".into()), "eve", 300, |_| {
            Err(DomainError::conflict("name", "no"))
        })
        .await
        .unwrap_err();
    assert!(matches!(e, FleetError::Refused(_)), "{e:?}");
    let snap = store.snapshot().await.unwrap();
    let t = &snap.tenants[&a];
    assert_eq!((t.generation, t.deleted.as_deref()), (2, None));
    assert_eq!(
        (t.spec.clone(), t.actor.as_deref()),
        (spec.clone(), Some("bob"))
    );
    assert_eq!(snap.nodes[1].last_heartbeat_ms, 10);
    // A delete keeps the row with its mode; a second one finds nothing; a PUT revives it.
    let del = Write::Delete("kill".into());
    assert!(
        store
            .write(&a, &del, "eve", 400, |_| Ok(()))
            .await
            .unwrap()
            .is_some()
    );
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.tenants[&a].deleted.as_deref(), Some("kill"));
    assert!(snap.specs().is_empty());
    assert!(
        store
            .write(&a, &del, "eve", 500, |_| Ok(()))
            .await
            .unwrap()
            .is_none()
    );
    let w = store
        .write(&a, &put, "bob", 600, |_| Ok(()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((w.generation, w.created), (4, true));
    assert_eq!(store.snapshot().await.unwrap().tenants[&a].created_ms, 600);
    // Reports replace the node's previous ones.
    let r = |t: &str, state, reason: Option<&str>| TenantReport {
        tenant: t.into(),
        generation: 4,
        state,
        reason: reason.map(Into::into),
    };
    store
        .report(
            "n1",
            &[
                r("a", TenantState::InForce, None),
                r("b", TenantState::Failed, Some("x")),
            ],
            700,
        )
        .await
        .unwrap();
    store
        .report("n1", &[r("a", TenantState::Drifted, Some("gone"))], 800)
        .await
        .unwrap();
    let all = store.reports().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all["n1"], [r("a", TenantState::Drifted, Some("gone"))]);
    // The subscription holds a connection of the pool, which `close` waits for.
    drop(changes);
    store.close().await;
}

/// Placement rules in a fleet (issue 19 with issue 17): two tenants whose rules conflict (the
/// same priority and specificity, able to match one process) are refused as on a single host
/// (409 on `placement`, naming both tenants), and only where both would be enforced: the
/// refusal names that node. Rules on nodes apart do not conflict; a change that moves a rule
/// onto a node with a conflicting one is refused too, and a refused change writes nothing.
#[test]
fn placement_rules_that_conflict_on_a_node_are_refused_naming_it() {
    let pg = Postgres::start();
    let url = pg.url();
    let n1 = Node::start("n1", "role=web", &url);
    let n2 = Node::start("n2", "role=db", &url);
    // No process has this program: nothing is placed anywhere.
    let rule = |priority: u32| serde_json::json!({"exe": ["/nonexistent/tenantd-fleet-test/app"], "priority": priority});
    let with = |nodes: serde_json::Value, priority| serde_json::json!({"pids": {"limit": 40}, "nodes": nodes, "placement": rule(priority)});
    let web = serde_json::json!({"role": "web"});
    let db = serde_json::json!({"role": "db"});
    let (s, b) = n1
        .d()
        .call("PUT", "/v1/tenants/a", Some(with(web.clone(), 0)));
    assert_eq!(s, 201, "{b}");
    // The same rule on the other node: no process can meet both.
    let (s, b) = n2
        .d()
        .call("PUT", "/v1/tenants/b", Some(with(db.clone(), 0)));
    assert_eq!(s, 201, "{b}");

    // Everywhere: on n1 it meets a's rule. Refused on any node's API, naming n1 and both.
    for n in [&n1, &n2] {
        let (s, b) = n.d().call(
            "PUT",
            "/v1/tenants/c",
            Some(with(serde_json::Value::Null, 0)),
        );
        assert_eq!(s, 409, "{b}");
        assert_eq!(b["field"], "placement", "{b}");
        let detail = b["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(
                "on node 'n1': the rules of tenants 'c' and 'a' have the same priority (0)"
            ),
            "{detail}"
        );
    }
    for n in [&n1, &n2] {
        let (s, b) = n.d().call("GET", "/v1/tenants/c", None);
        assert_eq!(s, 404, "nothing was written: {b}");
    }
    // Moving b onto the web nodes meets a's rule there.
    let (s, b) = n2.d().call(
        "PATCH",
        "/v1/tenants/b",
        Some(serde_json::json!({"nodes": {"role": "web"}})),
    );
    assert_eq!(s, 409, "{b}");
    let detail = b["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("on node 'n1': the rules of tenants 'b' and 'a'"),
        "{detail}"
    );
    // A change that leaves the rule where it is, and a higher priority everywhere, pass.
    let (s, b) = n1.d().call(
        "PATCH",
        "/v1/tenants/b",
        Some(serde_json::json!({"pids": {"limit": 41}})),
    );
    assert_eq!(s, 202, "{b}");
    let (s, b) = n1.d().call(
        "PUT",
        "/v1/tenants/c",
        Some(with(serde_json::Value::Null, 1)),
    );
    assert_eq!(s, 201, "{b}");
    converge("c", Some("40"), &[&n1, &n2], &[], 10);
    converge("b", Some("41"), &[&n2], &[&n1], 10);
}
