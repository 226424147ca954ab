//! What one cgroup reads as at one instant: the typed stats (`CgroupStats`) and a sample (the
//! stats plus the directory's inode). Plain data, filled by the readers in `cgroup::stats`
//! (v2) and `cgroup::v1_stats` (v1), turned into rates by `domain::usage`, rendered by
//! `metrics`. Imports nothing from `cgroup`, `store`, `engine` or `api`.
//!
//! Every field is an `Option<u64>`: a key an older kernel lacks (memory.peak before 5.19,
//! a controller not enabled) is `None`, not an error. Meanings follow
//! Documentation/admin-guide/cgroup-v2.rst ("cpu.stat", "memory.stat", "memory.events",
//! "io.stat", "pids.events") and Documentation/accounting/psi.rst (pressure files).

use crate::domain::cadence::Figures;
use crate::domain::tenant::DevId;
use serde::Serialize;

/// cpu.stat (microseconds and period counts; all cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CpuStat {
    pub usage_usec: Option<u64>,
    pub user_usec: Option<u64>,
    pub system_usec: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

/// The memory.stat keys tenantd uses (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStat {
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub inactive_file: Option<u64>,
}

/// memory.events (cumulative counts, hierarchical: this cgroup and its descendants).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEvents {
    pub low: Option<u64>,
    pub high: Option<u64>,
    pub max: Option<u64>,
    pub oom: Option<u64>,
    pub oom_kill: Option<u64>,
}

/// One io.stat line (cumulative bytes and operations of one device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IoDevStat {
    pub device: DevId,
    pub rbytes: Option<u64>,
    pub wbytes: Option<u64>,
    pub rios: Option<u64>,
    pub wios: Option<u64>,
    pub dbytes: Option<u64>,
    pub dios: Option<u64>,
    /// `cost.usage`: the device time, in µs, iocost charged the cgroup. Present only where
    /// iocost is enabled on the device, and then it is what io.weight divides.
    pub cost_usage_usec: Option<u64>,
}

impl IoDevStat {
    /// A device with no counters read yet.
    pub fn new(device: DevId) -> Self {
        IoDevStat {
            device,
            rbytes: None,
            wbytes: None,
            rios: None,
            wios: None,
            dbytes: None,
            dios: None,
            cost_usage_usec: None,
        }
    }
}

/// The `total=` fields (microseconds of stall) of a pressure file. `full` is absent from
/// cpu.pressure before 5.13.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PressureTotals {
    pub some_usec: Option<u64>,
    pub full_usec: Option<u64>,
}

/// Everything read from one cgroup directory at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupStats {
    pub cpu: CpuStat,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub memory: MemoryStat,
    pub memory_events: MemoryEvents,
    /// Sorted by device.
    pub io: Vec<IoDevStat>,
    pub pids_current: Option<u64>,
    /// pids.events `max`: forks refused because pids.max was reached.
    pub pids_max_events: Option<u64>,
    pub cpu_pressure: Option<PressureTotals>,
    pub memory_pressure: Option<PressureTotals>,
    pub io_pressure: Option<PressureTotals>,
    /// Summed run-queue wait of the cgroup's threads (/proc/TID/schedstat), µs, cumulative
    /// over a reader's life: the CPU contention signal of hosts without PSI (cgroup v1).
    /// `None` on v2, which has cpu.pressure.
    pub runq_wait_usec: Option<u64>,
}

impl CgroupStats {
    /// The working set as cAdvisor computes it: memory.current minus inactive file pages,
    /// never below zero.
    pub fn working_set(&self) -> Option<u64> {
        let cur = self.memory_current?;
        Some(cur.saturating_sub(self.memory.inactive_file.unwrap_or(0)))
    }
}

/// One sample: the stats, the inode of the directory they came from, and which figures were
/// read for it (`domain::cadence`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub ino: u64,
    pub stats: CgroupStats,
    /// The figures read in this sweep; the others repeat the values of the reader's last read
    /// of them (`Figures::ALL` for a sample read whole).
    pub read: Figures,
}

impl Sample {
    /// A sample read whole.
    pub fn whole(ino: u64, stats: CgroupStats) -> Sample {
        Sample {
            ino,
            stats,
            read: Figures::ALL,
        }
    }
}

impl Default for Sample {
    fn default() -> Self {
        Sample::whole(0, CgroupStats::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_saturates() {
        let s = CgroupStats {
            memory_current: Some(10),
            memory: MemoryStat {
                inactive_file: Some(20),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(s.working_set(), Some(0));
        assert_eq!(CgroupStats::default().working_set(), None);
    }
}
