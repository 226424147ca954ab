//! `GET /v1/reports/sla?from=&to=&tenant=&format=json|csv|html`: the SLA report an operator can
//! hand to a customer.

use super::AppState;
use super::auth::Caller;
use super::error::Problem;
use super::handlers::parse_since;
use crate::domain::TenantName;
use crate::engine::now_ms;
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

pub async fn sla(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    for k in q.keys() {
        if !matches!(k.as_str(), "from" | "to" | "tenant" | "format") {
            return Err(Problem::invalid(
                k,
                format!("unknown query parameter '{k}': use from, to, tenant, format"),
            ));
        }
    }
    let now = now_ms();
    let time = |k: &str, default: i64| -> Result<i64, Problem> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => parse_since(v, now).ok_or_else(|| {
                Problem::invalid(k, format!("'{v}' is neither Unix milliseconds nor a duration back from now like 15m, 2h, 7d"))
            }),
        }
    };
    let from = time("from", now - 86_400_000)?;
    let to = time("to", now)?;
    if to <= from {
        return Err(Problem::invalid(
            "to",
            format!("to ({to}) must be after from ({from})"),
        ));
    }
    let tenant = q
        .get("tenant")
        .map(|t| {
            TenantName::parse(t).map_err(|e| Problem::invalid("tenant", e.message().to_string()))
        })
        .transpose()?;
    let format = q.get("format").map(String::as_str).unwrap_or("json");
    if !matches!(format, "json" | "csv" | "html") {
        return Err(Problem::invalid(
            "format",
            format!("'{format}' is not json, csv or html"),
        ));
    }
    let r = st
        .gov
        .sla_report(from, to, tenant.as_ref(), &st.usage_retention)
        .await?;
    let r = super::scope::report(&st, &caller, r).await?;
    Ok(match format {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::report::csv(&r),
        )
            .into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::report::html(&r),
        )
            .into_response(),
        _ => axum::Json(r).into_response(),
    })
}
