//! Parsers for cgroupfs file contents: `&str` in, typed values out. No file access here, so
//! every parser can be fed a captured file (tests/fixtures/cgroupfs/).
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

fn err(what: &str, line: &str) -> ParseError {
    ParseError(format!("expected {what}, found '{}'", line.trim()))
}

/// "KEY VALUE" lines to a map. Unknown keys are kept: newer kernels add keys.
pub fn flat_keyed(s: &str) -> Result<BTreeMap<String, u64>, ParseError> {
    let mut out = BTreeMap::new();
    for line in s.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_ascii_whitespace();
        let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) else {
            return Err(err("'KEY VALUE'", line));
        };
        let v = v
            .parse()
            .map_err(|_| err("'KEY <unsigned integer>'", line))?;
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

/// "KEY SUB=VAL SUB=VAL" lines to a map of maps (values kept as text: io.max has "max").
pub fn nested_keyed(s: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, ParseError> {
    let mut out = BTreeMap::new();
    for line in s.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_ascii_whitespace();
        let key = it.next().ok_or_else(|| err("a key", line))?;
        let mut inner = BTreeMap::new();
        for kv in it {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| err("'SUBKEY=VALUE'", kv))?;
            inner.insert(k.to_string(), v.to_string());
        }
        out.insert(key.to_string(), inner);
    }
    Ok(out)
}

/// A single "max" or number (memory.max, pids.max, ...).
pub fn limit(s: &str) -> Result<Limit, ParseError> {
    Limit::parse(s).ok_or_else(|| err("'max' or an unsigned integer", s))
}

/// A single unsigned integer (memory.current, cpu.weight, ...).
pub fn single_u64(s: &str) -> Result<u64, ParseError> {
    s.trim().parse().map_err(|_| err("an unsigned integer", s))
}

/// cpu.max: "$MAX $PERIOD" -> (quota, period).
pub fn cpu_max(s: &str) -> Result<(Limit, u64), ParseError> {
    let mut it = s.split_ascii_whitespace();
    match (
        it.next().and_then(Limit::parse),
        it.next().and_then(|p| p.parse().ok()),
        it.next(),
    ) {
        (Some(q), Some(p), None) => Ok((q, p)),
        _ => Err(err("'max|QUOTA PERIOD'", s)),
    }
}

/// io.weight and cpu.weight style: "default N" first line (io.weight) or a bare "N" (cpu.weight).
pub fn weight(s: &str) -> Result<u32, ParseError> {
    let first = s.lines().next().unwrap_or("").trim();
    let v = first.strip_prefix("default ").unwrap_or(first);
    v.trim().parse().map_err(|_| err("a weight 1-10000", s))
}

/// io.weight whole: the "default N" line and the per-device "MAJ:MIN N" overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IoWeight {
    pub default: u32,
    pub devices: BTreeMap<DevId, u32>,
}

pub fn io_weight(s: &str) -> Result<IoWeight, ParseError> {
    let mut out = IoWeight {
        default: weight(s)?,
        devices: BTreeMap::new(),
    };
    for line in s.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_ascii_whitespace();
        match (
            it.next().and_then(DevId::parse),
            it.next().and_then(|w| w.parse().ok()),
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
pub fn io_max(s: &str) -> Result<Vec<IoMax>, ParseError> {
    let mut out = Vec::new();
    for (dev, kv) in nested_keyed(s)? {
        let device = DevId::parse(&dev).ok_or_else(|| err("MAJ:MIN", &dev))?;
        let get = |k: &str| -> Result<Limit, ParseError> {
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

/// One line of a pressure file: "some avg10=0.00 avg60=0.00 avg300=0.00 total=0".
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total_us: u64,
}

/// A pressure file (cpu/memory/io.pressure). `full` is absent on some kernels' cpu.pressure.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Psi {
    pub some: PsiLine,
    pub full: Option<PsiLine>,
}

pub fn psi(s: &str) -> Result<Psi, ParseError> {
    let mut some = None;
    let mut full = None;
    for line in s.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_ascii_whitespace();
        let kind = it.next().unwrap_or_default();
        let mut p = PsiLine::default();
        let mut have_total = false;
        for kv in it {
            let (k, v) = kv.split_once('=').ok_or_else(|| err("'KEY=VALUE'", kv))?;
            let bad = || err("a number", kv);
            match k {
                "avg10" => p.avg10 = v.parse().map_err(|_| bad())?,
                "avg60" => p.avg60 = v.parse().map_err(|_| bad())?,
                "avg300" => p.avg300 = v.parse().map_err(|_| bad())?,
                "total" => {
                    p.total_us = v.parse().map_err(|_| bad())?;
                    have_total = true;
                }
                _ => {}
            }
        }
        if !have_total {
            return Err(err("a 'total=' field", line));
        }
        match kind {
            "some" => some = Some(p),
            "full" => full = Some(p),
            _ => return Err(err("'some' or 'full'", line)),
        }
    }
    Ok(Psi {
        some: some.ok_or_else(|| err("a 'some' line", s))?,
        full,
    })
}

/// Controller names in cgroup.controllers / cgroup.subtree_control.
pub fn controllers(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_string).collect()
}

/// PIDs in cgroup.procs, one per line.
pub fn pids(s: &str) -> Result<Vec<u32>, ParseError> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().map_err(|_| err("a PID", l)))
        .collect()
}

/// io.cost.qos lines: "MAJ:MIN enable=1 ctrl=user rpct=... ". Returns devices with enable=1.
pub fn iocost_enabled(s: &str) -> Result<Vec<DevId>, ParseError> {
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

    /// Hand-typed: a kernel without `full` in cpu.pressure (before 5.13) cannot be captured in
    /// the 6.1 VM.
    #[test]
    fn psi_without_full() {
        let p = psi("some avg10=1.50 avg60=0.00 avg300=0.00 total=12345\n").unwrap();
        assert_eq!(p.some.total_us, 12345);
        assert_eq!(p.some.avg10, 1.5);
        assert!(p.full.is_none());
        assert!(psi("some avg10=1.50\n").is_err());
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
