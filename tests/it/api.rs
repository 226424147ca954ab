//! The HTTP API on any host: everything here is answered or refused before a cgroup is touched
//! (the backend points at a directory that does not exist, so a test that reached the kernel
//! would fail). Kernel-backed API behaviour is in `kernel`.

use crate::support::{Api, oneshot, request};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tenantd::api::auth::Tokens;
use tenantd::api::{OPENAPI, router};
use tower::ServiceExt;

const ADMIN: &str = "admin-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

async fn api(tokens: Tokens) -> Api {
    Api::new(tokens, 4096, std::time::Duration::from_secs(5)).await
}

fn tokens() -> Tokens {
    Tokens::parse(&format!("alice admin {ADMIN}\nbob viewer {VIEWER}\n")).unwrap()
}

async fn send(
    a: &Api,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String, Value) {
    let r = oneshot(&a.state, request(method, uri, token, None, body)).await;
    (
        r.status,
        r.ct,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

fn assert_problem(
    r: &(StatusCode, String, Value),
    status: StatusCode,
    field: Option<&str>,
    detail_has: &str,
) {
    assert_eq!(r.0, status, "{:?}", r.2);
    assert_eq!(r.1, "application/problem+json");
    assert_eq!(r.2["status"], status.as_u16());
    assert_eq!(r.2["field"].as_str(), field, "{:?}", r.2);
    let detail = r.2["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_has),
        "detail {detail:?} lacks {detail_has:?}"
    );
}

#[tokio::test]
async fn probes_and_openapi_need_no_token() {
    let a = api(tokens()).await;
    assert_eq!(
        send(&a, "GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&a, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    let (s, _, doc) = send(&a, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let committed: Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(doc, committed, "the served document is the committed one");
}

/// Issue 19: the fleet report needs a fleet store; without one `scope=fleet` is refused
/// naming `scope`, and so is an unknown scope.
#[tokio::test]
async fn a_fleet_report_without_a_fleet_store_is_refused_naming_scope() {
    let a = api(tokens()).await;
    for (uri, detail) in [
        ("/v1/reports/sla?scope=fleet", "no store configured"),
        (
            "/v1/reports/sla?scope=fleet&format=csv",
            "no store configured",
        ),
        ("/v1/reports/sla?scope=everywhere", "fleet"),
    ] {
        let r = send(&a, "GET", uri, Some(VIEWER), None).await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("scope"), detail);
    }
    let r = send(&a, "GET", "/v1/reports/sla?scope=node", Some(VIEWER), None).await;
    assert_eq!(r.0, StatusCode::OK, "{:?}", r.2);
    assert!(r.2["host"].is_string(), "{:?}", r.2);
}

#[tokio::test]
async fn tokens_and_roles() {
    let a = api(tokens()).await;
    let r = send(&a, "GET", "/v1/tenants", None, None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, None, "bearer token");
    let r = send(
        &a,
        "GET",
        "/v1/tenants",
        Some("wrong-token-0123456789"),
        None,
    )
    .await;
    assert_eq!(r.0, StatusCode::UNAUTHORIZED);
    let r = send(&a, "GET", "/v1/tenants", Some(VIEWER), None).await;
    assert_eq!((r.0, r.2.clone()), (StatusCode::OK, json!([])));
    let r = send(&a, "PUT", "/v1/tenants/a", Some(VIEWER), Some("{}")).await;
    assert_problem(&r, StatusCode::FORBIDDEN, None, "viewer role");
}

#[tokio::test]
async fn bad_bodies_name_the_field_at_fault() {
    let a = api(tokens()).await;
    let put = |body: &'static str| send(&a, "PUT", "/v1/tenants/acme", Some(ADMIN), Some(body));
    assert_problem(
        &put("{\"cpu\": ").await,
        StatusCode::BAD_REQUEST,
        None,
        "not valid JSON",
    );
    assert_problem(
        &put(r#"{"cpu": {"guarantee_pct": "lots"}}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("cpu.guarantee_pct"),
        "percentage",
    );
    assert_problem(
        &put(r#"{"cpu": {"guarantee": 5}}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("cpu.guarantee"),
        "unknown field `guarantee`",
    );
    assert_problem(
        &put(r#"{"memory": {"limit_bytes": -5}}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("memory.limit_bytes"),
        "negative",
    );
    assert_problem(
        &put(r#"{"memory": {"protection": "firm"}}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("memory.protection"),
        "unknown variant",
    );
    assert_problem(
        &put(r#"{"cpu": {"guarantee_pct": 150}}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("cpu.guarantee_pct"),
        "out of range",
    );
    assert_problem(
        &put(r#"{"pids": {"limit": 0}}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("pids.limit"),
        "at least 1",
    );
    assert_problem(
        &put(r#"{"parent": "nobody"}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("parent"),
        "does not exist",
    );
    assert_problem(
        &put(r#"{"io": {"limits": [{"device": "sda"}]}}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("io.limits[0].device"),
        "MAJOR:MINOR",
    );
    // Nothing was stored by any of them.
    assert_eq!(
        send(&a, "GET", "/v1/tenants", Some(ADMIN), None).await.2,
        json!([])
    );
}

/// Issue 18: a tenant's `launch` defaults (least-privilege launch) are validated like every
/// other field: a capability or user that cannot be is 422 naming the field, and nothing is
/// stored (good ones are stored and used in `launch`).
#[tokio::test]
async fn bad_launch_options_name_the_field_at_fault() {
    let a = api(tokens()).await;
    let put = |body: &'static str| send(&a, "PUT", "/v1/tenants/acme", Some(ADMIN), Some(body));
    for (body, field, says) in [
        (
            r#"{"launch": {"capabilities": ["CAP_KILL", "CAP_FLY"]}}"#,
            "launch.capabilities[1]",
            "'CAP_FLY' is not a capability",
        ),
        (
            r#"{"launch": {"capabilities": ["cap_kill"]}}"#,
            "launch.capabilities[0]",
            "CAP_NET_BIND_SERVICE or net_bind_service",
        ),
        (
            r#"{"launch": {"user": "no body"}}"#,
            "launch.user",
            "neither a user name",
        ),
        (
            r#"{"launch": {"group": "4294967295"}}"#,
            "launch.group",
            "nor an ID (0 to 4294967294)",
        ),
        (
            r#"{"launch": {"private_net": true}}"#,
            "launch.private_net",
            "unknown field `private_net`",
        ),
        (
            r#"{"launch": {"no_new_privs": "yes"}}"#,
            "launch.no_new_privs",
            "boolean",
        ),
    ] {
        assert_problem(
            &put(body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(field),
            says,
        );
    }
    assert_eq!(
        send(&a, "GET", "/v1/tenants", Some(ADMIN), None).await.2,
        json!([])
    );
}

#[tokio::test]
async fn bad_names_media_types_sizes_and_paths() {
    let a = api(tokens()).await;
    assert_problem(
        &send(&a, "PUT", "/v1/tenants/Acme", Some(ADMIN), Some("{}")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("name"),
        "lowercase",
    );
    assert_problem(
        &send(&a, "GET", "/v1/tenants/a..b", Some(ADMIN), None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("name"),
        "'.'",
    );
    assert_problem(
        &send(&a, "GET", "/v1/tenants/ghost", Some(ADMIN), None).await,
        StatusCode::NOT_FOUND,
        Some("name"),
        "does not exist",
    );
    assert_problem(
        &send(&a, "DELETE", "/v1/tenants/ghost", Some(ADMIN), None).await,
        StatusCode::NOT_FOUND,
        Some("name"),
        "does not exist",
    );
    assert_problem(
        &send(
            &a,
            "DELETE",
            "/v1/tenants/ghost?kill=yes",
            Some(ADMIN),
            None,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("kill"),
        "true or false",
    );
    assert_problem(
        &send(&a, "GET", "/v1/nothing", Some(ADMIN), None).await,
        StatusCode::NOT_FOUND,
        None,
        "no such endpoint",
    );
    assert_problem(
        &send(&a, "POST", "/v1/tenants", Some(ADMIN), None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        "method",
    );
    assert_problem(
        &send(&a, "GET", "/v1/events?since=yesterday", Some(ADMIN), None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("since"),
        "duration",
    );
    let big = format!("{{\"labels\": {{\"k\": \"{}\"}}}}", "x".repeat(5000));
    let req = Request::builder()
        .method("PUT")
        .uri("/v1/tenants/a")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .unwrap();
    assert_eq!(
        router(a.state.clone()).oneshot(req).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let req = Request::builder()
        .method("PUT")
        .uri("/v1/tenants/a")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(
        router(a.state.clone()).oneshot(req).await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let r = send(
        &a,
        "POST",
        "/v1/tenants/ghost/procs",
        Some(ADMIN),
        Some(r#"{"pid": "one"}"#),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("pid"),
        "expected a whole number",
    );
}

#[tokio::test]
async fn openapi_document_matches_the_router() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = vec![];
    for (p, ops) in paths {
        for m in ops
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| ["get", "put", "post", "patch", "delete"].contains(&k.as_str()))
        {
            documented.push((m.clone(), p.clone()));
        }
    }
    documented.sort();
    assert_eq!(documented.len(), 18, "{documented:?}");
    let served = documented;
    // The router and the document come from one list (`api::routes`); every documented
    // route is really served (not a 404/405 from the fallbacks).
    let a = api(Tokens::open()).await;
    for (m, p) in &served {
        let uri = p.replace("{name}", "ghost");
        let body = matches!(m.as_str(), "put" | "post" | "patch").then_some("{}");
        let r = send(&a, &m.to_uppercase(), &uri, None, body).await;
        assert!(
            r.0 != StatusCode::METHOD_NOT_ALLOWED
                && r.2["detail"]
                    .as_str()
                    .is_none_or(|d| !d.contains("no such endpoint")),
            "{m} {p} is documented but not routed: {:?}",
            r
        );
    }
}

#[tokio::test]
async fn serves_over_a_real_socket_and_stops_on_cancel() {
    let a = api(Tokens::open()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(tenantd::api::serve(listener, a.state.clone(), stop.clone()));
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .put(format!("http://{addr}/v1/tenants/BAD"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "still listening after shutdown"
    );
}
