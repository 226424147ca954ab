//! Every metric name and label, in one place (`METRICS`), and `GET /metrics` rendered from the
//! sampler's current snapshot in the Prometheus text format 0.0.4 or in OpenMetrics, as the
//! scraper's Accept header asks (`Format::negotiate`, the rule of the official Go client).
//!
//! Per-tenant series come from a collector that reads the snapshot at scrape time, so a
//! deleted tenant disappears from the very next scrape. Names follow the Prometheus rules:
//! prefix `tenantd_`, base units in the name (seconds, bytes, ratios), counters end in
//! `_total`. The Grafana dashboards are checked against `METRICS` (see `exposed_names`).
//!
//! Layer 1 (see `lib.rs`): it renders domain types only (`domain::stats`,
//! `domain::sla::SlaTotals`, specs and plans) and imports `domain` only, never `cgroup`,
//! `store`, `report`, `engine`, `api`, `config` or `cli` (the engine fills the snapshot and
//! imports this module, not the other way round).

use crate::domain::nft::EgressSnapshot;
use crate::domain::plan::Limit;
use crate::domain::sla::SlaTotals;
use crate::domain::stats::{CgroupStats, IoDevStat, PressureTotals, Sample};
use crate::domain::tenant::TenantSpec;
#[cfg(test)]
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry, Unit};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// The content type of `GET /metrics` in OpenMetrics.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of `GET /metrics` in the Prometheus text format 0.0.4 (the default).
pub const CONTENT_TYPE_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The two exposition formats `GET /metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: what `promtool check metrics` and older scrapers read.
    Text,
    /// OpenMetrics 1.0.0: `# UNIT`, info metrics, `# EOF`.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => CONTENT_TYPE_TEXT,
            Format::OpenMetrics => CONTENT_TYPE,
        }
    }

    /// Picks the format for an Accept header the way client_golang's `expfmt.Negotiate`
    /// does: media ranges by falling q (ties keep their order), the first one that names
    /// OpenMetrics (version 1.0.0, 0.0.1 or none) or the text format (`text/plain`, `text/*`,
    /// `*/*`) wins; q=0 means "not acceptable"; anything else, or no header, gives the text
    /// format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut ranges: Vec<(f64, Option<Format>)> = Vec::new();
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0, None);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse::<f64>().unwrap_or(0.0).clamp(0.0, 1.0),
                    "version" => version = Some(v.to_string()),
                    _ => {}
                }
            }
            let format = match media.as_str() {
                "application/openmetrics-text"
                    if version
                        .as_deref()
                        .is_none_or(|v| v == "1.0.0" || v == "0.0.1") =>
                {
                    Some(Format::OpenMetrics)
                }
                "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => {
                    Some(Format::Text)
                }
                "text/*" | "*/*" => Some(Format::Text),
                _ => None,
            };
            ranges.push((q, format));
        }
        // A stable sort keeps the header's order among equal q values.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranges
            .into_iter()
            .filter(|(q, _)| *q > 0.0)
            .find_map(|(_, f)| f)
            .unwrap_or(Format::Text)
    }
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Info,
}

/// One metric family: `name` is the family name as exposed (`# TYPE` line), unit included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<&'static str>,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl MetricDef {
    /// The sample names a scraper stores (what PromQL and dashboards use).
    pub fn sample_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Counter => vec![format!("{}_total", self.name)],
            Kind::Gauge => vec![self.name.to_string()],
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{}{s}", self.name))
                .collect(),
            Kind::Info => vec![format!("{}_info", self.name)],
        }
    }

    /// The name without the unit suffix, as the encoder wants it.
    fn stem(&self) -> &'static str {
        match self.unit {
            Some(u) => self
                .name
                .strip_suffix(u)
                .and_then(|s| s.strip_suffix('_'))
                .unwrap_or(self.name),
            None => self.name,
        }
    }
}

const T: &[&str] = &["tenant"];
const TD: &[&str] = &["tenant", "device"];
const EGRESS: &[&str] = &["tenant", "rule", "destination", "verdict"];

macro_rules! def {
    ($name:literal, $kind:ident, $unit:expr, $labels:expr, $help:literal) => {
        MetricDef {
            name: $name,
            kind: Kind::$kind,
            unit: $unit,
            labels: $labels,
            help: $help,
        }
    };
}

/// Every metric tenantd exposes; code finds an entry by its name (`def`), which panics at
/// start for a name missing here, and a test checks the output against this list.
pub const METRICS: &[MetricDef] = &[
    // Per tenant: measured (cgroup-v2.rst: cpu.stat, memory.*, io.stat, pids.*, PSI).
    def!(
        "tenantd_tenant_cpu_usage_seconds",
        Counter,
        Some("seconds"),
        T,
        "CPU time used by the tenant (cpu.stat usage_usec)"
    ),
    def!(
        "tenantd_tenant_cpu_user_seconds",
        Counter,
        Some("seconds"),
        T,
        "CPU time in user mode (cpu.stat user_usec)"
    ),
    def!(
        "tenantd_tenant_cpu_system_seconds",
        Counter,
        Some("seconds"),
        T,
        "CPU time in kernel mode (cpu.stat system_usec)"
    ),
    def!(
        "tenantd_tenant_cpu_throttled_seconds",
        Counter,
        Some("seconds"),
        T,
        "Time the tenant was throttled by its CPU limit (cpu.stat throttled_usec)"
    ),
    def!(
        "tenantd_tenant_cpu_throttled_periods",
        Counter,
        None,
        T,
        "Enforcement periods in which the tenant was throttled (cpu.stat nr_throttled)"
    ),
    def!(
        "tenantd_tenant_cpu_periods",
        Counter,
        None,
        T,
        "Enforcement periods elapsed with a CPU limit (cpu.stat nr_periods)"
    ),
    def!(
        "tenantd_tenant_memory_current_bytes",
        Gauge,
        Some("bytes"),
        T,
        "Memory charged to the tenant (memory.current)"
    ),
    def!(
        "tenantd_tenant_memory_working_set_bytes",
        Gauge,
        Some("bytes"),
        T,
        "memory.current minus inactive file pages, as cAdvisor computes it"
    ),
    def!(
        "tenantd_tenant_memory_peak_bytes",
        Gauge,
        Some("bytes"),
        T,
        "Highest memory.current seen (memory.peak; absent on kernels without it)"
    ),
    def!(
        "tenantd_tenant_memory_oom_kills",
        Counter,
        None,
        T,
        "Processes of the tenant killed by the OOM killer (memory.events oom_kill)"
    ),
    def!(
        "tenantd_tenant_memory_events",
        Counter,
        None,
        &["tenant", "event"],
        "memory.events counts: low, high, max, oom"
    ),
    def!(
        "tenantd_tenant_io_read_bytes",
        Counter,
        Some("bytes"),
        TD,
        "Bytes read from the device (io.stat rbytes)"
    ),
    def!(
        "tenantd_tenant_io_write_bytes",
        Counter,
        Some("bytes"),
        TD,
        "Bytes written to the device (io.stat wbytes)"
    ),
    def!(
        "tenantd_tenant_io_read_ops",
        Counter,
        None,
        TD,
        "Read operations on the device (io.stat rios)"
    ),
    def!(
        "tenantd_tenant_io_write_ops",
        Counter,
        None,
        TD,
        "Write operations on the device (io.stat wios)"
    ),
    def!(
        "tenantd_tenant_io_device_time_seconds",
        Counter,
        Some("seconds"),
        TD,
        "Device time iocost charged the tenant, what io.weight divides (io.stat cost.usage); only on devices with iocost enabled"
    ),
    def!(
        "tenantd_tenant_pids_current",
        Gauge,
        None,
        T,
        "Processes and threads in the tenant (pids.current)"
    ),
    def!(
        "tenantd_tenant_pids_limit_hits",
        Counter,
        None,
        T,
        "Forks refused because the pids limit was reached (pids.events max)"
    ),
    def!(
        "tenantd_tenant_pressure_stall_seconds",
        Counter,
        Some("seconds"),
        &["tenant", "resource", "kind"],
        "Time some or all of the tenant's tasks stalled on cpu, memory or io (PSI total)"
    ),
    // Per tenant: configured (the SLA in base units; absent when not set).
    def!(
        "tenantd_tenant_cpu_guarantee_ratio",
        Gauge,
        Some("ratio"),
        T,
        "Guaranteed share of the parent's CPU, 0..1"
    ),
    def!(
        "tenantd_tenant_cpu_limit_cores",
        Gauge,
        Some("cores"),
        T,
        "Hard CPU cap in CPUs (CPU-seconds per second)"
    ),
    def!(
        "tenantd_tenant_memory_guarantee_bytes",
        Gauge,
        Some("bytes"),
        T,
        "Memory protected from reclaim (memory.min or memory.low)"
    ),
    def!(
        "tenantd_tenant_memory_high_bytes",
        Gauge,
        Some("bytes"),
        T,
        "Memory throttling threshold (memory.high)"
    ),
    def!(
        "tenantd_tenant_memory_limit_bytes",
        Gauge,
        Some("bytes"),
        T,
        "Hard memory limit (memory.max)"
    ),
    def!(
        "tenantd_tenant_io_guarantee_ratio",
        Gauge,
        Some("ratio"),
        T,
        "Guaranteed share of the parent's IO, 0..1"
    ),
    def!(
        "tenantd_tenant_pids_limit",
        Gauge,
        None,
        T,
        "Limit on processes and threads (pids.max)"
    ),
    // tenantd itself.
    // Per tenant: the SLA (issue 5), since the daemon started.
    def!(
        "tenantd_tenant_sla_contended_seconds",
        Counter,
        Some("seconds"),
        T,
        "Time the tenant wanted more CPU than it got (cpu.pressure some above the threshold)"
    ),
    def!(
        "tenantd_tenant_sla_violation_seconds",
        Counter,
        Some("seconds"),
        T,
        "Contended time with the delivered CPU share below the guarantee minus the tolerance"
    ),
    def!(
        "tenantd_tenant_sla_violations",
        Counter,
        None,
        T,
        "SLA violations opened"
    ),
    def!(
        "tenantd_tenant_sla_io_contended_seconds",
        Counter,
        Some("seconds"),
        T,
        "Time the tenant waited for IO (io.pressure some above the threshold), where io weights take effect"
    ),
    def!(
        "tenantd_tenant_sla_io_violation_seconds",
        Counter,
        Some("seconds"),
        T,
        "IO-contended time with the tenant's share of its siblings' IO below its io guarantee"
    ),
    def!(
        "tenantd_tenant_sla_attainment_ratio",
        Gauge,
        Some("ratio"),
        T,
        "1 - violation time / contended time (1 when never contended)"
    ),
    def!(
        "tenantd_tenant_cpu_delivered_share_ratio",
        Gauge,
        Some("ratio"),
        T,
        "Share of the parent's CPU the tenant got in the last interval"
    ),
    def!(
        "tenantd_tenant_io_delivered_share_ratio",
        Gauge,
        Some("ratio"),
        T,
        "Share of its siblings' IO the tenant got in the last interval: device time under iocost, bytes elsewhere; only with an IO guarantee where io weights take effect, and absent after an interval in which none of them did IO"
    ),
    // Per tenant: the egress policy (nftables counters of the policy's own table).
    def!(
        "tenantd_tenant_egress_packets",
        Counter,
        None,
        EGRESS,
        "Packets the tenant's egress policy rule matched (rule: deny[0], allow[1], default); a child without a policy of its own counts under the tenant whose policy it inherits"
    ),
    def!(
        "tenantd_tenant_egress_bytes",
        Counter,
        Some("bytes"),
        EGRESS,
        "Bytes the tenant's egress policy rule matched"
    ),
    def!(
        "tenantd_tenant_egress_in_force",
        Gauge,
        None,
        T,
        "1 when the tenant's own egress policy is loaded in the kernel and bound to its current cgroup, 0 when not (GET /v1/tenants/NAME says why)"
    ),
    def!(
        "tenantd_tenant_memory_protection_breaches",
        Counter,
        None,
        T,
        "Times a protected tenant was reclaimed below memory.low or OOM-killed under its guarantee"
    ),
    def!(
        "tenantd_tenants",
        Gauge,
        None,
        &[],
        "Tenants sampled in the last sweep"
    ),
    def!(
        "tenantd_sweep_duration_seconds",
        Histogram,
        Some("seconds"),
        &[],
        "Time to read every tenant's cgroup files in one sampler sweep"
    ),
    def!(
        "tenantd_placement_latency_seconds",
        Histogram,
        Some("seconds"),
        &[],
        "Time from a process's exec, uid or gid change, as the kernel stamped the event, to its move into the tenant its placement rule names (the process-event path; rescans not counted)"
    ),
    def!(
        "tenantd_db_write_duration_seconds",
        Histogram,
        Some("seconds"),
        &[],
        "Time to write one sweep's samples to the database"
    ),
    def!(
        "tenantd_reconcile_corrections",
        Counter,
        None,
        &[],
        "Kernel values found drifted from the plan and rewritten"
    ),
    def!(
        "tenantd_reconcile_errors",
        Counter,
        None,
        &[],
        "Reconcile passes or steps that failed"
    ),
    def!(
        "tenantd_sampler_errors",
        Counter,
        None,
        &[],
        "Sampler sweeps or database writes that failed"
    ),
    def!(
        "tenantd_http_connections",
        Gauge,
        None,
        &[],
        "HTTP connections open now (at most max_connections)"
    ),
    def!(
        "tenantd_http_connections_refused",
        Counter,
        None,
        &[],
        "HTTP connections refused because max_connections were open, each busy with a request"
    ),
    def!(
        "tenantd_http_connections_evicted",
        Counter,
        None,
        &[],
        "Idle or half-sent HTTP connections closed to make room for a new one at max_connections"
    ),
    def!(
        "tenantd_processes_placed",
        Counter,
        None,
        T,
        "Processes a placement rule moved into the tenant"
    ),
    def!(
        "tenantd_processes_not_placed",
        Counter,
        None,
        &["tenant", "reason"],
        "Processes the tenant's placement rule names that were left where they are (reason delegated: in a cgroup another manager delegated)"
    ),
    def!(
        "tenantd_build",
        Info,
        None,
        &["version"],
        "tenantd build information"
    ),
];

/// Every sample name, for checking dashboards and alerts against.
pub fn exposed_names() -> Vec<String> {
    METRICS.iter().flat_map(MetricDef::sample_names).collect()
}

fn def(name: &str) -> &'static MetricDef {
    METRICS
        .iter()
        .find(|d| d.name == name)
        .expect("every name used in code is in METRICS")
}

/// A counter per label set (`tenant`, and more for some), which the engine increments and
/// `/metrics` renders with tenantd's own instruments.
pub type TenantCounters =
    prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>;

/// What the sampler last saw of one tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantSnapshot {
    pub stats: SharedStats,
    /// Shared with the sampler's list of tenants.
    pub spec: std::sync::Arc<TenantSpec>,
    /// The SLA since the daemon started; `None` before the first interval.
    pub sla: Option<SlaTotals>,
}

/// A tenant's stats as the sampler last read them: its entry in the sampler's own samples of
/// that sweep (one `Vec` of every tenant's, which the sampler keeps as the previous samples),
/// shared rather than copied into every sweep's snapshot (424 bytes a tenant, 4.2 MB at
/// 10,000 tenants, and as much again while a new snapshot is made; issue 15, target 4).
/// Reads see the `CgroupStats`; a write copies them first (tests only).
#[derive(Debug, Clone)]
pub struct SharedStats {
    sweep: Arc<Vec<Sample>>,
    at: usize,
}

impl SharedStats {
    /// The stats of `sweep[at]`.
    pub fn of(sweep: Arc<Vec<Sample>>, at: usize) -> Self {
        assert!(at < sweep.len(), "a sample of the sweep");
        SharedStats { sweep, at }
    }
}

impl Default for SharedStats {
    fn default() -> Self {
        CgroupStats::default().into()
    }
}

impl std::ops::Deref for SharedStats {
    type Target = CgroupStats;
    fn deref(&self) -> &CgroupStats {
        &self.sweep[self.at].stats
    }
}

impl std::ops::DerefMut for SharedStats {
    fn deref_mut(&mut self) -> &mut CgroupStats {
        if self.sweep.len() != 1 || Arc::get_mut(&mut self.sweep).is_none() {
            *self = self.sweep[self.at].stats.clone().into();
        }
        let own = Arc::get_mut(&mut self.sweep).expect("a copy of its own");
        &mut own[0].stats
    }
}

impl From<CgroupStats> for SharedStats {
    fn from(stats: CgroupStats) -> Self {
        SharedStats {
            sweep: Arc::new(vec![Sample::whole(0, stats)]),
            at: 0,
        }
    }
}

/// The sampler's view of every tenant, replaced whole on each sweep.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub tenants: TenantMap,
}

/// Tenant name -> snapshot, in name order: a `Vec` sorted once when collected and looked up
/// by binary search. It is rebuilt whole every sweep, so it needs none of a `BTreeMap`'s
/// cheap inserts, and a `BTreeMap` filled in order leaves its nodes about half empty (issue
/// 15: 17 MB at 10,000 tenants, twice over while a new snapshot replaces the last).
#[derive(Debug, Clone, Default)]
pub struct TenantMap(Vec<(String, TenantSnapshot)>);

impl TenantMap {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, name: &str) -> std::result::Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&TenantSnapshot> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// The `k`th entry in name order, with its name.
    pub fn at(&self, k: usize) -> Option<(&str, &TenantSnapshot)> {
        self.0.get(k).map(|(n, t)| (n.as_str(), t))
    }

    /// Adds or replaces `name`'s entry, keeping the order (a shift of the entries after it:
    /// for tests and small maps; the sampler collects the whole map at once).
    pub fn insert(&mut self, name: String, t: TenantSnapshot) {
        match self.find(&name) {
            Ok(i) => self.0[i].1 = t,
            Err(i) => self.0.insert(i, (name, t)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &TenantSnapshot)> {
        self.0.iter().map(|(n, t)| (n, t))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut TenantSnapshot)> {
        self.0.iter_mut().map(|(n, t)| (&*n, t))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut TenantSnapshot> {
        self.0.iter_mut().map(|(_, t)| t)
    }
}

impl std::ops::Index<&str> for TenantMap {
    type Output = TenantSnapshot;

    fn index(&self, name: &str) -> &TenantSnapshot {
        self.get(name).expect("no such tenant in the snapshot")
    }
}

/// Sorted by name; of two entries with one name the last wins, as `BTreeMap::insert` would.
/// Entries given in strictly increasing name order (the sampler's: its targets come from the
/// desired state's `BTreeMap`) are kept as given: the stable sort would allocate a scratch
/// buffer half the map's size first (issue 15: 5.4 MB a sweep at 10,000 tenants).
impl FromIterator<(String, TenantSnapshot)> for TenantMap {
    fn from_iter<I: IntoIterator<Item = (String, TenantSnapshot)>>(it: I) -> Self {
        let mut m = TenantMap::collect_in(Vec::new(), it);
        m.0.shrink_to_fit();
        m
    }
}

impl TenantMap {
    /// As `collect`, into `room` (emptied first; `into_room`), whose allocation it keeps:
    /// the sampler's snapshot of 10,000 tenants was a new 1.4 MB `Vec` a sweep, faulted in
    /// page by page (issue 15).
    pub fn collect_in(
        mut room: Vec<(String, TenantSnapshot)>,
        it: impl IntoIterator<Item = (String, TenantSnapshot)>,
    ) -> Self {
        room.clear();
        room.extend(it);
        let mut v = room;
        if !v.is_sorted_by(|a, b| a.0 < b.0) {
            // Reversed, then a stable sort: of equal names the last given comes first, and
            // `dedup_by` keeps the first of each run.
            v.reverse();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.dedup_by(|a, b| a.0 == b.0);
        }
        TenantMap(v)
    }

    /// The entries' `Vec`, emptied, for `collect_in`.
    pub fn into_room(self) -> Vec<(String, TenantSnapshot)> {
        let mut v = self.0;
        v.clear();
        v
    }
}

/// The daemon's metrics: the current snapshot plus tenantd's own instruments.
#[derive(Debug)]
pub struct Metrics {
    snapshot: RwLock<Arc<Snapshot>>,
    /// The egress counters, refreshed before each scrape (`set_egress`).
    egress: RwLock<Arc<EgressSnapshot>>,
    pub sweep_seconds: Histogram,
    pub db_write_seconds: Histogram,
    pub placement_latency: Histogram,
    pub reconcile_corrections: Counter,
    pub reconcile_errors: Counter,
    pub sampler_errors: Counter,
    pub http_connections: Gauge,
    pub http_connections_refused: Counter,
    pub http_connections_evicted: Counter,
    pub processes_placed: TenantCounters,
    pub processes_not_placed: TenantCounters,
    tenants: Gauge,
    /// The size of the last render, to allocate the next one in one go.
    render_len: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            egress: RwLock::new(Arc::new(EgressSnapshot::default())),
            sweep_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            db_write_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            // 0.5 ms to 5 s in 1-2-5 steps: 10 ms (issue 17's p99 target) is a bound, so the
            // share placed within it is one bucket's count.
            placement_latency: Histogram::new([
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            reconcile_corrections: Counter::default(),
            reconcile_errors: Counter::default(),
            sampler_errors: Counter::default(),
            http_connections: Gauge::default(),
            http_connections_refused: Counter::default(),
            http_connections_evicted: Counter::default(),
            processes_placed: TenantCounters::default(),
            processes_not_placed: TenantCounters::default(),
            tenants: Gauge::default(),
            render_len: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    /// Metrics exposing the governor's reconcile counters (`Governor::reconcile_counters`),
    /// which every reconcile pass increments, whoever started it.
    pub fn with_reconcile_counters(corrections: Counter, errors: Counter) -> Arc<Self> {
        Arc::new(Metrics {
            reconcile_corrections: corrections,
            reconcile_errors: errors,
            ..Metrics::default()
        })
    }

    /// Metrics exposing the governor's reconcile counters and its placement counters
    /// (`Governor::reconcile_counters`, `Governor::placement_counters`).
    pub fn with_engine_counters(
        (corrections, errors): (Counter, Counter),
        (placed, not_placed): (TenantCounters, TenantCounters),
    ) -> Arc<Self> {
        Arc::new(Metrics {
            reconcile_corrections: corrections,
            reconcile_errors: errors,
            processes_placed: placed,
            processes_not_placed: not_placed,
            ..Metrics::default()
        })
    }

    /// Replaces the snapshot.
    pub fn set_snapshot(&self, s: Snapshot) {
        self.replace_snapshot(s);
    }

    /// Replaces the snapshot (the sampler does once per sweep). Returns the one it replaced,
    /// which a scrape may still hold.
    pub fn replace_snapshot(&self, s: Snapshot) -> Arc<Snapshot> {
        self.tenants.set(s.tenants.len() as i64);
        let s = Arc::new(s);
        match self.snapshot.write() {
            Ok(mut g) => std::mem::replace(&mut *g, s),
            Err(p) => std::mem::replace(&mut *p.into_inner(), s),
        }
    }

    /// Replaces the egress counters (the API does before it renders a scrape).
    pub fn set_egress(&self, e: EgressSnapshot) {
        let e = Arc::new(e);
        match self.egress.write() {
            Ok(mut g) => *g = e,
            Err(p) => *p.into_inner() = e,
        }
    }

    fn egress(&self) -> Arc<EgressSnapshot> {
        match self.egress.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// tenantd's own instruments (the per-tenant families are added by `registry`, or
    /// written by `render`'s fast path).
    fn own_registry(&self) -> Registry {
        let mut r = Registry::default();
        reg(&mut r, "tenantd_tenants", self.tenants.clone());
        reg(
            &mut r,
            "tenantd_sweep_duration_seconds",
            self.sweep_seconds.clone(),
        );
        reg(
            &mut r,
            "tenantd_db_write_duration_seconds",
            self.db_write_seconds.clone(),
        );
        reg(
            &mut r,
            "tenantd_placement_latency_seconds",
            self.placement_latency.clone(),
        );
        reg(
            &mut r,
            "tenantd_reconcile_corrections",
            self.reconcile_corrections.clone(),
        );
        reg(
            &mut r,
            "tenantd_reconcile_errors",
            self.reconcile_errors.clone(),
        );
        reg(
            &mut r,
            "tenantd_sampler_errors",
            self.sampler_errors.clone(),
        );
        reg(
            &mut r,
            "tenantd_http_connections",
            self.http_connections.clone(),
        );
        reg(
            &mut r,
            "tenantd_http_connections_refused",
            self.http_connections_refused.clone(),
        );
        reg(
            &mut r,
            "tenantd_http_connections_evicted",
            self.http_connections_evicted.clone(),
        );
        reg(
            &mut r,
            "tenantd_processes_placed",
            self.processes_placed.clone(),
        );
        reg(
            &mut r,
            "tenantd_processes_not_placed",
            self.processes_not_placed.clone(),
        );
        reg(
            &mut r,
            "tenantd_build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r
    }

    /// Every metric through prometheus-client, the per-tenant families as a collector (the
    /// reference the fast path is tested against).
    #[cfg(test)]
    fn registry(&self) -> Registry {
        let mut r = self.own_registry();
        r.register_collector(Box::new(TenantCollector(self.snapshot(), self.egress())));
        r
    }

    /// The OpenMetrics text of the current snapshot and instruments (ends with `# EOF`):
    /// byte for byte what prometheus-client renders from `registry()` (a test checks), with
    /// the per-tenant families written directly (`Text`) into one string sized like the last.
    pub fn render(&self) -> String {
        self.render_as(Format::OpenMetrics)
    }

    /// The current snapshot and instruments in `format`, through the same fast path: the
    /// handful of own instruments through prometheus-client's encoder for that format, the
    /// per-tenant families written directly. Byte for byte what prometheus-client renders from
    /// `registry()` in either format (tests check both).
    pub fn render_as(&self, format: Format) -> String {
        self.write(format, true, &self.snapshot(), &self.egress())
    }

    /// Only the per-tenant series of the tenants `keep` accepts, and none of tenantd's own
    /// instruments (for a token scoped to a subtree of tenants). Every family's descriptor
    /// is still written.
    pub fn render_tenants(&self, format: Format, keep: impl Fn(&str) -> bool) -> String {
        let (snap, egress) = self.only(keep);
        self.write(format, false, &snap, &egress)
    }

    /// `render_as` (`keep` none) or `render_tenants` (only the tenants `keep` accepts) in
    /// pieces of about `chunk` bytes, each handed to `send` once full (the last shorter), so
    /// that a scrape never holds the whole body (12.4 MB at 10,000 tenants: each scrape was
    /// the daemon's memory peak, issue 15, target 4). Stops when `send` returns false (the
    /// client went away). The pieces together are byte for byte the string `render_as` or
    /// `render_tenants` makes (a test checks).
    pub fn render_chunks(
        &self,
        format: Format,
        keep: Option<&dyn Fn(&str) -> bool>,
        chunk: usize,
        send: &mut dyn FnMut(String) -> bool,
    ) {
        // A piece ends after the line that filled it: room for a few more.
        let room = chunk.saturating_add(4096).min(1 << 20);
        let mut out = String::with_capacity(room);
        let mut flush = |out: &mut String| -> fmt::Result {
            let piece = std::mem::replace(out, String::with_capacity(room));
            if send(piece) { Ok(()) } else { Err(fmt::Error) }
        };
        let r = match keep {
            None => {
                let (snap, egress) = (self.snapshot(), self.egress());
                self.write_to(format, true, &snap, &egress, &mut out, chunk, &mut flush)
            }
            Some(keep) => {
                let (snap, egress) = self.only(keep);
                self.write_to(format, false, &snap, &egress, &mut out, chunk, &mut flush)
            }
        };
        if r.is_ok() && !out.is_empty() {
            let _ = flush(&mut out);
        }
    }

    /// The snapshot and egress counters of the tenants `keep` accepts.
    fn only(&self, keep: impl Fn(&str) -> bool) -> (Snapshot, EgressSnapshot) {
        let snap = self.snapshot();
        let only = Snapshot {
            tenants: snap
                .tenants
                .iter()
                .filter(|(n, _)| keep(n))
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect(),
        };
        let e = self.egress();
        let egress = EgressSnapshot {
            counts: e
                .counts
                .iter()
                .filter(|c| keep(&c.tenant))
                .cloned()
                .collect(),
            in_force: e
                .in_force
                .iter()
                .filter(|(t, _)| keep(t))
                .cloned()
                .collect(),
        };
        (only, egress)
    }

    /// The whole text in one string, sized like the last.
    fn write(&self, format: Format, own: bool, snap: &Snapshot, egress: &EgressSnapshot) -> String {
        let mut out = String::with_capacity(self.render_len.load(Ordering::Relaxed) + 4096);
        // Writing to a String cannot fail, and neither encoder fails otherwise.
        let never = &mut |_: &mut String| Ok(());
        let _ = self.write_to(format, own, snap, egress, &mut out, usize::MAX, never);
        if own {
            self.render_len.store(out.len(), Ordering::Relaxed);
        }
        out
    }

    /// Writes the text to `out`, calling `flush` (which empties it) whenever it holds `chunk`
    /// bytes or more after a sample; an error of `flush` stops the writing. The registry
    /// writes its metrics before its collectors: own instruments first, then tenants.
    #[allow(clippy::too_many_arguments)]
    fn write_to(
        &self,
        format: Format,
        own: bool,
        snap: &Snapshot,
        egress: &EgressSnapshot,
        out: &mut String,
        chunk: usize,
        flush: &mut dyn FnMut(&mut String) -> fmt::Result,
    ) -> fmt::Result {
        use prometheus_client::encoding::{prometheus_text, text};
        if own {
            let r = self.own_registry();
            match format {
                Format::OpenMetrics => text::encode_registry(out, &r)?,
                Format::Text => prometheus_text::encode(out, &r)?,
            };
        }
        let mut sink = Text {
            out,
            format,
            chunk,
            flush,
        };
        tenant_families(snap, egress, &mut sink)?;
        if format == Format::OpenMetrics {
            text::encode_eof(out)?;
        }
        Ok(())
    }

    /// The same through prometheus-client's encoder alone (the reference for `render`).
    #[cfg(test)]
    fn render_reference(&self, format: Format) -> String {
        use prometheus_client::encoding::{prometheus_text, text};
        let mut out = String::new();
        let _ = match format {
            Format::OpenMetrics => text::encode(&mut out, &self.registry()),
            Format::Text => prometheus_text::encode(&mut out, &self.registry()),
        };
        out
    }
}

/// Registers `m` under its `METRICS` entry.
fn reg(r: &mut Registry, name: &str, m: impl Metric) {
    let d = def(name);
    match d.unit {
        Some(u) => r.register_with_unit(d.stem(), d.help, Unit::Other(u.into()), m),
        None => r.register(d.stem(), d.help, m),
    }
}

/// A sample value: integers stay exact.
#[derive(Clone, Copy)]
enum V {
    U(u64),
    F(f64),
}

fn usec_to_s(v: Option<u64>) -> Option<V> {
    v.map(|us| V::F(us as f64 / 1e6))
}

fn u(v: Option<u64>) -> Option<V> {
    v.map(V::U)
}

fn limit(l: Option<Limit>) -> Option<V> {
    l.and_then(Limit::value).map(V::U)
}

/// Renders the per-tenant families from one snapshot (for the reference encoding).
#[cfg(test)]
#[derive(Debug)]
struct TenantCollector(Arc<Snapshot>, Arc<EgressSnapshot>);

/// Where the per-tenant families go: prometheus-client's encoder (the reference the fast
/// path is tested against) or `Text`, which writes the same lines straight into one `String`.
trait FamilySink {
    /// Writes one family: `rows` yields (label values, value) for every series.
    fn family<'a, const N: usize>(
        &mut self,
        d: &MetricDef,
        rows: impl Iterator<Item = ([&'a str; N], Option<V>)>,
    ) -> fmt::Result;
}

impl FamilySink for DescriptorEncoder<'_> {
    fn family<'a, const N: usize>(
        &mut self,
        d: &MetricDef,
        rows: impl Iterator<Item = ([&'a str; N], Option<V>)>,
    ) -> fmt::Result {
        let unit = d.unit.map(|u| Unit::Other(u.into()));
        let ty = match d.kind {
            Kind::Counter => MetricType::Counter,
            _ => MetricType::Gauge,
        };
        // The registry ends help texts with a period; do the same here.
        let help = format!("{}.", d.help);
        let mut m = self.encode_descriptor(d.stem(), &help, unit.as_ref(), ty)?;
        for (values, v) in rows {
            let Some(v) = v else { continue };
            let labels: [(&str, &str); N] = std::array::from_fn(|i| (d.labels[i], values[i]));
            let mut f = m.encode_family(&labels)?;
            match (d.kind, v) {
                (Kind::Counter, V::U(x)) => f.encode_counter::<NoLabelSet, _, u64>(&x, None)?,
                (Kind::Counter, V::F(x)) => f.encode_counter::<NoLabelSet, _, f64>(&x, None)?,
                (_, V::U(x)) => f.encode_gauge(&x)?,
                (_, V::F(x)) => f.encode_gauge(&x)?,
            }
        }
        Ok(())
    }
}

/// The text of the per-tenant families in either format, written directly: the bytes
/// prometheus-client's encoders write (`itoa` for integers, `dtoa` for floats, label values
/// escaped the same way), without their per-series bookkeeping. For 10,000 tenants (about
/// 340,000 series) this is what keeps a scrape fast. The formats differ only in the
/// descriptor (0.0.4 names a counter family with `_total` and has no `# UNIT`) and in how a
/// non-finite float is spelled.
struct Text<'o> {
    out: &'o mut String,
    format: Format,
    /// `flush` is called once `out` holds this many bytes after a sample or a family's header.
    chunk: usize,
    flush: &'o mut dyn FnMut(&mut String) -> fmt::Result,
}

impl Text<'_> {
    /// A label value, escaped as both formats want: backslash, double quote, newline.
    fn label_value(&mut self, v: &str) {
        if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
            self.out.push_str(v);
            return;
        }
        for c in v.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '"' => self.out.push_str("\\\""),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
    }
}

impl FamilySink for Text<'_> {
    fn family<'a, const N: usize>(
        &mut self,
        d: &MetricDef,
        rows: impl Iterator<Item = ([&'a str; N], Option<V>)>,
    ) -> fmt::Result {
        let (counter, ty) = match d.kind {
            Kind::Counter => (true, "counter"),
            _ => (false, "gauge"),
        };
        let om = self.format == Format::OpenMetrics;
        // 0.0.4 names the family as its samples are named: a counter's with `_total`.
        let total = if counter && !om { "_total" } else { "" };
        for p in [
            "# HELP ",
            d.name,
            total,
            " ",
            d.help,
            ".\n# TYPE ",
            d.name,
            total,
            " ",
            ty,
            "\n",
        ] {
            self.out.push_str(p);
        }
        if let (Some(u), true) = (d.unit, om) {
            for p in ["# UNIT ", d.name, " ", u, "\n"] {
                self.out.push_str(p);
            }
        }
        if self.out.len() >= self.chunk {
            (self.flush)(self.out)?;
        }
        let (mut ints, mut floats) = (itoa::Buffer::new(), dtoa::Buffer::new());
        for (values, v) in rows {
            let Some(v) = v else { continue };
            self.out.push_str(d.name);
            if counter {
                self.out.push_str("_total");
            }
            for (i, value) in values.iter().enumerate() {
                self.out.push_str(if i == 0 { "{" } else { "," });
                self.out.push_str(d.labels[i]);
                self.out.push_str("=\"");
                self.label_value(value);
                self.out.push('"');
            }
            if N > 0 {
                self.out.push('}');
            }
            self.out.push(' ');
            self.out.push_str(match v {
                V::U(x) => ints.format(x),
                V::F(x) if om || x.is_finite() => floats.format(x),
                // The 0.0.4 encoder spells these as Go does.
                V::F(x) if x.is_nan() => "NaN",
                V::F(x) if x > 0.0 => "+Inf",
                V::F(_) => "-Inf",
            });
            self.out.push('\n');
            if self.out.len() >= self.chunk {
                (self.flush)(self.out)?;
            }
        }
        Ok(())
    }
}

/// Writes every per-tenant family of `snap` to `sink`, in the order of `METRICS`.
fn tenant_families<S: FamilySink>(
    snap: &Snapshot,
    egress: &EgressSnapshot,
    sink: &mut S,
) -> fmt::Result {
    let ts = &snap.tenants;
    let per = |sink: &mut S, name: &str, f: &dyn Fn(&TenantSnapshot) -> Option<V>| {
        sink.family(def(name), ts.iter().map(|(n, t)| ([n.as_str()], f(t))))
    };
    per(sink, "tenantd_tenant_cpu_usage_seconds", &|t| {
        usec_to_s(t.stats.cpu.usage_usec)
    })?;
    per(sink, "tenantd_tenant_cpu_user_seconds", &|t| {
        usec_to_s(t.stats.cpu.user_usec)
    })?;
    per(sink, "tenantd_tenant_cpu_system_seconds", &|t| {
        usec_to_s(t.stats.cpu.system_usec)
    })?;
    per(sink, "tenantd_tenant_cpu_throttled_seconds", &|t| {
        usec_to_s(t.stats.cpu.throttled_usec)
    })?;
    per(sink, "tenantd_tenant_cpu_throttled_periods", &|t| {
        u(t.stats.cpu.nr_throttled)
    })?;
    per(sink, "tenantd_tenant_cpu_periods", &|t| {
        u(t.stats.cpu.nr_periods)
    })?;
    per(sink, "tenantd_tenant_memory_current_bytes", &|t| {
        u(t.stats.memory_current)
    })?;
    per(sink, "tenantd_tenant_memory_working_set_bytes", &|t| {
        u(t.stats.working_set())
    })?;
    per(sink, "tenantd_tenant_memory_peak_bytes", &|t| {
        u(t.stats.memory_peak)
    })?;
    per(sink, "tenantd_tenant_memory_oom_kills", &|t| {
        u(t.stats.memory_events.oom_kill)
    })?;
    sink.family(
        def("tenantd_tenant_memory_events"),
        ts.iter().flat_map(|(n, t)| {
            let e = &t.stats.memory_events;
            [
                ("low", e.low),
                ("high", e.high),
                ("max", e.max),
                ("oom", e.oom),
            ]
            .map(|(k, v)| ([n.as_str(), k], u(v)))
        }),
    )?;
    let devs: Vec<(&str, String, &IoDevStat)> = ts
        .iter()
        .flat_map(|(n, t)| {
            t.stats.io.iter().map(move |d| {
                (
                    n.as_str(),
                    format!("{}:{}", d.device.major, d.device.minor),
                    d,
                )
            })
        })
        .collect();
    for (name, pick) in [
        ("tenantd_tenant_io_read_bytes", 0usize),
        ("tenantd_tenant_io_write_bytes", 1),
        ("tenantd_tenant_io_read_ops", 2),
        ("tenantd_tenant_io_write_ops", 3),
    ] {
        let rows = devs.iter().map(|(n, dev, d)| {
            (
                [*n, dev.as_str()],
                u([d.rbytes, d.wbytes, d.rios, d.wios][pick]),
            )
        });
        sink.family(def(name), rows)?;
    }
    sink.family(
        def("tenantd_tenant_io_device_time_seconds"),
        devs.iter()
            .map(|(n, dev, d)| ([*n, dev.as_str()], usec_to_s(d.cost_usage_usec))),
    )?;
    per(sink, "tenantd_tenant_pids_current", &|t| {
        u(t.stats.pids_current)
    })?;
    per(sink, "tenantd_tenant_pids_limit_hits", &|t| {
        u(t.stats.pids_max_events)
    })?;
    sink.family(
        def("tenantd_tenant_pressure_stall_seconds"),
        ts.iter().flat_map(|(n, t)| {
            let s = &t.stats;
            let p = |x: Option<PressureTotals>| x.unwrap_or_default();
            let (c, m, i) = (p(s.cpu_pressure), p(s.memory_pressure), p(s.io_pressure));
            [
                ("cpu", "some", c.some_usec),
                ("cpu", "full", c.full_usec),
                ("memory", "some", m.some_usec),
                ("memory", "full", m.full_usec),
                ("io", "some", i.some_usec),
                ("io", "full", i.full_usec),
            ]
            .map(|(r, k, v)| ([n.as_str(), r, k], usec_to_s(v)))
        }),
    )?;
    let pct = |p: Option<crate::domain::units::Percent>| p.map(|p| V::F(p.0 / 100.0));
    per(sink, "tenantd_tenant_cpu_guarantee_ratio", &|t| {
        pct(t.spec.cpu.guarantee_pct)
    })?;
    per(sink, "tenantd_tenant_cpu_limit_cores", &|t| {
        pct(t.spec.cpu.limit_pct)
    })?;
    per(sink, "tenantd_tenant_memory_guarantee_bytes", &|t| {
        t.spec.memory.guarantee_bytes.map(|b| V::U(b.0))
    })?;
    per(sink, "tenantd_tenant_memory_high_bytes", &|t| {
        t.spec.memory.high_bytes.map(|b| V::U(b.0))
    })?;
    per(sink, "tenantd_tenant_memory_limit_bytes", &|t| {
        t.spec.memory.limit_bytes.map(|b| V::U(b.0))
    })?;
    per(sink, "tenantd_tenant_io_guarantee_ratio", &|t| {
        pct(t.spec.io.guarantee_pct)
    })?;
    per(sink, "tenantd_tenant_pids_limit", &|t| {
        limit(t.spec.pids.limit.map(Limit::Value))
    })?;
    per(sink, "tenantd_tenant_sla_contended_seconds", &|t| {
        t.sla.map(|s| V::F(s.contended_s))
    })?;
    per(sink, "tenantd_tenant_sla_violation_seconds", &|t| {
        t.sla.map(|s| V::F(s.violation_s))
    })?;
    per(sink, "tenantd_tenant_sla_violations", &|t| {
        t.sla.map(|s| V::U(s.violations))
    })?;
    per(sink, "tenantd_tenant_sla_io_contended_seconds", &|t| {
        t.sla.map(|s| V::F(s.io_contended_s))
    })?;
    per(sink, "tenantd_tenant_sla_io_violation_seconds", &|t| {
        t.sla.map(|s| V::F(s.io_violation_s))
    })?;
    per(sink, "tenantd_tenant_sla_attainment_ratio", &|t| {
        t.sla.map(|s| V::F(s.attainment_ratio()))
    })?;
    per(sink, "tenantd_tenant_cpu_delivered_share_ratio", &|t| {
        t.sla.and_then(|s| s.delivered_ratio).map(V::F)
    })?;
    per(sink, "tenantd_tenant_io_delivered_share_ratio", &|t| {
        t.sla.and_then(|s| s.io_delivered_ratio).map(V::F)
    })?;
    for (name, bytes) in [
        ("tenantd_tenant_egress_packets", false),
        ("tenantd_tenant_egress_bytes", true),
    ] {
        sink.family(
            def(name),
            egress.counts.iter().map(|c| {
                (
                    [
                        c.tenant.as_str(),
                        c.rule.as_str(),
                        c.destination.as_str(),
                        c.verdict.as_str(),
                    ],
                    Some(V::U(if bytes { c.bytes } else { c.packets })),
                )
            }),
        )?;
    }
    sink.family(
        def("tenantd_tenant_egress_in_force"),
        egress
            .in_force
            .iter()
            .map(|(t, f)| ([t.as_str()], Some(V::U(u64::from(*f))))),
    )?;
    per(sink, "tenantd_tenant_memory_protection_breaches", &|t| {
        t.sla.map(|s| V::U(s.memory_breaches))
    })?;
    Ok(())
}

#[cfg(test)]
impl Collector for TenantCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        tenant_families(&self.0, &self.1, &mut enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::stats::{CpuStat, MemoryEvents};
    use crate::domain::tenant::DevId;
    use crate::domain::units::{Bytes, Percent};

    fn assert_contains_all(text: &str, wants: &[&str]) {
        for want in wants {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    pub fn snapshot(n: usize) -> Snapshot {
        let mut s = Snapshot::default();
        for i in 0..n {
            let mut spec = TenantSpec::default();
            spec.cpu.guarantee_pct = Some(Percent(25.0));
            spec.cpu.limit_pct = Some(Percent(150.0));
            spec.memory.limit_bytes = Some(Bytes(1 << 30));
            spec.pids.limit = Some(100);
            let stats = CgroupStats {
                cpu: CpuStat {
                    usage_usec: Some(1_500_000 + i as u64),
                    user_usec: Some(1_000_000),
                    system_usec: Some(500_000),
                    ..Default::default()
                },
                memory_current: Some(4096),
                memory_events: MemoryEvents {
                    oom_kill: Some(1),
                    high: Some(2),
                    ..Default::default()
                },
                io: vec![
                    IoDevStat {
                        rbytes: Some(10),
                        wbytes: Some(20),
                        rios: Some(1),
                        wios: Some(2),
                        ..IoDevStat::new(DevId { major: 8, minor: 0 })
                    },
                    IoDevStat {
                        rbytes: Some(30),
                        cost_usage_usec: Some(1_500_000),
                        ..IoDevStat::new(DevId {
                            major: 254,
                            minor: 0,
                        })
                    },
                ],
                pids_current: Some(3),
                cpu_pressure: Some(PressureTotals {
                    some_usec: Some(2_000_000),
                    full_usec: None,
                }),
                ..Default::default()
            };
            s.tenants.insert(
                format!("t{i}"),
                TenantSnapshot {
                    stats: stats.into(),
                    spec: spec.into(),
                    sla: None,
                },
            );
        }
        s
    }

    /// Issue 15: the snapshot's map is a sorted `Vec` that answers as the `BTreeMap` it
    /// replaced did: in name order, found by name, the last of two entries of one name kept.
    #[test]
    fn the_tenant_map_is_sorted_and_keeps_the_last_entry_of_a_name() {
        let t = |usage: u64| TenantSnapshot {
            stats: CgroupStats {
                cpu: CpuStat {
                    usage_usec: Some(usage),
                    ..Default::default()
                },
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        let given = [("b", 1), ("a", 2), ("c", 3), ("a", 4), ("b", 5)];
        let mut m: TenantMap = given.iter().map(|&(n, u)| (n.to_string(), t(u))).collect();
        let usage = |m: &TenantMap| -> Vec<(String, u64)> {
            m.iter()
                .map(|(n, t)| (n.clone(), t.stats.cpu.usage_usec.unwrap()))
                .collect()
        };
        let want = [("a", 4), ("b", 5), ("c", 3)].map(|(n, u)| (n.to_string(), u));
        assert_eq!(usage(&m), want);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get("b").unwrap().stats.cpu.usage_usec, Some(5));
        assert!(m.get("d").is_none());
        assert_eq!(m["c"].stats.cpu.usage_usec, Some(3));
        m.insert("aa".into(), t(6));
        m.insert("c".into(), t(7));
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "aa", "b", "c"]);
        assert_eq!(m["c"].stats.cpu.usage_usec, Some(7));
        assert!(TenantMap::default().is_empty());
        // Given in name order (the sampler's way), kept as given.
        let sorted: TenantMap = [("a", 1), ("b", 2)]
            .iter()
            .map(|&(n, u)| (n.to_string(), t(u)))
            .collect();
        let want = [("a", 1), ("b", 2)].map(|(n, u)| (n.to_string(), u));
        assert_eq!(usage(&sorted), want);
        // Collected in the room of another map: its allocation, the same entries.
        let room = m.into_room();
        let (at, cap) = (room.as_ptr(), room.capacity());
        assert!(room.is_empty() && cap >= 4);
        let again = TenantMap::collect_in(
            room,
            [("b", 2), ("a", 1)].map(|(n, u)| (n.to_string(), t(u))),
        );
        assert_eq!(usage(&again), want, "sorted like collect");
        let v = again.into_room();
        assert_eq!((v.as_ptr(), v.capacity()), (at, cap));
    }

    #[test]
    fn every_name_follows_the_rules_and_appears_once() {
        let mut seen = std::collections::BTreeSet::new();
        for d in METRICS {
            assert!(d.name.starts_with("tenantd_"), "{}", d.name);
            assert!(seen.insert(d.name), "{} twice", d.name);
            assert!(
                !d.name.ends_with("_total"),
                "{}: the encoder adds _total",
                d.name
            );
            if let Some(u) = d.unit {
                assert!(
                    d.name.ends_with(&format!("_{u}")),
                    "{} must end in its unit",
                    d.name
                );
            }
            assert!(
                !d.name.contains("percent") && !d.name.contains("milli"),
                "{}: base units only",
                d.name
            );
        }
    }

    #[test]
    fn renders_openmetrics_from_the_current_snapshot() {
        let m = Metrics::new();
        m.set_snapshot(snapshot(2));
        m.reconcile_corrections.inc();
        // A labelled family is written once it has a series (the placer makes them).
        m.processes_placed
            .get_or_create(&vec![("tenant".into(), "t0".into())])
            .inc_by(3);
        m.processes_not_placed
            .get_or_create(&vec![
                ("tenant".into(), "t1".into()),
                ("reason".into(), "delegated".into()),
            ])
            .inc();
        let text = m.render();
        assert!(text.ends_with("# EOF\n"));
        for line in [
            "tenantd_tenant_cpu_usage_seconds_total{tenant=\"t0\"} 1.5",
            "tenantd_tenant_io_read_bytes_total{tenant=\"t1\",device=\"254:0\"} 30",
            "tenantd_tenant_io_write_ops_total{tenant=\"t0\",device=\"8:0\"} 2",
            "tenantd_tenant_io_device_time_seconds_total{tenant=\"t1\",device=\"254:0\"} 1.5",
            "tenantd_tenant_pressure_stall_seconds_total{tenant=\"t0\",resource=\"cpu\",kind=\"some\"} 2.0",
            "tenantd_tenant_memory_events_total{tenant=\"t0\",event=\"high\"} 2",
            "tenantd_tenant_cpu_guarantee_ratio{tenant=\"t0\"} 0.25",
            "tenantd_tenant_cpu_limit_cores{tenant=\"t0\"} 1.5",
            "tenantd_tenant_memory_limit_bytes{tenant=\"t1\"} 1073741824",
            "tenantd_tenants 2",
            "tenantd_reconcile_corrections_total 1",
            "tenantd_processes_placed_total{tenant=\"t0\"} 3",
            "tenantd_processes_not_placed_total{tenant=\"t1\",reason=\"delegated\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Every family in the output is in METRICS, and every METRICS name is in the output.
        let families: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let names: std::collections::BTreeSet<&str> = METRICS.iter().map(|d| d.name).collect();
        assert_eq!(families, names);
        // A deleted tenant disappears at the next scrape.
        m.set_snapshot(snapshot(1));
        assert!(
            !m.render()
                .lines()
                .any(|l| l.starts_with("tenantd_tenant_") && l.contains("tenant=\"t1\""))
        );
    }

    /// `render` writes the per-tenant families itself; its bytes must be exactly those of
    /// prometheus-client's encoder, for integers, floats (large, small, fractional, NaN),
    /// absent values, every family and a label value that needs escaping.
    #[test]
    fn render_is_byte_for_byte_the_prometheus_client_encoding() {
        let m = Metrics::new();
        let mut s = snapshot(4);
        for (i, t) in s.tenants.values_mut().enumerate() {
            t.stats.memory_peak = Some(u64::MAX - i as u64);
            t.stats.cpu.throttled_usec = Some(123_456_789_012_345 * i as u64 + 7);
            t.stats.io_pressure = Some(PressureTotals {
                some_usec: Some(1),
                full_usec: Some(0),
            });
            t.sla = Some(SlaTotals {
                contended_s: 1.0 / 3.0 + i as f64,
                violation_s: 1e-9 * i as f64,
                violations: i as u64,
                memory_breaches: 2,
                delivered_ratio: [None, Some(0.1), Some(f64::NAN), Some(1e21)][i],
                io_contended_s: 0.5 * i as f64,
                io_delivered_ratio: [None, Some(0.75), Some(0.0), Some(1.0)][i],
                ..Default::default()
            });
            std::sync::Arc::make_mut(&mut t.spec).memory.guarantee_bytes = Some(Bytes(3 << 20));
        }
        let odd = s.tenants["t1"].clone();
        s.tenants.insert("we\\ird\"name\n".into(), odd);
        m.set_snapshot(s);
        m.sweep_seconds.observe(0.01);
        m.placement_latency.observe(0.003);
        m.sampler_errors.inc();
        let (fast, reference) = (m.render(), m.render_reference(Format::OpenMetrics));
        assert_contains_all(
            &fast,
            &[
                "tenantd_placement_latency_seconds_bucket{le=\"0.002\"} 0\n",
                "tenantd_placement_latency_seconds_bucket{le=\"0.005\"} 1\n",
                "tenantd_placement_latency_seconds_bucket{le=\"0.01\"} 1\n",
                "tenantd_placement_latency_seconds_bucket{le=\"1.0\"} 1\n",
            ],
        );
        assert!(fast.contains("tenant=\"we\\\\ird\\\"name\\n\""), "{fast}");
        assert_eq!(fast, reference);
        // The 0.0.4 text comes from the same fast path, and is prometheus-client's 0.0.4
        // encoding byte for byte (NaN and the escaped label value included).
        let text = m.render_as(Format::Text);
        assert_eq!(text, m.render_reference(Format::Text));
        assert_contains_all(
            &text,
            &[
                "# TYPE tenantd_tenant_cpu_usage_seconds_total counter\n",
                "# TYPE tenantd_build_info gauge\n",
                "tenantd_build_info{version=",
                "tenantd_tenant_cpu_delivered_share_ratio{tenant=\"t2\"} NaN\n",
            ],
        );
        for unwanted in ["# EOF", "# UNIT", "_created", " info\n"] {
            assert!(!text.contains(unwanted), "{unwanted:?} in\n{text}");
        }
        // An empty snapshot still writes every family's descriptor.
        m.set_snapshot(Snapshot::default());
        assert_eq!(m.render(), m.render_reference(Format::OpenMetrics));
        assert_eq!(m.render_as(Format::Text), m.render_reference(Format::Text));
    }

    /// Infinite values: the 0.0.4 text spells them `+Inf`/`-Inf` like Go (and the encoder).
    #[test]
    fn non_finite_values_match_the_reference_in_both_formats() {
        let m = Metrics::new();
        let mut s = snapshot(2);
        for (i, t) in s.tenants.values_mut().enumerate() {
            t.sla = Some(SlaTotals {
                delivered_ratio: Some([f64::INFINITY, f64::NEG_INFINITY][i]),
                ..Default::default()
            });
        }
        m.set_snapshot(s);
        let text = m.render_as(Format::Text);
        assert!(text.contains("{tenant=\"t0\"} +Inf\n"), "{text}");
        assert!(text.contains("{tenant=\"t1\"} -Inf\n"), "{text}");
        assert_eq!(text, m.render_reference(Format::Text));
        assert_eq!(m.render(), m.render_reference(Format::OpenMetrics));
    }

    /// A scoped render has only the kept tenants' series and none of tenantd's own.
    #[test]
    fn render_tenants_keeps_only_the_named_tenants() {
        let m = Metrics::new();
        m.set_snapshot(snapshot(3));
        for format in [Format::Text, Format::OpenMetrics] {
            let text = m.render_tenants(format, |n| n == "t1");
            assert!(text.contains("{tenant=\"t1\"}"), "{text}");
            assert!(
                !text.contains("\"t0\"") && !text.contains("\"t2\""),
                "{text}"
            );
            for own in [
                "tenantd_tenants ",
                "tenantd_build",
                "tenantd_sweep_duration",
            ] {
                assert!(!text.contains(own), "{own} in a scoped render:\n{text}");
            }
            assert_eq!(text.ends_with("# EOF\n"), format == Format::OpenMetrics);
        }
    }

    /// The pieces `GET /metrics` sends are, put together, the very text `render_as` and
    /// `render_tenants` make; none after the first is much longer than asked (one sample line
    /// or family header past it); and
    /// a send that fails (the client went away) stops the rendering.
    #[test]
    fn render_chunks_is_the_render_in_pieces() {
        let m = Metrics::new();
        m.set_snapshot(snapshot(40));
        let keep = |n: &str| n == "t1" || n == "t7";
        for format in [Format::Text, Format::OpenMetrics] {
            for (filter, whole) in [
                (None, m.render_as(format)),
                (
                    Some(&keep as &dyn Fn(&str) -> bool),
                    m.render_tenants(format, keep),
                ),
            ] {
                for chunk in [1, 100, 4096, usize::MAX] {
                    let mut pieces = Vec::new();
                    m.render_chunks(format, filter, chunk, &mut |p| {
                        pieces.push(p);
                        true
                    });
                    assert_eq!(pieces.concat(), whole, "chunk {chunk}");
                    // The own instruments (some kB) are encoded at once, in the first.
                    let longest = pieces[1..].iter().map(String::len).max().unwrap_or(0);
                    if chunk == 4096 {
                        assert!(pieces.len() > 2, "{} pieces", pieces.len());
                        assert!(longest < chunk + 512, "a piece of {longest} bytes");
                    }
                }
            }
        }
        let mut sent = 0;
        m.render_chunks(Format::Text, None, 100, &mut |_| {
            sent += 1;
            sent < 3
        });
        assert_eq!(sent, 3, "nothing rendered after the failed send");
    }

    /// The Go client's negotiation: q-values order, q=0 refuses, the default is 0.0.4 text.
    #[test]
    fn negotiates_like_the_go_client() {
        use Format::{OpenMetrics as Om, Text as Tx};
        for (accept, want) in [
            (None, Tx),
            (Some(""), Tx),
            (Some("*/*"), Tx),
            (Some("text/plain"), Tx),
            (Some("application/openmetrics-text"), Om),
            (Some("application/openmetrics-text; version=1.0.0"), Om),
            (Some("application/openmetrics-text;version=0.0.1"), Om),
            (Some("application/openmetrics-text;version=9.9.9"), Tx),
            (Some("application/openmetrics-text;q=0"), Tx),
            (
                Some("application/openmetrics-text;q=0, text/plain;q=0.1"),
                Tx,
            ),
            (
                Some("text/plain;q=0.5, application/openmetrics-text;q=0.6"),
                Om,
            ),
            (
                Some("text/plain;q=0.7, application/openmetrics-text;q=0.6"),
                Tx,
            ),
            (Some("text/plain, application/openmetrics-text"), Tx),
            (Some("application/openmetrics-text, text/plain"), Om),
            (Some("application/json"), Tx),
            // Prometheus 2.42's scrape.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Om,
            ),
            // Prometheus 3's default scrape protocols.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
                ),
                Om,
            ),
        ] {
            assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
        }
    }
}
