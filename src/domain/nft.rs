//! The nftables table that enforces the egress policies, `table inet tenantd`, as a pure
//! function of the desired state: the model (`Table`), its text for one `nft -f -`
//! transaction (`Table::script`), what a listing of the kernel's table says (`Listing`, filled
//! by the `net` layer from `nft -j list table`), and how the two differ (`drift`).
//!
//! The table: one base chain `egress` on the output hook, whose rules look up the socket's
//! cgroup at each level in a verdict map (`socket cgroupv2 level N vmap @levelN`), deepest
//! level first, so a tenant with a policy of its own is matched before the ancestor whose
//! policy it would otherwise inherit; each map element (`"tenantd/acme" : goto t_acme`) sends
//! the packet to the policy's chain, whose rules end in the default verdict. A map per level
//! makes a packet cost one lookup per level, whatever the number of tenants. Every rule of a
//! policy chain has a counter and a comment naming its entry (`deny[0] 10.0.0.0/8`), which is
//! how counters are read back and carried over when the table is written again.
//!
//! `socket cgroupv2 level N "path"`: nft resolves the path below /sys/fs/cgroup to the
//! cgroup's id when it loads the rule, and the kernel compares the id of the socket's cgroup's
//! ancestor at level N (its depth below the root of the cgroup2 hierarchy) with it. The level
//! is computed here from the mount (`NftCgroup::locate`), never configured.
//!
//! Layer 0: imports `egress` and `tenant` of the domain only.

use super::egress::{Destination, EgressDefault, EgressSpec, List};
use super::tenant::TenantName;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The table's family and name: tenantd's own, the only one it ever writes or deletes.
pub const TABLE: &str = "inet tenantd";

/// The base chain on the output hook.
pub const BASE_CHAIN: &str = "egress";

/// Where nft resolves `socket cgroupv2` paths (a fixed prefix in nft itself).
pub const NFT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup as a `socket cgroupv2` match names it: its path below /sys/fs/cgroup and its
/// level (depth below the root of the cgroup2 hierarchy).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NftCgroup {
    pub path: String,
    pub level: u32,
}

impl NftCgroup {
    /// The `socket cgroupv2` form of the cgroup directory `dir`, on a cgroup2 filesystem
    /// mounted at `mount_point` whose root is `mount_root` inside the hierarchy (mountinfo's
    /// fourth field: "/" unless a subtree is mounted). The level is the root's depth plus the
    /// directory's depth below the mount point.
    pub fn locate(dir: &Path, mount_point: &Path, mount_root: &str) -> Result<NftCgroup, String> {
        let below_mount = dir.strip_prefix(mount_point).map_err(|_| {
            format!(
                "{} is not below the cgroup2 mount {}",
                dir.display(),
                mount_point.display()
            )
        })?;
        let below_nft = dir.strip_prefix(NFT_CGROUP_ROOT).map_err(|_| {
            format!(
                "nft resolves `socket cgroupv2` paths below {NFT_CGROUP_ROOT} only, and {} is not below it",
                dir.display()
            )
        })?;
        let path = below_nft.to_string_lossy().into_owned();
        if path.is_empty() {
            return Err(format!(
                "{} is the cgroup2 root itself, which every socket is below",
                dir.display()
            ));
        }
        if let Some(c) = path.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '@' | ':' | '+'))
        }) {
            return Err(format!(
                "the cgroup path '{path}' contains '{c}', which tenantd does not put in an nft string"
            ));
        }
        let depth = |s: &str| s.split('/').filter(|c| !c.is_empty()).count() as u32;
        let level = depth(mount_root) + below_mount.components().count() as u32;
        Ok(NftCgroup { path, level })
    }
}

/// A tenant whose own policy goes into the table, with its cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub tenant: TenantName,
    pub cgroup: NftCgroup,
    pub policy: EgressSpec,
}

/// One match of a rule: `left right`, the way nft writes it and reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub left: &'static str,
    pub right: Vec<String>,
}

impl Match {
    fn one(left: &'static str, right: impl Into<String>) -> Match {
        Match {
            left,
            right: vec![right.into()],
        }
    }

    /// nft syntax: a set of values as `{ a, b }`.
    fn text(&self) -> String {
        match self.right.as_slice() {
            [one] => format!("{} {one}", self.left),
            many => format!("{} {{ {} }}", self.left, many.join(", ")),
        }
    }

    /// The form `drift` compares: `left a,b` (a set's values sorted).
    pub fn signature(&self) -> String {
        let mut r = self.right.clone();
        r.sort();
        format!("{} {}", self.left, r.join(","))
    }
}

/// What a rule does with a packet it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject => "reject",
        }
    }

    /// nft syntax. A refusal answers ICMP "administratively prohibited" (a TCP connect fails
    /// at once instead of timing out; a UDP send fails with EPERM).
    fn text(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject => "reject with icmpx type admin-prohibited",
        }
    }
}

/// One rule of a policy chain: the entry it stands for (its comment), its matches, its
/// verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `deny[0] 10.0.0.0/8` or `default`: the comment, and the key its counter goes by.
    pub comment: String,
    /// The spec's name of the entry (`deny[0]`, `default`) and its destination (`*` for the
    /// default), for metrics.
    pub entry: String,
    pub destination: String,
    pub matches: Vec<Match>,
    pub verdict: Verdict,
}

/// A policy chain: one tenant's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    pub name: String,
    pub tenant: TenantName,
    pub rules: Vec<Rule>,
}

/// The whole table: per level, the map elements (cgroup path -> chain), and the chains.
/// Empty when no tenant has a policy: then the table is not there at all.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub maps: BTreeMap<u32, Vec<(String, String)>>,
    pub chains: Vec<Chain>,
}

/// Packets and bytes a rule's counter holds, by (chain, comment).
pub type Counters = BTreeMap<(String, String), (u64, u64)>;

/// The chain of a tenant's policy.
pub fn chain_name(t: &TenantName) -> String {
    format!("t_{t}")
}

/// The map of one level.
pub fn map_name(level: u32) -> String {
    format!("level{level}")
}

/// The matches that select `d`'s packets.
pub fn matches(d: &Destination) -> Vec<Match> {
    let mut m = Vec::new();
    let (family, nfproto) = if d.net.is_v4() {
        ("ip daddr", "ipv4")
    } else {
        ("ip6 daddr", "ipv6")
    };
    let full = d.net.prefix_len() == if d.net.is_v4() { 32 } else { 128 };
    if d.net.prefix_len() == 0 {
        // Every address of the family (nft drops a /0 prefix match when it loads it).
        m.push(Match::one("meta nfproto", nfproto));
    } else if full {
        m.push(Match::one(family, d.net.addr.to_string()));
    } else {
        m.push(Match::one(
            family,
            format!("{}/{}", d.net.addr, d.net.prefix_len()),
        ));
    }
    match (d.proto, d.ports) {
        (None, None) => {}
        (Some(p), None) => m.push(Match::one("meta l4proto", p.name())),
        (Some(p), Some(ports)) => m.push(Match::one(
            if p == super::egress::Proto::Tcp {
                "tcp dport"
            } else {
                "udp dport"
            },
            ports.to_string(),
        )),
        (None, Some(ports)) => {
            m.push(Match {
                left: "meta l4proto",
                right: vec!["tcp".into(), "udp".into()],
            });
            m.push(Match::one("th dport", ports.to_string()));
        }
    }
    m
}

/// A policy's rules in the order they are checked, then its default.
pub fn rules(p: &EgressSpec) -> Vec<Rule> {
    let mut out: Vec<Rule> = p
        .ordered()
        .into_iter()
        .map(|(list, i, d)| {
            let entry = format!("{}[{i}]", list.name());
            Rule {
                comment: format!("{entry} {d}"),
                entry,
                destination: d.to_string(),
                matches: matches(d),
                verdict: match list {
                    List::Allow => Verdict::Accept,
                    List::Deny => Verdict::Reject,
                },
            }
        })
        .collect();
    out.push(Rule {
        comment: "default".into(),
        entry: "default".into(),
        destination: "*".into(),
        matches: Vec::new(),
        verdict: match p.default {
            EgressDefault::Allow => Verdict::Accept,
            EgressDefault::Deny => Verdict::Reject,
        },
    });
    out
}

impl Table {
    /// The table for these owners (tenants with a policy of their own and a cgroup).
    pub fn of(owners: &[Owner]) -> Table {
        let mut t = Table::default();
        for o in owners {
            let chain = chain_name(&o.tenant);
            t.maps
                .entry(o.cgroup.level)
                .or_default()
                .push((o.cgroup.path.clone(), chain.clone()));
            t.chains.push(Chain {
                name: chain,
                tenant: o.tenant.clone(),
                rules: rules(&o.policy),
            });
        }
        for els in t.maps.values_mut() {
            els.sort();
        }
        t.chains.sort_by(|a, b| a.name.cmp(&b.name));
        t
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// The nft script that makes the kernel's table this one, in one transaction: the table
    /// is created if missing (so the delete cannot fail), deleted with everything in it, and
    /// written whole; no other table is named. Each counter starts from `carry` (what the
    /// rule of the same chain and comment counted before), so a rewrite does not reset it.
    /// An empty table is only deleted.
    pub fn script(&self, carry: &Counters) -> String {
        let mut s = format!("table {TABLE}\ndelete table {TABLE}\n");
        if self.is_empty() {
            return s;
        }
        let _ = writeln!(s, "table {TABLE} {{");
        for (level, els) in &self.maps {
            let _ = writeln!(
                s,
                "\tmap {} {{\n\t\ttype cgroupsv2 : verdict",
                map_name(*level)
            );
            let items: Vec<String> = els
                .iter()
                .map(|(path, chain)| format!("\"{path}\" : goto {chain}"))
                .collect();
            let _ = writeln!(s, "\t\telements = {{ {} }}\n\t}}", items.join(", "));
        }
        for c in &self.chains {
            let _ = writeln!(s, "\tchain {} {{", c.name);
            for r in &c.rules {
                let (p, b) = carry
                    .get(&(c.name.clone(), r.comment.clone()))
                    .copied()
                    .unwrap_or((0, 0));
                let mut line = String::from("\t\t");
                for m in &r.matches {
                    line.push_str(&m.text());
                    line.push(' ');
                }
                let _ = writeln!(
                    line,
                    "counter packets {p} bytes {b} {} comment \"{}\"",
                    r.verdict.text(),
                    r.comment
                );
                s.push_str(&line);
            }
            s.push_str("\t}\n");
        }
        let _ = writeln!(
            s,
            "\tchain {BASE_CHAIN} {{\n\t\ttype filter hook output priority 0; policy accept;"
        );
        for level in self.maps.keys().rev() {
            let _ = writeln!(
                s,
                "\t\tsocket cgroupv2 level {level} vmap @{}",
                map_name(*level)
            );
        }
        s.push_str("\t}\n}\n");
        s
    }
}

/// A rule as a listing of the kernel's table shows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListedRule {
    pub comment: Option<String>,
    /// Each match's signature (`Match::signature`); other expressions as `?name`.
    pub matches: Vec<String>,
    /// `accept`, `reject`, `goto NAME`, `vmap @NAME`, or the expression's name.
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

/// A chain as listed: its hook (base chains only) and rules.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListedChain {
    /// (hook, policy) of a base chain.
    pub hook: Option<(String, String)>,
    pub rules: Vec<ListedRule>,
}

/// What `nft -j list table inet tenantd` says (`None` when there is no such table): maps
/// with their elements (key as nft prints it: the path of the cgroup with that id below
/// /sys/fs/cgroup, or the bare id when no such cgroup exists any more), chains with rules.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Listing {
    pub maps: BTreeMap<String, Vec<(String, String)>>,
    pub chains: BTreeMap<String, ListedChain>,
}

impl Listing {
    /// Every rule counter, by (chain, comment); rules without a comment are not ours.
    pub fn counters(&self) -> Counters {
        let mut out = Counters::new();
        for (name, c) in &self.chains {
            for r in &c.rules {
                if let Some(k) = &r.comment {
                    let e = out.entry((name.clone(), k.clone())).or_default();
                    e.0 += r.packets;
                    e.1 += r.bytes;
                }
            }
        }
        out
    }
}

/// One policy rule's counter, as `/metrics` exports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleCount {
    /// The tenant whose policy the rule is (children without one count here too).
    pub tenant: String,
    /// `deny[0]`, `allow[2]`, `default`.
    pub rule: String,
    /// The entry's destination, `*` for the default.
    pub destination: String,
    /// `accept` or `reject`.
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

impl Listing {
    /// Every counted rule of a policy chain (`t_NAME`), named by its comment.
    pub fn rule_counts(&self) -> Vec<RuleCount> {
        let mut out = Vec::new();
        for (chain, c) in &self.chains {
            let Some(tenant) = chain.strip_prefix("t_") else {
                continue;
            };
            for r in &c.rules {
                let Some(comment) = &r.comment else { continue };
                let (rule, destination) = comment.split_once(' ').unwrap_or((comment, "*"));
                out.push(RuleCount {
                    tenant: tenant.to_string(),
                    rule: rule.to_string(),
                    destination: destination.to_string(),
                    verdict: r.verdict.clone(),
                    packets: r.packets,
                    bytes: r.bytes,
                });
            }
        }
        out
    }
}

/// What `/metrics` shows of the egress policies: every rule's counter, and for each tenant
/// with a policy of its own whether it is in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressSnapshot {
    pub counts: Vec<RuleCount>,
    pub in_force: Vec<(String, bool)>,
}

/// One way the kernel's table differs from the desired one, with the tenant it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub tenant: Option<TenantName>,
    /// What is wrong, as the event log says it.
    pub what: String,
}

/// How the kernel's table (`None`: absent) differs from `want`; empty when it is as written.
/// Compared: that the table exists when it should, the base chain's hook, policy and map
/// lookups, each map's elements (a recreated cgroup shows as its old bare id), and each
/// chain's rules by comment, matches and verdict. Counters are not compared.
pub fn drift(want: &Table, have: Option<&Listing>) -> Vec<Drift> {
    let global = |what: String| Drift { tenant: None, what };
    let Some(have) = have else {
        if want.is_empty() {
            return Vec::new();
        }
        return vec![global(format!("table {TABLE} was missing"))];
    };
    if want.is_empty() {
        return vec![global(format!(
            "table {TABLE} was there with no tenant policy to enforce"
        ))];
    }
    let mut out = Vec::new();
    let tenant_of = |chain: &str| {
        want.chains
            .iter()
            .find(|c| c.name == chain)
            .map(|c| c.tenant.clone())
    };
    // The base chain.
    match have.chains.get(BASE_CHAIN) {
        None => out.push(global(format!("chain {BASE_CHAIN} was missing"))),
        Some(b) => {
            if b.hook
                .as_ref()
                .is_none_or(|(h, p)| h != "output" || p != "accept")
            {
                out.push(global(format!(
                    "chain {BASE_CHAIN} was not an output-hook chain with policy accept ({:?})",
                    b.hook
                )));
            }
            let lookups: Vec<String> = b.rules.iter().map(|r| r.verdict.clone()).collect();
            let wanted: Vec<String> = want
                .maps
                .keys()
                .rev()
                .map(|l| format!("vmap @{}", map_name(*l)))
                .collect();
            if lookups != wanted {
                out.push(global(format!(
                    "chain {BASE_CHAIN} held [{}] instead of [{}]",
                    lookups.join(", "),
                    wanted.join(", ")
                )));
            }
        }
    }
    // The maps.
    for (level, els) in &want.maps {
        let name = map_name(*level);
        let Some(held) = have.maps.get(&name) else {
            out.push(global(format!("map {name} was missing")));
            continue;
        };
        let goto = |chain: &str| format!("goto {chain}");
        for (path, chain) in els {
            let target = goto(chain);
            if held.iter().any(|(k, c)| k == path && *c == target) {
                continue;
            }
            let what = match held.iter().find(|(_, c)| *c == target) {
                Some((k, _)) if k.bytes().all(|b| b.is_ascii_digit()) => format!(
                    "map {name} sent cgroup id {k} to {chain}, a cgroup that no longer exists (its directory was removed and made again): the rule matched none of {path}'s sockets"
                ),
                Some((k, _)) => format!("map {name} sent {k} to {chain} instead of {path}"),
                None => format!("map {name} had no element for {path}"),
            };
            out.push(Drift {
                tenant: tenant_of(chain),
                what,
            });
        }
        for (k, c) in held {
            if !els.iter().any(|(_, wc)| goto(wc) == *c) {
                out.push(global(format!(
                    "map {name} held an element {k} -> {c} of no tenant"
                )));
            }
        }
    }
    for name in have.maps.keys() {
        if !want.maps.keys().any(|l| map_name(*l) == *name) {
            out.push(global(format!(
                "map {name} was there with no tenant policy at that level"
            )));
        }
    }
    // The policy chains.
    for c in &want.chains {
        let tenant = Some(c.tenant.clone());
        let Some(held) = have.chains.get(&c.name) else {
            out.push(Drift {
                tenant,
                what: format!("chain {} was missing", c.name),
            });
            continue;
        };
        let want_rules: Vec<(String, Vec<String>, &str)> = c
            .rules
            .iter()
            .map(|r| {
                (
                    r.comment.clone(),
                    r.matches.iter().map(Match::signature).collect(),
                    r.verdict.name(),
                )
            })
            .collect();
        let held_rules: Vec<(String, Vec<String>, &str)> = held
            .rules
            .iter()
            .map(|r| {
                (
                    r.comment.clone().unwrap_or_default(),
                    r.matches.clone(),
                    r.verdict.as_str(),
                )
            })
            .collect();
        if want_rules != held_rules {
            let show = |rs: &[(String, Vec<String>, &str)]| {
                rs.iter()
                    .map(|(c, m, v)| format!("{} {v} ({c})", m.join(" ")).trim().to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            out.push(Drift {
                tenant,
                what: format!(
                    "chain {} held [{}] instead of [{}]",
                    c.name,
                    show(&held_rules),
                    show(&want_rules)
                ),
            });
        }
    }
    for name in have.chains.keys() {
        if name != BASE_CHAIN && !want.chains.iter().any(|c| c.name == *name) {
            out.push(global(format!(
                "chain {name} was there with no tenant policy"
            )));
        }
    }
    out
}

/// The table the tests of this module and of `net` (against the captured listing) share.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;
    use crate::domain::egress::{Destination, EgressDefault, EgressSpec};

    /// acme (default allow, two denials) and its child web (default deny, two allowed
    /// destinations and `more`).
    pub(crate) fn acme_web(more: &[&str]) -> Table {
        let d = |s: &str| Destination::parse(s).unwrap();
        let owner = |t: &str, path: &str, level, policy| Owner {
            tenant: TenantName::parse(t).unwrap(),
            cgroup: NftCgroup {
                path: path.into(),
                level,
            },
            policy,
        };
        let mut allow = vec![d("10.0.0.0/8:5000-6000/tcp"), d("[::1]:5432")];
        allow.extend(more.iter().map(|s| d(s)));
        Table::of(&[
            owner(
                "web",
                "tenantd/acme/web",
                3,
                EgressSpec {
                    default: EgressDefault::Deny,
                    allow,
                    deny: vec![],
                },
            ),
            owner(
                "acme",
                "tenantd/acme",
                2,
                EgressSpec {
                    default: EgressDefault::Allow,
                    allow: vec![],
                    deny: vec![d("127.0.0.2:5432"), d("0.0.0.0/0/udp")],
                },
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    fn acme_web() -> Table {
        samples::acme_web(&[])
    }

    #[test]
    fn the_level_is_the_depth_below_the_hierarchy_root() {
        let at = |dir: &str, mp: &str, root: &str| {
            NftCgroup::locate(Path::new(dir), Path::new(mp), root)
        };
        assert_eq!(
            at("/sys/fs/cgroup/tenantd/acme", "/sys/fs/cgroup", "/").unwrap(),
            NftCgroup {
                path: "tenantd/acme".into(),
                level: 2
            }
        );
        // A subtree mounted at /sys/fs/cgroup (a container's view): its root's depth counts.
        assert_eq!(
            at(
                "/sys/fs/cgroup/gov/acme/web",
                "/sys/fs/cgroup",
                "/machine.slice/c1"
            )
            .unwrap(),
            NftCgroup {
                path: "gov/acme/web".into(),
                level: 5
            }
        );
        // A hybrid host's cgroup2 mount below /sys/fs/cgroup.
        assert_eq!(
            at("/sys/fs/cgroup/unified/t/a", "/sys/fs/cgroup/unified", "/")
                .unwrap()
                .level,
            2
        );
        let e = at("/mnt/cg/t/a", "/mnt/cg", "/").unwrap_err();
        assert!(e.contains("below /sys/fs/cgroup only"), "{e}");
        let e = at("/sys/fs/cgroup/a b/c", "/sys/fs/cgroup", "/").unwrap_err();
        assert!(e.contains("contains ' '"), "{e}");
        assert!(at("/sys/fs/cgroup", "/sys/fs/cgroup", "/").is_err());
    }

    /// The text as nft takes it: checked against a real nft in the VM test
    /// `egress_a_denied_destination_is_refused_to_one_tenant_only`; here, its exact shape.
    #[test]
    fn the_script_writes_the_whole_table_in_one_transaction() {
        let mut carry = Counters::new();
        carry.insert(("t_acme".into(), "deny[0] 127.0.0.2:5432".into()), (3, 180));
        let s = acme_web().script(&carry);
        assert_eq!(
            s,
            "table inet tenantd
delete table inet tenantd
table inet tenantd {
\tmap level2 {
\t\ttype cgroupsv2 : verdict
\t\telements = { \"tenantd/acme\" : goto t_acme }
\t}
\tmap level3 {
\t\ttype cgroupsv2 : verdict
\t\telements = { \"tenantd/acme/web\" : goto t_web }
\t}
\tchain t_acme {
\t\tip daddr 127.0.0.2 meta l4proto { tcp, udp } th dport 5432 counter packets 3 bytes 180 reject with icmpx type admin-prohibited comment \"deny[0] 127.0.0.2:5432\"
\t\tmeta nfproto ipv4 meta l4proto udp counter packets 0 bytes 0 reject with icmpx type admin-prohibited comment \"deny[1] 0.0.0.0/0/udp\"
\t\tcounter packets 0 bytes 0 accept comment \"default\"
\t}
\tchain t_web {
\t\tip daddr 10.0.0.0/8 tcp dport 5000-6000 counter packets 0 bytes 0 accept comment \"allow[0] 10.0.0.0/8:5000-6000/tcp\"
\t\tip6 daddr ::1 meta l4proto { tcp, udp } th dport 5432 counter packets 0 bytes 0 accept comment \"allow[1] [::1]:5432\"
\t\tcounter packets 0 bytes 0 reject with icmpx type admin-prohibited comment \"default\"
\t}
\tchain egress {
\t\ttype filter hook output priority 0; policy accept;
\t\tsocket cgroupv2 level 3 vmap @level3
\t\tsocket cgroupv2 level 2 vmap @level2
\t}
}
"
        );
        // Nothing to enforce: the table is only removed.
        assert_eq!(
            Table::default().script(&carry),
            "table inet tenantd\ndelete table inet tenantd\n"
        );
    }

    /// The listing the kernel would give back for `t`, as the parser in `net` fills it.
    fn listing_of(t: &Table) -> Listing {
        let mut l = Listing::default();
        for (level, els) in &t.maps {
            let els = els
                .iter()
                .map(|(p, c)| (p.clone(), format!("goto {c}")))
                .collect();
            l.maps.insert(map_name(*level), els);
        }
        for c in &t.chains {
            l.chains.insert(
                c.name.clone(),
                ListedChain {
                    hook: None,
                    rules: c
                        .rules
                        .iter()
                        .map(|r| ListedRule {
                            comment: Some(r.comment.clone()),
                            matches: r.matches.iter().map(Match::signature).collect(),
                            verdict: r.verdict.name().into(),
                            packets: 1,
                            bytes: 60,
                        })
                        .collect(),
                },
            );
        }
        l.chains.insert(
            BASE_CHAIN.into(),
            ListedChain {
                hook: Some(("output".into(), "accept".into())),
                rules: t
                    .maps
                    .keys()
                    .rev()
                    .map(|l| ListedRule {
                        matches: vec!["socket cgroupv2".into()],
                        verdict: format!("vmap @{}", map_name(*l)),
                        ..Default::default()
                    })
                    .collect(),
            },
        );
        l
    }

    #[test]
    fn drift_finds_a_missing_table_a_recreated_cgroup_and_changed_rules() {
        let want = acme_web();
        let same = listing_of(&want);
        assert_eq!(drift(&want, Some(&same)), vec![]);
        assert_eq!(drift(&Table::default(), None), vec![]);
        assert_eq!(same.counters().len(), 6);
        let counts = same.rule_counts();
        assert_eq!(counts.len(), 6);
        assert_eq!(
            (
                counts[0].tenant.as_str(),
                counts[0].rule.as_str(),
                counts[0].destination.as_str()
            ),
            ("acme", "deny[0]", "127.0.0.2:5432")
        );
        assert_eq!(
            (counts[2].rule.as_str(), counts[2].destination.as_str()),
            ("default", "*")
        );

        let gone = drift(&want, None);
        assert_eq!(gone.len(), 1);
        assert!(gone[0].what.contains("was missing"), "{gone:?}");

        let mut recreated = same.clone();
        recreated.maps.get_mut("level2").unwrap()[0].0 = "75".into();
        let r = drift(&want, Some(&recreated));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].tenant, Some(n("acme")));
        assert!(r[0].what.contains("cgroup id 75"), "{}", r[0].what);

        let mut flushed = same.clone();
        flushed.chains.get_mut("t_web").unwrap().rules.clear();
        flushed.chains.get_mut(BASE_CHAIN).unwrap().rules.clear();
        let r = drift(&want, Some(&flushed));
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[1].tenant, Some(n("web")));

        let mut changed = same.clone();
        changed.chains.get_mut("t_acme").unwrap().rules[0].verdict = "accept".into();
        let r = drift(&want, Some(&changed));
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].what.contains("chain t_acme held"), "{}", r[0].what);

        let r = drift(&Table::default(), Some(&same));
        assert!(r[0].what.contains("no tenant policy"), "{r:?}");
    }
}
