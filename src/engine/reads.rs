//! The reads the API answers from: readiness, the stored tenants, the event log and a
//! tenant's usage history. Handlers call these, never the store, so every store access goes
//! through the engine (issue 16).

use super::{EngineError, Governor, Result};
use crate::domain::TenantName;
use crate::store::{Event, EventFilter, Retention, StoreError, Usage};

impl Governor {
    /// Whether the database can write; after a write found its filesystem full, this probes
    /// with a small write (`Store::check_writable`).
    pub async fn check_writable(&self) -> Result<()> {
        Ok(self.store.check_writable().await?)
    }

    /// Whether the database answers a read of the tenants table: one row at most, not every
    /// tenant (a readiness probe at 10,000 tenants read and parsed all of them; issue 15).
    pub async fn db_answers(&self) -> Result<()> {
        sqlx::query("SELECT 1 FROM tenants LIMIT 1")
            .fetch_optional(self.store.pool())
            .await
            .map_err(|source| StoreError::Query {
                op: "probe the tenants table",
                source,
            })?;
        Ok(())
    }

    /// The events `f` selects, newest first.
    pub async fn events(&self, f: &EventFilter) -> Result<Vec<Event>> {
        Ok(self.store.events(f).await?)
    }

    /// `name`'s usage over [from_ms, to_ms) in buckets of `step_s`, from the finest level
    /// `keep` still holds at `now_ms`; `NotFound` for a tenant that is not stored.
    pub async fn usage(
        &self,
        name: &TenantName,
        from_ms: i64,
        to_ms: i64,
        step_s: i64,
        now_ms: i64,
        keep: &Retention,
    ) -> Result<Usage> {
        // The desired state in memory (re-read only when the tenants changed), not a read of
        // every tenant from the database per request.
        if !self.read(|c| c.state.spec(name).is_some()).await? {
            return Err(EngineError::NotFound(name.to_string()));
        }
        Ok(self
            .store
            .usage(name.as_str(), from_ms, to_ms, step_s, now_ms, keep)
            .await?)
    }
}
