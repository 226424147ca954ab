//! Parsers for cgroup v1 files, built on the primitives of `parse` (bytes in, typed values
//! out), and for the /proc files that locate a process's cgroups (mountinfo, /proc/PID/cgroup;
//! used by v1 and v2). No file access, so each is tested on files captured from a real host
//! (tests/fixtures/cgroupfs/v1-host-*/).
//!
//! Formats follow Documentation/admin-guide/cgroup-v1/{cgroups,memory,blkio-controller,pids}.rst
//! and proc(5) (mountinfo, /proc/PID/cgroup). Stat keys are `Option<u64>`: a key an older or
//! newer kernel lacks is not an error.
//!
//! /proc/PID/cgroup is parsed by `procfs`. mountinfo is not: `procfs::process::MountInfo`
//! keeps the octal escapes of paths ("\040" for a space) and the super options in a
//! `HashMap`, losing the order of a hierarchy's controllers, so `cgroup_mounts` stays ours.

use super::parse::{PResult, dec, dev_id, err, fields, flat_keyed, nonblank_lines, single_u64};
use crate::domain::plan::Limit;
use crate::domain::tenant::DevId;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One cgroup mount from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// True for cgroup2, false for a v1 hierarchy.
    pub v2: bool,
    /// The mount's root inside its hierarchy ("/" unless bind-mounted or in a cgroup namespace).
    pub root: String,
    pub mount_point: PathBuf,
    /// v1 controllers of the hierarchy, from the super options ("rw,cpu,cpuacct"); empty for v2.
    pub controllers: Vec<String>,
}

/// Undoes mountinfo's octal escapes ("\040" is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup and cgroup2 mounts of a mountinfo file (proc(5): "ID PARENT MAJ:MIN ROOT
/// MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS"). Other mounts are skipped.
pub fn cgroup_mounts<S: AsRef<[u8]> + ?Sized>(mountinfo: &S) -> PResult<Vec<CgroupMount>> {
    let mountinfo = String::from_utf8_lossy(mountinfo.as_ref());
    let mut out = Vec::new();
    for line in mountinfo.lines().filter(|l| !l.trim().is_empty()) {
        let (left, right) = line
            .split_once(" - ")
            .ok_or_else(|| err("'... - FSTYPE SOURCE OPTIONS'", line))?;
        let mut r = right.split_ascii_whitespace();
        let fstype = r.next().ok_or_else(|| err("a filesystem type", line))?;
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let l: Vec<&str> = left.split_ascii_whitespace().collect();
        if l.len() < 5 {
            return Err(err("'ID PARENT MAJ:MIN ROOT MOUNTPOINT'", line));
        }
        let superopts = r.nth(1).unwrap_or("");
        let controllers = if fstype == "cgroup" {
            superopts
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('=') && !o.is_empty())
                .filter(|o| {
                    !matches!(
                        *o,
                        "noprefix" | "clone_children" | "xattr" | "cpuset_v2_mode"
                    )
                })
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        out.push(CgroupMount {
            v2: fstype == "cgroup2",
            root: unescape(l[3]),
            mount_point: PathBuf::from(unescape(l[4])),
            controllers,
        });
    }
    Ok(out)
}

/// One line of /proc/PID/cgroup: "ID:CONTROLLERS:PATH" ("0::/path" is the v2 hierarchy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub id: u32,
    /// Controllers of the hierarchy ("cpu,cpuacct" split); empty for v2; "name=systemd" kept.
    pub controllers: Vec<String>,
    pub path: String,
}

/// /proc/PID/cgroup, read by `procfs::ProcessCGroups`.
pub fn proc_cgroup<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<Vec<ProcCgroup>> {
    use procfs::FromRead;
    let s = s.as_ref();
    let lines =
        procfs::ProcessCGroups::from_read(s).map_err(|_| err("'ID:CONTROLLERS:PATH' lines", s))?;
    Ok(lines
        .into_iter()
        .map(|l| ProcCgroup {
            id: l.hierarchy,
            controllers: l.controllers,
            path: l.pathname,
        })
        .collect())
}

/// v1 prints "no limit" as the largest page-aligned `long` (9223372036854771712 with 4 KiB
/// pages, a different number with 64 KiB pages); `-1` may be written for it. Anything from
/// 2^62 up cannot be a real limit, so it reads as `Limit::Max`.
pub const V1_UNLIMITED_FROM: u64 = 1 << 62;

/// memory.limit_in_bytes, memory.soft_limit_in_bytes, memory.memsw.limit_in_bytes.
pub fn memory_limit<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<Limit> {
    let v = single_u64(s)?;
    Ok(if v >= V1_UNLIMITED_FROM {
        Limit::Max
    } else {
        Limit::Value(v)
    })
}

/// cpu.cfs_quota_us: "-1" for no limit, else microseconds per period.
pub fn cfs_quota<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<Limit> {
    let s = s.as_ref();
    match s.trim_ascii() {
        b"-1" => Ok(Limit::Max),
        t => dec(t)
            .map(Limit::Value)
            .ok_or_else(|| err("'-1' or an unsigned integer", s)),
    }
}

/// blkio.throttle.{read,write}_{bps,iops}_device: "MAJ:MIN VALUE" lines.
pub fn throttle_device<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<BTreeMap<DevId, u64>> {
    let mut out = BTreeMap::new();
    for line in nonblank_lines(s.as_ref()) {
        let mut it = fields(line);
        match (
            it.next().and_then(dev_id),
            it.next().and_then(dec),
            it.next(),
        ) {
            (Some(d), Some(v), None) => {
                out.insert(d, v);
            }
            _ => return Err(err("'MAJ:MIN VALUE'", line)),
        }
    }
    Ok(out)
}

/// cpuacct.stat: user and system time in USER_HZ ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuacctStat {
    pub user_ticks: Option<u64>,
    pub system_ticks: Option<u64>,
}

pub fn cpuacct_stat<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<CpuacctStat> {
    let m = flat_keyed(s)?;
    Ok(CpuacctStat {
        user_ticks: m.get("user").copied(),
        system_ticks: m.get("system").copied(),
    })
}

/// cpuacct.usage: total CPU time of the cgroup and below, in nanoseconds.
pub fn cpuacct_usage_ns<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<u64> {
    single_u64(s)
}

/// memory.usage_in_bytes (page cache included, like the v2 memory.current).
pub fn memory_usage_bytes<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<u64> {
    single_u64(s)
}

/// memory.failcnt: how often usage hit memory.limit_in_bytes.
pub fn memory_failcnt<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<u64> {
    single_u64(s)
}

/// pids.current.
pub fn pids_current<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<u64> {
    single_u64(s)
}

/// memory.stat: flat keyed; `total_*` keys are hierarchical (this cgroup and below).
pub fn memory_stat<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<BTreeMap<String, u64>> {
    flat_keyed(s)
}

/// memory.oom_control. `oom_kill` (processes the OOM killer killed in this cgroup) exists since
/// Linux 4.13, so it is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OomControl {
    pub oom_kill_disable: bool,
    pub under_oom: bool,
    pub oom_kill: Option<u64>,
}

pub fn oom_control<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<OomControl> {
    let m = flat_keyed(s)?;
    Ok(OomControl {
        oom_kill_disable: m.get("oom_kill_disable").copied().unwrap_or(0) == 1,
        under_oom: m.get("under_oom").copied().unwrap_or(0) == 1,
        oom_kill: m.get("oom_kill").copied(),
    })
}

/// Bytes (or IOs) per device from blkio.throttle.io_service_bytes / io_serviced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlkioRw {
    pub read: u64,
    pub write: u64,
}

/// blkio.throttle.io_service_bytes (or io_serviced): "MAJ:MIN Read|Write|Sync|Async|Discard|Total N"
/// lines and a last "Total N". Only Read and Write are kept; the rest are sums or other splits.
pub fn blkio_rw<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<BTreeMap<DevId, BlkioRw>> {
    let mut out: BTreeMap<DevId, BlkioRw> = BTreeMap::new();
    for line in nonblank_lines(s.as_ref()) {
        let mut it = fields(line);
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(b"Total"), Some(v), None, None) => {
                dec(v).ok_or_else(|| err("'Total N'", line))?;
            }
            (Some(dev), Some(op), Some(v), None) => {
                let d = dev_id(dev).ok_or_else(|| err("MAJ:MIN", line))?;
                let v = dec(v).ok_or_else(|| err("'MAJ:MIN OP N'", line))?;
                let e = out.entry(d).or_default();
                match op {
                    b"Read" => e.read = v,
                    b"Write" => e.write = v,
                    _ => {}
                }
            }
            _ => return Err(err("'MAJ:MIN OP N' or 'Total N'", line)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const HOST: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cgroupfs/v1-host-6.18.44-fc-v657"
    );

    fn fixture(rel: &str) -> String {
        let p = Path::new(HOST).join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn mountinfo_of_a_hybrid_host() {
        let m = cgroup_mounts(&fixture("proc/self-mountinfo")).unwrap();
        let v2: Vec<_> = m.iter().filter(|m| m.v2).collect();
        assert_eq!(v2.len(), 1);
        assert_eq!(v2[0].mount_point, Path::new("/sys/fs/cgroup/unified"));
        let cpu = m.iter().find(|m| m.controllers == ["cpu"]).unwrap();
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(cpu.root, "/");
        assert!(m.iter().any(|m| m.controllers == ["cpuacct"]));
        // A named hierarchy ("name=systemd") carries no controller.
        assert!(
            m.iter()
                .any(|m| m.mount_point == Path::new("/sys/fs/cgroup/systemd")
                    && m.controllers.is_empty())
        );
        assert_eq!(m.len(), 10);
    }

    #[test]
    fn mountinfo_quirks() {
        // Hand-typed: a co-mounted cpu,cpuacct hierarchy (systemd's layout), a bind mount whose
        // root is not "/", and an escaped space; this host has none of them.
        let s = "40 31 0:37 /a /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
                 41 31 0:38 / /mnt/my\\040cg rw - cgroup cgroup rw,memory,clone_children\n";
        let m = cgroup_mounts(s).unwrap();
        assert_eq!(m[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(m[0].root, "/a");
        assert_eq!(m[1].mount_point, Path::new("/mnt/my cg"));
        assert_eq!(m[1].controllers, ["memory"]);
        assert!(cgroup_mounts("garbage").is_err());
    }

    #[test]
    fn proc_self_cgroup_of_a_hybrid_host() {
        let c = proc_cgroup(&fixture("proc/self-cgroup")).unwrap();
        assert_eq!(c.len(), 10);
        let mem = c.iter().find(|c| c.controllers == ["memory"]).unwrap();
        assert_eq!(mem.path, "/process_api/dfeced73022461b19fc976a3395add92");
        assert_eq!(c.iter().find(|c| c.id == 0).unwrap().controllers.len(), 0);
    }

    #[test]
    fn limits_and_quota() {
        assert_eq!(
            memory_limit(&fixture("memory/memory.limit_in_bytes")).unwrap(),
            Limit::Max
        );
        assert_eq!(
            memory_limit(&fixture("memory/memory.soft_limit_in_bytes")).unwrap(),
            Limit::Max
        );
        assert_eq!(
            memory_limit(&fixture("workload/memory.limit_in_bytes")).unwrap(),
            Limit::Value(50 << 20)
        );
        assert_eq!(
            memory_limit(&fixture("workload/memory.memsw.limit_in_bytes")).unwrap(),
            Limit::Max
        );
        // Hand-typed: "no limit" with 64 KiB pages (arm64, ppc64) is a different number.
        assert_eq!(memory_limit("9223372036854710272\n").unwrap(), Limit::Max);
        assert_eq!(
            cfs_quota(&fixture("cpu/cpu.cfs_quota_us")).unwrap(),
            Limit::Max
        );
        assert_eq!(
            single_u64(&fixture("cpu/cpu.cfs_period_us")).unwrap(),
            100_000
        );
        assert_eq!(single_u64(&fixture("cpu/cpu.shares")).unwrap(), 1024);
        assert_eq!(cfs_quota("50000\n").unwrap(), Limit::Value(50_000));
        assert!(cfs_quota("-2").is_err());
    }

    #[test]
    fn throttle_device_files() {
        let d = DevId {
            major: 254,
            minor: 0,
        };
        let r = throttle_device(&fixture("workload/blkio.throttle.read_bps_device")).unwrap();
        assert_eq!(r.get(&d), Some(&(1 << 30)));
        // The root's files are empty when no rule is set.
        assert!(throttle_device("").unwrap().is_empty());
        assert!(throttle_device("254:0").is_err());
    }

    // The host-root files (cpuacct/, memory/, blkio/) are re-captured now and then by
    // tests/vm/capture-fixtures.sh: check their shape, not their numbers. The workload/ files
    // are fixed.
    #[test]
    fn cpuacct() {
        assert!(cpuacct_usage_ns(&fixture("cpuacct/cpuacct.usage")).unwrap() > 0);
        let s = cpuacct_stat(&fixture("cpuacct/cpuacct.stat")).unwrap();
        assert!(s.user_ticks.is_some() && s.system_ticks.is_some());
        let s = cpuacct_stat(&fixture("workload/cpuacct.stat")).unwrap();
        assert_eq!((s.user_ticks, s.system_ticks), (Some(269), Some(5)));
        // The workload ran a 2 s busy loop, among others.
        assert_eq!(
            cpuacct_usage_ns(&fixture("workload/cpuacct.usage")).unwrap(),
            2_758_114_017
        );
    }

    #[test]
    fn memory() {
        assert!(memory_usage_bytes(&fixture("memory/memory.usage_in_bytes")).unwrap() > 0);
        let st = memory_stat(&fixture("memory/memory.stat")).unwrap();
        for k in ["rss", "cache", "total_rss", "pgmajfault"] {
            assert!(st.contains_key(k), "memory.stat has no {k}");
        }
        let limit = st["hierarchical_memory_limit"];
        assert_eq!(memory_limit(&limit.to_string()).unwrap(), Limit::Max);
        memory_failcnt(&fixture("memory/memory.failcnt")).unwrap();
        let o = oom_control(&fixture("memory/memory.oom_control")).unwrap();
        assert!(!o.oom_kill_disable && o.oom_kill.is_some());
        // The workload was OOM-killed once under its 50 MiB limit.
        let o = oom_control(&fixture("workload/memory.oom_control")).unwrap();
        assert_eq!(
            o,
            OomControl {
                oom_kill_disable: false,
                under_oom: false,
                oom_kill: Some(1)
            }
        );
        assert_eq!(
            memory_failcnt(&fixture("workload/memory.failcnt")).unwrap(),
            96
        );
        let st = memory_stat(&fixture("workload/memory.stat")).unwrap();
        assert_eq!(st.get("hierarchical_memory_limit"), Some(&(50 << 20)));
        // Hand-typed: kernels before 4.13 have no oom_kill line.
        assert_eq!(
            oom_control("oom_kill_disable 0\nunder_oom 0\n")
                .unwrap()
                .oom_kill,
            None
        );
    }

    #[test]
    fn blkio_and_pids() {
        blkio_rw(&fixture("blkio/blkio.throttle.io_service_bytes")).unwrap();
        let b = blkio_rw(&fixture("workload/blkio.throttle.io_service_bytes")).unwrap();
        assert_eq!(
            b[&DevId {
                major: 254,
                minor: 0
            }],
            BlkioRw {
                read: 8 << 20,
                write: 8 << 20
            }
        );
        let n = blkio_rw(&fixture("workload/blkio.throttle.io_serviced")).unwrap();
        assert_eq!(
            n[&DevId {
                major: 254,
                minor: 0
            }],
            BlkioRw { read: 16, write: 8 }
        );
        assert!(blkio_rw("254:0 Read").is_err());
        assert_eq!(pids_current(&fixture("workload/pids.current")).unwrap(), 3);
    }
}
