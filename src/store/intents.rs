//! The intent journal's SQL: a kernel step recorded before it starts, removed in the same
//! transaction that commits the change it belongs to (or once it was undone). And the move
//! log ([`MoveLog`]): the placement rules' moves recorded in a file of their own, written
//! without a sync and without the database's write lock.

use super::{NewEvent, Result, Store, TenantsChanged, delete_row, insert_event, q};
use crate::domain::TenantName;
use sqlx::Row;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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

/// The placement rules' journal of moves (issue 17): the records of one batch of moves, kept
/// in a file next to the database (`<database>-moves`) from before the first move until the
/// last one is checked, then cut off. Only what a crash *of the daemon* can leave half-done
/// is recorded here: a move split across v1 hierarchies, which the next start undoes like an
/// attach record of the database (`engine::journal::recover`).
///
/// Why neither the database nor a sync: a record names a live process (PID and start time)
/// and where it was, so it only matters while that process lives. A daemon crash leaves what
/// was written in the kernel's page cache, where the next start reads it; a crash of the
/// host (what a sync guards against) ends every process the record could name. So a record
/// is one `pwrite` and its end one `ftruncate`, and neither waits for the database's write
/// lock (held by the sampler's transactions) nor for a disk. One batch at a time (the
/// governor's write lock is held from the record to its end), so the file holds at most one
/// batch: one JSON object per line, as [`Intent`]; a line that does not parse (a torn write
/// when the host lost power) is dropped.
#[derive(Debug)]
pub struct MoveLog {
    path: PathBuf,
    file: std::fs::File,
    /// Set from a record until the file is cut off again (a failed cut is redone first).
    dirty: bool,
    next_id: i64,
}

impl MoveLog {
    /// Opens (or creates) the log at `path`, keeping what a crash left in it for `left`.
    pub fn open(path: &Path) -> std::io::Result<MoveLog> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let dirty = file.metadata()?.len() > 0;
        Ok(MoveLog {
            path: path.to_path_buf(),
            file,
            dirty,
            next_id: 1,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records a crash left (a batch whose end was never written), oldest first.
    pub fn left(&self) -> std::io::Result<Vec<Intent>> {
        let text = std::fs::read(&self.path)?;
        Ok(text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).ok()?;
                Some(Intent {
                    id: v.get("id")?.as_i64()?,
                    ts_ms: v.get("ts_ms")?.as_i64()?,
                    tenant: v.get("tenant")?.as_str()?.to_string(),
                    body: v.get("body")?.clone(),
                })
            })
            .collect())
    }

    /// Records `steps` (one batch) before their moves: one write at the start of the file.
    /// Returns their ids (for `keep` after a recovery).
    pub fn record(&mut self, steps: &[NewIntent]) -> std::io::Result<Vec<i64>> {
        if self.dirty {
            self.file.set_len(0)?;
        }
        let mut buf = Vec::with_capacity(steps.len() * 160);
        let mut ids = Vec::with_capacity(steps.len());
        for s in steps {
            let id = self.next_id;
            self.next_id += 1;
            ids.push(id);
            let line = serde_json::json!({
                "id": id, "ts_ms": s.ts_ms, "tenant": s.tenant, "body": s.body,
            });
            serde_json::to_writer(&mut buf, &line).expect("JSON to memory");
            buf.push(b'\n');
        }
        self.dirty = true;
        self.file.write_all_at(&buf, 0)?;
        Ok(ids)
    }

    /// The batch's moves are over (each whole, or undone): its records go.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.dirty = false;
        Ok(())
    }

    /// After a recovery: only `stay` remain (tried again by the next pass).
    pub fn keep(&mut self, stay: &[Intent]) -> std::io::Result<()> {
        if stay.is_empty() {
            return self.clear();
        }
        let steps: Vec<NewIntent> = stay
            .iter()
            .map(|i| NewIntent {
                ts_ms: i.ts_ms,
                tenant: i.tenant.clone(),
                body: i.body.clone(),
            })
            .collect();
        self.record(&steps).map(|_| ())
    }
}

impl Store {
    /// Where this database's [`MoveLog`] lives: `<database>-moves`.
    pub fn move_log_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push("-moves");
        PathBuf::from(p)
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

    /// What a daemon crash leaves in the move log (a batch recorded, never cleared) is read
    /// back by the next open; a cleared batch leaves nothing; a torn line is dropped; `keep`
    /// leaves only the records that stay.
    #[test]
    fn the_move_log_keeps_a_batch_until_it_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db-moves");
        let mut log = MoveLog::open(&path).unwrap();
        assert!(log.left().unwrap().is_empty());
        log.record(&[step(1), step(2)]).unwrap();
        log.clear().unwrap();
        assert!(log.left().unwrap().is_empty());
        // A batch recorded, then the daemon stopped before its end.
        let ids = log.record(&[step(3), step(4)]).unwrap();
        drop(log);
        let mut log = MoveLog::open(&path).unwrap();
        let left = log.left().unwrap();
        assert_eq!(
            left.iter().map(|i| (i.id, i.ts_ms)).collect::<Vec<_>>(),
            vec![(ids[0], 3), (ids[1], 4)]
        );
        assert_eq!(left[0].body, step(3).body);
        assert_eq!(left[0].tenant, "a");
        // The next batch replaces the leftover one whole (it is cut off first).
        log.record(&[step(5)]).unwrap();
        assert_eq!(log.left().unwrap().len(), 1);
        log.keep(&left[1..]).unwrap();
        let now = log.left().unwrap();
        assert_eq!((now.len(), now[0].ts_ms), (1, 4));
        log.keep(&[]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // A torn last line (power lost mid-write) is dropped, the whole ones are kept.
        log.record(&[step(6)]).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"id\": 9, \"ts_").unwrap();
        assert_eq!(log.left().unwrap().len(), 1);
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
