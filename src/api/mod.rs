//! The HTTP admin API (axum): `router(state)` for tests, `serve(listener, state, shutdown)` for
//! the daemon (an accept loop with connection limits and timeouts). Handlers stay thin: parse,
//! call the engine, shape the answer.
//!
//! Layer 3 (see `lib.rs`): owns the routes, auth, scoping, problem+json, the OpenAPI document
//! and the answer types a handler builds (`Host`, `Attached`; the CLI reads them back). Calls
//! the engine (`Governor`), never the `Store`; may name the types of `domain`, `cgroup`,
//! `store`, `report` and `metrics`; never imports `config` or `cli`.

pub mod auth;
pub mod error;
mod handlers;
pub mod json;
pub mod openapi;
pub mod path;
pub mod query;
mod report;
pub mod scope;
mod usage;

use crate::engine::Governor;
use auth::Tokens;
use axum::Router;
use error::Problem;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use handlers::{Attached, Host};

/// The committed copy of the OpenAPI document (`openapi::document()` generates it; a test
/// keeps the two equal).
pub const OPENAPI: &str = include_str!("openapi.json");

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
    /// This node's link to its fleet (issue 19): writes go to the fleet store; `None` for a
    /// single host.
    pub fleet: Option<Arc<crate::engine::fleet::Fleet>>,
}

/// Longest request target (path and query) answered: longer ones get 414 problem+json.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields answered: more get 431 problem+json.
pub const MAX_HEADERS: usize = 64;
/// Largest total of header names and values answered: more get 431 problem+json.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// hyper's own limits, above ours, for requests hyper refuses before our code sees them: a
/// request head (request line and headers) longer than this, or with more header fields than
/// `HYPER_MAX_HEADERS`, is answered by hyper itself with a bare `431 Request Header Fields Too
/// Large` (no body, not problem+json) and the connection is closed. hyper's own `414` needs a
/// URI over 65534 bytes, which makes the head longer than this, so it is a 431 too.
pub const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;
pub const HYPER_MAX_HEADERS: usize = 128;

/// The 413 answer, whether the Content-Length said so up front or the body turned out long.
pub(crate) fn too_large() -> Problem {
    Problem::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        "the body is larger than the daemon accepts (max_body_bytes): send a smaller body",
    )
    .field("body")
}

#[derive(Clone, Copy)]
struct Limits {
    max_body_bytes: usize,
    request_timeout: Duration,
}

/// Refuses what can be refused from the request head alone (414, 431, 413 from
/// Content-Length) and answers 408 problem+json when a request takes longer than
/// `request_timeout` (a client that sends its body slowly, or not at all).
async fn guard(
    axum::extract::State(l): axum::extract::State<Limits>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let close = |p: Problem| {
        let mut r = p.into_response();
        r.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        r
    };
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            format!("the request target is {target} bytes long: the daemon takes at most {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    let h = req.headers();
    let header_bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if h.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return close(Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!(
                "the request has {} header fields of {header_bytes} bytes: the daemon takes at most {MAX_HEADERS} fields of {MAX_HEADER_BYTES} bytes",
                h.len()
            ),
        ));
    }
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > l.max_body_bytes as u64) {
        return close(too_large());
    }
    match tokio::time::timeout(l.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => close(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request took longer than {} s (request_timeout_s): send the whole request promptly",
                l.request_timeout.as_secs_f64()
            ),
        )),
    }
}

/// A handler panicked: answer 500 problem+json (the panic hook, or the default one in tests,
/// has already logged it once with its location).
fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    Problem::internal().into_response()
}

/// Every route with its handler and its OpenAPI operation (from the handler's
/// `#[utoipa::path]`): the router and the document both come from this one list.
pub(crate) fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::Doc::openapi())
        .routes(routes!(handlers::healthz))
        .routes(routes!(handlers::readyz))
        .routes(routes!(handlers::openapi))
        .routes(routes!(handlers::host))
        .routes(routes!(handlers::nodes))
        .routes(routes!(handlers::list))
        .routes(routes!(
            handlers::put_tenant,
            handlers::get_tenant,
            handlers::patch_tenant,
            handlers::delete_tenant
        ))
        .routes(routes!(handlers::list_procs, handlers::add_proc))
        .routes(routes!(handlers::reconcile))
        .routes(routes!(handlers::explain_placement))
        .routes(routes!(report::sla))
        .routes(routes!(handlers::events))
        .routes(routes!(usage::usage))
        .routes(routes!(usage::metrics))
}

pub fn router(state: AppState) -> Router {
    let tokens = state.tokens.clone();
    let limits = Limits {
        max_body_bytes: state.max_body_bytes,
        request_timeout: state.request_timeout,
    };
    let (routes, _) = routes().split_for_parts();
    routes
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
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(limits, guard))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .with_state(state)
}

/// Connection hygiene for `serve_with`.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A client must send a whole request head within this time, counted from when the
    /// connection starts waiting for one. hyper starts this timer whenever the connection is
    /// in its "read the next head" state, which on a keep-alive connection begins right
    /// after the previous response: so it also bounds the idle wait between requests.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (our own watcher).
    /// With hyper's timer above, an idle connection is closed after the shorter of the two.
    pub idle_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

/// Refused connections being answered at once; beyond this they are closed unanswered.
pub const MAX_REFUSALS_IN_FLIGHT: usize = 32;

/// The answer a connection over `max_connections` gets before it is closed.
fn refusal() -> Vec<u8> {
    let body = serde_json::to_vec(&Problem::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "too-many-connections",
        "the daemon serves as many connections as it takes (max_connections): retry shortly, or close idle connections",
    ))
    .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Serves until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, state, ServeOptions::default(), shutdown).await
}

/// When a connection last finished a request, and how many it has in flight.
/// The open connections by accept order (their id): activity and the token that evicts it.
type OpenMap = std::collections::BTreeMap<u64, (Arc<Activity>, CancellationToken)>;

/// The open connections in the order they were accepted, for eviction at the cap.
#[derive(Default)]
struct OpenConnections {
    /// The last id given out, and the connections.
    inner: std::sync::Mutex<(u64, OpenMap)>,
}

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, OpenMap)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; returns its id and the token that evicts it.
    fn add(&self, a: Arc<Activity>) -> (u64, CancellationToken) {
        let mut g = self.lock();
        g.0 += 1;
        let id = g.0;
        let t = CancellationToken::new();
        g.1.insert(id, (a, t.clone()));
        (id, t)
    }

    /// Evicts the oldest connection with no request in flight; false when all are busy.
    fn evict_oldest_quiet(&self) -> bool {
        let mut g = self.lock();
        let quiet = g.1.iter().find(|(_, (a, t))| {
            !t.is_cancelled() && a.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0
        });
        match quiet.map(|(id, _)| *id) {
            Some(id) => {
                if let Some((_, t)) = g.1.remove(&id) {
                    t.cancel();
                }
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from `OpenConnections` when its task ends.
struct Registered(Arc<OpenConnections>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.lock().1.remove(&self.1);
    }
}

struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<tokio::time::Instant>,
}

/// Marks a request in flight until dropped (the response head is ready, or the request was
/// abandoned).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Busy {
        a.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.last.lock() {
            *l = tokio::time::Instant::now();
        }
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Counts a connection on `/metrics` while it lives.
struct Counted(Arc<crate::metrics::Metrics>);

impl Counted {
    fn new(m: &Arc<crate::metrics::Metrics>) -> Counted {
        m.http_connections.inc();
        Counted(m.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.http_connections.dec();
    }
}

/// The accept loop: HTTP/1.1 only (hyper's version sniffing for HTTP/2 reads the preface
/// with no timeout, which an idle client could hold forever), at most `max_connections` at
/// once, each closed after `header_read_timeout` without a complete request head and after
/// `idle_timeout` without a request. Over the cap a connection is answered `503`
/// problem+json with `Connection: close` (at most `MAX_REFUSALS_IN_FLIGHT` at once; beyond
/// that it is closed unanswered) and counted in `tenantd_http_connections_refused_total`.
/// When accept fails (EMFILE), the loop logs, waits 100 ms and goes on.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let metrics = state.metrics.clone();
    let drain = state.request_timeout + Duration::from_secs(5);
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections));
    let open = Arc::new(OpenConnections::default());
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let tasks = tokio_util::task::TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_header_size(HYPER_MAX_HEAD_BYTES)
        .max_headers(HYPER_MAX_HEADERS)
        .keep_alive(true);
    let mut accept_errors_logged = 0u32;
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept:
                    // retry; log the first few so a flood does not flood the log.
                    if accept_errors_logged < 10 {
                        tracing::warn!("accepting a connection failed: {e} (retrying in 100 ms)");
                        accept_errors_logged += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            // At the cap: close the oldest connection that has no request in flight (idle
            // keep-alive or a head still arriving), so slow or idle clients cannot lock out a
            // probe; refuse only when every connection is busy with a request.
            Err(_) => match open.evict_oldest_quiet() {
                true => {
                    metrics.http_connections_evicted.inc();
                    tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                false => None,
            },
        };
        let Some(slot) = slot else {
            metrics.http_connections_refused.inc();
            if let Ok(p) = refusals.clone().try_acquire_owned() {
                tasks.spawn(async move {
                    let _p = p;
                    refuse(stream).await;
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counted = Counted::new(&metrics);
        let activity = Arc::new(Activity {
            in_flight: 0.into(),
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
        });
        let (conn_id, evicted) = open.add(activity.clone());
        let registered = Registered(open.clone(), conn_id);
        let act = activity.clone();
        let app = app.clone();
        let svc =
            hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
                let busy = Busy::new(&act);
                let app = app.clone();
                async move {
                    use http_body_util::BodyExt;
                    // The request counts as in flight until its body is sent to the end, so
                    // neither eviction nor the idle timer cuts a long answer short.
                    let r = app.oneshot(req).await;
                    r.map(|resp| {
                        resp.map(|body| {
                            axum::body::Body::new(body.map_frame(move |f| {
                                let _in_flight = &busy;
                                f
                            }))
                        })
                    })
                }
            });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        let stop = shutdown.clone();
        let idle = opts.idle_timeout;
        tasks.spawn(async move {
            let _slot = slot;
            let _counted = counted;
            let _registered = registered;
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            loop {
                // While a request is in flight the idle timer waits a whole period again
                // (instead of a deadline already past, which would spin).
                let busy = activity.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0;
                let idle_at = if busy {
                    tokio::time::Instant::now() + idle
                } else {
                    *activity.last.lock().unwrap_or_else(|p| p.into_inner()) + idle
                };
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!("connection closed: {e}");
                        }
                        break;
                    }
                    _ = stop.cancelled(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    // Evicted at the cap: dropping the connection closes the socket. A request
                    // that started meanwhile is finished first (graceful), never cut off.
                    _ = evicted.cancelled(), if !closing => {
                        if activity.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0 {
                            break;
                        }
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = tokio::time::sleep_until(idle_at), if !closing => {
                        let quiet = activity.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0;
                        let last = *activity.last.lock().unwrap_or_else(|p| p.into_inner());
                        if quiet && last + idle <= tokio::time::Instant::now() {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    tasks.close();
    // In-flight requests get their timeout and a little more; a client that stops reading
    // cannot hold the shutdown for ever.
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!(
            "{} connections still open {} s after shutdown began: closing them",
            tasks.len(),
            drain.as_secs()
        );
    }
    Ok(())
}

/// Answers a connection over the cap with 503 and closes it, reading what the client sent
/// meanwhile (for at most a second) so the close does not reset the answer away.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = async {
        stream.write_all(&refusal()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// At the cap, the oldest connection with no request in flight goes first; when every
    /// connection is busy with a request, nothing is evicted (the newcomer gets a 503).
    #[test]
    fn eviction_takes_the_oldest_quiet_connection() {
        let open = OpenConnections::default();
        let conn = || {
            Arc::new(Activity {
                in_flight: 0.into(),
                last: std::sync::Mutex::new(tokio::time::Instant::now()),
            })
        };
        let (a, b, c) = (conn(), conn(), conn());
        let (_, ta) = open.add(a.clone());
        let (_, tb) = open.add(b.clone());
        let (_, tc) = open.add(c.clone());
        let busy_a = Busy::new(&a);
        assert!(open.evict_oldest_quiet());
        assert!(!ta.is_cancelled() && tb.is_cancelled() && !tc.is_cancelled());
        let busy_c = Busy::new(&c);
        assert!(!open.evict_oldest_quiet(), "every one left is busy");
        drop((busy_a, busy_c));
        assert!(open.evict_oldest_quiet());
        assert!(ta.is_cancelled() && !tc.is_cancelled());
    }

    /// The catch-panic layer as `router` installs it: a panic becomes 500 problem+json.
    #[tokio::test]
    async fn a_panicking_handler_is_answered_with_a_problem() {
        let app: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    let s = "é";
                    // The old parsers' bug: a byte index inside a character.
                    s.split_at(1).0.to_string()
                }),
            )
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic));
        let resp = app
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 500);
        assert!(v["detail"].as_str().unwrap().contains("daemon's log"));
    }
}
