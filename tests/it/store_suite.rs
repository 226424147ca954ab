//! One suite for the desired state's store trait (`tenantd::store::desired::DesiredStore`,
//! issue 19): every case is one generic function, run by `suite!` against a real SQLite file
//! (`Store`, a fresh file per test) and against a real PostgreSQL server the test starts
//! (`FleetStore`, `pg::Postgres`, a fresh cluster per test). A case that only one engine
//! passes is a disagreement between the single host and the fleet.

use super::pg::Postgres;
use std::future::Future;
use std::time::{Duration, Instant};
use tenantd::domain::event::Event;
use tenantd::domain::tenant::validate_spec;
use tenantd::domain::{TenantName, TenantSpec};
use tenantd::store::desired::{Change, DesiredError, DesiredStore};
use tenantd::store::fleet::FleetStore;
use tenantd::store::{EventFilter, Store};

/// A database under test: a store on it, another connection to it, and how the engine keeps
/// a delete's mode (each its own way; the trait has no read of it, as only the fleet needs
/// one).
trait Engine {
    type S: DesiredStore + Clone + Send + Sync + 'static;
    fn store(&self) -> &Self::S;
    /// Another store on the same database (its own connections).
    fn second(&self) -> impl Future<Output = Self::S>;
    /// The mode of the last delete of `name`.
    fn delete_mode(&self, name: &TenantName) -> impl Future<Output = Option<String>>;
}

struct Sqlite {
    dir: tempfile::TempDir,
    store: Store,
}

impl Sqlite {
    async fn start() -> Sqlite {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("tenantd.db")).await.unwrap();
        Sqlite { dir, store }
    }
}

impl Engine for Sqlite {
    type S = Store;
    fn store(&self) -> &Store {
        &self.store
    }
    async fn second(&self) -> Store {
        Store::open(&self.dir.path().join("tenantd.db"))
            .await
            .unwrap()
    }
    async fn delete_mode(&self, name: &TenantName) -> Option<String> {
        let kind = Event::TenantDeleted {
            mode: String::new(),
        }
        .columns()
        .0;
        let f = EventFilter {
            tenant: Some(name.to_string()),
            kind: Some(kind),
            limit: 1,
            ..Default::default()
        };
        let events = self.store.events(&f).await.unwrap();
        match events.first()?.event().unwrap() {
            Event::TenantDeleted { mode } => Some(mode),
            other => panic!("not a delete: {other:?}"),
        }
    }
}

struct Pg {
    // Dropped after the store (field order).
    store: FleetStore,
    pg: Postgres,
}

impl Pg {
    async fn start() -> Pg {
        let pg = Postgres::start();
        let store = FleetStore::new(&pg.url(), Duration::from_secs(10)).unwrap();
        store.prepare().await.unwrap();
        Pg { store, pg }
    }
}

impl Engine for Pg {
    type S = FleetStore;
    fn store(&self) -> &FleetStore {
        &self.store
    }
    async fn second(&self) -> FleetStore {
        let s = FleetStore::new(&self.pg.url(), Duration::from_secs(10)).unwrap();
        s.prepare().await.unwrap();
        s
    }
    async fn delete_mode(&self, name: &TenantName) -> Option<String> {
        let snap = self.store.snapshot().await.unwrap();
        snap.tenants.get(name)?.deleted.clone()
    }
}

/// Each case as two tests, `store_suite::CASE::sqlite` and `store_suite::CASE::postgres`.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(&super::Sqlite::start().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case(&super::Pg::start().await).await;
            }
        }
    )*};
}

suite!(
    a_spec_with_every_field_round_trips,
    every_put_bumps_the_generation,
    a_delete_keeps_its_mode_and_refuses_a_parent,
    the_list_is_in_name_order,
    odd_names_and_strings_round_trip,
    concurrent_writers_on_two_connections_lose_nothing,
    a_missing_tenant_is_not_found,
    a_large_spec_round_trips,
);

fn n(s: &str) -> TenantName {
    TenantName::parse(s).unwrap()
}

fn by(actor: &str, now_ms: i64) -> Change<'_> {
    Change { actor, now_ms }
}

/// A spec from JSON, valid as a single host's PUT would take it.
fn spec(name: &str, v: serde_json::Value) -> TenantSpec {
    let s: TenantSpec = serde_json::from_value(v).unwrap();
    validate_spec(&n(name), &s).unwrap();
    s
}

/// Every section of a spec set, below a parent: the SLA (as `cli::wire`'s fullest tenant),
/// labels, a node selector, launch defaults, an egress policy and a placement rule whose
/// command-line regex holds a NUL (argv is NUL-joined), which JSONB cannot hold as such.
fn fullest() -> TenantSpec {
    spec(
        "web",
        serde_json::json!({
            "parent": "team",
            "labels": {"customer": "acme", "tier": "gold ★ \"quoted\" \\ back"},
            "cpu": {"guarantee_pct": 12.5, "limit_pct": 200},
            "memory": {"guarantee_bytes": "1GiB", "protection": "soft", "high_bytes": "3GiB",
                       "limit_bytes": "4GiB", "swap_limit_bytes": 0},
            "io": {"guarantee_pct": 25, "limits": [
                {"device": "8:0", "rbps": "10MiB", "riops": 500},
                {"device": "259:1", "wbps": "1GiB", "wiops": 100000}]},
            "pids": {"limit": 100},
            "nodes": {"role": "web", "zone": "eu-1"},
            "launch": {"user": "www-data", "group": "www-data", "capabilities": ["CAP_NET_BIND_SERVICE"],
                       "no_new_privs": true, "private_network": false, "private_tmp": true,
                       "private_pid": true},
            "network": {"egress": {"default": "deny",
                "allow": ["10.1.0.0/16:443/tcp", "192.0.2.53:53/udp", "[2001:db8::1]:5432"],
                "deny": ["10.0.0.0/8:6000-6999/udp"]}},
            "placement": {"uids": ["www-data", 1000], "gids": [33], "exe": ["/opt/acme/**", "/usr/bin/python3*"],
                          "cmdline": "app\u{0}--customer=acme", "priority": 7, "override_delegated": true},
        }),
    )
}

async fn a_spec_with_every_field_round_trips(e: &impl Engine) {
    let s = e.store();
    let team = spec("team", serde_json::json!({"cpu": {"guarantee_pct": 50}}));
    let w = s.put(&n("team"), &team, by("admin", 1_000)).await.unwrap();
    assert_eq!((w.generation, w.created), (1, true));
    let web = fullest();
    let w = s.put(&n("web"), &web, by("alice", 2_000)).await.unwrap();
    assert_eq!((w.generation, w.created), (1, true));
    let got = s.get(&n("web")).await.unwrap();
    assert_eq!(got.spec, web, "every field as put");
    assert_eq!(
        (got.generation, got.created_ms, got.updated_ms),
        (1, 2_000, 2_000)
    );
    assert_eq!(got.actor.as_deref(), Some("alice"));
    let listed = s.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        ["team", "web"]
    );
    assert_eq!(listed[1].1, got, "list and get agree");
    assert_eq!(listed[0].1.actor.as_deref(), Some("admin"));
}

async fn every_put_bumps_the_generation(e: &impl Engine) {
    let s = e.store();
    let a = n("a");
    let mut sp = spec("a", serde_json::json!({"pids": {"limit": 1}}));
    for i in 1..=5i64 {
        sp.pids.limit = Some(i as u64 * 10);
        let w = s.put(&a, &sp, by(&format!("u{i}"), i * 100)).await.unwrap();
        assert_eq!((w.generation, w.created), (i, i == 1), "put {i}");
    }
    // The same spec again is still a change of record.
    let w = s.put(&a, &sp, by("same", 600)).await.unwrap();
    assert_eq!((w.generation, w.created), (6, false));
    let got = s.get(&a).await.unwrap();
    assert_eq!(got.spec.pids.limit, Some(50));
    assert_eq!(
        (got.generation, got.created_ms, got.updated_ms),
        (6, 100, 600)
    );
    assert_eq!(got.actor.as_deref(), Some("same"), "the last put's actor");
}

async fn a_delete_keeps_its_mode_and_refuses_a_parent(e: &impl Engine) {
    let s = e.store();
    let (p, c, other) = (n("p"), n("c"), n("other"));
    s.put(&p, &TenantSpec::default(), by("admin", 1))
        .await
        .unwrap();
    s.put(&other, &TenantSpec::default(), by("admin", 1))
        .await
        .unwrap();
    let child = spec("c", serde_json::json!({"parent": "p"}));
    s.put(&c, &child, by("admin", 2)).await.unwrap();

    // A parent with a live child: refused naming it, nothing changed.
    let err = s.delete(&p, "kill", by("eve", 3)).await.unwrap_err();
    match &err {
        DesiredError::HasChildren { name, children } => {
            assert_eq!((name, children.as_slice()), (&p, &[c.clone()][..]));
        }
        other => panic!("not HasChildren: {other:?}"),
    }
    assert!(err.to_string().contains("has children (c)"), "{err}");
    assert_eq!(s.list().await.unwrap().len(), 3);
    assert_eq!(
        e.delete_mode(&p).await,
        None,
        "the refused delete left no trace"
    );

    // The child with a move, then the parent with kill.
    s.delete(&c, "move_to:other", by("bob", 4)).await.unwrap();
    assert_eq!(e.delete_mode(&c).await.as_deref(), Some("move_to:other"));
    s.delete(&p, "kill", by("bob", 5)).await.unwrap();
    assert_eq!(e.delete_mode(&p).await.as_deref(), Some("kill"));
    assert!(matches!(
        s.get(&c).await.unwrap_err(),
        DesiredError::NotFound(t) if t == c
    ));
    assert_eq!(
        s.list()
            .await
            .unwrap()
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>(),
        ["other"]
    );
    // Deleting again finds nothing.
    assert!(matches!(
        s.delete(&c, "refuse", by("bob", 6)).await.unwrap_err(),
        DesiredError::NotFound(_)
    ));
    // A new put of the name creates it afresh (its generation goes on counting in the fleet,
    // which keeps the deleted row for the nodes; SQLite starts again at 1).
    let w = s
        .put(&p, &TenantSpec::default(), by("carol", 7))
        .await
        .unwrap();
    assert!(w.created);
    let got = s.get(&p).await.unwrap();
    assert_eq!((got.created_ms, got.updated_ms), (7, 7));
    assert_eq!(got.actor.as_deref(), Some("carol"));
    assert_eq!(got.generation, w.generation);
}

async fn the_list_is_in_name_order(e: &impl Engine) {
    let s = e.store();
    // Inserted out of order; byte order puts '-' before digits before letters, which a
    // locale's collation need not (en_US ignores '-' at first).
    let names = [
        "b", "a-z", "ab", "a0", "a", "9", "10", "1", "a-", "zz", "z-9",
    ];
    for (i, t) in names.iter().enumerate() {
        s.put(&n(t), &TenantSpec::default(), by("admin", i as i64))
            .await
            .unwrap();
    }
    let mut want: Vec<&str> = names.to_vec();
    want.sort();
    let got = s.list().await.unwrap();
    assert_eq!(
        got.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        want
    );
    assert_eq!(want[..4], ["1", "10", "9", "a"]);
}

async fn odd_names_and_strings_round_trip(e: &impl Engine) {
    let s = e.store();
    let long = format!("x{}", "-9".repeat(31));
    assert_eq!(long.len(), 63);
    let names = [
        "0",
        "9lives",
        "a--b",
        "null",
        "select",
        "drop-table-tenants",
        "x-",
        &long,
    ];
    let actors = [
        "admin",
        "o'brien; DROP TABLE tenants; --",
        "ünïcødé ★ 日本",
        "back\\slash \"quoted\"",
        "%_ like wildcards _%",
        "line\u{2028}separator",
        "$1 ?1 :name",
        "",
    ];
    for (i, (t, actor)) in names.iter().zip(actors).enumerate() {
        let sp = spec(
            t,
            serde_json::json!({
                "labels": {"v": actor, "k.dot/slash_under-dash": "\u{1F600}"},
                "placement": {"cmdline": format!("^{}\u{0}(--x|\\x00)$", regex::escape(actor)), "exe": ["/opt/[a-z]*/{bin,sbin}/\\*"]},
            }),
        );
        let w = s.put(&n(t), &sp, by(actor, i as i64)).await.unwrap();
        assert!(w.created, "{t}");
        let got = s.get(&n(t)).await.unwrap();
        assert_eq!(got.spec, sp, "{t}");
        assert_eq!(got.actor.as_deref(), Some(actor), "{t}");
    }
    // A name that is a prefix of another is a tenant of its own.
    assert_eq!(s.list().await.unwrap().len(), names.len());
    s.delete(&n("x-"), "refuse", by("admin", 99)).await.unwrap();
    assert!(s.get(&n(&long)).await.is_ok());
    assert!(matches!(
        s.get(&n("x")).await.unwrap_err(),
        DesiredError::NotFound(_)
    ));
}

async fn concurrent_writers_on_two_connections_lose_nothing(e: &impl Engine) {
    let (a, b) = (e.store().clone(), e.second().await);
    let shared = n("shared");
    const EACH: i64 = 15;
    let mut tasks = Vec::new();
    for (who, s) in [("a", a.clone()), ("b", b.clone())] {
        for i in 0..EACH {
            let (s, shared) = (s.clone(), shared.clone());
            tasks.push(tokio::spawn(async move {
                let mut sp = TenantSpec::default();
                sp.pids.limit = Some(i as u64 + 1);
                let own = n(&format!("{who}-{i}"));
                let w1 = s.put(&shared, &sp, by(who, i)).await.unwrap();
                let w2 = s.put(&own, &sp, by(who, i)).await.unwrap();
                assert!(w2.created && w2.generation == 1);
                w1
            }));
        }
    }
    let mut written = Vec::new();
    for t in tasks {
        written.push(t.await.unwrap());
    }
    // Every put of the shared tenant got a generation of its own, exactly one created it.
    let mut gens: Vec<i64> = written.iter().map(|w| w.generation).collect();
    gens.sort();
    assert_eq!(gens, (1..=2 * EACH).collect::<Vec<_>>());
    assert_eq!(written.iter().filter(|w| w.created).count(), 1);
    for s in [&a, &b] {
        let all = s.list().await.unwrap();
        assert_eq!(
            all.len() as i64,
            2 * EACH + 1,
            "each connection sees every write"
        );
        let got = s.get(&shared).await.unwrap();
        assert_eq!(got.generation, 2 * EACH);
    }
    // A delete on one and a put on the other, at once: one order or the other, never both
    // half done.
    let (a2, b2, t) = (a.clone(), b.clone(), n("a-0"));
    let t2 = t.clone();
    let del = tokio::spawn(async move { a2.delete(&t2, "kill", by("a", 100)).await });
    let put = tokio::spawn(async move {
        let sp = spec("a-0", serde_json::json!({"pids": {"limit": 7}}));
        b2.put(&t, &sp, by("b", 100)).await
    });
    del.await.unwrap().unwrap();
    let w = put.await.unwrap().unwrap();
    match a.get(&n("a-0")).await {
        // The put came after the delete: created again.
        Ok(got) => assert!(w.created && got.spec.pids.limit == Some(7), "{got:?}"),
        // The delete came after the put.
        Err(DesiredError::NotFound(_)) => assert!(!w.created && w.generation == 2),
        Err(other) => panic!("{other:?}"),
    }
}

async fn a_missing_tenant_is_not_found(e: &impl Engine) {
    let s = e.store();
    let ghost = n("ghost");
    let err = s.get(&ghost).await.unwrap_err();
    assert!(
        matches!(&err, DesiredError::NotFound(t) if *t == ghost),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "tenant 'ghost' does not exist");
    let err = s.delete(&ghost, "refuse", by("eve", 1)).await.unwrap_err();
    assert!(
        matches!(&err, DesiredError::NotFound(t) if *t == ghost),
        "{err:?}"
    );
    // A child of a missing parent: refused naming the parent, nothing written.
    let orphan = spec("orphan", serde_json::json!({"parent": "ghost"}));
    let err = s
        .put(&n("orphan"), &orphan, by("eve", 2))
        .await
        .unwrap_err();
    match &err {
        DesiredError::NoParent { name, parent } => {
            assert_eq!((name.as_str(), parent.as_str()), ("orphan", "ghost"));
        }
        other => panic!("not NoParent: {other:?}"),
    }
    assert!(s.list().await.unwrap().is_empty(), "nothing was written");
    assert_eq!(e.delete_mode(&ghost).await, None, "nothing was recorded");
    // Nor is a deleted tenant a parent.
    s.put(&ghost, &TenantSpec::default(), by("admin", 3))
        .await
        .unwrap();
    s.delete(&ghost, "refuse", by("admin", 4)).await.unwrap();
    assert!(matches!(
        s.put(&n("orphan"), &orphan, by("eve", 5))
            .await
            .unwrap_err(),
        DesiredError::NoParent { .. }
    ));
}

/// The largest spec validation lets through in every list: 64 labels and 64 selector labels
/// of 256 bytes, 64 + 64 egress entries, 256 exe patterns of 4,095 bytes, a 1,024-byte regex.
fn largest() -> TenantSpec {
    let labels = |p: &str| -> serde_json::Map<String, serde_json::Value> {
        (0..64)
            .map(|i| (format!("{p}{i:02}"), "v".repeat(256).into()))
            .collect()
    };
    let exe: Vec<String> = (0..256)
        .map(|i| format!("/opt/{i:03}/{}", "p".repeat(4095 - 9)))
        .collect();
    assert!(exe.iter().all(|e| e.len() == 4095));
    let cidrs = |o: u32| -> Vec<String> {
        (0..64)
            .map(|i| format!("10.{o}.{i}.0/24:443/tcp"))
            .collect()
    };
    spec(
        "big",
        serde_json::json!({
            "labels": labels("l"),
            "nodes": labels("n"),
            "network": {"egress": {"default": "deny", "allow": cidrs(1), "deny": cidrs(2)}},
            "placement": {"exe": exe, "cmdline": format!("^{}", "a".repeat(1023))},
        }),
    )
}

async fn a_large_spec_round_trips(e: &impl Engine) {
    let s = e.store();
    let big = largest();
    let bytes = serde_json::to_string(&big).unwrap().len();
    assert!(bytes > 1_000_000, "{bytes} bytes");
    let t0 = Instant::now();
    s.put(&n("big"), &big, by("admin", 1)).await.unwrap();
    let put = t0.elapsed();
    let t0 = Instant::now();
    let got = s.get(&n("big")).await.unwrap();
    eprintln!(
        "a {bytes}-byte spec: put in {put:?}, read back in {:?}",
        t0.elapsed()
    );
    assert_eq!(got.spec, big);
    // Changed in place, and its neighbours untouched.
    s.put(&n("small"), &TenantSpec::default(), by("admin", 2))
        .await
        .unwrap();
    let mut bigger = big.clone();
    bigger.pids.limit = Some(1);
    let w = s.put(&n("big"), &bigger, by("admin", 3)).await.unwrap();
    assert_eq!(w.generation, 2);
    let all = s.list().await.unwrap();
    assert_eq!(all[0].1.spec, bigger);
    assert_eq!(all[1].1.spec, TenantSpec::default());
}
