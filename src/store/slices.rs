//! The raw rows of each sweep as `raw_slices` rows (migrations/0009_raw_slices.sql): one body
//! (`domain::raw_slice`) per sweep time and run of `SLICE_TENANTS` tenants, written, found
//! again for one tenant, read for a compaction or a fold, and deleted, all by direct SQLite
//! calls (`store::direct`).

use super::Result;
use super::direct::{Direct, Stmt, blocking, query_rows};
use super::rollup::corrupt;
use crate::domain::raw_slice::{self, Entry, SLICE_TENANTS};
use crate::domain::sla_engine::Verdict;
use crate::domain::usage_block::BlockError;
use crate::domain::usage_row::UsageRow;
use sqlx::SqliteConnection;
use std::borrow::Borrow;
use std::ops::Range;

/// One tenant's parts at one time, their bytes in an arena (`Parts::bytes`).
#[derive(Clone)]
struct Item {
    ts_ms: i64,
    name: Range<usize>,
    usage: Option<Range<usize>>,
    verdict: Option<Range<usize>>,
}

/// A sweep's entries before they are cut into slices: every name and part in one buffer, so
/// 10,000 tenants cost two allocations, not 20,000.
#[derive(Default)]
struct Parts {
    bytes: Vec<u8>,
    items: Vec<Item>,
}

impl Parts {
    fn push_bytes(&mut self, b: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        start..self.bytes.len()
    }

    fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
        let start = self.bytes.len();
        f(&mut self.bytes);
        start..self.bytes.len()
    }

    fn name(&self, i: &Item) -> &[u8] {
        &self.bytes[i.name.clone()]
    }

    fn entry(&self, i: &Item) -> Entry<'_> {
        Entry {
            // Pushed from `&str`s only.
            tenant: std::str::from_utf8(self.name(i)).unwrap_or_default(),
            usage: i.usage.clone().map(|r| &self.bytes[r]),
            verdict: i.verdict.clone().map(|r| &self.bytes[r]),
        }
    }
}

/// Writes one sweep's usage rows (taken as they come) and verdicts as slices: per sample time,
/// the tenants in name order cut into runs of `SLICE_TENANTS`, one row each. A time that
/// already has slices (a second write of the same sweep time) has them merged: a tenant's
/// part written last wins, as `INSERT OR REPLACE` of the raw tables did. Returns the distinct
/// sample times, in order.
pub(super) async fn insert_slices<R: Borrow<UsageRow>>(
    tx: &mut SqliteConnection,
    rows: impl Iterator<Item = R>,
    verdicts: &[Verdict],
) -> Result<Vec<i64>> {
    const OP: &str = "write raw slices";
    let mut p = Parts::default();
    for r in rows {
        let r = r.borrow();
        let name = p.push_bytes(r.tenant.as_bytes());
        let usage = Some(p.push_with(|b| raw_slice::put_usage(b, r)));
        p.items.push(Item {
            ts_ms: r.ts_ms,
            name,
            usage,
            verdict: None,
        });
    }
    for v in verdicts {
        let name = p.push_bytes(v.tenant.as_bytes());
        let verdict = Some(p.push_with(|b| raw_slice::put_verdict(b, v)));
        p.items.push(Item {
            ts_ms: v.ts_ms,
            name,
            usage: None,
            verdict,
        });
    }
    if p.items.is_empty() {
        return Ok(Vec::new());
    }
    let d = Direct::lock(tx, OP).await?;
    blocking(|| {
        let mut existing = d.prepare("SELECT rowid, body FROM raw_slices WHERE ts_ms = ?1", OP)?;
        let old: Vec<(i64, i64, Vec<u8>)> = {
            let mut ticks: Vec<i64> = p.items.iter().map(|i| i.ts_ms).collect();
            ticks.sort_unstable();
            ticks.dedup();
            let mut old = Vec::new();
            for ts in ticks {
                existing.bind(1, ts)?;
                while existing.step()? {
                    old.push((ts, existing.int(0).unwrap_or(0), existing.blob(1).to_vec()));
                }
                existing.reset();
            }
            old
        };
        drop(existing);
        // Earlier writes of the same times first: a stable sort keeps them before the new
        // parts, which win below. (Without any, the sweep's own items are sorted in place:
        // no second list of 10,000 entries.)
        let fresh = std::mem::take(&mut p.items);
        if !old.is_empty() {
            let mut delete = d.prepare("DELETE FROM raw_slices WHERE rowid = ?1", OP)?;
            for (ts, rowid, body) in &old {
                for e in raw_slice::entries(body).map_err(corrupt("raw slice"))? {
                    let name = p.push_bytes(e.tenant.as_bytes());
                    let usage = e.usage.map(|u| p.push_bytes(u));
                    let verdict = e.verdict.map(|v| p.push_bytes(v));
                    p.items.push(Item {
                        ts_ms: *ts,
                        name,
                        usage,
                        verdict,
                    });
                }
                delete.bind(1, *rowid)?;
                delete.execute()?;
            }
        }
        let mut merged = if p.items.is_empty() {
            fresh
        } else {
            p.items.extend(fresh);
            std::mem::take(&mut p.items)
        };
        merged.sort_by(|a, b| (a.ts_ms, p.name(a)).cmp(&(b.ts_ms, p.name(b))));
        // One item per (time, tenant), the later parts over the earlier.
        merged.dedup_by(|later, kept| {
            let same = later.ts_ms == kept.ts_ms && p.name(later) == p.name(kept);
            if same {
                kept.usage = later.usage.take().or(kept.usage.take());
                kept.verdict = later.verdict.take().or(kept.verdict.take());
            }
            same
        });
        let mut insert = d.prepare(
            "INSERT INTO raw_slices (ts_ms, first_tenant, last_tenant, body) VALUES (?1, ?2, ?3, ?4)",
            OP,
        )?;
        let mut ticks = Vec::new();
        for same_time in merged.chunk_by(|a, b| a.ts_ms == b.ts_ms) {
            ticks.push(same_time[0].ts_ms);
            for run in same_time.chunks(SLICE_TENANTS) {
                let entries: Vec<Entry<'_>> = run.iter().map(|i| p.entry(i)).collect();
                let body = raw_slice::encode_slice(&entries);
                insert.bind(1, run[0].ts_ms)?;
                insert.bind(2, entries[0].tenant)?;
                insert.bind(3, entries[entries.len() - 1].tenant)?;
                insert.bind(4, body.as_slice())?;
                insert.execute()?;
            }
        }
        Ok(ticks)
    })
}

/// A tenant's slice at each sweep time in [?2, ?3) (?1 = the tenant): the one of greatest
/// first tenant not after its name, one index seek per time.
pub(super) const TAIL_SQL: &str = "SELECT t.ts_ms, (SELECT s.body FROM raw_slices s
     WHERE s.ts_ms = t.ts_ms AND s.first_tenant <= ?1 ORDER BY s.first_tenant DESC LIMIT 1)
     FROM sample_ticks t WHERE t.ts_ms >= ?2 AND t.ts_ms < ?3 ORDER BY t.ts_ms";

/// Which part of an entry a reader wants, and how it decodes.
pub(super) trait Part: Sized {
    fn bytes<'a>(e: &Entry<'a>) -> Option<&'a [u8]>;
    fn decode(tenant: &str, ts_ms: i64, part: &[u8]) -> std::result::Result<Self, BlockError>;
}

impl Part for UsageRow {
    fn bytes<'a>(e: &Entry<'a>) -> Option<&'a [u8]> {
        e.usage
    }
    fn decode(tenant: &str, ts_ms: i64, part: &[u8]) -> std::result::Result<Self, BlockError> {
        raw_slice::usage_row(tenant, ts_ms, part)
    }
}

impl Part for Verdict {
    fn bytes<'a>(e: &Entry<'a>) -> Option<&'a [u8]> {
        e.verdict
    }
    fn decode(tenant: &str, ts_ms: i64, part: &[u8]) -> std::result::Result<Self, BlockError> {
        raw_slice::verdict(tenant, ts_ms, part)
    }
}

/// `tenant`'s part `T` in the slices of [from_ms, to_ms), in time order.
pub(super) async fn tenant_tail<T: Part>(
    tx: &mut SqliteConnection,
    tenant: &str,
    (from_ms, to_ms): (i64, i64),
) -> Result<Vec<T>> {
    let found = query_rows(
        tx,
        TAIL_SQL,
        "read raw slices",
        |st| {
            st.bind(1, tenant)?;
            st.bind(2, from_ms)?;
            st.bind(3, to_ms)
        },
        |st| -> std::result::Result<Option<T>, BlockError> {
            let body = st.blob(1);
            if body.is_empty() {
                return Ok(None);
            }
            let entries = raw_slice::entries(body)?;
            let Ok(i) = entries.binary_search_by(|e| e.tenant.cmp(tenant)) else {
                return Ok(None);
            };
            T::bytes(&entries[i])
                .map(|b| T::decode(tenant, st.int(0).unwrap_or(0), b))
                .transpose()
        },
    )
    .await?;
    let mut out = Vec::with_capacity(found.len());
    for f in found {
        out.extend(f.map_err(corrupt(tenant))?);
    }
    Ok(out)
}

/// Calls `f` with every entry of every slice of [from_ms, to_ms), in time order (then name
/// order), one body decoded at a time: what a fold from raw reads.
pub(super) async fn for_each_entry(
    tx: &mut SqliteConnection,
    (from_ms, to_ms): (i64, i64),
    mut f: impl FnMut(i64, &Entry<'_>) -> Result<()>,
) -> Result<()> {
    let results = query_rows(
        tx,
        "SELECT ts_ms, body FROM raw_slices WHERE ts_ms >= ?1 AND ts_ms < ?2
         ORDER BY ts_ms, first_tenant",
        "read raw slices",
        |st| {
            st.bind(1, from_ms)?;
            st.bind(2, to_ms)
        },
        |st| -> Result<()> {
            let ts = st.int(0).unwrap_or(0);
            for e in raw_slice::entries(st.blob(1)).map_err(corrupt("raw slice"))? {
                f(ts, &e)?;
            }
            Ok(())
        },
    )
    .await?;
    results.into_iter().collect()
}

/// The bytes of slices a compaction unit reads at once, at most (as estimated by
/// `window_units`): 16 tenants' window of 10 minutes decoded into rows was about 6 MB, and a
/// unit of one run read each page of the window's slices once per run it holds (a dozen idle
/// runs share a page).
const UNIT_BYTES: i64 = 4 << 20;

/// Runs of slices (of `SLICE_TENANTS` tenants) a compaction unit takes at most: a bound on
/// the bytes a unit reads whatever the estimate (16 busy runs' window is about 26 MB; idle
/// runs of 10,000 tenants fill `UNIT_BYTES` with 13). One in the
/// unit tests, whose windows of a few hundred tenants and sweeps would be one unit: they
/// check how a window is spread over calls and transactions with many units (`units` has a
/// test of its own).
#[cfg(not(test))]
const UNIT_RUNS: usize = 16;
#[cfg(test)]
const UNIT_RUNS: usize = 1;

/// The runs of slices in [start_ms, end_ms) cut into compaction units, each its first and
/// last run's first tenant: consecutive runs whose slices of the window hold about
/// `UNIT_BYTES` together, by the larger of each run's sizes at the window's first and last
/// sweep times (see `units`).
pub(super) async fn window_units(
    tx: &mut SqliteConnection,
    (start_ms, end_ms): (i64, i64),
) -> Result<Vec<(String, String)>> {
    const OP: &str = "list the slices of a raw window";
    let d = Direct::lock(tx, OP).await?;
    blocking(|| {
        let window = |st: &mut Stmt<'_>| -> Result<()> {
            st.bind(1, start_ms)?;
            st.bind(2, end_ms)
        };
        let mut st = d.prepare(
            "SELECT DISTINCT first_tenant FROM raw_slices WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY 1",
            OP,
        )?;
        window(&mut st)?;
        let mut keys = Vec::new();
        while st.step()? {
            keys.push(st.text(0));
        }
        let mut st = d.prepare(
            "SELECT first_tenant, max(length(body)) FROM raw_slices WHERE ts_ms IN
             ((SELECT min(ts_ms) FROM raw_slices WHERE ts_ms >= ?1 AND ts_ms < ?2),
              (SELECT max(ts_ms) FROM raw_slices WHERE ts_ms >= ?1 AND ts_ms < ?2))
             GROUP BY first_tenant ORDER BY 1",
            OP,
        )?;
        window(&mut st)?;
        let mut sizes = Vec::new();
        while st.step()? {
            sizes.push((st.text(0), st.int(1).unwrap_or(0)));
        }
        let mut st = d.prepare(
            "SELECT count(*) FROM sample_ticks WHERE ts_ms >= ?1 AND ts_ms < ?2",
            OP,
        )?;
        window(&mut st)?;
        let ticks = if st.step()? {
            st.int(0).unwrap_or(0)
        } else {
            0
        };
        Ok(units(keys, &sizes, ticks, UNIT_BYTES, UNIT_RUNS))
    })
}

/// `keys` (sorted) cut into consecutive units whose slices over `ticks` sweeps hold at most
/// `budget` bytes, as estimated from `sizes` (a run's size at one sweep, sorted by key; the
/// mean of those for a run not there), and at most `max_runs` runs; a run bigger than the
/// budget is a unit of its own. Each unit as its first and last key.
fn units(
    keys: Vec<String>,
    sizes: &[(String, i64)],
    ticks: i64,
    budget: i64,
    max_runs: usize,
) -> Vec<(String, String)> {
    let mean = match sizes.len() {
        0 => 0,
        n => sizes.iter().map(|s| s.1).sum::<i64>() / n as i64,
    };
    let mut sized = sizes.iter().peekable();
    let mut out: Vec<(String, String)> = Vec::new();
    let (mut bytes, mut runs) = (0_i64, 0_usize);
    for key in keys {
        while sized.next_if(|s| s.0 < key).is_some() {}
        let size = sized.next_if(|s| s.0 == key).map_or(mean, |s| s.1);
        let cost = size.saturating_mul(ticks.max(1));
        match out.last_mut() {
            Some(unit) if runs < max_runs && bytes.saturating_add(cost) <= budget => {
                unit.1 = key;
                bytes += cost;
                runs += 1;
            }
            _ => {
                out.push((key.clone(), key));
                (bytes, runs) = (cost, 1);
            }
        }
    }
    out
}

/// The slices of the runs whose first tenant lies in [?3, ?4], in [?1, ?2): one index seek
/// per sweep time, then the runs in name order.
pub(super) const TAKE_SQL: &str =
    "SELECT s.rowid, s.ts_ms, s.body FROM sample_ticks t CROSS JOIN raw_slices s
     ON s.ts_ms = t.ts_ms AND s.first_tenant >= ?3 AND s.first_tenant <= ?4
     WHERE t.ts_ms >= ?1 AND t.ts_ms < ?2 ORDER BY t.ts_ms, s.first_tenant";

/// The slices of a compaction unit, read at once: their bodies one after another in one
/// buffer (not an allocation each), each slice's time and place in it, and their rowids (for
/// `delete_rows` once moved).
#[derive(Default)]
pub(super) struct Taken {
    bytes: Vec<u8>,
    at: Vec<(i64, Range<usize>)>,
    pub(super) rowids: Vec<i64>,
}

impl Taken {
    /// Each slice's time and body, in time order, those of one time in name order.
    pub(super) fn slices(&self) -> Vec<(i64, &[u8])> {
        self.at
            .iter()
            .map(|(ts, r)| (*ts, &self.bytes[r.clone()]))
            .collect()
    }
}

/// The slices of [start_ms, end_ms) whose first tenant lies in [first, last] (a unit of
/// `window_units`).
pub(super) fn take_runs(
    d: &Direct<'_>,
    (start_ms, end_ms): (i64, i64),
    (first, last): (&str, &str),
) -> Result<Taken> {
    let mut st = d.prepare(TAKE_SQL, "read a window of raw slices")?;
    st.bind(1, start_ms)?;
    st.bind(2, end_ms)?;
    st.bind(3, first)?;
    st.bind(4, last)?;
    let mut t = Taken::default();
    while st.step()? {
        t.rowids.push(st.int(0).unwrap_or(0));
        let ts = st.int(1).unwrap_or(0);
        let start = t.bytes.len();
        t.bytes.extend_from_slice(st.blob(2));
        t.at.push((ts, start..t.bytes.len()));
    }
    Ok(t)
}

/// The runs of consecutive integers in `sorted`, as (first, last).
fn runs(sorted: &[i64]) -> impl Iterator<Item = (i64, i64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *sorted.get(i)?;
        let mut last = first;
        i += 1;
        while sorted.get(i) == Some(&(last + 1)) {
            last += 1;
            i += 1;
        }
        Some((first, last))
    })
}

/// Deletes the slices of `rowids` (moved into blocks), sorted: each run of consecutive
/// rowids with one statement, so a whole window's slices go in page order.
pub(super) async fn delete_rows(tx: &mut SqliteConnection, rowids: &[i64]) -> Result<()> {
    const OP: &str = "delete compacted raw slices";
    let d = Direct::lock(tx, OP).await?;
    blocking(|| {
        let mut st = d.prepare("DELETE FROM raw_slices WHERE rowid BETWEEN ?1 AND ?2", OP)?;
        for (first, last) in runs(rowids) {
            st.bind(1, first)?;
            st.bind(2, last)?;
            st.execute()?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::{runs, units};

    #[test]
    fn units_hold_runs_up_to_the_budget() {
        let keys = |v: &[&str]| v.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let sizes = |v: &[(&str, i64)]| {
            v.iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect::<Vec<_>>()
        };
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(units(Vec::new(), &[], 600, 1000, 4), []);
        // 10 bytes a sweep, 10 sweeps: 100 bytes a run, 3 runs in 300 bytes.
        let k = keys(&["a", "b", "c", "d", "e", "f", "g"]);
        let s = sizes(&[
            ("a", 10),
            ("b", 10),
            ("c", 10),
            ("d", 10),
            ("e", 10),
            ("f", 10),
            ("g", 10),
        ]);
        assert_eq!(
            units(k.clone(), &s, 10, 300, 64),
            pairs(&[("a", "c"), ("d", "f"), ("g", "g")])
        );
        // At most 2 runs a unit.
        assert_eq!(
            units(k.clone(), &s, 10, 300, 2),
            pairs(&[("a", "b"), ("c", "d"), ("e", "f"), ("g", "g")])
        );
        // A run bigger than the budget is a unit of its own; runs not sized at the last
        // sweep count as the mean of those that were (40: "b" and "d").
        let s = sizes(&[("a", 60), ("c", 10), ("e", 8), ("x", 82)]);
        assert_eq!(
            units(keys(&["a", "b", "c", "d", "e"]), &s, 1, 50, 64),
            pairs(&[("a", "a"), ("b", "c"), ("d", "e")])
        );
    }

    #[test]
    fn runs_are_the_consecutive_stretches_of_sorted_rowids() {
        let r = |v: &[i64]| runs(v).collect::<Vec<_>>();
        assert_eq!(r(&[]), []);
        assert_eq!(r(&[5]), [(5, 5)]);
        assert_eq!(r(&[1, 2, 3, 7, 9, 10]), [(1, 3), (7, 7), (9, 10)]);
        assert_eq!(r(&[-2, -1, 0, 1]), [(-2, 1)]);
    }
}
