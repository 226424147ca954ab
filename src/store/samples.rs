//! Usage history in SQLite: raw samples, per-minute and per-hour rollups of closed buckets
//! (raw -> minute -> hour, once per minute), retention per level, and the query that picks a
//! level for a requested step. Rolling up closed buckets instead of upserting on every write
//! halves the per-second write cost (see docs/usage-numbers.md).
//!
//! A raw row is the domain's `UsageRow`; every column name comes from its field names
//! (`domain::usage_row`), so the raw table, the rollups and the query answer cannot drift
//! apart from the row (migrations/0002_usage.sql holds the same names). This module owns the
//! usage tables only: it imports `store::rollup` (levels, retention) and the domain, never
//! `store::sla` (the SLA tables) nor `store::sweep` (the one transaction writing both).

use super::direct::{Stmt, query_rows};
use super::rollup::{
    BLOCK_MS, BlockColumn, Level, Retention, SqlSum, bind_tenant_range, bind_window, merge_by_time,
    read_blocks, unfolded,
};
use super::slices::tenant_tail;
use super::{Result, Store, bind, q, statement_chunks, values_sql};
use crate::domain::usage_block::decode_usage;
use crate::domain::usage_row::{
    UsageCounters, UsageEvents, UsageEventsPoint, UsageGauges, UsageGaugesPoint, UsageRates,
    UsageRatesPoint, UsageRow,
};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Row, SqliteConnection};
use std::borrow::Borrow;
use std::sync::OnceLock;

/// Cumulative kernel counters kept in the raw rows (for re-deriving rates; not rolled up).
const COUNTERS: [&str; UsageCounters::LEN] = UsageCounters::COLUMNS;

/// Gauges: rolled up as mean and max.
const GAUGES: [&str; UsageGauges::LEN] = UsageGauges::COLUMNS;

/// Per-second rates: rolled up as a time-weighted mean and max.
const RATES: [&str; UsageRates::LEN] = UsageRates::COLUMNS;

/// Events in the interval: rolled up as sums.
const EVENTS: [&str; UsageEvents::LEN] = UsageEvents::COLUMNS;

/// One tenant's minute of usage rolled up as the samples arrive, so a closed minute is written
/// as one row instead of being folded again from the raw table (which cost a sort of every
/// tenant's 60 rows, some 300 ms a minute for 1,000 tenants). Agrees with the SQL fold
/// (`rollup_sql`) value for value; `Store::roll_up` still folds from raw whatever minute no
/// process saw whole (the one the daemon started in).
#[derive(Debug, Clone, PartialEq)]
pub struct MinuteRollup {
    pub tenant: String,
    pub bucket_ms: i64,
    samples: i64,
    interval_ms: i64,
    /// Per rate, in `RATES` order: sum of rate x interval (ms), max.
    rates: [(f64, f64); UsageRates::LEN],
    /// Per gauge, in `GAUGES` order: sum, max.
    gauges: [(i64, i64); UsageGauges::LEN],
    /// Per event, in `EVENTS` order: sum.
    events: [i64; UsageEvents::LEN],
    /// Which of the values above a row has given (the others are SQL's NULL).
    seen: Seen,
}

/// Which values of a `MinuteRollup` a row has given, one bit each (`Seen::RATE_SUM` ..):
/// the values need no `Option` of their own, which at 16 bytes each made a rollup 688 bytes
/// instead of 376 (10,000 tenants' minute: 6.9 -> 3.8 MB; issue 15, target 4).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Seen(u64);

impl Seen {
    /// The first bit of each kind: a rate's sum, a rate's max, a gauge (its sum and max come
    /// together), an event.
    const RATE_SUM: usize = 0;
    const RATE_MAX: usize = UsageRates::LEN;
    const GAUGE: usize = 2 * UsageRates::LEN;
    const EVENT: usize = Self::GAUGE + UsageGauges::LEN;
    const _FITS: () = assert!(Self::EVENT + UsageEvents::LEN <= 64);

    fn has(self, bit: usize) -> bool {
        self.0 >> bit & 1 == 1
    }

    fn set(&mut self, bit: usize) {
        self.0 |= 1 << bit;
    }

    /// `v` where its bit is set, `None` where no row gave one.
    fn of<T>(self, bit: usize, v: T) -> Option<T> {
        self.has(bit).then_some(v)
    }
}

impl MinuteRollup {
    pub fn new(tenant: &str, bucket_ms: i64) -> Self {
        MinuteRollup {
            tenant: tenant.to_string(),
            bucket_ms,
            samples: 0,
            interval_ms: 0,
            rates: [(0.0, 0.0); UsageRates::LEN],
            gauges: [(0, 0); UsageGauges::LEN],
            events: [0; UsageEvents::LEN],
            seen: Seen::default(),
        }
    }

    /// Folds one raw row in (SQL's `sum` and `max` skip NULLs, and so does this).
    pub fn add(&mut self, r: &UsageRow) {
        fn max<T: PartialOrd + Copy>(seen: bool, m: T, v: T) -> T {
            if seen && m >= v { m } else { v }
        }
        self.samples += 1;
        self.interval_ms += r.interval_ms.unwrap_or(0);
        let seen = &mut self.seen;
        for (i, ((sum, mx), v)) in self.rates.iter_mut().zip(r.rates.values()).enumerate() {
            if let Some(v) = v {
                if let Some(dt) = r.interval_ms {
                    *sum += v * dt as f64;
                    seen.set(Seen::RATE_SUM + i);
                }
                *mx = max(seen.has(Seen::RATE_MAX + i), *mx, v);
                seen.set(Seen::RATE_MAX + i);
            }
        }
        for (i, ((sum, mx), v)) in self.gauges.iter_mut().zip(r.gauges.values()).enumerate() {
            if let Some(v) = v {
                *sum = sum.saturating_add(v);
                *mx = max(seen.has(Seen::GAUGE + i), *mx, v);
                seen.set(Seen::GAUGE + i);
            }
        }
        for (i, (sum, v)) in self.events.iter_mut().zip(r.events.values()).enumerate() {
            if let Some(v) = v {
                *sum = sum.saturating_add(v);
                seen.set(Seen::EVENT + i);
            }
        }
    }

    /// Per rate, in `RATES` order: sum of rate x interval (ms), max; `None` as SQL's NULL.
    fn rate_values(&self) -> impl Iterator<Item = (Option<f64>, Option<f64>)> + '_ {
        self.rates.iter().enumerate().map(|(i, &(sum, max))| {
            (
                self.seen.of(Seen::RATE_SUM + i, sum),
                self.seen.of(Seen::RATE_MAX + i, max),
            )
        })
    }

    /// Per gauge, in `GAUGES` order: sum, max.
    fn gauge_values(&self) -> impl Iterator<Item = (Option<i64>, Option<i64>)> + '_ {
        self.gauges.iter().enumerate().map(|(i, &(sum, max))| {
            let seen = self.seen.has(Seen::GAUGE + i);
            (seen.then_some(sum), seen.then_some(max))
        })
    }

    /// Per event, in `EVENTS` order: sum.
    fn event_values(&self) -> impl Iterator<Item = Option<i64>> + '_ {
        (self.events.iter().enumerate()).map(|(i, &sum)| self.seen.of(Seen::EVENT + i, sum))
    }
}

/// One point of a usage answer: the bucket [ts_ms, ts_ms + step) and its values, named with
/// their units: `<rate>_mean`/`<rate>_max`, `<gauge>_mean`/`<gauge>_max`, `<event>` (count).
// The value fields are declared with their columns (`domain::usage_row`); on the wire they
// stand in the point itself, after `ts_ms`, `samples` and `covered_s`, in name order.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, utoipa::ToSchema)]
pub struct UsagePoint {
    pub ts_ms: i64,
    pub samples: i64,
    /// Seconds of the bucket covered by rates.
    pub covered_s: f64,
    #[serde(flatten)]
    #[schema(inline)]
    pub rates: UsageRatesPoint,
    #[serde(flatten)]
    #[schema(inline)]
    pub gauges: UsageGaugesPoint,
    #[serde(flatten)]
    #[schema(inline)]
    pub events: UsageEventsPoint,
}

/// The fields as `#[serde(flatten)]` would write them, but with the values in name order (as
/// the answer has always listed them) rather than group by group.
impl Serialize for UsagePoint {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut values: Vec<(&str, Option<f64>)> = self.rates.entries().into();
        values.extend(self.gauges.entries());
        values.extend(self.events.entries());
        values.sort_unstable_by_key(|&(name, _)| name);
        let mut m = s.serialize_map(Some(3 + values.len()))?;
        m.serialize_entry("ts_ms", &self.ts_ms)?;
        m.serialize_entry("samples", &self.samples)?;
        m.serialize_entry("covered_s", &self.covered_s)?;
        for (name, v) in values {
            m.serialize_entry(name, &v)?;
        }
        m.end()
    }
}

/// A usage answer.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub tenant: String,
    pub level: Level,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_s: i64,
    pub points: Vec<UsagePoint>,
}

/// Minute rollups per multi-row INSERT (45 columns each). The connection keeps every length
/// `statement_chunks` makes compiled, about 3.4 kB of SQLite's memory per row (issue 15,
/// target 4).
const ROLLUP_CHUNK: usize = 128;

pub(super) fn raw_columns() -> &'static [&'static str] {
    static C: OnceLock<Vec<&'static str>> = OnceLock::new();
    C.get_or_init(|| {
        let mut c = vec!["tenant", "ts_ms", "interval_ms"];
        c.extend(COUNTERS);
        c.extend(GAUGES);
        c.extend(RATES);
        c.extend(EVENTS);
        c
    })
}

/// The columns of `usage_rollup`, in table order (the fleet store's `usage_minutes` holds
/// the same after `node`, less `step_s`).
pub(super) fn rollup_columns() -> &'static [String] {
    static C: OnceLock<Vec<String>> = OnceLock::new();
    C.get_or_init(|| {
        let mut c: Vec<String> = ["step_s", "tenant", "bucket_ms", "samples", "covered_s"]
            .map(String::from)
            .into();
        for r in RATES.iter().chain(&GAUGES) {
            c.push(format!("{r}_sum"));
            c.push(format!("{r}_max"));
        }
        c.extend(EVENTS.map(String::from));
        c
    })
}

/// `INSERT INTO usage_rollup SELECT ...` folding the closed hours in [?1, ?2) of minute
/// rollups into hour rollups.
fn hour_rollup_sql() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| {
        let cols = rollup_columns().join(", ");
        let ms = Level::Hour.step_s() * 1000;
        let mut sel = vec![
            format!("{}", Level::Hour.step_s()),
            "tenant".into(),
            format!("(ts / {ms}) * {ms} AS b"),
        ];
        sel.push("sum(samples)".into());
        sel.push("sum(covered_s)".into());
        for r in RATES.iter().chain(&GAUGES) {
            sel.push(format!("sum({r}_sum), max({r}_max)"));
        }
        for e in EVENTS {
            sel.push(format!("sum({e})"));
        }
        format!(
            "INSERT INTO usage_rollup ({cols}) SELECT {} FROM (SELECT *, bucket_ms AS ts FROM usage_rollup \
             WHERE step_s = 60 AND bucket_ms >= ?1 AND bucket_ms < ?2) GROUP BY tenant, b ON CONFLICT DO NOTHING",
            sel.join(", ")
        )
    })
}

/// The usage query of a rollup level: ?1 from, ?2 step (ms), ?3 tenant, ?4 to. The raw level
/// is answered from decoded rows (`raw_points`).
fn usage_sql(level: Level) -> String {
    let mut s = vec![
        "sum(samples) AS samples".to_string(),
        "sum(covered_s) AS covered_s".into(),
    ];
    for r in RATES.iter().chain(&GAUGES) {
        s.push(format!("sum({r}_sum) AS {r}_sum, max({r}_max) AS {r}_max"));
    }
    for e in EVENTS {
        s.push(format!("sum({e}) AS {e}"));
    }
    format!(
        "SELECT (bucket_ms - ?1) / ?2 AS b, {} FROM usage_rollup WHERE step_s = {} AND tenant = ?3 \
         AND bucket_ms >= ?1 AND bucket_ms < ?4 GROUP BY b ORDER BY b",
        s.join(", "),
        level.step_s()
    )
}

/// One point of an answer from its sums and maxima: `sum_max(column)` gives a rate's
/// sum of rate x seconds or a gauge's sum over samples, and the max; `event(column)` a sum.
pub(super) fn point(
    ts_ms: i64,
    samples: i64,
    covered_s: f64,
    sum_max: impl Fn(&str) -> (Option<f64>, Option<f64>),
    event: impl Fn(&str) -> Option<f64>,
) -> UsagePoint {
    let rates = UsageRatesPoint::from_fn(|c| {
        let (sum, max) = sum_max(c);
        (sum.filter(|_| covered_s > 0.0).map(|s| s / covered_s), max)
    });
    let gauges = UsageGaugesPoint::from_fn(|c| {
        let (sum, max) = sum_max(c);
        (sum.filter(|_| samples > 0).map(|s| s / samples as f64), max)
    });
    UsagePoint {
        ts_ms,
        samples,
        covered_s,
        rates,
        gauges,
        events: UsageEventsPoint::from_fn(event),
    }
}

/// One bucket of raw rows summed as the SQL over usage_raw summed them (`sum`, `avg`, `max`
/// skip NULLs; float sums in SQLite's own way, `SqlSum`), so an answer made from decoded
/// blocks is the one made from raw rows, bit for bit.
struct RawBucket {
    b: i64,
    samples: i64,
    interval_ms: Option<i64>,
    /// Per rate: sum of rate x interval (ms), max.
    rates: [(SqlSum, Option<f64>); UsageRates::LEN],
    /// Per gauge: sum, count, max.
    gauges: [(i128, i64, Option<i64>); UsageGauges::LEN],
    events: [Option<i64>; UsageEvents::LEN],
}

impl RawBucket {
    fn new(b: i64) -> Self {
        RawBucket {
            b,
            samples: 0,
            interval_ms: None,
            rates: [(SqlSum::default(), None); UsageRates::LEN],
            gauges: [(0, 0, None); UsageGauges::LEN],
            events: [None; UsageEvents::LEN],
        }
    }

    fn add(&mut self, r: &UsageRow) {
        self.samples += 1;
        if let Some(i) = r.interval_ms {
            self.interval_ms = Some(self.interval_ms.unwrap_or(0) + i);
        }
        for ((sum, max), v) in self.rates.iter_mut().zip(r.rates.values()) {
            let Some(v) = v else { continue };
            if let Some(i) = r.interval_ms {
                sum.add(v * i as f64);
            }
            // SQL's max keeps the first of equal values.
            if max.is_none_or(|m| v > m) {
                *max = Some(v);
            }
        }
        for ((sum, n, max), v) in self.gauges.iter_mut().zip(r.gauges.values()) {
            let Some(v) = v else { continue };
            *sum += i128::from(v);
            *n += 1;
            if max.is_none_or(|m| v > m) {
                *max = Some(v);
            }
        }
        for (sum, v) in self.events.iter_mut().zip(r.events.values()) {
            if let Some(v) = v {
                *sum = Some(sum.unwrap_or(0).saturating_add(v));
            }
        }
    }

    fn point(&self, from_ms: i64, step_ms: i64) -> UsagePoint {
        let covered_s = self.interval_ms.unwrap_or(0) as f64 / 1000.0;
        let at = |names: &[&str], c: &str| names.iter().position(|n| *n == c);
        point(
            from_ms + self.b * step_ms,
            self.samples,
            covered_s,
            |c| {
                if let Some(i) = at(&RATES, c) {
                    let (sum, max) = self.rates[i];
                    (sum.get().map(|s| s / 1000.0), max)
                } else if let Some(i) = at(&GAUGES, c) {
                    // avg(g) * count(*), as the SQL had it.
                    let (sum, n, max) = self.gauges[i];
                    let avg = (n > 0).then(|| sum as f64 / n as f64);
                    (avg.map(|a| a * self.samples as f64), max.map(|m| m as f64))
                } else {
                    (None, None)
                }
            },
            |c| {
                at(&EVENTS, c)
                    .and_then(|i| self.events[i])
                    .map(|v| v as f64)
            },
        )
    }
}

/// The points of raw rows in time order: buckets of `step_ms` from `from_ms`, empty ones absent.
fn raw_points(rows: &[UsageRow], from_ms: i64, step_ms: i64) -> Vec<UsagePoint> {
    let mut points = Vec::new();
    let mut cur: Option<RawBucket> = None;
    for r in rows {
        let b = (r.ts_ms - from_ms) / step_ms;
        if cur.as_ref().is_some_and(|c| c.b != b) {
            points.extend(cur.take().map(|c| c.point(from_ms, step_ms)));
        }
        cur.get_or_insert_with(|| RawBucket::new(b)).add(r);
    }
    points.extend(cur.map(|c| c.point(from_ms, step_ms)));
    points
}

/// The raw columns, in `raw_columns` order, as a SELECT list with prefix `p`.
fn raw_select(p: &str) -> String {
    raw_columns()
        .iter()
        .map(|c| format!("{p}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tenant's rows in the raw table in [?2, ?3): keyed (ts_ms, tenant), they are found with
/// one lookup per sweep time in the range.
fn tail_sql() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| {
        format!(
            "SELECT {} FROM sample_ticks t CROSS JOIN usage_raw u ON u.ts_ms = t.ts_ms
             WHERE u.tenant = ?1 AND t.ts_ms >= ?2 AND t.ts_ms < ?3 ORDER BY t.ts_ms",
            raw_select("u.")
        )
    })
}

/// `raw_usage_window`'s query: ?1..?4 = window start, end, first and last tenant.
pub(super) fn usage_window_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT {} FROM sample_ticks t CROSS JOIN usage_raw u ON u.ts_ms = t.ts_ms
             WHERE t.ts_ms >= ?1 AND t.ts_ms < ?2 AND u.tenant >= ?3 AND u.tenant <= ?4
             ORDER BY t.ts_ms, u.tenant",
            raw_select("u.")
        )
    })
}

/// The raw rows in [start_ms, end_ms) of the tenants in [first, last], by time then tenant:
/// what a compaction moves into blocks, a slice of its window at a time. Found with one seek per
/// sweep time (`sample_ticks`) over the tenants' range, in the table's own order (no sort),
/// so a slice of the tenants reads its own rows, not the whole window's (issue 15). Read with
/// direct SQLite calls (`store::direct`): through sqlx, copying each row's 40 values in and
/// out was 60% of a compaction's CPU.
pub(super) async fn raw_usage_window(
    tx: &mut SqliteConnection,
    range: (i64, i64),
    tenants: (&str, &str),
) -> Result<Vec<UsageRow>> {
    query_rows(
        tx,
        usage_window_sql(),
        "read a window of raw usage",
        |st| bind_window(st, range, tenants),
        direct_row,
    )
    .await
}

/// The current row of a statement selecting `raw_select`'s columns: its values by position,
/// in `raw_columns` order (tenant, ts_ms, interval_ms, counters, gauges, rates, events).
pub(super) fn direct_row(st: &Stmt<'_>) -> UsageRow {
    let c0 = 3;
    let g0 = c0 + COUNTERS.len();
    let r0 = g0 + GAUGES.len();
    let e0 = r0 + RATES.len();
    UsageRow {
        tenant: st.text(0),
        ts_ms: st.int(1).unwrap_or(0),
        interval_ms: st.int(2),
        counters: UsageCounters::from_values(std::array::from_fn(|i| st.int(c0 + i))),
        gauges: UsageGauges::from_values(std::array::from_fn(|i| st.int(g0 + i))),
        rates: UsageRates::from_values(std::array::from_fn(|i| st.real(r0 + i))),
        events: UsageEvents::from_values(std::array::from_fn(|i| st.int(e0 + i))),
    }
}

/// A numeric column as f64, whether SQLite answered INTEGER or REAL.
pub(super) fn f(r: &sqlx::sqlite::SqliteRow, c: &str) -> Option<f64> {
    match r.try_get::<Option<f64>, _>(c) {
        Ok(v) => v,
        Err(_) => r
            .try_get::<Option<i64>, _>(c)
            .ok()
            .flatten()
            .map(|v| v as f64),
    }
}

/// Minutes rolled up in memory (`MinuteRollup`), in multi-row INSERTs of `ROLLUP_CHUNK`; a
/// minute already rolled up is left as it is.
pub(super) async fn insert_minute_rollups<R: Borrow<MinuteRollup>>(
    tx: &mut SqliteConnection,
    usage: &[R],
) -> Result<()> {
    const OP: &str = "write minute rollups";
    let cols = rollup_columns();
    let head = format!("INSERT INTO usage_rollup ({})", cols.join(", "));
    for chunk in statement_chunks(usage, ROLLUP_CHUNK) {
        let mut a = SqliteArguments::default();
        for m in chunk {
            let m = m.borrow();
            bind(&mut a, Level::Minute.step_s(), OP)?;
            bind(&mut a, m.tenant.as_str(), OP)?;
            bind(&mut a, m.bucket_ms, OP)?;
            bind(&mut a, m.samples, OP)?;
            bind(&mut a, m.interval_ms as f64 / 1000.0, OP)?;
            // In `rollup_columns` order: rates, then gauges, each sum and max; events.
            for (sum, max) in m.rate_values() {
                bind(&mut a, sum.map(|s| s / 1000.0), OP)?;
                bind(&mut a, max, OP)?;
            }
            for (sum, max) in m.gauge_values() {
                bind(&mut a, sum.map(|s| s as f64), OP)?;
                bind(&mut a, max, OP)?;
            }
            for e in m.event_values() {
                bind(&mut a, e, OP)?;
            }
        }
        let sql = values_sql(&head, cols.len(), chunk.len()) + " ON CONFLICT DO NOTHING";
        sqlx::query_with(sqlx::AssertSqlSafe(sql), a)
            .execute(&mut *tx)
            .await
            .map_err(q(OP))?;
    }
    Ok(())
}

/// Folds the closed hours of minute rollups into hour rollups; an hour appears once `now_ms`
/// is past its end. (Minutes are folded from raw by `sweep::fold_minutes`.)
pub(super) async fn fold_usage(tx: &mut SqliteConnection, now_ms: i64) -> Result<()> {
    const FIRST: &str = "SELECT min(bucket_ms) FROM usage_rollup WHERE step_s = 60";
    let done = "SELECT max(bucket_ms) FROM usage_rollup WHERE step_s = ?1";
    let Some((start, closed)) = unfolded(tx, Level::Hour.step_s(), done, FIRST, now_ms).await?
    else {
        return Ok(());
    };
    // Built only from the const column lists: no user text.
    sqlx::query(sqlx::AssertSqlSafe(hour_rollup_sql()))
        .bind(start)
        .bind(closed)
        .execute(&mut *tx)
        .await
        .map_err(q("roll up usage"))?;
    Ok(())
}

impl Store {
    /// Writes one tick's samples in one transaction; see `Store::add_sweep`.
    pub async fn add_usage(&self, rows: &[UsageRow]) -> Result<()> {
        self.add_sweep(rows, &[], &[]).await
    }

    /// A tenant's raw rows in [from_ms, to_ms) in time order: the compressed blocks' rows and
    /// the raw table's (the windows not compacted yet), read in one transaction so that a
    /// compaction between the two reads can neither hide nor double a row.
    pub async fn raw_usage(&self, tenant: &str, from_ms: i64, to_ms: i64) -> Result<Vec<UsageRow>> {
        const OP: &str = "read raw usage";
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        let rows = read_blocks(
            &mut tx,
            BlockColumn::Usage,
            tenant,
            (from_ms, to_ms),
            decode_usage,
            |r| r.ts_ms,
        )
        .await?;
        let tail = query_rows(
            &mut tx,
            tail_sql(),
            OP,
            |st| bind_tenant_range(st, tenant, (from_ms, to_ms)),
            direct_row,
        )
        .await?;
        let slices = tenant_tail::<UsageRow>(&mut tx, tenant, (from_ms, to_ms)).await?;
        tx.commit().await.map_err(q("commit"))?;
        let rows = merge_by_time(rows, tail, |r| r.ts_ms);
        Ok(merge_by_time(rows, slices, |r| r.ts_ms))
    }

    /// Deletes what each level keeps no longer. Returns the rows removed.
    pub async fn prune_usage(&self, now_ms: i64, keep: &Retention) -> Result<u64> {
        let r = self.write_prune_usage(now_ms, keep).await;
        self.tracked(r, false)
    }

    async fn write_prune_usage(&self, now_ms: i64, keep: &Retention) -> Result<u64> {
        let mut n = sqlx::query("DELETE FROM usage_raw WHERE ts_ms < ?1")
            .bind(now_ms - keep.raw_ms)
            .execute(&self.pool)
            .await
            .map_err(q("prune raw usage"))?
            .rows_affected();
        // Slices hold verdicts too: both raw tables kept `raw_ms`.
        n += sqlx::query("DELETE FROM raw_slices WHERE ts_ms < ?1")
            .bind(now_ms - keep.raw_ms)
            .execute(&self.pool)
            .await
            .map_err(q("prune raw slices"))?
            .rows_affected();
        // A block goes once all of its window is older than `raw_ms` (both raw tables keep
        // `raw_ms`, their blocks with them).
        n += sqlx::query("DELETE FROM raw_blocks WHERE start_ms + ?2 <= ?1")
            .bind(now_ms - keep.raw_ms)
            .bind(BLOCK_MS)
            .execute(&self.pool)
            .await
            .map_err(q("prune raw blocks"))?
            .rows_affected();
        // Both raw tables keep `raw_ms`; their sweep times go with them.
        sqlx::query("DELETE FROM sample_ticks WHERE ts_ms < ?1")
            .bind(now_ms - keep.raw_ms)
            .execute(&self.pool)
            .await
            .map_err(q("prune sample times"))?;
        for l in [Level::Minute, Level::Hour] {
            n += sqlx::query("DELETE FROM usage_rollup WHERE step_s = ?1 AND bucket_ms < ?2")
                .bind(l.step_s())
                .bind(now_ms - keep.of(l))
                .execute(&self.pool)
                .await
                .map_err(q("prune usage rollups"))?
                .rows_affected();
        }
        Ok(n)
    }

    /// A tenant's usage over [from_ms, to_ms) in buckets of `step_s` seconds, from the finest
    /// level that fits the step and still holds `from_ms`. The step is rounded up to a
    /// multiple of the level's own step and `from_ms` down to it; empty buckets are absent.
    pub async fn usage(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
        step_s: i64,
        now_ms: i64,
        keep: &Retention,
    ) -> Result<Usage> {
        let level = keep.pick(from_ms, step_s.max(1), now_ms);
        let ls = level.step_s();
        let step_s = (step_s.max(1) + ls - 1) / ls * ls;
        let from_ms = from_ms.div_euclid(ls * 1000) * ls * 1000;
        let step_ms = step_s * 1000;
        let points = if level == Level::Raw {
            let rows = self.raw_usage(tenant, from_ms, to_ms).await?;
            raw_points(&rows, from_ms, step_ms)
        } else {
            // Built only from the const column lists and a level number: no user text.
            let rows = sqlx::query(sqlx::AssertSqlSafe(usage_sql(level)))
                .bind(from_ms)
                .bind(step_ms)
                .bind(tenant)
                .bind(to_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(q("read usage"))?;
            rows.iter()
                .map(|r| {
                    point(
                        from_ms + r.try_get::<i64, _>("b").unwrap_or(0) * step_ms,
                        r.try_get("samples").unwrap_or(0),
                        f(r, "covered_s").unwrap_or(0.0),
                        |c| (f(r, &format!("{c}_sum")), f(r, &format!("{c}_max"))),
                        |c| f(r, c),
                    )
                })
                .collect()
        };
        Ok(Usage {
            tenant: tenant.to_string(),
            level,
            from_ms,
            to_ms,
            step_s,
            points,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A tenant using `cores` CPUs and holding `mem` bytes, sampled at `ts_ms` after `dt_ms`.
    fn row(
        tenant: &str,
        ts_ms: i64,
        dt_ms: Option<i64>,
        cores: f64,
        mem: i64,
        ooms: i64,
    ) -> UsageRow {
        let mut r = UsageRow {
            tenant: tenant.into(),
            ts_ms,
            interval_ms: dt_ms,
            ..Default::default()
        };
        r.gauges.memory_current_bytes = Some(mem);
        if dt_ms.is_some() {
            r.rates.cpu_cores = Some(cores);
            r.events.new_oom_kills = Some(ooms);
        }
        r
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        (dir, s)
    }

    /// The column lists derived from `UsageRow`'s fields are exactly the tables' columns
    /// (migrations/0002_usage.sql): a field renamed or added without a migration fails here.
    #[tokio::test]
    async fn derived_columns_are_the_tables_columns() {
        let (_d, s) = store().await;
        let columns = |table: &'static str| {
            let pool = s.pool().clone();
            async move {
                let mut c: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{table}')"
                )))
                .fetch_all(&pool)
                .await
                .unwrap();
                c.sort();
                c
            }
        };
        let mut raw: Vec<String> = raw_columns().iter().map(|c| c.to_string()).collect();
        raw.sort();
        assert_eq!(raw, columns("usage_raw").await);
        let mut rollup = rollup_columns().to_vec();
        rollup.sort();
        assert_eq!(rollup, columns("usage_rollup").await);
    }

    #[tokio::test]
    async fn rollups_match_the_raw_rows_they_fold() {
        let (_d, s) = store().await;
        // 3 minutes at 1 s: cores 1.0 in the first minute, 3.0 in the second, 2.0 in the third.
        let mut rows = Vec::new();
        for i in 0..180i64 {
            let cores = [1.0, 3.0, 2.0][(i / 60) as usize];
            let dt = if i == 0 { None } else { Some(1000) };
            rows.push(row(
                "a",
                i * 1000,
                dt,
                cores,
                100 + i,
                i64::from(i % 60 == 30),
            ));
        }
        for tick in rows.chunks(1) {
            s.add_usage(tick).await.unwrap();
            s.roll_up(tick[0].ts_ms).await.unwrap();
        }
        let keep = Retention::default();
        // The last minute is still open: not rolled up yet.
        let open = s.usage("a", 0, 180_000, 60, 180_000, &keep).await.unwrap();
        assert_eq!(open.points.len(), 2);
        s.roll_up(3_600_000).await.unwrap();
        s.roll_up(3_600_000).await.unwrap(); // idempotent
        let now = 180_000;
        let m = s.usage("a", 0, 180_000, 60, now, &keep).await.unwrap();
        assert_eq!(m.level, Level::Minute);
        assert_eq!(m.points.len(), 3);
        assert_eq!(m.points[0].rates.cpu_cores_mean.unwrap(), 1.0);
        assert_eq!(m.points[1].rates.cpu_cores_mean.unwrap(), 3.0);
        assert_eq!(m.points[1].rates.cpu_cores_max.unwrap(), 3.0);
        assert_eq!(m.points[0].samples, 60);
        assert_eq!(m.points[0].covered_s, 59.0, "the first sample has no rate");
        assert_eq!(m.points[2].gauges.memory_current_bytes_max.unwrap(), 279.0);
        assert_eq!(
            m.points[2].gauges.memory_current_bytes_mean.unwrap(),
            (220..280).sum::<i64>() as f64 / 60.0
        );
        assert_eq!(m.points[1].events.new_oom_kills.unwrap(), 1.0);

        let raw = s.usage("a", 0, 180_000, 60 - 1, now, &keep).await.unwrap();
        assert_eq!(raw.level, Level::Raw);
        assert_eq!(raw.step_s, 59);
        let raw60 = s.usage("a", 60_000, 120_000, 30, now, &keep).await.unwrap();
        assert_eq!(raw60.points.len(), 2);
        assert_eq!(raw60.points[0].rates.cpu_cores_mean.unwrap(), 3.0);

        let h = s.usage("a", 0, 3_600_000, 3600, now, &keep).await.unwrap();
        assert_eq!(h.level, Level::Hour);
        assert_eq!(h.points.len(), 1);
        assert!(
            (h.points[0].rates.cpu_cores_mean.unwrap() - (59.0 + 180.0 + 120.0) / 179.0).abs()
                < 1e-9
        );
        assert_eq!(h.points[0].rates.cpu_cores_max.unwrap(), 3.0);
        assert_eq!(h.points[0].events.new_oom_kills.unwrap(), 3.0);
        // The same question asked of the minute level at a 1 h step agrees.
        let mh = s.usage("a", 0, 3_600_000, 3599, now, &keep).await.unwrap();
        assert_eq!(mh.level, Level::Minute);
        assert_eq!(mh.step_s, 3600);
        assert!(
            (mh.points[0].rates.cpu_cores_mean.unwrap()
                - h.points[0].rates.cpu_cores_mean.unwrap())
            .abs()
                < 1e-9
        );
    }

    /// A point is written as the map it used to be (issue 16): `ts_ms`, `samples`,
    /// `covered_s`, then every value (null included) in name order; and it reads back as it was.
    #[test]
    fn a_point_writes_what_the_map_wrote_and_reads_back() {
        #[derive(Serialize)]
        struct Before {
            ts_ms: i64,
            samples: i64,
            covered_s: f64,
            #[serde(flatten)]
            values: std::collections::BTreeMap<&'static str, Option<f64>>,
        }
        let mut p = UsagePoint {
            ts_ms: 1,
            samples: 2,
            covered_s: 1.5,
            rates: UsageRatesPoint::default(),
            gauges: UsageGaugesPoint::default(),
            events: UsageEventsPoint::default(),
        };
        p.rates.cpu_cores_mean = Some(0.5);
        p.gauges.pids_current_max = Some(3.0);
        p.events.new_oom_kills = Some(1.0);
        let before = Before {
            ts_ms: 1,
            samples: 2,
            covered_s: 1.5,
            values: (p.rates.entries().into_iter())
                .chain(p.gauges.entries())
                .chain(p.events.entries())
                .collect(),
        };
        assert_eq!(
            before.values.len(),
            2 * (UsageRates::LEN + UsageGauges::LEN) + UsageEvents::LEN
        );
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, serde_json::to_string(&before).unwrap());
        assert!(
            text.starts_with(
                r#"{"ts_ms":1,"samples":2,"covered_s":1.5,"cpu_cores_max":null,"cpu_cores_mean":0.5,"#
            ),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<UsagePoint>(&text).unwrap(), p);
    }

    #[tokio::test]
    async fn one_tick_of_many_tenants_is_one_batch() {
        let (_d, s) = store().await;
        let rows: Vec<UsageRow> = (0..1234)
            .map(|i| row(&format!("t{i}"), 5_000, Some(1000), 0.5, 1, 0))
            .collect();
        s.add_usage(&rows).await.unwrap();
        // The window closed long ago: compacted into one block per tenant, 256 tenants a call.
        for _ in 0..1234_usize.div_ceil(256) {
            s.roll_up(3_605_000).await.unwrap();
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_raw")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(n, 0);
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_blocks")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(n, 1234);
        assert_eq!(
            s.raw_usage("t7", 0, 10_000).await.unwrap(),
            [rows[7].clone()]
        );
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_rollup")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(n, 2 * 1234);
    }

    #[tokio::test]
    async fn retention_removes_each_level_at_its_age_and_queries_step_up() {
        let (_d, s) = store().await;
        const H: i64 = 3_600_000;
        let keep = Retention {
            raw_ms: 2 * H,
            minute_ms: 10 * H,
            hour_ms: 100 * H,
        };
        for t in [0, 5 * H, 20 * H, 99 * H] {
            s.add_usage(&[row("a", t, Some(1000), 1.0, 1, 0)])
                .await
                .unwrap();
        }
        let now = 101 * H;
        s.roll_up(now).await.unwrap();
        let removed = s.prune_usage(now, &keep).await.unwrap();
        let pool = s.pool().clone();
        let count = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            s.raw_usage("a", 0, now).await.unwrap().len(),
            1,
            "only 99 h is within 2 h of 101 h"
        );
        assert_eq!(
            count("SELECT count(*) FROM usage_rollup WHERE step_s = 60").await,
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM usage_rollup WHERE step_s = 3600").await,
            3,
            "0 h is 101 h old"
        );
        assert_eq!(
            removed,
            3 + 3 + 1,
            "3 blocks of raw rows, 3 minutes, 1 hour"
        );
        // A 1 s step from 50 h ago: raw and minute no longer hold it, hour does.
        let u = s.usage("a", 0, now, 1, now, &keep).await.unwrap();
        assert_eq!(u.level, Level::Hour);
        assert_eq!(
            u.points.iter().map(|p| p.ts_ms).collect::<Vec<_>>(),
            [5 * H, 20 * H, 99 * H]
        );
    }

    /// A tenant's raw rows are found by primary-key lookups per sweep time, never by a scan
    /// of every tenant's rows (which is what made per-tenant queries slow on a busy host), and
    /// its blocks by their key.
    /// SQLite's query plan of `sql`, whose parameters ?1..?4 are bound to a time, a time, a
    /// tenant and a tenant (the values do not change the plan), its lines joined by "; ".
    pub(in crate::store) async fn query_plan(pool: sqlx::SqlitePool, sql: String) -> String {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind(0_i64)
                .bind(600_000_i64)
                .bind("a")
                .bind("m")
                .fetch_all(&pool)
                .await
                .unwrap();
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("; ")
    }

    /// A tenant's slice at a time, and a run's slices in a window, are found by seeks of
    /// the index, one per sweep time, never by a scan of the window.
    #[tokio::test]
    async fn slices_are_found_by_seeks_of_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        let plan = |sql: &str| query_plan(s.pool().clone(), sql.to_string());
        let p = plan(crate::store::slices::TAIL_SQL).await;
        assert!(p.contains("SEARCH t USING INTEGER PRIMARY KEY"), "{p}");
        assert!(
            p.contains("SEARCH s USING COVERING INDEX raw_slices_at (ts_ms=? AND first_tenant<?)")
                || p.contains("SEARCH s USING INDEX raw_slices_at (ts_ms=? AND first_tenant<?)"),
            "{p}"
        );
        let p = plan(crate::store::slices::TAKE_SQL).await;
        assert!(p.contains("SEARCH t USING INTEGER PRIMARY KEY"), "{p}");
        assert!(
            p.contains(
                "SEARCH s USING INDEX raw_slices_at (ts_ms=? AND first_tenant>? AND first_tenant<?)"
            ),
            "{p}"
        );
        // In time then name order as the index gives them: no sort of a unit's slices.
        assert!(!p.contains("TEMP B-TREE"), "{p}");
    }

    #[tokio::test]
    async fn raw_queries_look_rows_up_by_time_and_tenant() {
        let (_d, s) = store().await;
        let plan = |sql: String| query_plan(s.pool().clone(), sql);
        let p = plan(tail_sql().into()).await;
        assert!(p.contains("SEARCH t USING INTEGER PRIMARY KEY"), "{p}");
        assert!(
            p.contains("SEARCH u USING PRIMARY KEY (ts_ms=? AND tenant=?)"),
            "{p}"
        );
        let p = plan(
            "SELECT usage FROM raw_blocks WHERE tenant = ?1 AND start_ms > ?2 AND start_ms < ?3"
                .into(),
        )
        .await;
        assert!(
            p.contains(
                "SEARCH raw_blocks USING PRIMARY KEY (tenant=? AND start_ms>? AND start_ms<?)"
            ),
            "{p}"
        );
        let p = plan(usage_sql(Level::Minute)).await;
        assert!(p.contains("SEARCH usage_rollup USING PRIMARY KEY"), "{p}");
    }
}
