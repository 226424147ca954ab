//! `GET /v1/reports/sla?from=&to=&tenant=&format=json|csv|html`: the SLA report an operator can
//! hand to a customer.

use super::AppState;
use super::auth::Caller;
use super::error::Problem;
use super::query::{Params, ReportParams};
use crate::engine::now_ms;
use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

#[utoipa::path(get, path = "/v1/reports/sla", operation_id = "slaReport", params(ReportParams),
    summary = "SLA report: per tenant guarantee, delivered share while contended (mean, p5), contended and violation time, violations, attainment, memory breaches, OOM kills, chargeback totals",
    responses((status = 200, description = "the report", content(
        (crate::report::Report = "application/json"),
        (String = "text/csv; charset=utf-8"),
        (String = "text/html; charset=utf-8"))),
        (status = "default", response = Problem)))]
pub async fn sla(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let now = now_ms();
    let (p, _) = ReportParams::parse(raw.as_deref(), now)?;
    let from = p.from.unwrap_or(now.saturating_sub(86_400_000).max(0));
    let to = p.to.unwrap_or(now);
    if to <= from {
        return Err(Problem::invalid(
            "to",
            format!("to ({to}) must be after from ({from})"),
        ));
    }
    let (tenant, format) = (p.tenant, p.format);
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
