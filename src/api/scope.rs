//! Tenant-scoped tokens (`NAME ROLE TOKEN tenant=TENANT`): the view a hosting panel gives each
//! account. Such a token sees, and if admin changes, only its tenant's subtree (the tenant and
//! its descendants by `parent`, resolved from the stored specs on every request); to it,
//! everything else does not exist. The whole policy is here:
//!
//! - A tenant outside the subtree gets exactly the answer of a tenant that does not exist:
//!   `GET/PATCH/DELETE /v1/tenants/{x}`, `/procs`, `/usage` and `/v1/reports/sla?tenant=x` are
//!   404 "tenant 'x' does not exist"; `DELETE ...?move_to=x` is the 422 of a missing `move_to`;
//!   `/v1/events?tenant=x` is an empty list, as for a name that never had events.
//! - Creating: the parent must be in the subtree. A parent outside gets the 422 of a missing
//!   parent; no parent (a new top-level tenant) is 403, naming only the token's own tenant.
//!   Tenant names are host-wide, so `PUT /v1/tenants/x` with a parent inside still answers
//!   404 for an `x` that exists elsewhere: a taken name cannot be hidden from someone who may
//!   create names, but nothing about `x` is shown.
//! - The scope's own tenant is read-only to its scoped admin (403): its limits and guarantees
//!   are what confine the subtree, so only an unscoped admin changes them, as a hosting account
//!   cannot raise its own limits. Its descendants are the scoped admin's to create, change and
//!   delete.
//! - `POST /v1/tenants/{x}/procs` is 403 for scoped tokens: a PID can be any process on the
//!   host, and moving it would take it from another tenant or from the host.
//! - Host-wide endpoints, `GET /v1/host`, `GET /v1/nodes`, `POST /v1/reconcile` and
//!   `GET /v1/placement/explain` (a PID can be any process), are 404 "no such endpoint" as for
//!   an unknown path.
//! - A scoped admin cannot set or change a tenant's `placement` (403): a rule can pull any
//!   process of the host into the tenant, as a posted PID could.
//! - Lists are filtered: `GET /v1/tenants`, `/v1/events` (only events of tenants in the subtree
//!   now; daemon-wide events never), the SLA report, and `/metrics` (the subtree's per-tenant
//!   series only, none of tenantd's own instruments; every family's descriptor stays).
//!
//! `guard` is a route layer that does the per-name checks before any handler runs (with the
//! names as the handlers decode them, and every value of a repeated query key); the handlers
//! call `check_put`, `subtree`, `events`, `report` and `tenant_filter` for what needs the body
//! or the answer.

use super::AppState;
use super::auth::Caller;
use super::error::Problem;
use crate::domain::{DomainError, TenantName, TenantSpec};
use crate::engine::{EngineError, Tenants};
use crate::store::{Event, EventFilter, StoredTenant};
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, BTreeSet, HashMap};

type Stored = BTreeMap<TenantName, StoredTenant>;

/// Whether `name` is `scope` or below it, following `parent_of` (at most `max` steps, so a
/// corrupt cycle ends).
fn within<'a>(
    scope: &TenantName,
    name: &'a TenantName,
    parent_of: impl Fn(&TenantName) -> Option<&'a TenantName>,
    max: usize,
) -> bool {
    let mut cur = name;
    for _ in 0..=max {
        if cur == scope {
            return true;
        }
        match parent_of(cur) {
            Some(p) => cur = p,
            None => return false,
        }
    }
    false
}

/// Whether `caller` may see `name`: always for an unscoped caller; for a scoped one, when
/// `name` is its tenant or a descendant of it in `specs`.
pub fn in_scope(caller: &Caller, name: &TenantName, specs: &impl Parents) -> bool {
    match &caller.scope {
        None => true,
        Some(scope) => within(scope, name, |n| specs.parent(n), specs.count()),
    }
}

/// Who is whose parent among the stored tenants: the engine's desired state in memory
/// (`Tenants`, no database read per request), or a copy of the rows.
pub trait Parents {
    fn parent(&self, name: &TenantName) -> Option<&TenantName>;
    fn count(&self) -> usize;
}

impl Parents for Stored {
    fn parent(&self, name: &TenantName) -> Option<&TenantName> {
        self.get(name).and_then(|t| t.spec.parent.as_ref())
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Parents for Tenants<'_> {
    fn parent(&self, name: &TenantName) -> Option<&TenantName> {
        Tenants::parent(self, name)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

fn missing(name: &TenantName) -> Problem {
    Problem::from(EngineError::NotFound(name.to_string()))
}

/// A copy of every stored tenant, from memory (for the lists, O(n) anyway).
async fn stored(st: &AppState) -> Result<Stored, Problem> {
    Ok(st
        .gov
        .with_tenants(|t| {
            t.names()
                .filter_map(|n| Some((n.clone(), t.get(n)?)))
                .collect()
        })
        .await?)
}

fn read_only(caller: &Caller, scope: &TenantName) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "token '{}' is scoped to tenant '{scope}', which only an unscoped admin may change: change the tenants below it",
            caller.name
        ),
    )
    .field("name")
}

/// The route layer: per-name checks for scoped callers (unscoped ones pass untouched).
pub async fn guard(
    State(st): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    match check(&st, req).await {
        Ok(req) => next.run(req).await,
        Err(p) => p.into_response(),
    }
}

async fn check(st: &AppState, req: Request) -> Result<Request, Problem> {
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return Ok(req);
    };
    let Some(scope) = caller.scope.clone() else {
        return Ok(req);
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let (mut parts, body) = req.into_parts();
    // Every value of a repeated key is checked, whichever one the handler reads; a query
    // string this cannot read is refused rather than left unchecked.
    let query = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map(|q| q.0);
    let values = |key: &str| -> Result<Vec<TenantName>, Problem> {
        let query = query.as_ref().map_err(|e| {
            Problem::bad_request(format!("cannot read the query string: {}", e.body_text()))
        })?;
        Ok(query
            .iter()
            .filter(|(k, _)| k == key)
            .filter_map(|(_, v)| TenantName::parse(v).ok())
            .collect())
    };
    match route.as_str() {
        "/v1/host" | "/v1/reconcile" | "/v1/nodes" | "/v1/placement/explain" => {
            return Err(Problem::no_endpoint(parts.uri.path()));
        }
        "/v1/reports/sla" => {
            let names = values("tenant")?;
            let outside = st
                .gov
                .with_tenants(|s| names.into_iter().find(|t| !in_scope(&caller, t, s)))
                .await?;
            if let Some(t) = outside {
                return Err(missing(&t));
            }
        }
        "/v1/tenants/{name}" | "/v1/tenants/{name}/procs" | "/v1/tenants/{name}/usage" => {
            let path = Path::<HashMap<String, String>>::from_request_parts(&mut parts, st)
                .await
                .ok();
            // A name that does not parse is the handler's to refuse; PUT is `check_put`'s.
            let name = path.and_then(|p| p.0.get("name").and_then(|n| TenantName::parse(n).ok()));
            if let Some(name) = name
                && !(route == "/v1/tenants/{name}" && parts.method == Method::PUT)
            {
                let moves = if parts.method == Method::DELETE {
                    values("move_to")?
                } else {
                    Vec::new()
                };
                let (inside, move_outside) = st
                    .gov
                    .with_tenants(|s| {
                        let outside = moves.into_iter().find(|t| !in_scope(&caller, t, s));
                        (in_scope(&caller, &name, s), outside)
                    })
                    .await?;
                if !inside {
                    return Err(missing(&name));
                }
                let writes = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
                if writes && route == "/v1/tenants/{name}/procs" {
                    return Err(Problem::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "token '{}' is scoped to tenant '{scope}' and cannot attach processes (a PID may belong to anyone on the host): ask the host's admin",
                            caller.name
                        ),
                    ));
                }
                if writes && name == scope {
                    return Err(read_only(&caller, &scope));
                }
                if parts.method == Method::DELETE
                    && let Some(t) = move_outside
                {
                    // What `Governor::delete` answers for a move_to that does not exist.
                    return Err(Problem::from(DomainError::NotFound {
                        field: "move_to".into(),
                        message: format!("tenant '{t}' does not exist"),
                    }));
                }
            }
        }
        _ => {}
    }
    Ok(Request::from_parts(parts, body))
}

/// `PUT /v1/tenants/{name}` (and the spec a `PATCH` makes) for a scoped admin: not its own
/// tenant, a parent inside the subtree, a name not taken outside it, and the placement rule
/// as stored.
pub async fn check_put(
    st: &AppState,
    caller: &Caller,
    name: &TenantName,
    spec: &TenantSpec,
) -> Result<(), Problem> {
    let Some(scope) = &caller.scope else {
        return Ok(());
    };
    if name == scope {
        return Err(read_only(caller, scope));
    }
    placement_kept(st, caller, scope, name, spec).await?;
    let (parent_inside, taken_outside) = st
        .gov
        .with_tenants(|s| {
            let parent_inside = spec.parent.as_ref().map(|p| in_scope(caller, p, s));
            (
                parent_inside,
                s.contains(name) && !in_scope(caller, name, s),
            )
        })
        .await?;
    match (&spec.parent, parent_inside) {
        (None, _) => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token '{}' is scoped to tenant '{scope}' and can create tenants only below it: set parent",
                    caller.name
                ),
            )
            .field("parent"));
        }
        // What `domain::tenant::admit` answers for a parent that does not exist.
        (Some(p), Some(false)) => {
            return Err(Problem::from(DomainError::NotFound {
                field: "parent".into(),
                message: format!("parent tenant '{p}' does not exist: create it first"),
            }));
        }
        (Some(_), _) => {}
    }
    if taken_outside {
        return Err(missing(name));
    }
    Ok(())
}

/// A scoped admin's PUT or PATCH may keep a tenant's `placement` as stored, never set or
/// change it: a rule can pull any process of the host into the tenant.
async fn placement_kept(
    st: &AppState,
    caller: &Caller,
    scope: &TenantName,
    name: &TenantName,
    spec: &TenantSpec,
) -> Result<(), Problem> {
    let stored = st
        .gov
        .with_tenants(|s| s.get(name).and_then(|t| t.spec.placement))
        .await?;
    if stored == spec.placement {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "token '{}' is scoped to tenant '{scope}' and cannot set placement rules (a rule can take any process of the host): ask the host's admin",
            caller.name
        ),
    )
    .field("placement"))
}

/// `GET /v1/tenants`: the subtree a caller's list (and its pages) holds (`None`: every
/// tenant).
pub fn subtree(caller: &Caller) -> Option<TenantName> {
    caller.scope.clone()
}

/// The names a scoped caller may see (`None`: everything).
pub async fn tenant_filter(
    st: &AppState,
    caller: &Caller,
) -> Result<Option<BTreeSet<String>>, Problem> {
    if caller.scope.is_none() {
        return Ok(None);
    }
    let specs = stored(st).await?;
    Ok(Some(
        specs
            .keys()
            .filter(|n| in_scope(caller, n, &specs))
            .map(|n| n.to_string())
            .collect(),
    ))
}

/// Where a scoped caller's view of a tenant's history begins: the tenant's creation. History
/// is kept by name, so a name deleted elsewhere and created again in the subtree must not
/// show its former owner's events, usage or SLA. `None` for an unscoped caller (all of it).
pub async fn history_start(
    st: &AppState,
    caller: &Caller,
    name: &TenantName,
) -> Result<Option<i64>, Problem> {
    if caller.scope.is_none() {
        return Ok(None);
    }
    Ok(st.gov.with_tenants(|s| s.created_ms(name)).await?)
}

/// `GET /v1/events` with filter `f`: for a scoped caller, the events of the tenants in its
/// subtree only, each from its creation on, newest first and at most `f.limit`. One query per
/// tenant of the subtree.
pub async fn events(
    st: &AppState,
    caller: &Caller,
    f: &EventFilter,
) -> Result<Vec<Event>, Problem> {
    if caller.scope.is_none() {
        return Ok(st.gov.events(f).await?);
    }
    let specs = stored(st).await?;
    let names: BTreeSet<String> = specs
        .keys()
        .filter(|n| in_scope(caller, n, &specs))
        .map(|n| n.to_string())
        .collect();
    let wanted: Vec<String> = match &f.tenant {
        Some(t) if names.contains(t) => vec![t.clone()],
        Some(_) => Vec::new(),
        None => names.into_iter().collect(),
    };
    let mut out = Vec::new();
    for t in wanted {
        // The creation event is stamped at the creation time itself (Governor::put).
        let created = TenantName::parse(&t)
            .ok()
            .and_then(|n| specs.get(&n))
            .map(|s| s.created_ms);
        let one = EventFilter {
            tenant: Some(t),
            since_ms: match (f.since_ms, created) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            ..f.clone()
        };
        out.extend(st.gov.events(&one).await?);
    }
    out.sort_by_key(|e| std::cmp::Reverse((e.ts_ms, e.id)));
    out.truncate(if f.limit > 0 { f.limit as usize } else { 1000 });
    Ok(out)
}

/// `GET /v1/reports/sla`: only the caller's subtree, each tenant from its creation on (a
/// tenant created after `from` is reported again from its creation), without the host name.
pub async fn report(
    st: &AppState,
    caller: &Caller,
    mut r: crate::report::Report,
) -> Result<crate::report::Report, Problem> {
    if caller.scope.is_none() {
        return Ok(r);
    }
    let specs = stored(st).await?;
    r.host = String::new();
    r.tenants
        .retain(|t| TenantName::parse(&t.tenant).is_ok_and(|n| in_scope(caller, &n, &specs)));
    for t in r.tenants.iter_mut() {
        let Ok(name) = TenantName::parse(&t.tenant) else {
            continue;
        };
        let Some(created) = specs.get(&name).map(|s| s.created_ms) else {
            continue;
        };
        if created > r.from_ms && created < r.to_ms {
            let again = st
                .gov
                .sla_report(created, r.to_ms, Some(&name), &st.usage_retention)
                .await?;
            if let Some(one) = again.tenants.into_iter().next() {
                *t = one;
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Role;

    fn n(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    fn specs(pairs: &[(&str, Option<&str>)]) -> Stored {
        pairs
            .iter()
            .map(|(name, parent)| {
                let spec = TenantSpec {
                    parent: parent.map(n),
                    ..Default::default()
                };
                (
                    n(name),
                    StoredTenant {
                        spec,
                        generation: 1,
                        created_ms: 0,
                        updated_ms: 0,
                    },
                )
            })
            .collect()
    }

    fn caller(scope: Option<&str>) -> Caller {
        Caller {
            name: "t".into(),
            role: Role::Admin,
            scope: scope.map(n),
        }
    }

    #[test]
    fn in_scope_is_the_tenant_and_its_descendants() {
        let s = specs(&[
            ("acme", None),
            ("acme-web", Some("acme")),
            ("acme-web-1", Some("acme-web")),
            ("globex", None),
            ("globex-web", Some("globex")),
            ("acmeish", None),
        ]);
        let acme = caller(Some("acme"));
        for (name, want) in [
            ("acme", true),
            ("acme-web", true),
            ("acme-web-1", true),
            ("globex", false),
            ("globex-web", false),
            ("acmeish", false),
            ("missing", false),
        ] {
            assert_eq!(in_scope(&acme, &n(name), &s), want, "{name}");
        }
        let web = caller(Some("acme-web"));
        assert!(in_scope(&web, &n("acme-web-1"), &s));
        assert!(
            !in_scope(&web, &n("acme"), &s),
            "a parent is outside its child's scope"
        );
        let all = caller(None);
        assert!(
            ["acme", "globex-web", "missing"]
                .iter()
                .all(|t| in_scope(&all, &n(t), &s))
        );
        // A corrupt cycle in the store ends the walk instead of looping.
        let cyc = specs(&[("a", Some("b")), ("b", Some("a"))]);
        assert!(!in_scope(&caller(Some("c")), &n("a"), &cyc));
        assert!(in_scope(&caller(Some("b")), &n("a"), &cyc));
    }
}
