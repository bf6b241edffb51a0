//! `HeavyRequestLeases` on the one table (A75): `pk = LEASE#{tenant}`,
//! `sk = HEAVY#{class}` (`account`, `campaign`),
//! `owner` (the holder's random token), `expires_at` (epoch **milliseconds**: when it
//! lapses), `ttl` an hour on (the SendSlot class: an idle tenant's item expires). Taken
//! with one conditional `PutItem` (no item, one that lapsed, or one that lapses further
//! ahead than `furthest`: written by a clock ahead), given back with one
//! `DeleteItem` on the owner's token; never read.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};

use super::{classify, keys, n, s, DynamoStore, TTL_ATTR};
use crate::domain::{TenantId, SEND_SLOT_RETENTION};
use crate::ports::{micros_to_time, Heavy, HeavyLease, HeavyRequestLeases};
use crate::store_error::StoreError;

/// How long a lease item outlives its taking (the SendSlot class).
const LEASE_TTL_SECS: i64 = SEND_SLOT_RETENTION.as_secs() as i64;

/// The `expires_at` of the item a refused put answered (`ALL_OLD`).
fn held_until(e: &aws_sdk_dynamodb::operation::put_item::PutItemError) -> Option<DateTime<Utc>> {
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    match e {
        PutItemError::ConditionalCheckFailedException(c) => {
            match c.item().and_then(|i| i.get("expires_at")) {
                Some(AttributeValue::N(v)) => v
                    .parse::<i64>()
                    .ok()
                    .map(|ms| micros_to_time(ms.saturating_mul(1000))),
                _ => None,
            }
        }
        _ => None,
    }
}

#[async_trait]
impl HeavyRequestLeases for DynamoStore {
    async fn acquire_heavy_lease(
        &self,
        tenant: &TenantId,
        class: Heavy,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        furthest: DateTime<Utc>,
    ) -> Result<HeavyLease, StoreError> {
        let mut item = keys::heavy_lease(tenant, class).attrs();
        item.insert("owner".into(), s(owner));
        item.insert("expires_at".into(), n(until.timestamp_millis()));
        item.insert(
            TTL_ATTR.into(),
            n(now.timestamp().saturating_add(LEASE_TTL_SECS)),
        );
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(
                "attribute_not_exists(pk) OR expires_at < :now OR expires_at > :furthest",
            )
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .expression_attribute_values(":furthest", n(furthest.timestamp_millis()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(HeavyLease::Taken),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(HeavyLease::Held {
                    until: held_until(e.err()),
                })
            }
            Err(e) => Err(classify("dynamodb put", e)),
        }
    }

    async fn release_heavy_lease(
        &self,
        tenant: &TenantId,
        class: Heavy,
        owner: &str,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::heavy_lease(tenant, class).attrs()))
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Lapsed and taken over by another owner, or gone: not this one's to delete.
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(classify("dynamodb delete", e)),
        }
    }
}
