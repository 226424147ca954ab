//! One tenant's sample as the usage history keeps it: `UsageRow`, with every value in a named
//! field, filled by name from a `Sample` and its `Rates` (`UsageRow::from_sample`, pure; the
//! sampler calls it every sweep); the store (`store::samples`) writes it. Imports nothing from
//! `cgroup`, `store`, `engine` or `api`.
//!
//! The values come in four groups, one struct each, because the store rolls each kind up its
//! own way: cumulative counters (kept raw only), gauges (mean and max), per-second rates
//! (time-weighted mean and max) and events in the interval (sums). Each group is declared by
//! `usage_columns!`, which makes the struct and its column list (`COLUMNS`, the field names)
//! from one list of fields: the SQL columns of `usage_raw` and `usage_rollup`
//! (migrations/0002_usage.sql) ARE these names, so adding a stat is a field here plus the line
//! of `from_sample` that fills it. A group that is rolled up also gets its part of a usage
//! answer (`UsageRatesPoint`, ...): `<field>_mean` and `<field>_max` fields, or `<field>` for
//! a sum, so the answer's names (and the CLI's table) come from the same list.

use crate::domain::stats::{IoDevStat, Sample};
use crate::domain::usage::Rates;

/// Declares a group of usage columns: a struct with one `Option<$t>` field per column,
/// `COLUMNS` (the field names, in declaration order) and `values()` (the fields in that same
/// order), so the store's column list and the values it binds cannot drift apart.
///
/// With `answered as POINT with mean and max` (or `with sums`) it also declares `POINT`, the
/// group's part of one point of a usage answer: `<field>_mean` and `<field>_max` (or
/// `<field>`) as `Option<f64>` fields (null for no data), `POINT::from_fn` to fill them by
/// column name and `POINT::entries` to list them by answer name.
macro_rules! usage_columns {
    ($(#[$doc:meta])* $name:ident: $t:ty { $($(#[$fdoc:meta])* $field:ident,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: Option<$t>,)+
        }

        impl $name {
            /// How many columns the group has.
            pub const LEN: usize = [$(stringify!($field)),+].len();

            /// The column names: the field names, in declaration order.
            pub const COLUMNS: [&'static str; Self::LEN] = [$(stringify!($field)),+];

            /// The values, in `COLUMNS` order.
            pub fn values(&self) -> [Option<$t>; Self::LEN] {
                [$(self.$field),+]
            }

            /// A group from values in `COLUMNS` order: for synthetic rows (tests,
            /// benchmarks); real rows are filled by name.
            pub fn from_values(values: [Option<$t>; Self::LEN]) -> Self {
                let [$($field),+] = values;
                $name { $($field),+ }
            }
        }
    };
    ($(#[$doc:meta])* $name:ident: $t:ty, answered as $point:ident with mean and max
        { $($(#[$fdoc:meta])* $field:ident,)+ }) => {
        usage_columns! { $(#[$doc])* $name: $t { $($(#[$fdoc])* $field,)+ } }

        pastey::paste! {
            #[doc = "`" $name "` in a usage answer: each column's mean and max over the bucket (null without data)."]
            #[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, utoipa::ToSchema)]
            pub struct $point {
                $(
                    #[doc = "Mean of `" $field "` over the bucket."]
                    $(#[$fdoc])*
                    #[schema(required = true)]
                    pub [<$field _mean>]: Option<f64>,
                    #[doc = "Max of `" $field "` over the bucket."]
                    $(#[$fdoc])*
                    #[schema(required = true)]
                    pub [<$field _max>]: Option<f64>,
                )+
            }

            impl $point {
                /// Filled by column name: `f(column)` gives its (mean, max).
                pub fn from_fn(mut f: impl FnMut(&'static str) -> (Option<f64>, Option<f64>)) -> Self {
                    $(let ([<$field _mean>], [<$field _max>]) = f(stringify!($field));)+
                    $point { $([<$field _mean>], [<$field _max>],)+ }
                }

                /// The values with their names in an answer, in declaration order.
                pub fn entries(&self) -> [(&'static str, Option<f64>); 2 * $name::LEN] {
                    [$(
                        (stringify!([<$field _mean>]), self.[<$field _mean>]),
                        (stringify!([<$field _max>]), self.[<$field _max>]),
                    )+]
                }
            }
        }
    };
    ($(#[$doc:meta])* $name:ident: $t:ty, answered as $point:ident with sums
        { $($(#[$fdoc:meta])* $field:ident,)+ }) => {
        usage_columns! { $(#[$doc])* $name: $t { $($(#[$fdoc])* $field,)+ } }

        pastey::paste! {
            #[doc = "`" $name "` in a usage answer: each column's sum over the bucket (null without data)."]
            #[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, utoipa::ToSchema)]
            pub struct $point {
                $(
                    #[doc = "Sum of `" $field "` over the bucket."]
                    $(#[$fdoc])*
                    #[schema(required = true)]
                    pub $field: Option<f64>,
                )+
            }
        }

        impl $point {
            /// Filled by column name: `f(column)` gives its sum.
            pub fn from_fn(mut f: impl FnMut(&'static str) -> Option<f64>) -> Self {
                $point { $($field: f(stringify!($field)),)+ }
            }

            /// The values with their names in an answer, in declaration order.
            pub fn entries(&self) -> [(&'static str, Option<f64>); $name::LEN] {
                [$((stringify!($field), self.$field),)+]
            }
        }
    };
}

usage_columns! {
    /// Cumulative kernel counters, kept in the raw rows only (for re-deriving rates; not
    /// rolled up). IO counters are summed over devices.
    UsageCounters: i64 {
        /// cpu.stat usage_usec.
        cpu_usage_usec,
        /// cpu.stat user_usec.
        cpu_user_usec,
        /// cpu.stat system_usec.
        cpu_system_usec,
        /// cpu.stat throttled_usec.
        cpu_throttled_usec,
        /// cpu.stat nr_throttled.
        cpu_nr_throttled,
        /// io.stat rbytes.
        io_read_bytes,
        /// io.stat wbytes.
        io_write_bytes,
        /// io.stat rios.
        io_read_ops,
        /// io.stat wios.
        io_write_ops,
        /// memory.events oom_kill.
        oom_kill_events,
        /// memory.events high.
        memory_high_events,
        /// memory.events max.
        memory_max_events,
        /// pids.events max.
        pids_max_events,
        /// memory.stat anon.
        memory_anon_bytes,
        /// memory.stat file.
        memory_file_bytes,
    }
}

usage_columns! {
    /// Gauges: rolled up as mean and max.
    UsageGauges: i64, answered as UsageGaugesPoint with mean and max {
        /// memory.current.
        memory_current_bytes,
        /// memory.current less inactive file pages (`CgroupStats::working_set`).
        memory_working_set_bytes,
        /// memory.peak.
        memory_peak_bytes,
        /// pids.current.
        pids_current,
    }
}

usage_columns! {
    /// Per-second rates over the interval: rolled up as a time-weighted mean and max.
    UsageRates: f64, answered as UsageRatesPoint with mean and max {
        /// CPU time per second of wall time (1.0 = one core busy).
        cpu_cores,
        cpu_user_cores,
        cpu_system_cores,
        /// Time throttled by cpu.max per second of wall time.
        cpu_throttled_cores,
        io_read_bytes_per_s,
        io_write_bytes_per_s,
        io_read_ops_per_s,
        io_write_ops_per_s,
        /// Stall fractions (0..1 of wall time) of cpu.pressure, memory.pressure, io.pressure.
        cpu_some_stall_ratio,
        cpu_full_stall_ratio,
        memory_some_stall_ratio,
        memory_full_stall_ratio,
        io_some_stall_ratio,
        io_full_stall_ratio,
    }
}

usage_columns! {
    /// Events in the interval: rolled up as sums.
    UsageEvents: i64, answered as UsageEventsPoint with sums {
        /// Processes the OOM killer killed.
        new_oom_kills,
        /// Times memory.high was exceeded.
        new_memory_high_events,
        /// Times memory.max was about to be exceeded.
        new_memory_max_events,
        /// Forks refused at pids.max.
        new_pids_max_events,
    }
}

/// One tenant's sample, ready to store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageRow {
    pub tenant: String,
    pub ts_ms: i64,
    /// Length of the interval the rates cover; `None` when there are no rates.
    pub interval_ms: Option<i64>,
    pub counters: UsageCounters,
    pub gauges: UsageGauges,
    /// All `None` without a previous sample to take rates from.
    pub rates: UsageRates,
    /// All `None` without a previous sample.
    pub events: UsageEvents,
}

impl UsageRow {
    /// The row of one sample and the rates since the previous one (`None` for a first
    /// sample), filled field by field: the store takes its column names from these fields.
    pub fn from_sample(tenant: &str, ts_ms: i64, s: &Sample, r: Option<&Rates>) -> UsageRow {
        let st = &s.stats;
        let i = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let io_sum = |f: fn(&IoDevStat) -> Option<u64>| {
            st.io.iter().filter_map(f).fold(None, |a: Option<u64>, v| {
                Some(a.unwrap_or(0).saturating_add(v))
            })
        };
        let counters = UsageCounters {
            cpu_usage_usec: i(st.cpu.usage_usec),
            cpu_user_usec: i(st.cpu.user_usec),
            cpu_system_usec: i(st.cpu.system_usec),
            cpu_throttled_usec: i(st.cpu.throttled_usec),
            cpu_nr_throttled: i(st.cpu.nr_throttled),
            io_read_bytes: i(io_sum(|d| d.rbytes)),
            io_write_bytes: i(io_sum(|d| d.wbytes)),
            io_read_ops: i(io_sum(|d| d.rios)),
            io_write_ops: i(io_sum(|d| d.wios)),
            oom_kill_events: i(st.memory_events.oom_kill),
            memory_high_events: i(st.memory_events.high),
            memory_max_events: i(st.memory_events.max),
            pids_max_events: i(st.pids_max_events),
            memory_anon_bytes: i(st.memory.anon),
            memory_file_bytes: i(st.memory.file),
        };
        let gauges = UsageGauges {
            memory_current_bytes: i(st.memory_current),
            memory_working_set_bytes: i(st.working_set()),
            memory_peak_bytes: i(st.memory_peak),
            pids_current: i(st.pids_current),
        };
        let (rates, events) = match r {
            None => (UsageRates::default(), UsageEvents::default()),
            Some(r) => (
                UsageRates {
                    cpu_cores: r.cpu_cores,
                    cpu_user_cores: r.cpu_user_cores,
                    cpu_system_cores: r.cpu_system_cores,
                    cpu_throttled_cores: r.cpu_throttled_cores,
                    io_read_bytes_per_s: r.io_total(|d| d.read_bytes_per_s),
                    io_write_bytes_per_s: r.io_total(|d| d.write_bytes_per_s),
                    io_read_ops_per_s: r.io_total(|d| d.read_ops_per_s),
                    io_write_ops_per_s: r.io_total(|d| d.write_ops_per_s),
                    cpu_some_stall_ratio: r.cpu_stall.some,
                    cpu_full_stall_ratio: r.cpu_stall.full,
                    memory_some_stall_ratio: r.memory_stall.some,
                    memory_full_stall_ratio: r.memory_stall.full,
                    io_some_stall_ratio: r.io_stall.some,
                    io_full_stall_ratio: r.io_stall.full,
                },
                UsageEvents {
                    new_oom_kills: i(r.new_oom_kills),
                    new_memory_high_events: i(r.new_memory_high),
                    new_memory_max_events: i(r.new_memory_max),
                    new_pids_max_events: i(r.new_pids_max),
                },
            ),
        };
        UsageRow {
            tenant: tenant.to_string(),
            ts_ms,
            interval_ms: r.map(|r| (r.interval_s * 1000.0).round() as i64),
            counters,
            gauges,
            rates,
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::stats::{CgroupStats, CpuStat, MemoryEvents};
    use crate::domain::usage;
    use std::collections::HashSet;

    /// A sample that has used `cpu_s` CPU seconds and seen `oom_kills` OOM kills.
    fn sample(cpu_s: u64, oom_kills: u64) -> Sample {
        let stats = CgroupStats {
            cpu: CpuStat {
                usage_usec: Some(cpu_s * 1_000_000),
                ..CpuStat::default()
            },
            memory_events: MemoryEvents {
                oom_kill: Some(oom_kills),
                high: Some(5),
                ..MemoryEvents::default()
            },
            memory_current: Some(100),
            ..CgroupStats::default()
        };
        Sample::whole(7, stats)
    }

    /// A row carries the sample's counters and gauges, and the rates and new events since the
    /// previous sample; a first sample has neither.
    #[test]
    fn rows_carry_the_sample_and_its_rates() {
        let (a, b) = (sample(0, 1), sample(2, 3));
        let r = usage::rates(&a, 0, &b, 1000).unwrap();
        let row = UsageRow::from_sample("t", 1000, &b, Some(&r));
        assert_eq!((row.tenant.as_str(), row.ts_ms), ("t", 1000));
        assert_eq!(row.interval_ms, Some(1000));
        assert_eq!(row.rates.cpu_cores, Some(2.0));
        assert_eq!(row.counters.cpu_usage_usec, Some(2_000_000));
        assert_eq!(row.gauges.memory_current_bytes, Some(100));
        assert_eq!(row.events.new_oom_kills, Some(2));
        assert_eq!(row.events.new_memory_high_events, Some(0));
        let first = UsageRow::from_sample("t", 0, &a, None);
        assert_eq!(
            (first.interval_ms, first.rates, first.events),
            (None, UsageRates::default(), UsageEvents::default())
        );
    }

    /// No column name appears twice across the groups (they share one table).
    #[test]
    fn column_names_are_unique() {
        let all: Vec<&str> = UsageCounters::COLUMNS
            .iter()
            .chain(&UsageGauges::COLUMNS)
            .chain(&UsageRates::COLUMNS)
            .chain(&UsageEvents::COLUMNS)
            .copied()
            .collect();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
        assert_eq!(all.len(), 15 + 4 + 14 + 4);
    }

    #[test]
    fn values_follow_the_column_names() {
        let r = UsageRates {
            cpu_cores: Some(1.0),
            io_full_stall_ratio: Some(2.0),
            ..Default::default()
        };
        let v = r.values();
        let at = |c: &str| v[UsageRates::COLUMNS.iter().position(|n| *n == c).unwrap()];
        assert_eq!(at("cpu_cores"), Some(1.0));
        assert_eq!(at("io_full_stall_ratio"), Some(2.0));
        assert_eq!(at("cpu_user_cores"), None);
        assert_eq!(UsageRates::from_values(v), r);
    }
}
