//! `OptOutStore` on the one table: `pk = TENANT#{tenant}`, `sk = OPTOUT#{e164 or user id}`, no TTL
//! (active configuration, kept while the tenant exists). Listing is a Query on the
//! tenant's partition with `begins_with(sk, "OPTOUT#")`, in phone-number order.

use crate::adapters::aws::written;
use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{
    classify, cursor_sort_key, decode_cursor, encode_cursor, from_item, keys, n, s, to_item,
    DynamoStore, Item,
};
use crate::domain::{OptOut, OptOutKey, OptOutScope, TenantId};
use crate::ports::{OptOutPage, OptOutStore};
use crate::store_error::StoreError;

#[async_trait]
impl OptOutStore for DynamoStore {
    async fn put_opt_out(&self, opt_out: &OptOut) -> Result<(OptOut, bool), StoreError> {
        let key = opt_out
            .key()
            .ok_or_else(|| StoreError::Rejected("an opt-out names no phone or user id".into()))?;
        let item = to_item(
            opt_out,
            &keys::opt_out(&opt_out.tenant_id, &key).pairs(),
            None,
        )?;
        // `all` replaces anything; `marketing` never narrows an existing `all`.
        for _ in 0..3 {
            let mut req = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                // The old item, if any, tells whether this opt-out is new.
                .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld);
            if opt_out.scope == OptOutScope::Marketing {
                req = req
                    .condition_expression("attribute_not_exists(pk) OR #scope = :marketing")
                    .expression_attribute_names("#scope", "scope")
                    .expression_attribute_values(":marketing", s(OptOutScope::Marketing.as_str()));
            } else if let Some(at) = opt_out.meta_timestamp {
                // A reply's STOP never moves the newest STOP's time back.
                req = req
                    .condition_expression(
                        "attribute_not_exists(pk) OR attribute_not_exists(meta_timestamp) \
                         OR meta_timestamp <= :at",
                    )
                    .expression_attribute_values(":at", n(at));
            }
            match req.send().await {
                Ok(out) => {
                    let was_new = out.attributes().is_none_or(|a| a.is_empty());
                    return Ok((opt_out.clone(), was_new));
                }
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() =>
                {
                    // A wider opt-out is in place: answer it (unless it was just removed).
                    if let Some(existing) = self.get_opt_out(&opt_out.tenant_id, &key).await? {
                        return Ok((existing, false));
                    }
                }
                Err(e) => return Err(classify("dynamodb put", e)),
            }
        }
        Err(StoreError::Unavailable(
            "opt-out changed concurrently".into(),
        ))
    }

    async fn get_opt_out(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOut>, StoreError> {
        self.get(keys::opt_out(tenant, key))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn peek_opt_out(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOut>, StoreError> {
        self.get_eventually(keys::opt_out(tenant, key))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn delete_opt_out_not_newer_than(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        at: i64,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::opt_out(tenant, key).attrs()))
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(meta_timestamp) \
                 OR meta_timestamp <= :at)",
            )
            .expression_attribute_values(":at", n(at))
            .send()
            .await;
        written("dynamodb delete", res)
    }

    async fn delete_opt_out_of_scope(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        scope: OptOutScope,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::opt_out(tenant, key).attrs()))
            .condition_expression("attribute_exists(pk) AND #scope = :scope")
            .expression_attribute_names("#scope", "scope")
            .expression_attribute_values(":scope", s(scope.as_str()))
            .send()
            .await;
        written("dynamodb delete", res)
    }

    async fn delete_opt_out(&self, tenant: &TenantId, key: &OptOutKey) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::opt_out(tenant, key).attrs()))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        written("dynamodb delete", res)
    }

    async fn list_opt_outs(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<OptOutPage, StoreError> {
        let limit = limit.clamp(1, 100);
        // The cursor's key is only a position: rebuilt from the opt-out it names, so a
        // hand-made one never reaches DynamoDB as a start key outside the query.
        let start = cursor
            .map(|c| {
                let item = decode_cursor(c, tenant)?;
                cursor_sort_key(&item, tenant, keys::OPT_OUT_PREFIX)
                    .and_then(OptOutKey::parse)
                    .map(|key| keys::opt_out(tenant, &key).attrs())
                    .ok_or(StoreError::InvalidCursor)
            })
            .transpose()?;
        // One more than asked: a next cursor only when there is a next page.
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", s(keys::tenant_pk(tenant)))
            .expression_attribute_values(":p", s(keys::OPT_OUT_PREFIX))
            .set_exclusive_start_key(start)
            .limit(limit as i32 + 1)
            .send()
            .await
            .map_err(|e| classify("dynamodb query", e))?;
        let mut items = out.items.unwrap_or_default();
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().and_then(|last| {
                let key: Item = HashMap::from([
                    (
                        keys::PK.to_owned(),
                        AttributeValue::S(keys::tenant_pk(tenant)),
                    ),
                    (keys::SK.to_owned(), last.get(keys::SK)?.clone()),
                ]);
                encode_cursor(&key)
            })
        } else {
            None
        };
        // A closed-out tenant's opt-outs carry a TTL: expired ones are not answered (a page
        // may then be short while a next cursor is set).
        let opt_outs = items
            .into_iter()
            .filter(|i| self.live(i))
            .map(from_item::<OptOut>)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OptOutPage {
            opt_outs,
            next_cursor,
        })
    }
}
