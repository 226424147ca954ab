//! Pure domain logic: no clock, no IO, no async. Tenants and their SLA, the mapping to kernel
//! settings, rates from samples and SLA accounting.

pub mod plan;
pub mod schema;
pub mod sla;
pub mod tenant;
pub mod units;
pub mod usage;

pub use plan::{Limit, Settings, TenantPlan};
pub use tenant::{DomainError, TenantName, TenantSpec};
