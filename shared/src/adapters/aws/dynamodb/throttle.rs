//! `Throughput` and `SendingControl` on the one table.
//!
//! Send slots: `pk = RATE#{phone_number_id}`, `sk = NEXT`, `tat` = the next free slot in
//! epoch microseconds, `ttl` one hour on (an idle number's item simply expires). A
//! reservation is conditional updates and never a read:
//! - "next": `tat` is between now and now + max wait: take it, `SET tat = tat + :span`;
//! - "now": no `tat` or one in the past: take now, `SET tat = :now + :span`.
//!
//! A refused update answers the item as it was (`ReturnValuesOnConditionCheckFailure`,
//! free), and its `tat` says what to do next: in the past or absent, "now"; too far ahead
//! for the run, the number is full for `max_wait` (no further write); otherwise another
//! dispatcher moved it between the two, so "next" again. At most three updates.
//!
//! A failed conditional update still costs a write unit, and at a steady trickle a number
//! is idle (`tat` in the past) at each send, so "next" would fail every time. When the
//! last slot this process took for the number is in the past, it tries "now" first: one
//! write instead of two (`scripts/bench-cost`). Every step is still a conditional update;
//! the hint only orders them.
//!
//! A run of `count` slots (`reserve_slots`, a dispatcher batch's messages for one number)
//! is the same steps moving `tat` by `count` intervals at once, with the condition on the
//! run's last slot: one write for the run.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};

use super::{classify, from_item, keys, n, s, DynamoStore, TTL_ATTR};
use crate::domain::{
    CarriedSlot, MessageError, MessageId, MessageRecord, MessageStatus, StatusEvent, TenantId,
    SEND_SLOT_RETENTION,
};
use crate::ports::{
    micros_to_time, slot_interval_micros, SendingControl, Tenant, Throughput, Transition,
};
use crate::store_error::StoreError;

/// How long an idle number's slot item lives (the SendSlot retention class).
const RATE_TTL_SECS: i64 = SEND_SLOT_RETENTION.as_secs() as i64;

fn stamp(at: DateTime<Utc>) -> AttributeValue {
    s(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

enum Step {
    Granted(i64),
    /// Refused by its condition; the slot item's `tat` as it was, if it had one.
    Refused(Option<i64>),
}

/// The `tat` of the item a refused conditional update answered (`ALL_OLD`).
fn old_tat(e: &aws_sdk_dynamodb::operation::update_item::UpdateItemError) -> Option<i64> {
    match e {
        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
            match c.item().and_then(|i| i.get("tat")) {
                Some(AttributeValue::N(v)) => v.parse().ok(),
                _ => None,
            }
        }
        _ => None,
    }
}

impl DynamoStore {
    /// Takes the run of slots starting at `tat` (`span` long, the last starting `span −
    /// interval` after the first) if its first slot is at or after `now` and its last at
    /// or before `limit`.
    async fn take_next(
        &self,
        key: &str,
        (interval, span): (i64, i64),
        now: i64,
        limit: i64,
    ) -> Result<Step, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::send_slot(key).attrs()))
            .update_expression("SET tat = tat + :span, #ttl = :ttl")
            .condition_expression("tat BETWEEN :now AND :limit")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":span", n(span))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":limit", n(limit.saturating_sub(span - interval)))
            .expression_attribute_values(":ttl", n(now / 1_000_000 + RATE_TTL_SECS))
            // The new value, not the old: moto reads UPDATED_OLD outside its write lock
            // (two callers could see one old value); DynamoDB answers either atomically.
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => match out.attributes().and_then(|a| a.get("tat")) {
                Some(AttributeValue::N(v)) => v
                    .parse::<i64>()
                    .map(|new| Step::Granted(new - span))
                    .map_err(|_| StoreError::Corrupt("rate slot is not a number".into())),
                _ => Err(StoreError::Corrupt("rate slot missing".into())),
            },
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(Step::Refused(old_tat(e.err())))
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    /// Takes the run of slots starting `now` (`span` long) if the number has no pending
    /// slot; the caller checks that the run's last slot is within its wait.
    async fn take_now(&self, key: &str, span: i64, now: i64) -> Result<Step, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::send_slot(key).attrs()))
            .update_expression("SET tat = :next, #ttl = :ttl")
            .condition_expression("attribute_not_exists(tat) OR tat < :now")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":next", n(now + span))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ttl", n(now / 1_000_000 + RATE_TTL_SECS))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(Step::Granted(now)),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(Step::Refused(old_tat(e.err())))
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }
}

#[async_trait]
impl Throughput for DynamoStore {
    async fn reserve_slots(
        &self,
        key: &str,
        per_sec: u32,
        now: DateTime<Utc>,
        max_wait: Duration,
        count: u32,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let interval = slot_interval_micros(per_sec);
        let span = interval.saturating_mul(i64::from(count.max(1)));
        let now = now.timestamp_micros();
        let limit = now.saturating_add(i64::try_from(max_wait.as_micros()).unwrap_or(i64::MAX));
        if now.saturating_add(span - interval) > limit {
            // The run would not fit even on an idle number.
            return Ok(None);
        }
        let next = (interval, span);
        // The last slot this process took for the number is over: "now" first.
        let mut take_now = self
            .slot_hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|tat| *tat < now);
        let mut granted = None;
        for _ in 0..3 {
            let step = if take_now {
                self.take_now(key, span, now).await?
            } else {
                self.take_next(key, next, now, limit).await?
            };
            match step {
                Step::Granted(t) => {
                    granted = Some(t);
                    break;
                }
                // No `tat` answered: after "next", the item is new or has none, so "now";
                // after "now" (which an item without one would have granted), "next".
                Step::Refused(None) => take_now = !take_now,
                Step::Refused(Some(tat)) if tat < now => take_now = true,
                // The run's last slot would start after the wait: full, no more writes.
                Step::Refused(Some(tat)) if tat.saturating_add(span - interval) > limit => break,
                // Moved by another dispatcher between the two: "next" again.
                Step::Refused(Some(_)) => take_now = false,
            }
        }
        if let Some(t) = granted {
            let mut hints = self.slot_hints.lock().unwrap_or_else(|e| e.into_inner());
            if hints.len() >= 10_000 {
                hints.clear();
            }
            // The run's end: the number is idle again after it.
            hints.insert(key.to_owned(), t.saturating_add(span));
        }
        Ok(granted.map(micros_to_time))
    }

    async fn set_throughput(&self, tenant: &TenantId, per_sec: u32) -> Result<Tenant, StoreError> {
        // The tenant item: a send's debit in flight on it cancels this, which goes again.
        let res = super::update_retrying_conflicts(
            self.open_tenant_update(tenant, "SET throughput_per_sec = :v")?
                .expression_attribute_values(":v", n(i64::from(per_sec)))
                .return_values(ReturnValue::AllNew),
        )
        .await;
        match res {
            Ok(out) => from_item(out.attributes.unwrap_or_default()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(self.why_refused(tenant).await)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }
}

fn applied_or_refused(
    res: Result<
        aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
        SdkError<aws_sdk_dynamodb::operation::update_item::UpdateItemError>,
    >,
) -> Result<Transition, StoreError> {
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

#[async_trait]
impl SendingControl for DynamoStore {
    async fn release_unattempted(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        events: usize,
        at: DateTime<Utc>,
        slot: Option<CarriedSlot>,
    ) -> Result<Transition, StoreError> {
        let carried = slot
            .map(serde_dynamo::to_attribute_value)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // The claim's `sending` event is the last of `events` (none to remove: none).
        let last = match events.checked_sub(1) {
            Some(i) => format!(", events[{i}]"),
            None => String::new(),
        };
        // `accepted` has no status index entry (keys.rs).
        let set = if carried.is_some() {
            "SET #status = :acc, updated_at = :at, carried_slot = :slot"
        } else {
            "SET #status = :acc, updated_at = :at"
        };
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::message(tenant, id).attrs()))
            .update_expression(format!(
                "{set} REMOVE gsi1pk, gsi1sk{last} ADD attempts :minus"
            ))
            .set_expression_attribute_values(carried.map(|v| [(":slot".to_owned(), v)].into()))
            // Only this claim, as `expire_sending`, and its events as the claim left them.
            .condition_expression(
                "#status = :sending AND attempts > :zero AND updated_at = :claimed \
                 AND size(events) = :events",
            )
            .expression_attribute_values(":events", n(events as i64))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":acc", s(MessageStatus::Accepted.as_str()))
            .expression_attribute_values(":sending", s(MessageStatus::Sending.as_str()))
            .expression_attribute_values(":at", stamp(at))
            .expression_attribute_values(":claimed", stamp(claimed_at))
            .expression_attribute_values(":minus", n(-1))
            .expression_attribute_values(":zero", n(0))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        applied_or_refused(res)
    }

    async fn expire_sending(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        error: &MessageError,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError> {
        let event = serde_dynamo::to_attribute_value(StatusEvent {
            status: MessageStatus::Failed,
            at,
        })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let e = serde_dynamo::to_attribute_value(error)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::message(tenant, id).attrs()))
            .update_expression(
                "SET #status = :failed, gsi1pk = :g, gsi1sk = :gsk, #error = :e, \
                 updated_at = :at, events = list_append(events, :ev)",
            )
            .condition_expression("#status = :sending AND updated_at = :claimed")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":failed", s(MessageStatus::Failed.as_str()))
            .expression_attribute_values(":sending", s(MessageStatus::Sending.as_str()))
            .expression_attribute_values(
                ":g",
                s(keys::message_status_gsi1_pk(tenant, MessageStatus::Failed)),
            )
            .expression_attribute_values(":gsk", s(keys::message(tenant, id).sk))
            .expression_attribute_values(":e", e)
            .expression_attribute_values(":at", stamp(at))
            .expression_attribute_values(":claimed", stamp(claimed_at))
            .expression_attribute_values(":ev", AttributeValue::L(vec![event]))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        // Refused because this very move landed already (the SDK retrying a write whose
        // answer was lost): its `at` is this call's own, so it is answered as applied, and
        // its caller queues the callback the move owes.
        if let Err(SdkError::ServiceError(e)) = &res {
            if let aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) = e.err() {
                if let Some(old) = c.item() {
                    let record: MessageRecord = from_item(old.clone())?;
                    if crate::ports::expired_by(&record, error, at) {
                        return Ok(Transition::Applied(Box::new(record)));
                    }
                }
            }
        }
        applied_or_refused(res)
    }
}
