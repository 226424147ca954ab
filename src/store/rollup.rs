//! The rollup levels shared by the usage and SLA tables: raw rows, minutes and hours
//! (`Level`), how long each is kept (`Retention`, and which level answers a query), and
//! finding the closed buckets not folded yet (`unfolded`), the window of a compressed raw
//! block (`BLOCK_MS`) and SQLite's own summation (`SqlSum`), with which raw rows decoded from
//! blocks are summed exactly as the SQL over raw rows sums them. Imports only the store's
//! error helpers; `store::samples` and `store::sla` both import it, and it imports neither.

use super::direct::Stmt;
use super::{Result, StoreError, bind, q};
use crate::domain::usage_block::BlockError;
use serde::Serialize;
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteArguments;

/// The window one `raw_blocks` row holds (migrations/0006_raw_blocks.sql): the raw rows and
/// verdicts of one tenant in [start_ms, start_ms + BLOCK_MS), `start_ms` a multiple of it.
/// Changing it needs a migration that re-cuts the blocks.
pub(super) const BLOCK_MS: i64 = 600_000;

/// SQLite's `sum()` of REAL values (func.c, since 3.43): Kahan-Babuska-Neumaier summation,
/// the result `sum + err` unless `err` overflowed. Summing the same values in the same order
/// gives the bits `sum(x)` gives in SQL, so answers made from decoded blocks equal the ones
/// SQL made from raw rows.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SqlSum {
    sum: f64,
    err: f64,
    any: bool,
}

impl SqlSum {
    pub(super) fn add(&mut self, r: f64) {
        let s = self.sum;
        let t = s + r;
        if s.abs() > r.abs() {
            self.err += (s - t) + r;
        } else {
            self.err += (r - t) + s;
        }
        self.sum = t;
        self.any = true;
    }

    /// `None` for no values, as SQL's sum of no rows is NULL.
    pub(super) fn get(&self) -> Option<f64> {
        self.any.then(|| {
            if self.err.is_finite() {
                self.sum + self.err
            } else {
                self.sum
            }
        })
    }
}

/// Rows of two sources in time order with, for one time, the later source's row only (the
/// raw table's, over a block's: what `INSERT OR REPLACE` would have kept).
pub(super) fn merge_by_time<T>(mut older: Vec<T>, newer: Vec<T>, ts: impl Fn(&T) -> i64) -> Vec<T> {
    if newer.is_empty() {
        return older;
    }
    older.extend(newer);
    // Stable: of equal times, the newer source's row comes last.
    older.sort_by_key(&ts);
    let mut out: Vec<T> = Vec::with_capacity(older.len());
    for r in older {
        if out.last().is_some_and(|l| ts(l) == ts(&r)) {
            out.pop();
        }
        out.push(r);
    }
    out
}

/// Maps an error decoding stored bytes of `name` (a block, a slice or an entry of one) to the
/// store's `Corrupt`, naming what could not be read.
pub(super) fn corrupt(name: &str) -> impl Fn(BlockError) -> StoreError + '_ {
    move |e| StoreError::Corrupt {
        name: name.to_string(),
        why: e.to_string(),
    }
}

/// Which half of a `raw_blocks` row: the usage rows or the SLA verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlockColumn {
    Usage,
    Sla,
}

/// A tenant's rows of one half of its blocks that fall in [from_ms, to_ms), in time order,
/// decoded with `decode`; `ts` gives a row's time. Part of a read transaction (`tx`).
pub(super) async fn read_blocks<T>(
    tx: &mut SqliteConnection,
    column: BlockColumn,
    tenant: &str,
    (from_ms, to_ms): (i64, i64),
    decode: fn(&str, &[u8]) -> std::result::Result<Vec<T>, BlockError>,
    ts: fn(&T) -> i64,
) -> Result<Vec<T>> {
    // A block holds [start_ms, start_ms + BLOCK_MS): one lookup of the primary key.
    let sql = match column {
        BlockColumn::Usage => {
            "SELECT usage FROM raw_blocks WHERE tenant = ?1 AND start_ms > ?2 AND start_ms < ?3
             AND usage IS NOT NULL ORDER BY start_ms"
        }
        BlockColumn::Sla => {
            "SELECT sla FROM raw_blocks WHERE tenant = ?1 AND start_ms > ?2 AND start_ms < ?3
             AND sla IS NOT NULL ORDER BY start_ms"
        }
    };
    let blocks: Vec<Vec<u8>> = sqlx::query_scalar(sql)
        .bind(tenant)
        .bind(from_ms - BLOCK_MS)
        .bind(to_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(q("read raw blocks"))?;
    let mut rows = Vec::new();
    for b in blocks {
        let decoded = decode(tenant, &b).map_err(corrupt(tenant))?;
        rows.extend(
            decoded
                .into_iter()
                .filter(|r| (from_ms..to_ms).contains(&ts(r))),
        );
    }
    Ok(rows)
}

/// The arguments ?1..?4 of a statement over a time range of some tenants (`delete_window_sql`,
/// the compaction's reads): the times [start_ms, end_ms), the tenants [first, last].
pub(super) fn window_args(
    (start_ms, end_ms): (i64, i64),
    (first, last): (&str, &str),
    op: &'static str,
) -> Result<SqliteArguments> {
    let mut a = SqliteArguments::default();
    bind(&mut a, start_ms, op)?;
    bind(&mut a, end_ms, op)?;
    bind(&mut a, first, op)?;
    bind(&mut a, last, op)?;
    Ok(a)
}

/// `window_args` bound to a direct statement (`store::direct`), the compaction's reads.
pub(super) fn bind_window(
    st: &mut Stmt<'_>,
    (start_ms, end_ms): (i64, i64),
    (first, last): (&str, &str),
) -> Result<()> {
    st.bind(1, start_ms)?;
    st.bind(2, end_ms)?;
    st.bind(3, first)?;
    st.bind(4, last)
}

/// The parameters ?1..?3 of a tenant's raw rows in [from_ms, to_ms) (the raw answers' tails).
pub(super) fn bind_tenant_range(
    st: &mut Stmt<'_>,
    tenant: &str,
    (from_ms, to_ms): (i64, i64),
) -> Result<()> {
    st.bind(1, tenant)?;
    st.bind(2, from_ms)?;
    st.bind(3, to_ms)
}

/// `delete_window`'s statement: one seek per sweep time of the window (`sample_ticks`) over
/// the tenants' range, so a slice deletes its own rows without scanning the whole window's
/// (issue 15). ?1..?4 = window start, end, first and last tenant.
pub(super) fn delete_window_sql(table: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE ts_ms IN
         (SELECT ts_ms FROM sample_ticks WHERE ts_ms >= ?1 AND ts_ms < ?2)
         AND tenant >= ?3 AND tenant <= ?4"
    )
}

/// Deletes the rows of one window [start_ms, start_ms + BLOCK_MS) of the tenants in [first,
/// last] from a raw table (moved into blocks). `table` is one of the store's own tables.
pub(super) async fn delete_window(
    tx: &mut SqliteConnection,
    table: &'static str,
    start_ms: i64,
    (first, last): (&str, &str),
) -> Result<()> {
    const OP: &str = "delete compacted raw rows";
    // `table` is a constant of this crate: no user text.
    let args = window_args((start_ms, start_ms + BLOCK_MS), (first, last), OP)?;
    sqlx::query_with(sqlx::AssertSqlSafe(delete_window_sql(table)), args)
        .execute(&mut *tx)
        .await
        .map_err(q(OP))?;
    Ok(())
}

/// A rollup level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Raw,
    Minute,
    Hour,
}

impl Level {
    /// The level's own step in seconds (raw: 1, the finest any query may ask).
    pub fn step_s(self) -> i64 {
        match self {
            Level::Raw => 1,
            Level::Minute => 60,
            Level::Hour => 3600,
        }
    }
}

/// How long each level is kept, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw_ms: i64,
    pub minute_ms: i64,
    pub hour_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        const H: i64 = 3_600_000;
        Retention {
            raw_ms: 48 * H,
            minute_ms: 30 * 24 * H,
            hour_ms: 400 * 24 * H,
        }
    }
}

impl Retention {
    /// How long level `l` is kept.
    pub(super) fn of(&self, l: Level) -> i64 {
        match l {
            Level::Raw => self.raw_ms,
            Level::Minute => self.minute_ms,
            Level::Hour => self.hour_ms,
        }
    }

    /// The finest level whose step fits `step_s` and that still holds data from `from_ms`.
    pub fn pick(&self, from_ms: i64, step_s: i64, now_ms: i64) -> Level {
        for l in [Level::Raw, Level::Minute] {
            let next = if l == Level::Raw { 60 } else { 3600 };
            if step_s < next && from_ms >= now_ms - self.of(l) {
                return l;
            }
        }
        Level::Hour
    }
}

/// The closed buckets of `step_s` not rolled up yet, as [start, closed): after the last bucket
/// `done_sql` (?1 = step_s) finds, or from the bucket of the first row `first_sql` finds.
/// `None` when there is nothing to fold. A rollup marks every bucket before it as done.
pub(super) async fn unfolded(
    tx: &mut SqliteConnection,
    step_s: i64,
    done_sql: &'static str,
    first_sql: &'static str,
    now_ms: i64,
) -> Result<Option<(i64, i64)>> {
    let ms = step_s * 1000;
    let done: Option<i64> = sqlx::query_scalar(done_sql)
        .bind(step_s)
        .fetch_one(&mut *tx)
        .await
        .map_err(q("find the last rollup"))?;
    let start = match done {
        Some(b) => b + ms,
        None => match sqlx::query_scalar::<_, Option<i64>>(first_sql)
            .fetch_one(&mut *tx)
            .await
            .map_err(q("find the first row to roll up"))?
        {
            Some(t) => t.div_euclid(ms) * ms,
            None => return Ok(None),
        },
    };
    let closed = now_ms.div_euclid(ms) * ms;
    Ok((closed > start).then_some((start, closed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_choice() {
        let k = Retention::default();
        let now = 1_000 * 3_600_000;
        assert_eq!(k.pick(now - 3_600_000, 10, now), Level::Raw);
        assert_eq!(k.pick(now - 3_600_000, 60, now), Level::Minute);
        assert_eq!(k.pick(now - 3_600_000, 7200, now), Level::Hour);
        assert_eq!(k.pick(now - 72 * 3_600_000, 10, now), Level::Minute);
        assert_eq!(k.pick(now - 40 * 24 * 3_600_000, 10, now), Level::Hour);
    }
}
