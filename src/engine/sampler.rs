//! The usage sampler: every interval, read every tenant's cgroup off the async runtime,
//! compute rates from the previous sample, record limit hits as events, write the samples in
//! one transaction, roll up closed minutes and hours once a minute, and publish the snapshot
//! `/metrics` renders.
//!
//! Each sweep reads the figures the SLA engine judges (`domain::cadence::Cadence::for_tenant`:
//! CPU, memory for a tenant with a memory guarantee, io while io guarantees are judged) of
//! every tenant, and the others as
//! `SamplerConfig::cadence` says: an idle tenant's every `idle_every` sweeps, backing off to
//! `idle_max` while it stays idle (`domain::cadence::idle_stretch`). The rows
//! and the snapshot repeat the last value of a figure not read; its rates are taken over the
//! stretch since its previous read (`usage::rates_with_cadence`).
//!
//! IO (`cgroup::stats`, `cgroup::v1_stats`) and maths (`domain::usage`) stay apart; this file
//! only wires them to the clock, the store and the metrics. `sweep_at` is the list of steps,
//! one method or function each; the pure ones (rates, rows, events, snapshot) take the
//! samples and return values. The row of a sample is the domain's (`UsageRow::from_sample`).

use super::{EngineError, Governor, Result, now_ms};
use crate::cgroup::SampleSource;
use crate::cgroup::stats::{
    FD_RESERVE_DEFAULT, StatsReader, held_per_dir, held_tenants_budget_for, sample_dir_with,
};
use crate::cgroup::subtree_watch::SubtreeWatch;
use crate::cgroup::v1_stats::{self, V1Hold, V1StatsReader};
use crate::domain::cadence::{Cadence, Figures, SLA_CPU_FIGURES, SLA_FIGURES, SLA_IO_FIGURES};
use crate::domain::event::{Event, LimitHits};
use crate::domain::sla_engine::{Input, SlaConfig, SlaEngine, Verdict};
use crate::domain::stats::Sample;
use crate::domain::tenant::TenantSpec;
use crate::domain::usage::{self, Rates};
use crate::domain::usage_row::UsageRow;
use crate::domain::{NameMap, take_room};
use crate::metrics::{Metrics, SharedStats, Snapshot, TenantMap, TenantSnapshot};
use crate::store::{MinuteRollup, NewEvent, Retention, SlaMinute};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Default time between samples.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// How often the host is asked again whether io weights take effect.
const HOST_RECHECK: Duration = Duration::from_secs(60);

/// How often old usage rows are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    pub interval: Duration,
    pub retention: Retention,
    pub sla: SlaConfig,
    /// Descriptors the sampler leaves to the rest of the daemon (connections, database,
    /// listener) when it decides how many tenants keep their stat files open.
    pub fd_reserve: usize,
    /// Which figures are read every sweep, and how often the others are; what the SLA engine
    /// judges is always added to `fresh` (`Cadence::for_tenant`).
    pub cadence: Cadence,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            interval: DEFAULT_INTERVAL,
            retention: Retention::default(),
            sla: SlaConfig::default(),
            fd_reserve: FD_RESERVE_DEFAULT,
            cadence: Cadence::default(),
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepReport {
    pub sampled: usize,
    /// Tenants whose directory was missing (being created or deleted).
    pub missing: usize,
    pub errors: usize,
    pub rows: usize,
    pub events: usize,
}

/// The reader state that moves to the blocking pool and back each sweep. The slots are
/// aligned with the `dirs` of `targets`, so a sweep looks nothing up by name.
struct Readers {
    /// The targets the slots were made for; new targets re-align them (`realign`).
    targets: Option<Arc<Targets>>,
    /// Readers of tenants on a cgroup v2 backend; empty when no target is one (`realign`).
    v2: Vec<Option<StatsReader>>,
    /// Readers of tenants on a cgroup v1 backend; empty when no target is one.
    v1: Vec<Option<V1StatsReader>>,
    buf: Vec<u8>,
    /// Tenants (the first, by name) whose fresh figures' files stay open on each backend;
    /// see `held_tenants_budget_for`.
    held_v2: usize,
    held_v1: usize,
    /// Descriptors left for the sampler's files, and how many a tenant takes on v2 when it
    /// holds the fresh figures' files and when it holds every file.
    fds: usize,
    per_tenant_v2: (usize, usize),
    /// The v1 tenants' tiers (`v1_tiers`, by slot), and what they were made for: whether io
    /// is judged, the fresh figures (`None`: made again, as when the targets change).
    tiers_v1: Vec<Tier>,
    tiers_for: Option<(bool, Figures)>,
    /// The v1 readers' inotify watch of their subtrees, made at the first v1 tenant; `Err`
    /// once the kernel refused one (the readers then walk every `WALK_EVERY` sweeps).
    watch: Option<std::result::Result<SubtreeWatch, ()>>,
}

/// Of `n` tenants, how many hold every file and how many (those first) at least the fresh
/// figures' files, with `fds` descriptors and `(fresh, all)` taken per tenant: every tenant
/// that can holds the fresh ones, and the descriptors left make the first ones hold every
/// file (issue 15: a file held is `pread`, one opened when the cadence reads it costs an
/// open, a path lookup and a close). Returns (every file, fresh files).
fn hold_tiers(n: usize, fds: usize, (fresh, all): (usize, usize)) -> (usize, usize) {
    let held = n.min(fds / fresh.max(1));
    let left = fds.saturating_sub(held * fresh);
    let every = held.min(left / all.saturating_sub(fresh).max(1));
    (every, held)
}

/// How many of its files a v1 tenant's reader keeps open (`v1_tiers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// None: every file is opened when read.
    Opened,
    /// The files a sweep reads whatever the tenant does (`V1Hold::lean`).
    Lean,
    /// The files of the fresh figures.
    Fresh,
    /// Every file.
    Every,
}

impl Tier {
    /// What a reader of this tier holds, for the fresh figures `fresh` of a tenant with or
    /// without a CPU quota of its own.
    fn hold(self, fresh: Figures, quota: bool) -> V1Hold {
        match self {
            Tier::Opened => V1Hold::NONE,
            Tier::Lean => V1Hold::lean(fresh, quota),
            Tier::Fresh => fresh.into(),
            Tier::Every => Figures::ALL.into(),
        }
    }
}

/// Descriptors a v1 tenant's lean, fresh and every-file holds take (`v1_stats::held_per_tenant`).
type HoldCosts = (usize, usize, usize);

/// The tier of each of `costs` (what its lean, fresh and every-file holds take, in
/// descriptors), in order, within `fds` descriptors: every tenant that can holds its lean
/// files (one for a tenant with neither a memory guarantee nor a CPU limit), then the
/// descriptors left raise the first ones to their fresh figures' files, then to every file
/// (issue 15: a file held is `pread`; one opened when read costs an open, a path lookup and a
/// close, and the lookup of the guard directory that tells a recreated tenant).
fn tiers_within(costs: &[HoldCosts], fds: usize) -> Vec<Tier> {
    let mut left = fds;
    let mut tiers = vec![Tier::Opened; costs.len()];
    type Cost = fn(&HoldCosts) -> usize;
    let steps: [(Tier, Tier, Cost); 3] = [
        (Tier::Opened, Tier::Lean, |c| c.0),
        (Tier::Lean, Tier::Fresh, |c| c.1.saturating_sub(c.0)),
        (Tier::Fresh, Tier::Every, |c| c.2.saturating_sub(c.1)),
    ];
    for (from, to, cost) in steps {
        for (t, c) in tiers.iter_mut().zip(costs) {
            if *t == from && cost(c) <= left {
                left -= cost(c);
                *t = to;
            }
        }
    }
    tiers
}

/// Whether a v1 tenant has a CPU quota of its own (a `limit_pct`; a tenant without a spec is
/// taken to have one, so its cpu.stat is read every sweep).
fn own_cpu_quota(spec: Option<&TenantSpec>) -> bool {
    spec.is_none_or(|s| s.cpu.limit_pct.is_some())
}

/// `tiers_within` for the v1 targets of a sweep of `cadence` (a v2 target costs nothing: its
/// reader is another one, and a host has one backend).
fn v1_tiers(targets: &Targets, cadence: &SweepCadence, fds: usize) -> Vec<Tier> {
    // Three kinds of tenant at most: memoised by (fresh figures, quota).
    let mut memo: Vec<((Figures, bool), HoldCosts)> = Vec::new();
    let costs: Vec<HoldCosts> = targets
        .dirs
        .iter()
        .map(|(name, source)| {
            if !matches!(source, SampleSource::V1 { .. }) {
                return (0, 0, 0);
            }
            let spec = targets.specs.get(name).map(|s| &**s);
            let key = (cadence.for_tenant(spec).fresh, own_cpu_quota(spec));
            if let Some((_, c)) = memo.iter().find(|(k, _)| *k == key) {
                return *c;
            }
            let c = (
                v1_stats::held_per_tenant(V1Hold::lean(key.0, key.1)),
                v1_stats::held_per_tenant(key.0),
                v1_stats::held_per_tenant(Figures::ALL),
            );
            memo.push((key, c));
            c
        })
        .collect();
    tiers_within(&costs, fds)
}

impl Readers {
    /// Readers that hold the files of `cadence.fresh` (and of the io figures the SLA may
    /// judge) for as many tenants as the descriptor limit less `reserve` allows.
    fn new(reserve: usize, cadence: &Cadence) -> Readers {
        let held = cadence.fresh.union(SLA_FIGURES).union(SLA_IO_FIGURES);
        Readers {
            targets: None,
            v2: Vec::new(),
            v1: Vec::new(),
            buf: Vec::new(),
            // The files (and the directory where they cannot tell it is gone).
            held_v2: held_tenants_budget_for(reserve, held_per_dir(held)),
            held_v1: held_tenants_budget_for(
                reserve,
                v1_stats::held_per_tenant(V1Hold::lean(
                    cadence.fresh.union(SLA_CPU_FIGURES),
                    false,
                )),
            ),
            fds: held_tenants_budget_for(reserve, 1),
            per_tenant_v2: (held_per_dir(held), held_per_dir(Figures::ALL)),
            tiers_v1: Vec::new(),
            tiers_for: None,
            watch: None,
        }
    }
}

impl Default for Readers {
    fn default() -> Self {
        Readers::new(FD_RESERVE_DEFAULT, &Cadence::default())
    }
}

impl Readers {
    /// Aligns the slots with `targets`, keeping the open readers of tenants still listed and
    /// closing those of tenants no longer listed. A backend no target is on gets no slots
    /// (issue 15, target 4: a slot is as large as its reader, and at 10,000 tenants on a v1
    /// host the empty v2 slots were 5.1 MB).
    fn realign(&mut self, targets: &Arc<Targets>) {
        let prev = self.targets.replace(targets.clone());
        let mut old: HashMap<&str, usize> = HashMap::new();
        if let Some(p) = &prev {
            old.extend(p.dirs.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)));
        }
        let (mut v2, mut v1) = (std::mem::take(&mut self.v2), std::mem::take(&mut self.v1));
        let at = |n: &String| old.get(n.as_str()).copied();
        let on_v1 = |s: &SampleSource| matches!(s, SampleSource::V1 { .. });
        if targets.dirs.iter().any(|(_, s)| !on_v1(s)) {
            self.v2 = targets
                .dirs
                .iter()
                .map(|(n, _)| at(n).and_then(|i| v2.get_mut(i)?.take()))
                .collect();
        }
        if targets.dirs.iter().any(|(_, s)| on_v1(s)) {
            let walk = subtrees_changed(prev.as_deref(), targets);
            self.v1 = targets
                .dirs
                .iter()
                .map(|(n, _)| {
                    let mut r = at(n).and_then(|i| v1.get_mut(i)?.take());
                    if let Some(r) = r.as_mut().filter(|_| walk.contains(n.as_str())) {
                        r.rewalk();
                    }
                    r
                })
                .collect();
        }
    }
}

/// The tenants whose subtree gained or lost a tenant between `prev` and `next`: the
/// ancestors of every tenant listed in one and not the other. A v1 reader walks their
/// subtrees again at once (the summed files and `tasks` of the directories below).
fn subtrees_changed<'t>(prev: Option<&'t Targets>, next: &'t Targets) -> HashSet<&'t str> {
    let mut out = HashSet::new();
    let Some(prev) = prev else {
        return out;
    };
    let mut ancestors = |specs: &'t HashMap<String, Arc<TenantSpec>>, name: &str| {
        let mut at = specs.get(name).and_then(|s| s.parent.as_ref());
        while let Some(p) = at {
            if !out.insert(p.as_str()) {
                break;
            }
            at = specs.get(p.as_str()).and_then(|s| s.parent.as_ref());
        }
    };
    for n in next.specs.keys().filter(|n| !prev.specs.contains_key(*n)) {
        ancestors(&next.specs, n);
    }
    for n in prev.specs.keys().filter(|n| !next.specs.contains_key(*n)) {
        ancestors(&prev.specs, n);
    }
    out
}

struct Last {
    /// Where its sample is in `Sampler::prev`.
    at: usize,
    ts_ms: i64,
    /// When the figures `sample` did not read were read (`None`: not seen by this sampler).
    slow_ms: Option<i64>,
    /// The rates of the last sample that read every figure: those of the figures not read
    /// since are repeated (`usage::rates_with_cadence`).
    rates: Option<Rates>,
    /// The sweep (`Sampler::sweeps`) that took it.
    sweep: u64,
}

pub struct Sampler {
    gov: Arc<Governor>,
    metrics: Arc<Metrics>,
    cfg: SamplerConfig,
    readers: Option<Readers>,
    /// Boxed: a hash table keeps about a third of its slots empty, and a slot is as large as
    /// its value (760 bytes; 12.9 MB unboxed at 10,000 tenants, 8.4 MB boxed; issue 15).
    last: NameMap<Box<Last>>,
    /// The last sweep's samples (`Last::at`), shared with the snapshot published with them.
    prev: Arc<Vec<Sample>>,
    /// The samples of the sweep before the last, emptied, for the next sweep to read into
    /// (empty when a scrape still held them): at 10,000 tenants a new `Vec` of 4.4 MB a
    /// sweep, given back to the kernel when freed (`MALLOC_MMAP_THRESHOLD_`), was faulted in
    /// page by page every sweep (issue 15: 7% of the daemon's CPU with the rates' `Vec`).
    spare: Vec<Sample>,
    /// The rates' `Vec` of the last sweep, emptied, for the same reason.
    rates: Vec<Option<Rates>>,
    /// The entries' `Vec` of the snapshot the last sweep replaced, for the same reason
    /// (empty when a scrape still held it).
    snap_room: Vec<(String, TenantSnapshot)>,
    /// Sweeps so far; marks which previous samples are current.
    sweeps: u64,
    last_prune: Option<Instant>,
    /// When the host was last asked whether io weights take effect.
    io_checked: Option<Instant>,
    /// The minute (Unix ms / 60000) of the last rollup.
    last_rollup_minute: i64,
    /// The current minute rolled up as it is sampled.
    minute: Option<Minute>,
    /// The specs and directories of the last sweep, and the `Store::tenants_version` they
    /// were read at.
    tenants: Option<(u64, Arc<Targets>)>,
    sla: SlaEngine,
}

/// One minute of usage and SLA verdicts, rolled up in memory as the sweeps write them.
struct Minute {
    /// Unix ms / 60000.
    index: i64,
    /// Whether this process wrote every sample of the minute (it was sampling before the
    /// minute began). A minute it saw only part of is folded from the raw rows instead.
    whole: bool,
    /// Boxed, as `Sampler::last`: at 10,000 tenants the table's empty slots would otherwise
    /// hold a whole rollup each (issue 15, target 4).
    usage: NameMap<Box<MinuteRollup>>,
    sla: NameMap<Box<SlaMinute>>,
}

impl Minute {
    /// Folds one usage row in.
    fn add_row(&mut self, r: &UsageRow) {
        match self.usage.get_mut(&r.tenant) {
            Some(m) => m.add(r),
            None => {
                let mut m = MinuteRollup::new(&r.tenant, self.index * 60_000);
                m.add(r);
                self.usage.insert(r.tenant.clone(), Box::new(m));
            }
        }
    }

    /// Folds the sweep's verdicts in.
    fn add_verdicts(&mut self, verdicts: &[Verdict]) {
        let bucket = self.index * 60_000;
        for v in verdicts {
            match self.sla.get_mut(v.tenant.as_str()) {
                Some(m) => m.add(v),
                None => {
                    let mut m = SlaMinute::new(&v.tenant, bucket);
                    m.add(v);
                    self.sla.insert(v.tenant.to_string(), Box::new(m));
                }
            }
        }
    }
}

struct Targets {
    /// By name as the sampler meets them: the desired state's specs, shared with it and with
    /// each snapshot (no copy per sweep, none of the desired state's).
    specs: HashMap<String, Arc<TenantSpec>>,
    dirs: Vec<(String, SampleSource)>,
    /// The spec of each of `dirs`, in their order: the reads ask it by index, not by name
    /// (two lookups per tenant and sweep, a tenth of the read phase's own CPU at 1,000).
    spec_at: Vec<Option<Arc<TenantSpec>>>,
}

impl Targets {
    fn new(specs: HashMap<String, Arc<TenantSpec>>, dirs: Vec<(String, SampleSource)>) -> Self {
        let spec_at = dirs.iter().map(|(n, _)| specs.get(n).cloned()).collect();
        Targets {
            specs,
            dirs,
            spec_at,
        }
    }
}

/// The targets' `dirs` for `sources`, each source equal to the previous targets' for the same
/// tenant taken from them (a clone shares its paths) instead of kept as a new copy. Issue 15,
/// target 4: a v1 reader keeps the paths it was opened with, so every new list of targets
/// (one per tenant created) left each reader's paths and the targets' as two copies, 4.2 MB
/// at 10,000 tenants.
fn same_sources_shared<'n>(
    prev: Option<&Targets>,
    sources: impl ExactSizeIterator<Item = (&'n str, SampleSource)>,
) -> Vec<(String, SampleSource)> {
    let old: HashMap<&str, &SampleSource> = prev
        .map(|p| p.dirs.iter().map(|(n, s)| (n.as_str(), s)).collect())
        .unwrap_or_default();
    let mut dirs = Vec::with_capacity(sources.len());
    for (n, source) in sources {
        let source = match old.get(n) {
            Some(&was) if *was == source => was.clone(),
            _ => source,
        };
        dirs.push((n.to_string(), source));
    }
    dirs
}

/// The variant of a limit-hit event.
type Kind = fn(LimitHits) -> Event;

/// Events for the limit hits in `r`: OOM kills, memory.high, memory.max and pids.max hits.
pub fn limit_events(tenant: &str, ts_ms: i64, s: &Sample, r: &Rates) -> Vec<NewEvent> {
    let st = &s.stats;
    let kinds: [(Kind, _, _); 4] = [
        (Event::OomKill, r.new_oom_kills, st.memory_events.oom_kill),
        (Event::MemoryHigh, r.new_memory_high, st.memory_events.high),
        (Event::MemoryMax, r.new_memory_max, st.memory_events.max),
        (Event::PidsMax, r.new_pids_max, st.pids_max_events),
    ];
    kinds
        .into_iter()
        .filter_map(|(kind, new, total)| {
            let count = new.filter(|n| *n > 0)?;
            Some(NewEvent {
                ts_ms,
                tenant: Some(tenant.to_string()),
                actor: None,
                event: kind(LimitHits { count, total }),
            })
        })
        .collect()
}

impl Sampler {
    pub fn new(gov: Arc<Governor>, metrics: Arc<Metrics>, cfg: SamplerConfig) -> Self {
        let readers = Readers::new(cfg.fd_reserve, &cfg.cadence);
        tracing::info!(
            "sampling: the first {} tenants (cgroup v2) keep their stat files open; on cgroup v1 up to {} keep the files a sweep of an idle tenant reads (fewer with memory guarantees or CPU limits); raise LimitNOFILE to hold more",
            readers.held_v2,
            readers.held_v1
        );
        Sampler {
            gov,
            metrics,
            cfg,
            readers: Some(readers),
            last: NameMap::default(),
            prev: Arc::default(),
            spare: Vec::new(),
            rates: Vec::new(),
            snap_room: Vec::new(),
            sweeps: 0,
            last_prune: None,
            io_checked: None,
            last_rollup_minute: i64::MIN,
            minute: None,
            tenants: None,
            sla: SlaEngine::new(cfg.sla),
        }
    }

    /// Samples until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The error the sweeps fail with, logged once when it starts (or changes) and once
        // when sweeps succeed again, not every tick: a full disk fails every sweep until space
        // returns. `sampler_errors` counts each failure.
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => match self.sweep().await {
                    Err(e) => {
                        self.metrics.sampler_errors.inc();
                        let e = e.with_causes();
                        if failing.as_ref() != Some(&e) {
                            tracing::warn!("usage sampler: {e}; retrying every interval, logged again when this changes");
                            failing = Some(e);
                        }
                    }
                    Ok(_) => {
                        if failing.take().is_some() {
                            tracing::info!("usage sampler: sweeps are stored again");
                        }
                    }
                },
            }
        }
    }

    /// The tenants to sample, taken from the governor's desired state in memory only when
    /// the store's version moved (issue 15: they were re-read from the database).
    async fn targets(&mut self) -> Result<Arc<Targets>> {
        let version = self.gov.store().tenants_version();
        if let Some((v, t)) = &self.tenants
            && *v == version
        {
            return Ok(t.clone());
        }
        let (version, all) = self.gov.sample_targets().await?;
        let prev = self.tenants.as_ref().map(|(_, t)| &**t);
        let sources = all
            .iter()
            .map(|(_, _, dir)| self.gov.backend().sample_source(dir));
        let dirs = same_sources_shared(prev, all.iter().map(|(n, _, _)| n.as_str()).zip(sources));
        let specs = all
            .into_iter()
            .map(|(n, spec, _)| (n.to_string(), spec))
            .collect();
        let t = Arc::new(Targets::new(specs, dirs));
        self.tenants = Some((version, t.clone()));
        Ok(t)
    }

    /// One sweep: read, compute, store, publish.
    pub async fn sweep(&mut self) -> Result<SweepReport> {
        self.sweep_at(now_ms()).await
    }

    /// `sweep` with the sample time given: the benchmark runs minutes of sweeps (and their
    /// once-a-minute rollups) in seconds.
    pub async fn sweep_at(&mut self, ts_ms: i64) -> Result<SweepReport> {
        self.recheck_io_weights().await;
        self.learn_root_weight().await;
        let targets = self.targets().await?;
        let cadence = self.cadence(&targets);
        let results = self.read(&targets, cadence).await?;
        let (samples, mut report) = self.keep_samples(&targets, results);
        let mut rates = take_room(&mut self.rates, samples.len());
        rates_since(&self.last, &self.prev, ts_ms, &samples, &mut rates);
        let mut events = limit_events_of(ts_ms, &samples, &rates);
        let room = take_room(&mut self.snap_room, samples.len());
        let snap = snapshot(&targets.spec_at, &samples, room);
        self.remember(ts_ms, samples.iter().map(|(n, s)| (n, s.read)), &rates);
        let (verdicts, root_weight) = self.judge(ts_ms, &samples, &rates, snap, &mut events);
        self.adjust_root_weight(ts_ms, root_weight, &mut events)
            .await;
        // The rows are made as they are written, a statement's worth at a time: a whole
        // sweep's were 6.4 MB at 10,000 tenants (issue 15, target 4). The samples become the
        // previous ones whether or not the write succeeded (`remember` noted their times).
        let rows = usage_rows(ts_ms, &samples, &rates);
        let written = self.write(ts_ms, rows, &verdicts, &events).await;
        report.rows = samples.len();
        rates.clear();
        self.rates = rates;
        self.sla.give_back(verdicts);
        self.forget_unread(samples);
        written?;
        self.roll_up(ts_ms).await?;
        report.events = events.len();
        self.prune(ts_ms).await?;
        Ok(report)
    }

    /// Asks the host again, every `HOST_RECHECK`, whether io weights take effect, and tells
    /// the SLA engine (logged when the answer changes). Returns nothing: a failed question is
    /// logged and asked again next time.
    async fn recheck_io_weights(&mut self) {
        // Whether io weights take effect can change while the daemon runs (an operator
        // enables iocost on a device): asked again every `HOST_RECHECK`.
        if self.io_checked.is_none_or(|t| t.elapsed() >= HOST_RECHECK) {
            self.io_checked = Some(Instant::now());
            match self.gov.host().await {
                Ok(h) => {
                    let now = h.devices.iter().any(|d| d.io_weight_effective);
                    if self.sla.io_weights_effective() != Some(now) {
                        tracing::info!(
                            "sla: io guarantees are {}",
                            if now {
                                "judged: io weights take effect on at least one device"
                            } else {
                                "not judged: io weights take effect on no device (enable iocost or BFQ)"
                            }
                        );
                    }
                    self.sla.set_io_weights_effective(now);
                }
                Err(e) => tracing::warn!("sla: cannot tell whether io weights work here: {e}"),
            }
        }
    }

    /// Under adaptive enforcement, reads the root's cpu.weight until the SLA engine knows it.
    /// Returns nothing: a failed read is logged and tried again next sweep.
    /// In delegated mode the root's cpu.weight is the delegator's, so it is never learned and
    /// adaptive enforcement stays off (`GET /v1/host` says so).
    async fn learn_root_weight(&mut self) {
        if self.sla.adaptive()
            && !self.sla.knows_root()
            && self.gov.mode() == crate::cgroup::RunMode::Root
        {
            match self.gov.root_cpu_weight().await {
                Ok(w) => self.sla.set_root_weight(w),
                Err(e) => {
                    tracing::warn!("adaptive enforcement: cannot read the root's cpu.weight: {e}")
                }
            }
        }
    }

    /// The cadence of this sweep: the configured one, and whether the SLA engine judges io
    /// (io weights take effect and a tenant has an io guarantee), which keeps io.stat and
    /// io.pressure fresh (`Cadence::for_tenant`).
    fn cadence(&self, targets: &Targets) -> SweepCadence {
        let judges_io = self.sla.io_weights_effective() == Some(true)
            && targets.specs.values().any(|s| s.io.guarantee_pct.is_some());
        SweepCadence {
            cadence: self.cfg.cadence,
            judges_io,
        }
    }

    /// Reads every target on the blocking pool, into the samples of the sweep before last
    /// (`spare`) when nothing holds them any more, and times it as `sweep_seconds`. Returns
    /// what was read (`ReadAll`).
    async fn read(&mut self, tt: &Arc<Targets>, cadence: SweepCadence) -> Result<ReadAll> {
        let targets = tt.clone();
        let mut readers = self.readers.take().unwrap_or_default();
        let mut into = ReadAll {
            samples: take_room(&mut self.spare, tt.dirs.len()),
            ..ReadAll::default()
        };
        let started = Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            read_all(&mut readers, &targets, &cadence, &mut into);
            (readers, into)
        })
        .await;
        let (readers, results) = joined.map_err(|e| EngineError::Join(e.to_string()))?;
        self.readers = Some(readers);
        self.metrics
            .sweep_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(results)
    }

    /// Keeps the samples read and logs and counts (`sampler_errors`) the tenants that failed.
    /// Returns the samples by tenant, in target order, in the `Arc` that the snapshot and
    /// then the previous samples share, and the report with `sampled`, `missing` and `errors`
    /// filled.
    fn keep_samples<'t>(&self, tt: &'t Targets, read: ReadAll) -> (Samples<'t>, SweepReport) {
        let report = SweepReport {
            missing: read.missing,
            errors: read.errors.len(),
            sampled: read.samples.len(),
            ..SweepReport::default()
        };
        for (i, e) in &read.errors {
            self.metrics.sampler_errors.inc();
            tracing::warn!("usage sampler: tenant '{}': {e}", tt.dirs[*i].0);
        }
        let samples = Samples {
            names: read.at.iter().map(|&i| tt.dirs[i].0.as_str()).collect(),
            at: read.at,
            all: Arc::new(read.samples),
        };
        (samples, report)
    }

    /// Notes, for each tenant sampled (its name and the figures read), when its figures
    /// not read every sweep were last read and, when this sweep read them, the rates (in
    /// sample order) to repeat until they are read again. The samples follow
    /// (`forget_unread`). Returns nothing.
    fn remember<'n>(
        &mut self,
        ts_ms: i64,
        read: impl Iterator<Item = (&'n str, Figures)>,
        rates: &[Option<Rates>],
    ) {
        self.sweeps += 1;
        let sweep = self.sweeps;
        for ((name, read), r) in read.zip(rates) {
            let whole = read.is_all();
            match self.last.get_mut(name) {
                Some(p) => {
                    p.ts_ms = ts_ms;
                    p.sweep = sweep;
                    if whole {
                        p.slow_ms = Some(ts_ms);
                        p.rates.clone_from(r);
                    }
                }
                None => {
                    self.last.insert(
                        name.to_string(),
                        Box::new(Last {
                            at: 0,
                            ts_ms,
                            slow_ms: whole.then_some(ts_ms),
                            rates: r.clone().filter(|_| whole),
                            sweep,
                        }),
                    );
                }
            }
        }
    }

    /// Makes this sweep's samples the previous ones (`remember` noted the rest); tenants
    /// that are gone, or were not read this time, leave no previous sample behind. Returns
    /// nothing.
    fn forget_unread(&mut self, samples: Samples<'_>) {
        let sweep = self.sweeps;
        for (at, name) in samples.names.into_iter().enumerate() {
            if let Some(p) = self.last.get_mut(name) {
                p.at = at;
            }
        }
        let before = std::mem::replace(&mut self.prev, samples.all);
        // The snapshot that shared them was replaced (`judge`); a scrape may still hold it.
        if let Ok(mut v) = Arc::try_unwrap(before) {
            v.clear();
            self.spare = v;
        }
        self.last.retain(|_, l| l.sweep == sweep);
    }

    /// Judges the SLA over the tenants with rates (`rates`, one per sample), puts each
    /// tenant's totals in the snapshot and publishes it, and adds the SLA's events to
    /// `events`. Returns the verdicts to store and the new cpu.weight of the governor root,
    /// if the engine wants one.
    fn judge(
        &mut self,
        ts_ms: i64,
        samples: &Samples<'_>,
        rates: &[Option<Rates>],
        mut snap: Snapshot,
        events: &mut Vec<NewEvent>,
    ) -> (Vec<Verdict>, Option<(u32, u32)>) {
        // The SLA engine reads the stats and specs the snapshot already holds, and the rates
        // where they are (a copy was 3 MB at 10,000 tenants, 5 MB with the `Vec`'s growth).
        // The snapshot's entries are the samples' in their order when the names came sorted
        // (the targets are): each is found at its place, a binary search only otherwise.
        let inputs: Vec<Input<'_>> = (samples.names.iter().zip(rates).enumerate())
            .filter_map(|(k, (&name, rates))| {
                let rates = rates.as_ref()?;
                let t = match snap.tenants.at(k) {
                    Some((n, t)) if n == name => t,
                    _ => snap.tenants.get(name)?,
                };
                Some(Input {
                    name,
                    spec: &t.spec,
                    rates,
                    stats: &t.stats,
                })
            })
            .collect();
        let sla = self.sla.observe(ts_ms, self.gov.capacity().cpus, &inputs);
        for (name, t) in snap.tenants.iter_mut() {
            t.sla = self.sla.totals(name);
        }
        let before = self.metrics.replace_snapshot(snap);
        if let Ok(before) = Arc::try_unwrap(before) {
            self.snap_room = before.tenants.into_room();
        }
        events.extend(sla.events.into_iter().map(|e| NewEvent {
            ts_ms,
            tenant: Some(e.tenant),
            actor: None,
            event: e.event,
        }));
        (sla.verdicts, sla.root_weight)
    }

    /// Sets the governor root's cpu.weight to what the SLA engine asked for (`(from, to)`)
    /// and records it as an event in `events`. Returns nothing: a failed write is logged.
    async fn adjust_root_weight(
        &self,
        ts_ms: i64,
        root_weight: Option<(u32, u32)>,
        events: &mut Vec<NewEvent>,
    ) {
        if let Some((from, to)) = root_weight {
            match self.gov.set_root_cpu_weight(to).await {
                Ok(()) => events.push(NewEvent {
                    ts_ms,
                    tenant: None,
                    actor: None,
                    event: Event::SlaAdjustment {
                        file: "cpu.weight".into(),
                        cgroup: "governor root".into(),
                        from,
                        to,
                    },
                }),
                Err(e) => tracing::warn!(
                    "adaptive enforcement: cannot set the root's cpu.weight to {to}: {e}"
                ),
            }
        }
    }

    /// Writes the sweep's rows, verdicts and events in one transaction, adds them to the
    /// minute rolled up in memory (the rows as they are written) and writes the minute it
    /// closes; times both writes as `db_write_seconds`. Returns the store's error; then the
    /// minute the sweep would have closed stays open, and the current one, which has rows
    /// the store may not hold, is folded from the raw rows when it closes (`Minute::whole`).
    async fn write(
        &mut self,
        ts_ms: i64,
        rows: impl ExactSizeIterator<Item = UsageRow> + Send,
        verdicts: &[Verdict],
        events: &[NewEvent],
    ) -> Result<()> {
        let store = self.gov.store();
        let started = Instant::now();
        let closed = start_minute(&mut self.minute, ts_ms, (rows.len(), verdicts.len()));
        let minute = self.minute.as_mut().expect("started above");
        let written = store
            .add_sweep(rows.inspect(|r| minute.add_row(r)), verdicts, events)
            .await;
        if let Err(e) = written {
            match closed {
                Some(c) => self.minute = Some(c),
                None => minute.whole = false,
            }
            return Err(e.into());
        }
        minute.add_verdicts(verdicts);
        if let Some(c) = closed.filter(|c| c.whole) {
            // Whatever is older and not rolled up yet is folded from raw first: a rollup marks
            // everything before it as done.
            store.roll_up(c.index * 60_000).await?;
            // References: a copy of 10,000 tenants' minute was 6.9 MB (issue 15, target 4).
            let usage: Vec<&MinuteRollup> = c.usage.values().map(|m| &**m).collect();
            let sla: Vec<&SlaMinute> = c.sla.values().map(|m| &**m).collect();
            store.add_minute_rollups(&usage, &sla).await?;
        }
        self.metrics
            .db_write_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Once a minute (the first sweep of each), folds from raw what was not rolled up in
    /// memory (the minute the daemon started in, minutes before it), and closed hours from
    /// minutes. Returns the store's error.
    async fn roll_up(&mut self, ts_ms: i64) -> Result<()> {
        let index = ts_ms.div_euclid(60_000);
        if index != self.last_rollup_minute {
            self.last_rollup_minute = index;
            self.gov.store().roll_up(ts_ms).await?;
        }
        Ok(())
    }

    /// Every `PRUNE_EVERY` (and on the first sweep), deletes usage and SLA rows older than
    /// the retention. Returns the store's error.
    async fn prune(&mut self, ts_ms: i64) -> Result<()> {
        if self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            self.last_prune = Some(Instant::now());
            let store = self.gov.store();
            let n = store.prune_usage(ts_ms, &self.cfg.retention).await?
                + store.prune_sla(ts_ms, &self.cfg.retention).await?;
            if n > 0 {
                tracing::debug!("usage sampler: pruned {n} old rows");
            }
        }
        Ok(())
    }
}

/// The rates of each sample since the tenant's previous sample in `last`, into `out` (empty):
/// one entry per sample, `None` for a tenant with no (usable) previous sample.
fn rates_since(
    last: &NameMap<Box<Last>>,
    prev: &[Sample],
    ts_ms: i64,
    samples: &Samples<'_>,
    out: &mut Vec<Option<Rates>>,
) {
    out.extend(samples.iter().map(|(name, sample)| {
        let p = last.get(name)?;
        usage::rates_with_cadence(
            prev.get(p.at)?,
            p.ts_ms,
            p.slow_ms,
            p.rates.as_ref(),
            sample,
            ts_ms,
        )
    }));
}

/// The stored row of each sample with its rates (`UsageRow::from_sample`). Returns one row per
/// sample, in order, each made when it is asked for.
fn usage_rows<'s>(
    ts_ms: i64,
    samples: &'s Samples<'_>,
    rates: &'s [Option<Rates>],
) -> impl ExactSizeIterator<Item = UsageRow> + Send + 's {
    samples
        .iter()
        .zip(rates)
        .map(move |((name, sample), r)| UsageRow::from_sample(name, ts_ms, sample, r.as_ref()))
}

/// The limit-hit events of every sample with rates (`limit_events`). Returns them in sample
/// order.
fn limit_events_of(ts_ms: i64, samples: &Samples<'_>, rates: &[Option<Rates>]) -> Vec<NewEvent> {
    samples
        .iter()
        .zip(rates)
        .filter_map(|((name, sample), r)| Some(limit_events(name, ts_ms, sample, r.as_ref()?)))
        .flatten()
        .collect()
}

/// The snapshot `/metrics` renders: each sample's stats (shared, `SharedStats`) with the
/// tenant's spec (`spec_at`: by target), no SLA totals yet (`Sampler::judge` adds them).
/// Returns it.
fn snapshot(
    spec_at: &[Option<Arc<TenantSpec>>],
    samples: &Samples<'_>,
    room: Vec<(String, TenantSnapshot)>,
) -> Snapshot {
    let tenants = samples.names.iter().enumerate().map(|(at, name)| {
        let spec = spec_at[samples.at[at]].clone().unwrap_or_default();
        let t = TenantSnapshot {
            stats: SharedStats::of(samples.all.clone(), at),
            spec,
            sla: None,
        };
        (name.to_string(), t)
    });
    Snapshot {
        tenants: TenantMap::collect_in(room, tenants),
    }
}

/// Starts a new minute rolled up in memory when `ts_ms` is past the current one (or there is
/// none), sized for `(rows, verdicts)` a sweep. Returns the minute that closed, if one did; a
/// closed one is written as one row per tenant.
fn start_minute(
    minute: &mut Option<Minute>,
    ts_ms: i64,
    (rows, verdicts): (usize, usize),
) -> Option<Minute> {
    let index = ts_ms.div_euclid(60_000);
    match minute {
        Some(m) if m.index == index => None,
        _ => minute.replace(Minute {
            index,
            whole: minute.is_some(),
            usage: NameMap::with_capacity_and_hasher(rows, Default::default()),
            sla: NameMap::with_capacity_and_hasher(verdicts, Default::default()),
        }),
    }
}

/// What one sweep read, in target order: the samples, the target (index in `Targets::dirs`)
/// of each, how many targets' directories were missing, and the targets that failed.
#[derive(Default)]
struct ReadAll {
    samples: Vec<Sample>,
    at: Vec<usize>,
    missing: usize,
    errors: Vec<(usize, crate::cgroup::CgroupError)>,
}

/// A sweep's samples by tenant, in target order: the names, the target of each (index in
/// `Targets::dirs`), and the samples in one `Vec` that the snapshot published with them and
/// then `Sampler::prev` share.
struct Samples<'t> {
    names: Vec<&'t str>,
    at: Vec<usize>,
    all: Arc<Vec<Sample>>,
}

impl<'t> Samples<'t> {
    fn len(&self) -> usize {
        self.names.len()
    }

    /// (tenant, sample), in target order.
    fn iter(&self) -> impl ExactSizeIterator<Item = (&'t str, &Sample)> + Send + '_ {
        self.names.iter().copied().zip(self.all.iter())
    }
}

/// The cadence of one sweep, made for each tenant by `Cadence::for_tenant`.
#[derive(Debug, Clone, Copy)]
struct SweepCadence {
    cadence: Cadence,
    judges_io: bool,
}

impl SweepCadence {
    fn for_tenant(&self, spec: Option<&TenantSpec>) -> Cadence {
        let memory = spec.is_some_and(|s| s.memory.guarantee_bytes.is_some());
        self.cadence.for_tenant(memory, self.judges_io)
    }
}

/// Reads every target with its cadence, in the order of `targets.dirs`, into `into`
/// (empty: its vectors are kept for their room); drops the readers of tenants no longer
/// listed. Runs on the blocking pool. Returns nothing.
fn read_all(
    readers: &mut Readers,
    targets: &Arc<Targets>,
    cadence: &SweepCadence,
    into: &mut ReadAll,
) {
    if !readers
        .targets
        .as_ref()
        .is_some_and(|t| Arc::ptr_eq(t, targets))
    {
        readers.realign(targets);
        ensure_v1_watch(&mut readers.watch, targets);
        readers.tiers_for = None;
    }
    let for_now = (cadence.judges_io, cadence.cadence.fresh);
    if readers.tiers_for != Some(for_now) {
        readers.tiers_v1 = v1_tiers(targets, cadence, readers.fds);
        readers.tiers_for = Some(for_now);
    }
    let Readers {
        v2,
        v1,
        buf,
        fds,
        per_tenant_v2,
        tiers_v1,
        watch,
        ..
    } = readers;
    let watch = watch.as_ref().and_then(|w| w.as_ref().ok());
    if let Some(w) = watch {
        v1_stats::rewalk_changed(w, v1.iter_mut().flatten());
    }
    let n = targets.dirs.len();
    let tiers_v2 = hold_tiers(n, *fds, *per_tenant_v2);
    let hold = |i: usize, (every, held): (usize, usize), c: &Cadence| {
        if i < every {
            Figures::ALL
        } else if i < held {
            c.fresh
        } else {
            Figures::NONE
        }
    };
    let hold_v1 = |i: usize, c: &Cadence, quota: bool| tiers_v1[i].hold(c.fresh, quota);
    release_demoted(v1, |i| {
        let spec = targets.spec_at[i].as_deref();
        hold_v1(i, &cadence.for_tenant(spec), own_cpu_quota(spec))
    });
    // Room for every target at once (none to add when the spare held the same tenants):
    // pushed one by one, a `Vec` grown by doubling would copy the samples it holds each time.
    into.samples.reserve(n);
    into.at.reserve(n);
    for (i, (_, source)) in targets.dirs.iter().enumerate() {
        let spec = targets.spec_at[i].as_deref();
        let c = cadence.for_tenant(spec);
        let read = match source {
            SampleSource::V2(path) => {
                sample_dir_with(&mut v2[i], path, buf, hold(i, tiers_v2, &c), &c)
            }
            SampleSource::V1 { dirs, proc } => v1_stats::sample_dirs_with(
                &mut v1[i],
                dirs,
                proc,
                buf,
                (hold_v1(i, &c, own_cpu_quota(spec)), own_cpu_quota(spec)),
                &c,
                watch,
            ),
        };
        match read {
            Ok(Some(s)) => {
                into.samples.push(s);
                into.at.push(i);
            }
            Ok(None) => into.missing += 1,
            Err(e) => into.errors.push((i, e)),
        }
    }
}

/// Makes the subtree watch of the v1 readers when the first v1 tenant is listed (asked when
/// the targets change, not every sweep); a refusal is logged once and kept (the readers then
/// walk on a timer).
fn ensure_v1_watch(watch: &mut Option<std::result::Result<SubtreeWatch, ()>>, targets: &Targets) {
    if watch.is_none()
        && targets
            .dirs
            .iter()
            .any(|(_, s)| matches!(s, SampleSource::V1 { .. }))
    {
        *watch = Some(SubtreeWatch::new().map_err(|e| {
            tracing::warn!(
                "usage sampler: no inotify instance ({e}): v1 tenants' subtrees are walked every {} sweeps instead of when they change",
                v1_stats::WALK_EVERY
            )
        }));
    }
}

/// Closes, before a sweep opens anything, the v1 readers that hold files their tier
/// (`want`, by slot) no longer gives them; the sweep opens them again holding their tier.
/// Issue 15: the tiers move as tenants are added, and a sweep that opened the promoted
/// tenants' files (early in the list) before it closed the demoted ones' (later) passed the
/// descriptor limit for a moment: the sampler's reads failed with EMFILE, and so did a PUT's
/// read of a cgroup file (an HTTP 500 while 10,000 tenants were created).
fn release_demoted(v1: &mut [Option<V1StatsReader>], want: impl Fn(usize) -> V1Hold) {
    for (i, slot) in v1.iter_mut().enumerate() {
        if slot.as_ref().is_some_and(|r| !r.hold().within(want(i))) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::stats::{CgroupStats, CpuStat, MemoryEvents};
    use crate::domain::tenant::TenantName;

    /// Issue 15 (the HTTP 500 during creation): readers holding more than their new tier
    /// are closed before the sweep opens any file; the others, promoted ones included, stay.
    #[test]
    fn demoted_readers_close_their_files_before_the_sweep_opens_any() {
        let tmp = tempfile::tempdir().unwrap();
        let open = |name: &str, hold: Figures| {
            let cpuacct = tmp.path().join("cpuacct").join(name);
            std::fs::create_dir_all(&cpuacct).unwrap();
            std::fs::write(cpuacct.join("cpuacct.usage"), "1000\n").unwrap();
            let dirs = crate::cgroup::v1::V1Dirs {
                cpuacct: Some(cpuacct.into()),
                ..Default::default()
            };
            Some(
                V1StatsReader::open_holding(&dirs, tmp.path(), hold, None)
                    .unwrap()
                    .unwrap(),
            )
        };
        let fresh = SLA_FIGURES;
        let mut v1 = vec![
            open("a", Figures::ALL),
            open("b", Figures::ALL),
            open("c", fresh),
            open("d", Figures::NONE),
            None,
        ];
        let want = [
            Figures::ALL,
            fresh,
            Figures::NONE,
            Figures::ALL,
            Figures::ALL,
        ];
        release_demoted(&mut v1, |i| want[i].into());
        let holds: Vec<Option<V1Hold>> = v1.iter().map(|r| r.as_ref().map(|r| r.hold())).collect();
        assert_eq!(
            holds,
            [
                Some(Figures::ALL.into()),
                None,
                None,
                Some(V1Hold::NONE),
                None
            ],
            "kept: the same tier and a promotion; closed: the demoted"
        );
    }

    fn s(usage: u64, oom: u64, high: u64) -> Sample {
        Sample {
            read: crate::domain::cadence::Figures::ALL,
            ino: 1,
            stats: CgroupStats {
                cpu: CpuStat {
                    usage_usec: Some(usage),
                    ..Default::default()
                },
                memory_events: MemoryEvents {
                    oom_kill: Some(oom),
                    high: Some(high),
                    max: Some(0),
                    ..Default::default()
                },
                pids_max_events: Some(0),
                memory_current: Some(100),
                ..Default::default()
            },
        }
    }

    /// Issue 15: every v1 tenant that can holds its lean files first (one descriptor for most
    /// at 10,000 tenants), then the descriptors left raise the first ones to their fresh
    /// figures' files and then to every file; a tenant whose step does not fit is passed over,
    /// and none is counted twice.
    #[test]
    fn every_v1_tenant_holds_its_lean_files_before_any_holds_more() {
        use Tier::*;
        // (lean, fresh, every) per tenant: a plain tenant, and one with a memory guarantee.
        let plain = (1, 7, 16);
        let memory = (4, 10, 16);
        let budget = |tiers: &[Tier], costs: &[HoldCosts]| -> usize {
            tiers
                .iter()
                .zip(costs)
                .map(|(t, c)| match t {
                    Opened => 0,
                    Lean => c.0,
                    Fresh => c.1,
                    Every => c.2,
                })
                .sum()
        };
        let costs = vec![plain; 10_000];
        let tiers = tiers_within(&costs, 19_488);
        assert!(
            tiers.iter().all(|t| *t != Opened),
            "10,000 hold their lean file"
        );
        // 9,488 left: 1,581 raised to fresh (6 more each), 2 left over.
        assert_eq!(tiers.iter().filter(|t| **t == Fresh).count(), 1_581);
        assert_eq!(tiers[..1_581], vec![Fresh; 1_581][..], "the first ones");
        assert_eq!(budget(&tiers, &costs), 19_486);
        // Few tenants: all of them hold every file.
        assert_eq!(tiers_within(&costs[..100], 19_488), vec![Every; 100]);
        // Too few descriptors for all: the first ones hold, a larger step is passed over for
        // a smaller one after it.
        let mixed = [memory, plain, memory, plain, plain];
        let tiers = tiers_within(&mixed, 7);
        assert_eq!(tiers, [Lean, Lean, Opened, Lean, Lean]);
        assert_eq!(budget(&tiers, &mixed), 7);
        // Lean: 11; 12 left raise the first two to fresh (6 each).
        let tiers = tiers_within(&mixed, 23);
        assert_eq!(tiers, [Fresh, Fresh, Lean, Lean, Lean]);
        assert_eq!(budget(&tiers, &mixed), 23);
        assert_eq!(tiers_within(&mixed, 0), [Opened; 5]);
    }

    /// Every tenant that can holds its fresh files; the descriptors left make the first ones
    /// hold every file; none is counted twice.
    #[test]
    fn descriptors_left_make_the_first_tenants_hold_every_file() {
        // (tenants, descriptors, (fresh, all)) -> (every file, fresh files)
        let cases = [
            ((1000, 19_488, (11, 20)), (943, 1000)),
            ((100, 19_488, (11, 20)), (100, 100)),
            ((10_000, 19_488, (11, 20)), (0, 1771)),
            ((2000, 19_488, (11, 20)), (0, 1771)),
            ((1700, 19_488, (11, 20)), (87, 1700)),
            ((10, 0, (11, 20)), (0, 0)),
            ((10, 100, (3, 3)), (10, 10)),
        ];
        for ((n, fds, per), want) in cases {
            let (every, held) = hold_tiers(n, fds, per);
            assert_eq!(
                (every, held),
                want,
                "{n} tenants, {fds} descriptors, {per:?}"
            );
            assert!(every * per.1 + (held - every) * per.0 <= fds);
        }
    }

    #[test]
    fn new_limit_hits_become_events() {
        let (a, b) = (s(0, 1, 5), s(2_000_000, 3, 5));
        let r = usage::rates(&a, 0, &b, 1000).unwrap();
        let ev = limit_events("t", 1000, &b, &r);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            ev[0].event,
            Event::OomKill(LimitHits {
                count: 2,
                total: Some(3)
            })
        );
    }

    /// A minute closes at the first sweep of the next one; only a minute this process saw
    /// from its start (`whole`) is written from memory.
    #[test]
    fn a_minute_closes_at_the_next_and_is_whole_once_seen_from_its_start() {
        let mut minute = None;
        let rows = [UsageRow {
            tenant: "a".into(),
            ..UsageRow::default()
        }];
        let at = |m: i64, s: i64| m * 60_000 + s * 1000;
        let mut add = |ts| {
            let closed = start_minute(&mut minute, ts, (1, 0)).map(|c| (c.index, c.whole));
            minute.as_mut().unwrap().add_row(&rows[0]);
            closed
        };
        assert_eq!(add(at(10, 30)), None, "nothing to close yet");
        assert_eq!(add(at(10, 59)), None);
        assert_eq!(add(at(11, 0)), Some((10, false)), "started mid-minute");
        assert_eq!(add(at(11, 1)), None);
        assert_eq!(add(at(12, 0)), Some((11, true)));
        let m = minute.unwrap();
        assert_eq!((m.index, m.whole, m.usage.len()), (12, true, 1));
    }

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cgroupfs/6.1.0-56-amd64/fixture/work"
    );

    /// A tenant directory under `root`: the fixture's files, `cpu.stat` counting `usage_s`.
    fn tenant_dir(root: &std::path::Path, name: &str, usage_s: u64) -> std::path::PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(FIXTURE).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
        set_cpu_usage(&dir, usage_s * 1_000_000);
        dir
    }

    fn set_cpu_usage(dir: &std::path::Path, usec: u64) {
        let cpu = std::fs::read_to_string(dir.join("cpu.stat")).unwrap();
        let old = crate::cgroup::stats::cpu_stat(&cpu)
            .unwrap()
            .usage_usec
            .unwrap();
        let cpu = cpu.replace(
            &format!("usage_usec {old}\n"),
            &format!("usage_usec {usec}\n"),
        );
        std::fs::write(dir.join("cpu.stat"), cpu).unwrap();
    }

    fn created(name: &str) -> NewEvent {
        NewEvent {
            ts_ms: 0,
            tenant: Some(name.into()),
            actor: None,
            event: Event::TenantCreated {
                spec: Box::default(),
            },
        }
    }

    async fn put(store: &crate::store::Store, name: &str) {
        let n = TenantName::parse(name).unwrap();
        store
            .put_tenant(&n, &TenantSpec::default(), 0, created(name))
            .await
            .unwrap();
    }

    /// A sampler over the v2 directories under `tmp`/root, with a real SQLite file.
    async fn sampler_in(tmp: &std::path::Path) -> (Sampler, crate::store::Store, Arc<Metrics>) {
        use crate::domain::tenant::Capacity;
        use crate::engine::EngineConfig;
        let store = crate::store::Store::open(&tmp.join("t.db")).await.unwrap();
        let backend = Arc::new(crate::cgroup::v2::V2::new(tmp, tmp.join("root"), "/sys"));
        let gov = Governor::new(
            backend,
            store.clone(),
            EngineConfig::default(),
            Capacity {
                cpus: 2.0,
                memory_bytes: 1 << 30,
                memory_reserve_bytes: 0,
            },
        );
        let metrics = Metrics::new();
        let sampler = Sampler::new(gov, metrics.clone(), SamplerConfig::default());
        (sampler, store, metrics)
    }

    /// A tenant created and deleted through the governor (as the API does) is sampled from
    /// the next sweep on and dropped at the next sweep after: the sampler's list comes from
    /// the desired state in memory, not from a read of the tenants table.
    #[tokio::test]
    async fn tenants_changed_through_the_governor_are_sampled_and_dropped_at_the_next_sweep() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        tenant_dir(&root, "web", 10);
        let (mut sampler, _store, _metrics) = sampler_in(tmp.path()).await;
        assert_eq!(sampler.sweep().await.unwrap().sampled, 0);
        let web = TenantName::parse("web").unwrap();
        let gov = sampler.gov.clone();
        gov.put(&web, TenantSpec::default(), "test").await.unwrap();
        assert_eq!(
            sampler.sweep().await.unwrap().sampled,
            1,
            "created: sampled"
        );
        // Ordinary files are no cgroupfs: emptied, the directory can be removed by the delete.
        fn files_out(d: &std::path::Path) {
            for f in std::fs::read_dir(d).unwrap() {
                let p = f.unwrap().path();
                if p.is_dir() {
                    files_out(&p);
                } else {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
        files_out(&root.join("web"));
        gov.delete(&web, crate::engine::DeleteMode::Refuse, "test")
            .await
            .unwrap();
        assert!(
            sampler.targets().await.unwrap().dirs.is_empty(),
            "deleted: no longer a target"
        );
        assert_eq!(
            sampler.sweep().await.unwrap().sampled,
            0,
            "deleted: dropped"
        );
    }

    /// A sweep over a directory of ordinary files shaped like cgroups (the fixture of a real
    /// 6.1 kernel), with a real SQLite file: rates, events, rows and the snapshot.
    #[tokio::test]
    async fn sweeps_write_rows_events_and_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tenant_dir(&tmp.path().join("root"), "web", 100);
        let (mut sampler, store, metrics) = sampler_in(tmp.path()).await;
        put(&store, "web").await;

        let r = sampler.sweep().await.unwrap();
        assert_eq!(
            (r.sampled, r.rows, r.events),
            (1, 1, 0),
            "the first sample has nothing to compare with"
        );
        // The kernel counts on: one more OOM kill, one more CPU second.
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 83\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        set_cpu_usage(&dir, 101_000_000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = sampler.sweep().await.unwrap();
        assert_eq!((r.sampled, r.rows, r.events), (1, 1, 2));
        let kinds: Vec<Event> = store
            .events(&Default::default())
            .await
            .unwrap()
            .iter()
            .map(|e| e.event().unwrap())
            .collect();
        assert!(
            kinds.iter().any(|e| matches!(e, Event::OomKill(_)))
                && kinds.iter().any(|e| matches!(e, Event::MemoryMax(_))),
            "{kinds:?}"
        );
        let cores = store
            .raw_usage("web", 0, i64::MAX)
            .await
            .unwrap()
            .last()
            .unwrap()
            .rates
            .cpu_cores;
        assert!(cores.unwrap() > 1.0, "1 CPU second in ~20 ms: {cores:?}");
        assert!(
            metrics
                .render()
                .contains("tenantd_tenant_memory_oom_kills_total{tenant=\"web\"} 2")
        );

        // A deleted tenant leaves the snapshot at once.
        std::fs::remove_dir_all(&dir).unwrap();
        let r = sampler.sweep().await.unwrap();
        assert_eq!((r.sampled, r.missing), (0, 1));
        assert!(!metrics.render().contains("tenant=\"web\""));
    }

    /// A sweep reads into the samples of the sweep before the last once nothing holds them
    /// (issue 15: a new `Vec` a sweep was faulted in page by page), and leaves them to a
    /// scrape that still holds their snapshot.
    #[tokio::test]
    async fn a_sweep_reads_into_the_samples_nothing_holds_any_more() {
        let tmp = tempfile::tempdir().unwrap();
        tenant_dir(&tmp.path().join("root"), "web", 100);
        let (mut sampler, store, metrics) = sampler_in(tmp.path()).await;
        put(&store, "web").await;
        sampler.sweep().await.unwrap();
        let scrape = metrics.snapshot();
        sampler.sweep().await.unwrap();
        assert_eq!(
            sampler.spare.capacity(),
            0,
            "a scrape holds the first sweep's"
        );
        drop(scrape);
        sampler.sweep().await.unwrap();
        let second = sampler.spare.as_ptr();
        assert!(sampler.spare.capacity() >= 1 && sampler.spare.is_empty());
        assert!(
            sampler.snap_room.capacity() >= 1,
            "the second's snapshot's entries too"
        );
        assert!(sampler.rates.capacity() >= 1);
        sampler.sweep().await.unwrap();
        assert_eq!(
            sampler.prev.as_ptr(),
            second,
            "the fourth read into the second's"
        );
        assert_eq!(sampler.prev.len(), 1);
        assert_eq!(metrics.snapshot().tenants.len(), 1);
    }

    /// New targets move each open reader to its tenant's new position and close those of
    /// tenants no longer listed; a tenant new to the list starts without one.
    #[test]
    fn realign_moves_each_reader_to_its_tenants_new_place() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let targets = |names: &[&str]| {
            Arc::new(Targets::new(
                HashMap::new(),
                names
                    .iter()
                    .map(|n| (n.to_string(), SampleSource::V2(root.join(n))))
                    .collect(),
            ))
        };
        for n in ["a", "b", "c", "0d"] {
            tenant_dir(&root, n, 1);
        }
        let mut readers = Readers::default();
        let first = targets(&["a", "b", "c"]);
        let c = SweepCadence {
            cadence: Cadence::default(),
            judges_io: false,
        };
        let mut read = ReadAll::default();
        read_all(&mut readers, &first, &c, &mut read);
        assert_eq!(read.at, [0, 1, 2], "{:?}", read.errors);
        assert_eq!((read.samples.len(), read.missing), (3, 0));
        let second = targets(&["0d", "a", "c"]);
        readers.realign(&second);
        let dirs: Vec<Option<std::path::PathBuf>> = readers
            .v2
            .iter()
            .map(|r| r.as_ref().map(|r| r.dir().to_path_buf()))
            .collect();
        assert_eq!(dirs, [None, Some(root.join("a")), Some(root.join("c"))]);
        assert!(readers.v1.is_empty(), "no v1 target: no v1 slots");
    }

    /// Issue 15, target 4: new targets take the previous targets' source of a tenant whose
    /// directories did not change (its v1 reader shares those paths), and a new one otherwise.
    #[test]
    fn new_targets_share_the_unchanged_sources_of_the_previous_ones() {
        let v1 = |dir: &str| SampleSource::V1 {
            dirs: crate::cgroup::v1::V1Dirs {
                cpuacct: Some(std::path::Path::new("/cpuacct").join(dir).into()),
                ..Default::default()
            },
            proc: "/proc".into(),
        };
        let cpuacct = |s: &SampleSource| match s {
            SampleSource::V1 { dirs, .. } => dirs.cpuacct.clone().unwrap(),
            SampleSource::V2(_) => unreachable!(),
        };
        let first = Targets::new(
            HashMap::new(),
            same_sources_shared(None, [("a", v1("a")), ("b", v1("b"))].into_iter()),
        );
        let next = same_sources_shared(
            Some(&first),
            [("a", v1("a")), ("b", v1("p/b")), ("c", v1("c"))].into_iter(),
        );
        let names: Vec<&str> = next.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(Arc::ptr_eq(
            &cpuacct(&next[0].1),
            &cpuacct(&first.dirs[0].1)
        ));
        assert_eq!(next[1].1, v1("p/b"), "moved: the new directory");
        assert_eq!(next[2].1, v1("c"));
    }

    /// The readers are kept by position in the list of tenants, which changes as tenants
    /// come and go; each tenant must still get its own counters and its own previous sample
    /// (a mix-up shows as another tenant's CPU rate), and a deleted tenant is no longer read
    /// at the very next sweep, although its directory is still there.
    #[tokio::test]
    async fn tenants_that_come_and_go_keep_their_own_counters_and_rates() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let (mut sampler, store, _metrics) = sampler_in(tmp.path()).await;
        for (name, usage_s) in [("a", 10), ("b", 20), ("c", 30)] {
            tenant_dir(&root, name, usage_s);
            put(&store, name).await;
        }
        let t0 = 1_700_000_000_000;
        assert_eq!(sampler.sweep_at(t0).await.unwrap().sampled, 3);

        // b is deleted; its directory stays, so only the tenants table says it is gone.
        let b = TenantName::parse("b").unwrap();
        assert!(store.delete_tenant(&b, created("b")).await.unwrap());
        assert_eq!(sampler.sweep_at(t0 + 500).await.unwrap().sampled, 2);
        // 0d is created, first in the list; a and c get different CPU rates.
        tenant_dir(&root, "0d", 40);
        put(&store, "0d").await;
        set_cpu_usage(&root.join("a"), 10_500_000);
        set_cpu_usage(&root.join("c"), 31_500_000);
        assert_eq!(sampler.sweep_at(t0 + 1000).await.unwrap().sampled, 3);

        let at = |t: &'static str, ts: i64| {
            let store = store.clone();
            async move {
                let rows = store.raw_usage(t, ts, ts + 1).await.unwrap();
                let r = rows.first().unwrap_or_else(|| panic!("{t} at {ts}"));
                (
                    r.tenant.clone(),
                    r.counters.cpu_usage_usec,
                    r.rates.cpu_cores,
                )
            }
        };
        let mut rows = Vec::new();
        for t in ["0d", "a", "c"] {
            let (name, usage, cores) = at(t, t0 + 1000).await;
            rows.push((name, usage.unwrap(), cores));
        }
        assert_eq!(
            store.raw_usage("b", t0 + 1000, t0 + 1001).await.unwrap(),
            [],
            "b is gone"
        );
        assert_eq!(
            rows,
            vec![
                ("0d".into(), 40_000_000, None),
                ("a".into(), 10_500_000, Some(1.0)),
                ("c".into(), 31_500_000, Some(3.0)),
            ]
        );

        // b comes back: its previous sample was dropped with it, so no rate this time.
        put(&store, "b").await;
        set_cpu_usage(&root.join("b"), 25_000_000);
        assert_eq!(sampler.sweep_at(t0 + 2000).await.unwrap().sampled, 4);
        let b_rate = at("b", t0 + 2000).await.2;
        assert_eq!(b_rate, None);
    }

    /// Issue 15, through the whole sweep: an idle tenant's io.stat and memory.current (no
    /// memory guarantee: not judged) are read every tenth sweep; the rows in between repeat
    /// the counters read last, and the read that sees the growth gives the rate over the whole
    /// stretch. A tenant with a memory guarantee has memory.current read every sweep.
    #[tokio::test]
    async fn stale_figures_repeat_in_the_rows_and_their_rate_spans_the_stretch() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let (mut sampler, store, _metrics) = sampler_in(tmp.path()).await;
        let idle = tenant_dir(&root, "idle", 10);
        let guarded = tenant_dir(&root, "guarded", 10);
        put(&store, "idle").await;
        let mut spec = TenantSpec::default();
        spec.memory.guarantee_bytes = Some(crate::domain::units::Bytes(1 << 20));
        store
            .put_tenant(
                &TenantName::parse("guarded").unwrap(),
                &spec,
                0,
                created("guarded"),
            )
            .await
            .unwrap();
        let t0 = 1_700_000_000_000;
        sampler.sweep_at(t0).await.unwrap();
        // 10 MB read from vda, memory.current up by 1 MiB; the CPU usage does not move.
        let io = "254:0 rbytes=18388608 wbytes=16777216 rios=8 wios=16 dbytes=0 dios=0\n";
        for d in [&idle, &guarded] {
            std::fs::write(d.join("io.stat"), io).unwrap();
            std::fs::write(d.join("memory.current"), "1318912\n").unwrap();
        }
        let every = Cadence::default().idle_every;
        for k in 1..=i64::from(every) {
            sampler.sweep_at(t0 + 1000 * k).await.unwrap();
        }
        type Row = (i64, Option<i64>, Option<f64>, Option<i64>);
        let rows = |tenant: &'static str| {
            let store = store.clone();
            async move {
                let r: Vec<Row> = store
                    .raw_usage(tenant, 0, i64::MAX)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            r.ts_ms,
                            r.counters.io_read_bytes,
                            r.rates.io_read_bytes_per_s,
                            r.gauges.memory_current_bytes,
                        )
                    })
                    .collect();
                r
            }
        };
        let idle_rows = rows("idle").await;
        assert_eq!(idle_rows.len(), every as usize + 1);
        for (ts, read, rate, mem) in &idle_rows[..every as usize] {
            assert_eq!(*read, Some(8_388_608), "repeated at {ts}");
            assert_eq!(*mem, Some(270_336), "repeated at {ts}");
            assert_eq!(*rate, None, "no rate measured yet at {ts}");
        }
        let (_, read, rate, mem) = idle_rows[every as usize];
        assert_eq!((read, mem), (Some(18_388_608), Some(1_318_912)));
        assert_eq!(
            rate,
            Some(1_000_000.0),
            "10 MB over the 10 s since the last read"
        );
        // The guarded tenant's memory.current is fresh from the first sweep after the change.
        let guarded_rows = rows("guarded").await;
        assert_eq!(guarded_rows[0].3, Some(270_336));
        assert!(guarded_rows[1..].iter().all(|r| r.3 == Some(1_318_912)));
    }
}
