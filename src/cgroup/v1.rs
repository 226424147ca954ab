//! The cgroup v1 backend, for v1 and hybrid hosts: each controller has its own hierarchy, so a
//! tenant is one directory in each of the cpu, cpuacct, memory, blkio and pids hierarchies
//! (cpu and cpuacct may be one co-mounted hierarchy). Files as documented in
//! Documentation/admin-guide/cgroup-v1/ and Documentation/scheduler/sched-bwc.rst.
//!
//! The same `Settings` as v2, mapped (docs/v1.md has the table):
//! - cpu_weight -> cpu.shares = weight x 1024 / 100 (rounded): the v2 default weight 100 is the
//!   v1 default 1024 shares and ratios between siblings are kept; shown as a weight (shares x
//!   100 / 1024), but reconcile compares the shares file itself with the shares it would write.
//! - cpu.max -> cpu.cfs_quota_us (-1 for max) and cpu.cfs_period_us.
//! - memory_max -> memory.limit_in_bytes; memory_swap_max -> memory.memsw.limit_in_bytes =
//!   memory_max + swap (v1 limits memory and swap together), where swap accounting exists.
//! - memory_low (soft protection) -> memory.soft_limit_in_bytes: under host memory pressure v1
//!   reclaims first from cgroups above their soft limit. A new cgroup's soft limit is
//!   "unlimited" and reads back as that many bytes.
//! - memory_min (hard protection): no v1 equivalent, refused with `CgroupError::Unsupported`.
//! - memory_high: no v1 equivalent, not applied (`Backend::not_applied` says so).
//! - io_weight -> blkio.bfq.weight (BFQ, 1-1000) or blkio.weight (CFQ, 10-1000, x5) where the
//!   file exists, else not applied; io_max -> blkio.throttle.{read,write}_{bps,iops}_device.
//! - pids_max -> pids.max.
//!
//! v1 has no cgroup.kill: `kill` SIGKILLs, through pidfds, the PIDs listed in the tenant's own
//! cgroup.procs files until none are left.

use super::parse;
use super::v1_parse::{self, CgroupMount, ProcCgroup};
use super::{
    Backend, BlockDevice, CgroupError, CgroupPath, Change, DAEMON_LEAF, HostCgroup, LEAF,
    NotApplied, Result, normal, optional, read_file, settle_value, write_file,
};
use crate::domain::plan::{IoMax, Limit, Setting, Settings};
use crate::domain::tenant::DevId;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The v1 controllers tenantd uses, in the order the backend visits them.
pub const CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "blkio", "pids"];

/// Name of the governor's directory below the daemon's own cgroup in each hierarchy.
pub const DEFAULT_ROOT_NAME: &str = "tenantd";

/// cpu.shares for a v2 cpu.weight: proportional, so weight 100 (the v2 default) is 1024 shares
/// (the v1 default) and 300:100 is 3072:1024. Never the linear formula of the kernel's
/// v1-to-v2 conversion, which maps 1024 shares to weight 39.
pub fn shares_for_weight(weight: u32) -> u64 {
    (u64::from(weight) * 1024 + 50) / 100
}

/// The inverse of `shares_for_weight`, exact on its values; clamped to the v2 range 1-10000.
pub fn weight_for_shares(shares: u64) -> u32 {
    ((shares.saturating_mul(100) + 512) / 1024).clamp(1, 10_000) as u32
}

/// One v1 hierarchy: its mount point and the directory this process sits in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    pub mount: PathBuf,
    pub own: PathBuf,
}

/// Where each v1 hierarchy tenantd uses is mounted; `None` for a controller not mounted as v1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Hierarchies {
    pub cpu: Option<V1Mount>,
    pub cpuacct: Option<V1Mount>,
    pub memory: Option<V1Mount>,
    pub blkio: Option<V1Mount>,
    pub pids: Option<V1Mount>,
}

impl V1Hierarchies {
    /// From the contents of /proc/self/mountinfo and /proc/self/cgroup.
    pub fn from_proc(
        mountinfo: &str,
        proc_cgroup: &str,
    ) -> std::result::Result<Self, parse::ParseError> {
        let mounts = v1_parse::cgroup_mounts(mountinfo)?;
        let cgroups = v1_parse::proc_cgroup(proc_cgroup)?;
        let find = |c: &str| find_mount(&mounts, &cgroups, c);
        Ok(V1Hierarchies {
            cpu: find("cpu"),
            cpuacct: find("cpuacct"),
            memory: find("memory"),
            blkio: find("blkio"),
            pids: find("pids"),
        })
    }

    /// Reads `<proc>/self/mountinfo` and `<proc>/self/cgroup`.
    pub fn detect(proc_root: &Path) -> Result<Self> {
        let mi_path = proc_root.join("self/mountinfo");
        let mi = read_file(&mi_path)?;
        let cg = read_file(&proc_root.join("self/cgroup"))?;
        V1Hierarchies::from_proc(&mi, &cg).map_err(|source| CgroupError::Parse {
            path: mi_path,
            source,
        })
    }

    pub fn get(&self, controller: &str) -> Option<&V1Mount> {
        match controller {
            "cpu" => self.cpu.as_ref(),
            "cpuacct" => self.cpuacct.as_ref(),
            "memory" => self.memory.as_ref(),
            "blkio" => self.blkio.as_ref(),
            "pids" => self.pids.as_ref(),
            _ => None,
        }
    }

    /// True when the controllers tenantd cannot work without (cpu, memory) are mounted.
    pub fn usable(&self) -> bool {
        self.cpu.is_some() && self.memory.is_some()
    }

    /// The default roots: `<own cgroup>/tenantd` in each hierarchy, so tenants live below the
    /// daemon's own cgroup and the host's accounting of it still covers them.
    pub fn default_roots(&self) -> V1Roots {
        self.roots_with(|m| m.own.join(DEFAULT_ROOT_NAME))
    }

    /// The same path inside every hierarchy: `/tenantd` is `<cpu mount>/tenantd`, ...
    pub fn roots_at(&self, inside: &Path) -> V1Roots {
        let rel = inside.strip_prefix("/").unwrap_or(inside);
        self.roots_with(|m| m.mount.join(rel))
    }

    fn roots_with(&self, f: impl Fn(&V1Mount) -> PathBuf) -> V1Roots {
        let f = |m: &V1Mount| Arc::<Path>::from(f(m));
        V1Roots {
            cpu: self.cpu.as_ref().map(&f),
            cpuacct: self.cpuacct.as_ref().map(&f),
            memory: self.memory.as_ref().map(&f),
            blkio: self.blkio.as_ref().map(&f),
            pids: self.pids.as_ref().map(&f),
        }
    }
}

fn find_mount(mounts: &[CgroupMount], cgroups: &[ProcCgroup], controller: &str) -> Option<V1Mount> {
    let m = mounts
        .iter()
        .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))?;
    let c = cgroups
        .iter()
        .find(|c| c.id != 0 && c.controllers.iter().any(|x| x == controller))?;
    // The path in /proc/self/cgroup is relative to the hierarchy's root; the mount shows the
    // subtree at `m.root`, so strip it (a path outside the mount is not reachable).
    let rel = if m.root == "/" {
        c.path.as_str()
    } else {
        let rest = c.path.strip_prefix(m.root.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    Some(V1Mount {
        mount: m.mount_point.clone(),
        own: m.mount_point.join(rel.trim_start_matches('/')),
    })
}

/// The governor's root in each v1 hierarchy; `None` where the controller is not mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Roots {
    /// Shared, not copied: the sampler keeps one `V1Dirs` per tenant and its reader takes the
    /// same paths (10,000 tenants: 6 MB a copy; issue 15), and a co-mounted cpu,cpuacct
    /// directory is one path for both.
    pub cpu: Option<Arc<Path>>,
    pub cpuacct: Option<Arc<Path>>,
    pub memory: Option<Arc<Path>>,
    pub blkio: Option<Arc<Path>>,
    pub pids: Option<Arc<Path>>,
}

impl V1Roots {
    pub fn get(&self, controller: &str) -> Option<&Path> {
        self.shared(controller).map(|p| &**p)
    }

    /// `get`'s path as held, to share rather than copy.
    pub fn shared(&self, controller: &str) -> Option<&Arc<Path>> {
        match controller {
            "cpu" => self.cpu.as_ref(),
            "cpuacct" => self.cpuacct.as_ref(),
            "memory" => self.memory.as_ref(),
            "blkio" => self.blkio.as_ref(),
            "pids" => self.pids.as_ref(),
            _ => None,
        }
    }

    /// The distinct root directories (a co-mounted cpu,cpuacct counts once).
    pub fn distinct(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        for c in CONTROLLERS {
            if let Some(p) = self.get(c)
                && !out.contains(&p)
            {
                out.push(p);
            }
        }
        out
    }
}

/// Whether two controller lists name the same controllers (mountinfo and /proc/PID/cgroup
/// may list a co-mounted hierarchy's controllers in different orders).
fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// A tenant's directory in each hierarchy, for the usage sampler: the same shape as the roots.
pub type V1Dirs = V1Roots;

/// The cgroup v1 backend. `sys` is the sysfs mount (block devices), `proc` the procfs mount.
#[derive(Debug, Clone)]
pub struct V1 {
    roots: V1Roots,
    sys: PathBuf,
    proc: PathBuf,
    page: super::PageSize,
    /// The cgroup mounts `locate` maps each process's lines through.
    mounts: MountsCache,
}

/// The cgroup mounts of `/proc/self/mountinfo`, parsed once and again only when the kernel
/// says the mount table changed: the file stays open and `poll` reports `POLLPRI` on it after
/// a mount or unmount (proc(5), "/proc/pid/mountinfo"). A placement reads it at every
/// `locate` otherwise (issue 17: the kernel formats every mount of the host for each read).
/// Only for the real `/proc`; another root (the tests') is read every time.
#[derive(Debug, Default)]
struct MountsCache(std::sync::Mutex<Option<(fs::File, std::sync::Arc<Vec<CgroupMount>>)>>);

/// A clone starts with nothing cached.
impl Clone for MountsCache {
    fn clone(&self) -> Self {
        MountsCache::default()
    }
}

impl MountsCache {
    fn get(&self, proc_root: &Path) -> Result<std::sync::Arc<Vec<CgroupMount>>> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        use std::io::Read;
        let mi_path = proc_root.join("self/mountinfo");
        let parse = |text: &[u8]| {
            v1_parse::cgroup_mounts(text).map_err(|source| CgroupError::Parse {
                path: mi_path.clone(),
                source,
            })
        };
        if proc_root != Path::new("/proc") {
            return Ok(std::sync::Arc::new(parse(read_file(&mi_path)?.as_bytes())?));
        }
        let mut g = self.0.lock().expect("mounts lock");
        if let Some((f, mounts)) = g.as_ref() {
            let mut fds = [PollFd::new(f, PollFlags::PRI)];
            let now = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            if matches!(poll(&mut fds, Some(&now)), Ok(0)) {
                return Ok(mounts.clone());
            }
        }
        let read_err = |source| CgroupError::Read {
            path: mi_path.clone(),
            source,
        };
        let mut f = fs::File::open(&mi_path).map_err(read_err)?;
        let mut text = Vec::with_capacity(16 * 1024);
        f.read_to_end(&mut text).map_err(read_err)?;
        let mounts = std::sync::Arc::new(parse(&text)?);
        *g = Some((f, mounts.clone()));
        Ok(mounts)
    }
}

const THROTTLE: [&str; 4] = [
    "blkio.throttle.read_bps_device",
    "blkio.throttle.write_bps_device",
    "blkio.throttle.read_iops_device",
    "blkio.throttle.write_iops_device",
];

fn throttle_field(m: &IoMax, i: usize) -> Limit {
    [m.rbps, m.wbps, m.riops, m.wiops][i]
}

/// "-1" for no limit, as v1 memory and cfs files take it.
fn v1_text(l: Limit) -> String {
    match l {
        Limit::Max => "-1".into(),
        Limit::Value(v) => v.to_string(),
    }
}

/// A limit as a number for ordering (`Limit`'s derived order puts Max first).
fn magnitude(l: Limit) -> u64 {
    l.value().unwrap_or(u64::MAX)
}

impl V1 {
    /// Compares every value of `want` with the kernel's and returns each that differs, in
    /// the order `apply` writes them; writes them when `write` (else only reads: `drift`).
    fn settle(&self, dir: &CgroupPath, want: &Settings, write: bool) -> Result<Vec<Change>> {
        if want.memory_min_bytes > 0 {
            return Err(V1::unsupported(
                format!("memory.min of {} bytes for {dir}", want.memory_min_bytes),
                "cgroup v1 has no hard memory protection (memory.min exists only in cgroup v2): use a soft guarantee (memory.low, mapped to memory.soft_limit_in_bytes) or run tenantd on a cgroup v2 host",
            ));
        }
        let have = self.held(dir)?;
        // Every field of `Held` by name (no `..`): a new one does not build until it is
        // compared and written below.
        let Held {
            shares,
            cfs_quota,
            cfs_period,
            limit,
            memsw,
            soft,
            io_weight,
            throttle,
            pids_max,
        } = self.wanted(dir, want, &have)?;
        let mut changes = Vec::new();
        let mut put = |controller: &str, file: &str, was: String, now: String| -> Result<()> {
            let Some(p) = self.file_in(controller, dir, file) else {
                return Err(V1::unsupported(
                    format!("{file} for {dir}"),
                    format!("the {controller} v1 hierarchy is not mounted (see GET /v1/host)"),
                ));
            };
            settle_value(&mut changes, &p, write, file, was, now)
        };

        if have.shares != shares {
            put(
                "cpu",
                "cpu.shares",
                have.shares.to_string(),
                shares.to_string(),
            )?;
        }
        if have.cfs_period != cfs_period {
            // Lift the quota first, so no intermediate quota/period pair is refused.
            if have.cfs_quota != Limit::Max {
                put(
                    "cpu",
                    "cpu.cfs_quota_us",
                    v1_text(have.cfs_quota),
                    "-1".into(),
                )?;
            }
            put(
                "cpu",
                "cpu.cfs_period_us",
                have.cfs_period.to_string(),
                cfs_period.to_string(),
            )?;
            if cfs_quota != Limit::Max {
                put("cpu", "cpu.cfs_quota_us", "-1".into(), v1_text(cfs_quota))?;
            }
        } else if have.cfs_quota != cfs_quota {
            put(
                "cpu",
                "cpu.cfs_quota_us",
                v1_text(have.cfs_quota),
                v1_text(cfs_quota),
            )?;
        }

        // memory.limit_in_bytes <= memory.memsw.limit_in_bytes must hold after every write:
        // raise memsw before the limit, lower it after.
        let memsw_new = match (have.memsw, memsw) {
            (Some(now), Some(new)) if now != new => Some((now, new)),
            _ => None,
        };
        let page = self.page;
        let write_memsw =
            |put: &mut dyn FnMut(&str, &str, String, String) -> Result<()>| -> Result<()> {
                if let Some((now, new)) = memsw_new {
                    put(
                        "memory",
                        "memory.memsw.limit_in_bytes",
                        page.v1_bytes(now).to_string(),
                        v1_text(new),
                    )?;
                }
                Ok(())
            };
        let raise_memsw_first =
            memsw_new.is_some_and(|(now, new)| magnitude(new) >= magnitude(now));
        if raise_memsw_first {
            write_memsw(&mut put)?;
        }
        if have.limit != limit {
            put(
                "memory",
                "memory.limit_in_bytes",
                page.v1_bytes(have.limit).to_string(),
                v1_text(limit),
            )?;
        }
        if !raise_memsw_first {
            write_memsw(&mut put)?;
        }
        if have.soft != soft {
            put(
                "memory",
                "memory.soft_limit_in_bytes",
                page.v1_bytes(have.soft).to_string(),
                v1_text(soft),
            )?;
        }

        if let (Some((file, h)), Some((_, w))) = (&have.io_weight, &io_weight)
            && h != w
        {
            put("blkio", file, h.to_string(), w.to_string())?;
        }

        // blkio.throttle.*: one file per field; "MAJ:MIN 0" removes a rule.
        let devices: BTreeSet<DevId> = throttle
            .keys()
            .chain(have.throttle.keys())
            .copied()
            .collect();
        for d in devices {
            let w = throttle.get(&d);
            let h = have.throttle.get(&d);
            for (i, file) in THROTTLE.iter().enumerate() {
                let wv = w.map_or(Limit::Max, |m| throttle_field(m, i));
                let hv = h.map_or(Limit::Max, |m| throttle_field(m, i));
                if wv != hv {
                    let text = |l: Limit| format!("{d} {}", l.value().unwrap_or(0));
                    put("blkio", file, text(hv), text(wv))?;
                }
            }
        }

        if have.pids_max != pids_max {
            put(
                "pids",
                "pids.max",
                have.pids_max.to_string(),
                pids_max.to_string(),
            )?;
        }
        Ok(changes)
    }

    pub fn new(roots: V1Roots, sys: impl Into<PathBuf>, proc: impl Into<PathBuf>) -> Self {
        V1 {
            roots,
            sys: sys.into(),
            proc: proc.into(),
            page: super::PageSize::of_host(),
            mounts: MountsCache::default(),
        }
    }

    pub fn roots(&self) -> &V1Roots {
        &self.roots
    }

    /// The directory of `dir` in each hierarchy.
    pub fn dirs_of(&self, dir: &CgroupPath) -> V1Dirs {
        let d = |c: &str| self.roots.get(c).map(|r| Arc::<Path>::from(dir.under(r)));
        let cpu = d("cpu");
        let cpuacct = match (&self.roots.cpu, &self.roots.cpuacct, &cpu) {
            (Some(a), Some(b), Some(c)) if a == b => Some(c.clone()),
            _ => d("cpuacct"),
        };
        V1Dirs {
            cpu,
            cpuacct,
            memory: d("memory"),
            blkio: d("blkio"),
            pids: d("pids"),
        }
    }

    fn primary(&self) -> Option<&Path> {
        CONTROLLERS.iter().find_map(|c| self.roots.get(c))
    }

    fn file_in(&self, controller: &str, dir: &CgroupPath, file: &str) -> Option<PathBuf> {
        self.roots.get(controller).map(|r| dir.under(r).join(file))
    }

    fn read_opt<T>(
        &self,
        controller: &str,
        dir: &CgroupPath,
        file: &str,
        f: impl FnOnce(&[u8]) -> std::result::Result<T, parse::ParseError>,
    ) -> Result<Option<T>> {
        match self.file_in(controller, dir, file) {
            Some(p) => optional(&p, f),
            None => Ok(None),
        }
    }

    /// The io weight file of `dir` and how a v2 weight maps onto it: BFQ's blkio.bfq.weight
    /// (1-1000, default 100: same scale) or CFQ's blkio.weight (10-1000, default 500: x5).
    fn io_weight_file(&self, dir: &CgroupPath) -> Option<(PathBuf, bool)> {
        let d = dir.under(self.roots.blkio.as_deref()?);
        [("blkio.bfq.weight", true), ("blkio.weight", false)]
            .into_iter()
            .map(|(f, bfq)| (d.join(f), bfq))
            .find(|(p, _)| p.exists())
    }

    /// The memsw limit that delivers memory_max and swap_max; `None` when v1 cannot.
    fn memsw_for(&self, max: Limit, swap_max: Limit) -> Option<Limit> {
        match (self.page.memory(max), self.page.memory(swap_max)) {
            (_, Limit::Max) => Some(Limit::Max),
            (Limit::Value(m), Limit::Value(s)) => {
                Some(self.page.memory(Limit::Value(m.saturating_add(s))))
            }
            (Limit::Max, Limit::Value(_)) => None,
        }
    }

    /// Every PID in `dir` and below, in every hierarchy.
    fn subtree_pids(&self, dir: &CgroupPath) -> Result<BTreeSet<u32>> {
        let mut out = BTreeSet::new();
        for r in self.roots.distinct() {
            super::pids_below(&dir.under(r), &mut out)?;
        }
        Ok(out)
    }

    fn block_devices(&self, weight_file: Option<(PathBuf, bool)>) -> Vec<BlockDevice> {
        let mut out = Vec::new();
        for super::SysBlock {
            device,
            name,
            scheduler,
        } in super::sys_block_devices(&self.sys)
        {
            let (eff, why) = match (&weight_file, scheduler.as_deref()) {
                (Some((_, true)), Some("bfq")) => (true, "the device uses BFQ and blkio.bfq.weight exists".to_string()),
                (Some((_, false)), Some("cfq")) => (true, "the device uses CFQ and blkio.weight exists".to_string()),
                (None, _) => (
                    false,
                    "cgroup v1 has no blkio.weight or blkio.bfq.weight here (no CFQ, BFQ without v1 weights): io_weight is not applied; io_max (blkio.throttle.*) works".to_string(),
                ),
                (Some(_), s) => (
                    false,
                    format!(
                        "the scheduler of {name} is {}: blkio weights only act under BFQ (or CFQ before Linux 5.0)",
                        s.unwrap_or("unknown")
                    ),
                ),
            };
            out.push(BlockDevice {
                device,
                name,
                scheduler,
                io_weight_effective: eff,
                io_weight_reason: why,
            });
        }
        out.sort_by_key(|d| d.device);
        out
    }

    fn unsupported(what: String, why: impl Into<String>) -> CgroupError {
        CgroupError::Unsupported {
            what,
            why: why.into(),
        }
    }
}

/// A directory's values as the v1 kernel holds them, in each file's own units (cpu.shares,
/// not a weight): `V1::held` reads them, `V1::wanted` maps what tenantd wants onto them, and
/// `apply` writes a file iff the two differ, so a value is corrected exactly when it drifted.
/// A file that does not exist here counts as the kernel's default.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    shares: u64,
    cfs_quota: Limit,
    cfs_period: u64,
    /// memory.limit_in_bytes (`PageSize::memory`: the page cap is `Max`).
    limit: Limit,
    /// memory.memsw.limit_in_bytes; `None` without swap accounting.
    memsw: Option<Limit>,
    /// memory.soft_limit_in_bytes.
    soft: Limit,
    /// The io weight file's name and value; `None` when neither exists.
    io_weight: Option<(String, u32)>,
    throttle: BTreeMap<DevId, IoMax>,
    pids_max: Limit,
}

/// `MIN_SHARES` and `MAX_SHARES` (kernel/sched/sched.h): cpu.shares holds a written value
/// clamped to 2-262144.
pub const SHARES_RANGE: std::ops::RangeInclusive<u64> = 2..=(1 << 18);

/// The cpu.shares file's value once tenantd writes the shares of `weight`.
pub fn shares_file_for_weight(weight: u32) -> u64 {
    shares_for_weight(weight).clamp(*SHARES_RANGE.start(), *SHARES_RANGE.end())
}

/// The io weight file's value once tenantd writes `weight`: BFQ's blkio.bfq.weight takes
/// 1-1000 (`BFQ_MIN_WEIGHT`, `BFQ_MAX_WEIGHT`; the kernel refuses others), CFQ's
/// blkio.weight 10-1000 on a x5 scale (its default 500 is v2's 100).
pub fn blkio_weight_for(weight: u32, bfq: bool) -> u32 {
    if bfq {
        weight.clamp(1, 1000)
    } else {
        weight.saturating_mul(5).clamp(10, 1000)
    }
}

/// blkio.throttle.*: "MAJ:MIN 0" removes a rule, so 0 is no limit too.
fn throttle_limit(l: Limit) -> Limit {
    match l {
        Limit::Value(0) => Limit::Max,
        l => l,
    }
}

impl V1 {
    fn held(&self, dir: &CgroupPath) -> Result<Held> {
        for r in self.roots.distinct() {
            super::require_dir(&dir.under(r))?;
        }
        let d = Settings::default();
        let memory = |file: &str| -> Result<Option<Limit>> {
            Ok(self
                .read_opt("memory", dir, file, parse::single_u64)?
                .map(|v| self.page.memory(Limit::Value(v))))
        };
        let io_weight = match self.io_weight_file(dir) {
            Some((p, _)) => optional(&p, parse::weight)?.map(|w| {
                let file = p
                    .file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default();
                (file, w)
            }),
            None => None,
        };
        let mut io: BTreeMap<DevId, IoMax> = BTreeMap::new();
        for (i, file) in THROTTLE.iter().enumerate() {
            for (dev, v) in self
                .read_opt("blkio", dir, file, v1_parse::throttle_device)?
                .unwrap_or_default()
            {
                let m = io.entry(dev).or_insert(IoMax {
                    device: dev,
                    rbps: Limit::Max,
                    wbps: Limit::Max,
                    riops: Limit::Max,
                    wiops: Limit::Max,
                });
                *[&mut m.rbps, &mut m.wbps, &mut m.riops, &mut m.wiops][i] = Limit::Value(v);
            }
        }
        Ok(Held {
            shares: self
                .read_opt("cpu", dir, "cpu.shares", parse::single_u64)?
                .unwrap_or_else(|| shares_for_weight(d.cpu_weight)),
            cfs_quota: self
                .read_opt("cpu", dir, "cpu.cfs_quota_us", v1_parse::cfs_quota)?
                .unwrap_or(d.cpu_max_quota_us),
            cfs_period: self
                .read_opt("cpu", dir, "cpu.cfs_period_us", parse::single_u64)?
                .unwrap_or(d.cpu_max_period_us),
            limit: memory("memory.limit_in_bytes")?.unwrap_or(Limit::Max),
            memsw: memory("memory.memsw.limit_in_bytes")?,
            soft: memory("memory.soft_limit_in_bytes")?.unwrap_or(Limit::Max),
            io_weight,
            throttle: normal::io_max_by_device(&io.into_values().collect::<Vec<_>>()),
            pids_max: normal::pids(
                self.read_opt("pids", dir, "pids.max", parse::limit)?
                    .unwrap_or(Limit::Max),
            ),
        })
    }

    /// `want` as the kernel will hold it once written, in the files `have` has. Takes every
    /// field of `Settings` by name (no `..`), so a new setting does not build until it is
    /// mapped here or named as one v1 cannot apply.
    fn wanted(&self, dir: &CgroupPath, want: &Settings, have: &Held) -> Result<Held> {
        let Settings {
            cpu_weight,
            cpu_max_quota_us,
            cpu_max_period_us,
            // Refused by `apply` when set: v1 has no hard protection.
            memory_min_bytes: _,
            memory_low_bytes,
            // No v1 file: reported by `not_applied`.
            memory_high_bytes: _,
            memory_max_bytes,
            memory_swap_max_bytes,
            io_weight,
            io_max,
            pids_max,
        } = want;
        let memsw = match (
            have.memsw,
            self.memsw_for(*memory_max_bytes, *memory_swap_max_bytes),
        ) {
            (Some(_), None) => {
                return Err(V1::unsupported(
                    format!("memory.swap.max without memory.max for {dir}"),
                    "cgroup v1 limits memory and swap together (memory.memsw.limit_in_bytes): set a memory limit too",
                ));
            }
            (Some(_), new) => new,
            (None, _) => None,
        };
        let io_max: Vec<IoMax> = io_max
            .iter()
            .map(|m| IoMax {
                device: m.device,
                rbps: throttle_limit(m.rbps),
                wbps: throttle_limit(m.wbps),
                riops: throttle_limit(m.riops),
                wiops: throttle_limit(m.wiops),
            })
            .collect();
        Ok(Held {
            shares: shares_file_for_weight(*cpu_weight),
            cfs_quota: *cpu_max_quota_us,
            cfs_period: *cpu_max_period_us,
            limit: self.page.memory(*memory_max_bytes),
            memsw,
            soft: self.page.memory(Limit::Value(*memory_low_bytes)),
            io_weight: have.io_weight.as_ref().map(|(file, _)| {
                (
                    file.clone(),
                    blkio_weight_for(*io_weight, file == "blkio.bfq.weight"),
                )
            }),
            throttle: normal::io_max_by_device(&io_max),
            pids_max: normal::pids(*pids_max),
        })
    }
}

impl Backend for V1 {
    fn host(&self) -> Result<HostCgroup> {
        let controllers: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| self.roots.get(c).is_some())
            .map(|c| c.to_string())
            .collect();
        let missing = CONTROLLERS
            .iter()
            .filter(|c| self.roots.get(c).is_none())
            .map(|c| c.to_string())
            .collect();
        // Per-cgroup pressure files are a v2 feature; a v1 cpu hierarchy has none.
        let psi = self.proc.join("pressure").exists()
            && self.roots.cpu.as_ref().is_some_and(|r| {
                r.join("cpu.pressure").exists()
                    || r.parent().is_some_and(|p| p.join("cpu.pressure").exists())
            });
        let weight = self
            .io_weight_file(&CgroupPath::root())
            .or_else(|| self.io_weight_file(&CgroupPath::daemon()));
        Ok(HostCgroup {
            version: "v1".into(),
            root: self.primary().map(Path::to_path_buf).unwrap_or_default(),
            controllers,
            missing,
            psi,
            kill: false,
            devices: self.block_devices(weight),
        })
    }

    fn prepare_root(&self) -> Result<()> {
        if self.roots.distinct().is_empty() {
            return Err(V1::unsupported(
                "cgroup v1".into(),
                "none of the cpu, cpuacct, memory, blkio and pids hierarchies is mounted",
            ));
        }
        for root in self.roots.distinct() {
            if let Some(parent) = root.parent()
                && !parent.join("cgroup.procs").exists()
            {
                return Err(V1::unsupported(
                    format!("cgroup root {}", root.display()),
                    format!(
                        "{} is not a cgroup v1 directory: create it or choose another --cgroup-root",
                        parent.display()
                    ),
                ));
            }
            super::mkdir(root)?;
            super::mkdir(&root.join(DAEMON_LEAF))?;
        }
        Ok(())
    }

    fn ensure(&self, dir: &CgroupPath, leaf: bool) -> Result<bool> {
        let mut created = false;
        for root in self.roots.distinct() {
            let p = dir.under(root);
            created |= super::mkdir(&p)?;
            if leaf {
                created |= super::mkdir(&p.join(LEAF))?;
            }
        }
        Ok(created)
    }

    fn apply(&self, dir: &CgroupPath, want: &Settings) -> Result<Vec<Change>> {
        self.settle(dir, want, true)
    }

    fn drift(&self, dir: &CgroupPath, want: &Settings) -> Result<Vec<Change>> {
        self.settle(dir, want, false)
    }

    fn read(&self, dir: &CgroupPath) -> Result<Settings> {
        let h = self.held(dir)?;
        let d = Settings::default();
        let swap = match (h.memsw.unwrap_or(Limit::Max), h.limit) {
            (Limit::Max, _) => Limit::Max,
            (Limit::Value(t), Limit::Value(m)) => Limit::Value(t.saturating_sub(m)),
            (Limit::Value(t), Limit::Max) => Limit::Value(t),
        };
        let io_weight = match &h.io_weight {
            Some((file, w)) if file == "blkio.bfq.weight" => *w,
            Some((_, w)) => w / 5,
            None => d.io_weight,
        };
        Ok(Settings {
            cpu_weight: weight_for_shares(h.shares),
            cpu_max_quota_us: h.cfs_quota,
            cpu_max_period_us: h.cfs_period,
            memory_min_bytes: 0,
            // The soft limit as the kernel holds it: "unlimited" reads as that many bytes,
            // which as a protection means "all of it", as it acts in v1.
            memory_low_bytes: self.page.v1_bytes(h.soft),
            memory_high_bytes: Limit::Max,
            memory_max_bytes: h.limit,
            memory_swap_max_bytes: swap,
            io_weight,
            io_max: h.throttle.into_values().collect(),
            pids_max: h.pids_max,
        })
    }

    fn not_applied(&self, want: &Settings) -> Vec<NotApplied> {
        // Every field of `Settings` by name (no `..`): a new setting does not build until it
        // is named here as applied (by `wanted`) or checked.
        let Settings {
            cpu_weight: _,
            cpu_max_quota_us: _,
            cpu_max_period_us: _,
            // Refused by `apply`, not left unset.
            memory_min_bytes: _,
            memory_low_bytes: _,
            memory_high_bytes,
            memory_max_bytes: _,
            memory_swap_max_bytes,
            io_weight,
            io_max: _,
            pids_max: _,
        } = want;
        let d = Settings::default();
        let mut out = Vec::new();
        if *memory_high_bytes != d.memory_high_bytes {
            out.push(NotApplied {
                setting: Setting::MemoryHighBytes,
                why: "cgroup v1 has no memory.high (throttling before the hard limit); only memory_max (memory.limit_in_bytes) is enforced".into(),
            });
        }
        if *io_weight != d.io_weight && self.io_weight_file(&CgroupPath::root()).is_none() {
            out.push(NotApplied {
                setting: Setting::IoWeight,
                why: "neither blkio.bfq.weight nor blkio.weight exists on this v1 host: io_weight has no effect".into(),
            });
        }
        if *memory_swap_max_bytes != d.memory_swap_max_bytes
            && self
                .roots
                .memory
                .as_ref()
                .is_some_and(|r| !r.join("memory.memsw.limit_in_bytes").exists())
        {
            out.push(NotApplied {
                setting: Setting::MemorySwapMaxBytes,
                why: "swap accounting is off (no memory.memsw.limit_in_bytes; boot with swapaccount=1)".into(),
            });
        }
        out
    }

    fn procs(&self, dir: &CgroupPath) -> Result<Vec<u32>> {
        let mut out = BTreeSet::new();
        for r in self.roots.distinct() {
            out.extend(
                optional(&dir.under(r).join("cgroup.procs"), parse::pids)?.unwrap_or_default(),
            );
        }
        Ok(out.into_iter().collect())
    }

    fn populated(&self, dir: &CgroupPath) -> Result<bool> {
        Ok(!self.subtree_pids(dir)?.is_empty())
    }

    fn subtree_procs(&self, dir: &CgroupPath) -> Result<Vec<u32>> {
        Ok(self.subtree_pids(dir)?.into_iter().collect())
    }

    fn attach(&self, dir: &CgroupPath, pid: u32) -> Result<()> {
        for r in self.roots.distinct() {
            write_file(&dir.under(r).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn dirs(&self, dir: &CgroupPath) -> Vec<PathBuf> {
        self.roots.distinct().iter().map(|r| dir.under(r)).collect()
    }

    /// Each hierarchy's line of /proc/PID/cgroup, found by the controllers of the mount that
    /// holds the governor root there (this process's /proc/self/mountinfo).
    fn locate(&self, proc_root: &Path, pid: u32) -> Result<Vec<PathBuf>> {
        let mounts = self.mounts.get(proc_root)?;
        let cg_path = proc_root.join(pid.to_string()).join("cgroup");
        let lines =
            v1_parse::proc_cgroup(&read_file(&cg_path)?).map_err(|source| CgroupError::Parse {
                path: cg_path.clone(),
                source,
            })?;
        let unknown = |root: &Path, why: &str| CgroupError::Parse {
            path: cg_path.clone(),
            source: parse::ParseError(format!(
                "cannot tell where PID {pid} is in the hierarchy of {}: {why}",
                root.display()
            )),
        };
        self.roots
            .distinct()
            .iter()
            .map(|root| {
                let m = mounts
                    .iter()
                    .filter(|m| !m.v2 && root.starts_with(&m.mount_point))
                    .max_by_key(|m| m.mount_point.as_os_str().len())
                    .ok_or_else(|| unknown(root, "no v1 cgroup mount holds it"))?;
                let line = lines
                    .iter()
                    .find(|l| {
                        l.id != 0
                            && !m.controllers.is_empty()
                            && same_set(&l.controllers, &m.controllers)
                    })
                    .ok_or_else(|| unknown(root, "no line for its controllers"))?;
                let rel = if m.root == "/" {
                    line.path.as_str()
                } else {
                    line.path
                        .strip_prefix(m.root.as_str())
                        .ok_or_else(|| unknown(root, "the process is outside the mount"))?
                };
                Ok(m.mount_point.join(rel.trim_start_matches('/')))
            })
            .collect()
    }

    /// v1 has no cgroup.kill: SIGKILL every PID listed in `dir` and below, again until none
    /// is left (a process may fork meanwhile). A PID is signalled through a pidfd opened
    /// before checking that it is still listed, so a recycled PID outside is never hit.
    fn kill(&self, dir: &CgroupPath) -> Result<()> {
        use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
        let path = self.path_of(dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.subtree_pids(dir)?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Dir {
                    op: "empty (processes survived SIGKILL for 10 s)",
                    path,
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            let fds: Vec<_> = pids
                .iter()
                .filter_map(|&p| {
                    Pid::from_raw(p as i32)
                        .and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok())
                        .map(|fd| (p, fd))
                })
                .collect();
            let still = self.subtree_pids(dir)?;
            for (p, fd) in fds.iter().filter(|(p, _)| still.contains(p)) {
                match pidfd_send_signal(fd, Signal::KILL) {
                    Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                    Err(e) => {
                        return Err(CgroupError::Write {
                            path: self.proc.join(p.to_string()),
                            value: "SIGKILL".into(),
                            source: e.into(),
                        });
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn remove(&self, dir: &CgroupPath) -> Result<()> {
        for r in self.roots.distinct() {
            super::remove_dir_and_leaf(&dir.under(r))?;
        }
        Ok(())
    }

    fn children(&self, dir: &CgroupPath) -> Result<Vec<String>> {
        let mut out = BTreeSet::new();
        for r in self.roots.distinct() {
            let path = dir.under(r);
            let rd = fs::read_dir(&path).map_err(|source| CgroupError::Dir {
                op: "list",
                path: path.clone(),
                source,
            })?;
            out.extend(
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().to_string()),
            );
        }
        Ok(out.into_iter().collect())
    }

    fn exists(&self, dir: &CgroupPath) -> bool {
        let roots = self.roots.distinct();
        !roots.is_empty() && roots.iter().all(|r| dir.under(r).is_dir())
    }

    fn path_of(&self, dir: &CgroupPath) -> PathBuf {
        dir.under(self.primary().unwrap_or(Path::new("/")))
    }

    fn sample_source(&self, dir: &CgroupPath) -> super::SampleSource {
        super::SampleSource::V1 {
            dirs: self.dirs_of(dir),
            proc: self.proc.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cgroupfs/v1-host-6.18.44-fc-v657/proc"
    );

    #[test]
    fn weight_to_shares_is_proportional() {
        assert_eq!(shares_for_weight(100), 1024);
        assert_eq!(shares_for_weight(300), 3072);
        assert_eq!(shares_for_weight(1), 10);
        assert_eq!(shares_for_weight(10_000), 102_400);
        assert_eq!(weight_for_shares(1024), 100);
        assert_eq!(weight_for_shares(2), 1);
        for w in 1..=10_000 {
            assert_eq!(
                weight_for_shares(shares_for_weight(w)),
                w,
                "round trip of weight {w}"
            );
        }
    }

    #[test]
    fn shares_and_blkio_weights_as_the_files_hold_them() {
        assert_eq!(shares_file_for_weight(1), 10);
        assert_eq!(shares_file_for_weight(100), 1024);
        assert_eq!(shares_file_for_weight(10_000), 102_400);
        assert_eq!(shares_file_for_weight(0), 2, "MIN_SHARES");
        assert_eq!(shares_file_for_weight(u32::MAX), 262_144, "MAX_SHARES");
        for w in 1..=10_000 {
            assert!(SHARES_RANGE.contains(&shares_file_for_weight(w)), "{w}");
        }
        // Shares 2 and 15 read back as the same weight, but are different files.
        assert_eq!(weight_for_shares(2), weight_for_shares(15));
        assert_ne!(shares_file_for_weight(1), 2);
        assert_ne!(shares_file_for_weight(1), 15);
        // BFQ: 1-1000 on the v2 scale; CFQ: 10-1000, x5.
        assert_eq!(blkio_weight_for(1, true), 1);
        assert_eq!(blkio_weight_for(100, true), 100);
        assert_eq!(blkio_weight_for(10_000, true), 1000);
        assert_eq!(blkio_weight_for(1, false), 10);
        assert_eq!(blkio_weight_for(100, false), 500);
        assert_eq!(blkio_weight_for(10_000, false), 1000);
        assert_eq!(blkio_weight_for(u32::MAX, false), 1000);
        assert_eq!(throttle_limit(Limit::Value(0)), Limit::Max);
        assert_eq!(throttle_limit(Limit::Value(1)), Limit::Value(1));
    }

    /// `locate` over a procfs copy made of the captured host files: this process's mountinfo
    /// and, as PID 4242's cgroup file, the captured /proc/self/cgroup with the tenant paths a
    /// half-done v1 attach leaves (cpu moved, the others not).
    #[test]
    fn locate_reads_each_hierarchys_line_of_proc_pid_cgroup() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proc.path().join("self")).unwrap();
        std::fs::create_dir_all(proc.path().join("4242")).unwrap();
        std::fs::copy(
            format!("{HOST}/self-mountinfo"),
            proc.path().join("self/mountinfo"),
        )
        .unwrap();
        let cg = std::fs::read_to_string(format!("{HOST}/self-cgroup"))
            .unwrap()
            .replace("1:cpu:/", "1:cpu:/tenantd/t/_procs");
        std::fs::write(proc.path().join("4242/cgroup"), cg).unwrap();
        let mi = std::fs::read_to_string(format!("{HOST}/self-mountinfo")).unwrap();
        let own = std::fs::read_to_string(format!("{HOST}/self-cgroup")).unwrap();
        let roots = V1Hierarchies::from_proc(&mi, &own).unwrap().default_roots();
        let b = V1::new(roots, "/sys", proc.path());
        let leaf = CgroupPath::parse("t/_procs").unwrap();
        let at = b.locate(proc.path(), 4242).unwrap();
        assert_eq!(at.len(), 5);
        assert_eq!(at[0], b.dirs(&leaf)[0], "cpu: moved");
        assert_eq!(at[1], Path::new("/sys/fs/cgroup/cpuacct"));
        assert_eq!(
            at[2],
            Path::new("/sys/fs/cgroup/memory/process_api/dfeced73022461b19fc976a3395add92")
        );
        assert_ne!(at, b.dirs(&leaf), "split across hierarchies");
        let gone = b.locate(proc.path(), 4243).unwrap_err();
        assert!(gone.is_gone(), "{gone}");
    }

    #[test]
    fn hierarchies_of_the_hybrid_host() {
        let mi = std::fs::read_to_string(format!("{HOST}/self-mountinfo")).unwrap();
        let cg = std::fs::read_to_string(format!("{HOST}/self-cgroup")).unwrap();
        let h = V1Hierarchies::from_proc(&mi, &cg).unwrap();
        assert!(h.usable());
        assert_eq!(
            h.cpu.as_ref().unwrap().own,
            Path::new("/sys/fs/cgroup/cpu/")
        );
        assert_eq!(
            h.memory.as_ref().unwrap().own,
            Path::new("/sys/fs/cgroup/memory/process_api/dfeced73022461b19fc976a3395add92")
        );
        let r = h.default_roots();
        assert_eq!(
            r.cpu.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu/tenantd"))
        );
        assert_eq!(
            r.cpuacct.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpuacct/tenantd"))
        );
        assert_eq!(
            r.memory.as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/memory/process_api/dfeced73022461b19fc976a3395add92/tenantd"
            ))
        );
        assert_eq!(r.distinct().len(), 5);
        let at = h.roots_at(Path::new("/gov"));
        assert_eq!(
            at.pids.as_deref(),
            Some(Path::new("/sys/fs/cgroup/pids/gov"))
        );
    }

    #[test]
    fn co_mounted_and_bind_mounted_hierarchies() {
        // Hand-typed: systemd's co-mounted cpu,cpuacct, and a container's bind mount whose root
        // is the container's own cgroup; this host has neither.
        let mi = "1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                  2 0 0:2 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let cg = "3:cpu,cpuacct:/system.slice/x.service\n2:memory:/docker/abc/inner\n0::/\n";
        let h = V1Hierarchies::from_proc(mi, cg).unwrap();
        assert_eq!(h.cpu, h.cpuacct);
        assert_eq!(
            h.cpu.as_ref().unwrap().own,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/system.slice/x.service")
        );
        assert_eq!(
            h.memory.as_ref().unwrap().own,
            Path::new("/sys/fs/cgroup/memory/inner")
        );
        assert!(h.blkio.is_none());
        assert_eq!(h.default_roots().distinct().len(), 2);
    }
}
