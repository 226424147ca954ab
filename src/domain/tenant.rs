//! The tenant and its SLA spec: names, field validation, tree rules and admission control.
//!
//! Everything here is pure: the caller passes the host's capacity and the other tenants.

pub use super::error::DomainError;
use super::units::{Bytes, Percent};
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Largest cpu limit accepted, in percent of one CPU (1024 CPUs).
pub const MAX_CPU_LIMIT_PCT: f64 = 102_400.0;

/// Names a tenant may not take because a cgroup interface file of that name sits in every
/// directory on some backend. Every v2 interface file has a dot in its name and so can never be
/// a tenant name; v1 adds `tasks` (and `notify_on_release`/`release_agent`, whose `_` is not
/// allowed anyway). A test checks this list against the file names captured from real kernels.
pub const RESERVED_NAMES: &[&str] = &["tasks"];

/// The most process IDs a Linux host can have (PID_MAX_LIMIT, include/linux/threads.h on
/// 64-bit); a larger `pids.limit` could never be reached.
pub const PID_MAX_LIMIT: u64 = 4_194_304;

/// Most labels one tenant may carry, and their sizes in bytes.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_BYTES: usize = 63;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// A validated tenant name: `[a-z0-9][a-z0-9-]{0,62}`, not one of [`RESERVED_NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let bad = |why: &str| DomainError::invalid("name", format!("tenant name '{s}' {why}"));
        if s.is_empty() {
            return Err(bad("is empty: use 1-63 characters from a-z, 0-9 and '-'"));
        }
        if s.len() > 63 {
            return Err(bad("is longer than 63 characters"));
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(bad("must start with a lowercase letter or a digit"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(bad(&format!(
                "contains '{c}': only a-z, 0-9 and '-' are allowed"
            )));
        }
        if RESERVED_NAMES.contains(&s) {
            return Err(bad(
                "is the name of a cgroup interface file on cgroup v1 hosts, so its directory could not be created: choose another name",
            ));
        }
        Ok(TenantName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TenantName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantName::parse(&s).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SLA a tenant is promised. Every section and field is optional: absent means
/// "no guarantee" or "no limit".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    #[serde(default)]
    pub parent: Option<TenantName>,
    #[serde(default)]
    #[schema(schema_with = super::schema::spec_labels)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub cpu: CpuSpec,
    #[serde(default)]
    pub memory: MemorySpec,
    #[serde(default)]
    pub io: IoSpec,
    #[serde(default)]
    pub pids: PidsSpec,
    /// The nodes of a fleet that enforce this tenant (issue 19): a label selector over the
    /// nodes' `node_labels`, every label must match (`{"role": "web"}`); absent for every
    /// node. A single host (no `store`) ignores it.
    #[serde(default)]
    #[schema(schema_with = super::schema::node_selector)]
    pub nodes: Option<BTreeMap<String, String>>,
    // This and the next two sections are boxed: most tenants have none, and inline they
    // were 240 of a spec's 480 bytes (2.2 MB at 10,000 tenants; issue 15, target 4). The JSON
    // and the OpenAPI schema are the same. (Not a doc comment: it would be the schema's.)
    /// The defaults of `tenantd run --tenant NAME` (least-privilege launch); its flags
    /// override them. tenantd itself starts nothing: only the CLI reads them.
    #[serde(default)]
    pub launch: Option<Box<super::launch::LaunchSpec>>,
    /// Network egress policy (`network.egress`); children without one inherit their nearest
    /// ancestor's.
    #[serde(default)]
    pub network: Option<Box<super::egress::NetworkSpec>>,
    /// Which processes the daemon places in this tenant by itself, by user, group, program
    /// and command line (absent: none; see `domain::placement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Box<super::placement::PlacementSpec>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Share of the parent's CPU, delivered whenever siblings compete (0 < g <= 100).
    #[serde(default)]
    #[schema(value_type = Option<super::schema::GuaranteePct>)]
    pub guarantee_pct: Option<Percent>,
    /// Hard cap in percent of one CPU (200 = two CPUs), like systemd's CPUQuota.
    #[serde(default)]
    #[schema(value_type = Option<super::schema::LimitPct>)]
    pub limit_pct: Option<Percent>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protection {
    /// memory.min: the kernel never reclaims below it.
    #[default]
    Hard,
    /// memory.low: reclaimed only when unprotected memory is exhausted.
    Soft,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    #[serde(default)]
    pub guarantee_bytes: Option<Bytes>,
    #[serde(default)]
    pub protection: Protection,
    #[serde(default)]
    pub high_bytes: Option<Bytes>,
    #[serde(default)]
    pub limit_bytes: Option<Bytes>,
    #[serde(default)]
    #[schema(value_type = Option<super::schema::BytesOrZero>)]
    pub swap_limit_bytes: Option<Bytes>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IoSpec {
    #[serde(default)]
    #[schema(value_type = Option<super::schema::GuaranteePct>)]
    pub guarantee_pct: Option<Percent>,
    #[serde(default)]
    pub limits: Vec<IoLimit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IoLimit {
    /// Block device as "MAJOR:MINOR", as in /proc/partitions and io.stat.
    #[schema(pattern = "^[0-9]{1,9}:[0-9]{1,9}$")]
    pub device: String,
    #[serde(default)]
    pub rbps: Option<Bytes>,
    #[serde(default)]
    pub wbps: Option<Bytes>,
    #[serde(default, deserialize_with = "super::units::count::u64_opt")]
    #[schema(minimum = 1, maximum = 18446744073709551615_u64)]
    pub riops: Option<u64>,
    #[serde(default, deserialize_with = "super::units::count::u64_opt")]
    #[schema(minimum = 1, maximum = 18446744073709551615_u64)]
    pub wiops: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PidsSpec {
    #[serde(default, deserialize_with = "super::units::count::u64_opt")]
    #[schema(minimum = 1, maximum = 4194304)]
    pub limit: Option<u64>,
}

/// A device number "MAJOR:MINOR".
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub struct DevId {
    pub major: u32,
    pub minor: u32,
}

impl DevId {
    pub fn parse(s: &str) -> Option<DevId> {
        let (a, b) = s.split_once(':')?;
        Some(DevId {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

impl fmt::Display for DevId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

fn check_pct(field: &str, p: Option<Percent>, max: f64) -> Result<(), DomainError> {
    if let Some(Percent(v)) = p
        && !(v > 0.0 && v <= max)
    {
        return Err(DomainError::invalid(
            field,
            format!("{v}% is out of range: use a value above 0 and at most {max}%"),
        ));
    }
    Ok(())
}

fn check_positive(field: &str, v: Option<u64>) -> Result<(), DomainError> {
    if v == Some(0) {
        return Err(DomainError::invalid(
            field,
            "must be at least 1 (omit it for no limit)",
        ));
    }
    Ok(())
}

/// Labels: at most [`MAX_LABELS`]; keys of 1-63 bytes from `A-Z a-z 0-9 . _ / -` starting with
/// a letter or digit; values of at most 256 bytes without control characters. They are stored
/// with every tenant and shown on every read, so they stay small.
pub(crate) fn check_labels(
    what: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), DomainError> {
    if labels.len() > MAX_LABELS {
        return Err(DomainError::invalid(
            what,
            format!("{} labels given: at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (k, v) in labels {
        // The field names the key, cut short so a huge key does not come back in full.
        let shown: String = k.chars().take(MAX_LABEL_KEY_BYTES).collect();
        let field = format!("{what}.{shown}");
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY_BYTES
            && k.as_bytes()[0].is_ascii_alphanumeric()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
        if !key_ok {
            return Err(DomainError::invalid(
                &field,
                format!(
                    "label keys have 1-{MAX_LABEL_KEY_BYTES} bytes from A-Z, a-z, 0-9, '.', '_', '/', '-' and start with a letter or digit"
                ),
            ));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return Err(DomainError::invalid(
                &field,
                format!(
                    "the value has {} bytes: label values have at most {MAX_LABEL_VALUE_BYTES}",
                    v.len()
                ),
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                &field,
                "label values may not contain control characters",
            ));
        }
    }
    Ok(())
}

/// One field of a spec that a change touched, by its JSON path (`cpu.guarantee_pct`,
/// `labels.customer`); `from`/`to` are absent where the field was absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldChange {
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<serde_json::Value>,
}

/// What differs between two specs, field by field (objects are walked, anything else is
/// compared whole), so an event records the change and not two copies of the spec.
pub fn spec_changes(old: &TenantSpec, new: &TenantSpec) -> Vec<FieldChange> {
    fn walk(
        path: &str,
        a: Option<&serde_json::Value>,
        b: Option<&serde_json::Value>,
        out: &mut Vec<FieldChange>,
    ) {
        use serde_json::Value;
        let a = a.filter(|v| !v.is_null());
        let b = b.filter(|v| !v.is_null());
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&p, x.get(k), y.get(k), out);
                }
            }
            (a, b) if a != b => out.push(FieldChange {
                field: path.to_string(),
                from: a.cloned(),
                to: b.cloned(),
            }),
            _ => {}
        }
    }
    let (a, b) = (serde_json::to_value(old), serde_json::to_value(new));
    let mut out = Vec::new();
    if let (Ok(a), Ok(b)) = (a, b) {
        walk("", Some(&a), Some(&b), &mut out);
    }
    out
}

/// Checks one spec on its own: ranges, units, limit >= guarantee. No syscalls.
pub fn validate_spec(name: &TenantName, spec: &TenantSpec) -> Result<(), DomainError> {
    if spec.parent.as_ref() == Some(name) {
        return Err(DomainError::invalid(
            "parent",
            format!("tenant '{name}' cannot be its own parent"),
        ));
    }
    check_labels("labels", &spec.labels)?;
    if let Some(sel) = &spec.nodes {
        check_labels("nodes", sel)?;
    }
    if let Some(p) = &spec.placement {
        p.validate()?;
    }
    check_pct("cpu.guarantee_pct", spec.cpu.guarantee_pct, 100.0)?;
    check_pct("cpu.limit_pct", spec.cpu.limit_pct, MAX_CPU_LIMIT_PCT)?;
    if let Some(Percent(l)) = spec.cpu.limit_pct
        && l < 1.0
    {
        return Err(DomainError::invalid(
            "cpu.limit_pct",
            format!("{l}% is below the smallest cap the kernel enforces well (1% of a CPU)"),
        ));
    }
    check_pct("io.guarantee_pct", spec.io.guarantee_pct, 100.0)?;
    let m = &spec.memory;
    for (field, v) in [
        ("memory.guarantee_bytes", m.guarantee_bytes),
        ("memory.high_bytes", m.high_bytes),
        ("memory.limit_bytes", m.limit_bytes),
    ] {
        check_positive(field, v.map(|b| b.0))?;
    }
    if let Some(g) = m.guarantee_bytes {
        for (field, v) in [
            ("memory.high_bytes", m.high_bytes),
            ("memory.limit_bytes", m.limit_bytes),
        ] {
            if let Some(l) = v
                && l < g
            {
                return Err(DomainError::invalid(
                    field,
                    format!(
                        "{l} is below the guarantee of {g}: a limit may not be below its guarantee"
                    ),
                ));
            }
        }
    }
    if let (Some(h), Some(l)) = (m.high_bytes, m.limit_bytes)
        && h > l
    {
        return Err(DomainError::invalid(
            "memory.high_bytes",
            format!(
                "{h} is above limit_bytes {l}: the throttling point must be at or below the hard limit"
            ),
        ));
    }
    if let Some(l) = &spec.launch {
        l.plan(&|f| format!("launch.{f}"))?;
    }
    check_positive("pids.limit", spec.pids.limit)?;
    if let Some(l) = spec.pids.limit
        && l > PID_MAX_LIMIT
    {
        return Err(DomainError::invalid(
            "pids.limit",
            format!(
                "{l} is above the kernel's PID_MAX_LIMIT ({PID_MAX_LIMIT}), so it could never be reached: omit it for no limit"
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, l) in spec.io.limits.iter().enumerate() {
        let field = format!("io.limits[{i}].device");
        let Some(dev) = DevId::parse(&l.device) else {
            return Err(DomainError::invalid(
                &field,
                format!(
                    "'{}' is not a device number: use MAJOR:MINOR, e.g. 8:0 (see lsblk)",
                    l.device
                ),
            ));
        };
        if !seen.insert(dev) {
            return Err(DomainError::invalid(
                &field,
                format!("device {dev} is listed twice"),
            ));
        }
        for (f, v) in [
            ("rbps", l.rbps.map(|b| b.0)),
            ("wbps", l.wbps.map(|b| b.0)),
            ("riops", l.riops),
            ("wiops", l.wiops),
        ] {
            check_positive(&format!("io.limits[{i}].{f}"), v)?;
        }
    }
    if let Some(n) = &spec.network {
        super::egress::validate(n)?;
    }
    Ok(())
}

/// What the host offers, for admission control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub cpus: f64,
    pub memory_bytes: u64,
    /// Memory kept back from guarantees for the host and the daemon.
    pub memory_reserve_bytes: u64,
}

/// Checks that `name` with `spec` fits beside the other tenants (`others` excludes `name`).
/// Sibling guarantees may not sum past 100% (cpu, io); memory guarantees may not exceed host
/// memory minus the reserve; a cpu limit may not be below the CPUs its guarantee promises;
/// the parent must exist and the tree must stay a tree. Errors say what headroom is left.
pub fn admit(
    name: &TenantName,
    spec: &TenantSpec,
    others: &impl Others,
    cap: Capacity,
) -> Result<(), DomainError> {
    validate_spec(name, spec)?;
    if let Some(p) = &spec.parent {
        if others.get(p).is_none() {
            return Err(DomainError::NotFound {
                field: "parent".into(),
                message: format!("parent tenant '{p}' does not exist: create it first"),
            });
        }
        // Walk up from the parent: meeting `name` means a cycle.
        let mut cur = Some(p.clone());
        let mut steps = 0;
        while let Some(c) = cur {
            if &c == name || steps > others.count() {
                return Err(DomainError::invalid(
                    "parent",
                    format!("making '{p}' the parent of '{name}' would create a cycle"),
                ));
            }
            cur = others.get(&c).and_then(|s| s.parent.clone());
            steps += 1;
        }
    }
    let siblings = || others.shares(spec.parent.as_ref());
    for (field, mine, of) in [
        (
            "cpu.guarantee_pct",
            spec.cpu.guarantee_pct,
            (|s: Shares| s.cpu) as fn(Shares) -> Option<Percent>,
        ),
        ("io.guarantee_pct", spec.io.guarantee_pct, |s: Shares| s.io),
    ] {
        if let Some(Percent(g)) = mine {
            let taken: f64 = siblings().filter_map(of).map(|p| p.0).sum();
            if taken + g > 100.0 + 1e-9 {
                let scope = match &spec.parent {
                    Some(p) => format!("of parent '{p}'"),
                    None => "at the top level".to_string(),
                };
                return Err(DomainError::conflict(
                    field,
                    format!(
                        "{g}% does not fit: siblings {scope} already hold {taken}%, so at most {}% is left",
                        round2((100.0 - taken).max(0.0))
                    ),
                ));
            }
        }
    }
    // Memory: every hard or soft guarantee in the whole tree is backed by host memory, so the
    // sum over top-level subtrees must fit; a child's guarantee lies within its parent's.
    if let Some(g) = spec.memory.guarantee_bytes {
        let budget = cap.memory_bytes.saturating_sub(cap.memory_reserve_bytes);
        let total = others.committed_memory_with(name, Some(spec));
        if total > budget {
            let without_me = others.committed_memory_with(name, None);
            return Err(DomainError::conflict(
                "memory.guarantee_bytes",
                format!(
                    "{} does not fit: host memory {} minus the reserve {} leaves {}, of which {} is already guaranteed, so at most {} is left",
                    g,
                    Bytes(cap.memory_bytes),
                    Bytes(cap.memory_reserve_bytes),
                    Bytes(budget),
                    Bytes(without_me),
                    Bytes(budget.saturating_sub(without_me))
                ),
            ));
        }
    }
    if let (Some(Percent(limit)), Some(cpus)) =
        (spec.cpu.limit_pct, guaranteed_cpus(spec, others, cap.cpus))
    {
        if limit / 100.0 + 1e-9 < cpus {
            return Err(DomainError::invalid(
                "cpu.limit_pct",
                format!(
                    "{limit}% is below the guarantee, which promises {} CPUs ({}%): a limit may not be below its guarantee",
                    round2(cpus),
                    round2(cpus * 100.0)
                ),
            ));
        }
    }
    Ok(())
}

/// A tenant's guarantees of the shares its siblings split (cpu, io): what admission sums.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    pub cpu: Option<Percent>,
    pub io: Option<Percent>,
}

impl Shares {
    pub fn of(s: &TenantSpec) -> Shares {
        Shares {
            cpu: s.cpu.guarantee_pct,
            io: s.io.guarantee_pct,
        }
    }
}

/// What admission reads of the other tenants (every tenant but the one admitted). A map of
/// them answers by scanning and cloning, O(n) per question; the engine's desired state
/// (`desired::Except`) answers from its indexes, in O(depth + siblings).
pub trait Others {
    /// The spec of another tenant.
    fn get(&self, name: &TenantName) -> Option<&TenantSpec>;
    /// How many other tenants there are (bounds the walks up a corrupt parent chain).
    fn count(&self) -> usize;
    /// The shares of the other tenants whose parent is `parent` (`None`: the top level), in
    /// name order.
    fn shares<'s>(&'s self, parent: Option<&TenantName>) -> Box<dyn Iterator<Item = Shares> + 's>;
    /// `committed_memory` of the other tenants with `name` added as `spec` (`None`: without
    /// `name`).
    fn committed_memory_with(&self, name: &TenantName, spec: Option<&TenantSpec>) -> u64;
}

impl Others for BTreeMap<TenantName, TenantSpec> {
    fn get(&self, name: &TenantName) -> Option<&TenantSpec> {
        BTreeMap::get(self, name)
    }
    fn count(&self) -> usize {
        self.len()
    }
    fn shares<'s>(&'s self, parent: Option<&TenantName>) -> Box<dyn Iterator<Item = Shares> + 's> {
        let parent = parent.cloned();
        Box::new(
            self.values()
                .filter(move |s| s.parent == parent)
                .map(Shares::of),
        )
    }
    fn committed_memory_with(&self, name: &TenantName, spec: Option<&TenantSpec>) -> u64 {
        let mut all = self.clone();
        match spec {
            Some(s) => all.insert(name.clone(), s.clone()),
            None => all.remove(name),
        };
        committed_memory(&all)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The memory the whole tree holds back: the sum over top-level subtrees of max(own
/// guarantee, sum of its children's), hard and soft alike.
pub fn committed_memory<S: Borrow<TenantSpec>>(all: &BTreeMap<TenantName, S>) -> u64 {
    let tree = Tree::new(all);
    let held = tree.committed(|s| s.memory.guarantee_bytes.map_or(0, |b| b.0));
    tree.children(None).map(|(n, _)| held[n]).sum()
}

/// CPUs the guarantee promises when everything competes: host CPUs times the product of the
/// guarantees up the chain. `None` when the tenant or an ancestor has no guarantee.
pub fn guaranteed_cpus(spec: &TenantSpec, others: &impl Others, host_cpus: f64) -> Option<f64> {
    let mut frac = spec.cpu.guarantee_pct?.0 / 100.0;
    let mut parent = spec.parent.clone();
    let mut steps = 0;
    while let Some(p) = parent {
        let ps = others.get(&p)?;
        frac *= ps.cpu.guarantee_pct?.0 / 100.0;
        parent = ps.parent.clone();
        steps += 1;
        if steps > others.count() {
            return None;
        }
    }
    Some(frac * host_cpus)
}

/// Tenants in an order where every parent comes before its children (siblings by name);
/// a tenant not reachable from the top level (which admission never lets exist) is left out.
pub fn topo_order<S: Borrow<TenantSpec>>(all: &BTreeMap<TenantName, S>) -> Vec<TenantName> {
    Tree::new(all).topo_order().into_iter().cloned().collect()
}

/// Who is whose child, indexed once in O(n): the walks of the tree (parents-first order, what
/// a subtree holds back) then cost O(n) in all, where a scan of every tenant per node cost
/// O(n^2) (issue 15: 1.6 s to plan 10,000 tenants). The specs are held as they are (`S`):
/// owned, or shared as the desired state holds them (`Arc<TenantSpec>`).
pub struct Tree<'a, S = TenantSpec> {
    all: &'a BTreeMap<TenantName, S>,
    /// The top-level tenants, and the children of each parent, each list in name order.
    top: Vec<&'a TenantName>,
    children: HashMap<&'a TenantName, Vec<&'a TenantName>>,
}

impl<'a, S: Borrow<TenantSpec>> Tree<'a, S> {
    pub fn new(all: &'a BTreeMap<TenantName, S>) -> Self {
        let (mut top, mut children) = (Vec::new(), HashMap::<_, Vec<_>>::new());
        for (n, s) in all {
            work::step();
            match &s.borrow().parent {
                Some(p) => children.entry(p).or_default().push(n),
                None => top.push(n),
            }
        }
        Tree { all, top, children }
    }

    fn kids(&self, parent: Option<&TenantName>) -> &[&'a TenantName] {
        match parent {
            None => &self.top,
            Some(p) => self.children.get(p).map_or(&[], Vec::as_slice),
        }
    }

    /// The children of `parent` (`None`: the top-level tenants), in name order.
    pub fn children(
        &self,
        parent: Option<&TenantName>,
    ) -> impl Iterator<Item = (&'a TenantName, &'a TenantSpec)> + '_ {
        self.kids(parent).iter().map(|n| {
            work::step();
            (*n, self.all[*n].borrow())
        })
    }

    /// Parents before children, depth first, siblings by name, from the top level.
    pub fn topo_order(&self) -> Vec<&'a TenantName> {
        self.preorder(std::iter::once(None))
    }

    /// Depth first from each root, without recursion (a chain of 10,000 is as deep).
    fn preorder(&self, roots: impl Iterator<Item = Option<&'a TenantName>>) -> Vec<&'a TenantName> {
        let mut out = Vec::with_capacity(self.all.len());
        for root in roots {
            let mut stack = vec![self.kids(root).iter()];
            while let Some(top) = stack.last_mut() {
                match top.next() {
                    Some(n) => {
                        work::step();
                        out.push(*n);
                        stack.push(self.kids(Some(*n)).iter());
                    }
                    None => {
                        stack.pop();
                    }
                }
            }
        }
        out
    }

    /// Per tenant, what its subtree holds back of a guarantee: max(`own`, the sum of its
    /// children's), bottom up. A tenant whose parent is missing counts as a root here; one in
    /// a cycle (never admitted) is absent.
    pub fn committed(&self, own: impl Fn(&TenantSpec) -> u64) -> HashMap<&'a TenantName, u64> {
        let orphans = self
            .children
            .keys()
            .filter(|p| !self.all.contains_key(**p))
            .map(|p| Some(*p));
        let order = self.preorder(std::iter::once(None).chain(orphans));
        let mut held: HashMap<&'a TenantName, u64> = HashMap::with_capacity(order.len());
        for n in order.into_iter().rev() {
            let kids: u64 = self.kids(Some(n)).iter().map(|c| held[*c]).sum();
            work::step();
            held.insert(n, own(self.all[n].borrow()).max(kids));
        }
        held
    }
}

/// A count of the steps the tree walks take, for the test that planning is linear; nothing
/// outside tests.
pub(crate) mod work {
    #[cfg(test)]
    thread_local!(static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });

    #[inline]
    pub fn step() {
        #[cfg(test)]
        STEPS.with(|s| s.set(s.get() + 1));
    }

    /// The steps `f` took on this thread.
    #[cfg(test)]
    pub fn count(f: impl FnOnce()) -> u64 {
        let before = STEPS.with(|s| s.get());
        f();
        STEPS.with(|s| s.get()) - before
    }
}

/// The chain of names from the top-level ancestor down to `name`.
pub fn lineage<S: Borrow<TenantSpec>>(
    name: &TenantName,
    all: &BTreeMap<TenantName, S>,
) -> Vec<TenantName> {
    let parent = |n: &TenantName| all.get(n).and_then(|s| s.borrow().parent.clone());
    let mut chain = vec![name.clone()];
    let mut cur = parent(name);
    while let Some(p) = cur {
        if chain.contains(&p) || chain.len() > all.len() {
            break;
        }
        cur = parent(&p);
        chain.push(p);
    }
    chain.reverse();
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    fn cpu(g: f64) -> TenantSpec {
        TenantSpec {
            cpu: CpuSpec {
                guarantee_pct: Some(Percent(g)),
                limit_pct: None,
            },
            ..Default::default()
        }
    }

    const CAP: Capacity = Capacity {
        cpus: 2.0,
        memory_bytes: 8 << 30,
        memory_reserve_bytes: 1 << 30,
    };

    /// Issue 12, finding 5: `PUT /v1/tenants/tasks` answered 500 on a v1 host, where `tasks`
    /// is a kernel file in every cgroup directory. Every interface file name captured from a
    /// real kernel (v1 hierarchies and the v2 fixture) must be refused as a tenant name.
    #[test]
    fn finding_5_tenant_names_that_collide_with_kernel_files() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroupfs");
        let mut names = Vec::new();
        for f in [
            "v1-host-6.18.44-fc-v657/interface-files.txt",
            "6.1.0-56-amd64/fixture/work/FILES.txt",
        ] {
            let text = std::fs::read_to_string(root.join(f)).unwrap();
            names.extend(
                text.lines()
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| l.split_whitespace().next().unwrap().to_string()),
            );
        }
        assert!(
            names.len() > 50,
            "the fixtures list the kernel's files: {names:?}"
        );
        assert!(names.iter().any(|n| n == "tasks"));
        for f in &names {
            assert!(
                TenantName::parse(f).is_err(),
                "'{f}' is a kernel file but a valid tenant name"
            );
        }
        let e = TenantName::parse("tasks").unwrap_err();
        assert_eq!(e.field(), "name");
        assert!(e.message().contains("interface file"), "{}", e.message());
    }

    #[test]
    fn spec_changes_name_each_touched_field() {
        let old: TenantSpec = serde_json::from_str(
            r#"{"labels":{"a":"1","b":"2"},"cpu":{"guarantee_pct":50},"pids":{"limit":10}}"#,
        )
        .unwrap();
        let new: TenantSpec = serde_json::from_str(
            r#"{"labels":{"a":"1","c":"3"},"cpu":{"guarantee_pct":60,"limit_pct":100},"pids":{"limit":10}}"#,
        )
        .unwrap();
        let c = spec_changes(&old, &new);
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["cpu.guarantee_pct", "cpu.limit_pct", "labels.b", "labels.c"]
        );
        assert_eq!(c[0].from, Some(serde_json::json!(50)));
        assert_eq!(c[0].to, Some(serde_json::json!(60)));
        assert_eq!(c[1].from, None);
        assert_eq!(c[2].to, None);
        assert!(spec_changes(&new, &new).is_empty());
    }

    /// Issue 12, finding 8: labels were unbounded (9 PUTs of ~0.9 MB labels grew the event log
    /// to 14.7 MB). At most 64 labels of 63 + 256 bytes.
    #[test]
    fn finding_8_labels_are_bounded() {
        let with = |labels: Vec<(String, String)>| TenantSpec {
            labels: labels.into_iter().collect(),
            ..Default::default()
        };
        let name = n("acme");
        let max: Vec<_> = (0..MAX_LABELS)
            .map(|i| (format!("k{i:0>62}"), "v".repeat(MAX_LABEL_VALUE_BYTES)))
            .collect();
        assert_eq!(max[0].0.len(), 63);
        validate_spec(&name, &with(max.clone())).unwrap();
        let mut over = max.clone();
        over.push(("one-more".into(), "x".into()));
        assert_eq!(
            validate_spec(&name, &with(over)).unwrap_err().field(),
            "labels"
        );
        let long_key = "k".repeat(64);
        let e = validate_spec(&name, &with(vec![(long_key.clone(), "v".into())])).unwrap_err();
        assert_eq!(e.field(), format!("labels.{}", &long_key[..63]));
        let e = validate_spec(
            &name,
            &with(vec![(
                "customer".into(),
                "v".repeat(MAX_LABEL_VALUE_BYTES + 1),
            )]),
        )
        .unwrap_err();
        assert_eq!(e.field(), "labels.customer");
        assert!(e.message().contains("257 bytes"), "{}", e.message());
        for bad in ["", "-x", "a b", "caf\u{e9}", "a\u{0}"] {
            assert!(
                validate_spec(&name, &with(vec![(bad.into(), "v".into())])).is_err(),
                "key {bad:?}"
            );
        }
        assert!(validate_spec(&name, &with(vec![("k".into(), "a\nb".into())])).is_err());
        validate_spec(
            &name,
            &with(vec![(
                "app.kubernetes.io/name".into(),
                "caf\u{e9} \u{1f600}".into(),
            )]),
        )
        .unwrap();
    }

    #[test]
    fn names() {
        for ok in ["a", "acme", "team-7", "0", &"x".repeat(63)] {
            assert!(TenantName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "/",
            "a/b",
            "Acme",
            "-a",
            "a_b",
            "a.b",
            " a",
            &"x".repeat(64),
            "é",
        ] {
            let e = TenantName::parse(bad).unwrap_err();
            assert_eq!(e.field(), "name");
            assert!(e.message().contains("tenant name"), "{bad}: {e}");
        }
    }

    #[test]
    fn spec_json_round_trip_and_unknown_fields_refused() {
        let json = r#"{"parent":null,"labels":{"customer":"acme"},
            "cpu":{"guarantee_pct":50,"limit_pct":150},
            "memory":{"guarantee_bytes":1073741824,"protection":"hard","high_bytes":null,"limit_bytes":4294967296,"swap_limit_bytes":0},
            "io":{"guarantee_pct":50,"limits":[{"device":"254:0","rbps":10485760,"wbps":null,"riops":null,"wiops":null}]},
            "pids":{"limit":1024}}"#;
        let spec: TenantSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.memory.limit_bytes, Some(Bytes(4 << 30)));
        let again: TenantSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(spec, again);
        let e = serde_json::from_str::<TenantSpec>(r#"{"cpu":{"guarantee":5}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `guarantee`"), "{e}");
    }

    /// Issue 15, target 4: the sections most tenants lack are boxed, so a spec (held once
    /// per tenant by the desired state) is about half what it was inline (480 bytes).
    #[test]
    fn the_rarely_set_sections_of_a_spec_take_a_pointer_each() {
        assert!(std::mem::size_of::<TenantSpec>() <= 264);
    }

    #[test]
    fn field_validation_names_the_field() {
        let cases: Vec<(&str, TenantSpec)> = vec![
            ("cpu.guarantee_pct", cpu(0.0)),
            ("cpu.guarantee_pct", cpu(100.5)),
            (
                "cpu.limit_pct",
                TenantSpec {
                    cpu: CpuSpec {
                        guarantee_pct: None,
                        limit_pct: Some(Percent(0.5)),
                    },
                    ..Default::default()
                },
            ),
            (
                "memory.limit_bytes",
                TenantSpec {
                    memory: MemorySpec {
                        guarantee_bytes: Some(Bytes(2 << 30)),
                        limit_bytes: Some(Bytes(1 << 30)),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            ),
            (
                "memory.high_bytes",
                TenantSpec {
                    memory: MemorySpec {
                        high_bytes: Some(Bytes(3 << 30)),
                        limit_bytes: Some(Bytes(1 << 30)),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            ),
            (
                "pids.limit",
                TenantSpec {
                    pids: PidsSpec { limit: Some(0) },
                    ..Default::default()
                },
            ),
            (
                "io.limits[0].device",
                TenantSpec {
                    io: IoSpec {
                        guarantee_pct: None,
                        limits: vec![IoLimit {
                            device: "sda".into(),
                            rbps: None,
                            wbps: None,
                            riops: None,
                            wiops: None,
                        }],
                    },
                    ..Default::default()
                },
            ),
        ];
        for (field, spec) in cases {
            let e = validate_spec(&n("t"), &spec).unwrap_err();
            assert_eq!(e.field(), field, "{e}");
        }
    }

    #[test]
    fn sibling_guarantees_may_not_pass_100_and_the_error_says_what_is_left() {
        let mut others = BTreeMap::new();
        others.insert(n("a"), cpu(50.0));
        others.insert(n("b"), cpu(30.0));
        assert!(admit(&n("c"), &cpu(20.0), &others, CAP).is_ok());
        let e = admit(&n("c"), &cpu(25.0), &others, CAP).unwrap_err();
        assert!(matches!(e, DomainError::Conflict { .. }));
        assert!(e.message().contains("at most 20% is left"), "{e}");
        // Replacing a tenant does not count its old value.
        assert!(
            admit(
                &n("a"),
                &cpu(70.0),
                &{
                    let mut o = others.clone();
                    o.remove(&n("a"));
                    o
                },
                CAP
            )
            .is_ok()
        );
        // Children share their parent's 100%, separately from the top level.
        let child = TenantSpec {
            parent: Some(n("a")),
            ..cpu(90.0)
        };
        assert!(admit(&n("a1"), &child, &others, CAP).is_ok());
    }

    #[test]
    fn memory_guarantees_fit_in_host_memory_minus_reserve() {
        let mem = |g: u64, parent: Option<&str>| TenantSpec {
            parent: parent.map(n),
            memory: MemorySpec {
                guarantee_bytes: Some(Bytes(g)),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut others = BTreeMap::new();
        others.insert(n("a"), mem(4 << 30, None));
        assert!(admit(&n("b"), &mem(3 << 30, None), &others, CAP).is_ok());
        let e = admit(&n("b"), &mem(3 << 30 | 1, None), &others, CAP).unwrap_err();
        assert!(e.message().contains("at most 3 GiB is left"), "{e}");
        // A child inside its parent's guarantee adds nothing.
        assert!(admit(&n("a1"), &mem(4 << 30, Some("a")), &others, CAP).is_ok());
    }

    #[test]
    fn cpu_limit_below_guarantee_is_refused() {
        let spec = TenantSpec {
            cpu: CpuSpec {
                guarantee_pct: Some(Percent(50.0)),
                limit_pct: Some(Percent(90.0)),
            },
            ..Default::default()
        };
        // 50% of 2 CPUs is one CPU, so a 90% cap is below it.
        let e = admit(&n("a"), &spec, &BTreeMap::new(), CAP).unwrap_err();
        assert_eq!(e.field(), "cpu.limit_pct");
        let ok = TenantSpec {
            cpu: CpuSpec {
                guarantee_pct: Some(Percent(50.0)),
                limit_pct: Some(Percent(100.0)),
            },
            ..Default::default()
        };
        assert!(admit(&n("a"), &ok, &BTreeMap::new(), CAP).is_ok());
    }

    #[test]
    fn parents_must_exist_and_cycles_are_refused() {
        let mut others = BTreeMap::new();
        let e = admit(
            &n("a"),
            &TenantSpec {
                parent: Some(n("zz")),
                ..Default::default()
            },
            &others,
            CAP,
        )
        .unwrap_err();
        assert!(matches!(e, DomainError::NotFound { .. }));
        others.insert(
            n("b"),
            TenantSpec {
                parent: Some(n("a")),
                ..Default::default()
            },
        );
        let e = admit(
            &n("a"),
            &TenantSpec {
                parent: Some(n("b")),
                ..Default::default()
            },
            &others,
            CAP,
        )
        .unwrap_err();
        assert!(e.message().contains("cycle"), "{e}");
    }

    #[test]
    fn topo_order_puts_parents_first() {
        let mut all = BTreeMap::new();
        all.insert(n("z"), TenantSpec::default());
        all.insert(
            n("a"),
            TenantSpec {
                parent: Some(n("z")),
                ..Default::default()
            },
        );
        all.insert(
            n("b"),
            TenantSpec {
                parent: Some(n("a")),
                ..Default::default()
            },
        );
        assert_eq!(topo_order(&all), vec![n("z"), n("a"), n("b")]);
        assert_eq!(lineage(&n("b"), &all), vec![n("z"), n("a"), n("b")]);
    }

    proptest::proptest! {
        /// Whatever order requests come in, admitted sibling guarantees never sum past 100%.
        #[test]
        fn admitted_shares_never_exceed_100(gs in proptest::collection::vec(0.01f64..100.0, 1..20)) {
            let mut admitted = BTreeMap::new();
            for (i, g) in gs.iter().enumerate() {
                let name = n(&format!("t{i}"));
                if admit(&name, &cpu(*g), &admitted, CAP).is_ok() {
                    admitted.insert(name, cpu(*g));
                }
            }
            let sum: f64 = admitted.values().map(|s| s.cpu.guarantee_pct.unwrap().0).sum();
            proptest::prop_assert!(sum <= 100.0 + 1e-9);
        }
    }
}
