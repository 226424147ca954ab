//! The HTTP layer under hostile input (issue 12, findings 3, 4, 6 and 9): every query value,
//! body and header a hostile client tried gets a 4xx problem+json (never a 5xx, never a
//! dropped connection), and idle or half-sent connections cannot starve the daemon. Both
//! through `router(state).oneshot` and over a real socket with `serve_with`.

use crate::support::{Api, oneshot};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use std::time::Duration;
use tenantd::api::auth::Tokens;
use tenantd::api::{ServeOptions, serve_with};
use tenantd::domain::TenantName;
use tenantd::domain::event::Event;
use tenantd::domain::tenant::TenantSpec;
use tenantd::store::NewEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A generous bound for "it answers at all"; never a timing assertion.
const DEADLINE: Duration = Duration::from_secs(60);

/// An API on a fresh store holding tenant `web` (and `n_events` events); the cgroup backend
/// points at a directory that does not exist, so nothing here reaches a kernel.
async fn api(request_timeout: Duration, n_events: usize) -> Api {
    let (dir, store) = Api::store().await;
    let ev = |i: usize| NewEvent {
        ts_ms: 1_000 + i as i64,
        tenant: Some("web".into()),
        actor: None,
        event: match i {
            0 => Event::TenantCreated {
                spec: Box::default(),
            },
            _ => Event::ProcessAttached { pid: i as u32 },
        },
    };
    store
        .put_tenant(
            &TenantName::parse("web").unwrap(),
            &TenantSpec::default(),
            0,
            ev(0),
        )
        .await
        .unwrap();
    let more: Vec<NewEvent> = (1..n_events).map(ev).collect();
    if !more.is_empty() {
        store.add_events(&more).await.unwrap();
    }
    Api::over((dir, store), None, Tokens::open(), 4096, request_timeout)
}

/// One request through `router(state).oneshot`: status, content type, headers, JSON body.
async fn send(
    a: &Api,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String, axum::http::HeaderMap, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Body::from(body.to_string())).unwrap();
    let r = oneshot(&a.state, req).await;
    (
        r.status,
        r.ct,
        r.headers,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

fn assert_problem(what: &str, r: &(StatusCode, String, axum::http::HeaderMap, Value), status: u16) {
    assert_eq!(r.0.as_u16(), status, "{what}: {}", r.3);
    assert_eq!(r.1, "application/problem+json", "{what}");
    assert_eq!(r.3["status"], status, "{what}: {}", r.3);
    let detail = r.3["detail"].as_str().unwrap_or_default();
    assert!(
        !detail.is_empty() && !detail.contains("Some(") && !detail.contains("{ "),
        "{what}: {detail}"
    );
}

/// A raw request over a socket; returns the status, the head and the body the server sent
/// before it closed the connection (the requests ask for `Connection: close`).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String, String) {
    try_raw(addr, request).await.unwrap_or_else(|text| {
        panic!(
            "the connection was dropped without an answer to {:?}: got {text:?}",
            String::from_utf8_lossy(&request[..request.len().min(80)])
        )
    })
}

/// Like `raw`; `Err` with what came back when the connection closed without an answer.
async fn try_raw(
    addr: std::net::SocketAddr,
    request: &[u8],
) -> Result<(u16, String, String), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // A write or read error is a connection closed on us (a reset): no answer.
    s.write_all(request).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer within {DEADLINE:?} to {:?}",
                String::from_utf8_lossy(&request[..request.len().min(80)])
            )
        })
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).to_string();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(text);
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

fn assert_raw_problem(what: &str, r: &(u16, String, String), status: u16) {
    assert_eq!(r.0, status, "{what}: {} {}", r.1, r.2);
    assert!(
        r.1.contains("content-type: application/problem+json"),
        "{what}: {}",
        r.1
    );
    let v: Value = serde_json::from_str(&r.2).unwrap_or_else(|e| panic!("{what}: {e}: {}", r.2));
    assert_eq!(v["status"], status, "{what}");
}

/// Starts `serve_with` on a free loopback port.
async fn start(
    a: &Api,
    opts: ServeOptions,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(serve_with(listener, a.state.clone(), opts, stop.clone()));
    (addr, stop, server)
}

/// Every query parameter of every endpoint, with the values the hostile client sent.
const PARAMS: &[(&str, &str, &[&str])] = &[
    (
        "GET",
        "/v1/events",
        &["tenant", "kind", "since", "limit", "after"],
    ),
    ("GET", "/v1/tenants/web/usage", &["from", "to", "step"]),
    (
        "GET",
        "/v1/reports/sla",
        &["from", "to", "tenant", "format"],
    ),
    ("DELETE", "/v1/tenants/web", &["kill", "move_to"]),
];

/// Non-ASCII (also last, where the old parsers split a character), empty, huge and negative.
const HOSTILE: &[&str] = &[
    "%C3%A9",
    "5m%C3%A9",
    "1%C3%A9",
    "%E2%82%AC",
    "%FF%FE",
    "",
    "%00",
    "99999999999999999999",
    "99999999999999999999d",
    "9223372036854775808",
    "-9223372036854775808",
    "-1",
    "-5m",
    "%20",
];

#[tokio::test]
async fn finding_3_handlers_panic_on_input() {
    let a = api(Duration::from_secs(30), 1).await;
    let long = "9".repeat(5000);
    for (method, path, params) in PARAMS {
        for p in *params {
            for v in HOSTILE.iter().copied().chain([long.as_str()]) {
                let uri = format!("{path}?{p}={v}");
                let r = send(&a, method, &uri, &[], "").await;
                assert!(!r.0.is_server_error(), "{method} {uri}: {} {}", r.0, r.3);
                // A digit string is a valid tenant name and event kind (a tenant that does
                // not exist, or an empty answer): only the rest must be refused.
                let name_like = !v.is_empty()
                    && v.len() <= 63
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if name_like && matches!(*p, "tenant" | "move_to" | "kind") {
                    continue;
                }
                assert_problem(&format!("{method} {uri}"), &r, 422);
                assert_eq!(r.3["field"], *p, "{method} {uri}: {}", r.3);
            }
            // Given twice: refused, naming the parameter.
            let r = send(&a, method, &format!("{path}?{p}=1&{p}=2"), &[], "").await;
            assert_problem(&format!("{method} {path} {p} twice"), &r, 422);
            assert_eq!(r.3["field"], *p);
        }
        let r = send(&a, method, &format!("{path}?bogus%C3%A9=1"), &[], "").await;
        assert_problem(&format!("{method} {path} unknown"), &r, 422);
        assert_eq!(r.3["field"], "bogusé");
    }
    // The values of the report: overflow is refused, not answered with from after to.
    let r = send(
        &a,
        "GET",
        "/v1/tenants/web/usage?from=-9223372036854775808",
        &[],
        "",
    )
    .await;
    assert_problem("usage from i64::MIN", &r, 422);
    assert!(
        r.3["detail"].as_str().unwrap().contains("before 1970"),
        "{}",
        r.3
    );
    let r = send(&a, "GET", "/v1/events?since=253402300800000", &[], "").await;
    assert!(r.3["detail"].as_str().unwrap().contains("9999"), "{}", r.3);
    // Good values still work.
    let r = send(&a, "GET", "/v1/tenants/web/usage?from=15m&step=1m", &[], "").await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.3);
    let r = send(
        &a,
        "GET",
        "/v1/events?since=0&tenant=web&kind=tenant_created",
        &[],
        "",
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.3);
    assert_eq!(r.3.as_array().map(Vec::len), Some(1));

    // Over a real socket: an answer, never a dropped connection.
    let (addr, stop, server) = start(&a, ServeOptions::default()).await;
    for target in [
        "/v1/events?since=%C3%A9",
        "/v1/reports/sla?from=%C3%A9",
        "/v1/tenants/web/usage?step=%C3%A9",
        "/v1/tenants/web/usage?from=-9223372036854775808",
        "/v1/events?limit=99999999999999999999999999",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        assert_raw_problem(target, &raw(addr, req.as_bytes()).await, 422);
    }
    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn events_page_with_a_next_cursor() {
    let a = api(Duration::from_secs(30), 250).await;
    let mut seen = Vec::new();
    let mut uri = "/v1/events?tenant=web".to_string();
    loop {
        let r = send(&a, "GET", &uri, &[], "").await;
        assert_eq!(r.0, StatusCode::OK, "{uri}: {}", r.3);
        let page = r.3.as_array().unwrap();
        assert!(page.len() <= 100, "{uri}: {}", page.len());
        seen.extend(page.iter().map(|e| e["id"].as_i64().unwrap()));
        match r.2.get("link") {
            Some(link) => {
                let link = link.to_str().unwrap();
                let cursor = r.2["next-cursor"].to_str().unwrap();
                assert_eq!(
                    link,
                    format!("</v1/events?tenant=web&after={cursor}>; rel=\"next\"")
                );
                uri = format!("/v1/events?tenant=web&after={cursor}");
            }
            None => break,
        }
    }
    // Every event once, newest first.
    assert_eq!(seen.len(), 250);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
    let r = send(&a, "GET", "/v1/events?limit=1000", &[], "").await;
    assert_eq!(r.3.as_array().unwrap().len(), 250);
    assert!(r.2.get("link").is_none());
    let r = send(&a, "GET", "/v1/events?limit=1001", &[], "").await;
    assert_problem("limit over the cap", &r, 422);
    assert_eq!(r.3["field"], "limit");
}

#[tokio::test]
async fn finding_6_json_arrays_accepted_where_objects_expected() {
    let a = api(Duration::from_secs(30), 1).await;
    for (method, uri, body, field) in [
        ("PUT", "/v1/tenants/x", "[]", "body"),
        ("PUT", "/v1/tenants/x", r#"{"cpu": []}"#, "cpu"),
        ("PUT", "/v1/tenants/x", r#"{"cpu": [50, null]}"#, "cpu"),
        (
            "PUT",
            "/v1/tenants/x",
            r#"{"memory": {}, "pids": []}"#,
            "pids",
        ),
        ("POST", "/v1/tenants/x/procs", "[1]", "body"),
        ("PATCH", "/v1/tenants/web", "[]", "body"),
        ("PATCH", "/v1/tenants/web", r#"{"cpu": []}"#, "cpu"),
    ] {
        let r = send(&a, method, uri, JSON, body).await;
        assert_problem(&format!("{method} {uri} {body}"), &r, 422);
        assert_eq!(r.3["field"], field, "{method} {uri} {body}: {}", r.3);
    }
    // Nothing was created.
    let r = send(&a, "GET", "/v1/tenants/x", &[], "").await;
    assert_eq!(r.0, StatusCode::NOT_FOUND, "{}", r.3);
    // Trailing bytes after the document.
    for body in [
        r#"{"pid": 1} xyz"#,
        r#"{"pid": 1}{"pid": 2}"#,
        r#"{"pid": 1} ]"#,
    ] {
        let r = send(&a, "POST", "/v1/tenants/x/procs", JSON, body).await;
        assert_problem(body, &r, 400);
        assert!(
            r.3["detail"].as_str().unwrap().contains("trailing"),
            "{}",
            r.3
        );
    }
    // Whitespace after the document is fine: the request gets past the body to the tenant.
    let r = send(&a, "POST", "/v1/tenants/x/procs", JSON, "{\"pid\": 1}\n  ").await;
    assert_problem("trailing whitespace", &r, 404);
}

#[tokio::test]
async fn finding_9_content_length_and_content_types() {
    let a = api(Duration::from_secs(2), 1).await;
    // Media types: JSON in UTF-8 only; merge-patch only for PATCH.
    for ct in [
        "application/evil+json",
        "application/json; charset=utf-16",
        "application/json; charset=latin1",
        "application/json; boundary=x",
        "text/json",
        "application/merge-patch+json",
        "",
    ] {
        let r = send(&a, "PUT", "/v1/tenants/x", &[("content-type", ct)], "{}").await;
        assert_problem(ct, &r, 415);
    }
    let r = send(&a, "PUT", "/v1/tenants/x", &[], "{}").await;
    assert_problem("no content type", &r, 415);
    for ct in [
        "APPLICATION/JSON; Charset=\"UTF-8\"",
        "application/json;charset=utf-8",
    ] {
        // Accepted: the request gets past the media type to the body (an unknown field).
        let r = send(
            &a,
            "PUT",
            "/v1/tenants/x",
            &[("content-type", ct)],
            r#"{"x": 1}"#,
        )
        .await;
        assert_problem(ct, &r, 422);
    }
    let mp = [("content-type", "application/merge-patch+json")];
    let r = send(&a, "PATCH", "/v1/tenants/web", &mp, r#"{"cpu": {"x": 1}}"#).await;
    assert_problem("merge patch", &r, 422);
    assert_eq!(r.3["field"], "cpu.x", "{}", r.3);
    // Content-Length over max_body_bytes: 413 from the header alone.
    let big = [
        ("content-type", "application/json"),
        ("content-length", "999999999"),
    ];
    let r = send(&a, "PUT", "/v1/tenants/x", &big, "{}").await;
    assert_problem("content-length", &r, 413);
    let r = send(
        &a,
        "PUT",
        "/v1/tenants/x",
        JSON,
        &format!("{{\"labels\": {{\"a\": \"{}\"}}}}", "x".repeat(5000)),
    )
    .await;
    assert_problem("a long body", &r, 413);

    // Over a real socket.
    let (addr, stop, server) = start(&a, ServeOptions::default()).await;
    // The head says 999999999 bytes and none follow: 413 at once, not 408 after the timeout
    // (the request timeout is 2 s, so an answer that waited for the body would be a 408).
    let r = raw(
        addr,
        b"PUT /v1/tenants/x HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 999999999\r\n\r\n",
    )
    .await;
    assert_raw_problem("content-length 999999999", &r, 413);
    assert!(r.1.contains("connection: close"), "{}", r.1);
    // A body that stops half way: 408 problem+json after request_timeout_s.
    let r = raw(
        addr,
        b"PUT /v1/tenants/x HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"cp",
    )
    .await;
    assert_raw_problem("half a body", &r, 408);
    let r = raw(
        addr,
        b"PUT /v1/tenants/x HTTP/1.1\r\nhost: x\r\ncontent-type: application/evil+json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    )
    .await;
    assert_raw_problem("evil+json", &r, 415);
    // A long URI (over our 8 KiB, within hyper's 64 KiB head): 414 problem+json.
    let req = format!(
        "GET /v1/events?tenant={} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_raw_problem("long uri", &raw(addr, req.as_bytes()).await, 414);
    // Many header fields (over our 64, within hyper's 128): 431 problem+json.
    let many: String = (0..80).map(|i| format!("x-h{i}: v\r\n")).collect();
    let req = format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}connection: close\r\n\r\n");
    assert_raw_problem("many headers", &raw(addr, req.as_bytes()).await, 431);
    // Large headers (over our 16 KiB, within hyper's 64 KiB): 431 problem+json.
    let req = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "b".repeat(20_000)
    );
    assert_raw_problem("large header", &raw(addr, req.as_bytes()).await, 431);
    // Beyond hyper's limits hyper answers before our code runs: a bare 431 with an empty
    // body (hyper has no hook for its body), then it closes. A URI over 64 KiB is the same
    // (hyper's own 414 needs a URI over 65534 bytes, which does not fit its 64 KiB buffer).
    for (what, req) in [
        (
            "a 70 KiB header",
            format!(
                "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "b".repeat(70_000)
            ),
        ),
        (
            "a 70 KiB uri",
            format!(
                "GET /v1/events?tenant={} HTTP/1.1\r\nhost: x\r\n\r\n",
                "a".repeat(70_000)
            ),
        ),
        (
            "200 header fields",
            format!(
                "GET /healthz HTTP/1.1\r\nhost: x\r\n{}\r\n",
                (0..200)
                    .map(|i| format!("x-h{i}: v\r\n"))
                    .collect::<String>()
            ),
        ),
    ] {
        let r = raw(addr, req.as_bytes()).await;
        assert_eq!(r.0, 431, "{what}: {}", r.1);
        assert_eq!(r.2, "", "{what}");
    }
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// Finding 4: 1,100 idle unauthenticated connections made /healthz time out for 45 s and the
/// sampler fail with EMFILE. Now the cap holds, and at the cap the oldest connection with no
/// request in flight is closed to make room: with timeouts far beyond the test, 600 idle and
/// 100 half-sent connections cannot keep /healthz from answering at its first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_no_connection_limits() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // 700 client sockets and up to 64 + 32 server ones live in this one process.
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        soft >= 1024,
        "this test needs 1024 open files (soft limit {soft}): raise ulimit -n"
    );
    let a = api(Duration::from_secs(5), 1).await;
    let long = DEADLINE * 10;
    let opts = ServeOptions {
        header_read_timeout: long,
        idle_timeout: long,
        max_connections: 64,
    };
    let (addr, stop, server) = start(&a, opts).await;
    // 600 idle connections and 100 that send half a request head.
    let mut held = Vec::new();
    for i in 0..700 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i >= 600 {
            // The daemon may already have evicted it: a failed write is fine.
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await;
        }
        held.push(s);
    }
    // /healthz answers at once: it takes the place of the oldest quiet connection.
    let r = tokio::time::timeout(
        DEADLINE,
        try_raw(
            addr,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("/healthz answered within the deadline")
    .expect("/healthz was answered, not closed");
    assert_eq!((r.0, r.2.as_str()), (200, "ok\n"));
    // The oldest connections were closed by the daemon (EOF or a reset), the youngest 63 or 64
    // are still open: nothing was refused, since none was busy with a request.
    let mut closed = 0;
    for s in held.iter_mut().take(600) {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(n)) => panic!("an idle connection got {n} bytes"),
            Err(_) => {}
        }
    }
    assert!(
        closed >= 600 - 64,
        "only {closed} of the oldest 600 were closed"
    );
    let r = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.0, 200);
    let value = |name: &str| -> f64 {
        r.2.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {}", r.2))
    };
    assert!(
        value("tenantd_http_connections_evicted_total") >= 700.0 - 64.0,
        "{}",
        value("tenantd_http_connections_evicted_total")
    );
    assert_eq!(value("tenantd_http_connections_refused_total"), 0.0);
    // 64 at the cap, or 63 when the /healthz connection was still being closed as /metrics
    // came in (then /metrics evicted one more quiet connection, and /healthz's close was
    // counted before the gauge was read).
    let open = value("tenantd_http_connections");
    assert!((63.0..=64.0).contains(&open), "the cap holds: {open} open");
    drop(held);
    stop.cancel();
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("serve_with stops on cancel")
        .unwrap()
        .unwrap();
}

/// A keep-alive connection that finished a request, then stays quiet: closed by the daemon.
/// Which timer closes it is the point: each case sets the other one far beyond `DEADLINE`.
#[tokio::test]
async fn keep_alive_connections_are_closed_by_either_timeout() {
    let a = api(Duration::from_secs(5), 1).await;
    let long = DEADLINE * 10;
    for (what, opts) in [
        (
            // hyper's header-read timer also runs while a kept-alive connection waits for its
            // next request head (hyper 1.x proto/h1/conn.rs `poll_read_head` starts it
            // whenever the connection is ready for a head).
            "header_read_timeout",
            ServeOptions {
                header_read_timeout: Duration::from_secs(1),
                idle_timeout: long,
                max_connections: 8,
            },
        ),
        (
            "idle_timeout",
            ServeOptions {
                header_read_timeout: long,
                idle_timeout: Duration::from_secs(1),
                max_connections: 8,
            },
        ),
    ] {
        let (addr, stop, server) = start(&a, opts).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let closed = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
        assert!(
            closed.is_ok(),
            "{what}: the connection was still open after {DEADLINE:?}"
        );
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{what}: {text}");
        assert!(text.ends_with("ok\n"), "{what}: {text}");
        // An idle connection that never sent anything is closed the same way.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        let closed = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
        assert!(
            closed.is_ok(),
            "{what}: a silent connection was still open after {DEADLINE:?}"
        );
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
