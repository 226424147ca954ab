//! The fleet store (issue 19): one desired state shared by every node, in PostgreSQL
//! (`migrations/postgres/` applied by `prepare`): the tenants with their spec (and its `nodes`
//! selector), the nodes with their labels, versions, capacity and heartbeats, and what each
//! node reports as in force, drifted or failed per tenant. Every change is one transaction
//! that takes a fleet-wide lock, runs the caller's admission check against what is stored,
//! writes, and `NOTIFY`s `tenantd_desired`; nodes `LISTEN` (`Changes`).
//!
//! Layer 1 (see `lib.rs`): imports `domain` only; the engine calls it. A database that cannot
//! be reached is `FleetError::Unreachable`, naming the store (its URL without a password).

use crate::domain::fleet::{Labels, TenantState};
use crate::domain::{DomainError, TenantName, TenantSpec};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

/// The channel every change is announced on.
pub const CHANNEL: &str = "tenantd_desired";
/// The key of the fleet-wide lock every change takes (`pg_advisory_xact_lock`), so two nodes'
/// admission checks never pass side by side.
const WRITE_LOCK: i64 = 0x7465_6e61_6e74_6419;

/// The PostgreSQL migrations this version knows.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Errors of the fleet store. Each names the store (without a password) or the operation.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the fleet store {store} is unreachable")]
    Unreachable {
        store: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("'{url}' is not a PostgreSQL URL: {why}")]
    BadUrl { url: String, why: String },
    #[error(
        "the fleet store {store} has schema version {found}, newer than this tenantd knows ({known}): upgrade tenantd on this node"
    )]
    SchemaTooNew {
        store: String,
        found: i64,
        known: i64,
    },
    #[error("cannot apply migrations to the fleet store {store}")]
    Migrate {
        store: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("fleet store {op} failed")]
    Query {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("{what} in the fleet store is unreadable: {why}")]
    Corrupt { what: String, why: String },
    /// The caller's check refused the change; nothing was written.
    #[error(transparent)]
    Refused(DomainError),
}

pub type Result<T> = std::result::Result<T, FleetError>;

/// A tenant of the fleet's desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetTenant {
    pub spec: TenantSpec,
    pub generation: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Who made the last change.
    pub actor: Option<String>,
    /// `Some(mode)` once deleted (`refuse`, `kill`, `move_to:NAME`).
    pub deleted: Option<String>,
}

/// A node as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub name: String,
    pub labels: Labels,
    pub version: String,
    pub cgroup_version: String,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub memory_reserve_bytes: u64,
    pub started_ms: i64,
    pub last_heartbeat_ms: i64,
}

/// What a node reports about one tenant selected for it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantReport {
    pub tenant: String,
    /// The fleet generation the report is about.
    pub generation: i64,
    pub state: TenantState,
    pub reason: Option<String>,
}

/// Everything stored, as an admission check sees it: every tenant (deleted ones too) and
/// every node.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub tenants: BTreeMap<TenantName, FleetTenant>,
    pub nodes: Vec<NodeRow>,
}

impl Snapshot {
    /// The live tenants' specs.
    pub fn specs(&self) -> BTreeMap<TenantName, TenantSpec> {
        self.tenants
            .iter()
            .filter(|(_, t)| t.deleted.is_none())
            .map(|(n, t)| (n.clone(), t.spec.clone()))
            .collect()
    }
}

/// A change to one tenant.
#[derive(Debug, Clone)]
pub enum Write {
    Put(Box<TenantSpec>),
    /// Deleted, emptied on each node as the mode says.
    Delete(String),
}

/// What a committed change did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Written {
    pub generation: i64,
    /// A PUT of a name that was not live.
    pub created: bool,
}

/// The fleet store: a pool of connections to one PostgreSQL database.
#[derive(Clone, Debug)]
pub struct FleetStore {
    pool: PgPool,
    shown: String,
}

impl FleetStore {
    /// A store for `url`, connecting on first use (no IO here: a node starts while the
    /// database is down). Waits at most `timeout` for a connection. Needs a Tokio runtime.
    pub fn new(url: &str, timeout: Duration) -> Result<FleetStore> {
        let opts = PgConnectOptions::from_str(url).map_err(|e| FleetError::BadUrl {
            url: redact(url),
            why: e.to_string(),
        })?;
        let opts = opts.log_statements(tracing::log::LevelFilter::Trace);
        let shown = format!(
            "postgres://{}@{}:{}/{}",
            opts.get_username(),
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or(opts.get_username())
        );
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(timeout)
            .connect_lazy_with(opts);
        Ok(FleetStore { pool, shown })
    }

    /// The store's URL without a password, as errors and `GET /v1/nodes` name it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The pool (`store::fleet_history` writes and reads the fleet's history through it).
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `e` as a query error, or `Unreachable` when the database did not answer.
    pub(super) fn err(&self, op: &'static str) -> impl FnOnce(sqlx::Error) -> FleetError + '_ {
        move |source| {
            if unreachable(&source) {
                FleetError::Unreachable {
                    store: self.shown.clone(),
                    source,
                }
            } else {
                FleetError::Query { op, source }
            }
        }
    }

    /// The newest migration this version knows.
    pub fn known_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Refuses a schema newer than this version knows, then applies the migrations.
    pub async fn prepare(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(self.err("connect"))?;
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
                .fetch_one(&mut *conn)
                .await
                .map_err(self.err("read the schema version"))?;
        if exists {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(self.err("read the schema version"))?;
            let known = FleetStore::known_version();
            if let Some(found) = found.filter(|f| *f > known) {
                return Err(FleetError::SchemaTooNew {
                    store: self.shown.clone(),
                    found,
                    known,
                });
            }
        }
        drop(conn);
        // On a task of its own: the migrator's future is generic over the connection's
        // lifetime, and a caller's future holding it is not `Send` for every lifetime.
        let pool = self.pool.clone();
        let run = tokio::spawn(async move { MIGRATOR.run(&pool).await })
            .await
            .map_err(|e| FleetError::Corrupt {
                what: "the migration task".into(),
                why: e.to_string(),
            })?;
        run.map_err(|source| match source {
            sqlx::migrate::MigrateError::Execute(e) if unreachable(&e) => FleetError::Unreachable {
                store: self.shown.clone(),
                source: e,
            },
            source => FleetError::Migrate {
                store: self.shown.clone(),
                source,
            },
        })
    }

    /// Every tenant (deleted ones too) and every node.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut tx = self.pool.begin().await.map_err(self.err("begin"))?;
        let s = read_snapshot(&mut tx, self).await?;
        tx.commit().await.map_err(self.err("commit"))?;
        Ok(s)
    }

    /// Changes one tenant: under the fleet-wide lock, `check` sees what is stored and may
    /// refuse; then the change is written and announced on `CHANNEL`, in one transaction.
    /// `Ok(None)` for the delete of a tenant that is not live.
    pub async fn write(
        &self,
        name: &TenantName,
        change: &Write,
        actor: &str,
        now_ms: i64,
        check: impl FnOnce(&Snapshot) -> std::result::Result<(), DomainError>,
    ) -> Result<Option<Written>> {
        let mut tx = self.pool.begin().await.map_err(self.err("begin"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(self.err("lock the desired state"))?;
        let r = self
            .write_locked(&mut tx, name, change, actor, now_ms, check)
            .await;
        match r {
            Ok(Some(w)) => {
                tx.commit().await.map_err(self.err("commit"))?;
                Ok(Some(w))
            }
            // Rolled back now: a transaction only dropped keeps the lock (and its connection
            // in the pool holds it) until that connection is used again.
            other => {
                if let Err(e) = tx.rollback().await {
                    tracing::debug!("fleet store: rollback: {e}");
                }
                other
            }
        }
    }

    /// `write`'s body, inside the transaction that holds the lock.
    async fn write_locked(
        &self,
        tx: &mut sqlx::PgConnection,
        name: &TenantName,
        change: &Write,
        actor: &str,
        now_ms: i64,
        check: impl FnOnce(&Snapshot) -> std::result::Result<(), DomainError>,
    ) -> Result<Option<Written>> {
        let snap = read_snapshot(tx, self).await?;
        check(&snap).map_err(FleetError::Refused)?;
        let live = snap.tenants.get(name).filter(|t| t.deleted.is_none());
        let written = match change {
            Write::Put(spec) => {
                let json = spec_jsonb(spec);
                let generation: i64 = sqlx::query_scalar(
                    "INSERT INTO tenants (name, parent, spec, generation, created_ms, updated_ms, actor, deleted)
                     VALUES ($1, $2, $3::jsonb, 1, $4, $4, $5, NULL)
                     ON CONFLICT (name) DO UPDATE SET parent = $2, spec = $3::jsonb,
                         generation = tenants.generation + 1, updated_ms = $4, actor = $5,
                         deleted = NULL,
                         created_ms = CASE WHEN tenants.deleted IS NULL THEN tenants.created_ms ELSE $4 END
                     RETURNING generation",
                )
                .bind(name.as_str())
                .bind(spec.parent.as_ref().map(|p| p.as_str()))
                .bind(&json)
                .bind(now_ms)
                .bind(actor)
                .fetch_one(&mut *tx)
                .await
                .map_err(self.err("save tenant"))?;
                Written {
                    generation,
                    created: live.is_none(),
                }
            }
            Write::Delete(mode) => {
                if live.is_none() {
                    return Ok(None);
                }
                let generation: i64 = sqlx::query_scalar(
                    "UPDATE tenants SET deleted = $2, generation = generation + 1, updated_ms = $3,
                         actor = $4
                     WHERE name = $1 RETURNING generation",
                )
                .bind(name.as_str())
                .bind(mode)
                .bind(now_ms)
                .bind(actor)
                .fetch_one(&mut *tx)
                .await
                .map_err(self.err("delete tenant"))?;
                Written {
                    generation,
                    created: false,
                }
            }
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(self.err("notify"))?;
        Ok(Some(written))
    }

    /// Registers the node (or updates its row after a restart), heartbeat included.
    pub async fn register(&self, node: &NodeRow) -> Result<()> {
        let labels = serde_json::to_string(&node.labels).expect("labels serialize");
        sqlx::query(
            "INSERT INTO nodes (name, labels, version, cgroup_version, cpus, memory_bytes,
                 memory_reserve_bytes, started_ms, last_heartbeat_ms)
             VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (name) DO UPDATE SET labels = $2::jsonb, version = $3,
                 cgroup_version = $4, cpus = $5, memory_bytes = $6, memory_reserve_bytes = $7,
                 started_ms = $8, last_heartbeat_ms = $9",
        )
        .bind(&node.name)
        .bind(labels)
        .bind(&node.version)
        .bind(&node.cgroup_version)
        .bind(node.cpus)
        .bind(i64::try_from(node.memory_bytes).unwrap_or(i64::MAX))
        .bind(i64::try_from(node.memory_reserve_bytes).unwrap_or(i64::MAX))
        .bind(node.started_ms)
        .bind(node.last_heartbeat_ms)
        .execute(&self.pool)
        .await
        .map_err(self.err("register node"))?;
        Ok(())
    }

    /// Records a heartbeat; false when the node is not registered.
    pub async fn heartbeat(&self, node: &str, now_ms: i64) -> Result<bool> {
        let n = sqlx::query("UPDATE nodes SET last_heartbeat_ms = $2 WHERE name = $1")
            .bind(node)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(self.err("heartbeat"))?
            .rows_affected();
        Ok(n > 0)
    }

    /// Replaces what `node` reports about its tenants.
    pub async fn report(&self, node: &str, reports: &[TenantReport], now_ms: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(self.err("begin"))?;
        sqlx::query("DELETE FROM node_tenants WHERE node = $1")
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(self.err("replace node report"))?;
        for r in reports {
            sqlx::query(
                "INSERT INTO node_tenants (node, tenant, generation, state, reason, ts_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(node)
            .bind(&r.tenant)
            .bind(r.generation)
            .bind(r.state.as_str())
            .bind(&r.reason)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(self.err("replace node report"))?;
        }
        tx.commit().await.map_err(self.err("commit"))?;
        Ok(())
    }

    /// What every node reported, by node.
    pub async fn reports(&self) -> Result<BTreeMap<String, Vec<TenantReport>>> {
        let rows = sqlx::query(
            "SELECT node, tenant, generation, state, reason FROM node_tenants ORDER BY node, tenant",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("list node reports"))?;
        let mut out: BTreeMap<String, Vec<TenantReport>> = BTreeMap::new();
        for r in rows {
            let state: String = r.get("state");
            let state = TenantState::parse(&state).ok_or_else(|| FleetError::Corrupt {
                what: "a node report".into(),
                why: format!("unknown state '{state}'"),
            })?;
            out.entry(r.get("node")).or_default().push(TenantReport {
                tenant: r.get("tenant"),
                generation: r.get("generation"),
                state,
                reason: r.get("reason"),
            });
        }
        Ok(out)
    }

    /// A subscription to `CHANNEL`. It holds one of the pool's connections until dropped, and
    /// `close` waits for it.
    pub async fn changes(&self) -> Result<Changes> {
        let mut l = PgListener::connect_with(&self.pool)
            .await
            .map_err(self.err("listen"))?;
        l.listen(CHANNEL).await.map_err(self.err("listen"))?;
        Ok(Changes(l))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Announcements of changes (`LISTEN tenantd_desired`).
pub struct Changes(PgListener);

impl Changes {
    /// Waits for the next announcement: `Ok(Some(tenant))`, or `Ok(None)` when the connection
    /// was lost (announcements may have been missed: read everything again).
    pub async fn next(&mut self) -> std::result::Result<Option<String>, sqlx::Error> {
        Ok(self.0.try_recv().await?.map(|n| n.payload().to_string()))
    }
}

async fn read_snapshot(tx: &mut sqlx::PgConnection, store: &FleetStore) -> Result<Snapshot> {
    let rows = sqlx::query(
        "SELECT name,
             CASE jsonb_typeof(spec) WHEN 'string' THEN spec #>> '{}' ELSE spec::text END AS spec,
             generation, created_ms, updated_ms, actor, deleted
         FROM tenants",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(store.err("list tenants"))?;
    let mut tenants = BTreeMap::new();
    for r in rows {
        let name: String = r.get("name");
        let corrupt = |why: String| FleetError::Corrupt {
            what: format!("tenant '{name}'"),
            why,
        };
        let tn = TenantName::parse(&name).map_err(|e| corrupt(e.to_string()))?;
        let spec: TenantSpec =
            serde_json::from_str(r.get::<&str, _>("spec")).map_err(|e| corrupt(e.to_string()))?;
        tenants.insert(
            tn,
            FleetTenant {
                spec,
                generation: r.get("generation"),
                created_ms: r.get("created_ms"),
                updated_ms: r.get("updated_ms"),
                actor: r.get("actor"),
                deleted: r.get("deleted"),
            },
        );
    }
    let rows = sqlx::query(
        "SELECT name, labels::text AS labels, version, cgroup_version, cpus, memory_bytes,
             memory_reserve_bytes, started_ms, last_heartbeat_ms
         FROM nodes ORDER BY name",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(store.err("list nodes"))?;
    let mut nodes = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.get("name");
        let labels: Labels =
            serde_json::from_str(r.get::<&str, _>("labels")).map_err(|e| FleetError::Corrupt {
                what: format!("node '{name}'"),
                why: e.to_string(),
            })?;
        nodes.push(NodeRow {
            name,
            labels,
            version: r.get("version"),
            cgroup_version: r.get("cgroup_version"),
            cpus: r.get("cpus"),
            memory_bytes: r.get::<i64, _>("memory_bytes").max(0) as u64,
            memory_reserve_bytes: r.get::<i64, _>("memory_reserve_bytes").max(0) as u64,
            started_ms: r.get("started_ms"),
            last_heartbeat_ms: r.get("last_heartbeat_ms"),
        });
    }
    Ok(Snapshot { tenants, nodes })
}

/// `spec` as the text of the JSONB value stored for it: its JSON object, or, when the spec
/// holds a NUL character (a cmdline regex may: argv is NUL-joined), that JSON text as one JSON
/// string, since JSONB cannot hold `\u0000` ("unsupported Unicode escape sequence") and the
/// fleet must hold every spec a single host does. `read_snapshot` reads both.
fn spec_jsonb(spec: &TenantSpec) -> String {
    let json = serde_json::to_string(spec).expect("a spec always serializes");
    if json.contains("\\u0000") {
        serde_json::to_string(&json).expect("a string always serializes")
    } else {
        json
    }
}

/// Whether `e` says the database did not answer (down, restarting, unreachable), as opposed
/// to answering with an error.
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        // SQLSTATE class 08 (connection exception), 57P01-57P03 (shutdown, cannot connect now).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        let s = FleetStore::new("postgres://u:secret@h:5433/db", Duration::from_secs(1)).unwrap();
        assert_eq!(s.shown(), "postgres://u@h:5433/db");
        let e = FleetStore::new("postgres://x:pw@h:port/db", Duration::from_secs(1)).unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn the_postgres_migrations_are_numbered_from_one() {
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
        assert_eq!(FleetStore::known_version(), versions.len() as i64);
    }
}
