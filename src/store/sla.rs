//! SQL of the SLA accounting: per-interval verdicts, minute and hour rollups, retention, and
//! the series and totals an SLA report is made of.

use super::samples::{Level, Retention};
use super::{Result, Store, q};
use serde::Serialize;
use sqlx::{QueryBuilder, Sqlite};

/// One tenant's verdict for one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlaRow<'a> {
    pub tenant: &'a str,
    pub ts_ms: i64,
    pub interval_ms: i64,
    pub guarantee_ratio: Option<f64>,
    pub delivered_ratio: f64,
    pub contended: bool,
    pub violating: bool,
}

/// (bucket, covered s, contended s, violation s, delivered x s, delivered x contended s, guarantee)
type BucketRow = (i64, f64, f64, f64, f64, f64, Option<f64>);

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

/// Verdicts per statement: 10 parameters each, within SQLite's 32,766.
const SLA_CHUNK: usize = 1000;

impl Store {
    /// Records verdicts and folds them into the minute and hour rollups, in one transaction.
    pub async fn add_sla(&self, rows: &[SlaRow<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // Multi-row statements: one round trip to SQLite per chunk and level instead of three
        // per tenant. The statement text only depends on the chunk length, so it stays in
        // the connection's statement cache from tick to tick.
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        for chunk in rows.chunks(SLA_CHUNK) {
            let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR REPLACE INTO sla_raw (tenant, ts_ms, interval_ms, guarantee_ratio, delivered_ratio, contended, violating) ",
            );
            b.push_values(chunk, |mut v, r| {
                v.push_bind(r.tenant)
                    .push_bind(r.ts_ms)
                    .push_bind(r.interval_ms)
                    .push_bind(r.guarantee_ratio)
                    .push_bind(r.delivered_ratio)
                    .push_bind(r.contended)
                    .push_bind(r.violating);
            });
            b.build()
                .execute(&mut *tx)
                .await
                .map_err(q("record sla verdicts"))?;
            for step in [60_i64, 3600] {
                let ms = step * 1000;
                let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO sla_rollup (step_s, tenant, bucket_ms, covered_s, contended_s, violation_s,
                         delivered_sum, delivered_contended_sum, delivered_contended_min, guarantee_ratio) ",
                );
                b.push_values(chunk, |mut b, r| {
                    let s = r.interval_ms as f64 / 1000.0;
                    let c = if r.contended { s } else { 0.0 };
                    let v = if r.violating { s } else { 0.0 };
                    let cmin = r.contended.then_some(r.delivered_ratio);
                    b.push_bind(step)
                        .push_bind(r.tenant)
                        .push_bind(r.ts_ms.div_euclid(ms) * ms)
                        .push_bind(s)
                        .push_bind(c)
                        .push_bind(v)
                        .push_bind(r.delivered_ratio * s)
                        .push_bind(r.delivered_ratio * c)
                        .push_bind(cmin)
                        .push_bind(r.guarantee_ratio);
                });
                b.push(
                    " ON CONFLICT (step_s, tenant, bucket_ms) DO UPDATE SET
                         covered_s = covered_s + excluded.covered_s,
                         contended_s = contended_s + excluded.contended_s,
                         violation_s = violation_s + excluded.violation_s,
                         delivered_sum = delivered_sum + excluded.delivered_sum,
                         delivered_contended_sum = delivered_contended_sum + excluded.delivered_contended_sum,
                         delivered_contended_min = CASE
                             WHEN delivered_contended_min IS NULL THEN excluded.delivered_contended_min
                             WHEN excluded.delivered_contended_min IS NULL THEN delivered_contended_min
                             ELSE min(delivered_contended_min, excluded.delivered_contended_min) END,
                         guarantee_ratio = excluded.guarantee_ratio",
                );
                b.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(q("roll up sla verdicts"))?;
            }
        }
        tx.commit().await.map_err(q("commit"))
    }

    /// Deletes SLA rows older than each level keeps.
    pub async fn prune_sla(&self, now_ms: i64, keep: &Retention) -> Result<u64> {
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
        let (sql, shares_sql) = match level {
            Level::Raw => (
                "SELECT (ts_ms / ?4) * ?4 AS b, sum(interval_ms) / 1000.0, sum(contended * interval_ms) / 1000.0,
                        sum(violating * interval_ms) / 1000.0, sum(delivered_ratio * interval_ms) / 1000.0,
                        sum(delivered_ratio * contended * interval_ms) / 1000.0, max(guarantee_ratio)
                 FROM sla_raw WHERE tenant = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 GROUP BY b ORDER BY b",
                "SELECT delivered_ratio FROM sla_raw WHERE tenant = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND contended = 1",
            ),
            _ => (
                "SELECT (bucket_ms / ?4) * ?4 AS b, sum(covered_s), sum(contended_s), sum(violation_s),
                        sum(delivered_sum), sum(delivered_contended_sum), max(guarantee_ratio)
                 FROM sla_rollup WHERE step_s = ?5 AND tenant = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3 GROUP BY b ORDER BY b",
                "SELECT delivered_contended_sum / contended_s FROM sla_rollup
                 WHERE step_s = ?4 AND tenant = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3 AND contended_s > 0",
            ),
        };
        let rows: Vec<BucketRow> = sqlx::query_as(sql)
            .bind(tenant)
            .bind(from_ms)
            .bind(to_ms)
            .bind(ms)
            .bind(level.step_s())
            .fetch_all(&self.pool)
            .await
            .map_err(q("read sla series"))?;
        let buckets = rows
            .into_iter()
            .map(|(b, cov, con, vio, dsum, dcsum, g)| SlaBucket {
                ts_ms: b,
                covered_s: cov,
                contended_s: con,
                violation_s: vio,
                delivered_mean_ratio: if cov > 0.0 { dsum / cov } else { 0.0 },
                delivered_contended_mean_ratio: (con > 0.0).then(|| dcsum / con),
                guarantee_ratio: g,
            })
            .collect();
        let shares_q = sqlx::query_scalar(shares_sql)
            .bind(tenant)
            .bind(from_ms)
            .bind(to_ms);
        let shares_q = if level == Level::Raw {
            shares_q
        } else {
            shares_q.bind(level.step_s())
        };
        let contended_shares: Vec<f64> = shares_q
            .fetch_all(&self.pool)
            .await
            .map_err(q("read contended shares"))?;
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
    /// chunk, two ticks in the same minute, folded into the minute and hour rollups.
    #[tokio::test]
    async fn verdicts_of_many_tenants_fold_into_both_rollups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let names: Vec<String> = (0..SLA_CHUNK + 7).map(|i| format!("t{i:05}")).collect();
        for (ts_ms, delivered) in [(3_660_000, 0.5), (3_661_000, 0.25)] {
            let rows: Vec<SlaRow<'_>> = names
                .iter()
                .enumerate()
                .map(|(i, n)| SlaRow {
                    tenant: n,
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
        let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM sla_raw")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(raw, 2 * names.len() as i64);
        type R = (i64, f64, f64, f64, f64, Option<f64>);
        for step in [60, 3600] {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sla_rollup WHERE step_s = ?1")
                .bind(step)
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(n, names.len() as i64, "step {step}");
            let get = |tenant: &'static str| {
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
            assert_eq!(
                get("t01006").await,
                (bucket, 2.0, 2.0, 0.0, 0.75, Some(0.25))
            );
        }
        store.close().await;
    }
}
