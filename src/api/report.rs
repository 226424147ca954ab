//! `GET /v1/reports/sla?from=&to=&tenant=&format=json|csv|html`: the SLA report an operator can
//! hand to a customer.

use super::AppState;
use super::auth::Caller;
use super::error::Problem;
use super::query::Query;
use crate::engine::now_ms;
use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

pub async fn sla(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["from", "to", "tenant", "format"])?;
    let now = now_ms();
    let from = q.time("from", now, now.saturating_sub(86_400_000).max(0))?;
    let to = q.time("to", now, now)?;
    if to <= from {
        return Err(Problem::invalid(
            "to",
            format!("to ({to}) must be after from ({from})"),
        ));
    }
    let tenant = q.tenant("tenant")?;
    let format = q
        .one_of("format", &["json", "csv", "html"])?
        .unwrap_or("json");
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
