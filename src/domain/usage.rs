//! Two samples of a cgroup -> rates over the interval between them. Pure: the timestamps are
//! passed in, nothing here reads a clock or a file.
//!
//! Guarded deltas, as facebookincubator/below takes them: a changed inode (the cgroup was
//! deleted and recreated) gives no rates at all for the interval; a counter that went
//! backwards gives no rate for that counter. A rate is never negative and never wrapped.
//!
//! Owns `Rates` (and their per-device and stall parts); reads `domain::stats`. Imports nothing
//! from `cgroup`, `store`, `engine` or `api`.

use crate::domain::cadence::{Figure, Figures};
use crate::domain::stats::{CgroupStats, PressureTotals, Sample};
use crate::domain::tenant::DevId;
use serde::Serialize;

/// Rates of one device's io.stat counters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IoRates {
    pub device: DevId,
    pub read_bytes_per_s: Option<f64>,
    pub write_bytes_per_s: Option<f64>,
    pub read_ops_per_s: Option<f64>,
    pub write_ops_per_s: Option<f64>,
    pub discard_bytes_per_s: Option<f64>,
    pub discard_ops_per_s: Option<f64>,
    /// Device time iocost charged per second of wall time (io.stat `cost.usage`); `None`
    /// where iocost is not enabled on the device.
    pub cost_usage_ratio: Option<f64>,
}

/// Stall fractions (0..1 of wall time) of one pressure file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StallFractions {
    pub some: Option<f64>,
    pub full: Option<f64>,
}

/// What happened between two samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rates {
    /// Length of the interval in seconds (> 0).
    pub interval_s: f64,
    /// CPU time used per second of wall time (1.0 = one core busy).
    pub cpu_cores: Option<f64>,
    pub cpu_user_cores: Option<f64>,
    pub cpu_system_cores: Option<f64>,
    /// Time throttled per second of wall time (cpu.stat throttled_usec).
    pub cpu_throttled_cores: Option<f64>,
    /// Periods in which the cgroup was throttled.
    pub cpu_throttled_periods: Option<u64>,
    pub io: Vec<IoRates>,
    pub cpu_stall: StallFractions,
    pub memory_stall: StallFractions,
    pub io_stall: StallFractions,
    /// Processes the OOM killer killed in the interval.
    pub new_oom_kills: Option<u64>,
    /// Times memory.high was exceeded (reclaim was forced).
    pub new_memory_high: Option<u64>,
    /// Times memory.max was about to be exceeded.
    pub new_memory_max: Option<u64>,
    /// Forks refused because pids.max was reached.
    pub new_pids_max: Option<u64>,
    /// Summed run-queue wait of the tenant's threads per second of wall time (cgroup v1,
    /// where there is no cpu.pressure); `None` on v2.
    pub cpu_runq_wait: Option<f64>,
}

/// The growth of a cumulative counter, or `None` when either side is missing or it went
/// backwards (a reset: no honest delta exists).
pub fn delta(prev: Option<u64>, cur: Option<u64>) -> Option<u64> {
    let (p, c) = (prev?, cur?);
    c.checked_sub(p)
}

fn per_s(prev: Option<u64>, cur: Option<u64>, dt_s: f64) -> Option<f64> {
    delta(prev, cur).map(|d| d as f64 / dt_s)
}

/// Microsecond counters per second of wall time: a fraction of time (or cores).
fn usec_per_s(prev: Option<u64>, cur: Option<u64>, dt_s: f64) -> Option<f64> {
    delta(prev, cur).map(|d| d as f64 / 1e6 / dt_s)
}

fn stall(prev: Option<PressureTotals>, cur: Option<PressureTotals>, dt_s: f64) -> StallFractions {
    let (Some(p), Some(c)) = (prev, cur) else {
        return StallFractions::default();
    };
    StallFractions {
        some: usec_per_s(p.some_usec, c.some_usec, dt_s),
        full: usec_per_s(p.full_usec, c.full_usec, dt_s),
    }
}

/// Rates between two samples taken at `prev_ms` and `cur_ms` (Unix milliseconds). `None`
/// when the interval is empty or backwards, or the cgroup was recreated (inode changed).
pub fn rates(prev: &Sample, prev_ms: i64, cur: &Sample, cur_ms: i64) -> Option<Rates> {
    if prev.ino != cur.ino || cur_ms <= prev_ms {
        return None;
    }
    let dt = (cur_ms - prev_ms) as f64 / 1000.0;
    let (p, c): (&CgroupStats, &CgroupStats) = (&prev.stats, &cur.stats);
    let io =
        c.io.iter()
            .filter_map(|d| {
                let o = p.io.iter().find(|o| o.device == d.device)?;
                Some(IoRates {
                    device: d.device,
                    read_bytes_per_s: per_s(o.rbytes, d.rbytes, dt),
                    write_bytes_per_s: per_s(o.wbytes, d.wbytes, dt),
                    read_ops_per_s: per_s(o.rios, d.rios, dt),
                    write_ops_per_s: per_s(o.wios, d.wios, dt),
                    discard_bytes_per_s: per_s(o.dbytes, d.dbytes, dt),
                    discard_ops_per_s: per_s(o.dios, d.dios, dt),
                    cost_usage_ratio: usec_per_s(o.cost_usage_usec, d.cost_usage_usec, dt),
                })
            })
            .collect();
    Some(Rates {
        interval_s: dt,
        cpu_cores: usec_per_s(p.cpu.usage_usec, c.cpu.usage_usec, dt),
        cpu_user_cores: usec_per_s(p.cpu.user_usec, c.cpu.user_usec, dt),
        cpu_system_cores: usec_per_s(p.cpu.system_usec, c.cpu.system_usec, dt),
        cpu_throttled_cores: usec_per_s(p.cpu.throttled_usec, c.cpu.throttled_usec, dt),
        cpu_throttled_periods: delta(p.cpu.nr_throttled, c.cpu.nr_throttled),
        io,
        cpu_stall: stall(p.cpu_pressure, c.cpu_pressure, dt),
        memory_stall: stall(p.memory_pressure, c.memory_pressure, dt),
        io_stall: stall(p.io_pressure, c.io_pressure, dt),
        new_oom_kills: delta(p.memory_events.oom_kill, c.memory_events.oom_kill),
        new_memory_high: delta(p.memory_events.high, c.memory_events.high),
        new_memory_max: delta(p.memory_events.max, c.memory_events.max),
        new_pids_max: delta(p.pids_max_events, c.pids_max_events),
        cpu_runq_wait: usec_per_s(p.runq_wait_usec, c.runq_wait_usec, dt),
    })
}

/// Rates of `cur`, whose figures outside `cur.read` repeat an older read (`domain::cadence`),
/// since `prev` (taken at `prev_ms`). The figures read in both samples: over the interval, as
/// `rates` gives them. The figures `cur` read and `prev` did not (`prev` repeated their values
/// of `prev_slow_ms`): over the stretch since `prev_slow_ms`, `None` when that is unknown.
/// The figures `cur` did not read: the per-second rates and stall fractions of `prev_rates`
/// repeated (the last value measured), `None` without them. Counts of events (`new_*`,
/// `cpu_throttled_periods`) are always the growth since `prev`: 0 while a figure repeats, the
/// whole stretch's once it is read again, so no event is counted twice or lost.
/// `None` when `rates` gives none (a new inode, an empty or backwards interval).
pub fn rates_with_cadence(
    prev: &Sample,
    prev_ms: i64,
    prev_slow_ms: Option<i64>,
    prev_rates: Option<&Rates>,
    cur: &Sample,
    cur_ms: i64,
) -> Option<Rates> {
    let mut r = rates(prev, prev_ms, cur, cur_ms)?;
    let stretch = cur.read.minus(prev.read);
    if stretch != Figures::NONE {
        let over = prev_slow_ms.and_then(|t| rates(prev, t, cur, cur_ms));
        r.take_rates(over.as_ref(), stretch);
    }
    r.take_rates(prev_rates, cur.read.complement());
    Some(r)
}

impl Rates {
    /// Replaces the per-second rates and stall fractions of `figures` with those of `src`
    /// (`None` without it); counts of events stay.
    pub fn take_rates(&mut self, src: Option<&Rates>, figures: Figures) {
        for f in figures.iter() {
            match f {
                Figure::Cpu => {
                    self.cpu_cores = src.and_then(|s| s.cpu_cores);
                    self.cpu_user_cores = src.and_then(|s| s.cpu_user_cores);
                    self.cpu_system_cores = src.and_then(|s| s.cpu_system_cores);
                    self.cpu_throttled_cores = src.and_then(|s| s.cpu_throttled_cores);
                }
                Figure::CpuPressure => {
                    self.cpu_stall = src.map(|s| s.cpu_stall).unwrap_or_default();
                    self.cpu_runq_wait = src.and_then(|s| s.cpu_runq_wait);
                }
                Figure::Io => self.io = src.map(|s| s.io.clone()).unwrap_or_default(),
                Figure::IoPressure => self.io_stall = src.map(|s| s.io_stall).unwrap_or_default(),
                Figure::MemoryPressure => {
                    self.memory_stall = src.map(|s| s.memory_stall).unwrap_or_default()
                }
                // Gauges and counts of events: no per-second rate.
                Figure::MemoryCurrent
                | Figure::MemoryEvents
                | Figure::MemoryPeak
                | Figure::MemoryStat
                | Figure::MemoryFailcnt
                | Figure::Pids => {}
            }
        }
    }

    /// Sum over devices of one io rate; `None` when no device has it.
    pub fn io_total(&self, f: impl Fn(&IoRates) -> Option<f64>) -> Option<f64> {
        self.io
            .iter()
            .filter_map(f)
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::stats::{CpuStat, IoDevStat, MemoryEvents};
    use proptest::prelude::*;

    fn sample(ino: u64, usage: u64, oom_kill: u64, rbytes: u64) -> Sample {
        Sample {
            read: crate::domain::cadence::Figures::ALL,
            ino,
            stats: CgroupStats {
                cpu: CpuStat {
                    usage_usec: Some(usage),
                    user_usec: Some(usage / 2),
                    system_usec: Some(usage / 2),
                    throttled_usec: Some(0),
                    nr_throttled: Some(0),
                    ..Default::default()
                },
                memory_events: MemoryEvents {
                    oom_kill: Some(oom_kill),
                    ..Default::default()
                },
                io: vec![IoDevStat {
                    rbytes: Some(rbytes),
                    ..IoDevStat::new(DevId { major: 8, minor: 0 })
                }],
                cpu_pressure: Some(PressureTotals {
                    some_usec: Some(usage / 4),
                    full_usec: None,
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn table_of_rates() {
        // (usage before, after, ms between, expected cores)
        let table = [
            (0, 1_000_000, 1000, Some(1.0)),
            (0, 500_000, 1000, Some(0.5)),
            (1_000_000, 3_000_000, 1000, Some(2.0)),
            (0, 1_000_000, 2000, Some(0.5)),
            (5, 5, 1000, Some(0.0)),
            (10, 5, 1000, None),
        ];
        for (a, b, ms, want) in table {
            let r = rates(&sample(1, a, 0, 0), 0, &sample(1, b, 0, 0), ms).unwrap();
            assert_eq!(r.cpu_cores, want, "{a} -> {b} in {ms} ms");
        }
    }

    #[test]
    fn events_io_and_stall() {
        let r = rates(
            &sample(1, 0, 1, 0),
            1000,
            &sample(1, 4_000_000, 3, 4096),
            3000,
        )
        .unwrap();
        assert_eq!(r.interval_s, 2.0);
        assert_eq!(r.new_oom_kills, Some(2));
        assert_eq!(r.io[0].read_bytes_per_s, Some(2048.0));
        assert_eq!(r.io_total(|d| d.read_bytes_per_s), Some(2048.0));
        assert_eq!(r.io_total(|d| d.write_bytes_per_s), None);
        assert_eq!(r.cpu_stall.some, Some(0.5));
        assert_eq!(r.cpu_stall.full, None);
        assert_eq!(r.cpu_user_cores, Some(1.0));
        assert_eq!(r.cpu_runq_wait, None, "v2 samples carry no run-queue wait");
        assert_eq!(r.io[0].cost_usage_ratio, None, "no iocost on the device");
        // With iocost: 1.5 s of device time charged over 2 s.
        let (mut a, mut b) = (sample(1, 0, 1, 0), sample(1, 0, 1, 4096));
        a.stats.io[0].cost_usage_usec = Some(500_000);
        b.stats.io[0].cost_usage_usec = Some(2_000_000);
        let r = rates(&a, 1000, &b, 3000).unwrap();
        assert_eq!(r.io_total(|d| d.cost_usage_ratio), Some(0.75));
    }

    #[test]
    fn run_queue_wait_is_a_guarded_rate() {
        let (mut a, mut b) = (sample(1, 0, 0, 0), sample(1, 0, 0, 0));
        a.stats.runq_wait_usec = Some(1_000_000);
        b.stats.runq_wait_usec = Some(2_500_000);
        assert_eq!(rates(&a, 0, &b, 2000).unwrap().cpu_runq_wait, Some(0.75));
        // A new reader starts its total again: no delta.
        b.stats.runq_wait_usec = Some(0);
        assert_eq!(rates(&a, 0, &b, 2000).unwrap().cpu_runq_wait, None);
    }

    #[test]
    fn a_new_inode_or_an_empty_interval_gives_nothing() {
        assert!(rates(&sample(1, 0, 0, 0), 0, &sample(2, 10, 0, 0), 1000).is_none());
        assert!(rates(&sample(1, 0, 0, 0), 1000, &sample(1, 10, 0, 0), 1000).is_none());
        assert!(rates(&sample(1, 0, 0, 0), 2000, &sample(1, 10, 0, 0), 1000).is_none());
    }

    #[test]
    fn a_device_seen_once_has_no_rate() {
        let mut b = sample(1, 0, 0, 0);
        b.stats.io[0].device = DevId { major: 9, minor: 9 };
        assert!(
            rates(&sample(1, 0, 0, 0), 0, &b, 1000)
                .unwrap()
                .io
                .is_empty()
        );
    }

    fn all_rates(r: &Rates) -> Vec<f64> {
        let mut v: Vec<f64> = [
            r.cpu_cores,
            r.cpu_user_cores,
            r.cpu_system_cores,
            r.cpu_throttled_cores,
            r.cpu_stall.some,
        ]
        .into_iter()
        .flatten()
        .collect();
        for d in &r.io {
            v.extend(
                [
                    d.read_bytes_per_s,
                    d.write_bytes_per_s,
                    d.read_ops_per_s,
                    d.write_ops_per_s,
                ]
                .into_iter()
                .flatten(),
            );
        }
        v
    }

    proptest! {
        #[test]
        fn rates_are_never_negative(a in any::<u64>(), b in any::<u64>(), k1 in 0u64..1000, k2 in 0u64..1000,
                                    r1 in any::<u64>(), r2 in any::<u64>(), t0 in 0i64..1_000_000, dt in 1i64..100_000) {
            let r = rates(&sample(7, a, k1, r1), t0, &sample(7, b, k2, r2), t0 + dt).unwrap();
            for v in all_rates(&r) {
                prop_assert!(v >= 0.0 && v.is_finite());
            }
            prop_assert_eq!(r.new_oom_kills, k2.checked_sub(k1));
        }

        #[test]
        fn a_counter_going_backwards_gives_no_rate(a in 1u64..u64::MAX, back in 1u64..u64::MAX, dt in 1i64..100_000) {
            let b = a.saturating_sub(back);
            prop_assume!(b < a);
            let r = rates(&sample(3, a, 5, a), 0, &sample(3, b, 4, b), dt).unwrap();
            prop_assert_eq!(r.cpu_cores, None);
            prop_assert_eq!(r.new_oom_kills, None);
            prop_assert_eq!(r.io[0].read_bytes_per_s, None);
        }

        #[test]
        fn a_new_inode_gives_no_rates(i in any::<u64>(), j in any::<u64>(), a in any::<u64>(), b in any::<u64>()) {
            prop_assume!(i != j);
            prop_assert!(rates(&sample(i, a, 0, a), 0, &sample(j, b, 0, b), 1000).is_none());
        }
    }

    /// An idle tenant whose io.stat and pids.events are read every third sweep: between two
    /// reads the io rate repeats the last one measured and no event is counted; at the read,
    /// the io rate is taken over the whole stretch and the events of the stretch are counted
    /// once. The CPU rate is always over the interval.
    #[test]
    fn slow_figures_take_their_rates_over_their_own_stretch() {
        use crate::domain::cadence::{Figures, SLA_FIGURES};
        let at = |usage: u64, rbytes: u64, pids_max: u64, read: Figures| {
            let mut s = sample(1, usage, 0, rbytes);
            s.stats.pids_max_events = Some(pids_max);
            s.read = read;
            s
        };
        let whole = Figures::ALL;
        // t=0 s whole (io 0), t=1 s and 2 s fresh only (io repeated), t=3 s whole (io 3000).
        let s0 = at(0, 0, 0, whole);
        let s1 = at(1_000_000, 0, 0, SLA_FIGURES);
        let s2 = at(1_500_000, 0, 0, SLA_FIGURES);
        let s3 = at(2_000_000, 3000, 4, whole);
        let prev_rates = Rates {
            io: vec![IoRates {
                read_bytes_per_s: Some(7.0),
                ..rates(&s0, 0, &s0, 1).unwrap().io[0]
            }],
            ..rates(&s0, 0, &s0, 1).unwrap()
        };
        let r1 = rates_with_cadence(&s0, 0, Some(0), Some(&prev_rates), &s1, 1000).unwrap();
        assert_eq!(r1.cpu_cores, Some(1.0));
        assert_eq!(r1.io_total(|d| d.read_bytes_per_s), Some(7.0), "repeated");
        assert_eq!(r1.new_pids_max, Some(0));
        let r2 = rates_with_cadence(&s1, 1000, Some(0), Some(&prev_rates), &s2, 2000).unwrap();
        assert_eq!(r2.cpu_cores, Some(0.5));
        assert_eq!(r2.io_total(|d| d.read_bytes_per_s), Some(7.0));
        let r3 = rates_with_cadence(&s2, 2000, Some(0), Some(&prev_rates), &s3, 3000).unwrap();
        assert_eq!(r3.cpu_cores, Some(0.5));
        assert_eq!(
            r3.io_total(|d| d.read_bytes_per_s),
            Some(1000.0),
            "3000 B over 3 s"
        );
        assert_eq!(r3.new_pids_max, Some(4), "the stretch's events, once");
        // Without the time of the previous read, no stretch rate; without previous rates,
        // nothing to repeat.
        let r = rates_with_cadence(&s2, 2000, None, None, &s3, 3000).unwrap();
        assert_eq!(r.io_total(|d| d.read_bytes_per_s), None);
        let r = rates_with_cadence(&s0, 0, Some(0), None, &s1, 1000).unwrap();
        assert_eq!(
            (r.io_total(|d| d.read_bytes_per_s), r.cpu_cores),
            (None, Some(1.0))
        );
        // Both read whole: exactly `rates`.
        assert_eq!(
            rates_with_cadence(&s0, 0, Some(0), Some(&prev_rates), &s3, 3000),
            rates(&s0, 0, &s3, 3000)
        );
    }
}
