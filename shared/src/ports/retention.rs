//! What the retention run needs from storage: a resumable sweep of expired items, a
//! checkpoint, the close-out of closed tenants, and a read-only view of every stored item
//! (for the privacy and TTL checks).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{RetentionClass, TenantId};
use crate::store_error::StoreError;

/// One page of the sweep.
#[derive(Clone, Debug, Default)]
pub struct SweepPage {
    /// Items deleted, by retention class (the adapter derives it from each item's type).
    pub deleted: BTreeMap<&'static str, usize>,
    /// Items examined (the read cost of the page).
    pub examined: usize,
    /// Closed tenants not closed out yet, found on this page.
    pub closed_tenants: Vec<TenantId>,
    /// Active tenants found on this page (the daily template sync's list).
    pub active_tenants: Vec<TenantId>,
    /// Suspended tenants found on this page (their audit chains are checked with the
    /// active tenants'; nothing of Meta's is synced for them).
    pub suspended_tenants: Vec<TenantId>,
    /// Messages still `accepted` or `sending` whose last move is older than
    /// `domain::UNSENT_STALE_AFTER` (tenant, message id): their dispatch job was lost (parked
    /// on the dead-letter queue and expired there), for the run to settle.
    pub stale_messages: Vec<(TenantId, String)>,
    /// Broadcasts still `scheduled` or fanning out after their recipient list's backstop
    /// (`Broadcast::list_expires_at`) passed (tenant, broadcast id): their fan-out job was
    /// lost, for the run to close (`broadcasts::settle_lost`).
    pub stale_broadcasts: Vec<(TenantId, String)>,
    /// Ended API keys (revoked or expired) found without a TTL — written before ended keys
    /// were given one — whose two copies this page gave their end +
    /// [`ENDED_KEY_RETENTION`](crate::domain::ENDED_KEY_RETENTION) (the backfill; a store
    /// that derives the TTL from the record has none to give).
    pub ended_keys_given_ttl: usize,
    /// Where the next page starts; `None` when the pass over the table is complete.
    pub next: Option<String>,
}

impl SweepPage {
    /// Counts `n` deleted items of `class`.
    pub fn count(&mut self, class: RetentionClass, n: usize) {
        if n > 0 {
            *self.deleted.entry(class.as_str()).or_default() += n;
        }
    }
}

/// The expiries a close-out gives a closed tenant's items (epoch seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseOutTtls {
    /// The tenant item: the account record (Billing class, from the closing date).
    pub tenant: i64,
    /// Its active configuration: API keys (both copies), opt-outs, users and their email
    /// claims, settings (Messages class, from the closing date).
    pub config: i64,
    /// Its audit chain head (Audit class, from the closing date).
    pub audit_head: i64,
}

/// What a close-out changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CloseOutCounts {
    pub keys_revoked: usize,
    pub items_given_ttl: usize,
    /// The closed tenant's users' email claims deleted: the addresses are free to be
    /// used again at once (its users' items keep no sign-in material).
    pub emails_freed: usize,
    pub phone_route_removed: bool,
    /// The close-out reached its deadline before it was done (the tenant is not marked
    /// closed out): the next call goes on.
    pub cut_short: bool,
}

/// One stored item as the table holds it: keys, TTL, every attribute (as JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredItem {
    pub pk: String,
    pub sk: String,
    pub ttl: Option<i64>,
    pub attributes: serde_json::Value,
}

#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Examines at most `page_size` items from `start` (a checkpoint from an earlier page;
    /// `None` = the table's beginning), deletes those whose TTL is at or before `now`, and
    /// names the closed tenants that are not closed out yet and the stale unsent messages.
    async fn sweep_page(
        &self,
        now: DateTime<Utc>,
        start: Option<&str>,
        page_size: usize,
    ) -> Result<SweepPage, StoreError>;
    /// The saved position of an unfinished pass, if any.
    async fn checkpoint(&self) -> Result<Option<String>, StoreError>;
    /// Saves (or, with `None`, clears) the position.
    async fn save_checkpoint(
        &self,
        next: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Finishes a closed tenant's closing: revokes both copies of its API keys (its console
    /// sessions stopped authenticating at the closing and expire by their TTL), removes its
    /// phone-number route (only if it still names this tenant),
    /// gives its active configuration and its audit head their TTLs, and finally gives the
    /// tenant item its TTL and `closed_out_at` (only if it is `closed`). Every step is
    /// idempotent, so a run cut short is finished by the next one. Past `deadline` it
    /// stops (`cut_short`), checked before each page but the first (a call begins again
    /// at the API keys' first page: what is done costs a read, or a refused conditional
    /// write for key copies, email claims and routes); the run then keeps its checkpoint at
    /// the sweep page that named the tenant, so the next run begins with this close-out,
    /// with what is left of its budget. It holds no more than a page of items at a time.
    async fn close_out(
        &self,
        tenant: &TenantId,
        ttls: CloseOutTtls,
        now: DateTime<Utc>,
        deadline: std::time::Instant,
    ) -> Result<CloseOutCounts, StoreError>;
    /// Whether the tenant was closed out (the marker the sweep skips).
    async fn closed_out_at(&self, tenant: &TenantId) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Every stored item, expired or not (read-only; for checks and operators' audits).
    async fn stored_items(&self) -> Result<Vec<StoredItem>, StoreError>;
}
