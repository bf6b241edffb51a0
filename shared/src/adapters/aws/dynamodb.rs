//! Every store port on one DynamoDB table. Every key is built by `keys.rs`, the one owner
//! of the key schema; access patterns: docs/data-model.md. Invariants are conditional
//! writes or transactions.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::classify;
use crate::domain::{MessageError, MessageId, MessageRecord, MessageStatus, StatusEvent, TenantId};
use crate::ports::{
    ApiKeyPage, ApiKeyRecord, ApiKeyStore, AuditEvent, AuditHead, AuditLink, AuditLog, AuditQuery,
    Clock, Ledger, LedgerEntry, MessagePage, MessageQuery, MessageStore, ParkedAudit,
    QualityCounter, QualityCounts, QualityStats, RequestKeyRecord, StaleIntent, StatusChange,
    Tenant, TenantStatus, TenantStore, TopUpOnce, Transition,
};
use crate::store_error::StoreError;

mod batch_get;
mod broadcasts;
mod callbacks;
mod contacts;
#[cfg(test)]
mod cursor_props;
mod idempotency;
pub mod keys;
mod lanes;
mod leases;
mod numbers;
mod optouts;
mod retention;
mod templates;
mod throttle;
mod transact;

pub(crate) use transact::{update_retrying_conflicts, CancelReason};

pub(super) type Item = HashMap<String, AttributeValue>;

pub const TTL_ATTR: &str = "ttl";
/// The tenant item's id of the status write that last changed its status (fresh for each
/// `set_status` or `suspend_if_unchanged` call): how a call whose retry was refused knows
/// its own first try landed.
const STATUS_WRITE_ID: &str = "status_write_id";
pub const GSI1: &str = "gsi1";

/// The statuses a message may fail from with a refund: it has not reached Meta.
const REFUNDABLE: [MessageStatus; 2] = [MessageStatus::Accepted, MessageStatus::Sending];

/// The status index part of a message's move to `to` (the index is sparse, `keys.rs`):
/// the entry's keys added to `set` (and their values) when `to` is indexed; else the
/// clause that removes them, to append after the `SET` part (removing what an item does
/// not have writes nothing to the index).
pub(super) fn index_move(
    tenant: &TenantId,
    id: &MessageId,
    to: MessageStatus,
    set: &mut Vec<&'static str>,
    values: &mut Item,
) -> &'static str {
    match keys::message_gsi1(tenant, to, id) {
        Some(gsi) => {
            set.extend(["gsi1pk = :gpk", "gsi1sk = :gsk"]);
            values.insert(":gpk".into(), s(gsi.pk));
            values.insert(":gsk".into(), s(gsi.sk));
            ""
        }
        None => " REMOVE gsi1pk, gsi1sk",
    }
}

/// How many pages of a tenant's messages one listing by a status without index entries
/// reads at most (each of the page's size) before it answers with a cursor.
const FILTERED_PAGES: usize = 10;

/// One status change as an update: expression, condition and their placeholders.
struct StatusUpdate {
    expression: String,
    condition: String,
    names: HashMap<String, String>,
    values: Item,
}

impl StatusUpdate {
    /// Also sets `attr` to `value` in the same write, only if the item has no `attr` yet
    /// (the whole update is refused otherwise).
    fn set_once(mut self, attr: &str, value: AttributeValue) -> Self {
        let rest = self
            .expression
            .strip_prefix("SET ")
            .unwrap_or(&self.expression);
        self.expression = format!("SET {attr} = :once, {rest}");
        self.condition = format!("{} AND attribute_not_exists({attr})", self.condition);
        self.values.insert(":once".into(), value);
        self
    }
}

pub struct DynamoStore {
    pub(super) client: Client,
    pub(super) table: String,
    clock: Arc<dyn Clock>,
    /// The last send slot this process saw per number (`throttle.rs`): only which
    /// conditional update to try first, never a decision. Shared with the lagging view.
    pub(super) slot_hints: Arc<std::sync::Mutex<HashMap<String, i64>>>,
    /// Tenants whose sends this process takes to the tenant item until then (epoch s),
    /// their tenant item found too low to refill a credit lane (`lanes.rs`): only where
    /// to try a debit first, never a decision. Shared with the lagging view.
    pub(super) debit_hints: Arc<std::sync::Mutex<HashMap<String, i64>>>,
    /// The lagging view ([`DynamoStore::lagging`]): the reads the warm cache refreshes
    /// through it ([`Self::get_may_lag`]) are eventually consistent.
    lagging: bool,
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub(super) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Serialises a record and adds its keys and TTL.
pub(super) fn to_item<T: Serialize>(
    value: &T,
    keys: &[(&str, String)],
    ttl: Option<i64>,
) -> Result<Item, StoreError> {
    let mut item: Item =
        serde_dynamo::to_item(value).map_err(|e| StoreError::Corrupt(format!("serialise: {e}")))?;
    for (k, v) in keys {
        item.insert((*k).to_owned(), s(v.clone()));
    }
    if let Some(t) = ttl {
        item.insert(TTL_ATTR.to_owned(), n(t));
    }
    Ok(item)
}

pub(super) fn from_item<T: DeserializeOwned>(item: Item) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt(format!("deserialise: {e}")))
}

fn ttl_of(item: &Item) -> Option<i64> {
    match item.get(TTL_ATTR) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

/// An audit head item: the newest link and its signed checkpoint.
fn audit_head_of(item: &Item) -> Result<AuditHead, StoreError> {
    let num = |k: &str| match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse::<i64>().ok(),
        _ => None,
    };
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    match (num("seq"), text("hash")) {
        (Some(seq), Some(hash)) if seq >= 0 => Ok(AuditHead {
            seq: seq as u64,
            hash,
            expires_at: num("event_expires_at"),
            signature: text("signature"),
            ttl: ttl_of(item),
        }),
        _ => Err(StoreError::Corrupt("audit head".into())),
    }
}

/// An audit event's item: the event, its keys and TTL, and `at_ms`.
fn audit_event_item(event: &AuditEvent) -> Result<Item, StoreError> {
    let mut item = to_item(
        event,
        &keys::audit_event(&event.chain, event.seq).pairs(),
        event.expires_at,
    )?;
    // A number to filter times by (RFC 3339 text does not compare reliably).
    item.insert("at_ms".into(), n(event.at.timestamp_millis()));
    Ok(item)
}

/// What moving a chain's head to `to` sets and removes (`:seq`, `:hash`, `#hash` and
/// `#ttl` named for conditions too). The item's own TTL is set only when `to` has one (its
/// tenant closed out), never removed; `absent_ttl` is the condition that a head read
/// without one still has none (a close-out between the read and the move must not have
/// its TTL left below the new event's expiry).
struct HeadUpdate {
    expression: String,
    names: HashMap<String, String>,
    values: Item,
    absent_ttl: &'static str,
}

impl HeadUpdate {
    /// The names `condition` and the update use (DynamoDB refuses a name left unused).
    fn names_with(&self, condition: &str) -> HashMap<String, String> {
        let mut names = self.names.clone();
        if !condition.contains("#ttl") && !self.expression.contains("#ttl") {
            names.remove("#ttl");
        }
        names
    }
}

fn audit_head_update(to: &AuditHead) -> HeadUpdate {
    let mut set = vec!["seq = :seq", "#hash = :hash"];
    let mut remove = Vec::new();
    let mut values = Item::from([
        (":seq".to_owned(), n(to.seq as i64)),
        (":hash".to_owned(), s(to.hash.clone())),
    ]);
    match to.expires_at {
        Some(t) => {
            set.push("event_expires_at = :exp");
            values.insert(":exp".into(), n(t));
        }
        None => remove.push("event_expires_at"),
    }
    match &to.signature {
        Some(sig) => {
            set.push("signature = :sig");
            values.insert(":sig".into(), s(sig.clone()));
        }
        None => remove.push("signature"),
    }
    if let Some(t) = to.ttl {
        set.push("#ttl = :ttl");
        values.insert(":ttl".into(), n(t));
    }
    let mut expression = format!("SET {}", set.join(", "));
    if !remove.is_empty() {
        expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
    }
    HeadUpdate {
        expression,
        names: HashMap::from([
            ("#hash".to_owned(), "hash".to_owned()),
            ("#ttl".to_owned(), TTL_ATTR.to_owned()),
        ]),
        values,
        absent_ttl: if to.ttl.is_none() {
            " AND attribute_not_exists(#ttl)"
        } else {
            ""
        },
    }
}

fn encode_cursor(key: &Item) -> Option<String> {
    let flat: HashMap<&str, &str> = key
        .iter()
        .filter_map(|(k, v)| v.as_s().ok().map(|s| (k.as_str(), s.as_str())))
        .collect();
    let json = serde_json::to_vec(&flat).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
}

fn decode_cursor(cursor: &str, tenant: &TenantId) -> Result<Item, StoreError> {
    decode_cursor_under(cursor, &keys::tenant_pk(tenant))
}

/// [`decode_cursor`] of a list kept under a partition of its own (`partition`, one of the
/// tenant's: its given-up callbacks' `CBFAIL#{t}`).
fn decode_cursor_under(cursor: &str, partition: &str) -> Result<Item, StoreError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::InvalidCursor)?;
    let flat: HashMap<String, String> =
        serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)?;
    // A cursor may only continue inside the caller's own partition.
    let ok = flat
        .iter()
        .all(|(k, v)| !(k == "pk" || k == "gsi1pk") || v.starts_with(partition));
    if !ok || flat.len() > 4 {
        return Err(StoreError::InvalidCursor);
    }
    Ok(flat.into_iter().map(|(k, v)| (k, s(v))).collect())
}

/// The sort key a cursor of the tenant's own items goes on after, if it is one of theirs
/// that begins with `prefix` (then what follows it, for the caller to parse). A cursor's
/// key is only a position: the listing rebuilds the start key for the query it runs, so a
/// cursor from another filter or a hand-made one is never handed to DynamoDB as it is
/// (which refuses a start key of another shape or outside the key condition: a 500).
fn cursor_sort_key<'c>(item: &'c Item, tenant: &TenantId, prefix: &str) -> Option<&'c str> {
    cursor_sort_key_under(item, &keys::tenant_pk(tenant), prefix)
}

/// [`cursor_sort_key`] in the partition `partition`.
fn cursor_sort_key_under<'c>(item: &'c Item, partition: &str, prefix: &str) -> Option<&'c str> {
    let pk = item.get(keys::PK).and_then(|v| v.as_s().ok());
    if pk.is_some_and(|pk| pk != partition) {
        return None;
    }
    item.get(keys::SK)
        .and_then(|v| v.as_s().ok())
        .and_then(|sk| sk.strip_prefix(prefix))
}

/// The message a messages cursor goes on after (older ones come next).
fn message_cursor(cursor: &str, tenant: &TenantId) -> Result<MessageId, StoreError> {
    let item = decode_cursor(cursor, tenant)?;
    cursor_sort_key(&item, tenant, keys::MESSAGE_PREFIX)
        .and_then(MessageId::parse)
        .ok_or(StoreError::InvalidCursor)
}

impl crate::adapters::cache::LaggingView for DynamoStore {
    fn lagging_view(store: &Arc<Self>) -> Arc<Self> {
        Arc::new(store.lagging())
    }
}

impl DynamoStore {
    /// The IAM actions this adapter calls (`crate::iam` grants them per function).
    /// TransactWriteItems is authorised per item by PutItem, UpdateItem, DeleteItem and
    /// ConditionCheckItem.
    pub const GET: &'static [&'static str] = &["dynamodb:GetItem"];
    /// A single unconditional put (the status-callback function's record of a callback it
    /// gave up).
    pub const PUT: &'static [&'static str] = &["dynamodb:PutItem"];
    pub const READ: &'static [&'static str] = &["dynamodb:GetItem", "dynamodb:Query"];
    pub const WRITE: &'static [&'static str] = &[
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem",
    ];
    /// Which of many items exist, in calls of 100 (`found_among`, `opted_out_among`: a
    /// campaign's recipients' opt-outs and pairings at its creation).
    pub const BATCH_READ: &'static [&'static str] = &["dynamodb:BatchGetItem"];
    /// On the table's index (`gsi1`): queries only.
    pub const INDEX_READ: &'static [&'static str] = &["dynamodb:Query"];
    /// The retention sweep (and the stored-item view for checks): the only scans.
    pub const SWEEP: &'static [&'static str] = &["dynamodb:Scan"];

    pub fn new(client: Client, table: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            table: table.into(),
            clock,
            slot_hints: Arc::new(std::sync::Mutex::new(HashMap::new())),
            debit_hints: Arc::new(std::sync::Mutex::new(HashMap::new())),
            lagging: false,
        }
    }

    /// The same table through the same client, for the warm read cache's refreshes
    /// (`adapters::cache`): the catalogue template, the status-callback setting, a
    /// tenant's phone number and the owner of a phone number id are read eventually
    /// consistent (half a read unit, possibly a moment behind the latest write: DynamoDB's
    /// replication lag, typically under a second). Every other read of this view, the API
    /// key by its hash and the tenant among them, stays strongly consistent, as do all
    /// writes. A cheap clone: the client is shared.
    pub fn lagging(&self) -> Self {
        Self {
            client: self.client.clone(),
            table: self.table.clone(),
            clock: self.clock.clone(),
            slot_hints: self.slot_hints.clone(),
            debit_hints: self.debit_hints.clone(),
            lagging: true,
        }
    }

    pub(super) fn now_secs(&self) -> i64 {
        self.clock.now().timestamp()
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// One `PutItem` of `item` as it is, with no condition (an audit event parked, an
    /// audit intent: each under a key of its own).
    async fn put_unconditional(&self, item: Item) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("dynamodb put", e))
    }

    /// One shard's live intents with sort keys from `lo` to `hi`, oldest first, at most
    /// `limit`: an item that does not read as an intent is in its place, unreadable.
    async fn stale_intents_of_shard(
        &self,
        shard: u8,
        lo: &str,
        hi: &str,
        limit: usize,
    ) -> Result<Vec<StaleIntent>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(keys::audit_intent_pk(shard)))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi))
            .limit(limit.clamp(1, 100) as i32)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| classify("dynamodb query", e))?;
            if !self.live(&item) {
                continue;
            }
            let sk = item
                .get(keys::SK)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            out.push(match from_item::<ParkedAudit>(item) {
                Ok(intent) => StaleIntent::Intent(intent),
                Err(e) => StaleIntent::Unreadable {
                    id: keys::audit_intent_id_of(&sk).unwrap_or_default().to_owned(),
                    key: format!("{} / {sk}", keys::audit_intent_pk(shard)),
                    error: e.to_string(),
                },
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub(super) fn live(&self, item: &Item) -> bool {
        ttl_of(item).is_none_or(|t| t > self.now_secs())
    }

    /// [`get`](Self::get) with expired items too (DynamoDB deletes them days later).
    async fn get_unfiltered(&self, key: keys::Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key.attrs()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("dynamodb get", e))?;
        Ok(out.item)
    }

    pub(super) async fn get(&self, key: keys::Key) -> Result<Option<Item>, StoreError> {
        Ok(self.get_unfiltered(key).await?.filter(|i| self.live(i)))
    }

    /// [`get`](Self::get), eventually consistent: half the read units, possibly a moment
    /// behind the latest write (the `peek_*` reads of the ports, the lagging view's reads).
    pub(super) async fn get_eventually(&self, key: keys::Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key.attrs()))
            .consistent_read(false)
            .send()
            .await
            .map_err(|e| classify("dynamodb get", e))?;
        Ok(out.item.filter(|i| self.live(i)))
    }

    /// A point read the warm cache may refresh through the lagging view: eventually
    /// consistent there ([`Self::lagging`]), consistent otherwise.
    pub(super) async fn get_may_lag(&self, key: keys::Key) -> Result<Option<Item>, StoreError> {
        if self.lagging {
            self.get_eventually(key).await
        } else {
            self.get(key).await
        }
    }

    /// A transaction's check that `tenant` is not closed: its close-out gives the items it
    /// owns their TTL, and one written after it (a request served by a warm instance whose
    /// cache still saw the tenant open) would have none, kept for ever. A tenant with no
    /// item (none in a contract test) does not refuse the write. Put first in the
    /// transaction: its refusal is reason 0 ([`Self::refused_as_closed`]).
    pub(super) fn tenant_open_check(
        &self,
        tenant: &TenantId,
    ) -> Result<TransactWriteItem, StoreError> {
        self.tenant_status_check(tenant, "attribute_not_exists(pk) OR #status <> :closed")
    }

    /// An update of `tenant`'s item (`set`, its `UpdateExpression`) only while it exists and
    /// is not closed (closed is final); the caller adds its values.
    pub(super) fn open_tenant_update(
        &self,
        tenant: &TenantId,
        set: &str,
    ) -> Result<
        aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
        StoreError,
    > {
        Ok(self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::tenant(tenant).attrs()))
            .update_expression(set)
            .condition_expression("attribute_exists(pk) AND #status <> :closed")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":closed", dyn_value(&TenantStatus::Closed)?))
    }

    /// A transaction's `ConditionCheck` of `tenant`'s item, `condition` naming its status
    /// `#status` and the closed status `:closed`.
    fn tenant_status_check(
        &self,
        tenant: &TenantId,
        condition: &str,
    ) -> Result<TransactWriteItem, StoreError> {
        let check = aws_sdk_dynamodb::types::ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(keys::tenant(tenant).attrs()))
            .condition_expression(condition)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":closed", s("closed"))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("condition check: {e}")))?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// Whether a transaction led by [`Self::tenant_open_check`] was refused by it.
    pub(super) fn refused_as_closed(e: &transact::TransactError) -> bool {
        e.reason(0) == Some(&CancelReason::ConditionalCheckFailed)
    }

    /// `tenant_open_check`'s refusal as the callers answer it.
    pub(super) fn tenant_closed() -> StoreError {
        StoreError::Conflict(crate::ports::TENANT_CLOSED.into())
    }

    pub(super) fn put(
        &self,
        item: Item,
        condition: Option<&str>,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
        if let Some(c) = condition {
            put = put.condition_expression(c);
        }
        let put = put
            .build()
            .map_err(|e| StoreError::Corrupt(format!("put: {e}")))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Every live item of one partition whose sort key starts with `prefix` (all pages,
    /// consistent), deserialised.
    pub(super) async fn query_prefix<T: DeserializeOwned>(
        &self,
        pk: String,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        self.query_prefix_at_most(pk, prefix, usize::MAX).await
    }

    /// [`Self::query_prefix`], stopping after `limit` live items.
    pub(super) async fn query_prefix_at_most<T: DeserializeOwned>(
        &self,
        pk: String,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":p", s(prefix))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| classify("dynamodb query", e))?;
            if self.live(&item) {
                out.push(from_item(item)?);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// One page of the tenant's live items whose sort key is `prefix` and an id, in
    /// sort-key (id) order (`Order::NewestFirst`: descending, the ids being ULIDs), after
    /// `cursor`, and the cursor of the next page: one consistent
    /// `Query` of at most `limit + 1` items (one more than asked: a next cursor only when
    /// there is a next page), `limit` being 1 to [`MAX_PAGE`](crate::ports::MAX_PAGE).
    /// The cursor (an [`encode_cursor`] of the last item's key) is only a position: the
    /// start key is rebuilt from the id it names in the tenant's own partition under
    /// `prefix`, so another list's, another tenant's or a hand-made one is `InvalidCursor`
    /// and never reaches DynamoDB. An item whose TTL passed but is not yet deleted is left
    /// out, so a page may be short while a next cursor is set.
    pub(super) async fn query_tenant_page<T: DeserializeOwned>(
        &self,
        tenant: &TenantId,
        prefix: &str,
        order: crate::ports::Order,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<T>, Option<String>), StoreError> {
        self.query_page_under(keys::tenant_pk(tenant), prefix, order, limit, cursor)
            .await
    }

    /// [`Self::query_tenant_page`] in the partition `pk` (one of the tenant's own: a
    /// cursor of another partition is `InvalidCursor`).
    pub(super) async fn query_page_under<T: DeserializeOwned>(
        &self,
        pk: String,
        prefix: &str,
        order: crate::ports::Order,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<T>, Option<String>), StoreError> {
        let limit = limit.clamp(1, crate::ports::MAX_PAGE);
        let start = cursor
            .map(|c| {
                let item = decode_cursor_under(c, &pk)?;
                cursor_sort_key_under(&item, &pk, prefix)
                    .filter(|id| crate::ports::listed_id(id))
                    .map(|id| -> Item {
                        HashMap::from([
                            (keys::PK.to_owned(), s(pk.clone())),
                            (keys::SK.to_owned(), s(format!("{prefix}{id}"))),
                        ])
                    })
                    .ok_or(StoreError::InvalidCursor)
            })
            .transpose()?;
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", s(pk.clone()))
            .expression_attribute_values(":p", s(prefix))
            .scan_index_forward(order == crate::ports::Order::OldestFirst)
            .set_exclusive_start_key(start)
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| classify("dynamodb query", e))?;
        let mut items = out.items.unwrap_or_default();
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().and_then(|last| {
                let key: Item = HashMap::from([
                    (keys::PK.to_owned(), AttributeValue::S(pk.clone())),
                    (keys::SK.to_owned(), last.get(keys::SK)?.clone()),
                ]);
                encode_cursor(&key)
            })
        } else {
            None
        };
        let page = items
            .into_iter()
            .filter(|i| self.live(i))
            .map(from_item)
            .collect::<Result<Vec<T>, _>>()?;
        Ok((page, next_cursor))
    }

    async fn balance(&self, tenant: &TenantId) -> Result<i64, StoreError> {
        // The tenant item's credits and its lanes' (A80).
        let read = self
            .tenant_and_lanes(tenant)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(read.reservoir().saturating_add(read.in_lanes()))
    }

    pub(super) fn ledger_put(&self, entry: &LedgerEntry) -> Result<TransactWriteItem, StoreError> {
        let item = to_item(
            entry,
            &keys::ledger_entry(&entry.tenant_id, &entry.id).pairs(),
            entry.expires_at,
        )?;
        self.put(item, Some("attribute_not_exists(pk)"))
    }

    pub(super) fn credit_update(
        &self,
        entry: &LedgerEntry,
        guard: CreditGuard,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut u = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::tenant(&entry.tenant_id).attrs()))
            .update_expression("ADD credits :amt")
            .expression_attribute_values(":amt", n(entry.amount));
        u = match guard {
            // Never below zero: the debit applies only if the balance covers it. Nor once
            // the tenant is closed: a warm process's copy of the tenant (5 s) would let a
            // send or a campaign through just after the closing (`debit_refused` tells
            // the two apart).
            CreditGuard::Debit => u
                .condition_expression(
                    "attribute_exists(pk) AND credits >= :need AND #status <> :closed",
                )
                .expression_attribute_values(":need", n(-entry.amount))
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":closed", dyn_value(&TenantStatus::Closed)?),
            // Closed is final: no new money for a closed account.
            CreditGuard::TopUp => u
                .condition_expression("attribute_exists(pk) AND #status <> :closed")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":closed", dyn_value(&TenantStatus::Closed)?),
            // A refund gives back what was debited, closed or not.
            CreditGuard::Refund => u.condition_expression("attribute_exists(pk)"),
        };
        let u = u
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        Ok(TransactWriteItem::builder().update(u).build())
    }

    /// Moves a message to `to` if its status is one of `from` (and it has not expired): one
    /// conditional update.
    async fn move_status(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        to: MessageStatus,
        from: &[MessageStatus],
        change: &StatusChange,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError> {
        let Some(u) = self.status_update(tenant, id, to, from, change, at)? else {
            return Ok(Transition::Refused);
        };
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::message(tenant, id).attrs()))
            .update_expression(u.expression)
            .condition_expression(u.condition)
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .return_values(ReturnValue::AllNew);
        match req.send().await {
            Ok(out) => Ok(Transition::Applied(Box::new(from_item(
                out.attributes.unwrap_or_default(),
            )?))),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(Transition::Refused)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    /// The update that moves a message to `to` from one of `preds` (and not expired),
    /// applying `change`; `None` when no status may precede `to`.
    fn status_update(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        to: MessageStatus,
        preds: &[MessageStatus],
        change: &StatusChange,
        at: DateTime<Utc>,
    ) -> Result<Option<StatusUpdate>, StoreError> {
        if preds.is_empty() {
            return Ok(None);
        }
        let event = serde_dynamo::to_attribute_value(StatusEvent { status: to, at })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let placeholders: Vec<String> = (0..preds.len()).map(|i| format!(":p{i}")).collect();
        let mut set = vec![
            "#status = :to",
            "updated_at = :at",
            "events = list_append(events, :ev)",
        ];
        let mut names = HashMap::from([
            ("#status".to_owned(), "status".to_owned()),
            ("#ttl".to_owned(), TTL_ATTR.to_owned()),
        ]);
        let mut values: Item = HashMap::from([
            (":to".to_owned(), s(to.as_str())),
            (
                ":at".to_owned(),
                s(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            ),
            (":ev".to_owned(), AttributeValue::L(vec![event])),
            (":now".to_owned(), n(self.now_secs())),
        ]);
        let remove = index_move(tenant, id, to, &mut set, &mut values);
        for (p, st) in placeholders.iter().zip(preds) {
            values.insert(p.clone(), s(st.as_str()));
        }
        if let Some(w) = &change.wamid {
            set.push("wamid = :w");
            values.insert(":w".into(), s(w.clone()));
        }
        if let Some(c) = &change.claim {
            set.push("claim = :claim");
            values.insert(":claim".into(), s(c.clone()));
        }
        if change.quality_counted {
            set.push("quality_counted = :qc");
            values.insert(":qc".into(), AttributeValue::Bool(true));
        }
        if change.refunded {
            set.push("refunded = :refunded");
            values.insert(":refunded".into(), AttributeValue::Bool(true));
        }
        if let Some(e) = &change.error {
            set.push("#error = :e");
            let v = serde_dynamo::to_attribute_value(e)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            names.insert("#error".into(), "error".into());
            values.insert(":e".into(), v);
        }
        let mut expression = format!("SET {}", set.join(", "));
        expression.push_str(remove);
        // Sent, delivered or read: a retried try's error, or a failure Meta reported before
        // delivery proved otherwise, no longer describes it (`StatusChange::apply_to`).
        if change.error.is_none() && to.clears_error() {
            names.insert("#error".into(), "error".into());
            expression.push_str(if remove.is_empty() {
                " REMOVE #error"
            } else {
                ", #error"
            });
        }
        if change.count_attempt {
            expression.push_str(" ADD attempts :one");
            values.insert(":one".into(), n(1));
        }
        Ok(Some(StatusUpdate {
            expression,
            condition: format!(
                "#status IN ({}) AND (attribute_not_exists(#ttl) OR #ttl > :now)",
                placeholders.join(", ")
            ),
            names,
            values,
        }))
    }

    /// A message's status change and its refund (balance and ledger entry) in one
    /// transaction: `Refused` when the message is not in one of `preds` (nothing written),
    /// `NotFound` when the tenant is gone. Failures and cancels both pay back this way.
    #[allow(clippy::too_many_arguments)]
    async fn transition_with_refund(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        to: MessageStatus,
        preds: &[MessageStatus],
        change: &StatusChange,
        at: DateTime<Utc>,
        refund: &LedgerEntry,
    ) -> Result<Transition, StoreError> {
        let Some(u) = self.status_update(tenant, id, to, preds, change, at)? else {
            return Ok(Transition::Refused);
        };
        let status = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::message(tenant, id).attrs()))
            .update_expression(u.expression)
            .condition_expression(u.condition)
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        // [0] the status (conditional: it changes once), [1] the balance (the tenant
        // exists), [2] the refund entry: all or nothing.
        let items = vec![
            TransactWriteItem::builder().update(status).build(),
            self.credit_update(refund, CreditGuard::Refund)?,
            self.ledger_put(refund)?,
        ];
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => {}
            Err(e) if e.reason(0) == Some(&CancelReason::ConditionalCheckFailed) => {
                return Ok(Transition::Refused)
            }
            Err(e) if e.reason(1) == Some(&CancelReason::ConditionalCheckFailed) => {
                return Err(StoreError::NotFound)
            }
            Err(e) => return Err(e.into_store_error()),
        }
        // A transaction answers no attributes: read the record the change wrote, expired
        // or not (a message whose TTL passed in that instant is still the one written:
        // `Refused` would tell the caller nothing was, and a cancel would answer `409` for
        // the refund it just made). Deleted by TTL already (days after its expiry, in
        // practice never here): the move was written all the same, so it is an error for
        // the caller's read-back (`written_after_all`), not a refusal.
        match self.get_unfiltered(keys::message(tenant, id)).await? {
            Some(item) => Ok(Transition::Applied(Box::new(from_item(item)?))),
            None => Err(StoreError::Unavailable(
                "the refunded message could not be read back".into(),
            )),
        }
    }

    async fn add_credits(
        &self,
        entry: &LedgerEntry,
        guard: CreditGuard,
    ) -> Result<i64, StoreError> {
        let items = vec![self.credit_update(entry, guard)?, self.ledger_put(entry)?];
        // The tenant item is in every send's debit: a top-up or refund that meets one is
        // cancelled with nothing written, and goes again.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => self.balance_after(entry).await,
            Err(e) if e.reason(0) == Some(&CancelReason::ConditionalCheckFailed) => {
                Err(self.why_refused(&entry.tenant_id).await)
            }
            Err(e) => Err(e.into_store_error()),
        }
    }

    /// The balance after `entry` was committed, read (with the SDK's retries, then up to
    /// [`UNDO_ATTEMPTS`](crate::store_error::UNDO_ATTEMPTS) more): the credits were added
    /// whatever this answers, so a read that still fails says so at ERROR with the entry,
    /// for the operator who sees the request's `503` (a retry without an
    /// `Idempotency-Key` would credit again).
    pub(super) async fn balance_after(&self, entry: &LedgerEntry) -> Result<i64, StoreError> {
        let read = crate::store_error::undo(|| self.balance(&entry.tenant_id)).await;
        if let Err(e) = &read {
            tracing::error!(
                tenant_id = %entry.tenant_id,
                entry_id = %entry.id,
                amount = entry.amount,
                error = %e,
                "credits were added, but the balance could not be read after"
            );
        }
        read
    }

    /// Why a debit's condition ([`CreditGuard::Debit`]) refused it, read after the refusal
    /// (the 402 path only): the tenant is gone (`NotFound`), closed
    /// (`Conflict(`[`TENANT_CLOSED`](crate::ports::TENANT_CLOSED)`)`), or its balance is
    /// short.
    pub(super) async fn debit_refused(&self, id: &TenantId) -> StoreError {
        match self.get_tenant(id).await {
            Ok(None) => StoreError::NotFound,
            Ok(Some(t)) if t.status == TenantStatus::Closed => Self::tenant_closed(),
            Ok(Some(_)) => StoreError::InsufficientCredits,
            Err(e) => e,
        }
    }

    /// Why a write conditioned on the tenant existing and not being closed was refused.
    pub(super) async fn why_refused(&self, id: &TenantId) -> StoreError {
        match self.get_tenant(id).await {
            Ok(None) => StoreError::NotFound,
            Ok(Some(_)) => StoreError::Conflict("the tenant is closed".into()),
            Err(e) => e,
        }
    }

    /// The tenant, read (consistently) after a status write was refused on its condition,
    /// and whether that refused write is the one it holds: the write `write_id` named, to
    /// the status `to` and at `at`. The SDK sends a write again after a timeout or a 5xx;
    /// when the first try landed and only its answer was lost, the retry is refused by the
    /// very condition the first try met (the tenant is closed; its status time is no longer
    /// the one read), and the call is answered as applied. The id is the call's own, fresh
    /// each call: another call at the same time with the same reason is not taken for it.
    async fn after_refused_status_write(
        &self,
        id: &TenantId,
        to: &TenantStatus,
        at: DateTime<Utc>,
        write_id: &str,
    ) -> Result<Option<(Tenant, bool)>, StoreError> {
        let Some(item) = self.get(keys::tenant(id)).await? else {
            return Ok(None);
        };
        let written = item
            .get(STATUS_WRITE_ID)
            .and_then(|v| v.as_s().ok())
            .is_some_and(|w| w == write_id);
        let t = self.tenant_with_lanes(item).await?;
        let own = written && &t.status == to && t.status_changed_at == Some(at);
        Ok(Some((t, own)))
    }
}

impl DynamoStore {
    /// The onboarding's one transaction: the route claimed free (`over: None`) or taken
    /// over from a closed tenant that still holds it (see
    /// [`TenantStore::onboard_over_closed`]).
    async fn onboard_claiming(
        &self,
        tenant: &Tenant,
        display_phone_number: Option<&str>,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
        over: Option<&TenantId>,
    ) -> Result<(), StoreError> {
        // Never from itself (one transaction may not name the tenant item twice).
        if over == Some(&tenant.id) {
            return Err(StoreError::Conflict(
                "phone_number_id already belongs to a tenant".into(),
            ));
        }
        // No WABA index entry on the tenant item: every debit rewrites the tenant item, and
        // with an entry (the index projects ALL) each rewrite was an index write too. The
        // number's item carries the tenant's entry instead, written once here.
        let t = to_item(tenant, &keys::tenant(&tenant.id).pairs(), None)?;
        let mut route: Item = keys::phone_route(&tenant.phone_number_id).attrs();
        route.insert("tenant_id".into(), s(tenant.id.to_string()));
        let mut number = crate::ports::PhoneNumberRecord::default_of(tenant);
        number.display_phone_number = display_phone_number.map(str::to_owned);
        let number = self.number_item(&number)?;
        let mut items = vec![
            self.put(t, Some("attribute_not_exists(pk)"))?,
            self.route_put(route, over)?,
            self.put(number, Some("attribute_not_exists(pk)"))?,
        ];
        if let Some(closed) = over {
            items.push(self.tenant_closed_check(closed)?);
        }
        items.extend(self.api_key_puts(key)?);
        if let Some(entry) = initial {
            items.push(self.ledger_put(entry)?);
        }
        match self.transact(items).await {
            Ok(()) => Ok(()),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => Err(StoreError::Conflict(
                "phone_number_id already belongs to a tenant".into(),
            )),
            Err(e) => Err(e.into_store_error()),
        }
    }

    /// A number's route put: claimed only if no tenant has it (`over: None`), or taken
    /// over only while it still names `over`, a closed tenant (with
    /// [`Self::tenant_closed_check`] of it in the same transaction).
    pub(super) fn route_put(
        &self,
        route: Item,
        over: Option<&TenantId>,
    ) -> Result<TransactWriteItem, StoreError> {
        let Some(closed) = over else {
            return self.put(route, Some("attribute_not_exists(pk)"));
        };
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(route))
            .condition_expression("tenant_id = :old")
            .expression_attribute_values(":old", s(closed.as_str()))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("put: {e}")))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// A transaction's check that `tenant`'s item exists and is `closed` (closed is
    /// terminal: what a number's take-over from it rests on).
    pub(super) fn tenant_closed_check(
        &self,
        tenant: &TenantId,
    ) -> Result<TransactWriteItem, StoreError> {
        self.tenant_status_check(tenant, "#status = :closed")
    }
}

#[async_trait]
impl TenantStore for DynamoStore {
    async fn onboard(
        &self,
        tenant: &Tenant,
        display_phone_number: Option<&str>,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
    ) -> Result<(), StoreError> {
        self.onboard_claiming(tenant, display_phone_number, key, initial, None)
            .await
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
            .await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        // With its lanes (A80): one query, the credits the whole balance.
        self.tenant_and_lanes(id)
            .await?
            .map(lanes::TenantAndLanes::tenant)
            .transpose()
    }

    async fn tenant_by_phone_number_id(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<TenantId>, StoreError> {
        let item = self.get_may_lag(keys::phone_route(phone_number_id)).await?;
        Ok(item
            .as_ref()
            .and_then(|i| i.get("tenant_id"))
            .and_then(|v| v.as_s().ok())
            .map(|v| TenantId::from_trusted(v.clone())))
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get(keys::api_key_by_hash(key_hash))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn tenants_by_waba(&self, waba_id: &str) -> Result<Vec<TenantId>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI1)
            .key_condition_expression("gsi1pk = :w")
            .expression_attribute_values(":w", s(keys::waba_gsi1_pk(waba_id)))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| classify("dynamodb query", e))?;
            // Tenant items hold `id`, number items `tenant_id`.
            if let Some(id) = item
                .get("id")
                .or_else(|| item.get("tenant_id"))
                .and_then(|v| v.as_s().ok())
            {
                out.push(TenantId::from_trusted(id.clone()));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn set_ip_allowlist(&self, id: &TenantId, cidrs: &[String]) -> Result<(), StoreError> {
        let list = AttributeValue::L(cidrs.iter().map(|c| s(c.clone())).collect());
        // The tenant item: a send's debit in flight on it cancels this, which goes again.
        let res = update_retrying_conflicts(
            self.open_tenant_update(id, "SET ip_allowlist = :l")?
                .expression_attribute_values(":l", list),
        )
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(self.why_refused(id).await)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn set_meta_token_changed_at(
        &self,
        id: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<Tenant, StoreError> {
        // The tenant item: a send's debit in flight on it cancels this, which goes again.
        // (Closed is final: its token is being deleted by the close-out.)
        let res = update_retrying_conflicts(
            self.open_tenant_update(id, "SET meta_token_changed_at = :at")?
                .expression_attribute_values(":at", dyn_value(&at)?)
                .return_values(ReturnValue::AllNew),
        )
        .await;
        match res {
            Ok(out) => {
                self.tenant_with_lanes(out.attributes.unwrap_or_default())
                    .await
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(self.why_refused(id).await)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn set_request_limits(
        &self,
        id: &TenantId,
        limits: crate::domain::RequestLimits,
    ) -> Result<Tenant, StoreError> {
        let value = serde_dynamo::to_attribute_value(limits)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // The tenant item: a send's debit in flight on it cancels this, which goes again.
        let res = update_retrying_conflicts(
            self.open_tenant_update(id, "SET request_limits = :l")?
                .expression_attribute_values(":l", value)
                .return_values(ReturnValue::AllNew),
        )
        .await;
        match res {
            Ok(out) => {
                self.tenant_with_lanes(out.attributes.unwrap_or_default())
                    .await
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(self.why_refused(id).await)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn set_status(
        &self,
        id: &TenantId,
        to: TenantStatus,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Tenant, StoreError> {
        // A change of status moves its time; the same status again (a resume of an active
        // tenant, a second suspension) changes only the reason, so Meta's late word about
        // the account, judged by that time, is not taken for older than a change there was
        // not. Each a conditional write; closed is terminal (closing again changes nothing).
        // The change names itself (`status_write_id`), for the read after a refusal.
        let write_id = crate::domain::new_id();
        if to == TenantStatus::Closed {
            // No lane takes a debit from here on (A80): a lane's carries no status. Only an
            // open tenant's (no lane is made for a tenant that does not exist; a closed
            // one's were sealed by its closing).
            let open = self.get(keys::tenant(id)).await?.is_some_and(|t| {
                t.get("status")
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
                    != Some("closed")
            });
            if open {
                self.seal_lanes(id).await?;
            }
        }
        for _ in 0..3 {
            // Each write on the tenant item goes again when a send's debit in flight on it
            // cancels it (nothing written).
            let change = update_retrying_conflicts(
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(keys::tenant(id).attrs()))
                    .update_expression(
                        "SET #status = :to, status_reason = :r, status_changed_at = :at, \
                         status_write_id = :w",
                    )
                    .condition_expression(
                        "attribute_exists(pk) AND #status <> :closed AND #status <> :to",
                    )
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":to", dyn_value(&to)?)
                    .expression_attribute_values(":r", dyn_value(&reason)?)
                    .expression_attribute_values(":at", dyn_value(&at)?)
                    .expression_attribute_values(":w", s(write_id.clone()))
                    .expression_attribute_values(":closed", dyn_value(&TenantStatus::Closed)?)
                    .return_values(ReturnValue::AllNew),
            )
            .await;
            match change {
                Ok(out) => {
                    return self
                        .status_written(id, &to, out.attributes.unwrap_or_default())
                        .await
                }
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(classify("dynamodb update", e)),
            }
            if to == TenantStatus::Closed {
                break;
            }
            let same = update_retrying_conflicts(
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(keys::tenant(id).attrs()))
                    .update_expression("SET status_reason = :r")
                    .condition_expression("attribute_exists(pk) AND #status = :to")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":to", dyn_value(&to)?)
                    .expression_attribute_values(":r", dyn_value(&reason)?)
                    .return_values(ReturnValue::AllNew),
            )
            .await;
            match same {
                Ok(out) => {
                    return self
                        .status_written(id, &to, out.attributes.unwrap_or_default())
                        .await
                }
                // Changed between the two writes (or closed, or gone): once more.
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(classify("dynamodb update", e)),
            }
        }
        // Refused: closed (or no such tenant), nothing written by this call — unless it
        // is this call's own change, landed on a try whose answer was lost (a close: its
        // retry is refused as closed), answered as applied.
        match crate::store_error::undo(|| self.after_refused_status_write(id, &to, at, &write_id))
            .await?
        {
            Some((t, true)) => {
                if to == TenantStatus::Closed {
                    // The closing's own write, its answer lost: its lanes go back as well.
                    // (The balance read is unchanged by it: credits move between items.)
                    self.return_closed_lanes(id).await;
                }
                Ok(t)
            }
            Some(_) => Err(StoreError::Conflict("the tenant is closed".into())),
            None => Err(StoreError::NotFound),
        }
    }

    async fn suspend_if_unchanged(
        &self,
        id: &TenantId,
        reason: &str,
        at: DateTime<Utc>,
        seen: Option<DateTime<Utc>>,
    ) -> Result<Option<Tenant>, StoreError> {
        // Named (`status_write_id`), for the read after a refusal.
        let write_id = crate::domain::new_id();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::tenant(id).attrs()))
            .update_expression(
                "SET #status = :to, status_reason = :r, status_changed_at = :at, \
                 status_write_id = :w",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":to", dyn_value(&TenantStatus::Suspended)?)
            .expression_attribute_values(":r", dyn_value(&Some(reason))?)
            .expression_attribute_values(":at", dyn_value(&at)?)
            .expression_attribute_values(":w", s(write_id.clone()))
            .expression_attribute_values(":active", dyn_value(&TenantStatus::Active)?)
            .return_values(ReturnValue::AllNew);
        req = match seen {
            Some(seen) => req
                .condition_expression(
                    "attribute_exists(pk) AND #status = :active AND status_changed_at = :seen",
                )
                .expression_attribute_values(":seen", dyn_value(&seen)?),
            // Never changed: no time, or a null one.
            None => req
                .condition_expression(
                    "attribute_exists(pk) AND #status = :active AND \
                     (attribute_not_exists(status_changed_at) OR attribute_type(status_changed_at, :null))",
                )
                .expression_attribute_values(":null", AttributeValue::S("NULL".into())),
        };
        // The tenant item: a send's debit in flight on it cancels this, which goes again.
        match update_retrying_conflicts(req).await {
            Ok(out) => self
                .tenant_with_lanes(out.attributes.unwrap_or_default())
                .await
                .map(Some),
            // Changed since it was read (nothing written), unless the change is this very
            // write, landed on a try whose answer was lost: the retry is refused by the
            // status time the first try moved on.
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                // Read back as an undo is written (tried again while worth it): a read
                // failing here would leave a landed suspension unaudited for good (Meta's
                // redelivery finds it suspended by another write id).
                let found = crate::store_error::undo(|| {
                    self.after_refused_status_write(id, &TenantStatus::Suspended, at, &write_id)
                })
                .await?;
                Ok(found.and_then(|(t, own)| own.then_some(t)))
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }
}

/// What a change of a tenant's credits is conditioned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CreditGuard {
    /// A debit: the balance covers it.
    Debit,
    /// A top-up: the tenant is not closed.
    TopUp,
    /// A refund: the tenant exists.
    Refund,
}

pub(super) fn dyn_value<T: Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    serde_dynamo::to_attribute_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl DynamoStore {
    /// The two copies of a key: under its hash (authentication) and in its tenant's
    /// partition (listing, management by id).
    fn api_key_puts(&self, key: &ApiKeyRecord) -> Result<Vec<TransactWriteItem>, StoreError> {
        // A key made with an expiry expires (as items) its retention after it ends.
        let auth = to_item(
            key,
            &keys::api_key_by_hash(&key.key_hash).pairs(),
            key.ttl(),
        )?;
        let owned = to_item(
            key,
            &keys::api_key_of_tenant(&key.tenant_id, &key.id).pairs(),
            key.ttl(),
        )?;
        Ok(vec![
            self.put(auth, Some("attribute_not_exists(pk)"))?,
            self.put(owned, Some("attribute_not_exists(pk)"))?,
        ])
    }

    /// The same update on both copies of a key, under `condition`.
    fn api_key_updates(
        &self,
        key: &ApiKeyRecord,
        expr: &str,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        [
            keys::api_key_by_hash(&key.key_hash),
            keys::api_key_of_tenant(&key.tenant_id, &key.id),
        ]
        .into_iter()
        .map(|k| {
            let mut u = Update::builder()
                .table_name(&self.table)
                .set_key(Some(k.attrs()))
                .update_expression(expr)
                .condition_expression(condition);
            if expr.contains("#ttl") {
                u = u.expression_attribute_names("#ttl", TTL_ATTR);
            }
            for (k, v) in values {
                u = u.expression_attribute_values(*k, v.clone());
            }
            let u = u
                .build()
                .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
            Ok(TransactWriteItem::builder().update(u).build())
        })
        .collect()
    }
}

#[async_trait]
impl ApiKeyStore for DynamoStore {
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut items = vec![self.tenant_open_check(&key.tenant_id)?];
        items.extend(self.api_key_puts(key)?);
        // The tenant-open check names the tenant item, which every send's debit holds
        // in its transaction: a conflict with one wrote nothing, and goes again.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(()),
            Err(e) if Self::refused_as_closed(&e) => Err(Self::tenant_closed()),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => {
                Err(StoreError::Conflict("api key exists".into()))
            }
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.query_prefix(keys::tenant_pk(tenant), keys::API_KEY_PREFIX)
            .await
    }

    async fn list_api_keys_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<ApiKeyPage, StoreError> {
        let (keys, next_cursor) = self
            .query_tenant_page(
                tenant,
                keys::API_KEY_PREFIX,
                crate::ports::Order::NewestFirst,
                limit,
                cursor,
            )
            .await?;
        Ok(ApiKeyPage { keys, next_cursor })
    }

    async fn get_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get(keys::api_key_of_tenant(tenant, id))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let Some(mut key) = self.get_api_key(tenant, id).await? else {
            return Ok(None);
        };
        if key.revoked {
            return Ok(Some(key));
        }
        let mut revoked = key.clone();
        revoked.revoked = true;
        revoked.revoked_at = Some(at);
        // Ended now (or at its expiry, if that came first): both copies expire its
        // retention later.
        let ttl = revoked.ttl().unwrap_or(i64::MAX);
        let items = self.api_key_updates(
            &key,
            "SET revoked = :t, revoked_at = :at, #ttl = :ttl",
            // Only a key not revoked yet: two revokes at once (the console's and an API
            // call, or the close-out's) keep the first one's `revoked_at`, as one after
            // the other does.
            "attribute_exists(pk) AND revoked = :f",
            &[
                (":t", AttributeValue::Bool(true)),
                (":f", AttributeValue::Bool(false)),
                (":at", dyn_value(&Some(at))?),
                (":ttl", n(ttl)),
            ],
        )?;
        match self.transact(items).await {
            Ok(()) => {
                key = revoked;
                Ok(Some(key))
            }
            // Revoked meanwhile (answered as it is), or gone.
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => {
                Ok(self.get_api_key(tenant, id).await?.filter(|k| k.revoked))
            }
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn rotate_api_key(
        &self,
        tenant: &TenantId,
        old_id: &str,
        new: &ApiKeyRecord,
        old_expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let old = self
            .get_api_key(tenant, old_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut items = vec![self.tenant_open_check(tenant)?];
        items.extend(self.api_key_puts(new)?);
        // Ends at the grace's end: both copies expire its retention later.
        let mut ending = old.clone();
        ending.expires_at = Some(old_expires_at);
        let ttl = ending.ttl().unwrap_or(i64::MAX);
        // Only a live, never-rotated key may be rotated: two concurrent rotations
        // cannot both succeed.
        items.extend(self.api_key_updates(
            &old,
            "SET expires_at = :e, replaced_by = :n, #ttl = :ttl",
            "attribute_exists(pk) AND revoked = :f AND (attribute_not_exists(replaced_by) \
             OR attribute_type(replaced_by, :null))",
            &[
                (":e", dyn_value(&Some(old_expires_at))?),
                (":n", s(new.id.clone())),
                (":f", AttributeValue::Bool(false)),
                (":null", s("NULL")),
                (":ttl", n(ttl)),
            ],
        )?);
        // The tenant-open check names the tenant item, which every send's debit holds
        // in its transaction: a conflict with one wrote nothing, and goes again.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(()),
            Err(e) if Self::refused_as_closed(&e) => Err(Self::tenant_closed()),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => Err(StoreError::Conflict(
                "the key was already rotated (a key is rotated once), or was revoked at that moment".into(),
            )),
            Err(e) => Err(e.into_store_error()),
        }
    }
}

#[async_trait]
impl Ledger for DynamoStore {
    async fn top_up(&self, entry: &LedgerEntry) -> Result<i64, StoreError> {
        self.add_credits(entry, CreditGuard::TopUp).await
    }

    async fn top_up_once(
        &self,
        entry: &LedgerEntry,
        key: &RequestKeyRecord,
    ) -> Result<TopUpOnce, StoreError> {
        self.top_up_with_key(entry, key).await
    }

    async fn refund(&self, entry: &LedgerEntry) -> Result<i64, StoreError> {
        self.add_credits(entry, CreditGuard::Refund).await
    }

    async fn entries(&self, tenant: &TenantId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.query_prefix(keys::tenant_pk(tenant), keys::LEDGER_PREFIX)
            .await
    }

    async fn entries_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<LedgerEntry>, Option<String>), StoreError> {
        let (lo, hi) = keys::ledger_range_after(after);
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(keys::tenant_pk(tenant)))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| classify("dynamodb query", e))?;
        let next = out
            .last_evaluated_key()
            .and_then(|k| k.get("sk"))
            .and_then(|v| v.as_s().ok())
            .and_then(|sk| keys::ledger_id_of(sk))
            .map(str::to_owned);
        let mut page = Vec::new();
        for item in out.items.unwrap_or_default() {
            if self.live(&item) {
                page.push(from_item(item)?);
            }
        }
        Ok((page, next))
    }
}

#[async_trait]
impl MessageStore for DynamoStore {
    async fn insert_with_debit(
        &self,
        record: &MessageRecord,
        debit: &LedgerEntry,
    ) -> Result<(), StoreError> {
        let m = to_item(
            record,
            &keys::message_pairs(&record.tenant_id, record.status, &record.id),
            record.expires_at,
        )?;
        // From the message's credit lane (A80), or where `next_debit` says when it is short.
        let mut from = self.first_debit(debit, &record.id);
        let mut round = 0;
        loop {
            let items = vec![
                self.debit_item(debit, from)?,
                self.ledger_put(debit)?,
                self.put(m.clone(), Some("attribute_not_exists(pk)"))?,
            ];
            match self.transact_retrying_conflicts(items).await {
                Ok(()) => return Ok(()),
                Err(e) if e.reason(0) == Some(&CancelReason::ConditionalCheckFailed) => {
                    from = self.next_debit(debit, from, round).await?;
                    round += 1;
                }
                Err(e) if e.any(CancelReason::ConditionalCheckFailed) => {
                    return Err(StoreError::Conflict("message exists".into()))
                }
                Err(e) => return Err(e.into_store_error()),
            }
        }
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.get(keys::message(tenant, id))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn peek_message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<std::sync::Arc<MessageRecord>>, StoreError> {
        Ok(self
            .get_eventually(keys::message(tenant, id))
            .await?
            .map(from_item)
            .transpose()?
            .map(std::sync::Arc::new))
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        q: &MessageQuery,
    ) -> Result<MessagePage, StoreError> {
        let (lo, hi) = keys::message_range(q.since, q.until);
        let limit = q.limit.clamp(1, 100);
        let after = q
            .cursor
            .as_deref()
            .map(|c| message_cursor(c, tenant))
            .transpose()?
            .map(|id| keys::message(tenant, &id).sk);
        // Nothing lies in an empty range, or below a cursor at or under its low end
        // (DynamoDB refuses a BETWEEN whose bounds are the wrong way round).
        if lo > hi || after.as_ref().is_some_and(|a| *a <= lo) {
            return Ok(MessagePage {
                messages: Vec::new(),
                next_cursor: None,
            });
        }
        let mut req = self
            .client
            .query()
            .table_name(&self.table)
            .scan_index_forward(false)
            // One past the page: a next page only when there is one (a full last page was
            // followed by an empty one, where the memory adapter ends).
            .limit((limit + 1) as i32)
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(self.now_secs()))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi.clone()));
        let live = "(attribute_not_exists(#ttl) OR #ttl > :now)";
        let mut filtered = false;
        // The start key for this query: the table's key, and the index's where the query
        // reads the status index (whose sort key is the message's). A cursor above the
        // range's top starts at the top.
        let mut start: Option<Item> = after.filter(|a| *a <= hi).map(|sk| {
            let mut key = Item::from([
                (keys::PK.to_owned(), s(keys::tenant_pk(tenant))),
                (keys::SK.to_owned(), s(sk.clone())),
            ]);
            if let Some(st) = q.status.filter(|st| keys::message_status_indexed(*st)) {
                key.insert(
                    keys::GSI1PK.to_owned(),
                    s(keys::message_status_gsi1_pk(tenant, st)),
                );
                key.insert(keys::GSI1SK.to_owned(), s(sk));
            }
            key
        });
        req = match q.status {
            Some(st) if keys::message_status_indexed(st) => req
                .index_name(GSI1)
                .filter_expression(live)
                .key_condition_expression("gsi1pk = :pk AND gsi1sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(keys::message_status_gsi1_pk(tenant, st))),
            // A status without index entries (keys.rs): the tenant's messages, filtered.
            Some(st) => {
                filtered = true;
                req.filter_expression(format!("{live} AND #status = :st"))
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":st", s(st.as_str()))
                    .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                    .expression_attribute_values(":pk", s(keys::tenant_pk(tenant)))
            }
            None => req
                .filter_expression(live)
                .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(keys::tenant_pk(tenant))),
        };
        // A filtered listing reads on through pages of `limit` + 1 messages until it has
        // `limit` matches and knows whether one more follows, at most `FILTERED_PAGES` pages a
        // request (the cursor goes on).
        let pages = if filtered { FILTERED_PAGES } else { 1 };
        let mut messages = Vec::new();
        let mut next_cursor = None;
        for _ in 0..pages {
            let out = req
                .clone()
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("dynamodb query", e))?;
            let mut items = out.items.unwrap_or_default().into_iter().peekable();
            // Only as many as the page has room for: one taken past it would be skipped,
            // since the cursor goes on after the last one returned.
            while messages.len() < limit {
                let Some(item) = items.next() else { break };
                let key: Item = [keys::PK, keys::SK]
                    .iter()
                    .filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                    .collect();
                messages.push(from_item::<MessageRecord>(item)?);
                next_cursor = Some(key);
            }
            let more_here = items.peek().is_some();
            match out.last_evaluated_key {
                // This page's matches filled the page: go on after the last one returned
                // (a key on the table, which a filtered listing queries).
                _ if more_here => break,
                Some(last) if messages.len() < limit => {
                    next_cursor = Some(last.clone());
                    start = Some(last);
                }
                // Full, with more to read: read on (within the pages) for one more match,
                // so that a full last page ends the list; the cursor stays the last one
                // returned meanwhile.
                Some(last) => start = Some(last),
                None => {
                    next_cursor = None;
                    break;
                }
            }
        }
        Ok(MessagePage {
            messages,
            next_cursor: next_cursor.as_ref().and_then(encode_cursor),
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
        self.move_status(tenant, id, to, to.allowed_predecessors(), change, at)
            .await
    }

    async fn record_overtaken(
        &self,
        seen: &MessageRecord,
        event: StatusEvent,
        priced: Option<&crate::ports::PricedMessage<'_>>,
    ) -> Result<bool, StoreError> {
        self.overtaken_event(seen, event, priced).await
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
        if !REFUNDABLE.contains(&from) {
            return Ok(Transition::Refused);
        }
        let Some(refund) = refund else {
            return self
                .move_status(tenant, id, MessageStatus::Failed, &[from], change, at)
                .await;
        };
        let change = StatusChange {
            refunded: true,
            ..change.clone()
        };
        self.transition_with_refund(
            tenant,
            id,
            MessageStatus::Failed,
            &[from],
            &change,
            at,
            refund,
        )
        .await
    }

    async fn touch_unclaimed(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        seen: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let stamp = |t: DateTime<Utc>| s(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::message(tenant, id).attrs()))
            .update_expression("SET updated_at = :at")
            .condition_expression(
                "#status = :acc AND attempts = :zero AND updated_at = :seen \
                 AND (attribute_not_exists(#ttl) OR #ttl > :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":acc", s(MessageStatus::Accepted.as_str()))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":seen", stamp(seen))
            .expression_attribute_values(":at", stamp(at))
            .expression_attribute_values(":now", n(self.now_secs()))
            .send()
            .await;
        super::written("dynamodb update", res)
    }

    async fn release_for_retry(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        error: &MessageError,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError> {
        let e = serde_dynamo::to_attribute_value(error)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::message(tenant, id).attrs()))
            // `accepted` has no status index entry (keys.rs).
            .update_expression(
                "SET #status = :acc, #error = :e, updated_at = :at REMOVE gsi1pk, gsi1sk",
            )
            // Only this claim (`expire_sending`'s condition); an expired message cannot be
            // revived (as in `transition` and in memory).
            .condition_expression(
                "#status = :sending AND updated_at = :claimed \
                 AND (attribute_not_exists(#ttl) OR #ttl > :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(self.now_secs()))
            .expression_attribute_values(":acc", s(MessageStatus::Accepted.as_str()))
            .expression_attribute_values(":sending", s(MessageStatus::Sending.as_str()))
            .expression_attribute_values(":e", e)
            .expression_attribute_values(
                ":at",
                s(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            )
            .expression_attribute_values(
                ":claimed",
                s(claimed_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            )
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Transition::Applied(Box::new(from_item(
                out.attributes.unwrap_or_default(),
            )?))),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(Transition::Refused)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
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
        let to = MessageStatus::Cancelled;
        let from: Vec<MessageStatus> = from.iter().copied().filter(|f| to.may_follow(*f)).collect();
        let change = StatusChange {
            error: Some(error.clone()),
            ..Default::default()
        };
        self.transition_with_refund(tenant, id, to, &from, &change, at, refund)
            .await
    }

    async fn index_wamid(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        wamid: &str,
        expires_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        // An update, not a put: a status kept before the wamid was known left its mark
        // on the item (`callbacks::PENDING_MARK`), and the mark stays. The item as it was
        // (free: no read units) tells whether one was kept; an SDK retry of a write whose
        // answer was lost, or the caller's second try, sees the mark again (a put would
        // have answered its own first write, unmarked, and the kept status was lost).
        let up = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::wamid_index(wamid).attrs()))
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":t", s(tenant.to_string()))
            .expression_attribute_values(":m", s(id.to_string()))
            .return_values(ReturnValue::AllOld);
        // The index lives as long as its message (a mark alone had the kept status's).
        let up = match expires_at {
            Some(t) => up
                .update_expression("SET tenant_id = :t, message_id = :m, #ttl = :exp")
                .expression_attribute_values(":exp", n(t)),
            None => up.update_expression("SET tenant_id = :t, message_id = :m REMOVE #ttl"),
        };
        let out = up
            .send()
            .await
            .map_err(|e| classify("dynamodb update", e))?;
        Ok(out
            .attributes()
            .is_some_and(|old| old.contains_key(callbacks::PENDING_MARK)))
    }

    async fn set_wamid(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        wamid: &str,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let _ = self.index_wamid(tenant, id, wamid, expires_at).await?;
        // The wamid on the message itself; a no-op if the message is gone.
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::message(tenant, id).attrs()))
            .update_expression("SET wamid = :w")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":w", s(wamid))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn message_by_wamid(
        &self,
        wamid: &str,
    ) -> Result<Option<(TenantId, MessageId)>, StoreError> {
        let Some(item) = self.get(keys::wamid_index(wamid)).await? else {
            return Ok(None);
        };
        let field = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        match (field("tenant_id"), field("message_id")) {
            (Some(t), Some(m)) => Ok(Some((
                TenantId::from_trusted(t),
                MessageId::from_trusted(m),
            ))),
            // Only the mark of a status kept before the wamid is known: no message yet.
            (None, None) if item.contains_key(callbacks::PENDING_MARK) => Ok(None),
            _ => Err(StoreError::Corrupt("wamid index item".into())),
        }
    }
}

/// Queries one page of `GET /v1/audit` reads at most, of 100 events each when filtered:
/// 1,000 events (about 65 read units), so a sparse filter's page is found in one request
/// over any recent stretch, and no request costs more than that.
const AUDIT_LIST_READS: usize = 10;

#[async_trait]
impl AuditLog for DynamoStore {
    async fn head(&self, chain: &str) -> Result<Option<AuditHead>, StoreError> {
        match self.get(keys::audit_head(chain)).await? {
            Some(item) => audit_head_of(&item).map(Some),
            None => Ok(None),
        }
    }

    async fn tip(&self, chain: &str) -> Result<(Option<AuditHead>, bool), StoreError> {
        // `HEAD` sorts after every event and before every parked event: the first two
        // items from it are the head (if any) and the oldest parked event (if any).
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND sk >= :from")
            .expression_attribute_values(":pk", s(keys::audit_pk(chain)))
            .expression_attribute_values(":from", s(keys::audit_tip_from()))
            .limit(2)
            .send()
            .await
            .map_err(|e| classify("dynamodb query", e))?;
        let (mut head, mut parked) = (None, false);
        for item in out.items() {
            let sk = item.get(keys::SK).and_then(|v| v.as_s().ok());
            if !self.live(item) {
                continue;
            }
            if sk == Some(&keys::audit_head(chain).sk) {
                head = Some(audit_head_of(item)?);
            } else {
                parked = true;
            }
        }
        Ok((head, parked))
    }

    async fn append(&self, link: &AuditLink<'_>) -> Result<(), StoreError> {
        let event = link.event;
        let mut update = audit_head_update(&link.head());
        // The head moves only from the link this event was computed against.
        let condition = match link.expected {
            None => "attribute_not_exists(pk)".to_owned(),
            Some(h) => {
                update.values.insert(":old".into(), n(h.seq as i64));
                format!("seq = :old{}", update.absent_ttl)
            }
        };
        let head = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::audit_head(&event.chain).attrs()))
            .set_expression_attribute_names(Some(update.names_with(&condition)))
            .update_expression(update.expression)
            .set_expression_attribute_values(Some(update.values))
            .condition_expression(condition)
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        let mut items = vec![
            self.put(audit_event_item(event)?, Some("attribute_not_exists(pk)"))?,
            TransactWriteItem::builder().update(head).build(),
        ];
        if let Some(id) = link.parked {
            // Linked in exactly once: only while its outbox item still exists.
            let delete = aws_sdk_dynamodb::types::Delete::builder()
                .table_name(&self.table)
                .set_key(Some(keys::audit_parked(&event.chain, id).attrs()))
                .condition_expression("attribute_exists(pk)")
                .build()
                .map_err(|e| StoreError::Corrupt(format!("delete: {e}")))?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        match self.transact(items).await {
            Ok(()) => Ok(()),
            Err(e)
                if e.any(CancelReason::ConditionalCheckFailed)
                    || e.any(CancelReason::TransactionConflict) =>
            {
                Err(StoreError::Conflict("audit chain moved".into()))
            }
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn put_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(audit_event_item(event)?))
            // Or this very event (its id is unique): the SDK retrying a write whose first
            // answer was lost must not be told another append took the place, or the
            // caller would append the event a second time after "theirs".
            .condition_expression("attribute_not_exists(pk) OR #id = :id")
            .expression_attribute_names("#id", "id")
            .expression_attribute_values(":id", s(event.id.clone()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(StoreError::Conflict("audit event exists".into()))
            }
            Err(e) => Err(classify("dynamodb put", e)),
        }
    }

    async fn advance_head(
        &self,
        chain: &str,
        from: Option<u64>,
        to: &AuditHead,
    ) -> Result<(), StoreError> {
        let mut update = audit_head_update(to);
        // From the head the event was computed against, or a repeat of this very move.
        let condition = match from {
            None => "attribute_not_exists(pk) OR (seq = :seq AND #hash = :hash)".to_owned(),
            Some(old) => {
                update.values.insert(":old".into(), n(old as i64));
                format!(
                    "(seq = :old{}) OR (seq = :seq AND #hash = :hash)",
                    update.absent_ttl
                )
            }
        };
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::audit_head(chain).attrs()))
            .set_expression_attribute_names(Some(update.names_with(&condition)))
            .update_expression(update.expression)
            .set_expression_attribute_values(Some(update.values))
            .condition_expression(condition)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(StoreError::Conflict("audit chain moved".into()))
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn event(&self, chain: &str, seq: u64) -> Result<Option<AuditEvent>, StoreError> {
        self.get(keys::audit_event(chain, seq))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn park(&self, event: &ParkedAudit) -> Result<(), StoreError> {
        // With its entry in the sparse index of parked events (the same item, so the
        // index never names a chain without a parked event, nor misses one).
        let item = to_item(
            event,
            &keys::audit_parked(&event.chain, &event.id)
                .with_gsi1(keys::audit_parked_gsi1(&event.chain, &event.id)),
            event.expires_at,
        )?;
        self.put_unconditional(item).await
    }

    async fn parked(&self, chain: &str, limit: usize) -> Result<Vec<ParkedAudit>, StoreError> {
        self.query_prefix_at_most(keys::audit_pk(chain), keys::PARKED_PREFIX, limit)
            .await
    }

    async fn parked_chains(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // A page of the index at a time; past a chain's first live entry, the next query
        // starts after all of that chain's entries (a chain with many parked events costs
        // one page, not all of them).
        const PAGE: i32 = 100;
        let mut out: Vec<String> = Vec::new();
        let mut from = after.map(keys::audit_parked_gsi1_after_chain);
        while out.len() < limit {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .expression_attribute_values(":p", s(keys::audit_parked_gsi1_pk()))
                .limit(PAGE);
            q = match &from {
                Some(f) => q
                    .key_condition_expression("gsi1pk = :p AND gsi1sk > :from")
                    .expression_attribute_values(":from", s(f.clone())),
                None => q.key_condition_expression("gsi1pk = :p"),
            };
            let page = q.send().await.map_err(|e| classify("dynamodb query", e))?;
            let items = page.items();
            let mut last_sk = None;
            for item in items {
                let Some(sk) = item.get(keys::GSI1SK).and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                last_sk = Some(sk.clone());
                let Some(chain) = keys::audit_parked_chain_of(sk) else {
                    continue;
                };
                if !self.live(item) || out.last().is_some_and(|c| c == chain) {
                    continue;
                }
                out.push(chain.to_owned());
                if out.len() >= limit {
                    break;
                }
            }
            if items.len() < PAGE as usize || page.last_evaluated_key().is_none() {
                break;
            }
            // Skip the rest of the newest chain found (its first live entry is enough);
            // a chain whose entries so far were all expired continues where the page ended.
            from = match (out.last(), last_sk) {
                (Some(c), Some(sk)) if keys::audit_parked_chain_of(&sk) == Some(c.as_str()) => {
                    Some(keys::audit_parked_gsi1_after_chain(c))
                }
                (_, Some(sk)) => Some(sk),
                (_, None) => break,
            };
        }
        Ok(out)
    }

    async fn put_intent(&self, intent: &ParkedAudit) -> Result<(), StoreError> {
        // No index entry: its own key is the sweep's time order (one write unit, not two).
        let item = to_item(
            intent,
            &keys::audit_intent(&intent.id).pairs(),
            intent.expires_at,
        )?;
        self.put_unconditional(item).await
    }

    async fn delete_intent(&self, id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::audit_intent(id).attrs()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("dynamodb delete", e))
    }

    async fn stale_intents(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StaleIntent>, StoreError> {
        let Some((lo, hi)) =
            keys::audit_intents_before(before.timestamp_millis().max(0) as u64, after)
        else {
            return Ok(Vec::new());
        };
        // Each shard's oldest `limit` (its range, one small query when it has none), at
        // once; merged, the oldest `limit` of them are the oldest `limit` of all.
        let shards = futures::future::try_join_all(
            (0..keys::AUDIT_INTENT_SHARDS)
                .map(|shard| self.stale_intents_of_shard(shard, &lo, &hi, limit)),
        )
        .await?;
        let mut out: Vec<StaleIntent> = shards.into_iter().flatten().collect();
        out.sort_by(|a, b| a.id().cmp(b.id()));
        out.truncate(limit);
        Ok(out)
    }

    async fn promote_intent(&self, id: &str, parked: &ParkedAudit) -> Result<(), StoreError> {
        let delete = aws_sdk_dynamodb::types::Delete::builder()
            .table_name(&self.table)
            .set_key(Some(keys::audit_intent(id).attrs()))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(|e| StoreError::Corrupt(format!("delete: {e}")))?;
        let item = to_item(
            parked,
            &keys::audit_parked(&parked.chain, &parked.id)
                .with_gsi1(keys::audit_parked_gsi1(&parked.chain, &parked.id)),
            parked.expires_at,
        )?;
        let items = vec![
            TransactWriteItem::builder().delete(delete).build(),
            self.put(item, None)?,
        ];
        match self.transact(items).await {
            Ok(()) => Ok(()),
            Err(e)
                if e.any(CancelReason::ConditionalCheckFailed)
                    || e.any(CancelReason::TransactionConflict) =>
            {
                Err(StoreError::Conflict("audit intent gone".into()))
            }
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn list(
        &self,
        chain: &str,
        q: &AuditQuery,
    ) -> Result<(Vec<AuditEvent>, Option<u64>), StoreError> {
        let (lo, hi) = keys::audit_event_range(None, q.before_seq);
        let want = q.limit.clamp(1, 100);
        let filtered = q.since.is_some() || q.until.is_some() || q.action.is_some();
        let mut filters = vec!["(attribute_not_exists(#ttl) OR #ttl > :now)".to_owned()];
        // DynamoDB's `Limit` counts the items read before the filter: a filtered page reads
        // 100 at a time, and reads on (below) until it has `want` events.
        let mut req = self
            .client
            .query()
            .table_name(&self.table)
            .scan_index_forward(false)
            .limit(if filtered { 100 } else { want + 1 } as i32)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(keys::audit_pk(chain)))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi))
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(self.now_secs()));
        if q.before_seq == Some(0) {
            return Ok((Vec::new(), None));
        }
        if let Some(t) = q.since {
            filters.push("at_ms >= :since".into());
            req = req.expression_attribute_values(":since", n(t.timestamp_millis()));
        }
        if let Some(t) = q.until {
            filters.push("at_ms < :until".into());
            req = req.expression_attribute_values(":until", n(t.timestamp_millis()));
        }
        if let Some(a) = &q.action {
            filters.push("#action = :action".into());
            req = req
                .expression_attribute_names("#action", "action")
                .expression_attribute_values(":action", s(a.clone()));
        }
        let req = req.filter_expression(filters.join(" AND "));
        // A sparse filter (one action among thousands) read a window of `limit` events a
        // page and answered empty pages before the first match: pages of up to
        // `AUDIT_LIST_READS` queries (1,000 events) are read now, as the memory adapter's
        // filter reads every event, until `want` events are found.
        let mut events: Vec<AuditEvent> = Vec::new();
        let mut start = None;
        for _ in 0..AUDIT_LIST_READS {
            let out = req
                .clone()
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("dynamodb query", e))?;
            for item in out.items() {
                events.push(from_item(item.clone())?);
            }
            if events.len() > want {
                // One more than the page was found: the page's last is the cursor.
                events.truncate(want);
                let next = events.last().map(|e| e.seq);
                return Ok((events, next));
            }
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok((events, None)),
            }
        }
        // The reads' budget spent: the cursor is the page's last event when it is full (a
        // full last page then has a cursor to an empty one), else the last key read, even
        // if the filter dropped its event.
        let next = if events.len() == want {
            events.last().map(|e| e.seq)
        } else {
            start
                .as_ref()
                .and_then(|k| k.get("sk"))
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| keys::audit_seq_of(sk))
        };
        Ok((events, next))
    }

    async fn ascending(
        &self,
        chain: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let (lo, hi) = keys::audit_event_range(after_seq, None);
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(keys::audit_pk(chain)))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| classify("dynamodb query", e))?;
            if self.live(&item) {
                out.push(from_item(item)?);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl QualityStats for DynamoStore {
    async fn bump_by(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        counter: QualityCounter,
        by: u64,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let by = i64::try_from(by).map_err(|_| StoreError::Corrupt("count too large".into()))?;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::quality_counter(tenant, day).attrs()))
            .expression_attribute_names("#c", counter.attribute())
            .expression_attribute_values(":one", n(by));
        req = match expires_at {
            Some(t) => req
                .update_expression("ADD #c :one SET #ttl = :ttl")
                .expression_attribute_names("#ttl", TTL_ATTR)
                .expression_attribute_values(":ttl", n(t)),
            None => req.update_expression("ADD #c :one"),
        };
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| classify("dynamodb update", e))
    }

    async fn take_back(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        counter: QualityCounter,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::quality_counter(tenant, day).attrs()))
            .update_expression("ADD #c :minus")
            .condition_expression("#c > :zero")
            .expression_attribute_names("#c", counter.attribute())
            .expression_attribute_values(":minus", n(-1))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        crate::adapters::aws::written("dynamodb update", res).map(|_| ())
    }

    async fn totals(
        &self,
        tenant: &TenantId,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<QualityCounts, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(keys::tenant_pk(tenant)))
            .expression_attribute_values(":lo", s(keys::quality_counter(tenant, from).sk))
            .expression_attribute_values(":hi", s(keys::quality_counter(tenant, to).sk))
            .send()
            .await
            .map_err(|e| classify("dynamodb query", e))?;
        let num = |item: &Item, k: &str| match item.get(k) {
            Some(AttributeValue::N(v)) => v.parse::<u64>().unwrap_or(0),
            _ => 0,
        };
        let mut t = QualityCounts::default();
        for item in out.items().iter().filter(|i| self.live(i)) {
            t.sent += num(item, "sent");
            t.opt_outs += num(item, "opt_outs");
            t.undeliverable += num(item, "undeliverable");
        }
        Ok(t)
    }
}
