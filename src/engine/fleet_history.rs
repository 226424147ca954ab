//! This node's part in the fleet's history (issue 19): `ship` runs beside `Fleet::run` and,
//! every few seconds, ships the closed minutes of usage and SLA verdicts the node's SQLite
//! store holds and has not shipped yet (`store::fleet_history`), a batch at a time, each
//! upserted in PostgreSQL before it is noted locally. While the store is down nothing is
//! shipped and nothing else changes: the sampler and the SLA engine write locally as always,
//! and the first round after the store returns ships the outage's minutes. `fleet_report`
//! builds the fleet SLA report (`scope=fleet`) from what every node shipped, with the same
//! per-tenant figures as the node's own report (`engine::report`).
//!
//! Part of layer 2 (see `lib.rs`): imports `domain`, `store`, `report` and its siblings
//! `fleet` and `report`; `engine/mod.rs` does not import it.

use super::fleet::Fleet;
use super::report::{Chargeback, POINTS, tenant_report};
use super::{EngineError, Result, now_ms};
use crate::domain::fleet as domain_fleet;
use crate::domain::{TenantName, TenantSpec};
use crate::report::{FleetReport, NodeReport, TenantReport};
use crate::store::fleet::FleetError;
use crate::store::fleet_history::{BucketSums, Kind, NodeSlaBucket, add_sums, bucket};
use crate::store::{Level, SlaEventCounts, SlaSeries, UsagePoint};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a node looks for minutes to ship. A minute is rolled up by the first sweep after
/// it closes, so it reaches the store within about this much after its end.
pub const SHIP_EVERY: Duration = Duration::from_secs(5);

/// Minutes per batch (one PostgreSQL transaction, then one local note): a node back from a
/// long outage catches up an hour at a time.
const BATCH_MINUTES: i64 = 60;

/// Ships every minute not shipped yet, oldest first; returns how many rows went out.
pub async fn ship_all(fleet: &Fleet) -> Result<usize> {
    let (store, gov) = fleet.parts();
    let (key, node) = (store.shown(), fleet.node().name.as_str());
    let mut rows = 0;
    for kind in Kind::ALL {
        while let Some(batch) = gov
            .store()
            .unshipped(key, node, kind, BATCH_MINUTES)
            .await?
        {
            store.ship(node, &batch).await?;
            gov.store()
                .mark_shipped(key, node, kind, batch.last_ms)
                .await?;
            rows += batch.len();
        }
    }
    Ok(rows)
}

/// Until `shutdown`: ships what is left every `SHIP_EVERY` once the node joined the store.
/// An unreachable store is logged by the fleet's own contact (once per outage); the round
/// after one says how much it caught up.
pub async fn ship(fleet: Arc<Fleet>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SHIP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut behind = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !fleet.joined() {
            behind = true;
            continue;
        }
        match ship_all(&fleet).await {
            Ok(n) => {
                if behind && n > 0 {
                    tracing::info!(
                        "fleet: shipped {n} minute rows of usage and SLA history to {} (caught up)",
                        fleet.store_shown()
                    );
                }
                behind = false;
            }
            Err(EngineError::Fleet(FleetError::Unreachable { .. })) => behind = true,
            Err(e) => {
                behind = true;
                tracing::warn!("fleet: cannot ship this node's history: {e}");
            }
        }
    }
}

/// One (node, tenant)'s figures, or one tenant's across nodes, as they are gathered.
#[derive(Default)]
struct Acc {
    buckets: BTreeMap<i64, BucketSums>,
    shares: Vec<f64>,
    events: SlaEventCounts,
    usage: Vec<UsagePoint>,
    charge: Chargeback,
}

impl Acc {
    /// Adds a bucket's sums to the one of the same time.
    fn add_sums(&mut self, sums: &BucketSums) {
        match self.buckets.get_mut(&sums.0) {
            Some(s) => add_sums(s, sums),
            None => {
                self.buckets.insert(sums.0, *sums);
            }
        }
    }

    fn add_bucket(&mut self, b: &NodeSlaBucket) {
        self.add_sums(&b.sums);
        self.events.violations += b.violations;
        self.events.memory_protection_breaches += b.memory_protection_breaches;
    }

    fn report(&self, tenant: &str, spec: Option<&TenantSpec>, step_s: i64) -> TenantReport {
        let series = SlaSeries {
            level: Level::Minute,
            step_s,
            buckets: self.buckets.values().map(|s| bucket(*s)).collect(),
            contended_shares: self.shares.clone(),
        };
        let fallback = TenantSpec::default();
        let mut t = tenant_report(
            tenant,
            spec.unwrap_or(&fallback),
            &series,
            self.events,
            &self.charge,
        );
        if spec.is_none() {
            // No longer in the fleet: the guarantee its nodes judged it by.
            t.guarantee_ratio = series
                .buckets
                .iter()
                .filter_map(|b| b.guarantee_ratio)
                .reduce(f64::max);
        }
        t
    }
}

/// The fleet SLA report over the whole minutes of [from_ms, to_ms) (rounded out to minutes),
/// of every tenant or `only`: per tenant across nodes, and per node. A tenant is listed when
/// the fleet holds it or a node shipped minutes of it in the period; a node when it is
/// registered or shipped minutes in the period, with the tenants it shipped or that its
/// labels select.
pub async fn fleet_report(
    fleet: &Fleet,
    from_ms: i64,
    to_ms: i64,
    only: Option<&TenantName>,
) -> Result<FleetReport> {
    let (store, _) = fleet.parts();
    let from = from_ms.div_euclid(60_000) * 60_000;
    let to = (to_ms + 59_999).div_euclid(60_000) * 60_000;
    let want_step = ((to - from) / 1000 / POINTS).max(1);
    let step_s = (want_step + 59) / 60 * 60;
    let step_ms = step_s * 1000;
    let only_str = only.map(|t| t.as_str());
    let snap = store.snapshot().await?;
    let specs = snap.specs();
    let sla = store.sla_buckets(from, to, step_ms, only_str).await?;
    let shares = store.contended_shares(from, to, only_str).await?;
    let usage = store.usage_points(from, to, step_ms, only_str).await?;
    if let Some(t) = only
        && !specs.contains_key(t)
        && sla.is_empty()
        && usage.is_empty()
    {
        return Err(EngineError::NotFound(t.to_string()));
    }

    let mut per: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for b in &sla {
        per.entry((b.node.clone(), b.tenant.clone()))
            .or_default()
            .add_bucket(b);
    }
    for (node, tenant, s) in shares {
        per.entry((node, tenant)).or_default().shares.push(s);
    }
    for u in usage {
        per.entry((u.node, u.tenant))
            .or_default()
            .usage
            .push(u.point);
    }
    for a in per.values_mut() {
        a.charge = Chargeback::of(&a.usage);
    }
    // Registered nodes get the live tenants their labels select, with nothing shipped yet.
    let wanted = |t: &TenantName| only.is_none_or(|o| o == t);
    for n in &snap.nodes {
        for t in domain_fleet::selected(&specs, &n.labels).keys() {
            if wanted(t) {
                per.entry((n.name.clone(), t.to_string())).or_default();
            }
        }
    }
    let mut across: BTreeMap<String, Acc> = specs
        .keys()
        .filter(|t| wanted(t))
        .map(|t| (t.to_string(), Acc::default()))
        .collect();
    for ((_, tenant), a) in &per {
        let all = across.entry(tenant.clone()).or_default();
        for s in a.buckets.values() {
            all.add_sums(s);
        }
        all.shares.extend(&a.shares);
        all.events.violations += a.events.violations;
        all.events.memory_protection_breaches += a.events.memory_protection_breaches;
        all.charge.add(&a.charge);
    }
    let spec_of = |t: &str| TenantName::parse(t).ok().and_then(|n| specs.get(&n));
    let names: BTreeSet<String> = snap
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .chain(per.keys().map(|(n, _)| n.clone()))
        .collect();
    let nodes = names
        .into_iter()
        .map(|node| NodeReport {
            tenants: per
                .range((node.clone(), String::new())..)
                .take_while(|((n, _), _)| *n == node)
                .map(|((_, t), a)| a.report(t, spec_of(t), step_s))
                .collect(),
            node,
        })
        .collect();
    Ok(FleetReport {
        from_ms: from,
        to_ms: to,
        generated_ms: now_ms(),
        store: store.shown().to_string(),
        tenants: across
            .iter()
            .map(|(t, a)| a.report(t, spec_of(t), step_s))
            .collect(),
        nodes,
    })
}
