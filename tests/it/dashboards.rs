//! The Grafana dashboards and Prometheus rules in `dashboards/` (issue 6).
//!
//! On any host: every dashboard is well-formed (unique panel ids, the `${datasource}` variable,
//! a query and a unit on every panel), and every `tenantd_…` name in a dashboard query or in
//! the rules file is a sample name of `tenantd::metrics::METRICS`, so a rename cannot silently
//! break a panel; promtool accepts the rules.
//!
//! In the VM (cgroup v2): tenantd governs tenants running real workloads, a real Prometheus
//! scrapes it every second, and every panel's query, with the dashboard variables filled in,
//! must run without error and return at least one series; the rules load and evaluate.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rules_file() -> PathBuf {
    repo().join("dashboards/prometheus/tenantd-rules.yaml")
}

/// Every dashboard in dashboards/, parsed.
fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("dashboards");
    let mut out = vec![];
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", p.display()));
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 3,
        "expected the overview, tenant and SLA dashboards in {}",
        dir.display()
    );
    out
}

/// Every panel, rows' nested panels included (rows themselves included too).
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(ps: &'a Value, out: &mut Vec<&'a Value>) {
        for p in ps.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = vec![];
    walk(&d["panels"], &mut out);
    out
}

/// (panel title, refId, expr) of every query of every panel.
fn queries(d: &Value) -> Vec<(String, String, String)> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| {
                    t["expr"].as_str().map(|e| {
                        (
                            title.clone(),
                            t["refId"].as_str().unwrap_or("").to_string(),
                            e.to_string(),
                        )
                    })
                })
        })
        .collect()
}

/// The queries of the dashboard's query variables (`label_values(...)`).
fn variable_queries(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = match &v["query"] {
                Value::String(s) => s.clone(),
                o => o["query"].as_str().unwrap_or("").to_string(),
            };
            (v["name"].as_str().unwrap_or("").to_string(), q)
        })
        .collect()
}

/// Every identifier starting with `tenantd_` (PromQL identifiers: letters, digits, `_`, `:`).
/// A recording rule's name such as `instance_tenant:tenantd_x:rate5m` is one identifier that
/// does not start with `tenantd_`, so it is not taken for a metric of ours.
fn tenantd_names(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.split(|c: char| !is_ident(c))
        .filter(|w| w.starts_with("tenantd_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_dashboard_is_well_formed() {
    for (file, d) in dashboards() {
        let schema = d["schemaVersion"].as_u64().unwrap_or(0);
        assert!(
            schema >= 39,
            "{file}: schemaVersion {schema}, want 39 or later"
        );
        assert!(
            d["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{file}: no uid"
        );
        let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no templating.list"))
            .iter()
            .map(|v| (v["name"].as_str().unwrap_or(""), v))
            .collect();
        let ds = vars
            .get("datasource")
            .unwrap_or_else(|| panic!("{file}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{file}");
        assert_eq!(ds["query"], "prometheus", "{file}");
        let inst = vars
            .get("instance")
            .unwrap_or_else(|| panic!("{file}: no instance (host) variable"));
        assert_eq!(
            inst["multi"], true,
            "{file}: the host selector must be multi-value"
        );
        assert!(vars.contains_key("tenant"), "{file}: no tenant variable");
        for (name, v) in &vars {
            if v["type"] == "query" {
                assert_eq!(
                    v["datasource"]["uid"], "${datasource}",
                    "{file}: variable {name} must query the ${{datasource}} variable"
                );
            }
        }

        let mut ids = BTreeSet::new();
        let mut checked = 0;
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("?");
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: panel '{title}' has no id"));
            assert!(
                ids.insert(id),
                "{file}: panel id {id} ('{title}') used twice"
            );
            if p["type"] == "row" {
                continue; // a row is a heading: no query, no unit
            }
            checked += 1;
            let ok_ds = |v: &Value| {
                v == "${datasource}" || (v["type"] == "prometheus" && v["uid"] == "${datasource}")
            };
            assert!(
                ok_ds(&p["datasource"]),
                "{file}: panel '{title}' has datasource {}, want ${{datasource}}",
                p["datasource"]
            );
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(
                targets
                    .iter()
                    .any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
                "{file}: panel '{title}' has no query"
            );
            for t in &targets {
                assert!(
                    t["datasource"].is_null() || ok_ds(&t["datasource"]),
                    "{file}: a query of panel '{title}' names datasource {}",
                    t["datasource"]
                );
            }
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
            assert!(!unit.is_empty(), "{file}: panel '{title}' has no unit");
            assert!(
                p["description"].as_str().is_some_and(|s| s.len() > 20),
                "{file}: panel '{title}' does not say what it shows"
            );
        }
        assert!(checked > 0, "{file}: no panels");
        eprintln!(
            "{file}: {checked} panels, ids unique, datasource, query, unit and description on each"
        );
    }
}

#[test]
fn dashboards_and_rules_use_only_exported_metric_names() {
    let exported: BTreeSet<String> = tenantd::metrics::exposed_names().into_iter().collect();
    let mut unknown = vec![];
    let mut used = BTreeSet::new();
    for (file, d) in dashboards() {
        let exprs = queries(&d)
            .into_iter()
            .map(|(title, r, e)| (format!("panel '{title}' query {r}"), e))
            .chain(
                variable_queries(&d)
                    .into_iter()
                    .map(|(n, q)| (format!("variable {n}"), q)),
            );
        for (what, e) in exprs {
            for n in tenantd_names(&e) {
                if !exported.contains(&n) {
                    unknown.push(format!("{file}: {what}: {n}"));
                }
                used.insert(n);
            }
        }
    }
    // The whole rules file: exprs, and annotations too, must only name real metrics.
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    for n in tenantd_names(&rules) {
        if !exported.contains(&n) {
            unknown.push(format!("tenantd-rules.yaml: {n}"));
        }
        used.insert(n);
    }
    assert!(
        unknown.is_empty(),
        "names not exported by tenantd (not a sample name of tenantd::metrics::METRICS):\n  {}",
        unknown.join("\n  ")
    );
    assert!(
        used.len() > 20,
        "only {} metric names found: is the extraction broken?",
        used.len()
    );
}

#[test]
fn the_name_check_catches_a_renamed_metric() {
    let names = tenantd_names(
        "sum by (instance) (rate(tenantd_tenant_cpu_usage_secs_total{tenant=~\"$tenant\"}[$__rate_interval])) \
         / on (x) instance_tenant:tenantd_tenant_cpu_usage_seconds:rate5m",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["tenantd_tenant_cpu_usage_secs_total"]
    );
    let exported = tenantd::metrics::exposed_names();
    assert!(!exported.contains(&"tenantd_tenant_cpu_usage_secs_total".to_string()));
    assert!(exported.contains(&"tenantd_tenant_cpu_usage_seconds_total".to_string()));
    assert!(exported.contains(&"tenantd_sweep_duration_seconds_bucket".to_string()));
}

/// promtool is the reference: Debian's prometheus package (CI unpacks it, see .ci/run).
#[test]
fn promtool_accepts_the_rules() {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(rules_file())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is required for this test (apt-get install prometheus, or set PROMTOOL): {e}")
        });
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- live: the VM

/// A Prometheus server of the test's own: its config, data dir and log under `dir`.
struct Prometheus {
    _proc: Owned,
    base: String,
    http: reqwest::blocking::Client,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let bin = std::env::var("TENANTD_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tenantd\n    static_configs:\n      - targets: ['{target}']\n",
                rules_file().display()
            ),
        )
        .unwrap();
        let data = dir.join("prometheus-data");
        let log = dir.join("prometheus.log");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin}: {e} (install Debian's prometheus package, or set TENANTD_PROMETHEUS)")
            });
        Prometheus {
            _proc: Owned(child),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), params)
            .map_err(|e| e.to_string())?;
        let resp = self.http.get(url).send().map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().map_err(|e| e.to_string())?;
        if status.is_success() && body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{status}: {} {}", body["errorType"], body["error"]))
        }
    }

    /// An instant query; the number of series (or 1 for a scalar) or Prometheus's error.
    fn query(&self, q: &str) -> Result<usize, String> {
        let data = self.get("/api/v1/query", &[("query", q)])?;
        Ok(match data["resultType"].as_str() {
            Some("vector" | "matrix") => data["result"].as_array().map_or(0, Vec::len),
            _ => 1,
        })
    }

    fn scalar(&self, q: &str) -> Option<f64> {
        let data = self.get("/api/v1/query", &[("query", q)]).ok()?;
        data["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

/// Polls `f` every 200 ms until it is true (true) or `secs` have passed (false).
fn within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Fills in Grafana's variables the way Grafana would for one host and one tenant.
fn substitute(expr: &str, instance: &str, tenant: &str) -> String {
    // Longest names first: $__range_s must not become <range>_s.
    let vars: [(&str, &str); 9] = [
        ("__rate_interval", "30s"),
        ("__interval_ms", "1000"),
        ("__interval", "1s"),
        ("__range_ms", "60000"),
        ("__range_s", "60"),
        ("__range", "1m"),
        ("datasource", "prometheus"),
        ("instance", instance),
        ("tenant", tenant),
    ];
    let mut s = expr.to_string();
    for (name, value) in vars {
        s = s.replace(&format!("${{{name}}}"), value);
        s = s.replace(&format!("[[{name}]]"), value);
        s = s.replace(&format!("${name}"), value);
    }
    assert!(
        !s.contains('$'),
        "a variable the test does not know is left in: {s}"
    );
    s
}

/// Panels allowed to return no series in the VM, each with the reason. Empty: every panel of
/// every dashboard must show data.
const MAY_BE_EMPTY: &[(&str, &str, &str)] = &[];

#[test]
#[ignore = "needs a cgroup v2 kernel: run through tests/vm/run.sh (see README)"]
fn every_panel_query_returns_series_from_a_real_prometheus() {
    let t0 = Instant::now();
    let root = TestRoot::new("dash");
    // iocost on the scratch disk, so the device-time panel has a series (off again after).
    let _iocost = IoCost::enable(&root);
    let d = Daemon::start(&root);
    let (_, disk) = scratch_disk();

    // "a" has every kind of setting, so every per-tenant panel has a series for it.
    let tenants = [
        (
            "a",
            json!({"cpu": {"guarantee_pct": 50, "limit_pct": 150},
                   "memory": {"guarantee_bytes": "32MiB", "high_bytes": "200MiB", "limit_bytes": "256MiB"},
                   "io": {"guarantee_pct": 40}, "pids": {"limit": 100}}),
        ),
        ("b", json!({"cpu": {"guarantee_pct": 30}})),
        ("c", json!({"cpu": {"guarantee_pct": 10, "limit_pct": 30}})),
        (
            "small",
            json!({"memory": {"limit_bytes": "48MiB", "swap_limit_bytes": 0}}),
        ),
    ];
    for (t, spec) in &tenants {
        let (s, body) = d.call("PUT", &format!("/v1/tenants/{t}"), Some(spec.clone()));
        assert_eq!(s, 201, "PUT {t}: {body}");
    }
    // Prometheus starts now: its start-up (slow under emulation) overlaps the OOM kill.
    let target = d.addr.strip_prefix("http://").unwrap().to_string();
    let prom = Prometheus::start(root.dir.path(), &target);
    let run = |t: &str, script: &str| {
        Owned(
            d.cli()
                .args(["run", "--tenant", t, "--", "sh", "-c", script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // An OOM kill in "small", before the busy loops: the VM is slow enough without them.
    let out = d.oom_hog("small").output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the hog must be OOM-killed: {out:?}"
    );
    eprintln!("[{:?}] tenants created, OOM kill done", t0.elapsed());
    // More CPU wanted (2 + 1 + 1 loops) than the VM's 2 CPUs: contention, throttling for c.
    let busy = "while :; do :; done";
    let _work = [
        run("a", busy),
        run("a", busy),
        run("b", busy),
        run("c", busy),
        // Reads with O_DIRECT from the scratch disk: io.stat gets a line for it (reads only,
        // so the test is safe on a real host's disk too).
        run(
            "a",
            &format!(
                "while :; do dd if={disk} of=/dev/null bs=64k count=32 iflag=direct 2>/dev/null; sleep 0.5; done"
            ),
        ),
        run(
            "a",
            "exec python3 -c \"import time; b = b'x' * (64 << 20); time.sleep(600)\"",
        ),
    ];
    let ready = Instant::now();
    if !within(60, || {
        prom.http
            .get(format!("{}/-/ready", prom.base))
            .send()
            .is_ok_and(|r| r.status().is_success())
    }) {
        panic!(
            "Prometheus did not become ready in 60 s; its log:\n{}",
            prom.log()
        );
    }
    eprintln!(
        "[{:?}] prometheus ready after {:?}",
        t0.elapsed(),
        ready.elapsed()
    );
    // rate() over [30s] needs 2 samples; wait for 6 scrapes of the busy tenant, with the
    // OOM kill in, so that counters have moved between samples.
    let scraped = Instant::now();
    let enough = format!(
        "count_over_time(tenantd_tenant_cpu_usage_seconds_total{{tenant=\"a\", instance=\"{target}\"}}[30s])"
    );
    let mut last = None;
    if !within(60, || {
        last = prom.scalar(&enough);
        last.is_some_and(|n| n >= 6.0)
    }) {
        let targets = prom.get("/api/v1/targets", &[]).unwrap_or_default();
        panic!(
            "Prometheus did not scrape tenantd 6 times in 60 s (last count {last:?}); targets: {targets}\nits log:\n{}",
            prom.log()
        );
    }
    eprintln!(
        "[{:?}] 6 scrapes after {:?}",
        t0.elapsed(),
        scraped.elapsed()
    );

    // The variables first: each must list our host and our tenant.
    let mut failures = vec![];
    let mut report = vec![];
    for (file, dash) in dashboards() {
        for (name, q) in variable_queries(&dash) {
            let q = substitute(&q, &target, "a");
            let Some(inner) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
            else {
                failures.push(format!(
                    "{file}: variable {name}: not label_values(...): {q}"
                ));
                continue;
            };
            let (selector, label) = inner.rsplit_once(',').unwrap();
            let (selector, label) = (selector.trim(), label.trim());
            match prom.get("/api/v1/series", &[("match[]", selector)]) {
                Err(e) => failures.push(format!("{file}: variable {name}: {q}: {e}")),
                Ok(series) => {
                    let values: BTreeSet<&str> = series
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s[label].as_str())
                        .collect();
                    let want = if label == "instance" {
                        target.as_str()
                    } else {
                        "a"
                    };
                    if !values.contains(want) {
                        failures.push(format!(
                            "{file}: variable {name}: {q} lists {values:?}, not {want}"
                        ));
                    }
                }
            }
        }
        // Then every query of every panel, as Grafana would send it.
        for (title, refid, expr) in queries(&dash) {
            let q = substitute(&expr, &target, "a");
            let allowed = MAY_BE_EMPTY
                .iter()
                .find(|(f, t, _)| *f == file && *t == title);
            // A scrape that fails under the VM's load marks every series stale until the next
            // one: an instant query then finds nothing. Retry for a few scrapes; a panel
            // with no data at all still fails.
            let mut result = prom.query(&q);
            let mut tries = 1;
            while matches!(result, Ok(0)) && allowed.is_none() && tries < 20 {
                std::thread::sleep(Duration::from_millis(500));
                result = prom.query(&q);
                tries += 1;
            }
            match result {
                Err(e) => failures.push(format!("{file}: '{title}' {refid}: {e}\n    {q}")),
                Ok(0) if allowed.is_none() => {
                    failures.push(format!("{file}: '{title}' {refid}: no series\n    {q}"))
                }
                Ok(n) => report.push(format!(
                    "{file}: '{title}' {refid}: {n} series{}",
                    if tries > 1 {
                        format!(" (after {tries} tries)")
                    } else {
                        String::new()
                    }
                )),
            }
        }
    }
    for line in &report {
        eprintln!("{line}");
    }
    eprintln!(
        "[{:?}] queries done; scrapes in the last minute: {:?} attempted, {:?} succeeded, slowest {:?} s",
        t0.elapsed(),
        prom.scalar("count_over_time(up[1m])"),
        prom.scalar("sum_over_time(up[1m])"),
        prom.scalar("max_over_time(scrape_duration_seconds[1m])"),
    );

    // The rules: loaded, evaluated at least once, none failing.
    let mut rules_seen = 0;
    eventually(30, "every rule evaluated at least once", || {
        let Ok(data) = prom.get("/api/v1/rules", &[]) else {
            return false;
        };
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules_seen = rules.len();
        !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")
    });
    let data = prom.get("/api/v1/rules", &[]).unwrap();
    for g in data["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            if r["health"] != "ok" {
                failures.push(format!(
                    "rule {}: {} {}",
                    r["name"], r["health"], r["lastError"]
                ));
            }
        }
    }
    eprintln!(
        "{} panel queries with data, {rules_seen} rules healthy, test took {:?}",
        report.len(),
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} dashboard queries or rules failed against a real Prometheus:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
