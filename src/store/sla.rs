//! SQL of the SLA accounting: per-interval verdicts, minute and hour rollups, retention, and
//! the series and totals an SLA report is made of. This module owns the SLA tables only: it
//! imports `store::rollup` (levels, retention), never `store::samples` (the usage tables) nor
//! `store::sweep` (the one transaction writing both).

use super::direct::{Stmt, query_rows};
use super::rollup::{
    BlockColumn, Level, Retention, SqlSum, bind_tenant_range, bind_window, merge_by_time,
    read_blocks, unfolded,
};
use super::slices::tenant_tail;
use super::{Result, Store, bind, q, statement_chunks, values_sql};
use crate::domain::sla_engine::Verdict;
use crate::domain::usage_block::decode_verdicts;
use serde::Serialize;
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteArguments;

/// One tenant's minute of verdicts rolled up as they arrive (see `MinuteRollup`); agrees with
/// the SQL fold in `fold_sla`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaMinute {
    pub tenant: String,
    pub bucket_ms: i64,
    covered_ms: i64,
    contended_ms: i64,
    violation_ms: i64,
    /// delivered ratio x ms, over all time and over contended time
    delivered_sum: f64,
    delivered_contended_sum: f64,
    delivered_contended_min: Option<f64>,
    guarantee_ratio: Option<f64>,
}

impl SlaMinute {
    pub fn new(tenant: &str, bucket_ms: i64) -> Self {
        SlaMinute {
            tenant: tenant.to_string(),
            bucket_ms,
            covered_ms: 0,
            contended_ms: 0,
            violation_ms: 0,
            delivered_sum: 0.0,
            delivered_contended_sum: 0.0,
            delivered_contended_min: None,
            guarantee_ratio: None,
        }
    }

    pub fn add(&mut self, r: &Verdict) {
        let ms = r.interval_ms;
        self.covered_ms += ms;
        self.delivered_sum += r.delivered_ratio * ms as f64;
        if r.contended {
            self.contended_ms += ms;
            self.delivered_contended_sum += r.delivered_ratio * ms as f64;
            self.delivered_contended_min = Some(
                self.delivered_contended_min
                    .map_or(r.delivered_ratio, |m| m.min(r.delivered_ratio)),
            );
        }
        if r.violating {
            self.violation_ms += ms;
        }
        if let Some(g) = r.guarantee_ratio {
            self.guarantee_ratio = Some(self.guarantee_ratio.map_or(g, |m| m.max(g)));
        }
    }
}

/// Minute rollups per statement: 10 parameters each, within SQLite's 32,766; about 0.7 kB of
/// compiled statement per row, kept for every length `statement_chunks` makes.
const SLA_CHUNK: usize = 256;

/// Writes minutes rolled up in memory; a minute already rolled up is left as it is.
pub(super) async fn insert_sla_minutes<R: std::borrow::Borrow<SlaMinute>>(
    tx: &mut SqliteConnection,
    rows: &[R],
) -> Result<()> {
    const OP: &str = "write sla minute rollups";
    const HEAD: &str =
        "INSERT INTO sla_rollup (step_s, tenant, bucket_ms, covered_s, contended_s, violation_s,
         delivered_sum, delivered_contended_sum, delivered_contended_min, guarantee_ratio)";
    for chunk in statement_chunks(rows, SLA_CHUNK) {
        let mut a = SqliteArguments::default();
        for m in chunk {
            let m = m.borrow();
            bind(&mut a, 60_i64, OP)?;
            bind(&mut a, m.tenant.as_str(), OP)?;
            bind(&mut a, m.bucket_ms, OP)?;
            bind(&mut a, m.covered_ms as f64 / 1000.0, OP)?;
            bind(&mut a, m.contended_ms as f64 / 1000.0, OP)?;
            bind(&mut a, m.violation_ms as f64 / 1000.0, OP)?;
            bind(&mut a, m.delivered_sum / 1000.0, OP)?;
            bind(&mut a, m.delivered_contended_sum / 1000.0, OP)?;
            bind(&mut a, m.delivered_contended_min, OP)?;
            bind(&mut a, m.guarantee_ratio, OP)?;
        }
        let sql = values_sql(HEAD, 10, chunk.len()) + " ON CONFLICT DO NOTHING";
        sqlx::query_with(sqlx::AssertSqlSafe(sql), a)
            .execute(&mut *tx)
            .await
            .map_err(q(OP))?;
    }
    Ok(())
}

/// (bucket, covered s, contended s, violation s, delivered x s, delivered x contended s, guarantee)
pub(super) type BucketRow = (i64, f64, f64, f64, f64, f64, Option<f64>);

/// One bucket of an SLA series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlaBucket {
    pub ts_ms: i64,
    pub covered_s: f64,
    pub contended_s: f64,
    pub violation_s: f64,
    pub delivered_mean_ratio: f64,
    /// Mean delivered share while contended; `None` when not contended in the bucket.
    pub delivered_contended_mean_ratio: Option<f64>,
    pub guarantee_ratio: Option<f64>,
}

/// A bucket of a series from its sums.
pub(super) fn sla_bucket((b, cov, con, vio, dsum, dcsum, g): BucketRow) -> SlaBucket {
    SlaBucket {
        ts_ms: b,
        covered_s: cov,
        contended_s: con,
        violation_s: vio,
        delivered_mean_ratio: if cov > 0.0 { dsum / cov } else { 0.0 },
        delivered_contended_mean_ratio: (con > 0.0).then(|| dcsum / con),
        guarantee_ratio: g,
    }
}

/// What a report needs of one tenant's SLA over a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlaSeries {
    pub level: Level,
    pub step_s: i64,
    pub buckets: Vec<SlaBucket>,
    /// Delivered shares while contended, one per interval (raw level) or per minute (rollups),
    /// for percentiles.
    pub contended_shares: Vec<f64>,
}

/// The current row of a statement selecting a verdict's columns in `sla_raw`'s order (tenant,
/// ts, interval, guarantee, delivered, contended, violating).
pub(super) fn direct_verdict(st: &Stmt<'_>) -> Verdict {
    Verdict {
        tenant: st.text(0),
        ts_ms: st.int(1).unwrap_or(0),
        interval_ms: st.int(2).unwrap_or(0),
        guarantee_ratio: st.real(3),
        delivered_ratio: st.real(4).unwrap_or(0.0),
        contended: st.int(5).is_some_and(|v| v != 0),
        violating: st.int(6).is_some_and(|v| v != 0),
    }
}

/// `raw_verdict_window`'s query: ?1..?4 = window start, end, first and last tenant.
pub(super) const VERDICT_WINDOW_SQL: &str =
    "SELECT s.tenant, s.ts_ms, s.interval_ms, s.guarantee_ratio, s.delivered_ratio,
     s.contended, s.violating
     FROM sample_ticks t CROSS JOIN sla_raw s ON s.ts_ms = t.ts_ms
     WHERE t.ts_ms >= ?1 AND t.ts_ms < ?2 AND s.tenant >= ?3 AND s.tenant <= ?4
     ORDER BY t.ts_ms, s.tenant";

/// The verdicts in [start_ms, end_ms) of the tenants in [first, last], by time then tenant:
/// what a compaction moves into blocks, a slice of its window at a time. Found with one seek per
/// sweep time (`sample_ticks`) over the tenants' range, so a slice of the tenants reads its
/// own rows, not the whole window's (issue 15: at 10,000 tenants a window is compacted in 625
/// transactions of `sweep::TENANTS_PER_TX`).
pub(super) async fn raw_verdict_window(
    tx: &mut SqliteConnection,
    range: (i64, i64),
    tenants: (&str, &str),
) -> Result<Vec<Verdict>> {
    query_rows(
        tx,
        VERDICT_WINDOW_SQL,
        "read a window of sla verdicts",
        |st| bind_window(st, range, tenants),
        direct_verdict,
    )
    .await
}

/// Buckets of `ms` (aligned to multiples of it) of verdicts in time order, summed as the SQL
/// over sla_raw summed them (float sums with `SqlSum`), and the delivered shares while
/// contended, one per verdict.
pub(super) fn raw_buckets(rows: &[Verdict], ms: i64) -> (Vec<BucketRow>, Vec<f64>) {
    struct Acc {
        b: i64,
        covered: i64,
        contended: i64,
        violation: i64,
        delivered: SqlSum,
        delivered_contended: SqlSum,
        guarantee: Option<f64>,
    }
    let done = |a: Acc| -> BucketRow {
        (
            a.b,
            a.covered as f64 / 1000.0,
            a.contended as f64 / 1000.0,
            a.violation as f64 / 1000.0,
            a.delivered.get().unwrap_or(0.0) / 1000.0,
            a.delivered_contended.get().unwrap_or(0.0) / 1000.0,
            a.guarantee,
        )
    };
    let (mut out, mut shares, mut cur) = (Vec::new(), Vec::new(), None::<Acc>);
    for v in rows {
        let b = (v.ts_ms / ms) * ms;
        if cur.as_ref().is_some_and(|a| a.b != b) {
            out.extend(cur.take().map(done));
        }
        let a = cur.get_or_insert_with(|| Acc {
            b,
            covered: 0,
            contended: 0,
            violation: 0,
            delivered: SqlSum::default(),
            delivered_contended: SqlSum::default(),
            guarantee: None,
        });
        let (i, c) = (v.interval_ms, i64::from(v.contended));
        a.covered += i;
        a.contended += c * i;
        a.violation += i64::from(v.violating) * i;
        a.delivered.add(v.delivered_ratio * i as f64);
        a.delivered_contended
            .add(v.delivered_ratio * c as f64 * i as f64);
        if let Some(g) = v.guarantee_ratio {
            if a.guarantee.is_none_or(|m| g > m) {
                a.guarantee = Some(g);
            }
        }
        if v.contended {
            shares.push(v.delivered_ratio);
        }
    }
    out.extend(cur.map(done));
    (out, shares)
}

/// Folds the closed hours of minute rollups into hour rollups; like the usage rollups, an
/// hour appears once `now_ms` is past its end. (Minutes: `sweep::fold_minutes`.)
pub(super) async fn fold_sla(tx: &mut SqliteConnection, now_ms: i64) -> Result<()> {
    const HOUR: &str = "INSERT INTO sla_rollup (step_s, tenant, bucket_ms, covered_s, contended_s, violation_s,
             delivered_sum, delivered_contended_sum, delivered_contended_min, guarantee_ratio)
         SELECT 3600, tenant, (bucket_ms / 3600000) * 3600000 AS b, sum(covered_s), sum(contended_s),
             sum(violation_s), sum(delivered_sum), sum(delivered_contended_sum),
             min(delivered_contended_min), max(guarantee_ratio)
         FROM sla_rollup WHERE step_s = 60 AND bucket_ms >= ?1 AND bucket_ms < ?2
         GROUP BY tenant, b ON CONFLICT DO NOTHING";
    const FIRST: &str = "SELECT min(bucket_ms) FROM sla_rollup WHERE step_s = 60";
    let done = "SELECT max(bucket_ms) FROM sla_rollup WHERE step_s = ?1";
    let Some((start, closed)) = unfolded(tx, 3600, done, FIRST, now_ms).await? else {
        return Ok(());
    };
    sqlx::query(HOUR)
        .bind(start)
        .bind(closed)
        .execute(&mut *tx)
        .await
        .map_err(q("roll up sla verdicts"))?;
    Ok(())
}

impl Store {
    /// Records verdicts in one transaction; see `Store::add_sweep`. The rollups are folded
    /// from them by `Store::roll_up`.
    pub async fn add_sla(&self, rows: &[Verdict]) -> Result<()> {
        self.add_sweep(
            std::iter::empty::<crate::domain::usage_row::UsageRow>(),
            rows,
            &[],
        )
        .await
    }

    /// A tenant's verdicts in [from_ms, to_ms) in time order: the compressed blocks' and the
    /// raw table's (the windows not compacted yet), read in one transaction.
    pub async fn raw_verdicts(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Verdict>> {
        const OP: &str = "read sla verdicts";
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        let rows = read_blocks(
            &mut tx,
            BlockColumn::Sla,
            tenant,
            (from_ms, to_ms),
            decode_verdicts,
            |v| v.ts_ms,
        )
        .await?;
        // Raw rows are keyed (ts_ms, tenant): one lookup per sweep time in the range.
        let tail = query_rows(
            &mut tx,
            "SELECT r.tenant, r.ts_ms, interval_ms, guarantee_ratio, delivered_ratio, contended, violating
             FROM sample_ticks t CROSS JOIN sla_raw r ON r.ts_ms = t.ts_ms
             WHERE r.tenant = ?1 AND t.ts_ms >= ?2 AND t.ts_ms < ?3 ORDER BY t.ts_ms",
            OP,
            |st| bind_tenant_range(st, tenant, (from_ms, to_ms)),
            direct_verdict,
        )
        .await?;
        let slices = tenant_tail::<Verdict>(&mut tx, tenant, (from_ms, to_ms)).await?;
        tx.commit().await.map_err(q("commit"))?;
        let rows = merge_by_time(rows, tail, |r| r.ts_ms);
        Ok(merge_by_time(rows, slices, |r| r.ts_ms))
    }

    /// Buckets of `ms` and the contended shares of a rollup level.
    async fn rollup_buckets(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
        ms: i64,
        level: Level,
    ) -> Result<(Vec<BucketRow>, Vec<f64>)> {
        let rows: Vec<BucketRow> = sqlx::query_as(
            "SELECT (bucket_ms / ?4) * ?4 AS b, sum(covered_s), sum(contended_s), sum(violation_s),
                    sum(delivered_sum), sum(delivered_contended_sum), max(guarantee_ratio)
             FROM sla_rollup WHERE step_s = ?5 AND tenant = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3
             GROUP BY b ORDER BY b",
        )
        .bind(tenant)
        .bind(from_ms)
        .bind(to_ms)
        .bind(ms)
        .bind(level.step_s())
        .fetch_all(&self.pool)
        .await
        .map_err(q("read sla series"))?;
        let shares: Vec<f64> = sqlx::query_scalar(
            "SELECT delivered_contended_sum / contended_s FROM sla_rollup
             WHERE step_s = ?4 AND tenant = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3 AND contended_s > 0",
        )
        .bind(tenant)
        .bind(from_ms)
        .bind(to_ms)
        .bind(level.step_s())
        .fetch_all(&self.pool)
        .await
        .map_err(q("read contended shares"))?;
        Ok((rows, shares))
    }

    /// Deletes SLA rows older than each level keeps.
    pub async fn prune_sla(&self, now_ms: i64, keep: &Retention) -> Result<u64> {
        let r = self.write_prune_sla(now_ms, keep).await;
        self.tracked(r, false)
    }

    async fn write_prune_sla(&self, now_ms: i64, keep: &Retention) -> Result<u64> {
        let mut n = sqlx::query("DELETE FROM sla_raw WHERE ts_ms < ?1")
            .bind(now_ms - keep.raw_ms)
            .execute(&self.pool)
            .await
            .map_err(q("prune sla verdicts"))?
            .rows_affected();
        for (step, age) in [(60, keep.minute_ms), (3600, keep.hour_ms)] {
            n += sqlx::query("DELETE FROM sla_rollup WHERE step_s = ?1 AND bucket_ms < ?2")
                .bind(step)
                .bind(now_ms - age)
                .execute(&self.pool)
                .await
                .map_err(q("prune sla rollups"))?
                .rows_affected();
        }
        Ok(n)
    }

    /// A tenant's SLA over [from_ms, to_ms) in about `points` buckets, from the finest level
    /// that still holds `from_ms`.
    pub async fn sla_series(
        &self,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
        points: i64,
        now_ms: i64,
        keep: &Retention,
    ) -> Result<SlaSeries> {
        let want_step = ((to_ms - from_ms) / 1000 / points.max(1)).max(1);
        let level = keep.pick(from_ms, want_step, now_ms);
        let step_s = ((want_step + level.step_s() - 1) / level.step_s()) * level.step_s();
        let ms = step_s * 1000;
        let (rows, contended_shares) = if level == Level::Raw {
            let verdicts = self.raw_verdicts(tenant, from_ms, to_ms).await?;
            raw_buckets(&verdicts, ms)
        } else {
            self.rollup_buckets(tenant, from_ms, to_ms, ms, level)
                .await?
        };
        let buckets = rows.into_iter().map(sla_bucket).collect();
        Ok(SlaSeries {
            level,
            step_s,
            buckets,
            contended_shares,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verdicts are written in multi-row statements of `SLA_CHUNK`: more tenants than one
    /// chunk, two ticks in the same minute, folded into the minute and hour rollups once
    /// the hour is closed (and not before).
    #[tokio::test]
    async fn verdicts_of_many_tenants_fold_into_both_rollups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let names: Vec<String> = (0..SLA_CHUNK + 7).map(|i| format!("t{i:05}")).collect();
        for (ts_ms, delivered) in [(3_660_000, 0.5), (3_661_000, 0.25)] {
            let rows: Vec<Verdict> = names
                .iter()
                .enumerate()
                .map(|(i, n)| Verdict {
                    tenant: n.clone(),
                    ts_ms,
                    interval_ms: 1000,
                    guarantee_ratio: Some(0.3),
                    delivered_ratio: delivered,
                    contended: i % 2 == 0,
                    violating: i % 4 == 0,
                })
                .collect();
            store.add_sla(&rows).await.unwrap();
        }
        // Each sweep's verdicts as slices of `SLICE_TENANTS`, every verdict found again.
        let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_slices")
            .fetch_one(store.pool())
            .await
            .unwrap();
        let per_sweep = names
            .len()
            .div_ceil(crate::domain::raw_slice::SLICE_TENANTS);
        assert_eq!(raw, 2 * per_sweep as i64);
        for n in [&names[0], &names[names.len() - 1]] {
            let got = store.raw_verdicts(n, 0, i64::MAX).await.unwrap();
            assert_eq!(got.len(), 2, "{n}");
            assert_eq!(got[1].delivered_ratio, 0.25);
        }
        let rollups = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sla_rollup")
                .fetch_one(store.pool())
                .await
                .unwrap()
        };
        store.roll_up(3_661_500).await.unwrap();
        assert_eq!(rollups().await, 0, "the minute is still open");
        store.roll_up(3_720_000).await.unwrap();
        assert_eq!(rollups().await, names.len() as i64, "the minute closed");
        store.roll_up(7_200_000).await.unwrap();
        store.roll_up(7_200_000).await.unwrap();
        type R = (i64, f64, f64, f64, f64, Option<f64>);
        for step in [60, 3600] {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sla_rollup WHERE step_s = ?1")
                .bind(step)
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(n, names.len() as i64, "step {step}");
            let get = |tenant: &str| {
                let tenant = tenant.to_string();
                let pool = store.pool().clone();
                async move {
                    sqlx::query_as::<_, R>(
                        "SELECT bucket_ms, covered_s, contended_s, violation_s, delivered_sum,
                                delivered_contended_min
                         FROM sla_rollup WHERE step_s = ?1 AND tenant = ?2",
                    )
                    .bind(step)
                    .bind(tenant)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                }
            };
            let bucket = 3_660_000 / (step * 1000) * step * 1000;
            assert_eq!(
                get("t00000").await,
                (bucket, 2.0, 2.0, 2.0, 0.75, Some(0.25))
            );
            assert_eq!(get("t00001").await, (bucket, 2.0, 0.0, 0.0, 0.75, None));
            // The last, alone in the last statement (`statement_chunks`).
            assert_eq!(
                get(names.last().unwrap()).await,
                (bucket, 2.0, 2.0, 0.0, 0.75, Some(0.25))
            );
        }
        store.close().await;
    }
}
