//! `GET /v1/reports/sla?from=&to=&tenant=&format=json|csv|html&scope=node|fleet`: the SLA
//! report an operator can hand to a customer, of this node or (issue 19) of the whole fleet.

use super::AppState;
use super::auth::Caller;
use super::error::Problem;
use super::query::{Params, ReportParams};
use crate::engine::now_ms;
use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The JSON of either scope: this node's report, or the fleet's (`scope=fleet`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum AnySlaReport {
    Node(crate::report::Report),
    Fleet(crate::report::FleetReport),
}

#[utoipa::path(get, path = "/v1/reports/sla", operation_id = "slaReport", params(ReportParams),
    summary = "SLA report: per tenant guarantee, delivered share while contended (mean, p5), contended and violation time, violations, attainment, memory breaches, OOM kills, chargeback totals; scope=fleet: per tenant across the fleet's nodes and per node",
    responses((status = 200, description = "the report (`SlaReport`; `FleetSlaReport` for scope=fleet)", content(
        (AnySlaReport = "application/json"),
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
    if p.scope == "fleet" {
        return fleet(&st, &caller, from, to, tenant.as_ref(), format).await;
    }
    let r = st
        .gov
        .sla_report(from, to, tenant.as_ref(), &st.usage_retention)
        .await?;
    let r = super::scope::report(&st, &caller, r).await?;
    Ok(render(format, r, crate::report::csv, crate::report::html))
}

/// A report in `format`: CSV, HTML, or JSON.
fn render<R: serde::Serialize>(
    format: &str,
    r: R,
    csv: fn(&R) -> String,
    html: fn(&R) -> String,
) -> Response {
    match format {
        "csv" => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv(&r)).into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html(&r),
        )
            .into_response(),
        _ => axum::Json(r).into_response(),
    }
}

/// `scope=fleet`: the report over every node's shipped minutes. Only for a node of a fleet,
/// and only for unscoped tokens (it spans every node, as `GET /v1/nodes` does).
async fn fleet(
    st: &AppState,
    caller: &Caller,
    from: i64,
    to: i64,
    tenant: Option<&crate::domain::TenantName>,
    format: &str,
) -> Result<Response, Problem> {
    let Some(f) = &st.fleet else {
        return Err(Problem::invalid(
            "scope",
            "scope=fleet needs a fleet store: this daemon runs alone (no store configured: store, --store); leave scope out for this node's report",
        ));
    };
    if caller.scope.is_some() {
        return Err(Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "scope=fleet spans every node of the fleet: a tenant-scoped token sees its own subtree on this node only",
        )
        .field("scope"));
    }
    let r = crate::engine::fleet_history::fleet_report(f, from, to, tenant).await?;
    Ok(render(
        format,
        r,
        crate::report::fleet_csv,
        crate::report::fleet_html,
    ))
}
