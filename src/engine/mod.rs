//! Where side effects meet: a change is validated, applied to the kernel and committed to the
//! store so the two never diverge; reconcile restores the kernel from the store; placement;
//! the intent journal (`journal`) for what a crash could leave half-done.
//!
//! Below the API, only this layer reads the clock (the API reads it to resolve relative times
//! in queries). Kernel calls run on the blocking pool.
//!
//! Layer 2 (see `lib.rs`): owns `Governor` (apply, reconcile: here; `placement`, `journal`),
//! the sampler (which runs the domain's SLA engine, stores its events and applies the weight
//! it decides), report building (`report`) and the reads the API answers from (`reads`: every
//! store access of the API goes through the engine). Imports `domain`, `cgroup`, `store`,
//! `report` and `metrics`; never `api`, `config` or `cli`. `fleet` is a node's part in a
//! fleet sharing one desired state in PostgreSQL (issue 19); `fleet_history` ships the node's
//! minutes there and builds the fleet SLA report.

pub mod autoplace;
pub mod egress;
pub mod fleet;
pub mod fleet_history;
pub mod journal;
pub mod placement;
pub mod policy;
mod reads;
pub mod report;
pub mod sampler;

use crate::cgroup::{
    Backend, Cannot, CgroupError, CgroupPath, Change, DAEMON_LEAF, HostCgroup, LEAF, RunMode,
};
use crate::domain::desired::{Change as StateChange, DesiredState};
use crate::domain::event::Event;
use crate::domain::plan::{self, PlanParams, Settings, TenantPlan};
use crate::domain::tenant::{self, Capacity, DomainError, TenantName, TenantSpec};
use crate::store::{NewEvent, Store, StoreError, StoredTenant};
use journal::{Emptying, Step};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Errors of the engine: what went wrong in the user's terms, keeping the layer's cause.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the kernel refused the change: {source}")]
    Kernel {
        #[source]
        source: CgroupError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tenant '{0}' does not exist")]
    NotFound(String),
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    #[error("pid: {message}")]
    BadPid { pid: u32, message: String },
    /// The kernel refused to move or kill a process (EACCES/EPERM: a delegated daemon,
    /// cgroup-v2.rst "Delegation Containment", or no CAP_KILL for another user's process);
    /// `field` is the request's part at fault (`pid` for a placement, `kill` for a delete).
    #[error("{field}: {message}")]
    NotPermitted { field: String, message: String },
    #[error("internal task failed: {0}")]
    Join(String),
    /// This host cannot do what the request asks (an egress policy without nftables).
    #[error("{field}: {message}")]
    Unsupported { field: String, message: String },
    /// nft refused to load the egress table; nothing changed.
    #[error("network.egress: {message}")]
    NftRefused { message: String },
    /// The fleet store (issue 19) failed or could not be reached.
    #[error(transparent)]
    Fleet(crate::store::fleet::FleetError),
}

impl From<CgroupError> for EngineError {
    fn from(source: CgroupError) -> Self {
        EngineError::Kernel { source }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    /// The error and each cause under it that its text does not already say, joined by
    /// ": ", for a log line: "database roll up usage failed: error returned from database:
    /// (code: 5) database is locked", not only its first part.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(c) = cur {
            let t = c.to_string();
            if !text.contains(&t) {
                text.push_str(": ");
                text.push_str(&t);
            }
            cur = c.source();
        }
        text
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How to treat live processes when a tenant is deleted.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteMode {
    Refuse,
    Kill,
    MoveTo(TenantName),
}

/// A tenant as the API shows it: the spec, and what the kernel really holds.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TenantView {
    pub name: TenantName,
    #[serde(flatten)]
    pub stored: StoredTenant,
    #[schema(value_type = String)]
    pub cgroup: PathBuf,
    /// The settings tenantd wants (from the spec).
    pub planned: TenantPlan,
    /// The values read from the kernel now; `None` when the directory is missing.
    #[schema(required = true)]
    pub effective: Option<Settings>,
    #[schema(required = true)]
    pub effective_error: Option<String>,
    /// Settings of the plan this host cannot apply (cgroup v1), each with the reason.
    pub not_applied: Vec<crate::cgroup::NotApplied>,
    pub procs: usize,
    /// When `effective` and `procs` were read from the kernel (Unix ms): reads are served from
    /// memory, refreshed by every change, every placement and every reconcile pass.
    #[schema(required = true)]
    pub kernel_read_ms: Option<i64>,
    /// The egress policy the tenant's sockets are under (its own or an ancestor's) and
    /// whether it is in force; `None` when no policy applies.
    #[schema(required = true)]
    pub egress: Option<egress::EgressView>,
}

/// What drifted of one tenant (`Governor::drift`): the values the kernel holds that differ
/// from its plan, or why the kernel could not be read.
pub type Drift = std::result::Result<Vec<crate::cgroup::Change>, String>;

/// What the kernel held for one tenant when it was last read.
#[derive(Debug, Clone)]
struct KernelRead {
    effective: std::result::Result<Settings, String>,
    procs: usize,
    not_applied: Vec<crate::cgroup::NotApplied>,
    read_ms: i64,
}

impl KernelRead {
    fn of(b: &dyn Backend, dir: &CgroupPath, plan: Option<&TenantPlan>) -> KernelRead {
        KernelRead {
            effective: b.read(dir).map_err(|e| e.to_string()),
            procs: b.procs(&dir.leaf()).map(|p| p.len()).unwrap_or(0),
            not_applied: plan.map(|p| b.not_applied(&p.tenant)).unwrap_or_default(),
            read_ms: now_ms(),
        }
    }
}

/// A tenant's row as stored, less its spec (which `DesiredState` keeps).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Row {
    generation: i64,
    created_ms: i64,
    updated_ms: i64,
}

/// The desired state the API serves: read from the store once, then changed by every change
/// right after its commit, under the write lock, so it is always the stored state (issue 15:
/// a change re-read and re-planned every tenant). `version` is the `Store::tenants_version`
/// it holds; a commit made around the engine (or one that failed, which bumps it too) leaves
/// it behind, and the cache is read again.
struct Cache {
    version: u64,
    state: DesiredState,
    rows: HashMap<TenantName, Row>,
}

impl Cache {
    fn stored(&self, name: &TenantName) -> Option<StoredTenant> {
        let (spec, row) = (self.state.spec(name)?, self.rows.get(name)?);
        Some(StoredTenant {
            spec: spec.clone(),
            generation: row.generation,
            created_ms: row.created_ms,
            updated_ms: row.updated_ms,
        })
    }

    /// What a view of `name` needs from the desired state.
    fn parts(&self, name: &TenantName) -> Option<(StoredTenant, Option<TenantPlan>, CgroupPath)> {
        Some((
            self.stored(name)?,
            self.state.plan(name).cloned(),
            CgroupPath::tenant(&self.state.lineage(name)),
        ))
    }
}

/// Which part of the tenant list to answer, by name (`Governor::list`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// Only names after this one.
    pub after: Option<TenantName>,
    /// At most this many (`None`: all).
    pub limit: Option<usize>,
    /// Only this tenant and its descendants (a scoped token's view).
    pub within: Option<TenantName>,
}

/// One page of the tenant list and the name the next page starts after, if there is more.
#[derive(Debug, Clone)]
pub struct Listed {
    pub tenants: Vec<TenantView>,
    pub next_after: Option<TenantName>,
}

/// What a reconcile pass found and did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ReconcileReport {
    pub created: Vec<String>,
    #[schema(schema_with = corrected_schema)]
    pub corrected: Vec<(String, Change)>,
    /// Directories under the root that no tenant owns (reported, never deleted).
    pub unknown: Vec<String>,
    pub errors: Vec<String>,
    /// How the egress table (`nftables table inet tenantd`) differed from the desired state
    /// before the pass wrote it again, each also a `drift_corrected` event.
    pub egress_drift: Vec<String>,
}

/// The schema of `ReconcileReport::corrected`: `[directory, change]` pairs (the tuple form
/// utoipa writes, `prefixItems`, is not read by every OpenAPI 3.1 tool).
fn corrected_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Type};
    let pair = ArrayBuilder::new()
        .items(
            AnyOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::String))
                .item(<Change as utoipa::PartialSchema>::schema()),
        )
        .min_items(Some(2))
        .max_items(Some(2))
        .description(Some("[directory, change]"));
    ArrayBuilder::new().items(pair).build()
}

/// Tunables the engine needs from the configuration. The default is for tests and tools:
/// no memory reserve, no daemon protection, no protected cgroups, /proc as usual.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub params: PlanParams,
    pub memory_reserve_bytes: u64,
    pub daemon_cpu_weight: u32,
    pub daemon_memory_min_bytes: u64,
    /// Where /proc is (tests and the VM may differ).
    pub proc_root: PathBuf,
    /// Cgroups (paths as /proc/PID/cgroup shows them) whose processes are never moved into a
    /// tenant; resolved (`policy::default_protected_cgroups`) before it gets here.
    pub protected_cgroups: Vec<String>,
    /// Where `passwd` and `group` are, for the user and group names of placement rules.
    pub etc_dir: PathBuf,
    /// The hierarchies where another manager marks the cgroups it delegated (placement
    /// rules leave their processes alone); the default checks none.
    pub delegation: crate::cgroup::delegate::DelegationCheck,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            params: PlanParams::default(),
            memory_reserve_bytes: 0,
            daemon_cpu_weight: 100,
            daemon_memory_min_bytes: 0,
            proc_root: PathBuf::from("/proc"),
            protected_cgroups: Vec::new(),
            etc_dir: PathBuf::from("/etc"),
            delegation: Default::default(),
        }
    }
}

pub struct Governor {
    backend: Arc<dyn Backend>,
    store: Store,
    cfg: EngineConfig,
    cap: Capacity,
    self_pid: u32,
    writes: tokio::sync::Mutex<()>,
    /// The desired state served and changed in place (`None` until first read).
    desired: Arc<std::sync::RwLock<Option<Cache>>>,
    /// The last kernel values read per tenant (see `TenantView::kernel_read_ms`).
    kernel: std::sync::RwLock<BTreeMap<TenantName, KernelRead>>,
    /// Values rewritten and steps failed over every reconcile pass, for /metrics.
    reconcile_corrections: Counter,
    reconcile_errors: Counter,
    /// Detected by `start`; until then the governor acts as root.
    mode: std::sync::OnceLock<RunMode>,
    /// Egress policies: what the host offers, what is in force.
    egress: Arc<egress::Egress>,
    /// Placement rules at work (`autoplace`): accounts, rules in force, who was placed how.
    auto: autoplace::AutoState,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Join(e.to_string()))
}

impl Governor {
    pub fn new(
        backend: Arc<dyn Backend>,
        store: Store,
        cfg: EngineConfig,
        cap: Capacity,
    ) -> Arc<Self> {
        Arc::new(Governor {
            backend,
            store,
            cap,
            self_pid: std::process::id(),
            writes: tokio::sync::Mutex::new(()),
            desired: Arc::new(std::sync::RwLock::new(None)),
            kernel: std::sync::RwLock::new(BTreeMap::new()),
            reconcile_corrections: Counter::default(),
            reconcile_errors: Counter::default(),
            mode: std::sync::OnceLock::new(),
            egress: Arc::new(egress::Egress::default()),
            auto: autoplace::AutoState::new(cfg.etc_dir.clone()),
            cfg,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn capacity(&self) -> Capacity {
        self.cap
    }

    pub fn self_pid(&self) -> u32 {
        self.self_pid
    }

    pub fn proc_root(&self) -> &std::path::Path {
        &self.cfg.proc_root
    }

    /// The counters every reconcile pass increments, whoever starts it (at start, the
    /// periodic task, `POST /v1/reconcile`): (values corrected, steps or passes failed).
    /// `Metrics::with_reconcile_counters` exposes them.
    pub fn reconcile_counters(&self) -> (Counter, Counter) {
        (
            self.reconcile_corrections.clone(),
            self.reconcile_errors.clone(),
        )
    }

    /// The placement counters (`autoplace`): processes placed by rule, and processes a rule
    /// names that were left where they are, per tenant. `Metrics::with_placement_counters`
    /// exposes them.
    pub fn placement_counters(
        &self,
    ) -> (
        crate::metrics::TenantCounters,
        crate::metrics::TenantCounters,
    ) {
        (
            self.auto.placed_total.clone(),
            self.auto.not_placed_total.clone(),
        )
    }

    /// Waits until a tenant's placement rule changed (the rescan task runs then).
    pub async fn placement_changed(&self) {
        self.auto.changed.notified().await
    }

    /// Root, or delegated (then the root's own interface files are never written).
    pub fn mode(&self) -> RunMode {
        self.mode.get().copied().unwrap_or(RunMode::Root)
    }

    /// What the daemon cannot do in the mode it runs in, with the values that explain it
    /// (nothing as root).
    pub async fn cannot(&self) -> Result<Vec<Cannot>> {
        if self.mode() == RunMode::Root {
            return Ok(Vec::new());
        }
        let daemon_min = self.cfg.daemon_memory_min_bytes;
        let need = self.read(|c| c.state.root_protection(daemon_min)).await?;
        let b = self.backend.clone();
        Ok(blocking(move || delegated_cannot(b.as_ref(), need)).await??)
    }

    /// What this host offers for egress policies (probed at start, and again by each
    /// reconcile pass while unavailable).
    pub fn egress_support(&self) -> egress::EgressSupport {
        self.egress.support()
    }

    /// Every egress rule's counter and which policies are in force, for /metrics.
    pub async fn egress_snapshot(&self) -> Result<crate::domain::nft::EgressSnapshot> {
        let e = self.egress.clone();
        blocking(move || e.snapshot()).await
    }

    /// Probes egress support (off the async runtime).
    async fn probe_egress(&self) -> Result<()> {
        let (e, b, proc) = (
            self.egress.clone(),
            self.backend.clone(),
            self.cfg.proc_root.clone(),
        );
        let path = std::env::var("PATH").unwrap_or_default();
        blocking(move || e.probe(b.as_ref(), &proc, &path)).await
    }

    /// Writes the egress table for the desired state (with `change` in place of its tenant,
    /// see `egress::wants`); `check` reads it back first. Called with the write lock held.
    async fn sync_egress(
        &self,
        change: Option<(TenantName, Option<TenantSpec>, Vec<TenantName>)>,
        check: bool,
    ) -> Result<egress::Synced> {
        let wants = self
            .read(|c| {
                let ch = change
                    .as_ref()
                    .map(|(n, s, l)| (n, s.as_ref(), l.as_slice()));
                egress::wants(&c.state, ch)
            })
            .await?;
        let (e, b) = (self.egress.clone(), self.backend.clone());
        blocking(move || e.sync(b.as_ref(), &wants, check, now_ms())).await
    }

    pub async fn host(&self) -> Result<HostCgroup> {
        let b = self.backend.clone();
        Ok(blocking(move || b.host()).await??)
    }

    /// Prepares the root, optionally moves the daemon into its own protected leaf, and
    /// reconciles. Called once at start.
    pub async fn start(&self, move_self: bool) -> Result<ReconcileReport> {
        let b = self.backend.clone();
        let pid = self.self_pid;
        let (w, m) = (self.cfg.daemon_cpu_weight, self.cfg.daemon_memory_min_bytes);
        let mode = blocking({
            let b = b.clone();
            move || b.mode()
        })
        .await?;
        let _ = self.mode.set(mode);
        if mode == RunMode::Delegated {
            tracing::info!(
                "delegated mode (uid {}): the root's own interface files belong to the delegator and are not written; see GET /v1/host",
                crate::cgroup::euid()
            );
        }
        blocking(move || -> std::result::Result<(), CgroupError> {
            b.prepare_root()?;
            let daemon = CgroupPath::daemon();
            if move_self {
                b.attach(&daemon, pid)?;
            }
            b.ensure(&CgroupPath::root(), false)?;
            let mut s = b.read(&daemon)?;
            s.cpu_weight = w;
            s.memory_min_bytes = m;
            b.apply(&daemon, &s)?;
            Ok(())
        })
        .await??;
        self.probe_egress().await?;
        self.store
            .add_events(&[NewEvent {
                ts_ms: now_ms(),
                tenant: None,
                actor: None,
                event: Event::DaemonStart {
                    version: env!("CARGO_PKG_VERSION").into(),
                    pid,
                },
            }])
            .await?;
        self.reconcile().await
    }

    /// Writes the kernel from the store: creates what is missing, rewrites drifted values
    /// (each recorded as an event and counted), and reports directories no tenant owns.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let r = self.reconcile_pass().await;
        if r.is_err() {
            self.reconcile_errors.inc();
        }
        r
    }

    /// One pass in steps, each under the write lock, so a change waits for one step at most
    /// (issue 15: a pass over 10,000 tenants takes seconds): the journal and the root; the
    /// tenants, `RECONCILE_CHUNK` at a time, parents first, each with the plan in force when
    /// its step runs; then the walk for directories no tenant owns, made without the lock and
    /// checked again under it.
    async fn reconcile_pass(&self) -> Result<ReconcileReport> {
        let (mut report, order, ready) = {
            let _w = self.writes.lock().await;
            self.fresh_locked().await?;
            // What a crash left half-done first, so the walk below finds no directory of ours
            // that no tenant owns.
            let left = self.recover_journal().await?;
            self.fresh_locked().await?;
            let daemon_min = self.cfg.daemon_memory_min_bytes;
            let (need, order) = self
                .read(|c| {
                    let order: Vec<TenantName> = tenant::Tree::new(c.state.specs())
                        .topo_order()
                        .into_iter()
                        .cloned()
                        .collect();
                    (c.state.root_protection(daemon_min), order)
                })
                .await?;
            let (b, mode) = (self.backend.clone(), self.mode());
            let (mut report, ready) =
                blocking(move || reconcile_root(b.as_ref(), need, mode)).await?;
            report.errors.extend(left);
            (report, order, ready)
        };
        if ready {
            for chunk in order.chunks(RECONCILE_CHUNK) {
                let _w = self.writes.lock().await;
                self.fresh_locked().await?;
                let work: Vec<(TenantName, CgroupPath, TenantPlan)> = self
                    .read(|c| {
                        chunk
                            .iter()
                            .filter_map(|n| {
                                let p = c.state.plan(n)?.clone();
                                Some((n.clone(), CgroupPath::tenant(&c.state.lineage(n)), p))
                            })
                            .collect()
                    })
                    .await?;
                let b = self.backend.clone();
                let part = blocking(move || reconcile_tenants(b.as_ref(), &work)).await?;
                report.created.extend(part.created);
                report.corrected.extend(part.corrected);
                report.errors.extend(part.errors);
            }
        }
        let (b, cache) = (self.backend.clone(), self.desired.clone());
        let owned = move |t: &TenantName, parent: Option<&TenantName>| {
            let g = cache.read().expect("desired lock");
            g.as_ref()
                .and_then(|c| c.state.spec(t))
                .is_some_and(|s| s.parent.as_ref() == parent)
        };
        let found = if ready {
            blocking(move || unknown_dirs(b.as_ref(), owned)).await?
        } else {
            Vec::new()
        };
        if !found.is_empty() {
            let _w = self.writes.lock().await;
            self.fresh_locked().await?;
            report.unknown = self
                .read(|c| {
                    found
                        .into_iter()
                        .filter(|(name, parent, _)| {
                            let spec = TenantName::parse(name)
                                .ok()
                                .and_then(|t| c.state.spec(&t).cloned());
                            spec.is_none_or(|s| s.parent != *parent)
                        })
                        .map(|(_, _, shown)| shown)
                        .collect()
                })
                .await?;
        }
        let egress_drift = self.reconcile_egress(&mut report).await?;
        // Counted as soon as the kernel was written, even if recording the events fails.
        self.reconcile_corrections
            .inc_by((report.corrected.len() + egress_drift.len()) as u64);
        self.reconcile_errors.inc_by(report.errors.len() as u64);
        let ts = now_ms();
        let mut events: Vec<NewEvent> = report
            .corrected
            .iter()
            .map(|(t, c)| NewEvent {
                ts_ms: ts,
                tenant: Some(t.clone()),
                actor: None,
                event: Event::DriftCorrected {
                    file: c.file.clone(),
                    was: c.was.clone(),
                    now: c.now.clone(),
                },
            })
            .collect();
        events.extend(report.created.iter().map(|t| NewEvent {
            ts_ms: ts,
            tenant: Some(t.clone()),
            actor: None,
            event: Event::CgroupCreated {},
        }));
        events.extend(egress_drift.into_iter().map(|d| NewEvent {
            ts_ms: ts,
            tenant: d.tenant.map(|t| t.to_string()),
            actor: None,
            event: Event::DriftCorrected {
                file: format!("nftables table {}", crate::domain::nft::TABLE),
                was: d.what,
                now: "written again from the desired state".into(),
            },
        }));
        self.store.add_events(&events).await?;
        for e in &report.errors {
            tracing::warn!("reconcile: {e}");
        }
        if !report.unknown.is_empty() {
            tracing::warn!(
                "directories under the root that no tenant owns (left alone): {:?}",
                report.unknown
            );
        }
        self.refresh_kernel(None).await?;
        Ok(report)
    }

    /// The egress step of a reconcile pass: probes again while egress is unavailable, reads
    /// the table back and writes it whole (so a recreated cgroup is bound again). Returns
    /// how the kernel's table differed; failures and policies left out go to `errors`, and
    /// each difference counts as a correction.
    async fn reconcile_egress(
        &self,
        report: &mut ReconcileReport,
    ) -> Result<Vec<crate::domain::nft::Drift>> {
        let _w = self.writes.lock().await;
        self.fresh_locked().await?;
        if !self.egress.available() {
            self.probe_egress().await?;
        }
        let synced = self.sync_egress(None, true).await?;
        report.errors.extend(synced.failed);
        report.errors.extend(
            synced
                .left_out
                .into_iter()
                .map(|(t, why)| format!("tenant '{t}': egress policy not in force: {why}")),
        );
        report
            .egress_drift
            .extend(synced.drift.iter().map(|d| match &d.tenant {
                Some(t) => format!("tenant '{t}': {}", d.what),
                None => d.what.clone(),
            }));
        Ok(synced.drift)
    }

    /// Finishes or undoes every journal record a change that did not end left behind (see
    /// `journal`); returns why records stay (tried again on the next pass). Called with the
    /// write lock held, so no change is under way.
    async fn recover_journal(&self) -> Result<Vec<String>> {
        let mut stays = self.recover_moves().await?;
        let intents = self.store.intents().await?;
        if intents.is_empty() {
            return Ok(stays);
        }
        let sp = self.specs().await?;
        let (b, policy) = (self.backend.clone(), self.policy());
        let outcomes = blocking(move || {
            intents
                .iter()
                .map(|i| (i.id, journal::recover(b.as_ref(), &policy, &sp, i)))
                .collect::<Vec<_>>()
        })
        .await?;
        for (id, o) in outcomes {
            match o {
                journal::Outcome::Done(events) => {
                    tracing::info!("journal record {id}: finished or undone after a crash");
                    if let Err(e) = self.store.finish_intent(id, &events).await {
                        stays.push(format!("journal record {id}: {e}"));
                    }
                }
                journal::Outcome::Stays(why) => stays.push(why),
            }
        }
        Ok(stays)
    }

    /// Makes the cache the stored state if it is not (first use, a commit around the engine,
    /// a failed commit). While a change is under way the cache is served as it is: the change
    /// brings it up to date when it ends, and reads never wait for it.
    async fn fresh(&self) -> Result<()> {
        if self
            .cached_version()
            .is_some_and(|v| v == self.store.tenants_version())
        {
            return Ok(());
        }
        if self.cached_version().is_none() {
            let _w = self.writes.lock().await;
            return self.fresh_locked().await;
        }
        match self.writes.try_lock() {
            Ok(_w) => self.fresh_locked().await,
            Err(_) => Ok(()),
        }
    }

    fn cached_version(&self) -> Option<u64> {
        self.desired
            .read()
            .expect("desired lock")
            .as_ref()
            .map(|c| c.version)
    }

    /// `fresh` for a caller that holds the write lock: reads every tenant from the store and
    /// plans them (off the async workers) when the cache is not the stored state.
    async fn fresh_locked(&self) -> Result<()> {
        let version = self.store.tenants_version();
        if self.cached_version() == Some(version) {
            return Ok(());
        }
        let stored = self.store.tenants().await?;
        let params = self.cfg.params;
        let cache = blocking(move || {
            let rows = stored
                .iter()
                .map(|(n, t)| {
                    let row = Row {
                        generation: t.generation,
                        created_ms: t.created_ms,
                        updated_ms: t.updated_ms,
                    };
                    (n.clone(), row)
                })
                .collect();
            let specs = stored.into_iter().map(|(n, t)| (n, t.spec)).collect();
            Cache {
                version,
                state: DesiredState::new(specs, params),
                rows,
            }
        })
        .await?;
        *self.desired.write().expect("desired lock") = Some(cache);
        Ok(())
    }

    /// `f` of the current desired state (loaded first if needed).
    async fn read<R>(&self, f: impl FnOnce(&Cache) -> R) -> Result<R> {
        self.fresh().await?;
        let g = self.desired.read().expect("desired lock");
        Ok(f(g.as_ref().expect("loaded by fresh")))
    }

    /// Every tenant's spec in the desired state (the stored one), by name.
    pub async fn specs(&self) -> Result<BTreeMap<TenantName, TenantSpec>> {
        self.read(|c| {
            let all = c.state.specs().iter();
            all.map(|(n, s)| (n.clone(), TenantSpec::clone(s)))
                .collect()
        })
        .await
    }

    /// Answers `f` about the stored tenants from memory (no database read): the name, spec
    /// and row of each, and who is below whom.
    pub async fn with_tenants<R>(&self, f: impl FnOnce(&Tenants<'_>) -> R) -> Result<R> {
        self.read(|c| f(&Tenants(c))).await
    }

    /// After a commit of this change (the write lock held): the cache takes it, and the
    /// store's version when that is the one the commit made (`before` + `commits`).
    fn commit_to_cache(&self, before: u64, commits: u64, f: impl FnOnce(&mut Cache)) {
        let mut g = self.desired.write().expect("desired lock");
        let Some(c) = g.as_mut() else { return };
        if c.version != before {
            return;
        }
        f(c);
        let now = self.store.tenants_version();
        // Otherwise someone wrote around the engine: left behind, read again.
        if now == before + commits {
            c.version = now;
        }
    }

    /// Reads the kernel values of `names` (all tenants when `None`) into the read cache, off
    /// the async runtime.
    async fn refresh_kernel(&self, names: Option<Vec<TenantName>>) -> Result<()> {
        let all = names.is_none();
        let targets: Vec<(TenantName, CgroupPath, Option<TenantPlan>)> = self
            .read(|c| {
                let one = |n: TenantName| {
                    let (dir, plan) = (
                        CgroupPath::tenant(&c.state.lineage(&n)),
                        c.state.plan(&n).cloned(),
                    );
                    (n, dir, plan)
                };
                match names {
                    Some(n) => n
                        .into_iter()
                        .filter(|n| c.state.spec(n).is_some())
                        .map(one)
                        .collect(),
                    None => c.state.specs().keys().cloned().map(one).collect(),
                }
            })
            .await?;
        let b = self.backend.clone();
        let reads = blocking(move || {
            targets
                .into_iter()
                .map(|(n, dir, plan)| {
                    let r = KernelRead::of(b.as_ref(), &dir, plan.as_ref());
                    (n, r)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let live = self.desired.read().expect("desired lock");
        let mut k = self.kernel.write().expect("kernel lock");
        // Every tenant read: drop the reads of tenants gone (a delete drops its own).
        if all && let Some(c) = live.as_ref() {
            k.retain(|n, _| c.state.spec(n).is_some());
        }
        k.extend(reads);
        Ok(())
    }

    /// What drifted in the kernel from each named tenant's plan (its directory and its
    /// leaf), read now and not written: empty when the kernel holds the plan, `Err` with the
    /// reason when it cannot be read. Tenants not in the desired state are left out. For the
    /// fleet's per-node report; a reconcile pass restores what drifted.
    pub async fn drift(&self, names: Vec<TenantName>) -> Result<Vec<(TenantName, Drift)>> {
        let targets: Vec<(TenantName, CgroupPath, TenantPlan)> = self
            .read(|c| {
                names
                    .into_iter()
                    .filter_map(|n| {
                        let plan = c.state.plan(&n)?.clone();
                        Some((n.clone(), CgroupPath::tenant(&c.state.lineage(&n)), plan))
                    })
                    .collect()
            })
            .await?;
        let b = self.backend.clone();
        blocking(move || {
            targets
                .into_iter()
                .map(|(n, dir, plan)| {
                    let mut found = Vec::new();
                    for (d, want) in [(dir.clone(), &plan.tenant), (dir.leaf(), &plan.leaf)] {
                        match b.drift(&d, want) {
                            Ok(c) => found.extend(c),
                            Err(e) => return (n, Err(e.to_string())),
                        }
                    }
                    (n, Ok(found))
                })
                .collect()
        })
        .await
    }

    /// One page of the tenants, by name, with spec, plan and the last kernel values read
    /// (from memory: no kernel walk per request; a tenant not read yet is read now).
    pub async fn list(&self, page: &Page) -> Result<Listed> {
        let (mut parts, more) = self
            .read(|c| {
                let from = match &page.after {
                    Some(a) => std::ops::Bound::Excluded(a),
                    None => std::ops::Bound::Unbounded,
                };
                let mut names = c
                    .state
                    .specs()
                    .range::<TenantName, _>((from, std::ops::Bound::Unbounded))
                    .map(|(n, _)| n)
                    .filter(|n| page.within.as_ref().is_none_or(|w| c.state.within(w, n)));
                let limit = page.limit.unwrap_or(usize::MAX);
                let parts: Vec<_> = names
                    .by_ref()
                    .take(limit)
                    .filter_map(|n| Some((n.clone(), c.parts(n)?, self.egress.view(&c.state, n))))
                    .collect();
                (parts, names.next().is_some())
            })
            .await?;
        let missing: Vec<TenantName> = {
            let k = self.kernel.read().expect("kernel lock");
            parts
                .iter()
                .map(|(n, _, _)| n)
                .filter(|n| !k.contains_key(*n))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            self.refresh_kernel(Some(missing)).await?;
        }
        let next_after = if more {
            parts.last().map(|(n, _, _)| n.clone())
        } else {
            None
        };
        let k = self.kernel.read().expect("kernel lock");
        let tenants = parts
            .drain(..)
            .map(|(n, (st, plan, dir), e)| {
                let r = k.get(&n);
                view(self.backend.as_ref(), &n, st, plan, &dir, r, e)
            })
            .collect();
        Ok(Listed {
            tenants,
            next_after,
        })
    }

    pub async fn get(&self, name: &TenantName) -> Result<TenantView> {
        let ((st, plan, dir), e) = self
            .read(|c| Some((c.parts(name)?, self.egress.view(&c.state, name))))
            .await?
            .ok_or_else(|| EngineError::NotFound(name.to_string()))?;
        let cached = self.kernel.read().expect("kernel lock").get(name).cloned();
        let read = match cached {
            Some(r) => r,
            None => {
                self.refresh_kernel(Some(vec![name.clone()])).await?;
                let k = self.kernel.read().expect("kernel lock");
                k.get(name)
                    .cloned()
                    .ok_or_else(|| EngineError::NotFound(name.to_string()))?
            }
        };
        Ok(view(
            self.backend.as_ref(),
            name,
            st,
            plan,
            &dir,
            Some(&read),
            e,
        ))
    }

    /// Creates or replaces a tenant. Returns the view and whether it was created.
    ///
    /// Admission and planning run once, against the desired state in memory and off the async
    /// workers, for the tenant and its ancestors only (`DesiredState::preview`); the kernel
    /// is written for the plans that change; the cache takes the change right after the commit.
    pub async fn put(
        &self,
        name: &TenantName,
        spec: TenantSpec,
        actor: &str,
    ) -> Result<(TenantView, bool)> {
        // A bad value is named before a host that cannot enforce a policy refuses it.
        tenant::validate_spec(name, &spec)?;
        self.egress.admit(&spec)?;
        let _w = self.writes.lock().await;
        self.fresh_locked().await?;
        // A new or changed placement rule: names resolved, no conflict with another tenant's
        // (reads /etc/passwd and /etc/group only when they changed: a stat each otherwise).
        let placement_changed = self
            .read(|c| c.state.spec(name).and_then(|s| s.placement.clone()))
            .await?
            != spec.placement;
        if placement_changed && let Some(p) = &spec.placement {
            self.check_placement(name, p)?;
        }
        let (cache, cap, n, s) = (self.desired.clone(), self.cap, name.clone(), spec.clone());
        let prepared = blocking(move || -> Result<Option<(StateChange, Option<TenantSpec>)>> {
            let g = cache.read().expect("desired lock");
            let c = g.as_ref().expect("loaded by fresh_locked");
            let old = c.state.spec(&n);
            if let Some(o) = old
                && o.parent != s.parent
            {
                return Err(EngineError::Conflict {
                    field: "parent".into(),
                    message: format!(
                        "tenant '{n}' already has {}: moving a tenant to another parent is not supported; delete and recreate it",
                        match &o.parent {
                            Some(p) => format!("parent '{p}'"),
                            None => "no parent (it is a top-level tenant)".to_string(),
                        }
                    ),
                });
            }
            c.state.admit(&n, &s, cap)?;
            if old == Some(&s) {
                return Ok(None);
            }
            Ok(Some((c.state.preview(&n, Some(&s)), old.cloned())))
        })
        .await??;
        let Some((change, old)) = prepared else {
            drop(_w);
            return Ok((self.get(name).await?, false));
        };
        let created = old.is_none();
        let dir = CgroupPath::tenant(&change.lineage());
        // A new tenant's directories are journaled before they are made: after a crash before
        // the commit, the next start removes them (`journal::recover`).
        let step = if created {
            let dir = journal::text(&dir);
            Some(
                self.store
                    .add_intent(&Step::Create { dir }.intent(name))
                    .await?,
            )
        } else {
            None
        };
        let change = Arc::new(change);
        let b = self.backend.clone();
        let (cfg, mode) = (self.cfg.clone(), self.mode());
        let (n, c) = (name.clone(), change.clone());
        let applied =
            blocking(move || write_change(b.as_ref(), &cfg, mode, &c, Way::Forward, Some(&n)))
                .await;
        if let Err(e) = applied.and_then(|r| r.map_err(EngineError::from)) {
            // `write_change` undid what it wrote; the record of the directories goes too.
            if let Some(id) = step {
                self.forget(id).await;
            }
            return Err(e);
        }
        // A change to a policy goes into the kernel's table before it is committed: one the
        // table cannot hold (nft refuses it, its cgroup cannot be named) is refused, and the
        // kernel change undone.
        let own = |s: Option<&TenantSpec>| {
            s.and_then(|s| s.network.as_ref())
                .is_some_and(|n| n.egress.is_some())
        };
        let egress_touched = self.egress.available() && (own(old.as_ref()) || own(Some(&spec)));
        if egress_touched {
            let synced = self
                .sync_egress(
                    Some((name.clone(), Some(spec.clone()), change.lineage())),
                    false,
                )
                .await;
            let refused = match synced {
                Ok(s) => s.failed.or_else(|| {
                    s.left_out
                        .into_iter()
                        .find(|(t, _)| t == name)
                        .map(|(_, why)| format!("its policy cannot go into the table: {why}"))
                }),
                Err(e) => Some(e.to_string()),
            };
            if let Some(message) = refused {
                self.undo_put(change, created, dir, step).await;
                return Err(EngineError::NftRefused { message });
            }
        }

        // One time for the event and the row, so a tenant's history starts at its creation
        // event exactly (scoped callers see history from `created_ms` on).
        let now = now_ms();
        let event = NewEvent {
            ts_ms: now,
            tenant: Some(name.to_string()),
            actor: Some(actor.to_string()),
            // A creation records the spec (bounded by validation); a change records only the
            // fields it touched, never two copies of the whole spec.
            event: match &old {
                None => Event::TenantCreated {
                    spec: Box::new(spec.clone()),
                },
                Some(o) => Event::TenantChanged {
                    changes: tenant::spec_changes(o, &spec),
                },
            },
        };
        let before = self.store.tenants_version();
        let generation = match self
            .store
            .put_tenant_with(name, &spec, now, event, step)
            .await
        {
            Ok(g) => g,
            Err(e) => {
                // Keep the kernel as the store says: undo what was just written.
                self.undo_put(change, created, dir, step).await;
                if egress_touched && let Err(u) = self.sync_egress(None, false).await {
                    tracing::error!("could not write the egress table back (reconcile will): {u}");
                }
                return Err(e.into());
            }
        };
        let lineage = change.lineage();
        let change = Arc::try_unwrap(change).unwrap_or_else(|c| (*c).clone());
        self.commit_to_cache(before, 1, |c| {
            let created_ms = match c.rows.get(name) {
                Some(r) if !created => r.created_ms,
                _ => now,
            };
            c.state.apply(change);
            c.rows.insert(
                name.clone(),
                Row {
                    generation,
                    created_ms,
                    updated_ms: now,
                },
            );
        });
        drop(_w);
        if placement_changed {
            self.auto.changed.notify_one();
        }
        // The tenant and its ancestors: the kernel values a change to it may alter.
        self.refresh_kernel(Some(lineage)).await?;
        Ok((self.get(name).await?, created))
    }

    /// Undoes the kernel side of a put that is not committed: the plans before it, the
    /// directory it created, and its journal record once that is done.
    async fn undo_put(
        &self,
        change: Arc<StateChange>,
        created: bool,
        dir: CgroupPath,
        step: Option<i64>,
    ) {
        let b = self.backend.clone();
        let (cfg, mode) = (self.cfg.clone(), self.mode());
        let undo = blocking(move || {
            write_change(b.as_ref(), &cfg, mode, &change, Way::Back, None)?;
            if created {
                b.remove(&dir)?;
            }
            Ok::<(), CgroupError>(())
        })
        .await;
        match undo {
            Ok(Ok(())) => {
                if let Some(id) = step {
                    self.forget(id).await;
                }
            }
            Ok(Err(u)) => tracing::error!(
                "could not undo the kernel change of a put that was not committed (reconcile will): {u}"
            ),
            Err(u) => tracing::error!("could not undo the kernel change: {u}"),
        }
    }

    /// Deletes a tenant: refused while it has children, or live processes unless `mode` says
    /// to kill them or move them to another tenant; refused (409, nothing killed or moved) when
    /// PID 1 or the daemon is among its processes.
    pub async fn delete(&self, name: &TenantName, mode: DeleteMode, actor: &str) -> Result<()> {
        let _w = self.writes.lock().await;
        self.fresh_locked().await?;
        let (cache, n, m) = (self.desired.clone(), name.clone(), mode.clone());
        let (dir, target, change, stored) = blocking(move || {
            let g = cache.read().expect("desired lock");
            let c = g.as_ref().expect("loaded by fresh_locked");
            let stored = c
                .stored(&n)
                .ok_or_else(|| EngineError::NotFound(n.to_string()))?;
            let kids: Vec<&str> = c.state.children(Some(&n)).map(|k| k.as_str()).collect();
            if !kids.is_empty() {
                return Err(EngineError::Conflict {
                    field: "name".into(),
                    message: format!(
                        "tenant '{n}' has children ({}): delete them first",
                        kids.join(", ")
                    ),
                });
            }
            let target = match &m {
                DeleteMode::MoveTo(t) if *t == n => {
                    return Err(EngineError::Domain(DomainError::invalid(
                        "move_to",
                        "cannot move processes to the tenant being deleted",
                    )));
                }
                DeleteMode::MoveTo(t) if c.state.spec(t).is_none() => {
                    return Err(EngineError::Domain(DomainError::NotFound {
                        field: "move_to".into(),
                        message: format!("tenant '{t}' does not exist"),
                    }));
                }
                DeleteMode::MoveTo(t) => Some(CgroupPath::tenant(&c.state.lineage(t)).leaf()),
                _ => None,
            };
            let dir = CgroupPath::tenant(&c.state.lineage(&n));
            Ok((dir, target, c.state.preview(&n, None), stored))
        })
        .await??;
        // The placer stops listening to process events when the last rule goes (issue 15).
        let had_rule = stored.spec.placement.is_some();
        let empty = match (&mode, target) {
            (DeleteMode::Kill, _) => Emptying::Kill,
            (DeleteMode::MoveTo(_), Some(to)) => Emptying::MoveTo(journal::text(&to)),
            _ => Emptying::Refuse,
        };
        // Checked before the delete is stored, so a refusal leaves everything as it was.
        let (b, policy, e, d, t) = (
            self.backend.clone(),
            self.policy(),
            empty.clone(),
            dir.clone(),
            name.to_string(),
        );
        blocking(move || journal::precheck(b.as_ref(), &policy, &d, &e, &t)).await??;

        // Stored first (with the journal record of the kernel work), then done in the kernel:
        // a store that cannot write refuses the delete before anything is killed or removed.
        let step = Step::Delete {
            dir: journal::text(&dir),
            empty: empty.clone(),
        };
        let event = NewEvent {
            ts_ms: now_ms(),
            tenant: Some(name.to_string()),
            actor: Some(actor.to_string()),
            event: Event::TenantDeleted {
                mode: match &mode {
                    DeleteMode::Refuse => "refuse".to_string(),
                    DeleteMode::Kill => "kill".into(),
                    DeleteMode::MoveTo(t) => format!("move_to:{t}"),
                },
            },
        };
        let before = self.store.tenants_version();
        let id = self
            .store
            .delete_tenant_with(name, event, &step.intent(name))
            .await?
            .ok_or_else(|| EngineError::NotFound(name.to_string()))?;
        let (b, policy, d, t) = (
            self.backend.clone(),
            self.policy(),
            dir.clone(),
            name.to_string(),
        );
        let done = blocking(move || journal::empty_and_remove(b.as_ref(), &policy, &d, &empty, &t))
            .await
            .and_then(|r| r);
        let change = Arc::new(change);
        let moved = match done {
            Ok(moved) => moved,
            Err(e) => {
                self.undo_delete(name, &stored, change, before, id, &e)
                    .await;
                return Err(e);
            }
        };
        let b = self.backend.clone();
        let (cfg, run) = (self.cfg.clone(), self.mode());
        let ancestors = change.lineage();
        let c = change.clone();
        if let Err(e) =
            blocking(move || write_change(b.as_ref(), &cfg, run, &c, Way::Forward, None)).await?
        {
            // The delete is stored and done; the ancestors' new settings are written by the
            // next reconcile pass.
            tracing::warn!(
                "tenant '{name}' deleted; rewriting its ancestors' settings failed: {e}"
            );
        }
        let change = Arc::try_unwrap(change).unwrap_or_else(|c| (*c).clone());
        self.commit_to_cache(before, 1, |c| {
            c.state.apply(change);
            c.rows.remove(name);
        });
        self.kernel.write().expect("kernel lock").remove(name);
        // Its policy leaves the table (its cgroup is gone, so the rule matched nothing).
        let had_policy = stored
            .spec
            .network
            .as_ref()
            .is_some_and(|n| n.egress.is_some());
        if had_policy && self.egress.available() {
            let failed = match self.sync_egress(None, false).await {
                Ok(s) => s.failed,
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                tracing::warn!(
                    "tenant '{name}' deleted; writing the egress table failed (reconcile will): {e}"
                );
            }
        }
        let events: Vec<NewEvent> = match &mode {
            DeleteMode::MoveTo(to) if !moved.is_empty() => vec![NewEvent {
                ts_ms: now_ms(),
                tenant: Some(name.to_string()),
                actor: Some(actor.to_string()),
                event: Event::ProcessesMoved {
                    to: to.clone(),
                    pids: moved,
                },
            }],
            _ => Vec::new(),
        };
        if let Err(e) = self.store.finish_intent(id, &events).await {
            // The delete itself is stored: answered as done; the record is dropped by the next
            // pass, which finds nothing left to remove.
            tracing::warn!("tenant '{name}' deleted; removing its journal record failed: {e}");
        }
        if had_rule {
            self.auto.changed.notify_one();
        }
        self.refresh_kernel(Some(ancestors)).await?;
        Ok(())
    }

    /// After a stored delete that the kernel refused: the tenant goes back into the store
    /// (same spec, generation and creation time) and its directories into the kernel. If the
    /// store cannot take it back, the journal record stays and the next reconcile pass
    /// finishes the delete.
    async fn undo_delete(
        &self,
        name: &TenantName,
        stored: &StoredTenant,
        change: Arc<StateChange>,
        before: u64,
        id: i64,
        why: &EngineError,
    ) {
        let event = NewEvent {
            ts_ms: now_ms(),
            tenant: Some(name.to_string()),
            actor: None,
            event: Event::TenantDeleteUndone {
                why: why.to_string(),
            },
        };
        if let Err(e) = self.store.restore_tenant(name, stored, event, id).await {
            tracing::error!(
                "tenant '{name}': the kernel refused its delete ({why}) and the store cannot take it back ({e}); the next reconcile pass finishes the delete"
            );
            return;
        }
        // Deleted and restored as it was: the cache, never changed, is the stored state.
        self.commit_to_cache(before, 2, |_| {});
        let (b, cfg, mode, n, c) = (
            self.backend.clone(),
            self.cfg.clone(),
            self.mode(),
            name.clone(),
            change.clone(),
        );
        match blocking(move || write_change(b.as_ref(), &cfg, mode, &c, Way::Back, Some(&n))).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "tenant '{name}' kept after a refused delete; rewriting its settings failed (reconcile will): {e}"
            ),
            Err(e) => tracing::warn!("tenant '{name}': {e}"),
        }
        let _ = self.refresh_kernel(Some(change.lineage())).await;
    }

    /// Drops a journal record whose kernel step was undone; a failure only leaves it to the
    /// next reconcile pass, which finds nothing to undo.
    async fn forget(&self, id: i64) {
        if let Err(e) = self.store.finish_intent(id, &[]).await {
            tracing::warn!(
                "removing journal record {id} failed (the next reconcile pass will): {e}"
            );
        }
    }

    /// Reads the governor root's cpu.weight (the adaptive controller's starting point).
    pub async fn root_cpu_weight(&self) -> Result<u32> {
        let b = self.backend.clone();
        Ok(blocking(move || b.read(&CgroupPath::root()))
            .await??
            .cpu_weight)
    }

    /// Sets the governor root's cpu.weight (adaptive SLA enforcement); refused in delegated
    /// mode, where the file is the delegator's.
    pub async fn set_root_cpu_weight(&self, w: u32) -> Result<()> {
        if self.mode() == RunMode::Delegated {
            return Err(root_file_refused("cpu.weight").into());
        }
        let b = self.backend.clone();
        blocking(move || {
            let root = CgroupPath::root();
            let mut s = b.read(&root)?;
            s.cpu_weight = w;
            b.apply(&root, &s).map(|_| ())
        })
        .await??;
        Ok(())
    }

    /// The tenant's leaf cgroup path (for placement and sampling).
    pub async fn leaf_of(&self, name: &TenantName) -> Result<CgroupPath> {
        self.read(|c| {
            c.state
                .spec(name)
                .map(|_| CgroupPath::tenant(&c.state.lineage(name)).leaf())
        })
        .await?
        .ok_or_else(|| EngineError::NotFound(name.to_string()))
    }

    /// Every tenant's spec and directory from the desired state in memory, with the
    /// `Store::tenants_version` they are (the sampler's list: no database read per change;
    /// issue 15). The version is the cache's: behind the store's while a change commits, so
    /// the sampler asks again at its next sweep. The specs are the desired state's own, shared.
    pub async fn sample_targets(
        &self,
    ) -> Result<(u64, Vec<(TenantName, Arc<TenantSpec>, CgroupPath)>)> {
        self.read(|c| {
            let all = c
                .state
                .specs()
                .iter()
                .map(|(n, s)| {
                    (
                        n.clone(),
                        s.clone(),
                        CgroupPath::tenant(&c.state.lineage(n)),
                    )
                })
                .collect();
            (c.version, all)
        })
        .await
    }

    /// Every tenant's directory, for the sampler.
    pub async fn tenant_dirs(&self) -> Result<Vec<(TenantName, CgroupPath)>> {
        self.read(|c| {
            c.state
                .specs()
                .keys()
                .map(|n| (n.clone(), CgroupPath::tenant(&c.state.lineage(n))))
                .collect()
        })
        .await
    }
}

/// The stored tenants as the desired state in memory holds them (`Governor::with_tenants`).
pub struct Tenants<'a>(&'a Cache);

impl Tenants<'_> {
    /// A tenant as stored.
    pub fn get(&self, name: &TenantName) -> Option<StoredTenant> {
        self.0.stored(name)
    }

    pub fn contains(&self, name: &TenantName) -> bool {
        self.0.state.spec(name).is_some()
    }

    /// The tenant's parent, if it has one.
    pub fn parent(&self, name: &TenantName) -> Option<&TenantName> {
        self.0.state.spec(name).and_then(|s| s.parent.as_ref())
    }

    pub fn len(&self) -> usize {
        self.0.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.state.is_empty()
    }

    /// When the tenant was created (Unix ms).
    pub fn created_ms(&self, name: &TenantName) -> Option<i64> {
        self.0.rows.get(name).map(|r| r.created_ms)
    }

    /// Whether `name` is `scope` or one of its descendants.
    pub fn within(&self, scope: &TenantName, name: &TenantName) -> bool {
        self.0.state.within(scope, name)
    }

    /// Every tenant's name, in order.
    pub fn names(&self) -> impl Iterator<Item = &TenantName> {
        self.0.state.specs().keys()
    }
}

/// A tenant's view from the desired state and the last kernel read (no IO: `path_of` and
/// `not_applied` only compute).
fn view(
    b: &dyn Backend,
    name: &TenantName,
    stored: StoredTenant,
    plan: Option<TenantPlan>,
    dir: &CgroupPath,
    read: Option<&KernelRead>,
    egress: Option<egress::EgressView>,
) -> TenantView {
    let (effective, effective_error) = match read.map(|r| &r.effective) {
        Some(Ok(s)) => (Some(s.clone()), None),
        Some(Err(e)) => (None, Some(e.clone())),
        None => (None, Some("not read from the kernel yet".to_string())),
    };
    TenantView {
        name: name.clone(),
        stored,
        cgroup: b.path_of(dir),
        not_applied: read.map(|r| r.not_applied.clone()).unwrap_or_default(),
        planned: plan.unwrap_or(TenantPlan {
            tenant: Settings::default(),
            leaf: Settings::default(),
        }),
        effective,
        effective_error,
        procs: read.map_or(0, |r| r.procs),
        kernel_read_ms: read.map(|r| r.read_ms),
        egress,
    }
}

/// Which way `write_change` writes a change: made, or undone.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Forward,
    Back,
}

/// A plan change's (from, to) plans for `way`.
fn pick(
    pc: &crate::domain::desired::PlanChange,
    way: Way,
) -> (Option<&TenantPlan>, Option<&TenantPlan>) {
    match way {
        Way::Forward => (pc.before.as_ref(), pc.after.as_ref()),
        Way::Back => (pc.after.as_ref(), pc.before.as_ref()),
    }
}

/// Writes the plans `c` alters, parents first (and `target`'s even when unchanged, so a
/// change repairs its tenant), and the governor root's protection. On failure, rewrites what
/// it touched as it was and removes a directory it created for `target`. `Way::Back` writes
/// the plans before the change instead (a tenant that had none is left to the caller).
fn write_change(
    b: &dyn Backend,
    cfg: &EngineConfig,
    mode: RunMode,
    c: &StateChange,
    way: Way,
    target: Option<&TenantName>,
) -> std::result::Result<(), CgroupError> {
    let names = c.lineage();
    let pick = |pc| pick(pc, way);
    let root = |top: plan::Protected| (top.hard + cfg.daemon_memory_min_bytes, top.soft);
    let (root_from, root_to) = match way {
        Way::Forward => (root(c.top_before), root(c.top_after)),
        Way::Back => (root(c.top_after), root(c.top_before)),
    };
    let dir_at = |i: usize| CgroupPath::tenant(&names[..=i]);
    let mut created = None;
    let mut touched: Vec<usize> = Vec::new();
    let result = (|| {
        if let Some(t) = target
            && let Some(i) = names.iter().position(|n| n == t)
            && pick(&c.plans[i]).1.is_some()
        {
            let dir = dir_at(i);
            if b.ensure(&dir, true)? && pick(&c.plans[i]).0.is_none() {
                created = Some(dir);
            }
        }
        apply_root_protection(b, mode, root_to)?;
        for (i, pc) in c.plans.iter().enumerate() {
            let (from, to) = pick(pc);
            let Some(p) = to else { continue };
            if from == Some(p) && Some(&pc.name) != target {
                continue;
            }
            let dir = dir_at(i);
            b.ensure(&dir, true)?;
            touched.push(i);
            b.apply(&dir, &p.tenant)?;
            b.apply(&dir.leaf(), &p.leaf)?;
        }
        Ok(())
    })();
    if result.is_err() {
        for &i in touched.iter().rev() {
            if let Some(p) = pick(&c.plans[i]).0 {
                let dir = dir_at(i);
                let _ = b.apply(&dir, &p.tenant);
                let _ = b.apply(&dir.leaf(), &p.leaf);
            }
        }
        let _ = apply_root_protection(b, mode, root_from);
        if let Some(dir) = created {
            let _ = b.remove(&dir);
        }
    }
    result
}

/// The governor root must hold the sum of the tenants' memory protection, or theirs is void.
/// In delegated mode the root's memory.min and memory.low are the delegator's: not written
/// (cgroup-v2.rst, "Delegation"), and `GET /v1/host` says what they hold and what is needed.
fn apply_root_protection(
    b: &dyn Backend,
    mode: RunMode,
    (min, low): (u64, u64),
) -> std::result::Result<(), CgroupError> {
    if mode == RunMode::Delegated {
        return Ok(());
    }
    let root = CgroupPath::root();
    let mut s = b.read(&root)?;
    if (s.memory_min_bytes, s.memory_low_bytes) == (min, low) {
        return Ok(());
    }
    s.memory_min_bytes = min;
    s.memory_low_bytes = low;
    match b.apply(&root, &s) {
        // A root whose parent does not delegate memory cannot hold protection; the host
        // report says memory is missing.
        Err(CgroupError::Unsupported { .. }) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Tenants per step of a reconcile pass (`Governor::reconcile_pass`): a change waits for one
/// step at most.
const RECONCILE_CHUNK: usize = 32;

/// The governor root, made ready, with the protection its tenants need; false when it is
/// not ready (nothing below it is reconciled then).
fn reconcile_root(b: &dyn Backend, need: (u64, u64), mode: RunMode) -> (ReconcileReport, bool) {
    let mut r = ReconcileReport::default();
    if let Err(e) = b
        .prepare_root()
        .and_then(|_| b.ensure(&CgroupPath::root(), false))
    {
        r.errors.push(e.to_string());
        return (r, false);
    }
    if let Err(e) = apply_root_protection(b, mode, need) {
        r.errors.push(e.to_string());
    }
    (r, true)
}

/// Creates what is missing and rewrites what drifted, for each (tenant, directory, plan).
fn reconcile_tenants(
    b: &dyn Backend,
    work: &[(TenantName, CgroupPath, TenantPlan)],
) -> ReconcileReport {
    let mut r = ReconcileReport::default();
    for (n, dir, p) in work {
        match b.ensure(dir, true) {
            Ok(true) => r.created.push(n.to_string()),
            Ok(false) => {}
            Err(e) => {
                r.errors.push(format!("tenant '{n}': {e}"));
                continue;
            }
        }
        for (d, s) in [(dir.clone(), &p.tenant), (dir.leaf(), &p.leaf)] {
            match b.apply(&d, s) {
                Ok(changes) => r
                    .corrected
                    .extend(changes.into_iter().map(|c| (n.to_string(), c))),
                Err(e) => r.errors.push(format!("tenant '{n}': {e}")),
            }
        }
    }
    r
}

/// Directories under the root that no tenant owns, by `owned(name, parent)`: walks the tree
/// we know. Each is (its name, the tenant it sits in, its path as shown).
fn unknown_dirs(
    b: &dyn Backend,
    owned: impl Fn(&TenantName, Option<&TenantName>) -> bool,
) -> Vec<(String, Option<TenantName>, String)> {
    let mut out = Vec::new();
    let mut stack = vec![(CgroupPath::root(), None::<TenantName>)];
    while let Some((dir, parent)) = stack.pop() {
        let Ok(kids) = b.children(&dir) else { continue };
        for k in kids {
            if k == LEAF || (parent.is_none() && k == DAEMON_LEAF) {
                continue;
            }
            let mine = TenantName::parse(&k)
                .ok()
                .filter(|t| owned(t, parent.as_ref()));
            match mine {
                Some(t) => stack.push((
                    dir.join(&k).expect("tenant names are valid segments"),
                    Some(t),
                )),
                None => {
                    let shown = b.path_of(&dir).join(&k).display().to_string();
                    out.push((k, parent.clone(), shown));
                }
            }
        }
    }
    out
}

/// The refusal to write one of the root's own interface files in delegated mode.
fn root_file_refused(file: &str) -> CgroupError {
    CgroupError::Unsupported {
        what: format!("{file} of the governor root"),
        why: "tenantd runs in a delegated subtree, whose root's own interface files belong to the delegator (see GET /v1/host)".into(),
    }
}

/// What a delegated daemon cannot do, with the values the delegator holds and the values the
/// tenants need (cgroup-v2.rst, "Delegation": a delegatee writes only below its root).
fn delegated_cannot(
    b: &dyn Backend,
    (min, low): (u64, u64),
) -> std::result::Result<Vec<Cannot>, CgroupError> {
    let root = b.path_of(&CgroupPath::root());
    let held = b.read(&CgroupPath::root())?;
    let enough = held.memory_min_bytes >= min && held.memory_low_bytes >= low;
    let uid = crate::cgroup::euid();
    Ok(vec![
        Cannot {
            what: format!("memory.min and memory.low of {}", root.display()),
            why: format!(
                "they belong to the delegator; the tenants' memory guarantees and the daemon's memory.min hold only up to them: they hold min {} / low {} bytes, the tenants and the daemon need min {min} / low {low}{}",
                held.memory_min_bytes,
                held.memory_low_bytes,
                if enough {
                    " (enough)"
                } else {
                    ": the delegator must raise them"
                }
            ),
        },
        Cannot {
            what: format!("cpu.weight of {}", root.display()),
            why: format!(
                "it belongs to the delegator (now {}): adaptive SLA enforcement cannot raise the root's share against what runs outside it, and stays off",
                held.cpu_weight
            ),
        },
        Cannot {
            what: format!("placing processes that run outside {}", root.display()),
            why: format!(
                "the kernel moves a process only for a writer of cgroup.procs in the common ancestor of its cgroup and the tenant's (cgroup-v2.rst, \"Delegation Containment\"): tenantd, uid {uid}, places processes already inside the delegated subtree; the others answer 403"
            ),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_errors_log_text_names_its_cause_once() {
        let store = EngineError::Store(crate::store::StoreError::Query {
            op: "roll up usage",
            source: sqlx::Error::Protocol("database is locked".into()),
        });
        assert_eq!(store.to_string(), "database roll up usage failed");
        let text = store.with_causes();
        assert!(
            text.starts_with("database roll up usage failed: "),
            "{text}"
        );
        assert_eq!(text.matches("database is locked").count(), 1, "{text}");
        let not_found = EngineError::NotFound("acme".into());
        assert_eq!(not_found.with_causes(), not_found.to_string());
    }
}
