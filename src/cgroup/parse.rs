//! The parsers of cgroupfs file contents, v2 and v1 alike: bytes in, typed values out. The
//! primitives (`dec`, `each_flat`, `err`, ...) are shared by every parser of the cgroup layer
//! (the v2 settings here, the v2 stat files in `stats`, the v1 files in `v1_parse` and
//! `v1_stats`). No file access here, so every parser can be fed a captured file
//! (tests/fixtures/cgroupfs/). The files are ASCII: numbers are read from bytes without UTF-8
//! validation or allocation, and text kept as `String` (names, paths) is decoded lossily.
//!
//! Formats follow Documentation/admin-guide/cgroup-v2.rst, "Interface Files / Format":
//! flat keyed ("KEY VALUE" lines), nested keyed ("KEY SUBKEY=VALUE ..." lines) and
//! single values where "max" means no limit.

use crate::domain::plan::{IoMax, Limit};
use crate::domain::tenant::DevId;
use std::collections::BTreeMap;

/// A parse failure: what was expected and the offending text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

pub(crate) type PResult<T> = std::result::Result<T, ParseError>;

/// The parse error of every cgroup parser: "expected WHAT, found 'TEXT'" (`found` trimmed).
pub(crate) fn err(what: &str, found: impl AsRef<[u8]>) -> ParseError {
    ParseError(format!(
        "expected {what}, found '{}'",
        String::from_utf8_lossy(found.as_ref().trim_ascii())
    ))
}

/// An unsigned decimal integer, read as `str::parse::<u64>` reads it (an optional '+', no
/// overflow), from bytes: no UTF-8 validation and no allocation.
#[inline]
pub(crate) fn dec(v: &[u8]) -> Option<u64> {
    let v = v.strip_prefix(b"+").unwrap_or(v);
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

/// `dec` for a value that must fit a `u32` (weights, device numbers).
fn dec32(v: &[u8]) -> Option<u32> {
    u32::try_from(dec(v)?).ok()
}

/// The lines of a file (split at '\n'; a trailing newline gives one empty last line).
#[inline]
pub(crate) fn lines(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b'\n')
}

/// The lines that hold more than whitespace.
pub(crate) fn nonblank_lines(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    lines(s).filter(|l| !l.trim_ascii().is_empty())
}

/// The whitespace-separated fields of a line.
#[inline]
pub(crate) fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
}

/// "KEY=VALUE" split at its first '='.
fn key_value(kv: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = kv.iter().position(|&b| b == b'=')?;
    Some((&kv[..eq], &kv[eq + 1..]))
}

/// Text kept as a `String` (the files are ASCII; anything else is decoded lossily).
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stores the value of a "KEY VALUE" line in `slot`.
#[inline]
pub(crate) fn set(slot: &mut Option<u64>, v: &[u8], line: &[u8]) -> PResult<()> {
    *slot = Some(dec(v).ok_or_else(|| err("'KEY <unsigned integer>'", line))?);
    Ok(())
}

/// Calls `f(key, value, line)` for each "KEY VALUE" line, without allocating; stops early
/// when `f` answers `false` (every key it wants was seen).
#[inline]
pub(crate) fn each_flat(
    s: &[u8],
    mut f: impl FnMut(&[u8], &[u8], &[u8]) -> PResult<bool>,
) -> PResult<()> {
    for line in lines(s) {
        let t = line.trim_ascii();
        if t.is_empty() {
            continue;
        }
        let sp = t
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| err("'KEY VALUE'", line))?;
        if !f(&t[..sp], t[sp + 1..].trim_ascii(), line)? {
            break;
        }
    }
    Ok(())
}

/// "MAJOR:MINOR".
pub(crate) fn dev_id(s: &[u8]) -> Option<DevId> {
    let c = s.iter().position(|&b| b == b':')?;
    Some(DevId {
        major: dec32(&s[..c])?,
        minor: dec32(&s[c + 1..])?,
    })
}

/// "max" or an unsigned integer, surrounding whitespace ignored (`Limit::parse` on bytes).
fn limit_of(s: &[u8]) -> Option<Limit> {
    match s.trim_ascii() {
        b"max" => Some(Limit::Max),
        v => dec(v).map(Limit::Value),
    }
}

/// "KEY VALUE" lines to a map. Unknown keys are kept: newer kernels add keys.
pub fn flat_keyed<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for line in nonblank_lines(s.as_ref()) {
        let mut it = fields(line);
        let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) else {
            return Err(err("'KEY VALUE'", line));
        };
        let v = dec(v).ok_or_else(|| err("'KEY <unsigned integer>'", line))?;
        out.insert(text(k), v);
    }
    Ok(out)
}

/// "KEY SUB=VAL SUB=VAL" lines to a map of maps (values kept as text: io.max has "max").
pub fn nested_keyed<S: AsRef<[u8]> + ?Sized>(
    s: &S,
) -> PResult<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out = BTreeMap::new();
    for line in nonblank_lines(s.as_ref()) {
        let mut it = fields(line);
        let key = it.next().ok_or_else(|| err("a key", line))?;
        let mut inner = BTreeMap::new();
        for kv in it {
            let (k, v) = key_value(kv).ok_or_else(|| err("'SUBKEY=VALUE'", kv))?;
            inner.insert(text(k), text(v));
        }
        out.insert(text(key), inner);
    }
    Ok(out)
}

/// A single "max" or number (memory.max, pids.max, ...).
pub fn limit<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<Limit> {
    let s = s.as_ref();
    limit_of(s).ok_or_else(|| err("'max' or an unsigned integer", s))
}

/// A single unsigned integer (memory.current, pids.current, cpu.shares, ...).
pub fn single_u64<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<u64> {
    let s = s.as_ref();
    dec(s.trim_ascii()).ok_or_else(|| err("an unsigned integer", s))
}

/// cpu.max: "$MAX $PERIOD" -> (quota, period).
pub fn cpu_max<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<(Limit, u64)> {
    let s = s.as_ref();
    let mut it = fields(s);
    match (
        it.next().and_then(limit_of),
        it.next().and_then(dec),
        it.next(),
    ) {
        (Some(q), Some(p), None) => Ok((q, p)),
        _ => Err(err("'max|QUOTA PERIOD'", s)),
    }
}

/// io.weight and cpu.weight style: "default N" first line (io.weight) or a bare "N" (cpu.weight).
pub fn weight<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<u32> {
    let s = s.as_ref();
    let first = lines(s).next().unwrap_or_default().trim_ascii();
    let v = first.strip_prefix(b"default ").unwrap_or(first);
    dec32(v.trim_ascii()).ok_or_else(|| err("a weight 1-10000", s))
}

/// io.weight whole: the "default N" line and the per-device "MAJ:MIN N" overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IoWeight {
    pub default: u32,
    pub devices: BTreeMap<DevId, u32>,
}

pub fn io_weight<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<IoWeight> {
    let s = s.as_ref();
    let mut out = IoWeight {
        default: weight(s)?,
        devices: BTreeMap::new(),
    };
    // `weight` read the first line, so it is not blank.
    for line in nonblank_lines(s).skip(1) {
        let mut it = fields(line);
        match (
            it.next().and_then(dev_id),
            it.next().and_then(dec32),
            it.next(),
        ) {
            (Some(d), Some(w), None) => {
                out.devices.insert(d, w);
            }
            _ => return Err(err("'MAJ:MIN WEIGHT'", line)),
        }
    }
    Ok(out)
}

/// io.max lines: "MAJ:MIN rbps=max wbps=1048576 riops=max wiops=max".
pub fn io_max<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<Vec<IoMax>> {
    let mut out = Vec::new();
    for (dev, kv) in nested_keyed(s)? {
        let device = DevId::parse(&dev).ok_or_else(|| err("MAJ:MIN", &dev))?;
        let get = |k: &str| -> PResult<Limit> {
            match kv.get(k) {
                None => Ok(Limit::Max),
                Some(v) => Limit::parse(v).ok_or_else(|| err("'max' or a number", v)),
            }
        };
        out.push(IoMax {
            device,
            rbps: get("rbps")?,
            wbps: get("wbps")?,
            riops: get("riops")?,
            wiops: get("wiops")?,
        });
    }
    out.sort();
    Ok(out)
}

/// Controller names in cgroup.controllers / cgroup.subtree_control.
pub fn controllers<S: AsRef<[u8]> + ?Sized>(s: &S) -> Vec<String> {
    fields(s.as_ref()).map(text).collect()
}

/// PIDs in cgroup.procs (and TIDs in v1 `tasks`), one per line.
pub fn pids<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<Vec<u32>> {
    nonblank_lines(s.as_ref())
        .map(|l| dec32(l.trim_ascii()).ok_or_else(|| err("a PID", l)))
        .collect()
}

/// io.cost.qos lines: "MAJ:MIN enable=1 ctrl=user rpct=... ". Returns devices with enable=1.
pub fn iocost_enabled<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<Vec<DevId>> {
    Ok(nested_keyed(s)?
        .into_iter()
        .filter(|(_, kv)| kv.get("enable").map(String::as_str) == Some("1"))
        .filter_map(|(d, _)| DevId::parse(&d))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_nested() {
        let m = flat_keyed("usage_usec 10\nuser_usec 7\n").unwrap();
        assert_eq!(m["usage_usec"], 10);
        assert!(
            flat_keyed("usage_usec ten\n")
                .unwrap_err()
                .0
                .contains("usage_usec ten")
        );
        let n = nested_keyed("8:0 rbytes=1 wbytes=2\n").unwrap();
        assert_eq!(n["8:0"]["wbytes"], "2");
    }

    #[test]
    fn io_weight_default_and_devices() {
        // Hand-typed: the iocost format of cgroup-v2.rst ("default 100" then "MAJ:MIN W"); a
        // fresh capture has no per-device line.
        let w = io_weight("default 100\n8:16 50\n").unwrap();
        assert_eq!(w.default, 100);
        assert_eq!(
            w.devices[&DevId {
                major: 8,
                minor: 16
            }],
            50
        );
        assert_eq!(io_weight("default 10000\n").unwrap().devices.len(), 0);
        assert!(io_weight("default 100\n8:16\n").is_err());
    }

    #[test]
    fn limits_and_cpu_max() {
        assert_eq!(limit("max\n").unwrap(), Limit::Max);
        assert_eq!(limit("4096\n").unwrap(), Limit::Value(4096));
        assert!(limit("-1").is_err());
        assert_eq!(cpu_max("max 100000\n").unwrap(), (Limit::Max, 100000));
        assert_eq!(
            cpu_max("50000 100000\n").unwrap(),
            (Limit::Value(50000), 100000)
        );
        assert!(cpu_max("50000").is_err());
    }

    #[test]
    fn weights_both_styles() {
        assert_eq!(weight("100\n").unwrap(), 100);
        assert_eq!(weight("default 300\n8:0 500\n").unwrap(), 300);
    }

    #[test]
    fn io_max_lines() {
        let v = io_max("254:0 rbps=10485760 wbps=max riops=max wiops=100\n").unwrap();
        assert_eq!(
            v[0].device,
            DevId {
                major: 254,
                minor: 0
            }
        );
        assert_eq!(v[0].rbps, Limit::Value(10485760));
        assert_eq!(v[0].wiops, Limit::Value(100));
        assert!(io_max("").unwrap().is_empty());
    }

    #[test]
    fn iocost_devices() {
        let d = iocost_enabled("254:0 enable=1 ctrl=user rpct=95.00 rlat=5000 wpct=95.00 wlat=5000 min=1.00 max=10000.00\n8:0 enable=0 ctrl=auto rpct=0.00 rlat=0 wpct=0.00 wlat=0 min=0.00 max=0.00\n").unwrap();
        assert_eq!(
            d,
            vec![DevId {
                major: 254,
                minor: 0
            }]
        );
    }
}
