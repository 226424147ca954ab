//! The writes that span the usage and SLA tables, each ONE transaction: a sweep's samples,
//! verdicts and events (`add_sweep`), the minutes rolled up in memory (`add_minute_rollups`)
//! and the fold of closed buckets into rollups (`roll_up`). It composes `store::samples` and
//! `store::sla`, which import neither it nor each other.

use super::samples::{MinuteRollup, fold_usage, insert_minute_rollups, insert_usage};
use super::sla::{SlaMinute, fold_sla, insert_sla, insert_sla_minutes};
use super::{NewEvent, Result, Store, insert_event, q};
use crate::domain::sla_engine::Verdict;
use crate::domain::usage_row::UsageRow;

impl Store {
    /// Writes one sweep in ONE transaction: the usage rows, the SLA verdicts, the events, and
    /// the sweep's time in `sample_ticks` (how a tenant's raw rows are found again). Raw rows
    /// are keyed (ts_ms, tenant), so a sweep appends at the end of each table instead of
    /// writing one page per tenant. Rollups are made from closed buckets by `roll_up`.
    pub async fn add_sweep(
        &self,
        usage: &[UsageRow],
        sla: &[Verdict],
        events: &[NewEvent],
    ) -> Result<()> {
        if usage.is_empty() && sla.is_empty() && events.is_empty() {
            return Ok(());
        }
        // Never empty here: a success committed rows.
        let r = self.write_sweep(usage, sla, events).await;
        self.tracked(r, true)
    }

    async fn write_sweep(
        &self,
        usage: &[UsageRow],
        sla: &[Verdict],
        events: &[NewEvent],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        let mut ticks: Vec<i64> = usage
            .iter()
            .map(|r| r.ts_ms)
            .chain(sla.iter().map(|r| r.ts_ms))
            .collect();
        ticks.sort_unstable();
        ticks.dedup();
        for ts in ticks {
            sqlx::query("INSERT OR IGNORE INTO sample_ticks (ts_ms) VALUES (?1)")
                .bind(ts)
                .execute(&mut *tx)
                .await
                .map_err(q("record the sample time"))?;
        }
        insert_usage(&mut tx, usage).await?;
        insert_sla(&mut tx, sla).await?;
        for e in events {
            insert_event(&mut tx, e).await?;
        }
        tx.commit().await.map_err(q("commit"))
    }

    /// Writes closed minutes rolled up in memory (`MinuteRollup`, `SlaMinute`), one
    /// transaction; a minute already rolled up is left as it is.
    pub async fn add_minute_rollups(
        &self,
        usage: &[MinuteRollup],
        sla: &[SlaMinute],
    ) -> Result<()> {
        let r = self.write_minute_rollups(usage, sla).await;
        self.tracked(r, false)
    }

    async fn write_minute_rollups(&self, usage: &[MinuteRollup], sla: &[SlaMinute]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        insert_minute_rollups(&mut tx, usage).await?;
        insert_sla_minutes(&mut tx, sla).await?;
        tx.commit().await.map_err(q("commit"))
    }

    /// Folds every closed bucket not yet rolled up, of usage and of SLA verdicts: raw rows
    /// into minutes, then minutes into hours. A bucket is closed once `now_ms` is past its
    /// end; the current minute and hour appear in their level when they close. Idempotent;
    /// call it as often as convenient.
    pub async fn roll_up(&self, now_ms: i64) -> Result<()> {
        let r = self.write_roll_up(now_ms).await;
        self.tracked(r, false)
    }

    async fn write_roll_up(&self, now_ms: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        fold_usage(&mut tx, now_ms).await?;
        fold_sla(&mut tx, now_ms).await?;
        tx.commit().await.map_err(q("commit"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::usage_row::{UsageCounters, UsageEvents, UsageGauges, UsageRates};
    use crate::store::samples::f;
    use sqlx::{Column, Row};
    use std::collections::HashMap;

    /// The minutes the sampler rolls up in memory are the rows the SQL fold makes of the same
    /// raw rows, column for column: NULL rates and gauges, intervals of different lengths,
    /// first samples without rates, events, contended and violating verdicts.
    #[tokio::test]
    async fn minutes_rolled_up_in_memory_equal_the_sql_fold() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let folded = Store::open(&d1.path().join("t.db")).await.unwrap();
        let in_memory = Store::open(&d2.path().join("t.db")).await.unwrap();
        let tenants = ["a", "b", "c"];
        let mut usage: HashMap<String, MinuteRollup> = HashMap::new();
        let mut sla: HashMap<String, SlaMinute> = HashMap::new();
        for k in 0..59_i64 {
            let ts = 120_000 + k * 1000 + (k % 3) * 17;
            let mut rows = Vec::new();
            let mut verdicts = Vec::new();
            for (i, t) in tenants.iter().enumerate() {
                let dt = (k > 0 || i == 0).then_some(1000 + (k % 5) * 13);
                rows.push(UsageRow {
                    tenant: t.to_string(),
                    ts_ms: ts,
                    interval_ms: dt,
                    counters: UsageCounters {
                        cpu_usage_usec: Some(k * 1000),
                        ..Default::default()
                    },
                    gauges: UsageGauges {
                        memory_current_bytes: Some(1000 + k * 37 - i as i64),
                        memory_peak_bytes: (i != 1).then_some(5_000 - k),
                        ..Default::default()
                    },
                    rates: UsageRates {
                        cpu_cores: dt.map(|_| 0.1 * (k as f64) + i as f64 / 7.0),
                        io_write_bytes_per_s: (k % 2 == 0 && dt.is_some())
                            .then_some(k as f64 / 3.0),
                        ..Default::default()
                    },
                    events: UsageEvents {
                        new_oom_kills: dt.map(|_| k % 4),
                        ..Default::default()
                    },
                });
                verdicts.push(Verdict {
                    tenant: t.to_string(),
                    ts_ms: ts,
                    interval_ms: dt.unwrap_or(1000),
                    guarantee_ratio: (i != 2).then_some(0.3 + k as f64 / 1000.0),
                    delivered_ratio: ((k * 7 + i as i64) % 10) as f64 / 10.0,
                    contended: (k + i as i64) % 3 == 0,
                    violating: (k + i as i64) % 6 == 0,
                });
            }
            for r in &rows {
                usage
                    .entry(r.tenant.clone())
                    .or_insert_with(|| MinuteRollup::new(&r.tenant, 120_000))
                    .add(r);
            }
            for v in &verdicts {
                sla.entry(v.tenant.to_string())
                    .or_insert_with(|| SlaMinute::new(&v.tenant, 120_000))
                    .add(v);
            }
            folded.add_sweep(&rows, &verdicts, &[]).await.unwrap();
        }
        folded.roll_up(180_000).await.unwrap();
        let usage: Vec<_> = usage.into_values().collect();
        let sla: Vec<_> = sla.into_values().collect();
        in_memory.add_minute_rollups(&usage, &sla).await.unwrap();
        for table in ["usage_rollup", "sla_rollup"] {
            let dump = |s: &Store| {
                let pool = s.pool().clone();
                async move {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT * FROM {table} ORDER BY step_s, tenant, bucket_ms"
                    )))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                    rows.iter()
                        .map(|r| {
                            (0..r.len())
                                .map(|c| f(r, r.column(c).name()))
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                }
            };
            let (a, b) = (dump(&folded).await, dump(&in_memory).await);
            assert_eq!(a.len(), 3, "{table}: one minute of three tenants");
            assert_eq!(a.len(), b.len(), "{table}");
            for (ra, rb) in a.iter().zip(&b) {
                for (c, (x, y)) in ra.iter().zip(rb).enumerate() {
                    let same = match (x, y) {
                        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                        (None, None) => true,
                        _ => false,
                    };
                    assert!(same, "{table} column {c}: SQL fold {x:?}, in memory {y:?}");
                }
            }
        }
    }
}
