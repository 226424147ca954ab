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
//! Cheap sweeps (issue 15): the files of the figures read every sweep (`Cadence::fresh`,
//! `domain::cadence`) stay open and are re-read with `pread`, as the v2 reader does; the
//! others are opened when the cadence reads them. The subtrees of the summed files and of
//! the `tasks` files are walked when the reader opens, every `WALK_EVERY` sweeps after (a
//! directory's mtime on kernfs does not move when a subdirectory is made, so it cannot tell;
//! its link count does, but checking it costs as much as the walk it saves), when a file of a
//! walked subdirectory answers that it is gone, and when the caller says the subtree changed
//! (`V1StatsReader::rewalk`: the sampler does when a tenant below was created or deleted).
//! Given a `SubtreeWatch`, a reader watches every directory it walked and is walked again
//! only when one got a new directory (`rewalk_changed`), not on the timer.
//!
//! Like `cgroup::stats`, this fills the domain's types (`domain::stats`) and defines none of
//! its own; it may import `domain`, never `store`, `engine`, `api` or `metrics`.

use super::parse::{PResult, flat_keyed, pids};
use super::stats::{on_cgroupfs, pread_all};
use super::subtree_watch::{Changes, SubtreeWatch, Watched};
use super::v1::V1Dirs;
use super::v1_parse;
use super::{CgroupError, Result, is_gone};
use crate::domain::cadence::{self, Cadence, Figure, Figures, SlowRead};
use crate::domain::stats::{CgroupStats, CpuStat, IoDevStat, MemoryStat, Sample};
use procfs::FromRead;
use procfs::process::Schedstat;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    /// The figure (`domain::cadence`) the file gives.
    pub fn figure(self) -> Figure {
        match self {
            V1File::CpuacctUsage | V1File::CpuacctStat | V1File::CpuStat => Figure::Cpu,
            V1File::MemoryUsage => Figure::MemoryCurrent,
            V1File::MemoryMaxUsage => Figure::MemoryPeak,
            V1File::MemoryStat => Figure::MemoryStat,
            V1File::OomControl => Figure::MemoryEvents,
            V1File::MemoryFailcnt | V1File::MemswFailcnt => Figure::MemoryFailcnt,
            V1File::BlkioBytes | V1File::BlkioIos => Figure::Io,
            V1File::PidsCurrent | V1File::PidsEvents => Figure::Pids,
        }
    }

    /// Copies the fields the file gives (`apply`) from `from` into `to`.
    pub fn carry(self, from: &CgroupStats, to: &mut CgroupStats) {
        match self {
            V1File::CpuacctUsage => to.cpu.usage_usec = from.cpu.usage_usec,
            V1File::CpuacctStat => {
                to.cpu.user_usec = from.cpu.user_usec;
                to.cpu.system_usec = from.cpu.system_usec;
            }
            V1File::CpuStat => {
                to.cpu.nr_periods = from.cpu.nr_periods;
                to.cpu.nr_throttled = from.cpu.nr_throttled;
                to.cpu.throttled_usec = from.cpu.throttled_usec;
            }
            V1File::MemoryUsage => to.memory_current = from.memory_current,
            V1File::MemoryMaxUsage => to.memory_peak = from.memory_peak,
            V1File::MemoryStat => to.memory = from.memory,
            V1File::OomControl => to.memory_events.oom_kill = from.memory_events.oom_kill,
            V1File::MemoryFailcnt | V1File::MemswFailcnt => {
                to.memory_events.max = from.memory_events.max
            }
            V1File::BlkioBytes | V1File::BlkioIos => to.io.clone_from(&from.io),
            V1File::PidsCurrent => to.pids_current = from.pids_current,
            V1File::PidsEvents => to.pids_max_events = from.pids_max_events,
        }
    }
}

/// The slow figures a read of them takes of a tenant that had no thread at the last read of
/// its `tasks` files and used no CPU since: its memory, which reclaim may move with no task
/// of its own. The others stay where they were: OOM kills, failed charges, forks and IO need
/// a task (cgroup v1 charges writeback to the flusher, not the tenant), and a v1 group's
/// cpu.stat moves only under a quota of its own (`set_own_cpu_quota`). 3 files instead of 15
/// (issue 15: at 10,000 idle tenants the opens of the slow figures' files were a fifth of
/// the daemon's CPU). A charge failed by another group's swap-in of this one's shmem is the
/// one exception known; every `TASKLESS_FULL_EVERY`th read takes every figure anyway.
pub const TASKLESS_SLOW: Figures = Figures::of(&[
    Figure::MemoryCurrent,
    Figure::MemoryPeak,
    Figure::MemoryStat,
]);

/// Every this many reads of a task-less tenant's slow figures in a row, one reads them all:
/// 10 minutes at the longest stretch (`cadence::IDLE_MAX_DEFAULT`).
pub const TASKLESS_FULL_EVERY: u32 = 10;

/// Sweeps between two walks of a tenant's subtrees when nothing says they changed.
pub const WALK_EVERY: u32 = 30;

/// Which of a tenant's v1 files its reader keeps open (the others are opened when read).
///
/// Issue 15: at 10,000 tenants this host's 20,000 descriptors held the fresh figures' files
/// of only 1,757 tenants (9 each); the other 8,243 opened, read and closed cpuacct.usage
/// every sweep and looked their guard directory up again (half the daemon's CPU). An idle
/// tenant's sweep reads one file, so `lean` holds just the files a sweep reads whatever the
/// tenant does, and every tenant can hold those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V1Hold {
    /// The figures whose files are held.
    pub figures: Figures,
    /// Of those figures' files, only the ones read every sweep even while the tenant is
    /// idle: not cpuacct.stat (read when the CPU usage moved), not cpu.stat unless the tenant
    /// has a CPU quota of its own (`quota`; `V1StatsReader::set_own_cpu_quota`), no `tasks`
    /// (read while the tenant has threads or its CPU usage moved).
    pub lean: bool,
    /// With `lean`: the tenant has a CPU quota of its own, so cpu.stat is held. False
    /// otherwise, so that equal holds compare equal.
    pub quota: bool,
}

impl From<Figures> for V1Hold {
    /// Every file of `figures`.
    fn from(figures: Figures) -> V1Hold {
        V1Hold {
            figures,
            lean: false,
            quota: false,
        }
    }
}

impl V1Hold {
    /// Nothing held: every file is opened when read.
    pub const NONE: V1Hold = V1Hold {
        figures: Figures::NONE,
        lean: false,
        quota: false,
    };

    /// The files of `figures` that a sweep reads whatever the tenant does, cpu.stat among
    /// them when the tenant has a CPU quota of its own (`quota`).
    pub fn lean(figures: Figures, quota: bool) -> V1Hold {
        V1Hold {
            figures,
            lean: true,
            quota,
        }
    }

    /// Whether `file` is held.
    pub fn holds(self, file: V1File) -> bool {
        self.figures.contains(file.figure())
            && match file {
                V1File::CpuacctStat => !self.lean,
                V1File::CpuStat => !self.lean || self.quota,
                _ => true,
            }
    }

    /// Whether the `tasks` files are held.
    pub fn holds_tasks(self) -> bool {
        self.figures.contains(Figure::CpuPressure) && !self.lean
    }

    /// Whether every file this holds, `other` holds too.
    pub fn within(self, other: V1Hold) -> bool {
        FILES
            .iter()
            .all(|(f, _, _)| !self.holds(*f) || other.holds(*f))
            && (!self.holds_tasks() || other.holds_tasks())
    }
}

/// Descriptors a v1 reader holding `hold` takes on cgroupfs for a tenant whose subtrees are
/// its directory and its `_procs` leaf (two files of each summed file and of `tasks`), and
/// the guard directory when no held file tells that the tenant's directory is gone (a held
/// cpuacct.usage does: cgroupfs answers ENODEV). 8 for `SLA_FIGURES` (cpuacct.usage,
/// cpuacct.stat, cpu.stat, memory.usage_in_bytes, two memory.oom_control, two `tasks`), 1
/// for its lean hold without a memory guarantee or quota. For the descriptor budget.
pub fn held_per_tenant(hold: impl Into<V1Hold>) -> usize {
    let hold = hold.into();
    let files: usize = FILES
        .iter()
        .filter(|(f, _, _)| hold.holds(*f))
        .map(|(f, _, _)| if f.summed() { 2 } else { 1 })
        .sum();
    let tasks = if hold.holds_tasks() { 2 } else { 0 };
    let guard = usize::from(files + tasks > 0 && !hold.holds(V1File::CpuacctUsage));
    files + tasks + guard
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
    /// The running total in µs.
    pub fn total_usec(&self) -> u64 {
        self.total_ns / 1000
    }

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

/// One file of one directory: held open and re-read with `pread`, or opened when read. The
/// directory is shared by its files and the name is static: no path of its own per file
/// (issue 15: at 10,000 tenants the paths were some 20 MB). 24 bytes: a reader keeps some
/// 20 of them (issue 15, target 4).
#[derive(Debug)]
struct FileAt {
    dir: Arc<Path>,
    held: Option<File>,
    name: Name,
    /// Whether the file is in a subdirectory of the tenant's directory (gone: walk again).
    below: bool,
}

/// A file's name: the `i`th of its entry's names in `FILES`, or `tasks`. Two bytes where a
/// `&'static str` takes sixteen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Of(V1File, u8),
    Tasks,
}

impl Name {
    /// The names of `file` in `FILES`, first found wins.
    fn all_of(file: V1File) -> &'static [&'static str] {
        FILES
            .iter()
            .find(|(f, _, _)| *f == file)
            .map_or(&[], |(_, _, names)| *names)
    }

    fn as_str(self) -> &'static str {
        match self {
            Name::Of(file, i) => Self::all_of(file)[usize::from(i)],
            Name::Tasks => "tasks",
        }
    }

    /// The usage file it is, `None` for `tasks`.
    fn file(self) -> Option<V1File> {
        match self {
            Name::Of(file, _) => Some(file),
            Name::Tasks => None,
        }
    }
}

/// Why a read found no file.
enum Gone {
    /// The tenant's own directory (or the file in it) is gone.
    Tenant,
    /// A subdirectory walked earlier is gone: walk again.
    Below,
}

impl FileAt {
    /// The file `name` in `dir`, held when `hold` and it can be (EMFILE/ENFILE: opened when
    /// read). `Ok(None)` when it does not exist.
    fn open(dir: &Arc<Path>, name: Name, hold: bool, below: bool) -> Result<Option<FileAt>> {
        let at = |held| FileAt {
            dir: dir.clone(),
            held,
            name,
            below,
        };
        if !hold {
            return Ok(Some(at(None)));
        }
        let path = dir.join(name.as_str());
        match File::open(&path) {
            Ok(f) => Ok(Some(at(Some(f)))),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                Ok(Some(at(None)))
            }
            Err(source) => Err(CgroupError::Read { path, source }),
        }
    }

    /// The file's path.
    fn path(&self) -> PathBuf {
        self.dir.join(self.name.as_str())
    }

    /// Whether this is `file` (of any directory).
    fn is(&self, file: V1File) -> bool {
        self.name.file() == Some(file)
    }

    /// The file's bytes; `Ok(None)` when it is absent (not held and not found).
    fn read<'b>(
        &self,
        buf: &'b mut Vec<u8>,
    ) -> std::result::Result<Option<&'b [u8]>, (Gone, io::Error)> {
        let gone = |e: io::Error| {
            if self.below {
                (Gone::Below, e)
            } else {
                (Gone::Tenant, e)
            }
        };
        let read = match &self.held {
            Some(f) => pread_all(f, buf),
            None => match File::open(self.path()) {
                Ok(f) => pread_all(&f, buf),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => Err(e),
            },
        };
        read.map(Some).map_err(gone)
    }
}

/// Samples one tenant's v1 directories, holding the files of the figures read every sweep.
#[derive(Debug)]
pub struct V1StatsReader {
    /// The tenant's directories, shared by their files and walks (one copy of each path).
    dirs: Roots,
    proc: PathBuf,
    ino: u64,
    /// The guard directory, held while files are: `fstat` tells a removed one (no links).
    held_guard: Option<File>,
    user_hz: u64,
    runq: RunqWait,
    /// Which files are held.
    hold: V1Hold,
    /// In the order of `FILES`: each file (the first name found) in the tenant's directory,
    /// or in every directory of its subtree for the summed ones. One `Vec` (issue 15, target
    /// 4: a `Vec` per entry of `FILES` and 40-byte entries were 1.1 KB a tenant, this 0.4 KB).
    files: Vec<FileAt>,
    /// The `tasks` files of the cpu (else cpuacct) subtree.
    tasks: Vec<FileAt>,
    /// Sweeps since the subtrees were walked.
    walk_age: u32,
    /// The inotify watches of the walked directories; complete, the timer walks no more.
    watched: Option<Watched>,
    /// The last values read of every figure (those not read in a sweep are repeated).
    cache: CgroupStats,
    /// The last read of the figures outside the cadence's fresh ones.
    slow: Option<SlowRead>,
    /// Whether the last read of the `tasks` files found a thread, and the CPU usage then.
    had_threads: bool,
    usage_at_tasks: Option<u64>,
    /// Reads of the slow figures in a row that read only `TASKLESS_SLOW` (`taskless`).
    taskless_reads: u32,
    /// The CPU usage when cpuacct.stat was last read, and the user and system time it gave.
    usage_at_stat: Option<u64>,
    user_system: (Option<u64>, Option<u64>),
    /// Whether the tenant has a CPU quota of its own (`cpu.cfs_quota_us` set from its
    /// `limit_pct`): only then is cpu.stat read every sweep (`set_own_cpu_quota`).
    own_quota: bool,
    /// cpu.stat as last read: periods, throttled periods, throttled time.
    throttling: Option<Throttling>,
    /// Whether the guard directory is on cgroupfs (kernfs), where a held file of a removed
    /// cgroup answers ENODEV: a held cpuacct.usage, read every sweep, tells without a look
    /// at the guard directory.
    kernfs: bool,
}

/// A tenant's directory in each v1 hierarchy, each path allocated once and shared by the
/// reader's files and subtree walks (issue 15: at 10,000 tenants a `V1Dirs` copy, a shared
/// copy per controller and a copy per walk root were some 10 MB of the same paths).
#[derive(Debug)]
struct Roots([Option<Arc<Path>>; 5]);

impl Roots {
    const CONTROLLERS: [&'static str; 5] = ["cpu", "cpuacct", "memory", "blkio", "pids"];

    fn of(dirs: &V1Dirs) -> Roots {
        Roots(Self::CONTROLLERS.map(|c| dirs.shared(c).cloned()))
    }

    fn get(&self, controller: &str) -> Option<&Arc<Path>> {
        let i = Self::CONTROLLERS.iter().position(|c| *c == controller)?;
        self.0[i].as_ref()
    }

    /// Whether these are `dirs`' directories.
    /// Asked of every tenant every sweep: the same shared path answers by address, an equal
    /// copy (the targets rebuilt after a change) by its bytes; `Path`'s own `==` compares
    /// component by component (2.6% of the daemon's CPU at 1,000 tenants, issue 15).
    fn same_as(&self, dirs: &V1Dirs) -> bool {
        Self::CONTROLLERS
            .iter()
            .zip(&self.0)
            .all(|(c, mine)| match (mine, dirs.shared(c)) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.as_os_str() == b.as_os_str() || a == b,
                _ => false,
            })
    }

    /// The directory whose inode guards deltas (cpuacct, else cpu).
    fn guard(&self) -> Option<&Arc<Path>> {
        self.get("cpuacct").or(self.get("cpu"))
    }
}

/// cpu.stat's figures: `nr_periods`, `nr_throttled`, `throttled_time` (as µs).
type Throttling = (Option<u64>, Option<u64>, Option<u64>);

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

/// `dir` and every directory below it, parents first, each watched (`watch`) before it is
/// listed, so a directory made meanwhile is either listed or reported. Directories that vanish
/// meanwhile are skipped.
fn subtree(dir: &Arc<Path>, mut watch: Option<&mut Watched>) -> Vec<Arc<Path>> {
    let mut out: Vec<Arc<Path>> = vec![dir.clone()];
    let mut i = 0;
    while i < out.len() {
        if let Some(w) = watch.as_deref_mut() {
            w.add(&out[i]);
        }
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            out.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| Arc::from(e.path())),
            );
        }
        i += 1;
    }
    out.shrink_to_fit();
    out
}

impl V1StatsReader {
    /// `Ok(None)` when the tenant's cpuacct (or cpu) directory does not exist. Holds every
    /// file.
    pub fn open(dirs: &V1Dirs, proc: &Path) -> Result<Option<V1StatsReader>> {
        Self::open_holding(dirs, proc, Figures::ALL, None)
    }

    /// Like `open`, holding only the files `hold` says (none: every file is opened when
    /// read), and watching its subtrees with `watch` when given.
    pub fn open_holding(
        dirs: &V1Dirs,
        proc: &Path,
        hold: impl Into<V1Hold>,
        watch: Option<&SubtreeWatch>,
    ) -> Result<Option<V1StatsReader>> {
        let hold = hold.into();
        let dirs = Roots::of(dirs);
        let Some(guard) = dirs.guard().cloned() else {
            return Ok(None);
        };
        let Some(ino) = ino_of(&guard)? else {
            return Ok(None);
        };
        let kernfs = on_cgroupfs(&guard);
        // On cgroupfs a held cpuacct.usage answers ENODEV once the directory is removed
        // (`same_guard`): the guard directory itself is held only where nothing else tells.
        let usage_tells =
            kernfs && hold.holds(V1File::CpuacctUsage) && dirs.get("cpuacct").is_some();
        let held_guard = if hold == V1Hold::NONE || usage_tells {
            None
        } else {
            match File::open(&guard) {
                Ok(f) => Some(f),
                Err(e) if is_gone(&e) => return Ok(None),
                Err(_) => None,
            }
        };
        let mut r = V1StatsReader {
            dirs,
            proc: proc.into(),
            ino,
            held_guard,
            user_hz: match procfs::ticks_per_second() {
                0 => DEFAULT_USER_HZ,
                n => n,
            },
            runq: RunqWait::default(),
            hold,
            files: Vec::new(),
            tasks: Vec::new(),
            walk_age: 0,
            watched: watch.map(SubtreeWatch::start),
            cache: CgroupStats::default(),
            slow: None,
            had_threads: true,
            usage_at_tasks: None,
            taskless_reads: 0,
            usage_at_stat: None,
            user_system: (None, None),
            own_quota: true,
            throttling: None,
            kernfs,
        };
        r.open_files()?;
        // Staggered, so that readers opened together do not walk again in the same sweep.
        r.walk_age = u32::try_from(ino % u64::from(WALK_EVERY)).unwrap_or(0);
        match ino_of(&guard)? {
            Some(now) if now == ino => Ok(Some(r)),
            _ => Ok(None),
        }
    }

    /// The files this reader holds.
    pub fn hold(&self) -> V1Hold {
        self.hold
    }

    /// The directories of the subtree whose `tasks` files are read (the tenant's directory
    /// and those below it, as last walked).
    pub fn walked_dirs(&self) -> usize {
        self.tasks.len()
    }

    /// Says whether the tenant has a CPU quota of its own (a `limit_pct`; true until told).
    /// Without one, cpu.stat is read with the slow figures only (issue 15: half the reads of
    /// an idle tenant's sweep): the kernel throttles a v1 group, and counts its periods, by
    /// the group's own `cpu.cfs_quota_us` alone, and with none (-1) the bandwidth timer never
    /// runs, so `nr_periods`, `nr_throttled` and `throttled_time` stay as they are
    /// (kernel/sched/fair.c `sched_cfs_period_timer`; Documentation/scheduler/sched-bwc.rst).
    /// A quota set behind tenantd's back is seen within the slow figures' cadence.
    pub fn set_own_cpu_quota(&mut self, own: bool) {
        self.own_quota = own;
    }

    /// Whether cpuacct.usage (in the guard directory) is held open.
    fn usage_held(&self) -> bool {
        self.dirs.get("cpuacct").is_some()
            && self
                .files
                .iter()
                .find(|f| f.is(V1File::CpuacctUsage))
                .is_some_and(|f| f.held.is_some())
    }

    /// Whether every directory of the last walk is watched (then only `rewalk` walks again).
    pub fn watched(&self) -> bool {
        self.watched.as_ref().is_some_and(Watched::complete)
    }

    /// Walks the subtrees again at the next sample.
    pub fn rewalk(&mut self) {
        self.walk_age = WALK_EVERY;
    }

    /// Opens the files of the tenant's own directories (the first name found of each) and
    /// walks the subtrees (`walk`).
    fn open_files(&mut self) -> Result<()> {
        self.files.clear();
        for (file, controller, names) in FILES {
            let Some(dir) = self
                .dirs
                .get(controller)
                .cloned()
                .filter(|_| !file.summed())
            else {
                continue;
            };
            let hold = self.hold.holds(file);
            for (i, name) in (0u8..).zip(names) {
                // Not held: the first name that exists now is the one read.
                if !hold && names.len() > 1 && !dir.join(name).exists() {
                    continue;
                }
                if let Some(f) = FileAt::open(&dir, Name::Of(file, i), hold, false)? {
                    self.files.push(f);
                    break;
                }
            }
        }
        // The walk adds the summed files and sizes the list exactly.
        self.walk()
    }

    /// Finds the directories of the subtrees again and opens their summed and `tasks` files.
    fn walk(&mut self) -> Result<()> {
        self.walk_keeping(false)
    }

    /// `walk`, keeping open the held files of the directories found again (`keep`) instead
    /// of opening them anew (issue 15: most of a walk's cost). Not after a file answered that
    /// its directory is gone: a directory recreated under the same name needs new files.
    fn walk_keeping(&mut self, keep: bool) -> Result<()> {
        self.walk_age = 0;
        // The new walk's watches are taken before the last one's are given back, so the
        // directories found again keep theirs.
        let mut watched = self.watched.as_ref().map(|w| w.watch().start());
        let mut open: HashMap<PathBuf, FileAt> = HashMap::new();
        // The files of the tenant's own directories stay, the summed ones are found again.
        let (summed, own): (Vec<FileAt>, Vec<FileAt>) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(|f| f.name.file().is_some_and(V1File::summed));
        if keep {
            let held = summed.into_iter().chain(std::mem::take(&mut self.tasks));
            open.extend(held.filter(|f| f.held.is_some()).map(|f| (f.path(), f)));
        }
        let mut reopen = |dir: &Arc<Path>, name: Name, hold: bool, below: bool| match open
            .remove(&dir.join(name.as_str()))
        {
            Some(f) if hold => Ok(Some(f)),
            _ => FileAt::open(dir, name, hold, below),
        };
        let mut trees: Vec<(&str, Vec<Arc<Path>>)> = Vec::new();
        let tasks_in = if self.dirs.get("cpu").is_some() {
            "cpu"
        } else {
            "cpuacct"
        };
        let summed = FILES
            .iter()
            .filter(|(f, _, _)| f.summed())
            .map(|(_, c, _)| *c);
        for controller in summed.chain([tasks_in]) {
            if !trees.iter().any(|(c, _)| *c == controller)
                && let Some(dir) = self.dirs.get(controller)
            {
                trees.push((controller, subtree(dir, watched.as_mut())));
            }
        }
        let tree = |c: &str| {
            trees
                .iter()
                .find(|(t, _)| *t == c)
                .map(|(_, d)| d.as_slice())
        };
        let summed_at = FILES
            .iter()
            .filter(|(f, _, _)| f.summed())
            .map(|(_, c, _)| tree(c).map_or(0, <[_]>::len));
        let mut files = Vec::with_capacity(own.len() + summed_at.sum::<usize>());
        let mut own = own.into_iter().peekable();
        for (file, controller, _) in FILES {
            if !file.summed() {
                files.extend(own.next_if(|f| f.is(file)));
                continue;
            }
            let hold = self.hold.holds(file);
            for (k, dir) in tree(controller).unwrap_or_default().iter().enumerate() {
                // Summed files have one name.
                if let Some(f) = reopen(dir, Name::Of(file, 0), hold, k > 0)? {
                    files.push(f);
                }
            }
        }
        files.shrink_to_fit();
        self.files = files;
        let hold = self.hold.holds_tasks();
        let mut tasks = Vec::new();
        for (k, dir) in tree(tasks_in).unwrap_or_default().iter().enumerate() {
            if let Some(f) = reopen(dir, Name::Tasks, hold, k > 0)? {
                tasks.push(f);
            }
        }
        tasks.shrink_to_fit();
        self.tasks = tasks;
        self.watched = watched;
        Ok(())
    }

    /// Reads every file once. `Ok(None)` when the tenant vanished or its guard directory is
    /// now another one; the caller opens it again.
    pub fn sample(&mut self) -> Result<Option<Sample>> {
        let mut buf = Vec::new();
        self.sample_with(&mut buf, &Cadence::EVERY_SWEEP)
    }

    /// Reads the files of `cadence.fresh`, then the others when `cadence::figures_to_read`
    /// says so; the figures not read repeat their last values. `Ok(None)` as `sample` says.
    pub fn sample_with(&mut self, buf: &mut Vec<u8>, cadence: &Cadence) -> Result<Option<Sample>> {
        if self.walk_age >= WALK_EVERY {
            // Only cgroupfs tells a held file of a removed directory (ENODEV): elsewhere
            // (tests, benchmarks) every walk opens the files anew.
            self.walk_keeping(self.kernfs)?;
        }
        if !self.watched() {
            self.walk_age = self.walk_age.saturating_add(1);
        }
        // A subdirectory gone since the walk: walked again, and read again, once.
        for attempt in 0..2 {
            match self.read_sweep(buf, cadence)? {
                Ok((stats, read)) => {
                    if !self.same_guard(read)? {
                        return Ok(None);
                    }
                    let usage = stats.cpu.usage_usec;
                    self.slow = cadence::after_sweep(self.slow, read, usage);
                    if read != cadence.fresh {
                        self.cache.clone_from(&stats);
                        let keep = cadence::hold_slow(cadence, self.slow.as_ref());
                        self.hold_slow(keep, cadence.fresh);
                    }
                    return Ok(Some(Sample {
                        ino: self.ino,
                        stats,
                        read,
                    }));
                }
                Err(Gone::Below) if attempt == 0 => self.walk()?,
                Err(_) => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Keeps the files held of the figures not `fresh` open (`keep`), reopening those
    /// closed, or closes them until the next read that keeps them (`cadence::hold_slow`).
    fn hold_slow(&mut self, keep: bool, fresh: Figures) {
        for f in &mut self.files {
            let Some(file) = f.name.file() else { continue };
            if fresh.contains(file.figure()) || !self.hold.holds(file) {
                continue;
            }
            if !keep {
                f.held = None;
            } else if f.held.is_none() {
                f.held = File::open(f.path()).ok();
            }
        }
    }

    /// Whether this read of the slow figures may read only `TASKLESS_SLOW`: not the first, the
    /// tenant used no CPU since the last one (`usage`) and had no thread at the last read of
    /// its `tasks` files, and fewer
    /// than `TASKLESS_FULL_EVERY` reads of its slow figures in a row were partial. Counts the
    /// partial read it allows.
    fn taskless(&mut self, usage: Option<u64>) -> bool {
        // The first read takes everything: the figures repeated are the last ones read. A
        // tenant whose usage moved since that read had a thread run, gone or not now.
        let unmoved = self
            .slow
            .is_some_and(|l| usage.is_some() && l.usage_usec == usage);
        let empty = unmoved && !self.had_threads;
        if empty && self.taskless_reads + 1 < TASKLESS_FULL_EVERY {
            self.taskless_reads += 1;
            true
        } else {
            self.taskless_reads = 0;
            false
        }
    }

    /// One sweep's reads: the fresh figures, then the rest when due (or their last values).
    fn read_sweep(
        &mut self,
        buf: &mut Vec<u8>,
        cadence: &Cadence,
    ) -> Result<std::result::Result<(CgroupStats, Figures), Gone>> {
        let mut stats = CgroupStats::default();
        let fresh = cadence.fresh;
        // Without a quota of its own, cpu.stat is read with the slow figures (and the first
        // time); otherwise it repeats (`set_own_cpu_quota`).
        let throttling = self.throttling.filter(|_| !self.own_quota);
        if let Err(g) = self.read_figures(buf, fresh, throttling, &mut stats)? {
            return Ok(Err(g));
        }
        let read = cadence::figures_to_read(cadence, self.slow.as_ref(), stats.cpu.usage_usec);
        let mut slow = read.minus(fresh);
        if slow != Figures::NONE {
            let taskless = self.taskless(stats.cpu.usage_usec);
            if taskless {
                self.carry_all_but(fresh.union(TASKLESS_SLOW), &mut stats);
                slow = slow.intersect(TASKLESS_SLOW);
            }
            if let Err(g) = self.read_figures(buf, slow, None, &mut stats)? {
                return Ok(Err(g));
            }
            if throttling.is_some()
                && !taskless
                && fresh.contains(Figure::Cpu)
                && let Err(g) = self.read_file(buf, V1File::CpuStat, &mut stats)?
            {
                return Ok(Err(g));
            }
        } else {
            self.carry_all_but(read, &mut stats);
        }
        Ok(Ok((stats, read)))
    }

    /// Repeats into `stats` the last values of every figure not in `read` (its files and the
    /// run-queue wait).
    fn carry_all_but(&self, read: Figures, stats: &mut CgroupStats) {
        for (file, _, _) in FILES {
            if !read.contains(file.figure()) {
                file.carry(&self.cache, stats);
            }
        }
        if !read.contains(Figure::CpuPressure) {
            stats.runq_wait_usec = self.cache.runq_wait_usec;
        }
    }

    /// Reads the files of `figures` into `out` (the run-queue wait for `CpuPressure`); with
    /// `throttling`, cpu.stat is not read and those values are taken.
    fn read_figures(
        &mut self,
        buf: &mut Vec<u8>,
        figures: Figures,
        throttling: Option<Throttling>,
        out: &mut CgroupStats,
    ) -> Result<std::result::Result<(), Gone>> {
        let mut stat_read = None;
        for (file, _, _) in FILES {
            if !figures.contains(file.figure()) {
                continue;
            }
            // User and system time only grow while the tenant's threads run, and then its
            // CPU usage (cpuacct.usage, read just before) moves too: unmoved, they are what
            // they were (no SLA verdict reads them). Throttling (cpu.stat) is read anyway
            // when the tenant has a quota of its own (`set_own_cpu_quota`).
            let usage = out.cpu.usage_usec;
            if file == V1File::CpuacctStat && usage.is_some() && usage == self.usage_at_stat {
                (out.cpu.user_usec, out.cpu.system_usec) = self.user_system;
                continue;
            }
            if let (V1File::CpuStat, Some(t)) = (file, throttling) {
                (
                    out.cpu.nr_periods,
                    out.cpu.nr_throttled,
                    out.cpu.throttled_usec,
                ) = t;
                continue;
            }
            if let Err(g) = self.read_file(buf, file, out)? {
                return Ok(Err(g));
            }
            if file == V1File::CpuacctStat {
                stat_read = Some((usage, (out.cpu.user_usec, out.cpu.system_usec)));
            }
        }
        if let Some((usage, user_system)) = stat_read {
            (self.usage_at_stat, self.user_system) = (usage, user_system);
        }
        // A tenant that had no thread at the last read and used no CPU since has none that
        // waited: the `tasks` files (each read builds and sorts a pid list in the kernel)
        // are not read, and the wait stays what it was. A thread moved in runs, so uses CPU,
        // before it can wait; its wait before its first read is never counted (`RunqWait`).
        let idle = !self.had_threads
            && out.cpu.usage_usec.is_some()
            && out.cpu.usage_usec == self.usage_at_tasks;
        if figures.contains(Figure::CpuPressure) && idle {
            out.runq_wait_usec = Some(self.runq.total_usec());
        } else if figures.contains(Figure::CpuPressure) && !self.tasks.is_empty() {
            let mut tids = Vec::new();
            for f in &self.tasks {
                match f.read(buf) {
                    Ok(Some(t)) => tids.extend(pids(t).map_err(|source| CgroupError::Parse {
                        path: f.path(),
                        source,
                    })?),
                    Ok(None) => {}
                    Err((g, e)) if is_gone(&e) => return Ok(Err(g)),
                    Err((_, source)) => {
                        return Err(CgroupError::Read {
                            path: f.path(),
                            source,
                        });
                    }
                }
            }
            self.had_threads = !tids.is_empty();
            self.usage_at_tasks = out.cpu.usage_usec;
            let waits = tids.into_iter().filter_map(|tid| {
                let path = self.proc.join(format!("{tid}/schedstat"));
                Some((tid, Schedstat::from_file(path).ok()?.run_delay))
            });
            out.runq_wait_usec = Some(self.runq.feed(waits));
        }
        Ok(Ok(()))
    }

    /// Reads `file` (each of its directories, for a summed one) into `out`; cpu.stat's
    /// figures are kept for the sweeps that do not read it.
    fn read_file(
        &mut self,
        buf: &mut Vec<u8>,
        file: V1File,
        out: &mut CgroupStats,
    ) -> Result<std::result::Result<(), Gone>> {
        for f in self.files.iter().filter(|f| f.is(file)) {
            let text = match f.read(buf) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err((g, e)) if is_gone(&e) => return Ok(Err(g)),
                Err((_, source)) => {
                    return Err(CgroupError::Read {
                        path: f.path(),
                        source,
                    });
                }
            };
            apply(file, text, self.user_hz, out).map_err(|source| CgroupError::Parse {
                path: f.path(),
                source,
            })?;
        }
        if file == V1File::CpuStat {
            self.throttling = Some((
                out.cpu.nr_periods,
                out.cpu.nr_throttled,
                out.cpu.throttled_usec,
            ));
        }
        Ok(Ok(()))
    }

    /// Whether the guard directory is still the one the reader was opened on, after a sweep
    /// that read the figures of `read`: held, a removed one has no links left; otherwise its
    /// path is looked up again and the inode compared.
    fn same_guard(&self, read: Figures) -> Result<bool> {
        // On cgroupfs a held cpuacct.usage just read would have answered ENODEV (`Gone`) had
        // the directory been removed, recreated or not: nothing more to ask.
        if self.kernfs && read.contains(Figure::Cpu) && self.usage_held() {
            return Ok(true);
        }
        let Some(guard) = self.dirs.guard() else {
            return Ok(false);
        };
        super::stats::still_there(self.held_guard.as_ref(), guard, self.ino)
    }
}

/// Samples `dirs` through `slot`, opening it when needed and once more when the tenant was
/// recreated (a new inode). Holds every file and reads every figure.
pub fn sample_dirs(
    slot: &mut Option<V1StatsReader>,
    dirs: &V1Dirs,
    proc: &Path,
) -> Result<Option<Sample>> {
    sample_dirs_with(
        slot,
        dirs,
        proc,
        &mut Vec::new(),
        (Figures::ALL.into(), true),
        &Cadence::EVERY_SWEEP,
        None,
    )
}

/// Tells the readers whose watched directories got a new directory since the last call (all
/// of them after an overflow) to walk their subtrees at their next sample. Returns how many.
pub fn rewalk_changed<'r>(
    watch: &SubtreeWatch,
    readers: impl IntoIterator<Item = &'r mut V1StatsReader>,
) -> usize {
    let changes = watch.changed();
    if matches!(&changes, Changes::Below(wds) if wds.is_empty()) {
        return 0;
    }
    let mut n = 0;
    for r in readers {
        let hit = match &changes {
            Changes::Anything => true,
            Changes::Below(wds) => r.watched.as_ref().is_some_and(|w| w.any_of(wds)),
        };
        if hit {
            r.rewalk();
            n += 1;
        }
    }
    n
}

/// `sample_dirs` holding the files of `hold` (reopened when the reader holds others), with
/// `cadence` (`V1StatsReader::sample_with`) and whether the tenant has a CPU quota of its own
/// (`V1StatsReader::set_own_cpu_quota`).
pub fn sample_dirs_with(
    slot: &mut Option<V1StatsReader>,
    dirs: &V1Dirs,
    proc: &Path,
    buf: &mut Vec<u8>,
    (hold, own_cpu_quota): (V1Hold, bool),
    cadence: &Cadence,
    watch: Option<&SubtreeWatch>,
) -> Result<Option<Sample>> {
    for _ in 0..2 {
        if slot
            .as_ref()
            .is_none_or(|r| !r.dirs.same_as(dirs) || r.hold != hold)
        {
            *slot = V1StatsReader::open_holding(dirs, proc, hold, watch)?;
        }
        let Some(r) = slot.as_mut() else {
            return Ok(None);
        };
        r.set_own_cpu_quota(own_cpu_quota);
        match r.sample_with(buf, cadence)? {
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
            cpu: Some(mk("cpu").into()),
            cpuacct: Some(mk("cpuacct").into()),
            memory: Some(mk("memory").into()),
            blkio: Some(mk("blkio").into()),
            pids: Some(mk("pids").into()),
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

    /// Issue 15: cpuacct.stat (user and system time, which no verdict reads) is read again
    /// only when cpuacct.usage moved since its last read; in between its values repeat.
    #[test]
    fn user_and_system_time_are_read_again_only_when_the_cpu_usage_moves() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("cpuacct/t");
        std::fs::create_dir_all(&d).unwrap();
        let dirs = V1Dirs {
            cpuacct: Some(d.clone().into()),
            ..V1Dirs::default()
        };
        let write = |usage_ns: u64, user: u64| {
            std::fs::write(d.join("cpuacct.usage"), format!("{usage_ns}\n")).unwrap();
            std::fs::write(d.join("cpuacct.stat"), format!("user {user}\nsystem 7\n")).unwrap();
        };
        let user = |slot: &mut Option<V1StatsReader>| {
            let s = sample_dirs(slot, &dirs, tmp.path()).unwrap().unwrap();
            (s.stats.cpu.usage_usec, s.stats.cpu.user_usec)
        };
        let hz = procfs::ticks_per_second().max(1);
        let usec = |ticks: u64| Some(ticks * 1_000_000 / hz);
        let mut slot = None;
        write(5_000_000, 10);
        assert_eq!(user(&mut slot), (Some(5000), usec(10)));
        // The file moved, the usage did not (a file, not the kernel): repeated.
        write(5_000_000, 11);
        assert_eq!(user(&mut slot), (Some(5000), usec(10)));
        write(6_000_000, 12);
        assert_eq!(user(&mut slot), (Some(6000), usec(12)));
    }

    /// cpu.stat (throttling) of a tenant without a CPU quota of its own is read with the slow
    /// figures only (when its usage moved, or every `idle_every` sweeps); with one, every
    /// sweep (issue 15: half an idle tenant's reads).
    #[test]
    fn throttling_is_read_every_sweep_only_for_a_tenant_with_its_own_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let (cpu, acct) = (tmp.path().join("cpu/t"), tmp.path().join("cpuacct/t"));
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::create_dir_all(&acct).unwrap();
        let dirs = V1Dirs {
            cpu: Some(cpu.clone().into()),
            cpuacct: Some(acct.clone().into()),
            ..V1Dirs::default()
        };
        let write = |usage_ns: u64, throttled: u64| {
            std::fs::write(acct.join("cpuacct.usage"), format!("{usage_ns}\n")).unwrap();
            std::fs::write(
                cpu.join("cpu.stat"),
                format!(
                    "nr_periods {throttled}\nnr_throttled {throttled}\nthrottled_time {}\n",
                    throttled * 1000
                ),
            )
            .unwrap();
        };
        let cadence = Cadence::default().for_tenant(false, false);
        let mut buf = Vec::new();
        let mut throttled = |slot: &mut Option<V1StatsReader>, own: bool| {
            let s = sample_dirs_with(
                slot,
                &dirs,
                tmp.path(),
                &mut buf,
                (cadence.fresh.into(), own),
                &cadence,
                None,
            )
            .unwrap()
            .unwrap();
            (s.stats.cpu.nr_throttled, s.stats.cpu.throttled_usec)
        };
        let (mut without, mut with) = (None, None);
        write(5_000_000, 1);
        assert_eq!(throttled(&mut without, false), (Some(1), Some(1)));
        assert_eq!(throttled(&mut with, true), (Some(1), Some(1)));
        // The file moved, the usage did not (a file, not the kernel).
        write(5_000_000, 2);
        assert_eq!(
            throttled(&mut with, true),
            (Some(2), Some(2)),
            "own quota: every sweep"
        );
        let mut repeated = 1;
        while throttled(&mut without, false) == (Some(1), Some(1)) {
            repeated += 1;
            assert!(
                repeated <= cadence.idle_every,
                "read within idle_every sweeps"
            );
        }
        assert!(repeated > 1, "not read in the sweep after the first");
        // The usage moved: the slow figures, and cpu.stat with them, are read.
        write(6_000_000, 3);
        assert_eq!(throttled(&mut without, false), (Some(3), Some(3)));
    }

    /// One sweep of a reader that may hold every file, with `cadence`, of a tenant that exists.
    fn sample_holding_all(
        slot: &mut Option<V1StatsReader>,
        dirs: &V1Dirs,
        proc: &Path,
        buf: &mut Vec<u8>,
        cadence: &Cadence,
    ) -> Sample {
        let hold = (Figures::ALL.into(), false);
        sample_dirs_with(slot, dirs, proc, buf, hold, cadence, None)
            .unwrap()
            .unwrap()
    }

    /// A cgroup file kept open after a read keeps a page of kernel memory: a reader that may
    /// hold every file closes the slow figures' files after a read that found the tenant
    /// idle and opens them again after one that found it active.
    #[test]
    fn slow_files_are_closed_while_the_tenant_is_idle() {
        let tmp = tempfile::tempdir().unwrap();
        let (acct, mem) = (tmp.path().join("cpuacct/t"), tmp.path().join("memory/t"));
        std::fs::create_dir_all(&acct).unwrap();
        std::fs::create_dir_all(&mem).unwrap();
        let dirs = V1Dirs {
            cpuacct: Some(acct.clone().into()),
            memory: Some(mem.clone().into()),
            ..V1Dirs::default()
        };
        std::fs::write(acct.join("cpuacct.stat"), "user 1\nsystem 1\n").unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(mem.join("memory.stat"), "total_rss 4096\ntotal_cache 0\n").unwrap();
        let usage = |ns: u64| std::fs::write(acct.join("cpuacct.usage"), format!("{ns}\n"));
        usage(5_000_000).unwrap();
        let cadence = Cadence::default().for_tenant(false, false);
        let mut buf = Vec::new();
        let mut sample = |slot: &mut Option<V1StatsReader>| {
            sample_holding_all(slot, &dirs, tmp.path(), &mut buf, &cadence).read
        };
        let held = |slot: &Option<V1StatsReader>| -> Vec<&'static str> {
            let files = slot.as_ref().unwrap().files.iter();
            files
                .filter(|f| f.held.is_some())
                .map(|f| f.name.as_str())
                .collect()
        };
        let mut slot = None;
        assert!(sample(&mut slot).is_all());
        let every = held(&slot);
        assert!(every.contains(&"memory.stat"), "{every:?}");
        let mut sweeps = 1;
        while !sample(&mut slot).is_all() {
            sweeps += 1;
            assert!(
                sweeps <= cadence.idle_every,
                "read within idle_every sweeps"
            );
        }
        assert_eq!(
            held(&slot),
            ["cpuacct.usage", "cpuacct.stat"],
            "idle: the slow figures' files closed"
        );
        usage(6_000_000).unwrap();
        assert!(sample(&mut slot).is_all());
        assert_eq!(held(&slot), every, "active: held again");
    }

    /// A tenant with no thread that used no CPU since has its memory read with the slow
    /// figures and the rest repeated (nothing else of it moves without a task), but every
    /// `TASKLESS_FULL_EVERY`th read takes everything, and so does a read once its usage moved.
    #[test]
    fn a_taskless_tenants_slow_read_takes_its_memory_and_repeats_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let (acct, mem, pids) = (
            tmp.path().join("cpuacct/t"),
            tmp.path().join("memory/t"),
            tmp.path().join("pids/t"),
        );
        for d in [&acct, &mem, &pids] {
            std::fs::create_dir_all(d).unwrap();
        }
        let dirs = V1Dirs {
            cpuacct: Some(acct.clone().into()),
            memory: Some(mem.clone().into()),
            pids: Some(pids.clone().into()),
            ..V1Dirs::default()
        };
        let write = |d: &Path, f: &str, v: &str| std::fs::write(d.join(f), v).unwrap();
        write(&acct, "cpuacct.usage", "5000000\n");
        write(&acct, "cpuacct.stat", "user 1\nsystem 1\n");
        write(&acct, "tasks", "");
        write(&mem, "memory.stat", "total_rss 4096\ntotal_cache 0\n");
        write(&pids, "pids.current", "0\n");
        let cadence = Cadence::default().for_tenant(false, false);
        let mut buf = Vec::new();
        let mut sample = |slot: &mut Option<V1StatsReader>| {
            sample_holding_all(slot, &dirs, tmp.path(), &mut buf, &cadence)
        };
        let mut slot = None;
        assert!(sample(&mut slot).read.is_all());
        write(&mem, "memory.stat", "total_rss 8192\ntotal_cache 0\n");
        write(&pids, "pids.current", "2\n");
        let mut slow_reads = 0;
        let mut sweeps = 0;
        loop {
            let s = sample(&mut slot);
            sweeps += 1;
            assert!(sweeps < 10_000, "{slow_reads} slow reads");
            if !s.read.is_all() {
                continue;
            }
            slow_reads += 1;
            assert_eq!(s.stats.memory.anon, Some(8192), "memory read at each");
            if slow_reads < TASKLESS_FULL_EVERY {
                assert_eq!(s.stats.pids_current, Some(0), "read {slow_reads}: repeated");
            } else {
                assert_eq!(s.stats.pids_current, Some(2), "read {slow_reads}: all");
                break;
            }
        }
        write(&pids, "pids.current", "3\n");
        write(&acct, "cpuacct.usage", "6000000\n");
        let s = sample(&mut slot);
        assert!(s.read.is_all());
        assert_eq!(
            s.stats.pids_current,
            Some(3),
            "its usage moved: everything read"
        );
    }

    /// The guard's filesystem: cgroupfs (where a held file of a removed cgroup answers
    /// ENODEV, so no `fstat` per sweep is needed) is told from any other.
    #[test]
    fn cgroupfs_is_told_from_other_filesystems() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!on_cgroupfs(tmp.path()));
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let cgroup = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2"))
            .map(|f| f[1].to_string())
            .expect("no cgroup filesystem is mounted here: this test cannot run");
        assert!(on_cgroupfs(Path::new(&cgroup)), "{cgroup}");
    }

    /// A tenant's cpuacct directory (cpuacct.usage) and memory directory with a leaf
    /// `_procs` below it (memory.oom_control in both), in a temporary directory.
    fn tenant_with_a_leaf() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let memory = tmp.path().join("memory/t");
        std::fs::create_dir_all(memory.join("_procs")).unwrap();
        let cpuacct = tmp.path().join("cpuacct/t");
        std::fs::create_dir_all(&cpuacct).unwrap();
        std::fs::write(cpuacct.join("cpuacct.usage"), "1000\n").unwrap();
        for d in [memory.clone(), memory.join("_procs")] {
            std::fs::write(d.join("memory.oom_control"), "oom_kill 1\n").unwrap();
        }
        (tmp, cpuacct, memory)
    }

    /// Issue 15 (memory at 10,000 tenants): each of a tenant's directories is one allocation,
    /// shared by the reader, every file in it and the walks of its subtree, also after a
    /// walk; the files are one list in the order of `FILES`, with no spare room, of 24-byte
    /// entries.
    #[test]
    fn a_readers_files_share_one_copy_of_each_directory() {
        let (tmp, cpuacct, memory) = tenant_with_a_leaf();
        std::fs::write(cpuacct.join("cpuacct.stat"), "user 1\nsystem 2\n").unwrap();
        for d in [memory.clone(), memory.join("_procs")] {
            std::fs::write(d.join("memory.usage_in_bytes"), "4096\n").unwrap();
        }
        let dirs = V1Dirs {
            cpuacct: Some(cpuacct.clone().into()),
            memory: Some(memory.clone().into()),
            ..V1Dirs::default()
        };
        let mut r = V1StatsReader::open(&dirs, tmp.path()).unwrap().unwrap();
        let check = |r: &V1StatsReader| {
            let mut seen = 0;
            assert_eq!(r.files.capacity(), r.files.len());
            let order = |f: &FileAt| FILES.iter().position(|(x, _, _)| f.is(*x));
            assert!(r.files.is_sorted_by_key(order), "{:?}", r.files);
            for f in &r.files {
                let own = r.dirs.0.iter().flatten().find(|d| **d == f.dir);
                if let Some(own) = own {
                    assert!(Arc::ptr_eq(own, &f.dir), "{} copied", f.dir.display());
                    seen += 1;
                } else {
                    assert_eq!(&*f.dir, memory.join("_procs"), "only the leaf is below");
                }
            }
            assert!(seen >= 4, "{seen} files in the tenant's own directories");
            assert_eq!(r.tasks.capacity(), r.tasks.len());
        };
        assert_eq!(std::mem::size_of::<FileAt>(), 24);
        check(&r);
        r.rewalk();
        r.sample().unwrap().unwrap();
        check(&r);
        // The reader shares the caller's paths (the sampler's `V1Dirs`), it does not copy them.
        assert!(Arc::ptr_eq(
            r.dirs.get("memory").unwrap(),
            dirs.memory.as_ref().unwrap()
        ));
        // Another tenant's directories open the reader anew; the same ones do not.
        assert!(r.dirs.same_as(&dirs));
        let copy = V1Dirs {
            cpuacct: Some(Arc::from(cpuacct.as_path())),
            memory: Some(Arc::from(memory.as_path())),
            ..V1Dirs::default()
        };
        assert!(r.dirs.same_as(&copy), "equal paths, not shared");
        let other = V1Dirs {
            cpuacct: Some(cpuacct.join("x").into()),
            ..dirs.clone()
        };
        assert!(!r.dirs.same_as(&other));
    }

    /// Issue 15: a periodic walk keeps the held files of the directories it finds again (no
    /// open and close per file every `WALK_EVERY` sweeps); a walk after a file answered that
    /// its directory is gone opens them anew.
    #[test]
    fn a_walk_keeps_the_held_files_of_the_directories_found_again() {
        use std::os::fd::AsRawFd;
        let (tmp, cpuacct, memory) = tenant_with_a_leaf();
        let dirs = V1Dirs {
            cpuacct: Some(cpuacct.into()),
            memory: Some(memory.clone().into()),
            ..V1Dirs::default()
        };
        let mut r = V1StatsReader::open(&dirs, tmp.path()).unwrap().unwrap();
        let fds = |r: &V1StatsReader| -> Vec<i32> {
            r.files
                .iter()
                .filter(|f| f.is(V1File::OomControl))
                .map(|f| f.held.as_ref().unwrap().as_raw_fd())
                .collect()
        };
        let before = fds(&r);
        assert_eq!(before.len(), 2, "the tenant's and its leaf's");
        // A directory made below is found, the others keep their files.
        std::fs::create_dir(memory.join("child")).unwrap();
        std::fs::write(memory.join("child/memory.oom_control"), "oom_kill 4\n").unwrap();
        r.walk_keeping(true).unwrap();
        let kept = fds(&r);
        assert_eq!(kept.len(), 3);
        assert!(
            before.iter().all(|fd| kept.contains(fd)),
            "{before:?} {kept:?}"
        );
        let s = r.sample().unwrap().unwrap();
        assert_eq!(s.stats.memory_events.oom_kill, Some(6));
        // Opened anew while the old ones are still open: other descriptors.
        r.walk_keeping(false).unwrap();
        let anew = fds(&r);
        assert_eq!(anew.len(), 3);
        assert!(
            anew.iter().all(|fd| !kept.contains(fd)),
            "{kept:?} {anew:?}"
        );
    }
}
