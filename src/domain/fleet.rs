//! A fleet of nodes sharing one desired state (issue 19), the pure part: which tenants a
//! node's labels select (`selects`, `selected`), per-node admission of a change
//! (`admit_on_nodes`, the placement rules' conflicts per node among it:
//! `placement_on_nodes`), and when a node counts as down (`is_down`). No clock, no IO: times
//! are arguments.
//!
//! Layer 0 (see `lib.rs`): imports only `domain` (tenant rules).

use super::error::DomainError;
use super::placement::{IdOrName, PlacementRule, check_conflicts};
use super::tenant::{self, Capacity, TenantName, TenantSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Labels of a node (`node_labels`), or a tenant's selector over them (`TenantSpec::nodes`).
pub type Labels = BTreeMap<String, String>;

/// Whether `selector` (absent: every node) matches a node carrying `labels`: every label of
/// the selector is on the node with the same value.
pub fn selects(selector: Option<&Labels>, labels: &Labels) -> bool {
    selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The tenants of `all` a node with `labels` enforces: its own selector matches and so does
/// every ancestor's (a child lives inside its parent's cgroup, so it goes nowhere its parent
/// does not).
pub fn selected(
    all: &BTreeMap<TenantName, TenantSpec>,
    labels: &Labels,
) -> BTreeMap<TenantName, TenantSpec> {
    let mut out = BTreeMap::new();
    for name in tenant::topo_order(all) {
        let Some(spec) = all.get(&name) else { continue };
        let parent_here = spec.parent.as_ref().is_none_or(|p| out.contains_key(p));
        if parent_here && selects(spec.nodes.as_ref(), labels) {
            out.insert(name, spec.clone());
        }
    }
    out
}

/// A node as admission sees it: its name, labels and what its host offers.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCapacity {
    pub name: String,
    pub labels: Labels,
    pub capacity: Capacity,
}

/// Checks `name` taking `spec` across the fleet: the spec is valid, its parent exists in the
/// fleet (`all`, which may hold `name`'s current spec), and on every node that would enforce
/// it the tenant fits beside the others selected there (`tenant::admit` with that node's
/// capacity). A refusal names the node and the headroom it has left. Returns the names of
/// the nodes that would enforce it.
pub fn admit_on_nodes(
    name: &TenantName,
    spec: &TenantSpec,
    all: &BTreeMap<TenantName, TenantSpec>,
    nodes: &[NodeCapacity],
) -> Result<Vec<String>, DomainError> {
    tenant::validate_spec(name, spec)?;
    if let Some(p) = &spec.parent
        && !all.contains_key(p)
    {
        return Err(DomainError::NotFound {
            field: "parent".into(),
            message: format!("parent tenant '{p}' does not exist in the fleet: create it first"),
        });
    }
    placement_on_nodes(name, spec, all, nodes)?;
    let mut after = all.clone();
    after.insert(name.clone(), spec.clone());
    let mut on = Vec::new();
    for node in nodes {
        let mut here = selected(&after, &node.labels);
        if here.remove(name).is_none() {
            continue;
        }
        tenant::admit(name, spec, &here, node.capacity).map_err(|e| on_node(&node.name, e))?;
        on.push(node.name.clone());
    }
    Ok(on)
}

/// Checks the placement rules (`domain::placement`) where `name` taking `spec` puts a rule
/// on a node: a node is where a conflict matters, since each node places its own processes.
/// On every node that would enforce a rule that is new there (`name`'s changed rule, or a
/// tenant the change brings onto the node, a parent's selector moving its children too),
/// that rule must conflict with no other rule enforced there: the same check as a single
/// host's PUT (409 on `placement` naming both tenants), with the node in front.
///
/// User and group names are resolved on each node against its own accounts, which the
/// fleet does not know: here a name stands for itself (the same name in two rules is the
/// same id, a name is never a number's id). So two rules naming the same user or the same
/// uid are refused here; a rule by name and one by that name's number on some node pass here
/// and are refused on that node when it applies the second (reported failed, with both names).
pub fn placement_on_nodes(
    name: &TenantName,
    spec: &TenantSpec,
    all: &BTreeMap<TenantName, TenantSpec>,
    nodes: &[NodeCapacity],
) -> Result<(), DomainError> {
    let changed = all.get(name).and_then(|s| s.placement.as_ref()) != spec.placement.as_ref();
    let mut after = all.clone();
    after.insert(name.clone(), spec.clone());
    let (mut users, mut groups) = NameIds::of(&after);
    // Each rule resolved once, when a node first needs it; `None` when it does not resolve
    // (validation refused such a rule when it was written).
    let mut rules: BTreeMap<TenantName, Option<PlacementRule>> = BTreeMap::new();
    for node in nodes {
        let before = selected(all, &node.labels);
        let here = selected(&after, &node.labels);
        let new: Vec<&TenantName> = here
            .iter()
            .filter(|(t, s)| {
                s.placement.is_some() && ((*t == name && changed) || !before.contains_key(*t))
            })
            .map(|(t, _)| t)
            .collect();
        if new.is_empty() {
            continue;
        }
        for (t, s) in &here {
            if let Some(p) = &s.placement {
                rules.entry(t.clone()).or_insert_with(|| {
                    p.resolve(|u| Some(users.id(u)), |g| Some(groups.id(g)))
                        .ok()
                });
            }
        }
        let enforced: Vec<(&TenantName, &PlacementRule)> = here
            .keys()
            .filter_map(|t| Some((t, rules.get(t)?.as_ref()?)))
            .collect();
        for t in new {
            if let Some(Some(rule)) = rules.get(t) {
                check_conflicts(t, rule, enforced.iter().copied())
                    .map_err(|e| on_node(&node.name, e))?;
            }
        }
    }
    Ok(())
}

/// Ids standing for user (or group) names in `placement_on_nodes`: the same name always
/// gets the same id, and no id any rule gives as a number.
struct NameIds {
    taken: BTreeSet<u32>,
    given: BTreeMap<String, u32>,
    next: u32,
}

impl NameIds {
    /// One for the users and one for the groups of every rule in `all`.
    fn of(all: &BTreeMap<TenantName, TenantSpec>) -> (NameIds, NameIds) {
        let numbers = |list: Option<&Vec<IdOrName>>| -> Vec<u32> {
            list.into_iter()
                .flatten()
                .filter_map(|i| match i {
                    IdOrName::Id(id) => Some(*id),
                    IdOrName::Name(_) => None,
                })
                .collect()
        };
        let (mut uids, mut gids) = (BTreeSet::new(), BTreeSet::new());
        for p in all.values().filter_map(|s| s.placement.as_ref()) {
            uids.extend(numbers(p.uids.as_ref()));
            gids.extend(numbers(p.gids.as_ref()));
        }
        let ids = |taken| NameIds {
            taken,
            given: BTreeMap::new(),
            // (uid_t)-1 is nobody's id; below it, downwards.
            next: u32::MAX - 1,
        };
        (ids(uids), ids(gids))
    }

    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.given.get(name) {
            return *id;
        }
        while self.taken.contains(&self.next) {
            self.next -= 1;
        }
        let id = self.next;
        self.next -= 1;
        self.given.insert(name.to_string(), id);
        id
    }
}

/// `e` with the node it happened on in front of its message.
fn on_node(node: &str, e: DomainError) -> DomainError {
    let message = format!("on node '{node}': {}", e.message());
    match e {
        DomainError::Invalid { field, .. } => DomainError::Invalid { field, message },
        DomainError::Conflict { field, .. } => DomainError::Conflict { field, message },
        DomainError::NotFound { field, .. } => DomainError::NotFound { field, message },
    }
}

/// A node counts as down when its last heartbeat is older than `timeout_ms` at `now_ms`.
pub fn is_down(last_heartbeat_ms: i64, now_ms: i64, timeout_ms: i64) -> bool {
    now_ms.saturating_sub(last_heartbeat_ms) > timeout_ms
}

/// What a node reports about a tenant selected for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// The node's desired state holds the fleet's spec and its kernel holds the plan.
    InForce,
    /// The node holds the fleet's spec, but its kernel does not hold every planned value.
    Drifted,
    /// The node could not apply the fleet's spec (the reason says why).
    Failed,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::InForce => "in_force",
            TenantState::Drifted => "drifted",
            TenantState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<TenantState> {
        [
            TenantState::InForce,
            TenantState::Drifted,
            TenantState::Failed,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::units::Percent;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn name(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    fn spec(cpu: f64, sel: Option<&[(&str, &str)]>, parent: Option<&str>) -> TenantSpec {
        let mut s = TenantSpec {
            nodes: sel.map(labels),
            parent: parent.map(name),
            ..Default::default()
        };
        s.cpu.guarantee_pct = Some(Percent(cpu));
        s
    }

    /// Nodes of 4 CPUs and 8 GiB, each with a `role` label: (name, role).
    fn nodes(roles: &[(&str, &str)]) -> Vec<NodeCapacity> {
        let capacity = Capacity {
            cpus: 4.0,
            memory_bytes: 8 << 30,
            memory_reserve_bytes: 0,
        };
        roles
            .iter()
            .map(|(n, role)| NodeCapacity {
                name: n.to_string(),
                labels: labels(&[("role", role)]),
                capacity,
            })
            .collect()
    }

    #[test]
    fn a_selector_matches_when_every_label_does() {
        let node = labels(&[("role", "web"), ("zone", "a")]);
        for (sel, want) in [
            (None, true),
            (Some(labels(&[])), true),
            (Some(labels(&[("role", "web")])), true),
            (Some(labels(&[("role", "web"), ("zone", "a")])), true),
            (Some(labels(&[("role", "db")])), false),
            (Some(labels(&[("role", "web"), ("zone", "b")])), false),
            (Some(labels(&[("rack", "1")])), false),
        ] {
            assert_eq!(selects(sel.as_ref(), &node), want, "{sel:?}");
        }
    }

    #[test]
    fn a_child_goes_only_where_its_parent_goes() {
        let all = BTreeMap::from([
            (name("p"), spec(50.0, Some(&[("role", "web")]), None)),
            (name("c"), spec(50.0, None, Some("p"))),
            (name("d"), spec(10.0, Some(&[("role", "db")]), None)),
            (name("e"), spec(10.0, None, None)),
        ]);
        let web = selected(&all, &labels(&[("role", "web")]));
        assert_eq!(
            web.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["c", "e", "p"]
        );
        let db = selected(&all, &labels(&[("role", "db")]));
        assert_eq!(
            db.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["d", "e"]
        );
    }

    #[test]
    fn admission_is_per_node_and_names_the_node_and_its_headroom() {
        let nodes = nodes(&[("n1", "web"), ("n2", "web"), ("n3", "db")]);
        let all = BTreeMap::from([
            (name("web1"), spec(60.0, Some(&[("role", "web")]), None)),
            (name("db1"), spec(70.0, Some(&[("role", "db")]), None)),
        ]);
        // 40% more fits on the web nodes (60 taken) and is not placed on n3.
        let on = admit_on_nodes(
            &name("web2"),
            &spec(40.0, Some(&[("role", "web")]), None),
            &all,
            &nodes,
        )
        .unwrap();
        assert_eq!(on, ["n1", "n2"]);
        // 50% for every node overcommits the first web node (60 taken): refused naming it.
        let e = admit_on_nodes(&name("all"), &spec(50.0, None, None), &all, &nodes).unwrap_err();
        assert!(matches!(e, DomainError::Conflict { .. }), "{e:?}");
        assert_eq!(e.field(), "cpu.guarantee_pct");
        assert!(
            e.message().contains("on node 'n1'") && e.message().contains("at most 40% is left"),
            "{e}"
        );
        let e = admit_on_nodes(
            &name("db2"),
            &spec(40.0, Some(&[("role", "db")]), None),
            &all,
            &nodes,
        )
        .unwrap_err();
        assert!(
            e.message().contains("on node 'n3'") && e.message().contains("at most 30% is left"),
            "{e}"
        );
        // Replacing a tenant's own spec does not count it twice.
        assert_eq!(
            admit_on_nodes(
                &name("db1"),
                &spec(100.0, Some(&[("role", "db")]), None),
                &all,
                &nodes
            )
            .unwrap(),
            ["n3"]
        );
        // A selector no node matches is accepted and enforced nowhere.
        assert!(
            admit_on_nodes(
                &name("x"),
                &spec(100.0, Some(&[("role", "gpu")]), None),
                &all,
                &nodes
            )
            .unwrap()
            .is_empty()
        );
        // The parent must exist in the fleet.
        let e =
            admit_on_nodes(&name("k"), &spec(10.0, None, Some("nope")), &all, &nodes).unwrap_err();
        assert_eq!(e.field(), "parent");
        // An invalid selector is refused naming the label.
        let bad = spec(10.0, Some(&[("-x", "y")]), None);
        let e = admit_on_nodes(&name("b"), &bad, &all, &nodes).unwrap_err();
        assert_eq!(e.field(), "nodes.-x");
    }

    /// Issue 19: the fleet refuses what a single host refuses, per node: two rules at the same
    /// priority and specificity that can match one process, where both are enforced.
    #[test]
    fn placement_rules_conflict_only_where_both_are_enforced() {
        let nodes = nodes(&[("n1", "web"), ("n2", "db")]);
        let placed = |sel: Option<&[(&str, &str)]>, parent: Option<&str>, rule| {
            let mut s = spec(10.0, sel, parent);
            s.placement = Some(serde_json::from_value(rule).unwrap());
            s
        };
        let web = Some(&[("role", "web")][..]);
        let db = Some(&[("role", "db")][..]);
        let alice = serde_json::json!({"uids": ["alice"]});
        let all = BTreeMap::from([(name("a"), placed(web, None, alice.clone()))]);

        // The same user at the same priority on the same node: refused naming both and the node.
        let e = admit_on_nodes(&name("b"), &placed(None, None, alice.clone()), &all, &nodes)
            .unwrap_err();
        assert!(matches!(e, DomainError::Conflict { .. }), "{e:?}");
        assert_eq!(e.field(), "placement");
        assert!(
            e.message().starts_with("on node 'n1': ")
                && e.message().contains("tenants 'b' and 'a'"),
            "{e}"
        );
        // On another node only: no process can meet both rules.
        admit_on_nodes(&name("b"), &placed(db, None, alice.clone()), &all, &nodes).unwrap();
        // A higher priority, or a uid number: no conflict here (a node where alice is that
        // number refuses the second when it applies it).
        let high = serde_json::json!({"uids": ["alice"], "priority": 5});
        admit_on_nodes(&name("b"), &placed(web, None, high), &all, &nodes).unwrap();
        let num = serde_json::json!({"uids": [1000]});
        admit_on_nodes(&name("b"), &placed(web, None, num.clone()), &all, &nodes).unwrap();
        let mut with_num = all.clone();
        with_num.insert(name("n"), placed(web, None, num.clone()));
        let e = admit_on_nodes(&name("b"), &placed(web, None, num), &with_num, &nodes).unwrap_err();
        assert!(e.message().contains("tenants 'b' and 'n'"), "{e}");

        // Moving a tenant with its rule onto the node: refused; so is a parent whose new
        // selector brings a child with a conflicting rule there.
        let mut two = all.clone();
        two.insert(name("b"), placed(db, None, alice.clone()));
        let e = admit_on_nodes(&name("b"), &placed(None, None, alice.clone()), &two, &nodes)
            .unwrap_err();
        assert!(e.message().starts_with("on node 'n1': "), "{e}");
        let mut family = all.clone();
        family.insert(name("p"), spec(10.0, db, None));
        family.insert(name("c"), placed(None, Some("p"), alice.clone()));
        let e = admit_on_nodes(&name("p"), &spec(10.0, None, None), &family, &nodes).unwrap_err();
        assert!(
            e.message().starts_with("on node 'n1': ")
                && e.message().contains("tenants 'c' and 'a'"),
            "{e}"
        );

        // A pair that conflicts already (stored before this check) does not block a change
        // that brings no rule anywhere new.
        let mut old = all.clone();
        old.insert(name("b"), placed(web, None, alice.clone()));
        let mut cpu = placed(web, None, alice);
        cpu.cpu.guarantee_pct = Some(Percent(20.0));
        admit_on_nodes(&name("b"), &cpu, &old, &nodes).unwrap();
        admit_on_nodes(&name("z"), &spec(5.0, None, None), &old, &nodes).unwrap();
    }

    #[test]
    fn down_after_the_timeout() {
        assert!(!is_down(1_000, 11_000, 10_000));
        assert!(is_down(1_000, 11_001, 10_000));
        assert!(!is_down(5_000, 1_000, 10_000), "a clock behind is not down");
    }

    #[test]
    fn states_round_trip() {
        for s in [
            TenantState::InForce,
            TenantState::Drifted,
            TenantState::Failed,
        ] {
            assert_eq!(TenantState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
    }
}
