//! Raw usage held in memory and written as compressed chunks (issue 15, sampling cost): the
//! sampler no longer writes a raw row per tenant per second and compacts it later. Each
//! tenant's samples of its current chunk period (`CHUNK_MS`) are held column-coded
//! (`domain::usage_block::HeldRows`, a few bytes a sample); when the period ends the rows are
//! written as ONE compressed chunk (`encode_usage`, the block codec) into `raw_chunks`, and
//! the compaction folds a closed window's chunks into its block. Every tenant's periods are
//! shifted by a phase of its own, so each sweep writes about a tenth of the tenants' chunks
//! (the end of a 10-minute window, which a chunk never crosses, writes the rest), in
//! transactions of at most `CHUNKS_PER_TX`.
//!
//! A crash loses the rows held: those of the tenant's current period, all younger than
//! `CHUNK_MS` (9 s, so at most the promised 10 s at a 1 s interval). A raw read
//! (`Store::raw_usage`) answers from the store and from the rows held, never by flushing.

use super::rollup::{BLOCK_MS, merge_by_time};
use super::{Result, StoreError, bind, q, statement_chunks, values_sql};
use crate::domain::usage_block::{BlockError, HeldRows, decode_usage, encode_usage};
use crate::domain::usage_row::UsageRow;
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteArguments;
use std::collections::HashMap;

/// The length of a chunk period: a tenant's rows are written once its period ends, so a
/// crash loses at most the rows of this long (plus the one sweep that was writing).
pub(super) const CHUNK_MS: i64 = 9_000;

/// Chunks one write transaction holds at most: a short write lock even when a window's end
/// writes every tenant's chunk.
pub(super) const CHUNKS_PER_TX: usize = 500;

/// Chunks still unwritten per tenant (the store failing, e.g. a full disk) beyond which the
/// oldest is dropped: memory stays bounded; the loss is logged.
const MAX_UNWRITTEN: usize = 8;

/// A chunk to write: the tenant, the time of its first row, the encoded rows.
pub(super) type Chunk = (String, i64, Vec<u8>);

/// One tenant's rows held: the current period's, and chunks made but not committed yet.
#[derive(Debug, Default)]
struct HeldTenant {
    rows: HeldRows,
    /// Closed periods being (or failing to be) written, oldest first; removed once committed.
    writing: Vec<HeldRows>,
    /// The tenant's phase in ms: its periods are [k * CHUNK_MS - phase, ...).
    phase: i64,
    /// The time of the last row pushed.
    last_ms: i64,
}

/// Every tenant's rows held, shared by the sampler (which pushes and writes) and the readers.
#[derive(Debug, Default)]
pub struct Held {
    tenants: HashMap<String, HeldTenant>,
}

/// A stable phase for `tenant` in [0, CHUNK_MS), in whole seconds (FNV-1a of the name).
fn phase_of(tenant: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % (CHUNK_MS as u64 / 1000)) as i64 * 1000
}

/// The period of a time for a tenant of phase `phase`, and its 10-minute window: rows of one
/// chunk share both.
fn slot(ts_ms: i64, phase: i64) -> (i64, i64) {
    (
        (ts_ms + phase).div_euclid(CHUNK_MS),
        ts_ms.div_euclid(BLOCK_MS),
    )
}

impl HeldTenant {
    /// Moves the current rows to `writing` as a chunk; returns it encoded.
    fn close(&mut self, tenant: &str) -> Option<Chunk> {
        let first = self.rows.first_ts()?;
        let rows = std::mem::take(&mut self.rows);
        let chunk = (tenant.to_string(), first, encode_usage(&rows.rows(tenant)));
        self.writing.push(rows);
        if self.writing.len() > MAX_UNWRITTEN {
            let lost = self.writing.remove(0);
            tracing::warn!(
                "usage sampler: {} raw samples of tenant '{tenant}' dropped: the store has not taken its chunks for {} periods",
                lost.len(),
                MAX_UNWRITTEN
            );
        }
        Some(chunk)
    }
}

impl Held {
    /// Holds one sweep's rows (one per tenant, later than any held). Returns the chunks to
    /// write now: those of tenants whose period ends with this sweep (the next sample, one
    /// interval later, falls into another period or window) or ended before it, and those of
    /// chunks not written before (a failed write is retried).
    pub(super) fn push(&mut self, rows: &[UsageRow]) -> Vec<Chunk> {
        // Chunks a failed write left: written again, oldest first.
        let mut out = self.unwritten();
        for r in rows {
            let t = match self.tenants.get_mut(r.tenant.as_str()) {
                Some(t) => t,
                None => self
                    .tenants
                    .entry(r.tenant.clone())
                    .or_insert_with(|| HeldTenant {
                        phase: phase_of(&r.tenant),
                        ..HeldTenant::default()
                    }),
            };
            let now = slot(r.ts_ms, t.phase);
            if t.rows.first_ts().is_some_and(|f| slot(f, t.phase) != now) {
                out.extend(t.close(&r.tenant));
            }
            t.rows.push(r);
            t.last_ms = r.ts_ms;
            let next = r.ts_ms + r.interval_ms.unwrap_or(1000).max(1);
            if slot(next, t.phase) != now {
                out.extend(t.close(&r.tenant));
            }
        }
        // A tenant no longer sampled (deleted) is forgotten once nothing of it is held.
        if let Some(ts) = rows.first().map(|r| r.ts_ms) {
            self.tenants
                .retain(|_, t| t.last_ms == ts || !t.rows.is_empty() || !t.writing.is_empty());
        }
        out
    }

    /// Every tenant's held rows as chunks, to write at shutdown.
    pub(super) fn close_all(&mut self) -> Vec<Chunk> {
        let mut out = self.unwritten();
        for (name, t) in self.tenants.iter_mut() {
            out.extend(t.close(name));
        }
        out
    }

    /// The chunks made but not committed (a failed write), each tenant's oldest first.
    fn unwritten(&self) -> Vec<Chunk> {
        let mut out = Vec::new();
        for (name, t) in &self.tenants {
            for w in &t.writing {
                if let Some(first) = w.first_ts() {
                    out.push((name.clone(), first, encode_usage(&w.rows(name))));
                }
            }
        }
        out
    }

    /// Forgets the chunks of `written` (committed): each tenant's oldest unwritten chunk
    /// starting at that time.
    pub(super) fn written(&mut self, written: &[Chunk]) {
        for (name, first, _) in written {
            if let Some(t) = self.tenants.get_mut(name) {
                t.writing.retain(|w| w.first_ts() != Some(*first));
            }
        }
    }

    /// `tenant`'s rows held in [from_ms, to_ms), in time order.
    pub(super) fn rows(&self, tenant: &str, (from_ms, to_ms): (i64, i64)) -> Vec<UsageRow> {
        let Some(t) = self.tenants.get(tenant) else {
            return Vec::new();
        };
        t.writing
            .iter()
            .chain(std::iter::once(&t.rows))
            .filter(|h| h.first_ts().is_some_and(|f| f < to_ms))
            .flat_map(|h| h.rows(tenant))
            .filter(|r| (from_ms..to_ms).contains(&r.ts_ms))
            .collect()
    }

    /// The rows held in [from_ms, to_ms) of the tenants in [first, last], by tenant.
    pub(super) fn all_rows(
        &self,
        (from_ms, to_ms): (i64, i64),
        (first, last): (&str, &str),
    ) -> HashMap<String, Vec<UsageRow>> {
        self.tenants
            .keys()
            .filter(|n| (first..=last).contains(&n.as_str()))
            .map(|n| (n.clone(), self.rows(n, (from_ms, to_ms))))
            .filter(|(_, r)| !r.is_empty())
            .collect()
    }

    /// The tenants with rows held from before `to_ms`.
    pub(super) fn names_before(&self, to_ms: i64) -> Vec<String> {
        self.tenants
            .iter()
            .filter(|(_, t)| {
                t.writing
                    .iter()
                    .chain(std::iter::once(&t.rows))
                    .any(|h| h.first_ts().is_some_and(|f| f < to_ms))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The time of the oldest row held.
    pub(super) fn oldest(&self) -> Option<i64> {
        self.tenants
            .values()
            .flat_map(|t| t.writing.iter().chain(std::iter::once(&t.rows)))
            .filter_map(HeldRows::first_ts)
            .min()
    }

    /// Rows and bytes held (for the tests and the log).
    pub fn size(&self) -> (usize, usize) {
        self.tenants
            .values()
            .flat_map(|t| t.writing.iter().chain(std::iter::once(&t.rows)))
            .fold((0, 0), |(n, b), h| (n + h.len(), b + h.heap_bytes()))
    }
}

/// Writes chunks in multi-row INSERTs of at most `ROWS_PER_INSERT` (INSERT OR REPLACE: a
/// chunk written again after a failed commit replaces itself). One statement per chunk cost
/// a round trip to SQLite's thread each, more than the raw rows it replaces.
pub(super) async fn insert_chunks(tx: &mut SqliteConnection, chunks: &[Chunk]) -> Result<()> {
    const OP: &str = "write raw chunks";
    const HEAD: &str = "INSERT OR REPLACE INTO raw_chunks (tenant, start_ms, usage)";
    for part in statement_chunks(chunks, ROWS_PER_INSERT) {
        let mut a = SqliteArguments::default();
        for (tenant, first, usage) in part {
            bind(&mut a, tenant.as_str(), OP)?;
            bind(&mut a, *first, OP)?;
            bind(&mut a, usage.as_slice(), OP)?;
        }
        let sql = values_sql(HEAD, 3, part.len());
        sqlx::query_with(sqlx::AssertSqlSafe(sql), a)
            .execute(&mut *tx)
            .await
            .map_err(q(OP))?;
    }
    Ok(())
}

/// Chunks per multi-row INSERT.
const ROWS_PER_INSERT: usize = 256;

fn corrupt(tenant: &str) -> impl Fn(BlockError) -> StoreError + '_ {
    move |e| StoreError::Corrupt {
        name: tenant.to_string(),
        why: e.to_string(),
    }
}

/// A tenant's rows in its chunks that fall in [from_ms, to_ms), in time order. A chunk spans
/// less than `CHUNK_MS`, so one range of its key finds them.
pub(super) async fn read_chunks(
    tx: &mut SqliteConnection,
    tenant: &str,
    (from_ms, to_ms): (i64, i64),
) -> Result<Vec<UsageRow>> {
    let blobs: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT usage FROM raw_chunks WHERE tenant = ?1 AND start_ms > ?2 AND start_ms < ?3
         ORDER BY start_ms",
    )
    .bind(tenant)
    .bind(from_ms - CHUNK_MS)
    .bind(to_ms)
    .fetch_all(&mut *tx)
    .await
    .map_err(q("read raw chunks"))?;
    let mut rows = Vec::new();
    for b in blobs {
        let decoded = decode_usage(tenant, &b).map_err(corrupt(tenant))?;
        rows = merge_by_time(
            rows,
            decoded
                .into_iter()
                .filter(|r| (from_ms..to_ms).contains(&r.ts_ms))
                .collect(),
            |r| r.ts_ms,
        );
    }
    Ok(rows)
}

/// The rows of the chunks of the tenants in [first, last] that start in [from_ms, to_ms),
/// by tenant, each in time order: what a compaction or a fold reads. A chunk never crosses a
/// 10-minute window, so a window's chunks hold exactly its rows.
pub(super) async fn chunks_in(
    tx: &mut SqliteConnection,
    (from_ms, to_ms): (i64, i64),
    (first, last): (&str, &str),
) -> Result<HashMap<String, Vec<UsageRow>>> {
    let blobs: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT tenant, usage FROM raw_chunks WHERE tenant >= ?3 AND tenant <= ?4
         AND start_ms >= ?1 AND start_ms < ?2 ORDER BY tenant, start_ms",
    )
    .bind(from_ms)
    .bind(to_ms)
    .bind(first)
    .bind(last)
    .fetch_all(&mut *tx)
    .await
    .map_err(q("read raw chunks"))?;
    let mut out: HashMap<String, Vec<UsageRow>> = HashMap::new();
    for (tenant, b) in blobs {
        let decoded = decode_usage(&tenant, &b).map_err(corrupt(&tenant))?;
        let rows = out.remove(&tenant).unwrap_or_default();
        let merged = merge_by_time(rows, decoded, |r| r.ts_ms);
        out.insert(tenant, merged);
    }
    Ok(out)
}

/// Deletes the chunks of the tenants in [first, last] that start in [from_ms, to_ms).
pub(super) async fn delete_chunks(
    tx: &mut SqliteConnection,
    (from_ms, to_ms): (i64, i64),
    (first, last): (&str, &str),
) -> Result<()> {
    sqlx::query(
        "DELETE FROM raw_chunks WHERE tenant >= ?3 AND tenant <= ?4
         AND start_ms >= ?1 AND start_ms < ?2",
    )
    .bind(from_ms)
    .bind(to_ms)
    .bind(first)
    .bind(last)
    .execute(&mut *tx)
    .await
    .map_err(q("delete raw chunks"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::usage_row::UsageCounters;

    fn row(t: &str, ts: i64, v: i64) -> UsageRow {
        UsageRow {
            tenant: t.into(),
            ts_ms: ts,
            interval_ms: Some(1000),
            counters: UsageCounters {
                cpu_usage_usec: Some(v),
                ..Default::default()
            },
            ..UsageRow::default()
        }
    }

    /// At 1 s, a tenant's rows are written as chunks of at most 9, never across a period or a
    /// window, and about a ninth of many tenants write per sweep: the writes are spread.
    #[test]
    fn chunks_close_with_their_period_and_are_spread_over_the_sweeps() {
        let mut h = Held::default();
        let names: Vec<String> = (0..900).map(|i| format!("t{i:04}")).collect();
        let start = 1_800_000_000_000_i64 / BLOCK_MS * BLOCK_MS + BLOCK_MS - 30_000;
        let mut per_sweep = Vec::new();
        let mut written: HashMap<String, Vec<UsageRow>> = HashMap::new();
        for k in 0..60 {
            let ts = start + k * 1000 + 3;
            let rows: Vec<UsageRow> = names.iter().map(|n| row(n, ts, k)).collect();
            let chunks = h.push(&rows);
            per_sweep.push(chunks.len());
            for (t, first, blob) in &chunks {
                let back = decode_usage(t, blob).unwrap();
                assert_eq!(back[0].ts_ms, *first);
                assert!(back.len() <= 9, "{} rows in one chunk", back.len());
                let (p, w) = slot(back[0].ts_ms, phase_of(t));
                assert!(back.iter().all(|r| slot(r.ts_ms, phase_of(t)) == (p, w)));
                written.entry(t.clone()).or_default().extend(back);
            }
            h.written(&chunks);
            // What is held is younger than a period.
            assert!(h.oldest().is_none_or(|o| ts - o < CHUNK_MS));
        }
        // The window ends 30 s in: every tenant writes then; otherwise a ninth or so.
        let boundary = 29;
        assert_eq!(per_sweep[boundary], 900, "{per_sweep:?}");
        for (k, n) in per_sweep.iter().enumerate().skip(10) {
            if k != boundary {
                assert!(*n < 300, "sweep {k} wrote {n} chunks: {per_sweep:?}");
            }
        }
        // Every row is written or held, once, in order.
        for n in &names {
            let mut all = written.remove(n).unwrap_or_default();
            all.extend(h.rows(n, (0, i64::MAX)));
            let ks: Vec<i64> = all
                .iter()
                .map(|r| r.counters.cpu_usage_usec.unwrap())
                .collect();
            assert_eq!(ks, (0..60).collect::<Vec<_>>(), "{n}");
        }
        let (rows, bytes) = h.size();
        assert!(
            rows > 0 && bytes < rows * 64,
            "{rows} rows in {bytes} bytes"
        );
    }

    /// A chunk whose write failed is held and written again with the next sweep's; it is
    /// readable meanwhile.
    #[test]
    fn a_failed_write_is_retried_and_stays_readable() {
        let mut h = Held::default();
        let mut failed = Vec::new();
        let mut k = 0;
        while failed.is_empty() {
            failed = h.push(&[row("a", 1_000_000 + k * 1000, k)]);
            k += 1;
        }
        // Not acknowledged: the next push writes it again.
        let again = h.push(&[row("a", 1_000_000 + k * 1000, k)]);
        assert_eq!(again[0], failed[0]);
        assert_eq!(h.rows("a", (0, i64::MAX)).len() as i64, k + 1);
        h.written(&again);
        assert_eq!(
            h.rows("a", (0, i64::MAX)).len() as i64,
            k + 1 - decode_usage("a", &failed[0].2).unwrap().len() as i64
        );
        let rest = h.close_all();
        h.written(&rest);
        assert_eq!(h.size(), (0, 0));
    }
}
