//! Usage history in SQLite: raw samples, per-minute and per-hour rollups of closed buckets
//! (raw -> minute -> hour, once per minute), retention per level, and the query that picks a
//! level for a requested step. Rolling up closed buckets instead of upserting on every write
//! halves the per-second write cost (see docs/usage-numbers.md).
//!
//! Column names come from the const lists below, so the raw table, the rollups and the query
//! answer cannot drift apart (migrations/0002_usage.sql holds the same names).

use super::{Result, Store, q};
use serde::Serialize;
use sqlx::{QueryBuilder, Row, Sqlite};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Cumulative kernel counters kept in the raw rows (for re-deriving rates; not rolled up).
pub const COUNTERS: [&str; 15] = [
    "cpu_usage_usec",
    "cpu_user_usec",
    "cpu_system_usec",
    "cpu_throttled_usec",
    "cpu_nr_throttled",
    "io_read_bytes",
    "io_write_bytes",
    "io_read_ops",
    "io_write_ops",
    "oom_kill_events",
    "memory_high_events",
    "memory_max_events",
    "pids_max_events",
    "memory_anon_bytes",
    "memory_file_bytes",
];

/// Gauges: rolled up as mean and max.
pub const GAUGES: [&str; 4] = [
    "memory_current_bytes",
    "memory_working_set_bytes",
    "memory_peak_bytes",
    "pids_current",
];

/// Per-second rates: rolled up as a time-weighted mean and max.
pub const RATES: [&str; 14] = [
    "cpu_cores",
    "cpu_user_cores",
    "cpu_system_cores",
    "cpu_throttled_cores",
    "io_read_bytes_per_s",
    "io_write_bytes_per_s",
    "io_read_ops_per_s",
    "io_write_ops_per_s",
    "cpu_some_stall_ratio",
    "cpu_full_stall_ratio",
    "memory_some_stall_ratio",
    "memory_full_stall_ratio",
    "io_some_stall_ratio",
    "io_full_stall_ratio",
];

/// Events in the interval: rolled up as sums.
pub const EVENTS: [&str; 4] = [
    "new_oom_kills",
    "new_memory_high_events",
    "new_memory_max_events",
    "new_pids_max_events",
];

/// One tenant's sample, ready to store. Arrays follow the const lists above.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageRow {
    pub tenant: String,
    pub ts_ms: i64,
    /// Length of the interval the rates cover; `None` when there are no rates.
    pub interval_ms: Option<i64>,
    pub counters: [Option<i64>; 15],
    pub gauges: [Option<i64>; 4],
    pub rates: [Option<f64>; 14],
    pub events: [Option<i64>; 4],
}

/// A rollup level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    fn of(&self, l: Level) -> i64 {
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

/// One point of a usage answer: the bucket [ts_ms, ts_ms + step) and its values, named with
/// their units: `<rate>_mean`/`<rate>_max`, `<gauge>_mean`/`<gauge>_max`, `<event>` (count).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsagePoint {
    pub ts_ms: i64,
    pub samples: i64,
    /// Seconds of the bucket covered by rates.
    pub covered_s: f64,
    #[serde(flatten)]
    pub values: BTreeMap<String, Option<f64>>,
}

/// A usage answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub tenant: String,
    pub level: Level,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_s: i64,
    pub points: Vec<UsagePoint>,
}

/// Samples per multi-row INSERT: 500 rows of 40 columns stay under SQLite's 32766 variables.
const CHUNK: usize = 500;

fn raw_columns() -> Vec<&'static str> {
    let mut c = vec!["tenant", "ts_ms", "interval_ms"];
    c.extend(COUNTERS);
    c.extend(GAUGES);
    c.extend(RATES);
    c.extend(EVENTS);
    c
}

fn rollup_columns() -> &'static [String] {
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

/// `INSERT INTO usage_rollup SELECT ...` folding the closed buckets in [?1, ?2) of the level
/// below `to` into `to`: raw rows into minutes, minute rows into hours.
fn rollup_sql(to: Level) -> &'static str {
    static S: OnceLock<[String; 2]> = OnceLock::new();
    let [minute, hour] = S.get_or_init(|| {
        let cols = rollup_columns().join(", ");
        let build = |to: Level| {
            let ms = to.step_s() * 1000;
            let mut sel = vec![format!("{}", to.step_s()), "tenant".into(), format!("(ts / {ms}) * {ms} AS b")];
            if to == Level::Minute {
                sel.push("count(*)".into());
                sel.push("coalesce(sum(interval_ms), 0) / 1000.0".into());
                for r in RATES {
                    sel.push(format!("sum({r} * interval_ms) / 1000.0, max({r})"));
                }
                for g in GAUGES {
                    sel.push(format!("sum({g}), max({g})"));
                }
                for e in EVENTS {
                    sel.push(format!("sum({e})"));
                }
                format!(
                    "INSERT INTO usage_rollup ({cols}) SELECT {} FROM (SELECT *, ts_ms AS ts FROM usage_raw \
                     WHERE ts_ms >= ?1 AND ts_ms < ?2) GROUP BY tenant, b ON CONFLICT DO NOTHING",
                    sel.join(", ")
                )
            } else {
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
            }
        };
        [build(Level::Minute), build(Level::Hour)]
    });
    if to == Level::Hour { hour } else { minute }
}

/// The SELECT list both levels answer with, so one decoder reads both.
fn select_list(level: Level) -> String {
    let mut s = Vec::new();
    if level == Level::Raw {
        s.push("count(*) AS samples".to_string());
        s.push("coalesce(sum(interval_ms), 0) / 1000.0 AS covered_s".into());
        for r in RATES {
            s.push(format!(
                "sum({r} * interval_ms) / 1000.0 AS {r}_sum, max({r}) AS {r}_max"
            ));
        }
        for g in GAUGES {
            s.push(format!(
                "avg({g}) * count(*) AS {g}_sum, max({g}) AS {g}_max"
            ));
        }
        for e in EVENTS {
            s.push(format!("sum({e}) AS {e}"));
        }
    } else {
        s.push("sum(samples) AS samples".to_string());
        s.push("sum(covered_s) AS covered_s".into());
        for r in RATES.iter().chain(&GAUGES) {
            s.push(format!("sum({r}_sum) AS {r}_sum, max({r}_max) AS {r}_max"));
        }
        for e in EVENTS {
            s.push(format!("sum({e}) AS {e}"));
        }
    }
    s.join(", ")
}

/// A numeric column as f64, whether SQLite answered INTEGER or REAL.
fn f(r: &sqlx::sqlite::SqliteRow, c: &str) -> Option<f64> {
    match r.try_get::<Option<f64>, _>(c) {
        Ok(v) => v,
        Err(_) => r
            .try_get::<Option<i64>, _>(c)
            .ok()
            .flatten()
            .map(|v| v as f64),
    }
}

impl Store {
    /// Writes one tick's samples in ONE transaction with multi-row INSERTs. Rollups are
    /// made from closed buckets by `roll_up`.
    pub async fn add_usage(&self, rows: &[UsageRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        let cols = raw_columns().join(", ");
        for chunk in rows.chunks(CHUNK) {
            let mut b: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("INSERT OR REPLACE INTO usage_raw ({cols}) "));
            b.push_values(chunk, |mut v, r| {
                v.push_bind(&r.tenant)
                    .push_bind(r.ts_ms)
                    .push_bind(r.interval_ms);
                for x in r.counters.iter().chain(&r.gauges) {
                    v.push_bind(*x);
                }
                for x in &r.rates {
                    v.push_bind(*x);
                }
                for x in &r.events {
                    v.push_bind(*x);
                }
            });
            b.build()
                .execute(&mut *tx)
                .await
                .map_err(q("write usage samples"))?;
        }
        tx.commit().await.map_err(q("commit"))
    }

    /// Folds every closed bucket not yet rolled up: raw rows into minutes, then minutes into
    /// hours. A bucket is closed once `now_ms` is past its end; the current minute and hour
    /// appear in their level when they close. Idempotent; call it as often as convenient.
    pub async fn roll_up(&self, now_ms: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        for (to, from_sql) in [
            (Level::Minute, "SELECT min(ts_ms) FROM usage_raw"),
            (
                Level::Hour,
                "SELECT min(bucket_ms) FROM usage_rollup WHERE step_s = 60",
            ),
        ] {
            let ms = to.step_s() * 1000;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT max(bucket_ms) FROM usage_rollup WHERE step_s = ?1")
                    .bind(to.step_s())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(q("find the last rollup"))?;
            let start = match done {
                Some(b) => b + ms,
                None => match sqlx::query_scalar::<_, Option<i64>>(from_sql)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(q("find the first sample"))?
                {
                    Some(t) => t.div_euclid(ms) * ms,
                    None => continue,
                },
            };
            let closed = now_ms.div_euclid(ms) * ms;
            if closed <= start {
                continue;
            }
            // Built only from the const column lists: no user text.
            sqlx::query(sqlx::AssertSqlSafe(rollup_sql(to)))
                .bind(start)
                .bind(closed)
                .execute(&mut *tx)
                .await
                .map_err(q("roll up usage"))?;
        }
        tx.commit().await.map_err(q("commit"))
    }

    /// A cheap fingerprint of the tenants table (count, sum of generations, last update and
    /// largest creation time), so the sampler re-reads the specs only when it changed.
    pub async fn tenants_fingerprint(&self) -> Result<(i64, i64, i64, i64)> {
        sqlx::query_as(
            "SELECT count(*), coalesce(sum(generation), 0), coalesce(max(updated_ms), 0), coalesce(max(created_ms), 0) FROM tenants",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(q("fingerprint tenants"))
    }

    /// Deletes what each level keeps no longer. Returns the rows removed.
    pub async fn prune_usage(&self, now_ms: i64, keep: &Retention) -> Result<u64> {
        let mut n = sqlx::query("DELETE FROM usage_raw WHERE ts_ms < ?1")
            .bind(now_ms - keep.raw_ms)
            .execute(&self.pool)
            .await
            .map_err(q("prune raw usage"))?
            .rows_affected();
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
        let (table, ts, filter) = match level {
            Level::Raw => ("usage_raw", "ts_ms", String::new()),
            l => (
                "usage_rollup",
                "bucket_ms",
                format!("step_s = {} AND ", l.step_s()),
            ),
        };
        let sql = format!(
            "SELECT ({ts} - ?1) / ?2 AS b, {} FROM {table} WHERE {filter}tenant = ?3 AND {ts} >= ?1 AND {ts} < ?4 GROUP BY b ORDER BY b",
            select_list(level)
        );
        // Built only from the const column lists and a level number: no user text.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(from_ms)
            .bind(step_ms)
            .bind(tenant)
            .bind(to_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(q("read usage"))?;
        let points = rows
            .iter()
            .map(|r| {
                let samples: i64 = r.try_get("samples").unwrap_or(0);
                let covered_s = f(r, "covered_s").unwrap_or(0.0);
                let mut values = BTreeMap::new();
                for c in RATES {
                    let mean = f(r, &format!("{c}_sum"))
                        .filter(|_| covered_s > 0.0)
                        .map(|s| s / covered_s);
                    values.insert(format!("{c}_mean"), mean);
                    values.insert(format!("{c}_max"), f(r, &format!("{c}_max")));
                }
                for c in GAUGES {
                    let mean = f(r, &format!("{c}_sum"))
                        .filter(|_| samples > 0)
                        .map(|s| s / samples as f64);
                    values.insert(format!("{c}_mean"), mean);
                    values.insert(format!("{c}_max"), f(r, &format!("{c}_max")));
                }
                for c in EVENTS {
                    values.insert(c.to_string(), f(r, c));
                }
                UsagePoint {
                    ts_ms: from_ms + r.try_get::<i64, _>("b").unwrap_or(0) * step_ms,
                    samples,
                    covered_s,
                    values,
                }
            })
            .collect();
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
mod tests {
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
        r.gauges[0] = Some(mem);
        if dt_ms.is_some() {
            r.rates[0] = Some(cores);
            r.events[0] = Some(ooms);
        }
        r
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        (dir, s)
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
        let v = |p: &UsagePoint, k: &str| p.values[k].unwrap();
        assert_eq!(v(&m.points[0], "cpu_cores_mean"), 1.0);
        assert_eq!(v(&m.points[1], "cpu_cores_mean"), 3.0);
        assert_eq!(v(&m.points[1], "cpu_cores_max"), 3.0);
        assert_eq!(m.points[0].samples, 60);
        assert_eq!(m.points[0].covered_s, 59.0, "the first sample has no rate");
        assert_eq!(v(&m.points[2], "memory_current_bytes_max"), 279.0);
        assert_eq!(
            v(&m.points[2], "memory_current_bytes_mean"),
            (220..280).sum::<i64>() as f64 / 60.0
        );
        assert_eq!(v(&m.points[1], "new_oom_kills"), 1.0);

        let raw = s.usage("a", 0, 180_000, 60 - 1, now, &keep).await.unwrap();
        assert_eq!(raw.level, Level::Raw);
        assert_eq!(raw.step_s, 59);
        let raw60 = s.usage("a", 60_000, 120_000, 30, now, &keep).await.unwrap();
        assert_eq!(raw60.points.len(), 2);
        assert_eq!(v(&raw60.points[0], "cpu_cores_mean"), 3.0);

        let h = s.usage("a", 0, 3_600_000, 3600, now, &keep).await.unwrap();
        assert_eq!(h.level, Level::Hour);
        assert_eq!(h.points.len(), 1);
        assert!((v(&h.points[0], "cpu_cores_mean") - (59.0 + 180.0 + 120.0) / 179.0).abs() < 1e-9);
        assert_eq!(v(&h.points[0], "cpu_cores_max"), 3.0);
        assert_eq!(v(&h.points[0], "new_oom_kills"), 3.0);
        // The same question asked of the minute level at a 1 h step agrees.
        let mh = s.usage("a", 0, 3_600_000, 3599, now, &keep).await.unwrap();
        assert_eq!(mh.level, Level::Minute);
        assert_eq!(mh.step_s, 3600);
        assert!(
            (v(&mh.points[0], "cpu_cores_mean") - v(&h.points[0], "cpu_cores_mean")).abs() < 1e-9
        );
    }

    #[tokio::test]
    async fn one_tick_of_many_tenants_is_one_batch() {
        let (_d, s) = store().await;
        let rows: Vec<UsageRow> = (0..1234)
            .map(|i| row(&format!("t{i}"), 5_000, Some(1000), 0.5, 1, 0))
            .collect();
        s.add_usage(&rows).await.unwrap();
        s.roll_up(3_605_000).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_raw")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(n, 1234);
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
            count("SELECT count(*) FROM usage_raw").await,
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
        assert_eq!(removed, 3 + 3 + 1);
        // A 1 s step from 50 h ago: raw and minute no longer hold it, hour does.
        let u = s.usage("a", 0, now, 1, now, &keep).await.unwrap();
        assert_eq!(u.level, Level::Hour);
        assert_eq!(
            u.points.iter().map(|p| p.ts_ms).collect::<Vec<_>>(),
            [5 * H, 20 * H, 99 * H]
        );
    }

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
