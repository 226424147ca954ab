//! Usage samples on cgroup v1 and hybrid hosts: the same `Sample`/`CgroupStats` the v2 reader
//! gives, assembled from a tenant's directories in the cpu, cpuacct, memory, blkio and pids
//! hierarchies (`V1::dirs_of`). Parsing is pure (`apply` takes the file's text), reusing
//! `v1_parse`; `V1StatsReader` only reads files.
//!
//! Formats and meanings follow Documentation/admin-guide/cgroup-v1/{cpuacct,memory,
//! blkio-controller,pids}.rst and Documentation/scheduler/sched-bwc.rst (cpu.stat):
//! - cpuacct.usage (ns) -> `cpu.usage_usec`; cpuacct.stat user/system (USER_HZ ticks) ->
//!   `cpu.user_usec`/`cpu.system_usec`; cpu.stat nr_periods, nr_throttled, throttled_time (ns).
//! - memory.usage_in_bytes -> `memory_current`; memory.max_usage_in_bytes -> `memory_peak`;
//!   memory.stat `total_rss` (THP included, memory.rst) -> anon, `total_cache` -> file,
//!   `total_inactive_file` -> inactive_file (the `total_` keys cover the tenant's `_procs`
//!   leaf; the plain keys only the directory itself, used when `total_` is absent).
//! - memory.oom_control `oom_kill` -> `memory_events.oom_kill`; memory.failcnt plus
//!   memory.memsw.failcnt -> `memory_events.max` (a charge fails at one counter or the other).
//! - blkio.throttle.io_service_bytes_recursive / io_serviced_recursive (the plain files when
//!   the recursive ones are missing) -> per-device rbytes/wbytes, rios/wios.
//! - pids.current, pids.events `max`.
//!
//! v1 counts events locally: an OOM kill in the cgroup of its victim (the tenant's `_procs`
//! leaf), a failed charge or fork at the counter whose limit refused it, with no propagation
//! to ancestors (v2's memory.events and pids.events are hierarchical). So `oom_kill`, the
//! failcnts and pids.events are summed over the tenant's directory and all below it
//! (`V1File::summed`), which gives v2's meaning: the hits in this subtree.
//!
//! v1 has no PSI: the pressure fields stay `None`. Instead the reader sums the run-queue wait
//! (/proc/TID/schedstat, second field, read by `procfs::process::Schedstat`;
//! Documentation/scheduler/sched-stats.rst) of the tenant's threads into `runq_wait_usec`.
//!
//! The inode guard is the cpuacct directory's (the cpu one without cpuacct): a tenant
//! deleted and recreated under the same name gives no delta.
//!
//! Like `cgroup::stats`, this fills the domain's types (`domain::stats`) and defines none of
//! its own; it may import `domain`, never `store`, `engine`, `api` or `metrics`.

use super::parse::{PResult, flat_keyed, pids};
use super::v1::V1Dirs;
use super::v1_parse;
use super::{CgroupError, Result, is_gone};
use crate::domain::stats::{CgroupStats, CpuStat, IoDevStat, MemoryStat, Sample};
use procfs::FromRead;
use procfs::process::Schedstat;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One v1 usage file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1File {
    CpuacctUsage,
    CpuacctStat,
    CpuStat,
    MemoryUsage,
    MemoryMaxUsage,
    MemoryStat,
    OomControl,
    MemoryFailcnt,
    MemswFailcnt,
    BlkioBytes,
    BlkioIos,
    PidsCurrent,
    PidsEvents,
}

impl V1File {
    /// Whether the file is summed over the directory and its descendants.
    pub fn summed(self) -> bool {
        matches!(
            self,
            V1File::OomControl | V1File::MemoryFailcnt | V1File::MemswFailcnt | V1File::PidsEvents
        )
    }
}

/// The files a v1 sample reads: the file, its hierarchy, and its names, first found wins.
pub const FILES: [(V1File, &str, &[&str]); 13] = [
    (V1File::CpuacctUsage, "cpuacct", &["cpuacct.usage"]),
    (V1File::CpuacctStat, "cpuacct", &["cpuacct.stat"]),
    (V1File::CpuStat, "cpu", &["cpu.stat"]),
    (V1File::MemoryUsage, "memory", &["memory.usage_in_bytes"]),
    (
        V1File::MemoryMaxUsage,
        "memory",
        &["memory.max_usage_in_bytes"],
    ),
    (V1File::MemoryStat, "memory", &["memory.stat"]),
    (V1File::OomControl, "memory", &["memory.oom_control"]),
    (V1File::MemoryFailcnt, "memory", &["memory.failcnt"]),
    (V1File::MemswFailcnt, "memory", &["memory.memsw.failcnt"]),
    (
        V1File::BlkioBytes,
        "blkio",
        &[
            "blkio.throttle.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes",
        ],
    ),
    (
        V1File::BlkioIos,
        "blkio",
        &[
            "blkio.throttle.io_serviced_recursive",
            "blkio.throttle.io_serviced",
        ],
    ),
    (V1File::PidsCurrent, "pids", &["pids.current"]),
    (V1File::PidsEvents, "pids", &["pids.events"]),
];

/// USER_HZ when it cannot be read: 100 on every Linux architecture tenantd builds for.
pub const DEFAULT_USER_HZ: u64 = 100;

/// v1 cpu.stat: nr_periods, nr_throttled and throttled_time (ns, unlike v2's throttled_usec)
/// into `c`; the usage keys are not in this file.
pub fn cpu_stat<S: AsRef<[u8]> + ?Sized>(s: &S, c: &mut CpuStat) -> PResult<()> {
    let m = flat_keyed(s)?;
    c.nr_periods = m.get("nr_periods").copied();
    c.nr_throttled = m.get("nr_throttled").copied();
    c.throttled_usec = m.get("throttled_time").map(|ns| ns / 1000);
    Ok(())
}

/// v1 memory.stat -> anon, file and inactive_file, hierarchical keys first.
pub fn memory_stat<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<MemoryStat> {
    let m = v1_parse::memory_stat(s)?;
    let get = |k: &str| m.get(&format!("total_{k}")).or_else(|| m.get(k)).copied();
    Ok(MemoryStat {
        // `rss` includes transparent huge pages (cgroup-v1/memory.rst, 5.2 stat file);
        // `rss_huge` is a part of it, not an addition.
        anon: get("rss"),
        file: get("cache"),
        inactive_file: get("inactive_file"),
    })
}

/// blkio.throttle.io_service_bytes (`bytes` true) or io_serviced into `io`, by device.
fn blkio(s: &[u8], bytes: bool, io: &mut Vec<IoDevStat>) -> PResult<()> {
    for (dev, rw) in v1_parse::blkio_rw(s)? {
        let i = match io.iter().position(|d| d.device == dev) {
            Some(i) => i,
            None => {
                io.push(IoDevStat::new(dev));
                io.len() - 1
            }
        };
        let d = &mut io[i];
        if bytes {
            (d.rbytes, d.wbytes) = (Some(rw.read), Some(rw.write));
        } else {
            (d.rios, d.wios) = (Some(rw.read), Some(rw.write));
        }
    }
    io.sort_by_key(|d| d.device);
    Ok(())
}

/// `a + b`, `None` only when both are.
fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

/// Parses the text of one v1 file into `out`. `user_hz` converts cpuacct.stat ticks. The
/// `summed` files add to what `out` holds (one call per directory of the subtree).
pub fn apply<S: AsRef<[u8]> + ?Sized>(
    file: V1File,
    text: &S,
    user_hz: u64,
    out: &mut CgroupStats,
) -> PResult<()> {
    let text = text.as_ref();
    let ticks = |t: u64| t.saturating_mul(1_000_000) / user_hz.max(1);
    match file {
        V1File::CpuacctUsage => out.cpu.usage_usec = Some(v1_parse::cpuacct_usage_ns(text)? / 1000),
        V1File::CpuacctStat => {
            let s = v1_parse::cpuacct_stat(text)?;
            out.cpu.user_usec = s.user_ticks.map(ticks);
            out.cpu.system_usec = s.system_ticks.map(ticks);
        }
        V1File::CpuStat => cpu_stat(text, &mut out.cpu)?,
        V1File::MemoryUsage => out.memory_current = Some(v1_parse::memory_usage_bytes(text)?),
        V1File::MemoryMaxUsage => out.memory_peak = Some(v1_parse::memory_usage_bytes(text)?),
        V1File::MemoryStat => out.memory = memory_stat(text)?,
        V1File::OomControl => {
            let n = v1_parse::oom_control(text)?.oom_kill;
            out.memory_events.oom_kill = add(out.memory_events.oom_kill, n);
        }
        V1File::MemoryFailcnt | V1File::MemswFailcnt => {
            let n = v1_parse::memory_failcnt(text)?;
            out.memory_events.max = add(out.memory_events.max, Some(n));
        }
        V1File::BlkioBytes => blkio(text, true, &mut out.io)?,
        V1File::BlkioIos => blkio(text, false, &mut out.io)?,
        V1File::PidsCurrent => out.pids_current = Some(v1_parse::pids_current(text)?),
        V1File::PidsEvents => {
            let n = super::stats::pids_events_max(text)?;
            out.pids_max_events = add(out.pids_max_events, n);
        }
    }
    Ok(())
}

/// Run-queue wait accumulated over the threads seen in two consecutive samples: a thread's
/// growth is counted once it has been seen, so the total never goes backwards when threads
/// exit. The wait of a thread before its first sample is not counted.
#[derive(Debug, Default, Clone)]
pub struct RunqWait {
    by_tid: HashMap<u32, u64>,
    total_ns: u64,
}

impl RunqWait {
    /// Feeds the (tid, wait_ns) pairs of one sample; returns the running total in µs.
    pub fn feed(&mut self, now: impl IntoIterator<Item = (u32, u64)>) -> u64 {
        let mut next = HashMap::with_capacity(self.by_tid.len());
        for (tid, wait) in now {
            if let Some(prev) = self.by_tid.get(&tid) {
                self.total_ns = self.total_ns.saturating_add(wait.saturating_sub(*prev));
            }
            next.insert(tid, wait);
        }
        self.by_tid = next;
        self.total_ns / 1000
    }
}

/// Samples one tenant's v1 directories. Files are opened on each sample: v1 is not the
/// hot path the held-file v2 reader is.
#[derive(Debug)]
pub struct V1StatsReader {
    dirs: V1Dirs,
    proc: PathBuf,
    /// The directory whose inode guards deltas (cpuacct, else cpu).
    guard: PathBuf,
    ino: u64,
    user_hz: u64,
    runq: RunqWait,
}

fn ino_of(p: &Path) -> Result<Option<u64>> {
    match std::fs::metadata(p) {
        Ok(m) => Ok(Some(m.ino())),
        Err(e) if is_gone(&e) => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: p.into(),
            source,
        }),
    }
}

/// Reads a file that may be absent or gone (`is_gone`): `Ok(None)` then.
fn read_opt(p: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: p.into(),
            source,
        }),
    }
}

/// `dir` and every directory below it, parents first. Directories that vanish meanwhile are
/// skipped.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            out.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    out
}

impl V1StatsReader {
    /// `Ok(None)` when the tenant's cpuacct (or cpu) directory does not exist.
    pub fn open(dirs: &V1Dirs, proc: &Path) -> Result<Option<V1StatsReader>> {
        let Some(guard) = dirs.cpuacct.as_ref().or(dirs.cpu.as_ref()) else {
            return Ok(None);
        };
        let Some(ino) = ino_of(guard)? else {
            return Ok(None);
        };
        Ok(Some(V1StatsReader {
            dirs: dirs.clone(),
            proc: proc.into(),
            guard: guard.clone(),
            ino,
            user_hz: match procfs::ticks_per_second() {
                0 => DEFAULT_USER_HZ,
                n => n,
            },
            runq: RunqWait::default(),
        }))
    }

    pub fn dirs(&self) -> &V1Dirs {
        &self.dirs
    }

    /// The TIDs of `dir` and its descendants (v1 `tasks` files).
    fn tasks(dir: &Path, out: &mut Vec<u32>) -> Result<()> {
        for d in subtree(dir) {
            let p = d.join("tasks");
            if let Some(s) = read_opt(&p)? {
                out.extend(pids(&s).map_err(|source| CgroupError::Parse { path: p, source })?);
            }
        }
        Ok(())
    }

    /// Reads every file once. `Ok(None)` when the tenant vanished or its guard directory is
    /// now another one; the caller opens it again.
    pub fn sample(&mut self) -> Result<Option<Sample>> {
        let mut stats = CgroupStats::default();
        for (file, controller, names) in FILES {
            let Some(dir) = self.dirs.get(controller) else {
                continue;
            };
            let dirs = if file.summed() {
                subtree(dir)
            } else {
                vec![dir.to_path_buf()]
            };
            for dir in dirs {
                for name in names {
                    let path = dir.join(name);
                    let Some(text) = read_opt(&path)? else {
                        continue;
                    };
                    apply(file, &text, self.user_hz, &mut stats)
                        .map_err(|source| CgroupError::Parse { path, source })?;
                    break;
                }
            }
        }
        if let Some(dir) = self.dirs.cpu.as_ref().or(self.dirs.cpuacct.as_ref()) {
            let mut tids = Vec::new();
            Self::tasks(dir, &mut tids)?;
            let waits = tids.into_iter().filter_map(|tid| {
                let path = self.proc.join(format!("{tid}/schedstat"));
                Some((tid, Schedstat::from_file(path).ok()?.run_delay))
            });
            stats.runq_wait_usec = Some(self.runq.feed(waits));
        }
        match ino_of(&self.guard)? {
            Some(ino) if ino == self.ino => Ok(Some(Sample {
                ino: self.ino,
                stats,
            })),
            _ => Ok(None),
        }
    }
}

/// Samples `dirs` through `slot`, opening it when needed and once more when the tenant was
/// recreated (a new inode).
pub fn sample_dirs(
    slot: &mut Option<V1StatsReader>,
    dirs: &V1Dirs,
    proc: &Path,
) -> Result<Option<Sample>> {
    for _ in 0..2 {
        if slot.as_ref().is_none_or(|r| r.dirs != *dirs) {
            *slot = V1StatsReader::open(dirs, proc)?;
        }
        let Some(r) = slot.as_mut() else {
            return Ok(None);
        };
        match r.sample()? {
            Some(s) => return Ok(Some(s)),
            None => *slot = None,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tenant::DevId;

    const WORKLOAD: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cgroupfs/v1-host-6.18.44-fc-v657/workload"
    );

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{WORKLOAD}/{name}"))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    /// The captured workload directory, parsed file by file as the reader does.
    fn workload_stats() -> CgroupStats {
        let mut s = CgroupStats::default();
        for (file, _, names) in FILES {
            if let Some(text) = names
                .iter()
                .find_map(|n| std::fs::read_to_string(format!("{WORKLOAD}/{n}")).ok())
            {
                apply(file, &text, 100, &mut s).unwrap();
            }
        }
        s
    }

    #[test]
    fn the_captured_workload_as_a_sample() {
        let s = workload_stats();
        // cpuacct.usage 2758114017 ns; cpuacct.stat user 269 system 5 ticks of 10 ms.
        assert_eq!(s.cpu.usage_usec, Some(2_758_114));
        assert_eq!(
            (s.cpu.user_usec, s.cpu.system_usec),
            (Some(2_690_000), Some(50_000))
        );
        assert_eq!(
            (s.cpu.nr_periods, s.cpu.nr_throttled, s.cpu.throttled_usec),
            (Some(0), Some(0), Some(0))
        );
        assert_eq!(s.memory_current, Some(733_184));
        assert_eq!(s.memory_peak, Some(50 << 20));
        assert_eq!(
            (s.memory.anon, s.memory.file, s.memory.inactive_file),
            (Some(319_488), Some(0), Some(0))
        );
        assert_eq!(s.memory_events.oom_kill, Some(1));
        // No memory.memsw.failcnt was captured: memory.failcnt alone.
        assert_eq!(s.memory_events.max, Some(96));
        let vda = DevId {
            major: 254,
            minor: 0,
        };
        assert_eq!(s.io.len(), 1);
        assert_eq!(s.io[0].device, vda);
        assert_eq!(
            (s.io[0].rbytes, s.io[0].wbytes, s.io[0].rios, s.io[0].wios),
            (Some(8 << 20), Some(8 << 20), Some(16), Some(8))
        );
        assert_eq!((s.pids_current, s.pids_max_events), (Some(3), Some(0)));
        assert_eq!(s.cpu_pressure, None);
        assert_eq!(s.working_set(), Some(733_184));
    }

    #[test]
    fn throttled_time_is_nanoseconds() {
        let mut c = CpuStat::default();
        cpu_stat(
            &fixture("cpu.stat").replace("throttled_time 0", "throttled_time 3090888000"),
            &mut c,
        )
        .unwrap();
        assert_eq!(c.throttled_usec, Some(3_090_888));
        assert!(cpu_stat("nr_periods x\n", &mut c).is_err());
    }

    /// Hand-typed: a parent's memory.stat where the children hold the memory (the plain keys
    /// are this directory's own pages, the `total_` keys include the leaf), and a USER_HZ of
    /// 250, which no captured host has.
    #[test]
    fn hierarchical_memory_keys_and_other_user_hz() {
        let m = memory_stat(
            "cache 0\nrss 0\nrss_huge 0\ninactive_file 0\ntotal_cache 4096\ntotal_rss 8192\n\
             total_rss_huge 0\ntotal_inactive_file 4096\n",
        )
        .unwrap();
        assert_eq!(
            (m.anon, m.file, m.inactive_file),
            (Some(8192), Some(4096), Some(4096))
        );
        let mut s = CgroupStats::default();
        apply(V1File::CpuacctStat, "user 250\nsystem 0\n", 250, &mut s).unwrap();
        assert_eq!(s.cpu.user_usec, Some(1_000_000));
        // memory.failcnt and memory.memsw.failcnt add up.
        apply(V1File::MemoryFailcnt, "3\n", 100, &mut s).unwrap();
        apply(V1File::MemswFailcnt, "4\n", 100, &mut s).unwrap();
        assert_eq!(s.memory_events.max, Some(7));
    }

    #[test]
    fn schedstat_wait_is_the_second_field() {
        let read = |f: &str| Schedstat::from_file(format!("{WORKLOAD}/{f}")).unwrap();
        let busy = read("proc-pid-schedstat.busy");
        assert_eq!(
            (busy.sum_exec_runtime, busy.run_delay, busy.pcount),
            (675_147_053, 1_311_626_744, 181)
        );
        // Two loops pinned to one CPU: each waited about as long as it ran, or longer.
        assert!(busy.run_delay > busy.sum_exec_runtime);
        let idle = read("proc-pid-schedstat.sleeping");
        assert!(idle.run_delay < busy.run_delay / 10);
        assert!(Schedstat::from_read(b"1 2".as_slice()).is_err());
    }

    #[test]
    fn runq_wait_only_counts_growth_of_known_threads() {
        let mut r = RunqWait::default();
        assert_eq!(r.feed([(1, 5_000_000), (2, 1_000)]), 0);
        // Thread 1 waited 2 ms more, thread 2 exited, thread 3 is new.
        assert_eq!(r.feed([(1, 7_000_000), (3, 9_000_000)]), 2_000);
        assert_eq!(r.feed([(3, 9_500_000)]), 2_500);
        // A thread whose counter went backwards (a recycled TID) adds nothing.
        assert_eq!(r.feed([(3, 1)]), 2_500);
    }

    #[test]
    fn the_reader_samples_copied_directories_and_guards_the_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let proc = tmp.path().join("proc");
        std::fs::create_dir_all(proc.join("42")).unwrap();
        std::fs::write(proc.join("42/schedstat"), "100 2000000 3\n").unwrap();
        let mk = |c: &str| {
            let d = tmp.path().join(c).join("t");
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let dirs = V1Dirs {
            cpu: Some(mk("cpu")),
            cpuacct: Some(mk("cpuacct")),
            memory: Some(mk("memory")),
            blkio: Some(mk("blkio")),
            pids: Some(mk("pids")),
        };
        for (_, c, names) in FILES {
            for n in names {
                if let Ok(text) = std::fs::read_to_string(format!("{WORKLOAD}/{n}")) {
                    std::fs::write(dirs.get(c).unwrap().join(n), text).unwrap();
                }
            }
        }
        std::fs::write(dirs.cpu.as_ref().unwrap().join("tasks"), "42\n").unwrap();
        // The tenant's leaf: its own OOM kills and fork refusals add to the tenant's (v1
        // counts them only where they happened); its memory.usage_in_bytes does not.
        for (c, f, text) in [
            (
                "memory",
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            ("memory", "memory.usage_in_bytes", "1\n"),
            ("pids", "pids.events", "max 5\n"),
        ] {
            let leaf = dirs.get(c).unwrap().join("_procs");
            std::fs::create_dir_all(&leaf).unwrap();
            std::fs::write(leaf.join(f), text).unwrap();
        }
        let mut slot = None;
        let a = sample_dirs(&mut slot, &dirs, &proc).unwrap().unwrap();
        assert_eq!(a.stats, {
            let mut s = workload_stats();
            s.runq_wait_usec = Some(0);
            s.memory_events.oom_kill = Some(3);
            s.pids_max_events = Some(5);
            s
        });
        std::fs::write(proc.join("42/schedstat"), "100 5000000 4\n").unwrap();
        let b = sample_dirs(&mut slot, &dirs, &proc).unwrap().unwrap();
        assert_eq!((a.ino, b.stats.runq_wait_usec), (b.ino, Some(3_000)));
        // Recreated: a new inode (made before the old one goes, so it cannot be reused), a
        // new reader.
        let cpuacct = dirs.cpuacct.as_ref().unwrap();
        let new = cpuacct.with_file_name("t2");
        std::fs::create_dir(&new).unwrap();
        std::fs::remove_dir_all(cpuacct).unwrap();
        std::fs::rename(&new, cpuacct).unwrap();
        let c = sample_dirs(&mut slot, &dirs, &proc).unwrap().unwrap();
        assert_ne!(c.ino, a.ino);
        assert_eq!(c.stats.cpu.usage_usec, None);
        // Gone: no sample.
        std::fs::remove_dir_all(cpuacct).unwrap();
        assert!(sample_dirs(&mut slot, &dirs, &proc).unwrap().is_none());
    }
}
