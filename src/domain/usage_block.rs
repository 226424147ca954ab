//! Compressed column blocks of one tenant's raw samples (issue 15, storage): a run of
//! `UsageRow`s (or of SLA `Verdict`s) of ONE tenant, encoded column by column into a bit
//! stream, and decoded back exactly. Pure: no IO, no clock; the store keeps one block per
//! (tenant, block start) and decodes it to answer usage queries.
//!
//! Each column is coded on its own, the way Prometheus's and Gorilla's chunks are:
//! - integers (timestamps, counters, gauges, event counts): the cheapest of "all equal",
//!   deltas or deltas of deltas, divided by their greatest common divisor (memory moves in
//!   pages), as zigzag variable-length bit codes (a zero costs one bit);
//! - rates: most are `delta / interval` of a counter the row also holds (`cpu_cores` of
//!   `cpu_usage_usec`), so the rate is recomputed with the very float operations of
//!   `domain::usage` and stored as one bit when that gives the same f64 bit for bit; else as
//!   the integer numerator that does; else as the raw f64 in Gorilla's XOR code;
//! - other floats (SLA shares): Gorilla's XOR code;
//! - which values are `None`: nothing when none or all are, else one bit per sample.
//!
//! Decoding returns the same values bit for bit (a property test checks every column); a
//! block that does not decode is an error, never a guess. Imports only `usage_row` and
//! `sla_engine` of the domain.

use crate::domain::sla_engine::Verdict;
use crate::domain::usage_row::{UsageCounters, UsageEvents, UsageGauges, UsageRates, UsageRow};

/// The format's version, the first byte of every block.
const VERSION: u8 = 1;

/// A block that cannot be decoded: truncated, of an unknown version, or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("usage block cannot be decoded: {0}")]
pub struct BlockError(&'static str);

impl BlockError {
    /// An error of stored bytes of this family of formats (`raw_slice` too), saying `why`.
    pub(crate) const fn new(why: &'static str) -> Self {
        BlockError(why)
    }
}

type Result<T> = std::result::Result<T, BlockError>;

/// Bits, most significant first.
#[derive(Default)]
struct BitWriter {
    buf: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn bits(&mut self, v: u64, n: u32) {
        debug_assert!(n <= 64);
        if n == 0 {
            return;
        }
        let v = if n == 64 { v } else { v & ((1 << n) - 1) };
        // Split so that `acc` never holds more than 64 bits.
        if n > 32 {
            self.bits(v >> 32, n - 32);
            self.bits(v & 0xffff_ffff, 32);
            return;
        }
        self.acc = (self.acc << n) | v;
        self.n += n;
        while self.n >= 8 {
            self.n -= 8;
            self.buf.push((self.acc >> self.n) as u8);
        }
        self.acc &= (1 << self.n) - 1;
    }

    fn bit(&mut self, b: bool) {
        self.bits(u64::from(b), 1);
    }

    /// An unsigned integer: `0` -> "0"; otherwise a prefix of ones naming the width class.
    fn uint(&mut self, v: u64) {
        let class = UINT_CLASSES
            .iter()
            .position(|&w| w == 64 || v < (1 << w))
            .unwrap_or(UINT_CLASSES.len() - 1);
        if v == 0 {
            self.bit(false);
            return;
        }
        // class i: i+1 ones then a zero (the last class: ones only), then the value.
        self.bits(u64::MAX, class as u32 + 1);
        if class + 1 < UINT_CLASSES.len() {
            self.bit(false);
        }
        self.bits(v, UINT_CLASSES[class]);
    }

    fn int(&mut self, v: i64) {
        self.uint(zigzag(v));
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            let pad = 8 - self.n;
            self.bits(0, pad);
        }
        self.buf
    }
}

/// Widths of the non-zero classes of `BitWriter::uint`.
const UINT_CLASSES: [u32; 5] = [7, 14, 24, 40, 64];

/// The bit cost of `BitWriter::uint(v)`.
fn uint_bits(v: u64) -> u64 {
    if v == 0 {
        return 1;
    }
    let class = UINT_CLASSES
        .iter()
        .position(|&w| w == 64 || v < (1 << w))
        .unwrap_or(UINT_CLASSES.len() - 1);
    let prefix = class as u64 + 1 + u64::from(class + 1 < UINT_CLASSES.len());
    prefix + u64::from(UINT_CLASSES[class])
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn bits(&mut self, n: u32) -> Result<u64> {
        let mut v = 0u64;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8).ok_or(BlockError("truncated"))?;
            v = (v << 1) | u64::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(v)
    }

    fn bit(&mut self) -> Result<bool> {
        Ok(self.bits(1)? == 1)
    }

    fn uint(&mut self) -> Result<u64> {
        if !self.bit()? {
            return Ok(0);
        }
        let mut class = 0;
        while class + 1 < UINT_CLASSES.len() && self.bit()? {
            class += 1;
        }
        self.bits(UINT_CLASSES[class])
    }

    fn int(&mut self) -> Result<i64> {
        Ok(unzigzag(self.uint()?))
    }

    fn count(&mut self, max: usize) -> Result<usize> {
        let v = self.uint()?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v <= max)
            .ok_or(BlockError("count out of range"))
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Which values of a column are present: "00" none, "01" all, else "1", the first sample's
/// bit and the lengths of the runs of equal bits (a first sample without rates is one run).
fn put_presence<T>(w: &mut BitWriter, col: &[Option<T>]) {
    if col.iter().all(Option::is_none) {
        w.bits(0b00, 2);
    } else if col.iter().all(Option::is_some) {
        w.bits(0b01, 2);
    } else {
        w.bit(true);
        w.bit(col[0].is_some());
        let mut i = 0;
        while i < col.len() {
            let p = col[i].is_some();
            let run = col[i..].iter().take_while(|v| v.is_some() == p).count();
            w.uint(run as u64 - 1);
            i += run;
        }
    }
}

fn get_presence(r: &mut BitReader, n: usize) -> Result<Vec<bool>> {
    if !r.bit()? {
        return Ok(vec![r.bit()?; n]);
    }
    let mut bit = r.bit()?;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let run = r.count(n - out.len() - 1)? + 1;
        out.extend(std::iter::repeat_n(bit, run));
        bit = !bit;
    }
    Ok(out)
}

/// Spreads the present values back over the samples.
fn spread<T: Copy>(present: &[bool], values: Vec<T>) -> Vec<Option<T>> {
    let mut it = values.into_iter();
    present
        .iter()
        .map(|p| if *p { it.next() } else { None })
        .collect()
}

/// The integers an int column stores after its first value: deltas (`order` 1), or the first
/// delta then deltas of deltas (`order` 2); wrapping, so any i64 sequence round-trips. Made as
/// they are used, three times a column: no copy of the column each time.
fn differences(values: &[i64], order: usize) -> impl Iterator<Item = i64> + '_ {
    let delta = move |i: usize| values[i].wrapping_sub(values[i - 1]);
    (1..values.len()).map(move |i| {
        if order == 1 || i == 1 {
            delta(i)
        } else {
            delta(i).wrapping_sub(delta(i - 1))
        }
    })
}

fn undo_differences(mut d: Vec<i64>, order: usize) -> Vec<i64> {
    for pass in (0..order).rev() {
        for i in pass + 1..d.len() {
            d[i] = d[i].wrapping_add(d[i - 1]);
        }
    }
    d
}

/// The divisor a column's differences share: 1 when none useful.
fn common_divisor(d: impl Iterator<Item = i64>) -> u64 {
    let mut g = 0;
    for v in d {
        g = gcd(g, v.unsigned_abs());
        if g == 1 {
            return 1;
        }
    }
    if g == 0 || g > i64::MAX as u64 { 1 } else { g }
}

/// `d` divided by `g` (1 most of the time: no division then).
fn divided(d: i64, g: u64) -> i64 {
    if g == 1 { d } else { d / g as i64 }
}

/// Present integers: "00" all equal (the value), else "01" deltas / "10" deltas of deltas,
/// then the divisor, the first value and the divided differences.
fn put_ints(w: &mut BitWriter, v: &[i64]) {
    let Some(&first) = v.first() else {
        return;
    };
    if v.iter().all(|x| *x == first) {
        w.bits(0b00, 2);
        w.int(first);
        return;
    }
    let cost = |order: usize| {
        let g = common_divisor(differences(v, order));
        let body: u64 = differences(v, order)
            .map(|x| uint_bits(zigzag(divided(x, g))))
            .sum();
        (body + uint_bits(g), g)
    };
    let (c1, g1) = cost(1);
    let (c2, g2) = cost(2);
    let (order, g) = if c2 < c1 { (2, g2) } else { (1, g1) };
    w.bits(order as u64, 2);
    w.uint(g);
    w.int(first);
    for x in differences(v, order) {
        w.int(divided(x, g));
    }
}

fn get_ints(r: &mut BitReader, m: usize) -> Result<Vec<i64>> {
    if m == 0 {
        return Ok(Vec::new());
    }
    let order = r.bits(2)? as usize;
    if order == 0 {
        return Ok(vec![r.int()?; m]);
    }
    if order > 2 {
        return Err(BlockError("unknown integer mode"));
    }
    let g = r.uint()?;
    if g == 0 || g > i64::MAX as u64 {
        return Err(BlockError("bad divisor"));
    }
    let mut d = vec![r.int()?];
    for _ in 1..m {
        d.push(r.int()?.wrapping_mul(g as i64));
    }
    Ok(undo_differences(d, order))
}

/// A column of optional values: presence, then the present values with `put` (gathered in
/// `room`, kept from column to column).
fn put_column<T: Copy>(
    w: &mut BitWriter,
    col: &[Option<T>],
    room: &mut Vec<T>,
    put: fn(&mut BitWriter, &[T]),
) {
    put_presence(w, col);
    room.clear();
    room.extend(col.iter().flatten());
    put(w, room);
}

fn get_column<T: Copy>(
    r: &mut BitReader,
    n: usize,
    get: fn(&mut BitReader, usize) -> Result<Vec<T>>,
) -> Result<Vec<Option<T>>> {
    let present = get_presence(r, n)?;
    let m = present.iter().filter(|p| **p).count();
    Ok(spread(&present, get(r, m)?))
}

fn get_int_column(r: &mut BitReader, n: usize) -> Result<Vec<Option<i64>>> {
    get_column(r, n, get_ints)
}

/// Gorilla's XOR code of floats (Pelkonen et al., VLDB 2015, 4.1.2): the first as 64 bits;
/// then "0" for the same bits as the previous, "10" + the meaningful bits when they fit the
/// previous window, "11" + 6 bits of leading zeros + 6 bits of length - 1 + the bits.
fn put_floats(w: &mut BitWriter, v: &[f64]) {
    let Some(first) = v.first() else {
        return;
    };
    let mut prev = first.to_bits();
    w.bits(prev, 64);
    let mut window: Option<(u32, u32)> = None; // (leading, trailing)
    for x in &v[1..] {
        let bits = x.to_bits();
        let xor = bits ^ prev;
        prev = bits;
        if xor == 0 {
            w.bit(false);
            continue;
        }
        w.bit(true);
        let (lead, trail) = (xor.leading_zeros().min(63), xor.trailing_zeros());
        match window {
            Some((l, t)) if lead >= l && trail >= t => {
                w.bit(false);
                w.bits(xor >> t, 64 - l - t);
            }
            _ => {
                w.bit(true);
                w.bits(u64::from(lead), 6);
                let len = 64 - lead - trail;
                w.bits(u64::from(len - 1), 6);
                w.bits(xor >> trail, len);
                window = Some((lead, trail));
            }
        }
    }
}

fn get_floats(r: &mut BitReader, m: usize) -> Result<Vec<f64>> {
    if m == 0 {
        return Ok(Vec::new());
    }
    let mut prev = r.bits(64)?;
    let mut out = vec![f64::from_bits(prev)];
    let mut window: Option<(u32, u32)> = None;
    for _ in 1..m {
        if r.bit()? {
            let (l, t) = if r.bit()? {
                let lead = r.bits(6)? as u32;
                let len = r.bits(6)? as u32 + 1;
                if lead + len > 64 {
                    return Err(BlockError("bad float window"));
                }
                window = Some((lead, 64 - lead - len));
                (lead, 64 - lead - len)
            } else {
                window.ok_or(BlockError("float window before any"))?
            };
            prev ^= r.bits(64 - l - t)? << t;
        }
        out.push(f64::from_bits(prev));
    }
    Ok(out)
}

/// How a rate is made from an integer count over the interval (`domain::usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Microseconds per second, a fraction of time (`usec_per_s`).
    Usec,
    /// Units per second (`per_s`).
    PerS,
}

impl Form {
    /// The rate of `n` over `interval_ms`, with the same float operations as `domain::usage`
    /// (whose interval in seconds is `ms as f64 / 1000.0`).
    fn rate(self, n: u64, interval_ms: i64) -> f64 {
        let dt = interval_ms as f64 / 1000.0;
        match self {
            Form::Usec => n as f64 / 1e6 / dt,
            Form::PerS => n as f64 / dt,
        }
    }

    /// The count that gives exactly `rate` over `interval_ms`, if there is one.
    fn numerator(self, rate: f64, interval_ms: i64) -> Option<u64> {
        if interval_ms <= 0 || !rate.is_finite() || rate < 0.0 {
            return None;
        }
        let dt = interval_ms as f64 / 1000.0;
        let n = match self {
            Form::Usec => rate * dt * 1e6,
            Form::PerS => rate * dt,
        }
        .round();
        if !(0.0..9.0e15).contains(&n) {
            return None;
        }
        let n = n as u64;
        // Rounding may land one off the count the kernel gave: try the neighbours too.
        [n, n.wrapping_sub(1), n + 1]
            .into_iter()
            .find(|&c| self.rate(c, interval_ms).to_bits() == rate.to_bits())
    }
}

/// How each rate column is made: its form and the counter column whose delta it is, if the
/// row holds one. A rate not listed here is stored as raw floats (still exactly).
fn rate_source(rate: &str) -> Option<(Form, Option<&'static str>)> {
    Some(match rate {
        "cpu_cores" => (Form::Usec, Some("cpu_usage_usec")),
        "cpu_user_cores" => (Form::Usec, Some("cpu_user_usec")),
        "cpu_system_cores" => (Form::Usec, Some("cpu_system_usec")),
        "cpu_throttled_cores" => (Form::Usec, Some("cpu_throttled_usec")),
        "io_read_bytes_per_s" => (Form::PerS, Some("io_read_bytes")),
        "io_write_bytes_per_s" => (Form::PerS, Some("io_write_bytes")),
        "io_read_ops_per_s" => (Form::PerS, Some("io_read_ops")),
        "io_write_ops_per_s" => (Form::PerS, Some("io_write_ops")),
        "cpu_some_stall_ratio"
        | "cpu_full_stall_ratio"
        | "memory_some_stall_ratio"
        | "memory_full_stall_ratio"
        | "io_some_stall_ratio"
        | "io_full_stall_ratio" => (Form::Usec, None),
        _ => return None,
    })
}

/// How one rate value is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateCode {
    /// The paired counter's delta over the interval.
    FromCounter = 0,
    /// An explicit count over the interval.
    Count = 1,
    /// The f64 itself.
    Raw = 2,
}

/// A rate column: presence; the codes as runs ("code, run length"); the explicit counts as
/// an int column; the raw floats in XOR code. `counter` is the paired counter column,
/// `interval` the interval column.
fn put_rate_column(
    w: &mut BitWriter,
    col: &[Option<f64>],
    source: Option<(Form, Option<&[Option<i64>]>)>,
    interval: &[Option<i64>],
    room: &mut Room,
) {
    put_presence(w, col);
    let Room {
        codes,
        ints: counts,
        floats: raws,
    } = room;
    codes.clear();
    counts.clear();
    raws.clear();
    for (i, v) in col.iter().enumerate() {
        let Some(v) = *v else { continue };
        let code = match (source, interval[i]) {
            (Some((form, counter)), Some(ms)) => {
                let derived = counter
                    .filter(|_| i > 0)
                    .and_then(|c| counter_delta(c[i - 1], c[i]))
                    .filter(|d| form.rate(*d, ms).to_bits() == v.to_bits());
                if derived.is_some() {
                    RateCode::FromCounter
                } else if let Some(n) = form.numerator(v, ms) {
                    counts.push(n as i64);
                    RateCode::Count
                } else {
                    raws.push(v);
                    RateCode::Raw
                }
            }
            _ => {
                raws.push(v);
                RateCode::Raw
            }
        };
        codes.push(code);
    }
    let mut i = 0;
    while i < codes.len() {
        let run = codes[i..].iter().take_while(|c| **c == codes[i]).count();
        w.bits(codes[i] as u64, 2);
        w.uint(run as u64 - 1);
        i += run;
    }
    put_ints(w, counts);
    put_floats(w, raws);
}

/// The growth of a counter as `domain::usage::delta` takes it: none when it went back.
fn counter_delta(prev: Option<i64>, cur: Option<i64>) -> Option<u64> {
    let (p, c) = (u64::try_from(prev?).ok()?, u64::try_from(cur?).ok()?);
    c.checked_sub(p)
}

fn get_rate_column(
    r: &mut BitReader,
    n: usize,
    source: Option<(Form, Option<&[Option<i64>]>)>,
    interval: &[Option<i64>],
) -> Result<Vec<Option<f64>>> {
    let present = get_presence(r, n)?;
    let m = present.iter().filter(|p| **p).count();
    let mut codes = Vec::with_capacity(m);
    while codes.len() < m {
        let code = match r.bits(2)? {
            0 => RateCode::FromCounter,
            1 => RateCode::Count,
            2 => RateCode::Raw,
            _ => return Err(BlockError("unknown rate code")),
        };
        let run = r.count(m - codes.len() - 1)? + 1;
        codes.extend(std::iter::repeat_n(code, run));
    }
    let n_counts = codes.iter().filter(|c| **c == RateCode::Count).count();
    let n_raws = codes.iter().filter(|c| **c == RateCode::Raw).count();
    let mut counts = get_ints(r, n_counts)?.into_iter();
    let mut raws = get_floats(r, n_raws)?.into_iter();
    let mut codes = codes.into_iter();
    let mut out = Vec::with_capacity(n);
    for (i, p) in present.iter().enumerate() {
        if !*p {
            out.push(None);
            continue;
        }
        let bad = BlockError("rate without its source");
        let v = match codes.next().ok_or(bad.clone())? {
            RateCode::Raw => raws.next().ok_or(bad)?,
            code => {
                let (form, counter) = source.ok_or(bad.clone())?;
                let ms = interval[i].ok_or(bad.clone())?;
                let count = if code == RateCode::Count {
                    u64::try_from(counts.next().ok_or(bad.clone())?).map_err(|_| bad.clone())?
                } else {
                    let c = counter.filter(|_| i > 0).ok_or(bad.clone())?;
                    counter_delta(c[i - 1], c[i]).ok_or(bad)?
                };
                form.rate(count, ms)
            }
        };
        out.push(Some(v));
    }
    Ok(out)
}

/// One tenant's samples column by column, in time order: what a block stores. Filled from
/// rows (`Columns::push`) and emptied (`clear`) with its room kept, so that a compaction encodes
/// tenant after tenant with the same vectors, and holds no `UsageRow` (640 bytes) per sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageColumns {
    ts: Vec<i64>,
    interval: Vec<Option<i64>>,
    counters: [Vec<Option<i64>>; UsageCounters::LEN],
    gauges: [Vec<Option<i64>>; UsageGauges::LEN],
    rates: [Vec<Option<f64>>; UsageRates::LEN],
    events: [Vec<Option<i64>>; UsageEvents::LEN],
}

/// Appends each value to its column.
fn push_all<T: Copy, const N: usize>(cols: &mut [Vec<Option<T>>; N], values: [Option<T>; N]) {
    for (c, v) in cols.iter_mut().zip(values) {
        c.push(v);
    }
}

/// A tenant's samples column by column (`UsageColumns`, `VerdictColumns`).
pub trait Columns: Default {
    type Row;

    /// Appends one sample (its tenant is not stored).
    fn push(&mut self, r: &Self::Row);

    /// The samples held.
    fn len(&self) -> usize;

    /// Empties every column, keeping its room.
    fn clear(&mut self);

    /// The samples as rows of `tenant`.
    fn rows(&self, tenant: &str) -> Vec<Self::Row>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The columns of `rows` (in time order).
    fn of(rows: &[Self::Row]) -> Self {
        let mut c = Self::default();
        rows.iter().for_each(|r| c.push(r));
        c
    }
}

impl Columns for UsageColumns {
    type Row = UsageRow;

    fn push(&mut self, r: &UsageRow) {
        self.ts.push(r.ts_ms);
        self.interval.push(r.interval_ms);
        push_all(&mut self.counters, r.counters.values());
        push_all(&mut self.gauges, r.gauges.values());
        push_all(&mut self.rates, r.rates.values());
        push_all(&mut self.events, r.events.values());
    }

    fn len(&self) -> usize {
        self.ts.len()
    }

    fn clear(&mut self) {
        self.ts.clear();
        self.interval.clear();
        self.counters.iter_mut().for_each(Vec::clear);
        self.gauges.iter_mut().for_each(Vec::clear);
        self.rates.iter_mut().for_each(Vec::clear);
        self.events.iter_mut().for_each(Vec::clear);
    }

    fn rows(&self, tenant: &str) -> Vec<UsageRow> {
        let at = |cols: &[Vec<Option<i64>>], c: usize, i: usize| cols[c][i];
        (0..self.len())
            .map(|i| UsageRow {
                tenant: tenant.to_string(),
                ts_ms: self.ts[i],
                interval_ms: self.interval[i],
                counters: UsageCounters::from_values(std::array::from_fn(|c| {
                    at(&self.counters, c, i)
                })),
                gauges: UsageGauges::from_values(std::array::from_fn(|c| at(&self.gauges, c, i))),
                rates: UsageRates::from_values(std::array::from_fn(|c| self.rates[c][i])),
                events: UsageEvents::from_values(std::array::from_fn(|c| at(&self.events, c, i))),
            })
            .collect()
    }
}

/// One tenant's SLA verdicts column by column, in time order (see `UsageColumns`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerdictColumns {
    ts: Vec<i64>,
    interval: Vec<i64>,
    guarantee: Vec<Option<f64>>,
    delivered: Vec<f64>,
    contended: Vec<i64>,
    violating: Vec<i64>,
}

impl Columns for VerdictColumns {
    type Row = Verdict;

    fn push(&mut self, v: &Verdict) {
        self.ts.push(v.ts_ms);
        self.interval.push(v.interval_ms);
        self.guarantee.push(v.guarantee_ratio);
        self.delivered.push(v.delivered_ratio);
        self.contended.push(i64::from(v.contended));
        self.violating.push(i64::from(v.violating));
    }

    fn len(&self) -> usize {
        self.ts.len()
    }

    fn clear(&mut self) {
        self.ts.clear();
        self.interval.clear();
        self.guarantee.clear();
        self.delivered.clear();
        self.contended.clear();
        self.violating.clear();
    }

    fn rows(&self, tenant: &str) -> Vec<Verdict> {
        (0..self.len())
            .map(|i| Verdict {
                tenant: tenant.to_string(),
                ts_ms: self.ts[i],
                interval_ms: self.interval[i],
                guarantee_ratio: self.guarantee[i],
                delivered_ratio: self.delivered[i],
                contended: self.contended[i] != 0,
                violating: self.violating[i] != 0,
            })
            .collect()
    }
}

/// The scratch vectors of encoding, kept from column to column and block to block.
#[derive(Default)]
pub struct Room {
    ints: Vec<i64>,
    floats: Vec<f64>,
    codes: Vec<RateCode>,
}

impl Room {
    /// Encodes one tenant's samples into one block. The tenant's name is not stored: it is
    /// the block's key.
    pub fn usage(&mut self, c: &UsageColumns) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.bits(u64::from(VERSION), 8);
        w.uint(c.len() as u64);
        put_ints(&mut w, &c.ts);
        put_column(&mut w, &c.interval, &mut self.ints, put_ints);
        for col in c.counters.iter().chain(&c.gauges) {
            put_column(&mut w, col, &mut self.ints, put_ints);
        }
        for (name, col) in UsageRates::COLUMNS.iter().zip(&c.rates) {
            put_rate_column(&mut w, col, source(name, &c.counters), &c.interval, self);
        }
        for col in &c.events {
            put_column(&mut w, col, &mut self.ints, put_ints);
        }
        w.finish()
    }

    /// Encodes one tenant's SLA verdicts into one block.
    pub fn verdicts(&mut self, c: &VerdictColumns) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.bits(u64::from(VERSION), 8);
        w.uint(c.len() as u64);
        put_ints(&mut w, &c.ts);
        put_ints(&mut w, &c.interval);
        put_column(&mut w, &c.guarantee, &mut self.floats, put_floats);
        put_floats(&mut w, &c.delivered);
        put_ints(&mut w, &c.contended);
        put_ints(&mut w, &c.violating);
        w.finish()
    }
}

/// Encodes one tenant's rows (in time order) into one block (`Room::usage`).
pub fn encode_usage(rows: &[UsageRow]) -> Vec<u8> {
    Room::default().usage(&UsageColumns::of(rows))
}

/// A rate's form and its paired counter's column, if any.
fn source<'c>(
    rate: &str,
    counters: &'c [Vec<Option<i64>>],
) -> Option<(Form, Option<&'c [Option<i64>]>)> {
    let (form, counter) = rate_source(rate)?;
    let counter = counter
        .and_then(|c| UsageCounters::COLUMNS.iter().position(|n| *n == c))
        .map(|i| counters[i].as_slice());
    Some((form, counter))
}

/// Upper bound of rows a block may claim, against corrupt counts.
const MAX_ROWS: usize = 1 << 17;

/// A reader of `block` past its header, and the number of rows the header gives.
fn open(block: &[u8]) -> Result<(BitReader<'_>, usize)> {
    let mut r = BitReader {
        data: block,
        pos: 0,
    };
    if r.bits(8)? != u64::from(VERSION) {
        return Err(BlockError("unknown version"));
    }
    let n = r.count(MAX_ROWS)?;
    Ok((r, n))
}

/// The rows of one block of `tenant`, as `encode_usage` was given them.
pub fn decode_usage(tenant: &str, block: &[u8]) -> Result<Vec<UsageRow>> {
    let (mut r, n) = open(block)?;
    let mut c = UsageColumns {
        ts: get_ints(&mut r, n)?,
        interval: get_int_column(&mut r, n)?,
        ..UsageColumns::default()
    };
    for col in c.counters.iter_mut().chain(&mut c.gauges) {
        *col = get_int_column(&mut r, n)?;
    }
    for (i, name) in UsageRates::COLUMNS.iter().enumerate() {
        c.rates[i] = get_rate_column(&mut r, n, source(name, &c.counters), &c.interval)?;
    }
    for col in &mut c.events {
        *col = get_int_column(&mut r, n)?;
    }
    Ok(c.rows(tenant))
}

/// Encodes one tenant's SLA verdicts (in time order) into one block (`Room::verdicts`).
pub fn encode_verdicts(rows: &[Verdict]) -> Vec<u8> {
    Room::default().verdicts(&VerdictColumns::of(rows))
}

/// The verdicts of one block of `tenant`, as `encode_verdicts` was given them.
pub fn decode_verdicts(tenant: &str, block: &[u8]) -> Result<Vec<Verdict>> {
    let (mut r, n) = open(block)?;
    let c = VerdictColumns {
        ts: get_ints(&mut r, n)?,
        interval: get_ints(&mut r, n)?,
        guarantee: get_column(&mut r, n, get_floats)?,
        delivered: get_floats(&mut r, n)?,
        contended: get_ints(&mut r, n)?,
        violating: get_ints(&mut r, n)?,
    };
    Ok(c.rows(tenant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::stats::{
        CgroupStats, CpuStat, IoDevStat, MemoryStat, PressureTotals, Sample,
    };
    use crate::domain::tenant::DevId;
    use crate::domain::usage;
    use proptest::prelude::*;

    /// A row with its floats as bits: (tenant, ts, interval, integers, float bits).
    type RowBits = (String, i64, Option<i64>, Vec<Option<i64>>, Vec<Option<u64>>);

    /// Floats compared bit for bit (NaN included): the codec promises the very bits.
    fn bits(rows: &[UsageRow]) -> Vec<RowBits> {
        rows.iter()
            .map(|r| {
                let ints = (r.counters.values().into_iter())
                    .chain(r.gauges.values())
                    .chain(r.events.values())
                    .collect();
                let floats = r
                    .rates
                    .values()
                    .iter()
                    .map(|v| v.map(f64::to_bits))
                    .collect();
                (r.tenant.clone(), r.ts_ms, r.interval_ms, ints, floats)
            })
            .collect()
    }

    fn any_i64() -> impl Strategy<Value = Option<i64>> {
        prop_oneof![
            Just(None),
            any::<i64>().prop_map(Some),
            (0i64..5000).prop_map(Some),
            Just(Some(i64::MIN)),
            Just(Some(i64::MAX)),
        ]
    }

    fn any_f64() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(Some),
            any::<u64>().prop_map(|b| Some(f64::from_bits(b))),
            (0u32..2000).prop_map(|n| Some(f64::from(n) / 1e6 / 1.0)),
            Just(Some(0.0)),
            Just(Some(-0.0)),
        ]
    }

    fn any_row() -> impl Strategy<Value = UsageRow> {
        (
            any::<i64>(),
            any_i64(),
            proptest::array::uniform15(any_i64()),
            proptest::array::uniform4(any_i64()),
            proptest::array::uniform14(any_f64()),
            proptest::array::uniform4(any_i64()),
        )
            .prop_map(|(ts_ms, interval_ms, c, g, r, e)| UsageRow {
                tenant: "t".into(),
                ts_ms,
                interval_ms,
                counters: UsageCounters::from_values(c),
                gauges: UsageGauges::from_values(g),
                rates: UsageRates::from_values(r),
                events: UsageEvents::from_values(e),
            })
    }

    /// A tenant as the sampler sees it: counters that grow by random steps (now and then
    /// reset), gauges that wander, stall totals; rows made by the production path
    /// (`usage::rates`, `UsageRow::from_sample`) at jittered times.
    fn sampled_rows() -> impl Strategy<Value = Vec<UsageRow>> {
        proptest::collection::vec(
            (
                0u64..3_000_000,
                0u64..5_000,
                0u64..1 << 20,
                990i64..1020,
                0u32..40,
                any::<bool>(),
            ),
            1..80,
        )
        .prop_map(|steps| {
            let mut s = CgroupStats {
                cpu: CpuStat {
                    usage_usec: Some(7_000_000_000),
                    user_usec: Some(5_000_000_000),
                    system_usec: Some(2_000_000_000),
                    throttled_usec: Some(0),
                    nr_throttled: Some(0),
                    nr_periods: None,
                },
                memory_current: Some(1 << 30),
                memory_peak: Some(2 << 30),
                memory: MemoryStat {
                    anon: Some(1 << 29),
                    file: Some(1 << 28),
                    inactive_file: Some(1 << 27),
                },
                io: vec![IoDevStat {
                    rbytes: Some(1 << 33),
                    wbytes: Some(1 << 32),
                    rios: Some(1000),
                    wios: Some(2000),
                    ..IoDevStat::new(DevId { major: 8, minor: 0 })
                }],
                pids_current: Some(12),
                cpu_pressure: Some(PressureTotals {
                    some_usec: Some(5),
                    full_usec: Some(0),
                }),
                ..CgroupStats::default()
            };
            let (mut prev, mut prev_ms, mut ts) = (None::<Sample>, 0i64, 1_800_000_000_000i64);
            let mut rows = Vec::new();
            for (cpu, stall, mem, dt, io, reset) in steps {
                ts += dt;
                let add = |v: &mut Option<u64>, d: u64| *v = v.map(|v| v + d);
                add(&mut s.cpu.usage_usec, cpu);
                add(&mut s.cpu.user_usec, cpu * 2 / 3);
                add(&mut s.cpu.system_usec, cpu / 3);
                if reset {
                    s.cpu.throttled_usec = Some(0);
                } else {
                    add(&mut s.cpu.throttled_usec, cpu / 7);
                }
                s.memory_current = Some((1 << 30) + mem * 4096 % (1 << 28));
                add(&mut s.io[0].rbytes, u64::from(io) * 4096);
                add(&mut s.io[0].rios, u64::from(io));
                if let Some(p) = s.cpu_pressure.as_mut() {
                    add(&mut p.some_usec, stall);
                }
                let cur = Sample::whole(1, s.clone());
                let r = prev
                    .as_ref()
                    .and_then(|p| usage::rates(p, prev_ms, &cur, ts));
                rows.push(UsageRow::from_sample("t", ts, &cur, r.as_ref()));
                (prev, prev_ms) = (Some(cur), ts);
            }
            rows
        })
    }

    proptest! {
        /// Any rows, extreme and missing values included, come back exactly: every integer,
        /// every float bit for bit.
        #[test]
        fn any_rows_round_trip_exactly(rows in proptest::collection::vec(any_row(), 0..40)) {
            let block = encode_usage(&rows);
            let back = decode_usage("t", &block).unwrap();
            prop_assert_eq!(bits(&back), bits(&rows));
        }

        /// Rows the sampler makes come back exactly, and a rate that is its counter's delta
        /// over the interval costs about a bit: well under 40 bytes a row.
        #[test]
        fn sampled_rows_round_trip_and_compress(rows in sampled_rows()) {
            let block = encode_usage(&rows);
            let back = decode_usage("t", &block).unwrap();
            prop_assert_eq!(bits(&back), bits(&rows));
            prop_assert!(block.len() <= 200 + 40 * rows.len(), "{} bytes for {} rows", block.len(), rows.len());
        }

        #[test]
        fn verdicts_round_trip_exactly(v in proptest::collection::vec(
            (any::<i64>(), any::<i64>(), any_f64(), any::<u64>(), any::<bool>(), any::<bool>()), 0..40)) {
            let rows: Vec<Verdict> = v.into_iter().map(|(ts_ms, interval_ms, g, d, contended, violating)| Verdict {
                tenant: "t".into(),
                ts_ms,
                interval_ms,
                guarantee_ratio: g,
                delivered_ratio: f64::from_bits(d),
                contended,
                violating,
            }).collect();
            let back = decode_verdicts("t", &encode_verdicts(&rows)).unwrap();
            let key = |v: &[Verdict]| v.iter().map(|v| (v.ts_ms, v.interval_ms, v.guarantee_ratio.map(f64::to_bits),
                v.delivered_ratio.to_bits(), v.contended, v.violating)).collect::<Vec<_>>();
            prop_assert_eq!(key(&back), key(&rows));
        }

        /// Damaged bytes give an error or some rows, never a panic.
        #[test]
        fn damaged_blocks_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(b) = bytes.first_mut() {
                *b = VERSION;
            }
            let _ = decode_usage("t", &bytes);
            let _ = decode_verdicts("t", &bytes);
        }
    }

    /// An idle tenant (nothing moves) costs a few bytes a block whatever its length, and a
    /// block of 600 such rows well under a byte a row.
    #[test]
    fn idle_rows_cost_almost_nothing() {
        let s = Sample::whole(
            1,
            CgroupStats {
                memory_current: Some(4096),
                ..CgroupStats::default()
            },
        );
        let rows: Vec<UsageRow> = (0..600)
            .map(|i| {
                let r = (i > 0).then(|| usage::rates(&s, (i - 1) * 1000, &s, i * 1000).unwrap());
                UsageRow::from_sample("t", i * 1000, &s, r.as_ref())
            })
            .collect();
        let block = encode_usage(&rows);
        assert_eq!(decode_usage("t", &block).unwrap(), rows);
        assert!(block.len() < 120, "{} bytes", block.len());
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let mut b = encode_usage(&[UsageRow::default()]);
        b[0] = 99;
        assert_eq!(decode_usage("t", &b), Err(BlockError("unknown version")));
    }

    #[test]
    fn int_codes_round_trip_at_the_class_edges() {
        let mut w = BitWriter::default();
        let vals: Vec<u64> = UINT_CLASSES
            .iter()
            .flat_map(|&c| {
                if c == 64 {
                    vec![u64::MAX]
                } else {
                    vec![(1 << c) - 1, 1 << c]
                }
            })
            .chain([0, 1])
            .collect();
        let mut expect_bits = 0;
        for v in &vals {
            w.uint(*v);
            expect_bits += uint_bits(*v);
        }
        let buf = w.finish();
        assert_eq!(buf.len() as u64, expect_bits.div_ceil(8));
        let mut r = BitReader { data: &buf, pos: 0 };
        for v in &vals {
            assert_eq!(r.uint().unwrap(), *v);
        }
    }
}
