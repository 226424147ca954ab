//! Tables for people: every number with its unit, each read from a typed field of the answer.

use crate::api::Host;
use crate::domain::event::{Event as DomainEvent, LimitHits, Violation, ViolationState};
use crate::domain::plan::{Limit, Settings};
use crate::domain::tenant::{Protection, TenantSpec};
use crate::domain::units::{Bytes, Percent, format_bytes};
use crate::engine::TenantView;
use crate::engine::autoplace::{Explanation, Outcome};
use crate::engine::placement::ProcInfo;
use crate::report::{FleetReport, Report, TenantReport};
use crate::store::{Event, Level, Usage, UsagePoint};
use std::fmt::Display;

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

/// The `*_ms` fields of our answers that are points in time (Unix milliseconds); the other
/// `*_ms` fields (`interval_ms`, `bucket_ms`, `violation_ms`, ...) are durations.
pub const TIME_FIELDS: &[&str] = &[
    "ts_ms",
    "from_ms",
    "to_ms",
    "start_ms",
    "end_ms",
    "created_ms",
    "updated_ms",
    "since_ms",
    "generated_ms",
    "at_ms",
    "kernel_read_ms",
];

/// `-o json` for people and scripts alike: beside every time field of [`TIME_FIELDS`] that
/// holds Unix milliseconds, the same instant in RFC 3339 UTC under the name without `_ms`
/// (`"ts_ms": 1796197695000` gains `"ts": "2026-12-02T07:48:15Z"`). The numbers stay, so
/// scripts written against the API's own JSON keep working.
pub fn json_times(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut add = Vec::new();
            for (k, val) in map.iter_mut() {
                json_times(val);
                if !TIME_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                let Some(ms) = val.as_i64() else { continue };
                let Ok(t) = jiff::Timestamp::from_millisecond(ms) else {
                    continue;
                };
                let base = k.trim_end_matches("_ms").to_string();
                add.push((base, Value::String(t.to_string())));
            }
            for (k, val) in add {
                map.entry(k).or_insert(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(json_times),
        _ => {}
    }
}

/// How tables show times: `2026-12-02 07:49:55` in the local time zone (TZ, else
/// /etc/localtime) or in UTC (`--utc`).
#[derive(Debug, Clone)]
pub struct Times {
    tz: jiff::tz::TimeZone,
}

impl Times {
    pub fn new(utc: bool) -> Times {
        Times {
            tz: if utc {
                jiff::tz::TimeZone::UTC
            } else {
                jiff::tz::TimeZone::system()
            },
        }
    }

    /// Unix milliseconds as a date and time to the second; the number itself when out of range.
    pub fn at(&self, ms: i64) -> String {
        match jiff::Timestamp::from_millisecond(ms) {
            Ok(t) => t
                .to_zoned_datetime(self.tz.clone())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string(),
            Err(_) => ms.to_string(),
        }
    }
}

/// A duration for people: `42s`, `1m 40s`, `2h 5m`, `3d 4h`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A value, or "-" where there is none.
pub fn or_dash(v: Option<impl Display>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn pct(v: Option<Percent>) -> String {
    or_dash(v.map(|p| format!("{}%", p.0)))
}

fn bytes(v: Option<Bytes>) -> String {
    or_dash(v.map(|b| format_bytes(b.0)))
}

fn limit_bytes(v: Limit) -> String {
    match v {
        Limit::Max => "max".into(),
        Limit::Value(b) => format_bytes(b),
    }
}

/// One line per tenant for `tenant list`.
pub fn tenants(list: &[TenantView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            let s = &t.stored.spec;
            vec![
                t.name.to_string(),
                or_dash(s.parent.as_ref()),
                pct(s.cpu.guarantee_pct),
                pct(s.cpu.limit_pct),
                or_dash(t.effective.as_ref().map(
                    // Of the kernel's settings only cpu.weight has a column (`tenant get`
                    // shows them all); every field is named, so a new one is placed here.
                    |Settings {
                         cpu_weight,
                         cpu_max_quota_us: _,
                         cpu_max_period_us: _,
                         memory_min_bytes: _,
                         memory_low_bytes: _,
                         memory_high_bytes: _,
                         memory_max_bytes: _,
                         memory_swap_max_bytes: _,
                         io_weight: _,
                         io_max: _,
                         pids_max: _,
                     }| cpu_weight,
                )),
                bytes(s.memory.guarantee_bytes),
                bytes(s.memory.limit_bytes),
                or_dash(s.pids.limit),
                t.procs.to_string(),
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
/// One line for a tenant a PUT applied: on this host (a `TenantView`), or, from a node of a
/// fleet that does not enforce it (202), stored in the fleet (a `FleetTenantView`).
pub fn applied(name: &str, answer: &serde_json::Value) -> String {
    if let Ok(v) = serde_json::from_value::<TenantView>(answer.clone()) {
        return format!(
            "applied tenant '{name}' (cpu.weight {})",
            or_dash(v.effective.as_ref().map(|e| e.cpu_weight))
        );
    }
    match serde_json::from_value::<crate::engine::fleet::FleetTenantView>(answer.clone()) {
        Ok(f) if f.nodes.is_empty() => {
            format!("applied tenant '{name}' to the fleet (no node selects it now)")
        }
        Ok(f) => format!(
            "applied tenant '{name}' to the fleet (enforced on {}, not on this node)",
            f.nodes.join(", ")
        ),
        Err(_) => format!("applied tenant '{name}'"),
    }
}

pub fn tenant(t: &TenantView) -> String {
    let s = &t.stored.spec;
    let mut out = String::new();
    out += &format!("name:        {}\n", t.name);
    out += &format!("parent:      {}\n", or_dash(s.parent.as_ref()));
    out += &format!("cgroup:      {}\n", t.cgroup.display());
    out += &format!("processes:   {}\n", t.procs);
    out += &format!("generation:  {}\n", t.stored.generation);
    if let Some(err) = &t.effective_error {
        out += &format!("kernel:      cannot read: {err}\n");
    }
    // What the kernel holds, or "-" for each value when it could not be read. Every field of
    // `Settings` is named (no `..`), so a new setting does not build until it has a row.
    let k = |v: String| if t.effective.is_some() { v } else { "-".into() };
    let Settings {
        cpu_weight,
        cpu_max_quota_us,
        cpu_max_period_us,
        memory_min_bytes,
        memory_low_bytes,
        memory_high_bytes,
        memory_max_bytes,
        memory_swap_max_bytes,
        io_weight,
        // Not shown: one line per device; `tenant get -o json` has them.
        io_max: _,
        pids_max,
    } = t.effective.clone().unwrap_or_default();
    let rows = vec![
        vec![
            "cpu guarantee".into(),
            pct(s.cpu.guarantee_pct),
            format!("cpu.weight {}", k(cpu_weight.to_string())),
        ],
        vec![
            "cpu limit".into(),
            pct(s.cpu.limit_pct),
            format!(
                "cpu.max {} {} (us)",
                k(cpu_max_quota_us.to_string()),
                k(cpu_max_period_us.to_string())
            ),
        ],
        vec![
            "memory guarantee".into(),
            bytes(s.memory.guarantee_bytes),
            format!(
                "memory.min {} / memory.low {}",
                k(format_bytes(memory_min_bytes)),
                k(format_bytes(memory_low_bytes))
            ),
        ],
        vec![
            "memory high".into(),
            bytes(s.memory.high_bytes),
            format!("memory.high {}", k(limit_bytes(memory_high_bytes))),
        ],
        vec![
            "memory limit".into(),
            bytes(s.memory.limit_bytes),
            format!("memory.max {}", k(limit_bytes(memory_max_bytes))),
        ],
        vec![
            "swap limit".into(),
            bytes(s.memory.swap_limit_bytes),
            format!("memory.swap.max {}", k(limit_bytes(memory_swap_max_bytes))),
        ],
        vec![
            "io guarantee".into(),
            pct(s.io.guarantee_pct),
            format!("io.weight {}", k(io_weight.to_string())),
        ],
        vec![
            "pids limit".into(),
            or_dash(s.pids.limit),
            format!("pids.max {}", k(pids_max.to_string())),
        ],
    ];
    out += "\n";
    out += &table(&["SLA", "SPEC", "KERNEL NOW"], &rows);
    for n in &t.not_applied {
        out += &format!("not applied on this host: {}: {}\n", n.setting, n.why);
    }
    if let Some(e) = &t.egress {
        let list = |l: &[crate::domain::egress::Destination]| {
            l.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let p = &e.policy;
        out += &format!(
            "egress:      default {}; allow [{}]; deny [{}] ({}); {}\n",
            if p.default == crate::domain::egress::EgressDefault::Allow {
                "allow"
            } else {
                "deny"
            },
            list(&p.allow),
            list(&p.deny),
            if e.from == t.name {
                "its own".to_string()
            } else {
                format!("from {}", e.from)
            },
            match (&e.in_force, &e.why) {
                (true, _) => "in force".to_string(),
                (false, Some(why)) => format!("NOT in force: {why}"),
                (false, None) => "NOT in force".to_string(),
            }
        );
    }
    out
}

/// How the usage table shows one value of a point.
#[derive(Debug, Clone, Copy)]
enum Show {
    Cores,
    Bytes,
    BytesPerS,
    /// A ratio 0..1, in percent.
    Percent,
    Count,
}

/// A value of a usage point, by its field.
type UsageValue = fn(&UsagePoint) -> Option<f64>;

/// The usage table's columns after the time: header, the value's field in a `UsagePoint`
/// (declared in `domain::usage_row`, so a renamed field fails to compile here) and how to show
/// it.
const USAGE_COLUMNS: [(&str, UsageValue, Show); 10] = [
    ("CPU MEAN", |p| p.rates.cpu_cores_mean, Show::Cores),
    ("CPU MAX", |p| p.rates.cpu_cores_max, Show::Cores),
    (
        "THROTTLED",
        |p| p.rates.cpu_throttled_cores_mean,
        Show::Cores,
    ),
    (
        "MEM MEAN",
        |p| p.gauges.memory_current_bytes_mean,
        Show::Bytes,
    ),
    (
        "WORKING SET MAX",
        |p| p.gauges.memory_working_set_bytes_max,
        Show::Bytes,
    ),
    (
        "READ",
        |p| p.rates.io_read_bytes_per_s_mean,
        Show::BytesPerS,
    ),
    (
        "WRITE",
        |p| p.rates.io_write_bytes_per_s_mean,
        Show::BytesPerS,
    ),
    (
        "MEM STALL",
        |p| p.rates.memory_some_stall_ratio_mean,
        Show::Percent,
    ),
    ("PIDS MAX", |p| p.gauges.pids_current_max, Show::Count),
    ("OOM KILLS", |p| p.events.new_oom_kills, Show::Count),
];

fn usage_cell(p: &UsagePoint, value: UsageValue, show: Show) -> String {
    or_dash(value(p).map(|v| match show {
        Show::Cores => format!("{v:.3} cores"),
        Show::Bytes => format_bytes(v as u64),
        Show::BytesPerS => format!("{v:.0} B/s"),
        Show::Percent => format!("{:.1}%", v * 100.0),
        Show::Count => format!("{v:.0}"),
    }))
}

/// `tenantd usage`: one row per bucket, every number with its unit.
pub fn usage(u: &Usage, times: &Times) -> String {
    let rows: Vec<Vec<String>> = u
        .points
        .iter()
        .map(|p| {
            std::iter::once(times.at(p.ts_ms))
                .chain(
                    USAGE_COLUMNS
                        .iter()
                        .map(|&(_, value, show)| usage_cell(p, value, show)),
                )
                .collect()
        })
        .collect();
    let header: Vec<&str> = std::iter::once("TIME")
        .chain(USAGE_COLUMNS.iter().map(|&(h, _, _)| h))
        .collect();
    format!(
        "tenant {}  level {}  step {}  from {} to {}\n\n{}",
        u.tenant,
        match u.level {
            Level::Raw => "raw",
            Level::Minute => "minute",
            Level::Hour => "hour",
        },
        duration(u.step_s as f64),
        times.at(u.from_ms),
        times.at(u.to_ms),
        table(&header, &rows)
    )
}

/// The SLA report as a table: one line per tenant.
pub fn report(r: &Report) -> String {
    tenants_table(&r.tenants)
}

/// `tenantd report --fleet`: the table across nodes, then one per node under its name.
pub fn fleet_report(r: &FleetReport) -> String {
    let mut out = format!(
        "fleet {} ({} nodes), across nodes:\n{}",
        r.store,
        r.nodes.len(),
        tenants_table(&r.tenants)
    );
    for n in &r.nodes {
        out.push_str(&format!(
            "\nnode {}:\n{}",
            n.node,
            tenants_table(&n.tenants)
        ));
    }
    out
}

/// One row per tenant of a report.
fn tenants_table(tenants: &[TenantReport]) -> String {
    let ratio = |v: Option<f64>| or_dash(v.map(|x| format!("{:.1}%", x * 100.0)));
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.tenant.clone(),
                ratio(t.guarantee_ratio),
                ratio(Some(t.attainment_ratio)),
                t.violations.to_string(),
                duration(t.violation_seconds),
                duration(t.contended_seconds),
                ratio(t.delivered_mean_contended_ratio),
                ratio(t.delivered_p5_contended_ratio),
                t.memory_protection_breaches.to_string(),
                t.oom_kills.to_string(),
                format!("{:.1} CPU-s", t.cpu_seconds),
                format!("{:.3} GiB-h", t.memory_gib_hours),
                format_bytes(t.io_bytes),
            ]
        })
        .collect();
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

/// `tenantd procs list`.
pub fn procs(list: &[ProcInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| vec![p.pid.to_string(), or_dash(p.comm.as_ref())])
        .collect();
    table(&["PID", "COMMAND"], &rows)
}

/// `tenantd procs explain PID`: the process's facts, the decision, what the placer does, and a
/// row per rule with the fields that missed.
pub fn explanation(e: &Explanation) -> String {
    let p = &e.process;
    let mut s = format!(
        "PID {}  start time {}
uid {} (effective {})  groups {}
exe {}
cmdline {}
",
        p.pid,
        p.start_time,
        p.ruid,
        p.euid,
        pids(&p.gids),
        or_dash(p.exe.as_ref()),
        p.cmdline
            .as_ref()
            .map(|a| a.join(" "))
            .unwrap_or_else(|| "-".into()),
    );
    s += &match &e.decision {
        Some(d) => format!(
            "tenant {} (priority {}, specificity {}, won by {}{})
",
            d.tenant,
            d.priority,
            d.specificity,
            serde_json::to_value(d.won_by)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            d.runner_up
                .as_ref()
                .map(|r| format!(" over {r}"))
                .unwrap_or_default()
        ),
        None => "tenant - (no rule matches)
"
        .into(),
    };
    s += &format!(
        "action: {}
",
        match &e.action {
            Outcome::Placed { tenant } => format!("place in {tenant}"),
            Outcome::AlreadyThere { tenant } => format!("none, already in {tenant}"),
            Outcome::NoRule => "none, no rule matches".into(),
            Outcome::Left { detail, .. } => format!("left where it is: {detail}"),
            Outcome::Gone => "none, the process is gone".into(),
            Outcome::Failed { detail, .. } => format!("failed: {detail}"),
        }
    );
    let rows: Vec<Vec<String>> = e
        .rules
        .iter()
        .map(|r| {
            let missed: Vec<String> = r
                .misses
                .iter()
                .map(|m| {
                    let v = serde_json::to_value(m).unwrap_or_default();
                    format!(
                        "{} ({})",
                        v["field"].as_str().unwrap_or_default(),
                        v["reason"].as_str().unwrap_or_default().replace('_', " ")
                    )
                })
                .collect();
            vec![
                r.tenant.to_string(),
                r.priority.to_string(),
                r.specificity.to_string(),
                if r.matched { "yes".into() } else { "no".into() },
                if missed.is_empty() {
                    "-".into()
                } else {
                    missed.join(", ")
                },
                r.rule.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        s += "
";
        s += &table(
            &["TENANT", "PRIORITY", "FIELDS", "MATCH", "MISSED", "RULE"],
            &rows,
        );
    }
    for n in &e.not_in_force {
        s += &format!(
            "not in force: {}: {}
",
            n.tenant, n.why
        );
    }
    s
}

/// `tenantd events`: newest first, the detail as short text (`-o json` has all of it).
pub fn events(list: &[Event], times: &Times) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                times.at(e.ts_ms),
                or_dash(e.tenant.as_ref()),
                e.kind.clone(),
                or_dash(e.actor.as_ref()),
                match e.event() {
                    Ok(ev) => event_detail(&ev, times),
                    // A kind this version does not know: its detail as stored.
                    Err(_) => e.detail.to_string(),
                },
            ]
        })
        .collect();
    table(&["TIME", "TENANT", "KIND", "ACTOR", "DETAIL"], &rows)
}

/// A JSON value of a changed field as a person reads it: `none` when absent or null.
fn field_value(v: &Option<serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "none".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

fn pids(list: &[u32]) -> String {
    list.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SLA values of a tenant's spec in a few words.
fn spec_summary(s: &TenantSpec) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &s.parent {
        parts.push(format!("parent {p}"));
    }
    if let Some(g) = s.cpu.guarantee_pct {
        parts.push(format!("cpu guarantee {}%", g.0));
    }
    if let Some(l) = s.cpu.limit_pct {
        parts.push(format!("cpu limit {}%", l.0));
    }
    if let Some(g) = s.memory.guarantee_bytes {
        let p = match s.memory.protection {
            Protection::Hard => "hard",
            Protection::Soft => "soft",
        };
        parts.push(format!("memory guarantee {} ({p})", format_bytes(g.0)));
    }
    if let Some(l) = s.memory.limit_bytes {
        parts.push(format!("memory limit {}", format_bytes(l.0)));
    }
    if let Some(g) = s.io.guarantee_pct {
        parts.push(format!("io guarantee {}%", g.0));
    }
    if let Some(l) = s.pids.limit {
        parts.push(format!("pids limit {l}"));
    }
    if parts.is_empty() {
        "no guarantees or limits".into()
    } else {
        parts.join(", ")
    }
}

/// A violation opening or closing in a few words.
fn violation(v: &Violation, times: &Times) -> String {
    let shares = format!(
        "worst share {:.1}% against {:.1}%",
        v.worst_share_ratio * 100.0,
        v.guarantee_ratio * 100.0
    );
    match (v.state, v.duration_s) {
        (ViolationState::Closed, Some(d)) => format!("closed after {}, {shares}", duration(d)),
        _ => format!("opened {}, {shares}", times.at(v.start_ms)),
    }
}

/// An event's detail as short text for the events table.
pub fn event_detail(e: &DomainEvent, times: &Times) -> String {
    use DomainEvent as E;
    let hits = |h: &LimitHits| format!("{} new (total {})", h.count, or_dash(h.total));
    match e {
        E::DaemonStart { version, pid } => format!("version {version}, PID {pid}"),
        E::DaemonStop {} => "-".into(),
        E::DaemonReload {
            applied,
            restart_needed,
            failed,
        } => {
            let part = |what: &str, v: &[String]| {
                (!v.is_empty()).then(|| format!("{what}: {}", v.join(", ")))
            };
            [
                part("applied", applied),
                part("needs a restart", restart_needed),
                part("failed", failed),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ")
        }
        E::TenantCreated { spec } => spec_summary(spec),
        E::TenantChanged { changes } => changes
            .iter()
            .map(|c| {
                format!(
                    "{} {} -> {}",
                    c.field,
                    field_value(&c.from),
                    field_value(&c.to)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        E::TenantDeleted { mode } => format!("mode {mode}"),
        E::TenantDeleteUndone { why } => why.clone(),
        E::ProcessesMoved { to, pids: p } => format!("PIDs {} moved to {to}", pids(p)),
        E::ProcessAttached { pid } => format!("PID {pid}"),
        E::DeleteFinished {
            moved_pids,
            journal,
        } => {
            format!("moved PIDs [{}], journal {journal}", pids(moved_pids))
        }
        E::CgroupCreated {} => "missing directory created".into(),
        E::CgroupRemoved { path, why } => format!("{}: {why}", path.display()),
        E::AttachUndone { pid, why } => format!("PID {pid}: {why}"),
        E::DriftCorrected { file, was, now } => format!("{file} {was} -> {now}"),
        E::OomKill(h) | E::MemoryHigh(h) | E::MemoryMax(h) | E::PidsMax(h) => hits(h),
        E::SlaViolation(v) => {
            let mut s = violation(&v.violation, times);
            if !v.top_consumers.is_empty() {
                let top: Vec<String> = v
                    .top_consumers
                    .iter()
                    .map(|c| format!("{} {:.1}%", c.tenant, c.share_ratio * 100.0))
                    .collect();
                s += &format!("; top {}", top.join(", "));
            }
            s
        }
        E::SlaIoViolation(v) => violation(v, times),
        E::MemoryProtectionBreach {
            protection,
            guarantee_bytes,
            memory_current_bytes,
            memory_events_low,
        } => format!(
            "{} guarantee {}, using {}, memory.low hits {memory_events_low}",
            match protection {
                Protection::Hard => "hard",
                Protection::Soft => "soft",
            },
            format_bytes(*guarantee_bytes),
            or_dash(memory_current_bytes.map(format_bytes))
        ),
        E::SlaAdjustment {
            file,
            cgroup,
            from,
            to,
        } => format!("{cgroup} {file} {from} -> {to}"),
        E::ProcessPlaced {
            count,
            pids: p,
            rule,
        } => format!("{count} by rule {rule}: PIDs {}", pids(p)),
        E::ProcessNotPlaced {
            count,
            pids: p,
            why,
        } => format!("{count} left: {why}: PIDs {}", pids(p)),
    }
}

/// `tenantd host`: what the host's cgroup setup can do, one line per block device.
pub fn host(h: &Host) -> String {
    let cg = &h.cgroup;
    let mut s = format!(
        "tenantd {}  cgroup {}  root {}\ncpus {}  memory {}  (reserve {})\ncontrollers: {}\nmissing: {}\nPSI: {}  cgroup.kill: {}\n",
        h.tenantd_version,
        cg.version,
        cg.root.display(),
        h.cpus,
        format_bytes(h.memory_bytes),
        format_bytes(h.memory_reserve_bytes),
        cg.controllers.join(" "),
        if cg.missing.is_empty() {
            "none".into()
        } else {
            cg.missing.join(" ")
        },
        cg.psi,
        cg.kill,
    );
    s += &format!("mode: {}\n", h.mode.as_str());
    s += &match (&h.egress.available, &h.egress.why) {
        (true, _) => format!(
            "egress policies: enforced ({})\n",
            h.egress.nft.as_deref().unwrap_or("nft")
        ),
        (false, why) => format!(
            "egress policies: refused here: {}\n",
            why.as_deref().unwrap_or("unavailable")
        ),
    };
    for c in &h.cannot {
        s += &format!("cannot: {}: {}\n", c.what, c.why);
    }
    s += "\n";
    let rows: Vec<Vec<String>> = cg
        .devices
        .iter()
        .map(|d| {
            vec![
                format!("{}:{}", d.device.major, d.device.minor),
                d.name.clone(),
                or_dash(d.scheduler.as_ref()),
                if d.io_weight_effective { "yes" } else { "no" }.into(),
                d.io_weight_reason.clone(),
            ]
        })
        .collect();
    s += &table(
        &["DEVICE", "NAME", "SCHEDULER", "IO WEIGHTS WORK", "WHY"],
        &rows,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::super::wire::samples;
    use super::*;

    #[test]
    fn json_gets_an_rfc3339_twin_for_times_only() {
        let mut v = serde_json::json!({
            "ts_ms": 1_796_197_695_123i64,
            "interval_ms": 1000,
            "violation_ms": 5000,
            "nested": [{"start_ms": 0, "end_ms": null, "from": "kept"}],
            "from_ms": 1_796_197_695_000i64,
            "from": "already here",
        });
        json_times(&mut v);
        assert_eq!(v["ts"], "2026-12-02T07:48:15.123Z");
        assert_eq!(v["nested"][0]["start"], "1970-01-01T00:00:00Z");
        assert!(v.get("interval").is_none() && v.get("violation").is_none());
        assert!(
            v["nested"][0].get("end").is_none(),
            "null stays without a twin"
        );
        assert_eq!(
            v["from"], "already here",
            "an existing key is never overwritten"
        );
        assert_eq!(v["ts_ms"], 1_796_197_695_123i64, "the number stays");
    }

    #[test]
    fn tenant_tables() {
        let ts = samples::tenants();
        assert_eq!(
            tenants(&ts),
            r#"NAME   PARENT  CPU GUARANTEE  CPU LIMIT  CPU.WEIGHT  MEM GUARANTEE  MEM LIMIT  PIDS LIMIT  PROCS
web    team    12.5%          200%       1250        1 GiB          4 GiB      100         2
batch  -       -              -          -           -              -          -           0
"#
        );
        assert_eq!(
            tenant(&ts[0]),
            r#"name:        web
parent:      team
cgroup:      /sys/fs/cgroup/tenantd/team/web
processes:   2
generation:  3

SLA               SPEC   KERNEL NOW
cpu guarantee     12.5%  cpu.weight 1250
cpu limit         200%   cpu.max 200000 100000 (us)
memory guarantee  1 GiB  memory.min 0 B / memory.low 1 GiB
memory high       3 GiB  memory.high max
memory limit      4 GiB  memory.max 4 GiB
swap limit        0 B    memory.swap.max 0 B
io guarantee      25%    io.weight 2500
pids limit        100    pids.max 100
not applied on this host: memory_high_bytes: cgroup v1 has no memory.high
"#
        );
        // A directory that could not be read: "-" for every kernel value.
        assert_eq!(
            tenant(&ts[1]),
            r#"name:        batch
parent:      -
cgroup:      /sys/fs/cgroup/tenantd/batch
processes:   0
generation:  3
kernel:      cannot read: no such directory

SLA               SPEC  KERNEL NOW
cpu guarantee     -     cpu.weight -
cpu limit         -     cpu.max - - (us)
memory guarantee  -     memory.min - / memory.low -
memory high       -     memory.high -
memory limit      -     memory.max -
swap limit        -     memory.swap.max -
io guarantee      -     io.weight -
pids limit        -     pids.max -
"#
        );
    }

    /// `tenantd tenant get` says which egress policy applies, whose it is and whether it is
    /// in force.
    #[test]
    fn tenant_shows_its_egress_policy() {
        use crate::engine::egress::EgressView;
        let mut t = samples::tenants().remove(0);
        let policy = serde_json::from_value(serde_json::json!(
            {"default": "deny", "allow": ["10.0.0.0/8:443/tcp", "[::1]:5432"]}
        ))
        .unwrap();
        t.egress = Some(EgressView {
            policy,
            from: crate::domain::TenantName::parse("team").unwrap(),
            in_force: true,
            why: None,
            checked_ms: Some(1_700_000_361_000),
        });
        let out = tenant(&t);
        assert!(
            out.ends_with(
                "egress:      default deny; allow [10.0.0.0/8:443/tcp [::1]:5432]; deny [] (from team); in force\n"
            ),
            "{out}"
        );
        let e = t.egress.as_mut().unwrap();
        (e.in_force, e.why, e.from) = (
            false,
            Some("its cgroup directory /x is missing".into()),
            t.name.clone(),
        );
        assert!(
            tenant(&t).ends_with("(its own); NOT in force: its cgroup directory /x is missing\n"),
            "{}",
            tenant(&t)
        );
    }

    #[test]
    fn host_table() {
        assert_eq!(
            host(&samples::host()),
            r#"tenantd 0.1.0  cgroup v1  root /sys/fs/cgroup/tenantd
cpus 2  memory 8 GiB  (reserve 512 MiB)
controllers: cpu memory pids
missing: io
PSI: false  cgroup.kill: false
mode: root
egress policies: refused here: tenants run on cgroup v1 here

DEVICE  NAME  SCHEDULER  IO WEIGHTS WORK  WHY
8:0     sda   bfq        yes              BFQ
253:1   dm-1  -          no               no scheduler
"#
        );
    }

    #[test]
    fn report_table() {
        assert_eq!(
            report(&samples::report()),
            r#"TENANT  GUARANTEE  ATTAINMENT  VIOLATIONS  VIOLATION TIME  CONTENDED  MEAN SHARE  P5 SHARE  MEM BREACHES  OOM KILLS  CPU            MEMORY        IO
web     50.0%      98.8%       2           43s             1h 0m      61.0%       48.1%     1             0          43210.2 CPU-s  12.346 GiB-h  3 GiB
batch   -          100.0%      0           0s              0s         -           -         0             3          0.0 CPU-s      0.000 GiB-h   0 B
"#
        );
    }

    #[test]
    fn procs_and_events_tables() {
        assert_eq!(
            procs(&samples::procs()),
            "PID   COMMAND\n1234  nginx\n1240  -\n"
        );
        assert_eq!(
            events(&samples::events(), &Times::new(true)),
            r#"TIME                 TENANT  KIND            ACTOR  DETAIL
2023-11-14 22:19:20  web     tenant_updated  admin  {"changes":[{"field":"cpu.guarantee_pct","from":10,"to":12.5}]}
2023-11-14 22:13:20  -       daemon_start    -      version 0.1.0, PID 4242
"#
        );
        // "tenant_updated" is not a kind this version knows: its detail as stored.
    }

    #[test]
    fn times_in_a_zone_and_durations() {
        let ms = 1_796_197_795_000;
        assert_eq!(Times::new(true).at(ms), "2026-12-02 07:49:55");
        let tokyo = Times {
            tz: jiff::tz::TimeZone::get("Asia/Tokyo")
                .unwrap_or(jiff::tz::TimeZone::fixed(jiff::tz::offset(9))),
        };
        assert_eq!(tokyo.at(ms), "2026-12-02 16:49:55");
        assert_eq!(Times::new(true).at(i64::MAX), i64::MAX.to_string());
        for (secs, want) in [
            (0.0, "0s"),
            (42.4, "42s"),
            (100.0, "1m 40s"),
            (3600.0, "1h 0m"),
            (7500.0, "2h 5m"),
            (273_600.0, "3d 4h"),
            (-5.0, "0s"),
        ] {
            assert_eq!(duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn event_details_as_short_text() {
        use crate::domain::event::{Consumer, CpuViolation};
        let t = Times::new(true);
        let text = |json: serde_json::Value| {
            let e =
                DomainEvent::from_columns(json["kind"].as_str().unwrap(), &json["detail"]).unwrap();
            event_detail(&e, &t)
        };
        assert_eq!(
            text(
                serde_json::json!({"kind": "tenant_changed", "detail": {"changes": [
                {"field": "cpu.guarantee_pct", "from": 10, "to": 12.5},
                {"field": "memory.limit_bytes", "to": 1073741824},
                {"field": "parent", "from": "team", "to": null}]}})
            ),
            "cpu.guarantee_pct 10 -> 12.5; memory.limit_bytes none -> 1073741824; parent team -> none"
        );
        assert_eq!(
            text(
                serde_json::json!({"kind": "tenant_created", "detail": {"spec": {
                "cpu": {"guarantee_pct": 50}, "memory": {"guarantee_bytes": 1073741824, "protection": "soft"},
                "pids": {"limit": 100}}}})
            ),
            "cpu guarantee 50%, memory guarantee 1 GiB (soft), pids limit 100"
        );
        let closed = DomainEvent::SlaViolation(CpuViolation {
            violation: Violation {
                state: ViolationState::Closed,
                start_ms: 1_796_197_695_000,
                end_ms: Some(1_796_197_795_000),
                duration_s: Some(100.0),
                worst_share_ratio: 0.3125,
                guarantee_ratio: 0.5,
            },
            top_consumers: vec![Consumer {
                tenant: "batch".into(),
                share_ratio: 0.6,
            }],
        });
        assert_eq!(
            event_detail(&closed, &t),
            "closed after 1m 40s, worst share 31.2% against 50.0%; top batch 60.0%"
        );
        assert_eq!(
            text(serde_json::json!({"kind": "oom_kill", "detail": {"count": 2, "total": 5}})),
            "2 new (total 5)"
        );
        assert_eq!(
            text(serde_json::json!({"kind": "drift_corrected",
                "detail": {"file": "cpu.weight", "was": "100", "now": "5000"}})),
            "cpu.weight 100 -> 5000"
        );
    }

    #[tokio::test]
    async fn usage_table() {
        assert_eq!(
            usage(&samples::usage().await, &Times::new(true)),
            r#"tenant web  level raw  step 10s  from 2023-11-14 22:19:00 to 2023-11-14 22:20:00

TIME                 CPU MEAN     CPU MAX      THROTTLED    MEM MEAN  WORKING SET MAX  READ      WRITE  MEM STALL  PIDS MAX  OOM KILLS
2023-11-14 22:19:40  0.750 cores  0.750 cores  0.000 cores  300 MiB   150 MiB          1536 B/s  0 B/s  1.2%       12        0
2023-11-14 22:19:50  1.250 cores  1.250 cores  0.000 cores  500 MiB   250 MiB          1536 B/s  0 B/s  1.2%       12        1
"#
        );
    }
}
