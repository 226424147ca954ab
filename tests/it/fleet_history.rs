//! The fleet's history in a real PostgreSQL (issue 19): every node ships its closed minutes of
//! usage and SLA verdicts; shipping a batch twice (a node killed between the store's commit
//! and its local note) keeps one row of each minute; three v1 nodes through an outage of the
//! store keep sampling and enforcing, answer writes 503, catch up when it returns (a node
//! restarted during the outage too), and the fleet report (`scope=fleet`, `tenantd report
//! --fleet`) covers the outage with each node's own figures and their sums; a node killed
//! with SIGKILL rejoins without losing or doubling a minute.
//!
//! Cost: the store test takes about a second; the three-node test waits for one real minute
//! boundary with the store down (the minutes are real: rollups are per wall-clock minute and
//! nothing in what ships is shortened for the test), so it takes 45 to 110 s; the store-up
//! test 5 to 65 s.

use super::fleet::{Node, spec};
use super::pg::Postgres;
use super::support::eventually;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tenantd::domain::sla_engine::Verdict;
use tenantd::domain::usage_row::UsageRow;
use tenantd::store::Store;
use tenantd::store::fleet::FleetStore;
use tenantd::store::fleet_history::{Kind, Rows, SlaRollupRow, is_integer, usage_columns};

/// A minute of `sla_rollup` (and of `sla_minutes` less its counts).
type SlaRow = SlaRollupRow;
/// (tenant, bucket, samples, covered, cpu cores x s, memory sum, memory max, OOM kills)
type UsageMin = (
    String,
    i64,
    i64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<i64>,
    Option<i64>,
);

const SLA_COLS: &str = "tenant, bucket_ms, covered_s, contended_s, violation_s, delivered_sum, \
                        delivered_contended_sum, delivered_contended_min, guarantee_ratio";
const USAGE_COLS: &str = "tenant, bucket_ms, samples, covered_s, cpu_cores_sum, \
                          memory_current_bytes_sum, memory_current_bytes_max, new_oom_kills";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A node's SQLite file, read-only beside the running daemon.
async fn read_only(db: &Path) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("open {} read-only: {e}", db.display()))
}

/// A node's minute rollups in its own SQLite file (read-only, beside the running daemon).
fn local(db: &Path) -> (Vec<SlaRow>, Vec<UsageMin>) {
    rt().block_on(async {
        let mut c = read_only(db).await;
        let sla = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SLA_COLS} FROM sla_rollup WHERE step_s = 60 ORDER BY bucket_ms, tenant"
        )))
        .fetch_all(&mut c)
        .await
        .unwrap();
        let usage = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USAGE_COLS} FROM usage_rollup WHERE step_s = 60 ORDER BY bucket_ms, tenant"
        )))
        .fetch_all(&mut c)
        .await
        .unwrap();
        (sla, usage)
    })
}

/// The minutes a node shipped, as the fleet store holds them.
fn shipped(url: &str, node: &str) -> (Vec<SlaRow>, Vec<UsageMin>) {
    rt().block_on(async {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let sla = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SLA_COLS} FROM sla_minutes WHERE node = $1 ORDER BY bucket_ms, tenant"
        )))
        .bind(node)
        .fetch_all(&pool)
        .await
        .unwrap();
        let usage = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USAGE_COLS} FROM usage_minutes WHERE node = $1 ORDER BY bucket_ms, tenant"
        )))
        .bind(node)
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        (sla, usage)
    })
}

/// How many raw samples and verdicts of `tenant` a node wrote after `since_ms`.
fn raw_since(db: &Path, tenant: &str, since_ms: i64) -> (i64, i64) {
    rt().block_on(async {
        let mut c = read_only(db).await;
        super::support::raw_slice_counts(&mut c, tenant, since_ms).await
    })
}

/// The last minute `node` noted as shipped in its SQLite file, per kind.
fn marks(db: &Path) -> Vec<(String, i64)> {
    rt().block_on(async {
        let mut c = read_only(db).await;
        sqlx::query_as("SELECT kind, bucket_ms FROM fleet_shipped ORDER BY kind")
            .fetch_all(&mut c)
            .await
            .unwrap()
    })
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-9
}

/// A report's tenant figures that add up over nodes, for comparing.
fn figures(t: &serde_json::Value) -> [f64; 7] {
    let f = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} in {t}"));
    [
        f("contended_seconds"),
        f("violation_seconds"),
        f("violations"),
        f("memory_protection_breaches"),
        f("oom_kills"),
        f("cpu_seconds"),
        f("io_bytes"),
    ]
}

/// The figures that do not depend on the buckets a report is made of. Memory (GiB-hours) is
/// a gauge's mean per bucket times the time it covers, so it does: the node's own report of
/// one minute has one-second buckets, the fleet's a minute (`memory_of_minute`).
fn same_figures(what: &str, a: &serde_json::Value, b: &serde_json::Value) {
    let (x, y) = (figures(a), figures(b));
    for (i, (p, q)) in x.iter().zip(&y).enumerate() {
        assert!(
            close(*p, *q, 1e-6),
            "{what}: figure {i}: {p} vs {q}\n{a}\n{b}"
        );
    }
}

/// GiB-hours of a minute as its rollup has them: the mean over its samples times the time
/// covered.
fn memory_of_minute(m: &UsageMin) -> f64 {
    m.5.unwrap_or(0.0) / m.2.max(1) as f64 * m.3 / 3600.0 / (1u64 << 30) as f64
}

/// The store's schema matches the rollups column for column, and a batch shipped twice (the
/// node killed after the store's commit, before its own note) leaves one row per minute with
/// the values the node holds; the fleet store's sums are the node's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_shipped_twice_leaves_one_row_of_each_minute() {
    let pg = Postgres::start();
    let store = FleetStore::new(&pg.url(), Duration::from_secs(3)).unwrap();
    store.prepare().await.unwrap();
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_name = 'usage_minutes' ORDER BY ordinal_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let want: Vec<(String, String)> = ["node", "tenant", "bucket_ms"]
        .iter()
        .map(|c| {
            (
                c.to_string(),
                if *c == "bucket_ms" { "bigint" } else { "text" }.to_string(),
            )
        })
        .chain(usage_columns().iter().map(|c| {
            let t = if is_integer(c) {
                "bigint"
            } else {
                "double precision"
            };
            (c.clone(), t.to_string())
        }))
        .collect();
    assert_eq!(
        cols, want,
        "usage_minutes is usage_rollup after node, less step_s"
    );

    let dir = tempfile::tempdir().unwrap();
    let local = Store::open(&dir.path().join("n.db")).await.unwrap();
    let base = 1_700_000_040_000 / 60_000 * 60_000;
    for k in 0..150 {
        let ts = base + k * 1000 + 250;
        let rows: Vec<UsageRow> = ["a", "b"]
            .iter()
            .map(|t| {
                let mut r = UsageRow::from_sample(t, ts, &Default::default(), None);
                r.interval_ms = Some(1000);
                r.rates.cpu_cores = Some(0.5 + (k % 7) as f64 / 10.0);
                r.gauges.memory_current_bytes = Some(1 << 20);
                r
            })
            .collect();
        let v = Verdict {
            tenant: "a".into(),
            ts_ms: ts,
            interval_ms: 1000,
            guarantee_ratio: Some(0.5),
            delivered_ratio: 0.3 + (k % 5) as f64 / 10.0,
            contended: k % 3 != 0,
            violating: k % 4 == 0,
        };
        local.add_sweep(&rows, &[v], &[]).await.unwrap();
    }
    local.roll_up(base + 180_000).await.unwrap();
    let key = store.shown().to_string();
    for kind in Kind::ALL {
        let batch = local
            .unshipped(&key, "n1", kind, 60)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.last_ms, base + 120_000, "{kind:?}: three minutes");
        store.ship("n1", &batch).await.unwrap();
        // Killed here: nothing noted; the next round ships the same minutes again.
        let again = local
            .unshipped(&key, "n1", kind, 60)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again, batch);
        store.ship("n1", &again).await.unwrap();
        local
            .mark_shipped(&key, "n1", kind, again.last_ms)
            .await
            .unwrap();
        assert!(
            local
                .unshipped(&key, "n1", kind, 60)
                .await
                .unwrap()
                .is_none()
        );
        let n = match &batch.rows {
            Rows::Usage(r) => r.len(),
            Rows::Sla(r) => r.len(),
        };
        let table = if kind == Kind::Usage {
            "usage_minutes"
        } else {
            "sla_minutes"
        };
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE node = 'n1'"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(count as usize, n, "{table}: one row per minute and tenant");
    }
    // The values are the node's own, to the bit.
    let (from, to) = (base, base + 180_000);
    let mine = local
        .sla_series("a", from, to, 3, to, &Default::default())
        .await
        .unwrap();
    let fleet = store
        .sla_buckets(from, to, 60_000, Some("a"))
        .await
        .unwrap();
    assert_eq!(fleet.len(), 3);
    for (b, m) in fleet.iter().zip(&mine.buckets) {
        let fb = tenantd::store::fleet_history::bucket(b.sums);
        assert_eq!(fb.ts_ms, m.ts_ms);
        assert!(close(fb.contended_s, m.contended_s, 1e-12), "{fb:?} {m:?}");
        assert!(close(fb.violation_s, m.violation_s, 1e-12), "{fb:?} {m:?}");
        assert_eq!(b.node, "n1");
    }
    let usage = store.usage_points(from, to, 60_000, None).await.unwrap();
    assert_eq!(usage.len(), 6, "two tenants, three minutes");
    let cpu: f64 = usage
        .iter()
        .map(|u| u.point.rates.cpu_cores_mean.unwrap() * u.point.covered_s)
        .sum();
    let want: f64 = (0..150).map(|k| 2.0 * (0.5 + (k % 7) as f64 / 10.0)).sum();
    assert!(close(cpu, want, 1e-9), "cpu-seconds {cpu} vs {want}");
    pool.close().await;
    store.close().await;
    local.close().await;
}

/// Three nodes (n1, n2 `role=web`, n3 `role=db`) ship their minutes; the store goes down
/// across a minute boundary: sampling, enforcement and the local rollups go on, writes are
/// 503, a node killed and restarted meanwhile starts from its local copy; the store returns
/// and every node ships the outage's minute; the fleet report covers it with each node's own
/// figures, and per tenant their sums, in JSON, CSV, HTML and `tenantd report --fleet`; a
/// node killed with SIGKILL rejoins with its minutes neither lost nor doubled.
#[test]
fn three_nodes_ship_their_minutes_through_an_outage_and_the_fleet_report_adds_them_up() {
    let started = Instant::now();
    let pg = Postgres::start();
    let url = pg.url();
    let n1 = Node::start("n1", "role=web,zone=a", &url);
    let mut n2 = Node::start("n2", "role=web,zone=b", &url);
    let mut n3 = Node::start("n3", "role=db", &url);
    let web = serde_json::json!({"role": "web"});
    let (s, b) = n1
        .d()
        .call("PUT", "/v1/tenants/shop", Some(spec(50, 40.0, web)));
    assert_eq!(s, 201, "{b}");
    let (s, b) = n3.d().call(
        "PUT",
        "/v1/tenants/base",
        Some(spec(30, 10.0, serde_json::Value::Null)),
    );
    assert_eq!(s, 201, "{b}");
    eventually(10, "every node holds its tenants", || {
        n2.pids_max("shop").as_deref() == Some("50")
            && [&n1, &n2, &n3]
                .iter()
                .all(|n| n.pids_max("base").as_deref() == Some("30"))
    });
    // Something to account for: a busy loop in shop on n1.
    let _busy = n1.d().busy("shop", 1);

    // The store goes down. The minute it goes down in closes during the outage; at least
    // 20 s of it are left (else the next one), so the busy loop has time to show in it.
    let into = now_ms() % 60_000;
    if into > 40_000 {
        std::thread::sleep(Duration::from_millis((60_500 - into) as u64));
    }
    pg.down();
    let down_ms = now_ms();
    let outage = down_ms / 60_000 * 60_000;
    let (s, b) = n2.d().call(
        "PUT",
        "/v1/tenants/late",
        Some(spec(5, 1.0, serde_json::Value::Null)),
    );
    assert_eq!((s, b["field"].as_str()), (503, Some("store")), "{b}");
    // The fleet report needs the store too: 503 naming it, not an empty report.
    let (s, b) = n1
        .d()
        .call("GET", "/v1/reports/sla?scope=fleet&from=5m", None);
    assert_eq!((s, b["field"].as_str()), (503, Some("store")), "{b}");
    // Enforcement goes on: drift on n3 is corrected from its local copy.
    std::fs::write(n3.file("pids", "base", "pids.max"), "1000").unwrap();
    let (s, b) = n3.d().call("POST", "/v1/reconcile", None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(n3.pids_max("base").as_deref(), Some("30"));
    // The outage's minute is rolled up on every node, and not shipped.
    let wait = (outage + 60_000 - now_ms()).max(0) as u64;
    eprintln!("waiting {wait} ms for the minute to close, with the store down");
    std::thread::sleep(Duration::from_millis(wait));
    for n in [&n1, &n2, &n3] {
        eventually(
            20,
            &format!("{}: the outage's minute rolled up locally", n.name),
            || {
                let (sla, usage) = local(&n.dirs.db());
                sla.iter().any(|r| r.1 == outage) && usage.iter().any(|r| r.1 == outage)
            },
        );
        assert!(
            marks(&n.dirs.db()).iter().all(|(_, b)| *b < outage),
            "{}: noted as shipped while the store was down: {:?}",
            n.name,
            marks(&n.dirs.db())
        );
    }
    // Sampling and judging went on through the outage: a sample and a verdict of shop on n1
    // about every second (the interval) since the store went down.
    let rows = raw_since(&n1.dirs.db(), "shop", down_ms);
    let want = (now_ms() - down_ms) / 1000 - 3;
    assert!(
        rows.0 >= want && rows.1 >= want,
        "samples and verdicts since the store went down: {rows:?}, want {want}"
    );
    // A node killed and restarted while the store is down starts from its local copy.
    n3.d = None;
    n3.launch(&url);
    let (s, b) = n3.d().call("GET", "/v1/tenants/base", None);
    assert_eq!(
        (s, &b["spec"]["pids"]["limit"]),
        (200, &serde_json::json!(30)),
        "{b}"
    );

    // The store returns: every node ships what it holds, the outage's minute included.
    let back = Instant::now();
    pg.up();
    for n in [&n1, &n2, &n3] {
        eventually(30, &format!("{}: caught up", n.name), || {
            let (s, u) = shipped(&url, n.name);
            s.iter().any(|r| r.1 == outage) && u.iter().any(|r| r.1 == outage)
        });
    }
    eprintln!(
        "caught up {:.1} s after the store came back",
        back.elapsed().as_secs_f64()
    );
    // Exactly what each node holds, up to the minute it noted last: nothing lost, nothing
    // doubled.
    for n in [&n1, &n2, &n3] {
        let (ls, lu) = local(&n.dirs.db());
        let (ps, pu) = shipped(&url, n.name);
        let upto = |b: i64| b <= outage;
        assert_eq!(
            ps.iter().filter(|r| upto(r.1)).collect::<Vec<_>>(),
            ls.iter().filter(|r| upto(r.1)).collect::<Vec<_>>(),
            "{}: sla minutes",
            n.name
        );
        assert_eq!(
            pu.iter().filter(|r| upto(r.1)).collect::<Vec<_>>(),
            lu.iter().filter(|r| upto(r.1)).collect::<Vec<_>>(),
            "{}: usage minutes",
            n.name
        );
    }

    // The fleet report over the outage's minute: every node, each with its own report's
    // figures; per tenant, their sums.
    let q = format!("from={outage}&to={}", outage + 60_000);
    let (s, fleet) = n2
        .d()
        .call("GET", &format!("/v1/reports/sla?scope=fleet&{q}"), None);
    assert_eq!(s, 200, "{fleet}");
    assert_eq!(
        (fleet["from_ms"].as_i64(), fleet["to_ms"].as_i64()),
        (Some(outage), Some(outage + 60_000))
    );
    let nodes = fleet["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n2", "n3"], "{fleet}");
    let want_tenants = [vec!["base", "shop"], vec!["base", "shop"], vec!["base"]];
    for (n, (node, want)) in [&n1, &n2, &n3].iter().zip(nodes.iter().zip(want_tenants)) {
        let (s, own) = n.d().call("GET", &format!("/v1/reports/sla?{q}"), None);
        assert_eq!(s, 200, "{own}");
        let tenants = node["tenants"].as_array().unwrap();
        let got: Vec<&str> = tenants
            .iter()
            .map(|t| t["tenant"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{}: {node}", n.name);
        for t in tenants {
            let mine = own["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["tenant"] == t["tenant"])
                .unwrap();
            same_figures(&format!("{} {}", n.name, t["tenant"]), t, mine);
            let (_, lu) = local(&n.dirs.db());
            let minute = lu
                .iter()
                .find(|r| t["tenant"] == r.0.as_str() && r.1 == outage)
                .unwrap();
            let mem = t["memory_gib_hours"].as_f64().unwrap();
            assert!(
                close(mem, memory_of_minute(minute), 1e-9),
                "{} {}: memory {mem} vs its minute {minute:?}",
                n.name,
                t["tenant"]
            );
            assert!(
                !t["series"].as_array().unwrap().is_empty(),
                "{}: the outage's minute is covered: {t}",
                n.name
            );
        }
    }
    for t in fleet["tenants"].as_array().unwrap() {
        let parts: Vec<&serde_json::Value> = nodes
            .iter()
            .flat_map(|n| n["tenants"].as_array().unwrap())
            .filter(|p| p["tenant"] == t["tenant"])
            .collect();
        let sums: Vec<f64> = (0..7)
            .map(|i| parts.iter().map(|p| figures(p)[i]).sum())
            .collect();
        let mem: f64 = parts
            .iter()
            .map(|p| p["memory_gib_hours"].as_f64().unwrap())
            .sum();
        assert!(
            close(t["memory_gib_hours"].as_f64().unwrap(), mem, 1e-9),
            "{}: memory across nodes",
            t["tenant"]
        );
        for (i, (a, b)) in figures(t).iter().zip(&sums).enumerate() {
            assert!(
                close(*a, *b, 1e-9),
                "{}: figure {i}: {a} vs the nodes' {b}",
                t["tenant"]
            );
        }
        assert_eq!(t["guarantee_ratio"], parts[0]["guarantee_ratio"]);
    }
    for n in nodes {
        for t in n["tenants"].as_array().unwrap() {
            eprintln!(
                "{} {}: contended {:.1} s, violation {:.1} s, {:.1} CPU-s, {:.6} GiB-h",
                n["node"],
                t["tenant"],
                t["contended_seconds"],
                t["violation_seconds"],
                t["cpu_seconds"],
                t["memory_gib_hours"]
            );
        }
    }
    let shop = fleet["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "shop")
        .unwrap();
    assert!(
        shop["cpu_seconds"].as_f64().unwrap() > 2.0,
        "the busy loop: {shop}"
    );
    assert_eq!(shop["labels"], serde_json::json!({}), "{shop}");

    // The same in CSV and HTML, and through the CLI.
    let csv = n1
        .d()
        .text(&format!("/v1/reports/sla?scope=fleet&format=csv&{q}"));
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("node,tenant,guarantee_ratio,"),
        "{csv}"
    );
    assert_eq!(lines.len(), 1 + 2 + 5, "2 across nodes + 2 + 2 + 1: {csv}");
    assert!(
        lines[1].starts_with(",base,") && lines[3].starts_with("n1,base,"),
        "{csv}"
    );
    let html = n1
        .d()
        .text(&format!("/v1/reports/sla?scope=fleet&format=html&{q}"));
    assert!(
        html.contains("<h2>Node n3</h2>") && html.contains("Across nodes"),
        "{html}"
    );
    let out = n3
        .d()
        .cli()
        .args(["report", "--fleet", "--from", &outage.to_string()])
        .args(["--to", &(outage + 60_000).to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("node n2:") && text.contains("across nodes"),
        "{text}"
    );
    // An unknown scope is refused naming it.
    let (s, b) = n1.d().call("GET", "/v1/reports/sla?scope=world", None);
    assert_eq!((s, b["field"].as_str()), (422, Some("scope")), "{b}");
    // One tenant: only its rows, on the nodes that hold it; a name never seen is 404.
    let (s, one) = n3.d().call(
        "GET",
        &format!("/v1/reports/sla?scope=fleet&tenant=shop&{q}"),
        None,
    );
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["tenants"].as_array().unwrap().len(), 1, "{one}");
    same_figures("shop alone", &one["tenants"][0], shop);
    let per_node: Vec<usize> = one["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["tenants"].as_array().unwrap().len())
        .collect();
    assert_eq!(per_node, [1, 1, 0], "{one}");
    let (s, b) = n3.d().call(
        "GET",
        &format!("/v1/reports/sla?scope=fleet&tenant=nope&{q}"),
        None,
    );
    assert_eq!(s, 404, "{b}");

    // n2 killed with SIGKILL and restarted: it rejoins (heartbeat, shown up) and holds in
    // the store exactly the minutes it held before.
    let before = shipped(&url, "n2");
    let (_, nodes) = n1.d().call("GET", "/v1/nodes", None);
    let started_before = nodes["nodes"][1]["started_ms"].as_i64().unwrap();
    n2.d.as_mut().unwrap().kill9();
    n2.d = None;
    n2.launch(&url);
    eventually(15, "n2 rejoined: registered again and heartbeating", || {
        let (_, b) = n1.d().call("GET", "/v1/nodes", None);
        let n = &b["nodes"][1];
        n["name"] == "n2" && n["down"] == false && n["started_ms"].as_i64() > Some(started_before)
    });
    let (after_sla, after_usage) = shipped(&url, "n2");
    let old = |b: i64| b <= outage;
    assert_eq!(
        after_sla.iter().filter(|r| old(r.1)).collect::<Vec<_>>(),
        before.0.iter().filter(|r| old(r.1)).collect::<Vec<_>>()
    );
    assert_eq!(
        after_usage.iter().filter(|r| old(r.1)).collect::<Vec<_>>(),
        before.1.iter().filter(|r| old(r.1)).collect::<Vec<_>>()
    );
    let (ls, lu) = local(&n2.dirs.db());
    eventually(
        15,
        "n2's store rows are its local minutes, one each",
        || {
            let (ps, pu) = shipped(&url, "n2");
            let (ls2, lu2) = local(&n2.dirs.db());
            ps == ls2 && pu == lu2
        },
    );
    assert!(ls.len() >= before.0.len() && lu.len() >= before.1.len());
    eprintln!("the test took {:.0} s", started.elapsed().as_secs_f64());
}

/// With the store up, the minute that closes reaches it from every node within seconds
/// (a node ships every 5 s; the minute is rolled up by its first sweep after the end).
#[test]
fn every_node_ships_a_closed_minute_within_seconds() {
    let pg = Postgres::start();
    let url = pg.url();
    let nodes = [
        Node::start("n1", "role=web", &url),
        Node::start("n2", "role=web", &url),
        Node::start("n3", "role=db", &url),
    ];
    let (s, b) = nodes[0].d().call(
        "PUT",
        "/v1/tenants/base",
        Some(spec(30, 10.0, serde_json::Value::Null)),
    );
    assert_eq!(s, 201, "{b}");
    // The minute judged must hold samples of `base`: one that ends within 15 s of the
    // tenant's creation may have none yet (a CI run created it at :58.5), so take the next.
    let mut minute = now_ms() / 60_000 * 60_000;
    if minute + 60_000 - now_ms() < 15_000 {
        minute += 60_000;
    }
    let end = minute + 60_000;
    std::thread::sleep(Duration::from_millis((end - now_ms()).max(0) as u64));
    let mut took = Vec::new();
    for n in &nodes {
        eventually(20, &format!("{}: the minute in the store", n.name), || {
            let (s, u) = shipped(&url, n.name);
            s.iter()
                .any(|r| r.1 == minute && r.0 == "base" && r.2 > 0.0)
                && u.iter().any(|r| r.1 == minute && r.0 == "base" && r.2 > 0)
        });
        took.push((now_ms() - end) as f64 / 1000.0);
    }
    eprintln!("a closed minute was in the store {took:?} s after its end (n1, n2, n3)");
    assert!(took.iter().all(|t| *t < 10.0), "{took:?}");
}
