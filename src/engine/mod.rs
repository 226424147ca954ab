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
//! `report` and `metrics`; never `api`, `config` or `cli`.

pub mod journal;
pub mod placement;
pub mod policy;
mod reads;
pub mod report;
pub mod sampler;

use crate::cgroup::{
    Backend, Cannot, CgroupError, CgroupPath, Change, DAEMON_LEAF, HostCgroup, LEAF, RunMode,
};
use crate::domain::event::Event;
use crate::domain::plan::{self, PlanParams, Settings, TenantPlan};
use crate::domain::tenant::{self, Capacity, DomainError, TenantName, TenantSpec};
use crate::store::{NewEvent, Store, StoreError, StoredTenant};
use journal::{Emptying, Step};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use std::collections::BTreeMap;
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
}

impl From<CgroupError> for EngineError {
    fn from(source: CgroupError) -> Self {
        EngineError::Kernel { source }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

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
}

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

/// The desired state as the API reads it, for one version of the tenants table: specs and
/// plans computed once per change instead of once per request.
struct Desired {
    version: u64,
    stored: Arc<BTreeMap<TenantName, StoredTenant>>,
    specs: Arc<BTreeMap<TenantName, TenantSpec>>,
    plans: Arc<BTreeMap<TenantName, TenantPlan>>,
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
    /// The last desired state read from the store, by its `tenants_version`.
    desired: std::sync::RwLock<Option<Arc<Desired>>>,
    /// The last kernel values read per tenant (see `TenantView::kernel_read_ms`).
    kernel: std::sync::RwLock<BTreeMap<TenantName, KernelRead>>,
    /// Values rewritten and steps failed over every reconcile pass, for /metrics.
    reconcile_corrections: Counter,
    reconcile_errors: Counter,
    /// Detected by `start`; until then the governor acts as root.
    mode: std::sync::OnceLock<RunMode>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Join(e.to_string()))
}

fn specs_of(stored: &BTreeMap<TenantName, StoredTenant>) -> BTreeMap<TenantName, TenantSpec> {
    stored
        .iter()
        .map(|(n, t)| (n.clone(), t.spec.clone()))
        .collect()
}

fn dir_of(name: &TenantName, specs: &BTreeMap<TenantName, TenantSpec>) -> CgroupPath {
    CgroupPath::tenant(&tenant::lineage(name, specs))
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
            cfg,
            cap,
            self_pid: std::process::id(),
            writes: tokio::sync::Mutex::new(()),
            desired: std::sync::RwLock::new(None),
            kernel: std::sync::RwLock::new(BTreeMap::new()),
            reconcile_corrections: Counter::default(),
            reconcile_errors: Counter::default(),
            mode: std::sync::OnceLock::new(),
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
        let specs = self.desired().await?.specs.clone();
        let (b, daemon_min) = (self.backend.clone(), self.cfg.daemon_memory_min_bytes);
        Ok(blocking(move || delegated_cannot(b.as_ref(), &specs, daemon_min)).await??)
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

    async fn reconcile_pass(&self) -> Result<ReconcileReport> {
        let _w = self.writes.lock().await;
        let specs = specs_of(&self.store.tenants().await?);
        // What a crash left half-done first, so the walk below finds no directory of ours
        // that no tenant owns.
        let left = self.recover_journal(&specs).await?;
        let b = self.backend.clone();
        let (cfg, mode) = (self.cfg.clone(), self.mode());
        let mut report = blocking(move || reconcile_kernel(b.as_ref(), &specs, &cfg, mode)).await?;
        report.errors.extend(left);
        // Counted as soon as the kernel was written, even if recording the events fails.
        self.reconcile_corrections
            .inc_by(report.corrected.len() as u64);
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
        drop(_w);
        self.refresh_kernel(None).await?;
        Ok(report)
    }

    /// Finishes or undoes every journal record a change that did not end left behind (see
    /// `journal`); returns why records stay (tried again on the next pass). Called with the
    /// write lock held, so no change is under way.
    async fn recover_journal(
        &self,
        specs: &BTreeMap<TenantName, TenantSpec>,
    ) -> Result<Vec<String>> {
        let intents = self.store.intents().await?;
        if intents.is_empty() {
            return Ok(Vec::new());
        }
        let (b, policy, sp) = (self.backend.clone(), self.policy(), specs.clone());
        let outcomes = blocking(move || {
            intents
                .iter()
                .map(|i| (i.id, journal::recover(b.as_ref(), &policy, &sp, i)))
                .collect::<Vec<_>>()
        })
        .await?;
        let mut stays = Vec::new();
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

    /// The desired state at the store's current version: read and planned once per change,
    /// then served from memory (reads must stay cheap while tenants saturate every CPU).
    async fn desired(&self) -> Result<Arc<Desired>> {
        let version = self.store.tenants_version();
        if let Some(d) = self.desired.read().expect("desired lock").as_ref()
            && d.version == version
        {
            return Ok(d.clone());
        }
        let stored = self.store.tenants().await?;
        let specs = specs_of(&stored);
        let plans = plan::plan(&specs, self.cfg.params);
        let d = Arc::new(Desired {
            version,
            stored: Arc::new(stored),
            specs: Arc::new(specs),
            plans: Arc::new(plans),
        });
        *self.desired.write().expect("desired lock") = Some(d.clone());
        Ok(d)
    }

    /// Reads the kernel values of `names` (all tenants when `None`) into the read cache, off
    /// the async runtime.
    async fn refresh_kernel(&self, names: Option<Vec<TenantName>>) -> Result<()> {
        let d = self.desired().await?;
        let b = self.backend.clone();
        let (specs, plans) = (d.specs.clone(), d.plans.clone());
        let names: Vec<TenantName> = match names {
            Some(n) => n.into_iter().filter(|n| specs.contains_key(n)).collect(),
            None => specs.keys().cloned().collect(),
        };
        let reads = blocking(move || {
            names
                .into_iter()
                .map(|n| {
                    let r = KernelRead::of(b.as_ref(), &dir_of(&n, &specs), plans.get(&n));
                    (n, r)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut k = self.kernel.write().expect("kernel lock");
        k.retain(|n, _| d.specs.contains_key(n));
        k.extend(reads);
        Ok(())
    }

    /// Every tenant with its spec, plan and the last kernel values read (from memory: no
    /// kernel walk per request; a tenant not read yet is read now).
    pub async fn list(&self) -> Result<Vec<TenantView>> {
        let d = self.desired().await?;
        let missing: Vec<TenantName> = {
            let k = self.kernel.read().expect("kernel lock");
            d.specs
                .keys()
                .filter(|n| !k.contains_key(*n))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            self.refresh_kernel(Some(missing)).await?;
        }
        let k = self.kernel.read().expect("kernel lock");
        Ok(d.stored
            .iter()
            .map(|(n, st)| view(self.backend.as_ref(), n, st.clone(), &d, k.get(n)))
            .collect())
    }

    pub async fn get(&self, name: &TenantName) -> Result<TenantView> {
        let d = self.desired().await?;
        let st = d
            .stored
            .get(name)
            .cloned()
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
        Ok(view(self.backend.as_ref(), name, st, &d, Some(&read)))
    }

    /// Creates or replaces a tenant. Returns the view and whether it was created.
    pub async fn put(
        &self,
        name: &TenantName,
        spec: TenantSpec,
        actor: &str,
    ) -> Result<(TenantView, bool)> {
        let _w = self.writes.lock().await;
        let stored = self.store.tenants().await?;
        let mut specs = specs_of(&stored);
        let old_specs = specs.clone();
        let old = specs.remove(name);
        if let Some(o) = &old
            && o.parent != spec.parent
        {
            return Err(EngineError::Conflict {
                field: "parent".into(),
                message: format!(
                    "tenant '{name}' already has {}: moving a tenant to another parent is not supported; delete and recreate it",
                    match &o.parent {
                        Some(p) => format!("parent '{p}'"),
                        None => "no parent (it is a top-level tenant)".to_string(),
                    }
                ),
            });
        }
        tenant::admit(name, &spec, &specs, self.cap)?;
        if old.as_ref() == Some(&spec) {
            drop(_w);
            return Ok((self.get(name).await?, false));
        }
        specs.insert(name.clone(), spec.clone());
        let created = old.is_none();
        // A new tenant's directories are journaled before they are made: after a crash before
        // the commit, the next start removes them (`journal::recover`).
        let step = if created {
            let dir = journal::text(&dir_of(name, &specs));
            Some(
                self.store
                    .add_intent(&Step::Create { dir }.intent(name))
                    .await?,
            )
        } else {
            None
        };
        let b = self.backend.clone();
        let (cfg, mode) = (self.cfg.clone(), self.mode());
        let (n, new_specs, olds) = (name.clone(), specs.clone(), old_specs.clone());
        let applied =
            blocking(move || apply_change(b.as_ref(), &cfg, mode, &olds, &new_specs, Some(&n)))
                .await;
        if let Err(e) = applied.and_then(|r| r.map_err(EngineError::from)) {
            // `apply_change` undid what it wrote; the record of the directories goes too.
            if let Some(id) = step {
                self.forget(id).await;
            }
            return Err(e);
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
        if let Err(e) = self
            .store
            .put_tenant_with(name, &spec, now, event, step)
            .await
        {
            // Keep the kernel as the store says: undo what was just written.
            let b = self.backend.clone();
            let (cfg, mode) = (self.cfg.clone(), self.mode());
            let dir = dir_of(name, &specs);
            let undo = blocking(move || {
                apply_change(b.as_ref(), &cfg, mode, &specs, &old_specs, None)?;
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
                    "could not undo the kernel change after a store failure (reconcile will): {u}"
                ),
                Err(u) => tracing::error!("could not undo the kernel change: {u}"),
            }
            return Err(e.into());
        }
        drop(_w);
        let d = self.desired().await?;
        // The tenant and its ancestors: the kernel values a change to it may alter.
        self.refresh_kernel(Some(tenant::lineage(name, &d.specs)))
            .await?;
        Ok((self.get(name).await?, created))
    }

    /// Deletes a tenant: refused while it has children, or live processes unless `mode` says
    /// to kill them or move them to another tenant; refused (409, nothing killed or moved) when
    /// PID 1 or the daemon is among its processes.
    pub async fn delete(&self, name: &TenantName, mode: DeleteMode, actor: &str) -> Result<()> {
        let _w = self.writes.lock().await;
        let stored = self.store.tenants().await?;
        let specs = specs_of(&stored);
        if !specs.contains_key(name) {
            return Err(EngineError::NotFound(name.to_string()));
        }
        let kids: Vec<&str> = specs
            .iter()
            .filter(|(_, s)| s.parent.as_ref() == Some(name))
            .map(|(n, _)| n.as_str())
            .collect();
        if !kids.is_empty() {
            return Err(EngineError::Conflict {
                field: "name".into(),
                message: format!(
                    "tenant '{name}' has children ({}): delete them first",
                    kids.join(", ")
                ),
            });
        }
        let dir = dir_of(name, &specs);
        let target = match &mode {
            DeleteMode::MoveTo(t) if t == name => {
                return Err(EngineError::Domain(DomainError::invalid(
                    "move_to",
                    "cannot move processes to the tenant being deleted",
                )));
            }
            DeleteMode::MoveTo(t) if !specs.contains_key(t) => {
                return Err(EngineError::Domain(DomainError::NotFound {
                    field: "move_to".into(),
                    message: format!("tenant '{t}' does not exist"),
                }));
            }
            DeleteMode::MoveTo(t) => Some(dir_of(t, &specs).leaf()),
            _ => None,
        };
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
        let mut remaining = specs.clone();
        remaining.remove(name);
        let moved = match done {
            Ok(moved) => moved,
            Err(e) => {
                self.undo_delete(name, &stored, &specs, &remaining, id, &e)
                    .await;
                return Err(e);
            }
        };
        let b = self.backend.clone();
        let (cfg, run) = (self.cfg.clone(), self.mode());
        let ancestors = tenant::lineage(name, &specs);
        if let Err(e) =
            blocking(move || apply_change(b.as_ref(), &cfg, run, &specs, &remaining, None)).await?
        {
            // The delete is stored and done; the siblings' new shares are written by the next
            // reconcile pass.
            tracing::warn!("tenant '{name}' deleted; rewriting its siblings' settings failed: {e}");
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
        stored: &BTreeMap<TenantName, StoredTenant>,
        specs: &BTreeMap<TenantName, TenantSpec>,
        remaining: &BTreeMap<TenantName, TenantSpec>,
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
        if let Err(e) = self
            .store
            .restore_tenant(name, &stored[name], event, id)
            .await
        {
            tracing::error!(
                "tenant '{name}': the kernel refused its delete ({why}) and the store cannot take it back ({e}); the next reconcile pass finishes the delete"
            );
            return;
        }
        let (b, cfg, mode, old, new, n) = (
            self.backend.clone(),
            self.cfg.clone(),
            self.mode(),
            remaining.clone(),
            specs.clone(),
            name.clone(),
        );
        match blocking(move || apply_change(b.as_ref(), &cfg, mode, &old, &new, Some(&n))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "tenant '{name}' kept after a refused delete; rewriting its settings failed (reconcile will): {e}"
            ),
            Err(e) => tracing::warn!("tenant '{name}': {e}"),
        }
        let _ = self
            .refresh_kernel(Some(tenant::lineage(name, specs)))
            .await;
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
        let specs = specs_of(&self.store.tenants().await?);
        if !specs.contains_key(name) {
            return Err(EngineError::NotFound(name.to_string()));
        }
        Ok(dir_of(name, &specs).leaf())
    }

    /// Every tenant's directory, for the sampler.
    pub async fn tenant_dirs(&self) -> Result<Vec<(TenantName, CgroupPath)>> {
        let specs = specs_of(&self.store.tenants().await?);
        Ok(specs
            .keys()
            .map(|n| (n.clone(), dir_of(n, &specs)))
            .collect())
    }
}

/// A tenant's view from the desired state and the last kernel read (no IO: `path_of` and
/// `not_applied` only compute).
fn view(
    b: &dyn Backend,
    name: &TenantName,
    stored: StoredTenant,
    d: &Desired,
    read: Option<&KernelRead>,
) -> TenantView {
    let (specs, plans) = (&*d.specs, &*d.plans);
    let dir = dir_of(name, specs);
    let (effective, effective_error) = match read.map(|r| &r.effective) {
        Some(Ok(s)) => (Some(s.clone()), None),
        Some(Err(e)) => (None, Some(e.clone())),
        None => (None, Some("not read from the kernel yet".to_string())),
    };
    TenantView {
        name: name.clone(),
        stored,
        cgroup: b.path_of(&dir),
        not_applied: read.map(|r| r.not_applied.clone()).unwrap_or_default(),
        planned: plans.get(name).cloned().unwrap_or(TenantPlan {
            tenant: Settings::default(),
            leaf: Settings::default(),
        }),
        effective,
        effective_error,
        procs: read.map_or(0, |r| r.procs),
        kernel_read_ms: read.map(|r| r.read_ms),
    }
}

/// Applies the difference between two sets of specs to the kernel. On failure, rewrites the
/// old plan for what was touched and removes a directory created for `created`.
fn apply_change(
    b: &dyn Backend,
    cfg: &EngineConfig,
    mode: RunMode,
    old: &BTreeMap<TenantName, TenantSpec>,
    new: &BTreeMap<TenantName, TenantSpec>,
    target: Option<&TenantName>,
) -> std::result::Result<(), CgroupError> {
    let old_plans = plan::plan(old, cfg.params);
    let new_plans = plan::plan(new, cfg.params);
    let mut created = None;
    let mut touched: Vec<&TenantName> = Vec::new();
    let result = (|| {
        if let Some(t) = target
            && new.contains_key(t)
        {
            let dir = dir_of(t, new);
            if b.ensure(&dir, true)? && !old.contains_key(t) {
                created = Some(dir);
            }
        }
        apply_root_protection(b, cfg, mode, new)?;
        for n in tenant::topo_order(new) {
            let p = &new_plans[&n];
            if old_plans.get(&n) == Some(p) && Some(&n) != target {
                continue;
            }
            let dir = dir_of(&n, new);
            b.ensure(&dir, true)?;
            touched.push(
                new.get_key_value(&n)
                    .map(|(k, _)| k)
                    .expect("from topo_order"),
            );
            b.apply(&dir, &p.tenant)?;
            b.apply(&dir.leaf(), &p.leaf)?;
        }
        Ok(())
    })();
    if result.is_err() {
        for n in touched.iter().rev() {
            if let Some(p) = old_plans.get(*n) {
                let dir = dir_of(n, old);
                let _ = b.apply(&dir, &p.tenant);
                let _ = b.apply(&dir.leaf(), &p.leaf);
            }
        }
        let _ = apply_root_protection(b, cfg, mode, old);
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
    cfg: &EngineConfig,
    mode: RunMode,
    specs: &BTreeMap<TenantName, TenantSpec>,
) -> std::result::Result<(), CgroupError> {
    if mode == RunMode::Delegated {
        return Ok(());
    }
    let root = CgroupPath::root();
    let (min, low) = plan::root_protection(specs, cfg.daemon_memory_min_bytes);
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

fn reconcile_kernel(
    b: &dyn Backend,
    specs: &BTreeMap<TenantName, TenantSpec>,
    cfg: &EngineConfig,
    mode: RunMode,
) -> ReconcileReport {
    let mut r = ReconcileReport::default();
    if let Err(e) = b
        .prepare_root()
        .and_then(|_| b.ensure(&CgroupPath::root(), false))
    {
        r.errors.push(e.to_string());
        return r;
    }
    if let Err(e) = apply_root_protection(b, cfg, mode, specs) {
        r.errors.push(e.to_string());
    }
    let plans = plan::plan(specs, cfg.params);
    for n in tenant::topo_order(specs) {
        let dir = dir_of(&n, specs);
        match b.ensure(&dir, true) {
            Ok(true) => r.created.push(n.to_string()),
            Ok(false) => {}
            Err(e) => {
                r.errors.push(format!("tenant '{n}': {e}"));
                continue;
            }
        }
        let p = &plans[&n];
        for (d, s) in [(dir.clone(), &p.tenant), (dir.leaf(), &p.leaf)] {
            match b.apply(&d, s) {
                Ok(changes) => r
                    .corrected
                    .extend(changes.into_iter().map(|c| (n.to_string(), c))),
                Err(e) => r.errors.push(format!("tenant '{n}': {e}")),
            }
        }
    }
    // Unknown directories: walk the tree we know and list what is not ours.
    let mut stack = vec![(CgroupPath::root(), None::<TenantName>)];
    while let Some((dir, parent)) = stack.pop() {
        let Ok(kids) = b.children(&dir) else { continue };
        for k in kids {
            if k == LEAF || (parent.is_none() && k == DAEMON_LEAF) {
                continue;
            }
            let owned = TenantName::parse(&k)
                .ok()
                .filter(|t| specs.get(t).is_some_and(|s| s.parent == parent));
            match owned {
                Some(t) => stack.push((
                    dir.join(&k).expect("tenant names are valid segments"),
                    Some(t),
                )),
                None => r
                    .unknown
                    .push(b.path_of(&dir).join(&k).display().to_string()),
            }
        }
    }
    r
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
    specs: &BTreeMap<TenantName, TenantSpec>,
    daemon_min: u64,
) -> std::result::Result<Vec<Cannot>, CgroupError> {
    let root = b.path_of(&CgroupPath::root());
    let held = b.read(&CgroupPath::root())?;
    let (min, low) = plan::root_protection(specs, daemon_min);
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
