//! Thin handlers: parse the request, call the engine, shape the answer.

use super::AppState;
use super::auth::Caller;
use super::error::Problem;
use super::json::{JsonBody, from_slice};
use super::query::Query;
use crate::domain::{TenantName, TenantSpec};
use crate::engine::{DeleteMode, now_ms};
use crate::store::EventFilter;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

type Res<T> = Result<T, Problem>;

fn name(s: &str) -> Res<TenantName> {
    TenantName::parse(s).map_err(Problem::from)
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready while the database answers and can write: after a write found its filesystem full,
/// each call probes with a small write (see `Store::check_writable`), so readiness returns by
/// itself with the space. The unauthenticated answer does not name the database's path.
pub async fn readyz(State(st): State<AppState>) -> Res<&'static str> {
    st.gov.store().check_writable().await.map_err(|e| {
        let detail = match e {
            crate::store::StoreError::Full { .. } => {
                "the database's filesystem is full: free space; tenantd retries by itself"
            }
            e => {
                tracing::warn!("readyz: {e}");
                "the database cannot write"
            }
        };
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", detail)
    })?;
    st.gov.store().tenants().await.map_err(|e| {
        tracing::warn!("readyz: {e}");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "the database is not answering",
        )
    })?;
    Ok("ready\n")
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI)
}

pub async fn not_found(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no such endpoint: {}; see /v1/openapi.json", uri.path()),
    )
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

pub async fn host(State(st): State<AppState>) -> Res<impl IntoResponse> {
    let h = st.gov.host().await?;
    let cap = st.gov.capacity();
    Ok(Json(serde_json::json!({
        "cgroup": h,
        "cpus": cap.cpus,
        "memory_bytes": cap.memory_bytes,
        "memory_reserve_bytes": cap.memory_reserve_bytes,
        "tenantd_version": env!("CARGO_PKG_VERSION"),
        "pid": st.gov.self_pid(),
    })))
}

pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Res<impl IntoResponse> {
    Ok(Json(super::scope::views(&caller, st.gov.list().await?)))
}

pub async fn get_tenant(
    State(st): State<AppState>,
    Path(n): Path<String>,
) -> Res<impl IntoResponse> {
    Ok(Json(st.gov.get(&name(&n)?).await?))
}

pub async fn put_tenant(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(n): Path<String>,
    JsonBody(spec): JsonBody<TenantSpec>,
) -> Res<impl IntoResponse> {
    let n = name(&n)?;
    super::scope::check_put(&st, &caller, &n, &spec).await?;
    let (view, created) = st.gov.put(&n, spec, &caller.name).await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(view),
    ))
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

pub async fn patch_tenant(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(n): Path<String>,
    JsonBody(patch): JsonBody<serde_json::Value>,
) -> Res<impl IntoResponse> {
    let n = name(&n)?;
    if !patch.is_object() {
        return Err(Problem::invalid(
            "body",
            "a merge patch must be a JSON object",
        ));
    }
    let template = serde_json::to_value(TenantSpec::default()).map_err(|_| Problem::internal())?;
    known_fields(&patch, &template, "")?;
    let current = st.gov.get(&n).await?;
    let mut doc = serde_json::to_value(&current.stored.spec).map_err(|_| Problem::internal())?;
    merge(&mut doc, patch);
    let spec: TenantSpec = from_slice(doc.to_string().as_bytes())?;
    let (view, _) = st.gov.put(&n, spec, &caller.name).await?;
    Ok(Json(view))
}

pub async fn delete_tenant(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(n): Path<String>,
    RawQuery(raw): RawQuery,
) -> Res<StatusCode> {
    let q = Query::parse(raw.as_deref(), &["kill", "move_to"])?;
    let kill = q.bool("kill")?.unwrap_or(false);
    let move_to = q.tenant("move_to")?;
    let n = name(&n)?;
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
    st.gov.delete(&n, mode, &caller.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_procs(
    State(st): State<AppState>,
    Path(n): Path<String>,
) -> Res<impl IntoResponse> {
    Ok(Json(st.gov.procs(&name(&n)?).await?))
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddProc {
    #[serde(deserialize_with = "crate::domain::units::count::u32")]
    pub pid: u32,
}

pub async fn add_proc(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(n): Path<String>,
    JsonBody(body): JsonBody<AddProc>,
) -> Res<impl IntoResponse> {
    let n = name(&n)?;
    st.gov.attach(&n, body.pid, &caller.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"tenant": n, "pid": body.pid})),
    ))
}

pub async fn reconcile(State(st): State<AppState>) -> Res<impl IntoResponse> {
    Ok(Json(st.gov.reconcile().await?))
}

/// The most events one answer holds, and the number when `limit` is not given.
pub const EVENTS_MAX_LIMIT: i64 = 1000;
pub const EVENTS_DEFAULT_LIMIT: i64 = 100;

/// `GET /v1/events`: newest first, `limit` per page. When more events match, the answer has a
/// `Link: <...&after=ID>; rel="next"` header and a `Next-Cursor: ID` header; `?after=ID`
/// continues after event ID.
pub async fn events(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Res<Response> {
    let q = Query::parse(
        raw.as_deref(),
        &["tenant", "kind", "since", "limit", "after"],
    )?;
    let limit = q.limit("limit", EVENTS_DEFAULT_LIMIT, EVENTS_MAX_LIMIT)?;
    let f = EventFilter {
        tenant: q.tenant("tenant")?.map(|t| t.to_string()),
        kind: q.ident("kind")?,
        since_ms: q
            .get("since")
            .map(|_| q.time("since", now_ms(), 0))
            .transpose()?,
        // One more than asked, to know whether there is a next page.
        limit: limit + 1,
        after_id: q.cursor("after")?,
    };
    let mut ev = super::scope::events(&st, &caller, &f).await?;
    let more = ev.len() as i64 > limit;
    ev.truncate(limit as usize);
    let mut resp = Json(&ev).into_response();
    if let (true, Some(last)) = (more, ev.last()) {
        let mut next = form_urlencoded::Serializer::new(String::new());
        for k in ["tenant", "kind", "since", "limit"] {
            if let Some(v) = q.get(k) {
                next.append_pair(k, v);
            }
        }
        next.append_pair("after", &last.id.to_string());
        let link = format!("</v1/events?{}>; rel=\"next\"", next.finish());
        for (h, v) in [("link", link), ("next-cursor", last.id.to_string())] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert(h, v);
            }
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by schemathesis (issue 12, finding 10): `PATCH {"io": {}, "": null}` answered 200,
    /// because a `null` for a field the spec does not have removed nothing and passed.
    #[test]
    fn a_merge_patch_naming_an_unknown_field_is_refused_even_with_null() {
        let t = serde_json::to_value(TenantSpec::default()).unwrap();
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
        for ok in [
            serde_json::json!({"cpu": {"guarantee_pct": null}}),
            serde_json::json!({"labels": {"any-key": "v", "gone": null}}),
            serde_json::json!({"memory": null, "parent": "x"}),
            serde_json::json!({"io": {"limits": [{"device": "8:0"}]}}),
        ] {
            assert_eq!(check(ok.clone()), Ok(()), "{ok}");
        }
    }
}
