//! All SQL lives here: the desired state (tenants) and the event log, in one SQLite file
//! (WAL mode, `migrations/` applied at open). Callers pass times in; the store reads no clock.
//!
//! Durability (issue 13, finding 1): the desired state and the event log are written through
//! ONE writer connection with `synchronous = FULL`, each change one `BEGIN IMMEDIATE ..
//! COMMIT`, acknowledged only once COMMIT returned. After any error that connection is closed
//! and a fresh one opened for the next write, so no half-finished transaction survives. A
//! full filesystem is `StoreError::Full` and turns `Store::writable` off until a write commits.
//!
//! Layer 1 (see `lib.rs`): the store stores the domain's types (`TenantSpec`,
//! `domain::usage_row::UsageRow`) and imports `domain` only, never `cgroup`, `report`,
//! `metrics`, `engine`, `api`, `config` or `cli`; only the engine calls it. Within it,
//! `samples` (usage tables) and `sla` (SLA tables) both build on `rollup` (levels, retention)
//! and `slices` (the raw level of both: a sweep's rows as a few `raw_slices` rows), and `sweep`
//! composes them in one transaction; no two of its modules import each other.
//! `fleet` is the PostgreSQL store a fleet of nodes shares (issue 19), beside this SQLite one;
//! `fleet_history` ships this node's minutes there and reads the fleet's back. `desired` is
//! what both do with the desired state, one trait (`DesiredStore`) for both.

pub mod desired;
mod direct;
pub mod fleet;
pub mod fleet_history;
mod intents;
mod rollup;
mod samples;
mod sla;
mod slices;
mod sweep;

pub use intents::{Intent, MoveLog, NewIntent};
pub use rollup::{Level, Retention};
pub use samples::{MinuteRollup, Usage, UsagePoint};
pub use sla::{SlaBucket, SlaMinute, SlaSeries};

use crate::domain::event::{self, ViolationState};
use crate::domain::{TenantName, TenantSpec};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection, SqlitePool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// SQLite answered SQLITE_FULL (or could not grow its `-shm` wal-index): nothing of the
    /// change was written.
    #[error(
        "the database's filesystem is full ({}): free space; tenantd retries by itself",
        path.display()
    )]
    Full {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
}

/// SQLite's result code for a full disk (`SQLITE_FULL`), and the extended code for a wal-index
/// (`-shm`) that could not grow (`SQLITE_IOERR_SHMSIZE`), which on a full disk comes first.
/// https://www.sqlite.org/rescode.html
const SQLITE_FULL: i32 = 13;
const SQLITE_IOERR_SHMSIZE: i32 = 4874;

/// Rows a query's sqlx worker may send ahead of the task that reads them (`Store::open`).
const ROW_BUFFER: usize = 1024;

/// Whether `e` says the database's filesystem is full.
fn is_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == SQLITE_FULL || c == SQLITE_IOERR_SHMSIZE),
        sqlx::Error::Io(io) => io.raw_os_error() == Some(libc::ENOSPC),
        _ => false,
    }
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

/// `rows` in slices for multi-row INSERTs: as many of `max` rows as fit, then the rest in
/// descending powers of two. The statement text depends on the slice length and every text is
/// kept compiled in the connection's statement cache, so the lengths must come from a small
/// set: cut as `rows.chunks(max)` does, each tenant count's remainder was a statement of its
/// own, and a daemon whose tenant count moved through many values held some 130 MB of
/// compiled INSERTs at 10,000 tenants (heaptrack, issue 15). This way at most
/// `1 + log2(max)` lengths exist, each kept once.
fn statement_chunks<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let max = max.max(1);
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= max {
            max
        } else {
            1 << rest.len().ilog2()
        };
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// Adds one value to a statement's arguments.
fn bind<'t, T: sqlx::Encode<'t, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>>(
    args: &mut sqlx::sqlite::SqliteArguments,
    v: T,
    op: &'static str,
) -> Result<()> {
    sqlx::Arguments::add(args, v).map_err(|e| q(op)(sqlx::Error::Encode(e)))
}

/// A pool of at most `max` connections. A COMMIT that fails with SQLITE_FULL has rolled back
/// already, so the ROLLBACK sqlx then queues fails too and sqlx still counts the transaction
/// as open: its next BEGIN on that connection is a SAVEPOINT inside a transaction that never
/// ends (writes acknowledged but never committed, reads of a stale snapshot, the write lock
/// held). Such a connection is closed instead of reused. The ping runs after the queued
/// ROLLBACK.
fn pool_options(max: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max)
        .after_release(|conn, _| {
            Box::pin(async move {
                conn.ping().await?;
                Ok(!conn.is_in_transaction())
            })
        })
}

/// A tenant as stored: its spec and bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoredTenant {
    pub spec: TenantSpec,
    /// Bumped by every change, for optimistic checks and caches.
    pub generation: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// An event to record: what happened (its kind and detail) and when, to whom, by whom.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEvent {
    pub ts_ms: i64,
    pub tenant: Option<String>,
    pub actor: Option<String>,
    pub event: event::Event,
}

// The log may hold kinds this version does not know (written by another version), so a
// recorded event keeps `kind` and `detail` as stored and the API answers them as they are;
// `Event::event` reads them as the domain's type. Its OpenAPI schema is the
// row's own columns and, by kind, the typed detail this version records.
/// A recorded event.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Event {
    pub id: i64,
    pub ts_ms: i64,
    pub tenant: Option<String>,
    pub kind: String,
    pub actor: Option<String>,
    pub detail: serde_json::Value,
}

/// The row's own columns, in the OpenAPI schema of `Event`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // the schema's shape only: answers are `Event`s
struct EventRow {
    id: i64,
    ts_ms: i64,
    #[schema(required = true)]
    tenant: Option<String>,
    #[schema(required = true)]
    actor: Option<String>,
}

impl utoipa::PartialSchema for Event {
    /// The row's columns and one of the kinds this version records with its typed detail.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, Ref};
        AllOfBuilder::new()
            .description(Some(
                "A recorded event: when, to whom, by whom, and what happened (`kind` and \
                 its `detail`).",
            ))
            .item(EventRow::schema())
            .item(Ref::from_schema_name(
                <event::Event as utoipa::ToSchema>::name(),
            ))
            .into()
    }
}

impl utoipa::ToSchema for Event {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        let kind = <event::Event as utoipa::ToSchema>::name().into_owned();
        schemas.push((kind, <event::Event as utoipa::PartialSchema>::schema()));
        <event::Event as utoipa::ToSchema>::schemas(schemas);
    }
}

impl Event {
    /// What happened, typed; an error for a kind this version does not know.
    pub fn event(&self) -> serde_json::Result<event::Event> {
        event::Event::from_columns(&self.kind, &self.detail)
    }
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

/// What the SLA report counts from one tenant's events in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlaEventCounts {
    /// CPU guarantee violations that opened (`sla_violation` events in state `open`).
    pub violations: u64,
    /// `memory_protection_breach` events.
    pub memory_protection_breaches: u64,
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

/// The one connection that writes the desired state and the event log.
struct Writer {
    /// The pool's options with `synchronous = FULL`: in WAL mode each COMMIT syncs the WAL,
    /// so an acknowledged change survives a crash of the host too.
    opts: SqliteConnectOptions,
    slot: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// `None` after an error: the next write opens a fresh connection.
    conn: Option<SqliteConnection>,
    /// Set from BEGIN until COMMIT returned: still set when a writer was cancelled in between
    /// (a client went away), and then the connection is replaced before the next write.
    in_tx: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

/// A write transaction on the writer connection; `commit` ends it.
struct WriteTx<'a> {
    store: &'a Store,
    slot: tokio::sync::MutexGuard<'a, Slot>,
}

impl WriteTx<'_> {
    fn conn(&mut self) -> &mut SqliteConnection {
        self.slot
            .conn
            .as_mut()
            .expect("a write transaction holds an open connection")
    }

    /// Commits when `body` succeeded. On any error the connection is closed (SQLite rolls an
    /// open transaction back when its connection closes) and the error classified.
    async fn commit<T>(mut self, body: Result<T>) -> Result<T> {
        let r = match body {
            Ok(v) => sqlx::query("COMMIT")
                .execute(self.conn())
                .await
                .map(|_| v)
                .map_err(q("commit")),
            Err(e) => Err(e),
        };
        match r {
            Ok(v) => {
                self.slot.in_tx = false;
                self.store.wrote();
                Ok(v)
            }
            Err(e) => {
                close_writer(&mut self.slot).await;
                Err(self.store.classify(e))
            }
        }
    }
}

/// Closes the writer connection, if any; the next write opens a fresh one.
async fn close_writer(slot: &mut Slot) {
    slot.in_tx = false;
    if let Some(c) = slot.conn.take()
        && let Err(e) = c.close().await
    {
        tracing::debug!("closing the database writer connection: {e}");
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The one connection that writes the sampler's sweeps and closed minutes
    /// (`add_sweep`, `add_minute_rollups`). The closed minutes' multi-row INSERTs are the
    /// largest compiled statements the store keeps (about 3.4 kB of SQLite's memory per row
    /// of a statement), and each connection keeps its own compiled copy of every one it ran;
    /// on the pool, whose idle connections take turns, every connection came to hold all of
    /// them (22 MB of SQLite's memory at 10,000 tenants with the usage rows' INSERTs of then,
    /// heaptrack; issue 15, target 4). The raw rows now go through `store::direct`, whose
    /// statements live for one call. Reads and the other writes stay on `pool`.
    sweeps: SqlitePool,
    writer: Arc<Writer>,
    path: PathBuf,
    /// False from a write that found the filesystem full until a write commits again.
    writable: Arc<AtomicBool>,
    /// Bumped after every committed change to the tenants table (`tenants_version`). This
    /// process is the table's only writer: the CLI goes through the HTTP API.
    tenants_version: Arc<AtomicU64>,
    /// The raw window `roll_up` is compacting over several calls (its start) and the
    /// tenants of it left for the next calls (`sweep::write_compact`).
    window_left: Arc<std::sync::Mutex<Option<WindowLeft>>>,
}

/// A raw window being compacted over several calls: its start, its units not compacted yet,
/// and the rowids of the slices the units before moved (deleted after its last unit).
type WindowLeft = (i64, Vec<sweep::Work>, Vec<i64>);

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
            .busy_timeout(Duration::from_secs(5))
            // Rows cross from sqlx's worker thread to the task through a bounded channel; at
            // sqlx's 50 a compaction's 150,000 rows woke the task again and again (futex and
            // context switches were half its CPU). The rows are small: 1,024 is about 1 MB.
            .row_buffer_size(ROW_BUFFER);
        let writer_opts = opts.clone().synchronous(SqliteSynchronous::Full);
        let open_err = |source| StoreError::Open {
            path: path.into(),
            source,
        };
        let pool = pool_options(4)
            .connect_with(opts.clone())
            .await
            .map_err(open_err)?;
        // Opened at the first sweep, not here: a store that never samples holds no second
        // connection.
        let sweeps = pool_options(1).connect_lazy_with(opts);
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.into(),
                source,
            })?;
        let store = Store {
            pool,
            sweeps,
            writer: Arc::new(Writer {
                opts: writer_opts,
                slot: tokio::sync::Mutex::new(Slot::default()),
            }),
            path: path.into(),
            writable: Arc::new(AtomicBool::new(true)),
            tenants_version: Arc::new(AtomicU64::new(0)),
            window_left: Arc::default(),
        };
        let conn = store
            .writer
            .opts
            .connect()
            .await
            .map_err(|source| StoreError::Open {
                path: path.into(),
                source,
            })?;
        store.writer.slot.lock().await.conn = Some(conn);
        Ok(store)
    }

    /// Starts a write transaction on the writer connection, opening a fresh connection when
    /// the last one was closed after an error or left inside a transaction by a cancelled
    /// writer. `BEGIN IMMEDIATE` takes the write lock first, so a busy database is found here
    /// and not halfway through the change.
    async fn begin_write(&self) -> Result<WriteTx<'_>> {
        let mut slot = self.writer.slot.lock().await;
        if slot.in_tx {
            close_writer(&mut slot).await;
        }
        if slot.conn.is_none() {
            let conn = self
                .writer
                .opts
                .connect()
                .await
                .map_err(|e| self.classify(q("open the writer connection")(e)))?;
            slot.conn = Some(conn);
        }
        slot.in_tx = true;
        let conn = slot.conn.as_mut().expect("opened above");
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(conn).await {
            close_writer(&mut slot).await;
            return Err(self.classify(q("begin")(e)));
        }
        Ok(WriteTx { store: self, slot })
    }

    /// Turns a full filesystem into `StoreError::Full` and `writable` off (logged once, when
    /// it turns); other errors pass through.
    fn classify(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Query { op, source } if is_full(&source) => {
                let full = StoreError::Full {
                    path: self.path.clone(),
                    source,
                };
                if self.writable.swap(false, Ordering::AcqRel) {
                    let cause = std::error::Error::source(&full)
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    tracing::error!("database {op} failed: {full} ({cause})");
                }
                full
            }
            e => e,
        }
    }

    /// Records that a write committed: `writable` on again (logged once, when it turns).
    fn wrote(&self) {
        if !self.writable.swap(true, Ordering::AcqRel) {
            tracing::info!("the database {} accepts writes again", self.path.display());
        }
    }

    /// `r` of a write on the pool (usage rows, rollups, pruning), classified; `wrote` says
    /// whether its success committed a real change.
    fn tracked<T>(&self, r: Result<T>, wrote: bool) -> Result<T> {
        match r {
            Ok(v) => {
                if wrote {
                    self.wrote();
                }
                Ok(v)
            }
            Err(e) => Err(self.classify(e)),
        }
    }

    /// False from a write that found the database's filesystem full until a write commits
    /// again. `check_writable` probes.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Whether the store can write now. Free while `writable` is on; while it is off this
    /// commits one small real write (the database header's `user_version`, rewritten with the
    /// value it holds), so readiness returns with the space, without waiting for a user's
    /// write. `BEGIN IMMEDIATE` alone would not do: it takes a lock and writes nothing.
    pub async fn check_writable(&self) -> Result<()> {
        if self.writable() {
            return Ok(());
        }
        let mut w = self.begin_write().await?;
        let r = async {
            let v: i64 = sqlx::query_scalar("PRAGMA user_version")
                .fetch_one(w.conn())
                .await
                .map_err(q("probe a write"))?;
            // An integer the database gave: no user text.
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {v}")))
                .execute(w.conn())
                .await
                .map_err(q("probe a write"))?;
            Ok(())
        }
        .await;
        w.commit(r).await
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        close_writer(&mut *self.writer.slot.lock().await).await;
        self.sweeps.close().await;
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
        self.put_tenant_with(name, spec, now_ms, event, None).await
    }

    /// `put_tenant` that also removes the journal step `intent` (the kernel step of this
    /// change) in the same transaction.
    pub async fn put_tenant_with(
        &self,
        name: &TenantName,
        spec: &TenantSpec,
        now_ms: i64,
        event: NewEvent,
        intent: Option<i64>,
    ) -> Result<i64> {
        let json = serde_json::to_string(spec).expect("a spec always serializes");
        let mut w = self.begin_write().await?;
        let r = async {
            let generation = upsert_tenant(w.conn(), name, spec, &json, now_ms).await?;
            insert_event(w.conn(), &event).await?;
            if let Some(id) = intent {
                sqlx::query("DELETE FROM intents WHERE id = ?1")
                    .bind(id)
                    .execute(w.conn())
                    .await
                    .map_err(q("remove intent"))?;
            }
            Ok(generation)
        }
        .await;
        let _changed = TenantsChanged(&self.tenants_version);
        w.commit(r).await
    }

    /// Deletes a tenant and records `event`, in one transaction. False if it did not exist
    /// (and then no event is recorded).
    pub async fn delete_tenant(&self, name: &TenantName, event: NewEvent) -> Result<bool> {
        let mut w = self.begin_write().await?;
        let r = async {
            let deleted = delete_row(w.conn(), name).await?;
            if deleted {
                insert_event(w.conn(), &event).await?;
            }
            Ok(deleted)
        }
        .await;
        let _changed = TenantsChanged(&self.tenants_version);
        w.commit(r).await
    }

    /// Records events in one transaction on the writer connection.
    pub async fn add_events(&self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut w = self.begin_write().await?;
        let r = async {
            for e in events {
                insert_event(w.conn(), e).await?;
            }
            Ok(())
        }
        .await;
        w.commit(r).await
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

    /// Per tenant (all, or `only`), the violations that opened and the memory-protection
    /// breaches recorded in [from_ms, to_ms), in one query. Tenants without any are absent.
    pub async fn sla_event_counts(
        &self,
        from_ms: i64,
        to_ms: i64,
        only: Option<&str>,
    ) -> Result<BTreeMap<String, SlaEventCounts>> {
        let open = serde_json::to_value(ViolationState::Open).expect("a state serializes");
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT tenant,
                    count(*) FILTER (WHERE kind = 'sla_violation'
                        AND CASE WHEN json_valid(detail) THEN json_extract(detail, '$.state') END = ?4),
                    count(*) FILTER (WHERE kind = 'memory_protection_breach')
             FROM events
             WHERE ts_ms >= ?1 AND ts_ms < ?2 AND tenant IS NOT NULL AND (?3 IS NULL OR tenant = ?3)
               AND kind IN ('sla_violation', 'memory_protection_breach')
             GROUP BY tenant",
        )
        .bind(from_ms)
        .bind(to_ms)
        .bind(only)
        .bind(open.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(q("count SLA events"))?;
        Ok(rows
            .into_iter()
            .map(|(t, v, b)| {
                let c = SlaEventCounts {
                    violations: v as u64,
                    memory_protection_breaches: b as u64,
                };
                (t, c)
            })
            .collect())
    }
}

/// Removes a tenant's row; false when there was none.
async fn delete_row(tx: &mut sqlx::SqliteConnection, name: &TenantName) -> Result<bool> {
    let n = sqlx::query("DELETE FROM tenants WHERE name = ?1")
        .bind(name.as_str())
        .execute(tx)
        .await
        .map_err(q("delete tenant"))?
        .rows_affected();
    Ok(n > 0)
}

/// Creates or replaces a tenant's row (`json` is `spec` serialized); its new generation.
async fn upsert_tenant(
    tx: &mut sqlx::SqliteConnection,
    name: &TenantName,
    spec: &TenantSpec,
    json: &str,
    now_ms: i64,
) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO tenants (name, parent, spec, generation, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, 1, ?4, ?4)
         ON CONFLICT(name) DO UPDATE SET parent = ?2, spec = ?3,
             generation = tenants.generation + 1, updated_ms = ?4
         RETURNING generation",
    )
    .bind(name.as_str())
    .bind(spec.parent.as_ref().map(|p| p.as_str()))
    .bind(json)
    .bind(now_ms)
    .fetch_one(tx)
    .await
    .map_err(q("save tenant"))
}

async fn insert_event(tx: &mut sqlx::SqliteConnection, e: &NewEvent) -> Result<()> {
    let (kind, detail) = e.event.columns();
    sqlx::query(
        "INSERT INTO events (ts_ms, tenant, kind, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(e.ts_ms)
    .bind(&e.tenant)
    .bind(kind)
    .bind(&e.actor)
    .bind(detail.to_string())
    .execute(tx)
    .await
    .map_err(q("record event"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_chunks_come_in_few_lengths_and_cover_every_row() {
        let sizes = |n: usize| -> Vec<usize> {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&rows, 500).collect();
            let flat: Vec<usize> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(flat, rows, "every row once, in order");
            chunks.iter().map(|c| c.len()).collect()
        };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1000), vec![500, 500]);
        assert_eq!(sizes(1013), vec![500, 500, 8, 4, 1]);
        let mut lengths = std::collections::BTreeSet::new();
        for n in 0..3000 {
            lengths.extend(sizes(n));
        }
        assert_eq!(lengths.len(), 10, "{lengths:?}");
    }
    use crate::domain::event::{Event, LimitHits};
    use crate::domain::units::Percent;

    fn ev(event: Event, tenant: &str, ts: i64) -> NewEvent {
        NewEvent {
            ts_ms: ts,
            tenant: Some(tenant.into()),
            actor: Some("admin".into()),
            event,
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
                .put_tenant(
                    &a,
                    &spec,
                    10,
                    ev(
                        Event::TenantCreated {
                            spec: Box::default(),
                        },
                        "a",
                        10
                    )
                )
                .await
                .unwrap(),
            1
        );
        spec.cpu.guarantee_pct = Some(Percent(60.0));
        assert_eq!(
            store
                .put_tenant(
                    &a,
                    &spec,
                    20,
                    ev(Event::TenantChanged { changes: vec![] }, "a", 20)
                )
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
                .delete_tenant(
                    &a,
                    ev(
                        Event::TenantDeleted {
                            mode: "refuse".into()
                        },
                        "a",
                        30
                    )
                )
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
            .put_tenant(
                &p,
                &TenantSpec::default(),
                1,
                ev(
                    Event::TenantCreated {
                        spec: Box::default(),
                    },
                    "p",
                    1,
                ),
            )
            .await
            .unwrap();
        let child = TenantSpec {
            parent: Some(p.clone()),
            ..Default::default()
        };
        store
            .put_tenant(
                &c,
                &child,
                2,
                ev(
                    Event::TenantCreated {
                        spec: Box::default(),
                    },
                    "c",
                    2,
                ),
            )
            .await
            .unwrap();
        assert!(
            store
                .delete_tenant(
                    &p,
                    ev(
                        Event::TenantDeleted {
                            mode: "refuse".into()
                        },
                        "p",
                        3
                    )
                )
                .await
                .is_err()
        );
        assert_eq!(
            store.tenants().await.unwrap().len(),
            2,
            "the failed delete lost nothing"
        );
        // The writer connection was replaced after the error: the next change commits.
        let q = TenantName::parse("q").unwrap();
        store
            .put_tenant(
                &q,
                &TenantSpec::default(),
                4,
                ev(
                    Event::TenantCreated {
                        spec: Box::default(),
                    },
                    "q",
                    4,
                ),
            )
            .await
            .unwrap();
        assert_eq!(store.tenants().await.unwrap().len(), 3);
        assert!(store.writable(), "a refused change is not a full disk");
    }

    /// A change whose caller went away mid-transaction (a client disconnected) leaves the
    /// writer connection inside BEGIN; the next change must not inherit that transaction.
    #[tokio::test]
    async fn a_cancelled_change_leaves_the_writer_usable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        // Polled once: BEGIN IMMEDIATE is sent, then the future is dropped. Now and then the
        // driver's worker answers within that one poll and the change completes; try again
        // with another name until one is really cancelled mid-change.
        let mut cancelled = false;
        for i in 0..100 {
            let a = TenantName::parse(&format!("a{i}")).unwrap();
            let r = tokio::time::timeout(
                Duration::ZERO,
                store.put_tenant(
                    &a,
                    &TenantSpec::default(),
                    1,
                    ev(
                        Event::TenantCreated {
                            spec: Box::default(),
                        },
                        "a",
                        1,
                    ),
                ),
            )
            .await;
            if r.is_err() {
                cancelled = true;
                break;
            }
        }
        assert!(cancelled, "no change was cancelled mid-way in 100 tries");
        let b = TenantName::parse("b").unwrap();
        store
            .put_tenant(
                &b,
                &TenantSpec::default(),
                2,
                ev(
                    Event::TenantCreated {
                        spec: Box::default(),
                    },
                    "b",
                    2,
                ),
            )
            .await
            .unwrap();
        store.close().await;
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        assert!(store.tenants().await.unwrap().contains_key(&b));
    }

    #[tokio::test]
    async fn events_filter_by_tenant_kind_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        store
            .add_events(&[
                ev(
                    Event::OomKill(LimitHits {
                        count: 1,
                        total: Some(1),
                    }),
                    "a",
                    1,
                ),
                ev(Event::CgroupCreated {}, "a", 2),
                ev(
                    Event::OomKill(LimitHits {
                        count: 1,
                        total: Some(1),
                    }),
                    "b",
                    3,
                ),
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
            store.events(&f(None, None, None)).await.unwrap()[0].detail["count"],
            1
        );
    }

    /// The report's counts in one query, on a real file: several tenants, violations that
    /// open and close, breaches, the window's edges, other kinds and a row another writer left
    /// malformed; each tenant's count equals the old fetch-and-filter over `events`.
    #[tokio::test]
    async fn sla_event_counts_match_fetching_and_filtering() {
        use crate::domain::event::{CpuViolation, Violation};
        use crate::domain::sla::{self, SlaEvent};
        use crate::domain::tenant::Protection;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let violation = |open: bool, start_ms: i64| {
            let v = sla::Violation {
                start_ms,
                end_ms: (!open).then_some(start_ms + 500),
                worst_share: 0.2,
                guarantee: 0.5,
            };
            let e = if open {
                SlaEvent::Opened(v)
            } else {
                SlaEvent::Closed(v)
            };
            Violation::from(&e)
        };
        let cpu = |open, ts| {
            Event::SlaViolation(CpuViolation {
                violation: violation(open, ts),
                top_consumers: vec![],
            })
        };
        let breach = Event::MemoryProtectionBreach {
            protection: Protection::Soft,
            guarantee_bytes: 1,
            memory_current_bytes: None,
            memory_events_low: 1,
        };
        store
            .add_events(&[
                // a: two opened and one closed in the window, one opened before, one at its end.
                ev(cpu(true, 90), "a", 90),
                ev(cpu(true, 100), "a", 100),
                ev(cpu(false, 100), "a", 150),
                ev(cpu(true, 160), "a", 160),
                ev(breach.clone(), "a", 170),
                ev(cpu(true, 200), "a", 200),
                // b: only closings, an IO violation that opened, and two breaches.
                ev(cpu(false, 120), "b", 120),
                ev(Event::SlaIoViolation(violation(true, 130)), "b", 130),
                ev(breach.clone(), "b", 140),
                ev(breach.clone(), "b", 199),
                // c: nothing the report counts.
                ev(Event::CgroupCreated {}, "c", 110),
            ])
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO events (ts_ms, tenant, kind, actor, detail) VALUES
                 (130, 'b', 'sla_violation', NULL, 'not json'),
                 (131, 'b', 'sla_violation', NULL, '{\"state\": \"open\"}'),
                 (132, NULL, 'sla_violation', NULL, '{\"state\": \"open\"}')",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let (from, to) = (100, 200);
        let counts = store.sla_event_counts(from, to, None).await.unwrap();
        let c = |v, b| SlaEventCounts {
            violations: v,
            memory_protection_breaches: b,
        };
        assert_eq!(
            counts,
            BTreeMap::from([("a".to_string(), c(2, 1)), ("b".to_string(), c(1, 2))])
        );
        // What the report did before: fetch each tenant's events of a kind, filter.
        for t in ["a", "b", "c"] {
            let fetched = |kind: &str| {
                let f = EventFilter {
                    tenant: Some(t.into()),
                    kind: Some(kind.into()),
                    since_ms: Some(from),
                    limit: 100_000,
                    after_id: None,
                };
                let store = &store;
                async move { store.events(&f).await.unwrap() }
            };
            let old = c(
                fetched("sla_violation")
                    .await
                    .iter()
                    .filter(|e| e.ts_ms < to && e.detail["state"] == "open")
                    .count() as u64,
                fetched("memory_protection_breach")
                    .await
                    .iter()
                    .filter(|e| e.ts_ms < to)
                    .count() as u64,
            );
            assert_eq!(counts.get(t).copied().unwrap_or_default(), old, "{t}");
        }
        assert_eq!(
            store.sla_event_counts(from, to, Some("b")).await.unwrap(),
            BTreeMap::from([("b".to_string(), c(1, 2))])
        );
        assert!(
            store
                .sla_event_counts(from, to, Some("c"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.sla_event_counts(0, 1_000, None).await.unwrap()["a"],
            c(4, 1)
        );
    }
}
