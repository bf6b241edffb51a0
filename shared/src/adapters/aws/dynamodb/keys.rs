//! The DynamoDB key schema: the one owner of every key the table holds.
//!
//! This file owns, for every item type ([`ItemKind`]):
//! - the `pk` / `sk` it is stored under and, where it is indexed, its `gsi1pk` / `gsi1sk`
//!   (one builder function per item type, returning a [`Key`] or [`Gsi1`]);
//! - the prefixes and bounds its queries use, and how an id is read back from a key;
//! - its retention class ([`ItemKind::class`]), and the one way back from a stored key to
//!   its item type ([`ItemKind::of_key`]), by which the retention sweep counts deletions.
//!
//! Adapters build keys only here: no other `format!` of a key exists in `adapters/`. The
//! memory adapter names its items with the same keys (its stored-item view) and counts its
//! sweep by the same classes. The classes and their durations belong to
//! `domain::retention`. docs/data-model.md §2 and docs/data-retention.md §1 list the same
//! item types.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{MessageId, MessageStatus, OptOutKey, RetentionClass, TenantId};

/// Key attribute names.
pub const PK: &str = "pk";
pub const SK: &str = "sk";
pub const GSI1PK: &str = "gsi1pk";
pub const GSI1SK: &str = "gsi1sk";

// Partition key prefixes and fixed partitions.
const TENANT: &str = "TENANT#";
const PHONE: &str = "PHONE#";
const APIKEY: &str = "APIKEY#";
const WAMID: &str = "WAMID#";
const AUDIT: &str = "AUDIT#";
const RATE: &str = "RATE#";
/// A tenant's heavy-request leases (A75): a partition of its own per tenant, out of the
/// tenant's partition (which the close-out walks and the hot paths write).
const LEASE: &str = "LEASE#";
const EMAIL: &str = "EMAIL#";
const SESSION: &str = "SESSION#";
const RETENTION: &str = "RETENTION";
const LOGINFAIL: &str = "LOGINFAIL#";
const LOGINADDR: &str = "LOGINADDR#";
/// The one partition of status callbacks the queue refused (all tenants).
const CALLBACK_OWED: &str = "CALLBACKOWED";
/// The partitions of audit intents (all chains, [`AUDIT_INTENT_SHARDS`] of them):
/// `AUDITINTENT#{n}`, `audit::intend`.
const AUDIT_INTENT: &str = "AUDITINTENT#";
// gsi1 partition prefixes.
const WABA: &str = "WABA#";
/// The sparse index partition of every parked audit event (all chains).
const AUDIT_PARKED_GSI1PK: &str = "AUDITPARKED";
const STATUS_INFIX: &str = "#STATUS#";

/// The sort key of a tenant item (also what the sweep's filter finds closed tenants by).
pub const TENANT_SK: &str = "TENANT";
/// A tenant's credit lanes (A80): `TENANT#{tenant}` / `TENANT#LANE#{nn}`, sorted right after
/// the tenant item, so that one query of `begins_with(sk, "TENANT")` reads it and its lanes.
pub const CREDIT_LANE_PREFIX: &str = "TENANT#LANE#";
/// The sort key of a session item (what the close-out's session scan filters on).
pub const SESSION_SK: &str = "SESSION";
const PHONE_SK: &str = "PHONE";
const APIKEY_SK: &str = "APIKEY";
const WAMID_SK: &str = "WAMID";
const HEAD_SK: &str = "HEAD";
const NEXT_SK: &str = "NEXT";
/// A heavy-request lease's sort key: `HEAVY#{class}` (`ports::Heavy::as_str`).
const HEAVY_PREFIX: &str = "HEAVY#";
const EMAIL_SK: &str = "EMAIL";
const CHECKPOINT_SK: &str = "CHECKPOINT";
const STATUS_CALLBACK_SK: &str = "SETTINGS#STATUS_CALLBACK";
const TWO_FACTOR_SK: &str = "SETTINGS#2FA";
/// A tenant's settings items (the status callback, the 2FA requirement).
pub const SETTINGS_PREFIX: &str = "SETTINGS#";
const FAIL_SK: &str = "FAIL";
const TOTP_FAIL_SK: &str = "TOTP";

/// Sort key prefixes the adapters query with `begins_with`.
pub const API_KEY_PREFIX: &str = "APIKEY#";
pub const LEDGER_PREFIX: &str = "LEDGER#";
pub const OPT_OUT_PREFIX: &str = "OPTOUT#";
/// When a user last opted back in, in the tenant's partition.
pub const OPT_IN_PREFIX: &str = "OPTIN#";
pub const USER_PREFIX: &str = "USER#";
pub const PENDING_PREFIX: &str = "PENDING#";
pub const OWED_PREFIX: &str = "OWED#";
/// A tenant's records of its given-up status callbacks, in its partition (by a ULID of
/// when each was given up: key order is time order).
pub const CALLBACK_FAILURE_PREFIX: &str = "CBFAIL#";
pub const ADDR_PREFIX: &str = "ADDR#";
pub const MESSAGE_PREFIX: &str = "MSG#";
const IDEM_PREFIX: &str = "IDEM#";
const QSTAT_PREFIX: &str = "QSTAT#";
/// A tenant's broadcasts, in its `TENANT#{t}` partition.
pub const BROADCAST_PREFIX: &str = "BROADCAST#";
/// A tenant's phone numbers, in its partition.
pub const NUMBER_PREFIX: &str = "NUMBER#";
/// A tenant's usage rows (Meta's pricing per day), in its partition.
pub const USAGE_PREFIX: &str = "USAGE#";
const BCLIST_PREFIX: &str = "BCLIST#";
const EVENT_PREFIX: &str = "EVENT#";
/// A user's pairing (a phone's user id, a user id's phone), in the tenant's partition.
pub const PAIR_PREFIX: &str = "PAIR#";
/// When a user last wrote to one of the tenant's numbers, in the tenant's partition.
pub const WINDOW_PREFIX: &str = "WINDOW#";
/// A WABA's templates, in its `WABA#{waba}` partition.
pub const TEMPLATE_PREFIX: &str = "TEMPLATE#";
/// Sorts after every character of an id (Crockford base32, digits): a prefix range's top.
const TOP: &str = "~";

/// Every item type the table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    /// `TENANT#{tenant}` / `TENANT` (no gsi1 entry since the WABA index moved onto number
    /// items; older ones keep `WABA#{waba}` / `TENANT#{tenant}` until backfilled).
    Tenant,
    /// `PHONE#{phone_number_id}` / `PHONE`: the webhook's route to a tenant.
    PhoneRoute,
    /// `APIKEY#{sha256(key)}` / `APIKEY`: the authentication copy of an API key.
    ApiKeyByHash,
    /// `TENANT#{tenant}` / `APIKEY#{key id}`: the tenant's copy of an API key.
    ApiKeyOfTenant,
    /// `TENANT#{tenant}` / `LEDGER#{entry id}`.
    LedgerEntry,
    /// `TENANT#{tenant}` / `MSG#{message id}`; gsi1 `TENANT#{tenant}#STATUS#{status}` /
    /// `MSG#{message id}` only while `scheduled`, `failed` or `cancelled` (a sparse index).
    Message,
    /// `WAMID#{wamid}` / `WAMID`: Meta's id → the message.
    WamidIndex,
    /// `WAMID#{wamid}` / `PENDING#{status}#{timestamp}`: a status kept until its wamid is known.
    PendingStatus,
    /// `CALLBACKOWED` / `OWED#{tenant}#{message id}#{sequence}`: a status callback the queue
    /// refused, until queued again.
    OwedCallback,
    /// `CBFAIL#{tenant}` / `CBFAIL#{ulid of when it was given up}`: the tenant's record of
    /// a status callback given up (for `GET /v1/settings/status-callback/failures`). A
    /// partition of its own, so that the status-callback function's `PutItem` is granted on
    /// it alone (`dynamodb:LeadingKeys`), never on the tenant's own partition.
    CallbackFailure,
    /// `TENANT#{tenant}` / `OPTOUT#{e164 or user id}`.
    OptOut,
    /// `TENANT#{tenant}` / `OPTIN#{e164 or user id}`: when the user last opted back in
    /// (START, a marketing `resume`), against an older STOP delivered after it.
    OptedIn,
    /// `TENANT#{tenant}` / `PAIR#{e164 or user id}`: the other key of one user.
    UserPairing,
    /// `TENANT#{tenant}` / `WINDOW#{phone_number_id}#{e164 or user id}`: when the user
    /// last wrote to that number.
    ServiceWindow,
    /// `TENANT#{tenant}` / `IDEM#{sha256(key)}`.
    Idempotency,
    /// `AUDIT#{chain}` / `EVENT#{seq, 16 digits}`.
    AuditEvent,
    /// `AUDIT#{chain}` / `HEAD`: the newest link and its signed checkpoint.
    AuditHead,
    /// `AUDIT#{chain}` / `PARKED#{ulid}`; gsi1 `AUDITPARKED` / `{chain}#{ulid}` (sparse:
    /// only parked events are in that partition): an event whose append failed, until
    /// linked in.
    AuditParked,
    /// `AUDITINTENT#{shard}` / `INTENT#{ulid}`: an audited call under way (written before its
    /// handler, deleted after its event), or one whose process died: the sweep parks it.
    AuditIntent,
    /// `TENANT#{tenant}` / `QSTAT#{yyyy-mm-dd}`.
    QualityCounter,
    /// `TENANT#{tenant}` / `BROADCAST#{broadcast id}`.
    Broadcast,
    /// `TENANT#{tenant}` / `BCLIST#{broadcast id}`: the uploaded recipient list.
    BroadcastList,
    /// `RATE#{phone_number_id}` / `NEXT`: a number's next free send slot.
    SendSlot,
    /// `LEASE#{tenant}` / `HEAVY#{class}`: the tenant's one heavy request of that class in
    /// flight (its owner token and when it lapses).
    HeavyLease,
    /// `TENANT#{tenant}` / `SETTINGS#STATUS_CALLBACK`.
    StatusCallback,
    /// `TENANT#{tenant}` / `SETTINGS#2FA`.
    TwoFactorSetting,
    /// `TENANT#{tenant}` / `USER#{user id}`.
    User,
    /// `EMAIL#{lower-cased email}` / `EMAIL`: an email claimed across tenants.
    EmailClaim,
    /// `SESSION#{sha256(token)}` / `SESSION`.
    Session,
    /// `RETENTION` / `CHECKPOINT`: the sweep's saved position.
    RetentionCheckpoint,
    /// `LOGINFAIL#{sha256(email)}` / `ADDR#{address}`: failed logins for one email from
    /// one source address; `/ TOTP`: the user's wrong TOTP codes from any address.
    LoginFailuresOfEmail,
    /// `LOGINADDR#{address}` / `FAIL`: failed logins from one source address.
    LoginFailuresOfAddress,
    /// `WABA#{waba}` / `TEMPLATE#{name}#{language}`: one template of a WABA's catalogue.
    Template,
    /// `TENANT#{tenant}` / `NUMBER#{phone_number_id}`; gsi1 `WABA#{waba}` /
    /// `TENANT#{tenant}`: one of the tenant's phone numbers.
    PhoneNumber,
    /// `TENANT#{tenant}` / `TENANT#LANE#{nn}`: one of the tenant's credit lanes (A80), a part
    /// of its balance that single sends are debited from, so that concurrent sends of one
    /// tenant do not all meet on the tenant item. Its `credits` count in the balance.
    CreditLane,
    /// `TENANT#{tenant}` / `USAGE#{yyyy-mm-dd}#{category}#{type}#{shard}`: Meta's pricing
    /// of the tenant's messages on one UTC day (a billing record), one of the row's
    /// [`USAGE_SHARDS`](crate::ports::USAGE_SHARDS) parts (A79; a row written before had
    /// no `#{shard}`).
    UsageCounter,
}

impl ItemKind {
    pub const ALL: [ItemKind; 36] = [
        ItemKind::Tenant,
        ItemKind::PhoneRoute,
        ItemKind::ApiKeyByHash,
        ItemKind::ApiKeyOfTenant,
        ItemKind::LedgerEntry,
        ItemKind::Message,
        ItemKind::WamidIndex,
        ItemKind::PendingStatus,
        ItemKind::OwedCallback,
        ItemKind::CallbackFailure,
        ItemKind::OptOut,
        ItemKind::OptedIn,
        ItemKind::Idempotency,
        ItemKind::AuditEvent,
        ItemKind::AuditHead,
        ItemKind::AuditParked,
        ItemKind::AuditIntent,
        ItemKind::QualityCounter,
        ItemKind::Broadcast,
        ItemKind::BroadcastList,
        ItemKind::SendSlot,
        ItemKind::HeavyLease,
        ItemKind::StatusCallback,
        ItemKind::TwoFactorSetting,
        ItemKind::User,
        ItemKind::EmailClaim,
        ItemKind::Session,
        ItemKind::RetentionCheckpoint,
        ItemKind::LoginFailuresOfEmail,
        ItemKind::LoginFailuresOfAddress,
        ItemKind::Template,
        ItemKind::UserPairing,
        ItemKind::ServiceWindow,
        ItemKind::PhoneNumber,
        ItemKind::UsageCounter,
        ItemKind::CreditLane,
    ];

    /// The retention class whose expiry an item of this type carries when it has one, and
    /// under which the sweep counts it. ActiveConfig items carry none while their tenant
    /// exists (the close-out gives a closed tenant's a TTL); the tenant item carries none
    /// until its close-out gives it the Billing expiry (the 7-year account record).
    pub fn class(self) -> RetentionClass {
        use ItemKind::*;
        match self {
            // A catalogue is delivery metadata of Meta's: its TTL is refreshed by every sync.
            // A pairing is delivery metadata too: it lives as long as the messages that
            // taught it (its TTL is refreshed whenever Meta repeats it).
            Message | WamidIndex | Broadcast | Template | UserPairing => RetentionClass::Messages,
            ServiceWindow => RetentionClass::ServiceWindow,
            Tenant | CreditLane | LedgerEntry | UsageCounter => RetentionClass::Billing,
            AuditEvent | AuditParked | AuditIntent => RetentionClass::Audit,
            Idempotency => RetentionClass::Idempotency,
            // A callback owed lives as long as the queue would have kept it; an opting back
            // in as long as Meta may deliver an older webhook again.
            PendingStatus | OwedCallback | OptedIn => RetentionClass::PendingStatus,
            Session => RetentionClass::Session,
            // As long as the callback it names stays on the dead-letter queue.
            CallbackFailure => RetentionClass::CallbackFailures,
            QualityCounter => RetentionClass::Stats,
            BroadcastList => RetentionClass::BroadcastList,
            // Throughput state, not a record, as a send slot is.
            SendSlot | HeavyLease => RetentionClass::SendSlot,
            LoginFailuresOfEmail | LoginFailuresOfAddress => RetentionClass::LoginFailures,
            PhoneRoute | PhoneNumber | ApiKeyByHash | ApiKeyOfTenant | OptOut | AuditHead
            | StatusCallback | TwoFactorSetting | User | EmailClaim | RetentionCheckpoint => {
                RetentionClass::ActiveConfig
            }
        }
    }

    /// The item type of a stored item, from its table keys; `None` for a key no item type
    /// of this schema has.
    pub fn of_key(pk: &str, sk: &str) -> Option<ItemKind> {
        use ItemKind::*;
        let has = |p: &str| sk.starts_with(p);
        let kind = if pk.starts_with(TENANT) {
            match sk {
                TENANT_SK => Tenant,
                _ if has(CREDIT_LANE_PREFIX) => CreditLane,
                STATUS_CALLBACK_SK => StatusCallback,
                TWO_FACTOR_SK => TwoFactorSetting,
                _ if has(API_KEY_PREFIX) => ApiKeyOfTenant,
                _ if has(LEDGER_PREFIX) => LedgerEntry,
                _ if has(MESSAGE_PREFIX) => Message,
                _ if has(OPT_OUT_PREFIX) => OptOut,
                _ if has(OPT_IN_PREFIX) => OptedIn,
                _ if has(IDEM_PREFIX) => Idempotency,
                _ if has(QSTAT_PREFIX) => QualityCounter,
                _ if has(BROADCAST_PREFIX) => Broadcast,
                _ if has(BCLIST_PREFIX) => BroadcastList,
                _ if has(USER_PREFIX) => User,
                _ if has(PAIR_PREFIX) => UserPairing,
                _ if has(WINDOW_PREFIX) => ServiceWindow,
                _ if has(NUMBER_PREFIX) => PhoneNumber,
                _ if has(USAGE_PREFIX) => UsageCounter,
                _ => return None,
            }
        } else if pk.starts_with(WAMID) {
            match sk {
                WAMID_SK => WamidIndex,
                _ if has(PENDING_PREFIX) => PendingStatus,
                _ => return None,
            }
        } else if pk.starts_with(WABA) {
            match sk {
                _ if has(TEMPLATE_PREFIX) => Template,
                _ => return None,
            }
        } else if pk.starts_with(AUDIT) {
            match sk {
                HEAD_SK => AuditHead,
                _ if has(EVENT_PREFIX) => AuditEvent,
                _ if has(PARKED_PREFIX) => AuditParked,
                _ => return None,
            }
        } else {
            match (pk, sk) {
                (_, PHONE_SK) if pk.starts_with(PHONE) => PhoneRoute,
                (_, APIKEY_SK) if pk.starts_with(APIKEY) => ApiKeyByHash,
                (_, NEXT_SK) if pk.starts_with(RATE) => SendSlot,
                _ if pk.starts_with(LEASE) && has(HEAVY_PREFIX) => HeavyLease,
                (_, EMAIL_SK) if pk.starts_with(EMAIL) => EmailClaim,
                (_, SESSION_SK) if pk.starts_with(SESSION) => Session,
                (RETENTION, CHECKPOINT_SK) => RetentionCheckpoint,
                (CALLBACK_OWED, _) if has(OWED_PREFIX) => OwedCallback,
                _ if audit_intent_shard_of_pk(pk).is_some() && has(INTENT_PREFIX) => AuditIntent,
                _ if pk.starts_with(CALLBACK_FAILURE_PREFIX) && has(CALLBACK_FAILURE_PREFIX) => {
                    CallbackFailure
                }
                (_, FAIL_SK) if pk.starts_with(LOGINADDR) => LoginFailuresOfAddress,
                _ if pk.starts_with(LOGINFAIL) && (has(ADDR_PREFIX) || sk == TOTP_FAIL_SK) => {
                    LoginFailuresOfEmail
                }
                _ => return None,
            }
        };
        Some(kind)
    }
}

/// An item's table key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

/// An item's `gsi1` key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gsi1 {
    pub pk: String,
    pub sk: String,
}

impl Key {
    fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Self {
            pk: pk.into(),
            sk: sk.into(),
        }
    }

    /// The key as attributes: a request's key, or the start of an item.
    pub fn attrs(&self) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (PK.to_owned(), AttributeValue::S(self.pk.clone())),
            (SK.to_owned(), AttributeValue::S(self.sk.clone())),
        ])
    }

    /// The key attributes to add to a serialised record.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![(PK, self.pk.clone()), (SK, self.sk.clone())]
    }

    /// The same, with the record's `gsi1` keys.
    pub fn with_gsi1(&self, gsi: Gsi1) -> Vec<(&'static str, String)> {
        let mut pairs = self.pairs();
        pairs.extend([(GSI1PK, gsi.pk), (GSI1SK, gsi.sk)]);
        pairs
    }

    /// This key's item type.
    pub fn kind(&self) -> Option<ItemKind> {
        ItemKind::of_key(&self.pk, &self.sk)
    }
}

// ---- Tenants, their routes and keys -------------------------------------------------

/// A tenant's partition: its tenant item and every per-tenant item.
pub fn tenant_pk(t: &TenantId) -> String {
    format!("{TENANT}{t}")
}

pub fn tenant(t: &TenantId) -> Key {
    Key::new(tenant_pk(t), TENANT_SK)
}

/// One of a tenant's credit lanes (A80), `lane` below
/// [`CREDIT_LANES`](super::lanes::CREDIT_LANES).
pub fn credit_lane(t: &TenantId, lane: u8) -> Key {
    Key::new(tenant_pk(t), format!("{CREDIT_LANE_PREFIX}{lane:02}"))
}

/// The lane of a credit lane's sort key.
pub fn credit_lane_of(sk: &str) -> Option<u8> {
    sk.strip_prefix(CREDIT_LANE_PREFIX)?.parse().ok()
}

/// The tenant of a tenant-partition key.
pub fn tenant_of_pk(pk: &str) -> Option<TenantId> {
    pk.strip_prefix(TENANT).and_then(TenantId::parse)
}

/// A tenant's entry in the WABA index. Written on its number items (one per number, the
/// onboarding number's included); tenant items written before the index moved there
/// still carry it (read all the same; infra/deploy.md, "Backfills", removes it).
pub fn tenant_waba_gsi1(waba_id: &str, t: &TenantId) -> Gsi1 {
    Gsi1 {
        pk: waba_gsi1_pk(waba_id),
        sk: tenant_pk(t),
    }
}

pub fn waba_gsi1_pk(waba_id: &str) -> String {
    format!("{WABA}{waba_id}")
}

pub fn phone_route(phone_number_id: &str) -> Key {
    Key::new(format!("{PHONE}{phone_number_id}"), PHONE_SK)
}

/// One of a tenant's phone numbers.
pub fn phone_number(t: &TenantId, phone_number_id: &str) -> Key {
    Key::new(tenant_pk(t), format!("{NUMBER_PREFIX}{phone_number_id}"))
}

/// A phone number item's entry in the WABA index: the tenants on a WABA are the owners
/// of the number items under it (and of older tenant items that still carry one).
pub fn phone_number_waba_gsi1(waba_id: &str, t: &TenantId) -> Gsi1 {
    tenant_waba_gsi1(waba_id, t)
}

pub fn api_key_by_hash(key_hash: &str) -> Key {
    Key::new(format!("{APIKEY}{key_hash}"), APIKEY_SK)
}

pub fn api_key_of_tenant(t: &TenantId, key_id: &str) -> Key {
    Key::new(tenant_pk(t), format!("{API_KEY_PREFIX}{key_id}"))
}

/// The key id of a tenant's API key item, from its sort key.
pub fn api_key_id_of(sk: &str) -> Option<&str> {
    sk.strip_prefix(API_KEY_PREFIX)
}

// ---- Money and messages ---------------------------------------------------------------

pub fn ledger_entry(t: &TenantId, id: &str) -> Key {
    Key::new(tenant_pk(t), format!("{LEDGER_PREFIX}{id}"))
}

/// The sort-key range of the ledger entries after the entry `after` (all without it).
pub fn ledger_range_after(after: Option<&str>) -> (String, String) {
    let lo = after.map_or_else(
        || LEDGER_PREFIX.to_owned(),
        |a| format!("{LEDGER_PREFIX}{a}{TOP}"),
    );
    (lo, format!("{LEDGER_PREFIX}{TOP}"))
}

/// The entry id of a ledger item, from its sort key.
pub fn ledger_id_of(sk: &str) -> Option<&str> {
    sk.strip_prefix(LEDGER_PREFIX)
}

pub fn message(t: &TenantId, id: &MessageId) -> Key {
    Key::new(tenant_pk(t), message_sk(id))
}

fn message_sk(id: &MessageId) -> String {
    format!("{MESSAGE_PREFIX}{id}")
}

/// The statuses a message is listed by through the status index. The index is sparse:
/// a message has an entry only while it rests in one of these (few messages reach them,
/// and those stay), so the moves of a message's ordinary life (accepted, sending, sent,
/// delivered, read) write no index entry at all; listing by any other status reads the
/// tenant's message range with a filter (`list_messages`).
pub const INDEXED_MESSAGE_STATUSES: [MessageStatus; 3] = [
    MessageStatus::Scheduled,
    MessageStatus::Failed,
    MessageStatus::Cancelled,
];

/// Whether messages in `status` have a status index entry ([`INDEXED_MESSAGE_STATUSES`]).
pub fn message_status_indexed(status: MessageStatus) -> bool {
    INDEXED_MESSAGE_STATUSES.contains(&status)
}

/// A message's entry in the status index, `None` for a status not indexed.
pub fn message_gsi1(t: &TenantId, status: MessageStatus, id: &MessageId) -> Option<Gsi1> {
    message_status_indexed(status).then(|| Gsi1 {
        pk: message_status_gsi1_pk(t, status),
        sk: message_sk(id),
    })
}

/// A message item's key attributes: with its status index entry if its status has one.
pub fn message_pairs(
    t: &TenantId,
    status: MessageStatus,
    id: &MessageId,
) -> Vec<(&'static str, String)> {
    let key = message(t, id);
    match message_gsi1(t, status, id) {
        Some(gsi) => key.with_gsi1(gsi),
        None => key.pairs(),
    }
}

/// The status index partition of a tenant's messages in `status` (an indexed one).
pub fn message_status_gsi1_pk(t: &TenantId, status: MessageStatus) -> String {
    format!("{}{STATUS_INFIX}{}", tenant_pk(t), status.as_str())
}

/// The message sort-key range (on the table and on the status index) from `since`
/// (inclusive) to `until` (exclusive): message ids are ULIDs of their acceptance time.
pub fn message_range(
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> (String, String) {
    let ms = |t: DateTime<Utc>| t.timestamp_millis().max(0) as u64;
    let lo = since.map_or_else(|| MESSAGE_PREFIX.to_owned(), |t| ulid_sk(ms(t), 0));
    let hi = until.map_or_else(
        || format!("{MESSAGE_PREFIX}{TOP}"),
        |t| ulid_sk(ms(t).saturating_sub(1), (1u128 << 80) - 1),
    );
    (lo, hi)
}

/// The message sort keys minted in one millisecond (a broadcast's messages).
pub fn message_range_of_ms(ms: u64) -> (String, String) {
    (ulid_sk(ms, 0), ulid_sk(ms, (1u128 << 80) - 1))
}

fn ulid_sk(ms: u64, random: u128) -> String {
    message_sk(&MessageId::from_trusted(
        ulid::Ulid::from_parts(ms, random).to_string(),
    ))
}

/// The partition of everything known about one wamid.
pub fn wamid_pk(wamid: &str) -> String {
    format!("{WAMID}{wamid}")
}

pub fn wamid_index(wamid: &str) -> Key {
    Key::new(wamid_pk(wamid), WAMID_SK)
}

/// One status of one wamid at one time: the identity duplicates share.
pub fn pending_status(wamid: &str, status: &str, timestamp: i64) -> Key {
    Key::new(
        wamid_pk(wamid),
        format!("{PENDING_PREFIX}{status}#{timestamp}"),
    )
}

/// A status callback owed: one per message and sequence (owing it again keeps one).
pub fn owed_callback(t: &TenantId, m: &MessageId, sequence: u32) -> Key {
    Key::new(CALLBACK_OWED, format!("{OWED_PREFIX}{t}#{m}#{sequence}"))
}

/// The partition of every owed status callback.
pub fn owed_callbacks_pk() -> &'static str {
    CALLBACK_OWED
}

pub fn idempotency(t: &TenantId, key_hash: &str) -> Key {
    Key::new(tenant_pk(t), format!("{IDEM_PREFIX}{key_hash}"))
}

/// `TENANT#{t}` / `IDEM#TOPUP#{sha256(key)}`: a platform operator's top-up key for the
/// tenant, an idempotency item apart from the tenant's send keys (a hash has no `#`).
pub fn top_up_key(t: &TenantId, key_hash: &str) -> Key {
    Key::new(tenant_pk(t), format!("{IDEM_PREFIX}TOPUP#{key_hash}"))
}

/// `TENANT#{t}` / `IDEM#BCAST#{sha256(key)}`: a broadcast's key (`POST /v1/broadcasts`,
/// `retry-failed`), apart from the send and top-up keys.
pub fn broadcast_key(t: &TenantId, key_hash: &str) -> Key {
    Key::new(tenant_pk(t), format!("{IDEM_PREFIX}BCAST#{key_hash}"))
}

pub fn broadcast(t: &TenantId, id: &str) -> Key {
    Key::new(tenant_pk(t), format!("{BROADCAST_PREFIX}{id}"))
}

pub fn broadcast_list(t: &TenantId, id: &str) -> Key {
    Key::new(tenant_pk(t), format!("{BCLIST_PREFIX}{id}"))
}

/// Category and type are words of letters, digits and underscores (`domain::Pricing`), so
/// `#` separates them and key order is (day, category, type) order.
pub fn usage_counter(
    t: &TenantId,
    day: NaiveDate,
    category: &str,
    pricing_type: &str,
    shard: u8,
) -> Key {
    Key::new(
        tenant_pk(t),
        format!(
            "{USAGE_PREFIX}{}#{category}#{pricing_type}#{shard}",
            day.format("%Y-%m-%d")
        ),
    )
}

/// The usage sort-key range of the days `from..=to`.
pub fn usage_range(from: NaiveDate, to: NaiveDate) -> (String, String) {
    (
        format!("{USAGE_PREFIX}{}", from.format("%Y-%m-%d")),
        format!("{USAGE_PREFIX}{}#{TOP}", to.format("%Y-%m-%d")),
    )
}

pub fn quality_counter(t: &TenantId, day: NaiveDate) -> Key {
    Key::new(
        tenant_pk(t),
        format!("{QSTAT_PREFIX}{}", day.format("%Y-%m-%d")),
    )
}

/// A business number's send-slot item (`number` is its phone_number_id).
pub fn send_slot(number: &str) -> Key {
    Key::new(format!("{RATE}{number}"), NEXT_SK)
}

/// A tenant's heavy-request lease of a class (A75).
pub fn heavy_lease(t: &TenantId, class: crate::ports::Heavy) -> Key {
    Key::new(
        format!("{LEASE}{t}"),
        format!("{HEAVY_PREFIX}{}", class.as_str()),
    )
}

// ---- Configuration, users, audit ------------------------------------------------------

/// A phone (`+…`) and a user id (`CC.…`) never read as each other.
pub fn opt_out(t: &TenantId, key: &OptOutKey) -> Key {
    Key::new(tenant_pk(t), format!("{OPT_OUT_PREFIX}{key}"))
}

/// When the user under `key` last opted back in.
pub fn opted_in(t: &TenantId, key: &OptOutKey) -> Key {
    Key::new(tenant_pk(t), format!("{OPT_IN_PREFIX}{key}"))
}

/// The pairing item under one of a user's keys (it holds the other).
pub fn user_pairing(t: &TenantId, key: &OptOutKey) -> Key {
    Key::new(tenant_pk(t), format!("{PAIR_PREFIX}{key}"))
}

/// `phone_number_id` is digits (Meta's id), so `#` separates it from the user's key.
pub fn service_window(t: &TenantId, phone_number_id: &str, key: &OptOutKey) -> Key {
    Key::new(
        tenant_pk(t),
        format!("{WINDOW_PREFIX}{phone_number_id}#{key}"),
    )
}

pub fn status_callback(t: &TenantId) -> Key {
    Key::new(tenant_pk(t), STATUS_CALLBACK_SK)
}

/// The partition of a tenant's records of given-up status callbacks: apart from
/// `TENANT#{t}`, so that the function that writes them may write nothing else.
pub fn callback_failures_pk(t: &TenantId) -> String {
    format!("{CALLBACK_FAILURE_PREFIX}{t}")
}

/// A tenant's record of a given-up status callback (`id` a ULID of when it was given up).
pub fn callback_failure(t: &TenantId, id: &str) -> Key {
    Key::new(
        callback_failures_pk(t),
        format!("{CALLBACK_FAILURE_PREFIX}{id}"),
    )
}

pub fn two_factor_setting(t: &TenantId) -> Key {
    Key::new(tenant_pk(t), TWO_FACTOR_SK)
}

pub fn user(t: &TenantId, id: &str) -> Key {
    Key::new(tenant_pk(t), format!("{USER_PREFIX}{id}"))
}

/// `email` lower-cased, as users store it.
pub fn email_claim(email: &str) -> Key {
    Key::new(format!("{EMAIL}{email}"), EMAIL_SK)
}

pub fn session(token_hash: &str) -> Key {
    Key::new(format!("{SESSION}{token_hash}"), SESSION_SK)
}

/// An audit chain's partition (`chain` = a tenant id, or `platform`).
pub fn audit_pk(chain: &str) -> String {
    format!("{AUDIT}{chain}")
}

pub fn audit_event(chain: &str, seq: u64) -> Key {
    Key::new(audit_pk(chain), audit_sk(seq))
}

fn audit_sk(seq: u64) -> String {
    format!("{EVENT_PREFIX}{seq:016}")
}

pub fn audit_head(chain: &str) -> Key {
    Key::new(audit_pk(chain), HEAD_SK)
}

/// A parked audit event (`id` a ULID, so key order is outbox order).
pub fn audit_parked(chain: &str, id: &str) -> Key {
    Key::new(audit_pk(chain), format!("{PARKED_PREFIX}{id}"))
}

/// The sort keys from the head onwards: `HEAD` sorts after every `EVENT#` and before
/// every `PARKED#`, so one query from here reads the head and the oldest parked events.
pub fn audit_tip_from() -> &'static str {
    HEAD_SK
}

pub const PARKED_PREFIX: &str = "PARKED#";
const INTENT_PREFIX: &str = "INTENT#";

/// How many partitions the audit intents are spread over: each mutating call (but a send)
/// puts one and deletes one, so one partition for every tenant's would cap them at 500 a
/// second platform-wide (its 1,000 W/s); sixteen cap them at 8,000. The sweep reads each.
pub const AUDIT_INTENT_SHARDS: u8 = 16;

/// The partition of audit intents number `shard` (`0..AUDIT_INTENT_SHARDS`).
pub fn audit_intent_pk(shard: u8) -> String {
    format!("{AUDIT_INTENT}{shard}")
}

/// The shard `pk` is, if it is an audit intents' partition.
fn audit_intent_shard_of_pk(pk: &str) -> Option<u8> {
    let rest = pk.strip_prefix(AUDIT_INTENT)?;
    rest.parse::<u8>()
        .ok()
        .filter(|n| *n < AUDIT_INTENT_SHARDS && n.to_string() == rest)
}

/// The shard of the intent `id`: the low 4 bits of its ULID's random part — uniform over
/// calls whoever makes them, so one busy tenant's calls spread over every shard too (a
/// hash of the chain would put them all on one), and known from the id alone, which is
/// all the delete and the sweep's promotion have. An id that is no ULID (never one the
/// platform makes) gets a hash of its bytes.
pub fn audit_intent_shard(id: &str) -> u8 {
    let bits = match ulid::Ulid::from_string(id) {
        Ok(u) => u.random() as u64,
        // FNV-1a.
        Err(_) => id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }),
    };
    (bits % u64::from(AUDIT_INTENT_SHARDS)) as u8
}

/// An audit intent (`id` a ULID: key order is the order they were made in, so the sweep
/// reads the stale ones as a key range of each shard, [`audit_intents_before`]).
pub fn audit_intent(id: &str) -> Key {
    Key::new(
        audit_intent_pk(audit_intent_shard(id)),
        format!("{INTENT_PREFIX}{id}"),
    )
}

/// The intent's id in the sort key `sk` (`INTENT#{id}`).
pub fn audit_intent_id_of(sk: &str) -> Option<&str> {
    sk.strip_prefix(INTENT_PREFIX)
}

/// The sort-key range (in every shard) of the intents whose ULIDs were made before
/// `before_ms` (epoch ms) and come after the id `after` (exclusive; `None`: from the
/// first): from past `after` (`~` sorts after every Crockford character, and ULIDs are of
/// one length) to the smallest ULID of that millisecond, exclusive in effect (a ULID of
/// that very millisecond with all-zero randomness does not occur). `None` when the range
/// is empty.
pub fn audit_intents_before(before_ms: u64, after: Option<&str>) -> Option<(String, String)> {
    let floor = ulid::Ulid::from_parts(before_ms, 0).to_string();
    let lo = match after {
        Some(a) => format!("{INTENT_PREFIX}{a}~"),
        None => INTENT_PREFIX.to_owned(),
    };
    let hi = format!("{INTENT_PREFIX}{floor}");
    (lo < hi).then_some((lo, hi))
}

/// A parked audit event's entry in the sparse index of every parked event: written with
/// the event in its one `PutItem`, gone with it when it is linked in (or expires), so the
/// index lists exactly the chains that have events waiting. Chains (a tenant id or
/// `platform`) and ids (ULIDs) hold no `#`, which sorts before all their characters: index
/// order is (chain, id) order.
pub fn audit_parked_gsi1(chain: &str, id: &str) -> Gsi1 {
    Gsi1 {
        pk: AUDIT_PARKED_GSI1PK.to_owned(),
        sk: format!("{chain}#{id}"),
    }
}

/// The partition of the sparse index of parked audit events.
pub fn audit_parked_gsi1_pk() -> &'static str {
    AUDIT_PARKED_GSI1PK
}

/// The index sort key past every parked event of `chain` (the next chain starts after it).
pub fn audit_parked_gsi1_after_chain(chain: &str) -> String {
    format!("{chain}#{TOP}")
}

/// The chain of a parked event's index sort key.
pub fn audit_parked_chain_of(gsi1sk: &str) -> Option<&str> {
    gsi1sk.split_once('#').map(|(chain, _)| chain)
}

/// The event sort-key range strictly after `after` and strictly before `before` (each
/// unbounded when `None`); the zero-padded `seq` makes key order chain order.
pub fn audit_event_range(after: Option<u64>, before: Option<u64>) -> (String, String) {
    let lo = after.map_or_else(
        || EVENT_PREFIX.to_owned(),
        |a| audit_sk(a.saturating_add(1)),
    );
    let hi = before.map_or_else(
        || format!("{EVENT_PREFIX}{TOP}"),
        |b| audit_sk(b.saturating_sub(1)),
    );
    (lo, hi)
}

/// The sequence number of an audit event, from its sort key.
pub fn audit_seq_of(sk: &str) -> Option<u64> {
    sk.strip_prefix(EVENT_PREFIX).and_then(|s| s.parse().ok())
}

pub fn retention_checkpoint() -> Key {
    Key::new(RETENTION, CHECKPOINT_SK)
}

// ---- Failed logins ----------------------------------------------------------------------

/// The partition of one email's failed-login counters (one item per source address).
pub fn login_failures_of_email_pk(email_hash: &str) -> String {
    format!("{LOGINFAIL}{email_hash}")
}

pub fn login_failures_of_email(email_hash: &str, addr: &str) -> Key {
    Key::new(
        login_failures_of_email_pk(email_hash),
        format!("{ADDR_PREFIX}{addr}"),
    )
}

/// One user's wrong TOTP codes (from any address), in its email's partition.
pub fn login_totp_failures(email_hash: &str) -> Key {
    Key::new(login_failures_of_email_pk(email_hash), TOTP_FAIL_SK)
}

pub fn login_failures_of_address(addr: &str) -> Key {
    Key::new(format!("{LOGINADDR}{addr}"), FAIL_SK)
}

// ---- The template catalogue -----------------------------------------------------------

/// A WABA's catalogue partition.
pub fn catalogue_pk(waba_id: &str) -> String {
    format!("{WABA}{waba_id}")
}

/// Names and languages hold no `#` (`domain::template::valid_name`, `valid_language`), and
/// `#` sorts before every character they do hold: key order is (name, language) order.
pub fn template(waba_id: &str, name: &str, language: &str) -> Key {
    Key::new(
        catalogue_pk(waba_id),
        format!("{TEMPLATE_PREFIX}{name}#{language}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key of every item type, built by its own builder.
    fn sample(kind: ItemKind) -> Key {
        let t = TenantId::parse("01JABCDEFGHJKMNPQRSTVWXYZ0").unwrap();
        let m = MessageId::from_trusted("01JABCDEFGHJKMNPQRSTVWXYZ1");
        let day = NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
        match kind {
            ItemKind::Tenant => tenant(&t),
            ItemKind::PhoneRoute => phone_route("1234567890"),
            ItemKind::ApiKeyByHash => api_key_by_hash(&"ab".repeat(32)),
            ItemKind::ApiKeyOfTenant => api_key_of_tenant(&t, "01JKEY"),
            ItemKind::LedgerEntry => ledger_entry(&t, "01JLEDGER"),
            ItemKind::Message => message(&t, &m),
            ItemKind::WamidIndex => wamid_index("wamid.HBgL=="),
            ItemKind::PendingStatus => pending_status("wamid.HBgL==", "delivered", 1_700_000_000),
            ItemKind::OwedCallback => owed_callback(&t, &m, 3),
            ItemKind::CallbackFailure => callback_failure(&t, "01JABCDEFGHJKMNPQRSTVWXYZ2"),
            ItemKind::OptOut => opt_out(&t, &OptOutKey::parse("+60123456789").unwrap()),
            ItemKind::OptedIn => opted_in(&t, &OptOutKey::parse("+60123456789").unwrap()),
            ItemKind::UserPairing => user_pairing(&t, &OptOutKey::parse("US.1349120865").unwrap()),
            ItemKind::ServiceWindow => {
                service_window(&t, "1234567890", &OptOutKey::parse("+60123456789").unwrap())
            }
            ItemKind::Idempotency => idempotency(&t, &"cd".repeat(32)),
            ItemKind::AuditEvent => audit_event(t.as_str(), 42),
            ItemKind::AuditHead => audit_head("platform"),
            ItemKind::AuditParked => audit_parked("platform", "01JPARKED"),
            ItemKind::AuditIntent => audit_intent("01JINTENT"),
            ItemKind::QualityCounter => quality_counter(&t, day),
            ItemKind::Broadcast => broadcast(&t, "01JBCAST"),
            ItemKind::BroadcastList => broadcast_list(&t, "01JBCAST"),
            ItemKind::SendSlot => send_slot("1234567890"),
            ItemKind::HeavyLease => heavy_lease(&t, crate::ports::Heavy::Campaign),
            ItemKind::StatusCallback => status_callback(&t),
            ItemKind::TwoFactorSetting => two_factor_setting(&t),
            ItemKind::User => user(&t, "01JUSER"),
            ItemKind::EmailClaim => email_claim("aminah@example.com"),
            ItemKind::Session => session(&"ef".repeat(32)),
            ItemKind::RetentionCheckpoint => retention_checkpoint(),
            ItemKind::LoginFailuresOfEmail => {
                login_failures_of_email(&"ab".repeat(32), "2001:db8::")
            }
            ItemKind::LoginFailuresOfAddress => login_failures_of_address("198.51.100.7"),
            ItemKind::Template => template("1000001", "order_update", "en_US"),
            ItemKind::PhoneNumber => phone_number(&t, "1234567890"),
            ItemKind::UsageCounter => usage_counter(&t, day, "marketing", "regular", 7),
            ItemKind::CreditLane => credit_lane(&t, 9),
        }
    }

    #[test]
    fn every_item_types_key_round_trips_to_its_type_and_class() {
        for kind in ItemKind::ALL {
            let key = sample(kind);
            assert_eq!(key.kind(), Some(kind), "{key:?}");
            assert_eq!(
                ItemKind::of_key(&key.pk, &key.sk).map(ItemKind::class),
                Some(kind.class()),
                "{key:?}"
            );
        }
    }

    #[test]
    fn each_heavy_lease_class_has_a_key_of_its_own_of_the_lease_type() {
        use crate::ports::Heavy;
        let t = TenantId::parse("01JABCDEFGHJKMNPQRSTVWXYZ0").unwrap();
        let (account, campaign, retry) = (
            heavy_lease(&t, Heavy::Account),
            heavy_lease(&t, Heavy::Campaign),
            heavy_lease(&t, Heavy::Retry),
        );
        assert_eq!(
            (account.pk.as_str(), account.sk.as_str()),
            ("LEASE#01JABCDEFGHJKMNPQRSTVWXYZ0", "HEAVY#account")
        );
        assert_eq!(campaign.sk, "HEAVY#campaign");
        assert_eq!(retry.sk, "HEAVY#retry");
        for key in [account, campaign, retry] {
            assert_eq!(key.kind(), Some(ItemKind::HeavyLease), "{key:?}");
        }
    }

    #[test]
    fn each_item_type_has_its_own_key_shape() {
        let mut shapes = std::collections::BTreeSet::new();
        for kind in ItemKind::ALL {
            let key = sample(kind);
            let pk = key.pk.split('#').next().unwrap_or_default().to_owned();
            let sk = key.sk.split('#').next().unwrap_or_default().to_owned();
            let sk = if key.sk.starts_with("SETTINGS#") || key.sk.starts_with(CREDIT_LANE_PREFIX) {
                key.sk.clone()
            } else {
                sk
            };
            assert!(shapes.insert((pk, sk)), "{kind:?} shares a key shape");
        }
    }

    #[test]
    fn stored_items_count_under_their_retention_classes() {
        use RetentionClass as C;
        let t = "TENANT#01JABCDEFGHJKMNPQRSTVWXYZ0";
        let class = |pk: &str, sk: &str| ItemKind::of_key(pk, sk).map(ItemKind::class);
        // The keys as the table holds them (docs/data-model.md §2), written out literally.
        assert_eq!(class(t, "MSG#01J"), Some(C::Messages));
        assert_eq!(class("WAMID#w", "WAMID"), Some(C::Messages));
        assert_eq!(class(t, "BROADCAST#01J"), Some(C::Messages));
        assert_eq!(class(t, "LEDGER#01J"), Some(C::Billing));
        assert_eq!(
            class(t, "USAGE#2026-01-31#marketing#regular"),
            Some(C::Billing),
            "usage rows are billing records"
        );
        assert_eq!(class(t, "TENANT"), Some(C::Billing));
        assert_eq!(
            class("AUDIT#platform", "EVENT#0000000000000001"),
            Some(C::Audit)
        );
        assert_eq!(class("AUDIT#platform", "PARKED#01J"), Some(C::Audit));
        assert_eq!(class(t, "IDEM#ab"), Some(C::Idempotency));
        assert_eq!(class(t, "IDEM#TOPUP#ab"), Some(C::Idempotency));
        assert_eq!(
            class("WAMID#w", "PENDING#delivered#1700000000"),
            Some(C::PendingStatus),
            "a kept status is not a message"
        );
        assert_eq!(
            class("CALLBACKOWED", "OWED#01J#01K#3"),
            Some(C::PendingStatus),
            "an owed callback is kept as long as its queue would have"
        );
        assert_eq!(
            class("CBFAIL#01JABCDEFGHJKMNPQRSTVWXYZ0", "CBFAIL#01J"),
            Some(C::CallbackFailures),
            "a given-up callback's record is kept as long as the dead-letter queue keeps it"
        );
        assert_eq!(class("SESSION#h", "SESSION"), Some(C::Session));
        assert_eq!(class(t, "QSTAT#2026-01-01"), Some(C::Stats));
        assert_eq!(class(t, "BCLIST#01J"), Some(C::BroadcastList));
        assert_eq!(class("RATE#123", "NEXT"), Some(C::SendSlot));
        for sk in ["HEAVY#account", "HEAVY#campaign"] {
            assert_eq!(
                class("LEASE#01JABCDEFGHJKMNPQRSTVWXYZ0", sk),
                Some(C::SendSlot),
                "a heavy-request lease is throughput state, as a send slot is"
            );
        }
        assert_eq!(
            class("LOGINFAIL#ab", "ADDR#198.51.100.7"),
            Some(C::LoginFailures)
        );
        assert_eq!(
            class("LOGINADDR#198.51.100.7", "FAIL"),
            Some(C::LoginFailures)
        );
        assert_eq!(
            class("WABA#1000001", "TEMPLATE#order_update#en_US"),
            Some(C::Messages)
        );
        for (pk, sk) in [
            (t, "APIKEY#01J"),
            (t, "OPTOUT#+601"),
            (t, "NUMBER#1234567890"),
            (t, "USER#01J"),
            (t, "SETTINGS#2FA"),
            (t, "SETTINGS#STATUS_CALLBACK"),
            ("APIKEY#ab", "APIKEY"),
            ("PHONE#1", "PHONE"),
            ("EMAIL#a@b.c", "EMAIL"),
            ("AUDIT#platform", "HEAD"),
            ("RETENTION", "CHECKPOINT"),
        ] {
            assert_eq!(class(pk, sk), Some(C::ActiveConfig), "{pk} / {sk}");
        }
    }

    #[test]
    fn keys_of_no_item_type_are_not_guessed() {
        for (pk, sk) in [
            ("TENANT#01J", "SOMETHING#1"),
            ("WAMID#w", "STATUS#delivered"),
            ("AUDIT#platform", "TAIL"),
            ("PHONE#1", "ROUTE"),
            ("WABA#1", "CATALOGUE"),
            ("RETENTION", "OTHER"),
            ("", ""),
        ] {
            assert_eq!(ItemKind::of_key(pk, sk), None, "{pk} / {sk}");
        }
    }

    #[test]
    fn ranges_bound_only_their_own_item_type() {
        let (lo, hi) = message_range(None, None);
        assert_eq!((lo.as_str(), hi.as_str()), ("MSG#", "MSG#~"));
        let (lo, hi) = ledger_range_after(Some("01JA"));
        assert_eq!((lo.as_str(), hi.as_str()), ("LEDGER#01JA~", "LEDGER#~"));
        assert_eq!(
            audit_event_range(Some(4), Some(9)),
            (audit_sk(5), audit_sk(8))
        );
        assert_eq!(
            audit_event_range(None, None),
            ("EVENT#".to_owned(), "EVENT#~".to_owned())
        );
        assert_eq!(audit_seq_of(&audit_sk(42)), Some(42));
        // Parked events index in (chain, id) order; skipping a chain skips all of its own.
        let a = TenantId::parse("01JABCDEFGHJKMNPQRSTVWXYZ0")
            .unwrap()
            .to_string();
        let first = audit_parked_gsi1(&a, "01JZZZZZZZZZZZZZZZZZZZZZZZ").sk;
        assert!(audit_parked_gsi1(&a, "01JA").sk < first);
        assert!(first < audit_parked_gsi1_after_chain(&a));
        assert!(audit_parked_gsi1_after_chain(&a) < audit_parked_gsi1("platform", "01JA").sk);
        assert_eq!(audit_parked_chain_of(&first), Some(a.as_str()));
        // Key order is (name, language) order: `#` sorts before every name character.
        assert!(template("1", "abc", "en").sk < template("1", "abc_x", "en").sk);
        assert!(template("1", "abc", "en").sk < template("1", "abc", "en_US").sk);
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let (lo, hi) = usage_range(d("2026-01-02"), d("2026-01-03"));
        let t = TenantId::parse("01JABCDEFGHJKMNPQRSTVWXYZ0").unwrap();
        for (day, inside) in [
            ("2026-01-01", false),
            ("2026-01-02", true),
            ("2026-01-03", true),
            ("2026-01-04", false),
        ] {
            for shard in [0, crate::ports::USAGE_SHARDS - 1] {
                let sk = usage_counter(&t, d(day), "authentication", "free_entry_point", shard).sk;
                assert_eq!(lo <= sk && sk <= hi, inside, "{day} {shard}");
            }
            // A row written before rows were spread (A79) has no shard of its own.
            let sk = format!("{USAGE_PREFIX}{day}#authentication#free_entry_point");
            assert_eq!(lo <= sk && sk <= hi, inside, "{day}");
        }
        let (lo, hi) = message_range_of_ms(1_700_000_000_000);
        assert!(lo < hi && lo.starts_with("MSG#") && hi.starts_with("MSG#"));
        assert_eq!(
            tenant_of_pk("TENANT#01JABCDEFGHJKMNPQRSTVWXYZ0").map(|t| t.to_string()),
            Some("01JABCDEFGHJKMNPQRSTVWXYZ0".to_owned())
        );
        assert_eq!(
            message_status_gsi1_pk(
                &TenantId::parse("01JABCDEFGHJKMNPQRSTVWXYZ0").unwrap(),
                MessageStatus::Sent
            ),
            "TENANT#01JABCDEFGHJKMNPQRSTVWXYZ0#STATUS#sent"
        );
    }

    #[test]
    fn only_statuses_few_messages_rest_in_have_a_status_index_entry() {
        use MessageStatus::*;
        let t = TenantId::parse("01JABCDEFGHJKMNPQRSTVWXYZ0").unwrap();
        let id = MessageId::from_trusted("01JABCDEFGHJKMNPQRSTVWXYZ1".to_owned());
        for st in [Accepted, Sending, Sent, Delivered, Read] {
            assert_eq!(message_gsi1(&t, st, &id), None, "{st:?}");
            assert_eq!(message_pairs(&t, st, &id).len(), 2, "{st:?}");
        }
        for st in [Scheduled, Failed, Cancelled] {
            let gsi = message_gsi1(&t, st, &id).unwrap();
            assert_eq!(gsi.pk, message_status_gsi1_pk(&t, st));
            assert_eq!(gsi.sk, message(&t, &id).sk, "the table's order");
            assert_eq!(message_pairs(&t, st, &id).len(), 4, "{st:?}");
        }
    }

    #[test]
    fn audit_intents_are_spread_over_sixteen_partitions_by_their_ulids_random_bits() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let id = ulid::Ulid::new();
            let key = audit_intent(&id.to_string());
            let shard = (id.random() % 16) as u8;
            assert_eq!(key.pk, format!("AUDITINTENT#{shard}"));
            assert_eq!(key.kind(), Some(ItemKind::AuditIntent), "{key:?}");
            assert_eq!(audit_intent_id_of(&key.sk), Some(id.to_string().as_str()));
            seen.insert(shard);
        }
        assert_eq!(
            seen.len(),
            usize::from(AUDIT_INTENT_SHARDS),
            "every shard used"
        );
        // No other partition is taken for one: the unsharded form is gone (never deployed).
        for pk in [
            "AUDITINTENT",
            "AUDITINTENT#16",
            "AUDITINTENT#01",
            "AUDITINTENT#x",
        ] {
            assert_eq!(ItemKind::of_key(pk, "INTENT#01J"), None, "{pk}");
        }
        // A later id's range starts past it; an empty range is none.
        let (lo, hi) = audit_intents_before(2_000_000_000_000, None).unwrap();
        assert!(lo.as_str() < "INTENT#0" && hi.starts_with("INTENT#"));
        let a = ulid::Ulid::from_parts(1_000, 7).to_string();
        let b = ulid::Ulid::from_parts(1_000, 8).to_string();
        let (lo, _) = audit_intents_before(2_000, Some(&a)).unwrap();
        assert!(lo > format!("INTENT#{a}") && lo < format!("INTENT#{b}"));
        assert_eq!(audit_intents_before(1_000, Some(&a)), None);
    }
}
