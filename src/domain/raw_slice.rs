//! One sweep's raw usage rows and SLA verdicts of a run of tenants as one byte string: the
//! body of a `raw_slices` row (issue 15, target 2). A sweep of 1,000 tenants is about 63 such
//! rows instead of 2,000 (a usage row and a verdict per tenant), and a compaction reads and
//! deletes as many. Pure: no IO; exact (integers as zigzag varints, floats bit for bit).
//!
//! A body: version byte, entry count, then per tenant (names ascending): its name, a byte
//! saying which parts follow, its usage row, its verdict. Every entry of a body has the
//! body's sample time, which the row holding it keys (`ts_ms`), so no part stores a time.
//! A usage row: a bitmap of the values present and one of those that are zero (an idle
//! tenant's are mostly zero and cost nothing more), then each other present value in column
//! order (interval, counters, gauges, rates, events).

use crate::domain::sla_engine::Verdict;
use crate::domain::usage_block::BlockError;
use crate::domain::usage_row::{UsageCounters, UsageEvents, UsageGauges, UsageRates, UsageRow};

/// Tenants per slice: a compaction holds one slice's tenants' window decoded at once (16
/// tenants' 10 minutes at 1 s are about 6 MB), and a body of idle tenants stays within a
/// page.
pub const SLICE_TENANTS: usize = 16;

/// The format's version, the first byte of every body.
const VERSION: u8 = 1;

const HAS_USAGE: u8 = 1;
const HAS_VERDICT: u8 = 2;

const V_GUARANTEE: u8 = 1;
const V_CONTENDED: u8 = 2;
const V_VIOLATING: u8 = 4;

/// Integer fields of a usage row before its rates: interval, counters, gauges.
const INTS: usize = 1 + UsageCounters::LEN + UsageGauges::LEN;
/// Every value of a usage row, in encoding order.
const FIELDS: usize = INTS + UsageRates::LEN + UsageEvents::LEN;
const _FITS: () = assert!(FIELDS <= 64);

type Result<T> = std::result::Result<T, BlockError>;

/// One tenant's entry of a body: its name and its encoded parts (`put_usage`, `put_verdict`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry<'a> {
    pub tenant: &'a str,
    pub usage: Option<&'a [u8]>,
    pub verdict: Option<&'a [u8]>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// A cursor over a body.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or(BlockError::new("raw slice truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or(BlockError::new("raw slice truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BlockError::new("raw slice varint too long"))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn f64(&mut self) -> Result<f64> {
        self.u64().map(f64::from_bits)
    }

    fn len(&mut self) -> Result<usize> {
        usize::try_from(self.varint()?).map_err(|_| BlockError::new("raw slice length"))
    }
}

/// Appends `r`'s values (not its tenant or time: the body's) to `out`.
pub fn put_usage(out: &mut Vec<u8>, r: &UsageRow) {
    let ints = std::iter::once(r.interval_ms)
        .chain(r.counters.values())
        .chain(r.gauges.values());
    let (mut present, mut zero) = (0u64, 0u64);
    let mut note = |i: usize, is_zero: Option<bool>| {
        if let Some(z) = is_zero {
            present |= 1 << i;
            if z {
                zero |= 1 << i;
            }
        }
    };
    for (i, v) in ints.clone().enumerate() {
        note(i, v.map(|v| v == 0));
    }
    for (i, v) in r.rates.values().into_iter().enumerate() {
        note(INTS + i, v.map(|v| v.to_bits() == 0));
    }
    for (i, v) in r.events.values().into_iter().enumerate() {
        note(INTS + UsageRates::LEN + i, v.map(|v| v == 0));
    }
    out.extend_from_slice(&present.to_le_bytes());
    out.extend_from_slice(&zero.to_le_bytes());
    for v in ints.flatten().filter(|v| *v != 0) {
        put_varint(out, zigzag(v));
    }
    for v in r.rates.values().into_iter().flatten() {
        if v.to_bits() != 0 {
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    for v in r.events.values().into_iter().flatten().filter(|v| *v != 0) {
        put_varint(out, zigzag(v));
    }
}

/// Appends `v`'s values (not its tenant or time) to `out`.
pub fn put_verdict(out: &mut Vec<u8>, v: &Verdict) {
    let mut flags = 0;
    if v.guarantee_ratio.is_some() {
        flags |= V_GUARANTEE;
    }
    if v.contended {
        flags |= V_CONTENDED;
    }
    if v.violating {
        flags |= V_VIOLATING;
    }
    out.push(flags);
    put_varint(out, zigzag(v.interval_ms));
    if let Some(g) = v.guarantee_ratio {
        out.extend_from_slice(&g.to_bits().to_le_bytes());
    }
    out.extend_from_slice(&v.delivered_ratio.to_bits().to_le_bytes());
}

/// One body of `entries` (names ascending, one entry per tenant).
pub fn encode_slice(entries: &[Entry<'_>]) -> Vec<u8> {
    let size: usize = entries
        .iter()
        .map(|e| {
            6 + e.tenant.len() + e.usage.map_or(0, <[u8]>::len) + e.verdict.map_or(0, <[u8]>::len)
        })
        .sum();
    let mut out = Vec::with_capacity(size + 4);
    out.push(VERSION);
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        put_varint(&mut out, e.tenant.len() as u64);
        out.extend_from_slice(e.tenant.as_bytes());
        let mut parts = 0;
        if e.usage.is_some() {
            parts |= HAS_USAGE;
        }
        if e.verdict.is_some() {
            parts |= HAS_VERDICT;
        }
        out.push(parts);
        out.extend_from_slice(e.usage.unwrap_or_default());
        out.extend_from_slice(e.verdict.unwrap_or_default());
    }
    out
}

/// Skips one usage row's values; they are `r.data[start..r.pos]` after.
fn skip_usage(r: &mut Reader<'_>) -> Result<()> {
    let present = r.u64()?;
    let zero = r.u64()?;
    for i in 0..FIELDS {
        if present >> i & 1 == 0 || zero >> i & 1 == 1 {
            continue;
        }
        if (INTS..INTS + UsageRates::LEN).contains(&i) {
            r.take(8)?;
        } else {
            r.varint()?;
        }
    }
    Ok(())
}

fn skip_verdict(r: &mut Reader<'_>) -> Result<()> {
    let flags = r.byte()?;
    r.varint()?;
    if flags & V_GUARANTEE != 0 {
        r.take(8)?;
    }
    r.take(8)?;
    Ok(())
}

/// The entries of a body, in its order.
pub fn entries(body: &[u8]) -> Result<Vec<Entry<'_>>> {
    Entries::new(body)?.collect()
}

/// The entries of a body read one at a time (what `entries` collects); the last is an error
/// when bytes follow it.
pub struct Entries<'a> {
    r: Reader<'a>,
    left: usize,
}

impl<'a> Entries<'a> {
    pub fn new(body: &'a [u8]) -> Result<Self> {
        let mut r = Reader { data: body, pos: 0 };
        if r.byte()? != VERSION {
            return Err(BlockError::new("raw slice of an unknown version"));
        }
        let left = r.len()?;
        Ok(Entries { r, left })
    }

    fn entry(&mut self) -> Result<Entry<'a>> {
        let r = &mut self.r;
        let len = r.len()?;
        let tenant = std::str::from_utf8(r.take(len)?)
            .map_err(|_| BlockError::new("raw slice tenant name is not UTF-8"))?;
        let parts = r.byte()?;
        let mut part = |has: bool, skip: fn(&mut Reader<'_>) -> Result<()>| -> Result<_> {
            if !has {
                return Ok(None);
            }
            let start = r.pos;
            skip(r)?;
            Ok(Some(&r.data[start..r.pos]))
        };
        let usage = part(parts & HAS_USAGE != 0, skip_usage)?;
        let verdict = part(parts & HAS_VERDICT != 0, skip_verdict)?;
        self.left -= 1;
        if self.left == 0 && self.r.pos != self.r.data.len() {
            return Err(BlockError::new("raw slice has trailing bytes"));
        }
        Ok(Entry {
            tenant,
            usage,
            verdict,
        })
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let e = self.entry();
        if e.is_err() {
            // Nothing after an error.
            self.left = 0;
        }
        Some(e)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // At least one (an entry or an error) while any is left. A corrupt count promises
        // no more: `collect` reserves by the lower bound and grows as entries are read.
        (usize::from(self.left > 0), Some(self.left))
    }
}

/// One sweep time's bodies, read entry by entry.
struct TimeCursor<'a> {
    ts_ms: i64,
    bodies: &'a [(i64, &'a [u8])],
    entries: Option<Entries<'a>>,
    head: Option<Entry<'a>>,
}

impl<'a> TimeCursor<'a> {
    /// Moves `head` to the next entry, of this body or of the next.
    fn advance(&mut self) -> Result<()> {
        loop {
            if let Some(e) = self.entries.as_mut().and_then(Iterator::next) {
                self.head = Some(e?);
                return Ok(());
            }
            let Some(((_, body), rest)) = self.bodies.split_first() else {
                self.head = None;
                return Ok(());
            };
            self.bodies = rest;
            self.entries = Some(Entries::new(body)?);
        }
    }
}

/// The entries of a window's slices, tenant by tenant (names ascending), each tenant's in
/// time order: how a compaction makes one block per tenant while it reads each body once and
/// holds the entries of one tenant at a time (not a decoded row per sample of every tenant).
/// The slices are given in time order, those of one time in name order (as a sweep writes
/// them).
pub struct TenantRuns<'a> {
    times: Vec<TimeCursor<'a>>,
    run: Vec<Timed<'a>>,
}

/// An entry and the sweep time of its body.
pub type Timed<'a> = (i64, Entry<'a>);

impl<'a> TenantRuns<'a> {
    pub fn new(slices: &'a [(i64, &'a [u8])]) -> Result<Self> {
        let mut times: Vec<TimeCursor<'a>> = slices
            .chunk_by(|a, b| a.0 == b.0)
            .map(|bodies| TimeCursor {
                ts_ms: bodies[0].0,
                bodies,
                entries: None,
                head: None,
            })
            .collect();
        for t in &mut times {
            t.advance()?;
        }
        Ok(TenantRuns {
            times,
            run: Vec::new(),
        })
    }

    /// The next tenant and its entries (with their times), or `None` after the last.
    pub fn next_tenant(&mut self) -> Result<Option<(&'a str, &[Timed<'a>])>> {
        let Some(tenant) = self
            .times
            .iter()
            .filter_map(|t| t.head)
            .map(|e| e.tenant)
            .min()
        else {
            return Ok(None);
        };
        self.run.clear();
        for t in &mut self.times {
            if let Some(e) = t.head.filter(|e| e.tenant == tenant) {
                self.run.push((t.ts_ms, e));
                t.advance()?;
            }
        }
        Ok(Some((tenant, &self.run)))
    }
}

/// The usage row `put_usage` wrote in `part`, of `tenant` at `ts_ms`.
pub fn usage_row(tenant: &str, ts_ms: i64, part: &[u8]) -> Result<UsageRow> {
    let mut r = Reader { data: part, pos: 0 };
    let present = r.u64()?;
    let zero = r.u64()?;
    let mut ints = [None; INTS];
    let mut rates = [None; UsageRates::LEN];
    let mut events = [None; UsageEvents::LEN];
    let has = |i: usize| present >> i & 1 == 1;
    let is_zero = |i: usize| zero >> i & 1 == 1;
    for (i, v) in ints.iter_mut().enumerate() {
        if has(i) {
            *v = Some(if is_zero(i) { 0 } else { unzigzag(r.varint()?) });
        }
    }
    for (i, v) in rates.iter_mut().enumerate() {
        if has(INTS + i) {
            *v = Some(if is_zero(INTS + i) { 0.0 } else { r.f64()? });
        }
    }
    for (i, v) in events.iter_mut().enumerate() {
        let f = INTS + UsageRates::LEN + i;
        if has(f) {
            *v = Some(if is_zero(f) { 0 } else { unzigzag(r.varint()?) });
        }
    }
    if r.pos != part.len() {
        return Err(BlockError::new("raw slice usage row has trailing bytes"));
    }
    let c0 = 1;
    let g0 = c0 + UsageCounters::LEN;
    Ok(UsageRow {
        tenant: tenant.to_string(),
        ts_ms,
        interval_ms: ints[0],
        counters: UsageCounters::from_values(std::array::from_fn(|i| ints[c0 + i])),
        gauges: UsageGauges::from_values(std::array::from_fn(|i| ints[g0 + i])),
        rates: UsageRates::from_values(rates),
        events: UsageEvents::from_values(events),
    })
}

/// The verdict `put_verdict` wrote in `part`, of `tenant` at `ts_ms`.
pub fn verdict(tenant: &str, ts_ms: i64, part: &[u8]) -> Result<Verdict> {
    let mut r = Reader { data: part, pos: 0 };
    let flags = r.byte()?;
    let interval_ms = unzigzag(r.varint()?);
    let guarantee_ratio = if flags & V_GUARANTEE != 0 {
        Some(r.f64()?)
    } else {
        None
    };
    let delivered_ratio = r.f64()?;
    if r.pos != part.len() {
        return Err(BlockError::new("raw slice verdict has trailing bytes"));
    }
    Ok(Verdict {
        tenant: tenant.to_string(),
        ts_ms,
        interval_ms,
        guarantee_ratio,
        delivered_ratio,
        contended: flags & V_CONTENDED != 0,
        violating: flags & V_VIOLATING != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opt_int() -> impl Strategy<Value = Option<i64>> {
        prop_oneof![
            Just(None),
            Just(Some(0)),
            any::<i64>().prop_map(Some),
            Just(Some(i64::MIN)),
            Just(Some(i64::MAX))
        ]
    }

    fn opt_float() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            Just(Some(0.0)),
            Just(Some(-0.0)),
            Just(Some(f64::NAN)),
            any::<f64>().prop_map(Some)
        ]
    }

    fn row() -> impl Strategy<Value = UsageRow> {
        (
            "[a-z0-9._-]{1,20}",
            any::<i64>(),
            opt_int(),
            prop::collection::vec(opt_int(), INTS - 1 + UsageEvents::LEN),
            prop::collection::vec(opt_float(), UsageRates::LEN),
        )
            .prop_map(|(tenant, ts_ms, interval_ms, ints, rates)| UsageRow {
                tenant,
                ts_ms,
                interval_ms,
                counters: UsageCounters::from_values(std::array::from_fn(|i| ints[i])),
                gauges: UsageGauges::from_values(std::array::from_fn(|i| {
                    ints[UsageCounters::LEN + i]
                })),
                rates: UsageRates::from_values(std::array::from_fn(|i| rates[i])),
                events: UsageEvents::from_values(std::array::from_fn(|i| ints[INTS - 1 + i])),
            })
    }

    fn verdict_of() -> impl Strategy<Value = Verdict> {
        (
            any::<i64>(),
            opt_float(),
            any::<f64>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(interval_ms, guarantee_ratio, delivered_ratio, c, v)| Verdict {
                    tenant: String::new(),
                    ts_ms: 0,
                    interval_ms,
                    guarantee_ratio,
                    delivered_ratio,
                    contended: c,
                    violating: v,
                },
            )
    }

    /// The bits of every float (NaN included) and every other value of a row.
    fn bits(r: &UsageRow) -> (String, i64, Vec<Option<i64>>, Vec<Option<u64>>) {
        let ints = std::iter::once(r.interval_ms)
            .chain(r.counters.values())
            .chain(r.gauges.values())
            .chain(r.events.values())
            .collect();
        let rates = r.rates.values().map(|v| v.map(f64::to_bits)).to_vec();
        (r.tenant.clone(), r.ts_ms, ints, rates)
    }

    proptest! {
        /// Every value of every entry comes back bit for bit, each part where it was given.
        #[test]
        fn a_slice_round_trips_every_value_exactly(
            rows in prop::collection::btree_map("[a-z0-9]{1,12}", (prop::option::of(row()), prop::option::of(verdict_of())), 0..40),
            ts_ms in any::<i64>(),
        ) {
            let mut parts = Vec::new();
            for (name, (u, v)) in &rows {
                let mut ub = Vec::new();
                let mut vb = Vec::new();
                if let Some(u) = u { put_usage(&mut ub, u) }
                if let Some(v) = v { put_verdict(&mut vb, v) }
                parts.push((name.as_str(), u.is_some().then_some(ub), v.is_some().then_some(vb)));
            }
            let list: Vec<Entry<'_>> = parts.iter().map(|(n, u, v)| Entry {
                tenant: n,
                usage: u.as_deref(),
                verdict: v.as_deref(),
            }).collect();
            let body = encode_slice(&list);
            let back = entries(&body).unwrap();
            prop_assert_eq!(back.len(), rows.len());
            for (e, (name, (u, v))) in back.iter().zip(&rows) {
                prop_assert_eq!(e.tenant, name.as_str());
                prop_assert_eq!(e.usage.is_some(), u.is_some());
                prop_assert_eq!(e.verdict.is_some(), v.is_some());
                if let (Some(part), Some(u)) = (e.usage, u) {
                    let got = usage_row(name, ts_ms, part).unwrap();
                    let want = UsageRow { tenant: name.clone(), ts_ms, ..u.clone() };
                    prop_assert_eq!(bits(&got), bits(&want));
                }
                if let (Some(part), Some(v)) = (e.verdict, v) {
                    let got = verdict(name, ts_ms, part).unwrap();
                    prop_assert_eq!(got.interval_ms, v.interval_ms);
                    prop_assert_eq!(got.guarantee_ratio.map(f64::to_bits), v.guarantee_ratio.map(f64::to_bits));
                    prop_assert_eq!(got.delivered_ratio.to_bits(), v.delivered_ratio.to_bits());
                    prop_assert_eq!((got.contended, got.violating), (v.contended, v.violating));
                    prop_assert_eq!((got.tenant.as_str(), got.ts_ms), (name.as_str(), ts_ms));
                }
            }
        }

        /// A cut or a flipped byte is an error or another valid body, never a panic.
        #[test]
        fn a_damaged_slice_is_an_error_never_a_panic(
            r in row(), cut in 0usize..200, flip in 0usize..200, x in any::<u8>(),
        ) {
            let mut u = Vec::new();
            put_usage(&mut u, &r);
            let body = encode_slice(&[Entry { tenant: &r.tenant, usage: Some(&u), verdict: None }]);
            let _ = entries(&body[..cut.min(body.len())]);
            let mut bad = body.clone();
            let i = flip % bad.len();
            bad[i] ^= x;
            if let Ok(es) = entries(&bad) {
                for e in es {
                    if let Some(p) = e.usage { let _ = usage_row(e.tenant, 0, p); }
                }
            }
        }
    }

    /// A window's slices come back tenant by tenant, each tenant's entries in time order,
    /// whatever run each was written in at each time and whether it was there at all.
    #[test]
    fn tenant_runs_gather_each_tenants_entries_across_runs_and_times() {
        // Each tenant's verdict part tells it apart (its interval).
        let part = |interval_ms: i64| {
            let mut out = Vec::new();
            let v = Verdict {
                tenant: String::new(),
                ts_ms: 0,
                interval_ms,
                guarantee_ratio: None,
                delivered_ratio: 0.0,
                contended: false,
                violating: false,
            };
            put_verdict(&mut out, &v);
            out
        };
        let (va, vb, vc, vd) = (part(1), part(2), part(3), part(4));
        fn e<'a>(tenant: &'a str, p: &'a [u8]) -> Entry<'a> {
            Entry {
                tenant,
                usage: None,
                verdict: Some(p),
            }
        }
        let (va, vb, vc, vd) = (va.as_slice(), vb.as_slice(), vc.as_slice(), vd.as_slice());
        // Time 1: runs [a, b] and [c]; time 2: [a] and [c, d] (b gone, d new); time 3: [b].
        let bodies = [
            (1, encode_slice(&[e("a", va), e("b", vb)])),
            (1, encode_slice(&[e("c", vc)])),
            (2, encode_slice(&[e("a", va)])),
            (2, encode_slice(&[e("c", vc), e("d", vd)])),
            (3, encode_slice(&[e("b", vb)])),
        ];
        let slices: Vec<(i64, &[u8])> = bodies.iter().map(|(t, b)| (*t, b.as_slice())).collect();
        let mut runs = TenantRuns::new(&slices).unwrap();
        let mut got = Vec::new();
        while let Some((tenant, entries)) = runs.next_tenant().unwrap() {
            let times: Vec<(i64, Vec<u8>)> = entries
                .iter()
                .map(|(t, e)| (*t, e.verdict.unwrap().to_vec()))
                .collect();
            got.push((tenant.to_string(), times));
        }
        let want = |t: &str, v: &[(i64, &[u8])]| {
            let v = v.iter().map(|(t, p)| (*t, p.to_vec())).collect::<Vec<_>>();
            (t.to_string(), v)
        };
        assert_eq!(
            got,
            [
                want("a", &[(1, va), (2, va)]),
                want("b", &[(1, vb), (3, vb)]),
                want("c", &[(1, vc), (2, vc)]),
                want("d", &[(2, vd)]),
            ]
        );
        // A damaged body is an error, never a panic or a silent skip.
        let mut bad = bodies[1].1.clone();
        bad.push(0);
        let slices = [(1, bodies[0].1.as_slice()), (1, bad.as_slice())];
        let mut runs = TenantRuns::new(&slices).unwrap();
        let mut r = Ok(None);
        for _ in 0..3 {
            r = runs.next_tenant().map(|t| t.map(|(n, _)| n.to_string()));
            if r.is_err() {
                break;
            }
        }
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn an_idle_row_costs_its_zeros_nothing() {
        let r = UsageRow {
            tenant: "t".into(),
            ts_ms: 1,
            interval_ms: Some(1000),
            counters: UsageCounters::from_values([Some(0); UsageCounters::LEN]),
            gauges: UsageGauges::from_values([Some(0); UsageGauges::LEN]),
            rates: UsageRates::from_values([Some(0.0); UsageRates::LEN]),
            events: UsageEvents::from_values([Some(0); UsageEvents::LEN]),
        };
        let mut b = Vec::new();
        put_usage(&mut b, &r);
        // Two bitmaps and the interval.
        assert_eq!(b.len(), 16 + 2);
        assert_eq!(
            entries(&[9, 0]),
            Err(BlockError::new("raw slice of an unknown version"))
        );
        assert!(entries(&[VERSION, 1, 1, b'a']).is_err());
    }
}
