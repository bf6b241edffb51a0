//! `ContactStore` on the one table, in the tenant's partition:
//! - `sk = PAIR#{e164 or user id}` → `{"other": <the user's other key>}`, one item each
//!   way, with the Messages TTL (refreshed whenever Meta repeats the pairing);
//! - `sk = WINDOW#{phone_number_id}#{e164 or user id}` → `{"at": epoch seconds}`, the
//!   newest time the user wrote to that number (a conditional put never moves it back),
//!   with a TTL 24 hours after it. Reads ignore expired items (moto never deletes them).
//!
//! `found_among` asks for a key's `OPTOUT#` and `PAIR#` items together, by `BatchGetItem`
//! (`batch_get`): which of a campaign's recipients have either, and with whom a pairing
//! pairs them; `opted_out_among` for the `OPTOUT#` items of the keys they are paired with.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use async_trait::async_trait;

use super::{classify, keys, n, s, DynamoStore, TTL_ATTR};
use crate::adapters::aws::written;
use crate::domain::{OptOutKey, PhoneNumber, TenantId, UserId};
use crate::ports::{ContactStore, Found};
use crate::store_error::StoreError;

/// A pairing half's write time (epoch milliseconds).
const PAIRED_AT: &str = "paired_at";
/// A pairing half's other key.
const OTHER: &str = "other";

/// The other key a pairing item names (`None` if it names none readable).
fn other_of(item: &super::Item) -> Option<OptOutKey> {
    item.get(OTHER)
        .and_then(|v| v.as_s().ok())
        .and_then(|o| OptOutKey::parse_stored(o))
}

impl DynamoStore {
    async fn put_pairing(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        other: &OptOutKey,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut item = keys::user_pairing(tenant, key).attrs();
        item.insert(OTHER.into(), s(other.to_string()));
        // When this half was written: which of two disagreeing halves is the newer.
        item.insert(PAIRED_AT.into(), n(self.now_ms()));
        if let Some(t) = expires_at {
            item.insert(TTL_ATTR.into(), n(t));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| classify("dynamodb put", e))?;
        Ok(())
    }
}

#[async_trait]
impl ContactStore for DynamoStore {
    async fn pair_user(
        &self,
        tenant: &TenantId,
        phone: &PhoneNumber,
        user_id: &UserId,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let (p, u) = (
            OptOutKey::Phone(phone.clone()),
            OptOutKey::User(user_id.clone()),
        );
        self.put_pairing(tenant, &p, &u, expires_at).await?;
        self.put_pairing(tenant, &u, &p, expires_at).await
    }

    async fn paired_key(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOutKey>, StoreError> {
        Ok(self
            .get(keys::user_pairing(tenant, key))
            .await?
            .and_then(|i| other_of(&i)))
    }

    async fn pairing(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<(OptOutKey, Option<i64>)>, StoreError> {
        let Some(item) = self.get(keys::user_pairing(tenant, key)).await? else {
            return Ok(None);
        };
        let Some(other) = other_of(&item) else {
            return Ok(None);
        };
        let at = item
            .get(PAIRED_AT)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok());
        Ok(Some((other, at)))
    }

    async fn unpair(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        other: &OptOutKey,
        newer: i64,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(keys::user_pairing(tenant, key).attrs()))
            // A half from before write times were recorded is the older.
            .condition_expression("#other = :other AND (attribute_not_exists(#at) OR #at < :newer)")
            .expression_attribute_names("#other", OTHER)
            .expression_attribute_names("#at", PAIRED_AT)
            .expression_attribute_values(":other", s(other.to_string()))
            .expression_attribute_values(":newer", n(newer))
            .send()
            .await;
        written("dynamodb delete", res)
    }

    async fn peek_paired_key(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOutKey>, StoreError> {
        Ok(self
            .get_eventually(keys::user_pairing(tenant, key))
            .await?
            .and_then(|i| other_of(&i)))
    }

    async fn found_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<HashMap<OptOutKey, Found>, StoreError> {
        // Each key's opt-out item and pairing item, by the key they belong to (and which).
        let mut of: HashMap<(String, String), (OptOutKey, bool)> =
            HashMap::with_capacity(2 * keys.len());
        let mut wanted = Vec::with_capacity(2 * keys.len());
        for key in keys {
            let (opt_out, pairing) = (keys::opt_out(tenant, key), keys::user_pairing(tenant, key));
            of.insert(
                (opt_out.pk.clone(), opt_out.sk.clone()),
                (key.clone(), true),
            );
            of.insert(
                (pairing.pk.clone(), pairing.sk.clone()),
                (key.clone(), false),
            );
            wanted.extend([opt_out, pairing]);
        }
        let items = self.existing(&wanted, &[OTHER]).await?;
        let mut found: HashMap<OptOutKey, Found> = HashMap::new();
        for (pair, item) in &items {
            let Some((key, is_opt_out)) = of.get(pair) else {
                continue;
            };
            let f = found.entry(key.clone()).or_default();
            if *is_opt_out {
                f.opt_out = true;
            } else {
                // As `paired_key` reads it.
                f.paired = other_of(item);
            }
        }
        Ok(found)
    }

    async fn opted_out_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<HashSet<OptOutKey>, StoreError> {
        let of: HashMap<(String, String), &OptOutKey> = keys
            .iter()
            .map(|k| {
                let item = keys::opt_out(tenant, k);
                ((item.pk, item.sk), k)
            })
            .collect();
        let wanted: Vec<keys::Key> = keys.iter().map(|k| keys::opt_out(tenant, k)).collect();
        let items = self.existing(&wanted, &[]).await?;
        Ok(items
            .keys()
            .filter_map(|p| of.get(p).map(|k| (*k).clone()))
            .collect())
    }

    async fn record_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
        at: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut item = keys::service_window(tenant, phone_number_id, key).attrs();
        item.insert("at".into(), n(at.timestamp()));
        item.insert(TTL_ATTR.into(), n(expires_at));
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #at < :at")
            .expression_attribute_names("#at", "at")
            .expression_attribute_values(":at", n(at.timestamp()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // A later time is recorded already.
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(classify("dynamodb put", e)),
        }
    }

    async fn last_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let item = self
            .get(keys::service_window(tenant, phone_number_id, key))
            .await?;
        Ok(item
            .and_then(|i| match i.get("at") {
                Some(AttributeValue::N(v)) => v.parse::<i64>().ok(),
                _ => None,
            })
            .and_then(|t| DateTime::from_timestamp(t, 0)))
    }
}
