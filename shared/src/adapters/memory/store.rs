//! Every store port in memory (local mode, tests), behind one mutex, so each invariant
//! the DynamoDB adapter keeps with a conditional write holds here by construction. It
//! passes the same contract suite as the DynamoDB adapter.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{MessageError, MessageId, MessageRecord, MessageStatus, StatusEvent, TenantId};
use crate::store_error::StoreError;
// The memory adapter's cursors, shared with the service's own lists (ports).
use crate::ports::{cursor_position, page_cursor};
mod broadcasts;
mod callbacks;
mod contacts;
mod idempotency;
mod leases;
mod numbers;
mod optouts;
mod retention;
mod templates;
mod throttle;

use crate::ports::{
    ApiKeyPage, ApiKeyRecord, ApiKeyStore, AuditEvent, AuditHead, AuditLink, AuditLog, AuditQuery,
    Clock, Ledger, LedgerEntry, MessagePage, MessageQuery, MessageStore, ParkedAudit,
    QualityCounter, QualityCounts, QualityStats, RequestKeyRecord, StaleIntent, StatusChange,
    Tenant, TenantStatus, TenantStore, TopUpOnce, Transition,
};

/// A message's key in [`State::messages`], so that a lookup borrows the tenant and the id
/// (`message_key(&(tenant, id))`) instead of cloning both into a tuple: two allocations a lookup,
/// and a webhook makes two in local mode (issue #13). Ordered as the tuple is.
pub(super) trait MessageKey {
    fn parts(&self) -> (&TenantId, &MessageId);
}

impl MessageKey for (TenantId, MessageId) {
    fn parts(&self) -> (&TenantId, &MessageId) {
        (&self.0, &self.1)
    }
}

impl MessageKey for (&TenantId, &MessageId) {
    fn parts(&self) -> (&TenantId, &MessageId) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn MessageKey + 'a> for (TenantId, MessageId) {
    fn borrow(&self) -> &(dyn MessageKey + 'a) {
        self
    }
}

impl PartialEq for dyn MessageKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn MessageKey + '_ {}

impl PartialOrd for dyn MessageKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn MessageKey + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl std::hash::Hash for dyn MessageKey + '_ {
    /// As the owned tuple hashes (a reference hashes as what it refers to).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

/// Hash maps that hold their keys in shards, each key in the one its [`ShardKey::shard`]
/// names: a hash map grows by moving all of itself at once, under the store's lock, and one
/// map of a million entries (a minute of sends) paused every request for a quarter of a
/// second and more as it grew (BENCHMARKS.md, stop 29). Each shard grows alone. Hashed with
/// foldhash, not std's SipHash: the keys are ours (minted here, or a signed webhook's echo
/// of one), and SipHash over two ids was ~900 instructions a lookup.
pub(super) struct Shards<K, V> {
    maps: Vec<HashMap<K, V, foldhash::fast::RandomState>>,
}

/// A key of [`Shards`]: how many shards its maps have, and which one holds it.
pub(super) trait ShardKey: std::hash::Hash + Eq {
    const SHARDS: usize;
    fn shard(&self) -> usize;
}

impl<K: ShardKey, V> Default for Shards<K, V> {
    fn default() -> Self {
        Self {
            maps: (0..K::SHARDS).map(|_| HashMap::default()).collect(),
        }
    }
}

impl<K: ShardKey, V> Shards<K, V> {
    /// Found in `shard` by a borrowed form of its key (the caller names the shard, as
    /// `K::shard` would).
    pub(super) fn get_in<Q>(&self, shard: usize, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.maps.get(shard)?.get(key)
    }

    pub(super) fn get_mut_in<Q>(&mut self, shard: usize, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.maps.get_mut(shard)?.get_mut(key)
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.get_in(key.shard(), key)
    }

    pub(super) fn get_key_value(&self, key: &K) -> Option<(&K, &V)> {
        self.maps.get(key.shard())?.get_key_value(key)
    }

    pub(super) fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn insert(&mut self, key: K, value: V) {
        if let Some(map) = self.maps.get_mut(key.shard()) {
            map.insert(key, value);
        }
    }

    #[cfg(test)]
    pub(super) fn remove(&mut self, key: &K) {
        if let Some(map) = self.maps.get_mut(key.shard()) {
            map.remove(key);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for map in &mut self.maps {
            map.retain(&mut keep);
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.maps.iter().flat_map(|map| map.iter())
    }
}

/// The shard of a message id: the value of its last character in Crockford's base32 (one
/// of 32; an id is a ULID, stored upper-case; its random or counting end, so they fill
/// evenly).
#[inline(always)]
fn message_shard(id: &MessageId) -> usize {
    let value = match id.as_str().as_bytes().last().copied().unwrap_or(b'0') {
        b @ b'0'..=b'9' => b - b'0',
        b @ b'A'..=b'H' => b - b'A' + 10,
        b @ (b'J' | b'K') => b - b'J' + 18,
        b @ (b'M' | b'N') => b - b'M' + 20,
        b @ b'P'..=b'T' => b - b'P' + 22,
        b @ b'V'..=b'Z' => b - b'V' + 27,
        _ => 0,
    };
    usize::from(value) % <(TenantId, MessageId) as ShardKey>::SHARDS
}

impl ShardKey for (TenantId, MessageId) {
    const SHARDS: usize = 32;
    fn shard(&self) -> usize {
        message_shard(&self.1)
    }
}

/// An idempotency record's key: (tenant, the key's hash in hex), in the shard of the hash's
/// last digit (any other text: 0).
impl ShardKey for (TenantId, String) {
    const SHARDS: usize = 16;
    fn shard(&self) -> usize {
        let value = match self.1.as_bytes().last().copied().unwrap_or(b'0') {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => 0,
        };
        usize::from(value) % Self::SHARDS
    }
}

/// Local mode's messages: found by key in a hash map (a webhook's lookup was a B-tree's
/// walk, comparing keys whose strings sit on cache lines of their own: 1.4k instructions
/// and 34 data misses a webhook), in [`Shards`] by the last character of the id, and kept
/// in the tuple's order by a set of their keys for the lists and sweeps.
///
/// A failure's title is scrubbed as it comes in ([`MessageRecord::scrub_error`]: here, and
/// wherever a write sets a message's error), where DynamoDB's records are scrubbed as they
/// are decoded: local mode keeps nothing from before titles were scrubbed (its store lives
/// as long as its process), so every reader gets what a DynamoDB reader gets, and a read
/// costs nothing more.
#[derive(Default)]
pub(super) struct Messages {
    by_key: Shards<(TenantId, MessageId), Arc<MessageRecord>>,
    order: std::collections::BTreeSet<(TenantId, MessageId)>,
}

impl Messages {
    pub(super) fn get(&self, key: &dyn MessageKey) -> Option<&Arc<MessageRecord>> {
        self.by_key.get_in(message_shard(key.parts().1), key)
    }

    pub(super) fn get_mut(&mut self, key: &dyn MessageKey) -> Option<&mut Arc<MessageRecord>> {
        self.by_key.get_mut_in(message_shard(key.parts().1), key)
    }

    pub(super) fn contains_key(&self, key: &(TenantId, MessageId)) -> bool {
        self.by_key.contains_key(key)
    }

    pub(super) fn insert(&mut self, key: (TenantId, MessageId), mut message: Arc<MessageRecord>) {
        if message.error.is_some() {
            Arc::make_mut(&mut message).scrub_error();
        }
        self.order.insert(key.clone());
        self.by_key.insert(key, message);
    }

    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// In the order of their keys (tenant, then id: the order they were made in).
    pub(super) fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&(TenantId, MessageId), &Arc<MessageRecord>)> {
        self.order
            .iter()
            .filter_map(|key| self.by_key.get_key_value(key))
    }

    pub(super) fn values(&self) -> impl DoubleEndedIterator<Item = &Arc<MessageRecord>> {
        self.iter().map(|(_, m)| m)
    }

    /// Keeps the messages `keep` says to, as `BTreeMap::retain` does.
    pub(super) fn retain(
        &mut self,
        mut keep: impl FnMut(&(TenantId, MessageId), &mut Arc<MessageRecord>) -> bool,
    ) {
        let mut gone = Vec::new();
        self.by_key.retain(|key, m| {
            let kept = keep(key, m);
            if !kept {
                gone.push(key.clone());
            }
            kept
        });
        for key in &gone {
            self.order.remove(key);
        }
    }
}

/// Local mode's ledger, in the order its entries were written: a B-tree by a counter, which
/// grows a node at a time (a vector of a million entries was copied whole as it grew, under
/// the store's lock).
#[derive(Default)]
pub(super) struct LedgerEntries {
    written: u64,
    entries: BTreeMap<u64, LedgerEntry>,
}

impl LedgerEntries {
    pub(super) fn push(&mut self, entry: LedgerEntry) {
        self.written += 1;
        self.entries.insert(self.written, entry);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.entries.values()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&LedgerEntry) -> bool) {
        self.entries.retain(|_, e| keep(e));
    }
}

impl Extend<LedgerEntry> for LedgerEntries {
    fn extend<I: IntoIterator<Item = LedgerEntry>>(&mut self, entries: I) {
        for e in entries {
            self.push(e);
        }
    }
}

impl<'a> IntoIterator for &'a LedgerEntries {
    type Item = &'a LedgerEntry;
    type IntoIter = std::collections::btree_map::Values<'a, u64, LedgerEntry>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.values()
    }
}

/// The key of `(tenant, id)` in [`State::messages`], borrowed.
pub(super) fn message_key<'a>(
    parts: &'a (&'a TenantId, &'a MessageId),
) -> &'a (dyn MessageKey + 'a) {
    parts
}

#[derive(Default)]
pub(super) struct State {
    pub(super) tenants: HashMap<TenantId, Tenant>,
    pub(super) phones: HashMap<String, TenantId>,
    keys: HashMap<String, ApiKeyRecord>,
    /// Shared with the webhook's peeks ([`MessageStore::peek_message`]): a write replaces
    /// or copies the record (`Arc::make_mut`), never changes one a reader holds.
    pub(super) messages: Messages,
    pub(super) ledger: LedgerEntries,
    /// (tenant, broadcast id) → the broadcast.
    pub(super) broadcasts: HashMap<(TenantId, String), crate::ports::Broadcast>,
    /// (tenant, broadcast id) → its uploaded list (until the fan-out is done) and the
    /// list's backstop expiry (epoch seconds), as on DynamoDB.
    pub(super) broadcast_lists: HashMap<(TenantId, String), (Vec<crate::domain::PhoneNumber>, i64)>,
    /// wamid → (tenant, message, expiry, whether a status was kept for it: the mark, as
    /// on the table's index item).
    pub(super) wamids: HashMap<String, (TenantId, MessageId, Option<i64>, bool)>,
    /// wamid → the expiry of the mark a status kept before the wamid was indexed left (on
    /// DynamoDB the `pending_kept` attribute of a not-yet-index item; the index's write
    /// replaces it and answers it).
    pub(super) wamid_marks: HashMap<String, Option<i64>>,
    /// chain → its head (`None` while its first event is in flight) and its events.
    pub(super) audit: HashMap<String, (Option<AuditHead>, BTreeMap<u64, AuditEvent>)>,
    /// (chain, id) → an audit event whose append failed, until linked in.
    pub(super) audit_parked: BTreeMap<(String, String), ParkedAudit>,
    /// id (a ULID: time order) → an audited call under way, or one whose process died.
    pub(super) audit_intents: BTreeMap<String, ParkedAudit>,
    /// ids of intents that do not read as one ([`MemoryStore::plant_unreadable_intent`]).
    unreadable_intents: std::collections::BTreeSet<String>,
    quality: BTreeMap<(TenantId, chrono::NaiveDate), (QualityCounts, Option<i64>)>,
    /// (tenant, E.164 or user id) → opt-out, ordered for paging.
    opt_outs: BTreeMap<(TenantId, String), crate::domain::OptOut>,
    /// When each user last opted back in, and when that record expires (epoch seconds).
    opted_in: BTreeMap<(TenantId, String), (crate::domain::OptedIn, i64)>,
    /// (tenant, one key of a user) → the user's other key and the pairing's expiry.
    pairings: BTreeMap<(TenantId, String), (crate::domain::OptOutKey, Option<i64>, i64)>,
    /// (tenant, phone number id, the user's key) → when the user last wrote, and expiry.
    windows: BTreeMap<(TenantId, String, String), (DateTime<Utc>, i64)>,
    /// (tenant, key hash) → idempotency record: one a keyed send.
    idempotency: Shards<(TenantId, String), crate::ports::IdempotencyRecord>,
    /// (tenant, `TOPUP#` or `BCAST#` and the key's hash) → a top-up's or a broadcast's key
    /// record.
    pub(super) request_keys: HashMap<(TenantId, String), RequestKeyRecord>,
    pub(super) users: super::users::UsersState,
    /// Closed tenants already closed out: when, and the TTLs their items were given.
    closed_out: HashMap<TenantId, (DateTime<Utc>, crate::ports::CloseOutTtls)>,
    /// The sweep's saved position (the memory sweep finishes in one page; kept for parity).
    checkpoint: Option<String>,
    /// (wamid, its sort key `PENDING#{status}#{timestamp}`) → a status kept until its wamid
    /// is known.
    pending: BTreeMap<(String, String), crate::ports::PendingStatus>,
    /// tenant → its status-callback setting.
    status_callbacks: HashMap<TenantId, crate::ports::StatusCallback>,
    /// Status callbacks the queue refused, by their table sort key.
    owed_callbacks: BTreeMap<String, crate::ports::OwedCallback>,
    /// (tenant, id: a ULID of when it was given up) → the tenant's record of a callback
    /// given up.
    callback_failures: BTreeMap<(TenantId, String), crate::ports::CallbackFailure>,
    /// Business phone number → the next free send slot (epoch microseconds) and the slot's
    /// expiry (epoch seconds: an idle number's slot expires, as on DynamoDB).
    rate: HashMap<String, (i64, i64)>,
    /// (tenant, class) → its heavy-request lease of that class (A75), as its
    /// `LEASE#{tenant}` / `HEAVY#{class}` item.
    heavy_leases: HashMap<(TenantId, crate::ports::Heavy), leases::HeldLease>,
    /// (WABA, template name, language) → the catalogue's template, ordered for paging.
    templates: BTreeMap<(String, String, String), crate::ports::CatalogueTemplate>,
    /// (WABA, template name, language) → Meta's time of each field's last applied change
    /// (DynamoDB's `status_meta_at`, ...); a sync's put or a removal forgets them.
    pub(super) template_meta_at: HashMap<(String, String, String), HashMap<&'static str, i64>>,
    /// Removed templates' tombstones: when each was removed and when the tombstone expires
    /// (epoch seconds), as DynamoDB keeps them on the template's key.
    pub(super) template_removed: BTreeMap<(String, String, String), (i64, i64)>,
    /// (tenant, phone number id) → one of its phone numbers.
    pub(super) numbers: BTreeMap<(TenantId, String), crate::ports::PhoneNumberRecord>,
    /// (tenant, day, category, type, shard) → a part of a usage row and its expiry (epoch
    /// seconds), spread by message as DynamoDB's items are (A79).
    pub(super) usage: BTreeMap<UsageKey, (crate::ports::UsageRow, Option<i64>)>,
}

/// A usage row's part's key: (tenant, day, category, type, shard).
pub(super) type UsageKey = (TenantId, chrono::NaiveDate, String, String, u8);

/// Every store port over one lock: each method is atomic, as the DynamoDB conditional
/// writes and transactions are.
pub struct MemoryStore {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

/// Memory is never behind: the cache's lagging view is the store itself.
impl crate::adapters::cache::LaggingView for MemoryStore {
    fn lagging_view(store: &Arc<Self>) -> Arc<Self> {
        store.clone()
    }
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            clock,
        }
    }

    /// Puts an item under the intent key `id` that does not read as an intent (on DynamoDB,
    /// one whose attributes do not deserialise): what no adapter writes, for the tests of
    /// a sweep that must go on past it. Removed as an intent is.
    pub fn plant_unreadable_intent(&self, id: &str) -> Result<(), StoreError> {
        self.lock()?.unreadable_intents.insert(id.to_owned());
        Ok(())
    }

    pub(super) fn now_secs(&self) -> i64 {
        self.clock.now().timestamp()
    }

    pub(super) fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
    }

    pub(super) fn live(&self, expires_at: Option<i64>) -> bool {
        expires_at.is_none_or(|t| t > self.clock.now().timestamp())
    }

    /// Whether `tenant`'s configuration (its keys, users, numbers, opt-outs and settings)
    /// is still there to read: not past the TTL its close-out gave it. The memory
    /// close-out keeps that TTL by the tenant (`closed_out`), not on each item, and its
    /// sweep deletes them later; DynamoDB's reads hide an item past its TTL until its
    /// deletion, and so do these.
    pub(super) fn config_live(&self, s: &State, tenant: &TenantId) -> bool {
        s.closed_out
            .get(tenant)
            .is_none_or(|(_, ttls)| self.live(Some(ttls.config)))
    }

    /// [`Self::config_live`] for the tenant's own item (the Billing retention after its
    /// closing): a closed-out tenant past it is not found.
    /// `NotFound` for a tenant past its close-out's TTL (DynamoDB's read-back of a refused
    /// write does not see it: a write to it answers `404`, not "closed").
    pub(super) fn refuse_if_gone(&self, s: &State, tenant: &TenantId) -> Result<(), StoreError> {
        if self.tenant_live(s, tenant) {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    fn tenant_live(&self, s: &State, tenant: &TenantId) -> bool {
        s.closed_out
            .get(tenant)
            .is_none_or(|(_, ttls)| self.live(Some(ttls.tenant)))
    }

    /// A chain's head as DynamoDB's reads answer it: not past the TTL a close-out gave it
    /// (the item stays until the sweep deletes it, and a move from "no head" is refused
    /// meanwhile, as there).
    fn live_head(&self, s: &State, chain: &str) -> Option<AuditHead> {
        s.audit
            .get(chain)
            .and_then(|(h, _)| h.clone())
            .filter(|h| self.live(h.ttl))
    }

    /// An API key that authenticates or is listed: neither past its own TTL (an ended
    /// key's) nor its tenant's close-out's.
    fn key_live(&self, s: &State, k: &ApiKeyRecord) -> bool {
        self.live(k.ttl()) && self.config_live(s, &k.tenant_id)
    }
}

impl MemoryStore {
    /// The onboarding, as DynamoDB's one transaction: the route claimed free (`over:
    /// None`) or taken over from a closed tenant that still holds it.
    fn onboard_claiming(
        &self,
        tenant: &Tenant,
        display_phone_number: Option<&str>,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
        over: Option<&TenantId>,
    ) -> Result<(), StoreError> {
        // Never from itself, as on DynamoDB.
        if over == Some(&tenant.id) {
            return Err(StoreError::Conflict(
                "phone_number_id already belongs to a tenant".into(),
            ));
        }
        let mut s = self.lock()?;
        if !route_claimable(&s, &tenant.phone_number_id, over) {
            return Err(StoreError::Conflict(
                "phone_number_id already belongs to a tenant".into(),
            ));
        }
        s.phones
            .insert(tenant.phone_number_id.clone(), tenant.id.clone());
        let mut number = crate::ports::PhoneNumberRecord::default_of(tenant);
        number.display_phone_number = display_phone_number.map(str::to_owned);
        s.numbers
            .insert((tenant.id.clone(), tenant.phone_number_id.clone()), number);
        s.tenants.insert(tenant.id.clone(), tenant.clone());
        s.keys.insert(key.key_hash.clone(), key.clone());
        s.ledger.extend(initial.cloned());
        Ok(())
    }
}

#[async_trait]
impl TenantStore for MemoryStore {
    async fn onboard(
        &self,
        tenant: &Tenant,
        display_phone_number: Option<&str>,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
    ) -> Result<(), StoreError> {
        self.onboard_claiming(tenant, display_phone_number, key, initial, None)
    }

    async fn onboard_over_closed(
        &self,
        tenant: &Tenant,
        display_phone_number: Option<&str>,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
        closed: &TenantId,
    ) -> Result<(), StoreError> {
        self.onboard_claiming(tenant, display_phone_number, key, initial, Some(closed))
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let s = self.lock()?;
        Ok(s.tenants
            .get(id)
            .filter(|_| self.tenant_live(&s, id))
            .cloned())
    }

    async fn tenant_by_phone_number_id(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<TenantId>, StoreError> {
        Ok(self.lock()?.phones.get(phone_number_id).cloned())
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let s = self.lock()?;
        Ok(s.keys
            .get(key_hash)
            .filter(|k| self.key_live(&s, k))
            .cloned())
    }

    async fn tenants_by_waba(&self, waba_id: &str) -> Result<Vec<TenantId>, StoreError> {
        let s = self.lock()?;
        let mut ids: Vec<TenantId> = s
            .tenants
            .values()
            .filter(|t| t.waba_id == waba_id && self.tenant_live(&s, &t.id))
            .map(|t| t.id.clone())
            .chain(
                s.numbers
                    .values()
                    .filter(|n| n.waba_id == waba_id && self.config_live(&s, &n.tenant_id))
                    .map(|n| n.tenant_id.clone()),
            )
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn set_ip_allowlist(&self, id: &TenantId, cidrs: &[String]) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        self.refuse_if_gone(&s, id)?;
        let t = open_tenant(&mut s.tenants, id)?;
        t.ip_allowlist = cidrs.to_vec();
        Ok(())
    }

    async fn set_request_limits(
        &self,
        id: &TenantId,
        limits: crate::domain::RequestLimits,
    ) -> Result<Tenant, StoreError> {
        let mut s = self.lock()?;
        self.refuse_if_gone(&s, id)?;
        let t = open_tenant(&mut s.tenants, id)?;
        t.request_limits = Some(limits);
        Ok(t.clone())
    }

    async fn set_meta_token_changed_at(
        &self,
        id: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<Tenant, StoreError> {
        let mut s = self.lock()?;
        self.refuse_if_gone(&s, id)?;
        let t = open_tenant(&mut s.tenants, id)?;
        t.meta_token_changed_at = Some(at);
        Ok(t.clone())
    }

    async fn set_status(
        &self,
        id: &TenantId,
        to: TenantStatus,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Tenant, StoreError> {
        let mut s = self.lock()?;
        self.refuse_if_gone(&s, id)?;
        let t = s.tenants.get_mut(id).ok_or(StoreError::NotFound)?;
        if t.status == TenantStatus::Closed {
            return Err(StoreError::Conflict("the tenant is closed".into()));
        }
        // The same status again (a resume of an active tenant): only the reason changes.
        if t.status != to {
            t.status_changed_at = Some(at);
        }
        t.status = to;
        // As DynamoDB's adapter decodes it (`Tenant::status_reason`).
        t.status_reason = reason.map(crate::domain::error_text::read_back_status_reason);
        Ok(t.clone())
    }

    async fn suspend_if_unchanged(
        &self,
        id: &TenantId,
        reason: &str,
        at: DateTime<Utc>,
        seen: Option<DateTime<Utc>>,
    ) -> Result<Option<Tenant>, StoreError> {
        // One step under the lock: no answer is lost here, so a refusal is always of
        // another call's change (DynamoDB's adapter reads back to answer the same).
        let mut s = self.lock()?;
        let Some(t) = s.tenants.get_mut(id) else {
            return Ok(None);
        };
        if t.status != TenantStatus::Active || t.status_changed_at != seen {
            return Ok(None);
        }
        t.status = TenantStatus::Suspended;
        t.status_reason = Some(crate::domain::error_text::read_back_status_reason(reason));
        t.status_changed_at = Some(at);
        Ok(Some(t.clone()))
    }
}

/// A tenant that exists and is not closed (closed is final: no top-up, no setting).
/// When a message was accepted, in epoch milliseconds: the time in its id (a ULID),
/// else its record's creation.
fn accepted_ms(m: &MessageRecord) -> i64 {
    ulid::Ulid::from_string(m.id.as_str()).map_or_else(
        |_| m.created_at.timestamp_millis(),
        |u| i64::try_from(u.timestamp_ms()).unwrap_or(i64::MAX),
    )
}

/// The page of `tenant`'s `all` (in id order) after the id its `cursor` names (a
/// [`page_cursor`]; another tenant's, or one naming no id of ours, is `InvalidCursor`): at
/// most `limit` (1 to [`MAX_PAGE`](crate::ports::MAX_PAGE)), and the cursor of the last
/// one when more follow.
pub(crate) fn page_by_id<T>(
    tenant: &TenantId,
    list: &str,
    mut all: Vec<T>,
    id: impl Fn(&T) -> &str,
    order: crate::ports::Order,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<T>, Option<String>), StoreError> {
    let after_id = match cursor {
        Some(c) => {
            let at = cursor_position(c, tenant, list)?;
            if !crate::ports::listed_id(&at) {
                return Err(StoreError::InvalidCursor);
            }
            Some(at)
        }
        None => None,
    };
    let limit = limit.clamp(1, crate::ports::MAX_PAGE);
    let newest_first = order == crate::ports::Order::NewestFirst;
    all.sort_by(|a, b| {
        let by_id = id(a).cmp(id(b));
        if newest_first {
            by_id.reverse()
        } else {
            by_id
        }
    });
    // Past the cursor in the page's direction, as DynamoDB's start key is.
    let mut after: Vec<T> = all
        .into_iter()
        .filter(|x| {
            after_id
                .as_deref()
                .is_none_or(|c| if newest_first { id(x) < c } else { id(x) > c })
        })
        .collect();
    let more = after.len() > limit;
    after.truncate(limit);
    let next = if more {
        after.last().map(|x| page_cursor(tenant, list, id(x)))
    } else {
        None
    };
    Ok((after, next))
}

fn open_tenant<'a>(
    tenants: &'a mut HashMap<TenantId, Tenant>,
    id: &TenantId,
) -> Result<&'a mut Tenant, StoreError> {
    let t = tenants.get_mut(id).ok_or(StoreError::NotFound)?;
    if t.status == TenantStatus::Closed {
        return Err(StoreError::Conflict("the tenant is closed".into()));
    }
    Ok(t)
}

impl State {
    fn key_of_tenant(&self, tenant: &TenantId, id: &str) -> Option<&ApiKeyRecord> {
        self.keys
            .values()
            .find(|k| &k.tenant_id == tenant && k.id == id)
    }
}

#[async_trait]
impl ApiKeyStore for MemoryStore {
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        refuse_if_closed(&s, &key.tenant_id)?;
        if s.keys.contains_key(&key.key_hash) || s.key_of_tenant(&key.tenant_id, &key.id).is_some()
        {
            return Err(StoreError::Conflict("api key exists".into()));
        }
        s.keys.insert(key.key_hash.clone(), key.clone());
        Ok(())
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let s = self.lock()?;
        let mut keys: Vec<ApiKeyRecord> = s
            .keys
            .values()
            .filter(|k| &k.tenant_id == tenant && self.key_live(&s, k))
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    async fn list_api_keys_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<ApiKeyPage, StoreError> {
        // The cursor names the id of the previous page's last key.
        let (keys, next_cursor) = page_by_id(
            tenant,
            "APIKEY",
            self.list_api_keys(tenant).await?,
            |k| &k.id,
            crate::ports::Order::NewestFirst,
            limit,
            cursor,
        )?;
        Ok(ApiKeyPage { keys, next_cursor })
    }

    async fn get_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let s = self.lock()?;
        Ok(s.key_of_tenant(tenant, id)
            .filter(|k| self.key_live(&s, k))
            .cloned())
    }

    async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut s = self.lock()?;
        // As DynamoDB's read of it: not past its own TTL nor its tenant's close-out's.
        let Some(hash) = s
            .key_of_tenant(tenant, id)
            .filter(|k| self.key_live(&s, k))
            .map(|k| k.key_hash.clone())
        else {
            return Ok(None);
        };
        let Some(k) = s.keys.get_mut(&hash) else {
            return Ok(None);
        };
        if !k.revoked {
            k.revoked = true;
            k.revoked_at = Some(at);
        }
        Ok(Some(k.clone()))
    }

    async fn rotate_api_key(
        &self,
        tenant: &TenantId,
        old_id: &str,
        new: &ApiKeyRecord,
        old_expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        // As on DynamoDB: the key is read first (not found past its own TTL or its
        // tenant's close-out's), then the write refused for a closed tenant.
        let Some(hash) = s
            .key_of_tenant(tenant, old_id)
            .filter(|k| self.key_live(&s, k))
            .map(|k| k.key_hash.clone())
        else {
            return Err(StoreError::NotFound);
        };
        refuse_if_closed(&s, tenant)?;
        if s.keys.contains_key(&new.key_hash) || s.key_of_tenant(tenant, &new.id).is_some() {
            return Err(StoreError::Conflict("api key exists".into()));
        }
        let Some(old) = s.keys.get_mut(&hash) else {
            return Err(StoreError::NotFound);
        };
        if old.revoked || old.replaced_by.is_some() {
            return Err(StoreError::Conflict(
                "the key was already rotated (a key is rotated once), or was revoked at that moment".into(),
            ));
        }
        old.replaced_by = Some(new.id.clone());
        old.expires_at = Some(old_expires_at);
        s.keys.insert(new.key_hash.clone(), new.clone());
        Ok(())
    }
}

#[async_trait]
impl Ledger for MemoryStore {
    async fn top_up(&self, entry: &LedgerEntry) -> Result<i64, StoreError> {
        let mut s = self.lock()?;
        self.refuse_if_gone(&s, &entry.tenant_id)?;
        let tenant = open_tenant(&mut s.tenants, &entry.tenant_id)?;
        tenant.credits = tenant.credits.saturating_add(entry.amount);
        let balance = tenant.credits;
        s.ledger.push(entry.clone());
        Ok(balance)
    }

    async fn top_up_once(
        &self,
        entry: &LedgerEntry,
        key: &RequestKeyRecord,
    ) -> Result<TopUpOnce, StoreError> {
        // The key's check and the credit under the one lock, as DynamoDB's transaction.
        let mut s = self.lock()?;
        let at = (key.tenant_id.clone(), format!("TOPUP#{}", key.key_hash));
        if let Some(earlier) = s.request_keys.get(&at) {
            if self.live(earlier.expires_at) {
                return Ok(TopUpOnce::Earlier(earlier.clone()));
            }
        }
        self.refuse_if_gone(&s, &entry.tenant_id)?;
        let tenant = open_tenant(&mut s.tenants, &entry.tenant_id)?;
        tenant.credits = tenant.credits.saturating_add(entry.amount);
        let balance = tenant.credits;
        s.ledger.push(entry.clone());
        s.request_keys.insert(at, key.clone());
        Ok(TopUpOnce::Applied(balance))
    }

    async fn refund(&self, entry: &LedgerEntry) -> Result<i64, StoreError> {
        // What was debited goes back, closed or not.
        let mut s = self.lock()?;
        let tenant = s
            .tenants
            .get_mut(&entry.tenant_id)
            .ok_or(StoreError::NotFound)?;
        tenant.credits = tenant.credits.saturating_add(entry.amount);
        let balance = tenant.credits;
        s.ledger.push(entry.clone());
        Ok(balance)
    }

    async fn entries(&self, tenant: &TenantId) -> Result<Vec<LedgerEntry>, StoreError> {
        let s = self.lock()?;
        Ok(s.ledger
            .iter()
            .filter(|e| &e.tenant_id == tenant && self.live(e.expires_at))
            .cloned()
            .collect())
    }
}

/// The statuses a message may fail from with a refund: it has not reached Meta.
const REFUNDABLE: [MessageStatus; 2] = [MessageStatus::Accepted, MessageStatus::Sending];

/// A status change, applied to a message whose current status allows it.
pub(super) fn apply(
    m: &mut MessageRecord,
    to: MessageStatus,
    change: &StatusChange,
    at: DateTime<Utc>,
) {
    change.apply_to(m, to, at);
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn insert_with_debit(
        &self,
        record: &MessageRecord,
        debit: &LedgerEntry,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let key = (record.tenant_id.clone(), record.id.clone());
        if s.messages.contains_key(&key) {
            return Err(StoreError::Conflict("message id exists".into()));
        }
        let tenant = s
            .tenants
            .get_mut(&record.tenant_id)
            .ok_or(StoreError::NotFound)?;
        debit_tenant(tenant, record.price)?;
        s.ledger.push(debit.clone());
        s.messages.insert(key, Arc::new(record.clone()));
        Ok(())
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let s = self.lock()?;
        Ok(s.messages
            .get(message_key(&(tenant, id)))
            .filter(|m| self.live(m.expires_at))
            .map(|m| MessageRecord::clone(m)))
    }

    async fn peek_message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<Arc<MessageRecord>>, StoreError> {
        let s = self.lock()?;
        Ok(s.messages
            .get(message_key(&(tenant, id)))
            .filter(|m| self.live(m.expires_at))
            .cloned())
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        q: &MessageQuery,
    ) -> Result<MessagePage, StoreError> {
        let after = match &q.cursor {
            Some(c) => Some(
                MessageId::parse(&cursor_position(c, tenant, "MSG")?)
                    .ok_or(StoreError::InvalidCursor)?,
            ),
            None => None,
        };
        let s = self.lock()?;
        let limit = q.limit.max(1);
        let mut matching = s
            .messages
            .iter()
            .rev()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, m)| m)
            .filter(|m| after.as_ref().is_none_or(|a| &m.id < a))
            .filter(|m| self.live(m.expires_at))
            .filter(|m| q.status.is_none_or(|st| m.status == st))
            // By the time in the id (its acceptance: for a campaign's recipients, the
            // campaign's), to the millisecond, as DynamoDB's key range selects.
            .filter(|m| {
                q.since
                    .is_none_or(|t| accepted_ms(m) >= t.timestamp_millis())
            })
            .filter(|m| {
                q.until
                    .is_none_or(|t| accepted_ms(m) < t.timestamp_millis())
            });
        let messages: Vec<MessageRecord> = matching
            .by_ref()
            .take(limit)
            .map(|m| MessageRecord::clone(m))
            .collect();
        let more = matching.next().is_some();
        let next_cursor = if more {
            messages
                .last()
                .map(|m| page_cursor(tenant, "MSG", m.id.as_str()))
        } else {
            None
        };
        Ok(MessagePage {
            messages,
            next_cursor,
        })
    }

    async fn transition(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        to: MessageStatus,
        change: &StatusChange,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError> {
        let mut s = self.lock()?;
        let now = self.clock.now().timestamp();
        let Some(m) = s
            .messages
            .get_mut(message_key(&(tenant, id)))
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
        else {
            return Ok(Transition::Refused);
        };
        if !to.may_follow(m.status) {
            return Ok(Transition::Refused);
        }
        let m = Arc::make_mut(m);
        apply(m, to, change, at);
        Ok(Transition::Applied(Box::new(m.clone())))
    }

    async fn record_overtaken(
        &self,
        seen: &MessageRecord,
        event: StatusEvent,
        priced: Option<&crate::ports::PricedMessage<'_>>,
    ) -> Result<bool, StoreError> {
        if seen.events.iter().any(|e| e.status == event.status) {
            return Ok(false);
        }
        // One lock for the events, the pricing and the row: one write (or transaction) on
        // DynamoDB, on the same condition.
        let mut s = self.lock()?;
        let now = self.clock.now().timestamp();
        let Some(m) = s
            .messages
            .get_mut(message_key(&(&seen.tenant_id, &seen.id)))
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
            .filter(|m| m.status == seen.status && m.events.len() == seen.events.len())
            .filter(|m| priced.is_none() || m.pricing.is_none())
        else {
            return Ok(false);
        };
        let m = Arc::make_mut(m);
        // Its settled time as the events had it, kept once: the late event's time is
        // earlier (`MessageRecord::settled_at`).
        if m.settled_at.is_none() {
            m.settled_at =
                crate::ports::settled_at(m.events.iter().map(|e| (e.status.as_str(), e.at)));
        }
        m.events = crate::ports::with_overtaken(&m.events, event);
        if let Some(priced) = priced {
            m.pricing = Some(priced.pricing.clone());
        }
        if let Some(priced) = priced {
            numbers::count(&mut s, priced);
        }
        Ok(true)
    }

    async fn fail_and_refund(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        from: MessageStatus,
        change: &StatusChange,
        at: DateTime<Utc>,
        refund: Option<&LedgerEntry>,
    ) -> Result<Transition, StoreError> {
        // One lock for the status, the balance and the entry: the memory backend's atomic
        // step, as one transaction is on DynamoDB.
        let mut s = self.lock()?;
        let now = self.clock.now().timestamp();
        let refundable = s
            .messages
            .get(message_key(&(tenant, id)))
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
            .is_some_and(|m| REFUNDABLE.contains(&from) && m.status == from);
        if !refundable {
            return Ok(Transition::Refused);
        }
        if let Some(refund) = refund {
            let t = s
                .tenants
                .get_mut(&refund.tenant_id)
                .ok_or(StoreError::NotFound)?;
            t.credits = t.credits.saturating_add(refund.amount);
            s.ledger.push(refund.clone());
        }
        let Some(m) = s.messages.get_mut(message_key(&(tenant, id))) else {
            return Ok(Transition::Refused);
        };
        let m = Arc::make_mut(m);
        let change = StatusChange {
            refunded: refund.is_some(),
            ..change.clone()
        };
        apply(m, MessageStatus::Failed, &change, at);
        Ok(Transition::Applied(Box::new(m.clone())))
    }

    async fn touch_unclaimed(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        seen: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let now = self.clock.now().timestamp();
        let Some(m) = s
            .messages
            .get_mut(message_key(&(tenant, id)))
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
        else {
            return Ok(false);
        };
        if m.status != MessageStatus::Accepted || m.attempts > 0 || m.updated_at != seen {
            return Ok(false);
        }
        Arc::make_mut(m).updated_at = at;
        Ok(true)
    }

    async fn release_for_retry(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        error: &MessageError,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError> {
        let mut s = self.lock()?;
        let now = self.clock.now().timestamp();
        let Some(m) = s
            .messages
            .get_mut(message_key(&(tenant, id)))
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
        else {
            return Ok(Transition::Refused);
        };
        if m.status != MessageStatus::Sending || m.updated_at != claimed_at {
            return Ok(Transition::Refused);
        }
        let m = Arc::make_mut(m);
        m.status = MessageStatus::Accepted;
        m.error = Some(error.clone());
        m.scrub_error();
        m.updated_at = at;
        Ok(Transition::Applied(Box::new(m.clone())))
    }

    async fn cancel_with_refund(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        from: &[MessageStatus],
        error: &MessageError,
        refund: &LedgerEntry,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError> {
        let mut s = self.lock()?;
        let now = self.clock.now().timestamp();
        // As DynamoDB's one transaction: the refund's tenant gone, nothing is written
        // (looked up before the message changes).
        if !s.tenants.contains_key(&refund.tenant_id) {
            return Err(StoreError::NotFound);
        }
        let Some(m) = s
            .messages
            .get_mut(message_key(&(tenant, id)))
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
        else {
            return Ok(Transition::Refused);
        };
        if !from.contains(&m.status) || !MessageStatus::Cancelled.may_follow(m.status) {
            return Ok(Transition::Refused);
        }
        let m = Arc::make_mut(m);
        m.status = MessageStatus::Cancelled;
        m.updated_at = at;
        m.error = Some(error.clone());
        m.scrub_error();
        m.events.push(StatusEvent {
            status: MessageStatus::Cancelled,
            at,
        });
        let record = m.clone();
        let t = s
            .tenants
            .get_mut(&refund.tenant_id)
            .ok_or(StoreError::NotFound)?;
        t.credits = t.credits.saturating_add(refund.amount);
        s.ledger.push(refund.clone());
        Ok(Transition::Applied(Box::new(record)))
    }

    async fn set_wamid(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        wamid: &str,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if let Some(m) = s.messages.get_mut(message_key(&(tenant, id))) {
            Arc::make_mut(m).wamid = Some(wamid.to_owned());
        }
        let marked = take_mark(&mut s, wamid);
        s.wamids.insert(
            wamid.to_owned(),
            (tenant.clone(), id.clone(), expires_at, marked),
        );
        Ok(())
    }

    async fn index_wamid(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        wamid: &str,
        expires_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        // As the table's `UpdateItem` with `ALL_OLD`: the mark, which stays on the index.
        let marked = take_mark(&mut s, wamid);
        s.wamids.insert(
            wamid.to_owned(),
            (tenant.clone(), id.clone(), expires_at, marked),
        );
        Ok(marked)
    }

    async fn message_by_wamid(
        &self,
        wamid: &str,
    ) -> Result<Option<(TenantId, MessageId)>, StoreError> {
        let s = self.lock()?;
        Ok(s.wamids
            .get(wamid)
            .filter(|(_, _, exp, _)| self.live(*exp))
            .map(|(t, m, _, _)| (t.clone(), m.clone())))
    }
}

/// A debit's condition, as DynamoDB's: the tenant is not closed (a warm copy of it may
/// not know yet: `Conflict(`[`TENANT_CLOSED`](crate::ports::TENANT_CLOSED)`)`) and its
/// balance covers `price` (`InsufficientCredits`); then the debit.
pub(super) fn debit_tenant(tenant: &mut Tenant, price: i64) -> Result<(), StoreError> {
    if tenant.status == TenantStatus::Closed {
        return Err(StoreError::Conflict(crate::ports::TENANT_CLOSED.into()));
    }
    if tenant.credits < price {
        return Err(StoreError::InsufficientCredits);
    }
    tenant.credits -= price;
    Ok(())
}

/// Whether `phone_number_id`'s route may be claimed, as DynamoDB's conditions on it: free
/// (`over: None`), or still naming `over` while that tenant is closed (its take-over).
pub(super) fn route_claimable(s: &State, phone_number_id: &str, over: Option<&TenantId>) -> bool {
    match (s.phones.get(phone_number_id), over) {
        (None, None) => true,
        (Some(owner), Some(closed)) => {
            owner == closed
                && s.tenants
                    .get(closed)
                    .is_some_and(|t| t.status == crate::ports::TenantStatus::Closed)
        }
        _ => false,
    }
}

/// As DynamoDB's `tenant_open_check`: nothing of a closed tenant is written after its
/// close-out could have given it its TTL (`Conflict(TENANT_CLOSED)`); a tenant with no
/// record (none in a contract test) does not refuse it.
pub(super) fn refuse_if_closed(s: &State, tenant: &TenantId) -> Result<(), StoreError> {
    if s.tenants
        .get(tenant)
        .is_some_and(|t| t.status == crate::ports::TenantStatus::Closed)
    {
        return Err(StoreError::Conflict(crate::ports::TENANT_CLOSED.into()));
    }
    Ok(())
}

/// Whether a status was kept for `wamid` (its mark alone, taken into the index, or the
/// index's own), as the table's index item answers it.
fn take_mark(s: &mut State, wamid: &str) -> bool {
    s.wamid_marks.remove(wamid).is_some() || s.wamids.get(wamid).is_some_and(|w| w.3)
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn head(&self, chain: &str) -> Result<Option<AuditHead>, StoreError> {
        let s = self.lock()?;
        Ok(self.live_head(&s, chain))
    }

    async fn tip(&self, chain: &str) -> Result<(Option<AuditHead>, bool), StoreError> {
        let s = self.lock()?;
        let head = self.live_head(&s, chain);
        let parked = s
            .audit_parked
            .range((chain.to_owned(), String::new())..)
            .take_while(|((c, _), _)| c == chain)
            .any(|(_, p)| self.live(p.expires_at));
        Ok((head, parked))
    }

    async fn append(&self, link: &AuditLink<'_>) -> Result<(), StoreError> {
        let event = link.event;
        let mut s = self.lock()?;
        let (current, taken) = s.audit.get(&event.chain).map_or((None, false), |(h, ev)| {
            (
                h.as_ref().map(|h| (h.seq, h.ttl)),
                ev.contains_key(&event.seq),
            )
        });
        // As on DynamoDB: from the head read, and one read without an expiry has none yet.
        let moved = match (current, link.expected) {
            (None, None) => false,
            (Some((seq, ttl)), Some(h)) => seq != h.seq || (h.ttl.is_none() && ttl.is_some()),
            _ => true,
        };
        if moved || taken {
            return Err(StoreError::Conflict("audit chain moved".into()));
        }
        if let Some(id) = link.parked {
            let key = (event.chain.clone(), id.to_owned());
            if s.audit_parked.remove(&key).is_none() {
                return Err(StoreError::Conflict("parked audit event gone".into()));
            }
        }
        let head = link.head();
        let entry = s.audit.entry(event.chain.clone()).or_default();
        entry.0 = Some(head);
        entry.1.insert(event.seq, event.clone());
        Ok(())
    }

    async fn put_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let (_, events) = s.audit.entry(event.chain.clone()).or_default();
        // As on DynamoDB: an expired event not yet swept still takes its place; the same
        // event again (a retried write) is taken as the write it repeats.
        if let Some(there) = events.get(&event.seq) {
            if there.id == event.id {
                return Ok(());
            }
            return Err(StoreError::Conflict("audit event exists".into()));
        }
        events.insert(event.seq, event.clone());
        Ok(())
    }

    async fn advance_head(
        &self,
        chain: &str,
        from: Option<u64>,
        to: &AuditHead,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let (head, _) = s.audit.entry(chain.to_owned()).or_default();
        let current = head.as_ref().map(|h| h.seq);
        let gained_ttl = to.ttl.is_none() && head.as_ref().is_some_and(|h| h.ttl.is_some());
        let repeat = head
            .as_ref()
            .is_some_and(|h| h.seq == to.seq && h.hash == to.hash);
        if (current != from || gained_ttl) && !repeat {
            return Err(StoreError::Conflict("audit chain moved".into()));
        }
        let ttl = to.ttl.or(head.as_ref().and_then(|h| h.ttl));
        *head = Some(AuditHead { ttl, ..to.clone() });
        Ok(())
    }

    async fn event(&self, chain: &str, seq: u64) -> Result<Option<AuditEvent>, StoreError> {
        let s = self.lock()?;
        Ok(s.audit
            .get(chain)
            .and_then(|(_, events)| events.get(&seq))
            .filter(|e| self.live(e.expires_at))
            .cloned())
    }

    async fn park(&self, event: &ParkedAudit) -> Result<(), StoreError> {
        self.lock()?
            .audit_parked
            .insert((event.chain.clone(), event.id.clone()), event.clone());
        Ok(())
    }

    async fn parked(&self, chain: &str, limit: usize) -> Result<Vec<ParkedAudit>, StoreError> {
        let s = self.lock()?;
        Ok(s.audit_parked
            .range((chain.to_owned(), String::new())..)
            .take_while(|((c, _), _)| c == chain)
            .map(|(_, p)| p)
            .filter(|p| self.live(p.expires_at))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn parked_chains(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let s = self.lock()?;
        let mut out: Vec<String> = Vec::new();
        for ((chain, _), p) in &s.audit_parked {
            if out.len() >= limit {
                break;
            }
            if after.is_some_and(|a| chain.as_str() <= a)
                || out.last() == Some(chain)
                || !self.live(p.expires_at)
            {
                continue;
            }
            out.push(chain.clone());
        }
        Ok(out)
    }

    async fn put_intent(&self, intent: &ParkedAudit) -> Result<(), StoreError> {
        self.lock()?
            .audit_intents
            .insert(intent.id.clone(), intent.clone());
        Ok(())
    }

    async fn delete_intent(&self, id: &str) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        s.audit_intents.remove(id);
        s.unreadable_intents.remove(id);
        Ok(())
    }

    async fn stale_intents(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StaleIntent>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        // As the table's key range: ids after `after`, before the smallest ULID of
        // `before`'s millisecond.
        let floor = ulid::Ulid::from_parts(before.timestamp_millis().max(0) as u64, 0).to_string();
        if after.is_some_and(|a| a >= floor.as_str()) {
            return Ok(Vec::new());
        }
        let range = (
            after.map_or(Unbounded, |a| Excluded(a.to_owned())),
            Excluded(floor),
        );
        let s = self.lock()?;
        let mut out: Vec<StaleIntent> = s
            .audit_intents
            .range(range.clone())
            .map(|(_, i)| i)
            .filter(|i| self.live(i.expires_at))
            .take(limit)
            .cloned()
            .map(StaleIntent::Intent)
            .chain(s.unreadable_intents.range(range).take(limit).map(|id| {
                let key = crate::adapters::aws::keys::audit_intent(id);
                StaleIntent::Unreadable {
                    id: id.clone(),
                    key: format!("{} / {}", key.pk, key.sk),
                    error: "not an intent".into(),
                }
            }))
            .collect();
        out.sort_by(|a, b| a.id().cmp(b.id()));
        out.truncate(limit);
        Ok(out)
    }

    async fn promote_intent(&self, id: &str, parked: &ParkedAudit) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if s.audit_intents.remove(id).is_none() {
            return Err(StoreError::Conflict("audit intent gone".into()));
        }
        s.audit_parked
            .insert((parked.chain.clone(), parked.id.clone()), parked.clone());
        Ok(())
    }

    async fn list(
        &self,
        chain: &str,
        q: &AuditQuery,
    ) -> Result<(Vec<AuditEvent>, Option<u64>), StoreError> {
        let s = self.lock()?;
        let Some((_, events)) = s.audit.get(chain) else {
            return Ok((Vec::new(), None));
        };
        let limit = q.limit.max(1);
        let mut matching = events
            .values()
            .rev()
            .filter(|e| q.before_seq.is_none_or(|b| e.seq < b))
            .filter(|e| self.live(e.expires_at))
            .filter(|e| q.since.is_none_or(|t| e.at >= t))
            .filter(|e| q.until.is_none_or(|t| e.at < t))
            .filter(|e| q.action.as_ref().is_none_or(|a| &e.action == a));
        let page: Vec<AuditEvent> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        let next = if more {
            page.last().map(|e| e.seq)
        } else {
            None
        };
        Ok((page, next))
    }

    async fn ascending(
        &self,
        chain: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let s = self.lock()?;
        let Some((_, events)) = s.audit.get(chain) else {
            return Ok(Vec::new());
        };
        Ok(events
            .values()
            .filter(|e| after_seq.is_none_or(|a| e.seq > a))
            .filter(|e| self.live(e.expires_at))
            .take(limit)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl QualityStats for MemoryStore {
    async fn bump_by(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        counter: QualityCounter,
        by: u64,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let (c, exp) = s.quality.entry((tenant.clone(), day)).or_default();
        match counter {
            QualityCounter::Sent => c.sent += by,
            QualityCounter::OptOut => c.opt_outs += by,
            QualityCounter::Undeliverable => c.undeliverable += by,
        }
        *exp = expires_at;
        Ok(())
    }

    async fn take_back(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        counter: QualityCounter,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if let Some((c, exp)) = s.quality.get_mut(&(tenant.clone(), day)) {
            if self.live(*exp) {
                let n = match counter {
                    QualityCounter::Sent => &mut c.sent,
                    QualityCounter::OptOut => &mut c.opt_outs,
                    QualityCounter::Undeliverable => &mut c.undeliverable,
                };
                *n = n.saturating_sub(1);
            }
        }
        Ok(())
    }

    async fn totals(
        &self,
        tenant: &TenantId,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<QualityCounts, StoreError> {
        let s = self.lock()?;
        let mut t = QualityCounts::default();
        for (_, (c, _)) in s
            .quality
            .range((tenant.clone(), from)..=(tenant.clone(), to))
            .filter(|(_, (_, e))| self.live(*e))
        {
            t.sent += c.sent;
            t.opt_outs += c.opt_outs;
            t.undeliverable += c.undeliverable;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_message_key_orders_and_finds_as_the_owned_tuple_does() {
        let tenants = ["01KB0000000000000000000000", "01KB0000000000000000000001"];
        let ids = ["01KB1111111111111111111111", "01KB2222222222222222222222"];
        let keys: Vec<(TenantId, MessageId)> = tenants
            .iter()
            .flat_map(|t| {
                ids.iter()
                    .map(|m| (TenantId::from_trusted(*t), MessageId::from_trusted(*m)))
            })
            .collect();
        let map: BTreeMap<(TenantId, MessageId), usize> = keys
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, k)| (k, i))
            .collect();
        for (i, a) in keys.iter().enumerate() {
            assert_eq!(map.get(message_key(&(&a.0, &a.1))), Some(&i));
            for b in &keys {
                assert_eq!(
                    message_key(&(&a.0, &a.1)).cmp(message_key(&(&b.0, &b.1))),
                    a.cmp(b)
                );
            }
        }
        let other = TenantId::from_trusted("01KB0000000000000000000002");
        assert_eq!(map.get(message_key(&(&other, &keys[0].1))), None);
    }

    #[test]
    fn local_modes_idempotency_records_spread_over_every_shard_and_are_found_removed_and_swept_in_any(
    ) {
        let tenant = TenantId::from_trusted("01KB0000000000000000000001");
        let record = |hash: &str, expires_at: Option<i64>| crate::ports::IdempotencyRecord {
            tenant_id: tenant.clone(),
            key_hash: hash.to_owned(),
            fingerprint: "f".to_owned(),
            message_id: MessageId::from_trusted("01KB1111111111111111111111"),
            created_at: chrono::Utc::now(),
            expires_at,
        };
        let hashes: Vec<String> = (0..1600)
            .map(|i| crate::domain::IdempotencyKey::parse(&format!("key-{i}")).map(|k| k.hash()))
            .collect::<Result<_, _>>()
            .unwrap();
        let mut records: Shards<(TenantId, String), crate::ports::IdempotencyRecord> =
            Shards::default();
        let shards = <(TenantId, String) as ShardKey>::SHARDS;
        let mut counts = vec![0usize; shards];
        for (i, hash) in hashes.iter().enumerate() {
            let key = (tenant.clone(), hash.clone());
            counts[key.shard()] += 1;
            records.insert(key, record(hash, Some(if i % 2 == 0 { 1 } else { 2 })));
        }
        let mean = 1600 / shards;
        assert!(counts.iter().all(|&n| n > 0 && n < 3 * mean), "{counts:?}");
        assert_eq!((records.len(), records.iter().count()), (1600, 1600));
        let first = (tenant.clone(), hashes[0].clone());
        assert_eq!(
            records.get(&first).map(|r| r.key_hash.as_str()),
            Some(hashes[0].as_str())
        );
        records.remove(&first);
        assert!(records.get(&first).is_none());
        records.retain(|_, r| r.expires_at == Some(2));
        assert_eq!(records.len(), 800);
        assert!(records.iter().all(|(_, r)| r.expires_at == Some(2)));
        let odd = (tenant.clone(), hashes[1].clone());
        assert!(records.get(&odd).is_some());
    }

    #[test]
    fn local_modes_messages_spread_over_every_shard_so_no_one_map_grows_with_all_of_them() {
        let shards = <(TenantId, MessageId) as ShardKey>::SHARDS;
        let mut counts = vec![0usize; shards];
        for _ in 0..3200 {
            counts[message_shard(&MessageId::generate())] += 1;
        }
        let mean = 3200 / shards;
        assert!(counts.iter().all(|&n| n > 0 && n < 3 * mean), "{counts:?}");
        let upper = MessageId::from_trusted("01KB000000000000000000000Z");
        let lower = MessageId::from_trusted("01KB000000000000000000000z");
        assert_eq!(message_shard(&upper), shards - 1);
        assert!(message_shard(&lower) < shards, "any text has a shard");
    }

    #[test]
    fn local_modes_messages_are_found_by_borrowed_key_and_listed_and_swept_in_key_order() {
        let record = |t: &str, id: &str| {
            let at = chrono::Utc::now();
            let m = MessageRecord {
                id: MessageId::from_trusted(id),
                tenant_id: TenantId::from_trusted(t),
                to: crate::domain::PhoneNumber::parse("+60123456789").unwrap(),
                template: None,
                status: MessageStatus::Accepted,
                error: None,
                events: Vec::new(),
                wamid: None,
                attempts: 0,
                price: 1,
                client_reference: None,
                created_at: at,
                updated_at: at,
                expires_at: Some(1),
                broadcast_id: None,
                send_at: None,
                from: None,
                pricing: None,
                carried_slot: None,
                claim: None,
                quality_counted: false,
                refunded: false,
                settled_at: None,
            };
            (
                (TenantId::from_trusted(t), MessageId::from_trusted(id)),
                Arc::new(m),
            )
        };
        let (t1, t2) = ("01KB0000000000000000000001", "01KB0000000000000000000000");
        let ids = [
            "01KB3333333333333333333333",
            "01KB1111111111111111111111",
            "01KB2222222222222222222222",
        ];
        let mut messages = Messages::default();
        for (t, id) in ids.iter().flat_map(|id| [(t1, *id), (t2, *id)]) {
            let (key, m) = record(t, id);
            messages.insert(key, m);
        }
        let listed: Vec<(&str, &str)> = messages
            .iter()
            .map(|((t, id), m)| {
                assert_eq!((&m.tenant_id, &m.id), (t, id));
                (t.as_str(), id.as_str())
            })
            .collect();
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(listed, sorted);
        assert_eq!(listed.len(), 6);
        assert_eq!(
            messages.values().next_back().map(|m| m.id.as_str()),
            Some(ids[0])
        );
        let (tenant, id) = (TenantId::from_trusted(t1), MessageId::from_trusted(ids[1]));
        let found = messages.get(message_key(&(&tenant, &id))).unwrap();
        assert_eq!((&found.tenant_id, &found.id), (&tenant, &id));
        Arc::make_mut(messages.get_mut(message_key(&(&tenant, &id))).unwrap()).expires_at = Some(2);
        assert!(messages.contains_key(&(tenant.clone(), id.clone())));
        let other = MessageId::from_trusted("01KB4444444444444444444444");
        assert!(messages.get(message_key(&(&tenant, &other))).is_none());
        // Swept: gone from lookups and from the order alike.
        messages.retain(|_, m| m.expires_at == Some(2));
        assert_eq!((messages.len(), messages.order.len()), (1, 1));
        let left: Vec<_> = messages.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(left, vec![(tenant.clone(), id.clone())]);
        assert!(messages
            .get(message_key(&(&TenantId::from_trusted(t2), &id)))
            .is_none());
    }
}
