//! The intent journal's SQL: a kernel step recorded before it starts, removed in the same
//! transaction that commits the change it belongs to (or once it was undone).

use super::{NewEvent, Result, Store, TenantsChanged, delete_row, insert_event, q};
use crate::domain::TenantName;
use sqlx::Row;

/// A kernel step to record before it starts; `body` is the engine's own JSON for it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIntent {
    pub ts_ms: i64,
    pub tenant: String,
    pub body: serde_json::Value,
}

/// A recorded step that has not been committed or undone yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub id: i64,
    pub ts_ms: i64,
    pub tenant: String,
    pub body: serde_json::Value,
}

async fn insert_intent(c: &mut sqlx::SqliteConnection, i: &NewIntent) -> Result<i64> {
    sqlx::query_scalar("INSERT INTO intents (ts_ms, tenant, body) VALUES (?1, ?2, ?3) RETURNING id")
        .bind(i.ts_ms)
        .bind(&i.tenant)
        .bind(i.body.to_string())
        .fetch_one(c)
        .await
        .map_err(q("record intent"))
}

async fn remove_intent(c: &mut sqlx::SqliteConnection, id: i64) -> Result<()> {
    sqlx::query("DELETE FROM intents WHERE id = ?1")
        .bind(id)
        .execute(c)
        .await
        .map_err(q("remove intent"))?;
    Ok(())
}

impl Store {
    /// Records a step durably (committed and synced) before the kernel is touched.
    pub async fn add_intent(&self, i: &NewIntent) -> Result<i64> {
        let mut w = self.begin_write().await?;
        let r = insert_intent(w.conn(), i).await;
        w.commit(r).await
    }

    /// Removes a finished or undone step and records `events`, in one transaction.
    pub async fn finish_intent(&self, id: i64, events: &[NewEvent]) -> Result<()> {
        let mut w = self.begin_write().await?;
        let r = async {
            remove_intent(w.conn(), id).await?;
            for e in events {
                insert_event(w.conn(), e).await?;
            }
            Ok(())
        }
        .await;
        w.commit(r).await
    }

    /// `add_intent` for several steps in one transaction (one sync): the placer's batch.
    /// The ids are in the order of `steps`.
    pub async fn add_intents(&self, steps: &[NewIntent]) -> Result<Vec<i64>> {
        let mut w = self.begin_write().await?;
        let r = async {
            let mut ids = Vec::with_capacity(steps.len());
            for i in steps {
                ids.push(insert_intent(w.conn(), i).await?);
            }
            Ok(ids)
        }
        .await;
        w.commit(r).await
    }

    /// `finish_intent` for several steps in one transaction: removes them and records
    /// `events`.
    pub async fn finish_intents(&self, ids: &[i64], events: &[NewEvent]) -> Result<()> {
        let mut w = self.begin_write().await?;
        let r = async {
            for id in ids {
                remove_intent(w.conn(), *id).await?;
            }
            for e in events {
                insert_event(w.conn(), e).await?;
            }
            Ok(())
        }
        .await;
        w.commit(r).await
    }

    /// The steps not committed or undone yet, oldest first.
    pub async fn intents(&self) -> Result<Vec<Intent>> {
        let rows = sqlx::query("SELECT id, ts_ms, tenant, body FROM intents ORDER BY id")
            .fetch_all(self.pool())
            .await
            .map_err(q("list intents"))?;
        Ok(rows
            .into_iter()
            .map(|r| Intent {
                id: r.get("id"),
                ts_ms: r.get("ts_ms"),
                tenant: r.get("tenant"),
                body: serde_json::from_str(r.get::<&str, _>("body"))
                    .unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }

    /// Deletes a tenant, records `event` and the step that removes it from the kernel, in one
    /// transaction: the delete is stored before anything is killed, moved or removed. Returns
    /// the step's id; `NotFound` style `None` when the tenant did not exist.
    pub async fn delete_tenant_with(
        &self,
        name: &TenantName,
        event: NewEvent,
        intent: &NewIntent,
    ) -> Result<Option<i64>> {
        let mut w = self.begin_write().await?;
        let r = async {
            if !delete_row(w.conn(), name).await? {
                return Ok(None);
            }
            insert_event(w.conn(), &event).await?;
            Ok(Some(insert_intent(w.conn(), intent).await?))
        }
        .await;
        let _changed = TenantsChanged(&self.tenants_version);
        w.commit(r).await
    }

    /// Puts back a tenant whose delete could not be carried out in the kernel (same spec,
    /// generation and creation time), records `event` and removes the step, in one transaction.
    pub async fn restore_tenant(
        &self,
        name: &TenantName,
        stored: &super::StoredTenant,
        event: NewEvent,
        intent: i64,
    ) -> Result<()> {
        let json = serde_json::to_string(&stored.spec).expect("a spec always serializes");
        let parent = stored.spec.parent.as_ref().map(|p| p.as_str().to_string());
        let mut w = self.begin_write().await?;
        let r = async {
            sqlx::query(
                "INSERT INTO tenants (name, parent, spec, generation, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(name.as_str())
            .bind(parent)
            .bind(&json)
            .bind(stored.generation)
            .bind(stored.created_ms)
            .bind(stored.updated_ms)
            .execute(w.conn())
            .await
            .map_err(q("restore tenant"))?;
            insert_event(w.conn(), &event).await?;
            remove_intent(w.conn(), intent).await
        }
        .await;
        let _changed = TenantsChanged(&self.tenants_version);
        w.commit(r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantSpec;
    use crate::domain::event::Event;

    fn ev(event: Event, ts: i64) -> NewEvent {
        NewEvent {
            ts_ms: ts,
            tenant: Some("a".into()),
            actor: None,
            event,
        }
    }

    fn step(n: i64) -> NewIntent {
        NewIntent {
            ts_ms: n,
            tenant: "a".into(),
            body: serde_json::json!({"step": "create", "dir": "a"}),
        }
    }

    async fn intent_ids(store: &Store) -> Vec<i64> {
        store
            .intents()
            .await
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect()
    }

    #[tokio::test]
    async fn a_record_lives_until_its_change_commits_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path).await.unwrap();
        let a = TenantName::parse("a").unwrap();
        let id = store.add_intent(&step(1)).await.unwrap();
        let left = store.add_intent(&step(2)).await.unwrap();
        store
            .put_tenant_with(
                &a,
                &TenantSpec::default(),
                3,
                ev(
                    Event::TenantCreated {
                        spec: Box::default(),
                    },
                    3,
                ),
                Some(id),
            )
            .await
            .unwrap();
        store.close().await;
        // What a crash leaves: only the record whose change never committed.
        let store = Store::open(&path).await.unwrap();
        assert_eq!(intent_ids(&store).await, vec![left]);
        store
            .finish_intent(
                left,
                &[ev(
                    Event::CgroupRemoved {
                        path: "a".into(),
                        why: "crash".into(),
                    },
                    4,
                )],
            )
            .await
            .unwrap();
        assert!(store.intents().await.unwrap().is_empty());
    }

    /// A batch of records is written in one transaction and removed in one, with the
    /// events; a record of the batch not finished stays.
    #[tokio::test]
    async fn a_batch_of_records_is_added_and_finished_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path).await.unwrap();
        let ids = store
            .add_intents(&[step(1), step(2), step(3)])
            .await
            .unwrap();
        assert_eq!(ids.len(), 3);
        let listed: Vec<(i64, i64)> = store
            .intents()
            .await
            .unwrap()
            .iter()
            .map(|i| (i.id, i.ts_ms))
            .collect();
        assert_eq!(listed, vec![(ids[0], 1), (ids[1], 2), (ids[2], 3)]);
        assert!(store.add_intents(&[]).await.unwrap().is_empty());
        let done = ev(
            Event::CgroupRemoved {
                path: "a".into(),
                why: "test".into(),
            },
            4,
        );
        store
            .finish_intents(&[ids[0], ids[2]], std::slice::from_ref(&done))
            .await
            .unwrap();
        store.close().await;
        let store = Store::open(&path).await.unwrap();
        assert_eq!(intent_ids(&store).await, vec![ids[1]]);
    }

    #[tokio::test]
    async fn a_delete_and_its_record_commit_together_and_a_restore_undoes_both() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let a = TenantName::parse("a").unwrap();
        store
            .put_tenant(
                &a,
                &TenantSpec::default(),
                1,
                ev(
                    Event::TenantCreated {
                        spec: Box::default(),
                    },
                    1,
                ),
            )
            .await
            .unwrap();
        let before = store.tenants().await.unwrap()[&a].clone();
        let id = store
            .delete_tenant_with(
                &a,
                ev(
                    Event::TenantDeleted {
                        mode: "refuse".into(),
                    },
                    2,
                ),
                &step(2),
            )
            .await
            .unwrap()
            .expect("a existed");
        assert!(store.tenants().await.unwrap().is_empty());
        assert_eq!(store.intents().await.unwrap().len(), 1);
        // A second delete of the same name finds nothing and records nothing.
        let none = store
            .delete_tenant_with(
                &a,
                ev(
                    Event::TenantDeleted {
                        mode: "refuse".into(),
                    },
                    3,
                ),
                &step(3),
            )
            .await
            .unwrap();
        assert_eq!(none, None);
        assert_eq!(store.intents().await.unwrap().len(), 1);
        store
            .restore_tenant(
                &a,
                &before,
                ev(
                    Event::TenantDeleteUndone {
                        why: "EBUSY".into(),
                    },
                    4,
                ),
                id,
            )
            .await
            .unwrap();
        assert_eq!(store.tenants().await.unwrap()[&a], before);
        assert!(store.intents().await.unwrap().is_empty());
    }
}
