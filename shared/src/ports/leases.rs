//! A tenant's lease on its one heavy request at a time (`http::access`'s `heavy` routes:
//! work that grows with the tenant's data, up to 20 s of it). Kept in the store, not in a
//! process, so that it holds across every Lambda instance (A75).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::TenantId;
use crate::store_error::StoreError;

/// How an attempt to take a tenant's heavy-request lease went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeavyLease {
    /// Taken: the caller's owner token holds it until the expiry it asked for, or until
    /// it releases it.
    Taken,
    /// Another owner holds it, until `until` (when it lapses unless released first;
    /// `None`: the store did not say).
    Held { until: Option<DateTime<Utc>> },
}

/// One lease per tenant: taken with a conditional write (none held, or the one held has
/// lapsed, or it lapses further ahead than any clock in step could have written), released
/// only by its owner.
#[async_trait]
pub trait HeavyRequestLeases: Send + Sync {
    /// Takes `tenant`'s lease for `owner` (a fresh random token per request) until
    /// `until`, if no one holds it at `now`: none is stored, or the one stored lapsed
    /// before `now` (its process died, or its release failed), or it lapses after
    /// `furthest` (written by a clock ahead of this one, or before this one stepped back:
    /// no holder in step with `now` asks for that long). Of any number of concurrent
    /// callers whose clocks put no holder's expiry past their `furthest`, at most one is
    /// answered [`HeavyLease::Taken`] while it holds.
    async fn acquire_heavy_lease(
        &self,
        tenant: &TenantId,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        furthest: DateTime<Utc>,
    ) -> Result<HeavyLease, StoreError>;
    /// Gives `tenant`'s lease back if `owner` still holds it; a lease another owner took
    /// over (this one lapsed) or none at all is left as it is, and is no error.
    async fn release_heavy_lease(&self, tenant: &TenantId, owner: &str) -> Result<(), StoreError>;
}
