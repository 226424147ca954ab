//! Which of a tenant's stat figures a sweep reads. The figures the SLA engine judges for the
//! tenant every interval (`Cadence::for_tenant`: CPU usage and throttling, CPU pressure or
//! run-queue wait; memory.current and memory.events when it has a memory guarantee; io.stat
//! and io.pressure while io guarantees are judged) are read every sweep; the others
//! (memory.stat, memory.peak, io.stat, the pressure files, pids, v1's failcnts) are "slow": read together,
//! every sweep for a tenant whose CPU usage moved since their last read, and at most every
//! `Cadence::idle_every` sweeps for one whose usage did not (an idle tenant's memory.stat does
//! not change), that stretch doubling at each read that finds the tenant still idle, up to
//! `Cadence::idle_max` sweeps (as cAdvisor's dynamic housekeeping backs off from containers
//! that do nothing). Between two reads of the slow figures a sample repeats their last values.
//! Pure: the readers (`cgroup::stats`, `cgroup::v1_stats`) ask `figures_to_read` and keep a
//! `SlowRead`; the rates of slow figures are taken over their own stretch (`domain::usage`).
//!
//! Imports nothing from `cgroup`, `store`, `engine` or `api`.

use serde::Serialize;

/// A group of stat figures, read from one file (v2) or a few (v1) at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Figure {
    /// cpu.stat (v2); cpuacct.usage, cpuacct.stat and cpu.stat (v1).
    Cpu,
    /// cpu.pressure (v2); the run-queue wait of the tenant's threads (v1, no PSI).
    CpuPressure,
    /// memory.current (v2); memory.usage_in_bytes (v1).
    MemoryCurrent,
    /// memory.events (v2); memory.oom_control `oom_kill` (v1).
    MemoryEvents,
    /// memory.peak (v2); memory.max_usage_in_bytes (v1).
    MemoryPeak,
    /// memory.stat.
    MemoryStat,
    /// memory.failcnt and memory.memsw.failcnt (v1 only: `memory_events.max`; v2 has it in
    /// memory.events).
    MemoryFailcnt,
    /// io.stat (v2); blkio.throttle.io_service_bytes and io_serviced (v1).
    Io,
    /// io.pressure.
    IoPressure,
    /// memory.pressure.
    MemoryPressure,
    /// pids.current and pids.events.
    Pids,
}

impl Figure {
    pub const ALL: [Figure; 11] = [
        Figure::Cpu,
        Figure::CpuPressure,
        Figure::MemoryCurrent,
        Figure::MemoryEvents,
        Figure::MemoryPeak,
        Figure::MemoryStat,
        Figure::MemoryFailcnt,
        Figure::Io,
        Figure::IoPressure,
        Figure::MemoryPressure,
        Figure::Pids,
    ];

    const fn bit(self) -> u16 {
        1 << self as u8
    }
}

/// A set of figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Figures(u16);

impl Figures {
    pub const NONE: Figures = Figures(0);
    pub const ALL: Figures = Figures::of(&Figure::ALL);

    pub const fn of(list: &[Figure]) -> Figures {
        let mut bits = 0;
        let mut i = 0;
        while i < list.len() {
            bits |= list[i].bit();
            i += 1;
        }
        Figures(bits)
    }

    pub const fn contains(self, f: Figure) -> bool {
        self.0 & f.bit() != 0
    }

    pub const fn union(self, other: Figures) -> Figures {
        Figures(self.0 | other.0)
    }

    /// The figures in both sets.
    pub const fn intersect(self, other: Figures) -> Figures {
        Figures(self.0 & other.0)
    }

    /// The figures of this set not in `other`.
    pub const fn minus(self, other: Figures) -> Figures {
        Figures(self.0 & !other.0)
    }

    /// The figures of `ALL` not in this set.
    pub const fn complement(self) -> Figures {
        Figures(Figures::ALL.0 & !self.0)
    }

    pub const fn is_all(self) -> bool {
        self.0 & Figures::ALL.0 == Figures::ALL.0
    }

    pub fn iter(self) -> impl Iterator<Item = Figure> {
        Figure::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

/// What the SLA engine judges of every tenant every interval (`domain::sla_engine`): CPU
/// usage and throttled time (cpu.stat), CPU pressure (v1: the run-queue wait).
pub const SLA_CPU_FIGURES: Figures = Figures::of(&[Figure::Cpu, Figure::CpuPressure]);

/// What it judges too of a tenant with a memory guarantee: memory.current and memory.events
/// (`low`, `oom_kill`).
pub const SLA_MEMORY_FIGURES: Figures = Figures::of(&[Figure::MemoryCurrent, Figure::MemoryEvents]);

/// Everything the SLA engine may judge of a tenant every interval but io.
pub const SLA_FIGURES: Figures = SLA_CPU_FIGURES.union(SLA_MEMORY_FIGURES);

/// What it judges too while io guarantees are judged (io weights take effect and a tenant
/// has an io guarantee): io.stat and io.pressure.
pub const SLA_IO_FIGURES: Figures = Figures::of(&[Figure::Io, Figure::IoPressure]);

/// Default for `Cadence::idle_every`: a slow figure of a tenant idle since its last read is
/// at most 10 sweeps old (10 s at the default 1 s interval).
pub const IDLE_EVERY_DEFAULT: u32 = 10;

/// Default for `Cadence::idle_max`: a slow figure of a tenant idle for minutes is at most 60
/// sweeps old (60 s at the default 1 s interval).
pub const IDLE_MAX_DEFAULT: u32 = 60;

/// How often each figure is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Figures read every sweep (what the SLA engine judges is added per tenant,
    /// `for_tenant`).
    pub fresh: Figures,
    /// The others are read at least every this many sweeps (>= 1) after a read that found
    /// the tenant active, ...
    pub idle_every: u32,
    /// ... the stretch doubling at each read that finds it still idle, up to this many.
    pub idle_max: u32,
    /// ... and every this many (>= 1, <= `idle_every`) while the tenant's CPU usage moves.
    pub active_every: u32,
}

impl Default for Cadence {
    fn default() -> Self {
        Cadence {
            fresh: Figures::NONE,
            idle_every: IDLE_EVERY_DEFAULT,
            idle_max: IDLE_MAX_DEFAULT,
            active_every: 1,
        }
    }
}

impl Cadence {
    /// Every figure every sweep (the cadence before issue 15, and the benchmark's reference).
    pub const EVERY_SWEEP: Cadence = Cadence {
        fresh: Figures::ALL,
        idle_every: 1,
        idle_max: 1,
        active_every: 1,
    };

    /// This cadence for one tenant, with what the SLA engine judges of it in this sweep kept
    /// fresh: `SLA_CPU_FIGURES` always, `SLA_MEMORY_FIGURES` when it has a memory guarantee,
    /// `SLA_IO_FIGURES` when io guarantees are judged (`judges_io`: every tenant's io counts,
    /// since a guarantee is a share of its siblings' io).
    pub fn for_tenant(self, memory_guarantee: bool, judges_io: bool) -> Cadence {
        let mut fresh = self.fresh.union(SLA_CPU_FIGURES);
        if memory_guarantee {
            fresh = fresh.union(SLA_MEMORY_FIGURES);
        }
        if judges_io {
            fresh = fresh.union(SLA_IO_FIGURES);
        }
        Cadence { fresh, ..self }
    }
}

/// What a reader remembers of its last read of the slow figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowRead {
    /// Sweeps since (0: read in the sweep that made this record).
    pub age: u32,
    /// The CPU usage (µs) read in that sweep.
    pub usage_usec: Option<u64>,
    /// Reads of the slow figures in a row that found the CPU usage where the read before left
    /// it (0: the tenant used CPU since, or this is the first read).
    pub idle_reads: u32,
}

/// The figures to read this sweep: `cadence.fresh` when the slow ones were read recently
/// enough, every figure otherwise. `last` is the reader's last read of the slow figures
/// (`None`: never, so everything is read); `usage_now` the CPU usage just read (a fresh
/// figure). A tenant whose usage moved since `last`, or whose usage cannot be read, is
/// active: its slow figures are re-read once `active_every` sweeps have passed, an idle one's
/// once `idle_every` have, doubled for each idle read in a row (`SlowRead::idle_reads`) up to
/// `idle_max`.
pub fn figures_to_read(
    cadence: &Cadence,
    last: Option<&SlowRead>,
    usage_now: Option<u64>,
) -> Figures {
    let Some(last) = last else {
        return Figures::ALL;
    };
    let active = usage_now.is_none() || usage_now != last.usage_usec;
    let every = if active {
        cadence.active_every
    } else {
        idle_stretch(cadence, last.idle_reads)
    };
    if last.age.saturating_add(1) >= every.max(1) {
        Figures::ALL
    } else {
        cadence.fresh
    }
}

/// Whether a reader keeps the files of the slow figures open after a read of them (those its
/// share of descriptors lets it hold; the others are opened when read): while that read found
/// the tenant active, or the first one (`last.idle_reads` 0: they are read again as soon as
/// its CPU usage moves), or when even an idle tenant's are read every sweep. An idle tenant's
/// are read every 10-60 sweeps, and a cgroup file kept open after a read keeps its page-sized
/// seq_file buffer, kernel memory charged to the daemon's own cgroup (4.4 KB a file measured:
/// the 18,000 slow files of 1,000 idle v1 tenants were some 80 MB), for one pread instead of
/// an open, a read and a close every 10-60 s. `last` is the record after that read.
pub fn hold_slow(cadence: &Cadence, last: Option<&SlowRead>) -> bool {
    last.is_some_and(|l| l.idle_reads == 0 || idle_stretch(cadence, l.idle_reads) <= 1)
}

/// Sweeps between two reads of an idle tenant's slow figures after `idle_reads` idle reads in
/// a row: `idle_every`, doubled for each, at most `idle_max` (and never less than
/// `idle_every`, nor 0).
pub fn idle_stretch(cadence: &Cadence, idle_reads: u32) -> u32 {
    let first = cadence.idle_every.max(1);
    let doubled = first.saturating_mul(1u32 << idle_reads.min(16));
    doubled.min(cadence.idle_max.max(first))
}

/// The record after a sweep that read `read` with CPU usage `usage_now`: a new one when the
/// slow figures were read, the old one a sweep older otherwise.
pub fn after_sweep(
    last: Option<SlowRead>,
    read: Figures,
    usage_now: Option<u64>,
) -> Option<SlowRead> {
    if read.is_all() {
        let still = last.is_some_and(|l| usage_now.is_some() && l.usage_usec == usage_now);
        Some(SlowRead {
            age: 0,
            usage_usec: usage_now,
            idle_reads: match last {
                Some(l) if still => l.idle_reads.saturating_add(1),
                _ => 0,
            },
        })
    } else {
        last.map(|l| SlowRead {
            age: l.age.saturating_add(1),
            ..l
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slow figures' files stay open after a read that found the tenant active (or the
    /// first), and are closed after one that found it idle, unless even idle tenants' slow
    /// figures are read every sweep.
    #[test]
    fn slow_files_stay_open_only_while_the_tenant_is_active() {
        let c = Cadence::default();
        let mut last = after_sweep(None, Figures::ALL, Some(5));
        assert!(hold_slow(&c, last.as_ref()), "the first read");
        for _ in 0..c.idle_every {
            last = after_sweep(last, c.fresh, Some(5));
        }
        last = after_sweep(last, Figures::ALL, Some(5));
        assert_eq!(last.unwrap().idle_reads, 1);
        assert!(!hold_slow(&c, last.as_ref()), "a read that found it idle");
        last = after_sweep(last, Figures::ALL, Some(9));
        assert!(hold_slow(&c, last.as_ref()), "its usage moved");
        assert!(!hold_slow(&c, None), "never read");
        let every = Cadence::EVERY_SWEEP;
        let idle = after_sweep(
            after_sweep(None, Figures::ALL, Some(5)),
            Figures::ALL,
            Some(5),
        );
        assert_eq!(idle.unwrap().idle_reads, 1);
        assert!(hold_slow(&every, idle.as_ref()), "read every sweep anyway");
    }

    fn read(age: u32, usage: u64) -> SlowRead {
        SlowRead {
            age,
            usage_usec: Some(usage),
            idle_reads: 0,
        }
    }

    /// (last read: age and usage then, usage now) -> everything read?
    #[test]
    fn the_table_of_decisions() {
        let c = Cadence::default().for_tenant(false, false);
        let table = [
            // Never read: everything.
            (None, Some(5), true),
            // Idle (usage unchanged): only once `idle_every` sweeps have passed.
            (Some(read(0, 5)), Some(5), false),
            (Some(read(8, 5)), Some(5), false),
            (Some(read(9, 5)), Some(5), true),
            (Some(read(30, 5)), Some(5), true),
            // Active: every sweep (active_every 1).
            (Some(read(0, 5)), Some(6), true),
            // Usage unknown: treated as active.
            (Some(read(0, 5)), None, true),
            // A counter that went backwards moved too.
            (Some(read(0, 5)), Some(4), true),
        ];
        for (last, now, all) in table {
            let got = figures_to_read(&c, last.as_ref(), now);
            let want = if all { Figures::ALL } else { c.fresh };
            assert_eq!(got, want, "last {last:?}, usage now {now:?}");
        }
    }

    #[test]
    fn active_tenants_every_few_sweeps_and_every_sweep_cadence() {
        let c = Cadence {
            active_every: 3,
            ..Cadence::default()
        };
        let read_at = |age| figures_to_read(&c, Some(&read(age, 1)), Some(2)).is_all();
        assert_eq!([read_at(0), read_at(1), read_at(2)], [false, false, true]);
        for age in [0, 5] {
            assert!(figures_to_read(&Cadence::EVERY_SWEEP, Some(&read(age, 1)), Some(1)).is_all());
        }
        // A cadence of 0 is taken as 1, never as "never".
        let zero = Cadence {
            idle_every: 0,
            active_every: 0,
            ..c
        };
        assert!(figures_to_read(&zero, Some(&read(0, 1)), Some(1)).is_all());
    }

    /// Followed over sweeps: an idle tenant reads its slow figures every `idle_every` sweeps,
    /// and at once when it wakes up.
    #[test]
    fn an_idle_tenant_over_sweeps() {
        let c = Cadence::default();
        let mut last = None;
        let mut full = Vec::new();
        for sweep in 0..25u64 {
            let usage = if sweep < 14 { 100 } else { 100 + sweep };
            let r = figures_to_read(&c, last.as_ref(), Some(usage));
            if r.is_all() {
                full.push(sweep);
            }
            last = after_sweep(last, r, Some(usage));
        }
        assert_eq!(full, [0, 10, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]);
    }

    /// Idle for minutes, the reads of the slow figures back off: 10, 20, 40 sweeps, then
    /// every 60 (`idle_max`); the first sweep with CPU used reads them, and the stretch
    /// starts again at 10.
    #[test]
    fn an_idle_tenant_backs_off_to_idle_max_and_wakes_at_once() {
        let c = Cadence::default();
        let mut last = None;
        let mut full = Vec::new();
        for sweep in 0..400u64 {
            let usage = if sweep < 300 { 100 } else { 200 };
            let r = figures_to_read(&c, last.as_ref(), Some(usage));
            if r.is_all() {
                full.push(sweep);
            }
            last = after_sweep(last, r, Some(usage));
        }
        assert_eq!(full, [0, 10, 30, 70, 130, 190, 250, 300, 310, 330, 370]);
        assert_eq!(
            (0..6).map(|n| idle_stretch(&c, n)).collect::<Vec<_>>(),
            [10, 20, 40, 60, 60, 60]
        );
        // Neither a cap below the first stretch nor a huge count breaks it.
        let odd = Cadence {
            idle_every: 10,
            idle_max: 3,
            ..c
        };
        assert_eq!(idle_stretch(&odd, 5), 10);
        assert_eq!(idle_stretch(&c, u32::MAX), 60);
        // Usage that cannot be read is never idle: no back-off.
        let mut last = None;
        let mut unknown = 0;
        for _ in 0..20 {
            let r = figures_to_read(&c, last.as_ref(), None);
            unknown += usize::from(r.is_all());
            last = after_sweep(last, r, None);
        }
        assert_eq!(unknown, 20);
    }

    #[test]
    fn the_sla_figures_stay_fresh_in_every_cadence() {
        let slow_everything = Cadence {
            fresh: Figures::NONE,
            ..Cadence::default()
        };
        for (memory, judges_io) in [(false, false), (true, false), (false, true), (true, true)] {
            let c = slow_everything.for_tenant(memory, judges_io);
            for f in SLA_CPU_FIGURES.iter() {
                assert!(c.fresh.contains(f), "{f:?}");
            }
            for f in SLA_MEMORY_FIGURES.iter() {
                assert_eq!(c.fresh.contains(f), memory, "{f:?}");
            }
            assert_eq!(c.fresh.contains(Figure::Io), judges_io);
            assert_eq!(c.fresh.contains(Figure::IoPressure), judges_io);
            assert!(!c.fresh.contains(Figure::MemoryStat));
        }
        // What is configured fresh stays fresh.
        let all = Cadence::EVERY_SWEEP.for_tenant(false, false);
        assert_eq!(all.fresh, Figures::ALL);
        assert_eq!(SLA_FIGURES.complement().union(SLA_FIGURES), Figures::ALL);
        assert_eq!(
            SLA_FIGURES.iter().count() + SLA_FIGURES.complement().iter().count(),
            11
        );
    }
}
