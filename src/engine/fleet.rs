//! This node's part in a fleet (issue 19): writes go to the fleet store (PostgreSQL), with
//! admission checked per selected node under the store's fleet-wide lock; every node applies
//! the tenants its labels select to its own kernel through the governor (`Governor::put`,
//! `Governor::delete`), which keeps the local copy in the node's SQLite database, so a node
//! keeps enforcing, and starts, while the store is down. `run` listens for announcements,
//! polls as a safety net, heartbeats, and reports what is in force, drifted or failed.
//!
//! Part of layer 2 (see `lib.rs`): imports `domain`, `store` and the governor (`super`);
//! `engine/mod.rs` does not import it.

use super::{DeleteMode, EngineError, Governor, Result, TenantView, now_ms};
use crate::domain::fleet::{self, Labels, NodeCapacity, TenantState};
use crate::domain::tenant::{self, DomainError, TenantName, TenantSpec};
use crate::store::desired::{DesiredError, DesiredStore};
use crate::store::fleet::{FleetError, FleetStore, NodeRow, Snapshot, TenantReport, Write};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How soon a node tries to subscribe again after its LISTEN connection failed.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// How often a node compares every selected tenant's kernel values with its plan for its
/// report (`drifted`); between two checks it reports what the last one found. About 20 reads
/// a tenant: at 10,000 tenants some 13 ms of CPU a second at this period.
const DRIFT_EVERY: Duration = Duration::from_secs(15);

/// This node: its name and labels, and how long a node may miss heartbeats before it is
/// shown as down.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub labels: Labels,
    pub timeout: Duration,
    /// Between two full reads of the desired state when no announcement came.
    pub poll: Duration,
}

/// The node's link to the fleet.
pub struct Fleet {
    gov: Arc<Governor>,
    store: FleetStore,
    node: NodeConfig,
    started_ms: i64,
    /// The store's schema was checked and migrated (false while it was down from the start).
    prepared: AtomicBool,
    /// Whether the last contact with the store failed (its change is logged once).
    unreachable: AtomicBool,
    /// One sync at a time; holds the tenants this node could not apply, by the fleet
    /// generation tried and why, so a failing spec is tried (and logged) once per change.
    syncing: tokio::sync::Mutex<BTreeMap<TenantName, (i64, String)>>,
    /// When the kernel was last compared with the plans, and the tenants found drifted then
    /// (with the reason); a tenant this node applies again is taken out.
    drift: std::sync::Mutex<(Option<std::time::Instant>, BTreeMap<TenantName, String>)>,
}

/// The answer to a fleet write: the tenant as this node holds it when this node enforces it,
/// else the fleet's record of it.
#[derive(Debug, Clone)]
pub enum Put {
    Local(Box<TenantView>, bool),
    Elsewhere(Box<FleetTenantView>),
}

/// A tenant as the fleet stores it, and the nodes that enforce it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FleetTenantView {
    pub name: TenantName,
    pub spec: TenantSpec,
    pub generation: i64,
    pub created: bool,
    /// The registered nodes whose labels select it.
    pub nodes: Vec<String>,
}

/// One node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    /// "v1" or "v2".
    pub cgroup_version: String,
    pub started_ms: i64,
    pub last_heartbeat_ms: i64,
    /// No heartbeat for longer than `node_timeout_s`.
    pub down: bool,
    pub cpus: f64,
    pub memory_bytes: u64,
    /// How many of the tenants selected for it the node last reported in each state.
    pub in_force: usize,
    pub drifted: usize,
    pub failed: usize,
    /// The tenants not in force, with the reason.
    pub problems: Vec<NodeProblem>,
}

/// A tenant a node does not hold as the fleet wants, and why.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeProblem {
    pub tenant: String,
    pub state: TenantState,
    #[schema(required = true)]
    pub reason: Option<String>,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Nodes {
    /// The fleet store, without a password.
    pub store: String,
    /// The node that answered.
    pub this_node: String,
    pub node_timeout_s: f64,
    pub nodes: Vec<NodeView>,
}

impl From<DesiredError> for EngineError {
    fn from(e: DesiredError) -> Self {
        match e {
            DesiredError::NotFound(n) => EngineError::NotFound(n.to_string()),
            e @ DesiredError::NoParent { .. } => EngineError::Domain(DomainError::NotFound {
                field: "parent".into(),
                message: e.to_string(),
            }),
            e @ DesiredError::HasChildren { .. } => {
                EngineError::Domain(DomainError::conflict("name", e.to_string()))
            }
            DesiredError::Local(e) => EngineError::Store(e),
            DesiredError::Fleet(e) => e.into(),
        }
    }
}

impl From<FleetError> for EngineError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Refused(d) => EngineError::Domain(d),
            e => EngineError::Fleet(e),
        }
    }
}

/// A delete's mode as the fleet stores it (the `tenant_deleted` event's words).
fn mode_text(m: &DeleteMode) -> String {
    match m {
        DeleteMode::Refuse => "refuse".into(),
        DeleteMode::Kill => "kill".into(),
        DeleteMode::MoveTo(t) => format!("move_to:{t}"),
    }
}

/// The mode of a stored delete, for a node where `local` holds the tenants (a `move_to`
/// target this node does not have leaves the processes where they are: refused).
fn mode_of(text: Option<&str>, local: &BTreeMap<TenantName, TenantSpec>) -> DeleteMode {
    match text {
        Some("kill") => DeleteMode::Kill,
        Some(t) => match t.strip_prefix("move_to:").map(TenantName::parse) {
            Some(Ok(to)) if local.contains_key(&to) => DeleteMode::MoveTo(to),
            _ => DeleteMode::Refuse,
        },
        None => DeleteMode::Refuse,
    }
}

fn capacities(snap: &Snapshot) -> Vec<NodeCapacity> {
    snap.nodes
        .iter()
        .map(|n| NodeCapacity {
            name: n.name.clone(),
            labels: n.labels.clone(),
            capacity: tenant::Capacity {
                cpus: n.cpus,
                memory_bytes: n.memory_bytes,
                memory_reserve_bytes: n.memory_reserve_bytes,
            },
        })
        .collect()
}

impl Fleet {
    pub fn new(gov: Arc<Governor>, store: FleetStore, node: NodeConfig) -> Arc<Fleet> {
        Arc::new(Fleet {
            gov,
            store,
            node,
            started_ms: now_ms(),
            prepared: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
            syncing: tokio::sync::Mutex::new(BTreeMap::new()),
            drift: std::sync::Mutex::new((None, BTreeMap::new())),
        })
    }

    pub fn node(&self) -> &NodeConfig {
        &self.node
    }

    /// The store, without a password.
    pub fn store_shown(&self) -> &str {
        self.store.shown()
    }

    /// The fleet store and this node's governor (whose SQLite store holds the history the
    /// node ships: `engine::fleet_history`).
    pub fn parts(&self) -> (&FleetStore, &Arc<Governor>) {
        (&self.store, &self.gov)
    }

    /// Whether the store's schema was checked and migrated (the node joined).
    pub fn joined(&self) -> bool {
        self.prepared.load(Ordering::Acquire)
    }

    /// Checks and migrates the store's schema, registers this node and applies what the
    /// fleet wants. A store that cannot be reached is not an error: the node starts from its
    /// local copy and `run` tries again. A schema newer than this version knows is.
    pub async fn start(&self) -> Result<()> {
        match self.connect().await {
            Ok(()) => {}
            Err(FleetError::Unreachable { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = self.sync().await {
            tracing::warn!("fleet: first sync: {e}");
        }
        Ok(())
    }

    /// `prepare` and `register`, once; notes whether the store answered.
    async fn connect(&self) -> std::result::Result<(), FleetError> {
        if self.prepared.load(Ordering::Acquire) {
            return Ok(());
        }
        let r = async {
            self.store.prepare().await?;
            self.register().await
        }
        .await;
        self.contact(&r);
        r?;
        self.prepared.store(true, Ordering::Release);
        tracing::info!(
            "fleet: node '{}' (labels {:?}) joined {}",
            self.node.name,
            self.node.labels,
            self.store.shown()
        );
        Ok(())
    }

    /// Logs when the store stops or starts answering (once per change).
    fn contact<T>(&self, r: &std::result::Result<T, FleetError>) {
        self.contact_with(r.as_ref().err())
    }

    /// `contact` of the error the store answered, if any.
    fn contact_with(&self, e: Option<&FleetError>) {
        match e {
            Some(e @ FleetError::Unreachable { .. }) => {
                if !self.unreachable.swap(true, Ordering::AcqRel) {
                    let cause = std::error::Error::source(e)
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    tracing::warn!(
                        "fleet: {e} ({cause}): this node keeps enforcing the desired state it holds; writes answer 503 until the store is back"
                    );
                }
            }
            _ => {
                if self.unreachable.swap(false, Ordering::AcqRel) {
                    tracing::info!("fleet: the store {} answers again", self.store.shown());
                }
            }
        }
    }

    async fn register(&self) -> std::result::Result<(), FleetError> {
        let host = self.gov.host().await.ok();
        let cap = self.gov.capacity();
        self.store
            .register(&NodeRow {
                name: self.node.name.clone(),
                labels: self.node.labels.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                cgroup_version: host.map(|h| h.version).unwrap_or_default(),
                cpus: cap.cpus,
                memory_bytes: cap.memory_bytes,
                memory_reserve_bytes: cap.memory_reserve_bytes,
                started_ms: self.started_ms,
                last_heartbeat_ms: now_ms(),
            })
            .await
    }

    /// Creates or replaces a tenant in the fleet (admission on every node it selects), then
    /// applies it here if this node enforces it.
    pub async fn put(&self, name: &TenantName, spec: TenantSpec, actor: &str) -> Result<Put> {
        self.connect().await?;
        let check = |snap: &Snapshot| -> std::result::Result<(), DomainError> {
            if let Some(old) = snap.tenants.get(name).filter(|t| t.deleted.is_none())
                && old.spec.parent != spec.parent
            {
                return Err(DomainError::conflict(
                    "parent",
                    format!(
                        "tenant '{name}' already has {}: moving a tenant to another parent is not supported; delete and recreate it",
                        match &old.spec.parent {
                            Some(p) => format!("parent '{p}'"),
                            None => "no parent (it is a top-level tenant)".to_string(),
                        }
                    ),
                ));
            }
            fleet::admit_on_nodes(name, &spec, &snap.specs(), &capacities(snap)).map(|_| ())
        };
        let r = self
            .store
            .write(
                name,
                &Write::Put(Box::new(spec.clone())),
                actor,
                now_ms(),
                check,
            )
            .await;
        self.contact(&r);
        let written = r?.expect("a put always writes");
        self.sync().await?;
        let local = self.gov.specs().await?;
        if local.get(name) == Some(&spec) {
            let view = self.gov.get(name).await?;
            return Ok(Put::Local(Box::new(view), written.created));
        }
        let snap = self.store.snapshot().await?;
        let nodes = snap
            .nodes
            .iter()
            .filter(|n| fleet::selected(&snap.specs(), &n.labels).contains_key(name))
            .map(|n| n.name.clone())
            .collect();
        Ok(Put::Elsewhere(Box::new(FleetTenantView {
            name: name.clone(),
            spec,
            generation: written.generation,
            created: written.created,
            nodes,
        })))
    }

    /// Deletes a tenant from the fleet; each node that holds it empties it as `mode` says.
    pub async fn delete(&self, name: &TenantName, mode: DeleteMode, actor: &str) -> Result<()> {
        self.connect().await?;
        let check = |snap: &Snapshot| -> std::result::Result<(), DomainError> {
            let specs = snap.specs();
            let kids: Vec<&str> = specs
                .iter()
                .filter(|(_, s)| s.parent.as_ref() == Some(name))
                .map(|(n, _)| n.as_str())
                .collect();
            if !kids.is_empty() {
                return Err(DomainError::conflict(
                    "name",
                    format!(
                        "tenant '{name}' has children ({}): delete them first",
                        kids.join(", ")
                    ),
                ));
            }
            if let DeleteMode::MoveTo(t) = &mode {
                if t == name {
                    return Err(DomainError::invalid(
                        "move_to",
                        "cannot move processes to the tenant being deleted",
                    ));
                }
                if !specs.contains_key(t) {
                    return Err(DomainError::NotFound {
                        field: "move_to".into(),
                        message: format!("tenant '{t}' does not exist"),
                    });
                }
            }
            Ok(())
        };
        let r = self
            .store
            .write(
                name,
                &Write::Delete(mode_text(&mode)),
                actor,
                now_ms(),
                check,
            )
            .await;
        self.contact(&r);
        if r?.is_none() {
            return Err(EngineError::NotFound(name.to_string()));
        }
        self.sync().await?;
        Ok(())
    }

    /// A live tenant's spec as the fleet stores it (what a PATCH starts from).
    pub async fn spec(&self, name: &TenantName) -> Result<TenantSpec> {
        let r = self.store.get(name).await;
        self.contact_with(match &r {
            Err(DesiredError::Fleet(e)) => Some(e),
            _ => None,
        });
        Ok(r?.spec)
    }

    /// Every registered node, with what it reported.
    pub async fn nodes(&self) -> Result<Nodes> {
        let r = async { Ok((self.store.snapshot().await?, self.store.reports().await?)) }.await;
        self.contact(&r);
        let (snap, mut reports) = r?;
        let (now, timeout) = (now_ms(), self.node.timeout.as_millis() as i64);
        let nodes = snap
            .nodes
            .into_iter()
            .map(|n| {
                let rs = reports.remove(&n.name).unwrap_or_default();
                let count = |s| rs.iter().filter(|r| r.state == s).count();
                NodeView {
                    down: fleet::is_down(n.last_heartbeat_ms, now, timeout),
                    in_force: count(TenantState::InForce),
                    drifted: count(TenantState::Drifted),
                    failed: count(TenantState::Failed),
                    problems: rs
                        .iter()
                        .filter(|r| r.state != TenantState::InForce)
                        .map(|r| NodeProblem {
                            tenant: r.tenant.clone(),
                            state: r.state,
                            reason: r.reason.clone(),
                        })
                        .collect(),
                    name: n.name,
                    labels: n.labels,
                    version: n.version,
                    cgroup_version: n.cgroup_version,
                    started_ms: n.started_ms,
                    last_heartbeat_ms: n.last_heartbeat_ms,
                    cpus: n.cpus,
                    memory_bytes: n.memory_bytes,
                }
            })
            .collect();
        Ok(Nodes {
            store: self.store.shown().to_string(),
            this_node: self.node.name.clone(),
            node_timeout_s: self.node.timeout.as_secs_f64(),
            nodes,
        })
    }

    /// Makes this node's desired state (and so its kernel) what the fleet selects for it,
    /// through the governor, and reports the outcome per tenant. Deletes first (children
    /// before parents), then creates and changes (parents first).
    pub async fn sync(&self) -> Result<()> {
        let mut tried = self.syncing.lock().await;
        self.connect().await?;
        let r = self.store.snapshot().await;
        self.contact(&r);
        let snap = r?;
        let wanted = fleet::selected(&snap.specs(), &self.node.labels);
        let local = self.gov.specs().await?;
        let mut failed: BTreeMap<TenantName, String> = BTreeMap::new();
        let mut gone: Vec<TenantName> = tenant::topo_order(&local)
            .into_iter()
            .filter(|n| !wanted.contains_key(n))
            .collect();
        gone.reverse();
        for name in gone {
            let stored = snap.tenants.get(&name);
            let mode = mode_of(stored.and_then(|t| t.deleted.as_deref()), &local);
            let actor = stored.and_then(|t| t.actor.clone());
            let actor = actor.as_deref().unwrap_or("fleet");
            if let Err(e) = self.gov.delete(&name, mode, actor).await {
                tracing::warn!("fleet: cannot remove tenant '{name}' from this node: {e}");
                failed.insert(name, format!("not removed from this node: {e}"));
            }
        }
        for name in tenant::topo_order(&wanted) {
            let spec = &wanted[&name];
            if local.get(&name) == Some(spec) {
                tried.remove(&name);
                continue;
            }
            let generation = snap.tenants.get(&name).map_or(0, |t| t.generation);
            if let Some((g, why)) = tried.get(&name)
                && *g == generation
            {
                failed.insert(name, why.clone());
                continue;
            }
            let actor = snap.tenants.get(&name).and_then(|t| t.actor.clone());
            let actor = actor.as_deref().unwrap_or("fleet");
            match self.gov.put(&name, spec.clone(), actor).await {
                Ok(_) => {
                    tried.remove(&name);
                    // Applied: every value was written, nothing of it drifted now.
                    self.drift.lock().expect("drift lock").1.remove(&name);
                }
                Err(e) => {
                    tracing::warn!("fleet: cannot apply tenant '{name}' on this node: {e}");
                    tried.insert(name.clone(), (generation, e.to_string()));
                    failed.insert(name, e.to_string());
                }
            }
        }
        tried.retain(|n, _| wanted.contains_key(n));
        let reports = self.reports(&snap, &wanted, failed).await?;
        let r = self.store.report(&self.node.name, &reports, now_ms()).await;
        self.contact(&r);
        r?;
        Ok(())
    }

    /// What this node holds of each tenant selected for it (and of each it failed to remove).
    async fn reports(
        &self,
        snap: &Snapshot,
        wanted: &BTreeMap<TenantName, TenantSpec>,
        mut failed: BTreeMap<TenantName, String>,
    ) -> Result<Vec<TenantReport>> {
        let generation = |n: &TenantName| snap.tenants.get(n).map_or(0, |t| t.generation);
        let drifted = self
            .drifted(
                wanted
                    .keys()
                    .filter(|n| !failed.contains_key(*n))
                    .cloned()
                    .collect(),
            )
            .await?;
        let mut out = Vec::new();
        for name in wanted.keys() {
            let (state, reason) = match failed.remove(name) {
                Some(why) => (TenantState::Failed, Some(why)),
                None if drifted.contains_key(name) => {
                    (TenantState::Drifted, drifted.get(name).cloned())
                }
                None => match self.gov.get(name).await {
                    Ok(v) => match v.effective_error {
                        None => (TenantState::InForce, None),
                        Some(e) => (TenantState::Drifted, Some(e)),
                    },
                    Err(e) => (TenantState::Failed, Some(e.to_string())),
                },
            };
            out.push(TenantReport {
                tenant: name.to_string(),
                generation: generation(name),
                state,
                reason,
            });
        }
        out.extend(failed.into_iter().map(|(n, why)| TenantReport {
            generation: generation(&n),
            tenant: n.to_string(),
            state: TenantState::Failed,
            reason: Some(why),
        }));
        Ok(out)
    }

    /// The tenants of `names` whose kernel values differ from their plan, with the reason:
    /// compared again when the last comparison is `DRIFT_EVERY` old, else as it found them.
    async fn drifted(&self, names: Vec<TenantName>) -> Result<BTreeMap<TenantName, String>> {
        let due = {
            let d = self.drift.lock().expect("drift lock");
            d.0.is_none_or(|at| at.elapsed() >= DRIFT_EVERY)
        };
        if due {
            let found = self
                .gov
                .drift(names.clone())
                .await?
                .into_iter()
                .filter_map(|(n, d)| match d {
                    Ok(c) if c.is_empty() => None,
                    Ok(c) => Some((n, drift_reason(&c))),
                    Err(e) => Some((n, format!("its kernel values cannot be read: {e}"))),
                })
                .collect();
            *self.drift.lock().expect("drift lock") = (Some(std::time::Instant::now()), found);
        }
        let d = self.drift.lock().expect("drift lock");
        Ok(names
            .into_iter()
            .filter_map(|n| d.1.get(&n).map(|r| (n, r.clone())))
            .collect())
    }

    /// Until `shutdown`: applies what the fleet announces (`LISTEN`), reads everything every
    /// `poll` as a safety net (and after a lost connection), and heartbeats every third of
    /// `timeout` (at least every second).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let beat = (self.node.timeout / 3).max(Duration::from_secs(1));
        let mut heartbeat = tokio::time::interval(beat);
        let mut poll = tokio::time::interval(self.node.poll);
        let mut changes = None;
        loop {
            if changes.is_none() && self.prepared.load(Ordering::Acquire) {
                match self.store.changes().await {
                    Ok(c) => {
                        changes = Some(c);
                        // Anything announced before the subscription is read now.
                        self.sync_logged().await;
                    }
                    Err(e) => self.contact::<()>(&Err(e)),
                }
            }
            let announced = async {
                match changes.as_mut() {
                    Some(c) => c.next().await.map_err(|e| e.to_string()),
                    // Not subscribed (the store was down): try again in a second.
                    None => {
                        tokio::time::sleep(RESUBSCRIBE).await;
                        Err("not subscribed".to_string())
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = heartbeat.tick() => {
                    let r = match self.connect().await {
                        Ok(()) => self.store.heartbeat(&self.node.name, now_ms()).await,
                        Err(e) => Err(e),
                    };
                    self.contact(&r);
                    if matches!(r, Ok(false)) {
                        // The row went away (an operator removed it): register again.
                        let r = self.register().await;
                        self.contact(&r);
                    }
                }
                _ = poll.tick() => self.sync_logged().await,
                r = announced => match r {
                    Ok(Some(_)) => self.sync_logged().await,
                    Ok(None) => self.sync_logged().await,
                    Err(e) => {
                        if changes.is_some() {
                            tracing::debug!("fleet: the LISTEN connection failed: {e}");
                        }
                        changes = None;
                    }
                },
            }
        }
        // The subscription holds one of the pool's connections, which `close` waits for.
        drop(changes);
        self.store.close().await;
    }

    async fn sync_logged(&self) {
        match self.sync().await {
            Ok(()) => {}
            // Logged once by `contact`.
            Err(EngineError::Fleet(FleetError::Unreachable { .. })) => {}
            Err(e) => tracing::warn!("fleet: sync failed: {e}"),
        }
    }
}

/// Why a node reports a tenant as drifted: each kernel value that differs from the plan, as
/// "FILE is KERNEL in the kernel, the plan says PLAN", and what restores it.
fn drift_reason(changes: &[crate::cgroup::Change]) -> String {
    let each: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                "{} is {} in the kernel, the plan says {}",
                c.file,
                c.was.trim(),
                c.now.trim()
            )
        })
        .collect();
    format!(
        "{} (changed outside tenantd: the next reconcile pass restores it, or POST /v1/reconcile)",
        each.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_modes_round_trip_through_the_store_text() {
        let local: BTreeMap<TenantName, TenantSpec> =
            [(TenantName::parse("b").unwrap(), TenantSpec::default())].into();
        let b = TenantName::parse("b").unwrap();
        for m in [
            DeleteMode::Refuse,
            DeleteMode::Kill,
            DeleteMode::MoveTo(b.clone()),
        ] {
            assert_eq!(mode_of(Some(&mode_text(&m)), &local), m);
        }
        // A target this node does not hold: processes stay, the delete is refused here.
        assert_eq!(
            mode_of(Some("move_to:zz"), &local),
            DeleteMode::Refuse,
            "unknown target"
        );
        assert_eq!(mode_of(None, &local), DeleteMode::Refuse);
    }
}
