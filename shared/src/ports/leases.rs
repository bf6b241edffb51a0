//! A tenant's leases on its heavy requests, one at a time of each class (`http::access`'s
//! `heavy` routes: work that grows with the tenant's data, up to 20 s of it). Kept in the
//! store, not in a process, so that they hold across every Lambda instance (A75).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::TenantId;
use crate::store_error::StoreError;

/// The class of a heavy route, and of the lease it takes: a tenant has one lease of each,
/// so that a campaign's `recipients.csv` (open to the lowest role, called back to back)
/// cannot keep the admin's account-wide work, nor an operator's retry, from ever getting
/// its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Heavy {
    /// The account-wide admin routes: the export, the audit verification, the catalogue
    /// sync.
    Account,
    /// A campaign's `recipients.csv` (every role).
    Campaign,
    /// A campaign's `retry-failed` (operators and admins): its own class, so that a
    /// `read_only` key downloading `recipients.csv` back to back does not hold it.
    Retry,
    /// The operator's platform-wide route: the platform chain's verification. Its one
    /// lease is the platform's, held by [`platform_holder`], never a tenant's.
    Platform,
}

/// Who holds the [`Heavy::Platform`] lease: the nil ULID, which is no tenant's id (a
/// tenant's is made from its onboarding's time, never 1970's), so its item
/// (`LEASE#00000000000000000000000000` / `HEAVY#platform`) is no tenant's either.
pub fn platform_holder() -> TenantId {
    TenantId::from_trusted("00000000000000000000000000")
}

impl Heavy {
    /// Its name in the lease's key (`HEAVY#{name}`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Heavy::Account => "account",
            Heavy::Campaign => "campaign",
            Heavy::Retry => "retry",
            Heavy::Platform => "platform",
        }
    }
}

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

/// One lease per tenant and [`Heavy`] class (each its own: one held leaves the other
/// free): taken with a conditional write (none held, or the one held has
/// lapsed, or it lapses further ahead than any clock in step could have written), released
/// only by its owner.
#[async_trait]
pub trait HeavyRequestLeases: Send + Sync {
    /// Takes `tenant`'s `class` lease for `owner` (a fresh random token per request) until
    /// `until`, if no one holds it at `now`: none is stored, or the one stored lapsed
    /// before `now` (its process died, or its release failed), or it lapses after
    /// `furthest` (written by a clock ahead of this one, or before this one stepped back:
    /// no holder in step with `now` asks for that long). Of any number of concurrent
    /// callers whose clocks put no holder's expiry past their `furthest`, at most one is
    /// answered [`HeavyLease::Taken`] while it holds.
    async fn acquire_heavy_lease(
        &self,
        tenant: &TenantId,
        class: Heavy,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        furthest: DateTime<Utc>,
    ) -> Result<HeavyLease, StoreError>;
    /// Gives `tenant`'s `class` lease back if `owner` still holds it; a lease another owner took
    /// over (this one lapsed) or none at all is left as it is, and is no error.
    async fn release_heavy_lease(
        &self,
        tenant: &TenantId,
        class: Heavy,
        owner: &str,
    ) -> Result<(), StoreError>;
}
