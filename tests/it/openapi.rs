//! The served OpenAPI document tells the truth (issue 12 finding 10): real responses of the
//! router, backed by the cgroup v1 backend on this hybrid host, validate against the schema the
//! document gives for their path, method, status and content type. tests/fuzz/schemathesis.sh
//! checks the same for generated requests; this test keeps a few known answers honest in every
//! `cargo test`.
//!
//! The governor's root is a fresh directory below THIS test process's own cgroup in each v1
//! hierarchy (as in `v1`); no process is moved, and the directories are removed on drop. The
//! test panics, never skips, when the v1 hierarchies are missing: CI runs it on a hybrid host.

use crate::support::{Answered, Api, V1Dirs, oneshot, request};
use serde_json::{Value, json};
use std::sync::Arc;
use tenantd::api::auth::Tokens;
use tenantd::api::{AppState, OPENAPI};
use tenantd::cgroup::Backend;
use tenantd::cgroup::v1::V1;

/// The schema the document gives for this answer, with the document's components beside it so
/// its `#/components/...` references resolve. Panics when the answer is not documented.
fn response_schema(doc: &Value, method: &str, path: &str, status: u16, ct: &str) -> Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let responses = &op["responses"];
    let mut r = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))
        .unwrap_or_else(|| panic!("{method} {path}: status {status} is not documented"));
    if let Some(rf) = r["$ref"].as_str() {
        let name = rf.trim_start_matches("#/components/responses/");
        r = &doc["components"]["responses"][name];
    }
    let essence = |s: &str| s.split(';').next().unwrap_or("").trim().to_string();
    let content = r["content"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} {status}: no content documented"));
    let (_, media) = content
        .iter()
        .find(|(k, _)| essence(k) == essence(ct))
        .unwrap_or_else(|| {
            panic!(
                "{method} {path} {status}: content type {ct} is not documented (only {:?})",
                content.keys().collect::<Vec<_>>()
            )
        });
    let mut schema = media["schema"].clone();
    let obj = schema
        .as_object_mut()
        .unwrap_or_else(|| panic!("{method} {path} {status}: the schema is not an object"));
    obj.insert("components".into(), doc["components"].clone());
    schema
}

/// Sends one request to the router; asserts the answer has `want` status and validates
/// against the document. Returns the body.
async fn check(
    state: &AppState,
    doc: &Value,
    (method, uri, path): (&str, &str, &str),
    body: Option<Value>,
    want: u16,
) -> Value {
    let body = body.map(|v| v.to_string());
    let req = request(method, uri, None, None, body.as_deref());
    let Answered {
        status,
        ct,
        body: bytes,
        ..
    } = oneshot(state, req).await;
    let status = status.as_u16();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{method} {uri}: {status} {ct} is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(status, want, "{method} {uri}: {v}");
    let schema = response_schema(doc, &method.to_lowercase(), path, status, &ct);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{method} {path}: the document's schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {uri} answered {status} with a body the document forbids:\n  {}\nbody: {v}",
        errors.join("\n  ")
    );
    v
}

#[tokio::test]
async fn finding_10_responses_match_the_openapi_document() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let roots = V1Dirs::new("openapi");
    let backend = Arc::new(V1::new(roots.roots.clone(), "/sys", "/proc"));
    backend
        .prepare_root()
        .expect("prepare_root below the test's own cgroups");
    let Api { state, dir: _tmp } = Api::over(
        Api::store().await,
        Some(backend),
        Tokens::open(),
        1 << 20,
        std::time::Duration::from_secs(30),
    );
    let tenant = "/v1/tenants/{name}";
    // A tenant with every section: nulls in the spec, limits, labels, a v1 "not applied" list.
    let spec = json!({
        "labels": {"team": "web"},
        "cpu": {"guarantee_pct": "25%", "limit_pct": 150},
        "memory": {"guarantee_bytes": "64MiB", "protection": "soft", "high_bytes": "128MiB", "limit_bytes": "256MiB"},
        "pids": {"limit": 100}
    });
    let v = check(
        &state,
        &doc,
        ("PUT", "/v1/tenants/web", tenant),
        Some(spec),
        201,
    )
    .await;
    assert_eq!(v["spec"]["parent"], Value::Null, "{v}");
    check(
        &state,
        &doc,
        ("PUT", "/v1/tenants/batch", tenant),
        Some(json!({"parent": "web"})),
        201,
    )
    .await;
    check(
        &state,
        &doc,
        ("GET", "/v1/tenants", "/v1/tenants"),
        None,
        200,
    )
    .await;
    let v = check(&state, &doc, ("GET", "/v1/tenants/web", tenant), None, 200).await;
    assert!(v["effective"].is_object(), "{v}");
    check(
        &state,
        &doc,
        ("PATCH", "/v1/tenants/web", tenant),
        Some(json!({"cpu": {"limit_pct": null}, "labels": {"team": null}})),
        200,
    )
    .await;
    check(&state, &doc, ("GET", "/v1/host", "/v1/host"), None, 200).await;
    let v = check(&state, &doc, ("GET", "/v1/events", "/v1/events"), None, 200).await;
    assert!(!v.as_array().unwrap().is_empty(), "{v}");
    check(
        &state,
        &doc,
        ("POST", "/v1/reconcile", "/v1/reconcile"),
        None,
        200,
    )
    .await;
    let v = check(
        &state,
        &doc,
        (
            "GET",
            "/v1/reports/sla?from=1h&format=json",
            "/v1/reports/sla",
        ),
        None,
        200,
    )
    .await;
    assert_eq!(v["tenants"].as_array().unwrap().len(), 2, "{v}");
    check(
        &state,
        &doc,
        ("GET", "/v1/tenants/web/procs", "/v1/tenants/{name}/procs"),
        None,
        200,
    )
    .await;
    // Errors are problem+json as documented.
    let procs = "/v1/tenants/{name}/procs";
    let v = check(
        &state,
        &doc,
        ("POST", "/v1/tenants/web/procs", procs),
        Some(json!({"pid": 0})),
        422,
    )
    .await;
    assert_eq!(v["field"], "pid", "{v}");
    check(
        &state,
        &doc,
        ("POST", "/v1/tenants/ghost/procs", procs),
        Some(json!({"pid": 1})),
        404,
    )
    .await;
    check(
        &state,
        &doc,
        ("DELETE", "/v1/tenants/web", tenant),
        None,
        409,
    )
    .await;
    // Placement rules (issue 17): a tenant with one, and `explain` of this test process
    // (which plays the daemon here, so it is never moved; no rescan runs in this test).
    let v = check(
        &state,
        &doc,
        ("PUT", "/v1/tenants/site", tenant),
        Some(json!({"placement": {"uids": [4242, "root"], "exe": ["/opt/site/bin/*"], "cmdline": "^php", "priority": 3}})),
        201,
    )
    .await;
    assert_eq!(v["spec"]["placement"]["priority"], 3, "{v}");
    let explain = "/v1/placement/explain";
    let me = std::process::id();
    let v = check(
        &state,
        &doc,
        ("GET", &format!("{explain}?pid={me}"), explain),
        None,
        200,
    )
    .await;
    assert_eq!(v["action"]["why"], "never_touched", "{v}");
    assert_eq!(v["rules"][0]["tenant"], "site", "{v}");
    for (q, want) in [("pid=4194000", 404), ("pid=0", 422), ("pid=1&pid=2", 422)] {
        let v = check(
            &state,
            &doc,
            ("GET", &format!("{explain}?{q}"), explain),
            None,
            want,
        )
        .await;
        assert_eq!(v["field"], "pid", "{v}");
    }
    let v = check(
        &state,
        &doc,
        ("PUT", "/v1/tenants/bad", tenant),
        Some(json!({"placement": {"exe": ["bin/php"]}})),
        422,
    )
    .await;
    assert_eq!(v["field"], "placement.exe[0]", "{v}");
    drop(roots);
}
