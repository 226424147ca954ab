//! All SQL lives here: the desired state (tenants) and the event log, in one SQLite file
//! (WAL mode, `migrations/` applied at open). Callers pass times in; the store reads no clock.

mod samples;
mod sla;

pub use samples::{Level, MinuteRollup, Retention, Usage, UsagePoint, UsageRow};
pub use sla::{SlaBucket, SlaMinute, SlaRow, SlaSeries};

use crate::domain::{TenantName, TenantSpec};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Errors of the store. Each names the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply migrations to {}", path.display())]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database {op} failed")]
    Query {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("tenant '{name}' in the database is unreadable: {why}")]
    Corrupt { name: String, why: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// `{head} VALUES (?, ...), ...` for `rows` rows of `cols` values: the text of a multi-row
/// INSERT whose values are bound with `bind`, which (unlike QueryBuilder's `push_bind`) does
/// no formatting per value. The sweep writes some 40,000 values a second this way.
fn values_sql(head: &str, cols: usize, rows: usize) -> String {
    let mut one = String::with_capacity(cols * 3 + 2);
    one.push('(');
    for i in 0..cols {
        one.push_str(if i == 0 { "?" } else { ", ?" });
    }
    one.push(')');
    let mut sql = String::with_capacity(head.len() + 8 + rows * (one.len() + 2));
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&one);
    }
    sql
}

/// Adds one value to a statement's arguments.
fn bind<'t, T: sqlx::Encode<'t, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>>(
    args: &mut sqlx::sqlite::SqliteArguments,
    v: T,
    op: &'static str,
) -> Result<()> {
    sqlx::Arguments::add(args, v).map_err(|e| q(op)(sqlx::Error::Encode(e)))
}

/// A tenant as stored: its spec and bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredTenant {
    pub spec: TenantSpec,
    /// Bumped by every change, for optimistic checks and caches.
    pub generation: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEvent {
    pub ts_ms: i64,
    pub tenant: Option<String>,
    pub kind: String,
    pub actor: Option<String>,
    pub detail: serde_json::Value,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: i64,
    pub ts_ms: i64,
    pub tenant: Option<String>,
    pub kind: String,
    pub actor: Option<String>,
    pub detail: serde_json::Value,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub tenant: Option<String>,
    pub kind: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: i64,
    /// Paging: only events that come after this event id in the answer's order.
    pub after_id: Option<i64>,
}

/// Bumps `Store::tenants_version` when dropped: after the commit returns, and also when the
/// request is cancelled while the commit is under way (the driver's worker still finishes
/// it). A bump for a commit that failed only costs the sampler one extra read.
struct TenantsChanged<'a>(&'a AtomicU64);

impl Drop for TenantsChanged<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// Bumped after every committed change to the tenants table (`tenants_version`). This
    /// process is the table's only writer: the CLI goes through the HTTP API.
    tenants_version: Arc<AtomicU64>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies the migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|source| StoreError::Open {
                path: path.into(),
                source,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open {
                path: path.into(),
                source,
            })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.into(),
                source,
            })?;
        Ok(Store {
            pool,
            tenants_version: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Every tenant, by name.
    pub async fn tenants(&self) -> Result<BTreeMap<TenantName, StoredTenant>> {
        let rows =
            sqlx::query("SELECT name, spec, generation, created_ms, updated_ms FROM tenants")
                .fetch_all(&self.pool)
                .await
                .map_err(q("list tenants"))?;
        let mut out = BTreeMap::new();
        for r in rows {
            let name: String = r.get("name");
            let corrupt = |why: String| StoreError::Corrupt {
                name: name.clone(),
                why,
            };
            let tn = TenantName::parse(&name).map_err(|e| corrupt(e.to_string()))?;
            let spec: TenantSpec = serde_json::from_str(r.get::<&str, _>("spec"))
                .map_err(|e| corrupt(e.to_string()))?;
            out.insert(
                tn,
                StoredTenant {
                    spec,
                    generation: r.get("generation"),
                    created_ms: r.get("created_ms"),
                    updated_ms: r.get("updated_ms"),
                },
            );
        }
        Ok(out)
    }

    /// Changes with every committed change to the tenants table, so a cache of the tenants
    /// (the sampler's) re-reads them only when they changed. A read of the tenants that
    /// starts after this call sees at least the changes it counts.
    pub fn tenants_version(&self) -> u64 {
        self.tenants_version.load(Ordering::Acquire)
    }

    /// Creates or replaces a tenant and records `event`, in one transaction.
    pub async fn put_tenant(
        &self,
        name: &TenantName,
        spec: &TenantSpec,
        now_ms: i64,
        event: NewEvent,
    ) -> Result<i64> {
        let json = serde_json::to_string(spec).expect("a spec always serializes");
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO tenants (name, parent, spec, generation, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, 1, ?4, ?4)
             ON CONFLICT(name) DO UPDATE SET parent = ?2, spec = ?3,
                 generation = tenants.generation + 1, updated_ms = ?4
             RETURNING generation",
        )
        .bind(name.as_str())
        .bind(spec.parent.as_ref().map(|p| p.as_str()))
        .bind(&json)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(q("save tenant"))?;
        insert_event(&mut tx, &event).await?;
        let _changed = TenantsChanged(&self.tenants_version);
        tx.commit().await.map_err(q("commit"))?;
        Ok(generation)
    }

    /// Deletes a tenant and records `event`, in one transaction. False if it did not exist.
    pub async fn delete_tenant(&self, name: &TenantName, event: NewEvent) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        let n = sqlx::query("DELETE FROM tenants WHERE name = ?1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(q("delete tenant"))?
            .rows_affected();
        insert_event(&mut tx, &event).await?;
        let _changed = TenantsChanged(&self.tenants_version);
        tx.commit().await.map_err(q("commit"))?;
        Ok(n > 0)
    }

    pub async fn add_events(&self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        for e in events {
            insert_event(&mut tx, e).await?;
        }
        tx.commit().await.map_err(q("commit"))
    }

    /// Events, newest first.
    pub async fn events(&self, f: &EventFilter) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT id, ts_ms, tenant, kind, actor, detail FROM events
             WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR ts_ms >= ?3)
               AND (?5 IS NULL OR (ts_ms, id) < (SELECT ts_ms, id FROM events WHERE id = ?5))
             ORDER BY ts_ms DESC, id DESC LIMIT ?4",
        )
        .bind(&f.tenant)
        .bind(&f.kind)
        .bind(f.since_ms)
        .bind(if f.limit > 0 { f.limit } else { 1000 })
        .bind(f.after_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("list events"))?;
        Ok(rows
            .into_iter()
            .map(|r| Event {
                id: r.get("id"),
                ts_ms: r.get("ts_ms"),
                tenant: r.get("tenant"),
                kind: r.get("kind"),
                actor: r.get("actor"),
                detail: serde_json::from_str(r.get::<&str, _>("detail"))
                    .unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }
}

async fn insert_event(tx: &mut sqlx::SqliteConnection, e: &NewEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (ts_ms, tenant, kind, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(e.ts_ms)
    .bind(&e.tenant)
    .bind(&e.kind)
    .bind(&e.actor)
    .bind(e.detail.to_string())
    .execute(tx)
    .await
    .map_err(q("record event"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::units::Percent;

    fn ev(kind: &str, tenant: &str, ts: i64) -> NewEvent {
        NewEvent {
            ts_ms: ts,
            tenant: Some(tenant.into()),
            kind: kind.into(),
            actor: Some("admin".into()),
            detail: serde_json::json!({"x": 1}),
        }
    }

    #[tokio::test]
    async fn tenants_round_trip_on_a_real_file_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/tenantd.db");
        let store = Store::open(&path).await.unwrap();
        let a = TenantName::parse("a").unwrap();
        let mut spec = TenantSpec::default();
        spec.cpu.guarantee_pct = Some(Percent(50.0));
        assert_eq!(
            store
                .put_tenant(&a, &spec, 10, ev("tenant_created", "a", 10))
                .await
                .unwrap(),
            1
        );
        spec.cpu.guarantee_pct = Some(Percent(60.0));
        assert_eq!(
            store
                .put_tenant(&a, &spec, 20, ev("tenant_changed", "a", 20))
                .await
                .unwrap(),
            2
        );
        store.close().await;

        let store = Store::open(&path).await.unwrap();
        let all = store.tenants().await.unwrap();
        assert_eq!(all[&a].spec, spec);
        assert_eq!((all[&a].created_ms, all[&a].updated_ms), (10, 20));
        let events = store.events(&EventFilter::default()).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["tenant_changed", "tenant_created"]
        );
        assert!(
            store
                .delete_tenant(&a, ev("tenant_deleted", "a", 30))
                .await
                .unwrap()
        );
        assert!(store.tenants().await.unwrap().is_empty());
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[tokio::test]
    async fn a_parent_with_children_cannot_be_deleted_by_the_database_either() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let p = TenantName::parse("p").unwrap();
        let c = TenantName::parse("c").unwrap();
        store
            .put_tenant(&p, &TenantSpec::default(), 1, ev("tenant_created", "p", 1))
            .await
            .unwrap();
        let child = TenantSpec {
            parent: Some(p.clone()),
            ..Default::default()
        };
        store
            .put_tenant(&c, &child, 2, ev("tenant_created", "c", 2))
            .await
            .unwrap();
        assert!(
            store
                .delete_tenant(&p, ev("tenant_deleted", "p", 3))
                .await
                .is_err()
        );
        assert_eq!(
            store.tenants().await.unwrap().len(),
            2,
            "the failed delete lost nothing"
        );
    }

    #[tokio::test]
    async fn events_filter_by_tenant_kind_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        store
            .add_events(&[
                ev("oom_kill", "a", 1),
                ev("drift", "a", 2),
                ev("oom_kill", "b", 3),
            ])
            .await
            .unwrap();
        let f = |t: Option<&str>, k: Option<&str>, s: Option<i64>| EventFilter {
            tenant: t.map(Into::into),
            kind: k.map(Into::into),
            since_ms: s,
            limit: 0,
            after_id: None,
        };
        assert_eq!(
            store.events(&f(Some("a"), None, None)).await.unwrap().len(),
            2
        );
        assert_eq!(
            store
                .events(&f(None, Some("oom_kill"), None))
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            store.events(&f(None, None, Some(2))).await.unwrap().len(),
            2
        );
        assert_eq!(
            store.events(&f(None, None, None)).await.unwrap()[0].detail["x"],
            1
        );
    }
}
