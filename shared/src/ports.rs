//! Small traits between the services and the world. Each has a memory adapter and an
//! AWS adapter, and both pass the one contract suite in `tests/`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    MessageError, MessageId, MessageRecord, MessageStatus, OptOut, OptOutKey, OptOutScope,
    PhoneNumber, Role, StatusEvent, TenantId, UserId,
};
use crate::secret::Secret;
use crate::store_error::StoreError;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Active,
    Suspended,
    Closed,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub waba_id: String,
    pub phone_number_id: String,
    pub status: TenantStatus,
    pub credits: i64,
    /// Where the tenant's Meta access token lives in the secret store (a name, not the token).
    pub meta_token_secret: String,
    pub created_at: DateTime<Utc>,
    /// CIDRs API-key requests must come from (canonical strings; empty = any).
    #[serde(default)]
    pub ip_allowlist: Vec<String>,
    /// Why the tenant was last suspended, resumed or closed: the operator's words, or
    /// Meta's (a suspension on Meta's word). One built from Meta's error is scrubbed as it
    /// is decoded (`error_text::read_back_status_reason`): one kept before stop 60 holds
    /// Meta's title as it came.
    #[serde(
        default,
        deserialize_with = "crate::domain::error_text::deserialize_status_reason"
    )]
    pub status_reason: Option<String>,
    #[serde(default)]
    pub status_changed_at: Option<DateTime<Utc>>,
    /// Meta's messaging tier for the number (20, 80 or 1000 per second); `None`: the
    /// platform default (`KIRIM_META_THROUGHPUT`).
    #[serde(default)]
    pub throughput_per_sec: Option<u32>,
    /// The operator's per-key request limits for this tenant (its tenant-wide limit is
    /// four times them); `None`: the platform default (`KIRIM_LIMIT_KEY_*`).
    #[serde(default)]
    pub request_limits: Option<crate::domain::RequestLimits>,
    /// When the operator last replaced the tenant's Meta access token
    /// (`PUT /v1/platform/tenants/{id}/meta-token`), after the secret was written: for a
    /// while after it the dispatcher reads the token afresh, as after a status change.
    #[serde(default)]
    pub meta_token_changed_at: Option<DateTime<Utc>>,
}

impl Tenant {
    /// The last time anything that decides which Meta token a send uses changed: the
    /// tenant's status (a token replaced before a resume) or the token itself; its
    /// creation if neither did. A process whose cached token may be older reads it afresh
    /// (`SecretCache::current_unless_changed`).
    pub fn token_changed_at(&self) -> DateTime<Utc> {
        self.status_changed_at
            .max(self.meta_token_changed_at)
            .unwrap_or(self.created_at)
    }
}

/// What is stored of an API key: a SHA-256 of the key, never the key.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub name: String,
    pub role: Role,
    pub key_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key that replaced this one by rotation (this one works until `expires_at`).
    #[serde(default)]
    pub replaced_by: Option<String>,
    /// Who made it (`None`: a key made before this was recorded).
    #[serde(default)]
    pub created_by: Option<KeyCreator>,
}

/// Who made an API key (or rotated it into being), as the audit names the caller
/// (`Caller::actor`): `user` and the console user's id, `api_key` and the key's id, or
/// `operator` and `platform` (the onboarding's first key, the operator's keys). A key is the
/// tenant's, not its maker's: removing or demoting the user leaves it working, and this is
/// how the tenant's admins find the keys a departed user made.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyCreator {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    /// A console user's email as it was when the key was made: the user may be removed
    /// since (which is when the remaining admins look for their keys), and an id alone
    /// then names no one they can see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl KeyCreator {
    /// The maker of the keys the platform operator makes.
    pub fn operator() -> Self {
        Self {
            kind: "operator".into(),
            id: "platform".into(),
            email: None,
        }
    }
}

impl ApiKeyRecord {
    /// Whether the key authenticates at `now`.
    pub fn usable_at(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.expires_at.is_none_or(|e| e > now)
    }

    /// When it stops (or stopped) authenticating for good: its revocation or its expiry,
    /// whichever comes first; `None` while it has neither.
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        Self::end_of(self.revoked_at.filter(|_| self.revoked), self.expires_at)
    }

    /// A key's end from its revocation time (if revoked) and its expiry: the earlier.
    pub fn end_of(
        revoked_at: Option<DateTime<Utc>>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        match (revoked_at, expires_at) {
            (Some(r), Some(e)) => Some(r.min(e)),
            (r, e) => r.or(e),
        }
    }

    /// When both its copies expire (epoch seconds, the items' `ttl`):
    /// [`ENDED_KEY_RETENTION`](crate::domain::ENDED_KEY_RETENTION) after it ended.
    pub fn ttl(&self) -> Option<i64> {
        self.ended_at().map(Self::ttl_after)
    }

    /// The items' `ttl` of a key that ended at `end`.
    pub fn ttl_after(end: DateTime<Utc>) -> i64 {
        let keep = crate::domain::ENDED_KEY_RETENTION.as_secs() as i64;
        end.timestamp().saturating_add(keep)
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    pub id: String,
    pub tenant_id: TenantId,
    /// Positive for top-ups, negative for debits.
    pub amount: i64,
    pub kind: LedgerKind,
    pub reference: Option<String>,
    pub message_id: Option<MessageId>,
    pub at: DateTime<Utc>,
    pub expires_at: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    TopUp,
    Debit,
    Refund,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::TopUp => "top_up",
            LedgerKind::Debit => "debit",
            LedgerKind::Refund => "refund",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "top_up" => Some(LedgerKind::TopUp),
            "debit" => Some(LedgerKind::Debit),
            "refund" => Some(LedgerKind::Refund),
            _ => None,
        }
    }
}

#[async_trait]
pub trait TenantStore: Send + Sync {
    /// Creates the tenant (with its opening balance), its phone-number route, the number's
    /// item ([`PhoneNumberRecord::default_of`]: what finds the tenant by its WABA, see
    /// [`tenants_by_waba`](Self::tenants_by_waba)), its first API key and the opening
    /// top-up record in one atomic write. Fails with `Conflict` if the phone number id
    /// already belongs to a tenant. The number's item without a display number: see
    /// [`onboard`](Self::onboard).
    async fn create_tenant(
        &self,
        tenant: &Tenant,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
    ) -> Result<(), StoreError> {
        self.onboard(tenant, None, key, initial).await
    }
    /// [`create_tenant`](Self::create_tenant) with the number's display number (as Meta
    /// shows it) on its item, in the same atomic write: Meta's quality webhooks name a
    /// number only by it, and no route sets the onboarded number's display afterwards.
    async fn onboard(
        &self,
        tenant: &Tenant,
        display_phone_number: Option<&str>,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
    ) -> Result<(), StoreError>;
    /// [`onboard`](Self::onboard) of a number whose route names `closed`, a closed tenant
    /// (closed out or not: its close-out frees the number only when the retention run
    /// reaches it). The route is taken over in the same atomic write, only while it still
    /// names `closed` and `closed`'s item is `closed` (the checks travel with the write,
    /// never read-then-write). `Conflict` otherwise, nothing written. The closed tenant's
    /// number item (in its own partition) is left to its close-out, which deletes a route
    /// only while it names that tenant.
    async fn onboard_over_closed(
        &self,
        tenant: &Tenant,
        display_phone_number: Option<&str>,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
        closed: &TenantId,
    ) -> Result<(), StoreError>;
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;
    /// The tenant for an access decision (its status, allow-list, limits, WABA, token
    /// name). A warm process may answer it from a cache up to its read-cache TTL old
    /// (`adapters::cache`), so never read credits from it. Stores answer `get_tenant`.
    async fn tenant_for_access(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        self.get_tenant(id).await
    }
    async fn tenant_by_phone_number_id(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<TenantId>, StoreError>;
    /// Looks a key up by its hash: one key-value read, no scan.
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// The tenants onboarded with this WhatsApp Business Account (Meta's account-level
    /// webhooks name the WABA, not a phone number). An index query, no scan.
    async fn tenants_by_waba(&self, waba_id: &str) -> Result<Vec<TenantId>, StoreError>;
    /// Replaces the tenant's IP allow-list (canonical CIDRs). `NotFound` if no tenant.
    async fn set_ip_allowlist(&self, id: &TenantId, cidrs: &[String]) -> Result<(), StoreError>;
    /// Sets the tenant's request limits (a conditional update of the tenant item) and
    /// answers the updated tenant. `NotFound` if no tenant.
    async fn set_request_limits(
        &self,
        id: &TenantId,
        limits: crate::domain::RequestLimits,
    ) -> Result<Tenant, StoreError>;
    /// Records that the tenant's Meta token was replaced at `at` (its
    /// `meta_token_changed_at`), a conditional update of the tenant item, and answers the
    /// updated tenant. `NotFound` if no tenant; `Conflict` if it is closed.
    async fn set_meta_token_changed_at(
        &self,
        id: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<Tenant, StoreError>;
    /// Moves the tenant to `to` (with the operator's reason) and answers the new record.
    /// Closed is terminal: any change of a closed tenant is a `Conflict`. `NotFound` if
    /// no tenant. A change that landed is answered as applied even when its answer was lost
    /// and a retry of it was refused (a close then finds the tenant closed): only another
    /// call's change, at whatever time and with whatever reason, is a `Conflict`.
    async fn set_status(
        &self,
        id: &TenantId,
        to: TenantStatus,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Tenant, StoreError>;
    /// Suspends the tenant on Meta's word (with `reason`), atomically, only while it is
    /// `active` and its status last changed at `seen` (`None`: never): what Meta said
    /// about a tenant as it was then, not about one the operator has resumed (or anyone
    /// suspended) since. `None` if that condition failed (nothing written by this call:
    /// its own suspension, landed on a try whose answer was lost, answers `Some`).
    async fn suspend_if_unchanged(
        &self,
        id: &TenantId,
        reason: &str,
        at: DateTime<Utc>,
        seen: Option<DateTime<Utc>>,
    ) -> Result<Option<Tenant>, StoreError>;
}

/// A tenant's API keys. Each key is stored twice, atomically: under its hash (for
/// authentication without a scan) and in its tenant's partition (for listing and
/// management by id, which never crosses tenants).
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// `Conflict` if the hash or id exists.
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// Oldest first.
    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// One page of the keys [`Self::list_api_keys`] finds, but newest first (descending
    /// key-id order, the ids being ULIDs: the keys made last, usually the live ones, before
    /// the ended ones kept for 90 days), at most `limit`, after `cursor` (a `next_cursor`
    /// this adapter handed out for the tenant); one read, however many keys it holds.
    /// `InvalidCursor` for a cursor that is none of this adapter's for the tenant's keys
    /// (another tenant's never shows that tenant's keys).
    async fn list_api_keys_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<ApiKeyPage, StoreError>;
    async fn get_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Revokes at once; answers the revoked record, `None` if the tenant has no such key.
    /// Revoking a revoked key changes nothing.
    async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Atomically stores `new` and ends `old_id` at `old_expires_at` (marking it replaced).
    /// `NotFound` if the tenant has no such key; `Conflict` if it is revoked or was already
    /// rotated (so two concurrent rotations cannot both succeed).
    async fn rotate_api_key(
        &self,
        tenant: &TenantId,
        old_id: &str,
        new: &ApiKeyRecord,
        old_expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// An `Idempotency-Key` of a platform top-up or a broadcast: the first request's
/// fingerprint and what it created (the ledger entry, the broadcast), kept for the
/// idempotency retention (24 h), written in the same atomic write as what it created.
/// Stored as an idempotency item of the tenant (`IDEM#TOPUP#{sha256(key)}`,
/// `IDEM#BCAST#{sha256(key)}`), apart from the tenant's send keys and from each other.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RequestKeyRecord {
    pub tenant_id: TenantId,
    pub key_hash: String,
    /// HMAC-SHA-256 of the canonical request keyed by the `Idempotency-Key`
    /// (`IdempotencyKey::fingerprint`), not a bare hash: the request may hold short
    /// template parameters a bare hash would give away to a guess.
    pub fingerprint: String,
    /// What the first request created: a ledger entry's or a broadcast's id.
    pub first_id: String,
    pub created_at: DateTime<Utc>,
    /// Epoch seconds (DynamoDB TTL); after it the key may be used afresh.
    pub expires_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TopUpOnce {
    /// Credited and recorded, with the key's record; the new balance.
    Applied(i64),
    /// The key has a live record: nothing written.
    Earlier(RequestKeyRecord),
}

#[async_trait]
pub trait Ledger: Send + Sync {
    /// Adds credits and records the top-up; answers the new balance.
    async fn top_up(&self, entry: &LedgerEntry) -> Result<i64, StoreError>;
    /// `top_up` plus the key's record, in one atomic write whose condition is that no live
    /// record for the key exists: concurrent requests with one key credit once, the
    /// others get `Earlier`. `NotFound` if no such tenant.
    async fn top_up_once(
        &self,
        entry: &LedgerEntry,
        key: &RequestKeyRecord,
    ) -> Result<TopUpOnce, StoreError>;
    /// Undoes a debit (a message that never reached Meta); answers the new balance.
    async fn refund(&self, entry: &LedgerEntry) -> Result<i64, StoreError>;
    async fn entries(&self, tenant: &TenantId) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Live entries in id (= time) order after the entry `after`, at most `limit`, and the
    /// id to continue after if there may be more (pages may be short).
    async fn entries_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<LedgerEntry>, Option<String>), StoreError> {
        let mut all = self.entries(tenant).await?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let mut rest = all
            .into_iter()
            .filter(|e| after.is_none_or(|a| e.id.as_str() > a));
        let page: Vec<LedgerEntry> = rest.by_ref().take(limit.max(1)).collect();
        let next = if rest.next().is_some() {
            page.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok((page, next))
    }
}

/// A page of messages and the cursor for the next one.
#[derive(Clone, Debug, Default)]
pub struct MessagePage {
    pub messages: Vec<MessageRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct MessageQuery {
    pub status: Option<MessageStatus>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// The outcome of a conditional status change.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    Applied(Box<MessageRecord>),
    /// The message's current status does not allow the change (or it does not exist).
    Refused,
}

#[derive(Clone, Debug, Default)]
pub struct StatusChange {
    pub wamid: Option<String>,
    pub error: Option<MessageError>,
    /// Adds one to `attempts` (a dispatch claim).
    pub count_attempt: bool,
    /// Records the claim's token ([`MessageRecord::claim`]; a dispatch claim).
    pub claim: Option<String>,
    /// Marks the failure counted in the quality `undeliverable` count
    /// ([`MessageRecord::quality_counted`]; a webhook's `failed` with such a code).
    pub quality_counted: bool,
    /// Marks the message refunded ([`MessageRecord::refunded`]): set by the stores'
    /// `fail_and_refund` on the write that refunds it, never by a caller.
    pub refunded: bool,
}

impl StatusChange {
    /// The change applied to a record as every store applies it (the memory store's
    /// write, and the record a DynamoDB transaction moved, which answers no attributes).
    pub fn apply_to(&self, m: &mut MessageRecord, to: MessageStatus, at: DateTime<Utc>) {
        m.status = to;
        m.updated_at = at;
        m.events.push(crate::domain::StatusEvent { status: to, at });
        if let Some(w) = &self.wamid {
            m.wamid = Some(w.clone());
        }
        if self.error.is_some() {
            m.error = self.error.clone();
            // As the stores read it back (`MessageRecord::scrub_error`).
            m.scrub_error();
        } else if to.clears_error() {
            m.error = None;
        }
        if self.count_attempt {
            m.attempts += 1;
        }
        if self.claim.is_some() {
            m.claim = self.claim.clone();
        }
        if self.quality_counted {
            m.quality_counted = true;
        }
        if self.refunded {
            m.refunded = true;
        }
    }
}

/// `events` with `event` put where it belongs in the message's life: before the first
/// event of a status that comes after it (a `delivered` before the `read`; a `sent` before
/// the first `failed`, `delivered` or `read`), else last. Not by time: Meta's times are
/// whole seconds and Kirim's are not, so a `delivered` Meta timed in the second the message
/// was accepted would sort before its `accepted`.
pub fn with_overtaken(events: &[StatusEvent], event: StatusEvent) -> Vec<StatusEvent> {
    use MessageStatus::{Delivered, Failed, Read, Sent};
    let after: &[MessageStatus] = match event.status {
        Sent => &[Failed, Delivered, Read],
        Delivered => &[Read],
        _ => &[],
    };
    let at = events
        .iter()
        .position(|e| after.contains(&e.status))
        .unwrap_or(events.len());
    let mut out = Vec::with_capacity(events.len() + 1);
    out.extend_from_slice(events.get(..at).unwrap_or(events));
    out.push(event);
    out.extend_from_slice(events.get(at..).unwrap_or_default());
    out
}

#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Atomically: debits `record.price` from the tenant's credits only if the balance
    /// stays ≥ 0, records the debit in the ledger, and stores the message.
    /// `InsufficientCredits` when the balance is short, `Conflict(`[`TENANT_CLOSED`]`)` when
    /// the tenant is closed (the check travels with the debit); nothing is written then.
    async fn insert_with_debit(
        &self,
        record: &MessageRecord,
        debit: &LedgerEntry,
    ) -> Result<(), StoreError>;
    async fn get_message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<MessageRecord>, StoreError>;
    /// [`get_message`](Self::get_message), possibly a moment behind the latest write (on
    /// DynamoDB an eventually consistent read: half the read units). Only for a caller
    /// whose decision a conditional write backs anyway, and which treats the answer as a
    /// status the message has at least reached (the webhook's transitions). Shared: the
    /// memory store hands out the record it holds, not a copy (the copy was a dozen
    /// allocations on every webhook; BENCHMARKS.md "Webhook side by side").
    async fn peek_message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<std::sync::Arc<MessageRecord>>, StoreError> {
        Ok(self.get_message(tenant, id).await?.map(std::sync::Arc::new))
    }
    async fn list_messages(
        &self,
        tenant: &TenantId,
        query: &MessageQuery,
    ) -> Result<MessagePage, StoreError>;
    /// Moves the message to `to` only if its current status is one of
    /// `to.allowed_predecessors()`: a conditional write, so concurrent webhooks and
    /// dispatchers can never move it backwards.
    async fn transition(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        to: MessageStatus,
        change: &StatusChange,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError>;
    /// Records a status Meta reported after the message had moved past it (a `delivered`
    /// after its `read`, a `sent` after its `delivered`, `read` or `failed`) when the
    /// message has no event of that status yet: `event` is put among its events in the
    /// order of the message's life ([`with_overtaken`]); its status, `updated_at` and index
    /// entries are left as they are. Its settled time as `seen`'s events have it
    /// ([`settled_at`]) is kept in [`MessageRecord::settled_at`] by the same write, unless
    /// one is kept already. ONE conditional write on the message being as `seen` was read:
    /// the same status and as many events (at `failed`, `delivered` or `read` events are
    /// only ever appended, but for these late ones, so the same count is the same list),
    /// and not expired. With `priced` (the status is also the
    /// first to carry Meta's pricing) the pricing is set and counted in the same write
    /// (as [`UsageStore::record_pricing`], conditioned on none yet). `false`: nothing
    /// written (the message changed since `seen`, has such an event, is priced already or
    /// gone).
    async fn record_overtaken(
        &self,
        seen: &MessageRecord,
        event: StatusEvent,
        priced: Option<&PricedMessage<'_>>,
    ) -> Result<bool, StoreError>;
    /// Fails a message that never reached Meta and gives its credits back, in ONE atomic
    /// write: the message moves to `failed` (with `change`) only if its status is `from`
    /// (`accepted` or `sending`: a caller that has not claimed it must not fail one that
    /// another dispatcher is sending), and in the same write the tenant's balance rises
    /// by `refund.amount` and `refund` is recorded. Both or neither: a process killed at
    /// any point keeps credits equal to the ledger. A message fails once, so its refund
    /// happens at most once. `Refused` (nothing written) when the message is gone or not
    /// `from`; `NotFound` (nothing written) when the tenant is gone. Without a `refund` (a
    /// free message: nothing to give back) the move alone, on the same condition. A
    /// refunded message is marked so ([`MessageRecord::refunded`]) by the same write.
    async fn fail_and_refund(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        from: MessageStatus,
        change: &StatusChange,
        at: DateTime<Utc>,
        refund: Option<&LedgerEntry>,
    ) -> Result<Transition, StoreError>;
    /// Marks an `accepted`, never-attempted message as looked at `at` (its `updated_at`),
    /// only while it is still as it was read (`accepted`, no attempt, `updated_at` =
    /// `seen`). A replay that queues a lost job again wins this first: repeated or
    /// concurrent replays queue at most one job per grace, since the mark restarts the
    /// message's idle time. `false`: it moved, or another replay won.
    async fn touch_unclaimed(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        seen: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Puts a message back to `accepted` from `sending` for a retry, only if it is still
    /// `sending` under the claim made at `claimed_at` (its `updated_at`): a release
    /// repeated after its first write landed, or one that comes late, never gives back
    /// another dispatcher's claim (which would let a third send it again).
    async fn release_for_retry(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        error: &MessageError,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError>;
    /// Atomically: moves the message to `cancelled` only if its status is one of `from`
    /// (a subset of `cancelled`'s predecessors), sets `error`, and refunds `refund`
    /// (credits and ledger entry) in the same write. The claim (`accepted → sending`) is
    /// conditional on the same status, so a message is either claimed or cancelled and
    /// refunded, never both. `Refused`: the status did not allow it; nothing written.
    async fn cancel_with_refund(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        from: &[MessageStatus],
        error: &MessageError,
        refund: &LedgerEntry,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError>;
    /// Records the wamid Meta assigned (and the index from wamid to message).
    async fn set_wamid(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        wamid: &str,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Records the index from wamid to message, for a caller that puts the wamid on the
    /// message itself in the same write as its status (the dispatcher's `sent`
    /// transition): one write fewer. A store may record both, as `set_wamid` does.
    ///
    /// Answers whether a status for `wamid` may have been kept before it was indexed
    /// ([`PendingStatusStore::put_pending_status`]): only then does the caller read the
    /// kept statuses (no read when none came early, the usual case). `true` when the store
    /// cannot tell (this default).
    async fn index_wamid(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        wamid: &str,
        expires_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.set_wamid(tenant, id, wamid, expires_at).await?;
        Ok(true)
    }
    async fn message_by_wamid(
        &self,
        wamid: &str,
    ) -> Result<Option<(TenantId, MessageId)>, StoreError>;
}

/// A page of opt-outs (ordered by the key each is kept under) and the cursor for the next
/// one.
#[derive(Clone, Debug, Default)]
pub struct OptOutPage {
    pub opt_outs: Vec<OptOut>,
    /// The key each of `opt_outs` is kept under, in the same order: a copy under a user id
    /// also names the phone it was paired with, and only this key removes it once the two
    /// are no longer paired.
    pub keys: Vec<crate::domain::OptOutKey>,
    pub next_cursor: Option<String>,
}

/// A page of API keys (newest first) and the cursor for the next one (`None`: the last).
#[derive(Clone, Debug, Default)]
pub struct ApiKeyPage {
    pub keys: Vec<ApiKeyRecord>,
    pub next_cursor: Option<String>,
}

/// Which end of a list of a tenant's records by id its first page starts at (the ids
/// being ULIDs, id order is creation order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    OldestFirst,
    NewestFirst,
}

/// The most records a page of a paged list of a tenant's records holds (API keys,
/// users): one read's worth, whatever a caller asks.
pub const MAX_PAGE: usize = 100;

/// Whether `id` may be a position in a list of a tenant's records by id (API keys,
/// users): the ids are ULIDs ([`new_id`](crate::domain::new_id)); the cursors of both
/// adapters name one. Anything else is not a
/// cursor of ours (and a long one would reach DynamoDB as an over-long sort key: a 500,
/// not a 400).
pub fn listed_id(id: &str) -> bool {
    id.len() == 26 && ulid::Ulid::from_string(id).is_ok()
}

/// A page's cursor as the DynamoDB adapter's are: opaque, URL-safe (a phone's `+` passed
/// back unencoded in a query string would read as a space) and bound to its tenant and its
/// list (`list`, as the table's sort-key prefix binds DynamoDB's: another list's cursor is
/// refused there): the tenant, the list and the position after which the next page begins.
/// The memory adapter's lists' cursors, and on both backends those of a list the service
/// pages itself over a store's positions (a campaign's messages, `GET
/// /v1/messages?broadcast_id=`: neither adapter's messages cursor, nor one of theirs).
pub fn page_cursor(tenant: &TenantId, list: &str, after: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{tenant}\n{list}\n{after}"))
}

/// The position a [`page_cursor`] names, if it is one of `tenant`'s own, of `list`
/// (another tenant's or list's, or a malformed one, is refused as DynamoDB's adapter
/// refuses it).
pub fn cursor_position(cursor: &str, tenant: &TenantId, list: &str) -> Result<String, StoreError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| StoreError::InvalidCursor)?;
    let mut parts = text.splitn(3, '\n');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(l), Some(after)) if t == tenant.as_str() && l == list => {
            Ok(after.to_owned())
        }
        _ => Err(StoreError::InvalidCursor),
    }
}

/// The `Conflict` a write refused for its tenant being closed answers (an opt-out put
/// inside the warm caches' 5 s after the closing).
pub const TENANT_CLOSED: &str = "the account is closed";

/// Opt-outs [`OptOutStore::delete_opt_outs`] removes at once at most: DynamoDB's
/// `TransactWriteItems` takes 100 items; 25 is far above what one removal covers
/// (`service::optouts`' 12 keys).
pub const MAX_OPT_OUTS_REMOVED: usize = 25;

/// `Rejected` for more keys than [`OptOutStore::delete_opt_outs`] removes at once.
pub fn check_opt_outs_removed(keys: &[OptOutKey]) -> Result<(), StoreError> {
    if keys.len() > MAX_OPT_OUTS_REMOVED {
        return Err(StoreError::Rejected(format!(
            "at most {MAX_OPT_OUTS_REMOVED} opt-outs at once"
        )));
    }
    Ok(())
}

/// A tenant's opt-outs: active configuration, kept (no TTL) while the tenant exists. Each
/// is stored under its [`OptOut::key`] (the phone when known, else the user id).
#[async_trait]
pub trait OptOutStore: Send + Sync {
    /// Records the opt-out and answers what is stored, and whether the key had no
    /// opt-out before (a new one). Folds it into the key's opt-out ([`OptOut::folded`]):
    /// never narrows (a `marketing` opt-out leaves an existing `all` one in place, and
    /// answers that one; an `all` one widens a `marketing` one) and never moves the time
    /// back. A conditional write of what was read (retried when it changed meanwhile).
    /// An opt-out without a key is refused. One that an opting back in overrides
    /// ([`OptedIn::overrides`]: a newer START; of the same second, the later arrival
    /// stands) is not stored (answered as not new); the check travels with the write (on
    /// DynamoDB, one transaction). The opting back in of every key the user is known by
    /// counts ([`OptOut::opted_in_keys`]): the key it is kept under, the other key it
    /// records, and `paired`, the key its user is paired with now (the caller's reading),
    /// a `ConditionCheck` each on DynamoDB. (Checked under its own key only, a STOP
    /// redelivered after a newer START by the user's other key was stored.)
    ///
    /// Never for a closed tenant (its close-out gives its opt-outs their TTL; one written
    /// after would have none): `Conflict(`[`TENANT_CLOSED`]`)`, nothing written; the
    /// check travels with the write too (a copy is refused the same way: `false`).
    ///
    /// [`OptedIn::overrides`]: crate::domain::OptedIn::overrides
    async fn put_opt_out_paired(
        &self,
        opt_out: &OptOut,
        paired: Option<&OptOutKey>,
    ) -> Result<(OptOut, bool), StoreError>;
    /// [`put_opt_out_paired`](Self::put_opt_out_paired) with no pairing known beyond the
    /// keys the opt-out records.
    async fn put_opt_out(&self, opt_out: &OptOut) -> Result<(OptOut, bool), StoreError> {
        self.put_opt_out_paired(opt_out, None).await
    }
    /// [`put_opt_out`](Self::put_opt_out) of a copy of the opt-out stored under `of`, kept
    /// under its other key ([`OptOut::copy_key`]: a user id's under the phone it is paired
    /// with, a phone's under the user id Meta named with it), only while that one exists:
    /// the check travels with the write (on DynamoDB a `ConditionCheck` in the put's
    /// transaction), so a copy never revives an opt-out the tenant has just removed.
    /// `false` if it was gone (nothing written).
    async fn put_opt_out_copy(&self, copy: &OptOut, of: &OptOutKey) -> Result<bool, StoreError>;
    async fn get_opt_out(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOut>, StoreError>;
    /// [`get_opt_out`](Self::get_opt_out), possibly a moment behind the latest write (on
    /// DynamoDB an eventually consistent read: half the read units). Only for the
    /// dispatcher's second look at a message the send API accepted after a consistent
    /// check (README, "Opt-outs": what it may miss).
    async fn peek_opt_out(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOut>, StoreError> {
        self.get_opt_out(tenant, key).await
    }
    /// Removes the opt-out only if it was not made by a STOP reply newer than Meta's
    /// time `at` (a START reply of that time): a conditional delete, so a START never
    /// undoes a newer STOP whatever order they arrive in. `false` if nothing was removed.
    /// First it records the opting back in at `at` (`OptedIn::all_at`, the newest kept,
    /// for 7 days), which [`put_opt_out`](Self::put_opt_out) refuses an older opt-out
    /// under: an older STOP arriving after it does not opt the user out again.
    /// When the user last opted back in under `key` (a START, a marketing `resume`), while
    /// that record lives (`OPTED_IN_RETENTION`); a consistent read.
    async fn opted_in(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<crate::domain::OptedIn>, StoreError>;
    async fn delete_opt_out_not_newer_than(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        at: i64,
    ) -> Result<bool, StoreError>;
    /// Removes the opt-out if it is of `scope` and not newer than time `at` (a
    /// conditional delete): a `resume` of marketing never removes an `all` opt-out, nor
    /// one made after it. `false` if nothing was removed. First it records the opting
    /// back in to `scope` at `at` (a `marketing` one: `OptedIn::marketing_at`).
    async fn delete_opt_out_of_scope(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        scope: OptOutScope,
        at: i64,
    ) -> Result<bool, StoreError>;
    /// Removes the opt-out; `false` if there was none.
    async fn delete_opt_out(&self, tenant: &TenantId, key: &OptOutKey) -> Result<bool, StoreError>;
    /// Removes the opt-outs under every one of `keys` (at most [`MAX_OPT_OUTS_REMOVED`],
    /// else `Rejected`) in one atomic write,
    /// whichever of them exist: a copy, written only while its source exists
    /// ([`put_opt_out_copy`](Self::put_opt_out_copy)), lands either before it (and is
    /// removed with it) or not at all, so nothing of a user's opt-out survives its removal.
    async fn delete_opt_outs(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<(), StoreError>;
    async fn list_opt_outs(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<OptOutPage, StoreError>;
}

/// What [`ContactStore::found_among`] found under a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// An opt-out is stored under it (of any scope).
    pub opt_out: bool,
    /// The key it is paired with ([`ContactStore::paired_key`]'s answer): `None` if it has
    /// no pairing, or one whose other key is unreadable (as `paired_key` answers it).
    pub paired: Option<OptOutKey>,
}

/// What Kirim knows of a tenant's WhatsApp users besides opt-outs, learnt from Meta's
/// webhooks: which phone goes with which business-scoped user id, and when a user last
/// wrote to each of the tenant's numbers. Never any content.
#[async_trait]
pub trait ContactStore: Send + Sync {
    /// Records that `phone` and `user_id` name one user (both ways; a newer pairing of
    /// either replaces an older one). `expires_at`: epoch seconds (DynamoDB TTL).
    async fn pair_user(
        &self,
        tenant: &TenantId,
        phone: &PhoneNumber,
        user_id: &UserId,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError>;
    /// The other key of a known pairing (a phone's user id, a user id's phone).
    async fn paired_key(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOutKey>, StoreError>;
    /// [`paired_key`](Self::paired_key) and when that half was written (epoch
    /// milliseconds; `None` for a half written before the time was recorded, stop 49).
    async fn pairing(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<(OptOutKey, Option<i64>)>, StoreError>;
    /// Forgets the pairing stored under `key` while it still names `other` and was written
    /// before `newer` (the other half's write time: that half was written after it; a half
    /// with no recorded time is older than any with one), a conditional delete, so a
    /// pairing of `key` written since stands. Only `key`'s own item. Answers whether it
    /// was removed.
    async fn unpair(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        other: &OptOutKey,
        newer: i64,
    ) -> Result<bool, StoreError>;
    /// [`paired_key`](Self::paired_key), possibly a moment behind (as
    /// [`OptOutStore::peek_opt_out`]).
    async fn peek_paired_key(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOutKey>, StoreError> {
        self.paired_key(tenant, key).await
    }
    /// Of `keys` (any number, duplicates allowed), those under which the tenant has an
    /// opt-out or a pairing stored ([`OptOutStore::get_opt_out`], [`paired_key`]), each
    /// with what: whether an opt-out (of any scope), and the key it is paired with, as
    /// [`paired_key`] answers it. Read consistently as they are, expired items not counted.
    /// A key not answered has neither. A campaign's recipients are looked up so at its
    /// creation (`service::broadcasts`), then the keys they are paired with by
    /// [`opted_out_among`](Self::opted_out_among): one with no opt-out under any of its
    /// keys or their pairings needs no further look-up; one with any is checked in full. On
    /// DynamoDB `BatchGetItem`s of 100 items (both items of 50 keys), a few at once, the
    /// keys a call leaves unprocessed asked again, then read one by one.
    ///
    /// [`paired_key`]: Self::paired_key
    async fn found_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<std::collections::HashMap<OptOutKey, Found>, StoreError>;
    /// Of `keys` (any number, duplicates allowed), those under which the tenant has an
    /// opt-out stored (of any scope, as [`OptOutStore::get_opt_out`] finds it), read
    /// consistently: [`found_among`](Self::found_among)'s opt-out items alone, for the keys
    /// a campaign's recipients are paired with. On DynamoDB `BatchGetItem`s of 100 keys, as
    /// `found_among`'s.
    async fn opted_out_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<std::collections::HashSet<OptOutKey>, StoreError>;
    /// Records that the user `key` wrote to the tenant's number `phone_number_id` at
    /// `at` (kept in whole seconds), unless a later time is already recorded (a conditional write: webhooks arrive
    /// in any order). The item expires at `expires_at` (epoch seconds).
    async fn record_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
        at: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError>;
    /// When the user `key` last wrote to `phone_number_id`, unless that record expired.
    async fn last_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
}

/// What is remembered of an `Idempotency-Key`: its hash, the request's fingerprint and
/// the message it created. Never the request itself.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyRecord {
    pub tenant_id: TenantId,
    pub key_hash: String,
    /// HMAC-SHA256 of the canonical request JSON, keyed by the `Idempotency-Key`
    /// (`domain::idempotency`).
    pub fingerprint: String,
    pub message_id: MessageId,
    pub created_at: DateTime<Utc>,
    /// Epoch seconds (DynamoDB TTL); after it the key may be used afresh.
    pub expires_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum IdempotentInsert {
    /// The message, its debit and the key's record were written together.
    Inserted,
    /// A live record for the key already existed: nothing was written.
    Existing(IdempotencyRecord),
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// `MessageStore::insert_with_debit` plus the key's record, all in one atomic write
    /// whose condition is that no live record for the key exists. Concurrent requests
    /// with one key: exactly one is `Inserted`, the others get `Existing`.
    async fn insert_with_debit_once(
        &self,
        record: &MessageRecord,
        debit: &LedgerEntry,
        key: &IdempotencyRecord,
    ) -> Result<IdempotentInsert, StoreError>;
    /// The live record for a key, if any.
    async fn get_idempotency(
        &self,
        tenant: &TenantId,
        key_hash: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
}

/// One received queue message. Its `Debug` leaves the body out (a send job carries the
/// message's content).
#[derive(Clone)]
pub struct Received {
    pub receipt: String,
    pub body: String,
    pub receive_count: u32,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("receipt", &self.receipt)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .field("receive_count", &self.receive_count)
            .finish()
    }
}

#[async_trait]
pub trait DispatchQueue: Send + Sync {
    async fn send(&self, body: &str) -> Result<(), StoreError>;
    /// Sends `body` as one of `group`'s messages (a tenant's): on SQS the standard queue's
    /// `MessageGroupId`, which makes it a fair queue, so that one tenant's backlog does
    /// not hold back the other tenants' messages (delivery order is otherwise as `send`'s).
    /// Queues without groups send it as `send` does.
    async fn send_in_group(&self, group: &str, body: &str) -> Result<(), StoreError> {
        let _ = group;
        self.send(body).await
    }
    /// Sends several at once (SQS batches of 10); all or an error.
    async fn send_batch(&self, bodies: &[String]) -> Result<(), StoreError> {
        for b in bodies {
            self.send(b).await?;
        }
        Ok(())
    }
    /// Sends a message that becomes visible only after `delay` (SQS `DelaySeconds`: at
    /// most 15 minutes, so longer waits are chained by the consumer; see
    /// `service::schedule`). Queues without delays send it at once.
    async fn send_delayed(&self, body: &str, delay: Duration) -> Result<(), StoreError> {
        let _ = delay;
        self.send(body).await
    }
    /// Sends several at once, each visible only after `delay` (as [`Self::send_delayed`];
    /// SQS batches of 10, whole seconds rounded up); all or an error.
    async fn send_batch_delayed(
        &self,
        bodies: &[String],
        delay: Duration,
    ) -> Result<(), StoreError> {
        if delay.is_zero() {
            return self.send_batch(bodies).await;
        }
        for b in bodies {
            self.send_delayed(b, delay).await?;
        }
        Ok(())
    }
    /// [`Self::send_batch_delayed`], answering for each body whether it was queued: SQS
    /// takes or refuses a batch's entries one by one, so some may be queued when others
    /// are not (a caller that retried them all would queue those twice). By default all
    /// or none, as `send_batch_delayed` answers.
    async fn send_batch_delayed_each(
        &self,
        bodies: &[String],
        delay: Duration,
    ) -> Vec<Result<(), StoreError>> {
        let sent = self.send_batch_delayed(bodies, delay).await;
        bodies.iter().map(|_| sent.clone()).collect()
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, StoreError>;
    async fn delete(&self, receipt: &str) -> Result<(), StoreError>;
    /// Deletes several received messages at once (SQS batches of 10, as Lambda's event
    /// source does for a batch); all or an error (one not deleted comes back after its
    /// visibility timeout, which every consumer takes as a duplicate).
    async fn delete_batch(&self, receipts: &[String]) -> Result<(), StoreError> {
        for r in receipts {
            self.delete(r).await?;
        }
        Ok(())
    }
    /// Makes the message visible again after `delay` (a retry with backoff).
    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError>;
    /// Up to `max` messages parked on the dead-letter queue, left where they are.
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, StoreError>;
    /// Moves parked messages back to this queue: those whose ids are in `ids` (every one,
    /// when `None`), at most `max` in one call. Each is sent to the queue before it is
    /// removed from the dead-letter queue (a failure in between leaves it on both: the
    /// consumers' own checks must make a second delivery harmless).
    async fn redrive(&self, ids: Option<&[String]>, max: usize) -> Result<Redriven, StoreError>;
}

/// One message parked on a dead-letter queue. Its body is the job as queued, which may
/// hold message content: read metadata from it, never pass it on (no `Debug` of it).
#[derive(Clone)]
pub struct DeadLetter {
    /// The queue's id for it (SQS keeps it when it moves a message to the DLQ).
    pub id: String,
    pub body: String,
    pub receive_count: u32,
    /// When it was first queued.
    pub sent_at: DateTime<Utc>,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("id", &self.id)
            .field("body", &"<redacted>")
            .field("receive_count", &self.receive_count)
            .field("sent_at", &self.sent_at)
            .finish()
    }
}

/// What one redrive moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redriven {
    /// The dead-letter ids moved back to the queue.
    pub moved: Vec<String>,
    /// Whether more may be left to move (only when every one was asked for).
    pub more: bool,
    /// Dead-letter ids found and chosen but refused by the source queue's send: still
    /// parked.
    pub unsent: Vec<String>,
}

/// One secret as a listing names it: its name and times, never a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedSecret {
    pub name: String,
    /// When the secret was created (Secrets Manager: `CreatedDate`).
    pub created_at: Option<DateTime<Utc>>,
    /// When it last changed (a version stored or staged, a label moved: `LastChangedDate`).
    pub changed_at: Option<DateTime<Utc>>,
}

/// One page of a [`SecretStore::list_secrets`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretPage {
    pub secrets: Vec<ListedSecret>,
    /// The token of the next page; `None` at the end.
    pub next: Option<String>,
}

#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Creates the secret, or stores a new current version if it exists.
    async fn put_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError>;
    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError>;
    /// The previous version (during rotation), if any.
    async fn get_previous_secret(&self, name: &str) -> Result<Option<Secret>, StoreError>;
    /// When the current version was stored (Secrets Manager: AWSCURRENT's `CreatedDate`):
    /// the rotation time, from which the previous version's grace window runs.
    async fn rotated_at(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
    async fn delete_secret(&self, name: &str) -> Result<(), StoreError>;
    /// Makes `value` the current version whatever state the secret is in: created if there
    /// is none, and if it is scheduled for deletion (Secrets Manager's recovery window) its
    /// deletion cancelled first (`RestoreSecret`), so that it is read again. (A plain
    /// [`Self::put_secret`] leaves such a secret being deleted, and reading as absent.)
    async fn replace_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError>;
    /// Stores `value` as a new version that is not yet the current one (Secrets Manager:
    /// staged `AWSPENDING`), or creates the secret with it as its current version if
    /// there is none; answers the new version's id. Nothing that reads the current
    /// version sees it until [`Self::promote_secret`].
    async fn stage_secret(&self, name: &str, value: &Secret) -> Result<String, StoreError>;
    /// Makes `version` the current one (the one it replaces becomes the previous one);
    /// nothing if it is current already.
    async fn promote_secret(&self, name: &str, version: &str) -> Result<(), StoreError>;
    /// One version by its id, whatever its stage; `None` if the secret or the version is
    /// gone.
    async fn get_secret_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<Secret>, StoreError>;
    /// One page of the secrets whose names begin with `prefix`, in no promised order, from
    /// the start or after `page` (the `next` a previous page answered): names and times,
    /// never a value. One scheduled for deletion is not listed. A page holds at most
    /// `limit` (1 to 100), and may hold fewer, even none, with a `next` all the same.
    async fn list_secrets(
        &self,
        prefix: &str,
        page: Option<&str>,
        limit: usize,
    ) -> Result<SecretPage, StoreError>;
}

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Meta accepted the message and gave it this id.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaAccepted {
    pub wamid: String,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MetaSendError {
    /// Meta answered with its error shape.
    #[error("meta error {code} (http {http_status}): {title}")]
    Api {
        http_status: u16,
        code: i64,
        title: String,
        /// Meta's own `is_transient` ("temporary: the request should be retried"), when
        /// its error says: decides for a code Kirim's table does not know.
        is_transient: Option<bool>,
    },
    /// The request may have reached Meta but no answer came in time: ambiguous.
    #[error("meta did not answer in time")]
    Timeout,
    /// The request never left (DNS, connect, TLS): safe to retry.
    #[error("could not reach meta: {0}")]
    Connection(String),
    /// An answer we could not understand.
    #[error("unexpected answer from meta (http {0})")]
    Protocol(u16),
}

#[async_trait]
pub trait MetaClient: Send + Sync {
    async fn send_message(
        &self,
        phone_number_id: &str,
        token: &Secret,
        body: &serde_json::Value,
    ) -> Result<MetaAccepted, MetaSendError>;
    /// One page of the WABA's templates (`GET /{version}/{waba_id}/message_templates`),
    /// from the start or after Meta's cursor `after`.
    async fn list_templates(
        &self,
        waba_id: &str,
        token: &Secret,
        after: Option<&str>,
    ) -> Result<crate::domain::template::MetaTemplatePage, MetaSendError>;
    /// One page of the WABA's templates that holds every one named `name` on it (Meta's
    /// `name` filter; the page may list others too: the caller picks). The default reads
    /// the unfiltered list, a correct superset for a client without the filter.
    async fn list_templates_named(
        &self,
        waba_id: &str,
        token: &Secret,
        name: &str,
        after: Option<&str>,
    ) -> Result<crate::domain::template::MetaTemplatePage, MetaSendError> {
        let _ = name;
        self.list_templates(waba_id, token, after).await
    }
    /// Subscribes the app the token was issued to to the WABA's webhooks (`POST
    /// /{version}/{waba_id}/subscribed_apps`): until then Meta sends the app none of the
    /// WABA's statuses, inbound messages, template or account updates, whatever the app's
    /// webhook fields say. Idempotent at Meta. The default, for a client that cannot (test
    /// doubles), answers that it did not (`Protocol(501)`), never that it did.
    async fn subscribe_app(&self, waba_id: &str, token: &Secret) -> Result<(), MetaSendError> {
        let _ = (waba_id, token);
        Err(MetaSendError::Protocol(501))
    }
    /// What Meta says of one business number (`GET /{version}/{phone_number_id}` with its
    /// quality rating, throughput, display...): the daily sync's read. The default, for a
    /// client that cannot (test doubles), answers that it did not read (`Protocol(501)`),
    /// never a number Meta said nothing of.
    async fn get_phone_number(
        &self,
        phone_number_id: &str,
        token: &Secret,
    ) -> Result<crate::domain::number::MetaPhoneNumber, MetaSendError> {
        let _ = (phone_number_id, token);
        Err(MetaSendError::Protocol(501))
    }
}

/// One audit event, a link of its chain (one chain per tenant, and `platform` for calls
/// that name no tenant). `hash` = SHA-256 over `prev_hash` and every other field, so an
/// edit or a deletion inside the retained window breaks the chain.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditEvent {
    pub chain: String,
    pub seq: u64,
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor_type: String,
    pub actor_id: String,
    pub action: String,
    pub ip: Option<String>,
    pub outcome: AuditOutcome,
    /// Non-sensitive details as canonical JSON text (hashed exactly as stored).
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
    pub expires_at: Option<i64>,
    /// The previous event's expiry (hashed with this event when present), so that the
    /// oldest retained event says when its predecessor may lawfully be gone: a deletion
    /// before then is detected. `None` on the first event and on events written before
    /// it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_expires_at: Option<i64>,
    /// The event's own signature (hex HMAC-SHA256 with the audit key,
    /// `service::audit::event_signature`): proof that a holder of the key wrote it, so an
    /// event left beyond its chain's head (the head write failed) is anchored later only if
    /// it verifies. Not hashed, and not a checkpoint (another message is signed: it cannot
    /// be copied onto the head). `None`: written without a key, or before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// How an audited action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Success,
    Denied,
    Error,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Error => "error",
        }
    }
}

/// The newest link of a chain, and its checkpoint: `signature` (hex HMAC-SHA256 with the
/// audit key, `service::audit::checkpoint_signature`) covers the chain, `seq`, `hash` and
/// `expires_at`, so a head rewritten without the key is detected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
    /// The newest event's expiry.
    pub expires_at: Option<i64>,
    /// `None`: written without a key (before anchoring, or with no audit key configured).
    pub signature: Option<String>,
    /// When the head item itself expires: none while its tenant is open; set by the
    /// close-out, raised by every later move to its new event's expiry (a head gone before
    /// its newest events would make the chain look cut).
    pub ttl: Option<i64>,
}

impl AuditHead {
    /// The head that anchors `event` after `prev`, with `signature`. A head with an expiry
    /// of its own keeps it at least until `event` expires.
    pub fn anchoring(
        event: &AuditEvent,
        prev: Option<&AuditHead>,
        signature: Option<String>,
    ) -> Self {
        Self {
            seq: event.seq,
            hash: event.hash.clone(),
            expires_at: event.expires_at,
            signature,
            ttl: prev
                .and_then(|h| h.ttl)
                .map(|t| event.expires_at.map_or(t, |e| t.max(e))),
        }
    }
}

/// One event appended to a chain, with the new head's signature; `parked`: the id of the
/// parked event it comes from, whose outbox item goes in the same atomic write.
#[derive(Clone, Debug)]
pub struct AuditLink<'a> {
    pub event: &'a AuditEvent,
    /// The head the event was computed against (`None`: an empty chain).
    pub expected: Option<&'a AuditHead>,
    pub signature: Option<String>,
    pub parked: Option<&'a str>,
}

impl<'a> AuditLink<'a> {
    /// A fresh event after `expected`, unsigned (the service signs its links).
    pub fn new(event: &'a AuditEvent, expected: Option<&'a AuditHead>) -> Self {
        Self {
            event,
            expected,
            signature: None,
            parked: None,
        }
    }

    /// The head this link moves its chain to.
    pub fn head(&self) -> AuditHead {
        AuditHead::anchoring(self.event, self.expected, self.signature.clone())
    }
}

/// An audit event whose append failed, kept durably in the chain's outbox until a later
/// append (or the retention run) links it in, oldest first. It expires with the audit
/// class.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParkedAudit {
    pub chain: String,
    /// A ULID: outbox order is id order.
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor_type: String,
    pub actor_id: String,
    pub action: String,
    pub ip: Option<String>,
    pub outcome: AuditOutcome,
    pub details: String,
    pub expires_at: Option<i64>,
    /// HMAC-SHA256 with the audit key over every field above (`audit::parked_signature`):
    /// a holder of the key parked it. `None` when the key could not be read at the time
    /// (and on items parked before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A stale audit intent as the sweep reads it ([`AuditLog::stale_intents`]).
#[derive(Clone, Debug, PartialEq)]
pub enum StaleIntent {
    /// An intent.
    Intent(ParkedAudit),
    /// An item under an intent's key that is not one (its attributes do not read as an
    /// intent: no adapter writes such a thing): its id, from its key, and why. The sweep
    /// logs and counts it, and goes on past it.
    Unreadable {
        id: String,
        /// Its key, as the store names it (`pk / sk` on DynamoDB), for the log.
        key: String,
        error: String,
    },
}

impl StaleIntent {
    /// Its id (the order the sweep reads in, and where it goes on after it).
    pub fn id(&self) -> &str {
        match self {
            StaleIntent::Intent(i) => &i.id,
            StaleIntent::Unreadable { id, .. } => id,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub action: Option<String>,
    pub limit: usize,
    /// Continue with events older than this sequence number (the cursor).
    pub before_seq: Option<u64>,
}

#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn head(&self, chain: &str) -> Result<Option<AuditHead>, StoreError>;
    /// The head and whether any event is parked for the chain, in one read.
    async fn tip(&self, chain: &str) -> Result<(Option<AuditHead>, bool), StoreError>;
    /// Appends `link.event` only if the chain's head is still at `link.expected`'s
    /// sequence number (`None`: an empty chain) and no event has its `seq`, moving the head
    /// to it with the new signature and removing the parked event `link.parked`,
    /// atomically (one transaction: how a parked event is linked in, exactly once).
    /// `Conflict` if another append won or the parked event is already gone. A fresh
    /// event is appended with the two plain writes below instead.
    async fn append(&self, link: &AuditLink<'_>) -> Result<(), StoreError>;
    /// The first of an append's two plain writes: writes `event` only if its chain has no
    /// event at its `seq` (expired or not), or has this very event (same id: a retried
    /// write whose first answer was lost), without moving the head. `Conflict` if it has
    /// another (another append's event, anchored or still in flight).
    async fn put_event(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// The second: moves `chain`'s head to `to` only if it is at sequence number `from`
    /// (`None`: the chain has no head), or is already exactly `to` (`seq` and `hash`: a
    /// repeat is idempotent). `Conflict` otherwise.
    async fn advance_head(
        &self,
        chain: &str,
        from: Option<u64>,
        to: &AuditHead,
    ) -> Result<(), StoreError>;
    /// The chain's live event at `seq`, read consistently (the event beyond a head left
    /// behind, before it is anchored).
    async fn event(&self, chain: &str, seq: u64) -> Result<Option<AuditEvent>, StoreError>;
    /// Keeps an event whose append failed (an unconditional, idempotent write).
    async fn park(&self, event: &ParkedAudit) -> Result<(), StoreError>;
    /// The chain's live parked events, oldest first, at most `limit`.
    async fn parked(&self, chain: &str, limit: usize) -> Result<Vec<ParkedAudit>, StoreError>;
    /// The chains that have live parked events, in chain order, after `after` (exclusive;
    /// `None`: from the first), at most `limit`: what the retention run drains. Read from
    /// an index the park writes with the event itself; on DynamoDB it is eventually
    /// consistent, so a chain parked a moment ago may first show on the next run.
    async fn parked_chains(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// Keeps an audit *intent* (`audit::intent`): what an audited call is about to attempt,
    /// written before its handler runs, as the parked event it becomes should its process
    /// die before the call's own event is recorded (an unconditional write, keyed by its
    /// ULID id alone, so the sweep finds it by time without a scan).
    async fn put_intent(&self, intent: &ParkedAudit) -> Result<(), StoreError>;
    /// Removes the intent `id` (its call's event was recorded or parked); gone already is
    /// no error.
    async fn delete_intent(&self, id: &str) -> Result<(), StoreError>;
    /// Live intents made before `before` (their ids' time) and after the id `after`
    /// (exclusive; `None`: from the oldest), oldest first, at most `limit`; one that does
    /// not read as an intent is in its place as [`StaleIntent::Unreadable`], not an error
    /// (one bad item must not stop the sweep of every later one).
    async fn stale_intents(
        &self,
        before: DateTime<Utc>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StaleIntent>, StoreError>;
    /// Turns the intent `id` into the parked event `parked` in one atomic write: the intent
    /// deleted (only while it exists) and `parked` parked (as [`AuditLog::park`]), so an
    /// intent becomes at most one event however many sweeps race. `Conflict` if the
    /// intent is gone, and then nothing is written.
    async fn promote_intent(&self, id: &str, parked: &ParkedAudit) -> Result<(), StoreError>;
    /// Newest first, matching the query; the next cursor if there may be more.
    async fn list(
        &self,
        chain: &str,
        q: &AuditQuery,
    ) -> Result<(Vec<AuditEvent>, Option<u64>), StoreError>;
    /// Oldest first, after `after_seq`, at most `limit` live events (for verification).
    async fn ascending(
        &self,
        chain: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError>;
}

/// A daily quality counter of a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QualityCounter {
    /// Accepted by Meta (the denominator).
    Sent,
    /// A recipient opted out (STOP, a stop button, or Meta's 131050).
    OptOut,
    /// Meta could not deliver or blocked delivery (131026, 131048, 131049).
    Undeliverable,
}

impl QualityCounter {
    pub fn attribute(self) -> &'static str {
        match self {
            QualityCounter::Sent => "sent",
            QualityCounter::OptOut => "opt_outs",
            QualityCounter::Undeliverable => "undeliverable",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QualityCounts {
    pub sent: u64,
    pub opt_outs: u64,
    pub undeliverable: u64,
}

/// Per-tenant daily counters, added to atomically (no read-then-write).
#[async_trait]
pub trait QualityStats: Send + Sync {
    /// Adds `by` to the tenant's `counter` of `day` (one atomic write; creates the day).
    async fn bump_by(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        counter: QualityCounter,
        by: u64,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError>;
    /// [`bump_by`](Self::bump_by) one.
    async fn bump(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        counter: QualityCounter,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.bump_by(tenant, day, counter, 1, expires_at).await
    }
    /// Takes one back from the tenant's `counter` of `day` (an event that turned out not
    /// to be one), never below zero (a conditional write); nothing if the day has none.
    async fn take_back(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        counter: QualityCounter,
    ) -> Result<(), StoreError>;
    /// Sums the days `from..=to`.
    async fn totals(
        &self,
        tenant: &TenantId,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<QualityCounts, StoreError>;
}
mod retention;
mod throttle;
mod users;
pub use retention::*;
pub use throttle::*;
pub use users::*;

/// A broadcast: one template to many recipients, debited all at once.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Broadcast {
    pub id: String,
    pub tenant_id: TenantId,
    pub template: crate::domain::TemplateRef,
    /// Recipients accepted (valid, distinct, not opted out): each becomes a message.
    pub accepted: usize,
    pub skipped_opted_out: usize,
    pub invalid: usize,
    pub duplicates: usize,
    pub price_each: i64,
    pub status: BroadcastStatus,
    /// Recipients `0..enqueued` have their message recorded and queued.
    pub enqueued: usize,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<i64>,
    /// The tenant's name for it (a campaign name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The sender: the phone number id its messages go out from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// When it is to start (absent: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    /// When its fan-out started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it was cancelled (or otherwise ended by a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// A person's hold on it: paused or cancelled (absent: running). The dispatcher's
    /// claim of each of its messages is conditional on there being none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<BroadcastControl>,
    /// When a person last paused, resumed or cancelled it: the retention run leaves its
    /// messages alone for `domain::UNSENT_STALE_AFTER` after (a pause keeps them unmoved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_at: Option<DateTime<Utc>>,
    /// The broadcast whose failures this one retries (`retry-failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    /// The broadcast that retried this one's failures: set once, by the retry's own
    /// creating write (a condition that it was not yet set), so a broadcast is retried
    /// once. Retry the retry for what failed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_by: Option<String>,
    /// Recipients never recorded, refunded when it was closed because its list was gone
    /// ([`BroadcastStore::close_broadcast_unsent`]), or all of them when it was cancelled
    /// before it started ([`BroadcastStore::cancel_scheduled_broadcast`]): they have no
    /// message, and the view counts them `cancelled`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refunded_unsent: usize,
    /// Recipients closed by [`BroadcastStore::record_unqueued`] (cancelled, or failed)
    /// without ever being queued: inside `enqueued` (the fan-out's position), but never
    /// queued, so the view's `enqueued` leaves them out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub closed_unqueued: usize,
    /// Where its chain of fan-out jobs stands: the token the next fan-out job carries,
    /// written by each run's last progress write ([`FanoutHop`]), so that of two deliveries
    /// of one job only one queues the job after it. Absent until the first run ends (and on
    /// broadcasts whose fan-out ran before tokens). Internal, never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout_token: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The `Conflict` of a broadcast's creating write whose retry mark was refused: the
/// broadcast it retries was retried already (or is gone).
pub const ALREADY_RETRIED: &str = "this broadcast's failures were retried already";

impl Broadcast {
    /// When its recipient list expires if nothing deleted it before (the backstop of
    /// [`crate::domain::BROADCAST_LIST_RETENTION`]): counted from its start, `send_at` for a
    /// scheduled one (up to 35 days ahead), not from its creation.
    pub fn list_expires_at(&self) -> i64 {
        let from = self
            .send_at
            .map_or(self.created_at, |at| at.max(self.created_at));
        from.timestamp()
            .saturating_add(crate::domain::BROADCAST_LIST_RETENTION.as_secs() as i64)
    }
}

/// A hold on a broadcast, checked by every claim of one of its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastControl {
    /// No message of it is claimed until it is resumed.
    Paused,
    /// Its messages not yet claimed end `cancelled`, refunded.
    Cancelled,
}

impl BroadcastControl {
    pub fn as_str(self) -> &'static str {
        match self {
            BroadcastControl::Paused => "paused",
            BroadcastControl::Cancelled => "cancelled",
        }
    }
}

/// The outcome of claiming a broadcast's message (`accepted → sending`).
#[derive(Clone, Debug, PartialEq)]
pub enum BroadcastClaim {
    Claimed(Box<MessageRecord>),
    /// The message is not `accepted` (claimed already, finished, cancelled, gone).
    Refused,
    /// The broadcast is held: the message stays `accepted`.
    Held(BroadcastControl),
}

/// Where a broadcast's fan-out stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastStatus {
    /// Waiting for its `send_at`: nothing recorded or queued per recipient yet.
    Scheduled,
    /// Recipients are still being recorded and enqueued.
    FanningOut,
    /// Every recipient is enqueued (the list is deleted).
    Enqueued,
    /// Cancelled before it started: refunded in full, the list deleted.
    Cancelled,
}

impl BroadcastStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BroadcastStatus::Scheduled => "scheduled",
            BroadcastStatus::Cancelled => "cancelled",
            BroadcastStatus::FanningOut => "fanning_out",
            BroadcastStatus::Enqueued => "enqueued",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum BroadcastOnce {
    /// The broadcast, its list, its debit and the key's record were written together.
    Created,
    /// The key has a live record: nothing written.
    Earlier(RequestKeyRecord),
}

/// The chain condition of a fan-out's progress write ([`BroadcastStore::broadcast_progress`]).
/// A broadcast is fanned out by a chain of queue jobs, each queueing the one after it; SQS
/// may deliver a job twice, and each delivery would queue its own next job: two chains
/// from then on, every slice recorded and queued twice. Each job carries the token its run
/// expects on the broadcast ([`Broadcast::fanout_token`]), and the run's last progress
/// write moves it to a fresh one, which the next job carries: of two deliveries of one job,
/// one makes that move and queues the next job; the other's write is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutHop<'a> {
    /// The token the run's job carries: the broadcast's must be it (`None`: it has none,
    /// the first job of a broadcast, or one queued before tokens).
    pub expected: Option<&'a str>,
    /// The run's last write: the fresh token its next job carries, written in place of
    /// `expected`. A broadcast that carries it already passes the condition too (this very
    /// write landed, its answer was lost, and the SDK retried it: written again, the same).
    /// `None`: a write within the run (the token is left as it is).
    pub next: Option<&'a str>,
}

/// The most messages [`BroadcastStore::record_unqueued`] writes at once: a DynamoDB
/// transaction's 100 items less the broadcast, the balance and the ledger entry.
pub const CANCELLED_PER_WRITE: usize = 97;

/// Why [`BroadcastStore::record_unqueued`] closes a broadcast's unqueued recipients, and
/// so the hold it must find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnqueuedClose {
    /// A person cancelled it: only while it is cancelled; the messages are `cancelled`.
    Cancelled,
    /// It can no longer be sent as accepted (its template or its number changed at Meta
    /// or in the account since, or its marketing is paused): only while it runs (no hold:
    /// a pause waits, a cancel closes them as cancelled); the messages are `failed`.
    Failed,
}

/// What [`BroadcastStore::record_unqueued`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelledRecipients {
    /// The messages, the refund and the progress were written together.
    Written,
    /// The broadcast is not fanning out, with the hold the close needs (cancelled, or
    /// none) and the progress given (another run got further, or closed it, or a person
    /// paused or cancelled it meanwhile): nothing written.
    Moved,
    /// These messages (their positions in the slice given) exist already (a fan-out that
    /// did not know of the cancel recorded them): nothing written.
    Recorded(Vec<usize>),
}

/// Broadcasts and their uploaded recipient lists (deleted once every one is enqueued).
#[async_trait]
pub trait BroadcastStore: Send + Sync {
    /// Atomically: debits `debit` (only if the balance covers it), records the ledger
    /// entry, stores the broadcast and its recipient list. `InsufficientCredits` or
    /// `Conflict(`[`TENANT_CLOSED`]`)` (as [`MessageStore::insert_with_debit`]): nothing
    /// is written.
    async fn create_broadcast(
        &self,
        broadcast: &Broadcast,
        recipients: &[crate::domain::PhoneNumber],
        debit: &LedgerEntry,
    ) -> Result<(), StoreError>;
    /// `create_broadcast` plus the key's record, in the same atomic write, on the
    /// condition that no live record for the key exists: concurrent requests with one key
    /// create one broadcast, the others get `Earlier` (nothing written).
    async fn create_broadcast_once(
        &self,
        broadcast: &Broadcast,
        recipients: &[crate::domain::PhoneNumber],
        debit: &LedgerEntry,
        key: &RequestKeyRecord,
    ) -> Result<BroadcastOnce, StoreError>;
    /// The live record of a broadcast's key, if any.
    async fn broadcast_key(
        &self,
        tenant: &TenantId,
        key_hash: &str,
    ) -> Result<Option<RequestKeyRecord>, StoreError>;
    async fn get_broadcast(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Broadcast>, StoreError>;
    /// The uploaded list, until the fan-out is done.
    async fn broadcast_recipients(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Vec<crate::domain::PhoneNumber>>, StoreError>;
    /// Records fan-out progress: `enqueued`, only if the broadcast exists, has not got
    /// further, and carries `hop.expected` as its fan-out token (or already `hop.next`);
    /// sets the token to `hop.next` when given. `done` also marks it `enqueued` and deletes
    /// the recipient list. `false`: refused (gone, expired under a running fan-out; another
    /// delivery got further; or another run of the chain moved the token on): nothing
    /// written, the list kept.
    async fn broadcast_progress(
        &self,
        tenant: &TenantId,
        id: &str,
        enqueued: usize,
        done: bool,
        hop: FanoutHop<'_>,
    ) -> Result<bool, StoreError>;
    /// Closes a broadcast whose recipient list is gone before its fan-out finished (the
    /// list's backstop passed during a long pause): only if it is `fanning_out` with exactly
    /// `enqueued` recipients queued, atomically marks it `enqueued`, records `unsent` (the
    /// recipients never queued) as its `refunded_unsent` and `at` as its `ended_at`, and
    /// refunds `refund` (their price: credits and ledger entry). No `refund` (every
    /// recipient was recorded: nothing to pay back): only marks it `enqueued`, under the
    /// same condition, so that exactly one caller closes it. `false`: it was not in
    /// that state (another run closed it or got further); nothing written. `NotFound`
    /// (nothing written) when the refund's tenant is gone.
    async fn close_broadcast_unsent(
        &self,
        tenant: &TenantId,
        id: &str,
        enqueued: usize,
        unsent: usize,
        refund: Option<&LedgerEntry>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// The recipients `from..to` of a broadcast, never queued, closed at once instead of
    /// one queue job each: atomically, only if the broadcast is `fanning_out` with exactly
    /// `from` recipients queued and, for `closing` [`UnqueuedClose::Cancelled`], cancelled,
    /// for [`UnqueuedClose::Failed`], without a hold, stores `messages` (those of the range
    /// not recorded yet, already `cancelled` or `failed`; each only if it does not exist),
    /// refunds `refund` (their price: credits and ledger entry), moves the progress to `to`
    /// and adds the messages stored to [`Broadcast::closed_unqueued`]. Nothing is written
    /// when it answers `Moved` or `Recorded`; `NotFound` (nothing written) when the refund's
    /// tenant is gone. At most [`CANCELLED_PER_WRITE`] messages (one DynamoDB
    /// transaction).
    #[allow(clippy::too_many_arguments)]
    async fn record_unqueued(
        &self,
        tenant: &TenantId,
        id: &str,
        from: usize,
        to: usize,
        messages: &[MessageRecord],
        refund: Option<&LedgerEntry>,
        closing: UnqueuedClose,
    ) -> Result<CancelledRecipients, StoreError>;
    /// Moves a scheduled broadcast to `fanning_out` (recording `started_at`), only if it
    /// is still `scheduled`: `false` otherwise (cancelled, or a duplicate trigger).
    async fn start_broadcast(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Atomically, only if it is still `scheduled`: marks the broadcast `cancelled`,
    /// refunds `refund` (credits and ledger entry). Its recipient list is left to its
    /// backstop TTL (`Broadcast::list_expires_at`, a week after its `send_at`): until then
    /// `recipients.csv` lists each recipient `cancelled` (they have no message).
    /// `false`: it was not scheduled; nothing written. `NotFound` (nothing written) when the
    /// refund's tenant is gone.
    async fn cancel_scheduled_broadcast(
        &self,
        tenant: &TenantId,
        id: &str,
        refund: &LedgerEntry,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Sets the broadcast's hold to `to`, only if its hold is one of `from` (`None`: no
    /// hold) and it was not cancelled before it started: `false` otherwise.
    async fn set_broadcast_control(
        &self,
        tenant: &TenantId,
        id: &str,
        from: &[Option<BroadcastControl>],
        to: Option<BroadcastControl>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// The dispatcher's claim of a broadcast's message: `accepted → sending` (counting an
    /// attempt), only if the broadcast has no hold: a hold written before the claim is
    /// always seen, and a held message is left `accepted` exactly as it was (its attempts
    /// and history). `claim` is the claim's own token ([`MessageRecord::claim`]).
    async fn claim_broadcast_message(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        broadcast: &str,
        claim: &str,
        at: DateTime<Utc>,
    ) -> Result<BroadcastClaim, StoreError>;
    /// The tenant's live broadcasts, newest first, older than the broadcast `before` (a
    /// cursor: a broadcast id), at most `limit`; and the id to continue before if there
    /// may be more. One Query of the tenant's partition.
    async fn list_broadcasts(
        &self,
        tenant: &TenantId,
        limit: usize,
        before: Option<&str>,
    ) -> Result<(Vec<Broadcast>, Option<String>), StoreError>;
    /// The broadcast's live messages in id order after `after`, at most `limit` (pages
    /// may be short), and the id to continue after if there may be more.
    async fn broadcast_messages(
        &self,
        broadcast: &Broadcast,
        limit: usize,
        after: Option<&MessageId>,
    ) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError>;
    /// [`broadcast_messages`](Self::broadcast_messages) read strongly consistent (on
    /// DynamoDB twice the read units): for a decision that must see every write made
    /// before it, as `retry-failed`'s "every message is settled".
    async fn broadcast_messages_consistent(
        &self,
        broadcast: &Broadcast,
        limit: usize,
        after: Option<&MessageId>,
    ) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError>;
    /// Stores a broadcast's message (already paid for); `false` if it exists already
    /// (a resumed fan-out).
    async fn insert_broadcast_message(&self, record: &MessageRecord) -> Result<bool, StoreError>;
    /// How many of the broadcast's messages are in each status, and its failed ones by
    /// error code: one pass over its messages.
    async fn broadcast_tally(&self, broadcast: &Broadcast) -> Result<BroadcastTally, StoreError>;
    /// [`broadcast_tally`](Self::broadcast_tally) with every message written before it
    /// counted (a consistent read on DynamoDB, twice the read units): for a decision that a
    /// message recorded a moment ago must not escape (a cancel finding nothing to cancel).
    async fn broadcast_tally_consistent(
        &self,
        broadcast: &Broadcast,
    ) -> Result<BroadcastTally, StoreError> {
        self.broadcast_tally(broadcast).await
    }
}

/// What one pass over a broadcast's messages counts ([`BroadcastStore::broadcast_tally`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BroadcastTally {
    /// Messages by status (`as_str`).
    pub counts: std::collections::BTreeMap<String, usize>,
    /// Failed messages by error code: the first one's error (its title) and how many.
    pub failures: std::collections::BTreeMap<String, (crate::domain::MessageError, usize)>,
    /// The latest time one of its messages was handed to Meta or ended (see
    /// [`settled_at`]): once none is left open, when the broadcast completed.
    pub settled_at: Option<DateTime<Utc>>,
}

impl BroadcastTally {
    /// Counts one live message of the broadcast; `settled_at` is its own (see
    /// [`settled_at`]).
    pub fn add(
        &mut self,
        status: &str,
        error: Option<&crate::domain::MessageError>,
        settled_at: Option<DateTime<Utc>>,
    ) {
        self.settled_at = self.settled_at.max(settled_at);
        *self.counts.entry(status.to_owned()).or_default() += 1;
        if status == crate::domain::MessageStatus::Failed.as_str() {
            if let Some(e) = error {
                self.failures
                    .entry(e.code.to_string())
                    .or_insert_with(|| (e.clone(), 0))
                    .1 += 1;
            }
        }
    }
}
/// When a message was handed to Meta or ended, from its status events (`status`, `at`,
/// in the order recorded): its first event past `scheduled`, `accepted` and `sending`,
/// which a later event does not move, whatever its time (Meta's `delivered` of a message
/// the dispatcher failed may carry an earlier time than the failure). `None` while it has
/// none (still open). A message with a status Meta reported late put among its events
/// (before the others) has this kept from before it instead
/// ([`MessageRecord::settled_at`]), which the tally reads.
pub fn settled_at<'a>(
    events: impl IntoIterator<Item = (&'a str, DateTime<Utc>)>,
) -> Option<DateTime<Utc>> {
    use crate::domain::MessageStatus as S;
    events
        .into_iter()
        .filter(|(st, _)| {
            ![S::Scheduled, S::Accepted, S::Sending]
                .iter()
                .any(|o| o.as_str() == *st)
        })
        .map(|(_, at)| at)
        .next()
}

mod callbacks;
pub use callbacks::*;
mod data_keys;
pub use data_keys::*;
mod templates;
pub use templates::*;
mod numbers;
pub use numbers::*;
mod leases;
pub use leases::*;
