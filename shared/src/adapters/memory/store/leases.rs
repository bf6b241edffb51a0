//! `HeavyRequestLeases` on the memory store: the same rules as DynamoDB (A75), under the
//! one lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::MemoryStore;
use crate::domain::{TenantId, SEND_SLOT_RETENTION};
use crate::ports::{Heavy, HeavyLease, HeavyRequestLeases};
use crate::store_error::StoreError;

/// A tenant's lease of a class as the table's `LEASE#{tenant}` / `HEAVY#{class}` item holds
/// it.
#[derive(Clone, Debug)]
pub(in crate::adapters::memory) struct HeldLease {
    pub(in crate::adapters::memory) owner: String,
    /// When it lapses (epoch milliseconds).
    pub(in crate::adapters::memory) expires_at_ms: i64,
    /// The item's TTL (epoch seconds: taken + an hour, the SendSlot class).
    pub(in crate::adapters::memory) ttl: i64,
}

#[async_trait]
impl HeavyRequestLeases for MemoryStore {
    async fn acquire_heavy_lease(
        &self,
        tenant: &TenantId,
        class: Heavy,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        furthest: DateTime<Utc>,
    ) -> Result<HeavyLease, StoreError> {
        let mut s = self.lock()?;
        let key = (tenant.clone(), class);
        if let Some(held) = s.heavy_leases.get(&key) {
            // `attribute_not_exists(pk) OR expires_at < :now OR expires_at > :furthest`,
            // as on DynamoDB.
            let at = held.expires_at_ms;
            if at >= now.timestamp_millis() && at <= furthest.timestamp_millis() {
                return Ok(HeavyLease::Held {
                    until: DateTime::<Utc>::from_timestamp_millis(held.expires_at_ms),
                });
            }
        }
        s.heavy_leases.insert(
            key,
            HeldLease {
                owner: owner.to_owned(),
                expires_at_ms: until.timestamp_millis(),
                ttl: now
                    .timestamp()
                    .saturating_add(SEND_SLOT_RETENTION.as_secs() as i64),
            },
        );
        Ok(HeavyLease::Taken)
    }

    async fn release_heavy_lease(
        &self,
        tenant: &TenantId,
        class: Heavy,
        owner: &str,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let key = (tenant.clone(), class);
        if s.heavy_leases.get(&key).is_some_and(|h| h.owner == owner) {
            s.heavy_leases.remove(&key);
        }
        Ok(())
    }
}
