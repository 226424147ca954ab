//! Storage (issue 15, target 3): a daemon killed with SIGKILL at a random moment of its sweeps
//! loses at most the promised 10 s of raw samples, and nothing it had already reported: every
//! point `GET /v1/tenants/{name}/usage` answered before the kill, and every SLA verdict behind
//! the SLA report, is in the database afterwards.
//!
//! A v1 daemon as in `v1.rs` (this host is hybrid): it writes kernel state only below
//! directories of the test's own cgroup, and the guard removes them. Panics, never skips, when
//! the v1 hierarchies are missing.

use crate::support::{V1Daemon, eventually};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The points of a usage answer by time: (ts_ms, samples, cpu_cores_mean, memory mean).
fn points(u: &Value) -> Vec<(i64, i64, Option<f64>, Option<f64>)> {
    u["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["ts_ms"].as_i64().unwrap(),
                p["samples"].as_i64().unwrap(),
                p["cpu_cores_mean"].as_f64(),
                p["memory_current_bytes_mean"].as_f64(),
            )
        })
        .collect()
}

#[test]
fn issue15_a_kill9_mid_sweep_loses_at_most_10_s_of_raw_samples_and_nothing_reported() {
    let mut v = V1Daemon::start("issue15-kill9");
    for t in ["a", "b"] {
        v.d().create(t, json!({}));
    }
    let usage = |d: &crate::support::Daemon| {
        let (s, u) = d.call("GET", "/v1/tenants/a/usage?from=2m&step=1s", None);
        assert_eq!(s, 200, "{u}");
        assert_eq!(u["level"], "raw", "{u}");
        u
    };
    eventually(30, "8 sweeps of tenant a", || {
        points(&usage(v.d())).len() >= 8
    });
    // Killed at a random moment of the 1 s sweep cycle (the seed is printed).
    let mut seed = now_ms() as u64;
    eprintln!("seed {seed}");
    let reported = points(&usage(v.d()));
    let (s, sla) = v
        .d()
        .call("GET", "/v1/reports/sla?from=2m&format=json", None);
    assert_eq!(s, 200, "{sla}");
    seed ^= seed << 13;
    seed ^= seed >> 7;
    std::thread::sleep(Duration::from_millis(1000 + seed % 1000));
    let killed_ms = now_ms();
    v.d.kill9();

    let db = v.dirs.db();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rows, verdicts) = rt.block_on(async {
        let store = tenantd::store::Store::open(&db).await.unwrap();
        let rows = store.raw_usage("a", 0, i64::MAX).await.unwrap();
        let verdicts = store.raw_verdicts("a", 0, i64::MAX).await.unwrap();
        store.close().await;
        (rows, verdicts)
    });
    let newest = rows.last().expect("raw rows of a").ts_ms;
    eprintln!(
        "killed at {killed_ms}; newest raw sample {newest} ({} ms before); {} rows, {} verdicts",
        killed_ms - newest,
        rows.len(),
        verdicts.len()
    );
    assert!(
        killed_ms - newest <= 10_000,
        "the newest raw sample is {} ms older than the kill",
        killed_ms - newest
    );
    // Every point reported before the kill is there, with the same values.
    let have: std::collections::BTreeMap<i64, &tenantd::domain::usage_row::UsageRow> =
        rows.iter().map(|r| (r.ts_ms, r)).collect();
    for (ts, n, cores, mem) in &reported {
        let in_second: Vec<_> = have.range(*ts..ts + 1000).map(|(_, r)| *r).collect();
        assert_eq!(in_second.len() as i64, *n, "samples of the point at {ts}");
        if *n == 1 {
            assert_eq!(
                in_second[0].rates.cpu_cores, *cores,
                "cpu of the point at {ts}"
            );
            assert_eq!(
                in_second[0].gauges.memory_current_bytes.map(|m| m as f64),
                *mem,
                "memory of the point at {ts}"
            );
        }
    }
    // The verdicts behind the report: every bucket of its chart still holds one.
    let series: Vec<i64> = sla["tenants"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tenant"] == "a"))
        .and_then(|t| t["series"].as_array())
        .map(|s| s.iter().filter_map(|p| p["ts_ms"].as_i64()).collect())
        .unwrap_or_default();
    assert!(!series.is_empty(), "the report charts tenant a: {sla}");
    for (i, t) in series.iter().enumerate() {
        let end = series.get(i + 1).copied().unwrap_or(killed_ms);
        assert!(
            verdicts.iter().any(|v| (*t..end).contains(&v.ts_ms)),
            "no stored verdict behind the reported bucket at {t}"
        );
    }
}
