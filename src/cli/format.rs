//! Tables for people: every number with its unit, each read from a typed field of the answer.

use crate::api::Host;
use crate::domain::plan::{Limit, Settings};
use crate::domain::units::{Bytes, Percent, format_bytes};
use crate::engine::TenantView;
use crate::engine::placement::ProcInfo;
use crate::report::Report;
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
pub fn usage(u: &Usage) -> String {
    let rows: Vec<Vec<String>> = u
        .points
        .iter()
        .map(|p| {
            std::iter::once(p.ts_ms.to_string())
                .chain(
                    USAGE_COLUMNS
                        .iter()
                        .map(|&(_, value, show)| usage_cell(p, value, show)),
                )
                .collect()
        })
        .collect();
    let header: Vec<&str> = std::iter::once("TIME (UNIX MS)")
        .chain(USAGE_COLUMNS.iter().map(|&(h, _, _)| h))
        .collect();
    format!(
        "tenant {}  level {}  step {} s  from {} to {} (Unix ms)\n\n{}",
        u.tenant,
        match u.level {
            Level::Raw => "raw",
            Level::Minute => "minute",
            Level::Hour => "hour",
        },
        u.step_s,
        u.from_ms,
        u.to_ms,
        table(&header, &rows)
    )
}

/// The SLA report as a table: one line per tenant.
pub fn report(r: &Report) -> String {
    let ratio = |v: Option<f64>| or_dash(v.map(|x| format!("{:.1}%", x * 100.0)));
    let secs = |x: f64| format!("{x:.0} s");
    let rows: Vec<Vec<String>> = r
        .tenants
        .iter()
        .map(|t| {
            vec![
                t.tenant.clone(),
                ratio(t.guarantee_ratio),
                ratio(Some(t.attainment_ratio)),
                t.violations.to_string(),
                secs(t.violation_seconds),
                secs(t.contended_seconds),
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

/// `tenantd events`: newest first, the detail as compact JSON.
pub fn events(list: &[Event]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.ts_ms.to_string(),
                or_dash(e.tenant.as_ref()),
                e.kind.clone(),
                or_dash(e.actor.as_ref()),
                e.detail.to_string(),
            ]
        })
        .collect();
    table(
        &["TIME (UNIX MS)", "TENANT", "KIND", "ACTOR", "DETAIL"],
        &rows,
    )
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
web     50.0%      98.8%       2           42 s            3600 s     61.0%       48.1%     1             0          43210.2 CPU-s  12.346 GiB-h  3 GiB
batch   -          100.0%      0           0 s             0 s        -           -         0             3          0.0 CPU-s      0.000 GiB-h   0 B
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
            events(&samples::events()),
            r#"TIME (UNIX MS)  TENANT  KIND            ACTOR  DETAIL
1700000360500   web     tenant_updated  admin  {"changes":[{"field":"cpu.guarantee_pct","from":10,"to":12.5}]}
1700000000000   -       daemon_start    -      {"pid":4242,"version":"0.1.0"}
"#
        );
    }

    #[tokio::test]
    async fn usage_table() {
        assert_eq!(
            usage(&samples::usage().await),
            r#"tenant web  level raw  step 10 s  from 1700000340000 to 1700000400000 (Unix ms)

TIME (UNIX MS)  CPU MEAN     CPU MAX      THROTTLED    MEM MEAN  WORKING SET MAX  READ      WRITE  MEM STALL  PIDS MAX  OOM KILLS
1700000380000   0.750 cores  0.750 cores  0.000 cores  300 MiB   150 MiB          1536 B/s  0 B/s  1.2%       12        0
1700000390000   1.250 cores  1.250 cores  0.000 cores  500 MiB   250 MiB          1536 B/s  0 B/s  1.2%       12        1
"#
        );
    }
}
