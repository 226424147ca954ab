//! Builds an SLA report from the store: the SLA series and totals, the violations and breaches
//! counted from the event log (one query), and the usage totals for chargeback. Rendering lives in `crate::report`.

use super::{Governor, Result, now_ms};
use crate::domain::TenantName;
use crate::domain::TenantSpec;
use crate::domain::sla::{Attainment, quantile};
use crate::report::{Point, Report, TenantReport};
use crate::store::{Retention, SlaEventCounts, SlaSeries, UsagePoint};

/// Chart points per tenant.
pub(crate) const POINTS: i64 = 300;

/// A tenant's chargeback totals over a report's period, from its usage points: they add up
/// over nodes (`add`), as the SLA times do.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Chargeback {
    cpu_s: f64,
    mem_byte_s: f64,
    io_bytes: f64,
    ooms: f64,
}

impl Chargeback {
    /// Each point's mean rates and gauges times the seconds it covers; its OOM kills.
    pub(crate) fn of(points: &[UsagePoint]) -> Chargeback {
        let mut c = Chargeback::default();
        for p in points {
            let v = |x: Option<f64>| x.unwrap_or(0.0);
            let (r, g) = (&p.rates, &p.gauges);
            c.cpu_s += v(r.cpu_cores_mean) * p.covered_s;
            c.mem_byte_s += v(g.memory_current_bytes_mean) * p.covered_s;
            c.io_bytes +=
                (v(r.io_read_bytes_per_s_mean) + v(r.io_write_bytes_per_s_mean)) * p.covered_s;
            c.ooms += v(p.events.new_oom_kills);
        }
        c
    }

    pub(crate) fn add(&mut self, o: &Chargeback) {
        self.cpu_s += o.cpu_s;
        self.mem_byte_s += o.mem_byte_s;
        self.io_bytes += o.io_bytes;
        self.ooms += o.ooms;
    }
}

/// What a report says of one tenant: its guarantee and labels from `spec`, its SLA from
/// `series` (attainment, the contended share's mean and 5th percentile, a chart point per
/// bucket), the violations and breaches counted from its events, and its chargeback.
pub(crate) fn tenant_report(
    tenant: &str,
    spec: &TenantSpec,
    series: &SlaSeries,
    events: SlaEventCounts,
    c: &Chargeback,
) -> TenantReport {
    let mut att = Attainment::default();
    let mut contended_share_s = 0.0;
    for b in &series.buckets {
        att.contended_s += b.contended_s;
        att.violation_s += b.violation_s;
        contended_share_s += b.delivered_contended_mean_ratio.unwrap_or(0.0) * b.contended_s;
    }
    TenantReport {
        tenant: tenant.to_string(),
        labels: spec.labels.clone(),
        guarantee_ratio: spec.cpu.guarantee_pct.map(|p| p.0 / 100.0),
        contended_seconds: att.contended_s,
        violations: events.violations,
        violation_seconds: att.violation_s,
        attainment_ratio: att.ratio(),
        delivered_mean_contended_ratio: (att.contended_s > 0.0)
            .then(|| contended_share_s / att.contended_s),
        delivered_p5_contended_ratio: quantile(&series.contended_shares, 0.05),
        memory_protection_breaches: events.memory_protection_breaches,
        oom_kills: c.ooms.round() as u64,
        cpu_seconds: c.cpu_s,
        memory_gib_hours: c.mem_byte_s / 3600.0 / (1u64 << 30) as f64,
        io_bytes: c.io_bytes.round() as u64,
        series: series
            .buckets
            .iter()
            .map(|b| Point {
                ts_ms: b.ts_ms,
                delivered: b
                    .delivered_contended_mean_ratio
                    .unwrap_or(b.delivered_mean_ratio),
                contended: b.contended_s > 0.0,
                violating: b.violation_s > 0.0,
            })
            .collect(),
    }
}

impl Governor {
    /// The SLA of every tenant (or one) over [from_ms, to_ms).
    pub async fn sla_report(
        &self,
        from_ms: i64,
        to_ms: i64,
        only: Option<&TenantName>,
        keep: &Retention,
    ) -> Result<Report> {
        let now = now_ms();
        let stored = self.store().tenants().await?;
        if let Some(t) = only
            && !stored.contains_key(t)
        {
            return Err(super::EngineError::NotFound(t.to_string()));
        }
        let counts = self
            .store()
            .sla_event_counts(from_ms, to_ms, only.map(|t| t.as_str()))
            .await?;
        let mut tenants = Vec::new();
        for (name, st) in stored.iter().filter(|(n, _)| only.is_none_or(|o| o == *n)) {
            let n = name.as_str();
            let series = self
                .store()
                .sla_series(n, from_ms, to_ms, POINTS, now, keep)
                .await?;
            let step = ((to_ms - from_ms) / 1000 / POINTS).max(1);
            let usage = self
                .store()
                .usage(n, from_ms, to_ms, step, now, keep)
                .await?;
            tenants.push(tenant_report(
                n,
                &st.spec,
                &series,
                counts.get(n).copied().unwrap_or_default(),
                &Chargeback::of(&usage.points),
            ));
        }
        Ok(Report {
            from_ms,
            to_ms,
            generated_ms: now,
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            tenants,
        })
    }
}
