//! The cgroup v2 stat reader: parsers from the bytes of cpu.stat, memory.stat, memory.events,
//! io.stat, pids.events and the pressure files into the domain's typed stats
//! (`domain::stats`), and a reader that samples a cgroup directory cheaply by holding its
//! files open and re-reading them with `pread`. It fills the domain's types and defines none
//! of its own; it may import `domain`, never `store`, `engine`, `api` or `metrics`.
//!
//! A key an older kernel lacks (memory.peak before 5.19, a controller not enabled) is left
//! `None`, not an error. Formats follow Documentation/admin-guide/cgroup-v2.rst ("cpu.stat",
//! "memory.stat", "memory.events", "io.stat", "pids.events") and
//! Documentation/accounting/psi.rst (pressure files).
//!
//! The reader reads the figures of `Cadence::fresh` every sweep and the others as the cadence
//! says (`domain::cadence`); a sample repeats the last values of the figures not read, and
//! says which were (`Sample::read`). Held files are those of the fresh figures: the others are
//! opened when they are read.
//!
//! The reader records the directory's inode with each sample: a cgroup deleted and
//! recreated under the same name has a new inode, and the usage model takes no delta
//! across it. A cgroup that vanishes mid-read gives "no sample", not an error.

use super::parse::{PResult, dec, dev_id, each_flat, err, fields, nonblank_lines, set, single_u64};
use super::{CgroupError, Result, is_gone};
use crate::domain::cadence::{self, Cadence, Figure, Figures, SlowRead};
use crate::domain::stats::{
    CgroupStats, CpuStat, IoDevStat, MemoryEvents, MemoryStat, PressureTotals, Sample,
};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// cpu.stat. Unknown keys (nr_bursts, burst_usec, ...) are skipped.
pub fn cpu_stat<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<CpuStat> {
    let mut c = CpuStat::default();
    each_flat(s.as_ref(), |k, v, line| {
        let slot = match k {
            b"usage_usec" => &mut c.usage_usec,
            b"user_usec" => &mut c.user_usec,
            b"system_usec" => &mut c.system_usec,
            b"nr_periods" => &mut c.nr_periods,
            b"nr_throttled" => &mut c.nr_throttled,
            b"throttled_usec" => &mut c.throttled_usec,
            _ => return Ok(true),
        };
        set(slot, v, line)?;
        Ok(true)
    })?;
    Ok(c)
}

/// memory.stat: anon, file and inactive_file. The file has some 50 other keys; reading stops
/// once the three were seen (inactive_file comes about a third of the way down).
pub fn memory_stat<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<MemoryStat> {
    let mut m = MemoryStat::default();
    each_flat(s.as_ref(), |k, v, line| {
        let slot = match k {
            b"anon" => &mut m.anon,
            b"file" => &mut m.file,
            b"inactive_file" => &mut m.inactive_file,
            _ => return Ok(true),
        };
        set(slot, v, line)?;
        Ok(m.anon.is_none() || m.file.is_none() || m.inactive_file.is_none())
    })?;
    Ok(m)
}

/// memory.events.
pub fn memory_events<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<MemoryEvents> {
    let mut m = MemoryEvents::default();
    each_flat(s.as_ref(), |k, v, line| {
        let slot = match k {
            b"low" => &mut m.low,
            b"high" => &mut m.high,
            b"max" => &mut m.max,
            b"oom" => &mut m.oom,
            b"oom_kill" => &mut m.oom_kill,
            _ => return Ok(true),
        };
        set(slot, v, line)?;
        Ok(true)
    })?;
    Ok(m)
}

/// pids.events: the `max` count.
pub fn pids_events_max<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<Option<u64>> {
    let mut out = None;
    each_flat(s.as_ref(), |k, v, line| {
        if k == b"max" {
            set(&mut out, v, line)?;
        }
        Ok(true)
    })?;
    Ok(out)
}

/// io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=.. [cost.*=..]".
/// Keys that are not counters tenantd uses (cost.usage, cost.vrate) are skipped.
pub fn io_stat<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<Vec<IoDevStat>> {
    let mut out = Vec::new();
    for line in nonblank_lines(s.as_ref()) {
        let mut it = fields(line);
        let dev = it.next().unwrap_or_default();
        let device = dev_id(dev).ok_or_else(|| err("MAJ:MIN", line))?;
        let mut d = IoDevStat::new(device);
        for kv in it {
            let eq = kv
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| err("'KEY=VALUE'", kv))?;
            let slot = match &kv[..eq] {
                b"rbytes" => &mut d.rbytes,
                b"wbytes" => &mut d.wbytes,
                b"rios" => &mut d.rios,
                b"wios" => &mut d.wios,
                b"dbytes" => &mut d.dbytes,
                b"dios" => &mut d.dios,
                b"cost.usage" => &mut d.cost_usage_usec,
                _ => continue,
            };
            *slot = Some(dec(&kv[eq + 1..]).ok_or_else(|| err("an unsigned integer", kv))?);
        }
        out.push(d);
    }
    out.sort_by_key(|d| d.device);
    Ok(out)
}

/// The `total=` of the `some` and `full` lines of a pressure file.
pub fn pressure_totals<S: AsRef<[u8]> + ?Sized>(s: &S) -> PResult<PressureTotals> {
    let mut p = PressureTotals::default();
    for line in nonblank_lines(s.as_ref()) {
        let mut it = fields(line);
        let slot = match it.next() {
            Some(b"some") => &mut p.some_usec,
            Some(b"full") => &mut p.full_usec,
            _ => return Err(err("'some' or 'full'", line)),
        };
        let total = it
            .find_map(|kv| kv.strip_prefix(b"total="))
            .ok_or_else(|| err("a 'total=' field", line))?;
        *slot = Some(dec(total).ok_or_else(|| err("an unsigned integer", line))?);
    }
    Ok(p)
}

/// The files a sample reads, in this order.
pub const FILES: [&str; 11] = [
    "cpu.stat",
    "memory.current",
    "memory.peak",
    "memory.stat",
    "memory.events",
    "io.stat",
    "pids.current",
    "pids.events",
    "cpu.pressure",
    "memory.pressure",
    "io.pressure",
];

/// The figure (`domain::cadence`) each of `FILES` gives.
pub const FIGURE_OF: [Figure; 11] = [
    Figure::Cpu,
    Figure::MemoryCurrent,
    Figure::MemoryPeak,
    Figure::MemoryStat,
    Figure::MemoryEvents,
    Figure::Io,
    Figure::Pids,
    Figure::Pids,
    Figure::CpuPressure,
    Figure::MemoryPressure,
    Figure::IoPressure,
];

/// How many of `FILES` give the figures of `figures`.
pub fn files_of(figures: Figures) -> usize {
    FIGURE_OF.iter().filter(|f| figures.contains(**f)).count()
}

/// Descriptors a reader holding the files of `figures` takes on cgroupfs: the files, and the
/// directory when no held file tells that it is gone (a held cpu.stat does: cgroupfs answers
/// ENODEV on a removed cgroup's files, `StatsReader::same_directory`). For the budget.
pub fn held_per_dir(figures: Figures) -> usize {
    files_of(figures) + usize::from(figures != Figures::NONE && !figures.contains(Figure::Cpu))
}

/// Whether `dir` is on a cgroup filesystem (v1 or v2: both are kernfs, where a held file of a
/// removed cgroup answers ENODEV). False when it cannot be told.
pub(super) fn on_cgroupfs(dir: &Path) -> bool {
    const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
    const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
    rustix::fs::statfs(dir).is_ok_and(|s| {
        u64::try_from(s.f_type).is_ok_and(|t| t == CGROUP_SUPER_MAGIC || t == CGROUP2_SUPER_MAGIC)
    })
}

/// Copies the fields file `FILES[i]` gives (`apply`) from `from` into `to`.
fn carry(i: usize, from: &CgroupStats, to: &mut CgroupStats) {
    match i {
        0 => to.cpu = from.cpu,
        1 => to.memory_current = from.memory_current,
        2 => to.memory_peak = from.memory_peak,
        3 => to.memory = from.memory,
        4 => to.memory_events = from.memory_events,
        5 => to.io.clone_from(&from.io),
        6 => to.pids_current = from.pids_current,
        7 => to.pids_max_events = from.pids_max_events,
        8 => to.cpu_pressure = from.cpu_pressure,
        9 => to.memory_pressure = from.memory_pressure,
        10 => to.io_pressure = from.io_pressure,
        _ => {}
    }
}

/// Parses the text of file `FILES[i]` into `out`.
fn apply(i: usize, text: &[u8], out: &mut CgroupStats) -> PResult<()> {
    match i {
        0 => out.cpu = cpu_stat(text)?,
        1 => out.memory_current = Some(single_u64(text)?),
        2 => out.memory_peak = Some(single_u64(text)?),
        3 => out.memory = memory_stat(text)?,
        4 => out.memory_events = memory_events(text)?,
        5 => out.io = io_stat(text)?,
        6 => out.pids_current = Some(single_u64(text)?),
        7 => out.pids_max_events = pids_events_max(text)?,
        8 => out.cpu_pressure = Some(pressure_totals(text)?),
        9 => out.memory_pressure = Some(pressure_totals(text)?),
        10 => out.io_pressure = Some(pressure_totals(text)?),
        _ => {}
    }
    Ok(())
}

/// Reads the whole file from offset 0 with `pread` and returns its bytes. `buf` is scratch
/// space reused across calls: it keeps its full, initialised length, so it is zeroed when it
/// grows, not on every read.
///
/// A read that does not fill the space offered is taken as the end of the file, which saves
/// the second `pread` (the one answering 0) per file. That holds for regular files and for
/// the cgroup interface files read here (cgroup-v2.rst, "Interface Files"): each is produced
/// whole by one `seq_show` call, and the seq_file read (fs/seq_file.c, `seq_read_iter`)
/// copies out as much of it as the buffer takes.
pub fn pread_all<'b>(f: &File, buf: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
    if buf.len() < 4096 {
        buf.resize(4096, 0);
    }
    let mut len = 0;
    loop {
        if buf.len() - len < 1024 {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read_at(&mut buf[len..], len as u64) {
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    return Ok(&buf[..len]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How one stat file is read.
#[derive(Debug)]
enum Handle {
    /// Held open, re-read with `pread`.
    Held(File),
    /// Opened on each read: a file of a figure not read every sweep, or the process ran out
    /// of file descriptors (EMFILE/ENFILE) when the reader was made (raise `LimitNOFILE`).
    Reopen,
    /// Not offered by this kernel or with these controllers.
    Absent,
}

/// Samples one cgroup directory: the stat files of the figures it holds stay open and are
/// re-read with `pread`. Files the kernel does not offer (a controller not enabled, an older
/// kernel) are skipped.
#[derive(Debug)]
pub struct StatsReader {
    dir: PathBuf,
    ino: u64,
    /// The figures whose files were to be held (`open_holding`).
    hold: Figures,
    files: Vec<Handle>,
    /// The last values read of every figure (those not read in a sweep are repeated).
    cache: CgroupStats,
    /// The last read of the figures outside the cadence's fresh ones.
    slow: Option<SlowRead>,
    /// The directory itself, held with the files where no held file tells a removed
    /// directory: `fstat` on it does (no links left) without walking the path again.
    held_dir: Option<File>,
    /// Whether cpu.stat is held on cgroupfs: read every sweep, it answers ENODEV once the
    /// cgroup is removed (recreated or not), so neither the directory nor an `fstat` of it
    /// per sweep is needed (issue 15: a third of an idle tenant's syscalls).
    cpu_tells: bool,
}

impl StatsReader {
    /// Opens the directory's stat files and holds them. `Ok(None)` when the directory does
    /// not exist.
    pub fn open(dir: &Path) -> Result<Option<StatsReader>> {
        Self::open_mode(dir, true)
    }

    /// Like `open`; with `hold` false no file is held: each sample opens them (for tenants
    /// beyond the process's file-descriptor budget, see `held_tenants_budget`).
    pub fn open_mode(dir: &Path, hold: bool) -> Result<Option<StatsReader>> {
        Self::open_holding(dir, if hold { Figures::ALL } else { Figures::NONE })
    }

    /// Like `open`, holding only the files of `hold` (and the directory, unless `hold` is
    /// empty or a held cpu.stat on cgroupfs tells a removed one); the others are opened when
    /// they are read.
    pub fn open_holding(dir: &Path, hold: Figures) -> Result<Option<StatsReader>> {
        let ino = match std::fs::metadata(dir) {
            Ok(m) => m.ino(),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(source) => {
                return Err(CgroupError::Read {
                    path: dir.into(),
                    source,
                });
            }
        };
        let mut files = Vec::with_capacity(FILES.len());
        for (name, figure) in FILES.into_iter().zip(FIGURE_OF) {
            if !hold.contains(figure) {
                files.push(Handle::Reopen);
                continue;
            }
            let path = dir.join(name);
            match File::open(&path) {
                Ok(f) => files.push(Handle::Held(f)),
                // Absent, not gone: the kernel does not offer this file here.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => files.push(Handle::Absent),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    files.push(Handle::Reopen)
                }
                Err(e) if is_gone(&e) => return Ok(None),
                Err(source) => return Err(CgroupError::Read { path, source }),
            }
        }
        let cpu = FIGURE_OF.iter().position(|f| *f == Figure::Cpu);
        let cpu_tells =
            cpu.is_some_and(|i| matches!(files[i], Handle::Held(_))) && on_cgroupfs(dir);
        let mut held_dir = None;
        if hold != Figures::NONE && !cpu_tells {
            match File::open(dir) {
                Ok(d) => held_dir = Some(d),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {}
                Err(e) if is_gone(&e) => return Ok(None),
                Err(source) => {
                    return Err(CgroupError::Read {
                        path: dir.into(),
                        source,
                    });
                }
            }
        }
        // The directory may have been replaced while the files were being opened.
        match std::fs::metadata(dir) {
            Ok(m) if m.ino() == ino => {}
            Ok(_) => return Ok(None),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(source) => {
                return Err(CgroupError::Read {
                    path: dir.into(),
                    source,
                });
            }
        }
        Ok(Some(StatsReader {
            dir: dir.into(),
            ino,
            hold,
            files,
            cache: CgroupStats::default(),
            slow: None,
            held_dir,
            cpu_tells,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The figures whose files this reader was asked to hold.
    pub fn hold(&self) -> Figures {
        self.hold
    }

    /// Whether this reader holds its files open.
    pub fn holds_files(&self) -> bool {
        self.files.iter().any(|h| matches!(h, Handle::Held(_)))
            || self.files.iter().all(|h| matches!(h, Handle::Absent))
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Reads every file once. `Ok(None)` when the cgroup vanished (its open files answer
    /// ENODEV once it is removed) or the path now names another directory; the caller drops
    /// this reader and opens the path again.
    pub fn sample(&mut self, buf: &mut Vec<u8>) -> Result<Option<Sample>> {
        self.sample_with(buf, &Cadence::EVERY_SWEEP)
    }

    /// Reads the files of `cadence.fresh`, then the others when `cadence::figures_to_read`
    /// says so (it is given the CPU usage just read); the figures not read repeat their last
    /// values. `Ok(None)` as `sample` says.
    pub fn sample_with(&mut self, buf: &mut Vec<u8>, cadence: &Cadence) -> Result<Option<Sample>> {
        let mut stats = CgroupStats::default();
        let fresh = cadence.fresh;
        if !self.read_files(buf, fresh, &mut stats)? {
            return Ok(None);
        }
        let usage = stats.cpu.usage_usec;
        let read = cadence::figures_to_read(cadence, self.slow.as_ref(), usage);
        let slow = read.minus(fresh);
        if slow != Figures::NONE {
            if !self.read_files(buf, slow, &mut stats)? {
                return Ok(None);
            }
        } else {
            for (i, figure) in FIGURE_OF.iter().enumerate() {
                if !read.contains(*figure) {
                    carry(i, &self.cache, &mut stats);
                }
            }
        }
        if !self.same_directory(read)? {
            return Ok(None);
        }
        self.slow = cadence::after_sweep(self.slow, read, usage);
        if slow != Figures::NONE {
            self.cache.clone_from(&stats);
            self.hold_slow(cadence::hold_slow(cadence, self.slow.as_ref()), fresh);
        }
        Ok(Some(Sample {
            ino: self.ino,
            stats,
            read,
        }))
    }

    /// Keeps the files of the figures held but not `fresh` open (`keep`), reopening those
    /// closed, or closes them until the next read that keeps them (`cadence::hold_slow`).
    fn hold_slow(&mut self, keep: bool, fresh: Figures) {
        let dir = &self.dir;
        for (i, h) in self.files.iter_mut().enumerate() {
            if fresh.contains(FIGURE_OF[i]) || !self.hold.contains(FIGURE_OF[i]) {
                continue;
            }
            match h {
                Handle::Held(_) if !keep => *h = Handle::Reopen,
                Handle::Reopen if keep => {
                    if let Ok(f) = File::open(dir.join(FILES[i])) {
                        *h = Handle::Held(f);
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads the files of `figures` into `out`. `Ok(false)` when the cgroup vanished.
    fn read_files(
        &self,
        buf: &mut Vec<u8>,
        figures: Figures,
        out: &mut CgroupStats,
    ) -> Result<bool> {
        for (i, h) in self.files.iter().enumerate() {
            if !figures.contains(FIGURE_OF[i]) {
                continue;
            }
            let read = match h {
                Handle::Held(f) => pread_all(f, buf),
                // A file missing now may never have existed: the inode check tells a vanished
                // cgroup apart.
                Handle::Reopen => match File::open(self.dir.join(FILES[i])) {
                    Ok(f) => pread_all(&f, buf),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(e) => Err(e),
                },
                Handle::Absent => continue,
            };
            let text = match read {
                Ok(text) => text,
                Err(e) if is_gone(&e) => return Ok(false),
                Err(source) => {
                    return Err(CgroupError::Read {
                        path: self.dir.join(FILES[i]),
                        source,
                    });
                }
            };
            apply(i, text, out).map_err(|source| CgroupError::Parse {
                path: self.dir.join(FILES[i]),
                source,
            })?;
        }
        Ok(true)
    }

    /// Whether the directory is still the one the files were opened in, after a sweep that
    /// read the figures of `read`: told by the held cpu.stat just read (`cpu_tells`), else
    /// `still_there`.
    fn same_directory(&self, read: Figures) -> Result<bool> {
        if self.cpu_tells && read.contains(Figure::Cpu) {
            return Ok(true);
        }
        still_there(self.held_dir.as_ref(), &self.dir, self.ino)
    }

    /// Whether the directory itself is held open (`held_per_dir`).
    pub fn holds_dir(&self) -> bool {
        self.held_dir.is_some()
    }
}

/// Whether the directory at `path` is still the one with inode `ino` that `held` (when held)
/// was opened on.
pub(super) fn still_there(held: Option<&File>, path: &Path, ino: u64) -> Result<bool> {
    // Files held open on an ordinary filesystem stay readable after their directory is
    // removed, and a cgroup may be recreated under the same name between two reads: the
    // directory must still be the one the files were opened in. Held, a removed directory
    // has no links left (cgroupfs answers ENODEV on its held files instead), and one
    // `fstat` tells; otherwise the path is looked up again and its inode compared.
    let same = match held {
        Some(d) => d.metadata().map(|m| m.nlink() > 0),
        None => std::fs::metadata(path).map(|m| m.ino() == ino),
    };
    match same {
        Ok(same) => Ok(same),
        Err(e) if is_gone(&e) => Ok(false),
        Err(source) => Err(CgroupError::Read {
            path: path.into(),
            source,
        }),
    }
}

/// Samples `dir` through `slot`, opening it when needed and reopening it once when the held
/// files belong to a removed cgroup (the name may now be a new cgroup, with a new inode).
pub fn sample_dir(
    slot: &mut Option<StatsReader>,
    dir: &Path,
    buf: &mut Vec<u8>,
) -> Result<Option<Sample>> {
    sample_dir_mode(slot, dir, buf, true)
}

/// `sample_dir` with the hold mode chosen by the caller; a reader in the other mode is
/// reopened in this one.
pub fn sample_dir_mode(
    slot: &mut Option<StatsReader>,
    dir: &Path,
    buf: &mut Vec<u8>,
    hold: bool,
) -> Result<Option<Sample>> {
    let hold = if hold { Figures::ALL } else { Figures::NONE };
    sample_dir_with(slot, dir, buf, hold, &Cadence::EVERY_SWEEP)
}

/// `sample_dir` holding the files of `hold` (reopened when the reader holds others), with
/// `cadence` (`StatsReader::sample_with`).
pub fn sample_dir_with(
    slot: &mut Option<StatsReader>,
    dir: &Path,
    buf: &mut Vec<u8>,
    hold: Figures,
    cadence: &Cadence,
) -> Result<Option<Sample>> {
    for _ in 0..2 {
        let wrong = |r: &StatsReader| {
            r.dir != dir || r.hold != hold || (hold != Figures::NONE && !r.holds_files())
        };
        if slot.as_ref().is_none_or(wrong) {
            *slot = StatsReader::open_holding(dir, hold)?;
        }
        let Some(r) = slot.as_mut() else {
            return Ok(None);
        };
        match r.sample_with(buf, cadence)? {
            Some(s) => return Ok(Some(s)),
            None => *slot = None,
        }
    }
    Ok(None)
}

/// Descriptors `held_tenants_budget` leaves for everything else when nobody says otherwise.
pub const FD_RESERVE_DEFAULT: usize = 512;

/// How many tenants can hold their stat files open with the default reserve; see
/// `held_tenants_budget_with`.
pub fn held_tenants_budget() -> usize {
    held_tenants_budget_with(FD_RESERVE_DEFAULT)
}

/// How many tenants can hold all their stat files open: the soft `RLIMIT_NOFILE` (getrlimit)
/// less `reserve` descriptors for sockets, the database and the rest, divided by the files
/// per tenant (`held_per_dir`). Raise `LimitNOFILE` to hold more; the rest are opened on
/// each sample.
pub fn held_tenants_budget_with(reserve: usize) -> usize {
    held_tenants_budget_for(reserve, held_per_dir(Figures::ALL))
}

/// `held_tenants_budget_with` for readers that hold `per_tenant` descriptors each (at least 1).
pub fn held_tenants_budget_for(reserve: usize, per_tenant: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    soft.saturating_sub(reserve) / per_tenant.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tenant::DevId;

    const K61: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cgroupfs/6.1.0-56-amd64"
    );

    fn fixture(rel: &str) -> String {
        std::fs::read_to_string(format!("{K61}/{rel}"))
            .unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
    }

    #[test]
    fn cpu_stat_of_a_real_kernel() {
        let c = cpu_stat(&fixture("fixture/work/cpu.stat")).unwrap();
        assert_eq!(c.usage_usec, Some(25178281));
        assert_eq!(c.user_usec, Some(8515936));
        assert_eq!(c.system_usec, Some(16662345));
        assert_eq!(c.nr_throttled, Some(0));
        let t = cpu_stat(&fixture("fixture/throttled/cpu.stat")).unwrap();
        assert_eq!(
            (t.nr_periods, t.nr_throttled, t.throttled_usec),
            (Some(50), Some(42), Some(3090888))
        );
    }

    /// Hand-typed: a cgroup without the cpu controller enabled shows only the three usage
    /// keys (cgroup-v2.rst, "cpu.stat"); the VM capture always had the controller on.
    #[test]
    fn cpu_stat_without_the_cpu_controller() {
        let c = cpu_stat("usage_usec 5\nuser_usec 3\nsystem_usec 2\n").unwrap();
        assert_eq!(c.usage_usec, Some(5));
        assert_eq!(c.nr_throttled, None);
        assert!(cpu_stat("usage_usec x\n").is_err());
    }

    #[test]
    fn memory_files_of_a_real_kernel() {
        let m = memory_stat(&fixture("fixture/work/memory.stat")).unwrap();
        assert_eq!(
            (m.anon, m.file, m.inactive_file),
            (Some(0), Some(233472), Some(81920))
        );
        let e = memory_events(&fixture("fixture/work/memory.events")).unwrap();
        assert_eq!(
            (e.low, e.high, e.max, e.oom, e.oom_kill),
            (Some(0), Some(0), Some(80), Some(1), Some(1))
        );
        assert_eq!(
            single_u64(&fixture("fixture/work/memory.current")).unwrap(),
            270336
        );
        assert_eq!(
            single_u64(&fixture("fixture/work/memory.peak")).unwrap(),
            67108864
        );
        let s = CgroupStats {
            memory_current: Some(270336),
            memory: m,
            ..Default::default()
        };
        assert_eq!(s.working_set(), Some(270336 - 81920));
    }

    /// Hand-typed: the byte parsers read integers as `str::parse::<u64>` does (overflow and
    /// junk are errors), and memory.stat stops once its three keys were seen, so a malformed
    /// line after them is not looked at while one before them still is.
    #[test]
    fn byte_parsers_match_str_parse_and_memory_stat_stops_early() {
        assert_eq!(single_u64("18446744073709551615\n").unwrap(), u64::MAX);
        assert!(single_u64("18446744073709551616\n").is_err());
        assert!(single_u64("12a\n").is_err());
        assert!(single_u64("\n").is_err());
        assert_eq!(single_u64(" +7 \n").unwrap(), 7);
        let m = memory_stat("anon 1\nfile 2\ninactive_file 3\ngarbage\n").unwrap();
        assert_eq!(
            (m.anon, m.file, m.inactive_file),
            (Some(1), Some(2), Some(3))
        );
        assert!(memory_stat("anon 1\ngarbage\ninactive_file 3\n").is_err());
        assert!(memory_stat("anon x\n").is_err());
        let e = cpu_stat(b"usage_usec 1\nnr_bursts \xff\n".as_slice()).unwrap();
        assert_eq!(e.usage_usec, Some(1));
    }

    #[test]
    fn io_pids_and_pressure_of_a_real_kernel() {
        let io = io_stat(&fixture("fixture/work/io.stat")).unwrap();
        assert_eq!(io.len(), 1);
        assert_eq!(
            io[0].device,
            DevId {
                major: 254,
                minor: 0
            }
        );
        assert_eq!(
            (io[0].rbytes, io[0].wbytes, io[0].rios, io[0].wios),
            (Some(8388608), Some(16777216), Some(8), Some(16))
        );
        assert_eq!((io[0].dbytes, io[0].dios), (Some(0), Some(0)));
        // iocost was enabled on the disk when the fixture was captured: its device time.
        assert_eq!(io[0].cost_usage_usec, Some(142420));
        // The root's io.stat carries cost.vrate, a float: skipped.
        let root = io_stat(&fixture("root/io.stat")).unwrap();
        assert_eq!(
            (root[0].rios, root[0].cost_usage_usec),
            (Some(11), Some(142420))
        );
        assert_eq!(
            pids_events_max(&fixture("fixture/work/pids.events")).unwrap(),
            Some(1)
        );
        assert_eq!(
            single_u64(&fixture("fixture/work/pids.current")).unwrap(),
            0
        );
        let p = pressure_totals(&fixture("fixture/work/cpu.pressure")).unwrap();
        assert_eq!((p.some_usec, p.full_usec), (Some(5743277), Some(1198975)));
        let p = pressure_totals(&fixture("fixture/work/io.pressure")).unwrap();
        assert_eq!(p.some_usec, Some(88133));
        assert!(io_stat("").unwrap().is_empty());
    }

    /// Hand-typed: cpu.pressure has no `full` line before 5.13, which the 6.1 VM cannot show.
    #[test]
    fn pressure_without_full() {
        let p = pressure_totals("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!((p.some_usec, p.full_usec), (Some(7), None));
        assert!(pressure_totals("some avg10=0.00\n").is_err());
    }

    /// A temporary directory holding the 6.1 fixture's files.
    fn fixture_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(format!("{K61}/fixture/work")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
        }
        dir
    }

    #[test]
    fn reader_samples_a_fixture_directory_and_rereads_in_place() {
        let dir = fixture_dir();
        let mut buf = Vec::new();
        let mut slot = None;
        let s = sample_dir(&mut slot, dir.path(), &mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(s.stats.cpu.usage_usec, Some(25178281));
        assert_eq!(s.stats.memory_events.oom_kill, Some(1));
        assert_eq!(s.stats.pids_max_events, Some(1));
        assert_eq!(s.stats.cpu_pressure.unwrap().full_usec, Some(1198975));
        assert_eq!(s.ino, std::fs::metadata(dir.path()).unwrap().ino());
        // The same open file, rewritten in place, is read again from offset 0.
        std::fs::write(dir.path().join("pids.current"), "7\n").unwrap();
        let s = sample_dir(&mut slot, dir.path(), &mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(s.stats.pids_current, Some(7));
    }

    #[test]
    fn a_missing_directory_is_no_sample_and_missing_files_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        let mut slot = None;
        assert!(
            sample_dir(&mut slot, &dir.path().join("gone"), &mut buf)
                .unwrap()
                .is_none()
        );
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 1\n").unwrap();
        let s = sample_dir(&mut slot, dir.path(), &mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(s.stats.cpu.usage_usec, Some(1));
        assert_eq!(s.stats.memory_peak, None);
    }

    #[test]
    fn the_budget_follows_the_descriptor_limit_and_unheld_readers_still_sample() {
        let b = held_tenants_budget();
        assert!(b > 0 && b < usize::MAX / FILES.len(), "{b}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 9\n").unwrap();
        let (mut slot, mut buf) = (None, Vec::new());
        let s = sample_dir_mode(&mut slot, dir.path(), &mut buf, false)
            .unwrap()
            .unwrap();
        assert_eq!(s.stats.cpu.usage_usec, Some(9));
        assert!(!slot.as_ref().unwrap().holds_files());
        sample_dir_mode(&mut slot, dir.path(), &mut buf, true)
            .unwrap()
            .unwrap();
        assert!(slot.as_ref().unwrap().holds_files());
    }

    /// Hand-typed: a reader made while the process has no file descriptors left still
    /// samples, opening the files each time.
    #[test]
    fn a_reader_without_descriptors_to_hold_reopens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 4\n").unwrap();
        let mut r = StatsReader::open(dir.path()).unwrap().unwrap();
        r.files = FILES.iter().map(|_| Handle::Reopen).collect();
        let mut buf = Vec::new();
        let s = r.sample(&mut buf).unwrap().unwrap();
        assert_eq!(s.stats.cpu.usage_usec, Some(4));
    }

    #[test]
    fn a_recreated_directory_is_sampled_with_its_new_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for (d, usage) in [(&a, 10), (&b, 3)] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("cpu.stat"), format!("usage_usec {usage}\n")).unwrap();
        }
        let mut buf = Vec::new();
        let mut slot = None;
        let first = sample_dir(&mut slot, &a, &mut buf).unwrap().unwrap();
        // "a" is deleted and a new cgroup takes its name (b renamed over it: a new inode).
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::rename(&b, &a).unwrap();
        let second = sample_dir(&mut slot, &a, &mut buf).unwrap().unwrap();
        assert_ne!(first.ino, second.ino);
        assert_eq!(second.stats.cpu.usage_usec, Some(3));
    }

    #[test]
    fn pread_all_reads_files_larger_than_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let text = "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n".repeat(1000);
        std::fs::write(&p, &text).unwrap();
        let mut buf = Vec::new();
        let read = pread_all(&File::open(&p).unwrap(), &mut buf).unwrap();
        assert_eq!(read, text.as_bytes());
        // The scratch buffer is reused: a smaller file reads back exactly.
        std::fs::write(&p, "12\n").unwrap();
        assert_eq!(
            pread_all(&File::open(&p).unwrap(), &mut buf).unwrap(),
            b"12\n"
        );
        // Exactly the buffer's size: the read that fills it is followed by one that ends it.
        let exact = "x".repeat(buf.len());
        std::fs::write(&p, &exact).unwrap();
        assert_eq!(
            pread_all(&File::open(&p).unwrap(), &mut buf).unwrap(),
            exact.as_bytes()
        );
    }

    /// The names of the files `slot`'s reader holds open.
    fn held(slot: &Option<StatsReader>) -> Vec<&'static str> {
        let files = slot.as_ref().unwrap().files.iter();
        files
            .zip(FILES)
            .filter(|(h, _)| matches!(h, Handle::Held(_)))
            .map(|(_, f)| f)
            .collect()
    }

    /// Issue 15: with the default cadence, for a tenant with a memory guarantee, the SLA's
    /// files (cpu.stat, memory.current, memory.events, cpu.pressure) are read every sweep and
    /// only they are held; memory.stat and the rest of an idle tenant are read every `idle_every` sweeps and repeated between,
    /// and at once when its CPU usage moves.
    #[test]
    fn the_cadence_reads_the_sla_files_every_sweep_and_the_rest_when_due() {
        let dir = fixture_dir();
        let c = Cadence::default().for_tenant(true, false);
        let (mut slot, mut buf) = (None, Vec::new());
        let mut sample = |slot: &mut Option<StatsReader>| {
            sample_dir_with(slot, dir.path(), &mut buf, c.fresh, &c)
                .unwrap()
                .unwrap()
        };
        let first = sample(&mut slot);
        assert!(first.read.is_all());
        assert_eq!(
            held(&slot),
            [
                "cpu.stat",
                "memory.current",
                "memory.events",
                "cpu.pressure"
            ]
        );
        // Idle: the SLA's files change and are seen at once; memory.stat and pids.current
        // change and repeat their old values until the tenth sweep.
        let write = |f: &str, text: &str| std::fs::write(dir.path().join(f), text).unwrap();
        write("memory.current", "999\n");
        write("memory.events", "low 7\nhigh 0\nmax 0\noom 0\noom_kill 3\n");
        write("pids.current", "5\n");
        write("memory.stat", "anon 1\nfile 2\ninactive_file 3\n");
        for sweep in 1..c.idle_every {
            let s = sample(&mut slot);
            assert_eq!(s.read, c.fresh, "sweep {sweep}");
            assert_eq!(s.stats.memory_current, Some(999));
            assert_eq!(s.stats.memory_events.low, Some(7));
            assert_eq!(s.stats.cpu, first.stats.cpu);
            assert_eq!(s.stats.pids_current, first.stats.pids_current, "repeated");
            assert_eq!(s.stats.memory, first.stats.memory, "repeated");
            assert_eq!(s.stats.io, first.stats.io, "repeated");
        }
        let s = sample(&mut slot);
        assert!(s.read.is_all(), "idle_every sweeps after the last read");
        assert_eq!(s.stats.pids_current, Some(5));
        assert_eq!(s.stats.memory.anon, Some(1));
        // Active: the CPU usage moved, so everything is read in that very sweep.
        assert!(!sample(&mut slot).read.is_all());
        write("pids.current", "6\n");
        let cpu = std::fs::read_to_string(dir.path().join("cpu.stat")).unwrap();
        write(
            "cpu.stat",
            &cpu.replace("usage_usec 25178281", "usage_usec 25178282"),
        );
        let s = sample(&mut slot);
        assert!(s.read.is_all());
        assert_eq!(s.stats.pids_current, Some(6));
    }

    /// A cgroup file kept open after a read keeps a page of kernel memory (its seq_file
    /// buffer): a reader that may hold every file holds the slow figures' after a read that
    /// found the tenant active (and after the first), closes them after one that found it
    /// idle, and opens them again when a read finds it active, reading the same values.
    #[test]
    fn slow_files_are_held_while_the_tenant_is_active_and_closed_while_it_is_idle() {
        let dir = fixture_dir();
        let c = Cadence::default().for_tenant(false, false);
        let (mut slot, mut buf) = (None, Vec::new());
        let mut sample = |slot: &mut Option<StatsReader>| {
            sample_dir_with(slot, dir.path(), &mut buf, Figures::ALL, &c)
                .unwrap()
                .unwrap()
        };
        let first = sample(&mut slot);
        let every = held(&slot);
        assert!(
            every.contains(&"memory.stat") && every.len() > 4,
            "{every:?}"
        );
        for _ in 1..c.idle_every {
            assert_eq!(sample(&mut slot).read, c.fresh);
            assert_eq!(
                held(&slot),
                every,
                "until the next read of the slow figures"
            );
        }
        let idle = sample(&mut slot);
        assert!(idle.read.is_all());
        assert_eq!(idle.stats, first.stats);
        assert_eq!(held(&slot), ["cpu.stat", "cpu.pressure"], "idle: closed");
        let cpu = std::fs::read_to_string(dir.path().join("cpu.stat")).unwrap();
        let moved = cpu.replace("usage_usec 25178281", "usage_usec 25178282");
        std::fs::write(dir.path().join("cpu.stat"), moved).unwrap();
        let active = sample(&mut slot);
        assert!(active.read.is_all());
        assert_eq!(
            active.stats.memory, first.stats.memory,
            "read again, closed or not"
        );
        assert_eq!(held(&slot), every, "active: held again");
    }
}
