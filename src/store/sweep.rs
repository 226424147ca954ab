//! The writes that span the usage and SLA tables, each ONE transaction: a sweep's samples,
//! verdicts and events (`add_sweep`), the minutes rolled up in memory (`add_minute_rollups`),
//! the fold of closed buckets into rollups (`roll_up`) and the compaction of a closed window
//! of raw rows and verdicts into one compressed block per tenant (`compact_raw`, issue 15).
//! It composes `store::samples` and `store::sla`, which import neither it nor each other.

use super::direct::query_rows;
use super::direct::{Direct, Stmt, blocking};
use super::rollup::{BLOCK_MS, delete_window, merge_by_time};
use super::rollup::{bind_window, corrupt, unfolded};
use super::samples::{MinuteRollup, fold_usage, insert_minute_rollups, raw_usage_window};
use super::samples::{direct_row, usage_window_sql};
use super::sla::{SlaMinute, fold_sla, insert_sla_minutes, raw_verdict_window};
use super::sla::{VERDICT_WINDOW_SQL, direct_verdict};
use super::slices::{delete_rows, for_each_entry, insert_slices, take_runs, window_units};
use super::{NewEvent, Result, Store, insert_event, q};
use crate::domain::raw_slice;
use crate::domain::sla_engine::Verdict;
use crate::domain::usage_block::{BlockError, decode_usage, decode_verdicts};
use crate::domain::usage_block::{Columns, Room, UsageColumns, VerdictColumns};
use crate::domain::usage_row::UsageRow;
use sqlx::SqliteConnection;
use std::borrow::Borrow;
use std::collections::BTreeMap;

/// The windows `roll_up(now_ms)` may compact end at or before this: the start of `now_ms`'s
/// minute (every minute before it is rolled up) less one window, so the raw tables always
/// hold the last 10 to 20 minutes as they were written.
pub(super) fn compactable_before(now_ms: i64) -> i64 {
    now_ms.div_euclid(60_000) * 60_000 - BLOCK_MS
}

/// How the transactions that read raw rows and then write begin: with the write lock taken
/// first (waiting for it as the busy timeout allows). Begun deferred, their first read took a
/// snapshot, and a commit of another connection before their first write failed that write at
/// once with SQLITE_BUSY: a sweep's write of its slices failed so while 10,000 tenants were
/// created through the API.
const IMMEDIATE: &str = "BEGIN IMMEDIATE";

/// One tenant's rows and verdicts of a window.
type TenantWindow = (Vec<UsageRow>, Vec<Verdict>);

/// Tenants of the raw tables (the layout before slices) whose window one compaction
/// transaction moves: a short write lock, bounded memory (issue 15: 256 tenants' 10 minutes
/// at 1 s were 153,600 rows decoded at once, and the running daemon's resident set grew from
/// 65 to 119 MiB at 1,000 tenants once compaction began; 16 tenants' decoded rows are about
/// 6 MB). The slices' units are cut by their bytes instead (`slices::window_units`).
const TENANTS_PER_TX: usize = 16;

/// `roll_up` compacts at least `MIN_PER_CALL / TENANTS_PER_TX` units of a window per call
/// (256 tenants of the raw tables; of slices, 16 units of up to 16 runs of 16 tenants).
const MIN_PER_CALL: usize = 256;

/// A compaction reads its window this much at a time, so that SQLite's rows of only one
/// slice are held at once before they become `UsageRow`s.
const SLICE_MS: i64 = 60_000;

/// Of a window's tenants, `roll_up` compacts at least this share per call (it runs once a
/// minute), so a 10-minute window is compacted over about 5 calls instead of stalling one
/// sweep with all of it.
const SPREAD_CALLS: usize = 5;

/// Calls `f` with `map`'s value of `tenant`, made by `new` if it has none: one lookup when it
/// is there, and the name copied only when it is not (not for each of a window's or a minute's
/// 600 samples).
fn with_entry<V, R>(
    map: &mut BTreeMap<String, V>,
    tenant: &str,
    new: impl FnOnce() -> V,
    f: impl FnOnce(&mut V) -> R,
) -> R {
    match map.get_mut(tenant) {
        Some(v) => f(v),
        None => f(map.entry(tenant.to_string()).or_insert_with(new)),
    }
}

/// The tenants with raw rows or verdicts in the window [start_ms, start_ms + BLOCK_MS).
async fn window_tenants(tx: &mut SqliteConnection, start_ms: i64) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT tenant FROM usage_raw WHERE ts_ms >= ?1 AND ts_ms < ?2
         UNION SELECT tenant FROM sla_raw WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY 1",
    )
    .bind(start_ms)
    .bind(start_ms + BLOCK_MS)
    .fetch_all(&mut *tx)
    .await
    .map_err(q("list the tenants of a raw window"))
}

/// A window's unit of compaction, one transaction each: a run of tenants of the raw tables
/// written before `raw_slices` (their first and last), or the slices of the runs of tenants
/// whose first tenants lie between two (`slices::window_units`).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Work {
    Tenants(String, String),
    Slices(String, String),
}

/// The units of the window [start_ms, start_ms + BLOCK_MS): the old tables' tenants in runs
/// of `TENANTS_PER_TX`, then the slices' units.
async fn window_work(tx: &mut SqliteConnection, start_ms: i64) -> Result<Vec<Work>> {
    let tenants = window_tenants(tx, start_ms).await?;
    let mut work: Vec<Work> = tenants
        .chunks(TENANTS_PER_TX)
        .map(|b| Work::Tenants(b[0].clone(), b[b.len() - 1].clone()))
        .collect();
    let units = window_units(tx, (start_ms, start_ms + BLOCK_MS)).await?;
    work.extend(units.into_iter().map(|(a, b)| Work::Slices(a, b)));
    Ok(work)
}

/// Moves one unit of the window [start_ms, start_ms + BLOCK_MS) into one `raw_blocks` row per
/// tenant. Returns the rows and verdicts moved. The old tables' rows are deleted here; the
/// rowids of the slices read are added to `taken`, for `delete_rows` once the window's last
/// unit is done: a run's 600 slices lie one in each of 600 pages, which every unit's delete
/// wrote again (each page holds a dozen runs' slices), where one delete of the whole window
/// in rowid order writes each page once. Until then a tenant's rows are in its block and in
/// the slices alike, which the readers merge by time (`merge_by_time`) and a compaction
/// after a crash merges into the block again, the same rows.
async fn compact_work(
    tx: &mut SqliteConnection,
    start_ms: i64,
    work: &Work,
    taken: &mut Vec<i64>,
) -> Result<u64> {
    let window = (start_ms, start_ms + BLOCK_MS);
    let mut by_tenant: BTreeMap<String, TenantWindow> = BTreeMap::new();
    let mut moved = 0;
    match work {
        Work::Tenants(first, last) => {
            let tenants = (first.as_str(), last.as_str());
            let mut slice = start_ms;
            while slice < window.1 {
                let range = (slice, (slice + SLICE_MS).min(window.1));
                let usage = raw_usage_window(tx, range, tenants).await?;
                let verdicts = raw_verdict_window(tx, range, tenants).await?;
                moved += (usage.len() + verdicts.len()) as u64;
                for r in usage {
                    by_tenant.entry(r.tenant.clone()).or_default().0.push(r);
                }
                for v in verdicts {
                    by_tenant.entry(v.tenant.clone()).or_default().1.push(v);
                }
                slice = range.1;
            }
            write_blocks(tx, start_ms, by_tenant).await?;
            delete_window(tx, "usage_raw", start_ms, tenants).await?;
            delete_window(tx, "sla_raw", start_ms, tenants).await?;
        }
        Work::Slices(first, last) => {
            const OP: &str = "compact raw slices";
            let d = Direct::lock(tx, OP).await?;
            moved = blocking(|| -> Result<u64> {
                let slices = take_runs(&d, window, (first, last))?;
                let mut blocks = BlockWriter::new(&d, start_ms)?;
                let mut moved = 0;
                let list = slices.slices();
                let mut runs = raw_slice::TenantRuns::new(&list).map_err(corrupt(first))?;
                while let Some((tenant, entries)) = runs.next_tenant().map_err(corrupt(first))? {
                    for (ts, e) in entries {
                        if let Some(b) = e.usage {
                            let row = raw_slice::usage_row("", *ts, b).map_err(corrupt(tenant))?;
                            blocks.usage.push(&row);
                        }
                        if let Some(b) = e.verdict {
                            let v = raw_slice::verdict("", *ts, b).map_err(corrupt(tenant))?;
                            blocks.verdicts.push(&v);
                        }
                    }
                    moved += (blocks.usage.len() + blocks.verdicts.len()) as u64;
                    blocks.write(tenant)?;
                }
                taken.extend(slices.rowids);
                Ok(moved)
            })?;
        }
    }
    Ok(moved)
}

/// Writes each tenant's rows and verdicts of the window starting at `start_ms` as its block
/// (`BlockWriter`).
async fn write_blocks(
    tx: &mut SqliteConnection,
    start_ms: i64,
    by_tenant: BTreeMap<String, TenantWindow>,
) -> Result<()> {
    let d = Direct::lock(tx, "write raw blocks").await?;
    blocking(|| {
        let mut blocks = BlockWriter::new(&d, start_ms)?;
        for (tenant, (rows, verdicts)) in by_tenant {
            rows.iter().for_each(|r| blocks.usage.push(r));
            verdicts.iter().for_each(|v| blocks.verdicts.push(v));
            blocks.write(&tenant)?;
        }
        Ok(())
    })
}

/// Writes tenants' blocks of the window starting at `start_ms`, one row each, of what
/// `usage` and `verdicts` hold (emptied after each, their room kept, as the encoder's). A
/// block already there (rows written into a compacted window after a clock step back, or a
/// tenant whose run of slices changed within the window) is merged with them, the new rows
/// winning for a time both hold.
struct BlockWriter<'d> {
    old: Stmt<'d>,
    put: Stmt<'d>,
    start_ms: i64,
    usage: UsageColumns,
    verdicts: VerdictColumns,
    room: Room,
}

impl<'d> BlockWriter<'d> {
    fn new(d: &'d Direct<'_>, start_ms: i64) -> Result<Self> {
        const OP: &str = "write raw blocks";
        Ok(BlockWriter {
            old: d.prepare(
                "SELECT usage, sla FROM raw_blocks WHERE tenant = ?1 AND start_ms = ?2",
                OP,
            )?,
            put: d.prepare(
                "INSERT OR REPLACE INTO raw_blocks (tenant, start_ms, usage, sla) VALUES (?1, ?2, ?3, ?4)",
                OP,
            )?,
            start_ms,
            usage: UsageColumns::default(),
            verdicts: VerdictColumns::default(),
            room: Room::default(),
        })
    }

    /// Writes `tenant`'s block.
    fn write(&mut self, tenant: &str) -> Result<()> {
        self.old.bind(1, tenant)?;
        self.old.bind(2, self.start_ms)?;
        let found = self.old.step();
        if found.as_ref().is_ok_and(|f| *f) {
            let merged = self.merge_old(tenant);
            self.old.reset();
            merged?;
        } else {
            self.old.reset();
            found?;
        }
        let usage = (!self.usage.is_empty()).then(|| self.room.usage(&self.usage));
        let sla = (!self.verdicts.is_empty()).then(|| self.room.verdicts(&self.verdicts));
        self.put.bind(1, tenant)?;
        self.put.bind(2, self.start_ms)?;
        self.put.bind(3, usage.as_deref())?;
        self.put.bind(4, sla.as_deref())?;
        self.put.execute()?;
        self.usage.clear();
        self.verdicts.clear();
        Ok(())
    }

    /// Merges the block `old` found under the rows and verdicts held.
    fn merge_old(&mut self, tenant: &str) -> Result<()> {
        let at = |r: &UsageRow| r.ts_ms;
        merge_under(&mut self.usage, self.old.blob(0), decode_usage, at)
            .map_err(corrupt(tenant))?;
        let at = |v: &Verdict| v.ts_ms;
        merge_under(&mut self.verdicts, self.old.blob(1), decode_verdicts, at)
            .map_err(corrupt(tenant))
    }
}

/// A block's decoder (`decode_usage`, `decode_verdicts`).
type Decode<R> = fn(&str, &[u8]) -> std::result::Result<Vec<R>, BlockError>;

/// `cols` with the samples of the encoded `block` (none when empty) under them: the samples
/// of `cols` win for a time both hold.
fn merge_under<C: Columns>(
    cols: &mut C,
    block: &[u8],
    decode: Decode<C::Row>,
    ts: impl Fn(&C::Row) -> i64,
) -> std::result::Result<(), BlockError> {
    if !block.is_empty() {
        let rows = merge_by_time(decode("", block)?, cols.rows(""), ts);
        *cols = C::of(&rows);
    }
    Ok(())
}

/// Folds the closed minutes of raw rows and verdicts that no minute rollup holds yet (the
/// minute the daemon started in, minutes before it) into minute rollups, a minute at a time:
/// from the slices, and from the old tables' rows of a database written before them. Each
/// minute's rows are folded as they are read (`MinuteRollup::add`, `SlaMinute::add`, in time
/// order as the sampler folds them), never held: one minute of 10,000 tenants is 600,000.
async fn fold_minutes(tx: &mut SqliteConnection, now_ms: i64) -> Result<()> {
    const FIRST: &str = "SELECT min(ts) FROM (SELECT min(ts_ms) AS ts FROM usage_raw
         UNION ALL SELECT min(ts_ms) FROM sla_raw UNION ALL SELECT min(ts_ms) FROM raw_slices)";
    const NEXT: &str = "SELECT min(ts_ms) FROM sample_ticks WHERE ts_ms >= ?1 AND ts_ms < ?2";
    const MINUTE: i64 = 60_000;
    // The minutes not rolled up yet, of usage and of verdicts (each table has its own last).
    let mut todo = [None; 2];
    for (t, done) in todo.iter_mut().zip([
        "SELECT max(bucket_ms) FROM usage_rollup WHERE step_s = ?1",
        "SELECT max(bucket_ms) FROM sla_rollup WHERE step_s = ?1",
    ]) {
        *t = unfolded(tx, 60, done, FIRST, now_ms).await?;
    }
    let [usage, sla] = todo;
    let (Some(start), Some(closed)) = (
        usage.iter().chain(&sla).map(|r| r.0).min(),
        usage.iter().chain(&sla).map(|r| r.1).max(),
    ) else {
        return Ok(());
    };
    let all = ("", "\u{10ffff}");
    let mut m = start;
    while m < closed {
        // The next minute with a sweep: the minutes the daemon was stopped are skipped.
        let next: Option<i64> = sqlx::query_scalar(NEXT)
            .bind(m)
            .bind(closed)
            .fetch_one(&mut *tx)
            .await
            .map_err(q("find the next sample time"))?;
        let Some(t) = next else { break };
        m = t.div_euclid(MINUTE) * MINUTE;
        let range = (m, m + MINUTE);
        let fold_u = usage.is_some_and(|(s, c)| m >= s && m < c);
        let fold_s = sla.is_some_and(|(s, c)| m >= s && m < c);
        let mut u: BTreeMap<String, MinuteRollup> = BTreeMap::new();
        let mut v: BTreeMap<String, SlaMinute> = BTreeMap::new();
        let mut add_u = |r: &UsageRow| {
            with_entry(
                &mut u,
                &r.tenant,
                || MinuteRollup::new(&r.tenant, m),
                |x| x.add(r),
            )
        };
        let mut add_v = |r: &Verdict| {
            with_entry(
                &mut v,
                &r.tenant,
                || SlaMinute::new(&r.tenant, m),
                |x| x.add(r),
            )
        };
        if fold_u {
            query_rows(
                tx,
                usage_window_sql(),
                "fold raw usage",
                |st| bind_window(st, range, all),
                |st| add_u(&direct_row(st)),
            )
            .await?;
        }
        if fold_s {
            query_rows(
                tx,
                VERDICT_WINDOW_SQL,
                "fold sla verdicts",
                |st| bind_window(st, range, all),
                |st| add_v(&direct_verdict(st)),
            )
            .await?;
        }
        for_each_entry(tx, range, |ts, e| {
            if let Some(b) = e.usage.filter(|_| fold_u) {
                add_u(&raw_slice::usage_row(e.tenant, ts, b).map_err(corrupt(e.tenant))?);
            }
            if let Some(b) = e.verdict.filter(|_| fold_s) {
                add_v(&raw_slice::verdict(e.tenant, ts, b).map_err(corrupt(e.tenant))?);
            }
            Ok(())
        })
        .await?;
        insert_minute_rollups(tx, &u.values().collect::<Vec<_>>()).await?;
        insert_sla_minutes(tx, &v.values().collect::<Vec<_>>()).await?;
        m += MINUTE;
    }
    Ok(())
}

impl Store {
    /// Writes one sweep in ONE transaction: the usage rows, the SLA verdicts, the events, and
    /// the sweep's time in `sample_ticks` (how a tenant's raw rows are found again). Raw rows
    /// are keyed (ts_ms, tenant), so a sweep appends at the end of each table instead of
    /// writing one page per tenant. Rollups are made from closed buckets by `roll_up`. The
    /// usage rows are taken as they come, a statement's worth at a time (the sampler makes
    /// them while they are written); a slice's `iter()` does as well.
    pub async fn add_sweep<R: Borrow<UsageRow>>(
        &self,
        usage: impl IntoIterator<Item = R>,
        sla: &[Verdict],
        events: &[NewEvent],
    ) -> Result<()> {
        let mut usage = usage.into_iter().peekable();
        if usage.peek().is_none() && sla.is_empty() && events.is_empty() {
            return Ok(());
        }
        // Never empty here: a success committed rows.
        let r = self.write_sweep(usage, sla, events).await;
        self.tracked(r, true)
    }

    async fn write_sweep<R: Borrow<UsageRow>>(
        &self,
        usage: impl Iterator<Item = R>,
        sla: &[Verdict],
        events: &[NewEvent],
    ) -> Result<()> {
        let mut tx = self
            .sweeps
            .begin_with(IMMEDIATE)
            .await
            .map_err(q("begin"))?;
        let ticks = insert_slices(&mut tx, usage, sla).await?;
        for ts in ticks {
            sqlx::query("INSERT OR IGNORE INTO sample_ticks (ts_ms) VALUES (?1)")
                .bind(ts)
                .execute(&mut *tx)
                .await
                .map_err(q("record the sample time"))?;
        }
        for e in events {
            insert_event(&mut tx, e).await?;
        }
        tx.commit().await.map_err(q("commit"))
    }

    /// Writes closed minutes rolled up in memory (`MinuteRollup`, `SlaMinute`, or references
    /// to them: the sampler's are not copied), one transaction; a minute already rolled up is
    /// left as it is.
    pub async fn add_minute_rollups<U: Borrow<MinuteRollup>, S: Borrow<SlaMinute>>(
        &self,
        usage: &[U],
        sla: &[S],
    ) -> Result<()> {
        let r = self.write_minute_rollups(usage, sla).await;
        self.tracked(r, false)
    }

    async fn write_minute_rollups<U: Borrow<MinuteRollup>, S: Borrow<SlaMinute>>(
        &self,
        usage: &[U],
        sla: &[S],
    ) -> Result<()> {
        let mut tx = self.sweeps.begin().await.map_err(q("begin"))?;
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

    /// Compacts at most one window (or part of one) per call, so a backlog never stalls the
    /// sampler that calls it: a database of the layout before compressed blocks
    /// (migrations/0006_raw_blocks.sql), or one whose daemon was stopped for a while, is
    /// converted in the background, a window a minute, oldest first, while every answer stays
    /// the same (raw answers read blocks and raw rows alike). The backlog is logged while
    /// there is one.
    async fn write_roll_up(&self, now_ms: i64) -> Result<()> {
        self.write_fold(now_ms).await?;
        self.write_compact(compactable_before(now_ms), true, &mut |done, total| {
            if total > 1 {
                tracing::info!(
                    "compressing the raw usage history: {} windows of {} minutes left (one a minute, oldest first)",
                    total - done,
                    BLOCK_MS / 60_000
                );
            }
        })
        .await
        .map(|_| ())
    }

    /// On the sweeps' connection: the minute rollups' multi-row INSERTs are compiled there
    /// already (`add_minute_rollups`), and each connection keeps its own copy of every
    /// statement it ran (see `Store::sweeps`).
    async fn write_fold(&self, now_ms: i64) -> Result<()> {
        let mut tx = self
            .sweeps
            .begin_with(IMMEDIATE)
            .await
            .map_err(q("begin"))?;
        fold_minutes(&mut tx, now_ms).await?;
        fold_usage(&mut tx, now_ms).await?;
        fold_sla(&mut tx, now_ms).await?;
        tx.commit().await.map_err(q("commit"))
    }

    /// Compacts every window of the raw tables that ends at or before `end_ms` into
    /// `raw_blocks`, one transaction per window, calling `progress(done, total)` after each
    /// (`total` counts the windows from the oldest raw row, empty ones included). Returns
    /// the rows moved. Only for windows whose minutes are rolled up (see `roll_up`).
    pub async fn compact_raw(
        &self,
        end_ms: i64,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<u64> {
        let r = self.write_compact(end_ms, false, progress).await;
        self.tracked(r, false)
    }

    /// `spread`: compact one window per call, and of a window of many tenants only part
    /// (at least 1/`SPREAD_CALLS` of them), the rest on the next calls.
    async fn write_compact(
        &self,
        end_ms: i64,
        spread: bool,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<u64> {
        const FIRST: &str = "SELECT min(ts) FROM (SELECT min(ts_ms) AS ts FROM usage_raw
             UNION ALL SELECT min(ts_ms) FROM sla_raw UNION ALL SELECT min(ts_ms) FROM raw_slices)";
        const NEXT: &str =
            "SELECT min(ts) FROM (SELECT min(ts_ms) AS ts FROM usage_raw WHERE ts_ms >= ?1
             UNION ALL SELECT min(ts_ms) FROM sla_raw WHERE ts_ms >= ?1
             UNION ALL SELECT min(ts_ms) FROM raw_slices WHERE ts_ms >= ?1)";
        let first: Option<i64> = sqlx::query_scalar(FIRST)
            .fetch_one(&self.pool)
            .await
            .map_err(q("find the oldest raw row"))?;
        let Some(first) = first else { return Ok(0) };
        let mut start = first.div_euclid(BLOCK_MS) * BLOCK_MS;
        let total = ((end_ms - start) / BLOCK_MS).max(0) as u64;
        let mut moved = 0;
        while start + BLOCK_MS <= end_ms {
            // A window spread over several calls is listed once: each listing scans all of
            // its rows left (0.3 s of CPU for a window of 1,000 tenants in the old tables),
            // and the calls after the first take the units the first listed and left.
            // Listed again once that list is used up, so rows no list held are found too.
            let left = spread
                .then(|| self.window_left.lock().ok().and_then(|mut l| l.take()))
                .flatten();
            let (mut work, mut taken) = match left {
                Some((s, w, taken)) if s == start && !w.is_empty() => (w, taken),
                _ => {
                    let mut tx = self.pool.begin().await.map_err(q("begin"))?;
                    let w = window_work(&mut tx, start).await?;
                    tx.commit().await.map_err(q("commit"))?;
                    (w, Vec::new())
                }
            };
            let min_units = MIN_PER_CALL / TENANTS_PER_TX;
            let whole = !spread || work.len() <= min_units;
            let rest = if whole {
                Vec::new()
            } else {
                let share = work.len().div_ceil(SPREAD_CALLS).max(min_units);
                work.split_off(share)
            };
            for unit in &work {
                let mut tx = self.pool.begin_with(IMMEDIATE).await.map_err(q("begin"))?;
                moved += compact_work(&mut tx, start, unit, &mut taken).await?;
                tx.commit().await.map_err(q("commit"))?;
            }
            if rest.is_empty() && !taken.is_empty() {
                taken.sort_unstable();
                let mut tx = self.pool.begin_with(IMMEDIATE).await.map_err(q("begin"))?;
                delete_rows(&mut tx, &taken).await?;
                tx.commit().await.map_err(q("commit"))?;
                taken = Vec::new();
            }
            if spread {
                if let Ok(mut l) = self.window_left.lock() {
                    *l = Some((start, rest, taken));
                }
                // One window per call (see `write_roll_up`).
                let left = ((end_ms - start) / BLOCK_MS).max(0) as u64;
                progress(total - left + u64::from(whole), total);
                return Ok(moved);
            }
            // Skip the empty windows (the daemon was stopped) in one step.
            let next: Option<i64> = sqlx::query_scalar(NEXT)
                .bind(start + BLOCK_MS)
                .fetch_one(&self.pool)
                .await
                .map_err(q("find the next raw row"))?;
            start = match next {
                Some(t) => t.div_euclid(BLOCK_MS) * BLOCK_MS,
                None => end_ms,
            };
            let done = total - ((end_ms - start) / BLOCK_MS).max(0) as u64;
            progress(done, total);
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::usage_row::{UsageCounters, UsageEvents, UsageGauges, UsageRates};
    use crate::store::samples::f;
    use sqlx::{Column, Row};
    use std::collections::HashMap;

    /// The minutes the sampler rolls up in memory are the rows the SQL fold of the releases
    /// before made of the same raw rows (in the old tables), and the rows the fold from the
    /// slices makes (a minute the daemon did not see whole), column for column: NULL rates and
    /// gauges, intervals of different lengths, first samples without rates, events, contended
    /// and violating verdicts.
    #[tokio::test]
    async fn minutes_rolled_up_in_memory_equal_the_sql_fold() {
        let (d1, d2, d3) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let folded = Store::open(&d1.path().join("t.db")).await.unwrap();
        let in_memory = Store::open(&d2.path().join("t.db")).await.unwrap();
        let sql = Store::open(&d3.path().join("t.db")).await.unwrap();
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
            let mut tx = sql.pool().begin().await.unwrap();
            super::compact_tests::insert_old(&mut tx, &rows, &verdicts).await;
            tx.commit().await.unwrap();
        }
        folded.roll_up(180_000).await.unwrap();
        for q in [
            super::migration_tests::old_minute_fold_sql(),
            super::migration_tests::OLD_SLA_MINUTE_FOLD.to_string(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(0)
                .bind(180_000)
                .execute(sql.pool())
                .await
                .unwrap();
        }
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
            let b = dump(&in_memory).await;
            for (what, other) in [("SQL fold", &sql), ("fold of slices", &folded)] {
                let a = dump(other).await;
                assert_eq!(a.len(), 3, "{table}: one minute of three tenants");
                assert_eq!(a.len(), b.len(), "{table}");
                for (ra, rb) in a.iter().zip(&b) {
                    for (c, (x, y)) in ra.iter().zip(rb).enumerate() {
                        let same = match (x, y) {
                            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                            (None, None) => true,
                            _ => false,
                        };
                        assert!(same, "{table} column {c}: {what} {x:?}, in memory {y:?}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod compact_tests {
    use super::*;

    fn row(tenant: &str, ts_ms: i64, mem: i64) -> UsageRow {
        let mut r = UsageRow {
            tenant: tenant.into(),
            ts_ms,
            interval_ms: Some(1000),
            ..Default::default()
        };
        r.gauges.memory_current_bytes = Some(mem);
        r
    }

    /// Rows and verdicts written into the raw tables as the releases before `raw_slices`
    /// wrote them (`INSERT OR REPLACE`, one row each), for the tests of the old layout.
    pub(in crate::store) async fn insert_old(
        tx: &mut SqliteConnection,
        rows: &[UsageRow],
        verdicts: &[Verdict],
    ) {
        let cols = super::super::samples::raw_columns();
        let params: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT OR REPLACE INTO usage_raw ({}) VALUES ({})",
            cols.join(", "),
            params.join(", ")
        );
        for r in rows {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&r.tenant)
                .bind(r.ts_ms)
                .bind(r.interval_ms);
            for x in r.counters.values().into_iter().chain(r.gauges.values()) {
                q = q.bind(x);
            }
            for x in r.rates.values() {
                q = q.bind(x);
            }
            for x in r.events.values() {
                q = q.bind(x);
            }
            q.execute(&mut *tx).await.unwrap();
        }
        for v in verdicts {
            sqlx::query(
                "INSERT OR REPLACE INTO sla_raw (tenant, ts_ms, interval_ms, guarantee_ratio,
                 delivered_ratio, contended, violating) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(&v.tenant)
            .bind(v.ts_ms)
            .bind(v.interval_ms)
            .bind(v.guarantee_ratio)
            .bind(v.delivered_ratio)
            .bind(v.contended)
            .bind(v.violating)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }

    async fn count(s: &Store, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap()
    }

    fn verdict(tenant: &str, ts_ms: i64, delivered: f64) -> Verdict {
        Verdict {
            tenant: tenant.into(),
            ts_ms,
            interval_ms: 1000,
            guarantee_ratio: Some(0.5),
            delivered_ratio: delivered,
            contended: true,
            violating: delivered < 0.5,
        }
    }

    /// A database upgraded mid-window holds rows in the old tables and slices: answers hold
    /// both, the minute that has both is folded from both, and the window is compacted from
    /// both into one block per tenant, leaving neither.
    #[tokio::test]
    async fn rows_of_the_old_tables_and_slices_are_read_folded_and_compacted_together() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        let old: Vec<UsageRow> = (0..30).map(|k| row("a", 60_000 + k * 1000, k)).collect();
        let old_v: Vec<Verdict> = (0..30)
            .map(|k| verdict("a", 60_000 + k * 1000, 0.75))
            .collect();
        let mut tx = s.pool().begin().await.unwrap();
        insert_old(&mut tx, &old, &old_v).await;
        for r in &old {
            sqlx::query("INSERT INTO sample_ticks (ts_ms) VALUES (?1)")
                .bind(r.ts_ms)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        for k in 30..60 {
            let ts = 60_000 + k * 1000;
            s.add_sweep(&[row("a", ts, k)], &[verdict("a", ts, 0.25)], &[])
                .await
                .unwrap();
        }
        let want: Vec<UsageRow> = (0..60).map(|k| row("a", 60_000 + k * 1000, k)).collect();
        assert_eq!(s.raw_usage("a", 0, 200_000).await.unwrap(), want);
        assert_eq!(s.raw_verdicts("a", 0, 200_000).await.unwrap().len(), 60);

        s.roll_up(120_000).await.unwrap();
        let (samples, mem_max): (i64, i64) = sqlx::query_as(
            "SELECT samples, memory_current_bytes_max FROM usage_rollup WHERE step_s = 60 AND tenant = 'a'",
        )
        .fetch_one(s.pool())
        .await
        .unwrap();
        assert_eq!((samples, mem_max), (60, 59), "the minute holds both halves");
        let (covered, violation): (f64, f64) = sqlx::query_as(
            "SELECT covered_s, violation_s FROM sla_rollup WHERE step_s = 60 AND tenant = 'a'",
        )
        .fetch_one(s.pool())
        .await
        .unwrap();
        assert_eq!((covered, violation), (60.0, 30.0));

        let moved = s.compact_raw(600_000, &mut |_, _| {}).await.unwrap();
        assert_eq!(moved, 120);
        for table in ["usage_raw", "sla_raw", "raw_slices"] {
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(s.pool())
                    .await
                    .unwrap();
            assert_eq!(n, 0, "{table}");
        }
        assert_eq!(s.raw_usage("a", 0, 200_000).await.unwrap(), want);
        assert_eq!(s.raw_verdicts("a", 0, 200_000).await.unwrap().len(), 60);
    }

    async fn slices_at(s: &Store, ts: i64) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT first_tenant, last_tenant FROM raw_slices WHERE ts_ms = ?1 ORDER BY first_tenant",
        )
        .bind(ts)
        .fetch_all(s.pool())
        .await
        .unwrap()
    }

    /// Writes of the same sweep time in several calls (usage, then verdicts, then a tenant
    /// again and a new one) end as one set of runs that do not overlap, each tenant's part
    /// written last winning, as `INSERT OR REPLACE` into the raw tables did.
    #[tokio::test]
    async fn writes_of_one_time_merge_into_runs_that_do_not_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        let names: Vec<String> = (0..40).map(|i| format!("t{i:04}")).collect();
        let rows: Vec<UsageRow> = names.iter().map(|n| row(n, 1_000, 1)).collect();
        s.add_usage(&rows).await.unwrap();
        assert_eq!(
            slices_at(&s, 1_000).await.len(),
            40_usize.div_ceil(raw_slice::SLICE_TENANTS)
        );
        let verdicts: Vec<Verdict> = names[..10]
            .iter()
            .map(|n| verdict(n, 1_000, 0.25))
            .collect();
        s.add_sla(&verdicts).await.unwrap();
        s.add_usage(&[row("t0005", 1_000, 99), row("a-new", 1_000, 7)])
            .await
            .unwrap();
        let runs = slices_at(&s, 1_000).await;
        assert_eq!(
            runs.len(),
            41_usize.div_ceil(raw_slice::SLICE_TENANTS),
            "{runs:?}"
        );
        assert_eq!(runs[0].0, "a-new");
        for w in runs.windows(2) {
            assert!(w[0].1 < w[1].0, "runs overlap: {runs:?}");
        }
        assert_eq!(
            s.raw_usage("t0005", 0, 2_000).await.unwrap(),
            [row("t0005", 1_000, 99)]
        );
        assert_eq!(
            s.raw_usage("a-new", 0, 2_000).await.unwrap(),
            [row("a-new", 1_000, 7)]
        );
        for n in &names {
            let want = if n == "t0005" { 99 } else { 1 };
            assert_eq!(
                s.raw_usage(n, 0, 2_000).await.unwrap(),
                [row(n, 1_000, want)],
                "{n}"
            );
        }
        assert_eq!(
            s.raw_verdicts("t0005", 0, 2_000).await.unwrap(),
            [verdict("t0005", 1_000, 0.25)],
            "a later usage row keeps the verdict"
        );
        assert_eq!(s.raw_verdicts("t0010", 0, 2_000).await.unwrap(), []);
        assert_eq!(
            s.raw_usage("t0040", 0, 2_000).await.unwrap(),
            [],
            "no such tenant"
        );
        assert_eq!(
            s.raw_usage("zzz", 0, 2_000).await.unwrap(),
            [],
            "after every run"
        );
    }

    /// A sweep's write, which reads its time's slices before it writes, waits for another
    /// connection's write to commit and then succeeds. Begun deferred, its read took a
    /// snapshot and the write after the other's commit failed at once with SQLITE_BUSY (as it
    /// did once while 10,000 tenants were created through the API); so did the fold and the
    /// compaction, which read before they write too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_waits_for_another_writer_instead_of_failing() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = Store::open(&path).await.unwrap();
        s.add_usage(&[row("a", 1_000, 1)]).await.unwrap();
        let mut other = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        for sql in [
            "BEGIN IMMEDIATE",
            "INSERT INTO sample_ticks (ts_ms) VALUES (5)",
        ] {
            sqlx::query(sql).execute(&mut other).await.unwrap();
        }
        let (s2, s3) = (s.clone(), s.clone());
        let sweep = tokio::spawn(async move { s2.add_usage(&[row("a", 2_000, 2)]).await });
        let fold = tokio::spawn(async move { s3.roll_up(3_600_000).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!sweep.is_finished(), "the sweep waits for the lock");
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        sweep.await.unwrap().unwrap();
        fold.await.unwrap().unwrap();
        assert_eq!(
            s.raw_usage("a", 0, 3_000).await.unwrap(),
            [row("a", 1_000, 1), row("a", 2_000, 2)]
        );
    }

    /// `roll_up` compacts a window of many tenants over several calls, a batch of tenants per
    /// transaction, and every tenant's rows are found, whole, between any two calls.
    #[tokio::test]
    async fn a_window_of_many_tenants_is_compacted_over_several_calls() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        let names: Vec<String> = (0..600).map(|i| format!("t{i:04}")).collect();
        for ts in [1_000, 2_000] {
            let rows: Vec<UsageRow> = names.iter().map(|n| row(n, ts, ts)).collect();
            s.add_usage(&rows).await.unwrap();
        }
        let mut calls = 0;
        while count(&s, "SELECT count(*) FROM raw_slices").await > 0 {
            s.roll_up(3_600_000).await.unwrap();
            calls += 1;
            if calls == 1 {
                // A row the first call's listing did not hold, after every tenant listed:
                // compacted once the list is used up and the window listed again.
                s.add_usage(&[row("u0000", 1_500, 7)]).await.unwrap();
            }
            for n in ["t0000", "t0255", "t0256", "t0599"] {
                let got = s.raw_usage(n, 0, 10_000).await.unwrap();
                assert_eq!(
                    got,
                    [row(n, 1_000, 1_000), row(n, 2_000, 2_000)],
                    "{n} after {calls} calls"
                );
            }
            assert_eq!(
                s.raw_usage("u0000", 0, 10_000).await.unwrap(),
                [row("u0000", 1_500, 7)]
            );
            assert!(calls < 10);
        }
        assert_eq!(
            calls, 4,
            "256 tenants a call from one listing, then the late row"
        );
        assert_eq!(count(&s, "SELECT count(*) FROM raw_blocks").await, 601);
    }

    /// The slices of a window compacted over several calls are deleted together after its
    /// last unit, not unit by unit; a restart in between (the list of units and of the slices
    /// moved is in memory only) compacts them again into the same blocks, every row once.
    #[tokio::test]
    async fn a_windows_slices_go_after_its_last_unit_and_a_restart_before_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = Store::open(&path).await.unwrap();
        let names: Vec<String> = (0..600).map(|i| format!("t{i:04}")).collect();
        for ts in [1_000, 2_000] {
            let rows: Vec<UsageRow> = names.iter().map(|n| row(n, ts, ts)).collect();
            s.add_usage(&rows).await.unwrap();
        }
        let slices = count(&s, "SELECT count(*) FROM raw_slices").await;
        assert_eq!(slices, 2 * 600_usize.div_ceil(16) as i64);
        s.roll_up(3_600_000).await.unwrap();
        assert_eq!(count(&s, "SELECT count(*) FROM raw_blocks").await, 256);
        assert_eq!(
            count(&s, "SELECT count(*) FROM raw_slices").await,
            slices,
            "none deleted before the window's last unit"
        );
        s.close().await;
        let s = Store::open(&path).await.unwrap();
        let mut calls = 0;
        while count(&s, "SELECT count(*) FROM raw_slices").await > 0 {
            s.roll_up(3_600_000).await.unwrap();
            calls += 1;
            assert!(calls < 10);
        }
        assert_eq!(calls, 3, "the window listed again, 256 tenants a call");
        assert_eq!(count(&s, "SELECT count(*) FROM raw_blocks").await, 600);
        for n in &names {
            let got = s.raw_usage(n, 0, 10_000).await.unwrap();
            assert_eq!(got, [row(n, 1_000, 1_000), row(n, 2_000, 2_000)], "{n}");
        }
    }

    /// A compaction slice reads and deletes its tenants' rows with one primary-key seek per
    /// sweep time over their range, never by scanning the window's rows of every tenant, and
    /// reads them in the table's order, with no sort (issue 15: at 10,000 tenants a window
    /// is compacted in 40 slices, each of which scanned and sorted the whole window).
    #[tokio::test]
    async fn a_compaction_slice_seeks_its_own_tenants_rows() {
        use super::super::rollup::delete_window_sql;
        use super::super::samples::tests::query_plan;
        use super::super::samples::usage_window_sql;
        use super::super::sla::VERDICT_WINDOW_SQL;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        let plan = |sql: String| query_plan(s.pool().clone(), sql);
        for (sql, table) in [
            (usage_window_sql().to_string(), "u"),
            (VERDICT_WINDOW_SQL.to_string(), "s"),
        ] {
            let p = plan(sql).await;
            assert!(p.contains("SEARCH t USING INTEGER PRIMARY KEY"), "{p}");
            assert!(
                p.contains(&format!(
                    "SEARCH {table} USING PRIMARY KEY (ts_ms=? AND tenant>? AND tenant<?)"
                )),
                "{p}"
            );
            assert!(!p.contains("TEMP B-TREE"), "no sort: {p}");
        }
        for table in ["usage_raw", "sla_raw"] {
            let p = plan(delete_window_sql(table)).await;
            assert!(
                p.contains(&format!(
                    "SEARCH {table} USING PRIMARY KEY (ts_ms=? AND tenant>? AND tenant<?)"
                )),
                "{p}"
            );
        }
    }

    /// Rows written into a window already compacted (the clock stepped back) are merged into
    /// its block by the next compaction; for a time both hold, the newer row wins, as INSERT
    /// OR REPLACE did.
    #[tokio::test]
    async fn rows_written_into_a_compacted_window_are_merged_into_its_block() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).await.unwrap();
        s.add_usage(&[row("a", 1_000, 1), row("a", 3_000, 3)])
            .await
            .unwrap();
        s.roll_up(3_600_000).await.unwrap();
        assert_eq!(count(&s, "SELECT count(*) FROM usage_raw").await, 0);
        s.add_usage(&[row("a", 2_000, 2), row("a", 3_000, 33)])
            .await
            .unwrap();
        let want = [row("a", 1_000, 1), row("a", 2_000, 2), row("a", 3_000, 33)];
        assert_eq!(s.raw_usage("a", 0, 10_000).await.unwrap(), want, "before");
        s.roll_up(3_600_000).await.unwrap();
        assert_eq!(count(&s, "SELECT count(*) FROM usage_raw").await, 0);
        assert_eq!(count(&s, "SELECT count(*) FROM raw_blocks").await, 1);
        assert_eq!(s.raw_usage("a", 0, 10_000).await.unwrap(), want, "after");
    }
}

/// The migration to compressed blocks (issue 15): a database in the layout before it, written
/// by the same statements the release before it used, answers every usage and SLA question
/// the same after `Store::open` (which converts nothing), while `roll_up` converts it a window
/// per call, and after it, bit for bit.
#[cfg(test)]
mod migration_tests {
    use super::compact_tests::insert_old;
    use super::*;
    use crate::domain::stats::{CgroupStats, CpuStat, MemoryStat, PressureTotals, Sample};
    use crate::domain::usage;
    use crate::domain::usage_row::{UsageEvents, UsageGauges, UsageRates};
    use crate::store::Usage;
    use crate::store::rollup::{Level, Retention};
    use crate::store::samples::{UsagePoint, f, point};

    /// Three tenants for 40 minutes at 1 s (jittered): one busy, one idle, one that starts
    /// late and misses samples; verdicts for all but the first sample of each.
    fn history() -> Vec<(Vec<UsageRow>, Vec<Verdict>)> {
        let mut x = 0x1234_5678_9abc_def0_u64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        let mut stats: Vec<CgroupStats> = (0..3)
            .map(|i| CgroupStats {
                cpu: CpuStat {
                    usage_usec: Some(1_000_000 * (i + 1)),
                    user_usec: Some(500_000),
                    system_usec: Some(200_000),
                    ..CpuStat::default()
                },
                memory_current: Some(1 << 28),
                memory_peak: (i != 1).then_some(1 << 29),
                memory: MemoryStat {
                    anon: Some(1 << 27),
                    file: Some(1 << 26),
                    inactive_file: Some(1 << 20),
                },
                cpu_pressure: Some(PressureTotals {
                    some_usec: Some(1000),
                    full_usec: Some(10),
                }),
                pids_current: Some(3),
                ..CgroupStats::default()
            })
            .collect();
        let mut prev: Vec<Option<(Sample, i64)>> = vec![None; 3];
        let mut ts = 1_800_000_000_000_i64 + 17_345;
        let mut out = Vec::new();
        for k in 0..2400 {
            ts += 1000 + rnd(9) as i64 - 4;
            let (mut rows, mut verdicts) = (Vec::new(), Vec::new());
            for (i, s) in stats.iter_mut().enumerate() {
                if i == 2 && (k < 300 || rnd(10) == 0) {
                    continue;
                }
                if i == 0 || rnd(20) == 0 {
                    let cpu = rnd(900_000);
                    s.cpu.usage_usec = s.cpu.usage_usec.map(|v| v + cpu);
                    s.cpu.user_usec = s.cpu.user_usec.map(|v| v + cpu / 3);
                    s.memory_current = Some((1 << 28) + 4096 * rnd(5000));
                    if let Some(p) = s.cpu_pressure.as_mut() {
                        p.some_usec = p.some_usec.map(|v| v + rnd(40_000));
                    }
                }
                let cur = Sample::whole(1, s.clone());
                let r = prev[i]
                    .as_ref()
                    .and_then(|(p, p_ms)| usage::rates(p, *p_ms, &cur, ts));
                let name = format!("t{i}");
                let row = UsageRow::from_sample(&name, ts, &cur, r.as_ref());
                if let Some(cores) = row.rates.cpu_cores {
                    let contended = rnd(4) == 0;
                    verdicts.push(Verdict {
                        tenant: name,
                        ts_ms: ts,
                        interval_ms: row.interval_ms.unwrap_or(1000),
                        guarantee_ratio: (i != 1).then_some(0.25),
                        delivered_ratio: (cores / 2.0).clamp(0.0, 1.0),
                        contended,
                        violating: contended && cores < 0.5,
                    });
                }
                rows.push(row);
                prev[i] = Some((cur, ts));
            }
            out.push((rows, verdicts));
        }
        out
    }

    /// The minute fold of raw usage rows of the releases before `raw_slices`, verbatim: the
    /// minutes in [?1, ?2).
    pub(super) fn old_minute_fold_sql() -> String {
        let cols = crate::store::samples::rollup_columns().join(", ");
        let mut sel = vec![
            "60".to_string(),
            "tenant".into(),
            "(ts / 60000) * 60000 AS b".into(),
            "count(*)".into(),
            "coalesce(sum(interval_ms), 0) / 1000.0".into(),
        ];
        for r in UsageRates::COLUMNS {
            sel.push(format!("sum({r} * interval_ms) / 1000.0, max({r})"));
        }
        for g in UsageGauges::COLUMNS {
            sel.push(format!("sum({g}), max({g})"));
        }
        for e in UsageEvents::COLUMNS {
            sel.push(format!("sum({e})"));
        }
        format!(
            "INSERT INTO usage_rollup ({cols}) SELECT {} FROM (SELECT *, ts_ms AS ts FROM usage_raw \
             WHERE ts_ms >= ?1 AND ts_ms < ?2) GROUP BY tenant, b ON CONFLICT DO NOTHING",
            sel.join(", ")
        )
    }

    /// The minute fold of SLA verdicts of the releases before `raw_slices`, verbatim.
    pub(super) const OLD_SLA_MINUTE_FOLD: &str =
        "INSERT INTO sla_rollup (step_s, tenant, bucket_ms, covered_s, contended_s, violation_s,
             delivered_sum, delivered_contended_sum, delivered_contended_min, guarantee_ratio)
         SELECT 60, tenant, (ts_ms / 60000) * 60000 AS b, sum(interval_ms) / 1000.0,
             sum(contended * interval_ms) / 1000.0, sum(violating * interval_ms) / 1000.0,
             sum(delivered_ratio * interval_ms) / 1000.0,
             sum(delivered_ratio * contended * interval_ms) / 1000.0,
             min(CASE WHEN contended THEN delivered_ratio END), max(guarantee_ratio)
         FROM sla_raw WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY tenant, b ON CONFLICT DO NOTHING";

    /// The raw-level usage query of the release before compressed blocks, verbatim: ?1 from,
    /// ?2 step (ms), ?3 tenant, ?4 to.
    fn old_raw_sql() -> String {
        let mut s = vec![
            "count(*) AS samples".to_string(),
            "coalesce(sum(interval_ms), 0) / 1000.0 AS covered_s".into(),
        ];
        for r in UsageRates::COLUMNS {
            s.push(format!(
                "sum({r} * interval_ms) / 1000.0 AS {r}_sum, max({r}) AS {r}_max"
            ));
        }
        for g in UsageGauges::COLUMNS {
            s.push(format!(
                "avg({g}) * count(*) AS {g}_sum, max({g}) AS {g}_max"
            ));
        }
        for e in UsageEvents::COLUMNS {
            s.push(format!("sum({e}) AS {e}"));
        }
        format!(
            "SELECT (t.ts_ms - ?1) / ?2 AS b, {} FROM sample_ticks t CROSS JOIN usage_raw u ON u.ts_ms = t.ts_ms \
             WHERE tenant = ?3 AND t.ts_ms >= ?1 AND t.ts_ms < ?4 GROUP BY b ORDER BY b",
            s.join(", ")
        )
    }

    /// The raw-level SLA bucket and share queries of the release before, verbatim.
    const OLD_SLA_SQL: &str = "SELECT (t.ts_ms / ?4) * ?4 AS b, sum(interval_ms) / 1000.0, sum(contended * interval_ms) / 1000.0,
            sum(violating * interval_ms) / 1000.0, sum(delivered_ratio * interval_ms) / 1000.0,
            sum(delivered_ratio * contended * interval_ms) / 1000.0, max(guarantee_ratio)
     FROM sample_ticks t CROSS JOIN sla_raw r ON r.ts_ms = t.ts_ms
     WHERE r.tenant = ?1 AND t.ts_ms >= ?2 AND t.ts_ms < ?3 GROUP BY b ORDER BY b";
    const OLD_SHARES_SQL: &str =
        "SELECT delivered_ratio FROM sample_ticks t CROSS JOIN sla_raw r ON r.ts_ms = t.ts_ms
     WHERE r.tenant = ?1 AND t.ts_ms >= ?2 AND t.ts_ms < ?3 AND contended = 1";

    /// What the release before answered for a raw-level usage question (its `Store::usage`).
    async fn old_raw_usage(
        pool: &sqlx::SqlitePool,
        tenant: &str,
        from_ms: i64,
        to_ms: i64,
        step_s: i64,
    ) -> Vec<UsagePoint> {
        let step_ms = step_s * 1000;
        let rows = sqlx::query(sqlx::AssertSqlSafe(old_raw_sql()))
            .bind(from_ms)
            .bind(step_ms)
            .bind(tenant)
            .bind(to_ms)
            .fetch_all(pool)
            .await
            .unwrap();
        use sqlx::Row;
        rows.iter()
            .map(|r| {
                point(
                    from_ms + r.try_get::<i64, _>("b").unwrap() * step_ms,
                    r.try_get("samples").unwrap(),
                    f(r, "covered_s").unwrap_or(0.0),
                    |c| (f(r, &format!("{c}_sum")), f(r, &format!("{c}_max"))),
                    |c| f(r, c),
                )
            })
            .collect()
    }

    type OldBucket = crate::store::sla::BucketRow;

    /// A point's values by name, to show the first that differs.
    fn entries(p: &UsagePoint) -> Vec<(&'static str, Option<f64>)> {
        let mut v = vec![
            ("samples", Some(p.samples as f64)),
            ("covered_s", Some(p.covered_s)),
        ];
        v.extend(p.rates.entries());
        v.extend(p.gauges.entries());
        v.extend(p.events.entries());
        v
    }

    #[tokio::test]
    async fn usage_and_sla_answers_are_the_same_after_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let history = history();
        let newest = history.last().unwrap().0[0].ts_ms;
        // The layout before: migrations up to 0005 only, written as the release before wrote.
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        let mut m = sqlx::migrate!("./migrations");
        m.migrations = m
            .migrations
            .iter()
            .filter(|m| m.version <= 5)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        m.run(&pool).await.unwrap();
        for (rows, verdicts) in &history {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("INSERT OR IGNORE INTO sample_ticks (ts_ms) VALUES (?1)")
                .bind(rows[0].ts_ms)
                .execute(&mut *tx)
                .await
                .unwrap();
            insert_old(&mut tx, rows, verdicts).await;
            tx.commit().await.unwrap();
        }
        let mut tx = pool.begin().await.unwrap();
        let closed = newest.div_euclid(60_000) * 60_000;
        for sql in [old_minute_fold_sql(), OLD_SLA_MINUTE_FOLD.to_string()] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(0)
                .bind(closed)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        fold_usage(&mut tx, newest).await.unwrap();
        fold_sla(&mut tx, newest).await.unwrap();
        tx.commit().await.unwrap();

        let keep = Retention::default();
        let now = newest + 1000;
        let first = history[0].0[0].ts_ms;
        // (from, to, step): whole range and parts, steps that do and do not divide a window.
        let questions: Vec<(i64, i64, i64)> = vec![
            (first, now, 1),
            (first, now, 7),
            (first - 123_456, now, 59),
            (first + 601_000, first + 1_500_000, 10),
            (first + 1_234_567, now, 3),
            (first, now, 60),
            (first, now, 300),
            (first, now, 3600),
        ];
        let mut before = Vec::new();
        let mut sla_before = Vec::new();
        for t in ["t0", "t1", "t2", "nobody"] {
            for &(from, to, step) in &questions {
                let level = keep.pick(from, step, now);
                let points = if level == Level::Raw {
                    // As `Store::usage` rounds them for the raw level (1 s).
                    old_raw_usage(&pool, t, from.div_euclid(1000) * 1000, to, step).await
                } else {
                    Vec::new() // rollups are not converted: compared below as they are
                };
                before.push((t, from, to, step, level, points));
                let ms = 10_000;
                let b: Vec<OldBucket> = sqlx::query_as(OLD_SLA_SQL)
                    .bind(t)
                    .bind(from)
                    .bind(to)
                    .bind(ms)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                let s: Vec<f64> = sqlx::query_scalar(OLD_SHARES_SQL)
                    .bind(t)
                    .bind(from)
                    .bind(to)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                sla_before.push((t, from, to, b, s));
            }
        }
        let rollups_before: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_rollup")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;

        // Open: migration 0006; the answers are the same before the conversion, while it
        // runs (a window per roll_up, as the sampler calls it once a minute) and after it.
        let store = Store::open(&path).await.unwrap();
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(store.pool());
        let blocks = count("SELECT count(*) FROM raw_blocks").await.unwrap();
        assert_eq!(
            blocks, 0,
            "opening converts nothing: the sampler's roll_up does"
        );
        let check = async |store: &Store| {
            for (t, from, to, step, level, points) in &before {
                let u: Usage = store.usage(t, *from, *to, *step, now, &keep).await.unwrap();
                assert_eq!(u.level, *level);
                if *level == Level::Raw {
                    assert!(!points.is_empty() || *t == "nobody" || *from > now);
                    assert_eq!(
                        u.points.len(),
                        points.len(),
                        "{t} from {from} to {to} step {step}"
                    );
                    for (a, b) in u.points.iter().zip(points) {
                        let (ea, eb) = (entries(a), entries(b));
                        for (x, y) in ea.iter().zip(&eb) {
                            assert_eq!(x, y, "{t} from {from} to {to} step {step} at {}", b.ts_ms);
                        }
                        assert_eq!(a, b);
                    }
                }
            }
            for (t, from, to, b, shares) in &sla_before {
                let got = store.raw_verdicts(t, *from, *to).await.unwrap();
                let (buckets, s) = crate::store::sla::raw_buckets(&got, 10_000);
                assert_eq!(&buckets, b, "{t} from {from} to {to}");
                assert_eq!(&s, shares, "{t} from {from} to {to}");
            }
        };
        check(&store).await;
        let mut calls = 0;
        let mut last = -1;
        loop {
            store.roll_up(now).await.unwrap();
            calls += 1;
            let blocks = count("SELECT count(*) FROM raw_blocks").await.unwrap();
            if calls == 1 {
                check(&store).await;
            }
            if blocks == last {
                break;
            }
            last = blocks;
        }
        assert!(calls > 2, "one window per call: {calls} calls");
        let (raw_left, blocks) = (
            count("SELECT count(*) FROM usage_raw").await.unwrap(),
            count("SELECT count(*) FROM raw_blocks").await.unwrap(),
        );
        assert!(blocks >= 3 * 2, "{blocks} blocks");
        assert!(
            raw_left < 3 * 1300 && raw_left > 0,
            "the last 10-20 minutes stay raw: {raw_left} rows"
        );
        assert_eq!(
            count("SELECT count(*) FROM usage_rollup").await.unwrap(),
            rollups_before
        );
        check(&store).await;
        // Reopening changes nothing.
        store.close().await;
        let again = Store::open(&path).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_raw")
            .fetch_one(again.pool())
            .await
            .unwrap();
        assert_eq!(n, raw_left);
    }
}
