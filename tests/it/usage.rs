//! Usage history and metrics against a real cgroup v2 kernel (the VM): a busy loop's CPU
//! seconds grow at one core per second in SQLite, in /usage and in /metrics; an OOM kill
//! becomes an event and a counter. Every test is ignored on a plain host; see
//! `support::NEEDS_V2`. Add `mod usage;` to tests/it/main.rs.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// The value of one series in an OpenMetrics text, by its exact name and labels.
pub(crate) fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.strip_prefix(' '))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn scrape(d: &Daemon) -> String {
    let resp = d
        .http
        .get(d.url("/metrics"))
        .header("accept", "application/openmetrics-text")
        .send()
        .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string());
    assert_eq!(
        ct.as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    resp.text().expect("metrics body")
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn a_busy_loop_shows_one_core_in_sqlite_in_usage_and_in_metrics() {
    let root = TestRoot::new("usage-cpu");
    let d = Daemon::start(&root);
    d.create("busy", json!({}));
    let _loop = d.busy("busy", 1);
    root.wait_procs("busy", 1);
    std::thread::sleep(Duration::from_secs(3));

    let key = "tenantd_tenant_cpu_usage_seconds_total{tenant=\"busy\"}";
    let (t0, m0) = (
        Instant::now(),
        series(&scrape(&d), key).expect("the busy tenant's CPU seconds in /metrics"),
    );
    std::thread::sleep(Duration::from_secs(10));
    let (t1, m1) = (Instant::now(), series(&scrape(&d), key).unwrap());
    // /metrics shows the last sample: up to one interval (1 s) behind at either end.
    let cores = (m1 - m0) / (t1 - t0).as_secs_f64();
    eprintln!("/metrics: {cores:.3} cores");
    assert!(
        (0.8..=1.15).contains(&cores),
        "a busy loop used {cores:.3} cores by /metrics"
    );

    let (s, u) = d.call("GET", "/v1/tenants/busy/usage?from=8s&step=1s", None);
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["level"], "raw");
    let means: Vec<f64> = u["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["cpu_cores_mean"].as_f64())
        .collect();
    assert!(means.len() >= 5, "{u}");
    let median = median(&means);
    eprintln!("/usage: cpu_cores_mean per second {means:?}");
    assert!(
        (0.85..=1.1).contains(&median),
        "median {median} cores by /usage"
    );

    let (rows, avg, _) = recent_raw_usage(&root.db(), "busy", 8000);
    eprintln!("SQLite: {rows} rows, {avg:?} cores");
    assert!(rows >= 6, "one row per second expected, found {rows}");
    assert!(
        (0.85..=1.1).contains(&avg.unwrap()),
        "SQLite says {avg:?} cores"
    );
}

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn an_oom_kill_becomes_an_event_and_a_counter() {
    let root = TestRoot::new("usage-oom");
    let d = Daemon::start(&root);
    let lim = json!({"memory": {"limit_bytes": "48MiB", "swap_limit_bytes": 0}});
    d.create("small", lim);
    std::thread::sleep(Duration::from_secs(2)); // a first sample, so the kill is a delta
    let out = d.oom_hog("small").output().unwrap();
    assert!(!out.status.success(), "the hog must be killed: {out:?}");
    eventually(10, "an oom_kill event for tenant small", || {
        let (_, ev) = d.call("GET", "/v1/events?tenant=small&kind=oom_kill", None);
        ev.as_array().is_some_and(|a| !a.is_empty())
    });
    let (_, ev) = d.call("GET", "/v1/events?tenant=small&kind=oom_kill", None);
    assert!(ev[0]["detail"]["count"].as_u64().unwrap() >= 1, "{ev}");
    let kills = series(
        &scrape(&d),
        "tenantd_tenant_memory_oom_kills_total{tenant=\"small\"}",
    );
    assert!(
        kills.unwrap_or(0.0) >= 1.0,
        "OOM kills in /metrics: {kills:?}"
    );
    let (_, ev) = d.call("GET", "/v1/events?tenant=small&kind=memory_max", None);
    assert!(
        ev.as_array().is_some_and(|a| !a.is_empty()),
        "memory.max hits recorded: {ev}"
    );
}
