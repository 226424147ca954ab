//! The fleet's history (issue 19): a node keeps its raw usage and per-interval SLA verdicts in
//! its own SQLite file and ships its closed minutes to the fleet store (PostgreSQL,
//! migrations/postgres/0002_history.sql): `usage_rollup` and `sla_rollup` at step 60 as they
//! are, with the node's name in front, and per SLA minute what the report counts of the
//! node's events (violations opened, memory protection breaches). The fleet SLA report reads
//! them back, per node and tenant, with the same sums as the SQLite queries.
//!
//! What was shipped is noted in SQLite (`fleet_shipped`, migrations/0008_fleet_shipped.sql):
//! per store, node and kind, the last minute shipped. Minutes are written in time order (a
//! rollup marks every bucket before it as done), so what is after the mark is what is left.
//! The mark is written after the store's commit, and the store upserts by (node, tenant,
//! bucket): a node killed in between ships the same minutes again and the store keeps one
//! row of each, with the same values; nothing is lost and nothing doubled.
//!
//! Part of layer 1 (see `lib.rs`): imports `domain` and the store's own modules (`samples`
//! for the usage columns and points, `sla` for buckets, `fleet` for the PostgreSQL pool);
//! none of them imports it.

use super::fleet::{FleetError, FleetStore};
use super::samples::{point, rollup_columns};
use super::sla::{BucketRow, sla_bucket};
use super::{Result, SlaBucket, Store, UsagePoint, q, statement_chunks};
use crate::domain::event::ViolationState;
use crate::domain::usage_row::{UsageEvents, UsageGauges};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use std::sync::OnceLock;

/// Rows per multi-row upsert into PostgreSQL: 48 columns each, within its 65,535 parameters.
const SHIP_CHUNK: usize = 1000;

/// Which minutes: usage (`usage_rollup`) or SLA verdicts (`sla_rollup` and the events the
/// report counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Usage,
    Sla,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Usage, Kind::Sla];

    /// The name `fleet_shipped` keeps it under.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::Sla => "sla",
        }
    }

    /// Its SQLite table (a constant: no user text).
    fn local_table(self) -> &'static str {
        match self {
            Kind::Usage => "usage_rollup",
            Kind::Sla => "sla_rollup",
        }
    }
}

/// A value of a usage minute, typed as both tables declare its column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(Option<i64>),
    Real(Option<f64>),
}

/// One tenant's minute of usage as `usage_rollup` holds it: `values` in `usage_columns()`
/// order (samples, covered_s, each rate's and gauge's sum and max, the events).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageMinute {
    pub tenant: String,
    pub bucket_ms: i64,
    pub values: Vec<Num>,
}

/// One tenant's minute of SLA verdicts as `sla_rollup` holds it, and what the report counts
/// of its events in that minute.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaMinuteRow {
    pub tenant: String,
    pub bucket_ms: i64,
    pub covered_s: f64,
    pub contended_s: f64,
    pub violation_s: f64,
    pub delivered_sum: f64,
    pub delivered_contended_sum: f64,
    pub delivered_contended_min: Option<f64>,
    pub guarantee_ratio: Option<f64>,
    /// `sla_violation` events that opened in the minute.
    pub violations: i64,
    pub memory_protection_breaches: i64,
}

/// The rows of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    Usage(Vec<UsageMinute>),
    Sla(Vec<SlaMinuteRow>),
}

/// Minutes of one kind not shipped yet: every row of the minutes after the mark up to and
/// including `last_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub kind: Kind,
    pub last_ms: i64,
    pub rows: Rows,
}

impl Batch {
    pub fn len(&self) -> usize {
        match &self.rows {
            Rows::Usage(r) => r.len(),
            Rows::Sla(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The usage columns after (tenant, bucket_ms): `usage_rollup`'s less its keys.
pub fn usage_columns() -> &'static [String] {
    static C: OnceLock<Vec<String>> = OnceLock::new();
    C.get_or_init(|| {
        rollup_columns()
            .iter()
            .filter(|c| !["step_s", "tenant", "bucket_ms"].contains(&c.as_str()))
            .cloned()
            .collect()
    })
}

/// Whether a usage column is an integer in both tables (the sample count, a gauge's max, an
/// event sum); the others are floats.
pub fn is_integer(column: &str) -> bool {
    column == "samples"
        || UsageEvents::COLUMNS.contains(&column)
        || UsageGauges::COLUMNS
            .iter()
            .any(|g| column.strip_suffix("_max") == Some(g))
}

/// The SLA minute columns after (tenant, bucket_ms), as PostgreSQL's `sla_minutes` has them.
const SLA_COLUMNS: [&str; 9] = [
    "covered_s",
    "contended_s",
    "violation_s",
    "delivered_sum",
    "delivered_contended_sum",
    "delivered_contended_min",
    "guarantee_ratio",
    "violations",
    "memory_protection_breaches",
];

fn usage_minute(r: &SqliteRow) -> Result<UsageMinute> {
    const OP: &str = "read minutes to ship";
    let values = usage_columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = i + 2;
            Ok(if is_integer(c) {
                Num::Int(r.try_get(at).map_err(q(OP))?)
            } else {
                Num::Real(r.try_get(at).map_err(q(OP))?)
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(UsageMinute {
        tenant: r.try_get(0).map_err(q(OP))?,
        bucket_ms: r.try_get(1).map_err(q(OP))?,
        values,
    })
}

/// (tenant, bucket, covered, contended, violation, delivered sum, delivered contended sum,
/// worst contended share, guarantee): a row of `sla_rollup` as it ships.
pub type SlaRollupRow = (
    String,
    i64,
    f64,
    f64,
    f64,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
);

impl Store {
    /// The last minute of `kind` shipped to `store` as `node`, if any.
    pub async fn shipped(&self, store: &str, node: &str, kind: Kind) -> Result<Option<i64>> {
        let mut conn = self.pool.acquire().await.map_err(q("connect"))?;
        shipped_mark(&mut conn, store, node, kind).await
    }

    /// The minutes of `kind` after the last one shipped to `store` as `node`, at most
    /// `max_minutes` of them, read in one transaction; `None` when every closed minute was
    /// shipped.
    pub async fn unshipped(
        &self,
        store: &str,
        node: &str,
        kind: Kind,
        max_minutes: i64,
    ) -> Result<Option<Batch>> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        let mark = shipped_mark(&mut tx, store, node, kind).await?;
        let after = mark.unwrap_or(i64::MIN);
        let table = kind.local_table();
        // `table` is a constant of this module: no user text.
        let last: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT max(bucket_ms) FROM (SELECT DISTINCT bucket_ms FROM {table}
             WHERE step_s = 60 AND bucket_ms > ?1 ORDER BY bucket_ms LIMIT ?2)"
        )))
        .bind(after)
        .bind(max_minutes.max(1))
        .fetch_one(&mut *tx)
        .await
        .map_err(q("find minutes to ship"))?;
        let Some(last) = last else {
            return Ok(None);
        };
        let rows = match kind {
            Kind::Usage => {
                static SQL: OnceLock<String> = OnceLock::new();
                let sql = SQL.get_or_init(|| {
                    format!(
                        "SELECT tenant, bucket_ms, {} FROM usage_rollup
                         WHERE step_s = 60 AND bucket_ms > ?1 AND bucket_ms <= ?2
                         ORDER BY bucket_ms, tenant",
                        usage_columns().join(", ")
                    )
                });
                // Built only from the const column lists: no user text.
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(after)
                    .bind(last)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(q("read minutes to ship"))?;
                Rows::Usage(rows.iter().map(usage_minute).collect::<Result<_>>()?)
            }
            Kind::Sla => Rows::Sla(sla_minutes_to_ship(&mut tx, after, last).await?),
        };
        tx.commit().await.map_err(q("commit"))?;
        Ok(Some(Batch {
            kind,
            last_ms: last,
            rows,
        }))
    }

    /// Notes that every minute of `kind` up to `last_ms` is in `store` (never moving back).
    pub async fn mark_shipped(
        &self,
        store: &str,
        node: &str,
        kind: Kind,
        last_ms: i64,
    ) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO fleet_shipped (store, node, kind, bucket_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (store, node, kind) DO UPDATE SET bucket_ms = max(bucket_ms, excluded.bucket_ms)",
        )
        .bind(store)
        .bind(node)
        .bind(kind.as_str())
        .bind(last_ms)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(q("note what was shipped"));
        self.tracked(r, true)
    }
}

/// The last minute of `kind` shipped to `store` as `node`.
async fn shipped_mark(
    conn: &mut sqlx::SqliteConnection,
    store: &str,
    node: &str,
    kind: Kind,
) -> Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT bucket_ms FROM fleet_shipped WHERE store = ?1 AND node = ?2 AND kind = ?3",
    )
    .bind(store)
    .bind(node)
    .bind(kind.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(q("read what was shipped"))
}

/// The SLA minutes in (after, last] with their event counts (what `Store::sla_event_counts`
/// counts, per minute). A minute with events and no verdicts still ships, with zero times.
async fn sla_minutes_to_ship(
    tx: &mut sqlx::SqliteConnection,
    after: i64,
    last: i64,
) -> Result<Vec<SlaMinuteRow>> {
    let rows: Vec<SlaRollupRow> = sqlx::query_as(
        "SELECT tenant, bucket_ms, covered_s, contended_s, violation_s, delivered_sum,
                delivered_contended_sum, delivered_contended_min, guarantee_ratio
         FROM sla_rollup WHERE step_s = 60 AND bucket_ms > ?1 AND bucket_ms <= ?2
         ORDER BY bucket_ms, tenant",
    )
    .bind(after)
    .bind(last)
    .fetch_all(&mut *tx)
    .await
    .map_err(q("read minutes to ship"))?;
    let open = serde_json::to_value(ViolationState::Open).expect("a state serializes");
    let counts: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT tenant, (ts_ms / 60000) * 60000 AS b,
                count(*) FILTER (WHERE kind = 'sla_violation'
                    AND CASE WHEN json_valid(detail) THEN json_extract(detail, '$.state') END = ?3),
                count(*) FILTER (WHERE kind = 'memory_protection_breach')
         FROM events
         WHERE ts_ms >= ?1 AND ts_ms < ?2 AND tenant IS NOT NULL
           AND kind IN ('sla_violation', 'memory_protection_breach')
         GROUP BY tenant, b",
    )
    .bind(after.saturating_add(60_000))
    .bind(last + 60_000)
    .bind(open.as_str())
    .fetch_all(&mut *tx)
    .await
    .map_err(q("count SLA events to ship"))?;
    let row =
        |(tenant, bucket_ms, covered_s, contended_s, violation_s, d, dc, min, g): SlaRollupRow| {
            SlaMinuteRow {
                tenant,
                bucket_ms,
                covered_s,
                contended_s,
                violation_s,
                delivered_sum: d,
                delivered_contended_sum: dc,
                delivered_contended_min: min,
                guarantee_ratio: g,
                violations: 0,
                memory_protection_breaches: 0,
            }
        };
    let mut out: std::collections::BTreeMap<(i64, String), SlaMinuteRow> = rows
        .into_iter()
        .map(|r| ((r.1, r.0.clone()), row(r)))
        .collect();
    for (tenant, b, v, m) in counts {
        let zero = (tenant.clone(), b, 0.0, 0.0, 0.0, 0.0, 0.0, None, None);
        let row = out.entry((b, tenant)).or_insert_with(|| row(zero));
        row.violations = v;
        row.memory_protection_breaches = m;
    }
    Ok(out.into_values().collect())
}

/// A bucket's sums as `sla_rollup`'s series query gives them: (bucket, covered s, contended
/// s, violation s, delivered x s, delivered x contended s, guarantee).
pub type BucketSums = BucketRow;

/// The bucket of a series from its sums.
pub fn bucket(sums: BucketSums) -> SlaBucket {
    sla_bucket(sums)
}

/// One node's bucket of one tenant's SLA in the fleet store, with the events counted in it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSlaBucket {
    pub node: String,
    pub tenant: String,
    pub sums: BucketSums,
    pub violations: u64,
    pub memory_protection_breaches: u64,
}

/// Adds `b`'s sums to `a`'s (the same bucket on another node): times and sums add, the
/// guarantee is the larger.
pub fn add_sums(a: &mut BucketSums, b: &BucketSums) {
    a.1 += b.1;
    a.2 += b.2;
    a.3 += b.3;
    a.4 += b.4;
    a.5 += b.5;
    a.6 = match (a.6, b.6) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
}

/// A node's minutes of one tenant's usage, `step_ms` to a point.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeUsagePoint {
    pub node: String,
    pub tenant: String,
    pub point: UsagePoint,
}

/// The fleet store's usage query: ?1 from, ?2 step (ms), ?3 to, ?4 tenant or NULL. The sums
/// and maxima of `usage_rollup`'s query (`samples::usage_sql`), per node and tenant.
fn fleet_usage_sql() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| {
        let mut s = vec![
            "sum(samples)::bigint AS samples".to_string(),
            "sum(covered_s) AS covered_s".into(),
        ];
        for c in usage_columns().iter().skip(2) {
            let agg = if c.ends_with("_max") { "max" } else { "sum" };
            s.push(format!("{agg}({c})::double precision AS {c}"));
        }
        format!(
            "SELECT node, tenant, (bucket_ms - $1) / $2 AS b, {} FROM usage_minutes
             WHERE bucket_ms >= $1 AND bucket_ms < $3 AND ($4::text IS NULL OR tenant = $4)
             GROUP BY node, tenant, b ORDER BY node, tenant, b",
            s.join(", ")
        )
    })
}

impl FleetStore {
    /// Upserts a batch of `node`'s minutes, in one transaction: a minute shipped before is
    /// replaced by the same values.
    pub async fn ship(&self, node: &str, batch: &Batch) -> std::result::Result<(), FleetError> {
        let mut tx = self.pool().begin().await.map_err(self.err("begin"))?;
        match &batch.rows {
            Rows::Usage(rows) => {
                let cols: Vec<&str> = usage_columns().iter().map(String::as_str).collect();
                upsert(&mut tx, "usage_minutes", &cols, node, rows, |b, m| {
                    b.push_bind(m.tenant.clone()).push_bind(m.bucket_ms);
                    for v in m.values.iter().copied() {
                        match v {
                            Num::Int(x) => b.push_bind(x),
                            Num::Real(x) => b.push_bind(x),
                        };
                    }
                })
                .await
                .map_err(self.err("ship usage minutes"))?;
            }
            Rows::Sla(rows) => {
                upsert(&mut tx, "sla_minutes", &SLA_COLUMNS, node, rows, |b, m| {
                    b.push_bind(m.tenant.clone())
                        .push_bind(m.bucket_ms)
                        .push_bind(m.covered_s)
                        .push_bind(m.contended_s)
                        .push_bind(m.violation_s)
                        .push_bind(m.delivered_sum)
                        .push_bind(m.delivered_contended_sum)
                        .push_bind(m.delivered_contended_min)
                        .push_bind(m.guarantee_ratio)
                        .push_bind(m.violations)
                        .push_bind(m.memory_protection_breaches);
                })
                .await
                .map_err(self.err("ship sla minutes"))?;
            }
        }
        tx.commit().await.map_err(self.err("commit"))
    }

    /// Every node's SLA of every tenant (or one) in buckets of `step_ms` (multiples of it)
    /// over the minutes in [from_ms, to_ms): `sla_rollup`'s series query, per node and
    /// tenant, with the events counted.
    pub async fn sla_buckets(
        &self,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
        tenant: Option<&str>,
    ) -> std::result::Result<Vec<NodeSlaBucket>, FleetError> {
        type R = (
            String,
            String,
            i64,
            f64,
            f64,
            f64,
            f64,
            f64,
            Option<f64>,
            i64,
            i64,
        );
        let rows: Vec<R> = sqlx::query_as(
            "SELECT node, tenant, (bucket_ms / $3) * $3 AS b, sum(covered_s), sum(contended_s),
                    sum(violation_s), sum(delivered_sum), sum(delivered_contended_sum),
                    max(guarantee_ratio), sum(violations)::bigint,
                    sum(memory_protection_breaches)::bigint
             FROM sla_minutes WHERE bucket_ms >= $1 AND bucket_ms < $2
                 AND ($4::text IS NULL OR tenant = $4)
             GROUP BY node, tenant, b ORDER BY node, tenant, b",
        )
        .bind(from_ms)
        .bind(to_ms)
        .bind(step_ms)
        .bind(tenant)
        .fetch_all(self.pool())
        .await
        .map_err(self.err("read the fleet's sla minutes"))?;
        Ok(rows
            .into_iter()
            .map(
                |(node, tenant, b, cov, con, vio, d, dc, g, v, m)| NodeSlaBucket {
                    node,
                    tenant,
                    sums: (b, cov, con, vio, d, dc, g),
                    violations: v.max(0) as u64,
                    memory_protection_breaches: m.max(0) as u64,
                },
            )
            .collect())
    }

    /// The delivered share while contended of every minute that was contended, per node and
    /// tenant (for percentiles), in [from_ms, to_ms).
    pub async fn contended_shares(
        &self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<&str>,
    ) -> std::result::Result<Vec<(String, String, f64)>, FleetError> {
        sqlx::query_as(
            "SELECT node, tenant, delivered_contended_sum / contended_s FROM sla_minutes
             WHERE bucket_ms >= $1 AND bucket_ms < $2 AND ($3::text IS NULL OR tenant = $3)
                 AND contended_s > 0",
        )
        .bind(from_ms)
        .bind(to_ms)
        .bind(tenant)
        .fetch_all(self.pool())
        .await
        .map_err(self.err("read the fleet's contended shares"))
    }

    /// Every node's usage of every tenant (or one) in points of `step_ms` from `from_ms`,
    /// over the minutes in [from_ms, to_ms).
    pub async fn usage_points(
        &self,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
        tenant: Option<&str>,
    ) -> std::result::Result<Vec<NodeUsagePoint>, FleetError> {
        // Built only from the const column lists: no user text.
        let rows = sqlx::query(sqlx::AssertSqlSafe(fleet_usage_sql()))
            .bind(from_ms)
            .bind(step_ms)
            .bind(to_ms)
            .bind(tenant)
            .fetch_all(self.pool())
            .await
            .map_err(self.err("read the fleet's usage minutes"))?;
        let f = |r: &sqlx::postgres::PgRow, c: &str| r.try_get::<Option<f64>, _>(c).ok().flatten();
        Ok(rows
            .iter()
            .map(|r| NodeUsagePoint {
                node: r.get("node"),
                tenant: r.get("tenant"),
                point: point(
                    from_ms + r.get::<i64, _>("b") * step_ms,
                    r.get("samples"),
                    f(r, "covered_s").unwrap_or(0.0),
                    |c| (f(r, &format!("{c}_sum")), f(r, &format!("{c}_max"))),
                    |c| f(r, c),
                ),
            })
            .collect())
    }
}

/// Upserts `rows` of `node` into `table` (node, tenant, bucket_ms, `cols`) in multi-row
/// statements of `SHIP_CHUNK`; `push` binds a row's tenant, bucket and `cols`. `table` and
/// `cols` are constants of this module: no user text.
async fn upsert<T>(
    tx: &mut sqlx::PgConnection,
    table: &str,
    cols: &[&str],
    node: &str,
    rows: &[T],
    push: impl Fn(&mut sqlx::query_builder::Separated<'_, sqlx::Postgres, &'static str>, &T),
) -> std::result::Result<(), sqlx::Error> {
    let set: Vec<String> = cols.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
    for chunk in statement_chunks(rows, SHIP_CHUNK) {
        let mut b = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
            "INSERT INTO {table} (node, tenant, bucket_ms, {}) ",
            cols.join(", ")
        ));
        b.push_values(chunk, |mut b, m| {
            b.push_bind(node.to_string());
            push(&mut b, m);
        });
        b.push(format!(
            " ON CONFLICT (node, tenant, bucket_ms) DO UPDATE SET {}",
            set.join(", ")
        ));
        b.build().execute(&mut *tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sla_engine::Verdict;
    use crate::domain::usage_row::UsageRow;

    #[test]
    fn usage_columns_are_the_rollup_less_its_keys_with_their_types() {
        let cols = usage_columns();
        assert_eq!(cols[0], "samples");
        assert_eq!(cols[1], "covered_s");
        assert_eq!(cols.len() + 3, rollup_columns().len());
        assert!(is_integer("samples") && is_integer("new_oom_kills"));
        assert!(is_integer("memory_current_bytes_max"));
        assert!(!is_integer("memory_current_bytes_sum") && !is_integer("cpu_cores_max"));
        assert!(!is_integer("covered_s"));
    }

    /// Minutes come out after the mark, oldest first, a batch of whole minutes at a time;
    /// the mark never moves back; another store or node has its own mark.
    #[tokio::test]
    async fn unshipped_minutes_follow_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        let row = |t: &str, ts_ms: i64| {
            let mut r = UsageRow::from_sample(t, ts_ms, &Default::default(), None);
            r.interval_ms = Some(1000);
            r
        };
        let verdict = |t: &str, ts_ms: i64| Verdict {
            tenant: t.into(),
            ts_ms,
            interval_ms: 1000,
            guarantee_ratio: Some(0.5),
            delivered_ratio: 0.25,
            contended: true,
            violating: true,
        };
        for m in 0..5 {
            let ts = 600_000 + m * 60_000 + 500;
            s.add_sweep(&[row("a", ts), row("b", ts)], &[verdict("a", ts)], &[])
                .await
                .unwrap();
        }
        s.roll_up(600_000 + 5 * 60_000).await.unwrap();
        let (st, node) = ("postgres://x@h:1/f", "n1");
        let b = s
            .unshipped(st, node, Kind::Usage, 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.last_ms, 660_000);
        assert_eq!(b.len(), 4, "two minutes of two tenants");
        let Rows::Usage(rows) = &b.rows else { panic!() };
        assert_eq!(rows[0].values[0], Num::Int(Some(1)), "one sample");
        assert_eq!(
            rows[0].values[1],
            Num::Real(Some(1.0)),
            "one second covered"
        );
        s.mark_shipped(st, node, Kind::Usage, b.last_ms)
            .await
            .unwrap();
        s.mark_shipped(st, node, Kind::Usage, 0).await.unwrap();
        assert_eq!(
            s.shipped(st, node, Kind::Usage).await.unwrap(),
            Some(660_000)
        );
        let b = s
            .unshipped(st, node, Kind::Usage, 60)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((b.last_ms, b.len()), (840_000, 6));
        s.mark_shipped(st, node, Kind::Usage, b.last_ms)
            .await
            .unwrap();
        assert!(
            s.unshipped(st, node, Kind::Usage, 60)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            s.unshipped(st, "n2", Kind::Usage, 60)
                .await
                .unwrap()
                .unwrap()
                .len(),
            10
        );
        let b = s.unshipped(st, node, Kind::Sla, 60).await.unwrap().unwrap();
        let Rows::Sla(rows) = &b.rows else { panic!() };
        assert_eq!(rows.len(), 5);
        assert_eq!(
            (
                rows[0].covered_s,
                rows[0].violation_s,
                rows[0].guarantee_ratio
            ),
            (1.0, 1.0, Some(0.5))
        );
        s.close().await;
    }
}
