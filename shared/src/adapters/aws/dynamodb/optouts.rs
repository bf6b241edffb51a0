//! `OptOutStore` on the one table: `pk = TENANT#{tenant}`, `sk = OPTOUT#{e164 or user id}`, no TTL
//! (active configuration, kept while the tenant exists). Listing is a Query on the
//! tenant's partition with `begins_with(sk, "OPTOUT#")`, in phone-number order.
//!
//! Beside each key's opt-out, when the user last opted back in: `sk = OPTIN#{key}`,
//! `all_at` (a START's Meta time) and `marketing_at` (a marketing `resume`'s), the newest
//! kept, TTL `OPTED_IN_RETENTION` (7 days) from the last write. Written before the START's
//! conditional delete; an opt-out with a time is put in one transaction with a
//! `ConditionCheck` that no newer opting back in overrides it (of the same second, the
//! later arrival stands), one for each key the user is known by (`OptOut::opted_in_keys`:
//! the key it is kept under, the other it records, the one it is paired with now).

use crate::adapters::aws::written;
use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::transact::CancelReason;
use super::{
    classify, cursor_sort_key, decode_cursor, encode_cursor, from_item, keys, n, s, to_item,
    DynamoStore, Item, TTL_ATTR,
};
use crate::domain::{OptOut, OptOutKey, OptOutScope, TenantId};
use crate::ports::{OptOutPage, OptOutStore};
use crate::store_error::StoreError;
use aws_sdk_dynamodb::types::TransactWriteItem;

#[async_trait]
impl OptOutStore for DynamoStore {
    async fn opted_in(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<crate::domain::OptedIn>, StoreError> {
        // (Consistent, and past its TTL — deletion lags — as gone.)
        let Some(item) = self.get(keys::opted_in(tenant, key)).await? else {
            return Ok(None);
        };
        let at = |f: &str| match item.get(f) {
            Some(aws_sdk_dynamodb::types::AttributeValue::N(v)) => v.parse::<i64>().ok(),
            _ => None,
        };
        Ok(Some(crate::domain::OptedIn {
            all_at: at("all_at"),
            marketing_at: at("marketing_at"),
        }))
    }

    async fn put_opt_out_paired(
        &self,
        opt_out: &OptOut,
        paired: Option<&OptOutKey>,
    ) -> Result<(OptOut, bool), StoreError> {
        self.put_folded(opt_out, None, paired)
            .await?
            .ok_or_else(|| StoreError::Corrupt("an opt-out put without a source refused".into()))
    }

    async fn put_opt_out_copy(&self, copy: &OptOut, of: &OptOutKey) -> Result<bool, StoreError> {
        Ok(self.put_folded(copy, Some(of), None).await?.is_some())
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
        self.opt_back_in(tenant, key, OptOutScope::All, at).await?;
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
        at: i64,
    ) -> Result<bool, StoreError> {
        self.opt_back_in(tenant, key, scope, at).await?;
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::opt_out(tenant, key).attrs()))
            .condition_expression(
                "attribute_exists(pk) AND #scope = :scope AND \
                 (attribute_not_exists(meta_timestamp) OR meta_timestamp <= :at)",
            )
            .expression_attribute_names("#scope", "scope")
            .expression_attribute_values(":scope", s(scope.as_str()))
            .expression_attribute_values(":at", n(at))
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

    async fn delete_opt_outs(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<(), StoreError> {
        crate::ports::check_opt_outs_removed(keys)?;
        let mut unique: Vec<&OptOutKey> = Vec::with_capacity(keys.len());
        for k in keys {
            // A transaction may not name one item twice.
            if !unique.contains(&k) {
                unique.push(k);
            }
        }
        let items = unique
            .into_iter()
            .map(|key| {
                aws_sdk_dynamodb::types::Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(keys::opt_out(tenant, key).attrs()))
                    .build()
                    .map(|d| TransactWriteItem::builder().delete(d).build())
                    .map_err(|e| StoreError::Corrupt(format!("delete: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if items.is_empty() {
            return Ok(());
        }
        self.transact_retrying_conflicts(items)
            .await
            .map_err(|e| e.into_store_error())
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
                    .and_then(OptOutKey::parse_stored)
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
        let mut opt_outs = Vec::with_capacity(items.len());
        let mut kept_under = Vec::with_capacity(items.len());
        for item in items.into_iter().filter(|i| self.live(i)) {
            let key = cursor_sort_key(&item, tenant, keys::OPT_OUT_PREFIX)
                .and_then(OptOutKey::parse_stored)
                .ok_or_else(|| StoreError::Corrupt("opt-out sort key".into()))?;
            opt_outs.push(from_item::<OptOut>(item)?);
            kept_under.push(key);
        }
        Ok(OptOutPage {
            opt_outs,
            keys: kept_under,
            next_cursor,
        })
    }
}

/// The attribute of an opting back in to `scope`.
fn opted_in_field(scope: OptOutScope) -> &'static str {
    match scope {
        OptOutScope::All => "all_at",
        OptOutScope::Marketing => "marketing_at",
    }
}

impl DynamoStore {
    /// Records an opting back in to `scope` at `at`, unless a newer one is recorded (a
    /// refused write is that: nothing to do). Over a record that expired (TTL deletion
    /// lags), a fresh one: its other field is not carried into a new week (as in memory).
    async fn opt_back_in(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        scope: OptOutScope,
        at: i64,
    ) -> Result<(), StoreError> {
        let now = self.now_secs();
        let expires = now + crate::domain::OPTED_IN_RETENTION.as_secs() as i64;
        let field = opted_in_field(scope);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::opted_in(tenant, key).attrs()))
            .update_expression("SET #f = :at, #ttl = :exp")
            .condition_expression(
                "(attribute_not_exists(#f) OR #f < :at) AND (attribute_not_exists(#ttl) OR #ttl > :now)",
            )
            .expression_attribute_names("#f", field)
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":at", n(at))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        if written("dynamodb update", res)? {
            return Ok(());
        }
        // Refused: a newer one is live (nothing to do), or the record expired.
        let mut item = keys::opted_in(tenant, key).attrs();
        item.insert(field.to_owned(), n(at));
        item.insert(TTL_ATTR.to_owned(), n(expires));
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("#ttl <= :now")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        written("dynamodb put", res).map(|_| ())
    }

    /// [`OptOutStore::put_opt_out_paired`], and with `source` only while the opt-out
    /// under `source` still exists (a `ConditionCheck` in the put's transaction): `None`
    /// when it is gone, nothing written.
    async fn put_folded(
        &self,
        opt_out: &OptOut,
        source: Option<&OptOutKey>,
        paired: Option<&OptOutKey>,
    ) -> Result<Option<(OptOut, bool)>, StoreError> {
        let key = match source {
            Some(of) => opt_out.copy_key(of),
            None => opt_out.key(),
        }
        .ok_or_else(|| StoreError::Rejected("an opt-out names no phone or user id".into()))?;
        let pairs = keys::opt_out(&opt_out.tenant_id, &key).pairs();
        // Folded into what is stored (`OptOut::folded`), written only if that is still
        // what is stored: its scope and time, or its absence.
        for _ in 0..4 {
            let existing = self.get_opt_out(&opt_out.tenant_id, &key).await?;
            let Some(stored) = OptOut::folded(existing.as_ref(), opt_out) else {
                return Ok(Some((existing.unwrap_or_else(|| opt_out.clone()), false)));
            };
            let mut req = aws_sdk_dynamodb::types::Put::builder()
                .table_name(&self.table)
                .set_item(Some(to_item(&stored, &pairs, None)?));
            req = match &existing {
                None => req.condition_expression("attribute_not_exists(pk)"),
                Some(old) => {
                    let req = req
                        .expression_attribute_names("#scope", "scope")
                        .expression_attribute_values(":scope", s(old.scope.as_str()));
                    match old.meta_timestamp {
                        Some(at) => req
                            .condition_expression("#scope = :scope AND meta_timestamp = :at")
                            .expression_attribute_values(":at", n(at)),
                        None => req.condition_expression(
                            "#scope = :scope AND attribute_not_exists(meta_timestamp)",
                        ),
                    }
                }
            };
            let put = req
                .build()
                .map_err(|e| StoreError::Corrupt(format!("put: {e}")))?;
            let mut items = Vec::with_capacity(4);
            // Never for a closed tenant: its close-out gives its opt-outs their TTL, and
            // one written after it (a webhook whose warm cache still saw the tenant open)
            // would have none, kept for ever. A tenant with no item (none in a contract
            // test) does not refuse it.
            items.push(self.tenant_open_check(&opt_out.tenant_id)?);
            let tenant_at = Some(0);
            let source_at = source.map(|_| items.len());
            if let Some(of) = source {
                let check = aws_sdk_dynamodb::types::ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(keys::opt_out(&opt_out.tenant_id, of).attrs()))
                    .condition_expression("attribute_exists(pk)")
                    .build()
                    .map_err(|e| StoreError::Corrupt(format!("condition check: {e}")))?;
                items.push(TransactWriteItem::builder().condition_check(check).build());
            }
            // No opting back in of any key the user is known by is newer: one check of
            // each (distinct items: `OPTIN#`, never the `OPTOUT#` items above).
            let opted_in_from = items.len();
            if let Some(ts) = opt_out.meta_timestamp {
                for k in opt_out.opted_in_keys(&key, paired) {
                    let check =
                        self.not_opted_in_since(&opt_out.tenant_id, &k, opt_out.scope, ts)?;
                    items.push(TransactWriteItem::builder().condition_check(check).build());
                }
            }
            let put_at = items.len();
            items.push(TransactWriteItem::builder().put(put).build());
            let refused = |e: &super::transact::TransactError, at: Option<usize>| {
                at.is_some_and(|i| e.reason(i) == Some(&CancelReason::ConditionalCheckFailed))
            };
            let opted_in = |e: &super::transact::TransactError| {
                (opted_in_from..put_at).any(|i| refused(e, Some(i)))
            };
            match self.transact_retrying_conflicts(items).await {
                Ok(()) => return Ok(Some((stored, existing.is_none()))),
                // The tenant is closed: nothing written (a copy: as if its source were gone).
                Err(e) if refused(&e, tenant_at) => {
                    return match source {
                        Some(_) => Ok(None),
                        None => Err(StoreError::Conflict(crate::ports::TENANT_CLOSED.into())),
                    };
                }
                // The source is gone: nothing written.
                Err(e) if refused(&e, source_at) => return Ok(None),
                // The user opted back in as late or later: not stored.
                Err(e) if opted_in(&e) => {
                    return Ok(Some((existing.unwrap_or_else(|| opt_out.clone()), false)));
                }
                Err(e) if refused(&e, Some(put_at)) => {}
                Err(e) => return Err(e.into_store_error()),
            }
            // Changed meanwhile: fold into what is there now.
        }
        Err(StoreError::Unavailable(
            "opt-out changed concurrently".into(),
        ))
    }

    /// The condition that no live opting back in overrides an opt-out of `scope` made at
    /// `ts` (`OptedIn::overrides`): for an item that does not exist, true.
    fn not_opted_in_since(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        scope: OptOutScope,
        ts: i64,
    ) -> Result<aws_sdk_dynamodb::types::ConditionCheck, StoreError> {
        // (DynamoDB refuses redundant parentheses.)
        let all = "(attribute_not_exists(all_at) OR all_at <= :ts)";
        let condition = match scope {
            OptOutScope::All => format!("{all} OR #ttl <= :now"),
            OptOutScope::Marketing => format!(
                "({all} AND (attribute_not_exists(marketing_at) OR marketing_at <= :ts)) \
                 OR #ttl <= :now"
            ),
        };
        aws_sdk_dynamodb::types::ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(keys::opted_in(tenant, key).attrs()))
            .condition_expression(condition)
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":ts", n(ts))
            .expression_attribute_values(":now", n(self.now_secs()))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("condition check: {e}")))
    }
}
