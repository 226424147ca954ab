//! What both stores do with the desired state (issue 19): one trait, `DesiredStore`, for the
//! SQLite store of a single host (`Store`) and the PostgreSQL store a fleet shares
//! (`FleetStore`). Put a tenant's spec (who changed it, when; the generation it got), get
//! one, list them, delete one with the mode its processes are treated by. One suite of tests
//! (`tests/it/store_suite.rs`) runs every case against both, on a real SQLite file and a real
//! PostgreSQL server.
//!
//! The contract both keep: a put of a name that is not live creates it (`created`), any other
//! put bumps its generation by one; a child's parent must be live (`NoParent`); a tenant
//! with live children cannot be deleted (`HasChildren`); a get or delete of a name that is
//! not live is `NotFound`; a list is every live tenant in name order (byte order, whatever
//! the database's collation); a refused change writes nothing. Where the two differ, by
//! design: the fleet keeps a deleted tenant's row (with its mode, for the nodes), so its
//! generation goes on counting across a delete and a new put, where SQLite starts again at 1.
//!
//! Layer 1 (see `lib.rs`): imports `domain` and the store's own files; the engine calls it.

use super::fleet::{FleetError, FleetStore, FleetTenant, Snapshot, Write, Written};
use super::{
    NewEvent, Store, StoreError, TenantsChanged, delete_row, insert_event, q, upsert_tenant,
};
use crate::domain::event::Event;
use crate::domain::{DomainError, TenantName, TenantSpec, tenant};
use sqlx::Row;
use std::future::Future;

/// Errors of the desired state, the same kinds from either store.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("tenant '{0}' does not exist")]
    NotFound(TenantName),
    #[error("parent tenant '{parent}' of '{name}' does not exist: create it first")]
    NoParent {
        name: TenantName,
        parent: TenantName,
    },
    #[error("tenant '{name}' has children ({}): delete them first", join(children))]
    HasChildren {
        name: TenantName,
        children: Vec<TenantName>,
    },
    /// The single host's SQLite store failed.
    #[error(transparent)]
    Local(#[from] StoreError),
    /// The fleet's PostgreSQL store failed or could not be reached.
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

fn join(names: &[TenantName]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub type Result<T> = std::result::Result<T, DesiredError>;

/// Who makes a change, and when.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub actor: &'a str,
    pub now_ms: i64,
}

/// A live tenant of the desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub spec: TenantSpec,
    /// Bumped by every change.
    pub generation: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Who made the last put (`None` where the record of it is gone).
    pub actor: Option<String>,
}

/// The desired state, as both stores hold it. See the module header for the contract.
pub trait DesiredStore {
    /// Creates or replaces `name`'s spec.
    fn put(
        &self,
        name: &TenantName,
        spec: &TenantSpec,
        by: Change<'_>,
    ) -> impl Future<Output = Result<Written>> + Send;

    /// A live tenant.
    fn get(&self, name: &TenantName) -> impl Future<Output = Result<Desired>> + Send;

    /// Every live tenant, in name order.
    fn list(&self) -> impl Future<Output = Result<Vec<(TenantName, Desired)>>> + Send;

    /// Deletes a live tenant; `mode` is how its processes are treated (`refuse`, `kill`,
    /// `move_to:NAME`), kept with the delete.
    fn delete(
        &self,
        name: &TenantName,
        mode: &str,
        by: Change<'_>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A tenant's row with the actor of its last put (the last creation or change event).
const SELECT_SQLITE: &str = "SELECT name, spec, generation, created_ms, updated_ms,
        (SELECT actor FROM events e WHERE e.tenant = t.name AND e.kind IN (?1, ?2)
         ORDER BY e.ts_ms DESC, e.id DESC LIMIT 1) AS actor
    FROM tenants t";

/// The kinds of the events a put records.
fn put_kinds() -> (String, String) {
    let created = Event::TenantCreated {
        spec: Box::default(),
    };
    let changed = Event::TenantChanged { changes: vec![] };
    (created.columns().0, changed.columns().0)
}

fn sqlite_row(
    r: &sqlx::sqlite::SqliteRow,
) -> std::result::Result<(TenantName, Desired), StoreError> {
    let name: String = r.get("name");
    let corrupt = |why: String| StoreError::Corrupt {
        name: name.clone(),
        why,
    };
    let tn = TenantName::parse(&name).map_err(|e| corrupt(e.to_string()))?;
    let spec: TenantSpec =
        serde_json::from_str(r.get::<&str, _>("spec")).map_err(|e| corrupt(e.to_string()))?;
    Ok((
        tn,
        Desired {
            spec,
            generation: r.get("generation"),
            created_ms: r.get("created_ms"),
            updated_ms: r.get("updated_ms"),
            actor: r.get("actor"),
        },
    ))
}

impl DesiredStore for Store {
    /// One `BEGIN IMMEDIATE` transaction: the parent checked, the old spec read, the row
    /// written, and the event (`tenant_created` with the spec, or `tenant_changed` with the
    /// fields it touched) recorded with the actor.
    async fn put(&self, name: &TenantName, spec: &TenantSpec, by: Change<'_>) -> Result<Written> {
        let json = serde_json::to_string(spec).expect("a spec always serializes");
        let mut w = self.begin_write().await?;
        let r = async {
            if let Some(p) = &spec.parent {
                let live: Option<i64> = sqlx::query_scalar("SELECT 1 FROM tenants WHERE name = ?1")
                    .bind(p.as_str())
                    .fetch_optional(w.conn())
                    .await
                    .map_err(q("read parent"))?;
                if live.is_none() {
                    return Ok(Err(DesiredError::NoParent {
                        name: name.clone(),
                        parent: p.clone(),
                    }));
                }
            }
            let old: Option<String> =
                sqlx::query_scalar("SELECT spec FROM tenants WHERE name = ?1")
                    .bind(name.as_str())
                    .fetch_optional(w.conn())
                    .await
                    .map_err(q("read tenant"))?;
            let old: Option<TenantSpec> = match old {
                Some(o) => Some(serde_json::from_str(&o).map_err(|e| StoreError::Corrupt {
                    name: name.to_string(),
                    why: e.to_string(),
                })?),
                None => None,
            };
            let generation = upsert_tenant(w.conn(), name, spec, &json, by.now_ms).await?;
            let event = match &old {
                None => Event::TenantCreated {
                    spec: Box::new(spec.clone()),
                },
                Some(o) => Event::TenantChanged {
                    changes: tenant::spec_changes(o, spec),
                },
            };
            let event = NewEvent {
                ts_ms: by.now_ms,
                tenant: Some(name.to_string()),
                actor: Some(by.actor.to_string()),
                event,
            };
            insert_event(w.conn(), &event).await?;
            Ok(Ok(Written {
                generation,
                created: old.is_none(),
            }))
        }
        .await;
        let _changed = TenantsChanged(&self.tenants_version);
        w.commit(r).await?
    }

    async fn get(&self, name: &TenantName) -> Result<Desired> {
        let (created, changed) = put_kinds();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_SQLITE} WHERE t.name = ?3"
        )))
        .bind(created)
        .bind(changed)
        .bind(name.as_str())
        .fetch_optional(self.pool())
        .await
        .map_err(q("read tenant"))?;
        match row {
            Some(r) => Ok(sqlite_row(&r)?.1),
            None => Err(DesiredError::NotFound(name.clone())),
        }
    }

    async fn list(&self) -> Result<Vec<(TenantName, Desired)>> {
        let (created, changed) = put_kinds();
        let rows = sqlx::query(SELECT_SQLITE)
            .bind(created)
            .bind(changed)
            .fetch_all(self.pool())
            .await
            .map_err(q("list tenants"))?;
        let mut out = rows
            .iter()
            .map(sqlite_row)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// One transaction: children looked for, the row removed, `tenant_deleted` with the mode
    /// recorded. A tenant that is not there records nothing.
    async fn delete(&self, name: &TenantName, mode: &str, by: Change<'_>) -> Result<()> {
        let mut w = self.begin_write().await?;
        let r = async {
            let kids: Vec<String> =
                sqlx::query_scalar("SELECT name FROM tenants WHERE parent = ?1 ORDER BY name")
                    .bind(name.as_str())
                    .fetch_all(w.conn())
                    .await
                    .map_err(q("list children"))?;
            if !kids.is_empty() {
                let children = kids
                    .iter()
                    .map(|k| {
                        TenantName::parse(k).map_err(|e| StoreError::Corrupt {
                            name: k.clone(),
                            why: e.to_string(),
                        })
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                return Ok(Err(DesiredError::HasChildren {
                    name: name.clone(),
                    children,
                }));
            }
            if !delete_row(w.conn(), name).await? {
                return Ok(Err(DesiredError::NotFound(name.clone())));
            }
            let event = NewEvent {
                ts_ms: by.now_ms,
                tenant: Some(name.to_string()),
                actor: Some(by.actor.to_string()),
                event: Event::TenantDeleted { mode: mode.into() },
            };
            insert_event(w.conn(), &event).await?;
            Ok(Ok(()))
        }
        .await;
        let _changed = TenantsChanged(&self.tenants_version);
        w.commit(r).await?
    }
}

/// The live children of `name` in `snap`, in name order.
fn live_children(snap: &Snapshot, name: &TenantName) -> Vec<TenantName> {
    snap.tenants
        .iter()
        .filter(|(_, t)| t.deleted.is_none() && t.spec.parent.as_ref() == Some(name))
        .map(|(n, _)| n.clone())
        .collect()
}

/// A fleet tenant as the desired state, `None` once deleted.
fn live(t: FleetTenant) -> Option<Desired> {
    t.deleted.is_none().then_some(Desired {
        spec: t.spec,
        generation: t.generation,
        created_ms: t.created_ms,
        updated_ms: t.updated_ms,
        actor: t.actor,
    })
}

/// `r` of a fleet write whose check may have refused it with `refusal`.
fn refused<T>(r: std::result::Result<T, FleetError>, refusal: Option<DesiredError>) -> Result<T> {
    match (r, refusal) {
        (Err(FleetError::Refused(_)), Some(why)) => Err(why),
        (r, _) => Ok(r?),
    }
}

/// A refusal's placeholder for the fleet store's check (the caller returns its own kind).
fn refusal() -> DomainError {
    DomainError::conflict("name", "refused by the desired state's rules")
}

impl DesiredStore for FleetStore {
    /// One transaction under the fleet-wide lock (`FleetStore::write`), the parent checked.
    async fn put(&self, name: &TenantName, spec: &TenantSpec, by: Change<'_>) -> Result<Written> {
        let mut why = None;
        let check = |snap: &Snapshot| {
            if let Some(p) = &spec.parent
                && snap.tenants.get(p).is_none_or(|t| t.deleted.is_some())
            {
                why = Some(DesiredError::NoParent {
                    name: name.clone(),
                    parent: p.clone(),
                });
                return Err(refusal());
            }
            Ok(())
        };
        let put = Write::Put(Box::new(spec.clone()));
        let r = self.write(name, &put, by.actor, by.now_ms, check).await;
        let written = refused(r, why)?;
        Ok(written.expect("a put always writes"))
    }

    async fn get(&self, name: &TenantName) -> Result<Desired> {
        let mut snap = self.snapshot().await?;
        snap.tenants
            .remove(name)
            .and_then(live)
            .ok_or_else(|| DesiredError::NotFound(name.clone()))
    }

    async fn list(&self) -> Result<Vec<(TenantName, Desired)>> {
        let snap = self.snapshot().await?;
        // A BTreeMap: in name order, whatever the database's collation.
        Ok(snap
            .tenants
            .into_iter()
            .filter_map(|(n, t)| Some((n, live(t)?)))
            .collect())
    }

    /// One transaction under the fleet-wide lock; the row stays with the mode.
    async fn delete(&self, name: &TenantName, mode: &str, by: Change<'_>) -> Result<()> {
        let mut why = None;
        let check = |snap: &Snapshot| {
            let children = live_children(snap, name);
            if !children.is_empty() {
                why = Some(DesiredError::HasChildren {
                    name: name.clone(),
                    children,
                });
                return Err(refusal());
            }
            Ok(())
        };
        let del = Write::Delete(mode.to_string());
        let r = self.write(name, &del, by.actor, by.now_ms, check).await;
        match refused(r, why)? {
            Some(_) => Ok(()),
            None => Err(DesiredError::NotFound(name.clone())),
        }
    }
}
