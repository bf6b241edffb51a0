//! `PendingStatusStore` and `StatusCallbackStore` on the one table.
//!
//! - A status for a wamid not known yet: `pk = WAMID#{wamid}` (beside the wamid index item
//!   `sk = WAMID`), `sk = PENDING#{status}#{timestamp}`, TTL per the `PendingStatus`
//!   retention class. Kept with `attribute_not_exists(pk) OR ttl <= now`, so a duplicate
//!   writes nothing; then [`PENDING_MARK`] is set on the wamid's index item
//!   (`WAMID#{wamid}` / `WAMID`, created as a mark alone, with the kept status's TTL, when
//!   the wamid is not indexed yet). The dispatcher's `UpdateItem` of the index answers the
//!   item as it was (`ReturnValues = ALL_OLD`, no read units) and leaves the mark in place
//!   (a retried write sees it again): only when that carried the mark does it read the
//!   kept statuses, with a Query `begins_with(sk, "PENDING#")`.
//! - A status callback the queue refused: `pk = CALLBACKOWED` (one partition for every
//!   tenant: written only while the queue refuses), `sk = OWED#{tenant}#{message}#{sequence}`,
//!   TTL per the `PendingStatus` retention class; read back with a consistent Query by the
//!   owed-callback drain, deleted once queued.
//! - A tenant's record of a callback given up: `pk = CBFAIL#{tenant}` (a partition of its
//!   own: the status-callback function may write there only, `dynamodb:LeadingKeys`),
//!   `sk = CBFAIL#{ulid of when it was given up}`, TTL per the `CallbackFailures` class
//!   (14 days); one unconditional `PutItem` per given-up callback, listed a page at a time
//!   newest first with the API keys' paged `Query` (no scan).
//! - A tenant's status-callback setting: `pk = TENANT#{tenant}`, `sk = SETTINGS#STATUS_CALLBACK`,
//!   no TTL (active configuration). The signing secret is in Secrets Manager, not here.
//!   Every write of it (the whole setting, or its URL alone) is a transaction led by the
//!   tenant-open check: refused for a closed tenant.

use crate::adapters::aws::written;
use async_trait::async_trait;

use aws_sdk_dynamodb::types::{TransactWriteItem, Update};

use super::{classify, from_item, keys, n, s, to_item, CancelReason, DynamoStore, TTL_ATTR};
use crate::domain::TenantId;
use crate::ports::{
    CallbackFailure, CallbackFailurePage, OwedCallback, PendingStatus, PendingStatusStore,
    StatusCallback, StatusCallbackStore,
};
use crate::store_error::StoreError;

/// The attribute on a wamid's index item saying a status was kept for the wamid before
/// (or while) it was indexed.
pub(super) const PENDING_MARK: &str = "pending_kept";

fn pending_key(status: &PendingStatus) -> keys::Key {
    keys::pending_status(&status.wamid, status.status.as_str(), status.timestamp)
}

#[async_trait]
impl PendingStatusStore for DynamoStore {
    async fn put_pending_status(&self, status: &PendingStatus) -> Result<bool, StoreError> {
        let item = to_item(status, &pending_key(status).pairs(), status.expires_at)?;
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #ttl <= :now")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(self.now_secs()))
            .send()
            .await;
        let new = written("dynamodb put", res)?;
        // Also for a duplicate: the first keep may have failed before its mark. After
        // the kept item, so a dispatcher that sees the mark finds the item.
        let mut mark = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::wamid_index(&status.wamid).attrs()))
            .expression_attribute_names("#mark", PENDING_MARK)
            .expression_attribute_values(":t", aws_sdk_dynamodb::types::AttributeValue::Bool(true));
        mark = match status.expires_at {
            // A mark alone expires with the kept status; an index item keeps its own TTL.
            Some(t) => mark
                .update_expression("SET #mark = :t, #ttl = if_not_exists(#ttl, :exp)")
                .expression_attribute_names("#ttl", TTL_ATTR)
                .expression_attribute_values(":exp", n(t)),
            None => mark.update_expression("SET #mark = :t"),
        };
        mark.send()
            .await
            .map_err(|e| classify("dynamodb update", e))?;
        Ok(new)
    }

    async fn pending_statuses(&self, wamid: &str) -> Result<Vec<PendingStatus>, StoreError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", s(keys::wamid_pk(wamid)))
            .expression_attribute_values(":p", s(keys::PENDING_PREFIX))
            .into_paginator()
            .items()
            .send();
        let mut out = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| classify("dynamodb query", e))?;
            if self.live(&item) {
                out.push(from_item::<PendingStatus>(item)?);
            }
            // A wamid gets a handful of statuses; this bounds a pathological partition.
            if out.len() >= 100 {
                break;
            }
        }
        out.sort_by_key(|a| (a.timestamp, a.received_at));
        Ok(out)
    }

    async fn delete_pending_status(&self, status: &PendingStatus) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(pending_key(status).attrs()))
            .send()
            .await
            .map_err(|e| classify("dynamodb delete", e))?;
        Ok(())
    }
}

#[async_trait]
impl StatusCallbackStore for DynamoStore {
    async fn put_status_callback(&self, setting: &StatusCallback) -> Result<(), StoreError> {
        let item = to_item(
            setting,
            &keys::status_callback(&setting.tenant_id).pairs(),
            None,
        )?;
        // With the tenant's check: a closed tenant's setting (given its TTL by the
        // close-out) is never replaced by one without.
        let items = vec![
            self.tenant_open_check(&setting.tenant_id)?,
            self.put(item, None)?,
        ];
        // The tenant-open check names the tenant item, which every send's debit holds
        // in its transaction: a conflict with one wrote nothing, and goes again.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(()),
            Err(e) if Self::refused_as_closed(&e) => Err(Self::tenant_closed()),
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn get_status_callback(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<StatusCallback>, StoreError> {
        self.get_may_lag(keys::status_callback(tenant))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn set_status_callback_url(
        &self,
        tenant: &TenantId,
        url: &str,
        updated_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::status_callback(tenant).attrs()))
            .update_expression("SET #url = :url, updated_at = :at")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#url", "url")
            .expression_attribute_values(":url", s(url))
            .expression_attribute_values(
                ":at",
                s(updated_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            )
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        // With the tenant's check, as the whole setting's write: a request a warm instance
        // serves with a closed tenant still cached open changes nothing.
        let items = vec![
            self.tenant_open_check(tenant)?,
            TransactWriteItem::builder().update(update).build(),
        ];
        // The tenant-open check names the tenant item, which every send's debit holds
        // in its transaction: a conflict with one wrote nothing, and goes again.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(true),
            Err(e) if Self::refused_as_closed(&e) => Err(Self::tenant_closed()),
            Err(e) if e.reason(1) == Some(&CancelReason::ConditionalCheckFailed) => Ok(false),
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn delete_status_callback(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::status_callback(tenant).attrs()))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        written("dynamodb delete", res)
    }

    async fn owe_callback(&self, owed: &OwedCallback) -> Result<(), StoreError> {
        let key = keys::owed_callback(&owed.tenant_id, &owed.message_id, owed.sequence);
        let item = to_item(owed, &key.pairs(), owed.expires_at)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| classify("dynamodb put", e))?;
        Ok(())
    }

    async fn owed_callbacks(&self, limit: usize) -> Result<Vec<OwedCallback>, StoreError> {
        // `Limit` per request: a backlog of thousands is not read a megabyte at a time.
        let now = self.now_secs();
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .expression_attribute_values(":pk", s(keys::owed_callbacks_pk()))
                .expression_attribute_values(":p", s(keys::OWED_PREFIX))
                .set_exclusive_start_key(start.take())
                .limit(limit.clamp(1, 1000) as i32)
                .send()
                .await
                .map_err(|e| classify("dynamodb query", e))?;
            for item in page.items.unwrap_or_default() {
                if !self.live(&item) {
                    continue;
                }
                let owed: OwedCallback = from_item(item)?;
                if owed.leased_until.is_none_or(|t| t <= now) {
                    out.push(owed);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(out);
            }
        }
    }

    async fn lease_owed_callback(
        &self,
        owed: &OwedCallback,
        until: i64,
    ) -> Result<bool, StoreError> {
        let key = keys::owed_callback(&owed.tenant_id, &owed.message_id, owed.sequence);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key.attrs()))
            .update_expression("SET leased_until = :until")
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(leased_until) \
                 OR leased_until <= :now)",
            )
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(self.now_secs()))
            .send()
            .await;
        written("dynamodb update", res)
    }

    async fn forget_owed_callback(&self, owed: &OwedCallback) -> Result<(), StoreError> {
        let key = keys::owed_callback(&owed.tenant_id, &owed.message_id, owed.sequence);
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key.attrs()))
            .send()
            .await
            .map_err(|e| classify("dynamodb delete", e))?;
        Ok(())
    }

    async fn put_callback_failure(&self, failure: &CallbackFailure) -> Result<(), StoreError> {
        let key = keys::callback_failure(&failure.tenant_id, &failure.id);
        let item = to_item(failure, &key.pairs(), failure.expires_at)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| classify("dynamodb put", e))?;
        Ok(())
    }

    async fn callback_failures_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<CallbackFailurePage, StoreError> {
        let (failures, next_cursor) = self
            .query_page_under(
                keys::callback_failures_pk(tenant),
                keys::CALLBACK_FAILURE_PREFIX,
                crate::ports::Order::NewestFirst,
                limit,
                cursor,
            )
            .await?;
        Ok(CallbackFailurePage {
            failures,
            next_cursor,
        })
    }
}
