//! SLA accounting: from per-interval observations to delivered share, contention, violations
//! and attainment; and the adaptive weight controller. Pure: times are passed in.
//!
//! A weight only gives a share among *busy* siblings, so a tenant below its guarantee is only
//! in violation when it actually wanted more CPU: it was **contended** (its cpu.pressure `some`
//! stall, or run-queue wait where PSI is missing, took at least `contention_threshold` of the
//! interval) and it was not merely held back by its own cpu.max (throttling is the tenant's own
//! limit, not a breach of its guarantee). IO is judged the same way on an `IoInterval`: the
//! share of its siblings' IO it used, contended when its io.pressure `some` stall was high.
//!
//! Owns the SLA's verdicts, events, attainment and the per-tenant totals `/metrics` shows
//! (`SlaTotals`, kept up by `sla_engine`). Imports nothing from `cgroup`, `store`, `engine`
//! or `api`.

use crate::domain::tenant::DevId;
use crate::domain::usage::Rates;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What one tenant did over one interval, computed from two samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub start_ms: i64,
    pub end_ms: i64,
    /// CPU time the tenant used (Δ cpu.stat usage_usec).
    pub used_usec: u64,
    /// CPU time its parent could hand out in the interval (host CPUs × Δt for a top-level tenant,
    /// the parent's own usage for a child).
    pub capacity_usec: f64,
    /// Δ cpu.pressure `some` total: time at least one of its tasks waited for a CPU. `None`
    /// without PSI; then `runq_wait_usec` is used.
    pub stall_usec: Option<u64>,
    /// Δ of the summed run-queue wait of its tasks (/proc/PID/schedstat), for hosts without PSI.
    pub runq_wait_usec: Option<u64>,
    /// Δ cpu.stat throttled_usec: time held back by its own cpu.max.
    pub throttled_usec: u64,
}

impl Interval {
    pub fn secs(&self) -> f64 {
        (self.end_ms - self.start_ms).max(0) as f64 / 1000.0
    }
}

/// What one tenant did with IO over one interval. There is no fixed device capacity to divide,
/// so what it used is its share of its siblings' IO (`io_shares`), which the tracker judges
/// against the share guaranteed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IoInterval {
    pub start_ms: i64,
    pub end_ms: i64,
    /// The interval's measured length (the rates' `interval_s`): the share is counted in its
    /// microseconds.
    pub secs: f64,
    /// Its share of its siblings' IO, 0..1 (`io_shares`); `None` when none of them did any.
    pub share_used: Option<f64>,
    /// Δ io.pressure `some` total: time at least one of its tasks waited for IO. `None`
    /// without PSI, and then it never counts as contended.
    pub stall_usec: Option<u64>,
}

/// An interval a `Tracker` judges: CPU (`Interval`) or IO (`IoInterval`).
pub trait Judged {
    fn start_ms(&self) -> i64;
    /// Share delivered, 0..1.
    fn delivered(&self) -> f64;
    /// Whether the tenant wanted more than it got.
    fn contended(&self, p: &SlaParams) -> bool;
}

impl Judged for Interval {
    fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// Share of the parent's capacity delivered, 0..1.
    fn delivered(&self) -> f64 {
        if self.capacity_usec <= 0.0 {
            0.0
        } else {
            (self.used_usec as f64 / self.capacity_usec).clamp(0.0, 1.0)
        }
    }

    fn contended(&self, p: &SlaParams) -> bool {
        contended(self, p)
    }
}

impl Judged for IoInterval {
    fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// The share used, counted in whole microseconds of the interval as a CPU share is
    /// (`Interval::used_usec`); 0 when no sibling did any IO.
    fn delivered(&self) -> f64 {
        let Some(share) = self.share_used else {
            return 0.0;
        };
        let interval_usec = 1e6 * self.secs;
        if interval_usec <= 0.0 {
            return 0.0;
        }
        let used_usec = (share * 1e6 * self.secs) as u64;
        (used_usec as f64 / interval_usec).clamp(0.0, 1.0)
    }

    /// Waited for IO at least `contention_threshold` of the interval (no own limit to rule
    /// out: io.max throttling shows in no counter the SLA reads).
    fn contended(&self, p: &SlaParams) -> bool {
        self.stall_usec
            .is_some_and(|w| fraction(self.start_ms, self.end_ms, w) >= p.contention_threshold)
    }
}

/// `usec` as a fraction of the interval from `start_ms` to `end_ms`.
fn fraction(start_ms: i64, end_ms: i64, usec: u64) -> f64 {
    let dt_us = (end_ms - start_ms).max(1) as f64 * 1000.0;
    usec as f64 / dt_us
}

/// Tunables of the accounting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SlaParams {
    /// Stall fraction (0..1) at or above which a tenant counts as wanting more CPU.
    pub contention_threshold: f64,
    /// Percentage points below the guarantee that are tolerated.
    pub tolerance_pp: f64,
    /// Consecutive below-guarantee contended intervals before a violation opens.
    pub min_intervals: u32,
}

impl Default for SlaParams {
    fn default() -> Self {
        SlaParams {
            contention_threshold: 0.10,
            tolerance_pp: 2.0,
            min_intervals: 3,
        }
    }
}

/// The verdict on one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub delivered: f64,
    pub contended: bool,
    /// Contended and below the guarantee minus the tolerance (before the `min_intervals` rule).
    pub below: bool,
    /// Part of an open violation.
    pub violating: bool,
}

/// Whether the tenant wanted more CPU than it got in `i`.
pub fn contended(i: &Interval, p: &SlaParams) -> bool {
    let wait = match (i.stall_usec, i.runq_wait_usec) {
        (Some(s), _) => s,
        (None, Some(w)) => w,
        (None, None) => return false,
    };
    let waiting = fraction(i.start_ms, i.end_ms, wait) >= p.contention_threshold;
    // Held back by its own cpu.max for most of its waiting: not a breach of the guarantee.
    let own_limit = i.throttled_usec > 0 && i.throttled_usec >= wait / 2;
    waiting && !own_limit
}

/// A violation: a run of contended intervals below the guarantee.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub start_ms: i64,
    /// `None` while still open.
    pub end_ms: Option<i64>,
    /// Lowest delivered share seen (0..1).
    pub worst_share: f64,
    pub guarantee: f64,
}

/// What feeding one interval produced.
#[derive(Debug, Clone, PartialEq)]
pub enum SlaEvent {
    Opened(Violation),
    Closed(Violation),
}

/// Per-tenant state machine: feed intervals in order, get verdicts and violation events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracker {
    run: u32,
    run_start_ms: i64,
    run_worst: f64,
    open: Option<Violation>,
}

impl Tracker {
    pub fn open(&self) -> Option<&Violation> {
        self.open.as_ref()
    }

    /// Stops judging at `end_ms`: the open violation, if any, closes there.
    pub fn finish(&mut self, end_ms: i64) -> Option<SlaEvent> {
        self.run = 0;
        let mut v = self.open.take()?;
        v.end_ms = Some(end_ms);
        Some(SlaEvent::Closed(v))
    }

    /// `guarantee` is the share promised (0..1); `None` for best effort (never violated).
    pub fn feed(
        &mut self,
        i: &impl Judged,
        guarantee: Option<f64>,
        p: &SlaParams,
    ) -> (Verdict, Option<SlaEvent>) {
        let delivered = i.delivered();
        let contended = i.contended(p);
        let below = match guarantee {
            Some(g) => contended && delivered * 100.0 < g * 100.0 - p.tolerance_pp,
            None => false,
        };
        let mut event = None;
        if below {
            if self.run == 0 {
                self.run_start_ms = i.start_ms();
                self.run_worst = delivered;
            }
            self.run += 1;
            self.run_worst = self.run_worst.min(delivered);
            if let Some(v) = &mut self.open {
                v.worst_share = v.worst_share.min(delivered);
            } else if self.run >= p.min_intervals.max(1) {
                let v = Violation {
                    start_ms: self.run_start_ms,
                    end_ms: None,
                    worst_share: self.run_worst,
                    guarantee: guarantee.unwrap_or(0.0),
                };
                self.open = Some(v.clone());
                event = Some(SlaEvent::Opened(v));
            }
        } else {
            self.run = 0;
            if let Some(mut v) = self.open.take() {
                v.end_ms = Some(i.start_ms());
                event = Some(SlaEvent::Closed(v));
            }
        }
        let verdict = Verdict {
            delivered,
            contended,
            below,
            violating: self.open.is_some(),
        };
        (verdict, event)
    }
}

/// Totals over a period, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Attainment {
    pub contended_s: f64,
    pub violation_s: f64,
}

impl Attainment {
    pub fn add(&mut self, v: &Verdict, secs: f64) {
        if v.contended {
            self.contended_s += secs;
        }
        if v.violating {
            self.violation_s += secs;
        }
    }

    /// 1 - violation time / contended time; 1 when never contended.
    pub fn ratio(&self) -> f64 {
        if self.contended_s <= 0.0 {
            1.0
        } else {
            (1.0 - self.violation_s / self.contended_s).clamp(0.0, 1.0)
        }
    }
}

/// A tenant's SLA since the daemon started, for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SlaTotals {
    pub contended_s: f64,
    pub violation_s: f64,
    pub violations: u64,
    pub memory_breaches: u64,
    /// Delivered share of the parent's CPU in the last interval, 0..1.
    pub delivered_ratio: Option<f64>,
    /// The same accounting for IO, where io weights take effect (iocost or BFQ).
    pub io_contended_s: f64,
    pub io_violation_s: f64,
    pub io_violations: u64,
    /// Share of its siblings' IO in the last interval, 0..1: device time under iocost, bytes
    /// elsewhere; `None` without an IO guarantee, or where io weights do nothing.
    pub io_delivered_ratio: Option<f64>,
}

impl SlaTotals {
    pub fn attainment_ratio(&self) -> f64 {
        Attainment {
            contended_s: self.contended_s,
            violation_s: self.violation_s,
        }
        .ratio()
    }
}

/// The `q`-quantile (0..1) of `values` by nearest rank; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v.get(rank - 1).copied()
}

/// Adaptive enforcement: the next weight for a tenant (or the governor's root) given how far
/// below its guarantee it was delivered while contended. Multiplicative increase proportional
/// to the shortfall, exponential decay back toward `base` when the pressure is gone; clamped
/// to `[base, max]`. Small steps near the target and the decay dead band keep it from
/// oscillating (see the convergence test).
pub fn next_weight(current: u32, base: u32, max: u32, shortfall_pp: Option<f64>) -> u32 {
    let cur = current.clamp(base, max.max(base)) as f64;
    let next = match shortfall_pp {
        Some(s) if s > 0.0 => cur * (1.0 + (s / 100.0).min(0.5)),
        // Contended but delivered: hold. Not contended: decay 10% of the excess per step.
        Some(_) => cur,
        None => base as f64 + ((cur - base as f64) * 0.9).floor(),
    };
    (next.round() as u32).clamp(base, max.max(base))
}

/// One tenant's IO on one device in one interval, in both units its share can be judged in:
/// bytes read and written per second, and the device time iocost charged it (io.stat
/// `cost.usage`, seconds per second) where iocost is on for the device. Device time is what
/// io.weight divides there: a tenant of small reads gets far fewer bytes than one of large
/// reads for the same device time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceIo {
    pub device: DevId,
    pub bytes_per_s: f64,
    pub device_time_ratio: Option<f64>,
}

impl DeviceIo {
    /// Every device of `r`.
    pub fn of(r: &Rates) -> Vec<DeviceIo> {
        r.io.iter()
            .map(|d| DeviceIo {
                device: d.device,
                bytes_per_s: d.read_bytes_per_s.unwrap_or(0.0) + d.write_bytes_per_s.unwrap_or(0.0),
                device_time_ratio: d.cost_usage_ratio,
            })
            .collect()
    }
}

/// Each tenant's share of its siblings' IO, 0..1. Pure: `(parent, devices)` in, one share per
/// tenant out, in the same order.
/// - Per device, the tenant's part of what its siblings did there: in device time when any
///   sibling reports it on that device (a sibling that does not counts 0), else in bytes.
/// - Over devices, the mean of those parts weighted by the tenant's own bytes on each, so a
///   tenant alone on its own disk has all of it rather than half of the two.
/// - `Some(0.0)` when the tenant did no IO while siblings did; `None` when none did any.
pub fn io_shares(tenants: &[(Option<&str>, Vec<DeviceIo>)]) -> Vec<Option<f64>> {
    #[derive(Default)]
    struct Dev {
        bytes: f64,
        time: f64,
        by_time: bool,
    }
    let mut devs: HashMap<(Option<&str>, DevId), Dev> = HashMap::new();
    // The parents under which some tenant did IO on some device.
    let mut active: std::collections::HashSet<Option<&str>> = std::collections::HashSet::new();
    for (parent, ios) in tenants {
        for d in ios {
            let e = devs.entry((*parent, d.device)).or_default();
            e.bytes += d.bytes_per_s.max(0.0);
            if let Some(t) = d.device_time_ratio {
                e.time += t.max(0.0);
                e.by_time = true;
            }
            if e.bytes > 0.0 || e.time > 0.0 {
                active.insert(*parent);
            }
        }
    }
    tenants
        .iter()
        .map(|(parent, ios)| {
            // (part of the device, the tenant's bytes there) for each device its siblings used.
            let parts: Vec<(f64, f64)> = ios
                .iter()
                .filter_map(|d| {
                    let g = &devs[&(*parent, d.device)];
                    let (used, total) = if g.by_time {
                        (d.device_time_ratio.unwrap_or(0.0).max(0.0), g.time)
                    } else {
                        (d.bytes_per_s.max(0.0), g.bytes)
                    };
                    (total > 0.0).then(|| (used / total, d.bytes_per_s.max(0.0)))
                })
                .collect();
            let bytes: f64 = parts.iter().map(|p| p.1).sum();
            if bytes > 0.0 {
                Some(parts.iter().map(|(s, b)| s * b).sum::<f64>() / bytes)
            } else if !parts.is_empty() {
                // No bytes of its own (idle, or discards only): the plain mean of its parts.
                Some(parts.iter().map(|p| p.0).sum::<f64>() / parts.len() as f64)
            } else {
                active.contains(parent).then_some(0.0)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: SlaParams = SlaParams {
        contention_threshold: 0.10,
        tolerance_pp: 2.0,
        min_intervals: 3,
    };

    fn iv(t: i64, share: f64, stall_frac: f64, throttled: u64) -> Interval {
        Interval {
            start_ms: t * 1000,
            end_ms: t * 1000 + 1000,
            used_usec: (share * 2_000_000.0) as u64,
            capacity_usec: 2_000_000.0,
            stall_usec: Some((stall_frac * 1_000_000.0) as u64),
            runq_wait_usec: None,
            throttled_usec: throttled,
        }
    }

    /// An IO interval's share is counted in whole microseconds of the interval, as a CPU
    /// share is; nothing is delivered when no sibling did IO; only the IO stall decides
    /// contention (there is no own limit to rule out).
    #[test]
    fn io_interval_table() {
        let io = |share, stall| IoInterval {
            start_ms: 0,
            end_ms: 1001,
            secs: 1.0007,
            share_used: share,
            stall_usec: stall,
        };
        let third = io(Some(1.0 / 3.0), None).delivered();
        assert!(third < 1.0 / 3.0, "{third}");
        assert!((third - 333_566.0 / 1_000_700.0).abs() < 1e-15, "{third}");
        assert_eq!(io(None, None).delivered(), 0.0, "no sibling did IO");
        assert_eq!(io(Some(1.5), None).delivered(), 1.0);
        let mut instant = io(Some(0.5), None);
        instant.secs = 0.0;
        assert_eq!(instant.delivered(), 0.0);
        assert!(io(None, Some(100_100)).contended(&P), "10% of 1001 ms");
        assert!(!io(None, Some(100_099)).contended(&P));
        assert!(
            !io(Some(0.1), None).contended(&P),
            "no PSI: never contended"
        );
    }

    #[test]
    fn contention_table() {
        assert!(contended(&iv(0, 0.3, 0.5, 0), &P));
        assert!(!contended(&iv(0, 0.3, 0.05, 0), &P), "below the threshold");
        assert!(
            !contended(&iv(0, 0.3, 0.5, 400_000), &P),
            "its own cpu.max held it back"
        );
        let mut no_psi = iv(0, 0.3, 0.0, 0);
        no_psi.stall_usec = None;
        no_psi.runq_wait_usec = Some(200_000);
        assert!(contended(&no_psi, &P), "run-queue wait stands in for PSI");
        no_psi.runq_wait_usec = None;
        assert!(!contended(&no_psi, &P), "no signal: never claim contention");
    }

    #[test]
    fn violation_opens_after_n_intervals_and_closes_with_its_worst_share() {
        let mut t = Tracker::default();
        let g = Some(0.5);
        let mut events = vec![];
        let shares = [0.5, 0.40, 0.35, 0.42, 0.30, 0.5, 0.5];
        for (k, s) in shares.iter().enumerate() {
            let (_, e) = t.feed(&iv(k as i64, *s, 0.5, 0), g, &P);
            events.extend(e);
        }
        assert_eq!(events.len(), 2, "{events:?}");
        let SlaEvent::Opened(o) = &events[0] else {
            panic!()
        };
        assert_eq!(
            o.start_ms, 1000,
            "the violation starts at the first below interval"
        );
        let SlaEvent::Closed(c) = &events[1] else {
            panic!()
        };
        assert_eq!((c.start_ms, c.end_ms), (1000, Some(5000)));
        assert!((c.worst_share - 0.30).abs() < 1e-9);
    }

    #[test]
    fn idle_or_within_tolerance_or_best_effort_is_never_a_violation() {
        let mut t = Tracker::default();
        for k in 0..10 {
            // Idle: low share but no stall.
            let (v, e) = t.feed(&iv(k, 0.01, 0.0, 0), Some(0.5), &P);
            assert!(!v.contended && e.is_none());
            // Within 2 pp of the guarantee.
            let (v, e) = t.feed(&iv(k, 0.485, 0.9, 0), Some(0.5), &P);
            assert!(v.contended && !v.below && e.is_none());
            let (v, _) = t.feed(&iv(k, 0.0, 1.0, 0), None, &P);
            assert!(!v.below);
        }
    }

    #[test]
    fn attainment_and_quantiles() {
        let mut a = Attainment::default();
        a.add(
            &Verdict {
                delivered: 0.5,
                contended: true,
                below: false,
                violating: false,
            },
            30.0,
        );
        a.add(
            &Verdict {
                delivered: 0.3,
                contended: true,
                below: true,
                violating: true,
            },
            10.0,
        );
        assert!((a.ratio() - 0.75).abs() < 1e-9);
        assert_eq!(Attainment::default().ratio(), 1.0);
        assert_eq!(quantile(&[0.5, 0.1, 0.3, 0.2, 0.4], 0.05), Some(0.1));
        assert_eq!(quantile(&[0.5, 0.1, 0.3, 0.2, 0.4], 0.5), Some(0.3));
        assert_eq!(quantile(&[], 0.5), None);
    }

    /// A plant: the tenant's share is w / (w + outside), where `outside` is competition the
    /// weights do not see. The controller must bring the share to the guarantee and stay.
    #[test]
    fn adaptive_weight_converges_without_oscillating_and_decays_after() {
        let (base, max, guarantee, outside) = (5000u32, 10_000u32 * 10, 0.5, 7000.0);
        let mut w = base;
        let mut shares = vec![];
        for _ in 0..60 {
            let share = w as f64 / (w as f64 + outside);
            shares.push(share);
            let shortfall = (guarantee - share) * 100.0;
            w = next_weight(
                w,
                base,
                max,
                Some(if shortfall > P.tolerance_pp {
                    shortfall
                } else {
                    0.0
                }),
            );
        }
        let last = &shares[40..];
        assert!(
            last.iter()
                .all(|s| (s - guarantee).abs() * 100.0 <= P.tolerance_pp + 0.5),
            "{last:?}"
        );
        let spread = last.iter().cloned().fold(f64::MIN, f64::max)
            - last.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread < 1e-9, "settled, not oscillating: {last:?}");
        // Pressure gone: the extra weight decays back to the base.
        for _ in 0..200 {
            w = next_weight(w, base, max, None);
        }
        assert_eq!(w, base);
    }

    proptest::proptest! {
        #[test]
        fn delivered_share_is_a_fraction(used in 0u64..10_000_000, cap in 0.0f64..10_000_000.0) {
            let i = Interval { start_ms: 0, end_ms: 1000, used_usec: used, capacity_usec: cap, stall_usec: Some(0), runq_wait_usec: None, throttled_usec: 0 };
            let d = i.delivered();
            proptest::prop_assert!((0.0..=1.0).contains(&d));
        }

        #[test]
        fn weights_stay_in_bounds(cur in 1u32..20_000, base in 1u32..10_000, max in 1u32..100_000, s in proptest::option::of(-50.0f64..100.0)) {
            let w = next_weight(cur, base, max, s);
            proptest::prop_assert!(w >= base && w <= max.max(base));
        }
    }

    fn dev(minor: u32, bytes: f64, time: Option<f64>) -> DeviceIo {
        DeviceIo {
            device: DevId { major: 254, minor },
            bytes_per_s: bytes,
            device_time_ratio: time,
        }
    }

    #[test]
    fn io_shares_are_device_time_where_iocost_reports_it_else_bytes() {
        // Under "p", one disk with device time: bytes do not count; c has none and counts 0.
        // At the top, bytes only. Under "idle", no IO at all. Under "two", each tenant alone
        // on its own disk, and one that did no IO on either.
        let shares = io_shares(&[
            (Some("p"), vec![dev(0, 20e6, Some(0.6))]),
            (Some("p"), vec![dev(0, 80e6, Some(0.2))]),
            (Some("p"), vec![dev(0, 50e6, None)]),
            (None, vec![dev(0, 30.0, None)]),
            (None, vec![dev(0, 10.0, None)]),
            (Some("idle"), vec![dev(0, 0.0, None)]),
            (Some("two"), vec![dev(0, 10.0, None)]),
            (Some("two"), vec![dev(1, 10.0, None)]),
            (Some("two"), vec![dev(0, 0.0, None), dev(1, 0.0, None)]),
        ]);
        let close = |s: Option<f64>, want: f64| (s.unwrap() - want).abs() < 1e-12;
        assert!(
            close(shares[0], 0.75) && close(shares[1], 0.25),
            "{shares:?}"
        );
        assert!(close(shares[2], 0.0), "{shares:?}");
        assert!(
            close(shares[3], 0.75) && close(shares[4], 0.25),
            "{shares:?}"
        );
        assert_eq!(shares[5], None, "no IO among the siblings: no share at all");
        assert!(
            close(shares[6], 1.0) && close(shares[7], 1.0),
            "alone on its own disk: {shares:?}"
        );
        assert!(
            close(shares[8], 0.0),
            "did no IO while siblings did: {shares:?}"
        );
    }

    proptest::proptest! {
        /// Shares are fractions, and the siblings on one disk share all of it.
        #[test]
        fn io_shares_are_fractions_that_add_up_on_one_disk(
            ts in proptest::collection::vec((0u32..2, 0.0f64..1e9, proptest::option::of(0.0f64..2.0), 0u32..2), 1..8),
        ) {
            let tenants: Vec<(Option<&str>, Vec<DeviceIo>)> = ts
                .iter()
                .map(|&(p, bytes, time, minor)| {
                    (["a", "b"].get(p as usize).copied(), vec![dev(minor, bytes, time)])
                })
                .collect();
            let shares = io_shares(&tenants);
            for s in shares.iter().flatten() {
                proptest::prop_assert!(s.is_finite() && (0.0..=1.0 + 1e-9).contains(s), "{shares:?}");
            }
            // One disk, one parent: the parts add up to 1 whenever anyone did IO there.
            let one: Vec<(Option<&str>, Vec<DeviceIo>)> = ts
                .iter()
                .map(|&(_, bytes, time, _)| (Some("a"), vec![dev(0, bytes, time)]))
                .collect();
            let s1 = io_shares(&one);
            if s1.iter().all(Option::is_some) {
                let sum: f64 = s1.iter().flatten().sum();
                proptest::prop_assert!((sum - 1.0).abs() < 1e-9, "{s1:?}");
            }
        }
    }
}
