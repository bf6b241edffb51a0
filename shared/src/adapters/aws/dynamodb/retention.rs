//! `RetentionStore` on the table: the resumable sweep (one `Scan` page at a time, its
//! `LastEvaluatedKey` saved in `RETENTION`/`CHECKPOINT`), the close-out of closed tenants,
//! and a read-only view of every item. docs/data-retention.md. Which item type a key is
//! and which class it counts under: `keys::ItemKind`.

use crate::adapters::aws::written;
use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::keys::{self, ItemKind, Key};
use super::{n, s, ttl_of, DynamoStore, Item, TTL_ATTR};
use crate::adapters::aws::classify;
use crate::domain::{RetentionClass, TenantId};
use crate::ports::{
    ApiKeyRecord, ApiKeyStore, BroadcastStatus, CloseOutCounts, CloseOutTtls, RetentionStore,
    StoredItem, SweepPage,
};
use crate::store_error::StoreError;

fn str_attr<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn encode_key(key: &Item) -> Option<String> {
    let flat: HashMap<&str, &str> = key
        .iter()
        .filter_map(|(k, v)| v.as_s().ok().map(|s| (k.as_str(), s.as_str())))
        .collect();
    serde_json::to_string(&flat).ok()
}

fn decode_key(text: &str) -> Option<Item> {
    let flat: HashMap<String, String> = serde_json::from_str(text).ok()?;
    if flat.len() != 2 || !flat.contains_key(keys::PK) || !flat.contains_key(keys::SK) {
        return None;
    }
    Some(flat.into_iter().map(|(k, v)| (k, s(v))).collect())
}

/// An attribute as JSON (numbers as JSON numbers where they parse).
pub(crate) fn to_json(v: &AttributeValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AttributeValue::S(x) => Value::String(x.clone()),
        AttributeValue::N(x) => x
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| x.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(x.clone())),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::L(l) => Value::Array(l.iter().map(to_json).collect()),
        AttributeValue::M(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        AttributeValue::Ss(l) => Value::Array(l.iter().cloned().map(Value::String).collect()),
        AttributeValue::Ns(l) => Value::Array(l.iter().cloned().map(Value::String).collect()),
        other => Value::String(format!("{other:?}")),
    }
}

/// The class a deleted item counts under. A key of no known item type (none should exist)
/// is counted as active configuration, and logged.
fn class_of(pk: &str, sk: &str) -> RetentionClass {
    ItemKind::of_key(pk, sk).map_or_else(
        || {
            // The keys' type prefixes only: a key of a type this build does not know may
            // hold a phone number (as `OPTOUT#…` and `PAIR#…` do).
            let kind = |key: &str| key.split('#').next().unwrap_or_default().to_owned();
            tracing::warn!(
                pk = %kind(pk),
                sk = %kind(sk),
                "swept an item of no known type"
            );
            RetentionClass::ActiveConfig
        },
        ItemKind::class,
    )
}

/// The `ttl` an ended API key's copies should carry, from its tenant copy's stored
/// `revoked`, `revoked_at` and `expires_at` (as `ApiKeyRecord` serializes them); `None`
/// if it has not ended. A key revoked before revocations recorded their time counts as
/// ended `now` (kept its full retention from the backfill).
fn ended_key_ttl(item: &Item, now: DateTime<Utc>) -> Option<i64> {
    let time = |k: &str| {
        str_attr(item, k)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let revoked = matches!(item.get("revoked"), Some(AttributeValue::Bool(true)));
    let revoked_at = revoked.then(|| time("revoked_at").unwrap_or(now));
    ApiKeyRecord::end_of(revoked_at, time("expires_at")).map(ApiKeyRecord::ttl_after)
}

/// How many of a closed tenant's items a close-out handles at once.
const CLOSE_OUT_CONCURRENCY: usize = 16;

/// What the close-out reads of a configuration item (the rest is dropped as each page
/// arrives: a user's or a key's whole record is not needed to give it a TTL).
const CLOSE_OUT_ATTRS: &[&str] = &[
    keys::PK,
    keys::SK,
    TTL_ATTR,
    "revoked",
    "key_hash",
    "email",
    "phone_number_id",
];

impl DynamoStore {
    /// Deletes a phone-number route only while it names `tenant`; `false` if it did not.
    async fn delete_route_of(&self, tenant: &TenantId, pnid: &str) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::phone_route(pnid).attrs()))
            .condition_expression("tenant_id = :t")
            .expression_attribute_values(":t", s(tenant.as_str()))
            .send()
            .await;
        written("dynamodb delete", res)
    }

    /// Deletes the expired items at `keys`, each only if it is still expired at `now_s`
    /// (a conditional `DeleteItem`, 16 at a time). The scan that found them can be a
    /// moment old, or behind the latest write: an item rewritten in place since, with a
    /// new `ttl` (an idempotency key used afresh, a customer-service window reopened, a
    /// failed-login counter started again), is kept. `BatchWriteItem` cannot carry the
    /// condition. Answers the keys this call deleted.
    async fn delete_expired(&self, keys: Vec<Item>, now_s: i64) -> Result<Vec<Item>, StoreError> {
        use futures::StreamExt;
        let deletes = keys.into_iter().map(|key| async move {
            let res = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key.clone()))
                .condition_expression("#ttl <= :now")
                .expression_attribute_names("#ttl", TTL_ATTR)
                .expression_attribute_values(":now", n(now_s))
                .send()
                .await;
            match res {
                Ok(_) => Ok(Some(key)),
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() =>
                {
                    Ok(None)
                }
                Err(e) => Err(classify("dynamodb delete", e)),
            }
        });
        let results: Vec<Result<Option<Item>, StoreError>> = futures::stream::iter(deletes)
            .buffer_unordered(16)
            .collect()
            .await;
        let mut gone = Vec::new();
        for r in results {
            gone.extend(r?);
        }
        Ok(gone)
    }

    /// A closed tenant's configuration item `item` (its close-out attributes): what its
    /// kind needs first (a key revoked and its hash copy given the TTL, a user's email claim
    /// deleted, a number's route removed), then the item's own TTL, last (a user's with its
    /// sign-in material removed). Counts what changed.
    async fn close_out_item(
        &self,
        tenant: &TenantId,
        tenant_item: &Item,
        item: Item,
        ttls: CloseOutTtls,
        now: DateTime<Utc>,
    ) -> Result<CloseOutCounts, StoreError> {
        let mut counts = CloseOutCounts::default();
        let pk = keys::tenant_pk(tenant);
        let Some(sk) = str_attr(&item, keys::SK) else {
            return Ok(counts);
        };
        match ItemKind::of_key(&pk, sk) {
            Some(ItemKind::ApiKeyOfTenant) => {
                let key_id = keys::api_key_id_of(sk).unwrap_or_default();
                let revoked = matches!(item.get("revoked"), Some(AttributeValue::Bool(true)));
                if !revoked && self.revoke_api_key(tenant, key_id, now).await?.is_some() {
                    counts.keys_revoked += 1;
                }
                // Both copies: the configuration's TTL, or the key's own if it ended
                // long enough ago to expire first (its revocation just now set one).
                let own = Key {
                    pk: pk.clone(),
                    sk: sk.to_owned(),
                };
                let hash = str_attr(&item, "key_hash").map(keys::api_key_by_hash);
                for copy in hash.into_iter().chain([own]) {
                    if self.set_ttl_if_earlier(copy, ttls.config).await? {
                        counts.items_given_ttl += 1;
                    }
                }
                return Ok(counts);
            }
            Some(ItemKind::User) => {
                // Done already: its TTL is its close-out's last write.
                if ttl_of(&item).is_some() {
                    return Ok(counts);
                }
                // Its email freed for whoever signs up with it next: the claim deleted, only
                // while it still names this user of this tenant (a pass cut short after it
                // and run again finds another tenant's claim there, or none).
                let user_id = sk.strip_prefix(keys::USER_PREFIX).unwrap_or_default();
                if let Some(email) = str_attr(&item, "email") {
                    if self.free_email_claim(tenant, user_id, email).await? {
                        counts.emails_freed += 1;
                    }
                }
                // What signs in goes (the password's hash, the sealed TOTP seed and its
                // state), in the write that gives the item its TTL: the id, email, role and
                // creation time stay, for as long as the audit events naming the user by id.
                if self.strip_user(&pk, sk, ttls.config).await? {
                    counts.items_given_ttl += 1;
                }
                return Ok(counts);
            }
            Some(ItemKind::PhoneNumber) => {
                // Its route, only while it still names this tenant; the default number's
                // (every tenant has its item since the WABA index moved onto number items)
                // at the end of the close-out, where it is counted.
                if let Some(pnid) = str_attr(&item, "phone_number_id") {
                    if str_attr(tenant_item, "phone_number_id") != Some(pnid) {
                        self.delete_route_of(tenant, pnid).await?;
                    }
                }
            }
            Some(ItemKind::OptOut | ItemKind::StatusCallback | ItemKind::TwoFactorSetting) => {}
            // Messages, ledger, idempotency, counters, broadcasts: their own TTL; the
            // tenant: last.
            _ => return Ok(counts),
        }
        if ttl_of(&item).is_none()
            && self
                .set_ttl_if_absent(
                    Key {
                        pk,
                        sk: sk.to_owned(),
                    },
                    ttls.config,
                )
                .await?
        {
            counts.items_given_ttl += 1;
        }
        Ok(counts)
    }

    /// Deletes `email`'s claim if it still names `user_id` of `tenant`; `false` if it is
    /// gone or names another user (claimed again since an earlier pass freed it).
    async fn free_email_claim(
        &self,
        tenant: &TenantId,
        user_id: &str,
        email: &str,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::email_claim(email).attrs()))
            .condition_expression("tenant_id = :t AND user_id = :u")
            .expression_attribute_values(":t", s(tenant.as_str()))
            .expression_attribute_values(":u", s(user_id))
            .send()
            .await;
        written("dynamodb delete", res)
    }

    /// A closed tenant's user's sign-in material removed and its TTL set, in one
    /// conditional update (the item has no TTL yet); `false` if it has one or is gone.
    async fn strip_user(&self, pk: &str, sk: &str, ttl: i64) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(
                Key {
                    pk: pk.to_owned(),
                    sk: sk.to_owned(),
                }
                .attrs(),
            ))
            .update_expression(
                "REMOVE password_hash, totp_secret, totp_confirmed, last_totp_step SET #ttl = :ttl",
            )
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(#ttl)")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":ttl", n(ttl))
            .send()
            .await;
        written("dynamodb update", res)
    }

    /// `SET ttl` on an existing item that has none; `false` if it has one or is absent.
    async fn set_ttl_if_absent(&self, key: Key, ttl: i64) -> Result<bool, StoreError> {
        self.set_ttl_where(key, ttl, "attribute_not_exists(#ttl)")
            .await
    }

    /// `SET ttl` on an existing item that has none or a later one (an ended API key's own
    /// expiry, 90 days after it ended): the earlier of the two stands. `false` otherwise.
    async fn set_ttl_if_earlier(&self, key: Key, ttl: i64) -> Result<bool, StoreError> {
        self.set_ttl_where(key, ttl, "(attribute_not_exists(#ttl) OR #ttl > :ttl)")
            .await
    }

    async fn set_ttl_where(&self, key: Key, ttl: i64, condition: &str) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key.attrs()))
            .update_expression("SET #ttl = :ttl")
            .condition_expression(format!("attribute_exists(pk) AND {condition}"))
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":ttl", n(ttl))
            .send()
            .await;
        written("dynamodb update", res)
    }

    /// The chain head's TTL, if it has none: `ttl`, or its newest event's expiry when that
    /// is later (an append since `ttl` was computed; the close-out pages the tenant's keys
    /// in between). A head moved meanwhile is read again.
    async fn set_head_ttl_if_absent(&self, chain: &str, ttl: i64) -> Result<bool, StoreError> {
        let mut ttl = ttl;
        for _ in 0..3 {
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(keys::audit_head(chain).attrs()))
                .update_expression("SET #ttl = :ttl")
                .condition_expression(
                    "attribute_exists(pk) AND attribute_not_exists(#ttl) \
                     AND (attribute_not_exists(event_expires_at) OR event_expires_at <= :ttl)",
                )
                .expression_attribute_names("#ttl", TTL_ATTR)
                .expression_attribute_values(":ttl", n(ttl))
                .send()
                .await;
            if written("dynamodb update", res)? {
                return Ok(true);
            }
            let head = self.get(keys::audit_head(chain)).await?;
            let newest = head.as_ref().and_then(|h| match h.get("event_expires_at") {
                Some(AttributeValue::N(v)) => v.parse::<i64>().ok(),
                _ => None,
            });
            match (head, newest) {
                (Some(h), Some(e)) if !h.contains_key(TTL_ATTR) && e > ttl => ttl = e,
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Every item (read-only; for checks and operators' audits).
    async fn scan_all(&self) -> Result<Vec<Item>, StoreError> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .into_paginator()
            .items()
            .send();
        let mut items = Vec::new();
        while let Some(item) = pages.next().await {
            items.push(item.map_err(|e| classify("dynamodb scan", e))?);
        }
        Ok(items)
    }
}

#[async_trait]
impl RetentionStore for DynamoStore {
    async fn sweep_page(
        &self,
        now: DateTime<Utc>,
        start: Option<&str>,
        page_size: usize,
    ) -> Result<SweepPage, StoreError> {
        let now_s = now.timestamp();
        let out = self
            .client
            .scan()
            .table_name(&self.table)
            .limit(page_size.clamp(1, 1000) as i32)
            .filter_expression(
                "#ttl <= :now OR (sk = :tenant AND #status = :closed \
                 AND attribute_not_exists(closed_out_at)) \
                 OR (sk = :tenant AND #status IN (:active, :suspended)) \
                 OR (begins_with(sk, :msg) AND #status IN (:accepted, :sending) \
                 AND updated_at < :stale) \
                 OR (begins_with(sk, :msg) AND #status = :msg_scheduled \
                 AND send_at < :stale) \
                 OR (begins_with(sk, :bc) AND #status IN (:scheduled, :fanning_out) \
                 AND created_at <= :list_cut \
                 AND (attribute_not_exists(send_at) OR send_at <= :list_cut)) \
                 OR (begins_with(sk, :apikey) AND attribute_not_exists(#ttl) \
                 AND (revoked = :true OR attribute_type(expires_at, :str)))",
            )
            .projection_expression(
                "pk, sk, #ttl, #status, message_id, revoked, revoked_at, expires_at, key_hash",
            )
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":now", n(now_s))
            .expression_attribute_values(":tenant", s(keys::TENANT_SK))
            .expression_attribute_values(":closed", s("closed"))
            .expression_attribute_values(":active", s("active"))
            .expression_attribute_values(":suspended", s("suspended"))
            .expression_attribute_values(":msg", s(keys::MESSAGE_PREFIX))
            .expression_attribute_values(":accepted", s("accepted"))
            .expression_attribute_values(":sending", s("sending"))
            .expression_attribute_values(":msg_scheduled", s("scheduled"))
            // As messages store it (RFC 3339, UTC, `Z`): strings that compare as times.
            .expression_attribute_values(
                ":stale",
                s((now - stale_after()).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            )
            .expression_attribute_values(":bc", s(keys::BROADCAST_PREFIX))
            .expression_attribute_values(":scheduled", s(BroadcastStatus::Scheduled.as_str()))
            .expression_attribute_values(":fanning_out", s(BroadcastStatus::FanningOut.as_str()))
            // A broadcast's list expires `BROADCAST_LIST_RETENTION` after the later of its
            // creation and its `send_at` (`Broadcast::list_expires_at`); times as stored.
            .expression_attribute_values(
                ":list_cut",
                s((now - list_retention()).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            )
            // A key ended before ended keys were given a TTL (the backfill): its tenant
            // copy, which names its hash copy.
            .expression_attribute_values(":apikey", s(keys::API_KEY_PREFIX))
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":str", s("S"))
            .set_exclusive_start_key(start.and_then(decode_key))
            .send()
            .await
            .map_err(|e| classify("dynamodb scan", e))?;
        let mut page = SweepPage {
            examined: out.scanned_count.max(0) as usize,
            next: out.last_evaluated_key.as_ref().and_then(encode_key),
            ..SweepPage::default()
        };
        let mut expired = Vec::new();
        let mut ended_keys = Vec::new();
        // Keys of wamid index items that are only the mark of kept statuses (no message
        // yet): they count as kept statuses.
        let mut marks = std::collections::HashSet::new();
        for item in out.items.unwrap_or_default() {
            let (Some(pk), Some(sk)) = (str_attr(&item, keys::PK), str_attr(&item, keys::SK))
            else {
                continue;
            };
            if ttl_of(&item).is_some_and(|t| t <= now_s) {
                if ItemKind::of_key(pk, sk) == Some(ItemKind::WamidIndex)
                    && !item.contains_key("message_id")
                {
                    marks.insert((pk.to_owned(), sk.to_owned()));
                }
                let key: Item = [(keys::PK, pk), (keys::SK, sk)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), s(v)))
                    .collect();
                expired.push(key);
            } else if ItemKind::of_key(pk, sk) == Some(ItemKind::Message) {
                // Matched for being stale and unsent (accepted or sending unmoved, or
                // scheduled and long past due).
                if let (Some(t), Some(id)) = (
                    keys::tenant_of_pk(pk),
                    sk.strip_prefix(keys::MESSAGE_PREFIX),
                ) {
                    page.stale_messages.push((t, id.to_owned()));
                }
            } else if ItemKind::of_key(pk, sk) == Some(ItemKind::Broadcast) {
                // Matched for a list backstop passed while still to be fanned out.
                if let (Some(t), Some(id)) = (
                    keys::tenant_of_pk(pk),
                    sk.strip_prefix(keys::BROADCAST_PREFIX),
                ) {
                    page.stale_broadcasts.push((t, id.to_owned()));
                }
            } else if ItemKind::of_key(pk, sk) == Some(ItemKind::ApiKeyOfTenant) {
                // Matched for having ended without a TTL.
                if let Some(ttl) = ended_key_ttl(&item, now) {
                    let hash = str_attr(&item, "key_hash").map(keys::api_key_by_hash);
                    ended_keys.push((
                        hash,
                        Key {
                            pk: pk.to_owned(),
                            sk: sk.to_owned(),
                        },
                        ttl,
                    ));
                }
            } else if ItemKind::of_key(pk, sk) == Some(ItemKind::Tenant) {
                if let Some(t) = keys::tenant_of_pk(pk) {
                    match str_attr(&item, "status") {
                        Some("active") => page.active_tenants.push(t),
                        Some("suspended") => page.suspended_tenants.push(t),
                        _ => page.closed_tenants.push(t),
                    }
                }
            }
        }
        // 16 keys at once (a page may name hundreds). Per key, the hash copy first: a
        // failure between the two leaves the tenant copy without one, for the next pass to
        // find again. The earlier TTL stands (a revocation or a close-out since the scan
        // may have set one).
        let given: Vec<Result<bool, StoreError>> = futures::stream::iter(ended_keys)
            .map(|(hash, own, ttl)| async move {
                if let Some(hash) = hash {
                    self.set_ttl_if_earlier(hash, ttl).await?;
                }
                self.set_ttl_if_earlier(own, ttl).await
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for g in given {
            if g? {
                page.ended_keys_given_ttl += 1;
            }
        }
        for key in self.delete_expired(expired, now_s).await? {
            if let (Some(pk), Some(sk)) = (str_attr(&key, keys::PK), str_attr(&key, keys::SK)) {
                let class = if marks.contains(&(pk.to_owned(), sk.to_owned())) {
                    RetentionClass::PendingStatus
                } else {
                    class_of(pk, sk)
                };
                page.count(class, 1);
            }
        }
        Ok(page)
    }

    async fn checkpoint(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .get(keys::retention_checkpoint())
            .await?
            .and_then(|i| str_attr(&i, "next").map(str::to_owned)))
    }

    async fn save_checkpoint(
        &self,
        next: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(keys::retention_checkpoint().attrs()))
            .item("updated_at", s(at.to_rfc3339()));
        if let Some(next) = next {
            req = req.item("next", s(next));
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| classify("dynamodb put", e))
    }

    async fn close_out(
        &self,
        tenant: &TenantId,
        ttls: CloseOutTtls,
        now: DateTime<Utc>,
        deadline: std::time::Instant,
    ) -> Result<CloseOutCounts, StoreError> {
        let mut counts = CloseOutCounts::default();
        let pk = keys::tenant_pk(tenant);
        let Some(tenant_item) = self.get(keys::tenant(tenant)).await? else {
            return Ok(counts);
        };
        if str_attr(&tenant_item, "status") != Some("closed") {
            return Ok(counts); // only a closed tenant is closed out
        }
        // The tenant's configuration gets a TTL: keys, users, numbers, opt-outs, settings.
        // Read by their sort-key prefixes and handled a page at a time (nothing held beyond
        // a page: a marketing tenant may have hundreds of thousands of opt-outs), never the
        // partition's messages, ledger or usage (two years of them and more, their own
        // TTLs). What is done for each item is idempotent, its own TTL set last, so a
        // close-out cut short at `deadline` (after its first page at least) is taken up
        // again by the next run, which begins with it.
        let mut first_page = true;
        for prefix in [
            keys::API_KEY_PREFIX,
            keys::USER_PREFIX,
            keys::NUMBER_PREFIX,
            keys::OPT_OUT_PREFIX,
            keys::SETTINGS_PREFIX,
        ] {
            let mut start: Option<Item> = None;
            loop {
                if !first_page && std::time::Instant::now() >= deadline {
                    counts.cut_short = true;
                    return Ok(counts);
                }
                first_page = false;
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                    .expression_attribute_values(":pk", s(pk.clone()))
                    .expression_attribute_values(":p", s(prefix))
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| classify("dynamodb query", e))?;
                let items = page.items.unwrap_or_default().into_iter().map(|item| {
                    item.into_iter()
                        .filter(|(k, _)| CLOSE_OUT_ATTRS.contains(&k.as_str()))
                        .collect::<Item>()
                });
                // A few at a time: one by one, a page of opt-outs would take minutes.
                let done: Vec<Result<CloseOutCounts, StoreError>> = futures::stream::iter(items)
                    .map(|item| self.close_out_item(tenant, &tenant_item, item, ttls, now))
                    .buffer_unordered(CLOSE_OUT_CONCURRENCY)
                    .collect()
                    .await;
                for c in done {
                    let c = c?;
                    counts.keys_revoked += c.keys_revoked;
                    counts.items_given_ttl += c.items_given_ttl;
                    counts.emails_freed += c.emails_freed;
                }
                start = page.last_evaluated_key.filter(|k| !k.is_empty());
                if start.is_none() {
                    break;
                }
            }
        }
        // Console sessions are not looked for (they live in their own partitions: only a
        // scan of the whole table would find them): a closed tenant's sessions stop
        // authenticating at the closing, and each expires by its TTL within 12 hours.
        // The phone-number route, only while it still names this tenant.
        if let Some(pnid) = str_attr(&tenant_item, "phone_number_id") {
            counts.phone_route_removed = self.delete_route_of(tenant, pnid).await?;
        }
        if self
            .set_head_ttl_if_absent(tenant.as_str(), ttls.audit_head)
            .await?
        {
            counts.items_given_ttl += 1;
        }
        // The credit lanes (A80) back into the tenant item, whose record keeps the balance
        // (none is left after the closing's own return, unless that failed). Sealed, they
        // change no more; one still there (its return refused) is taken up by the next run
        // rather than left without a TTL.
        self.return_all_lanes(tenant).await?;
        if self
            .tenant_and_lanes(tenant)
            .await?
            .is_some_and(|read| !read.lanes.is_empty())
        {
            counts.cut_short = true;
            return Ok(counts);
        }
        // Last: the tenant item, which marks the close-out done (gone again when a refund's
        // transaction in flight on it cancels it: nothing written).
        let res = super::update_retrying_conflicts(
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(keys::tenant(tenant).attrs()))
                .update_expression("SET #ttl = :ttl, closed_out_at = :at")
                .condition_expression("#status = :closed AND attribute_not_exists(closed_out_at)")
                .expression_attribute_names("#ttl", TTL_ATTR)
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":ttl", n(ttls.tenant))
                .expression_attribute_values(":at", s(now.to_rfc3339()))
                .expression_attribute_values(":closed", s("closed")),
        )
        .await;
        match res {
            Ok(_) => counts.items_given_ttl += 1,
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {}
            Err(e) => return Err(classify("dynamodb update", e)),
        }
        Ok(counts)
    }

    async fn closed_out_at(&self, tenant: &TenantId) -> Result<Option<DateTime<Utc>>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(keys::tenant(tenant).attrs()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("dynamodb get", e))?
            .item;
        Ok(item
            .as_ref()
            .and_then(|i| str_attr(i, "closed_out_at"))
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)))
    }

    async fn stored_items(&self) -> Result<Vec<StoredItem>, StoreError> {
        Ok(self
            .scan_all()
            .await?
            .into_iter()
            .map(|item| StoredItem {
                pk: str_attr(&item, keys::PK).unwrap_or_default().to_owned(),
                sk: str_attr(&item, keys::SK).unwrap_or_default().to_owned(),
                ttl: ttl_of(&item),
                attributes: serde_json::Value::Object(
                    item.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
                ),
            })
            .collect())
    }
}

/// [`crate::domain::UNSENT_STALE_AFTER`] as a time span.
/// A campaign's list backstop and the margin after it (`broadcasts::settle_lost`).
fn list_retention() -> chrono::Duration {
    chrono::Duration::from_std(
        crate::domain::BROADCAST_LIST_RETENTION + crate::domain::LOST_FANOUT_MARGIN,
    )
    .unwrap_or_else(|_| chrono::Duration::days(7))
}

fn stale_after() -> chrono::Duration {
    chrono::Duration::from_std(crate::domain::UNSENT_STALE_AFTER)
        .unwrap_or_else(|_| chrono::Duration::days(5))
}
