//! The HTTP admin API (axum): `router(state)` for tests, `serve(listener, state, shutdown)` for
//! the daemon. Handlers stay thin: parse, call the engine, shape the answer.

pub mod auth;
pub mod error;
mod handlers;
pub mod json;
mod report;
pub mod scope;
mod usage;

use crate::engine::Governor;
use auth::Tokens;
use axum::Router;
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The OpenAPI document, committed and served as is; a test checks it against `ROUTES`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route the router serves, for the OpenAPI consistency test.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/host"),
    ("get", "/v1/tenants"),
    ("get", "/v1/tenants/{name}"),
    ("put", "/v1/tenants/{name}"),
    ("patch", "/v1/tenants/{name}"),
    ("delete", "/v1/tenants/{name}"),
    ("get", "/v1/tenants/{name}/procs"),
    ("post", "/v1/tenants/{name}/procs"),
    ("post", "/v1/reconcile"),
    ("get", "/v1/events"),
    ("get", "/v1/tenants/{name}/usage"),
    ("get", "/metrics"),
    ("get", "/v1/reports/sla"),
];

/// Everything a handler may use; passed explicitly, no globals.
#[derive(Clone)]
pub struct AppState {
    pub gov: Arc<Governor>,
    pub tokens: Arc<Tokens>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// The sampler's snapshot and tenantd's own instruments, for `GET /metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Retention of the usage levels, so a usage query picks a level that still has data.
    pub usage_retention: crate::store::Retention,
}

pub fn router(state: AppState) -> Router {
    use axum::routing::{post, put};
    let tokens = state.tokens.clone();
    let limit = state.max_body_bytes;
    let timeout = state.request_timeout;
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/v1/openapi.json", get(handlers::openapi))
        .route("/v1/host", get(handlers::host))
        .route("/v1/tenants", get(handlers::list))
        .route(
            "/v1/tenants/{name}",
            put(handlers::put_tenant)
                .get(handlers::get_tenant)
                .patch(handlers::patch_tenant)
                .delete(handlers::delete_tenant),
        )
        .route(
            "/v1/tenants/{name}/procs",
            get(handlers::list_procs).post(handlers::add_proc),
        )
        .route("/v1/reconcile", post(handlers::reconcile))
        .route("/v1/reports/sla", get(report::sla))
        .route("/v1/events", get(handlers::events))
        .route("/v1/tenants/{name}/usage", get(usage::usage))
        .route("/metrics", get(usage::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            scope::guard,
        ))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            tokens,
            auth::authenticate,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
