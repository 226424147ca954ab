//! Egress policies in force: what this host offers (`Egress::probe`), the tenants whose own
//! policy goes into the table (`wants`), writing the whole table from them and reading it
//! back for drift (`Egress::sync`), whether each policy is in force, and the counters
//! `/metrics` exports.
//!
//! The governor calls `sync` under its write lock: on every change that touches a policy
//! (before the change is committed, so a policy the kernel does not take is refused), on
//! deletes, and in every reconcile pass, which also reads the table back first and reports
//! what differed (a flushed table, a recreated cgroup whose id the old rule still holds).

use super::EngineError;
use crate::cgroup::{Backend, CgroupPath};
use crate::domain::desired::DesiredState;
use crate::domain::egress::EgressSpec;
use crate::domain::nft::{self, Counters, Drift, EgressSnapshot, Listing, NftCgroup, Owner, Table};
use crate::domain::tenant::{TenantName, TenantSpec};
use crate::net::Nft;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// What this host offers for egress policies (`GET /v1/host`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EgressSupport {
    /// Whether tenant egress policies are enforced here; when not, a tenant with a policy of
    /// its own is refused (422) with `why`.
    pub available: bool,
    /// Why not, when not available.
    #[schema(required = true)]
    pub why: Option<String>,
    /// `nft --version`, when nft was found.
    #[schema(required = true)]
    pub nft: Option<String>,
}

/// A tenant's egress policy as `GET /v1/tenants/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EgressView {
    /// The policy the tenant's sockets are under: its own, or its nearest ancestor's.
    pub policy: EgressSpec,
    /// Whose policy it is: the tenant itself or the ancestor it inherits from.
    #[schema(value_type = String)]
    pub from: TenantName,
    /// Whether the policy is loaded in the kernel and bound to the current cgroup (as of
    /// `checked_ms`).
    pub in_force: bool,
    /// Why it is not in force.
    #[schema(required = true)]
    pub why: Option<String>,
    /// When the table was last written or checked (Unix ms).
    #[schema(required = true)]
    pub checked_ms: Option<i64>,
}

/// A tenant whose own policy goes into the table: its lineage (top-level first, itself
/// last) gives its cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    pub lineage: Vec<TenantName>,
    pub policy: EgressSpec,
}

impl Want {
    pub fn tenant(&self) -> &TenantName {
        self.lineage.last().expect("a lineage ends with its tenant")
    }
}

/// The tenants of `state` with a policy of their own, with `change` (a tenant, its new spec
/// or `None` when deleted, and its lineage) in place of what `state` holds for it.
pub fn wants(
    state: &DesiredState,
    change: Option<(&TenantName, Option<&TenantSpec>, &[TenantName])>,
) -> Vec<Want> {
    let own = |s: &TenantSpec| s.network.as_ref().and_then(|n| n.egress.clone());
    let mut out: Vec<Want> = state
        .specs()
        .iter()
        .filter(|(n, _)| change.is_none_or(|(c, _, _)| c != *n))
        .filter_map(|(n, s)| {
            Some(Want {
                policy: own(s)?,
                lineage: state.lineage(n),
            })
        })
        .collect();
    if let Some((_, Some(spec), lineage)) = change
        && let Some(policy) = own(spec)
    {
        out.push(Want {
            lineage: lineage.to_vec(),
            policy,
        });
    }
    out
}

/// The policy that applies to `name` in `state`: its own or its nearest ancestor's, with
/// whose it is.
pub fn applying(state: &DesiredState, name: &TenantName) -> Option<(TenantName, EgressSpec)> {
    state.lineage(name).into_iter().rev().find_map(|t| {
        let p = state.spec(&t)?.network.as_ref()?.egress.clone()?;
        Some((t, p))
    })
}

/// What the probe found: nft and where the cgroup2 hierarchy is mounted.
#[derive(Debug, Clone)]
struct Ready {
    nft: Nft,
    version: String,
    mount_point: PathBuf,
    mount_root: String,
}

/// Whether one tenant's own policy is in force.
#[derive(Debug, Clone, PartialEq)]
struct Status {
    in_force: bool,
    why: Option<String>,
    checked_ms: i64,
}

/// What a `sync` did: differences found by the read-back (a check only), tenants whose
/// policy could not go in (and why), and the failure that left the kernel's table as it was.
#[derive(Debug, Default)]
pub struct Synced {
    pub drift: Vec<Drift>,
    pub left_out: Vec<(TenantName, String)>,
    pub failed: Option<String>,
}

/// The egress side of the governor.
pub struct Egress {
    /// The probe's answer: ready, or why not (and nft's version when it was found).
    ready: RwLock<Result<Ready, (String, Option<String>)>>,
    status: RwLock<BTreeMap<TenantName, Status>>,
    /// A non-empty table was loaded last (so an empty one must be written to remove it).
    written: AtomicBool,
    /// The id of each element's cgroup (by its nft path) when this daemon last loaded the
    /// table; `None` until its first load, when a check reads the elements from nft instead.
    loaded: RwLock<Option<BTreeMap<String, u64>>>,
}

impl Default for Egress {
    fn default() -> Self {
        Egress {
            ready: RwLock::new(Err(("not probed yet".into(), None))),
            status: RwLock::new(BTreeMap::new()),
            written: AtomicBool::new(false),
            loaded: RwLock::new(None),
        }
    }
}

impl Egress {
    /// Finds out whether this host can enforce egress policies for tenants of `b`: a cgroup
    /// v2 backend (on v1 and hybrid hosts the tenants' sockets are not in cgroup2 directories
    /// tenantd makes), its root below /sys/fs/cgroup on a cgroup2 mount, `nft` in `path`,
    /// and a kernel that takes a table of tenantd's shape (`Nft::probe`, nothing committed).
    /// Blocking.
    pub fn probe(&self, b: &dyn Backend, proc_root: &Path, path: &str) {
        let found = probe(b, proc_root, path);
        if let Err((why, _)) = &found {
            tracing::info!("egress policies are not available on this host: {why}");
        }
        *self.ready.write().expect("egress lock") = found;
    }

    pub fn available(&self) -> bool {
        self.ready.read().expect("egress lock").is_ok()
    }

    pub fn support(&self) -> EgressSupport {
        match &*self.ready.read().expect("egress lock") {
            Ok(r) => EgressSupport {
                available: true,
                why: None,
                nft: Some(r.version.clone()),
            },
            Err((why, nft)) => EgressSupport {
                available: false,
                why: Some(why.clone()),
                nft: nft.clone(),
            },
        }
    }

    /// Refuses a spec with a policy of its own where none can be enforced.
    pub fn admit(&self, spec: &TenantSpec) -> Result<(), EngineError> {
        let own = spec.network.as_ref().is_some_and(|n| n.egress.is_some());
        match &*self.ready.read().expect("egress lock") {
            Err((why, _)) if own => Err(EngineError::Unsupported {
                field: "network.egress".into(),
                message: format!(
                    "an egress policy cannot be enforced on this host, so it is refused rather than left unenforced: {why} (see GET /v1/host)"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Writes the whole table for `wants` in one transaction, carrying every rule's counter
    /// over. With `check`, reads the table back first and reports how it differed from what
    /// it should be. A tenant whose cgroup directory is missing (or cannot be named to nft)
    /// is left out, and said so. Blocking.
    ///
    /// Reading back: a full listing names each map element's cgroup by walking
    /// /sys/fs/cgroup (nft 1.0.6; about a second an element over 1,000 tenants in the
    /// emulated VM, benches/egress_nft.sh, and under the write lock), so the listing is terse (table, chains, rules,
    /// counters, maps without their elements), and each element is checked by the id its
    /// cgroup had when this daemon loaded it against the id it has now: a cgroup made again
    /// has a new one. Before this daemon's first load there is nothing to compare with: the
    /// elements count as they should be, and the write binds them to the current ids.
    pub fn sync(&self, b: &dyn Backend, wants: &[Want], check: bool, now_ms: i64) -> Synced {
        let ready = self.ready.read().expect("egress lock").clone();
        let mut out = Synced::default();
        let ready = match ready {
            Ok(r) => r,
            Err((why, _)) => {
                if !wants.is_empty() {
                    out.failed = Some(format!(
                        "{} tenant policies cannot be enforced on this host: {why}",
                        wants.len()
                    ));
                }
                self.set_status(wants, &[], Some(&why), now_ms);
                return out;
            }
        };
        let mut owners = Vec::new();
        for w in wants {
            let dir = b.path_of(&CgroupPath::tenant(&w.lineage));
            if !dir.is_dir() {
                let why = format!("its cgroup directory {} is missing", dir.display());
                out.left_out.push((w.tenant().clone(), why));
                continue;
            }
            match NftCgroup::locate(&dir, &ready.mount_point, &ready.mount_root) {
                Ok(cgroup) => owners.push(Owner {
                    tenant: w.tenant().clone(),
                    cgroup,
                    policy: w.policy.clone(),
                }),
                Err(why) => out.left_out.push((w.tenant().clone(), why)),
            }
        }
        let table = Table::of(&owners);
        if table.is_empty() && !check && !self.written.load(Ordering::Relaxed) {
            self.set_status(wants, &out.left_out, None, now_ms);
            return out;
        }
        // A check reads the whole table (nft walks /sys/fs/cgroup to name each element's
        // cgroup); a change needs only the counters.
        let loaded = self.loaded.read().expect("egress lock").clone();
        let (carry, absent): (Counters, bool) = match ready.nft.list(true) {
            Ok(mut listing) => {
                if check {
                    if let Some(l) = listing.as_mut() {
                        elements_from_ids(l, &table, loaded.as_ref());
                    }
                    out.drift = nft::drift(&table, listing.as_ref());
                }
                let carry = listing.as_ref().map(Listing::counters).unwrap_or_default();
                (carry, listing.is_none())
            }
            Err(e) => {
                tracing::warn!("reading table {} back failed: {e}", nft::TABLE);
                (Counters::new(), false)
            }
        };
        if table.is_empty() && absent {
            // Nothing to enforce and no table: nothing to write.
            self.written.store(false, Ordering::Relaxed);
            self.set_status(wants, &out.left_out, None, now_ms);
            return out;
        }
        // The ids the rules will hold: nft resolves each path when it loads the table.
        let ids: BTreeMap<String, u64> = owners
            .iter()
            .filter_map(|o| {
                let dir = Path::new(nft::NFT_CGROUP_ROOT).join(&o.cgroup.path);
                Some((o.cgroup.path.clone(), crate::cgroup::cgroup_id(&dir).ok()?))
            })
            .collect();
        match ready.nft.load(&table.script(&carry)) {
            Ok(()) => {
                *self.loaded.write().expect("egress lock") = Some(ids);
                self.written.store(!table.is_empty(), Ordering::Relaxed);
                self.set_status(wants, &out.left_out, None, now_ms);
            }
            Err(e) => {
                let why = format!("nft refused tenantd's table: {e}");
                if check {
                    self.set_status(wants, &[], Some(&why), now_ms);
                }
                out.failed = Some(why);
            }
        }
        out
    }

    /// Every policy in force, except those `left_out` or all when `failed`.
    fn set_status(
        &self,
        wants: &[Want],
        left_out: &[(TenantName, String)],
        failed: Option<&str>,
        now_ms: i64,
    ) {
        let status = wants
            .iter()
            .map(|w| {
                let t = w.tenant().clone();
                let why = match failed {
                    Some(f) => Some(f.to_string()),
                    None => left_out
                        .iter()
                        .find(|(n, _)| *n == t)
                        .map(|(_, why)| why.clone()),
                };
                let s = Status {
                    in_force: why.is_none(),
                    why,
                    checked_ms: now_ms,
                };
                (t, s)
            })
            .collect();
        *self.status.write().expect("egress lock") = status;
    }

    /// The policy `name` is under, whose it is and whether it is in force.
    pub fn view(&self, state: &DesiredState, name: &TenantName) -> Option<EgressView> {
        let (from, policy) = applying(state, name)?;
        let st = self.status.read().expect("egress lock").get(&from).cloned();
        Some(EgressView {
            policy,
            in_force: st.as_ref().is_some_and(|s| s.in_force),
            why: match &st {
                Some(s) => s.why.clone(),
                None => Some("not written to the kernel yet".into()),
            },
            checked_ms: st.map(|s| s.checked_ms),
            from,
        })
    }

    /// Every rule's counter (a terse listing: no walk of /sys/fs/cgroup) and which policies
    /// are in force. Blocking.
    pub fn snapshot(&self) -> EgressSnapshot {
        let in_force = self
            .status
            .read()
            .expect("egress lock")
            .iter()
            .map(|(t, s)| (t.to_string(), s.in_force))
            .collect();
        let nft = self
            .ready
            .read()
            .expect("egress lock")
            .as_ref()
            .ok()
            .map(|r| r.nft.clone());
        let counts = match nft {
            Some(nft) if self.written.load(Ordering::Relaxed) => match nft.list(true) {
                Ok(l) => l.map(|l| l.rule_counts()).unwrap_or_default(),
                Err(e) => {
                    tracing::warn!("reading the egress counters failed: {e}");
                    Vec::new()
                }
            },
            _ => Vec::new(),
        };
        EgressSnapshot { counts, in_force }
    }
}

/// Fills the elements of a terse listing's maps from what this daemon loaded (`ids`): each
/// wanted element whose cgroup still has the id it had then, as nft would print it (its
/// path); one whose cgroup has another id now, as its old id (what nft prints for a cgroup
/// that is gone); one never loaded, not at all. Without `ids` (nothing loaded yet), every
/// wanted element as it should be. Maps the listing does not have stay missing.
fn elements_from_ids(l: &mut Listing, want: &Table, ids: Option<&BTreeMap<String, u64>>) {
    for (level, els) in &want.maps {
        let Some(held) = l.maps.get_mut(&nft::map_name(*level)) else {
            continue;
        };
        held.clear();
        for (path, chain) in els {
            let Some(ids) = ids else {
                held.push((path.clone(), format!("goto {chain}")));
                continue;
            };
            let Some(id) = ids.get(path) else { continue };
            let dir = Path::new(nft::NFT_CGROUP_ROOT).join(path);
            let key = match crate::cgroup::cgroup_id(&dir) {
                Ok(now) if now == *id => path.clone(),
                _ => id.to_string(),
            };
            held.push((key, format!("goto {chain}")));
        }
    }
}

fn probe(b: &dyn Backend, proc_root: &Path, path: &str) -> Result<Ready, (String, Option<String>)> {
    let host = b.host().map_err(|e| (e.to_string(), None))?;
    if host.version != "v2" {
        return Err((
            "tenants run on cgroup v1 here (a v1 or hybrid host): nftables matches a socket's cgroup v2 cgroup, and tenantd puts no tenant in one".into(),
            None,
        ));
    }
    let root = b.path_of(&CgroupPath::root());
    let (mount_point, mount_root) = crate::cgroup::v2_mount_of(proc_root, &root)
        .map_err(|e| (e.to_string(), None))?
        .ok_or_else(|| (format!("{} is on no cgroup2 mount", root.display()), None))?;
    let cgroup = NftCgroup::locate(&root, &mount_point, &mount_root).map_err(|e| (e, None))?;
    let nft = Nft::find(path).ok_or_else(|| {
        (
            "nft is not installed (not found in PATH): install nftables".to_string(),
            None,
        )
    })?;
    let version = nft.version().map_err(|e| (e.to_string(), None))?;
    nft.probe(&cgroup).map_err(|e| {
        (
            format!(
                "the kernel refused a table of tenantd's shape (it needs nf_tables with the inet family, nft_socket for `socket cgroupv2`, and nft_reject_inet): {e}"
            ),
            Some(version.clone()),
        )
    })?;
    Ok(Ready {
        nft,
        version,
        mount_point,
        mount_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::PlanParams;

    fn n(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    fn spec(json: serde_json::Value) -> TenantSpec {
        serde_json::from_value(json).unwrap()
    }

    /// acme has a policy; web inherits it; api sets its own; db below api inherits api's.
    fn state() -> DesiredState {
        let specs = [
            ("acme", spec(serde_json::json!({"network": {"egress": {"deny": ["127.0.0.2:5432"]}}}))),
            ("web", spec(serde_json::json!({"parent": "acme"}))),
            ("api", spec(serde_json::json!({"parent": "acme", "network": {"egress": {"default": "allow"}}}))),
            ("db", spec(serde_json::json!({"parent": "api"}))),
            ("other", spec(serde_json::json!({}))),
        ]
        .into_iter()
        .map(|(k, v)| (n(k), v))
        .collect();
        DesiredState::new(specs, PlanParams::default())
    }

    #[test]
    fn a_tenant_is_under_its_own_policy_or_its_nearest_ancestors() {
        let s = state();
        let from = |t: &str| applying(&s, &n(t)).map(|(f, _)| f.to_string());
        assert_eq!(from("acme").as_deref(), Some("acme"));
        assert_eq!(from("web").as_deref(), Some("acme"));
        assert_eq!(from("api").as_deref(), Some("api"));
        assert_eq!(from("db").as_deref(), Some("api"));
        assert_eq!(from("other"), None);
    }

    #[test]
    fn the_table_holds_the_tenants_with_a_policy_of_their_own() {
        let s = state();
        let names = |w: &[Want]| -> Vec<String> {
            let mut v: Vec<String> = w.iter().map(|w| w.tenant().to_string()).collect();
            v.sort();
            v
        };
        let all = wants(&s, None);
        assert_eq!(names(&all), ["acme", "api"]);
        let api = all.iter().find(|w| w.tenant().as_str() == "api").unwrap();
        assert_eq!(api.lineage, vec![n("acme"), n("api")]);
        // A change in place of what the state holds: db gains one, api loses its own.
        let db =
            spec(serde_json::json!({"parent": "api", "network": {"egress": {"default": "deny"}}}));
        let lineage = [n("acme"), n("api"), n("db")];
        assert_eq!(
            names(&wants(&s, Some((&n("db"), Some(&db), &lineage)))),
            ["acme", "api", "db"]
        );
        let bare = spec(serde_json::json!({"parent": "acme"}));
        let lineage = [n("acme"), n("api")];
        assert_eq!(
            names(&wants(&s, Some((&n("api"), Some(&bare), &lineage)))),
            ["acme"]
        );
        assert_eq!(
            names(&wants(&s, Some((&n("acme"), None, &[n("acme")])))),
            ["api"]
        );
    }

    #[test]
    fn a_policy_is_refused_until_a_probe_finds_egress_available() {
        let e = Egress::default();
        assert!(!e.support().available);
        let with = spec(serde_json::json!({"network": {"egress": {}}}));
        match e.admit(&with) {
            Err(EngineError::Unsupported { field, message }) => {
                assert_eq!(field, "network.egress");
                assert!(message.contains("not probed yet"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        e.admit(&spec(serde_json::json!({"network": {}}))).unwrap();
        e.admit(&TenantSpec::default()).unwrap();
        // No status yet: not in force, and why.
        let v = e.view(&state(), &n("web")).unwrap();
        assert_eq!((v.from.as_str(), v.in_force), ("acme", false));
        assert!(v.why.unwrap().contains("not written"));
    }
}
