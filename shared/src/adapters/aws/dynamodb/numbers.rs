//! `PhoneNumberStore` and `UsageStore` on the one table.
//!
//! A phone number is two items: its route `PHONE#{id}` / `PHONE` (`tenant_id`: what Meta's
//! webhooks are routed by, and what makes a number one tenant's at most) and its item in
//! the tenant's partition, `NUMBER#{id}`, indexed under its WABA (gsi1 `WABA#{waba}` /
//! `TENANT#{tenant}`, beside the tenant item's). Adding writes both in one transaction
//! conditioned on neither existing; removing deletes both in one transaction with a
//! condition on the tenant item (not its default number).
//!
//! A usage row is `USAGE#{day}#{category}#{type}#{shard}` in the tenant's partition
//! (Billing TTL), spread over [`USAGE_SHARDS`](crate::ports::USAGE_SHARDS) items by
//! message (A79): Meta's pricing is counted by one transaction that sets `pricing` on the
//! message only if it has none and ADDs to the message's part of the row, so a repeated
//! pricing counts nothing; a read sums the parts (and a row written before the spread,
//! without `#{shard}`).

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    Delete, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    classify, dyn_value, from_item, keys, n, s, to_item, CancelReason, DynamoStore, Item, TTL_ATTR,
};
use crate::domain::{MessageStatus, TemplateQuality, TenantId};
use crate::ports::{
    add_usage_row, usage_shard, NumberHold, PhoneNumberRecord, PhoneNumberStore, PricedMessage,
    StatusChange, UsageRow, UsageStore,
};
use crate::store_error::StoreError;

fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Corrupt(format!("transaction item: {e}")))
}

/// The number item a refused conditional update found (`ReturnValuesOnConditionCheckFailure`),
/// when DynamoDB answered it and it reads as a number.
fn refused_number(
    e: &aws_sdk_dynamodb::operation::update_item::UpdateItemError,
) -> Option<PhoneNumberRecord> {
    match e {
        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
            c.item().and_then(|i| from_item(i.clone()).ok())
        }
        _ => None,
    }
}

impl DynamoStore {
    /// `message` (an update that sets the pricing, conditioned on there being none yet)
    /// and the usage row's `ADD`, in one transaction: `false` when the message's
    /// condition refused it (nothing written).
    async fn priced_with(
        &self,
        message: Update,
        priced: &PricedMessage<'_>,
    ) -> Result<bool, StoreError> {
        let p = priced.pricing;
        let mut row = Update::builder()
            .table_name(&self.table)
            .set_key(Some(
                keys::usage_counter(
                    priced.tenant,
                    priced.day,
                    &p.category,
                    &p.pricing_type,
                    usage_shard(priced.message),
                )
                .attrs(),
            ))
            .expression_attribute_names("#date", "date")
            .expression_attribute_values(":d", s(priced.day.format("%Y-%m-%d").to_string()))
            .expression_attribute_values(":c", s(&p.category))
            .expression_attribute_values(":t", s(&p.pricing_type))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":cr", n(priced.credits));
        row = match priced.expires_at {
            Some(ttl) => row
                .update_expression(
                    "SET #date = :d, category = :c, pricing_type = :t, #ttl = :ttl \
                     ADD messages :one, credits :cr",
                )
                .expression_attribute_names("#ttl", TTL_ATTR)
                .expression_attribute_values(":ttl", n(ttl)),
            None => row.update_expression(
                "SET #date = :d, category = :c, pricing_type = :t ADD messages :one, credits :cr",
            ),
        };
        let items = vec![
            TransactWriteItem::builder().update(message).build(),
            TransactWriteItem::builder()
                .update(built(row.build())?)
                .build(),
        ];
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(true),
            Err(e) if e.reason(0) == Some(&CancelReason::ConditionalCheckFailed) => Ok(false),
            Err(e) => Err(e.into_store_error()),
        }
    }

    /// `MessageStore::record_overtaken`: `SET events` (the list as read, with `event` in
    /// its place) and, if not set yet, `settled_at` (from the list as read),
    /// conditioned on the status and the count of events as read; with
    /// `priced`, the pricing too (none yet) and the usage row, in one transaction.
    pub(super) async fn overtaken_event(
        &self,
        seen: &crate::domain::MessageRecord,
        event: crate::domain::StatusEvent,
        priced: Option<&PricedMessage<'_>>,
    ) -> Result<bool, StoreError> {
        if seen.events.iter().any(|e| e.status == event.status) {
            return Ok(false);
        }
        // The message's settled time as its events have it before this one (the condition
        // below holds them as read), kept once: the late event's time is earlier
        // (`MessageRecord::settled_at`).
        let settled =
            crate::ports::settled_at(seen.events.iter().map(|e| (e.status.as_str(), e.at)));
        let events = dyn_value(&crate::ports::with_overtaken(&seen.events, event))?;
        let key = keys::message(&seen.tenant_id, &seen.id).attrs();
        let names = std::collections::HashMap::from([
            ("#status".to_owned(), "status".to_owned()),
            ("#ttl".to_owned(), TTL_ATTR.to_owned()),
        ]);
        let mut values: Item = Item::from([
            (":ev".to_owned(), events),
            (":seen".to_owned(), s(seen.status.as_str())),
            (":n".to_owned(), n(seen.events.len() as i64)),
            (":now".to_owned(), n(self.now_secs())),
        ]);
        let set = match settled {
            Some(at) => {
                values.insert(":settled".to_owned(), dyn_value(&at)?);
                "SET events = :ev, settled_at = if_not_exists(settled_at, :settled)"
            }
            None => "SET events = :ev",
        };
        let cond = "#status = :seen AND size(events) = :n \
                    AND (attribute_not_exists(#ttl) OR #ttl > :now)";
        let Some(priced) = priced else {
            // Alone, not in a transaction: one write unit, not two. A priced move of the
            // same message in flight (another body's) is a conflict, tried again.
            let res = super::update_retrying_conflicts(
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key))
                    .update_expression(set)
                    .condition_expression(cond)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values)),
            )
            .await;
            return super::super::written("dynamodb update", res);
        };
        values.insert(":p".to_owned(), dyn_value(priced.pricing)?);
        let update = built(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .update_expression(format!("{set}, pricing = :p"))
                .condition_expression(format!("{cond} AND attribute_not_exists(pricing)"))
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .build(),
        )?;
        self.priced_with(update, priced).await
    }

    /// Adds the number: its route claimed free (`over: None`) or taken over from a closed
    /// tenant that still holds it (`PhoneNumberStore::add_phone_number_over_closed`).
    async fn add_number_claiming(
        &self,
        number: &PhoneNumberRecord,
        over: Option<&TenantId>,
    ) -> Result<(), StoreError> {
        // Never from itself (its tenant item cannot be both open and closed, and one
        // transaction may not name an item twice).
        if over == Some(&number.tenant_id) {
            return Err(StoreError::Conflict(
                "phone_number_id already belongs to a tenant".into(),
            ));
        }
        let mut route: Item = keys::phone_route(&number.phone_number_id).attrs();
        route.insert("tenant_id".into(), s(number.tenant_id.to_string()));
        // Never for a closed tenant (the check travels with the write): a route written
        // after its close-out passed the numbers would hold the number forever.
        let mut items = vec![
            self.tenant_open_check(&number.tenant_id)?,
            self.route_put(route, over)?,
            self.put(self.number_item(number)?, Some("attribute_not_exists(pk)"))?,
        ];
        if let Some(closed) = over {
            items.push(self.tenant_closed_check(closed)?);
        }
        // The tenant-open check names the tenant item, which every send's debit holds
        // in its transaction: a conflict with one wrote nothing, and goes again.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(()),
            Err(e) if Self::refused_as_closed(&e) => Err(Self::tenant_closed()),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => Err(StoreError::Conflict(
                "phone_number_id already belongs to a tenant".into(),
            )),
            Err(e) => Err(e.into_store_error()),
        }
    }

    pub(super) fn number_item(&self, number: &PhoneNumberRecord) -> Result<Item, StoreError> {
        to_item(
            number,
            &keys::phone_number(&number.tenant_id, &number.phone_number_id).with_gsi1(
                keys::phone_number_waba_gsi1(&number.waba_id, &number.tenant_id),
            ),
            None,
        )
    }
}

#[async_trait]
impl PhoneNumberStore for DynamoStore {
    async fn add_phone_number(&self, number: &PhoneNumberRecord) -> Result<(), StoreError> {
        self.add_number_claiming(number, None).await
    }

    async fn add_phone_number_over_closed(
        &self,
        number: &PhoneNumberRecord,
        closed: &TenantId,
    ) -> Result<(), StoreError> {
        self.add_number_claiming(number, Some(closed)).await
    }

    async fn put_phone_number_if_absent(
        &self,
        number: &PhoneNumberRecord,
    ) -> Result<bool, StoreError> {
        // With the tenant-open check, as every write of configuration without a TTL: an
        // item written after the close-out passed the tenant's numbers would be kept
        // forever (its close-out gives TTLs only to what it finds).
        let items = vec![
            self.tenant_open_check(&number.tenant_id)?,
            self.put(self.number_item(number)?, Some("attribute_not_exists(pk)"))?,
        ];
        // The tenant-open check names the tenant item, which every send's debit holds
        // in its transaction: a conflict with one wrote nothing, and goes again.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(true),
            Err(e) if Self::refused_as_closed(&e) => Err(Self::tenant_closed()),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => Ok(false),
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn get_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        self.get_may_lag(keys::phone_number(tenant, phone_number_id))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn list_phone_numbers(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<PhoneNumberRecord>, StoreError> {
        self.query_prefix(keys::tenant_pk(tenant), keys::NUMBER_PREFIX)
            .await
    }

    async fn remove_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
    ) -> Result<(), StoreError> {
        // The condition on the tenant item rides on a marker update (no ConditionCheck:
        // every function's grants stay the table's Put/Update/Delete).
        let not_default = built(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(keys::tenant(tenant).attrs()))
                .update_expression("SET numbers_changed_at = :now")
                .condition_expression("attribute_exists(pk) AND phone_number_id <> :p")
                .expression_attribute_values(":p", s(phone_number_id))
                .expression_attribute_values(":now", n(self.now_secs()))
                .build(),
        )?;
        let number = built(
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(keys::phone_number(tenant, phone_number_id).attrs()))
                .condition_expression("attribute_exists(pk)")
                .build(),
        )?;
        // The route if it is the tenant's (or already gone); another tenant's is left.
        let route = built(
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(keys::phone_route(phone_number_id).attrs()))
                .condition_expression("attribute_not_exists(pk) OR tenant_id = :t")
                .expression_attribute_values(":t", s(tenant.as_str()))
                .build(),
        )?;
        let mut items = vec![
            TransactWriteItem::builder().update(not_default).build(),
            TransactWriteItem::builder().delete(number).build(),
            TransactWriteItem::builder().delete(route).build(),
        ];
        loop {
            // The tenant item is in every send's debit: retried on a conflict with one.
            match self.transact_retrying_conflicts(items.clone()).await {
                Ok(()) => return Ok(()),
                // Only the route refused: it is another tenant's now (the number was
                // onboarded there after its route went): the item goes without it.
                Err(e)
                    if items.len() == 3
                        && e.reason(2) == Some(&CancelReason::ConditionalCheckFailed)
                        && !matches!(
                            (e.reason(0), e.reason(1)),
                            (Some(CancelReason::ConditionalCheckFailed), _)
                                | (_, Some(CancelReason::ConditionalCheckFailed))
                        ) =>
                {
                    items.truncate(2);
                }
                Err(e) if e.any(CancelReason::ConditionalCheckFailed) => {
                    return Err(StoreError::Conflict(
                        "the number is the default or is not the tenant's".into(),
                    ))
                }
                Err(e) => return Err(e.into_store_error()),
            }
        }
    }

    async fn set_default_number(
        &self,
        tenant: &TenantId,
        number: &PhoneNumberRecord,
    ) -> Result<(), StoreError> {
        let exists = built(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(
                    keys::phone_number(tenant, &number.phone_number_id).attrs(),
                ))
                .update_expression("SET made_default_at = :now")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":now", n(self.now_secs()))
                .build(),
        )?;
        // The number's item carries the tenant's WABA index entry; a tenant item written
        // before that (with its own entry) loses it here: the service stored the old
        // default's item first (`numbers::set_default`), so the old WABA still finds it.
        let update = built(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(keys::tenant(tenant).attrs()))
                .update_expression("SET phone_number_id = :p, waba_id = :w REMOVE gsi1pk, gsi1sk")
                .condition_expression("attribute_exists(pk) AND #status <> :closed")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":p", s(&number.phone_number_id))
                .expression_attribute_values(":w", s(&number.waba_id))
                .expression_attribute_values(":closed", s("closed"))
                .build(),
        )?;
        let items = vec![
            TransactWriteItem::builder().update(exists).build(),
            TransactWriteItem::builder().update(update).build(),
        ];
        // The tenant item is in every send's debit: retried on a conflict with one.
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(()),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => Err(StoreError::Conflict(
                "the number is not the tenant's, or the tenant is closed".into(),
            )),
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn learn_display_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        display: &str,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::phone_number(tenant, phone_number_id).attrs()))
            .update_expression("SET display_phone_number = :d")
            // A number written without one may carry it as NULL.
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(display_phone_number) \
                 OR attribute_type(display_phone_number, :null))",
            )
            .expression_attribute_values(":d", s(display.to_owned()))
            .expression_attribute_values(":null", s("NULL".to_owned()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(false)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn set_number_quality(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        quality: Option<TemplateQuality>,
        throughput_per_sec: Option<u32>,
        meta_time: Option<i64>,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        // Each field its own conditional write on its own time (an event carrying both is
        // rare: Meta's quality webhooks come a few times a month).
        let mut written = None;
        if let Some(q) = quality {
            let set = self
                .set_number_field(
                    tenant,
                    phone_number_id,
                    ("quality", dyn_value(&q)?),
                    "quality_meta_at",
                    meta_time,
                    false,
                )
                .await?;
            written = set.or(written);
        }
        if let Some(t) = throughput_per_sec {
            let set = self
                .set_number_field(
                    tenant,
                    phone_number_id,
                    ("throughput_per_sec", n(i64::from(t))),
                    "throughput_meta_at",
                    meta_time,
                    true,
                )
                .await?;
            written = set.or(written);
        }
        Ok(written)
    }

    async fn hold_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        hold: &NumberHold,
        signal_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::phone_number(tenant, phone_number_id).attrs()))
            .update_expression("SET #hold = :h")
            // The first hold is kept; an admin's resume after Meta's word stands.
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(#hold) \
                 OR attribute_type(#hold, :nul)) \
                 AND (attribute_not_exists(resumed_at_ms) OR resumed_at_ms <= :at)",
            )
            .expression_attribute_names("#hold", "hold")
            .expression_attribute_values(":h", dyn_value(hold)?)
            .expression_attribute_values(":nul", s("NULL"))
            .expression_attribute_values(":at", n(signal_at.timestamp_millis()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            // Refused: held already (or not there, or resumed since) — unless the hold it
            // holds is this very one, landed on a try whose answer was lost and refused on
            // the SDK's retry by itself (its `since` is this call's own time).
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(refused_number(e.err()).is_some_and(|n| n.hold.as_ref() == Some(hold)))
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn resume_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::phone_number(tenant, phone_number_id).attrs()))
            .update_expression("REMOVE #hold SET resumed_at_ms = :at")
            .condition_expression(
                "attribute_exists(pk) AND attribute_exists(#hold) \
                 AND NOT attribute_type(#hold, :nul)",
            )
            .expression_attribute_names("#hold", "hold")
            .expression_attribute_values(":nul", s("NULL"))
            .expression_attribute_values(":at", n(at.timestamp_millis()))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Some(from_item(out.attributes.unwrap_or_default())?)),
            // Not held — unless by this very resume, landed on a try whose answer was lost
            // (the number as it is then is this call's own answer).
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(refused_number(e.err())
                    .filter(|n| n.hold.is_none() && n.resumed_at_ms == Some(at.timestamp_millis())))
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }
}

#[async_trait]
impl UsageStore for DynamoStore {
    async fn record_pricing(&self, priced: &PricedMessage<'_>) -> Result<bool, StoreError> {
        let message = built(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(keys::message(priced.tenant, priced.message).attrs()))
                .update_expression("SET pricing = :p")
                .condition_expression("attribute_exists(pk) AND attribute_not_exists(pricing)")
                .expression_attribute_values(":p", dyn_value(priced.pricing)?)
                .build(),
        )?;
        self.priced_with(message, priced).await
    }

    async fn transition_priced(
        &self,
        priced: &PricedMessage<'_>,
        from: &[MessageStatus],
        to: MessageStatus,
        change: &StatusChange,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let from: Vec<MessageStatus> = from.iter().copied().filter(|f| to.may_follow(*f)).collect();
        if from.is_empty() {
            return Ok(false);
        }
        let Some(u) = self.status_update(priced.tenant, priced.message, to, &from, change, at)?
        else {
            return Ok(false);
        };
        // The move's own condition, and the pricing not set yet: both or nothing.
        let u = u.set_once("pricing", dyn_value(priced.pricing)?);
        let message = built(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(keys::message(priced.tenant, priced.message).attrs()))
                .update_expression(u.expression)
                .condition_expression(u.condition)
                .set_expression_attribute_names(Some(u.names))
                .set_expression_attribute_values(Some(u.values))
                .build(),
        )?;
        self.priced_with(message, priced).await
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let (lo, hi) = keys::usage_range(from, to);
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(keys::tenant_pk(tenant)))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| classify("dynamodb query", e))?;
            if self.live(&item) {
                add_usage_row(&mut out, from_item(item)?);
            }
        }
        Ok(out)
    }
}

impl DynamoStore {
    /// `SET {field} = value[, {at} = meta_time]` on a number that exists, unless its `at`
    /// says Meta changed that field later; the number as written, `None` if refused.
    /// `legacy`: an item that has the field but no `at` of its own (written when one
    /// `quality_meta_at` timed both fields) goes by `quality_meta_at`.
    async fn set_number_field(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        (field, value): (&str, aws_sdk_dynamodb::types::AttributeValue),
        at: &str,
        meta_time: Option<i64>,
        legacy: bool,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::phone_number(tenant, phone_number_id).attrs()))
            .expression_attribute_names("#f", field)
            .expression_attribute_values(":v", value)
            .return_values(ReturnValue::AllNew);
        req = match meta_time {
            Some(mt) => req
                .update_expression("SET #f = :v, #at = :mt")
                .condition_expression(if legacy {
                    "attribute_exists(pk) AND (#at <= :mt OR (attribute_not_exists(#at) \
                     AND (attribute_not_exists(#f) OR attribute_type(#f, :nul) \
                     OR attribute_not_exists(quality_meta_at) OR quality_meta_at <= :mt)))"
                } else {
                    "attribute_exists(pk) AND (attribute_not_exists(#at) OR #at <= :mt)"
                })
                .expression_attribute_names("#at", at)
                .expression_attribute_values(":mt", n(mt)),
            None => req
                .update_expression("SET #f = :v")
                .condition_expression("attribute_exists(pk)"),
        };
        if legacy && meta_time.is_some() {
            req = req.expression_attribute_values(":nul", s("NULL"));
        }
        match req.send().await {
            Ok(out) => Ok(Some(from_item(out.attributes.unwrap_or_default())?)),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(None)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }
}
