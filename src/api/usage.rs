//! Usage handlers: `GET /v1/tenants/{name}/usage` (history from the store at a step that picks
//! the level) and `GET /metrics` (the sampler's current snapshot in the Prometheus text format
//! 0.0.4, or OpenMetrics when the Accept header prefers it).

use super::AppState;
use super::auth::Caller;
use super::error::Problem;
use super::path::TenantPath;
use super::query::{Params, UsageParams};
use crate::engine::now_ms;
use crate::metrics::Format;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};

/// Most points one answer may hold.
pub const MAX_POINTS: i64 = 20_000;

/// The validated query of a usage request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_s: i64,
}

/// Validates `from`, `to` and `step` (no IO). Defaults: the last hour, about 240 points.
pub fn usage_query(p: &UsageParams, now: i64) -> Result<UsageQuery, Problem> {
    let from_ms = p.from.unwrap_or(now.saturating_sub(3_600_000).max(0));
    let to_ms = p.to.unwrap_or(now);
    if to_ms <= from_ms {
        return Err(Problem::invalid(
            "to",
            format!("to ({to_ms}) must be after from ({from_ms})"),
        ));
    }
    // Both times lie in 1970..=9999 (`parse_time`), so the span cannot overflow.
    let span_s = (to_ms - from_ms) / 1000;
    let step_s = match p.step {
        None => (span_s / 240).max(1),
        Some(s) => s,
    };
    if span_s / step_s > MAX_POINTS {
        return Err(Problem::invalid(
            "step",
            format!(
                "{step_s} s over this range gives more than {MAX_POINTS} points: use a larger step or a shorter range"
            ),
        ));
    }
    Ok(UsageQuery {
        from_ms,
        to_ms,
        step_s,
    })
}

#[utoipa::path(get, path = "/v1/tenants/{name}/usage", operation_id = "getUsage", params(TenantPath, UsageParams),
    summary = "a tenant's usage over [from, to) in buckets of step, from the finest stored level (raw, minute, hour) that fits the step and still holds from",
    description = "to must be after from, and (to - from) / step at most 20000 points (422 otherwise)",
    responses((status = 200, body = crate::store::Usage,
        description = "level used and one point per non-empty bucket; every value named with its unit: <rate>_mean and <rate>_max (cpu_cores, io_read_bytes_per_s, cpu_some_stall_ratio, ...), <gauge>_mean and <gauge>_max (memory_current_bytes, pids_current, ...), event counts (new_oom_kills, ...)"),
        (status = "default", response = Problem)))]
pub async fn usage(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    TenantPath(name): TenantPath,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, Problem> {
    let now = now_ms();
    let (p, _) = UsageParams::parse(raw.as_deref(), now)?;
    let uq = usage_query(&p, now)?;
    // A scoped caller sees a tenant's history from its creation on (see scope::history_start).
    let from_ms = match super::scope::history_start(&st, &caller, &name).await? {
        Some(created) => uq.from_ms.max(created.min(uq.to_ms - 1)),
        None => uq.from_ms,
    };
    let u = st
        .gov
        .usage(
            &name,
            from_ms,
            uq.to_ms,
            uq.step_s,
            now,
            &st.usage_retention,
        )
        .await?;
    Ok(Json(u))
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics",
    summary = "Prometheus metrics of every tenant and of tenantd, from the sampler's current snapshot (names: tenantd::metrics::METRICS); a scoped token gets only its subtree's per-tenant series",
    description = "The Prometheus text format 0.0.4 by default; OpenMetrics when the Accept header prefers application/openmetrics-text (q-values respected, q=0 refuses), as the official Go client negotiates.",
    responses((status = 200, description = "Prometheus text 0.0.4, or OpenMetrics when asked for", content(
        (String = "text/plain; version=0.0.4; charset=utf-8"),
        (String = "application/openmetrics-text; version=1.0.0; charset=utf-8"))),
        (status = "default", response = Problem)))]
pub async fn metrics(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, Problem> {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let only = super::scope::tenant_filter(&st, &caller).await?;
    // The egress counters live in the kernel's table: read at each scrape (no table, no read).
    st.metrics.set_egress(st.gov.egress_snapshot().await?);
    // Rendering 10,000 tenants takes tens of milliseconds of CPU: keep it off the workers.
    // The body goes out in pieces as they are written (`Metrics::render_chunks`), at most
    // `CHUNKS_AHEAD` of them waiting for the client.
    let m = st.metrics.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    let render = tokio::task::spawn_blocking(move || {
        let keep = only.map(|names| move |n: &str| names.contains(n));
        let keep = keep.as_ref().map(|k| k as &dyn Fn(&str) -> bool);
        let mut send = |piece: String| tx.blocking_send(Bytes::from(piece)).is_ok();
        m.render_chunks(format, keep, CHUNK_BYTES, &mut send);
    });
    tokio::spawn(async move {
        if let Err(e) = render.await {
            tracing::error!("rendering /metrics failed: {e}");
        }
    });
    let body = axum::body::Body::new(Pieces(rx));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        body,
    ))
}

/// The size of the pieces `GET /metrics` sends.
const CHUNK_BYTES: usize = 256 * 1024;

/// Pieces of a `GET /metrics` body rendered and not yet taken by the client, at most.
const CHUNKS_AHEAD: usize = 2;

/// A response body of the pieces a renderer sends, ending when it drops its sender.
struct Pieces(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::query::Query;

    /// The usage query of these parameters, parsed as the handler does.
    fn uq(pairs: &[(&str, &str)], now: i64) -> Result<UsageQuery, Problem> {
        let raw: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        usage_query(&UsageParams::parse(Some(&raw), now)?.0, now)
    }

    #[test]
    fn steps_and_ranges() {
        let now = 10_000_000_000;
        let u = uq(&[("from", "2h"), ("step", "1m")], now).unwrap();
        assert_eq!(
            u,
            UsageQuery {
                from_ms: now - 7_200_000,
                to_ms: now,
                step_s: 60
            }
        );
        let u = uq(&[], now).unwrap();
        assert_eq!((u.to_ms - u.from_ms, u.step_s), (3_600_000, 15));
        assert_eq!(
            uq(&[("from", "1h"), ("to", "2h")], now)
                .unwrap_err()
                .field
                .as_deref(),
            Some("to")
        );
        assert_eq!(
            uq(&[("from", "30d"), ("step", "1")], now)
                .unwrap_err()
                .field
                .as_deref(),
            Some("step")
        );
        assert_eq!(
            Query::parse(Some("since=1h"), &["from", "to", "step"])
                .unwrap_err()
                .field
                .as_deref(),
            Some("since")
        );
        assert_eq!(uq(&[("step", "x")], now).unwrap_err().status, 422);
    }

    /// `router(state).oneshot(request)`: both routes, their content types and problem+json.
    #[tokio::test]
    async fn routes_answer_with_the_right_types() {
        use crate::api::{auth::Tokens, router};
        use crate::domain::TenantName;
        use crate::domain::tenant::{Capacity, TenantSpec};
        use crate::domain::usage_row::UsageRow;
        use crate::engine::{EngineConfig, Governor};
        use crate::store::{NewEvent, Store};
        use axum::body::Body;
        use axum::http::Request;
        use http_body_util::BodyExt;
        use std::sync::Arc;
        use tower::ServiceExt;

        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("t.db")).await.unwrap();
        let ev = NewEvent {
            ts_ms: 0,
            tenant: Some("web".into()),
            actor: None,
            event: crate::domain::event::Event::TenantCreated {
                spec: Box::default(),
            },
        };
        store
            .put_tenant(
                &TenantName::parse("web").unwrap(),
                &TenantSpec::default(),
                0,
                ev,
            )
            .await
            .unwrap();
        let now = now_ms();
        let mut row = UsageRow {
            tenant: "web".into(),
            ts_ms: now - 5_000,
            interval_ms: Some(1000),
            ..Default::default()
        };
        row.rates.cpu_cores = Some(0.75);
        store.add_usage(&[row]).await.unwrap();
        let backend = Arc::new(crate::cgroup::v2::V2::new(
            tmp.path(),
            tmp.path().join("root"),
            "/sys",
        ));
        let cfg = EngineConfig::default();
        let gov = Governor::new(
            backend,
            store,
            cfg,
            Capacity {
                cpus: 2.0,
                memory_bytes: 1 << 30,
                memory_reserve_bytes: 0,
            },
        );
        let state = AppState {
            gov,
            tokens: Arc::new(Tokens::open()),
            max_body_bytes: 1 << 20,
            request_timeout: std::time::Duration::from_secs(5),
            metrics: crate::metrics::Metrics::new(),
            usage_retention: Default::default(),
            fleet: None,
        };
        let get = |uri: &str| {
            let app = router(state.clone());
            let req = Request::get(uri).body(Body::empty()).unwrap();
            async move {
                let resp = app.oneshot(req).await.unwrap();
                let status = resp.status();
                let ct = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_string());
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, ct, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        let (status, ct, body) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(crate::metrics::CONTENT_TYPE_TEXT));
        assert!(!body.contains("# EOF"), "{body}");

        let (status, _, body) = get("/v1/tenants/web/usage?from=1m&step=10s").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["level"], "raw");
        assert_eq!(v["step_s"], 10);
        assert_eq!(v["points"][0]["cpu_cores_mean"], 0.75);

        let (status, ct, body) = get("/v1/tenants/nope/usage").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
        assert!(body.contains("does not exist"));
        let (status, _, body) = get("/v1/tenants/web/usage?step=fast").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body.contains("\"field\":\"step\""), "{body}");
    }
}
