//! Issue 15, target 1 (changes at 10,000 tenants): `GET /v1/tenants` pages by name, for every
//! token and for scoped ones within their subtree (through `router(state).oneshot`, any host);
//! and the desired state a daemon serves from memory after a mix of accepted and refused
//! changes is the stored one: a fresh daemon on the same database serves the same tenants,
//! and reconcile finds nothing to correct (v1 on this host; fails loudly without the v1
//! hierarchies). The latency numbers come from benches/changes.sh.

use crate::support::{Api, V1Daemon, oneshot, request};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tenantd::api::auth::Tokens;
use tenantd::domain::TenantName;
use tenantd::domain::event::Event;
use tenantd::domain::tenant::TenantSpec;
use tenantd::store::NewEvent;

const ROOT: &str = "root-token-0123456789";
const SCOPED: &str = "acme-admin-0123456789";

/// An API over a store holding `tenants` (name, parent), with an unscoped admin token and
/// one scoped to `acme`. Its backend points at a directory that does not exist: nothing here
/// reaches a cgroup.
async fn api(tenants: &[(String, Option<String>)]) -> Api {
    let (dir, store) = Api::store().await;
    for (name, parent) in tenants {
        let spec = TenantSpec {
            parent: parent.as_ref().map(|p| TenantName::parse(p).unwrap()),
            ..Default::default()
        };
        let event = NewEvent {
            ts_ms: 1,
            tenant: Some(name.clone()),
            actor: None,
            event: Event::TenantCreated {
                spec: Box::new(spec.clone()),
            },
        };
        store
            .put_tenant(&TenantName::parse(name).unwrap(), &spec, 1, event)
            .await
            .unwrap();
    }
    let tokens = Tokens::parse(&format!(
        "root admin {ROOT}\nacme-admin admin {SCOPED} tenant=acme\n"
    ))
    .unwrap();
    Api::over(
        (dir, store),
        None,
        tokens,
        4096,
        std::time::Duration::from_secs(5),
    )
}

struct Page {
    status: StatusCode,
    ct: String,
    names: Vec<String>,
    link: Option<String>,
    next: Option<String>,
    body: Value,
}

async fn get(a: &Api, token: &str, uri: &str) -> Page {
    let r = oneshot(&a.state, request("GET", uri, Some(token), None, None)).await;
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let header = |h: &str| r.headers.get(h).map(|v| v.to_str().unwrap().to_string());
    Page {
        status: r.status,
        ct: r.ct.clone(),
        names: body
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|t| t["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        link: header("link"),
        next: header("next-cursor"),
        body,
    }
}

/// Follows the Link headers from `first`; returns every page's names.
async fn follow(a: &Api, token: &str, first: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut uri = first.to_string();
    for _ in 0..100 {
        let p = get(a, token, &uri).await;
        assert_eq!(p.status, StatusCode::OK, "{uri}: {}", p.body);
        pages.push(p.names.clone());
        let Some(link) = p.link else {
            assert_eq!(p.next, None, "{uri}: a cursor without a link");
            return pages;
        };
        let next = p.next.expect("a link without a cursor");
        assert_eq!(
            p.names.last(),
            Some(&next),
            "the cursor is the page's last name"
        );
        let target = link
            .strip_prefix('<')
            .and_then(|l| l.strip_suffix(">; rel=\"next\""))
            .unwrap_or_else(|| panic!("not a next link: {link}"));
        assert!(target.starts_with("/v1/tenants?"), "{link}");
        assert!(target.contains(&format!("after={next}")), "{link}");
        uri = target.to_string();
    }
    panic!("more than 100 pages from {first}");
}

fn problem_field(p: &Page) -> Option<&str> {
    p.body["field"].as_str()
}

#[tokio::test]
async fn issue_15_tenant_list_pages_by_name() {
    // 25 tenants, created out of name order, some with parents.
    let mut tenants: Vec<(String, Option<String>)> =
        (0..25).rev().map(|i| (format!("t{i:02}"), None)).collect();
    tenants.push(("t03-kid".into(), Some("t03".into())));
    let a = api(&tenants).await;
    let mut all: Vec<String> = tenants.iter().map(|(n, _)| n.clone()).collect();
    all.sort();

    // No parameters: every tenant, by name, one answer, no link (small hosts as before).
    let p = get(&a, ROOT, "/v1/tenants").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(p.names, all);
    assert_eq!((p.link, p.next), (None, None));

    // Pages of 10: 10, 10, 6, in name order, each continuing after the last.
    let pages = follow(&a, ROOT, "/v1/tenants?limit=10").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [10, 10, 6],
        "{pages:?}"
    );
    assert_eq!(pages.concat(), all);
    let p = get(&a, ROOT, "/v1/tenants?limit=10").await;
    // t03-kid sorts right after t03: the tenth name is t08.
    assert_eq!(
        p.link.as_deref(),
        Some("</v1/tenants?limit=10&after=t08>; rel=\"next\"")
    );
    assert_eq!(p.next.as_deref(), Some("t08"));
    // A page that ends exactly at the last tenant has no next link.
    let p = get(&a, ROOT, "/v1/tenants?limit=26").await;
    assert_eq!((p.names.len(), p.link), (26, None));
    // `after` alone: everything after the name, whether or not it exists.
    let p = get(&a, ROOT, "/v1/tenants?after=t2").await;
    assert_eq!(p.names, ["t20", "t21", "t22", "t23", "t24"]);
    let p = get(&a, ROOT, "/v1/tenants?after=t24").await;
    assert_eq!((p.status, p.names.len()), (StatusCode::OK, 0));
    // Pages of 1 reach every tenant too.
    assert_eq!(follow(&a, ROOT, "/v1/tenants?limit=1").await.concat(), all);

    // A bad limit or cursor, or a parameter the endpoint does not take: 422 naming it.
    for (uri, field) in [
        ("/v1/tenants?limit=0", "limit"),
        ("/v1/tenants?limit=1001", "limit"),
        ("/v1/tenants?limit=-1", "limit"),
        ("/v1/tenants?limit=ten", "limit"),
        ("/v1/tenants?limit=", "limit"),
        ("/v1/tenants?limit=5&limit=6", "limit"),
        ("/v1/tenants?after=Not_A_Name", "after"),
        ("/v1/tenants?page=2", "page"),
        ("/v1/tenants?offset=10", "offset"),
    ] {
        let p = get(&a, ROOT, uri).await;
        assert_eq!(
            p.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{uri}: {}",
            p.body
        );
        assert_eq!(p.ct, "application/problem+json", "{uri}");
        assert_eq!(problem_field(&p), Some(field), "{uri}: {}", p.body);
    }
    let p = get(&a, ROOT, "/v1/tenants?limit=1000").await;
    assert_eq!((p.status, p.names.len()), (StatusCode::OK, 26));
}

#[tokio::test]
async fn issue_15_tenant_list_pages_with_a_scoped_token() {
    // acme's subtree interleaves by name with tenants outside it.
    let mut tenants: Vec<(String, Option<String>)> = vec![
        ("acme".into(), None),
        ("acmeish".into(), None),
        ("b-outside".into(), None),
        ("globex".into(), None),
        ("globex-x".into(), Some("globex".into())),
    ];
    for i in 0..7 {
        tenants.push((format!("acme-{i}"), Some("acme".into())));
    }
    tenants.push(("acme-3-deep".into(), Some("acme-3".into())));
    tenants.push(("zz-acme-kid".into(), Some("acme".into())));
    let a = api(&tenants).await;
    let mut mine: Vec<String> = tenants
        .iter()
        .filter(|(n, p)| n == "acme" || p.as_deref().is_some_and(|p| p.starts_with("acme")))
        .map(|(n, _)| n.clone())
        .collect();
    mine.sort();
    assert_eq!(mine.len(), 10);

    // Unpaged: the subtree, as before pages.
    let whole = get(&a, SCOPED, "/v1/tenants").await;
    assert_eq!(whole.names, mine);
    // Pages of 3 are full pages of the subtree (4 of them), never a name outside it, and the
    // concatenation is the unpaged answer.
    let pages = follow(&a, SCOPED, "/v1/tenants?limit=3").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3, 3, 1],
        "{pages:?}"
    );
    assert_eq!(pages.concat(), mine);
    // A cursor naming a tenant outside the subtree shows nothing of it: the subtree's names
    // after it.
    let p = get(&a, SCOPED, "/v1/tenants?after=globex").await;
    assert_eq!(p.names, ["zz-acme-kid"]);
    let p = get(&a, SCOPED, "/v1/tenants?limit=0").await;
    assert_eq!(
        (p.status, problem_field(&p)),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("limit"))
    );
    // The unscoped token pages through everyone.
    let all = follow(&a, ROOT, "/v1/tenants?limit=4").await.concat();
    assert_eq!(all.len(), tenants.len());
}

/// What a daemon serves of every tenant, by name: the stored row, the plan, the cgroup path
/// and the kernel values it read.
fn served(d: &crate::support::Daemon) -> std::collections::BTreeMap<String, Value> {
    let (s, list) = d.call("GET", "/v1/tenants", None);
    assert_eq!(s, 200, "{list}");
    let mut out = std::collections::BTreeMap::new();
    for t in list.as_array().unwrap() {
        let name = t["name"].as_str().unwrap().to_string();
        let (s, one) = d.call("GET", &format!("/v1/tenants/{name}"), None);
        assert_eq!(s, 200, "{one}");
        let keep = |v: &Value| {
            json!({
                "spec": v["spec"], "generation": v["generation"], "created_ms": v["created_ms"],
                "updated_ms": v["updated_ms"], "cgroup": v["cgroup"], "planned": v["planned"],
                "effective": v["effective"], "not_applied": v["not_applied"],
            })
        };
        assert_eq!(keep(t), keep(&one), "list and GET disagree on {name}");
        out.insert(name, keep(&one));
    }
    out
}

#[test]
fn issue_15_served_state_after_changes_is_the_stored_state() {
    let mut v = V1Daemon::start("scale-served");
    let d = v.d();
    let gib = 1u64 << 30;
    // A tree with soft memory guarantees (the root's protection and every ancestor's depend on
    // them; v1 has no hard protection), cpu and io guarantees (the parents' leaves), and flat
    // tenants.
    d.create("p1", json!({"cpu": {"guarantee_pct": 40}}));
    d.create(
        "p1-a",
        json!({"parent": "p1", "cpu": {"guarantee_pct": 30}, "memory": {"guarantee_bytes": gib / 8, "protection": "soft"}}),
    );
    d.create(
        "p1-b",
        json!({"parent": "p1", "memory": {"guarantee_bytes": gib / 16, "protection": "soft"}}),
    );
    d.create(
        "p1-a-x",
        json!({"parent": "p1-a", "io": {"guarantee_pct": 50}}),
    );
    d.create(
        "p2",
        json!({"memory": {"guarantee_bytes": gib / 32, "protection": "soft"}}),
    );
    for i in 0..6 {
        d.create(&format!("t{i}"), json!({"cpu": {"guarantee_pct": 1 + i}}));
    }
    let expect = |method: &str, path: &str, body: Option<Value>, want: u16| {
        let (s, b) = d.call(method, path, body);
        assert_eq!(s, want, "{method} {path}: {b}");
    };
    // Accepted changes.
    expect(
        "PATCH",
        "/v1/tenants/p1-a-x",
        Some(json!({"memory": {"guarantee_bytes": gib / 4, "protection": "soft"}})),
        200,
    );
    expect(
        "PUT",
        "/v1/tenants/p1-b",
        Some(json!({"parent": "p1", "cpu": {"guarantee_pct": 20}})),
        200,
    );
    expect(
        "PATCH",
        "/v1/tenants/t2",
        Some(json!({"labels": {"plan": "gold"}, "pids": {"limit": 512}})),
        200,
    );
    expect("PUT", "/v1/tenants/t3", Some(json!({})), 200);
    expect("DELETE", "/v1/tenants/t4", None, 204);
    expect("DELETE", "/v1/tenants/p1-a-x", None, 204);
    expect(
        "PUT",
        "/v1/tenants/p1-c",
        Some(json!({"parent": "p1", "memory": {"guarantee_bytes": gib / 8, "protection": "soft"}})),
        201,
    );
    // The same spec again: no change, generation kept.
    expect(
        "PUT",
        "/v1/tenants/p1-c",
        Some(json!({"parent": "p1", "memory": {"guarantee_bytes": gib / 8, "protection": "soft"}})),
        200,
    );
    // Refused by the kernel (v1 has no memory.min; p1's directory, written before p1-c's,
    // refuses it): the change is undone and the stored state stays.
    expect(
        "PATCH",
        "/v1/tenants/p1-c",
        Some(json!({"memory": {"protection": "hard"}})),
        422,
    );
    // Refused: siblings past 100%, a move to another parent, a cycle, a missing parent, a bad
    // value, a parent with children, a missing tenant, a move_to that does not exist.
    expect(
        "PATCH",
        "/v1/tenants/p1-a",
        Some(json!({"cpu": {"guarantee_pct": 90}})),
        409,
    );
    expect("PUT", "/v1/tenants/t5", Some(json!({"parent": "p2"})), 409);
    expect(
        "PUT",
        "/v1/tenants/nope",
        Some(json!({"parent": "missing"})),
        422,
    );
    expect(
        "PATCH",
        "/v1/tenants/t1",
        Some(json!({"cpu": {"guarantee_pct": -1}})),
        422,
    );
    expect("DELETE", "/v1/tenants/p1", None, 409);
    expect("DELETE", "/v1/tenants/t4", None, 404);
    expect("DELETE", "/v1/tenants/t5?move_to=missing", None, 422);
    expect(
        "PUT",
        "/v1/tenants/huge",
        Some(json!({"memory": {"guarantee_bytes": 1u64 << 60, "protection": "soft"}})),
        409,
    );

    let before = served(d);
    let names: Vec<&str> = before.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "p1", "p1-a", "p1-b", "p1-c", "p2", "t0", "t1", "t2", "t3", "t5"
        ]
    );
    assert_eq!(before["p1-c"]["generation"], 1, "{}", before["p1-c"]);
    assert_eq!(before["p1-b"]["generation"], 2, "{}", before["p1-b"]);
    // The kernel holds every plan: a reconcile pass finds nothing to correct or create.
    let (s, r) = d.call("POST", "/v1/reconcile", None);
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["corrected"], json!([]), "{r}");
    assert_eq!(r["created"], json!([]), "{r}");
    assert_eq!(r["errors"], json!([]), "{r}");

    // A fresh daemon on the same database serves exactly the same.
    v.d.kill9();
    let fresh = v.dirs.launch(&v.dirs.db());
    let after = served(&fresh);
    for (name, b) in &before {
        assert_eq!(Some(b), after.get(name), "{name}");
    }
    assert_eq!(before.len(), after.len());
}
