//! Tables for people: every number with its unit.

use crate::domain::units::format_bytes;
use serde_json::Value;

/// Renders rows as an aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|s| s.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n") + "\n"
}

pub fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|p| format!("{p}%"))
        .unwrap_or_else(|| "-".into())
}

pub fn bytes(v: &Value) -> String {
    v.as_u64().map(format_bytes).unwrap_or_else(|| "-".into())
}

pub fn limit_bytes(v: &Value) -> String {
    match v {
        Value::String(s) if s == "max" => "max".into(),
        _ => bytes(v),
    }
}

pub fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One line per tenant for `tenant list`.
pub fn tenants(list: &[Value]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            let s = &t["spec"];
            let eff = &t["effective"];
            vec![
                num(&t["name"]),
                s["parent"].as_str().unwrap_or("-").to_string(),
                pct(&s["cpu"]["guarantee_pct"]),
                pct(&s["cpu"]["limit_pct"]),
                num(&eff["cpu_weight"]),
                bytes(&s["memory"]["guarantee_bytes"]),
                bytes(&s["memory"]["limit_bytes"]),
                num(&s["pids"]["limit"]),
                num(&t["procs"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "PARENT",
            "CPU GUARANTEE",
            "CPU LIMIT",
            "CPU.WEIGHT",
            "MEM GUARANTEE",
            "MEM LIMIT",
            "PIDS LIMIT",
            "PROCS",
        ],
        &rows,
    )
}

/// A tenant in detail for `tenant get`.
pub fn tenant(t: &Value) -> String {
    let s = &t["spec"];
    let e = &t["effective"];
    let mut out = String::new();
    out += &format!("name:        {}\n", num(&t["name"]));
    out += &format!("parent:      {}\n", s["parent"].as_str().unwrap_or("-"));
    out += &format!("cgroup:      {}\n", num(&t["cgroup"]));
    out += &format!("processes:   {}\n", num(&t["procs"]));
    out += &format!("generation:  {}\n", num(&t["generation"]));
    if let Some(err) = t["effective_error"].as_str() {
        out += &format!("kernel:      cannot read: {err}\n");
    }
    let rows = vec![
        vec![
            "cpu guarantee".into(),
            pct(&s["cpu"]["guarantee_pct"]),
            format!("cpu.weight {}", num(&e["cpu_weight"])),
        ],
        vec![
            "cpu limit".into(),
            pct(&s["cpu"]["limit_pct"]),
            format!(
                "cpu.max {} {} (us)",
                num(&e["cpu_max_quota_us"]),
                num(&e["cpu_max_period_us"])
            ),
        ],
        vec![
            "memory guarantee".into(),
            bytes(&s["memory"]["guarantee_bytes"]),
            format!(
                "memory.min {} / memory.low {}",
                bytes(&e["memory_min_bytes"]),
                bytes(&e["memory_low_bytes"])
            ),
        ],
        vec![
            "memory high".into(),
            bytes(&s["memory"]["high_bytes"]),
            format!("memory.high {}", limit_bytes(&e["memory_high_bytes"])),
        ],
        vec![
            "memory limit".into(),
            bytes(&s["memory"]["limit_bytes"]),
            format!("memory.max {}", limit_bytes(&e["memory_max_bytes"])),
        ],
        vec![
            "swap limit".into(),
            bytes(&s["memory"]["swap_limit_bytes"]),
            format!(
                "memory.swap.max {}",
                limit_bytes(&e["memory_swap_max_bytes"])
            ),
        ],
        vec![
            "io guarantee".into(),
            pct(&s["io"]["guarantee_pct"]),
            format!("io.weight {}", num(&e["io_weight"])),
        ],
        vec![
            "pids limit".into(),
            num(&s["pids"]["limit"]),
            format!("pids.max {}", num(&e["pids_max"])),
        ],
    ];
    out += "\n";
    out += &table(&["SLA", "SPEC", "KERNEL NOW"], &rows);
    for n in t["not_applied"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        out += &format!(
            "not applied on this host: {}: {}\n",
            num(&n["setting"]),
            num(&n["why"])
        );
    }
    out
}

/// `tenantd usage`: one row per bucket, every number with its unit.
pub fn usage(v: &Value) -> String {
    let f = |x: &Value, scale: f64, digits: usize, unit: &str| match x.as_f64() {
        Some(n) => format!("{:.*}{unit}", digits, n * scale),
        None => "-".into(),
    };
    let rows: Vec<Vec<String>> = v["points"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    vec![
                        num(&p["ts_ms"]),
                        f(&p["cpu_cores_mean"], 1.0, 3, " cores"),
                        f(&p["cpu_cores_max"], 1.0, 3, " cores"),
                        f(&p["cpu_throttled_cores_mean"], 1.0, 3, " cores"),
                        p["memory_current_bytes_mean"]
                            .as_f64()
                            .map(|b| format_bytes(b as u64))
                            .unwrap_or_else(|| "-".into()),
                        p["memory_working_set_bytes_max"]
                            .as_f64()
                            .map(|b| format_bytes(b as u64))
                            .unwrap_or_else(|| "-".into()),
                        f(&p["io_read_bytes_per_s_mean"], 1.0, 0, " B/s"),
                        f(&p["io_write_bytes_per_s_mean"], 1.0, 0, " B/s"),
                        f(&p["memory_some_stall_ratio_mean"], 100.0, 1, "%"),
                        f(&p["pids_current_max"], 1.0, 0, ""),
                        f(&p["new_oom_kills"], 1.0, 0, ""),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "tenant {}  level {}  step {} s  from {} to {} (Unix ms)\n\n{}",
        num(&v["tenant"]),
        num(&v["level"]),
        num(&v["step_s"]),
        num(&v["from_ms"]),
        num(&v["to_ms"]),
        table(
            &[
                "TIME (UNIX MS)",
                "CPU MEAN",
                "CPU MAX",
                "THROTTLED",
                "MEM MEAN",
                "WORKING SET MAX",
                "READ",
                "WRITE",
                "MEM STALL",
                "PIDS MAX",
                "OOM KILLS"
            ],
            &rows
        )
    )
}

/// The SLA report as a table: one line per tenant.
pub fn report(r: &Value) -> String {
    let ratio = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{:.1}%", x * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let secs = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.0} s"))
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = r["tenants"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    vec![
                        num(&t["tenant"]),
                        ratio(&t["guarantee_ratio"]),
                        ratio(&t["attainment_ratio"]),
                        num(&t["violations"]),
                        secs(&t["violation_seconds"]),
                        secs(&t["contended_seconds"]),
                        ratio(&t["delivered_mean_contended_ratio"]),
                        ratio(&t["delivered_p5_contended_ratio"]),
                        num(&t["memory_protection_breaches"]),
                        num(&t["oom_kills"]),
                        t["cpu_seconds"]
                            .as_f64()
                            .map(|x| format!("{x:.1} CPU-s"))
                            .unwrap_or_default(),
                        t["memory_gib_hours"]
                            .as_f64()
                            .map(|x| format!("{x:.3} GiB-h"))
                            .unwrap_or_default(),
                        bytes(&t["io_bytes"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "TENANT",
            "GUARANTEE",
            "ATTAINMENT",
            "VIOLATIONS",
            "VIOLATION TIME",
            "CONTENDED",
            "MEAN SHARE",
            "P5 SHARE",
            "MEM BREACHES",
            "OOM KILLS",
            "CPU",
            "MEMORY",
            "IO",
        ],
        &rows,
    )
}
