//! Thin handlers: parse the request, call the engine, shape the answer.

use super::AppState;
use super::auth::Caller;
use super::error::Problem;
use super::json::{JsonBody, from_slice};
use crate::domain::{TenantName, TenantSpec};
use crate::engine::{DeleteMode, now_ms};
use crate::store::EventFilter;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use std::collections::HashMap;

type Res<T> = Result<T, Problem>;

fn name(s: &str) -> Res<TenantName> {
    TenantName::parse(s).map_err(Problem::from)
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(st): State<AppState>) -> Res<&'static str> {
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
    Query(q): Query<HashMap<String, String>>,
) -> Res<StatusCode> {
    let n = name(&n)?;
    for k in q.keys() {
        if k != "kill" && k != "move_to" {
            return Err(Problem::invalid(
                k,
                format!("unknown query parameter '{k}': use kill=true or move_to=TENANT"),
            ));
        }
    }
    let kill = match q.get("kill").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(Problem::invalid(
                "kill",
                format!("'{v}' is not true or false"),
            ));
        }
    };
    let mode = match (kill, q.get("move_to")) {
        (true, Some(_)) => {
            return Err(Problem::invalid(
                "move_to",
                "use either kill=true or move_to, not both",
            ));
        }
        (true, None) => DeleteMode::Kill,
        (false, Some(t)) => DeleteMode::MoveTo(
            TenantName::parse(t)
                .map_err(|e| Problem::invalid("move_to", e.message().to_string()))?,
        ),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddProc {
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

/// Parses `since`: Unix milliseconds, or a duration back from now such as `15m`, `2h`, `7d`.
pub fn parse_since(s: &str, now: i64) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let (num, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(now - n * mult)
}

pub async fn events(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Res<impl IntoResponse> {
    let mut f = EventFilter {
        limit: 1000,
        ..Default::default()
    };
    for (k, v) in q {
        match k.as_str() {
            "tenant" => f.tenant = Some(name(&v)?.to_string()),
            "kind" => f.kind = Some(v),
            "since" => {
                f.since_ms = Some(parse_since(&v, now_ms()).ok_or_else(|| {
                    Problem::invalid(
                        "since",
                        format!(
                            "'{v}' is neither Unix milliseconds nor a duration like 15m, 2h, 7d"
                        ),
                    )
                })?)
            }
            "limit" => {
                f.limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=100_000).contains(l))
                    .ok_or_else(|| {
                        Problem::invalid("limit", format!("'{v}' is not a number from 1 to 100000"))
                    })?
            }
            other => {
                return Err(Problem::invalid(
                    other,
                    format!("unknown query parameter '{other}': use tenant, kind, since, limit"),
                ));
            }
        }
    }
    Ok(Json(super::scope::events(&st, &caller, &f).await?))
}
