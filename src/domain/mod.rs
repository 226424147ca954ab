//! Pure domain logic: no clock, no IO, no async. Tenants and their SLA, the mapping to kernel
//! settings, the stats a cgroup reads as (`stats`), rates from samples (`usage`), the row the
//! usage history keeps (`usage_row`), its compressed column blocks (`usage_block`) and a sweep's
//! raw rows of a run of tenants as one body (`raw_slice`), which
//! stat figures a sweep reads (`cadence`), the desired state changed one tenant at a time
//! (`desired`), SLA accounting (`sla`) and the engine that applies it to every sweep
//! (`sla_engine`), the events the log records (`event`), and the rules that say which tenant a
//! running process belongs to (`placement`), which tenants a fleet node enforces
//! (`fleet`), the network egress policy (`egress`) and the nftables table that enforces it
//! (`nft`).
//!
//! The one typed model: the other layers fill these types, store them and render them.
//! Layer 0 (see `lib.rs`): the domain imports no other module of the crate.

pub mod cadence;
pub mod desired;
pub mod egress;
pub mod error;
pub mod event;
pub mod fleet;
pub mod launch;
pub mod nft;
pub mod placement;
pub mod plan;
pub mod raw_slice;
pub mod schema;
pub mod sla;
pub mod sla_engine;
pub mod stats;
pub mod tenant;
pub mod units;
pub mod usage;
pub mod usage_block;
pub mod usage_row;

pub use plan::{Limit, Settings, TenantPlan};
pub use tenant::{DomainError, TenantName, TenantSpec};

/// Takes `kept`, an emptied `Vec` kept for its allocation, to hold `n` entries: a new one
/// instead when `kept` has room for more than twice as many (the tenants went), so that a host
/// that had 10,000 tenants and has 100 does not keep the room of 10,000.
pub fn take_room<T>(kept: &mut Vec<T>, n: usize) -> Vec<T> {
    let v = std::mem::take(kept);
    if v.capacity() > 2 * n.max(32) {
        Vec::new()
    } else {
        v
    }
}

/// A map by tenant name that every sweep looks up for each tenant: hashed with foldhash, not
/// the standard SipHash (issue 15: at 10,000 tenants the sampler's and the SLA engine's
/// dozen lookups a tenant and sweep hashed 120,000 names a second). Its seed is random per
/// process; the names are the operator's, not a stranger's input.
pub type NameMap<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests {
    #[test]
    fn room_is_kept_unless_it_is_more_than_twice_what_is_needed() {
        let mut kept: Vec<u8> = Vec::with_capacity(100);
        let at = kept.as_ptr();
        let taken = super::take_room(&mut kept, 50);
        assert_eq!(taken.as_ptr(), at);
        assert_eq!(kept.capacity(), 0, "taken");
        let mut kept: Vec<u8> = Vec::with_capacity(1000);
        assert_eq!(super::take_room(&mut kept, 500).capacity(), 1000);
        let mut kept: Vec<u8> = Vec::with_capacity(1000);
        assert_eq!(
            super::take_room(&mut kept, 100).capacity(),
            0,
            "the tenants went"
        );
    }
}
