//! The desired state in memory: every tenant's spec with the plan and the indexes derived from
//! it, changed one tenant at a time in O(depth + siblings) instead of re-planning every tenant
//! (issue 15: a change at 10,000 tenants in milliseconds).
//!
//! A change to tenant `t` alters only the plans of `t` and its ancestors: a tenant's settings
//! come from its own spec, what its subtree holds back and its children's guarantees
//! (`plan::plan_tenant`). So the state keeps, per tenant, what its subtree holds back and, per
//! parent, the sum over its children; `preview` walks up from `t` once, and `apply` writes what
//! the walk found. `plan::plan` stays the definition: the tests check every change against it.

use super::plan::{self, PlanParams, Protected, TenantPlan};
use super::tenant::Shares;
use super::tenant::{self, Capacity, DomainError, Others, Protection, TenantName, TenantSpec};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What a subtree holds back: memory.min (`hard`), memory.low (`soft`), and every guarantee
/// whatever its kind (`any`, admission's total).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    hard: u64,
    soft: u64,
    any: u64,
}

impl Held {
    fn own(s: &TenantSpec) -> Held {
        Held {
            hard: plan::own(s, Protection::Hard),
            soft: plan::own(s, Protection::Soft),
            any: s.memory.guarantee_bytes.map_or(0, |b| b.0),
        }
    }

    fn max(self, o: Held) -> Held {
        Held {
            hard: self.hard.max(o.hard),
            soft: self.soft.max(o.soft),
            any: self.any.max(o.any),
        }
    }

    /// `self - out + inn`, the sum over children after one child changed (exact: `self`
    /// includes `out`; modular, as the sums are).
    fn replace(self, out: Held, inn: Held) -> Held {
        Held {
            hard: self.hard.wrapping_sub(out.hard).wrapping_add(inn.hard),
            soft: self.soft.wrapping_sub(out.soft).wrapping_add(inn.soft),
            any: self.any.wrapping_sub(out.any).wrapping_add(inn.any),
        }
    }

    fn protected(self) -> Protected {
        Protected {
            hard: self.hard,
            soft: self.soft,
        }
    }
}

/// Every tenant's spec and plan, with the indexes that keep a change local.
#[derive(Debug, Clone)]
pub struct DesiredState {
    params: PlanParams,
    /// Shared (`Arc`): the sampler's targets and the `/metrics` snapshot hold the same specs
    /// (issue 15 target 4: at 10,000 tenants its copy and this map's half-empty nodes of
    /// whole specs cost about 10 MB).
    specs: BTreeMap<TenantName, Arc<TenantSpec>>,
    /// The children of each parent (`None`: the top level), in name order, with their shares
    /// (admission sums the siblings' without a lookup per sibling).
    kids: HashMap<Option<TenantName>, BTreeMap<TenantName, Shares>>,
    /// What each tenant's subtree holds back.
    held: HashMap<TenantName, Held>,
    /// Per parent (`None`: the top level), the sum of its children's `held`.
    below: HashMap<Option<TenantName>, Held>,
    /// Boxed: a hash table keeps about a third of its slots empty and a slot is as large as
    /// its value (a plan is some 270 bytes: 4.9 MB at 10,000 tenants unboxed, 3.3 MB boxed;
    /// issue 15, target 4).
    plans: HashMap<TenantName, Box<TenantPlan>>,
}

/// One tenant's plan before and after a change (`None`: no such tenant).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanChange {
    pub name: TenantName,
    pub before: Option<TenantPlan>,
    pub after: Option<TenantPlan>,
}

/// What setting (or deleting) one tenant changes, computed by `DesiredState::preview` and
/// made by `DesiredState::apply`.
#[derive(Debug, Clone)]
pub struct Change {
    pub name: TenantName,
    /// The spec after the change; `None` for a delete.
    pub spec: Option<TenantSpec>,
    /// From the top-level ancestor down to the tenant (the order its directories nest in),
    /// the plans before and after; no other tenant's plan changes.
    pub plans: Vec<PlanChange>,
    /// What the top-level tenants hold back together, before and after: the governor root's
    /// protection less the daemon's own.
    pub top_before: Protected,
    pub top_after: Protected,
    held: Vec<(TenantName, Held)>,
    below: Vec<(Option<TenantName>, Held)>,
}

impl Change {
    /// The tenant's chain of names from the top level down (its directories' nesting).
    pub fn lineage(&self) -> Vec<TenantName> {
        self.plans.iter().map(|p| p.name.clone()).collect()
    }
}

/// The sums after one tenant changed, from the tenant up to the top level.
struct Walk {
    held: Vec<(TenantName, Held)>,
    below: Vec<(Option<TenantName>, Held)>,
    top_before: Held,
    top_after: Held,
}

impl DesiredState {
    /// Plans every tenant once (O(n)).
    pub fn new(specs: BTreeMap<TenantName, TenantSpec>, params: PlanParams) -> DesiredState {
        let specs: BTreeMap<TenantName, Arc<TenantSpec>> =
            specs.into_iter().map(|(n, s)| (n, Arc::new(s))).collect();
        let plans = plan::plan(&specs, params)
            .into_iter()
            .map(|(n, p)| (n, Box::new(p)))
            .collect();
        let held: HashMap<TenantName, Held> = {
            let tree = tenant::Tree::new(&specs);
            let hard = tree.committed(|s| plan::own(s, Protection::Hard));
            let soft = tree.committed(|s| plan::own(s, Protection::Soft));
            let any = tree.committed(|s| s.memory.guarantee_bytes.map_or(0, |b| b.0));
            // A tenant in a cycle (never admitted) holds nothing, as in `plan`.
            let of = |m: &HashMap<&TenantName, u64>, n| m.get(n).copied().unwrap_or(0);
            specs
                .keys()
                .map(|n| {
                    let h = Held {
                        hard: of(&hard, n),
                        soft: of(&soft, n),
                        any: of(&any, n),
                    };
                    (n.clone(), h)
                })
                .collect()
        };
        let mut kids: HashMap<Option<TenantName>, BTreeMap<TenantName, Shares>> = HashMap::new();
        for (n, s) in &specs {
            kids.entry(s.parent.clone())
                .or_default()
                .insert(n.clone(), Shares::of(s));
        }
        let below = kids
            .iter()
            .map(|(p, set)| {
                let sum = set.keys().fold(Held::default(), |acc, c| {
                    acc.replace(Held::default(), held[c])
                });
                (p.clone(), sum)
            })
            .collect();
        DesiredState {
            params,
            specs,
            kids,
            held,
            below,
            plans,
        }
    }

    pub fn specs(&self) -> &BTreeMap<TenantName, Arc<TenantSpec>> {
        &self.specs
    }

    pub fn spec(&self, name: &TenantName) -> Option<&TenantSpec> {
        self.specs.get(name).map(|s| &**s)
    }

    pub fn plan(&self, name: &TenantName) -> Option<&TenantPlan> {
        self.plans.get(name).map(|p| &**p)
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The children of `parent` (`None`: the top level), in name order.
    pub fn children<'s>(
        &'s self,
        parent: Option<&TenantName>,
    ) -> impl Iterator<Item = &'s TenantName> + use<'s> {
        self.kids
            .get(&parent.cloned())
            .into_iter()
            .flat_map(|m| m.keys())
    }

    /// The chain of names from the top-level ancestor down to `name`.
    pub fn lineage(&self, name: &TenantName) -> Vec<TenantName> {
        tenant::lineage(name, &self.specs)
    }

    /// Whether `name` is `scope` or one of its descendants.
    pub fn within(&self, scope: &TenantName, name: &TenantName) -> bool {
        let mut cur = Some(name);
        for _ in 0..=self.specs.len() {
            match cur {
                Some(c) if c == scope => return true,
                Some(c) => cur = self.specs.get(c).and_then(|s| s.parent.as_ref()),
                None => return false,
            }
        }
        false
    }

    /// (memory.min, memory.low) the governor root needs: `plan::root_protection`, in O(1).
    pub fn root_protection(&self, daemon_min_bytes: u64) -> (u64, u64) {
        let top = self.below.get(&None).copied().unwrap_or_default();
        (top.hard + daemon_min_bytes, top.soft)
    }

    /// `tenant::committed_memory` of every tenant, in O(1).
    pub fn committed_memory(&self) -> u64 {
        self.below.get(&None).copied().unwrap_or_default().any
    }

    /// `tenant::admit` against every other tenant, answered from the indexes.
    pub fn admit(
        &self,
        name: &TenantName,
        spec: &TenantSpec,
        cap: Capacity,
    ) -> Result<(), DomainError> {
        tenant::admit(name, spec, &Except { state: self, name }, cap)
    }

    /// The sums after `name` takes `spec` (`None`: is removed), walking up from it.
    fn walk(&self, name: &TenantName, spec: Option<&TenantSpec>) -> Walk {
        let top_before = self.below.get(&None).copied().unwrap_or_default();
        let parent = spec.or(self.spec(name)).and_then(|s| s.parent.clone());
        let old = self.held.get(name).copied().unwrap_or_default();
        let new = match spec {
            Some(s) => {
                let mine = self.below.get(&Some(name.clone()));
                Held::own(s).max(mine.copied().unwrap_or_default())
            }
            None => Held::default(),
        };
        let mut w = Walk {
            held: spec.map(|_| (name.clone(), new)).into_iter().collect(),
            below: Vec::new(),
            top_before,
            top_after: top_before,
        };
        let (mut old, mut new, mut key) = (old, new, parent);
        // At most one step per tenant, so a corrupt cycle ends.
        for _ in 0..=self.specs.len() {
            let sum = self
                .below
                .get(&key)
                .copied()
                .unwrap_or_default()
                .replace(old, new);
            w.below.push((key.clone(), sum));
            let Some(p) = key else {
                w.top_after = sum;
                break;
            };
            // A parent that is missing (never admitted) ends the walk, as an orphan's subtree
            // counts nowhere above.
            let Some(ps) = self.specs.get(&p) else { break };
            if &p == name {
                break;
            }
            let p_new = Held::own(ps).max(sum);
            old = self.held.get(&p).copied().unwrap_or_default();
            new = p_new;
            key = ps.parent.clone();
            w.held.push((p, p_new));
        }
        w
    }

    /// What setting `name` to `spec` (`None`: deleting it) changes, without changing
    /// anything. `spec` must be admitted and keep the tenant's parent, and a deleted tenant
    /// must have no children.
    pub fn preview(&self, name: &TenantName, spec: Option<&TenantSpec>) -> Change {
        let w = self.walk(name, spec);
        let below: HashMap<&Option<TenantName>, Held> =
            w.below.iter().map(|(k, b)| (k, *b)).collect();
        let parent = spec.or(self.spec(name)).and_then(|s| s.parent.as_ref());
        let mut plans: Vec<PlanChange> = w
            .held
            .iter()
            .map(|(n, h)| {
                let s = if n == name {
                    spec.expect("the tenant is in the walk only with a spec")
                } else {
                    &*self.specs[n]
                };
                let key = Some(n.clone());
                let under = below
                    .get(&key)
                    .copied()
                    .or_else(|| self.below.get(&key).copied())
                    .unwrap_or_default();
                let children: Vec<&TenantSpec> = self
                    .children_with(n, name, spec, parent == Some(n))
                    .collect();
                PlanChange {
                    name: n.clone(),
                    before: self.plan(n).cloned(),
                    after: Some(plan::plan_tenant(
                        s,
                        self.params,
                        h.protected(),
                        under.protected(),
                        &children,
                    )),
                }
            })
            .collect();
        if spec.is_none() && self.specs.contains_key(name) {
            plans.insert(
                0,
                PlanChange {
                    name: name.clone(),
                    before: self.plan(name).cloned(),
                    after: None,
                },
            );
        }
        // Walked bottom up; directories nest top down.
        plans.reverse();
        Change {
            name: name.clone(),
            spec: spec.cloned(),
            plans,
            top_before: w.top_before.protected(),
            top_after: w.top_after.protected(),
            held: w.held,
            below: w.below,
        }
    }

    /// The specs of `of`'s children in name order, with `name` as `spec` when `of` is its
    /// parent (`is_parent`).
    fn children_with<'s>(
        &'s self,
        of: &TenantName,
        name: &'s TenantName,
        spec: Option<&'s TenantSpec>,
        is_parent: bool,
    ) -> impl Iterator<Item = &'s TenantSpec> {
        let mut names: Vec<&TenantName> = self.children(Some(of)).collect();
        if is_parent {
            match (names.binary_search(&name), spec) {
                (Ok(i), None) => {
                    names.remove(i);
                }
                (Err(i), Some(_)) => names.insert(i, name),
                _ => {}
            }
        }
        names.into_iter().map(move |n| {
            if n == name {
                spec.expect("present only with a spec")
            } else {
                &*self.specs[n]
            }
        })
    }

    /// Makes a change `preview` computed on this same state.
    pub fn apply(&mut self, c: Change) {
        match c.spec {
            Some(s) => {
                self.kids
                    .entry(s.parent.clone())
                    .or_default()
                    .insert(c.name.clone(), Shares::of(&s));
                self.specs.insert(c.name.clone(), Arc::new(s));
            }
            None => {
                if let Some(old) = self.specs.remove(&c.name) {
                    if let Some(set) = self.kids.get_mut(&old.parent) {
                        set.remove(&c.name);
                        if set.is_empty() {
                            self.kids.remove(&old.parent);
                        }
                    }
                    self.held.remove(&c.name);
                    self.below.remove(&Some(c.name.clone()));
                }
            }
        }
        self.held.extend(c.held);
        for (k, b) in c.below {
            if self.kids.contains_key(&k) {
                self.below.insert(k, b);
            } else {
                self.below.remove(&k);
            }
        }
        for p in c.plans {
            match p.after {
                Some(plan) => self.plans.insert(p.name, Box::new(plan)),
                None => self.plans.remove(&p.name),
            };
        }
    }

    /// `preview` and `apply` in one.
    pub fn set(&mut self, name: &TenantName, spec: Option<&TenantSpec>) {
        let c = self.preview(name, spec);
        self.apply(c);
    }
}

/// Every tenant of a state but one, as admission sees the others.
pub struct Except<'a> {
    pub state: &'a DesiredState,
    pub name: &'a TenantName,
}

impl Others for Except<'_> {
    fn get(&self, name: &TenantName) -> Option<&TenantSpec> {
        (name != self.name).then(|| self.state.spec(name)).flatten()
    }

    fn count(&self) -> usize {
        self.state.specs.len() - usize::from(self.state.specs.contains_key(self.name))
    }

    fn shares<'s>(&'s self, parent: Option<&TenantName>) -> Box<dyn Iterator<Item = Shares> + 's> {
        let kids = self.state.kids.get(&parent.cloned());
        Box::new(
            kids.into_iter()
                .flatten()
                .filter(|(n, _)| *n != self.name)
                .map(|(_, s)| *s),
        )
    }

    fn committed_memory_with(&self, name: &TenantName, spec: Option<&TenantSpec>) -> u64 {
        let old = self.state.specs.get(name);
        match (old, spec) {
            // A move to another parent (which the engine refuses, but admission may be asked
            // about): the walk assumes the parent stays, so count it the long way.
            (Some(o), Some(s)) if o.parent != s.parent => {
                let mut all = self.state.specs.clone();
                all.insert(name.clone(), Arc::new(s.clone()));
                tenant::committed_memory(&all)
            }
            _ => self.state.walk(name, spec).top_after.any,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tenant::{CpuSpec, MemorySpec};
    use crate::domain::units::{Bytes, Percent};
    use proptest::prelude::*;

    fn n(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    const CAP: Capacity = Capacity {
        cpus: 4.0,
        memory_bytes: 64 << 20,
        memory_reserve_bytes: 4 << 20,
    };

    /// The specs of `s` as the callers of `DesiredState::new` hold them (owned).
    fn owned(s: &DesiredState) -> BTreeMap<TenantName, TenantSpec> {
        let all = s.specs.iter();
        all.map(|(n, sp)| (n.clone(), TenantSpec::clone(sp)))
            .collect()
    }

    /// The state agrees with planning everything from scratch.
    fn check(s: &DesiredState) {
        let want = plan::plan(&s.specs, s.params);
        assert_eq!(s.plans.len(), want.len());
        for (name, p) in &want {
            assert_eq!(s.plan(name), Some(p), "plan of {name}");
        }
        assert_eq!(
            s.root_protection(7),
            plan::root_protection(&s.specs, 7),
            "root protection"
        );
        assert_eq!(s.committed_memory(), tenant::committed_memory(&s.specs));
        let fresh = DesiredState::new(owned(s), s.params);
        assert_eq!(fresh.held, s.held, "held");
        assert_eq!(fresh.below, s.below, "below");
        assert_eq!(fresh.kids, s.kids, "kids");
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Set tenant `i % 12` with a parent among the first tenants (or none).
        Put {
            i: usize,
            parent: Option<usize>,
            cpu: Option<f64>,
            mem: Option<(u64, bool)>,
        },
        Delete(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (
                0usize..12,
                proptest::option::of(0usize..4),
                proptest::option::of(1.0f64..60.0),
                proptest::option::of((1u64..(24 << 20), any::<bool>())),
            )
                .prop_map(|(i, parent, cpu, mem)| Op::Put { i, parent, cpu, mem }),
            1 => (0usize..12).prop_map(Op::Delete),
        ]
    }

    fn name(i: usize) -> TenantName {
        n(&format!("t{i:02}"))
    }

    proptest! {
        /// After any sequence of admitted changes and refused ones, the plans, the root's
        /// protection, admission's memory total and admission's answers are those of the whole
        /// tree planned and admitted from scratch; the plans a change reports as changed are
        /// exactly the ones that differ.
        #[test]
        fn changes_agree_with_planning_from_scratch(ops in proptest::collection::vec(op(), 1..40)) {
            let mut s = DesiredState::new(BTreeMap::new(), PlanParams::default());
            for o in ops {
                match o {
                    Op::Put { i, parent, cpu, mem } => {
                        let t = name(i);
                        let spec = TenantSpec {
                            parent: parent.map(name),
                            cpu: CpuSpec { guarantee_pct: cpu.map(|c| Percent((c * 100.0).round() / 100.0)), limit_pct: None },
                            memory: MemorySpec {
                                guarantee_bytes: mem.map(|m| Bytes(m.0)),
                                protection: if mem.is_some_and(|m| m.1) { Protection::Soft } else { Protection::Hard },
                                ..Default::default()
                            },
                            ..Default::default()
                        };
                        let mut others = owned(&s);
                        let old = others.remove(&t);
                        let want = tenant::admit(&t, &spec, &others, CAP);
                        let got = s.admit(&t, &spec, CAP);
                        prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
                        let moves = old.is_some_and(|o| o.parent != spec.parent);
                        if got.is_ok() && !moves {
                            let before = plan::plan(&s.specs, s.params);
                            let c = s.preview(&t, Some(&spec));
                            s.apply(c.clone());
                            let after = plan::plan(&s.specs, s.params);
                            for (k, p) in &after {
                                if before.get(k) != Some(p) {
                                    prop_assert!(c.plans.iter().any(|pc| &pc.name == k), "{k} changed unreported");
                                }
                            }
                        }
                    }
                    Op::Delete(i) => {
                        let t = name(i);
                        if s.specs.contains_key(&t) && s.children(Some(&t)).next().is_none() {
                            let c = s.preview(&t, None);
                            prop_assert_eq!(c.plans.last().map(|p| (&p.name, p.after.is_none())), Some((&t, true)));
                            s.apply(c);
                        }
                    }
                }
                check(&s);
            }
        }
    }

    /// A change in a tree of 100 x 100 reports the tenant and its parent only; a change at
    /// the top level the tenant alone.
    #[test]
    fn a_change_touches_the_tenant_and_its_ancestors_only() {
        let mut specs = BTreeMap::new();
        for i in 0..100 {
            let top = n(&format!("p{i:03}"));
            specs.insert(top.clone(), TenantSpec::default());
            for j in 0..100 {
                let spec = TenantSpec {
                    parent: Some(top.clone()),
                    ..Default::default()
                };
                specs.insert(n(&format!("p{i:03}-c{j:03}")), spec);
            }
        }
        let s = DesiredState::new(specs, PlanParams::default());
        let mut spec = s.spec(&n("p007-c042")).unwrap().clone();
        spec.memory.guarantee_bytes = Some(Bytes(1 << 20));
        let c = s.preview(&n("p007-c042"), Some(&spec));
        let names: Vec<&str> = c.plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["p007", "p007-c042"]);
        assert_eq!(c.top_after.hard, (1 << 20));
        let c = s.preview(&n("p001"), Some(&TenantSpec::default()));
        assert_eq!(c.plans.len(), 1);
        let mut s2 = s.clone();
        s2.set(&n("new"), Some(&TenantSpec::default()));
        check(&s2);
    }
}
