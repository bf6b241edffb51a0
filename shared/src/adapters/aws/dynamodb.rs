//! Every store port on one DynamoDB table. Key schema and access patterns:
//! docs/data-model.md. Invariants are conditional writes or transactions.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, Put, ReturnValue, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::unavailable;
use crate::domain::{MessageError, MessageId, MessageRecord, MessageStatus, StatusEvent, TenantId};
use crate::error::StoreError;
use crate::ports::{
    ApiKeyRecord, ApiKeyStore, AuditEvent, AuditHead, AuditLog, AuditQuery, Clock, ExpiredItems,
    Ledger, LedgerEntry, MessagePage, MessageQuery, MessageStore, QualityCounter, QualityCounts,
    QualityStats, StatusChange, Tenant, TenantStatus, TenantStore, Transition,
};

mod broadcasts;
mod callbacks;
#[cfg(test)]
mod cursor_props;
mod idempotency;
mod optouts;
mod retention;
mod throttle;

pub(super) type Item = HashMap<String, AttributeValue>;

pub const TTL_ATTR: &str = "ttl";
pub const GSI1: &str = "gsi1";

pub struct DynamoStore {
    pub(super) client: Client,
    pub(super) table: String,
    clock: Arc<dyn Clock>,
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub(super) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn tenant_pk(t: &TenantId) -> String {
    format!("TENANT#{t}")
}
pub(super) fn msg_sk(id: &MessageId) -> String {
    format!("MSG#{id}")
}
pub(super) fn status_gsi(t: &TenantId, st: MessageStatus) -> String {
    format!("TENANT#{t}#STATUS#{}", st.as_str())
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

fn encode_cursor(key: &Item) -> Option<String> {
    let flat: HashMap<&str, &str> = key
        .iter()
        .filter_map(|(k, v)| v.as_s().ok().map(|s| (k.as_str(), s.as_str())))
        .collect();
    let json = serde_json::to_vec(&flat).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
}

fn decode_cursor(cursor: &str, tenant: &TenantId) -> Result<Item, StoreError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::InvalidCursor)?;
    let flat: HashMap<String, String> =
        serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)?;
    // A cursor may only continue inside the caller's own partition.
    let prefix = tenant_pk(tenant);
    let ok = flat
        .iter()
        .all(|(k, v)| !(k == "pk" || k == "gsi1pk") || v.starts_with(&prefix));
    if !ok || flat.len() > 4 {
        return Err(StoreError::InvalidCursor);
    }
    Ok(flat.into_iter().map(|(k, v)| (k, s(v))).collect())
}

fn ulid_bound(t: DateTime<Utc>, high: bool) -> String {
    let ms = t.timestamp_millis().max(0) as u64;
    let u = if high {
        ulid::Ulid::from_parts(ms.saturating_sub(1), (1u128 << 80) - 1)
    } else {
        ulid::Ulid::from_parts(ms, 0)
    };
    format!("MSG#{u}")
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            table: table.into(),
            clock,
        }
    }

    pub(super) fn now_secs(&self) -> i64 {
        self.clock.now().timestamp()
    }

    pub(super) fn live(&self, item: &Item) -> bool {
        ttl_of(item).is_none_or(|t| t > self.now_secs())
    }

    pub(super) async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("dynamodb get", e))?;
        Ok(out.item.filter(|i| self.live(i)))
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

    /// `transact`, tried again when concurrent transactions on the same item (usually the
    /// tenant's balance) cancelled it with `TransactionConflict`: nothing was written then.
    /// Every live item of one partition whose sort key starts with `prefix` (all pages,
    /// consistent), deserialised.
    pub(super) async fn query_prefix<T: DeserializeOwned>(
        &self,
        pk: String,
        prefix: &str,
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
            let item = item.map_err(|e| unavailable("dynamodb query", e))?;
            if self.live(&item) {
                out.push(from_item(item)?);
            }
        }
        Ok(out)
    }

    pub(super) async fn transact_retrying_conflicts(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<(), Vec<String>> {
        let mut result = self.transact(items.clone()).await;
        for attempt in 0..6u64 {
            match &result {
                Err(r) if r.iter().any(|c| c == "TransactionConflict") => {
                    let jitter = rand::random::<u64>() % 20;
                    tokio::time::sleep(std::time::Duration::from_millis(
                        10 * (attempt + 1) + jitter,
                    ))
                    .await;
                    result = self.transact(items.clone()).await;
                }
                _ => break,
            }
        }
        result
    }

    pub(super) async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<(), Vec<String>> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) => match e.err() {
                TransactWriteItemsError::TransactionCanceledException(c) => Err(c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None").to_owned())
                    .collect()),
                other => Err(vec![format!(
                    "error:{}",
                    unavailable("dynamodb transact", other)
                )]),
            },
            Err(e) => Err(vec![format!(
                "error:{}",
                unavailable("dynamodb transact", e)
            )]),
        }
    }

    async fn balance(&self, tenant: &TenantId) -> Result<i64, StoreError> {
        let t: Tenant = from_item(
            self.get(tenant_pk(tenant), "TENANT")
                .await?
                .ok_or(StoreError::NotFound)?,
        )?;
        Ok(t.credits)
    }

    pub(super) fn ledger_put(&self, entry: &LedgerEntry) -> Result<TransactWriteItem, StoreError> {
        let item = to_item(
            entry,
            &[
                ("pk", tenant_pk(&entry.tenant_id)),
                ("sk", format!("LEDGER#{}", entry.id)),
            ],
            entry.expires_at,
        )?;
        self.put(item, Some("attribute_not_exists(pk)"))
    }

    pub(super) fn credit_update(
        &self,
        entry: &LedgerEntry,
        guard: bool,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut u = Update::builder()
            .table_name(&self.table)
            .key("pk", s(tenant_pk(&entry.tenant_id)))
            .key("sk", s("TENANT"))
            .update_expression("ADD credits :amt")
            .expression_attribute_values(":amt", n(entry.amount));
        u = if guard {
            // Never below zero: the debit applies only if the balance covers it.
            u.condition_expression("attribute_exists(pk) AND credits >= :need")
                .expression_attribute_values(":need", n(-entry.amount))
        } else {
            u.condition_expression("attribute_exists(pk)")
        };
        let u = u
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        Ok(TransactWriteItem::builder().update(u).build())
    }

    async fn add_credits(&self, entry: &LedgerEntry) -> Result<i64, StoreError> {
        let items = vec![self.credit_update(entry, false)?, self.ledger_put(entry)?];
        match self.transact(items).await {
            Ok(()) => self.balance(&entry.tenant_id).await,
            Err(reasons)
                if reasons.first().map(String::as_str) == Some("ConditionalCheckFailed") =>
            {
                Err(StoreError::NotFound)
            }
            Err(reasons) => Err(StoreError::Unavailable(reasons.join(","))),
        }
    }
}

#[async_trait]
impl TenantStore for DynamoStore {
    async fn create_tenant(
        &self,
        tenant: &Tenant,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
    ) -> Result<(), StoreError> {
        let t = to_item(
            tenant,
            &[
                ("pk", tenant_pk(&tenant.id)),
                ("sk", "TENANT".into()),
                ("gsi1pk", format!("WABA#{}", tenant.waba_id)),
                ("gsi1sk", tenant_pk(&tenant.id)),
            ],
            None,
        )?;
        let mut route: Item = HashMap::new();
        route.insert("pk".into(), s(format!("PHONE#{}", tenant.phone_number_id)));
        route.insert("sk".into(), s("PHONE"));
        route.insert("tenant_id".into(), s(tenant.id.to_string()));
        let mut items = vec![
            self.put(t, Some("attribute_not_exists(pk)"))?,
            self.put(route, Some("attribute_not_exists(pk)"))?,
        ];
        items.extend(self.api_key_puts(key)?);
        if let Some(entry) = initial {
            items.push(self.ledger_put(entry)?);
        }
        match self.transact(items).await {
            Ok(()) => Ok(()),
            Err(r) if r.iter().any(|c| c == "ConditionalCheckFailed") => Err(StoreError::Conflict(
                "phone_number_id already belongs to a tenant".into(),
            )),
            Err(r) => Err(StoreError::Unavailable(r.join(","))),
        }
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        self.get(tenant_pk(id), "TENANT")
            .await?
            .map(from_item)
            .transpose()
    }

    async fn tenant_by_phone_number_id(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<TenantId>, StoreError> {
        let item = self
            .get(format!("PHONE#{phone_number_id}"), "PHONE")
            .await?;
        Ok(item
            .as_ref()
            .and_then(|i| i.get("tenant_id"))
            .and_then(|v| v.as_s().ok())
            .map(|v| TenantId::from_trusted(v.clone())))
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get(key_auth_pk(key_hash), "APIKEY")
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
            .expression_attribute_values(":w", s(format!("WABA#{waba_id}")))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| unavailable("dynamodb query", e))?;
            if let Some(id) = item.get("id").and_then(|v| v.as_s().ok()) {
                out.push(TenantId::from_trusted(id.clone()));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn set_ip_allowlist(&self, id: &TenantId, cidrs: &[String]) -> Result<(), StoreError> {
        let list = AttributeValue::L(cidrs.iter().map(|c| s(c.clone())).collect());
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(tenant_pk(id)))
            .key("sk", s("TENANT"))
            .update_expression("SET ip_allowlist = :l")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":l", list)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(StoreError::NotFound)
            }
            Err(e) => Err(unavailable("dynamodb update", e)),
        }
    }

    async fn set_status(
        &self,
        id: &TenantId,
        to: TenantStatus,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Tenant, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(tenant_pk(id)))
            .key("sk", s("TENANT"))
            .update_expression("SET #status = :to, status_reason = :r, status_changed_at = :at")
            // Closed is terminal.
            .condition_expression("attribute_exists(pk) AND #status <> :closed")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":to", dyn_value(&to)?)
            .expression_attribute_values(":r", dyn_value(&reason)?)
            .expression_attribute_values(":at", dyn_value(&at)?)
            .expression_attribute_values(":closed", dyn_value(&TenantStatus::Closed)?)
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match res {
            Ok(out) => from_item(out.attributes.unwrap_or_default()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                // Which condition failed only shapes the error; nothing was written.
                match self.get_tenant(id).await? {
                    None => Err(StoreError::NotFound),
                    Some(_) => Err(StoreError::Conflict("the tenant is closed".into())),
                }
            }
            Err(e) => Err(unavailable("dynamodb update", e)),
        }
    }
}

fn key_auth_pk(hash: &str) -> String {
    format!("APIKEY#{hash}")
}
fn key_sk(id: &str) -> String {
    format!("APIKEY#{id}")
}

fn dyn_value<T: Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    serde_dynamo::to_attribute_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl DynamoStore {
    /// The two copies of a key: under its hash (authentication) and in its tenant's
    /// partition (listing, management by id).
    fn api_key_puts(&self, key: &ApiKeyRecord) -> Result<Vec<TransactWriteItem>, StoreError> {
        let auth = to_item(
            key,
            &[("pk", key_auth_pk(&key.key_hash)), ("sk", "APIKEY".into())],
            None,
        )?;
        let owned = to_item(
            key,
            &[("pk", tenant_pk(&key.tenant_id)), ("sk", key_sk(&key.id))],
            None,
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
            (key_auth_pk(&key.key_hash), "APIKEY".to_owned()),
            (tenant_pk(&key.tenant_id), key_sk(&key.id)),
        ]
        .into_iter()
        .map(|(pk, sk)| {
            let mut u = Update::builder()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("sk", s(sk))
                .update_expression(expr)
                .condition_expression(condition);
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
        match self.transact(self.api_key_puts(key)?).await {
            Ok(()) => Ok(()),
            Err(r) if r.iter().any(|c| c == "ConditionalCheckFailed") => {
                Err(StoreError::Conflict("api key exists".into()))
            }
            Err(r) => Err(StoreError::Unavailable(r.join(","))),
        }
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.query_prefix(tenant_pk(tenant), "APIKEY#").await
    }

    async fn get_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get(tenant_pk(tenant), &key_sk(id))
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
        let items = self.api_key_updates(
            &key,
            "SET revoked = :t, revoked_at = :at",
            "attribute_exists(pk)",
            &[
                (":t", AttributeValue::Bool(true)),
                (":at", dyn_value(&Some(at))?),
            ],
        )?;
        match self.transact(items).await {
            Ok(()) => {
                key.revoked = true;
                key.revoked_at = Some(at);
                Ok(Some(key))
            }
            Err(r) if r.iter().any(|c| c == "ConditionalCheckFailed") => Ok(None),
            Err(r) => Err(StoreError::Unavailable(r.join(","))),
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
        let mut items = self.api_key_puts(new)?;
        // Only a live, never-rotated key may be rotated: two concurrent rotations
        // cannot both succeed.
        items.extend(self.api_key_updates(
            &old,
            "SET expires_at = :e, replaced_by = :n",
            "attribute_exists(pk) AND revoked = :f AND (attribute_not_exists(replaced_by) \
             OR attribute_type(replaced_by, :null))",
            &[
                (":e", dyn_value(&Some(old_expires_at))?),
                (":n", s(new.id.clone())),
                (":f", AttributeValue::Bool(false)),
                (":null", s("NULL")),
            ],
        )?);
        match self.transact(items).await {
            Ok(()) => Ok(()),
            Err(r) if r.iter().any(|c| c == "ConditionalCheckFailed") => Err(StoreError::Conflict(
                "the key is revoked or was already rotated".into(),
            )),
            Err(r) => Err(StoreError::Unavailable(r.join(","))),
        }
    }
}

#[async_trait]
impl Ledger for DynamoStore {
    async fn top_up(&self, entry: &LedgerEntry) -> Result<i64, StoreError> {
        self.add_credits(entry).await
    }

    async fn refund(&self, entry: &LedgerEntry) -> Result<i64, StoreError> {
        self.add_credits(entry).await
    }

    async fn entries(&self, tenant: &TenantId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.query_prefix(tenant_pk(tenant), "LEDGER#").await
    }

    async fn entries_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<LedgerEntry>, Option<String>), StoreError> {
        let lo = after.map_or_else(|| "LEDGER#".to_owned(), |a| format!("LEDGER#{a}~"));
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(tenant_pk(tenant)))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s("LEDGER#~"))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| unavailable("dynamodb query", e))?;
        let next = out
            .last_evaluated_key()
            .and_then(|k| k.get("sk"))
            .and_then(|v| v.as_s().ok())
            .and_then(|sk| sk.strip_prefix("LEDGER#"))
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
            &[
                ("pk", tenant_pk(&record.tenant_id)),
                ("sk", msg_sk(&record.id)),
                ("gsi1pk", status_gsi(&record.tenant_id, record.status)),
                ("gsi1sk", msg_sk(&record.id)),
            ],
            record.expires_at,
        )?;
        let items = vec![
            self.credit_update(debit, true)?,
            self.ledger_put(debit)?,
            self.put(m, Some("attribute_not_exists(pk)"))?,
        ];
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(()),
            Err(r) if r.first().map(String::as_str) == Some("ConditionalCheckFailed") => {
                Err(StoreError::InsufficientCredits)
            }
            Err(r) if r.iter().any(|c| c == "ConditionalCheckFailed") => {
                Err(StoreError::Conflict("message exists".into()))
            }
            Err(r) => Err(StoreError::Unavailable(r.join(","))),
        }
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        id: &MessageId,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.get(tenant_pk(tenant), &msg_sk(id))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        q: &MessageQuery,
    ) -> Result<MessagePage, StoreError> {
        let lo = q
            .since
            .map(|t| ulid_bound(t, false))
            .unwrap_or_else(|| "MSG#".into());
        let hi = q
            .until
            .map(|t| ulid_bound(t, true))
            .unwrap_or_else(|| "MSG#~".into());
        let mut req = self
            .client
            .query()
            .table_name(&self.table)
            .scan_index_forward(false)
            .limit(q.limit.clamp(1, 100) as i32)
            .filter_expression("attribute_not_exists(#ttl) OR #ttl > :now")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(self.now_secs()))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi));
        req = match q.status {
            Some(st) => req
                .index_name(GSI1)
                .key_condition_expression("gsi1pk = :pk AND gsi1sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(status_gsi(tenant, st))),
            None => req
                .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(tenant_pk(tenant))),
        };
        if let Some(c) = &q.cursor {
            req = req.set_exclusive_start_key(Some(decode_cursor(c, tenant)?));
        }
        let out = req
            .send()
            .await
            .map_err(|e| unavailable("dynamodb query", e))?;
        let messages = out
            .items()
            .iter()
            .cloned()
            .map(from_item)
            .collect::<Result<Vec<MessageRecord>, _>>()?;
        Ok(MessagePage {
            messages,
            next_cursor: out.last_evaluated_key().and_then(encode_cursor),
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
        let event = serde_dynamo::to_attribute_value(StatusEvent { status: to, at })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let preds = to.allowed_predecessors();
        if preds.is_empty() {
            return Ok(Transition::Refused);
        }
        let placeholders: Vec<String> = (0..preds.len()).map(|i| format!(":p{i}")).collect();
        let mut set = vec![
            "#status = :to",
            "updated_at = :at",
            "events = list_append(events, :ev)",
            "gsi1pk = :g",
        ];
        if change.wamid.is_some() {
            set.push("wamid = :w");
        }
        if change.error.is_some() {
            set.push("#error = :e");
        }
        let mut expr = format!("SET {}", set.join(", "));
        if change.count_attempt {
            expr.push_str(" ADD attempts :one");
        }
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(tenant_pk(tenant)))
            .key("sk", s(msg_sk(id)))
            .update_expression(expr)
            .condition_expression(format!(
                "#status IN ({}) AND (attribute_not_exists(#ttl) OR #ttl > :now)",
                placeholders.join(", ")
            ))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(
                ":at",
                s(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            )
            .expression_attribute_values(":ev", AttributeValue::L(vec![event]))
            .expression_attribute_values(":g", s(status_gsi(tenant, to)))
            .expression_attribute_values(":now", n(self.now_secs()))
            .return_values(ReturnValue::AllNew);
        for (p, st) in placeholders.iter().zip(preds) {
            req = req.expression_attribute_values(p, s(st.as_str()));
        }
        if let Some(w) = &change.wamid {
            req = req.expression_attribute_values(":w", s(w.clone()));
        }
        if let Some(e) = &change.error {
            let v = serde_dynamo::to_attribute_value(e)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            req = req
                .expression_attribute_names("#error", "error")
                .expression_attribute_values(":e", v);
        }
        if change.count_attempt {
            req = req.expression_attribute_values(":one", n(1));
        }
        match req.send().await {
            Ok(out) => Ok(Transition::Applied(Box::new(from_item(
                out.attributes.unwrap_or_default(),
            )?))),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(Transition::Refused)
            }
            Err(e) => Err(unavailable("dynamodb update", e)),
        }
    }

    async fn release_for_retry(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        error: &MessageError,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError> {
        let e = serde_dynamo::to_attribute_value(error)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(tenant_pk(tenant)))
            .key("sk", s(msg_sk(id)))
            .update_expression("SET #status = :acc, gsi1pk = :g, #error = :e, updated_at = :at")
            // An expired message cannot be revived (as in `transition` and in memory).
            .condition_expression(
                "#status = :sending AND (attribute_not_exists(#ttl) OR #ttl > :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(self.now_secs()))
            .expression_attribute_values(":acc", s(MessageStatus::Accepted.as_str()))
            .expression_attribute_values(":sending", s(MessageStatus::Sending.as_str()))
            .expression_attribute_values(":g", s(status_gsi(tenant, MessageStatus::Accepted)))
            .expression_attribute_values(":e", e)
            .expression_attribute_values(
                ":at",
                s(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
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
            Err(e) => Err(unavailable("dynamodb update", e)),
        }
    }

    async fn set_wamid(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        wamid: &str,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut idx: Item = HashMap::new();
        idx.insert("pk".into(), s(format!("WAMID#{wamid}")));
        idx.insert("sk".into(), s("WAMID"));
        idx.insert("tenant_id".into(), s(tenant.to_string()));
        idx.insert("message_id".into(), s(id.to_string()));
        if let Some(t) = expires_at {
            idx.insert(TTL_ATTR.into(), n(t));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(idx))
            .send()
            .await
            .map_err(|e| unavailable("dynamodb put", e))?;
        // The wamid on the message itself; a no-op if the message is gone.
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(tenant_pk(tenant)))
            .key("sk", s(msg_sk(id)))
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
            Err(e) => Err(unavailable("dynamodb update", e)),
        }
    }

    async fn message_by_wamid(
        &self,
        wamid: &str,
    ) -> Result<Option<(TenantId, MessageId)>, StoreError> {
        let Some(item) = self.get(format!("WAMID#{wamid}"), "WAMID").await? else {
            return Ok(None);
        };
        let field = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        match (field("tenant_id"), field("message_id")) {
            (Some(t), Some(m)) => Ok(Some((
                TenantId::from_trusted(t),
                MessageId::from_trusted(m),
            ))),
            _ => Err(StoreError::Corrupt("wamid index item".into())),
        }
    }
}

#[async_trait]
impl ExpiredItems for DynamoStore {
    /// Deletes up to `budget` items whose TTL has passed (DynamoDB's TTL sweeper lags;
    /// moto never sweeps). Batches of 25, as DynamoDB requires.
    async fn delete_expired(&self, now: DateTime<Utc>, budget: usize) -> Result<usize, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("#ttl <= :now")
            .projection_expression("pk, sk")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(now.timestamp()))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| unavailable("dynamodb scan", e))?;
            keys.push(item);
            if keys.len() >= budget {
                break;
            }
        }
        let total = keys.len();
        for chunk in keys.chunks(25) {
            let reqs = chunk
                .iter()
                .map(|k| {
                    DeleteRequest::builder()
                        .set_key(Some(k.clone()))
                        .build()
                        .map(|d| WriteRequest::builder().delete_request(d).build())
                        .map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut pending = Some(HashMap::from([(self.table.clone(), reqs)]));
            for _ in 0..5 {
                let Some(p) = pending.take().filter(|p| !p.is_empty()) else {
                    break;
                };
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(p))
                    .send()
                    .await
                    .map_err(|e| unavailable("dynamodb batch write", e))?;
                pending = out.unprocessed_items;
            }
        }
        Ok(total)
    }
}

fn audit_pk(chain: &str) -> String {
    format!("AUDIT#{chain}")
}
fn audit_sk(seq: u64) -> String {
    format!("EVENT#{seq:016}")
}

#[async_trait]
impl AuditLog for DynamoStore {
    async fn head(&self, chain: &str) -> Result<Option<AuditHead>, StoreError> {
        let Some(item) = self.get(audit_pk(chain), "HEAD").await? else {
            return Ok(None);
        };
        let seq = match item.get("seq") {
            Some(AttributeValue::N(v)) => v.parse().ok(),
            _ => None,
        };
        let hash = item.get("hash").and_then(|v| v.as_s().ok()).cloned();
        match (seq, hash) {
            (Some(seq), Some(hash)) => Ok(Some(AuditHead { seq, hash })),
            _ => Err(StoreError::Corrupt("audit head".into())),
        }
    }

    async fn append(
        &self,
        event: &AuditEvent,
        expected: Option<&AuditHead>,
    ) -> Result<(), StoreError> {
        let mut item = to_item(
            event,
            &[("pk", audit_pk(&event.chain)), ("sk", audit_sk(event.seq))],
            event.expires_at,
        )?;
        // A number to filter times by (RFC 3339 text does not compare reliably).
        item.insert("at_ms".into(), n(event.at.timestamp_millis()));
        let mut head = Update::builder()
            .table_name(&self.table)
            .key("pk", s(audit_pk(&event.chain)))
            .key("sk", s("HEAD"))
            .update_expression("SET seq = :seq, #hash = :hash")
            .expression_attribute_names("#hash", "hash")
            .expression_attribute_values(":seq", n(event.seq as i64))
            .expression_attribute_values(":hash", s(event.hash.clone()));
        // The head moves only from the link this event was computed against.
        head = match expected {
            None => head.condition_expression("attribute_not_exists(pk)"),
            Some(h) => head
                .condition_expression("seq = :old")
                .expression_attribute_values(":old", n(h.seq as i64)),
        };
        let head = head
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        let items = vec![
            self.put(item, Some("attribute_not_exists(pk)"))?,
            TransactWriteItem::builder().update(head).build(),
        ];
        match self.transact(items).await {
            Ok(()) => Ok(()),
            Err(r)
                if r.iter()
                    .any(|c| c == "ConditionalCheckFailed" || c == "TransactionConflict") =>
            {
                Err(StoreError::Conflict("audit chain moved".into()))
            }
            Err(r) => Err(StoreError::Unavailable(r.join(","))),
        }
    }

    async fn list(
        &self,
        chain: &str,
        q: &AuditQuery,
    ) -> Result<(Vec<AuditEvent>, Option<u64>), StoreError> {
        let hi = q
            .before_seq
            .map(|b| audit_sk(b.saturating_sub(1)))
            .unwrap_or_else(|| "EVENT#~".into());
        let mut filters = vec!["(attribute_not_exists(#ttl) OR #ttl > :now)".to_owned()];
        let mut req = self
            .client
            .query()
            .table_name(&self.table)
            .scan_index_forward(false)
            .limit(q.limit.clamp(1, 100) as i32)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(audit_pk(chain)))
            .expression_attribute_values(":lo", s("EVENT#"))
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
        let out = req
            .filter_expression(filters.join(" AND "))
            .send()
            .await
            .map_err(|e| unavailable("dynamodb query", e))?;
        let events = out
            .items()
            .iter()
            .cloned()
            .map(from_item)
            .collect::<Result<Vec<AuditEvent>, _>>()?;
        // The cursor is the last key read, even if the filter dropped its event.
        let next = out
            .last_evaluated_key()
            .and_then(|k| k.get("sk"))
            .and_then(|v| v.as_s().ok())
            .and_then(|sk| sk.strip_prefix("EVENT#"))
            .and_then(|seq| seq.parse().ok());
        Ok((events, next))
    }

    async fn ascending(
        &self,
        chain: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let lo = after_seq
            .map(|a| audit_sk(a.saturating_add(1)))
            .unwrap_or_else(|| "EVENT#".into());
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(audit_pk(chain)))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s("EVENT#~"))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| unavailable("dynamodb query", e))?;
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

fn quality_sk(day: chrono::NaiveDate) -> String {
    format!("QSTAT#{}", day.format("%Y-%m-%d"))
}

#[async_trait]
impl QualityStats for DynamoStore {
    async fn bump(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        counter: QualityCounter,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(tenant_pk(tenant)))
            .key("sk", s(quality_sk(day)))
            .expression_attribute_names("#c", counter.attribute())
            .expression_attribute_values(":one", n(1));
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
            .map_err(|e| unavailable("dynamodb update", e))
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
            .expression_attribute_values(":pk", s(tenant_pk(tenant)))
            .expression_attribute_values(":lo", s(quality_sk(from)))
            .expression_attribute_values(":hi", s(quality_sk(to)))
            .send()
            .await
            .map_err(|e| unavailable("dynamodb query", e))?;
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
