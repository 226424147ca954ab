//! Thin handlers: parse the request, call the engine, shape the answer.

use super::AppState;
use super::auth::Caller;
use super::error::Problem;
use super::json::{JsonBody, from_slice};
use super::openapi::TenantPatch;
use super::path::TenantPath;
use super::query::{
    DeleteParams, EventsParams, ExplainParams, Params, TenantsParams, next_page_headers,
};
use crate::cgroup::{Cannot, HostCgroup, RunMode};
use crate::domain::{TenantName, TenantSpec};
use crate::engine::autoplace::Explanation;
use crate::engine::fleet::{FleetTenantView, Nodes};
use crate::engine::placement::ProcInfo;
use crate::engine::{DeleteMode, EngineError, Page, ReconcileReport, TenantView, now_ms};
use crate::store::{Event, EventFilter, StoreError};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

type Res<T> = Result<T, Problem>;

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", summary = "liveness", security(()),
    responses((status = 200, description = "ok", body = String, content_type = "text/plain; charset=utf-8")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready while the database answers and can write: after a write found its filesystem full,
/// each call probes with a small write (see `Store::check_writable`), so readiness returns by
/// itself with the space. The unauthenticated answer does not name the database's path.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", security(()),
    summary = "readiness: the database answers and can write (503 while its filesystem is full, back to 200 by itself when space returns)",
    responses((status = 200, description = "ready", body = String, content_type = "text/plain; charset=utf-8"), (status = "default", response = Problem)))]
pub async fn readyz(State(st): State<AppState>) -> Res<&'static str> {
    st.gov.check_writable().await.map_err(|e| {
        let detail = match e {
            EngineError::Store(StoreError::Full { .. }) => {
                "the database's filesystem is full: free space; tenantd retries by itself"
            }
            e => {
                tracing::warn!("readyz: {e}");
                "the database cannot write"
            }
        };
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", detail)
    })?;
    st.gov.db_answers().await.map_err(|e| {
        tracing::warn!("readyz: {e}");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "the database is not answering",
        )
    })?;
    Ok("ready\n")
}

#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi", summary = "this document", security(()),
    responses((status = 200, description = "OpenAPI 3.1", body = Object, content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::text(),
    )
}

pub async fn not_found(uri: Uri) -> Problem {
    Problem::no_endpoint(uri.path())
}

pub async fn method_not_allowed(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!(
            "{} does not take this method; see /v1/openapi.json",
            uri.path()
        ),
    )
}

#[utoipa::path(get, path = "/v1/host", operation_id = "getHost",
    summary = "cgroup version, root, controllers, CPUs, memory, devices and whether io weights work on each",
    responses((status = 200, description = "host report", body = Host), (status = "default", response = Problem)))]
pub async fn host(State(st): State<AppState>) -> Res<impl IntoResponse> {
    let h = st.gov.host().await?;
    let cap = st.gov.capacity();
    Ok(Json(Host {
        cgroup: h,
        mode: st.gov.mode(),
        cannot: st.gov.cannot().await?,
        cpus: cap.cpus,
        memory_bytes: cap.memory_bytes,
        memory_reserve_bytes: cap.memory_reserve_bytes,
        tenantd_version: env!("CARGO_PKG_VERSION").to_string(),
        pid: st.gov.self_pid(),
        egress: st.gov.egress_support(),
    }))
}

// The CLI reads it back (`tenantd host`); a `//` note, as `///` goes into the OpenAPI document.
/// The `GET /v1/host` answer: the cgroup setup, the capacity tenants share, and the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Host {
    pub cgroup: HostCgroup,
    /// `root`, or `delegated`: a subtree owned by an unprivileged user, whose root's own
    /// interface files tenantd does not write.
    pub mode: RunMode,
    /// What tenantd cannot do in this mode, each with the reason (empty as root).
    pub cannot: Vec<Cannot>,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub memory_reserve_bytes: u64,
    pub tenantd_version: String,
    #[schema(minimum = 1)]
    pub pid: u32,
    /// Whether tenant egress policies (nftables) can be enforced here, and why not.
    pub egress: crate::engine::egress::EgressSupport,
}

/// `GET /v1/tenants`: tenants by name; every one without `limit`. With `limit`, when more
/// follow, the answer has a `Link: <...&after=NAME>; rel="next"` header and a
/// `Next-Cursor: NAME` header; `?after=NAME` continues after that name. A scoped token pages
/// through its subtree only.
#[utoipa::path(get, path = "/v1/tenants", operation_id = "listTenants", params(TenantsParams),
    summary = "list tenants by name, a page at a time with limit and after",
    responses((status = 200, description = "tenants", body = Vec<TenantView>), (status = "default", response = Problem)))]
pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Res<Response> {
    let (p, q) = TenantsParams::parse(raw.as_deref(), now_ms())?;
    let page = Page {
        after: p.after,
        limit: p.limit.map(|l| l as usize),
        within: super::scope::subtree(&caller),
    };
    let listed = st.gov.list(&page).await?;
    let mut resp = Json(&listed.tenants).into_response();
    if let Some(last) = listed.next_after {
        let next = next_page_headers("/v1/tenants", &q, &["limit"], last.as_str());
        with_headers(&mut resp, next);
    }
    Ok(resp)
}

#[utoipa::path(get, path = "/v1/tenants/{name}", operation_id = "getTenant", params(TenantPath),
    summary = "a tenant: spec plus the effective kernel values",
    responses((status = 200, description = "tenant", body = TenantView), (status = "default", response = Problem)))]
pub async fn get_tenant(
    State(st): State<AppState>,
    TenantPath(n): TenantPath,
) -> Res<impl IntoResponse> {
    Ok(Json(st.gov.get(&n).await?))
}

#[utoipa::path(put, path = "/v1/tenants/{name}", operation_id = "putTenant", params(TenantPath),
    summary = "create or replace (idempotent); admission-checked, applied to the kernel, then stored",
    request_body = TenantSpec,
    responses(
        (status = 200, description = "replaced", body = TenantView, links(("GetTenant" = (operation_id = "getTenant", parameters(("name" = "$response.body#/name")))), ("PatchTenant" = (operation_id = "patchTenant", parameters(("name" = "$response.body#/name")))), ("DeleteTenant" = (operation_id = "deleteTenant", parameters(("name" = "$response.body#/name")))), ("AttachProc" = (operation_id = "attachProc", parameters(("name" = "$response.body#/name")))), ("ListProcs" = (operation_id = "listProcs", parameters(("name" = "$response.body#/name")))), ("GetUsage" = (operation_id = "getUsage", parameters(("name" = "$response.body#/name")))))),
        (status = 201, description = "created", body = TenantView, links(("GetTenant" = (operation_id = "getTenant", parameters(("name" = "$response.body#/name")))), ("PatchTenant" = (operation_id = "patchTenant", parameters(("name" = "$response.body#/name")))), ("DeleteTenant" = (operation_id = "deleteTenant", parameters(("name" = "$response.body#/name")))), ("AttachProc" = (operation_id = "attachProc", parameters(("name" = "$response.body#/name")))), ("ListProcs" = (operation_id = "listProcs", parameters(("name" = "$response.body#/name")))), ("GetUsage" = (operation_id = "getUsage", parameters(("name" = "$response.body#/name")))))),
        (status = 202, description = "stored in the fleet (a node in a fleet, issue 19) and not enforced by this node: the fleet's record and the nodes that enforce it", body = FleetTenantView),
        (status = "default", response = Problem)))]
pub async fn put_tenant(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    TenantPath(n): TenantPath,
    JsonBody(spec): JsonBody<TenantSpec>,
) -> Res<impl IntoResponse> {
    super::scope::check_put(&st, &caller, &n, &spec).await?;
    put_answer(&st, &n, spec, &caller.name, false).await
}

/// A PUT (or a PATCH, `patch`) applied here, or through the fleet store when the node is in a
/// fleet: then a tenant this node does not enforce is answered 202 with the fleet's record.
async fn put_answer(
    st: &AppState,
    n: &TenantName,
    spec: TenantSpec,
    actor: &str,
    patch: bool,
) -> Res<axum::response::Response> {
    use crate::engine::fleet::Put;
    let (view, created) = match &st.fleet {
        None => st.gov.put(n, spec, actor).await?,
        Some(f) => match f.put(n, spec, actor).await? {
            Put::Local(view, created) => (*view, created),
            Put::Elsewhere(rec) => return Ok((StatusCode::ACCEPTED, Json(*rec)).into_response()),
        },
    };
    let status = if created && !patch {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

/// RFC 7396 JSON merge patch: objects merge, `null` removes, anything else replaces.
fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        // A patch object over a non-object (absent, null, a scalar) merges into an empty
        // object, so its `null`s remove nothing rather than land in the spec.
        (t, serde_json::Value::Object(p)) => {
            *t = serde_json::Value::Object(serde_json::Map::new());
            merge(t, serde_json::Value::Object(p));
        }
        (t, p) => *t = p,
    }
}

/// Refuses a merge patch that names a field the spec does not have, even with `null` (which
/// would otherwise remove nothing and pass). `template` is the default spec as JSON, which
/// carries every field; an empty object in it (labels) is a map that takes any key.
fn known_fields(patch: &serde_json::Value, template: &serde_json::Value, path: &str) -> Res<()> {
    let (Some(p), Some(t)) = (patch.as_object(), template.as_object()) else {
        return Ok(());
    };
    if t.is_empty() {
        return Ok(());
    }
    for (k, v) in p {
        let field = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match t.get(k) {
            Some(tv) => known_fields(v, tv, &field)?,
            None => {
                let shown: String = field.chars().take(80).collect();
                return Err(Problem::invalid(
                    &shown,
                    format!("{shown}: unknown field: see TenantSpec in /v1/openapi.json"),
                ));
            }
        }
    }
    Ok(())
}

#[utoipa::path(patch, path = "/v1/tenants/{name}", operation_id = "patchTenant", params(TenantPath),
    summary = "JSON merge patch (RFC 7396) of the spec",
    request_body(content(
        (TenantPatch = "application/merge-patch+json"),
        (TenantPatch = "application/json"))),
    responses((status = 200, description = "tenant", body = TenantView),
        (status = 202, description = "stored in the fleet and not enforced by this node", body = FleetTenantView),
        (status = "default", response = Problem)))]
pub async fn patch_tenant(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    TenantPath(n): TenantPath,
    JsonBody(patch): JsonBody<serde_json::Value>,
) -> Res<impl IntoResponse> {
    if !patch.is_object() {
        return Err(Problem::invalid(
            "body",
            "a merge patch must be a JSON object",
        ));
    }
    let template = serde_json::to_value(spec_template()).map_err(|_| Problem::internal())?;
    known_fields(&patch, &template, "")?;
    let current = match &st.fleet {
        None => st.gov.get(&n).await?.stored.spec,
        Some(f) => f.spec(&n).await?,
    };
    let mut doc = serde_json::to_value(&current).map_err(|_| Problem::internal())?;
    merge(&mut doc, patch);
    let spec: TenantSpec = from_slice(doc.to_string().as_bytes())?;
    super::scope::check_put(&st, &caller, &n, &spec).await?;
    put_answer(&st, &n, spec, &caller.name, true).await
}

/// A spec with every field present, for `known_fields` (a default spec leaves the optional
/// `placement` section out).
fn spec_template() -> TenantSpec {
    TenantSpec {
        placement: Some(Box::new(crate::domain::placement::PlacementSpec {
            uids: Some(Vec::new()),
            gids: Some(Vec::new()),
            exe: Some(Vec::new()),
            cmdline: Some(String::new()),
            ..Default::default()
        })),
        ..TenantSpec::default()
    }
}

#[utoipa::path(delete, path = "/v1/tenants/{name}", operation_id = "deleteTenant", params(TenantPath, DeleteParams),
    summary = "delete; refused (409) while processes live in it unless kill=true or move_to=NAME, or while it has children",
    responses((status = 204, description = "deleted"), (status = "default", response = Problem)))]
pub async fn delete_tenant(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    TenantPath(n): TenantPath,
    RawQuery(raw): RawQuery,
) -> Res<StatusCode> {
    let (DeleteParams { kill, move_to }, _) = DeleteParams::parse(raw.as_deref(), now_ms())?;
    let mode = match (kill, move_to) {
        (true, Some(_)) => {
            return Err(Problem::invalid(
                "move_to",
                "use either kill=true or move_to, not both",
            ));
        }
        (true, None) => DeleteMode::Kill,
        (false, Some(t)) => DeleteMode::MoveTo(t),
        (false, None) => DeleteMode::Refuse,
    };
    match &st.fleet {
        None => st.gov.delete(&n, mode, &caller.name).await?,
        Some(f) => f.delete(&n, mode, &caller.name).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/nodes", operation_id = "listNodes",
    summary = "the fleet's nodes (issue 19): labels, versions, last heartbeat, down, and what each holds of the tenants selected for it; 404 on a daemon without a fleet store",
    responses((status = 200, description = "nodes", body = Nodes), (status = "default", response = Problem)))]
pub async fn nodes(State(st): State<AppState>) -> Res<impl IntoResponse> {
    let Some(f) = &st.fleet else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "no-fleet",
            "this daemon runs alone: no fleet store is configured (store, --store)",
        ));
    };
    Ok(Json(f.nodes().await?))
}

#[utoipa::path(get, path = "/v1/tenants/{name}/procs", operation_id = "listProcs", params(TenantPath),
    summary = "processes in the tenant's leaf",
    responses((status = 200, description = "processes", body = Vec<ProcInfo>), (status = "default", response = Problem)))]
pub async fn list_procs(
    State(st): State<AppState>,
    TenantPath(n): TenantPath,
) -> Res<impl IntoResponse> {
    Ok(Json(st.gov.procs(&n).await?))
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProc {
    #[serde(deserialize_with = "crate::domain::units::count::u32")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub pid: u32,
}

#[utoipa::path(post, path = "/v1/tenants/{name}/procs", operation_id = "attachProc", params(TenantPath),
    summary = "move a process into the tenant (refuses missing PIDs, kernel threads and tenantd itself)",
    request_body = AddProc,
    responses((status = 201, description = "attached", body = Attached, links(("ListProcs" = (operation_id = "listProcs", parameters(("name" = "$response.body#/tenant")))), ("DeleteTenant" = (operation_id = "deleteTenant", parameters(("name" = "$response.body#/tenant")))))), (status = "default", response = Problem)))]
pub async fn add_proc(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    TenantPath(n): TenantPath,
    JsonBody(body): JsonBody<AddProc>,
) -> Res<impl IntoResponse> {
    st.gov.attach(&n, body.pid, &caller.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(Attached {
            tenant: n,
            pid: body.pid,
        }),
    ))
}

// The CLI reads it back (`tenantd procs add`, `tenantd run`).
/// The `POST /v1/tenants/{name}/procs` answer: which process went where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attached {
    pub tenant: TenantName,
    #[schema(minimum = 1)]
    pub pid: u32,
}

/// `GET /v1/placement/explain?pid=N`: which tenant the placement rules give the process,
/// which rule matched, and for every rule the fields that did not; what the placer would do.
/// Nothing is moved.
#[utoipa::path(get, path = "/v1/placement/explain", operation_id = "explainPlacement", params(ExplainParams),
    summary = "which tenant the placement rules give a process, and why (nothing is moved)",
    responses((status = 200, description = "explanation", body = Explanation), (status = "default", response = Problem)))]
pub async fn explain_placement(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Res<Json<Explanation>> {
    let (ExplainParams { pid }, _) = ExplainParams::parse(q.as_deref(), now_ms())?;
    let e = st.gov.clone().explain(pid).await?;
    e.map(Json).ok_or_else(|| {
        let gone = format!("no process with PID {pid} exists");
        Problem::new(StatusCode::NOT_FOUND, "not-found", gone).field("pid")
    })
}

#[utoipa::path(post, path = "/v1/reconcile", operation_id = "reconcile",
    summary = "reconcile now: create what is missing, restore drifted values, report unknown directories",
    responses((status = 200, description = "report", body = ReconcileReport), (status = "default", response = Problem)))]
pub async fn reconcile(State(st): State<AppState>) -> Res<impl IntoResponse> {
    Ok(Json(st.gov.reconcile().await?))
}

/// `GET /v1/events`: newest first, `limit` per page. When more events match, the answer has a
/// `Link: <...&after=ID>; rel="next"` header and a `Next-Cursor: ID` header; `?after=ID`
/// continues after event ID.
#[utoipa::path(get, path = "/v1/events", operation_id = "listEvents", params(EventsParams),
    summary = "events, newest first",
    responses((status = 200, description = "events", body = Vec<Event>), (status = "default", response = Problem)))]
pub async fn events(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Res<Response> {
    let (p, q) = EventsParams::parse(raw.as_deref(), now_ms())?;
    let limit = p.limit;
    let f = EventFilter {
        tenant: p.tenant.map(|t| t.to_string()),
        kind: p.kind,
        since_ms: p.since,
        // One more than asked, to know whether there is a next page.
        limit: limit + 1,
        after_id: p.after,
    };
    let mut ev = super::scope::events(&st, &caller, &f).await?;
    let more = ev.len() as i64 > limit;
    ev.truncate(limit as usize);
    let mut resp = Json(&ev).into_response();
    if let (true, Some(last)) = (more, ev.last()) {
        let keep = ["tenant", "kind", "since", "limit"];
        let next = next_page_headers("/v1/events", &q, &keep, &last.id.to_string());
        with_headers(&mut resp, next);
    }
    Ok(resp)
}

fn with_headers(resp: &mut Response, headers: Vec<(&'static str, String)>) {
    for (h, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(h, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by schemathesis (issue 12, finding 10): `PATCH {"io": {}, "": null}` answered 200,
    /// because a `null` for a field the spec does not have removed nothing and passed.
    #[test]
    fn a_merge_patch_naming_an_unknown_field_is_refused_even_with_null() {
        let t = serde_json::to_value(spec_template()).unwrap();
        let check = |p: serde_json::Value| known_fields(&p, &t, "").map_err(|e| e.field);
        assert_eq!(
            check(serde_json::json!({"io": {}, "": null})),
            Err(Some(String::new()))
        );
        assert_eq!(
            check(serde_json::json!({"cpu": {"nope": null}})),
            Err(Some("cpu.nope".into()))
        );
        assert_eq!(
            check(serde_json::json!({"bogus": 1})),
            Err(Some("bogus".into()))
        );
        assert_eq!(
            check(serde_json::json!({"placement": {"uid": null}})),
            Err(Some("placement.uid".into()))
        );
        for ok in [
            serde_json::json!({"cpu": {"guarantee_pct": null}}),
            serde_json::json!({"labels": {"any-key": "v", "gone": null}}),
            serde_json::json!({"memory": null, "parent": "x"}),
            serde_json::json!({"io": {"limits": [{"device": "8:0"}]}}),
            serde_json::json!({"placement": {"cmdline": null, "priority": 3}}),
            serde_json::json!({"placement": null}),
        ] {
            assert_eq!(check(ok.clone()), Ok(()), "{ok}");
        }
    }

    /// Found by schemathesis: `PATCH {"nodes": {"0": null}}` over a spec without `nodes` kept
    /// the `null` (the patch object replaced the absent value whole) and answered 422.
    /// RFC 7396: a patch object over a non-object merges into an empty object.
    #[test]
    fn a_patch_object_over_an_absent_field_drops_its_nulls() {
        let mut doc = serde_json::json!({"cpu": {}, "nodes": null});
        merge(
            &mut doc,
            serde_json::json!({"nodes": {"0": null, "role": "web"}, "launch": {"user": null}}),
        );
        assert_eq!(
            doc,
            serde_json::json!({"cpu": {}, "nodes": {"role": "web"}, "launch": {}})
        );
        let mut scalar = serde_json::json!(3);
        merge(&mut scalar, serde_json::json!({"a": {"b": null}}));
        assert_eq!(scalar, serde_json::json!({"a": {}}));
    }
}
